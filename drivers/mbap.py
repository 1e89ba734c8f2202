"""Sans-IO Modbus TCP (MBAP): the frame codec, and the client side of a connection as a state machine (`Client`,
in the manner of h11's Connection: requests to bytes, bytes to events). No sockets, so transaction ids, late answers
and answers from the wrong unit are fuzzed and tested without a device, and the link above it
(drivers/modbus_tcp.py TcpLink) is a thin layer of asyncio.

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
           "LocalProtocolError", "Response", "WrongUnit", "Mismatch", "LateAnswer", "Stray", "BadFrame", "Event", "Client",
           "encode_read", "encode_write", "Decoder"]

READ_HOLDING, READ_INPUT, WRITE_MULTIPLE = 3, 4, 16
MAX_READ = 125          # registers per read (the PDU limit of 253 bytes)
MAX_WRITE = 123         # registers per write
MAX_ADU = 260           # MBAP header (7) + PDU (253)

_HEAD = struct.Struct(">HHHBB")      # transaction id, protocol id (0), length, unit id, function code
_READ = struct.Struct(">HHHBBHH")    # ... + address, count
_WRITE_HEAD = struct.Struct(">HHHBBHHB")
_ECHO = struct.Struct(">HH")


class FrameError(ValueError):
    """Bytes that are not Modbus TCP: the stream cannot be trusted any more and the connection must be reset.
    `decoded` holds the whole answers that came before the bad bytes."""

    def __init__(self, message: str, decoded: list[Response] | None = None):
        super().__init__(message)
        self.decoded = decoded or []


class LocalProtocolError(Exception):
    """The caller broke a Client's rules: more requests than `max_outstanding`, or any use after a BadFrame."""


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


@dataclass(frozen=True, slots=True)
class WrongUnit:
    """The answer to an outstanding request came from another unit: the request failed, and this connection's
    answers cannot be trusted to come from the unit asked (a gateway mixing up its serial units): reset it."""

    tid: int
    expected: int
    unit: int


@dataclass(frozen=True, slots=True)
class Mismatch:
    """An answer from the right unit to an outstanding request that does not fit it (another function, another
    register count, another write echo): the request failed."""

    tid: int
    reason: str


@dataclass(frozen=True, slots=True)
class LateAnswer:
    """An answer to a request the caller gave up on (Client.cancel, e.g. after a timeout): to be dropped."""

    tid: int


@dataclass(frozen=True, slots=True)
class Stray:
    """An answer to a transaction id this client never sent, or already had an answer to: to be dropped."""

    tid: int


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Bytes that are not Modbus TCP (always the last event): the stream is out of step, every request still
    outstanding has failed, and the connection must be replaced (with a new Client)."""

    reason: str


Event = Response | WrongUnit | Mismatch | LateAnswer | Stray | BadFrame


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
    limits, a PDU inconsistent with its function), with the answers before it in its `decoded`: after that the
    stream is out of step and must be dropped."""

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
                raise FrameError(f"protocol id {proto}, not 0 (Modbus)", out)
            if not 2 <= length <= MAX_ADU - 6:
                self._buf = b""
                raise FrameError(f"MBAP length {length} outside 2..{MAX_ADU - 6}", out)
            end = pos + 6 + length
            if end > n:
                break
            try:
                out.append(_pdu(tid, unit, buf[pos + 7:end]))
            except FrameError as exc:
                self._buf = b""
                raise FrameError(str(exc), out) from None
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


class Client:
    """The client side of one Modbus TCP connection, sans-IO. send_read / send_write give a request's transaction id
    and bytes; receive_data(bytes) gives events, one per answer: a Response only when its transaction id is
    outstanding *and* it fits that request (unit, function, register count or write echo), so an answer is never
    matched to the wrong request; otherwise WrongUnit or Mismatch (the request failed), LateAnswer (a request given
    up on with cancel(): its id stays out of use until its answer comes or CANCELLED_KEPT later ones were given up
    on) or Stray. Bytes that are not Modbus TCP end the events with BadFrame, after the answers that came before
    them: the connection must then be replaced (with a new Client).

    Raises only ValueError, for a request that cannot be encoded (nothing is outstanding then), and
    LocalProtocolError, for more than `max_outstanding` requests at once or any call after a BadFrame."""

    CANCELLED_KEPT = 256

    def __init__(self, max_outstanding: int = 1):
        if isinstance(max_outstanding, bool) or not isinstance(max_outstanding, int) or not 1 <= max_outstanding <= 256:
            raise ValueError(f"max_outstanding must be 1..256, got {max_outstanding!r}")
        self.max_outstanding = max_outstanding
        self.broken: BadFrame | None = None
        self._decoder = Decoder()
        self._outstanding: dict[int, tuple[int, int, int, int]] = {}   # tid -> (unit, function, address, count)
        self._cancelled: dict[int, None] = {}       # ids given up on, oldest first
        self._tid = 0

    @property
    def outstanding(self) -> tuple[int, ...]:
        """Transaction ids of the requests sent and not yet answered or given up on."""
        return tuple(self._outstanding)

    def send_read(self, unit: int, function: int, address: int, count: int) -> tuple[int, bytes]:
        tid = self._next_tid()
        frame = encode_read(tid, unit, function, address, count)
        self._outstanding[tid] = (unit, function, address, count)
        return tid, frame

    def send_write(self, unit: int, address: int, values) -> tuple[int, bytes]:
        tid = self._next_tid()
        frame = encode_write(tid, unit, address, values)
        self._outstanding[tid] = (unit, WRITE_MULTIPLE, address, len(values))
        return tid, frame

    def cancel(self, tid: int) -> None:
        """Give up on an outstanding request (no-op otherwise): its answer, if it still comes, is a LateAnswer."""
        if self._outstanding.pop(tid, None) is not None:
            self._cancelled[tid] = None
            if len(self._cancelled) > self.CANCELLED_KEPT:
                del self._cancelled[next(iter(self._cancelled))]

    def receive_data(self, data: bytes) -> list[Event]:
        if self.broken is not None:
            raise LocalProtocolError(f"connection broken by bytes that are not Modbus TCP ({self.broken.reason})")
        try:
            answers, bad = self._decoder.feed(data), None
        except FrameError as exc:
            answers, bad = exc.decoded, BadFrame(str(exc))
        events: list[Event] = []
        for rsp in answers:
            req = self._outstanding.pop(rsp.tid, None)
            if req is not None:
                events.append(_fit(req, rsp))
            elif rsp.tid in self._cancelled:
                del self._cancelled[rsp.tid]
                events.append(LateAnswer(rsp.tid))
            else:
                events.append(Stray(rsp.tid))
        if bad is not None:
            self.broken = bad
            self._outstanding.clear()
            events.append(bad)
        return events

    def _next_tid(self) -> int:
        if self.broken is not None:
            raise LocalProtocolError(f"connection broken by bytes that are not Modbus TCP ({self.broken.reason})")
        if len(self._outstanding) >= self.max_outstanding:
            raise LocalProtocolError(f"{len(self._outstanding)} requests outstanding, at most {self.max_outstanding}")
        tid = (self._tid + 1) & 0xFFFF
        while tid in self._outstanding or tid in self._cancelled:    # at most 512 ids are ever held
            tid = (tid + 1) & 0xFFFF
        self._tid = tid
        return tid


def _fit(req: tuple[int, int, int, int], rsp: Response) -> Event:
    """The answer `rsp` to the request `req` (same transaction id) as an event: the Response if it fits."""
    unit, function, address, count = req
    if rsp.unit != unit:
        return WrongUnit(rsp.tid, unit, rsp.unit)
    if rsp.function != function:
        return Mismatch(rsp.tid, f"answer of function {rsp.function} to a request of function {function}")
    if rsp.exception is not None:
        return rsp
    if function == WRITE_MULTIPLE:
        if (rsp.address, rsp.count) != (address, count):
            return Mismatch(rsp.tid, f"answer echoes {rsp.count} @ {rsp.address}, not {count} @ {address}")
    elif len(rsp.registers) != count:
        return Mismatch(rsp.tid, f"got {len(rsp.registers)} registers, not {count}")
    return rsp
