"""A DLMS/COSEM meter on the bus scheduler (drivers/scheduler.py), the way register-map devices are: meters on one
serial line (RS-485 multidrop, or one optical probe) or one TCP endpoint share a Bus and take turns per exchange,
and each has its own circuit breaker, so a slow or dead meter never stalls the others.

Per poll (poll_ms): the map's points in GET with-list requests of at most `list_size` attributes (the scaler_units
read once per association), and the Clock, whose time gives the skew from the gateway clock (point `ClockSkew`, s,
meter - gateway; its clock status sets the quality). Samples carry the gateway's time of the read.

Per capture period (profile_s): the load profile is read by range from the last entry already read (again: the
interval after it needs its reading) to now, so after an outage of the link or of the gateway the missing entries
come back. Each entry becomes a SampleBlock of the
map's profile points with the meter's own time stamp; its clock status and AMR profile status set the quality. They
go to `backfill` (the agent hands them to telemetry and to the flex engine's ISP energy series). Where the last entry
ended is kept in the device's state file, with the invocation counter (`bind()` gives the directory).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridedge.core.model import BlockLayout, Detail, Reading, SampleBlock, Validity

from ..modbus import DeviceError
from ..scheduler import POOL, Bus, BusDevice, BusPool, Result
from . import apdu as A
from . import axdr, cosem
from .client import Meter, Settings
from .errors import DlmsError
from .obismap import ObisMap, ObisPoint
from .security import InvocationCounter
from .transport import SerialLine, TcpLine

__all__ = ["DlmsLinkSpec", "DlmsDevice", "Op", "LIST_SIZE", "NS"]

log = logging.getLogger(__name__)

NS = 1_000_000_000
LIST_SIZE = 10                        # attributes per GET with-list (IDIS meters accept at least 10)
_REFUSALS = {4: Detail.NOT_IMPLEMENTED, 11: Detail.NOT_IMPLEMENTED, 3: Detail.BAD_REFERENCE,
             13: Detail.BAD_REFERENCE}


@dataclass(frozen=True)
class DlmsLinkSpec:
    """The line a meter is on. kind "serial" (HDLC; mode_e for an optical probe) or "tcp" (the wrapper, or HDLC when
    the meter's settings give a physical address). Meters with the same key share one Bus."""

    kind: str
    port: str = ""
    host: str = ""
    tcp_port: int = 4059
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout_s: float = 1.0
    mode_e: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("serial", "tcp"):
            raise ValueError(f"kind must be 'serial' or 'tcp', got {self.kind!r}")
        if self.kind == "serial" and not self.port:
            raise ValueError("a serial DLMS line needs its port")
        if self.kind == "tcp" and not self.host:
            raise ValueError("a TCP DLMS link needs its host")

    @property
    def key(self) -> tuple:
        return ("dlms-serial", self.port) if self.kind == "serial" else ("dlms-tcp", self.host, self.tcp_port)

    def make_links(self) -> list:
        if self.kind == "serial":
            return [SerialLine(self.port, self.baudrate, parity=self.parity, stopbits=self.stopbits,
                               bytesize=self.bytesize, timeout_s=self.timeout_s, mode_e=self.mode_e)]
        return [TcpLine(self.host, self.tcp_port, self.timeout_s)]


@dataclass(frozen=True, eq=False)
class Op:
    """One exchange with one meter, as the bus schedules it."""

    name: str
    fn: Callable[[Any], Any]

    async def run(self, link) -> Any:
        return await self.fn(link)


def _quality_of_refusal(r: A.AccessResult) -> tuple[Validity, Detail]:
    return Validity.INVALID, _REFUSALS.get(r.code, Detail.DEVICE_EXCEPTION)


class DlmsDevice:
    """One DLMS/COSEM meter; samples are named "<device id>/<point name>" (see the module docstring)."""

    writable = False

    def __init__(self, device_id: str, omap: ObisMap, link: DlmsLinkSpec, settings: Settings, *,
                 points=None, period_s: float = 1.0, profile_s: float | None = 900.0, catch_up_s: float = 86400.0,
                 role: str = "meter", pool: BusPool = POOL, list_size: int = LIST_SIZE, breaker_threshold: int = 3,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0):
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.device_id = device_id
        self.omap = omap
        self.link = link
        self.settings = settings
        self.capability = role
        self.period_s = period_s
        self.profile_s = profile_s if omap.profile is not None else None
        self.catch_up_s = catch_up_s
        self.pool = pool
        self.list_size = list_size
        self._breaker = (breaker_threshold, backoff_s, max_backoff_s)
        self.points: tuple[ObisPoint, ...] = omap.select(points) if points else omap.points
        self.layout = BlockLayout(device_id, [p.name for p in self.points], [p.unit for p in self.points])
        self.clock_layout = BlockLayout(device_id, ["ClockSkew"], ["s"])
        # the attributes a poll reads: each object once, whatever points sum it
        self._objects: list[tuple[int, bytes, int]] = list(dict.fromkeys(
            (p.class_id, o, p.attribute) for p in self.points for o in p.objects))
        self._scalers: dict[bytes, tuple[int, int] | A.AccessResult] = {}
        self._scalers_for = -1              # the association they were read in
        self._profile: tuple[list[cosem.CaptureObject], dict[bytes, Any], int] | None = None
        self._profile_for = -1
        self.deviation: int | None = None    # the meter's, from its clock
        self.skew_s: float | None = None
        self.state_dir: Path | None = None
        self.backfill: Callable[[list[Reading]], None] | None = None
        self.last_entry_ns: int | None = None
        self.meter: Meter | None = None
        self._bus: Bus | None = None
        self._dev: BusDevice | None = None

    # ------------------------------------------------------------------ the agent's hook

    def bind(self, state_dir: Path, backfill: Callable[[list[Reading]], None] | None) -> None:
        """Where to keep state (invocation counter, last profile entry), and who takes the load profile entries."""
        self.state_dir = Path(state_dir)
        self.backfill = backfill
        try:
            saved = json.loads(self._state_path().read_text())
            if isinstance(saved.get("last_entry_ns"), int):
                self.last_entry_ns = saved["last_entry_ns"]
        except (OSError, ValueError, AttributeError):
            pass

    def _state_path(self) -> Path:
        return self.state_dir / f"dlms-{self.device_id}.json"

    def _save(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"last_entry_ns": self.last_entry_ns}))
        os.replace(tmp, self._state_path())

    # ------------------------------------------------------------------ bus membership

    def _attach(self) -> BusDevice:
        if self.meter is None:
            counter = InvocationCounter(self.state_dir / f"dlms-{self.device_id}.ic" if self.state_dir else None)
            self.meter = Meter(self.settings, counter=counter, name=self.device_id)
        if self._dev is None:
            self._bus = self.pool.acquire(self.link.key, self.link, self.link.make_links)
            unit = self.settings.physical if self.settings.physical is not None else self.settings.logical
            self._dev = self._bus.device(unit, self.device_id, threshold=self._breaker[0],
                                         base_backoff_s=self._breaker[1], max_backoff_s=self._breaker[2])
        self._bus.start()
        return self._dev

    async def connect(self) -> None:
        """Join the bus and open the line; raises DeviceError if the port cannot be opened (a silent meter is not a
        failure here: it gives INVALID samples)."""
        self._attach()
        for link in self._bus.links:
            if self.link.kind == "serial":
                await link.connect()

    async def close(self) -> None:
        if self._dev is not None:
            if self.meter is not None and self.meter.associated:
                with_link = self._bus.links[0]
                try:
                    await asyncio.wait_for(self.meter.release(with_link), 2 * self.link.timeout_s)
                except (asyncio.TimeoutError, DeviceError, OSError):
                    pass
            self._bus.remove_device(self._dev)
            self._dev = self._bus = None
            await self.pool.release(self.link.key)

    # ------------------------------------------------------------------ the poll

    def _ops(self) -> list[Op]:
        ops = [Op(f"values[{i}]", lambda link, chunk=self._objects[i:i + self.list_size]: self._read(link, chunk))
               for i in range(0, len(self._objects), self.list_size)]
        if self.omap.clock is not None:
            ops.append(Op("clock", self._clock))
        return ops

    async def _read(self, link, chunk: list[tuple[int, bytes, int]]) -> dict[bytes, Any]:
        m = self.meter
        if not m.associated:
            await m.associate(link)
        if self._scalers_for != m.associations:
            self._scalers.clear()
            self._scalers_for = m.associations
        need = [(c, o) for c, o, _ in chunk if cosem.scaler_attribute(c) and o not in self._scalers]
        if need:
            got = await m.get_list(link, [A.Attribute(c, o, cosem.scaler_attribute(c)) for c, o in need])
            self._scalers.update({o: v for (_, o), v in zip(need, got)})
        values = await m.get_list(link, [A.Attribute(c, o, a) for c, o, a in chunk])
        return {o: v for (_, o, _), v in zip(chunk, values)}

    async def _clock(self, link) -> tuple[Any, int]:
        t0 = time.time_ns()
        value = await self.meter.get(link, A.Attribute(cosem.CLOCK, self.omap.clock, 2))
        return value, (t0 + time.time_ns()) // 2

    def _samples(self, results: list[Result]) -> list[Reading]:
        """The poll's results as a values block and a clock block."""
        n_values = len(results) - (1 if self.omap.clock is not None else 0)
        got: dict[bytes, Any] = {}
        failure: DeviceError | None = None
        ts = 0
        for value, t in results[:n_values]:
            ts = max(ts, t)
            if isinstance(value, DeviceError):
                failure = failure or value
            else:
                got.update(value)
        out: list[Reading] = []
        if failure is not None and not got:
            out.append(SampleBlock.invalid(self.layout, ts, failure.detail))
        else:
            vals, qual = [], []
            for p in self.points:
                v, q = self._point(p, got, failure)
                vals.append(v)
                qual.append(q)
            out.append(SampleBlock(self.layout, ts, vals, None if not any(qual) else qual))
        if self.omap.clock is not None:
            value, ts = results[-1]
            out.append(self._skew(*(value if not isinstance(value, DeviceError) else (value, ts))))
        return out

    def _point(self, p: ObisPoint, got: dict[bytes, Any], failure: DeviceError | None):
        total: float | int | str = 0
        for sign, code in p.terms:
            raw = got.get(code)
            if raw is None and code not in got:
                return None, (Validity.INVALID, failure.detail if failure else Detail.COMM_FAILURE)
            if isinstance(raw, A.AccessResult):
                return None, _quality_of_refusal(raw)
            if isinstance(raw, bytes) and p.unit == "" and len(p.terms) == 1:
                return raw.decode("latin-1"), None            # an identifier (serial number): text
            scaler = p.scaler or 0
            if cosem.scaler_attribute(p.class_id):
                su = self._scalers.get(code)
                if isinstance(su, A.AccessResult) or su is None:
                    return None, (Validity.INVALID, Detail.MALFORMED if su is None else _quality_of_refusal(su)[1])
                try:
                    scaler, unit = cosem.parse_scaler_unit(su)
                except DlmsError:
                    return None, (Validity.INVALID, Detail.MALFORMED)
                if cosem.unit_symbol(unit) != p.unit:
                    return None, (Validity.INVALID, Detail.BAD_REFERENCE)
            try:
                total += sign * cosem.scaled(raw, scaler)
            except DlmsError:
                return None, (Validity.INVALID, Detail.MALFORMED)
        return total, None

    def _skew(self, value: Any, t_mid: int) -> SampleBlock:
        if isinstance(value, DeviceError):
            return SampleBlock.invalid(self.clock_layout, t_mid, value.detail)
        if isinstance(value, A.AccessResult):
            return SampleBlock(self.clock_layout, t_mid, [None], [_quality_of_refusal(value)])
        try:
            dt = axdr.DateTime.decode(value) if isinstance(value, bytes) else value
            if not isinstance(dt, axdr.DateTime):
                raise DlmsError("the clock's time is not a date-time")
            meter_ns = dt.to_ns()
        except DlmsError:
            return SampleBlock.invalid(self.clock_layout, t_mid, Detail.MALFORMED)
        if dt.deviation is not None:
            self.deviation = dt.deviation
        self.skew_s = round((meter_ns - t_mid) / NS, 3)
        q = cosem.clock_quality(dt)
        return SampleBlock(self.clock_layout, t_mid, [self.skew_s], None if q is None else [q])

    async def poll(self) -> list[Reading]:
        """One read of every configured point and the clock, now (in turn with the others on the line)."""
        dev = self._attach()
        return self._samples(await self._bus.read_once(dev, self._ops()))

    async def run(self, sink: Callable[[list[Reading]], None]) -> None:
        """Poll at period_s and read the load profile at profile_s, until cancelled."""
        dev = self._attach()
        bus = self._bus
        groups = [bus.add_group(dev, "values", self.period_s, self._ops(), lambda r: sink(self._samples(r)))]
        if self.profile_s:
            def entries(results: list[Result]) -> None:
                blocks = self._profile_result(results)
                if blocks:
                    (self.backfill or sink)(blocks)
            groups.append(bus.add_group(dev, "profile", self.profile_s, [Op("profile", self._read_profile)],
                                        entries, phase_s=min(2.0, self.profile_s)))
        try:
            await asyncio.Event().wait()
        finally:
            for g in groups:
                bus.remove_group(g)

    # ------------------------------------------------------------------ the load profile

    async def _profile_setup(self, link) -> tuple[list[cosem.CaptureObject], dict[bytes, Any], int]:
        m = self.meter
        if self._profile is not None and self._profile_for == m.associations:
            return self._profile
        po = self.omap.profile.obis
        cols_raw, period = await m.get_list(link, [A.Attribute(7, po, 3), A.Attribute(7, po, 4)])
        if isinstance(cols_raw, A.AccessResult):
            raise DeviceError(f"{self.device_id}: profile capture objects refused: {cols_raw.name}",
                              Detail.DEVICE_EXCEPTION)
        try:
            cols = cosem.capture_objects(cols_raw)
        except DlmsError as exc:
            raise DeviceError(f"{self.device_id}: {exc}", Detail.MALFORMED) from None
        regs = [c for c in cols if cosem.scaler_attribute(c.class_id)]
        su = await m.get_list(link, [A.Attribute(c.class_id, c.obis, cosem.scaler_attribute(c.class_id))
                                     for c in regs]) if regs else []
        scalers = {c.obis: v for c, v in zip(regs, su)}
        period = period if isinstance(period, int) and period > 0 else 900
        self._profile, self._profile_for = (cols, scalers, period), m.associations
        return self._profile

    async def _read_profile(self, link) -> list[SampleBlock]:
        m = self.meter
        if not m.associated:
            await m.associate(link)
        cols, scalers, period = await self._profile_setup(link)
        now = time.time_ns() + int((self.skew_s or 0) * NS)
        # From the last entry already read, inclusive: the energy of the interval after it needs its reading.
        start = self.last_entry_ns if self.last_entry_ns is not None else now - int(self.catch_up_s * NS)
        start = max(start, now - int(self.catch_up_s * NS))
        sel = cosem.range_selection(start, now, self.deviation)
        buf = await m.get(link, A.Attribute(7, self.omap.profile.obis, 2), sel)
        if isinstance(buf, A.AccessResult):
            raise DeviceError(f"{self.device_id}: load profile refused: {buf.name}", Detail.DEVICE_EXCEPTION)
        return self._entries(buf, cols, scalers, period, start)

    def _entries(self, buf: Any, cols: list[cosem.CaptureObject], scalers: dict, period: int,
                 start: int) -> list[SampleBlock]:
        if not isinstance(buf, list):
            raise DeviceError(f"{self.device_id}: load profile buffer is not an array", Detail.MALFORMED)
        wanted = {o: p for p in self.points if p.profile and len(p.terms) == 1 for o in p.objects}
        clock_col = next((i for i, c in enumerate(cols) if c.class_id == cosem.CLOCK), None)
        status_obis = self.omap.profile.status
        status_col = next((i for i, c in enumerate(cols) if c.obis == status_obis), None)
        columns = [(i, wanted[c.obis]) for i, c in enumerate(cols) if c.obis in wanted]
        if clock_col is None or not columns:
            return []
        layout = BlockLayout(self.device_id, [p.name for _, p in columns], [p.unit for _, p in columns])
        out: list[SampleBlock] = []
        ts: int | None = None
        for entry in buf:
            if not isinstance(entry, tuple) or len(entry) != len(cols):
                raise DeviceError(f"{self.device_id}: load profile entry of {len(entry) if isinstance(entry, tuple) else '?'}"
                                  f" values for {len(cols)} columns", Detail.MALFORMED)
            stamp = entry[clock_col]
            clock_q = None
            if isinstance(stamp, bytes) and len(stamp) == 12:
                try:
                    dt = axdr.DateTime.decode(stamp)
                    if dt.deviation is None and self.deviation is not None:
                        dt = dt._replace(deviation=self.deviation)
                    ts = dt.to_ns()
                    clock_q = cosem.clock_quality(dt)
                except DlmsError:
                    raise DeviceError(f"{self.device_id}: load profile time stamp not readable", Detail.MALFORMED)
            elif ts is not None:
                ts += period * NS          # a compressed entry: one capture period after the one before
            else:
                raise DeviceError(f"{self.device_id}: load profile entry without a time stamp", Detail.MALFORMED)
            status = entry[status_col] if status_col is not None and isinstance(entry[status_col], int) else None
            entry_q = clock_q or cosem.profile_status_quality(status)
            vals, qual = [], []
            for i, p in columns:
                su = scalers.get(cols[i].obis)
                try:
                    scaler, unit = cosem.parse_scaler_unit(su) if su is not None else (p.scaler or 0, None)
                    if unit is not None and cosem.unit_symbol(unit) != p.unit:
                        vals.append(None)
                        qual.append((Validity.INVALID, Detail.BAD_REFERENCE))
                        continue
                    vals.append(cosem.scaled(entry[i], scaler))
                    qual.append(entry_q)
                except DlmsError:
                    vals.append(None)
                    qual.append((Validity.INVALID, Detail.MALFORMED))
            if ts < start:
                continue
            out.append(SampleBlock(layout, ts, vals, None if not any(qual) else qual))
        return out

    def _profile_result(self, results: list[Result]) -> list[Reading]:
        value, _ = results[0]
        if isinstance(value, DeviceError):
            log.debug("%s: load profile not read: %s", self.device_id, value)
            return []
        if value:
            self.last_entry_ns = max(b.ts_ns for b in value)
            self._save()
            log.info("%s: %d load profile entries read, up to %s", self.device_id, len(value), self.last_entry_ns)
        return value
