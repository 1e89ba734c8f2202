"""Any register-map device (drivers/maps/*.toml) on Modbus TCP, RTU over a serial line, or RTU over TCP, polled by
the bus scheduler (drivers/scheduler.py).

Devices on the same serial port, or the same TCP endpoint (a gateway with several unit ids), share one Bus, so
they take turns on the wire instead of colliding. Two ways to poll:

- `poll()`: one read of every configured point, queued on the bus like any other tick (the agent's loop);
- `run(sink)`: the device owns its schedule: each poll group at its own period, results handed to `sink` as
  SampleBlocks (one per read; iterate one for its Samples), forever. A dead device's samples still arrive at its
  period (INVALID, from the open circuit breaker).

poll() and run() never raise on device faults (INVALID samples with the read's detail). write_points() raises
WriteError: a control that did not land must never pass silently; it only writes points the map marks `rw`, only
if the device is configured writable, and reads every written register back.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gridedge.core.model import Detail, Reading, SampleBlock

from . import regmap
from .modbus import DeviceError, WriteError, write_runs
from .modbus_rtu import RtuSerialLink, RtuTcpLink, SerialSettings
from .modbus_tcp import TcpLink
from .scheduler import POOL, Bus, BusDevice, BusPool, Read, Result

__all__ = ["LinkSpec", "PollGroupSpec", "RegmapDevice", "KINDS"]

log = logging.getLogger(__name__)

#: link kind -> what it is
KINDS = {"tcp": "Modbus TCP", "rtu": "Modbus RTU on a serial line", "rtu_tcp": "Modbus RTU frames over TCP"}


@dataclass(frozen=True)
class LinkSpec:
    """How to reach the device. Devices with the same `key` share one bus (and must agree on the settings)."""

    kind: str
    host: str = ""
    port: int = 502
    serial: SerialSettings | None = None
    timeout_s: float = 1.0
    max_outstanding: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if self.kind == "rtu":
            if self.serial is None:
                raise ValueError("kind 'rtu' needs serial settings")
            if self.max_outstanding != 1:
                raise ValueError("a serial line carries one request at a time (max_outstanding must be 1)")
        elif not self.host:
            raise ValueError(f"kind {self.kind!r} needs a host")
        if not isinstance(self.max_outstanding, int) or not 1 <= self.max_outstanding <= 8:
            raise ValueError(f"max_outstanding must be 1..8, got {self.max_outstanding!r}")
        if self.kind == "rtu_tcp" and self.max_outstanding != 1:
            raise ValueError("an RTU-over-TCP gateway has a serial line behind it (max_outstanding must be 1)")

    @property
    def key(self) -> tuple:
        if self.kind == "rtu":
            return ("rtu", self.serial.port)
        return (self.kind, self.host, self.port)

    def make_links(self) -> list:
        if self.kind == "rtu":
            return [RtuSerialLink(self.serial)]
        if self.kind == "rtu_tcp":
            return [RtuTcpLink(self.host, self.port, self.timeout_s)]
        return [TcpLink(self.host, self.port, self.timeout_s) for _ in range(self.max_outstanding)]


@dataclass(frozen=True)
class PollGroupSpec:
    """Points polled together every `period_s`."""

    name: str
    period_s: float
    points: tuple[str, ...]


class BusMember:
    """A device's place on its link's Bus (shared by every Modbus device class): joined on first use, left on
    close(); the bus and its link outlive the device while other devices use them."""

    def __init__(self, device_id: str, link: LinkSpec, unit_id: int, period_s: float, pool: BusPool,
                 breaker: tuple[int, float, float]):
        if not isinstance(unit_id, int) or isinstance(unit_id, bool) or not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be 0..255, got {unit_id!r}")
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.device_id = device_id
        self.link = link
        self.unit_id = unit_id
        self.pool = pool
        self._breaker = breaker          # (threshold, base backoff s, max backoff s) of this device's circuit
        self._bus: Bus | None = None
        self._dev: BusDevice | None = None

    def _attach(self) -> BusDevice:
        if self._dev is None:
            bus = self.pool.acquire(self.link.key, self.link, self.link.make_links)
            self._bus = bus
            self._dev = bus.device(self.unit_id, self.device_id, threshold=self._breaker[0],
                                   base_backoff_s=self._breaker[1], max_backoff_s=self._breaker[2])
        self._bus.start()
        return self._dev

    async def _join(self) -> None:
        """Join the bus and open its links; raises DeviceError if the port or host cannot be opened."""
        self._attach()
        for link in self._bus.links:
            await link.connect()

    async def close(self) -> None:
        if self._dev is not None:
            self._bus.remove_device(self._dev)
            self._dev = None
            self._bus = None
            await self.pool.release(self.link.key)

    @property
    def bus(self) -> Bus | None:
        return self._bus

    @property
    def bus_device(self) -> BusDevice | None:
        return self._dev


class RegmapDevice(BusMember):
    """One register-map device; samples are named "<device id>/<point name>"."""

    def __init__(self, device_id: str, rmap: regmap.RegisterMap, link: LinkSpec, unit_id: int = 1, *,
                 role: str = "meter", points: Iterable[str] | None = None, period_s: float = 1.0,
                 groups: Sequence[PollGroupSpec] = (), writable: bool = False, pool: BusPool = POOL,
                 breaker_threshold: int = 3, backoff_s: float = 1.0, max_backoff_s: float = 60.0):
        super().__init__(device_id, link, unit_id, period_s, pool, (breaker_threshold, backoff_s, max_backoff_s))
        self.rmap = rmap
        self.capability = role
        self.writable = writable
        self.points = tuple(dict.fromkeys(points)) if points is not None else rmap.names
        unknown = [p for p in self.points if p not in rmap]
        for g in groups:
            unknown += [p for p in g.points if p not in rmap]
            if not g.period_s > 0:
                raise ValueError(f"poll group {g.name!r}: period_s must be > 0, got {g.period_s!r}")
        if unknown:
            raise ValueError(f"{device_id}: point(s) not in map {rmap.origin or rmap.model}: "
                             f"{', '.join(sorted(set(unknown)))}")
        # Points in no group are polled at period_s in a group called "default".
        grouped = {p for g in groups for p in g.points}
        rest = tuple(p for p in self.points if p not in grouped)
        self.groups: tuple[PollGroupSpec, ...] = tuple(groups) + (
            (PollGroupSpec("default", period_s, rest),) if rest else ())
        self._all_blocks = regmap.plan_reads(rmap, self._poll_names())
        self._decoders: dict[regmap.ReadBlock, regmap.BlockDecoder] = {}

    def _poll_names(self) -> list[str]:
        return list(dict.fromkeys(p for g in self.groups for p in g.points))

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Join the bus of this device's link and open the link; raises DeviceError if the port or host cannot be
        opened. Does not require the device to answer (a silent device gives INVALID samples, not a failed start)."""
        await self._join()

    # ------------------------------------------------------------------ reading

    def _decoder(self, block: regmap.ReadBlock) -> regmap.BlockDecoder:
        dec = self._decoders.get(block)
        if dec is None:
            dec = self._decoders[block] = regmap.BlockDecoder(self.rmap, block, self.device_id)
        return dec

    def _samples(self, blocks: Sequence[regmap.ReadBlock], results: Sequence[Result]) -> list[SampleBlock]:
        """One SampleBlock per read block (its values, or all INVALID with the read's detail)."""
        out: list[SampleBlock] = []
        for block, (value, ts) in zip(blocks, results):
            dec = self._decoder(block)
            if isinstance(value, DeviceError):
                out.append(SampleBlock.invalid(dec.layout, ts, value.detail))
            else:
                out.append(dec.decode(value, ts))
        return out

    @staticmethod
    def _reads(blocks: Sequence[regmap.ReadBlock]) -> list[Read]:
        return [Read(b.table, b.address, b.count) for b in blocks]

    async def poll(self) -> list[Reading]:
        """One SampleBlock per read of the configured points, read now (in turn with the others on the bus)."""
        dev = self._attach()
        results = await self._bus.read_once(dev, self._reads(self._all_blocks))
        return self._samples(self._all_blocks, results)

    async def run(self, sink: Callable[[list[Reading]], None]) -> None:
        """Poll every group at its own period and hand each group's blocks to `sink`, until cancelled."""
        dev = self._attach()
        bus = self._bus
        added = []
        try:
            for g in self.groups:
                blocks = regmap.plan_reads(self.rmap, g.points)

                def handler(results: list[Result], blocks=blocks) -> None:
                    sink(self._samples(blocks, results))
                added.append(bus.add_group(dev, g.name, g.period_s, self._reads(blocks), handler))
            await asyncio.Event().wait()
        finally:
            for grp in added:
                bus.remove_group(grp)

    # ------------------------------------------------------------------ writing

    async def write_points(self, values: dict[str, float]) -> dict[str, float]:
        """Write points by name, read them back, and return the read-back values.

        Everything is checked before the first register is written (device writable, point known and `rw` in the
        map, value encodable), so a refused request changes nothing. Contiguous points are written in one request.
        Raises WriteError (a DeviceError) with a clear message otherwise."""
        if not isinstance(values, dict) or not values:
            raise WriteError(f"{self.device_id}: nothing to write", Detail.BAD_REFERENCE)
        if not self.writable:
            raise WriteError(f"{self.device_id}: device is configured read-only (writable = false)",
                             Detail.BAD_REFERENCE)
        encoded: dict[str, tuple[int, list[int]]] = {}
        for name, value in values.items():
            if name not in self.rmap:
                raise WriteError(f"{self.device_id}: unknown point {name!r}", Detail.BAD_REFERENCE)
            if not self.rmap.point(name).writable:
                raise WriteError(f"{self.device_id}: {name} is read-only in the map", Detail.BAD_REFERENCE)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                raise WriteError(f"{self.device_id}: {name} needs a finite number, got {value!r}",
                                 Detail.OUT_OF_RANGE)
            try:
                encoded[name] = regmap.encode(self.rmap, name, value)
            except regmap.EncodeError as exc:
                raise WriteError(f"{self.device_id}: {name}={value!r} refused: {exc}", Detail.OUT_OF_RANGE) from None
        dev = self._attach()
        for addr, regs in write_runs(list(encoded.values())):
            try:
                await dev.write(addr, regs)
            except DeviceError as exc:
                raise WriteError(f"{self.device_id}: write of {len(regs)} register(s) at {addr} failed: {exc}",
                                 exc.detail, exc.exception_code) from None
        blocks = regmap.plan_reads(self.rmap, list(encoded))
        readback: dict[str, float] = {}
        mismatches: list[str] = []
        ts = time.time_ns()
        for block in blocks:
            try:
                regs = await dev.read(block.table, block.address, block.count)
            except DeviceError as exc:
                raise WriteError(f"{self.device_id}: read-back of {', '.join(block.points)} failed: {exc}",
                                 exc.detail, exc.exception_code) from None
            samples = regmap.decode(self.rmap, block, regs, self.device_id, ts)
            for name, sample in zip(block.points, samples):
                addr, want = encoded[name]
                got = regs[addr - block.address:addr - block.address + len(want)]
                if got != want:
                    mismatches.append(f"{name}: wrote {values[name]!r}, reads back {sample.value!r}")
                readback[name] = sample.value
        if mismatches:
            raise WriteError(f"{self.device_id}: read-back mismatch: {'; '.join(mismatches)}",
                             Detail.DEVICE_EXCEPTION)
        return readback

