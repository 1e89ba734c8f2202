"""SunSpec inverter over Modbus TCP: discovery, polling into canonical samples, verified control writes.

The wire format lives in drivers/sunspec.py (sans-IO); this module only sequences reads and writes. poll() never
raises on device faults: a dead device gives INVALID samples with TIMEOUT / COMM_FAILURE so one bad inverter
cannot stall the gateway; write_points() raises, because a control that did not land must never pass silently.
"""
from __future__ import annotations

import math
import time

from gridedge.model import Detail, Sample, Validity, invalid

from . import sunspec as ss
from .modbus_tcp import DeviceError, ModbusTcpClient
from .sunspec_models import model_layout


class WriteError(DeviceError):
    """A control write was refused (locally or by the device), failed, or did not read back as written."""


class SunSpecTcpDevice:
    """One SunSpec device (inverter) on Modbus TCP, exposed through canonical point names (docs/points.md)."""

    capability = "inverter"

    def __init__(self, device_id: str, host: str, port: int, unit_id: int = 1, timeout_s: float = 1.0,
                 points: list[str] | None = None):
        unknown = [p for p in (points or []) if p not in ss.CANONICAL]
        if unknown:
            raise ValueError(f"unknown canonical point(s) {unknown}; known: {sorted(ss.CANONICAL)}")
        self.device_id = device_id
        self.points = list(points) if points is not None else None
        self.client = ModbusTcpClient(host, port, unit_id, timeout_s)
        self.models: dict[int, tuple[int, int]] = {}
        self.discovery: ss.DiscoveryResult | None = None

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Connect and discover the SunSpec map; raises DeviceError (clear message) if either fails."""
        await self.client.connect()
        gen = ss.discover()
        req = next(gen)
        while True:
            try:
                regs: list[int] | None = await self.client.read_holding(*req)
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

    async def close(self) -> None:
        await self.client.close()

    def available_points(self) -> list[str]:
        """Canonical points this device has a source for (after discovery)."""
        return [n for n in ss.CANONICAL if ss.pick_source(n, self.models)]

    def _configured(self) -> list[str]:
        if self.points is not None:
            return self.points
        if self.models:
            return self.available_points()
        return list(ss.CANONICAL)  # unknown device yet: report everything as invalid rather than nothing

    # ------------------------------------------------------------------ reading

    async def _read_model(self, mid: int) -> list[int]:
        """The model's fixed data (after ID and L), in chunks of at most 125 registers."""
        addr, length = self.models[mid]
        n = min(length, model_layout(mid).fixed_data_len)
        regs: list[int] = []
        for a, c in ss.split_reads(addr, n):
            regs.extend(await self.client.read_holding(a, c))
        return regs

    async def poll(self) -> list[Sample]:
        """One sample per configured point; device faults come back as INVALID samples, never as exceptions."""
        ts = time.time_ns()
        names = self._configured()
        if not self.models:
            try:
                await self.connect()
            except DeviceError as exc:
                return [invalid(self._pid(n), ts, exc.detail, ss.CANONICAL[n].unit) for n in names]
            names = self._configured()
        needed: list[int] = []
        for n in names:
            for s in ss.candidate_sources(n, self.models):
                if s.model_id not in needed:
                    needed.append(s.model_id)
        decoded: dict[int, dict[str, object]] = {}
        failed: dict[int, Detail] = {}
        fatal: Detail | None = None
        for mid in needed:
            if fatal is not None:
                failed[mid] = fatal
                continue
            try:
                decoded[mid] = ss.decode_model(mid, await self._read_model(mid))
            except DeviceError as exc:
                failed[mid] = exc.detail
                if exc.detail in (Detail.TIMEOUT, Detail.COMM_FAILURE):
                    fatal = exc.detail    # the device is gone: do not wait out a timeout per model
            except ss.DecodeError:
                failed[mid] = Detail.MALFORMED
        return [self._sample(n, ts, decoded, failed) for n in names]

    def _pid(self, name: str) -> str:
        return f"{self.device_id}/{name}"

    def _sample(self, name: str, ts: int, decoded: dict[int, dict[str, object]], failed: dict[int, Detail]) -> Sample:
        c = ss.CANONICAL[name]
        srcs = ss.candidate_sources(name, self.models)
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

    # ------------------------------------------------------------------ writing

    async def write_points(self, values: dict[str, float]) -> dict[str, float]:
        """Write controls by canonical name, read them back, and return the read-back values.

        Everything is checked before the first register is written (known name, present on the device, writable,
        encodable with the device's scale factor), so a refused request changes nothing. Points are written in one
        write_registers per contiguous run, in address order.
        """
        if not isinstance(values, dict) or not values:
            raise WriteError(f"{self.device_id}: nothing to write", Detail.BAD_REFERENCE)
        if not self.models:
            try:
                await self.connect()
            except DeviceError as exc:
                raise WriteError(f"{self.device_id}: cannot write, device unavailable: {exc}", exc.detail) from None
        plan: dict[int, dict[str, tuple[str, float]]] = {}   # model -> sunspec point -> (canonical, value)
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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise WriteError(f"{self.device_id}: {name} needs a finite number, got {value!r}", Detail.OUT_OF_RANGE)
            plan.setdefault(src.model_id, {})[src.point] = (name, value / src.factor)

        # Read each block first: the scale factors are the device's, and may differ per device.
        encoded: list[tuple[int, list[int]]] = []
        for mid, pts in plan.items():
            regs = await self._read_for_write(mid)
            sfs = ss.sf_values(mid, regs)
            lay = model_layout(mid)
            base = self.models[mid][0] - 2   # address of the ID register
            for point, (name, value) in pts.items():
                pd = lay.points[point]
                sf = sfs.get(pd.sf) if isinstance(pd.sf, str) else None
                try:
                    encoded.append((base + pd.offset, ss.encode_point(pd, value, sf=sf)))
                except ss.EncodeError as exc:
                    raise WriteError(f"{self.device_id}: {name}={value!r} refused: {exc}", Detail.OUT_OF_RANGE) \
                        from None

        for addr, regs in _runs(encoded):
            try:
                await self.client.write_registers(addr, regs)
            except DeviceError as exc:
                raise WriteError(f"{self.device_id}: write of {len(regs)} registers at {addr} failed: {exc}",
                                 exc.detail, exc.exception_code) from None

        readback: dict[str, float] = {}
        mismatches: list[str] = []
        for mid, pts in plan.items():
            regs = await self._read_for_write(mid)
            dec = ss.decode_model(mid, regs)
            sfs = ss.sf_values(mid, regs)
            for point, (name, value) in pts.items():
                got = dec.get(point)
                if got is ss.NOT_IMPLEMENTED or isinstance(got, ss.BadValue) or got is None:
                    mismatches.append(f"{name} reads back as not implemented")
                    continue
                src = ss.pick_source(name, self.models)
                pd = model_layout(mid).points[point]
                sf = sfs.get(pd.sf) if isinstance(pd.sf, str) else (pd.sf if isinstance(pd.sf, int) else 0)
                step = 10.0 ** (sf or 0)
                if abs(got - value) > step / 2 + 1e-9 * max(1.0, abs(value)):
                    mismatches.append(f"{name}: wrote {values[name]}, reads back {got * src.factor}")
                readback[name] = round(got * src.factor, 12) if src.factor != 1.0 else got
        if mismatches:
            raise WriteError(f"{self.device_id}: read-back mismatch: {'; '.join(mismatches)}", Detail.DEVICE_EXCEPTION)
        return readback

    async def _read_for_write(self, mid: int) -> list[int]:
        try:
            return await self._read_model(mid)
        except DeviceError as exc:
            raise WriteError(f"{self.device_id}: cannot read model {mid}: {exc}", exc.detail,
                             exc.exception_code) from None


def _runs(encoded: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
    """Merge (address, registers) pieces into contiguous runs of at most 123 registers, in address order."""
    runs: list[tuple[int, list[int]]] = []
    for addr, regs in sorted(encoded):
        if runs and runs[-1][0] + len(runs[-1][1]) == addr and len(runs[-1][1]) + len(regs) <= ss.MAX_WRITE:
            runs[-1][1].extend(regs)
        else:
            runs.append((addr, list(regs)))
    return runs
