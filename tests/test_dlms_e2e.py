"""DLMS/COSEM meters end to end on the rig: the agent (`gridedge run`, a real process) reads a meter on an HDLC line
(a pseudo-terminal, LLS) and one on the TCP wrapper (HLS-GMAC, ciphered), their readings reach the DSO simulator
over the real TLS broker as telemetry, and after an outage a load-profile catch-up closes the gap in the flex
settlement series.

The outage is the gateway's and the link's at once, so the test takes seconds, not ISPs: the agent starts with its
flex state and the meter's last profile entry an hour old (it was down), and the HDLC meter is silent at first (the
link is down too). Flex closes the hour as missing ISPs; the link comes back; the load profile read from the last
entry fills every one of them with the meter's exact energy."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time

from gridedge import telemetry
from gridedge.flex.history import History
from gridedge.hil.dlms_meter import SimMeter
from gridedge.hil.dlms_sim import DlmsLineSim, DlmsTcpSim
from gridedge.hil.rig import Rig
from gridedge.drivers.dlms.security import Keys

from .conftest import validate_message

NS = 10**9
ISP = 900 * NS
KEYS = Keys(bytes(range(16)), bytes(range(16, 32)))

DEVICES = """\
[[devices]]
id = "m1"
driver = "dlms_hdlc"
serial_port = "{port}"
physical_address = 17
client_address = 32
authentication = "low"
secrets_file = "{lls}"
points = ["TotWhImp", "TotWhExp", "W", "PhVphA"]
poll_ms = 1000
timeout_ms = 400
profile_ms = 2000
catch_up_h = 3.0

[[devices]]
id = "m2"
driver = "dlms_tcp"
host = "127.0.0.1"
port = {tcp_port}
client_address = 1
authentication = "high_gmac"
secrets_file = "{hls}"
points = ["TotWhImp", "W"]
poll_ms = 1000
profile_ms = 0

[flex]
isp_min = 15

[[flex.resources]]
id = "site1"
kind = "meter"
energy_import = "m1/TotWhImp"
energy_export = "m1/TotWhExp"
max_gap_s = 4.0
"""


def _intervals(db_path) -> dict[int, tuple[str, str]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {s: (q, src) for s, q, src in db.execute(
            "SELECT start_ns, quality, source FROM intervals WHERE resource='site1' ORDER BY start_ns")}
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()


def test_meters_on_a_line_and_on_tcp_reach_the_head_end_and_catch_up_closes_the_gap(tmp_path):
    async def scenario():
        now = time.time_ns()
        down_since = now - now % ISP - 4 * ISP                  # the gateway went down an hour ago
        var = tmp_path / "rig" / "var"
        hist = History(var / "flex.sqlite")
        hist.set_meta("meter:site1", {"closed_until": down_since, "tracks": {}, "open": {}})
        hist.close()
        (var / "devices").mkdir(parents=True)
        (var / "devices" / "dlms-m1.json").write_text(json.dumps({"last_entry_ns": down_since}))
        (tmp_path / "lls.toml").write_text('password = "LLS-pass"\n')
        (tmp_path / "hls.toml").write_text(f'ek = "{KEYS.ek.hex()}"\nak = "{KEYS.ak.hex()}"\n')
        line_meter = SimMeter(serial="LINE01", authentication="low", password=b"LLS-pass")
        tcp_meter = SimMeter(serial="TCP01", authentication="high_gmac", keys=KEYS)
        async with DlmsLineSim({17: line_meter}, baudrate=None) as line, DlmsTcpSim(tcp_meter) as tcp:
            line.fault(17, "silent")                           # the link is down too
            flex = DEVICES.format(port=line.port, tcp_port=tcp.port, lls=tmp_path / "lls.toml",
                                  hls=tmp_path / "hls.toml")
            async with Rig(tmp_path / "rig", flex=flex) as rig:
                dso = rig.dso
                gap = range(down_since, now - now % ISP, ISP)
                await dso.wait_for(lambda: all(_intervals(var / "flex.sqlite").get(a, ("",))[0] == "missing"
                                               for a in gap), 30, "the outage closed as missing ISPs")
                line.fault(17, "ok")                           # the link is back
                await dso.wait_for(lambda: all(_intervals(var / "flex.sqlite").get(a) == ("good", "profile")
                                               for a in gap), 40, "the catch-up closing the gap")

                def samples():
                    out = []
                    for s in dso.seen:
                        if s.topic.endswith("/telemetry") and isinstance(s.doc, dict):
                            out += list(telemetry.samples_of(s.doc))
                    return out
                await dso.wait_for(lambda: {"m1/W", "m2/W"} <= {s.point for s in samples() if s.good}, 20,
                                   "both meters' live readings")
                for s in dso.seen:
                    if s.topic.endswith("/telemetry"):
                        validate_message(s.topic, s.doc)
                got = samples()
                entries = sorted({s.ts_ns for s in got if s.point == "m1/TotWhImp" and s.ts_ns % ISP == 0 and s.good
                                  and s.ts_ns > down_since})
                assert set(range(down_since + ISP, now - now % ISP + 1, ISP)) <= set(entries)  # the profile, as telemetry
                by_ts = {s.ts_ns: s.value for s in got if s.point == "m1/TotWhImp"}
                e = line_meter.entry(entries[0] // NS)
                assert by_ts[entries[0]] == e[2].value                 # the meter's own reading at its own time
                m2 = [s for s in got if s.point == "m2/TotWhImp" and s.good]
                assert m2 and abs(m2[-1].value - tcp_meter.registers()[b"\x01\x00\x01\x08\x00\xff"][0]) < 50
    asyncio.run(asyncio.wait_for(scenario(), 150))
