"""Wired M-Bus long frames (EN 13757-2) as the Austrian HAN ports (Kundenschnittstelle) push DLMS through them,
sans-IO: a DLMS APDU too long for one frame is split over several, numbered in the CI field.

    68 L L 68 | C | A | CI | STSAP | DTSAP | APDU segment | checksum | 16

L counts C through the last data byte; the checksum is their sum modulo 256. CI 0x00-0x0F: a segment with more
to follow (low nibble = sequence number), CI 0x10-0x1F: the last segment (sequence in the low nibble).
"""
from __future__ import annotations

from .errors import FrameError
from .hdlc import skip_to

__all__ = ["encode_mbus", "MbusReader"]


def encode_mbus(apdu: bytes, segment: int = 240, c: int = 0x53, a: int = 0xFF) -> bytes:
    """The APDU as M-Bus long frames of at most `segment` APDU bytes each (the rig's HAN port)."""
    if not 1 <= segment <= 250:
        raise ValueError("segment must be 1..250 bytes")
    chunks = [apdu[i:i + segment] for i in range(0, len(apdu), segment)] or [b""]
    if len(chunks) > 16:
        raise ValueError("an APDU longer than 16 segments")
    out = b""
    for k, chunk in enumerate(chunks):
        ci = (0x10 if k == len(chunks) - 1 else 0x00) | k
        body = bytes((c, a, ci, 0x01, 0x67)) + chunk
        out += bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))
    return out


class MbusReader:
    """Finds long frames in a byte stream and joins segments into APDUs. Broken frames are counted in `errors`
    and drop the APDU being assembled; noise is skipped."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._next = 0
        self.noise = 0
        self.errors: list[str] = []

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            found, dropped = skip_to(buf, b"\x68")
            self.noise += dropped
            if not found:
                break
            if len(buf) < 4:
                break
            n = buf[1]
            if buf[2] != n or buf[3] != 0x68 or n < 5:
                self.noise += 1
                del buf[0]
                continue
            if len(buf) < n + 6:
                break
            body, cs, end = bytes(buf[4:4 + n]), buf[4 + n], buf[5 + n]
            if end != 0x16:
                self.noise += 1
                del buf[0]
                continue
            del buf[:n + 6]
            try:
                apdu = self._segment(body, cs)
            except FrameError as exc:
                self.errors.append(str(exc))
                self._parts, self._next = [], 0
                continue
            if apdu is not None:
                out.append(apdu)
        return out

    def _segment(self, body: bytes, cs: int) -> bytes | None:
        if sum(body) & 0xFF != cs:
            raise FrameError("bad M-Bus checksum")
        ci = body[2]
        if ci & 0xE0:
            raise FrameError(f"CI {ci:#04x} is not a DLMS segment")
        seq = ci & 0x0F
        if seq != self._next:
            raise FrameError(f"segment {seq} where {self._next} was expected")
        self._parts.append(body[5:])
        self._next += 1
        if not ci & 0x10:
            if self._next > 15:
                raise FrameError("more than 16 segments")
            return None
        apdu = b"".join(self._parts)
        self._parts, self._next = [], 0
        return apdu
