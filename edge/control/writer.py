"""The writer of one device: set-points go out as they change, verified by read-back, kept alive while remote.

One task per device, so a slow or dead device never holds up the cycle or the others. It writes only what changed
(beyond control.write_deadband_pct), in one request per contiguous run, reads it back (the driver verifies),
re-writes while a device-side reversion is armed (every revert time / 3, so its timer never runs out while the
gateway is alive) and bumps the SunSpec 715 controller heartbeat once a second while remote set-points are in
force. It reports each write (and each failure) to its engine.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Mapping

from gridedge.core.text import escape

if TYPE_CHECKING:
    from .engine import ControlEngine

log = logging.getLogger("gridedge.control")

KEEPALIVE_MIN_S = 1.0
HEARTBEAT_S = 1.0


class DeviceWriter:
    """Writes one device's set-points: only changes, in one request per contiguous run, verified by read-back."""

    def __init__(self, device_id: str, device, engine: "ControlEngine") -> None:
        self.id = device_id
        self.device = device
        self.engine = engine
        self.desired: dict[str, float] = {}
        self.reversion: dict[str, float] = {}
        self.written: dict[str, float] = {}
        self.sent_ns: dict[str, int] = {}   # per point: when the last write of it that was read back was sent
        self.held: frozenset[str] = frozenset()   # after a restart: points the device holds, not re-written
        self.hold_until_mono = 0.0                 # ... until then
        self.remote = False
        self.rated_w: float | None = None
        self.carries: set[str] = set()
        self.heartbeat = False
        self.hb_value = 0
        self.last_write_mono = 0.0
        self.last_hb_mono = 0.0
        self.writes = 0
        self.failures = 0
        self.gen = 0            # generation of the plan in self.desired
        self.done_gen = 0       # newest generation written and read back (or with nothing to write)
        self._changed = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task | None = None

    def update(self, gen: int, points: dict[str, float], reversion: dict[str, float], remote: bool,
               carries: set[str], rated_w: float | None, heartbeat: bool) -> bool:
        """New set-points from the cycle; returns True if something is to be written."""
        self.desired, self.reversion, self.remote, self.carries = points, reversion, remote, carries
        self.rated_w, self.heartbeat, self.gen = rated_w, heartbeat, gen
        due = bool(self._diff(time.monotonic()))
        if due:
            self.idle.clear()
            self._changed.set()
        else:
            self.done_gen = gen
        return due

    def _differs(self, name: str, new: float) -> bool:
        old = self.written.get(name)
        if old is None:
            return True
        if name.endswith("Ena") or "Rvrt" in name or name == "ControllerHb":
            return old != new
        band = self.engine.deadband_pct
        if name.endswith("Pct"):
            return abs(new - old) > band
        tol = band / 100 * self.rated_w if self.rated_w else 0.0
        return abs(new - old) > tol

    def _diff(self, now_mono: float) -> dict[str, float]:
        out = {k: v for k, v in self.desired.items() if self._differs(k, v)}
        armed = {k: v for k, v in self.reversion.items() if self._differs(k, v)}
        if out or armed:
            out.update(armed)
        keepalive = max(KEEPALIVE_MIN_S, min(self.reversion.get(k, math.inf) for k in self.reversion) / 3) \
            if self.reversion else math.inf
        if not out and self.remote and self.reversion and now_mono - self.last_write_mono >= keepalive:
            held = self.held if now_mono < self.hold_until_mono else ()
            out = {k: v for k, v in self.desired.items() if k not in held}   # re-write: restarts its timers
        if self.heartbeat and self.remote and now_mono - self.last_hb_mono >= HEARTBEAT_S:
            out["ControllerHb"] = (self.hb_value + 1) % 2**32
        return out

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            now = time.monotonic()
            values = self._diff(now)
            carries, gen = set(self.carries), self.gen
            if not values:
                self.done_gen = max(self.done_gen, gen)
                self.idle.set()
                self.engine._written(self.id, carries, {})
                continue
            if "ControllerHb" in values:
                self.last_hb_mono = now
                self.hb_value = values["ControllerHb"]
            sent_ns = self.engine.clock()
            try:
                readback = await self.device.write_points(values)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a device error fails what it carried, never the engine
                self.failures += 1
                for k in values:
                    self.written.pop(k, None)
                log.warning("control: write to %s failed: %s", self.id, escape(exc))
                self.engine.wrote(self.id, values, carries, str(exc))
                self.engine._write_failed(self.id, carries, str(exc))
                await asyncio.sleep(min(0.25 * 2 ** min(self.failures, 6), 10.0))  # a dead device: back off
                self._changed.set()
                continue
            else:
                self.failures = 0
                self.writes += 1
                self.last_write_mono = time.monotonic()
                changed = {k: v for k, v in values.items() if k != "ControllerHb" and self.written.get(k) != v}
                if changed:  # keepalives and heartbeats repeat what the device has: not worth an audit record
                    self.engine.wrote(self.id, changed, carries)
                self.written.update(values)
                self.sent_ns.update(dict.fromkeys(values, sent_ns))
                self.done_gen = max(self.done_gen, gen)
                self.engine._written(self.id, carries, readback)
            if not self._diff(time.monotonic()):
                self.idle.set()
            else:
                self._changed.set()

    def hold(self, points: Mapping[str, float], until_mono: float) -> None:
        """After a restart: the device still holds these points (written before it), until its own reversion
        timer runs out at until_mono. They count as written, and are not re-written to keep that timer alive."""
        self.written.update(points)
        self.held, self.hold_until_mono = frozenset(points), until_mono

    def release_hold(self) -> None:
        """The held activation ended: what follows is kept alive as usual."""
        self.held, self.hold_until_mono = frozenset(), 0.0

    def poke(self) -> None:
        """Time-driven writes (keepalive, heartbeat) without a new plan."""
        if self._diff(time.monotonic()):
            self.idle.clear()
            self._changed.set()
