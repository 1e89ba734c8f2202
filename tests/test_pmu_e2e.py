"""PMUs end to end on the rig: the agent (`gridedge run`, a real process) takes a C37.118.2 stream from the rig's
PMU simulator, and over the real TLS broker the head-end gets decimated values as telemetry, an event at once, and
after an uplink outage the event that happened during it with its full-rate window whole. The gateway's clock
discipline is "none" here (the machine's clock is not the test's to discipline): every sample it stamps says its
clock is not synchronised, while the PMU's values carry the PMU's own time quality."""
from __future__ import annotations

import asyncio

import pytest

from gridedge import telemetry
from gridedge.core.model import TimeQuality
from gridedge.hil.pmu_sim import PmuSim, Signal, config, station
from gridedge.hil.rig import Rig

from .conftest import validate_message

NS = 10**9

DEVICES = """\
[[devices]]
id = "pmu1"
driver = "c37118"
host = "127.0.0.1"
port = {port}
pmu_id = 7
report_ms = 1000
v_nom_v = 230.0

[devices.events]
rocof_hz_per_s = 1.0
sag_pu = 0.9
before_s = 1.0
after_s = 1.0

[clock]
source = "none"
"""


def _docs(rig, kind: str) -> list[dict]:
    """The head-end's copies of one message kind, live or backfilled, each once."""
    out, seen = [], set()
    for s in rig.dso.seen:
        if s.topic.replace("backfill/", "") == rig.prefix + kind and isinstance(s.doc, dict) \
                and (s.doc.get("msg_id") is None or s.doc["msg_id"] not in seen):   # state has no msg_id
            seen.add(s.doc.get("msg_id"))
            out.append(s.doc)
    return out


@pytest.mark.timeout(150)   # a rig (broker, inverter simulator, agent) and an outage: ~40 s on a loaded 2-core box
def test_pmu_values_and_events_reach_the_head_end_and_a_window_survives_an_outage(tmp_path):
    async def scenario():
        sig = Signal(f_nom=50.0)
        async with PmuSim(config(7, 50, [station("FEEDER1", 7)]), sig, udp_port=None) as sim:
            async with Rig(tmp_path / "rig", proxy=True, flex=DEVICES.format(port=sim.port)) as rig:
                dso = rig.dso

                def pmu_samples():
                    return [s for d in _docs(rig, "telemetry") for s in telemetry.samples_of(d)
                            if s.point.startswith("pmu1/")]
                await dso.wait_for(lambda: any(s.point == "pmu1/FEEDER1.Hz" and s.good for s in pmu_samples()), 30,
                                   "decimated PMU values")

                sig.sag(0.5, 0.4)                                  # an event with the uplink up: at once
                await dso.wait_for(lambda: any(e["kind"] == "sag" for e in _docs(rig, "event")), 15, "the sag event")
                await dso.wait_for(lambda: _docs(rig, "event_window"), 15, "the sag's window")

                rig.proxy.refuse(True)                             # the uplink goes
                await rig.proxy.reset_all()
                sig.frequency_step(0.2)                            # 10 Hz/s in one frame
                # the event and its window are stored while the uplink is down (the window 1 s after the event)
                await asyncio.sleep(3)
                assert not any(e["kind"] == "rocof" for e in _docs(rig, "event")), "the uplink was not down"
                rig.proxy.refuse(False)
                await dso.wait_for(lambda: len(_docs(rig, "event_window")) >= 2, 40, "the rocof window after the outage")

                events = {e["kind"]: e for e in _docs(rig, "event")}
                windows = {w["event_id"]: w for w in _docs(rig, "event_window")}
                ev = events["rocof"]
                win = windows[ev["event_id"]]
                assert ev["point"] == "pmu1/FEEDER1.HzRte" and ev["value"] == pytest.approx(10.0, rel=1e-3)
                assert ev["tq"]["src"] == "device" and ev["tq"]["sync"] is True      # the PMU's clock: GPS-locked
                assert ev["gw_tq"] == {"src": "gateway", "sync": False, "lsk": False}  # the gateway's: not
                t = [win["t0"] + dt for dt in win["dt"]]
                assert not win["truncated"] and t[0] <= ev["t"] - 0.98 * NS and t[-1] >= ev["t"] + 0.98 * NS
                gaps = sorted({b - a for a, b in zip(t, t[1:])})
                assert gaps == [NS // 50], gaps                                    # whole: every frame, 50 fps
                hz = win["v"][win["n"].index("FEEDER1.Hz")]
                assert hz[0] == pytest.approx(50.0, abs=1e-4) and hz[-1] == pytest.approx(50.2, abs=1e-4)
                assert windows[events["sag"]["event_id"]]["kind"] == "sag"

                tel = _docs(rig, "telemetry")
                for seen in dso.seen:                              # every message the gateway sent, its schema
                    validate_message(seen.topic.replace("backfill/", ""), seen.doc)
                state = _docs(rig, "state")[-1]
                assert state["clock"]["source"] == "none" and state["clock"]["synchronised"] is False
                samples = [s for d in tel for s in telemetry.samples_of(d)]
                gateway_tq = TimeQuality("gateway", False, leap_known=False)
                inv = [s for s in samples if s.point.startswith("inv1/")]
                assert inv and all(s.tq == gateway_tq for s in inv)                # every sample the gateway stamps
                pmu = [s for s in samples if s.point.startswith("pmu1/")]
                assert pmu and all(s.tq.source == "device" for s in pmu)           # the PMU's own, apart
                assert {s.point for s in pmu} >= {"pmu1/FEEDER1.VA.mag", "pmu1/FEEDER1.VA.mag.min",
                                                  "pmu1/FEEDER1.VA.mag.max", "pmu1/FEEDER1.VA.mag.last"}
    asyncio.run(asyncio.wait_for(scenario(), 140))
