"""A SunSpec device (inverter, battery) on any Modbus link, through the bus scheduler: discovery, polling into
canonical samples, verified writes of controls and curves.

The wire format lives in drivers/sunspec.py (sans-IO); this module only sequences requests. Every request goes
through drivers/scheduler.py, so a SunSpec inverter on an RS-485 line shares it fairly with the meters on the same
line (one request at a time, its writes jump the queue, a dead device has its circuit opened), and a TCP device
shared with other units behind the same gateway gets one connection.

poll() and run() never raise on device faults: a dead device gives INVALID samples with TIMEOUT / COMM_FAILURE.
Every model read starts at the model's header, so a chain that changed under us gives BAD_REFERENCE and a new
discovery, never values from the wrong registers.
write_points(), write_model() and write_curve() raise WriteError, because a control that did not land must never
pass silently. Every write reads the block first (the device's own scale factors), checks everything before the
first register goes out, writes contiguous runs, and reads back.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from gridedge.core.model import Detail, Sample, Validity, invalid
from gridedge.core.text import escape

from . import sunspec as ss
from .modbus import DeviceError, WriteError, write_runs
from .regmap_device import BusMember, LinkSpec
from .scheduler import POOL, BusDevice, BusPool, Read, Result
from .sunspec_models import ModelLayout, model_layout

__all__ = ["SunSpecDevice", "WriteError", "CURVES", "ADOPT_IN_PROGRESS", "ADOPT_COMPLETED", "ADOPT_FAILED"]

log = logging.getLogger(__name__)

#: Curve models: (repeating group, x point, y point, adopt request, adopt result). Curve 1 is the active curve
#: and read-only ("the first set is read-only and indicates the current settings"); a new curve is written to a
#: writable index and adopted, which copies it into curve 1.
CURVES: dict[int, tuple[str, str, str, str, str]] = {
    705: ("Crv", "V", "Var", "AdptCrvReq", "AdptCrvRslt"),      # volt-var
    706: ("Crv", "V", "W", "AdptCrvReq", "AdptCrvRslt"),        # volt-watt
    712: ("Crv", "W", "Var", "AdptCrvReq", "AdptCrvRslt"),      # watt-var
}
ADOPT_IN_PROGRESS, ADOPT_COMPLETED, ADOPT_FAILED = 0, 1, 2


class SunSpecDevice(BusMember):
    """One SunSpec device, exposed through canonical point names (docs/points.md); samples are named
    "<device id>/<canonical name>"."""

    def __init__(self, device_id: str, link: LinkSpec, unit_id: int = 1, *, role: str = "inverter",
                 points: Iterable[str] | None = None, period_s: float = 1.0, writable: bool = True,
                 pool: BusPool = POOL, breaker_threshold: int = 3, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, adopt_timeout_s: float = 5.0):
        points = list(points) if points is not None else None
        unknown = [p for p in (points or []) if p not in ss.CANONICAL]
        if unknown:
            raise ValueError(f"unknown canonical point(s) {unknown}; known: {sorted(ss.CANONICAL)}")
        super().__init__(device_id, link, unit_id, period_s, pool, (breaker_threshold, backoff_s, max_backoff_s))
        self.capability = role
        self.points = points
        self.period_s = float(period_s)
        self.writable = writable
        self.adopt_timeout_s = adopt_timeout_s
        self.models: dict[int, tuple[int, int]] = {}       # model id -> (address of its first data register, L)
        self.discovery: ss.DiscoveryResult | None = None
        self.rediscoveries = 0
        self._discovering: asyncio.Lock | None = None
        self._remap = asyncio.Event()       # set when the device's map no longer matches the discovery

    # ------------------------------------------------------------------ bus and discovery

    async def connect(self) -> None:
        """Join the bus, open the link and discover the SunSpec map; raises DeviceError (clear message) if any fails."""
        await self._join()
        await self._discover()

    async def _discover(self) -> None:
        if self._discovering is None:
            self._discovering = asyncio.Lock()
        async with self._discovering:
            if self.models:
                return
            dev = self._attach()
            gen = ss.discover()
            req = next(gen)
            while True:
                try:
                    regs: list[int] | None = await self._bus.request(dev, Read("holding", *req), urgent=False)
                except DeviceError as exc:
                    if exc.detail is not Detail.DEVICE_EXCEPTION:
                        raise DeviceError(f"{self.device_id}: discovery failed: {exc}", exc.detail) from None
                    regs = None   # e.g. ILLEGAL_DATA_ADDRESS at a base the device does not use
                try:
                    req = gen.send(regs)
                except StopIteration as stop:
                    result: ss.DiscoveryResult = stop.value
                    break
                except ss.DiscoveryError as exc:
                    raise DeviceError(f"{self.device_id}: {exc}", Detail.MALFORMED) from None
            self.discovery = result
            self.models = {mid: (ref.addr, ref.length) for mid, ref in result.by_id().items()}
            log.info("%s: SunSpec models %s at base %d", self.device_id, sorted(self.models), result.base)

    def _header_ok(self, mid: int, header: Sequence[int], models: Mapping[int, tuple[int, int]]) -> bool:
        """Whether the model's ID and L registers still say what discovery found; if not, forget the map.

        Every read of a model starts at its header, so a device whose model chain changed under us (a firmware
        update, a reconfigured inverter) gives BAD_REFERENCE samples and a fresh discovery, never values decoded from
        the wrong registers, and a write never lands in another model."""
        addr, length = models[mid]
        if list(header) == [mid, length]:
            return True
        if self.models is models:    # the first to notice (not a late answer to a read of an older map)
            log.warning("%s: model %d (L %d) is no longer at %d (found %s there): the device's SunSpec map changed; "
                        "discovering it again", self.device_id, mid, length, addr - 2, list(header))
            self._forget_map()
        return False

    def _forget_map(self) -> None:
        """Drop the discovered map: the next request discovers the device again."""
        self.models = {}
        self.discovery = None
        self.rediscoveries += 1
        self._remap.set()

    def available_points(self) -> list[str]:
        """Canonical points this device has a source for (after discovery)."""
        return [n for n in ss.CANONICAL if ss.pick_source(n, self.models)]

    def _configured(self) -> list[str]:
        if self.points is not None:
            return self.points
        if self.models:
            return self.available_points()
        return list(ss.CANONICAL)  # unknown device yet: report everything as invalid rather than nothing

    def _pid(self, name: str) -> str:
        return f"{self.device_id}/{name}"

    # ------------------------------------------------------------------ reading

    def _poll_plan(self, names: Sequence[str]) -> list[tuple[int, list[Read]]]:
        """Per needed model, the reads of its header and fixed part (canonical points never sit in repeating
        groups)."""
        plan: list[tuple[int, list[Read]]] = []
        for n in names:
            for s in ss.candidate_sources(n, self.models):
                if s.model_id in (m for m, _ in plan):
                    continue
                addr, length = self.models[s.model_id]
                count = min(length, model_layout(s.model_id).fixed_data_len)
                plan.append((s.model_id, [Read("holding", a, c) for a, c in ss.split_reads(addr - 2, count + 2)]))
        return plan

    def _samples(self, names: Sequence[str], plan: list[tuple[int, list[Read]]], results: Sequence[Result],
                 models: Mapping[int, tuple[int, int]]) -> list[Sample]:
        """Samples of one pass of `plan`, made from the map `models` (kept even if a bad header makes us forget it)."""
        decoded: dict[int, dict[str, object]] = {}
        failed: dict[int, Detail] = {}
        it = iter(results)
        ts = max((t for _, t in results), default=time.time_ns())
        for mid, reads in plan:
            regs: list[int] = []
            for _ in reads:
                value, _ = next(it)
                if isinstance(value, DeviceError):
                    failed.setdefault(mid, value.detail)
                elif mid not in failed:
                    regs.extend(value)
            if mid in failed:
                continue
            if not self._header_ok(mid, regs[:2], models):
                failed[mid] = Detail.BAD_REFERENCE
                continue
            try:
                decoded[mid] = ss.decode_model(mid, regs[2:], length=models[mid][1])
            except ss.DecodeError:
                failed[mid] = Detail.MALFORMED
        return [self._sample(n, ts, decoded, failed, models) for n in names]

    def _sample(self, name: str, ts: int, decoded: dict[int, dict[str, object]], failed: dict[int, Detail],
                models: Mapping[int, tuple[int, int]]) -> Sample:
        c = ss.CANONICAL[name]
        srcs = ss.candidate_sources(name, models)
        if not srcs:
            return invalid(self._pid(name), ts, Detail.NOT_IMPLEMENTED, c.unit)
        # A preferred model that failed to read must not be silently replaced by a fallback model's value.
        for s in srcs:
            if s.model_id in failed:
                return invalid(self._pid(name), ts, failed[s.model_id], c.unit)
            v = ss.canonical_value(name, {s.model_id: decoded.get(s.model_id, {})})
            if v is ss.NOT_IMPLEMENTED:
                continue
            if isinstance(v, ss.BadValue):
                return invalid(self._pid(name), ts, Detail.MALFORMED, c.unit)
            return Sample(self._pid(name), ts, v, c.unit, Validity.GOOD)
        return invalid(self._pid(name), ts, Detail.NOT_IMPLEMENTED, c.unit)

    async def _discovered(self) -> DeviceError | None:
        """Discover if not done yet; the error if that failed (never raises)."""
        if self.models:
            return None
        try:
            await self._discover()
        except DeviceError as exc:
            return exc
        return None

    async def poll(self) -> list[Sample]:
        """One sample per configured point, read now (in turn with the others on the bus); never raises."""
        ts = time.time_ns()
        self._attach()
        err = await self._discovered()
        names = self._configured()
        if err is not None:
            return [invalid(self._pid(n), ts, err.detail, ss.CANONICAL[n].unit) for n in names]
        models = self.models
        plan = self._poll_plan(names)
        reads = [r for _, rs in plan for r in rs]
        results = await self._bus.read_once(self._dev, reads) if reads else []
        return self._samples(names, plan, results, models)

    async def run(self, sink: Callable[[list[Sample]], None]) -> None:
        """Poll every `period_s` as a poll group of the bus (staggered start, catch-up, breaker) and hand the samples
        to `sink`, until cancelled. While there is nothing to poll (discovery failed, e.g. a device still starting
        shows "SunS" and an empty chain, or the chain lacks the models of every configured point), every try gives
        INVALID samples and the device is discovered again with back-off; when the device's map changes under it,
        it discovers again and goes on with the new map."""
        self._attach()
        backoff = self.period_s
        while True:
            err = await self._discovered()
            ts = time.time_ns()
            names = self._configured()
            if err is not None:
                log.warning("%s: %s (retry in %.1f s)", self.device_id, escape(str(err)), backoff)
                sink([invalid(self._pid(n), ts, err.detail, ss.CANONICAL[n].unit) for n in names])
            else:
                self._remap.clear()
                models = self.models
                plan = self._poll_plan(names)
                reads = [r for _, rs in plan for r in rs]
                if reads:
                    backoff = self.period_s
                    group = self._bus.add_group(self._dev, "sunspec", self.period_s, reads,
                                                lambda results: sink(self._samples(names, plan, results, models)))
                    try:
                        await self._remap.wait()
                    finally:
                        if self._bus is not None:
                            self._bus.remove_group(group)
                    continue
                log.warning("%s: the device has none of the models of %s (models %s; looking again in %.1f s)",
                            self.device_id, names, sorted(models), backoff)
                sink([self._sample(n, ts, {}, {}, models) for n in names])
                self._forget_map()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._breaker[2])

    async def _read_block(self, mid: int, *, urgent: bool) -> tuple[ModelLayout, list[int], dict[str, object]]:
        """The whole model (repeating groups included): (its layout, data registers, decoded values)."""
        models = self.models
        addr, length = models[mid]
        regs: list[int] = []
        for a, c in ss.split_reads(addr - 2, length + 2):
            if urgent:
                regs.extend(await self._dev.read("holding", a, c))
            else:
                regs.extend(await self._bus.request(self._dev, Read("holding", a, c), urgent=False))
        if not self._header_ok(mid, regs[:2], models):
            raise DeviceError(f"{self.device_id}: model {mid} is no longer at {addr - 2} (the device's SunSpec map "
                              f"changed); it is being discovered again", Detail.BAD_REFERENCE)
        regs = regs[2:]
        layout = ss.block_layout(mid, regs, 2, length)
        return layout, regs, ss.decode_model(layout, regs)

    async def read_model(self, model_id: int) -> dict[str, object]:
        """All points of one model by SunSpec name ("Crv[2].Pt[1].V"), scaled; raises DeviceError."""
        self._attach()
        if not self.models:
            await self._discover()
        if model_id not in self.models:
            raise DeviceError(f"{self.device_id}: device has no model {model_id} (has {sorted(self.models)})",
                              Detail.NOT_IMPLEMENTED)
        _, _, decoded = await self._read_block(model_id, urgent=False)
        return decoded

    # ------------------------------------------------------------------ writing

    async def _ready_to_write(self) -> BusDevice:
        if not self.writable:
            raise WriteError(f"{self.device_id}: device is configured read-only (writable = false)",
                             Detail.BAD_REFERENCE)
        dev = self._attach()
        if not self.models:
            try:
                await self._discover()
            except DeviceError as exc:
                raise WriteError(f"{self.device_id}: cannot write, device unavailable: {exc}", exc.detail) from None
        return dev

    async def _read_for_write(self, mid: int) -> tuple[ModelLayout, list[int], dict[str, object]]:
        try:
            return await self._read_block(mid, urgent=True)
        except DeviceError as exc:
            raise WriteError(f"{self.device_id}: cannot read model {mid}: {exc}", exc.detail,
                             exc.exception_code) from None

    async def _write_verified(self, plan: Mapping[int, Mapping[str, tuple[str, float | str]]]) -> dict[str, object]:
        """Write {model: {SunSpec point: (label, value in SunSpec units)}} and read back; returns {label: value read
        back}. Everything is checked (present, writable, encodable with the device's scale factor) before the first
        register is written, so a refused request changes nothing."""
        dev = self._dev
        encoded: list[tuple[int, list[int]]] = []
        for mid, pts in plan.items():
            layout, regs, decoded = await self._read_for_write(mid)
            sfs = {n: (None if v is ss.NOT_IMPLEMENTED else v) for n, v in decoded.items()
                   if layout.points[n].type == "sunssf"}
            base = self.models[mid][0] - 2   # address of the ID register
            for point, (label, value) in pts.items():
                pd = layout.points.get(point)
                if pd is None:
                    raise WriteError(f"{self.device_id}: model {mid} of this device has no point {point!r}",
                                     Detail.BAD_REFERENCE)
                if not pd.writable:
                    raise WriteError(f"{self.device_id}: {label} ({mid}.{point}) is read-only", Detail.BAD_REFERENCE)
                sf = sfs.get(pd.sf) if isinstance(pd.sf, str) else None
                try:
                    encoded.append((base + pd.offset, ss.encode_point(pd, value, sf=sf)))
                except ss.EncodeError as exc:
                    raise WriteError(f"{self.device_id}: {label}={value!r} refused: {exc}", Detail.OUT_OF_RANGE) \
                        from None
        for addr, regs in write_runs(encoded):
            try:
                await dev.write(addr, regs)
            except DeviceError as exc:
                raise WriteError(f"{self.device_id}: write of {len(regs)} registers at {addr} failed: {exc}",
                                 exc.detail, exc.exception_code) from None
        readback: dict[str, object] = {}
        mismatches: list[str] = []
        for mid, pts in plan.items():
            layout, regs, decoded = await self._read_for_write(mid)
            for point, (label, value) in pts.items():
                got = decoded.get(point)
                pd = layout.points.get(point)
                if got is ss.NOT_IMPLEMENTED or got is None or isinstance(got, ss.BadValue) or pd is None:
                    mismatches.append(f"{label} reads back as not implemented")
                    continue
                readback[label] = got
                if isinstance(value, str) or isinstance(got, str):
                    if got != value:
                        mismatches.append(f"{label}: wrote {value!r}, reads back {got!r}")
                    continue
                sf = decoded.get(pd.sf) if isinstance(pd.sf, str) else (pd.sf if isinstance(pd.sf, int) else 0)
                step = 10.0 ** (sf if isinstance(sf, int) else 0)
                if abs(got - value) > step / 2 + 1e-9 * max(1.0, abs(value)):
                    mismatches.append(f"{label}: wrote {value!r}, reads back {got!r}")
        if mismatches:
            raise WriteError(f"{self.device_id}: read-back mismatch: {'; '.join(mismatches)}", Detail.DEVICE_EXCEPTION)
        return readback

    @staticmethod
    def _number(label: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WriteError(f"{label} needs a finite number, got {value!r}", Detail.OUT_OF_RANGE)
        return value

    async def write_points(self, values: dict[str, float]) -> dict[str, float]:
        """Write controls by canonical name, read them back, and return the read-back values (canonical units)."""
        if not isinstance(values, dict) or not values:
            raise WriteError(f"{self.device_id}: nothing to write", Detail.BAD_REFERENCE)
        await self._ready_to_write()
        plan: dict[int, dict[str, tuple[str, float]]] = {}
        factors: dict[str, float] = {}
        for name, value in values.items():
            c = ss.CANONICAL.get(name)
            if c is None:
                raise WriteError(f"{self.device_id}: unknown point {name!r}", Detail.BAD_REFERENCE)
            src = ss.pick_source(name, self.models)
            if src is None:
                raise WriteError(f"{self.device_id}: device has no {name} (needs model "
                                 f"{' or '.join(str(s.model_id) for s in c.sources)})", Detail.NOT_IMPLEMENTED)
            pd = model_layout(src.model_id).points[src.point]
            if not c.control or not pd.writable:
                raise WriteError(f"{self.device_id}: {name} ({src.model_id}.{src.point}) is read-only",
                                 Detail.BAD_REFERENCE)
            self._number(f"{self.device_id}: {name}", value)
            plan.setdefault(src.model_id, {})[src.point] = (name, value / src.factor)
            factors[name] = src.factor
        got = await self._write_verified(plan)
        return {n: (round(v * factors[n], 12) if factors[n] != 1.0 else v) for n, v in got.items()}

    async def write_model(self, model_id: int, values: Mapping[str, float | str]) -> dict[str, object]:
        """Write points of one model by SunSpec name (e.g. 711 {"Ctl[2].DbOf": 0.036}), read back, return the
        read-back values. The same checks as write_points (present, writable, encodable)."""
        if not isinstance(values, Mapping) or not values:
            raise WriteError(f"{self.device_id}: nothing to write", Detail.BAD_REFERENCE)
        await self._ready_to_write()
        if model_id not in self.models:
            raise WriteError(f"{self.device_id}: device has no model {model_id} (has {sorted(self.models)})",
                             Detail.NOT_IMPLEMENTED)
        for name, value in values.items():
            if not isinstance(value, str):
                self._number(f"{self.device_id}: {model_id}.{name}", value)
        return await self._write_verified({model_id: {n: (n, v) for n, v in values.items()}})

    async def write_curve(self, model_id: int, index: int, points: Sequence[tuple[float, float]], *,
                          adopt: bool = True, enable: bool | None = None, **settings: float) -> dict[str, object]:
        """Write a curve (705 volt-var: (V %, var %) pairs; 706 volt-watt; 712 watt-var) into stored curve `index`,
        read it back, then (adopt=True) ask the device to adopt it and wait until the active curve (curve 1) reads
        back as written. `settings` are other points of the curve (705: Pri, VRef, RspTms...) and must include
        `DeptRef`, the rating the dependent values are a percentage of (705/712: 0 WMax, 1 VarMax, 2 VarAval,
        3 VAMax; 706: 0 WMax, 1 WAval): a curve is meaningless without it, and the stored curve's own may be
        anything. IEEE 1547's reactive power is in % of the rated apparent power: DeptRef=3. `enable` writes the
        model's Ena afterwards. Returns the curve as read back. Raises WriteError (nothing written if the request is
        refused before the first register: no DeptRef, wrong index, read-only curve, too many points)."""
        if model_id not in CURVES:
            raise WriteError(f"{self.device_id}: model {model_id} has no curves gridedge writes "
                             f"(curve models: {sorted(CURVES)})", Detail.BAD_REFERENCE)
        group, x, y, req, rslt = CURVES[model_id]
        if "DeptRef" not in settings:
            raise WriteError(f"{self.device_id}: a curve of model {model_id} needs DeptRef, the rating its {y} values "
                             f"are a percentage of (e.g. 3 = VAMax for volt-var and watt-var)", Detail.BAD_REFERENCE)
        await self._ready_to_write()
        if model_id not in self.models:
            raise WriteError(f"{self.device_id}: device has no model {model_id}", Detail.NOT_IMPLEMENTED)
        _, _, current = await self._read_for_write(model_id)
        n_crv, n_pt = current.get("NCrv"), current.get("NPt")
        if not isinstance(n_crv, int) or not isinstance(n_pt, int):
            raise WriteError(f"{self.device_id}: model {model_id} does not say how many curves it stores",
                             Detail.MALFORMED)
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= n_crv:
            raise WriteError(f"{self.device_id}: curve index must be 1..{n_crv}, got {index!r}", Detail.OUT_OF_RANGE)
        if current.get(f"{group}[{index}].ReadOnly") not in (0, ss.NOT_IMPLEMENTED):
            raise WriteError(f"{self.device_id}: curve {index} of model {model_id} is read-only (curve 1 is the "
                             f"active curve: write to 2..{n_crv} and adopt it)", Detail.BAD_REFERENCE)
        if not isinstance(points, Sequence) or not 1 <= len(points) <= n_pt:
            raise WriteError(f"{self.device_id}: a curve needs 1..{n_pt} points, got "
                             f"{len(points) if isinstance(points, Sequence) else points!r}", Detail.OUT_OF_RANGE)
        prefix = f"{group}[{index}]."
        values: dict[str, tuple[str, float]] = {prefix + "ActPt": (prefix + "ActPt", len(points))}
        for k, pt in enumerate(points, start=1):
            if not isinstance(pt, (tuple, list)) or len(pt) != 2:
                raise WriteError(f"{self.device_id}: curve point {k} must be an ({x}, {y}) pair, got {pt!r}",
                                 Detail.OUT_OF_RANGE)
            for axis, v in zip((x, y), pt):
                name = f"{prefix}Pt[{k}].{axis}"
                values[name] = (name, self._number(f"{self.device_id}: {name}", v))
        for key, v in settings.items():
            name = prefix + key
            values[name] = (name, self._number(f"{self.device_id}: {name}", v))
        readback = await self._write_verified({model_id: values})
        if adopt:
            await self._adopt(model_id, index, {n[len(prefix):]: v for n, v in readback.items()})
            readback[rslt] = ADOPT_COMPLETED
        if enable is not None:
            readback.update(await self._write_verified({model_id: {"Ena": ("Ena", 1 if enable else 0)}}))
        return readback

    async def _adopt(self, model_id: int, index: int, written: dict[str, float]) -> None:
        """Write the adopt request, then wait until the device says FAILED, or curve 1 holds the stored curve as read
        back and the device says COMPLETED (a COMPLETED left over from an earlier adoption is not enough)."""
        group, _, _, req, rslt = CURVES[model_id]
        layout, _, _ = await self._read_for_write(model_id)
        addr = self.models[model_id][0] - 2 + layout.points[req].offset
        try:
            await self._dev.write(addr, ss.encode_raw("uint16", index))
        except DeviceError as exc:
            raise WriteError(f"{self.device_id}: adopt request for curve {index} failed: {exc}", exc.detail,
                             exc.exception_code) from None
        deadline = time.monotonic() + self.adopt_timeout_s
        last = "no answer"
        while True:
            _, _, now = await self._read_for_write(model_id)
            state = now.get(rslt)
            if state == ADOPT_FAILED:
                raise WriteError(f"{self.device_id}: model {model_id} refused to adopt curve {index} "
                                 f"({rslt} = FAILED)", Detail.DEVICE_EXCEPTION)
            diff = [f"{k}: {now.get(f'{group}[1].{k}')!r} != {v!r}" for k, v in written.items()
                    if not _close(now.get(f"{group}[1].{k}"), v)]
            if state == ADOPT_COMPLETED and not diff:
                return
            last = f"{rslt} = {state!r}" + (f", active curve differs ({'; '.join(diff[:3])})" if diff else "")
            if time.monotonic() > deadline:
                raise WriteError(f"{self.device_id}: curve {index} of model {model_id} not adopted within "
                                 f"{self.adopt_timeout_s} s ({last})", Detail.TIMEOUT)
            await asyncio.sleep(0.05)   # the device gives no event: poll the result point


def _close(got, want) -> bool:
    if isinstance(got, (int, float)) and isinstance(want, (int, float)) and not isinstance(got, bool):
        return abs(got - want) <= 1e-9 * max(1.0, abs(want))
    return got == want

