"""SunSpecTcpDevice against the real InverterSim (pymodbus server and client on loopback)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from gridedge.drivers.modbus import DeviceError
from gridedge.drivers.modbus_tcp import TcpLink
from gridedge.drivers.sunspec_models import model_layout
from gridedge.drivers.sunspec_tcp import SunSpecTcpDevice, WriteError
from gridedge.hil.inverter_sim import InverterSim
from gridedge.core.model import Detail, Validity

from .aio import arun, until


def by_name(samples):
    return {s.point.split("/", 1)[1]: s for s in samples}


class Rig:
    """A simulator and a connected device, torn down even when the test fails."""

    def __init__(self, **sim_kw):
        self.sim = InverterSim(**sim_kw)
        self.dev: SunSpecTcpDevice | None = None

    async def __aenter__(self):
        port = await self.sim.start()
        self.dev = SunSpecTcpDevice("inv1", "127.0.0.1", port, timeout_s=1.0)
        await self.dev.connect()
        return self

    async def __aexit__(self, *exc):
        await self.dev.close()
        await self.sim.stop()

    async def values(self):
        return {n: s.value for n, s in by_name(await self.dev.poll()).items()}


@pytest.mark.parametrize("base", [40000, 0, 50000])
def test_discovery_and_poll(base):
    async def main():
        async with Rig(base=base, serial="SN-42") as r:
            assert set(r.dev.models) == {1, 701, 702, 704, 705, 711, 712, 715}
            assert r.dev.discovery.base == base
            assert r.dev.models[1] == (base + 4, 66)
            assert r.dev.models[701] == (base + 72, 153)
            samples = await r.dev.poll()
            assert len({s.ts_ns for s in samples}) == 1
            assert all(s.point.startswith("inv1/") for s in samples)
            s = by_name(samples)
            for name, unit in (("W", "W"), ("VAr", "var"), ("Hz", "Hz"), ("PhVphA", "V"), ("TotWhExp", "Wh"),
                               ("WMax", "W"), ("WMaxLimPct", "%"), ("WMaxLimPctRvrtTms", "s")):
                assert s[name].validity is Validity.GOOD, name
                assert s[name].unit == unit, name
            assert s["W"].value == pytest.approx(8000, abs=50)
            assert s["WMax"].value == 10000
            assert s["Hz"].value == pytest.approx(50.0)
            assert s["PhVphA"].value == pytest.approx(230.0)
            assert s["WMaxLimPctEna"].value == 0
            # in 704 but not implemented by the simulator: invalid, never a number
            assert s["PFWInj"].validity is Validity.INVALID and s["PFWInj"].detail is Detail.NOT_IMPLEMENTED
    arun(main())


def test_configured_points_only_and_unknown_name():
    async def main():
        async with Rig() as r:
            dev = SunSpecTcpDevice("inv2", "127.0.0.1", r.sim.port, points=["W", "Hz"])
            try:
                s = await dev.poll()           # connects and discovers on first poll
                assert [x.point for x in s] == ["inv2/W", "inv2/Hz"] and all(x.good for x in s)
            finally:
                await dev.close()
    arun(main())
    with pytest.raises(ValueError, match="unknown canonical"):
        SunSpecTcpDevice("x", "127.0.0.1", 1, points=["Watts"])


def test_write_limit_reads_back_and_plant_ramps_down():
    async def main():
        async with Rig(ramp_pct_per_s=20.0) as r:
            rb = await r.dev.write_points({"WMaxLimPct": 50, "WMaxLimPctEna": 1})
            assert rb == {"WMaxLimPct": 50.0, "WMaxLimPctEna": 1}
            assert r.sim.plant.WMaxLimPctEna == 1 and r.sim.plant.WMaxLimPct == 50.0
            assert r.sim.writes_applied == 1       # both points in one contiguous write

            async def limited():
                v = await r.values()
                return v if v["W"] is not None and v["W"] <= 5000 + 1 else None
            v = await until(limited, timeout=10)
            assert v["W"] == pytest.approx(5000, abs=1)
            assert v["WMaxLimPct"] == 50.0 and v["WMaxLimPctEna"] == 1
    arun(main())


def test_device_reverts_when_controller_goes_silent():
    async def main():
        async with Rig(ramp_pct_per_s=100.0) as r:
            await r.dev.write_points({"WMaxLimPct": 30, "WMaxLimPctEna": 1, "WMaxLimPctRvrt": 100,
                                      "WMaxLimPctEnaRvrt": 0, "WMaxLimPctRvrtTms": 1})

            async def reverted():
                v = await r.values()
                return v if v["WMaxLimPctEna"] == 0 else None
            v = await until(reverted, timeout=10)
            assert v["WMaxLimPct"] == 100.0 and v["WMaxLimPctRvrtRem"] == 0
            assert r.sim.plant.reversions == 1
    arun(main())


def test_out_of_range_write_raises_and_changes_nothing():
    async def main():
        async with Rig() as r:
            before = await r.values()
            # refused by the device (ILLEGAL_DATA_VALUE): fits the register, not the plant
            with pytest.raises(WriteError) as ei:
                await r.dev.write_points({"WMaxLimPct": 150, "WMaxLimPctEna": 1})
            assert ei.value.detail is Detail.DEVICE_EXCEPTION and ei.value.exception_code == 3
            assert r.sim.writes_refused == 1 and r.sim.writes_applied == 0
            # refused locally, before anything is sent: does not fit the register type
            with pytest.raises(WriteError, match="out of range") as ei:
                await r.dev.write_points({"WMaxLimPctRvrt": 80, "WMaxLimPct": -5})
            assert ei.value.detail is Detail.OUT_OF_RANGE
            for bad, match in (({"W": 100}, "read-only"), ({"WMaxLimPctRvrtRem": 5}, "read-only"),
                               ({"Watts": 1}, "unknown"), ({"WMaxLimPct": float("nan")}, "finite"), ({}, "nothing")):
                with pytest.raises(WriteError, match=match):
                    await r.dev.write_points(bad)
            assert r.sim.writes_refused == 1 and r.sim.writes_applied == 0
            after = await r.values()
            for k in ("WMaxLimPct", "WMaxLimPctEna", "WMaxLimPctRvrt"):
                assert after[k] == before[k], k
            assert r.sim.plant.WMaxLimPctRvrt == 100.0
    arun(main())


def test_raw_writes_to_read_only_or_unimplemented_registers_are_refused():
    async def main():
        async with Rig() as r:
            c = TcpLink("127.0.0.1", r.sim.port, timeout_s=1.0)
            try:
                w_addr = r.dev.models[701][0] - 2 + model_layout(701).points["W"].offset
                with pytest.raises(DeviceError) as ei:
                    await c.write(1, w_addr, [1])
                assert ei.value.detail is Detail.DEVICE_EXCEPTION and ei.value.exception_code == 2
                # only the first register of the two-register WMaxLimPctRvrtTms
                half = r.dev.models[704][0] - 2 + model_layout(704).points["WMaxLimPctRvrtTms"].offset
                with pytest.raises(DeviceError) as ei:
                    await c.write(1, half, [0])
                assert ei.value.exception_code == 2
                pf = r.dev.models[704][0] - 2 + model_layout(704).points["PFWInjEna"].offset
                with pytest.raises(DeviceError) as ei:
                    await c.write(1, pf, [1])            # RW in 704, not implemented by this device
                assert ei.value.exception_code == 2
                assert r.sim.writes_applied == 0
                with pytest.raises(DeviceError) as ei:
                    await c.read(1, "holding", r.sim.end_addr, 5)     # past the end marker
                assert ei.value.exception_code == 2
                with pytest.raises(ValueError):
                    await c.read(1, "holding", 0, 126)
                assert (await c.read(1, "holding", r.sim.base, 2)) == [0x5375, 0x6E53]
            finally:
                await c.close()
    arun(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_absent_device_gives_invalid_samples():
    async def main():
        dev = SunSpecTcpDevice("gone", "127.0.0.1", _free_port(), timeout_s=0.5, points=["W", "WMaxLimPct"])
        samples = await dev.poll()
        assert [s.point for s in samples] == ["gone/W", "gone/WMaxLimPct"]
        assert all(s.validity is Validity.INVALID and s.value is None for s in samples)
        assert {s.detail for s in samples} <= {Detail.COMM_FAILURE, Detail.TIMEOUT}
        with pytest.raises(DeviceError):
            await dev.connect()
        with pytest.raises(WriteError):
            await dev.write_points({"WMaxLimPct": 50})
        other = SunSpecTcpDevice("g", "127.0.0.1", _free_port(), timeout_s=0.5)
        assert all(not s.good for s in await other.poll())
        await other.close()
        await dev.close()
    arun(main())


def test_silent_device_gives_timeout():
    async def main():
        async def swallow(reader, writer):
            try:
                while await reader.read(1024):
                    pass
            finally:
                writer.close()
        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            dev = SunSpecTcpDevice("mute", "127.0.0.1", port, timeout_s=0.3, points=["W"])
            samples = await dev.poll()
            assert samples[0].validity is Validity.INVALID and samples[0].detail is Detail.TIMEOUT
            await dev.close()
        finally:
            server.close()
            await server.wait_closed()
    arun(main())


def test_device_lost_after_discovery():
    async def main():
        sim = InverterSim()
        port = await sim.start()
        dev = SunSpecTcpDevice("inv1", "127.0.0.1", port, timeout_s=0.5)
        try:
            await dev.connect()
            assert all(s.good for s in await dev.poll() if s.point.endswith(("/W", "/Hz")))
            await sim.stop()
            samples = await dev.poll()
            assert samples and all(not s.good for s in samples)
            assert {s.detail for s in samples} <= {Detail.COMM_FAILURE, Detail.TIMEOUT}
        finally:
            await dev.close()
            await sim.stop()
    arun(main())


def _firmware_update(port: int) -> InverterSim:
    """The same device back on the same port with model 702 inserted before 704: 704 moves, 701 stays put."""
    return InverterSim(port=port, models=(1, 701, 702, 704))


def test_a_changed_model_chain_is_rediscovered_and_never_decoded_from_the_old_addresses():
    """A firmware update changes the model chain under a running poll group (the agent's path, run()). Samples
    of the moved model turn BAD_REFERENCE (its header no longer matches), the device is discovered again, and the
    same points come back good from the new addresses. No value is ever decoded from the wrong registers, and a
    write lands in the new 704."""
    async def main():
        old = InverterSim(models=(1, 701, 704))
        port = await old.start()
        dev = SunSpecTcpDevice("inv1", "127.0.0.1", port, timeout_s=0.5, points=["W", "WMaxLimPct", "WMaxLimPctEna"])
        seen: list = []
        task = None
        new = None
        try:
            await dev.connect()
            a704 = dev.models[704][0]
            task = asyncio.create_task(dev.run(seen.extend))
            await until(lambda: any(s.good for s in seen), 10)
            await old.stop()
            new = _firmware_update(port)
            await new.start()
            mark = len(seen)
            await until(lambda: 702 in dev.models and any(
                s.good and s.point == "inv1/WMaxLimPct" for s in seen[mark:]), 20)
            assert dev.rediscoveries == 1 and dev.models[704][0] != a704
            after = seen[mark:]
            assert Detail.BAD_REFERENCE in {s.detail for s in after if s.point == "inv1/WMaxLimPct"}
            for s in seen:
                if s.good and s.point == "inv1/WMaxLimPct":
                    assert s.value == 100.0
                if s.good and s.point == "inv1/WMaxLimPctEna":
                    assert s.value == 0
                if s.good and s.point == "inv1/W":
                    assert 7900 <= s.value <= 8100
            assert await dev.write_points({"WMaxLimPct": 40.0, "WMaxLimPctEna": 1}) == {"WMaxLimPct": 40.0,
                                                                                       "WMaxLimPctEna": 1}
            assert new.plant.WMaxLimPct == 40.0 and new.plant.WMaxLimPctEna == 1
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await dev.close()
            await old.stop()
            if new is not None:
                await new.stop()
    arun(main(), timeout=60)


def test_a_write_after_the_chain_changed_is_refused_then_lands_after_rediscovery():
    """poll() has not seen the change yet: the write's own read of 704 finds another model's header, so it is
    refused (BAD_REFERENCE) before any register is written; the next write discovers the new map and lands."""
    async def main():
        old = InverterSim(models=(1, 701, 704))
        port = await old.start()
        dev = SunSpecTcpDevice("inv1", "127.0.0.1", port, timeout_s=0.5)
        new = None
        try:
            await dev.connect()
            await old.stop()
            new = _firmware_update(port)
            await new.start()
            for _ in range(5):          # the first request after the restart may find the old connection gone
                try:
                    await dev.write_points({"WMaxLimPct": 55.0})
                    raise AssertionError("a write into the old 704 address was not refused")
                except WriteError as exc:
                    if exc.detail is Detail.BAD_REFERENCE:
                        break
            else:
                raise AssertionError("the changed map was never noticed")
            assert new.writes_applied == 0 and new.writes_refused == 0
            assert await dev.write_points({"WMaxLimPct": 55.0}) == {"WMaxLimPct": 55.0}
            assert new.plant.WMaxLimPct == 55.0 and dev.rediscoveries == 1
        finally:
            await dev.close()
            await old.stop()
            if new is not None:
                await new.stop()
    arun(main())


def test_cli_ready_line_serves_and_stops_on_sigterm():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gridedge.hil.inverter_sim", "--port", "0", "--w-max", "5000",
                             "--pv-w", "4000", "--ramp-pct-per-s", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()          # blocks until the child prints READY (or exits)
        assert line.startswith("READY "), (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.split()[1])

        async def main():
            dev = SunSpecTcpDevice("cli", "127.0.0.1", port)
            try:
                s = by_name(await dev.poll())
                assert s["WMax"].value == 5000 and s["W"].value == pytest.approx(4000, abs=50)
                await dev.write_points({"WMaxLimPct": 20, "WMaxLimPctEna": 1})
            finally:
                await dev.close()
        arun(main())
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        err = proc.stderr.read()
        assert rc == 0, err
        assert "applied write" in err and "WMaxLimPct" in err
        assert proc.stdout.read() == ""        # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
