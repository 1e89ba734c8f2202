"""Sans-IO Modbus TCP (MBAP) codec: requests to bytes, bytes to responses. No sockets, so it is fuzzed and tested
without a device, and the link above it (drivers/modbus_rtu.py TcpLink) is a few lines of asyncio.

Why our own and not pymodbus here: on a gateway polling a hundred meters, pymodbus's per-request machinery (PDU
objects, framer, transaction manager) was the largest cost after decoding, and its import alone adds ~8 MB of RSS
on a Pi. Modbus TCP framing is seven header bytes and a PDU (Modbus Application Protocol v1.1b3, Messaging on
TCP/IP v1.0b); pymodbus stays the reference peer in the tests and the stack for serial lines.

Supported: read holding registers (3), read input registers (4), write multiple registers (16), and the
exception responses of all three.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["READ_HOLDING", "READ_INPUT", "WRITE_MULTIPLE", "MAX_READ", "MAX_WRITE", "MAX_ADU", "FrameError",
           "Response", "encode_read", "encode_write", "Decoder"]

READ_HOLDING, READ_INPUT, WRITE_MULTIPLE = 3, 4, 16
MAX_READ = 125          # registers per read (the PDU limit of 253 bytes)
MAX_WRITE = 123         # registers per write
MAX_ADU = 260           # MBAP header (7) + PDU (253)

_HEAD = struct.Struct(">HHHBB")      # transaction id, protocol id (0), length, unit id, function code
_READ = struct.Struct(">HHHBBHH")    # ... + address, count
_WRITE_HEAD = struct.Struct(">HHHBBHHB")
_ECHO = struct.Struct(">HH")


class FrameError(ValueError):
    """Bytes that are not Modbus TCP: the stream cannot be trusted any more and the connection must be reset."""


@dataclass(frozen=True, slots=True)
class Response:
    """One answer. `registers` for a read, `address`/`count` echoed for a write, `exception` code for an error."""

    tid: int
    unit: int
    function: int                     # without the 0x80 error bit
    registers: tuple[int, ...] | None = None
    exception: int | None = None
    address: int | None = None
    count: int | None = None


def encode_read(tid: int, unit: int, function: int, address: int, count: int) -> bytes:
    if function not in (READ_HOLDING, READ_INPUT):
        raise ValueError(f"not a register read function: {function!r}")
    if not (0 <= tid <= 0xFFFF and 0 <= unit <= 0xFF and 0 <= address and 1 <= count <= MAX_READ
            and address + count <= 0x10000):
        raise ValueError(f"bad read: tid={tid} unit={unit} address={address} count={count}")
    return _READ.pack(tid, 0, 6, unit, function, address, count)


def encode_write(tid: int, unit: int, address: int, values) -> bytes:
    n = len(values)
    if not (0 <= tid <= 0xFFFF and 0 <= unit <= 0xFF and 0 <= address and 1 <= n <= MAX_WRITE
            and address + n <= 0x10000):
        raise ValueError(f"bad write: tid={tid} unit={unit} address={address} count={n}")
    try:
        data = struct.pack(f">{n}H", *values)
    except struct.error:
        raise ValueError(f"bad write: values must be integers 0..65535, got {list(values)!r}") from None
    return _WRITE_HEAD.pack(tid, 0, 7 + 2 * n, unit, WRITE_MULTIPLE, address, n, 2 * n) + data


class Decoder:
    """Feed received bytes, get whole responses; keeps a partial frame until the rest arrives.

    feed() raises FrameError on a frame that cannot be Modbus TCP (protocol id not 0, a length outside the ADU
    limits, a PDU inconsistent with its function): after that the stream is out of step and must be dropped."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Response]:
        buf = self._buf + data if self._buf else data
        out: list[Response] = []
        pos = 0
        n = len(buf)
        while n - pos >= 7:
            tid, proto, length, unit, = struct.unpack_from(">HHHB", buf, pos)
            if proto != 0:
                self._buf = b""
                raise FrameError(f"protocol id {proto}, not 0 (Modbus)")
            if not 2 <= length <= MAX_ADU - 6:
                self._buf = b""
                raise FrameError(f"MBAP length {length} outside 2..{MAX_ADU - 6}")
            end = pos + 6 + length
            if end > n:
                break
            try:
                out.append(_pdu(tid, unit, buf[pos + 7:end]))
            except FrameError:
                self._buf = b""
                raise
            pos = end
        self._buf = buf[pos:] if pos < n else b""
        return out


def _pdu(tid: int, unit: int, pdu: bytes) -> Response:
    fc = pdu[0]
    body = pdu[1:]
    if fc & 0x80:
        if len(body) != 1:
            raise FrameError(f"exception response of {len(body)} bytes, not 1")
        return Response(tid, unit, fc & 0x7F, exception=body[0])
    if fc in (READ_HOLDING, READ_INPUT):
        if not body or body[0] != len(body) - 1 or body[0] % 2:
            raise FrameError(f"read response byte count {body[0] if body else None} does not match its "
                             f"{max(0, len(body) - 1)} data bytes")
        return Response(tid, unit, fc, registers=struct.unpack_from(f">{body[0] // 2}H", body, 1))
    if fc == WRITE_MULTIPLE:
        if len(body) != 4:
            raise FrameError(f"write response of {len(body)} bytes, not 4")
        address, count = _ECHO.unpack(body)
        return Response(tid, unit, fc, address=address, count=count)
    raise FrameError(f"unexpected function code {fc}")
