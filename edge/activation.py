"""DSO/TSO activations: limit active power for a while, then give the inverter back its previous limit.

Each activation walks received -> validated -> active -> completed | terminated | failed (or rejected),
and every transition is reported to the operator. Writes go only to devices configured writable.
The same cmd_id is never executed twice: a re-delivered command gets its last result again.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from .contract import Command, iso_utc

log = logging.getLogger(__name__)

LIMIT_POINTS = ("WMaxLimPct", "WMaxLimPctEna")
NO_LIMIT = {"WMaxLimPct": 100.0, "WMaxLimPctEna": 0.0}


class Writable(Protocol):
    capability: str

    async def write_points(self, values: dict[str, float]) -> dict[str, float]: ...


Report = Callable[..., Awaitable[None]]  # report(cmd_id, status, reason=None, **detail)


@dataclass
class Activation:
    cmd: Command
    devices: tuple[str, ...]
    end_ns: int
    state: str = "validated"
    previous: dict[str, dict[str, float]] = field(default_factory=dict)
    timer: asyncio.Task | None = None


class ActivationManager:
    def __init__(
        self,
        devices: dict[str, Writable],
        writable: set[str],
        latest: Callable[[str], float | None],
        report: Report,
        priorities: tuple[str, ...] = ("tso", "dso", "aggregator"),
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.devices = devices
        self.writable = writable
        self.latest = latest  # point id -> last good value, from the process image
        self.report = report
        self.rank = {issuer: i for i, issuer in enumerate(priorities)}
        self.clock = clock
        self.active: dict[str, Activation] = {}  # by cmd_id
        self._lock = asyncio.Lock()

    def _targets(self, cmd: Command) -> tuple[str, ...]:
        if cmd.device is not None:
            if cmd.device not in self.devices:
                raise ValueError(f"device: unknown device {cmd.device!r}")
            if self.devices[cmd.device].capability != "inverter":
                raise ValueError(f"device: {cmd.device!r} is not an inverter")
            if cmd.device not in self.writable:
                raise ValueError(f"device: {cmd.device!r} is read-only (writable = false in the configuration)")
            return (cmd.device,)
        inverters = [d for d, dev in self.devices.items() if dev.capability == "inverter"]
        targets = tuple(d for d in inverters if d in self.writable)
        if not targets:
            read_only = ", ".join(inverters)
            raise ValueError("no writable inverter on this gateway"
                             + (f" ({read_only}: read-only, writable = false in the configuration)" if read_only else ""))
        return targets

    async def handle(self, cmd: Command) -> None:
        async with self._lock:
            if cmd.type == "terminate":
                await self._terminate(cmd)
            else:
                await self._start(cmd)

    async def _start(self, cmd: Command) -> None:
        try:
            targets = self._targets(cmd)
        except ValueError as exc:
            await self.report(cmd.cmd_id, "rejected", str(exc))
            return
        for other in list(self.active.values()):
            if not set(other.devices) & set(targets):
                continue
            if self.rank[cmd.issuer] < self.rank[other.cmd.issuer]:
                await self._finish(other, "terminated", f"preempted by {cmd.issuer} activation {cmd.cmd_id}")
            else:
                await self.report(cmd.cmd_id, "rejected",
                                  f"conflict: {other.cmd.issuer} activation {other.cmd.cmd_id} is active on "
                                  f"{', '.join(other.devices)} and has equal or higher priority")
                return
        now = self.clock()
        act = Activation(cmd, targets, now + int(cmd.params["duration_s"] * 1e9))
        await self.report(cmd.cmd_id, "accepted", None, devices=list(targets))
        for dev_id in targets:
            act.previous[dev_id] = self._previous_limit(dev_id)
        try:
            for dev_id in targets:
                await self.devices[dev_id].write_points({"WMaxLimPct": cmd.params["limit_pct"], "WMaxLimPctEna": 1})
        except Exception as exc:  # a device error must end in a reported failure, never a dead agent
            log.error("activation %s: write failed: %s", cmd.cmd_id, exc)
            await self._restore(act)
            await self.report(cmd.cmd_id, "failed", f"write failed: {exc}")
            return
        act.state = "active"
        self.active[cmd.cmd_id] = act
        await self.report(cmd.cmd_id, "active", None, limit_pct=cmd.params["limit_pct"], end=iso_utc(act.end_ns))
        act.timer = asyncio.create_task(self._expire(act))

    def _previous_limit(self, dev_id: str) -> dict[str, float]:
        prev = {}
        for name in LIMIT_POINTS:
            value = self.latest(f"{dev_id}/{name}")
            prev[name] = NO_LIMIT[name] if value is None else value
        return prev

    async def _expire(self, act: Activation) -> None:
        await asyncio.sleep(max(0.0, (act.end_ns - self.clock()) / 1e9))
        async with self._lock:
            if self.active.get(act.cmd.cmd_id) is act:
                await self._finish(act, "completed", None)

    async def _terminate(self, cmd: Command) -> None:
        target = self.active.get(cmd.params["activation_id"])
        if target is None:
            await self.report(cmd.cmd_id, "rejected", f"no active activation {cmd.params['activation_id']!r}")
            return
        if self.rank[cmd.issuer] > self.rank[target.cmd.issuer]:
            await self.report(cmd.cmd_id, "rejected",
                              f"{cmd.issuer} may not terminate a {target.cmd.issuer} activation")
            return
        await self.report(cmd.cmd_id, "accepted", None)
        await self._finish(target, "terminated", f"terminated by {cmd.issuer} command {cmd.cmd_id}")
        await self.report(cmd.cmd_id, "completed", None)

    async def _finish(self, act: Activation, status: str, reason: str | None) -> None:
        self.active.pop(act.cmd.cmd_id, None)
        if act.timer is not None and act.timer is not asyncio.current_task():
            act.timer.cancel()
        failed = await self._restore(act)
        act.state = status
        if failed:
            await self.report(act.cmd.cmd_id, "failed", f"restoring the previous limit failed: {failed}")
        else:
            await self.report(act.cmd.cmd_id, status, reason, restored=act.previous)

    async def _restore(self, act: Activation) -> str | None:
        errors = []
        for dev_id, prev in act.previous.items():
            try:
                await self.devices[dev_id].write_points(prev)
            except Exception as exc:
                errors.append(f"{dev_id}: {exc}")
        return "; ".join(errors) or None

    async def close(self) -> None:
        """On shutdown, give every device its previous limit back: a stopped agent must not leave a curtailment."""
        async with self._lock:
            for act in list(self.active.values()):
                await self._finish(act, "terminated", "gateway agent shutting down")

