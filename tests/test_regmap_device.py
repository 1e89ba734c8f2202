"""RegmapDevice on RTU (pty line), Modbus TCP and RTU over TCP, against the real pymodbus server in hil/modbus_sim.py;
built from a gateway config through gridedge.devices like the agent does."""
from __future__ import annotations

import asyncio
import time

import pytest

from gridedge.config import parse_config
from gridedge.devices import make_device
from gridedge.drivers import regmap
from gridedge.drivers.modbus_rtu import SerialSettings
from gridedge.drivers.regmap_device import LinkSpec, PollGroupSpec, RegmapDevice
from gridedge.drivers.scheduler import BusPool
from gridedge.drivers.sunspec_tcp import WriteError
from gridedge.hil.modbus_sim import ModbusLineSim, ModbusTcpSim, UnitSim
from gridedge.core.model import Detail, Validity, flatten

from .aio import arun, until

SDM = regmap.load_map(regmap.shipped_maps()["eastron_sdm630"])
VALUES = {"PhVphA": 230.1, "PhVphB": 231.5, "Hz": 50.02, "W": -1500.0, "TotWhImp": 12345.5}

CTRL = regmap.parse_map({
    "manufacturer": "Test", "model": "Ctrl", "source": "tests", "max_gap": 2,
    "points": [
        {"name": "W", "address": 0, "type": "int16", "scale": 10.0, "unit": "W"},
        {"name": "WMaxLimPct", "address": 1, "type": "uint16", "scale": 0.1, "unit": "%", "access": "rw",
         "min": 0, "max": 100},
        {"name": "WMaxLimPctEna", "address": 2, "type": "uint16", "access": "rw", "min": 0, "max": 1},
        {"name": "VArSet", "address": 10, "type": "int32", "unit": "var", "access": "rw"},
    ],
}, "ctrl")


def by_name(readings):
    """The device hands blocks (one per read); by point name, as Samples."""
    return {s.point.split("/", 1)[1]: s for s in flatten(readings)}


def rtu(port: str, timeout_s: float = 0.2) -> LinkSpec:
    return LinkSpec("rtu", serial=SerialSettings(port, timeout_s=timeout_s), timeout_s=timeout_s)


def test_poll_over_rtu_tcp_and_rtu_over_tcp():
    async def main():
        line = ModbusLineSim({1: UnitSim(1, SDM, VALUES)})
        tcp = ModbusTcpSim({1: UnitSim(1, SDM, VALUES)})
        rtcp = ModbusTcpSim({1: UnitSim(1, SDM, VALUES)}, framer="rtu")
        port = await line.start()
        pool = BusPool()
        links = [rtu(port), LinkSpec("tcp", host="127.0.0.1", port=await tcp.start(), timeout_s=0.5),
                 LinkSpec("rtu_tcp", host="127.0.0.1", port=await rtcp.start(), timeout_s=0.5)]
        try:
            for link in links:
                dev = RegmapDevice("m1", SDM, link, 1, pool=pool)
                await dev.connect()
                got = by_name(await dev.poll())
                assert set(got) == set(SDM.names)
                for name, value in VALUES.items():
                    assert got[name].value == value and got[name].validity is Validity.GOOD, (link.kind, name)
                assert got["PhVphA"].unit == "V" and got["W"].unit == "W"
                assert dev.capability == "meter"
                await dev.close()
            assert line.requests[1] == len(regmap.plan_reads(SDM))   # coalesced reads
        finally:
            await line.stop()
            await tcp.stop()
            await rtcp.stop()
    arun(main())


def test_devices_on_one_port_share_one_bus_and_a_dead_one_gives_invalid_samples():
    async def main():
        sim = ModbusLineSim({1: UnitSim(1, SDM, VALUES), 2: UnitSim(2, SDM, VALUES)})
        port = await sim.start()
        pool = BusPool()
        sim.set_behaviour(2, "silent")
        a = RegmapDevice("m1", SDM, rtu(port), 1, pool=pool, points=["PhVphA", "Hz"])
        b = RegmapDevice("m2", SDM, rtu(port), 2, pool=pool, points=["PhVphA", "Hz"], breaker_threshold=1,
                         backoff_s=30)
        try:
            await a.connect()
            await b.connect()
            assert a.bus is b.bus
            with pytest.raises(ValueError):   # same port, other line settings
                RegmapDevice("m3", SDM, LinkSpec("rtu", serial=SerialSettings(port, baudrate=9600)), 3,
                             pool=pool)._attach()
            dead = flatten(await b.poll())
            assert [(s.validity, s.detail) for s in dead] == [(Validity.INVALID, Detail.TIMEOUT)] * 2
            n = sim.requests[2]
            assert [s.detail for s in flatten(await b.poll())] == [Detail.TIMEOUT] * 2 and sim.requests[2] == n  # breaker
            assert by_name(await a.poll())["Hz"].value == 50.02
        finally:
            await a.close()
            await b.close()
            await sim.stop()
        assert a.bus is None and ("rtu", port) not in pool           # the bus closed with its last device
    arun(main())


def test_run_polls_each_group_at_its_own_period():
    async def main():
        sim = ModbusLineSim({1: UnitSim(1, SDM, VALUES)})
        port = await sim.start()
        dev = RegmapDevice("m1", SDM, rtu(port), 1, pool=BusPool(), points=["PhVphA", "TotWhImp"], period_s=2.0,
                           groups=[PollGroupSpec("fast", 0.05, ("W", "Hz"))])
        batches: list[set[str]] = []
        t0 = time.monotonic()
        first_slow: list[float] = []

        def sink(samples):
            names = set(by_name(samples))
            if names == {"PhVphA", "TotWhImp"} and not first_slow:
                first_slow.append(time.monotonic() - t0)
            batches.append(names)

        task = asyncio.create_task(dev.run(sink))
        try:
            await until(lambda: first_slow, timeout=10.0)
            # the slow group's first poll is staggered (golden-ratio offset: 0.618 of its 2 s period): load can
            # only make it later, and the fast group has polled on its own meanwhile
            assert first_slow[0] >= 0.618 * 2.0 - 0.05
            assert batches.count({"PhVphA", "TotWhImp"}) == 1
            assert batches.count({"W", "Hz"}) >= 2
            assert all(b in ({"W", "Hz"}, {"PhVphA", "TotWhImp"}) for b in batches)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await dev.close()
            await sim.stop()
    arun(main())


def test_write_points_with_read_back_and_refusals():
    async def main():
        sim = ModbusLineSim({1: UnitSim(1, CTRL, {"W": 5000})})
        port = await sim.start()
        pool = BusPool()
        dev = RegmapDevice("inv1", CTRL, rtu(port), 1, role="inverter", writable=True, pool=pool)
        ro = RegmapDevice("inv1ro", CTRL, rtu(port), 1, role="inverter", writable=False, pool=pool)
        try:
            await dev.connect()
            got = await dev.write_points({"WMaxLimPct": 42.5, "WMaxLimPctEna": 1, "VArSet": -1200})
            assert got == {"WMaxLimPct": 42.5, "WMaxLimPctEna": 1, "VArSet": -1200}
            assert sim.units[1].writes == 2                 # 1..2 in one request, 10..11 in another
            polled = by_name(await dev.poll())
            assert polled["WMaxLimPct"].value == 42.5 and polled["W"].value == 5000
            refused = [({"W": 1}, "read-only in the map"), ({"Nope": 1}, "unknown point"),
                       ({"WMaxLimPct": 150}, "outside"), ({"WMaxLimPct": float("nan")}, "finite"), ({}, "nothing")]
            for values, text in refused:
                with pytest.raises(WriteError) as ei:
                    await dev.write_points(values)
                assert text in str(ei.value)
            with pytest.raises(WriteError) as ei:
                await ro.write_points({"WMaxLimPct": 10})
            assert "read-only" in str(ei.value)
            assert sim.units[1].writes == 2                 # nothing reached the device
            sim.units[1].writable.discard(10)               # the device now refuses VArSet
            with pytest.raises(WriteError) as ei:
                await dev.write_points({"VArSet": 5})
            assert ei.value.detail is Detail.DEVICE_EXCEPTION and ei.value.exception_code == 2
        finally:
            await dev.close()
            await ro.close()
            await sim.stop()
    arun(main())


def test_read_back_mismatch_is_an_error():
    async def main():
        unit = UnitSim(1, CTRL)
        orig = unit._action

        async def clamp(fc, start, address, count, current, set_values):   # a device that clamps to 50 %
            if set_values is not None and address == 1:
                set_values[0] = min(set_values[0], 500)
            return await orig(fc, start, address, count, current, set_values)
        unit._action = clamp
        sim = ModbusLineSim({1: unit})
        port = await sim.start()
        dev = RegmapDevice("inv1", CTRL, rtu(port), 1, writable=True, pool=BusPool())
        try:
            with pytest.raises(WriteError) as ei:
                await dev.write_points({"WMaxLimPct": 80})
            assert "read-back mismatch" in str(ei.value) and "reads back 50" in str(ei.value)
        finally:
            await dev.close()
            await sim.stop()
    arun(main())


def test_bad_construction():
    link = LinkSpec("tcp", host="h")
    with pytest.raises(ValueError, match="not in map"):
        RegmapDevice("m", SDM, link, points=["Nope"])
    with pytest.raises(ValueError, match="not in map"):
        RegmapDevice("m", SDM, link, groups=[PollGroupSpec("g", 1.0, ("Bad",))])
    for kw in ({"kind": "x", "host": "h"}, {"kind": "tcp"}, {"kind": "rtu"},
               {"kind": "rtu_tcp", "host": "h", "max_outstanding": 2}):
        with pytest.raises(ValueError):
            LinkSpec(**kw)


def test_built_from_config_like_the_agent():
    async def main():
        sim = ModbusLineSim({7: UnitSim(7, SDM, VALUES)})
        port = await sim.start()
        cfg = parse_config({
            "gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
            "devices": [{"id": "meter1", "driver": "modbus_rtu", "role": "meter", "map": "eastron_sdm630",
                         "serial_port": port, "parity": "N", "unit_id": 7, "timeout_ms": 300,
                         "points": ["PhVphA", "W"], "poll_groups": [{"name": "f", "period_ms": 100,
                                                                      "points": ["Hz"]}]}],
        })
        dev = make_device(cfg.devices[0])
        try:
            await dev.connect()
            got = by_name(await dev.poll())
            assert {n: s.value for n, s in got.items()} == {"PhVphA": 230.1, "W": -1500.0, "Hz": 50.02}
            assert dev.capability == "meter" and not dev.writable
        finally:
            await dev.close()
            await sim.stop()
    arun(main())
