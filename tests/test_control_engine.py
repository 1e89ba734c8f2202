"""The control engine's asyncio layer against the real SunSpec simulator over Modbus TCP (no broker): the APIs
for other modules (listener, hold_setpoint), writers (only changes, keepalive, read-back), failures, restart file.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import pytest

from gridedge import contract
from gridedge.config import parse_config
from gridedge.control.activation import State
from gridedge.control.engine import ControlEngine, DeviceWriter
from gridedge.drivers.sunspec_tcp import SunSpecTcpDevice
from gridedge.hil.inverter_sim import InverterSim

from .aio import until

S = 1_000_000_000


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def config(port: int, storage, **control):
    data = {"gateway": {"id": "gw-t"}, "uplink": {"broker": "mqtt://127.0.0.1:1", "allow_plaintext": True},
            "storage": {"dir": str(storage)},
            "control": {"cycle_ms": 100, "revert_s": 30, "settings": {"ramp_up_pct_per_s": 0.0}} | control,
            "devices": [{"id": "inv1", "driver": "sunspec_tcp", "host": "127.0.0.1", "port": port, "writable": True,
                         "poll_ms": 100}]}
    return parse_config(data, check_files=False)


@contextlib.asynccontextmanager
async def bench(tmp_path, **control):
    """The simulator, a polled device filling the process image, and an engine with a result log."""
    sim = InverterSim(pv=8000.0, ramp_pct_per_s=100.0, step_s=0.05)
    port = await sim.start()
    dev = SunSpecTcpDevice("inv1", "127.0.0.1", port, timeout_s=1.0)
    await dev.connect()
    image: dict = {}
    results: list[tuple[str, str, str | None, dict]] = []
    changed = asyncio.Condition()

    async def report(cmd_id, status, reason=None, **detail):
        results.append((cmd_id, status, reason, detail))
        async with changed:
            changed.notify_all()

    async def poll():
        while True:
            for s in await dev.poll():
                image[s.point] = s
            await asyncio.sleep(0.1)

    poller = asyncio.create_task(poll())
    while "inv1/WMax" not in image:
        await asyncio.sleep(0.05)
    engine = ControlEngine(config(port, tmp_path, **control), {"inv1": dev}, image, report, storage_dir=tmp_path)

    async def wait(pred, timeout=10.0):
        async with asyncio.timeout(timeout):
            async with changed:
                await changed.wait_for(pred)

    engine.results, engine.wait_for, engine.sim = results, wait, sim
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await dev.close()
        await sim.stop()


def statuses(results, cmd_id):
    return [s for c, s, _, _ in results if c == cmd_id]


def test_hold_setpoint_and_the_listener_for_other_modules(tmp_path):
    async def go():
        async with bench(tmp_path) as eng:
            events = []
            eng.add_listener(events.append)
            act_id = await eng.hold_setpoint("inv1", limit_pct=30, duration_s=1.0, activation_id="step-1")
            assert act_id == "step-1"
            await eng.wait_for(lambda: "completed" in statuses(eng.results, "step-1"))
            assert statuses(eng.results, "step-1") == ["accepted", "active", "completed"]
            assert [e.state for e in events] == [State.RECEIVED, State.VALIDATED, State.ACTIVE, State.COMPLETED]
            ev = events[2]
            assert (ev.activation_id, ev.issuer, ev.type, ev.devices, ev.requested) == \
                ("step-1", "aggregator", "limit_active_power", ("inv1",), (30.0, "%"))
            assert ev.resolved_w == {"inv1": 3000.0} and ev.end_ns - ev.start_ns == 1_000_000_000
            # "active" once written and read back; "completed" once the next plan (the release starts) is written
            written = next(d for c, s, _, d in eng.results if c == "step-1" and s == "active")["written"]
            assert written["inv1"]["WMaxLimPct"] == 30.0 and written["inv1"]["WMaxLimPctEna"] == 1
            plant = eng.sim.plant
            async with asyncio.timeout(10):
                while plant.WMaxLimPctEna != 0:        # released (no release ramp in this config)
                    await asyncio.sleep(0.1)
            assert plant.WMaxLimPct == 100.0
            with pytest.raises(ValueError, match="exactly one of w, var, limit_pct"):
                await eng.hold_setpoint("inv1", w=100, var=5, duration_s=1)
            with pytest.raises(ValueError, match="params.duration_s: out of range"):
                await eng.hold_setpoint("inv1", w=100, duration_s=0.1)
            await eng.hold_setpoint("nope", w=100, duration_s=5, activation_id="step-2")
            assert [(s, r) for c, s, r, _ in eng.results if c == "step-2"] == \
                [("rejected", "device: unknown device 'nope'")]
    run(go())


def test_writes_only_changes_reads_back_and_keeps_the_device_reversion_alive(tmp_path):
    async def go():
        async with bench(tmp_path) as eng:
            plant = eng.sim.plant
            before = eng.sim.control_writes       # 704 writes; the 715 heartbeat beats besides them
            await eng.hold_setpoint("inv1", limit_pct=40, duration_s=60, activation_id="k1", revert_s=3)
            await eng.wait_for(lambda: "active" in statuses(eng.results, "k1"))
            active = next(d for c, s, _, d in eng.results if c == "k1" and s == "active")
            assert active["written"]["inv1"]["WMaxLimPctRvrtTms"] == 3
            assert (plant.WMaxLimPct, plant.WMaxLimPctEna, plant.WMaxLimPctRvrtTms) == (40.0, 1, 3)
            assert (plant.WMaxLimPctRvrt, plant.WMaxLimPctEnaRvrt) == (100.0, 0)
            first = eng.sim.control_writes
            assert first == before + 1        # one request: limit, enable and the reversion points together
            # nothing changes, but the device's 3 s reversion timer is kept from running out: re-written every
            # 1 s (revert / 3), so four keepalives span at least 3 s, the revert time, and the device never reverted
            t0 = time.monotonic()
            await until(lambda: eng.sim.control_writes - first >= 4, timeout=15)
            assert time.monotonic() - t0 >= 2.9   # not more often than every 1 s (load can only make it later)
            assert plant.reversions == 0 and plant.WMaxLimPctEna == 1
    run(go())


def test_a_write_that_fails_before_active_fails_the_activation(tmp_path):
    async def go():
        async with bench(tmp_path) as eng:
            await eng.sim.stop()              # the inverter is gone
            await eng.hold_setpoint("inv1", limit_pct=40, duration_s=60, activation_id="f1")
            await eng.wait_for(lambda: "failed" in statuses(eng.results, "f1"), timeout=15)
            (reason,) = [r for c, s, r, _ in eng.results if c == "f1" and s == "failed"]
            assert reason.startswith("write to inv1 failed:")
            await eng.sim.start()             # (stop() in the fixture needs it running)
    run(go())


def applied_704(caplog) -> list[str]:
    """The 704 writes the simulator applied (its log line 'applied write at A (model 704): {...} t_ns=T')."""
    return [r.getMessage().split(": ", 1)[1].rsplit(" t_ns=", 1)[0] for r in caplog.records
            if "(model 704)" in r.getMessage()]


async def crashed_with_a_limit(tmp_path) -> str:
    """An engine with a 40 % limit (revert 8 s) on the simulator dies without a clean close: the restart file."""
    state = tmp_path / "activations.json"
    async with bench(tmp_path) as eng:
        await eng.hold_setpoint("inv1", limit_pct=40, duration_s=600, activation_id="r1", revert_s=8)
        await eng.wait_for(lambda: "active" in statuses(eng.results, "r1"))
        await until(lambda: json.loads(state.read_text())["activations"][0]["confirmed_ns"])
        eng._task.cancel()                # the process dies: no clean close, the file stays
        for w in eng.writers.values():
            w.task.cancel()
        return state.read_text()


def test_restart_file_holds_what_is_left_of_the_revert_time_and_writes_nothing_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gridedge.hil.sunspec_sim")

    async def go():
        state = tmp_path / "activations.json"
        snapshot = await crashed_with_a_limit(tmp_path)
        (item,) = json.loads(snapshot)["activations"]
        # the restart file keeps when the set-point was last sent to the device and what that write held
        assert item["id"] == "r1" and item["points"]["inv1"]["WMaxLimPct"] == 40.0
        assert item["points"]["inv1"]["WMaxLimPctRvrtTms"] == 8
        confirmed = item["confirmed_ns"]["inv1"]
        # 1. back within the revert time: held for what is left of it, counted from the last confirmed write
        state.write_text(snapshot)
        caplog.clear()
        async with bench(tmp_path) as eng2:
            await eng2.wait_for(lambda: "terminated" in statuses(eng2.results, "r1"), timeout=15)
            assert statuses(eng2.results, "r1") == ["active", "terminated"]
            (held,) = [(r, d) for c, s, r, d in eng2.results if c == "r1" and s == "active"]
            assert "restarted: held until its revert time (8 s)" in held[0] and "not written again" in held[0]
            assert held[1]["end"] == contract.iso_utc(confirmed + 8 * S)
            # not written again (the new simulator never had it), only the safe default once the hold is over
            assert applied_704(caplog) == ["{'WMaxLimPctEna': 0, 'WMaxLimPct': 100.0}"]
        assert json.loads(state.read_text()) == {"activations": []}
        # 2. back after the revert time: the devices have reverted; it ends at once and is not resumed
        stale = json.loads(snapshot)
        stale["activations"][0]["confirmed_ns"]["inv1"] -= 60 * S
        state.write_text(json.dumps(stale))
        caplog.clear()
        async with bench(tmp_path) as eng3:
            await eng3.wait_for(lambda: "terminated" in statuses(eng3.results, "r1"))
            (reason,) = [r for c, s, r, _ in eng3.results if c == "r1"]
            assert reason.startswith("fail-safe: the gateway agent was down") and "not resumed" in reason
            await until(lambda: applied_704(caplog))
            cycles = eng3.cycles
            await until(lambda: eng3.cycles >= cycles + 10)      # ten more cycles: none may write the limit
            assert applied_704(caplog) == ["{'WMaxLimPctEna': 0, 'WMaxLimPct': 100.0}"]   # the safe default
    run(go())


def test_a_hold_ends_with_its_activation_and_the_next_one_is_kept_alive(tmp_path):
    """A restored activation is held (not kept alive) until its revert time; one that preempts it during the hold
    is written and kept alive as usual, so the device does not fall back under it."""
    async def go():
        snapshot = await crashed_with_a_limit(tmp_path)
        (tmp_path / "activations.json").write_text(snapshot)
        async with bench(tmp_path) as eng:
            await eng.wait_for(lambda: "active" in statuses(eng.results, "r1"))
            await eng.hold_setpoint("inv1", limit_pct=30, duration_s=60, activation_id="t1", revert_s=2,
                                    issuer="tso")
            await eng.wait_for(lambda: "active" in statuses(eng.results, "t1"))
            assert statuses(eng.results, "r1") == ["active", "terminated"]
            cycles = eng.cycles
            await until(lambda: eng.cycles >= cycles + 40)      # 4 s: twice the new revert time
            plant = eng.sim.plant
            assert (plant.WMaxLimPct, plant.WMaxLimPctEna, plant.reversions) == (30.0, 1, 0)
    run(go())


class RecordingDevice:
    """Stands in for a SunSpec device with model 715: no simulator on this branch implements 715 yet."""

    def __init__(self):
        self.writes: list[dict] = []

    async def write_points(self, values):
        self.writes.append(dict(values))
        return dict(values)


class StubEngine:
    deadband_pct = 0.2
    clock = staticmethod(time.time_ns)

    def _written(self, *a):
        pass

    def _write_failed(self, *a):
        pass

    def wrote(self, *a):
        pass


def test_writer_leaves_held_points_alone_and_keeps_the_others_alive():
    """After a restart the points a device still holds are neither written again nor kept alive (its own timer
    runs out); the writer's other set-points are kept alive as usual, and all of them once the hold is released."""
    async def go():
        dev = RecordingDevice()
        w = DeviceWriter("inv1", dev, StubEngine())
        w.task = asyncio.create_task(w.run())
        try:
            w.hold({"WMaxLimPct": 45.0, "WMaxLimPctEna": 1, "WMaxLimPctRvrtTms": 3}, time.monotonic() + 60)
            w.update(1, {"WMaxLimPct": 45.0, "WMaxLimPctEna": 1, "VArSet": -500.0, "VArSetEna": 1},
                     {"WMaxLimPctRvrtTms": 3, "VArSetRvrtTms": 3}, True, set(), 10000.0, False)
            await until(lambda: w.poke() or len(dev.writes) >= 3, every=0.1)     # poke: the engine's cycle
            assert dev.writes[0] == {"VArSet": -500.0, "VArSetEna": 1, "VArSetRvrtTms": 3}
            assert all(set(v) == {"VArSet", "VArSetEna"} for v in dev.writes[1:])      # keepalives, once a second
            w.release_hold()
            await until(lambda: w.poke() or "WMaxLimPct" in dev.writes[-1], every=0.1)
            assert dev.writes[-1] == {"WMaxLimPct": 45.0, "WMaxLimPctEna": 1, "VArSet": -500.0, "VArSetEna": 1}
        finally:
            w.task.cancel()
    run(go())


def test_writer_heartbeat_once_a_second_while_remote_set_points_are_in_force():
    async def go():
        dev = RecordingDevice()
        w = DeviceWriter("inv1", dev, StubEngine())
        w.task = asyncio.create_task(w.run())
        try:
            w.update(1, {"WMaxLimPct": 40.0, "WMaxLimPctEna": 1}, {}, True, set(), 10000.0, True)

            def beats():
                w.poke()
                return [v["ControllerHb"] for v in dev.writes if "ControllerHb" in v]

            t0 = time.monotonic()
            hbs = await until(lambda: len(beats()) >= 3 and beats(), timeout=10, every=0.1)
            assert time.monotonic() - t0 >= 1.9   # the first at once, then one a second: never faster
            assert hbs == list(range(1, len(hbs) + 1))
            assert dev.writes[0] == {"WMaxLimPct": 40.0, "WMaxLimPctEna": 1, "ControllerHb": 1}
            n = len(dev.writes)
            w.update(2, {"WMaxLimPct": 40.1, "WMaxLimPctEna": 1}, {}, False, set(), 10000.0, True)  # in dead band
            quiet_until = time.monotonic() + 1.5   # longer than a heartbeat period: a beat would have come
            while time.monotonic() < quiet_until:
                w.poke()
                await asyncio.sleep(0.1)
            assert len(dev.writes) == n         # no remote set-point: no heartbeat; 0.1 % change: not written
            w.update(3, {"WMaxLimPct": 45.0, "WMaxLimPctEna": 1}, {}, False, set(), 10000.0, True)
            await until(lambda: len(dev.writes) > n)
            assert dev.writes[-1] == {"WMaxLimPct": 45.0}
        finally:
            w.task.cancel()
    run(go())
