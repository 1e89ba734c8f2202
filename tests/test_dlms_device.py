"""DlmsDevice on the bus scheduler and DlmsPushDevice, against the rig's meters on pseudo-terminals and TCP: samples
from the OBIS map (scalers, units, signed sums), the clock's skew and status, the load profile with the meter's time
stamps, several meters on one line with a dead one, HAN pushes; and the driver registry / config keys."""
from __future__ import annotations

import asyncio
import time

import pytest

from gridedge.config import ConfigError, parse_config
from gridedge.core.model import Detail, Validity
from gridedge.devices import make_device
from gridedge.drivers.dlms import cosem
from gridedge.drivers.dlms.client import Settings
from gridedge.drivers.dlms.device import DlmsDevice, DlmsLinkSpec
from gridedge.drivers.dlms.obismap import load_obis_map, parse_obis_map
from gridedge.drivers.dlms.push import DlmsPushDevice
from gridedge.drivers.dlms.security import Keys
from gridedge.drivers.regmap import MapError
from gridedge.drivers.scheduler import BusPool
from gridedge.hil.dlms_meter import LP_COLUMNS, SimMeter
from gridedge.hil.dlms_sim import DlmsLineSim, DlmsTcpSim

from .aio import arun, until

IDIS = load_obis_map("idis_polyphase")
KEYS = Keys(bytes(range(16)), bytes(range(16, 32)))
NS = 10**9


def _device(sim_port: str, address: int, name: str = "m1", pool: BusPool | None = None, **kw) -> DlmsDevice:
    return DlmsDevice(name, IDIS, DlmsLinkSpec("serial", port=sim_port, timeout_s=kw.pop("timeout_s", 0.5)),
                      Settings(physical=address), pool=pool or BusPool(), **kw)


def test_poll_gives_the_map_points_with_scalers_units_and_signed_sums():
    async def main():
        sim_meter = SimMeter()
        async with DlmsLineSim({17: sim_meter}, baudrate=None) as sim:
            dev = _device(sim.port, 17)
            await dev.connect()
            values, clock = await dev.poll()
            got = dict(zip(values.layout.names, values.values))
            regs = sim_meter.registers()
            assert values.quality is None and set(got) == set(IDIS.names)
            assert got["TotWhImp"] == pytest.approx(regs[LP_COLUMNS[0]][0], abs=2)
            assert got["W"] == pytest.approx(regs[cosem.obis("1.0.2.7.0")][0] - regs[cosem.obis("1.0.1.7.0")][0],
                                             abs=1.5)
            assert got["PhVphA"] == pytest.approx(regs[cosem.obis("1.0.32.7.0")][0], abs=0.1)    # scaler -1
            assert got["Hz"] == pytest.approx(50, abs=0.1) and got["PF"] == pytest.approx(0.95)
            assert clock.layout.names == ("ClockSkew",) and abs(clock.values[0]) < 2 and clock.quality is None
            await dev.close()
    arun(main())


def test_clock_skew_and_a_doubtful_clock_are_reported():
    async def main():
        sim_meter = SimMeter(clock_offset_s=-95.0, clock_status=0x02)     # 95 s slow, doubtful
        async with DlmsLineSim({17: sim_meter}, baudrate=None) as sim:
            dev = _device(sim.port, 17, points=["TotWhImp"])
            _, clock = await dev.poll()
            assert clock.values[0] == pytest.approx(-95, abs=1.5)
            assert clock.quality == [(Validity.QUESTIONABLE, Detail.CLOCK)]
            sim_meter.clock_status = 0x01                                  # invalid
            _, clock = await dev.poll()
            assert clock.quality == [(Validity.INVALID, Detail.CLOCK)]
            await dev.close()
    arun(main())


def test_load_profile_entries_carry_the_meter_time_and_status(tmp_path):
    async def main():
        sim_meter = SimMeter(clock_offset_s=3.0)
        async with DlmsLineSim({17: sim_meter}, baudrate=None) as sim:
            got = []
            dev = _device(sim.port, 17, profile_s=0.3, catch_up_s=6 * 3600)
            dev.bind(tmp_path, got.extend)
            times = sim_meter.entry_times()
            sim_meter.profile_status[times[-3]] = 0x80         # a power failure in that period: still good
            sim_meter.profile_status[times[-2]] = 0x20         # the clock was adjusted: questionable
            task = asyncio.create_task(dev.run(lambda r: None))
            await until(lambda: len(got) >= 24, timeout=10)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await dev.close()
            # the meter's own time stamps (its clock runs 3 s fast: not corrected, ClockSkew says so), in UTC
            assert [b.ts_ns for b in got][:24] == [t * NS for t in times[-24:]]
            last = got[23]
            assert last.layout.names == ("TotWhImp", "TotWhExp", "TotVArhImpQ1", "TotVArhImpQ2", "TotVArhExpQ3",
                                         "TotVArhExpQ4")
            assert last.values == [x.value for x in sim_meter.entry(times[-1])[2:]]
            assert got[21].quality is None and got[22].quality == [(Validity.QUESTIONABLE, Detail.CLOCK)] * 6
            assert dev.last_entry_ns == times[-1] * NS
            again = _device(sim.port, 17)
            again.bind(tmp_path, None)
            assert again.last_entry_ns == dev.last_entry_ns           # where it ended survives a restart
    arun(main())


def test_a_dead_meter_does_not_stall_the_others_on_its_line():
    """Three meters on one line, one never answers: the others keep their rate; the dead one's breaker opens,
    so it costs a timeout per back-off, not per poll, and its samples arrive INVALID / timeout."""
    async def main():
        meters = {17: SimMeter(serial="A"), 18: SimMeter(serial="B"), 19: SimMeter(serial="C")}
        async with DlmsLineSim(meters, baudrate=9600) as sim:
            sim.fault(18, "silent")
            pool = BusPool()
            seen: dict[str, list] = {"a": [], "b": [], "c": []}
            devs = [_device(sim.port, a, n, pool, period_s=0.25, profile_s=None, points=["TotWhImp", "W"],
                            timeout_s=0.4, backoff_s=5.0) for a, n in ((17, "a"), (18, "b"), (19, "c"))]
            tasks = [asyncio.create_task(d.run(lambda r, n=d.device_id: seen[n].extend(r))) for d in devs]
            await until(lambda: min(len([b for b in seen[n] if b.quality is None]) for n in "ac") >= 40, timeout=30)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for d in devs:
                await d.close()
            dead = [b for b in seen["b"] if b.layout.names[0] == "TotWhImp"]
            assert dead and all(b.quality and b.quality[0] == (Validity.INVALID, Detail.TIMEOUT) for b in dead)
            assert devs[1]._dev is None and sim.bus.frames[18] <= 8          # a handful of tries, not one per poll
    arun(main())


def test_wrapper_meter_with_hls_over_tcp():
    async def main():
        async with DlmsTcpSim(SimMeter(authentication="high_gmac", keys=KEYS)) as tcp:
            dev = DlmsDevice("t1", IDIS, DlmsLinkSpec("tcp", host="127.0.0.1", tcp_port=tcp.port),
                             Settings(authentication="high_gmac", keys=KEYS, client=1), points=["TotWhImp", "W"],
                             pool=BusPool())
            values, clock = await dev.poll()
            assert values.quality is None and values.values[0] > 10**6
            await tcp.down()                                                 # the link fails
            values, _ = await dev.poll()
            assert values.quality[0] == (Validity.INVALID, Detail.COMM_FAILURE)
            await tcp.up()
            await until(lambda: dev.poll(), timeout=5)
            values, _ = await dev.poll()
            assert values.quality is None
            await dev.close()
    arun(main())


@pytest.mark.parametrize("framing", ["hdlc", "mbus"])
def test_han_push_on_a_serial_line(framing):
    async def main():
        sim_meter = SimMeter(keys=KEYS)
        async with DlmsLineSim({17: sim_meter}, baudrate=None) as sim:
            dev = DlmsPushDevice("han", load_obis_map("han_austria"), DlmsLinkSpec("serial", port=sim.port),
                                 keys=KEYS, stale_s=5)
            got = []
            task = asyncio.create_task(dev.run(got.extend))
            await until(lambda: dev._line is not None and dev._line.connected, timeout=5)
            sim.push_every(17, 0.05, framing)
            await until(lambda: len(got) >= 3, timeout=5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await dev.close()
            b = got[-1]
            values = dict(zip(b.layout.names, b.values))
            assert set(values) == {"TotWhImp", "TotWhExp", "W", "PhVphA", "PhVphB", "PhVphC", "AphA", "AphB", "AphC"}
            assert values["TotWhImp"] > 10**6 and abs(b.ts_ns - time.time_ns()) < 5 * NS
            assert dev.decoder.errors == 0
    arun(main())


def test_obis_map_files_are_checked():
    with pytest.raises(MapError) as ei:
        parse_obis_map({"model": "x", "source": "y", "points": [
            {"name": "W", "obis": "1.0.1.7", "class": 7, "unit": "W"},
            {"name": "S", "obis": "0.0.96.1.0.255", "class": 1, "unit": "Wh"}]}, "m.toml")
    assert ei.value.errors == [
        "m.toml: points[0].obis: not an OBIS code: '1.0.1.7' (like 1.0.1.8.0.255 or 1-0:1.8.0*255)",
        "m.toml: points[0].class: must be 1 (Data), 3 (Register), 4 (Extended Register) or 5 (Demand Register), got 7"]


# ---------------------------------------------------------------- registry and config

def _site(*devs) -> dict:
    return {"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
            "devices": list(devs)}


def test_dlms_drivers_take_their_own_defaults():
    tcp, line, push = parse_config(_site(
        {"id": "t1", "driver": "dlms_tcp", "host": "10.0.0.9"},
        {"id": "l1", "driver": "dlms_hdlc", "serial_port": "/dev/ttyUSB1"},
        {"id": "h1", "driver": "dlms_push", "serial_port": "/dev/ttyUSB2"})).devices
    assert (tcp.port, tcp.role, tcp.poll_ms) == (4059, "meter", 15000)
    assert (line.baudrate, line.parity, line.physical_address) == (9600, "N", 17)
    assert (push.baudrate, push.parity) == (2400, "E")
    assert isinstance(make_device(tcp), DlmsDevice) and make_device(tcp).settings.physical is None
    assert isinstance(make_device(push), DlmsPushDevice)


def test_dlms_config_mistakes_are_named(tmp_path):
    secrets = tmp_path / "s.toml"
    secrets.write_text('password = "p"\n')
    with pytest.raises(ConfigError) as ei:
        parse_config(_site(
            {"id": "a", "driver": "dlms_hdlc", "serial_port": "/dev/ttyUSB1", "physical_address": 20},
            {"id": "b", "driver": "dlms_hdlc", "serial_port": "/dev/ttyUSB1", "physical_address": 20},
            {"id": "c", "driver": "modbus_rtu", "serial_port": "/dev/ttyUSB1", "map": "eastron_sdm630"},
            {"id": "d", "driver": "dlms_tcp", "host": "10.0.0.9", "authentication": "high_gmac",
             "secrets_file": str(secrets), "points": ["TotWhImpp"], "unit_id": 3},
            {"id": "e", "driver": "dlms_tcp", "host": "10.0.0.8", "authentication": "low"}), "gw.toml")
    assert ei.value.errors == [
        "gw.toml: devices[3].unit_id: only for Modbus drivers, not 'dlms_tcp'",
        "gw.toml: devices[3].points[0]: no point 'TotWhImpp' in OBIS map "
        f"{load_obis_map('idis_polyphase').origin} (did you mean 'TotWhImp'?)",
        "gw.toml: devices[3].secrets_file: has no ek and ak (authentication \"high_gmac\" needs both)",
        "gw.toml: devices[4].secrets_file: required key missing (authentication 'low' needs the password or keys)",
        "gw.toml: devices[1].physical_address: physical address 20 is already used by devices[0] on serial port "
        "'/dev/ttyUSB1'",
        "gw.toml: devices[2].driver: 'modbus_rtu' cannot share the serial port '/dev/ttyUSB1' with devices[0] "
        "('dlms_hdlc')",
    ]
