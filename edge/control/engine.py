"""The control engine: a cycle every control.cycle_ms (default 200 ms), and at once when an activation changes.

    1. read_image       the process image (Agent.image) -> measurements and capabilities;
    2. tick             the activation book (book.ActivationBook) and the uplink fail-safe;
    3. run_controllers  the controllers in priority order, the kernel, the points (planner.Planner);
    4. hand_to_writers  each device's set-points to its writer (writer.DeviceWriter: one task per device).

An activation becomes active when every target device has it written and read back; a write failure before that
fails it.

Fail-safe: with the uplink down for longer than an activation's revert time, it ends and the devices go back
to their safe defaults; the same revert time is written into the device (SunSpec *RvrtTms of 704) so the
inverter falls back by itself if the gateway dies. After a restart none is resumed: the activations that were
active (kept in <storage.dir>/activations.json with each device's last confirmed write) are left on the devices,
not written again, until their revert time counted from that write runs out, then reverted (see
ActivationBook.restore); one whose revert time ran out while the agent was down ends at once.

Two small APIs for other parts of the agent (docs/architecture.md):
- `add_listener(fn)`: fn(ActivationEvent) on every activation state change (activation id, issuer, type,
  devices, requested quantity and unit, resolved W per device, start/end UTC ns, state, reason).
- `hold_setpoint(device, w=... | var=... | limit_pct=..., duration_s=...)`: a set-point held on one device for a
  while (a prequalification step test), through the same state machine, priorities and traffic light.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping

from gridedge import contract
from gridedge.core.text import escape
from gridedge.contract import Command

from .activation import CHANNEL_POINTS, PENDING, Change, Listener
from .book import ActivationBook
from .capability import Capability
from .measure import Meas, read_meas
from .writer import DeviceWriter

if TYPE_CHECKING:
    from .planner import Plan

log = logging.getLogger("gridedge.control")

Report = Callable[..., Awaitable[None]]   # report(cmd_id, status, reason=None, **detail)
STATE_FILE = "activations.json"
START_WINDOW_S = 5.0   # hold_setpoint: how long the set-point may take to reach the device


_UNMEASURED = Meas()
IDLE_CYCLE_S = 5.0  # the cycle period of a gateway with nothing to control


class ControlEngine:
    """The cycle of one gateway. devices: id -> driver object with write_points; image: point id -> Sample."""

    def __init__(self, config, devices: Mapping[str, object], image: Mapping, report: Report, *,
                 uplink_up: Callable[[], bool] = lambda: True, storage_dir: Path | None = None, kernels=None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        ctl = config.control
        self.config = config
        self.ctl = ctl
        self.image = image
        self.report = report
        self.uplink_up = uplink_up
        self.clock = clock
        self.period_s = ctl.cycle_ms / 1000
        self.deadband_pct = ctl.write_deadband_pct
        self.dev_cfg = {d.id: d for d in config.devices}
        # Measurements are read for what control acts on or looks at: writable devices and the site meter. A
        # substation gateway reading a hundred meters must not pay for them every cycle.
        self._measured = [d.id for d in config.devices if d.writable and d.role != "meter"] \
            + ([ctl.poc.meter] if ctl.poc and ctl.poc.meter in self.dev_cfg else [])
        self.book = ActivationBook(self.capabilities, priorities=ctl.priorities, revert_s=ctl.revert_s)
        self.writers = {d.id: DeviceWriter(d.id, devices[d.id], self) for d in config.devices
                        if d.writable and d.role != "meter" and hasattr(devices[d.id], "write_points")}
        self.planner = None  # nothing to control (no writable device, no site limit): no kernels, no numpy loaded
        if self.writers or ctl.poc:
            from .controllers import PocLimit
            from .planner import Planner

            poc = ctl.poc and PocLimit(ctl.poc.meter, ctl.poc.export_limit_w, ctl.poc.import_limit_w,
                                       ctl.poc.fail_safe_pct)
            self.planner = Planner(ctl.profile, v_nom_v=ctl.v_nom_v, q_mode=ctl.q_mode, pf=ctl.pf, q_pct=ctl.q_pct,
                                   volt_watt=ctl.volt_watt, freq_watt=ctl.freq_watt, revert_s=ctl.revert_s, poc=poc,
                                   kernels=kernels)
        self.state_path = Path(storage_dir) / STATE_FILE if storage_dir is not None else None
        self.cycles = 0
        self.last_cycle_s = 0.0
        self._caps: dict[str, Capability] | None = None
        self._curve_warned: set[str] = set()
        self._meas: dict[str, Meas] = {}
        self._confirmed: dict[str, dict[str, dict]] = {}   # pending activation id -> device -> read-back
        self._wake = asyncio.Event()
        self._last_mono: float | None = None
        self._down_since: int | None = None
        self._saved_version = -1
        self._task: asyncio.Task | None = None
        self.gen = 0                                # generation of the last plan handed to the writers
        self._applied: dict[str, tuple[str, ...]] = {}   # activation id -> devices, in the last plan
        self._outq: list[tuple[list[Change], tuple[str, ...], int]] = []   # results waiting for a revert write
        # hooks the agent sets: is a restored activation still allowed (its issuer's rights in this run; None: no
        # check), and every write that changed a device's points, or failed (the audit trail)
        self.restore_check: Callable[[object], str | None] | None = None
        self.on_write: Callable[..., None] | None = None

    # ------------------------------------------------------------------ view of the devices

    def _stale_s(self, dev_id: str) -> float:
        poll = self.dev_cfg[dev_id].poll_ms / 1000
        return max(3 * poll, 2.0) + self.period_s

    def read_image(self, now_ns: int) -> None:
        """1. The process image -> measurements and capabilities of the devices control acts on or looks at."""
        self._meas = {d: read_meas(self.image, d, now_ns, self._stale_s(d)) for d in self._measured}
        caps = {}
        for d, cfg in self.dev_cfg.items():
            dc = self.ctl.device(d)
            m = self._meas.get(d, _UNMEASURED)
            caps[d] = Capability.build(d, cfg.role, cfg.writable, m.rated_w or dc.rated_w, device_q_var=m.q_rtg_var,
                                       cfg_p_min_w=dc.p_min_w, cfg_p_max_w=dc.p_max_w, cfg_q_max_var=dc.q_max_var)
            self._check_curve(caps[d])
        self._caps = caps

    def _check_curve(self, c: Capability) -> None:
        """Curves were checked against the configured ratings; a device reporting less is told once (and clamped)."""
        curve = {"volt_var": self.ctl.profile.volt_var, "watt_var": self.ctl.profile.watt_var}.get(self.ctl.q_mode)
        if curve is None or not c.known or not c.writable or c.device in self._curve_warned:
            return
        need = max(abs(q) for _, q in curve)
        if need > c.q_max_var / c.rated_w + 1e-9:
            self._curve_warned.add(c.device)
            log.warning("control: the %s curve asks up to %.3g pu of reactive power, %s can give %.3g pu; its "
                        "set-points are clamped", self.ctl.q_mode, need, c.device, c.q_max_var / c.rated_w)

    def capabilities(self) -> dict[str, Capability]:
        if self._caps is None:
            self.read_image(self.clock())
        return self._caps

    # ------------------------------------------------------------------ APIs

    def kernels(self) -> str:
        """Which control kernels run, for the start-up log."""
        if self.planner is None:
            return "control kernels: not loaded (no writable device and no site limit to control)"
        from gridedge.cext import describe

        return describe()

    def add_listener(self, fn: Listener) -> None:
        """Observer hook: fn(ActivationEvent) on every activation state change (see activation.py)."""
        self.book.listeners.append(fn)

    async def submit(self, cmd: Command) -> None:
        """A parsed command from the uplink (or a local API); results go out through report()."""
        self.read_image(self.clock())
        self._queue(self.book.submit(cmd, self.clock()), self.gen + 1)
        await self._flush()
        self._save()
        self.wake()

    async def hold_setpoint(self, device: str, *, duration_s: float, w: float | None = None,
                            var: float | None = None, limit_pct: float | None = None, issuer: str = "aggregator",
                            principal: str | None = None,
                            activation_id: str | None = None, revert_s: float | None = None) -> str:
        """Hold one set-point on one device for duration_s (a prequalification step test); returns its id.

        Exactly one of w (active power set-point, W), var (reactive power, var) or limit_pct (P ceiling, % of
        WMax). It is an activation like any other (results, priorities, traffic light, fail-safe)."""
        given = [(k, v) for k, v in (("w", w), ("var", var), ("limit_pct", limit_pct)) if v is not None]
        if len(given) != 1:
            raise ValueError("hold_setpoint takes exactly one of w, var, limit_pct")
        key, value = given[0]
        ctype = {"w": "set_active_power", "var": "set_reactive_power", "limit_pct": "limit_active_power"}[key]
        params = {key: value, "duration_s": duration_s} | ({"revert_s": revert_s} if revert_s is not None else {})
        act_id = activation_id or f"step-{uuid.uuid4().hex[:12]}"
        # it may start within START_WINDOW_S, so duration_s counts from when the device has it, exactly
        doc = {"schema": contract.SCHEMA_COMMAND, "cmd_id": act_id, "type": ctype,
               "device": device, "params": params,
               "valid_until": contract.iso_utc(self.clock() + int(START_WINDOW_S * 1e9))}
        try:  # the same checks as a command from the uplink
            cmd = contract.parse_command(contract.dumps(doc), self.clock(), issuer=issuer, principal=principal,
                                         max_activation_s=self.ctl.max_activation_s)
        except contract.CommandRejected as exc:
            raise ValueError(exc.reason) from None
        await self.submit(cmd)
        return act_id

    def wake(self) -> None:
        self._wake.set()

    def period(self) -> float:
        """The cycle period: control.cycle_ms, or IDLE_CYCLE_S with nothing to control."""
        return self.period_s if self.planner is not None else max(self.period_s, IDLE_CYCLE_S)

    # ------------------------------------------------------------------ the cycle

    def _queue(self, changes, need_gen: int) -> None:
        """Results go out in order; an activation that ended while applied is reported once the plan without it
        (its revert to the safe default) is written on its devices, so "completed" or "terminated" means done."""
        changes = [c for c in changes if c is not None]
        if not changes:
            return
        devs: set[str] = set()
        for ch in changes:
            if ch.status in ("completed", "expired", "cancelled", "terminated") and ch.cmd_id in self._applied:
                devs |= set(self._applied[ch.cmd_id])
        self._outq.append((changes, tuple(sorted(devs)), need_gen))

    def _ready(self, devs: tuple[str, ...], need_gen: int) -> bool:
        for d in devs:
            w = self.writers.get(d)
            if w is not None and w.done_gen < need_gen and not w.failures:
                return False
        return True

    async def _flush(self) -> None:
        while self._outq and self._ready(self._outq[0][1], self._outq[0][2]):
            changes, _devs, _gen = self._outq.pop(0)
            await self._publish(changes)

    async def _publish(self, changes) -> None:
        for ch in changes:
            if ch is None:
                continue
            try:
                await self.report(ch.cmd_id, ch.status, ch.reason, **ch.detail)
            except Exception:  # reporting must not stop control
                log.exception("control: reporting %s %s failed", escape(ch.cmd_id), ch.status)
        self._save()

    def step(self) -> None:
        """One cycle (no await); results are queued for _flush. Its phases, in order:"""
        t0 = time.perf_counter()
        now = self.clock()
        mono = time.monotonic()
        dt = self.period_s if self._last_mono is None else min(max(mono - self._last_mono, 1e-3), 5 * self.period_s)
        self._last_mono = mono
        self.read_image(now)
        ended = self.tick(now)
        in_force = self.book.in_force(now)
        plan = self.run_controllers(dt, in_force)
        self.gen += 1
        self._queue(ended, self.gen)      # what ended in the tick: reported once this plan is written
        self._queue(self.hand_to_writers(plan, in_force), self.gen)
        self.cycles += 1
        self.last_cycle_s = time.perf_counter() - t0

    def tick(self, now_ns: int) -> list[Change]:
        """2. The book ticks (completions, expiries, traffic-light periods, hand-overs) and the fail-safe checks
        the uplink: remote set-points end once it has been down for longer than their revert time."""
        changes = list(self.book.tick(now_ns))
        if self.uplink_up():
            self._down_since = None
        else:
            self._down_since = self._down_since or now_ns
            changes += self.book.revert_remote(now_ns, (now_ns - self._down_since) / 1e9)
        return changes

    def run_controllers(self, dt: float, in_force) -> "Plan | None":
        """3. The controllers in priority order, the kernel, the points (planner.Planner). With nothing to control
        there is no planner: activations are refused at validation, the lights and the book still tick."""
        if self.planner is None:
            return None
        return self.planner.plan(dt, self._meas, self._caps, [(a, self.book.effective(a)) for a in in_force])

    def hand_to_writers(self, plan: "Plan | None", in_force) -> list[Change]:
        """4. Each device's set-points go to its writer; a pending activation whose points a device already
        holds is confirmed on it at once (the others when their write is read back: _written)."""
        changes: list[Change] = []
        pending = {a.id for a in in_force if a.state in PENDING}
        held = {a.id for a in in_force if a.held_until_ns is not None}
        for dev_id, writer in self.writers.items() if plan is not None else ():
            dp = plan.devices.get(dev_id)
            if writer.held and not (dp is not None and dp.carries & held):
                writer.release_hold()
            if dp is None:
                writer.update(self.gen, {}, {}, False, set(), None, False)
                continue
            due = writer.update(self.gen, dp.points, dp.reversion, dp.remote, set(dp.carries),
                                self._caps[dev_id].rated_w, "ControllerHb" in self._meas[dev_id].supports)
            starting = dp.carries & pending
            if not due and starting:              # (what is already in force was confirmed when it was written)
                self._confirmations(dev_id, starting)
                changes += self._mark(dev_id, starting, {})
        self._applied = {a.id: a.devices for a in in_force}
        return changes

    def _mark(self, dev_id: str, ids: set[str], readback: dict) -> list[Change]:
        out = []
        for act_id in ids:
            act = self.book.get(act_id)
            if act is None or act.state not in PENDING:
                continue
            done = self._confirmed.setdefault(act_id, {})
            done[dev_id] = dict(readback)
            if set(done) >= set(act.devices):
                self._confirmed.pop(act_id, None)
                out += self.book.confirm(act_id, self.clock(), written=done)
        return out

    def _confirmations(self, dev_id: str, carries: set[str]) -> None:
        """The activations carried by a device's writer: when their set-point was last sent to it in a write that
        was read back, and what that write held (for the restart file: `ActivationBook.restore`)."""
        w = self.writers[dev_id]
        for act_id in carries:
            act = self.book.get(act_id)
            if act is None:
                continue
            points = {k: v for k, v in w.written.items() if k.startswith(CHANNEL_POINTS[act.channel])}
            sent = [w.sent_ns[k] for k in points if k in w.sent_ns]
            if sent:
                self.book.refresh(act_id, dev_id, max(sent), points)

    def _written(self, dev_id: str, carries: set[str], readback: dict) -> None:
        self._confirmations(dev_id, carries)
        self._queue(self._mark(dev_id, carries, readback), 0)
        self.wake()

    def wrote(self, dev_id: str, points: dict, carries: set[str], error: str | None = None) -> None:
        """A writer changed `points` on a device (or failed to: error); for the audit trail."""
        if self.on_write is not None:
            try:
                self.on_write(dev_id, points, sorted(carries), error)
            except Exception:  # the audit must never stop control
                log.exception("control: write hook failed")

    def _write_failed(self, dev_id: str, carries: set[str], reason: str) -> None:
        changes = []
        for act_id in carries:
            act = self.book.get(act_id)
            if act is not None and act.state in PENDING:
                self._confirmed.pop(act_id, None)
                changes += self.book.fail(act_id, self.clock(), f"write to {dev_id} failed: {reason}")
        self._queue(changes, 0)
        self.wake()

    async def run(self) -> None:
        """Cycle until cancelled; call start() first."""
        # Nothing to control: no periodic cycles to pay for, only the ones commands wake (to answer them) and a
        # slow tick for the traffic light's and the book's timers.
        period = self.period()
        while True:
            try:
                async with asyncio.timeout(period):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self.step()
                for w in self.writers.values():
                    w.poke()
            except Exception:  # a bug in one cycle must not end control; the next cycle tries again
                log.exception("control cycle failed")
            await self._flush()
            self._save()

    async def start(self) -> None:
        """Writers, and the activations of a previous run (held until their revert time, then reverted)."""
        for w in self.writers.values():
            w.task = asyncio.create_task(w.run(), name=f"control-writer:{w.id}")
        items = self._load()
        if items:
            self.read_image(self.clock())
            now = self.clock()
            changes = self.book.restore(items, now, self.restore_check)
            self._left_on_devices(now)
            await self._publish(changes)
        self._task = asyncio.create_task(self.run(), name="control")
        self.wake()

    def _left_on_devices(self, now_ns: int) -> None:
        """What a previous run wrote stays on the devices until their reversion timers run out: a held activation
        is not written again (nor kept alive) until then, and every device that carried one gets its safe default
        written once nothing asks for a set-point (a device without a reversion of its own needs it)."""
        for act in self.book.restored:
            for dev in act.devices:
                if self.planner is not None:
                    self.planner.assume_set(dev, act.channel)
                w = self.writers.get(dev)
                if w is not None and act.held_until_ns is not None:
                    w.hold(act.points.get(dev, {}), time.monotonic() + (act.held_until_ns - now_ns) / 1e9)

    async def close(self, timeout_s: float = 5.0) -> None:
        """End every activation, write the safe defaults and wait (bounded) for the writers."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._queue(self.book.end_all(self.clock(), "gateway agent shutting down"), self.gen + 1)
        self.step()
        try:
            async with asyncio.timeout(timeout_s):
                for w in self.writers.values():
                    await w.idle.wait()
        except TimeoutError:
            log.warning("control: safe defaults not all written within %.0f s", timeout_s)
        await self._flush()
        if self._outq:  # whatever could not be confirmed still gets reported
            for changes, _d, _g in self._outq:
                await self._publish(changes)
            self._outq.clear()
        for w in self.writers.values():
            if w.task is not None:
                w.task.cancel()
        await asyncio.gather(*(w.task for w in self.writers.values() if w.task), return_exceptions=True)
        self._save(force=True)

    # ------------------------------------------------------------------ restart file

    def _save(self, force: bool = False) -> None:
        if self.state_path is None or (self.book.version == self._saved_version and not force):
            return
        items = self.book.snapshot()
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"activations": items}))
            os.replace(tmp, self.state_path)
            self._saved_version = self.book.version
        except OSError as exc:
            log.error("control: cannot write %s: %s", self.state_path, exc)

    def _load(self) -> list[dict]:
        if self.state_path is None or not self.state_path.exists():
            return []
        try:
            doc = json.loads(self.state_path.read_text())
            items = doc["activations"]
            if not isinstance(items, list):
                raise ValueError("activations is not a list")
            return [i for i in items if isinstance(i, dict)]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("control: restart file %s unreadable (%s); no activation restored", self.state_path, escape(exc))
            return []
