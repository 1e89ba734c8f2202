"""The TCP-UDP wrapper of DLMS/COSEM (IEC 62056-47), sans-IO: every APDU travels behind an 8-byte header.

    version 0x0001 | source wPort | destination wPort | length     (each 2 bytes, big-endian)

The wPorts are the client's SAP and the server's logical device (as the upper HDLC address is). TCP is a
stream, so WrapperReader cuts it into messages; a header that is not version 1 means the stream is lost (there is
no flag to resynchronise on): the reader raises and the connection must be closed.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import FrameError

__all__ = ["PORT", "VERSION", "MAX_APDU", "WrapperMessage", "encode_wrapper", "decode_wrapper", "WrapperReader"]

PORT = 4059
VERSION = 1
MAX_APDU = 0xFFFF
_HEAD = struct.Struct(">HHHH")


class WrapperMessage(NamedTuple):
    source: int
    destination: int
    apdu: bytes


def encode_wrapper(source: int, destination: int, apdu: bytes) -> bytes:
    if not (0 <= source <= 0xFFFF and 0 <= destination <= 0xFFFF):
        raise ValueError(f"wPorts must be 0..65535, got {source!r}, {destination!r}")
    if len(apdu) > MAX_APDU:
        raise ValueError(f"APDU of {len(apdu)} bytes exceeds the wrapper's {MAX_APDU}")
    return _HEAD.pack(VERSION, source, destination, len(apdu)) + apdu


def decode_wrapper(data: bytes) -> WrapperMessage:
    """Exactly one message. Raises FrameError."""
    if len(data) < 8:
        raise FrameError(f"wrapper header needs 8 bytes, got {len(data)}")
    version, src, dst, n = _HEAD.unpack_from(data)
    if version != VERSION:
        raise FrameError(f"wrapper version {version} (must be {VERSION})")
    if n != len(data) - 8:
        raise FrameError(f"wrapper length {n} but {len(data) - 8} bytes follow")
    return WrapperMessage(src, dst, bytes(data[8:]))


class WrapperReader:
    """Cuts a TCP stream into wrapper messages. feed() raises FrameError when the stream cannot be trusted."""

    def __init__(self, max_apdu: int = MAX_APDU) -> None:
        self._buf = bytearray()
        self.max_apdu = max_apdu

    def feed(self, data: bytes) -> list[WrapperMessage]:
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= 8:
            version, src, dst, n = _HEAD.unpack_from(buf)
            if version != VERSION:
                buf.clear()
                raise FrameError(f"wrapper version {version} (must be {VERSION}): stream lost")
            if n > self.max_apdu:
                buf.clear()
                raise FrameError(f"wrapper announces {n} bytes, more than the {self.max_apdu} accepted")
            if len(buf) < 8 + n:
                break
            out.append(WrapperMessage(src, dst, bytes(buf[8:8 + n])))
            del buf[:8 + n]
        return out
