"""SunSpec devices on the bus scheduler: over a pseudo-terminal RTU line (shared with a meter), RTU over TCP and TCP,
against the real pymodbus servers of hil/ (InverterSim with its curves and heartbeat); curve writes with adoption;
built from a gateway config like the agent does."""
from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys

import pytest

from gridedge.config import parse_config
from gridedge.devices import make_device
from gridedge.drivers import regmap
from gridedge.drivers import sunspec as ss
from gridedge.drivers.modbus_rtu import SerialSettings
from gridedge.drivers.modbus import WriteError
from gridedge.drivers.regmap_device import LinkSpec, RegmapDevice
from gridedge.drivers.scheduler import BusPool
from gridedge.drivers.sunspec_device import ADOPT_COMPLETED, SunSpecDevice
from gridedge.hil.inverter_sim import InverterSim
from gridedge.hil.modbus_sim import ModbusLineSim, ModbusTcpSim, UnitSim
from gridedge.core.model import Detail, Validity, flatten

from . import aio
from .aio import until

SDM = regmap.load_map(regmap.shipped_maps()["eastron_sdm630"])
METER = {"PhVphA": 230.1, "Hz": 50.02, "W": -1500.0}
VV = [(92.0, 30.0), (97.0, 0.0), (103.0, 0.0), (108.0, -30.0)]
VA_MAX_PCT = 3      # 705/712 DeptRef: the var values are % of the rated apparent power (IEEE 1547's reference)


arun = functools.partial(aio.arun, timeout=40.0)


def by_name(readings):
    return {s.point.split("/", 1)[1]: s for s in flatten(readings)}


def rtu(port: str, timeout_s: float = 0.3) -> LinkSpec:
    return LinkSpec("rtu", serial=SerialSettings(port, parity="N", timeout_s=timeout_s), timeout_s=timeout_s)


class Line:
    """An RTU line with an inverter (unit 2) and a meter (unit 1), torn down even when the test fails."""

    def __init__(self, **inv_kw):
        self.inv = InverterSim(unit_id=2, **inv_kw)
        self.line = ModbusLineSim({1: UnitSim(1, SDM, METER), 2: self.inv})
        self.pool = BusPool()
        self.devices = []

    async def __aenter__(self):
        self.port = await self.line.start()
        self.inv.start_plant()
        return self

    def sunspec(self, **kw) -> SunSpecDevice:
        dev = SunSpecDevice("inv1", rtu(self.port), 2, pool=self.pool, **kw)
        self.devices.append(dev)
        return dev

    def meter(self, **kw) -> RegmapDevice:
        dev = RegmapDevice("m1", SDM, rtu(self.port), 1, pool=self.pool, **kw)
        self.devices.append(dev)
        return dev

    async def __aexit__(self, *exc):
        for d in self.devices:
            await d.close()
        await self.inv.stop()
        await self.line.stop()


def test_inverter_and_meter_share_one_rtu_line():
    async def main():
        async with Line() as r:
            inv, meter = r.sunspec(), r.meter(points=["PhVphA", "Hz"])
            await inv.connect()
            assert inv.bus is meter._attach().bus                     # one scheduler for the line
            assert set(inv.models) == {1, 701, 702, 704, 705, 711, 712, 715}
            s = by_name(await inv.poll())
            assert s["W"].validity is Validity.GOOD and s["W"].value == pytest.approx(8000, abs=50)
            assert s["WMax"].value == 10000 and s["Hz"].value == pytest.approx(50.0)
            assert s["PFWInj"].detail is Detail.NOT_IMPLEMENTED                 # never a number
            m = by_name(await meter.poll())
            assert m["Hz"].value == 50.02
            # a write on the shared line, verified by read-back, while the meter polls in its own group
            got: list[dict] = []
            task = asyncio.create_task(meter.run(lambda samples: got.append(by_name(samples))))
            try:
                rb = await inv.write_points({"WMaxLimPct": 40, "WMaxLimPctEna": 1})
                assert rb == {"WMaxLimPct": 40.0, "WMaxLimPctEna": 1}
                assert r.inv.plant.WMaxLimPct == 40.0 and r.inv.plant.WMaxLimPctEna == 1
                n = len(got)

                async def meter_still_polled():
                    return len(got) >= n + 3
                await until(meter_still_polled)
                assert all(g["Hz"].value == 50.02 for g in got)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    arun(main())


def test_run_polls_at_the_period_and_a_silent_inverter_gives_invalid_samples():
    async def main():
        async with Line() as r:
            inv = r.sunspec(points=["W", "WMaxLimPct"], period_s=0.1, breaker_threshold=1, backoff_s=30)
            batches = []
            task = asyncio.create_task(inv.run(batches.append))
            try:
                async def some():
                    return len(batches) >= 5
                await until(some)
                assert all([s.point for s in b] == ["inv1/W", "inv1/WMaxLimPct"] for b in batches)
                assert all(b[0].good for b in batches)
                r.line.set_behaviour(2, "silent")

                async def dead():
                    return batches[-1][0].validity is Validity.INVALID
                await until(dead)
                assert batches[-1][0].detail is Detail.TIMEOUT
                frames = r.line.requests[2]
                k = len(batches)

                async def more():
                    return len(batches) >= k + 3
                await until(more)                      # still reported at its period, from the open breaker...
                assert r.line.requests[2] == frames    # ...without a frame on the line
                meter = r.meter(points=["Hz"])
                assert by_name(await meter.poll())["Hz"].value == 50.02    # the line is not blocked
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    arun(main())


def test_rtu_over_tcp_and_tcp_links():
    async def main():
        inv = InverterSim()
        rtcp = ModbusTcpSim({1: inv}, framer="rtu")
        tcp = ModbusTcpSim({1: inv})
        pool = BusPool()
        devs = []
        try:
            inv.start_plant()
            for link in (LinkSpec("rtu_tcp", host="127.0.0.1", port=await rtcp.start(), timeout_s=0.5),
                         LinkSpec("tcp", host="127.0.0.1", port=await tcp.start(), timeout_s=0.5)):
                dev = SunSpecDevice(f"inv-{link.kind}", link, 1, pool=pool, points=["W", "WMax", "WMaxLimPct"])
                devs.append(dev)
                s = by_name(await dev.poll())
                assert s["WMax"].value == 10000 and s["W"].good, link.kind
                assert await dev.write_points({"WMaxLimPct": 55.5}) == {"WMaxLimPct": 55.5}
                assert inv.plant.WMaxLimPct == 55.5
                await dev.write_points({"WMaxLimPct": 100})
        finally:
            for d in devs:
                await d.close()
            await rtcp.stop()
            await tcp.stop()
            await inv.stop()
    arun(main())


def test_volt_var_curve_written_read_back_and_adopted():
    async def main():
        async with Line() as r:
            inv = r.sunspec()
            await inv.connect()
            before = await inv.read_model(705)
            assert before["NCrv"] == 3 and before["NPt"] == 4 and before["Crv[1].ReadOnly"] == 1
            assert [before[f"Crv[1].Pt[{i}].V"] for i in (1, 2, 3, 4)] == [92.0, 98.0, 102.0, 108.0]   # 1547 Cat B
            rb = await inv.write_curve(705, 2, VV, DeptRef=1, RspTms=10, enable=True)
            assert [(rb[f"Crv[2].Pt[{i}].V"], rb[f"Crv[2].Pt[{i}].Var"]) for i in (1, 2, 3, 4)] == VV
            assert rb["Crv[2].ActPt"] == 4 and rb["Crv[2].RspTms"] == 10 and rb["AdptCrvRslt"] == ADOPT_COMPLETED
            vv = r.inv.handlers[705]
            assert vv.curve(1)["Pt"] == VV and vv.curve(1)["RspTms"] == 10 and vv.enabled
            assert vv.adoptions == 1
            after = await inv.read_model(705)
            assert after["Crv[1].Pt[4].Var"] == -30.0 and after["Ena"] == 1
            # a 3-point curve into slot 3: the active curve gets 3 points, the 4th is no longer part of it
            await inv.write_curve(705, 3, VV[:3], DeptRef=VA_MAX_PCT)
            assert vv.curve(1)["Pt"] == VV[:3] and vv.curve(1)["ActPt"] == 3
            assert (await inv.read_model(705))["Crv[1].Pt[4].V"] is ss.NOT_IMPLEMENTED
    arun(main())


def test_curve_writes_refused_before_anything_is_written():
    async def main():
        async with Line() as r:
            inv = r.sunspec()
            await inv.connect()
            applied = r.inv.writes_applied
            ref = {"DeptRef": VA_MAX_PCT}
            for args, kw, match in (
                ((705, 1, VV), ref, "read-only"),                      # the active curve
                ((705, 4, VV), ref, "index must be 1..3"),
                ((705, 2, VV + [(110.0, -40.0)]), ref, "1..4 points"),
                ((705, 2, [(92.0, "x")]), ref, "finite number"),
                ((705, 2, [(92.0, 1e9)]), ref, "refused"),             # does not fit the int16 register
                ((704, 2, VV), ref, "no curves"),
                ((706, 2, VV), ref, "no model 706"),
                ((705, 2, VV), {"Bogus": 1, **ref}, "no point"),
                ((705, 2, VV), {}, "DeptRef"),                         # var % of what: the reference is required
                ((712, 2, [(20.0, 0.0), (100.0, -44.0)]), {}, "DeptRef"),
            ):
                with pytest.raises(WriteError, match=match):
                    await inv.write_curve(*args, **kw)
            assert r.inv.writes_applied == applied
            # written and read back, but the device refuses to adopt it (voltages not increasing)
            with pytest.raises(WriteError, match="FAILED") as ei:
                await inv.write_curve(705, 2, [(100.0, 0.0), (95.0, 10.0)], DeptRef=VA_MAX_PCT)
            assert ei.value.detail is Detail.DEVICE_EXCEPTION
            assert r.inv.handlers[705].curve(1)["Pt"] == [(92.0, 44.0), (98.0, 0.0), (102.0, 0.0), (108.0, -44.0)]
            # the device refuses a write into a read-only point of a curve
            with pytest.raises(WriteError, match="read-only"):
                await inv.write_model(705, {"Crv[2].ReadOnly": 1})
            with pytest.raises(WriteError) as ei:
                ro = SunSpecDevice("ro", rtu(r.port), 2, pool=r.pool, writable=False)
                r.devices.append(ro)
                await ro.write_curve(705, 2, VV, DeptRef=VA_MAX_PCT)
            assert "read-only" in str(ei.value) and ei.value.detail is Detail.BAD_REFERENCE
    arun(main())


def test_frequency_droop_controls_and_heartbeat_by_sunspec_name():
    async def main():
        async with Line() as r:
            inv = r.sunspec()
            await inv.connect()
            rb = await inv.write_model(711, {"Ctl[2].DbOf": 0.2, "Ctl[2].DbUf": 0.2, "Ctl[2].KOf": 0.04,
                                             "Ctl[2].KUf": 0.04, "Ctl[2].RspTms": 3})
            assert rb["Ctl[2].DbOf"] == 0.2 and rb["Ctl[2].KOf"] == 0.04
            await inv.write_model(711, {"AdptCtlReq": 2})

            async def adopted():
                d = await inv.read_model(711)
                return d if d["AdptCtlRslt"] == ADOPT_COMPLETED and d["Ctl[1].DbOf"] == 0.2 else None
            d = await until(adopted)
            assert d["Ctl[1].KUf"] == 0.04 and d["Ctl[1].ReadOnly"] == 1
            # 715: the gateway's heartbeat reaches the device; the device's own one counts seconds
            hb = r.inv.handlers[715]
            assert hb.controller_hb_age_s is None
            await inv.write_model(715, {"ControllerHb": 7})
            assert hb.controller_hb == 7 and hb.controller_hb_age_s is not None
            first = (await inv.read_model(715))["DERHb"]

            async def ticking():
                return (await inv.read_model(715))["DERHb"] > first
            await until(ticking, timeout=5)
            with pytest.raises(WriteError, match="read-only"):
                await inv.write_model(715, {"DERHb": 1})
            with pytest.raises(WriteError) as ei:
                await inv.write_model(715, {"OpCtl": 9})            # the device answers ILLEGAL_DATA_VALUE
            assert ei.value.exception_code == 3
    arun(main())


def test_sunspec_rtu_devices_from_a_config_share_the_line_with_a_meter():
    async def main():
        async with Line() as r:
            data = {
                "gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
                "devices": [
                    {"id": "inv1", "driver": "sunspec_rtu", "serial_port": r.port, "unit_id": 2, "parity": "N",
                     "timeout_ms": 300, "points": ["W", "WMaxLimPct"], "writable": True},
                    {"id": "m1", "driver": "modbus_rtu", "role": "meter", "map": "eastron_sdm630",
                     "serial_port": r.port, "unit_id": 1, "parity": "N", "timeout_ms": 300, "points": ["Hz"]},
                ]}
            cfg = parse_config(data, "gateway.toml", check_files=True)
            inv, meter = (make_device(d) for d in cfg.devices)
            r.devices += [inv, meter]
            assert isinstance(inv, SunSpecDevice) and inv.capability == "inverter" and inv.writable
            s = by_name(await inv.poll())
            assert s["W"].good and s["WMaxLimPct"].value == 100.0
            assert by_name(await meter.poll())["Hz"].value == 50.02
            assert inv.bus is meter.bus
            assert (await inv.write_points({"WMaxLimPct": 70}))["WMaxLimPct"] == 70.0
    arun(main())


def test_inverter_cli_serves_an_rtu_line():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gridedge.hil.inverter_sim", "--rtu", "--w-max", "6000",
                             "--pv-w", "3000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()          # blocks until the child prints READY (or exits)
        assert line.startswith("READY /dev/"), (line, proc.stderr.read() if proc.poll() is not None else "")

        async def main():
            dev = SunSpecDevice("inv1", rtu(line.split()[1]), 1, pool=BusPool(), points=["WMax", "W"])
            try:
                s = by_name(await dev.poll())
                assert s["WMax"].value == 6000 and s["W"].value == pytest.approx(3000, abs=50)
                rb = await dev.write_curve(705, 2, VV, DeptRef=VA_MAX_PCT)
                assert rb["Crv[2].Pt[4].Var"] == -30.0
            finally:
                await dev.close()
        arun(main())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "model 705: curve 2 adopted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
