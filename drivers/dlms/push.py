"""A meter that pushes: DataNotification APDUs arriving unasked on a HAN port (Nordic meters: HDLC frames on a
serial line; Austrian meters: wired M-Bus frames, ciphered with suite 0 and the customer's key) or on a TCP port
(a HAN-to-Ethernet adapter). The gateway only listens, so there is no bus turn to take: the line is the device's.

Decoding is sans-IO (PushDecoder): frames -> APDU -> deciphered (general-glo-ciphering, the invocation counter
must go up) -> notification -> samples. The points come from an OBIS map: matched by the OBIS codes the push carries
(OBIS, value, scaler_unit), or by position when the map lists the push object list. The notification's time stamp
(the meter's clock, its status setting the quality) stamps the samples; without one, the time of arrival does.
A push that does not decode is counted and logged, never fatal. An encryption-only push (SC 0x20, as Austrian
meters send) carries no tag: it is deciphered but cannot be authenticated, which docs/dlms.md points out.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gridedge.core.model import BlockLayout, Detail, Quality, Reading, SampleBlock, Validity

from ..modbus import DeviceError
from . import apdu as A
from . import axdr, cosem, hdlc, mbus
from .device import DlmsLinkSpec
from .errors import DecodeError, DlmsError
from .obismap import ObisMap, ObisPoint
from .security import GENERAL_GLO, Keys, ReplayGuard, is_ciphered, unprotect

__all__ = ["PushDecoder", "DlmsPushDevice", "tagged_values"]

log = logging.getLogger(__name__)


def tagged_values(body: Any) -> dict[bytes, tuple[Any, tuple[int, int] | None]]:
    """OBIS -> (value, scaler_unit or None) of every "OBIS code followed by its value" in a push body, at any depth:
    (OBIS, value), (OBIS, value, (scaler, unit)) or the same pairs loose in the top structure."""
    out: dict[bytes, tuple[Any, tuple[int, int] | None]] = {}

    def walk(seq, depth: int) -> None:
        if depth > axdr.MAX_DEPTH:
            return
        i = 0
        while i < len(seq):
            x = seq[i]
            if isinstance(x, (tuple, list)):
                walk(x, depth + 1)
            elif isinstance(x, bytes) and len(x) == 6 and i + 1 < len(seq) and not isinstance(seq[i + 1], list):
                value = seq[i + 1]
                su = seq[i + 2] if i + 2 < len(seq) else None
                if isinstance(su, tuple) and len(su) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in su):
                    out[x] = (value, su)
                    i += 3
                    continue
                out[x] = (value, None)
                i += 2
                continue
            i += 1
    if isinstance(body, (tuple, list)):
        walk(body, 0)
    return out


class PushDecoder:
    """Bytes of a HAN port in, SampleBlocks out (sans-IO). `errors` counts pushes that did not decode."""

    def __init__(self, device_id: str, omap: ObisMap, keys: Keys | None = None, points=None):
        self.device_id = device_id
        self.omap = omap
        self.keys = keys
        self.points: tuple[ObisPoint, ...] = omap.select(points) if points else omap.points
        self.hdlc = hdlc.FrameReader()
        self.mbus = mbus.MbusReader()
        self._segments = bytearray()
        self._guard = ReplayGuard()
        self._layouts: dict[tuple[str, ...], BlockLayout] = {}
        self.errors = 0
        self.last_error = ""

    def feed(self, data: bytes, now_ns: int | None = None) -> list[SampleBlock]:
        out = []
        for apdu in self._apdus(data):
            try:
                block = self.decode(apdu, time.time_ns() if now_ns is None else now_ns)
            except DlmsError as exc:
                self.errors += 1
                self.last_error = str(exc)
                log.warning("%s: push not decoded: %s", self.device_id, str(exc).encode("unicode_escape").decode())
                continue
            if block is not None:
                out.append(block)
        return out

    def _apdus(self, data: bytes) -> list[bytes]:
        apdus = list(self.mbus.feed(data))
        for f in self.hdlc.feed(data):
            if hdlc.frame_kind(f.control) not in ("UI", "I"):
                continue
            self._segments += f.info
            if f.segmented:
                continue
            info = bytes(self._segments)
            self._segments.clear()
            apdus.append(info[3:] if info[:2] == b"\xe6\xe7" else info)
        return apdus

    def decode(self, apdu: bytes, now_ns: int) -> SampleBlock | None:
        """One pushed APDU as a block of the points it carries (None if it carries none). Raises DlmsError."""
        if apdu and is_ciphered(apdu[0]):
            if self.keys is None:
                raise DecodeError("ciphered push, but no key configured")
            if apdu[0] != GENERAL_GLO:
                raise DecodeError(f"push ciphered with tag {apdu[0]:#04x}, expected general-glo-ciphering")
            u = unprotect(apdu, None, self.keys)
            self._guard.check(u.system_title, u.ic)
            apdu = u.apdu
        n = A.decode_notification(apdu)
        body = axdr.decode_all(n.body)
        ts, q = now_ns, None
        if n.time is not None:
            try:
                ts = n.time.to_ns()
                q = cosem.clock_quality(n.time)
            except DlmsError:
                ts, q = now_ns, (Validity.QUESTIONABLE, Detail.CLOCK)
        names, units, values, quality = [], [], [], []
        found = self._positional(body) if self.omap.push else tagged_values(body)
        for p in self.points:
            v, pq = self._value(p, found)
            if v is _ABSENT:
                continue
            names.append(p.name)
            units.append(p.unit)
            values.append(v)
            quality.append(pq or q)
        if not names:
            return None
        key = tuple(names)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = BlockLayout(self.device_id, names, units)
        return SampleBlock(layout, ts, values, quality if any(quality) else None)

    def _positional(self, body: Any) -> dict[bytes, tuple[Any, None]]:
        objects = self.omap.push
        if not isinstance(body, tuple) or len(body) != len(objects):
            raise DecodeError(f"push of {len(body) if isinstance(body, tuple) else '?'} values for a push object "
                              f"list of {len(objects)}")
        return {o: (v, None) for o, v in zip(objects, body)}

    @staticmethod
    def _value(p: ObisPoint, found: dict) -> tuple[Any, Quality | None]:
        total = 0
        for sign, code in p.terms:
            if code not in found:
                return _ABSENT, None
            value, su = found[code]
            if isinstance(value, bytes) and p.unit == "" and len(p.terms) == 1:
                return value.decode("latin-1"), None
            scaler = p.scaler or 0
            if su is not None:
                scaler, unit = su
                if cosem.unit_symbol(unit) != p.unit:
                    return None, (Validity.INVALID, Detail.BAD_REFERENCE)
            try:
                total += sign * cosem.scaled(value, scaler)
            except DlmsError:
                return None, (Validity.INVALID, Detail.MALFORMED)
        return total, None


_ABSENT = object()


class DlmsPushDevice:
    """A HAN port: listens on its line and hands each push's samples to the sink; INVALID/TIMEOUT samples when
    nothing arrives for `stale_s`."""

    writable = False

    def __init__(self, device_id: str, omap: ObisMap, link: DlmsLinkSpec, *, keys: Keys | None = None, points=None,
                 role: str = "meter", stale_s: float = 30.0):
        self.device_id = device_id
        self.link = link
        self.capability = role
        self.stale_s = stale_s
        self.decoder = PushDecoder(device_id, omap, keys, points)
        names = [p.name for p in self.decoder.points]
        self._silent = BlockLayout(device_id, names, [p.unit for p in self.decoder.points])
        self._line = None
        self.last: SampleBlock | None = None

    async def connect(self) -> None:
        if self._line is None:
            self._line = self.link.make_links()[0]
        await self._line.connect()

    async def close(self) -> None:
        if self._line is not None:
            await self._line.close()

    async def poll(self) -> list[Reading]:
        if self.last is None or time.time_ns() - self.last.ts_ns > self.stale_s * 1e9:
            return [SampleBlock.invalid(self._silent, time.time_ns(), Detail.TIMEOUT)]
        return [self.last]

    async def run(self, sink: Callable[[list[Reading]], None]) -> None:
        backoff = 1.0
        while True:
            try:
                await self.connect()
                backoff = 1.0
                while True:
                    data = await self._line.recv(time.monotonic() + self.stale_s)
                    if not data:
                        sink([SampleBlock.invalid(self._silent, time.time_ns(), Detail.TIMEOUT)])
                        continue
                    blocks = self.decoder.feed(data)
                    if blocks:
                        self.last = blocks[-1]
                        sink(blocks)
            except DeviceError as exc:
                log.warning("%s: %s (again in %.0f s)", self.device_id, exc, backoff)
                sink([SampleBlock.invalid(self._silent, time.time_ns(), exc.detail)])
                await self.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
