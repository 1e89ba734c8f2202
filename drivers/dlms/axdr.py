"""A-XDR encoding of the COSEM data types (IEC 61334-6, DLMS UA Green Book), sans-IO.

Decoded values are plain Python, so a load profile of thousands of values costs no object per value:

    null-data None · boolean bool · integers, enum, bcd int · float32/64 float · octet-string bytes ·
    visible-string / utf8-string str · bit-string BitString (a str of "0"/"1") · array list · structure tuple ·
    compact-array list (of its elements, decoded by its type description) · date-time / date / time DateTime,
    Date, Time.

COSEM sends most date-times as 12-byte octet-strings (the Clock's time, profile capture times); DateTime.decode
reads those. Deviation follows the Blue Book: local time = UTC - deviation, i.e. UTC = local + deviation minutes
(Central European summer time is -120). The clock status says whether the meter trusts its own time.

To encode, plain values take their natural type (int: the smallest of double-long-unsigned, double-long,
long64 that fits; bytes: octet-string; str: visible-string; list: array; tuple: structure; DateTime: the 12-byte
octet-string); anything else is Typed(tag, value), for which the helpers u8(), i16(), enum()... exist.
"""
from __future__ import annotations

import calendar
import struct
import time
from typing import Any, NamedTuple

from .errors import DecodeError

__all__ = ["NULL", "ARRAY", "STRUCTURE", "BOOLEAN", "BIT_STRING", "INT32", "UINT32", "OCTET_STRING",
           "VISIBLE_STRING", "UTF8_STRING", "BCD", "INT8", "INT16", "UINT8", "UINT16", "COMPACT_ARRAY", "INT64",
           "UINT64", "ENUM", "FLOAT32", "FLOAT64", "DATE_TIME", "DATE", "TIME", "TAG_NAMES", "MAX_DEPTH",
           "Typed", "BitString", "CompactArray", "DateTime", "Date", "Time", "decode", "decode_all", "encode",
           "encode_length", "decode_length", "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "enum",
           "f32", "f64", "CLOCK_INVALID", "CLOCK_DOUBTFUL", "CLOCK_DIFFERENT_BASE", "CLOCK_INVALID_STATUS",
           "CLOCK_DST"]

NULL, ARRAY, STRUCTURE, BOOLEAN, BIT_STRING, INT32, UINT32 = 0, 1, 2, 3, 4, 5, 6
OCTET_STRING, VISIBLE_STRING, UTF8_STRING, BCD, INT8, INT16, UINT8, UINT16 = 9, 10, 12, 13, 15, 16, 17, 18
COMPACT_ARRAY, INT64, UINT64, ENUM, FLOAT32, FLOAT64, DATE_TIME, DATE, TIME = 19, 20, 21, 22, 23, 24, 25, 26, 27
TAG_NAMES = {
    0: "null-data", 1: "array", 2: "structure", 3: "boolean", 4: "bit-string", 5: "double-long",
    6: "double-long-unsigned", 9: "octet-string", 10: "visible-string", 12: "utf8-string", 13: "bcd",
    15: "integer", 16: "long", 17: "unsigned", 18: "long-unsigned", 19: "compact-array", 20: "long64",
    21: "long64-unsigned", 22: "enum", 23: "float32", 24: "float64", 25: "date-time", 26: "date", 27: "time",
}
#: Nesting deeper than this is refused (a hostile frame of nested arrays must not exhaust the stack).
MAX_DEPTH = 16

CLOCK_INVALID, CLOCK_DOUBTFUL, CLOCK_DIFFERENT_BASE, CLOCK_INVALID_STATUS, CLOCK_DST = 0x01, 0x02, 0x04, 0x08, 0x80

_FIXED = {INT32: struct.Struct(">i"), UINT32: struct.Struct(">I"), INT8: struct.Struct(">b"),
          INT16: struct.Struct(">h"), UINT8: struct.Struct("B"), UINT16: struct.Struct(">H"),
          INT64: struct.Struct(">q"), UINT64: struct.Struct(">Q"), ENUM: struct.Struct("B"),
          BCD: struct.Struct("B"), FLOAT32: struct.Struct(">f"), FLOAT64: struct.Struct(">d")}
_RANGES = {INT32: (-2**31, 2**31 - 1), UINT32: (0, 2**32 - 1), INT8: (-128, 127), INT16: (-32768, 32767),
           UINT8: (0, 255), UINT16: (0, 65535), INT64: (-2**63, 2**63 - 1), UINT64: (0, 2**64 - 1),
           ENUM: (0, 255), BCD: (0, 255)}


class Typed(NamedTuple):
    """A value with an explicit A-XDR type, for encoding."""

    tag: int
    value: Any


class BitString(str):
    """A bit-string as its bits, "0"/"1" characters, first bit first."""


class CompactArray(NamedTuple):
    """A compact array to encode: the type description of one element (a tag, ("array", n, desc) or
    ("structure", (desc, ...))) and the elements."""

    description: Any
    elements: list


def u8(v): return Typed(UINT8, v)            # noqa: E704 - one-line type helpers
def u16(v): return Typed(UINT16, v)          # noqa: E704
def u32(v): return Typed(UINT32, v)          # noqa: E704
def u64(v): return Typed(UINT64, v)          # noqa: E704
def i8(v): return Typed(INT8, v)             # noqa: E704
def i16(v): return Typed(INT16, v)           # noqa: E704
def i32(v): return Typed(INT32, v)           # noqa: E704
def i64(v): return Typed(INT64, v)           # noqa: E704
def enum(v): return Typed(ENUM, v)           # noqa: E704
def f32(v): return Typed(FLOAT32, v)         # noqa: E704
def f64(v): return Typed(FLOAT64, v)         # noqa: E704


# ---------------------------------------------------------------- date and time

class DateTime(NamedTuple):
    """A COSEM date-time. None marks a field "not specified". weekday 1 = Monday. deviation in minutes,
    UTC = local + deviation. status: the clock status bits (CLOCK_*), None if not specified."""

    year: int | None
    month: int | None
    day: int | None
    weekday: int | None
    hour: int | None
    minute: int | None
    second: int | None
    hundredths: int | None = None
    deviation: int | None = None
    status: int | None = None

    @classmethod
    def decode(cls, raw: bytes) -> DateTime:
        """From the 12 bytes of a date-time (tag 25 body, or an octet-string). Raises DecodeError."""
        if len(raw) != 12:
            raise DecodeError(f"a date-time has 12 bytes, got {len(raw)}")
        year = (raw[0] << 8) | raw[1]
        dev = (raw[9] << 8) | raw[10]
        dev = None if dev == 0x8000 else dev - 0x10000 if dev & 0x8000 else dev
        return cls(None if year == 0xFFFF else year, *(None if b == 0xFF else b for b in raw[2:9]), dev,
                   None if raw[11] == 0xFF else raw[11])

    def encode(self) -> bytes:
        def b(v, n=1):
            return (0xFF if n == 1 else 0xFFFF) if v is None else v
        dev = 0x8000 if self.deviation is None else self.deviation & 0xFFFF
        return bytes(((b(self.year, 2) >> 8) & 0xFF, b(self.year, 2) & 0xFF, b(self.month), b(self.day),
                      b(self.weekday), b(self.hour), b(self.minute), b(self.second), b(self.hundredths),
                      dev >> 8, dev & 0xFF, b(self.status)))

    @classmethod
    def from_ns(cls, ts_ns: int, deviation: int | None = 0, status: int | None = 0) -> DateTime:
        """The date-time of a UTC instant, as a meter `deviation` minutes from UTC shows it."""
        local_s, frac = divmod(ts_ns - (deviation or 0) * 60 * 10**9, 10**9)
        tm = time.gmtime(local_s)
        return cls(tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_wday + 1, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   frac // 10**7, deviation, status)

    def to_ns(self) -> int:
        """The UTC instant in ns; an unspecified deviation counts as 0 (the meter runs on UTC). Raises DecodeError
        for an unspecified or impossible date or time (wildcards are for schedules, not for readings)."""
        y, mo, d, h, mi, s = self.year, self.month, self.day, self.hour, self.minute, self.second
        if None in (y, mo, d, h, mi, s):
            raise DecodeError(f"date-time with unspecified fields: {self}")
        if not (1970 <= y <= 9999 and 1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1] and h <= 23
                and mi <= 59 and s <= 59):
            raise DecodeError(f"impossible date-time {y:04d}-{mo}-{d} {h}:{mi}:{s}")
        hs = self.hundredths or 0
        if hs > 99:
            raise DecodeError(f"hundredths {hs} > 99")
        dev = self.deviation or 0
        if not -720 <= dev <= 840:
            raise DecodeError(f"deviation {dev} min outside -720..840")
        return (calendar.timegm((y, mo, d, h, mi, s)) + dev * 60) * 10**9 + hs * 10**7

    @property
    def invalid(self) -> bool:
        """The meter says its clock value is invalid (or its status is)."""
        return self.status is not None and bool(self.status & (CLOCK_INVALID | CLOCK_INVALID_STATUS))

    @property
    def doubtful(self) -> bool:
        return self.status is not None and bool(self.status & (CLOCK_DOUBTFUL | CLOCK_DIFFERENT_BASE))


class Date(NamedTuple):
    year: int | None
    month: int | None
    day: int | None
    weekday: int | None


class Time(NamedTuple):
    hour: int | None
    minute: int | None
    second: int | None
    hundredths: int | None


def _unspec(raw: bytes) -> tuple:
    return tuple(None if b == 0xFF else b for b in raw)


# ---------------------------------------------------------------- lengths

def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    size = (n.bit_length() + 7) // 8
    if size > 4:
        raise ValueError(f"length {n} too large")
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


def decode_length(buf: bytes, pos: int) -> tuple[int, int]:
    """(length, position after it). Raises DecodeError."""
    if pos >= len(buf):
        raise DecodeError("data ends before a length")
    n = buf[pos]
    if n < 0x80:
        return n, pos + 1
    size = n & 0x7F
    if not 1 <= size <= 4 or pos + 1 + size > len(buf):
        raise DecodeError(f"bad length encoding {n:#04x}")
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "big"), pos + 1 + size


# ---------------------------------------------------------------- decoding

def decode(buf: bytes, pos: int = 0) -> tuple[Any, int]:
    """One tagged value at buf[pos:]; returns (value, position after it). Raises DecodeError."""
    try:
        return _dec(buf, pos, 0)
    except (IndexError, struct.error) as exc:
        raise DecodeError(f"data ends inside a value ({exc})") from None
    except RecursionError:
        raise DecodeError("data nested too deeply") from None


def decode_all(buf: bytes) -> Any:
    """Exactly one tagged value filling buf. Raises DecodeError."""
    value, pos = decode(buf, 0)
    if pos != len(buf):
        raise DecodeError(f"{len(buf) - pos} byte(s) after the value")
    return value


def _need(buf: bytes, pos: int, n: int) -> None:
    if pos + n > len(buf):
        raise DecodeError(f"data ends: {n} byte(s) needed at {pos}, {len(buf) - pos} left")


_UNPACK = {tag: (st.size, st.unpack_from) for tag, st in _FIXED.items()}


def _dec(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if pos >= len(buf):
        raise DecodeError("data ends before a value")
    tag = buf[pos]
    pos += 1
    fx = _UNPACK.get(tag)
    if fx is not None:
        size, unpack = fx
        _need(buf, pos, size)
        return unpack(buf, pos)[0], pos + size
    if tag == STRUCTURE or tag == ARRAY:
        if depth >= MAX_DEPTH:
            raise DecodeError(f"nested deeper than {MAX_DEPTH}")
        n, pos = decode_length(buf, pos)
        end = len(buf)
        if n > end - pos:
            raise DecodeError(f"{TAG_NAMES[tag]} of {n} elements in {end - pos} bytes")
        items = [None] * n
        unpacks = _UNPACK
        row = _row_template(buf, pos) if tag == ARRAY and n >= 8 else None
        for i in range(n):
            if row is not None:
                # An array of like structures (a load profile): one mask test and one unpack per row.
                size, mask, skeleton, unpack = row
                if pos + size <= end and int.from_bytes(buf[pos:pos + size], "big") & mask == skeleton:
                    items[i] = unpack(buf, pos)
                    pos += size
                    continue
            # The common elements (numbers, short octet-strings) inline: a profile is thousands of them.
            t = buf[pos] if pos < end else -1
            f = unpacks.get(t)
            if f is not None:
                size, unpack = f
                stop = pos + 1 + size
                if stop > end:
                    raise DecodeError(f"data ends inside a {TAG_NAMES[t]}")
                items[i] = unpack(buf, pos + 1)[0]
                pos = stop
            elif t == OCTET_STRING and pos + 1 < end and buf[pos + 1] < 0x80:
                stop = pos + 2 + buf[pos + 1]
                if stop > end:
                    raise DecodeError("data ends inside an octet-string")
                items[i] = bytes(buf[pos + 2:stop])
                pos = stop
            else:
                items[i], pos = _dec(buf, pos, depth + 1)
        return (tuple(items) if tag == STRUCTURE else items), pos
    if tag == OCTET_STRING or tag == VISIBLE_STRING or tag == UTF8_STRING:
        n, pos = decode_length(buf, pos)
        _need(buf, pos, n)
        raw = buf[pos:pos + n]
        if tag == OCTET_STRING:
            return bytes(raw), pos + n
        if tag == VISIBLE_STRING:
            return bytes(raw).decode("latin-1"), pos + n
        try:
            return bytes(raw).decode("utf-8"), pos + n
        except UnicodeDecodeError:
            raise DecodeError("utf8-string is not UTF-8") from None
    if tag == NULL:
        return None, pos
    if tag == BOOLEAN:
        _need(buf, pos, 1)
        return buf[pos] != 0, pos + 1
    if tag == BIT_STRING:
        bits, pos = decode_length(buf, pos)
        n = (bits + 7) // 8
        _need(buf, pos, n)
        text = "".join(format(b, "08b") for b in buf[pos:pos + n])[:bits]
        return BitString(text), pos + n
    if tag == DATE_TIME:
        _need(buf, pos, 12)
        return DateTime.decode(bytes(buf[pos:pos + 12])), pos + 12
    if tag == DATE:
        _need(buf, pos, 5)
        y = (buf[pos] << 8) | buf[pos + 1]
        return Date(None if y == 0xFFFF else y, *_unspec(buf[pos + 2:pos + 5])), pos + 5
    if tag == TIME:
        _need(buf, pos, 4)
        return Time(*_unspec(buf[pos:pos + 4])), pos + 4
    if tag == COMPACT_ARRAY:
        if depth >= MAX_DEPTH:
            raise DecodeError(f"nested deeper than {MAX_DEPTH}")
        desc, pos = _dec_description(buf, pos, depth + 1)
        if _min_size(desc) == 0:
            raise DecodeError("compact array of elements without content")
        n, pos = decode_length(buf, pos)
        _need(buf, pos, n)
        end = pos + n
        items = []
        while pos < end:
            v, pos = _dec_untagged(buf, pos, desc, end)
            items.append(v)
        return items, end
    raise DecodeError(f"unknown data type tag {tag}")


_ROW_FORMATS = {INT32: "i", UINT32: "I", INT8: "b", INT16: "h", UINT8: "B", UINT16: "H", INT64: "q", UINT64: "Q",
                ENUM: "B", BCD: "B", FLOAT32: "f", FLOAT64: "d"}


def _row_template(buf: bytes, pos: int):
    """(size, mask, skeleton, unpack) of the structure at pos if it holds only numbers and short octet-strings:
    the following rows of the same shape then decode with one struct unpack each (what a profile buffer is)."""
    if pos + 2 > len(buf) or buf[pos] != STRUCTURE or not 0 < buf[pos + 1] < 0x80:
        return None
    fmt, fixed = [">2x"], [(0, buf[pos]), (1, buf[pos + 1])]
    off = 2
    for _ in range(buf[pos + 1]):
        if pos + off >= len(buf):
            return None
        t = buf[pos + off]
        if t in _ROW_FORMATS:
            fmt.append("x" + _ROW_FORMATS[t])
            fixed.append((off, t))
            off += 1 + _FIXED[t].size
        elif t == OCTET_STRING and pos + off + 1 < len(buf) and buf[pos + off + 1] < 0x80:
            n = buf[pos + off + 1]
            fmt.append(f"2x{n}s")
            fixed += [(off, t), (off + 1, n)]
            off += 2 + n
        else:
            return None
    mask = skeleton = 0
    for at, value in fixed:
        shift = 8 * (off - 1 - at)
        mask |= 0xFF << shift
        skeleton |= value << shift
    return off, mask, skeleton, struct.Struct("".join(fmt)).unpack_from


def _dec_description(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth >= MAX_DEPTH:
        raise DecodeError(f"type description nested deeper than {MAX_DEPTH}")
    _need(buf, pos, 1)
    tag = buf[pos]
    pos += 1
    if tag == ARRAY:
        _need(buf, pos, 2)
        n = (buf[pos] << 8) | buf[pos + 1]
        inner, pos = _dec_description(buf, pos + 2, depth + 1)
        return ("array", n, inner), pos
    if tag == STRUCTURE:
        n, pos = decode_length(buf, pos)
        if n > len(buf) - pos:
            raise DecodeError(f"structure description of {n} elements in {len(buf) - pos} bytes")
        parts = []
        for _ in range(n):
            d, pos = _dec_description(buf, pos, depth + 1)
            parts.append(d)
        return ("structure", tuple(parts)), pos
    if tag in _FIXED or tag in (NULL, BOOLEAN, BIT_STRING, OCTET_STRING, VISIBLE_STRING, UTF8_STRING, DATE_TIME,
                                DATE, TIME):
        return tag, pos
    raise DecodeError(f"type description with tag {tag}")


def _min_size(desc) -> int:
    if isinstance(desc, int):
        fx = _FIXED.get(desc)
        return fx.size if fx is not None else {NULL: 0, DATE_TIME: 12, DATE: 5, TIME: 4}.get(desc, 1)
    if desc[0] == "array":
        return desc[1] * _min_size(desc[2])
    return sum(_min_size(d) for d in desc[1])


def _dec_untagged(buf: bytes, pos: int, desc, end: int) -> tuple[Any, int]:
    if isinstance(desc, tuple):
        if desc[0] == "array":
            out = []
            for _ in range(desc[1]):
                v, pos = _dec_untagged(buf, pos, desc[2], end)
                out.append(v)
            return out, pos
        parts = []
        for d in desc[1]:
            v, pos = _dec_untagged(buf, pos, d, end)
            parts.append(v)
        return tuple(parts), pos
    if pos > end:
        raise DecodeError("compact array contents end inside an element")
    # Reuse the tagged decoder on a view with the tag put back: one code path for every simple type.
    value, used = _dec(bytes((desc,)) + bytes(buf[pos:end]), 0, MAX_DEPTH - 1)
    return value, pos + used - 1


# ---------------------------------------------------------------- encoding

def encode(value: Any) -> bytes:
    """One tagged value (see the module docstring for the natural types). Raises ValueError for a value its type
    cannot carry."""
    out = bytearray()
    _enc(value, out)
    return bytes(out)


def _enc(v: Any, out: bytearray) -> None:
    if isinstance(v, Typed):
        _enc_typed(v.tag, v.value, out)
    elif v is None:
        out.append(NULL)
    elif isinstance(v, bool):
        out += bytes((BOOLEAN, 1 if v else 0))
    elif isinstance(v, int):
        tag = UINT32 if 0 <= v < 2**32 else INT32 if -2**31 <= v < 0 else INT64 if -2**63 <= v < 2**63 else UINT64
        _enc_typed(tag, v, out)
    elif isinstance(v, float):
        _enc_typed(FLOAT64, v, out)
    elif isinstance(v, DateTime):
        out += bytes((OCTET_STRING, 12)) + v.encode()
    elif isinstance(v, BitString):
        _enc_typed(BIT_STRING, v, out)
    elif isinstance(v, (bytes, bytearray)):
        out.append(OCTET_STRING)
        out += encode_length(len(v)) + bytes(v)
    elif isinstance(v, str):
        _enc_typed(VISIBLE_STRING, v, out)
    elif isinstance(v, CompactArray):
        _enc_compact(v, out)
    elif isinstance(v, tuple):
        out.append(STRUCTURE)
        out += encode_length(len(v))
        for x in v:
            _enc(x, out)
    elif isinstance(v, list):
        out.append(ARRAY)
        out += encode_length(len(v))
        for x in v:
            _enc(x, out)
    else:
        raise ValueError(f"no A-XDR type for {type(v).__name__}")


def _enc_typed(tag: int, v: Any, out: bytearray, tagged: bool = True) -> None:
    if tagged:
        out.append(tag)
    fx = _FIXED.get(tag)
    if fx is not None:
        rng = _RANGES.get(tag)
        if rng is not None and (isinstance(v, bool) or not isinstance(v, int) or not rng[0] <= v <= rng[1]):
            raise ValueError(f"{TAG_NAMES[tag]} cannot hold {v!r}")
        out += fx.pack(v)
    elif tag in (OCTET_STRING, VISIBLE_STRING, UTF8_STRING):
        if isinstance(v, str):
            raw = v.encode("utf-8" if tag == UTF8_STRING else "latin-1")
        else:
            raw = v.encode() if isinstance(v, DateTime) else bytes(v)
        out += encode_length(len(raw)) + raw
    elif tag == BOOLEAN:
        out.append(1 if v else 0)
    elif tag == NULL:
        pass
    elif tag == BIT_STRING:
        bits = str(v)
        if any(c not in "01" for c in bits):
            raise ValueError(f"bit-string of other than 0/1: {bits!r}")
        padded = bits + "0" * (-len(bits) % 8)
        out += encode_length(len(bits)) + bytes(int(padded[i:i + 8], 2) for i in range(0, len(padded), 8))
    elif tag == DATE_TIME:
        out += v.encode()
    elif tag == DATE:
        y = 0xFFFF if v.year is None else v.year
        out += bytes((y >> 8, y & 0xFF)) + bytes(0xFF if x is None else x for x in v[1:])
    elif tag == TIME:
        out += bytes(0xFF if x is None else x for x in v)
    elif tag in (STRUCTURE, ARRAY):
        out += encode_length(len(v))
        for x in v:
            _enc(x, out)
    else:
        raise ValueError(f"cannot encode tag {tag}")


def _enc_description(desc, out: bytearray) -> None:
    if isinstance(desc, int):
        out.append(desc)
    elif desc[0] == "array":
        out += bytes((ARRAY, desc[1] >> 8, desc[1] & 0xFF))
        _enc_description(desc[2], out)
    else:
        out.append(STRUCTURE)
        out += encode_length(len(desc[1]))
        for d in desc[1]:
            _enc_description(d, out)


def _enc_untagged(desc, v, out: bytearray) -> None:
    if isinstance(desc, int):
        _enc_typed(desc, v, out, tagged=False)
    elif desc[0] == "array":
        for x in v:
            _enc_untagged(desc[2], x, out)
    else:
        for d, x in zip(desc[1], v, strict=True):
            _enc_untagged(d, x, out)


def _enc_compact(ca: CompactArray, out: bytearray) -> None:
    out.append(COMPACT_ARRAY)
    _enc_description(ca.description, out)
    body = bytearray()
    for e in ca.elements:
        _enc_untagged(ca.description, e, body)
    out += encode_length(len(body)) + body
