"""HDLC framing of DLMS/COSEM (IEC 62056-46, ISO/IEC 13239 frame format type 3), sans-IO.

    7E | A0/A8 len | destination | source | control | HCS | information | FCS | 7E

The format field carries the segmentation bit (A8: more segments follow) and an 11-bit length of everything
between the flags. Addresses use extended addressing (a 1 in bit 0 closes the address): the client is one byte,
the server one, two or four (upper = logical device, lower = physical device, the meter's address on a
multidrop RS-485 line). HCS covers the header, FCS the whole frame; both are CRC-16/X.25, sent low byte first.

Only the pieces the association needs: frames, a reader that finds them in a byte stream (flags shared between
frames, line noise and broken frames counted, never fatal), SNRM/UA parameter negotiation, and the client's
sequence numbers with segmentation both ways (window 1, as meters use it).
"""
from __future__ import annotations

from typing import NamedTuple

from .errors import FrameError

__all__ = ["FLAG", "LLC_REQUEST", "LLC_RESPONSE", "SNRM", "DISC", "UA", "DM", "FRMR", "UI", "Frame", "HdlcParams",
           "crc16", "client_address", "server_address", "parse_address", "encode_frame", "decode_frame",
           "FrameReader", "frame_kind", "i_control", "rr_control", "encode_params", "decode_params",
           "HdlcClient", "MAX_FRAME"]

FLAG = 0x7E
MAX_FRAME = 0x7FF                      # the 11-bit length field
LLC_REQUEST = b"\xe6\xe6\x00"          # LSAP of a command (client -> server)
LLC_RESPONSE = b"\xe6\xe7\x00"         # LSAP of a response (server -> client)
# U-frame controls with the poll/final bit set, as DLMS sends them.
SNRM, DISC, UA, DM, FRMR, UI = 0x93, 0x53, 0x73, 0x1F, 0x97, 0x13
_U_NAMES = {0x83: "SNRM", 0x43: "DISC", 0x63: "UA", 0x0F: "DM", 0x87: "FRMR", 0x03: "UI"}


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x8408 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/X.25 (reflected 0x1021, init and final XOR 0xFFFF): the HCS and FCS of HDLC."""
    crc = 0xFFFF
    t = _TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFF


# ---------------------------------------------------------------- addresses

def client_address(sap: int) -> bytes:
    """The client's one-byte address (its SAP: 16 public client, 1 management, 32 reading client...)."""
    if not isinstance(sap, int) or not 0 <= sap <= 0x7F:
        raise ValueError(f"client address must be 0..127, got {sap!r}")
    return bytes(((sap << 1) | 1,))


def server_address(logical: int, physical: int | None = None, size: int | None = None) -> bytes:
    """The server's address: the logical device (upper) and, on a multidrop line, the physical device (lower).
    size: 1 (logical only), 2 (both < 128) or 4 (both < 16384); default the smallest that fits."""
    if size is None:
        size = 1 if physical is None else 2 if logical <= 0x7F and physical <= 0x7F else 4
    limit = {1: 0x7F, 2: 0x7F, 4: 0x3FFF}.get(size)
    if limit is None:
        raise ValueError(f"server address size must be 1, 2 or 4 bytes, got {size!r}")
    if not (isinstance(logical, int) and 0 <= logical <= limit) or (size > 1 and not (
            isinstance(physical, int) and 0 <= physical <= limit)):
        raise ValueError(f"server address ({logical!r}, {physical!r}) does not fit {size} byte(s)")
    if size == 1:
        return bytes(((logical << 1) | 1,))
    if size == 2:
        return bytes((logical << 1, (physical << 1) | 1))
    return bytes(((logical >> 7) << 1, (logical & 0x7F) << 1, (physical >> 7) << 1, ((physical & 0x7F) << 1) | 1))


def parse_address(raw: bytes) -> tuple[int, int | None]:
    """(upper, lower) of an encoded address; lower is None for a one-byte address."""
    v = [b >> 1 for b in raw]
    if len(raw) == 1:
        return v[0], None
    if len(raw) == 2:
        return v[0], v[1]
    if len(raw) == 4:
        return (v[0] << 7) | v[1], (v[2] << 7) | v[3]
    raise FrameError(f"address of {len(raw)} bytes (must be 1, 2 or 4)")


def _take_address(body: bytes, pos: int) -> tuple[bytes, int]:
    for n in range(4):
        if pos + n >= len(body):
            raise FrameError("frame ends inside an address")
        if body[pos + n] & 1:
            if n + 1 == 3:
                raise FrameError("address of 3 bytes (must be 1, 2 or 4)")
            return body[pos:pos + n + 1], pos + n + 1
    raise FrameError("address longer than 4 bytes")


# ---------------------------------------------------------------- frames

class Frame(NamedTuple):
    """One HDLC frame. dst/src are encoded addresses (compare them as bytes); info excludes HCS/FCS."""

    dst: bytes
    src: bytes
    control: int
    info: bytes = b""
    segmented: bool = False


def encode_frame(f: Frame) -> bytes:
    """The frame with its flags, HCS (if it has information) and FCS."""
    length = 2 + len(f.dst) + len(f.src) + 1 + 2 + (len(f.info) + 2 if f.info else 0)
    if length > MAX_FRAME:
        raise ValueError(f"HDLC frame of {length} bytes exceeds {MAX_FRAME}")
    head = bytes((0xA0 | (0x08 if f.segmented else 0) | (length >> 8), length & 0xFF)) + f.dst + f.src + bytes(
        (f.control,))
    if f.info:
        hcs = crc16(head)
        head += bytes((hcs & 0xFF, hcs >> 8)) + f.info
    fcs = crc16(head)
    return b"\x7e" + head + bytes((fcs & 0xFF, fcs >> 8)) + b"\x7e"


def decode_frame(body: bytes) -> Frame:
    """A frame from the bytes between its flags (or with them). Raises FrameError."""
    if len(body) >= 2 and body[0] == FLAG and body[-1] == FLAG:
        body = body[1:-1]
    if len(body) < 7:
        raise FrameError(f"frame of {len(body)} bytes is too short")
    fmt = (body[0] << 8) | body[1]
    if fmt >> 12 != 0xA:
        raise FrameError(f"frame format {fmt >> 12:#x} is not type 3 (0xA)")
    if fmt & 0x7FF != len(body):
        raise FrameError(f"length field {fmt & 0x7FF} but {len(body)} bytes between the flags")
    dst, pos = _take_address(body, 2)
    src, pos = _take_address(body, pos)
    if pos + 3 > len(body):
        raise FrameError("frame ends before its check sequence")
    control = body[pos]
    pos += 1
    if crc16(body[:-2]) != body[-2] | (body[-1] << 8):
        raise FrameError("bad FCS")
    info = b""
    if len(body) > pos + 2:
        if len(body) < pos + 4:
            raise FrameError("frame too short for an HCS")
        if crc16(body[:pos]) != body[pos] | (body[pos + 1] << 8):
            raise FrameError("bad HCS")
        info = body[pos + 2:-2]
    return Frame(dst, src, control, info, bool(fmt & 0x0800))


def skip_to(buf: bytearray, marker: bytes) -> tuple[bool, int]:
    """Drop what precedes marker in buf (all of buf if it is absent): (found, bytes dropped). A scanner's hunt."""
    start = buf.find(marker)
    dropped = len(buf) if start < 0 else start
    del buf[:dropped]
    return start >= 0, dropped


class FrameReader:
    """Finds frames in a byte stream (serial or TCP): skips idle flags and noise, takes a flag shared between two
    frames, and counts what it had to drop. Frames that fail their checks land in `errors`, not in the output."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.noise = 0                  # bytes dropped while hunting for a frame
        self.errors: list[str] = []     # frames dropped for a bad check sequence or length

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        while True:
            found, dropped = skip_to(buf, b"\x7e")
            self.noise += dropped
            if not found:
                break
            while len(buf) > 1 and buf[1] == FLAG:       # idle flags between frames
                del buf[0]
            if len(buf) < 3:
                break
            if buf[1] >> 4 != 0xA:
                self.noise += 1
                del buf[0]
                continue
            n = ((buf[1] & 0x07) << 8) | buf[2]
            if n < 7:
                self.noise += 1
                del buf[0]
                continue
            if len(buf) < n + 2:
                break
            if buf[n + 1] != FLAG:
                self.noise += 1
                del buf[0]
                continue
            try:
                out.append(decode_frame(bytes(buf[1:n + 1])))
            except FrameError as exc:
                self.errors.append(str(exc))
            del buf[:n + 1]           # the closing flag may open the next frame
        return out

    def reset(self) -> None:
        self._buf.clear()


# ---------------------------------------------------------------- control field

def i_control(ns: int, nr: int, final: bool = True) -> int:
    return ((nr & 7) << 5) | (0x10 if final else 0) | ((ns & 7) << 1)


def rr_control(nr: int, final: bool = True) -> int:
    return ((nr & 7) << 5) | (0x10 if final else 0) | 0x01


def frame_kind(control: int) -> str:
    """"I", "RR", "RNR", "REJ" or the U-frame's name (SNRM, DISC, UA, DM, FRMR, UI); "?" for anything else."""
    if not control & 1:
        return "I"
    if control & 3 == 1:
        return {0x01: "RR", 0x05: "RNR", 0x09: "REJ"}.get(control & 0x0F, "?")
    return _U_NAMES.get(control & 0xEF, "?")


# ---------------------------------------------------------------- SNRM / UA parameters

class HdlcParams(NamedTuple):
    """Link parameters (from the sender's point of view): largest information field it sends and receives, and
    its transmit and receive windows. IEC 62056-46 defaults: 128 bytes, window 1."""

    max_tx: int = 128
    max_rx: int = 128
    window_tx: int = 1
    window_rx: int = 1


def _param(tag: int, value: int, size: int | None = None) -> bytes:
    if size is None:
        size = 1 if value <= 0xFF else 2
    return bytes((tag, size)) + value.to_bytes(size, "big")


def encode_params(p: HdlcParams) -> bytes:
    """The information field of an SNRM or UA: 81 80 len, then max tx/rx information length and tx/rx window."""
    body = (_param(5, p.max_tx) + _param(6, p.max_rx) + _param(7, p.window_tx, 4) + _param(8, p.window_rx, 4))
    return bytes((0x81, 0x80, len(body))) + body


def decode_params(info: bytes) -> HdlcParams:
    """Parameters of an SNRM or UA; absent ones take the defaults. Raises FrameError."""
    if not info:
        return HdlcParams()
    if len(info) < 3 or info[0] != 0x81 or info[1] != 0x80 or info[2] != len(info) - 3:
        raise FrameError(f"not an HDLC parameter field: {info[:8].hex()}")
    values = dict(HdlcParams()._asdict())
    names = {5: "max_tx", 6: "max_rx", 7: "window_tx", 8: "window_rx"}
    pos = 3
    while pos < len(info):
        if pos + 2 > len(info):
            raise FrameError("parameter field ends inside a parameter")
        tag, n = info[pos], info[pos + 1]
        if not 1 <= n <= 4 or pos + 2 + n > len(info):
            raise FrameError(f"parameter {tag} has a bad length {n}")
        v = int.from_bytes(info[pos + 2:pos + 2 + n], "big")
        if tag in names:
            values[names[tag]] = v
        pos += 2 + n
    p = HdlcParams(**values)
    if not (16 <= p.max_tx <= 2030 and 16 <= p.max_rx <= 2030 and 1 <= p.window_tx <= 7 and 1 <= p.window_rx <= 7):
        raise FrameError(f"unusable link parameters {tuple(p)}")
    return p


# ---------------------------------------------------------------- the client's side of one link

class HdlcClient:
    """The client end of the HDLC connection with one server (one meter on the line), sans-IO.

    The driver sends connect(), hands the answer to connected(); then per request sends each frame of
    request_frames() (waiting for the server's RR between segments: receive() returns ("rr", None)), and hands
    every answering frame to receive() until it returns ("apdu", bytes), sending the RR it asks for in between."""

    def __init__(self, client: bytes, server: bytes, params: HdlcParams = HdlcParams()):
        self.client, self.server = client, server
        self.proposed = params
        self.params = params               # negotiated, from our side
        self.ns = self.nr = 0              # next send sequence, next expected receive sequence
        self._rx = bytearray()

    def connect(self) -> bytes:
        self.ns = self.nr = 0
        self._rx.clear()
        return encode_frame(Frame(self.server, self.client, SNRM, encode_params(self.proposed)))

    def disconnect(self) -> bytes:
        return encode_frame(Frame(self.server, self.client, DISC))

    def _ours(self, f: Frame) -> bool:
        return f.dst == self.client and f.src == self.server

    def connected(self, f: Frame) -> None:
        """The answer to SNRM: UA with the server's parameters (we send at most what it receives). Raises
        FrameError on anything else (DM: the server refuses, it is busy with another client)."""
        if not self._ours(f):
            raise FrameError(f"answer from address {f.src.hex()} to {f.dst.hex()}, not ours")
        kind = frame_kind(f.control)
        if kind != "UA":
            raise FrameError(f"server answered SNRM with {kind}")
        theirs = decode_params(f.info)
        p = self.proposed
        self.params = HdlcParams(min(p.max_tx, theirs.max_rx), min(p.max_rx, theirs.max_tx),
                                 min(p.window_tx, theirs.window_rx), min(p.window_rx, theirs.window_tx))

    def request_frames(self, apdu: bytes) -> list[bytes]:
        """The request as I-frames of at most the negotiated size, LLC header in front of the first."""
        data = LLC_REQUEST + apdu
        size = self.params.max_tx
        chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        out = []
        for k, chunk in enumerate(chunks):
            out.append(encode_frame(Frame(self.server, self.client, i_control(self.ns, self.nr), chunk,
                                          segmented=k < len(chunks) - 1)))
            self.ns = (self.ns + 1) & 7
        self._rx.clear()
        return out

    def receive(self, f: Frame) -> tuple[str, bytes | None]:
        """One frame of the answer. Returns ("ignore", None) for a frame not for us or a repeat, ("rr", None) when
        the server acknowledged a segment of ours, ("ack", RR frame to send) for a segment of the answer,
        ("apdu", apdu) when complete. Raises FrameError for a frame that breaks the link (DM, FRMR, bad LLC)."""
        if not self._ours(f):
            return "ignore", None
        kind = frame_kind(f.control)
        if kind in ("RR", "RNR"):
            return "rr", None
        if kind in ("DM", "FRMR", "DISC"):
            raise FrameError(f"server sent {kind}: link lost")
        if kind != "I":
            return "ignore", None
        ns = (f.control >> 1) & 7
        if ns != self.nr:
            return "ignore", None            # a repeat of a frame we already have
        self.nr = (self.nr + 1) & 7
        self._rx += f.info
        if f.segmented:
            return "ack", encode_frame(Frame(self.server, self.client, rr_control(self.nr)))
        data = bytes(self._rx)
        self._rx.clear()
        if not data.startswith(LLC_RESPONSE):
            raise FrameError(f"answer does not start with the LLC header E6 E7 00: {data[:3].hex()}")
        return "apdu", data[3:]
