"""Bus scheduler: one queue per physical link (a serial line, or a TCP connection), so a dead or slow device cannot
stall the others and a set-point write never collides with a poll.

Rules (domain brief section 5 and 8):
- One outstanding request per link (Modbus does not pipeline); a TCP link may declare more (`max_outstanding`, one
  connection each), but a device never has two requests in flight.
- Scheduling is per request: writes (and their read-backs) jump the queue at the next request boundary, never in
  the middle of a read. Reads go earliest-due first.
- Poll groups have their own periods; first due times are staggered (golden-ratio spread) so groups and devices
  do not all fire in the same instant.
- A group delayed by others (e.g. a probe waiting out a timeout) catches up its missed slots, up to `catch_up_s`,
  so it keeps its configured rate over any window; a group slower than its own period runs back to back instead,
  without bursting, so only the slow device loses rate.
- Each device has a circuit breaker: closed -> open after `threshold` consecutive failures -> one half-open probe
  after the back-off (doubling up to `max_backoff_s`) -> closed on success. While open, its reads complete at once
  as INVALID (the last failure's detail) without touching the link, and writes are refused.

Results are handed to the poll group's handler as a list of (registers | DeviceError, UTC ns) in read order, once per
period: decoding into Samples is the device's business (drivers/regmap_device.py). Besides Modbus Read and Write, an
operation may be any object with `async run(link)` (a DLMS exchange, drivers/dlms/device.py): it is scheduled,
timed and counted against its device's breaker the same way, and its result is whatever run returns.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gridedge.core.model import Detail
from gridedge.core.text import escape

from .modbus import DeviceError

__all__ = [
    "BreakerState", "CircuitBreaker", "Read", "Write", "Result", "BusDevice", "PollGroup", "Bus", "BusPool", "POOL",
]

log = logging.getLogger(__name__)

_PHI = 0.6180339887498949
#: Failures that say the device (or the link) is not there: the rest of that device's tick is not attempted.
_GONE = (Detail.TIMEOUT, Detail.COMM_FAILURE)


# ---------------------------------------------------------------- circuit breaker (sans-IO)

class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per-device breaker; time is passed in (monotonic seconds), so it is tested without a clock."""

    def __init__(self, threshold: int = 3, base_backoff_s: float = 1.0, max_backoff_s: float = 60.0):
        if not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"threshold must be an integer >= 1, got {threshold!r}")
        if not 0 < base_backoff_s <= max_backoff_s:
            raise ValueError(f"need 0 < base_backoff_s <= max_backoff_s, got {base_backoff_s!r}, {max_backoff_s!r}")
        self.threshold, self.base_backoff_s, self.max_backoff_s = threshold, base_backoff_s, max_backoff_s
        self.state = BreakerState.CLOSED
        self.failures = 0                  # consecutive
        self.backoff_s = base_backoff_s
        self.retry_at = 0.0
        self.last_detail = Detail.COMM_FAILURE
        self.last_error = ""
        self.opened = 0                    # how many times it opened (for logs and tests)

    def admit(self, now: float) -> str:
        """"pass" (closed), "probe" (the one half-open attempt; the caller must report its outcome) or "block"."""
        if self.state is BreakerState.CLOSED:
            return "pass"
        if self.state is BreakerState.OPEN and now >= self.retry_at:
            self.state = BreakerState.HALF_OPEN
            return "probe"
        return "block"

    def success(self) -> bool:
        """Record an answer; True if this closed an open breaker."""
        was = self.state
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.backoff_s = self.base_backoff_s
        return was is not BreakerState.CLOSED

    def failure(self, now: float, detail: Detail, error: str = "") -> bool:
        """Record a failure; True if this (re)opened the breaker."""
        self.failures += 1
        self.last_detail, self.last_error = detail, error
        if self.state is BreakerState.HALF_OPEN:
            self.backoff_s = min(self.backoff_s * 2, self.max_backoff_s)
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self.backoff_s = self.base_backoff_s
        else:
            return False
        self.state = BreakerState.OPEN
        self.retry_at = now + self.backoff_s
        self.opened += 1
        return True

    def release_probe(self) -> None:
        """A probe was admitted but not used (nothing to send): back to open, same retry time."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN


# ---------------------------------------------------------------- operations

@dataclass(frozen=True, slots=True)
class Read:
    """Read `count` registers of `table` ("holding" or "input") from `address`."""

    table: str
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Write:
    """Write holding registers from `address`."""

    address: int
    values: tuple[int, ...]


#: One read's outcome: the registers, or the DeviceError that says why not; with the UTC ns it completed.
Result = tuple["list[int] | DeviceError", int]


@dataclass(eq=False)
class BusDevice:
    """A unit on a bus: its id on the link and its breaker."""

    bus: Bus
    unit_id: int
    name: str
    breaker: CircuitBreaker
    in_flight: int = 0
    urgent_waiting: int = 0
    requests: int = 0
    bus_time_s: float = 0.0

    async def read(self, table: str, address: int, count: int, *, urgent: bool = True) -> list[int]:
        return await self.bus.request(self, Read(table, address, count), urgent=urgent)

    async def write(self, address: int, values: Sequence[int]) -> None:
        await self.bus.request(self, Write(address, tuple(values)), urgent=True)


@dataclass(eq=False)
class PollGroup:
    """Reads of one device polled together every `period_s`; `handler` gets the results once per period."""

    device: BusDevice
    name: str
    period_s: float | None                 # None: a one-off read
    reads: tuple[Read, ...]
    handler: Callable[[list[Result]], None]
    due: float = 0.0
    ticks: int = 0
    missed: int = 0
    # the tick in progress
    _tick_due: float | None = None
    _next: int = 0
    _results: list = field(default_factory=list)
    _busy: bool = False
    _bus_time: float = 0.0
    _probe: bool = False


@dataclass(eq=False)
class _Urgent:
    device: BusDevice
    op: Read | Write
    future: asyncio.Future


# ---------------------------------------------------------------- the bus

class Bus:
    """One physical link and everything polled over it. `links` holds one link per allowed outstanding request
    (serial: exactly one)."""

    def __init__(self, links: Sequence, name: str = "", *, catch_up_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not links:
            raise ValueError("a bus needs at least one link")
        self.links = list(links)
        self.name = name or getattr(self.links[0], "name", "bus")
        timeout = max(float(getattr(l, "timeout_s", 1.0)) for l in self.links)
        self.catch_up_s = 2 * timeout + 0.5 if catch_up_s is None else float(catch_up_s)
        self.clock = clock
        self.devices: list[BusDevice] = []
        self.groups: list[PollGroup] = []
        self._urgent: deque[_Urgent] = deque()
        self._workers: list[asyncio.Task] = []
        self._sleepers: list[asyncio.Future] = []
        self._added = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0

    @property
    def stale(self) -> bool:
        """Started on an event loop that has since closed (a device was never closed): unusable."""
        return self._loop is not None and self._loop.is_closed()

    # -- set-up
    def device(self, unit_id: int, name: str, *, threshold: int = 3, base_backoff_s: float = 1.0,
               max_backoff_s: float = 60.0) -> BusDevice:
        dev = BusDevice(self, unit_id, name, CircuitBreaker(threshold, base_backoff_s, max_backoff_s))
        self.devices.append(dev)
        return dev

    def add_group(self, device: BusDevice, name: str, period_s: float | None, reads: Sequence[Read],
                  handler: Callable[[list[Result]], None], *, phase_s: float | None = None) -> PollGroup:
        """Poll `reads` every `period_s` (first time staggered, or at `phase_s` from now)."""
        if device.bus is not self:
            raise ValueError(f"device {device.name} is not on bus {self.name}")
        if period_s is not None and not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        if not reads:
            raise ValueError("a poll group needs at least one read")
        g = PollGroup(device, name, period_s, tuple(reads), handler)
        now = self.clock()
        if period_s is None:
            g.due = now
        else:
            offset = (self._added * _PHI) % 1.0 * period_s if phase_s is None else phase_s
            self._added += 1
            g.due = now + offset
        self.groups.append(g)
        self._kick()
        return g

    def remove_group(self, g: PollGroup) -> None:
        if g in self.groups:
            self.groups.remove(g)

    def remove_device(self, dev: BusDevice) -> None:
        for g in [g for g in self.groups if g.device is dev]:
            self.remove_group(g)
        if dev in self.devices:
            self.devices.remove(dev)

    def start(self) -> None:
        """Start the workers (idempotent); needs a running event loop."""
        if self._workers or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._workers = [asyncio.create_task(self._worker(link), name=f"bus:{self.name}:{i}")
                         for i, link in enumerate(self.links)]

    async def close(self) -> None:
        self._closed = True
        for t in self._workers:
            t.cancel()
        self._kick()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while self._urgent:
            u = self._urgent.popleft()
            if not u.future.done():
                u.future.set_exception(DeviceError(f"{self.name}: bus closed", Detail.COMM_FAILURE))
        for link in self.links:
            try:
                await link.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                log.debug("closing %s failed", link, exc_info=True)

    # -- public requests
    async def request(self, device: BusDevice, op: Read | Write, *, urgent: bool = True):
        """Run one operation for `device` ahead of scheduled reads; returns the registers (Read) or None (Write).
        Raises DeviceError (at once, without the link, while the device's breaker is open)."""
        if self._closed:
            raise DeviceError(f"{self.name}: bus closed", Detail.COMM_FAILURE)
        b = device.breaker
        if b.state is not BreakerState.CLOSED and not (b.state is BreakerState.OPEN and self.clock() >= b.retry_at):
            raise DeviceError(f"{device.name}: unavailable (circuit open after {b.failures} failure(s): "
                              f"{b.last_error or b.last_detail.value}; next try in "
                              f"{max(0.0, b.retry_at - self.clock()):.1f} s)", b.last_detail)
        self.start()
        fut = asyncio.get_running_loop().create_future()
        if urgent:
            self._urgent.append(_Urgent(device, op, fut))
            device.urgent_waiting += 1
            self._kick()
            return await fut
        if isinstance(op, Write):
            raise ValueError("writes are always urgent")

        def done(results: list[Result]) -> None:
            value, _ = results[0]
            if not fut.done():
                if isinstance(value, DeviceError):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
        self.add_group(device, "once", None, [op], done)
        return await fut

    async def read_once(self, device: BusDevice, reads: Sequence[Read]) -> list[Result]:
        """All `reads` of `device` as one tick, due now, in the normal order (not ahead of the queue)."""
        self.start()
        fut = asyncio.get_running_loop().create_future()

        def done(results: list[Result]) -> None:
            if not fut.done():
                fut.set_result(results)
        self.add_group(device, "once", None, reads, done)
        return await fut

    # -- scheduling
    def _kick(self) -> None:
        sleepers, self._sleepers = self._sleepers, []
        for f in sleepers:
            if not f.done():
                f.set_result(None)

    async def _sleep_until(self, when: float | None) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._sleepers.append(fut)
        handle = None
        if when is not None:
            handle = loop.call_later(max(0.0, when - self.clock()), lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            if fut in self._sleepers:
                self._sleepers.remove(fut)

    def _pick(self, now: float) -> tuple[_Urgent | PollGroup | None, float | None]:
        """The next operation to run, or (None, when to look again)."""
        for u in self._urgent:
            if u.device.in_flight == 0:
                self._urgent.remove(u)
                u.device.urgent_waiting -= 1
                return u, None
        best: PollGroup | None = None
        best_due = 0.0
        wake: float | None = None
        for g in self.groups:
            if g._busy:
                continue
            due = g._tick_due if g._tick_due is not None else g.due
            if due > now:
                wake = due if wake is None else min(wake, due)
                continue
            if g.device.in_flight or g.device.urgent_waiting:
                continue          # a device never has two requests out; its writes go first
            if best is None or due < best_due:
                best, best_due = g, due
        return best, wake

    async def _worker(self, link) -> None:
        # Checks _closed, not only cancellation: pymodbus can swallow a CancelledError that lands inside a request.
        while not self._closed:
            now = self.clock()
            item, wake = self._pick(now)
            if item is None:
                await self._sleep_until(wake)
                continue
            if isinstance(item, _Urgent):
                await self._run_urgent(link, item)
            else:
                await self._step(link, item, now)

    async def _execute(self, link, dev: BusDevice, op: Read | Write):
        dev.in_flight += 1
        t0 = self.clock()
        try:
            if isinstance(op, Read):
                return await link.read(dev.unit_id, op.table, op.address, op.count)
            if isinstance(op, Write):
                await link.write(dev.unit_id, op.address, list(op.values))
                return None
            return await op.run(link)  # a driver's own exchange (a DLMS GET): it knows its framing and session
        finally:
            dt = self.clock() - t0
            dev.in_flight -= 1
            dev.requests += 1
            dev.bus_time_s += dt
            self.requests += 1
            self._kick()

    def _record(self, dev: BusDevice, exc: DeviceError | None) -> None:
        b = dev.breaker
        if exc is None or exc.detail is Detail.DEVICE_EXCEPTION:     # the device answered
            if b.success():
                log.info("%s: answering again, circuit closed", dev.name)
            return
        log.debug("%s: %s", dev.name, escape(exc))
        if b.failure(self.clock(), exc.detail, str(exc)):
            log.warning("%s: circuit open for %.1f s after %d failure(s): %s", dev.name, b.backoff_s, b.failures,
                        escape(exc))

    async def _run_urgent(self, link, u: _Urgent) -> None:
        dev = u.device
        verdict = dev.breaker.admit(self.clock())
        if verdict == "block":
            b = dev.breaker
            u.future.done() or u.future.set_exception(DeviceError(
                f"{dev.name}: unavailable (circuit open: {b.last_error or b.last_detail.value})", b.last_detail))
            return
        try:
            value = await self._execute(link, dev, u.op)
        except DeviceError as exc:
            self._record(dev, exc)
            u.future.done() or u.future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in a link must not kill the bus worker
            log.exception("%s: request failed unexpectedly", dev.name)
            err = DeviceError(f"{dev.name}: internal error: {exc!r}", Detail.COMM_FAILURE)
            self._record(dev, err)
            u.future.done() or u.future.set_exception(err)
        else:
            self._record(dev, None)
            u.future.done() or u.future.set_result(value)

    async def _step(self, link, g: PollGroup, now: float) -> None:
        """Run the next read of g's tick (starting the tick if needed)."""
        dev = g.device
        if g._tick_due is None:
            g._tick_due, g._next, g._results, g._bus_time, g._probe = g.due, 0, [], 0.0, False
        if g._next == 0 and not g._probe:
            verdict = dev.breaker.admit(now)
            if verdict == "block":
                b = dev.breaker
                err = DeviceError(f"{dev.name}: circuit open: {b.last_error or b.last_detail.value}", b.last_detail)
                ts = time.time_ns()
                g._results = [(err, ts)] * len(g.reads)
                self._finish(g, now)
                return
            g._probe = verdict == "probe"
        op = g.reads[g._next]
        g._busy = True
        t0 = self.clock()
        try:
            regs = await self._execute(link, dev, op)
            err = None
        except DeviceError as exc:
            regs, err = None, exc
        except Exception as exc:  # noqa: BLE001 - a bug in a link must not kill the bus worker
            log.exception("%s: read failed unexpectedly", dev.name)
            regs, err = None, DeviceError(f"{dev.name}: internal error: {exc!r}", Detail.COMM_FAILURE)
        finally:
            g._busy = False
        g._bus_time += self.clock() - t0
        ts = time.time_ns()
        self._record(dev, err)
        g._probe = False
        g._results.append((err if err is not None else regs, ts))
        g._next += 1
        if err is not None and err.detail in _GONE:
            # The device is gone: do not wait out a timeout per remaining read.
            g._results.extend((err, ts) for _ in g.reads[g._next:])
            g._next = len(g.reads)
        if g._next >= len(g.reads):
            self._finish(g, self.clock())

    def _finish(self, g: PollGroup, now: float) -> None:
        results, due, bus_time = g._results, g._tick_due, g._bus_time
        g._tick_due, g._results, g._next = None, [], 0
        g.ticks += 1
        if g.period_s is None:
            self.remove_group(g)
        else:
            nxt = due + g.period_s
            if bus_time >= g.period_s:
                nxt = max(nxt, now)             # slower than its own period: back to back, never a burst
            elif nxt < now - g.period_s - self.catch_up_s:
                skipped = int((now - nxt) // g.period_s)
                g.missed += skipped
                nxt += skipped * g.period_s     # too far behind: drop whole periods, keep the phase
            g.due = nxt
        try:
            g.handler(results)
        except Exception:  # noqa: BLE001 - a consumer bug must not stop the bus
            log.exception("%s/%s: result handler failed", g.device.name, g.name)


# ---------------------------------------------------------------- sharing links between devices

class BusPool:
    """Devices on the same serial port or TCP endpoint share one Bus; `key` names the link, `make_links` builds
    it the first time. Reference-counted: the bus closes with its last device."""

    def __init__(self) -> None:
        self._buses: dict[tuple, tuple[Bus, object, int]] = {}

    def acquire(self, key: tuple, settings: object, make_links: Callable[[], Sequence]) -> Bus:
        entry = self._buses.get(key)
        if entry is not None and entry[0].stale:
            log.warning("%s: dropping a bus left over from a closed event loop", entry[0].name)
            entry = None
        if entry is not None:
            bus, have, refs = entry
            if have != settings:
                raise ValueError(f"{key}: already open with different settings ({have!r} vs {settings!r})")
            self._buses[key] = (bus, have, refs + 1)
            return bus
        bus = Bus(make_links(), name=":".join(str(k) for k in key[1:]))
        self._buses[key] = (bus, settings, 1)
        return bus

    async def release(self, key: tuple) -> None:
        entry = self._buses.get(key)
        if entry is None:
            return
        bus, settings, refs = entry
        if refs > 1:
            self._buses[key] = (bus, settings, refs - 1)
            return
        del self._buses[key]
        await bus.close()

    def __contains__(self, key: object) -> bool:
        return key in self._buses


POOL = BusPool()
