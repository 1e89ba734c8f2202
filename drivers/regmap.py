"""Register-map devices, sans-IO: a TOML file describes where a device keeps each point; this module plans the
reads, decodes the registers into Samples and encodes set-points. No sockets here, so every rule (orders, scale,
sentinels, ranges) is tested without a device, and the same map serves Modbus TCP and RTU transports.

A map says, per point, address / table / type / word and byte order / scale / offset / unit / sentinels / range;
see docs/register-maps.md. Maps are checked up front with the same validator as the gateway config
(gridedge.core.schema), so a bad map gives every problem at once as `<file>: points[3].type: ...`.

Register values are the 16-bit unsigned ints a Modbus client returns (the wire's big-endian pair already joined).
`byte_order = "little"` means the device put the low byte of each word first on the wire (so we swap the two bytes
back); `word_order = "little"` means the least significant 16-bit word comes first.
"""
from __future__ import annotations

import difflib
import functools
import math
import os
import struct
import tomllib
from decimal import Decimal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridedge.core import schema as s
from gridedge.core.model import BlockLayout, Detail, Sample, SampleBlock, Validity, invalid

__all__ = [
    "MapError", "EncodeError", "PlanError", "PointSpec", "ReadBlock", "RegisterMap", "load_map", "parse_map",
    "plan_reads", "decode", "encode", "shipped_maps", "SCHEMA", "TYPES", "UNITS", "MAX_REGISTERS", "MAPS_DIR",
]

MAX_REGISTERS = 125                      # Modbus read holding/input registers limit per request
MAX_ADDRESS = 0xFFFF
MAPS_DIR = Path(__file__).with_name("maps")

#: Registers per type; a string's size is its `length`.
TYPES: dict[str, int | None] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4, "string": None,
}
_FMT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d"}
_INT_RANGE = {"int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
              "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1)}
ORDERS = ("big", "little")
TABLES = ("holding", "input")
ACCESS = ("r", "rw")
#: SI (and SI-accepted) unit symbols a point may carry; "" = dimensionless (PF, counts, states).
UNITS = ("V", "A", "W", "var", "VA", "Hz", "Wh", "varh", "VAh", "Ah", "%", "s", "°", "°C", "K", "Pa", "W/m2",
         "Ohm")
_FUNCTION_CODES = {"holding": 3, "input": 4}


class MapError(Exception):
    """All problems found in one register map; `.errors` holds one rendered message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class EncodeError(ValueError):
    """A value that cannot be written to a point (read-only, out of range, not representable, ...)."""


class PlanError(ValueError):
    """plan_reads was asked for points the map does not have."""


# ---------------------------------------------------------------- result types

@dataclass(frozen=True, slots=True)
class PointSpec:
    """One point of a map, with the device defaults already applied."""

    name: str
    address: int
    table: str
    type: str
    size: int                              # registers
    word_order: str
    byte_order: str
    scale: float
    offset: float
    unit: str
    access: str
    not_implemented: frozenset[int]        # raw bit patterns (unsigned, width of the type)
    min: float | None
    max: float | None
    description: str = ""
    decimals: int | None = None            # decimals of scale/offset: integer readings are rounded to these

    @property
    def end(self) -> int:
        """First register after the point."""
        return self.address + self.size

    @property
    def writable(self) -> bool:
        return self.access == "rw"


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: `count` registers of `table` from `address`, holding the named points (address order)."""

    table: str
    address: int
    count: int
    points: tuple[str, ...]

    @property
    def function_code(self) -> int:
        """Modbus function: 3 = read holding registers, 4 = read input registers."""
        return _FUNCTION_CODES[self.table]


@dataclass(frozen=True)
class RegisterMap:
    """A parsed, validated map. `origin` is the file (or source label) it came from."""

    manufacturer: str
    model: str
    source: str
    description: str
    max_registers_per_request: int
    max_gap: int
    points: tuple[PointSpec, ...]
    origin: str = ""
    _by_name: dict[str, PointSpec] = field(default_factory=dict, repr=False, compare=False)
    _decoding: dict = field(default_factory=dict, repr=False, compare=False)  # ReadBlock -> BlockDecoder's plan

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in self.points})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.points)

    def point(self, name: str) -> PointSpec:
        """The point called `name`; KeyError if the map has none."""
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


# ---------------------------------------------------------------- schema

def _nonzero(value: float) -> float:
    if value == 0:
        raise s.Invalid("must not be 0 (a zero scale would hide every reading)")
    return value


def _unit(value: Any) -> str:
    if not isinstance(value, str):
        raise s.Invalid(f"must be a string, got {s.describe(value)}")
    if value != "" and value not in UNITS:
        msg = f'must be an SI unit symbol ({", ".join(UNITS)}) or "" for none, got {value!r}'
        guess = _close(value, UNITS)
        if guess is not None:
            msg += f" (did you mean {guess!r}?)"
        raise s.Invalid(msg)
    return value


def _close(word: str, options: Iterable[str]) -> str | None:
    lowered = {o.lower(): o for o in options}
    if word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return match[0] if match else None


_NAME = s.Str(regex=r"[A-Za-z][A-Za-z0-9_.:-]{0,63}",
              regex_hint="be a point name like PhVphA (letters, digits, _ . : -; up to 64)")

POINT_SCHEMA = s.Dict({
    "name": s.Required(_NAME, "canonical point name (docs/points.md), unique in the map"),
    "address": s.Required(s.Int(ge=0, le=MAX_ADDRESS), "0-based register address (not the 3xxxx/4xxxx number)"),
    "table": s.Optional(s.Str(choices=TABLES), doc="register table; default: the map's `table`"),
    "type": s.Required(s.Str(choices=tuple(TYPES)), "register type"),
    "length": s.Optional(s.Int(ge=1, le=MAX_REGISTERS), doc="string length in registers (strings only)"),
    "word_order": s.Optional(s.Str(choices=ORDERS), doc="which 16-bit word comes first; default: the map's"),
    "byte_order": s.Optional(s.Str(choices=ORDERS), doc="which byte of a word comes first; default: the map's"),
    "scale": s.Optional(s.All(s.Float(), s.Custom(_nonzero)), doc="value = raw * scale + offset (default 1)"),
    "offset": s.Optional(s.Float(), doc="added after scaling (default 0)"),
    "unit": s.Optional(s.Custom(_unit), default="", doc="SI unit symbol of the scaled value"),
    "access": s.Optional(s.Str(choices=ACCESS), default="r", doc='"rw" makes the point writable (holding only)'),
    "not_implemented": s.Optional(s.List(s.Int(), max_len=16, unique=True),
                                  doc="raw values meaning 'not implemented', e.g. [0x8000]"),
    "min": s.Optional(s.Float(), doc="lowest plausible scaled value; below -> questionable/out_of_range"),
    "max": s.Optional(s.Float(), doc="highest plausible scaled value; above -> questionable/out_of_range"),
    "description": s.Optional(s.Str(max_len=1024), default="", doc="free text, e.g. the manual's name"),
})

SCHEMA = s.Dict({
    "manufacturer": s.Required(s.Str(min_len=1, max_len=128), "device manufacturer"),
    "model": s.Required(s.Str(min_len=1, max_len=128), "device model"),
    "source": s.Required(s.Str(min_len=1, max_len=2048), "where the map came from (manual title, version)"),
    "description": s.Optional(s.Str(max_len=4096), default="", doc="free text"),
    "max_registers_per_request": s.Optional(s.Int(ge=1, le=MAX_REGISTERS), default=MAX_REGISTERS,
                                            doc="largest read the device accepts"),
    "max_gap": s.Optional(s.Int(ge=0, le=MAX_REGISTERS - 1), default=0,
                          doc="unmapped registers a read may span to join two points"),
    "table": s.Optional(s.Str(choices=TABLES), default="holding", doc="default register table"),
    "word_order": s.Optional(s.Str(choices=ORDERS), default="big", doc="default word order"),
    "byte_order": s.Optional(s.Str(choices=ORDERS), default="big", doc="default byte order"),
    "points": s.Required(s.List(POINT_SCHEMA, min_len=1, unique_key="name"), "the points"),
})

_NOT_FOR_STRING = ("scale", "offset", "min", "max", "not_implemented")


def _size(p: Mapping) -> int | None:
    if p.get("type") == "string":
        return p.get("length")
    return TYPES.get(p.get("type", ""))  # type: ignore[arg-type]


def _cross_checks(raw: Any, clean: Any) -> list[s.Issue]:
    """Checks that span keys, run on the partial result so they add to (not hide behind) type errors."""
    issues: list[s.Issue] = []
    if not isinstance(clean, dict) or not isinstance(raw, Mapping):
        return issues
    points = clean.get("points")
    raw_points = raw.get("points")
    if not isinstance(points, list) or not isinstance(raw_points, (list, tuple)):
        return issues
    limit = clean.get("max_registers_per_request", MAX_REGISTERS)
    default_table = clean.get("table", "holding")
    spans: list[tuple[str, int, int, int, str]] = []  # table, start, end, index, name
    for i, p in enumerate(points):
        rp = raw_points[i]
        if not isinstance(p, dict) or not isinstance(rp, Mapping):
            continue
        where = ("points", i)
        kind = p.get("type")
        if kind == "string":
            if "length" not in rp:
                issues.append(s.Issue(where + ("length",), "required key missing (type string needs a length in "
                                                            "registers)"))
            for key in _NOT_FOR_STRING:
                if key in rp:
                    issues.append(s.Issue(where + (key,), "not allowed for type string"))
        elif kind is not None and "length" in rp:
            issues.append(s.Issue(where + ("length",), f"only allowed for type string, not {kind}"))
        size = _size(p)
        if kind in _INT_RANGE or kind in ("float32", "float64"):
            bits = 16 * TYPES[kind]  # type: ignore[operator]
            lo, hi = -(1 << (bits - 1)), (1 << bits) - 1
            for j, v in enumerate(p.get("not_implemented", [])):
                if v is not s.INVALID and not lo <= v <= hi:
                    issues.append(s.Issue(where + ("not_implemented", j),
                                          f"must fit in {bits} bits ({lo}..{hi}) for type {kind}, got {v}"))
        if "min" in p and "max" in p and p["min"] > p["max"]:
            issues.append(s.Issue(where + ("min",), f"must be <= max ({p['max']!r}), got {p['min']!r}"))
        table = p.get("table", default_table)
        if p.get("access") == "rw" and table == "input":
            issues.append(s.Issue(where + ("access",), 'rw needs table = "holding" (input registers are read-only)'))
        if size is None or "address" not in p:
            continue
        if size > limit:
            key = "length" if kind == "string" else "type"
            issues.append(s.Issue(where + (key,), f"needs {size} registers, more than max_registers_per_request "
                                                  f"({limit})"))
        if p["address"] + size - 1 > MAX_ADDRESS:
            issues.append(s.Issue(where + ("address",), f"runs past the last register {MAX_ADDRESS}: {size} "
                                                        f"registers from {p['address']}"))
            continue
        if "name" in p:
            spans.append((table, p["address"], p["address"] + size, i, p["name"]))
    spans.sort(key=lambda sp: (sp[0], sp[1], sp[3]))  # by table, start, then file order: the later one is reported
    last: tuple[str, int, int, int, str] | None = None
    for span in spans:
        if last is not None and last[0] == span[0] and span[1] < last[2]:
            issues.append(s.Issue(("points", span[3], "address"),
                                  f"registers {span[1]}..{span[2] - 1} overlap points[{last[3]}] {last[4]!r} "
                                  f"(registers {last[1]}..{last[2] - 1})"))
        if last is None or last[0] != span[0] or span[2] > last[2]:
            last = span
    issues.sort(key=lambda issue: _path_key(issue.path))
    return issues


def _path_key(path: tuple) -> tuple:
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in path)


def _pattern(value: int, bits: int) -> int:
    return value & ((1 << bits) - 1)


def _decimals(*numbers: float) -> int | None:
    """Decimal places of the shortest repr of scale and offset (0.1 -> 1, 0.001 -> 3), so 2301 * 0.1 reads as
    230.1 and not 230.10000000000002; None when a number has no short decimal form (e.g. 1/3)."""
    places = 0
    for x in numbers:
        exponent = Decimal(repr(x)).as_tuple().exponent
        if not isinstance(exponent, int):
            return None
        places = max(places, -exponent)
    return places if places <= 12 else None


def _build(c: dict, origin: str) -> RegisterMap:
    pts = []
    for p in c["points"]:
        kind = p["type"]
        size = p["length"] if kind == "string" else TYPES[kind]
        bits = 16 * size  # type: ignore[operator]
        pts.append(PointSpec(
            name=p["name"], address=p["address"], table=p.get("table", c["table"]), type=kind, size=size,
            word_order=p.get("word_order", c["word_order"]), byte_order=p.get("byte_order", c["byte_order"]),
            scale=p.get("scale", 1.0), offset=p.get("offset", 0.0), unit=p["unit"], access=p["access"],
            not_implemented=frozenset(_pattern(v, bits) for v in p.get("not_implemented", ())),
            min=p.get("min"), max=p.get("max"), description=p["description"],
            decimals=_decimals(p.get("scale", 1.0), p.get("offset", 0.0)),
        ))
    return RegisterMap(
        manufacturer=c["manufacturer"], model=c["model"], source=c["source"], description=c["description"],
        max_registers_per_request=c["max_registers_per_request"], max_gap=c["max_gap"], points=tuple(pts),
        origin=origin,
    )


# ---------------------------------------------------------------- loading

def parse_map(data: Any, source: str = "<map>") -> RegisterMap:
    """Check an already-parsed map (a dict as from tomllib). Raises MapError (never anything else) for bad input."""
    clean, issues = s.validate(SCHEMA, data, partial=True)
    issues = issues + _cross_checks(data, clean)
    if issues:
        raise MapError(s.format_issues(issues, source))
    return _build(clean, source)


def load_map(path: str | os.PathLike[str]) -> RegisterMap:
    """Read and check a TOML register map. Raises MapError naming the file, key path and fault.

    The same file with the same bytes gives the same (immutable) RegisterMap: a hundred meters of one model share
    one map in memory instead of a hundred copies of its points."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except (OSError, ValueError) as e:
        raise MapError([f"{source}: cannot read: {_reason(e)}"]) from None
    return _parse_file(source, raw)


@functools.lru_cache(maxsize=64)
def _parse_file(source: str, raw: bytes) -> RegisterMap:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MapError([f"{source}: invalid TOML: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"]) \
            from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MapError([f"{source}: invalid TOML: {e}"]) from None
    except RecursionError:
        raise MapError([f"{source}: invalid TOML: nested too deeply"]) from None
    return parse_map(data, source)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def shipped_maps() -> dict[str, Path]:
    """The maps shipped in drivers/maps/, by file stem (e.g. "eastron_sdm630")."""
    return {p.stem: p for p in sorted(MAPS_DIR.glob("*.toml"))}


# ---------------------------------------------------------------- planning

def plan_reads(rmap: RegisterMap, point_names: Iterable[str] | None = None) -> list[ReadBlock]:
    """Group points into as few reads as the device allows: per table, in address order, a read grows while it
    stays within max_registers_per_request and skips at most max_gap unmapped registers. Every point lands in
    exactly one block. Greedy is optimal here: extending the current read as far as allowed never costs a read."""
    if point_names is None:
        chosen = list(rmap.points)
    else:
        names = list(dict.fromkeys(point_names))
        unknown = [n for n in names if n not in rmap]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            raise PlanError(f"{rmap.origin or rmap.model}: no such point(s) in the map: {listed}")
        chosen = [rmap.point(n) for n in names]
    blocks: list[ReadBlock] = []
    limit, gap = rmap.max_registers_per_request, rmap.max_gap
    for table in TABLES:
        start = end = -1
        names_in: list[str] = []
        for p in sorted((p for p in chosen if p.table == table), key=lambda p: p.address):
            if names_in and p.address - end <= gap and max(end, p.end) - start <= limit:
                end = max(end, p.end)
                names_in.append(p.name)
                continue
            if names_in:
                blocks.append(ReadBlock(table, start, end - start, tuple(names_in)))
            start, end, names_in = p.address, p.end, [p.name]
        if names_in:
            blocks.append(ReadBlock(table, start, end - start, tuple(names_in)))
    return blocks


# ---------------------------------------------------------------- decoding

def _to_bytes(regs: Sequence[int], word_order: str, byte_order: str) -> bytes:
    """Registers as sent -> the value's bytes, most significant first."""
    words = [bytes((r >> 8, r & 0xFF)) if byte_order == "big" else bytes((r & 0xFF, r >> 8)) for r in regs]
    if word_order == "little":
        words.reverse()
    return b"".join(words)


def _to_registers(data: bytes, word_order: str, byte_order: str) -> list[int]:
    """Inverse of _to_bytes."""
    words = [data[i:i + 2] for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "big":
        return [(w[0] << 8) | w[1] for w in words]
    return [(w[1] << 8) | w[0] for w in words]


def _is_register(r: object) -> bool:
    return isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= 0xFFFF


def decode(rmap: RegisterMap, block: ReadBlock, registers: Sequence[int], device_id: str,
           ts_ns: int) -> list[Sample]:
    """One Sample per point of `block`, in block order. Never raises on bad registers: a wrong-length answer or a
    value outside 0..65535 gives INVALID/malformed, a sentinel or NaN INVALID/not_implemented, an infinite float
    INVALID/malformed, a value outside min..max QUESTIONABLE/out_of_range (value kept)."""
    try:
        regs: list | None = list(registers)
    except TypeError:
        regs = None
    whole = regs is not None and len(regs) == block.count
    out: list[Sample] = []
    for name in block.points:
        pid = f"{device_id}/{name}"
        p = rmap._by_name.get(name)
        if p is None or p.table != block.table or p.address < block.address or p.end > block.address + block.count:
            out.append(invalid(pid, ts_ns, Detail.BAD_REFERENCE, p.unit if p is not None else ""))
            continue
        if not whole:
            out.append(invalid(pid, ts_ns, Detail.MALFORMED, p.unit))
            continue
        chunk = regs[p.address - block.address:p.end - block.address]  # type: ignore[index]
        if not all(_is_register(r) for r in chunk):
            out.append(invalid(pid, ts_ns, Detail.MALFORMED, p.unit))
            continue
        out.append(_decode_point(p, chunk, pid, ts_ns))
    return out


_F32 = struct.Struct(">f")


def _round_trips(x_bits: bytes, y: float) -> bool:
    try:
        return _F32.pack(y) == x_bits
    except OverflowError:  # rounding the largest float32 up leaves its range
        return False


def _fits_float32(x: float) -> bool:
    """Rounds to a finite float32 (3.4028235e38, how FLT_MAX reads back, does; 3.41e38 does not)."""
    try:
        _F32.pack(x)
        return True
    except OverflowError:
        return False


def _shortest32(x: float) -> float:
    """A float32 as the shortest decimal that maps back to it (230.1, not 230.10000610351562).

    k significant digits round-trip for every k from the shortest up, so the search starts at 6 (where most
    readings are) and walks down or up, instead of formatting all nine lengths."""
    bits = _F32.pack(x)
    k = 6
    if _round_trips(bits, float(f"{x:.6g}")):
        while k > 1 and _round_trips(bits, float(f"{x:.{k - 1}g}")):
            k -= 1
    else:
        while k < 9 and not _round_trips(bits, float(f"{x:.{k}g}")):
            k += 1
    return float(f"{x:.{k}g}")


def _decode_point(p: PointSpec, chunk: list[int], pid: str, ts_ns: int) -> Sample:
    data = _to_bytes(chunk, "big", p.byte_order) if p.type == "string" else _to_bytes(chunk, p.word_order, p.byte_order)
    value, quality = _value(p, data)
    if quality is None:
        return Sample(pid, ts_ns, value, p.unit)
    return Sample(pid, ts_ns, value, p.unit, quality[0], quality[1])


_NOT_IMPL = (Validity.INVALID, Detail.NOT_IMPLEMENTED)
_MALFORMED = (Validity.INVALID, Detail.MALFORMED)
_OUT_OF_RANGE = (Validity.QUESTIONABLE, Detail.OUT_OF_RANGE)
_STRUCTS = {t: struct.Struct(f) for t, f in _FMT.items()}


def _value(p: PointSpec, data: bytes) -> tuple[object, tuple[Validity, Detail] | None]:
    """A point's value from its bytes (most significant first; strings in register order): (value, None) when good,
    else (value or None, (validity, detail))."""
    if p.type == "string":
        try:
            return data.split(b"\x00", 1)[0].decode("utf-8").rstrip(" "), None
        except UnicodeDecodeError:
            return None, _MALFORMED
    if p.not_implemented and int.from_bytes(data, "big") in p.not_implemented:
        return None, _NOT_IMPL
    raw = _STRUCTS[p.type].unpack(data)[0]
    if isinstance(raw, float):
        if math.isnan(raw):
            return None, _NOT_IMPL
        if math.isinf(raw):
            return None, _MALFORMED
        if p.type == "float32":
            raw = _shortest32(raw)
    value: int | float
    if isinstance(raw, int) and p.scale == 1.0 and p.offset == 0.0:
        value = raw
    else:
        value = raw * p.scale if p.scale != 1.0 else raw
        value = value + p.offset if p.offset != 0.0 else value  # keeps -0.0 and exact floats when unscaled
        if not math.isfinite(value):
            return None, _MALFORMED
        if isinstance(raw, int):
            if p.decimals is not None:
                value = round(value, p.decimals)
        elif p.type == "float32":
            value = float(f"{value:.9g}")  # float32 carries < 9 significant digits; drop the product's noise
    if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
        return value, _OUT_OF_RANGE
    return value, None


# ---------------------------------------------------------------- block decoding (the fast path)

def _decoding_plan(rmap: RegisterMap, block: ReadBlock) -> tuple:
    """(points, per point (spec, first byte, end byte, little word order, little byte order) or None, units,
    any little-endian bytes, the struct packer of the block's registers)."""
    points = tuple(rmap._by_name.get(n) for n in block.points)
    plan = []
    for p in points:
        if p is None or p.table != block.table or p.address < block.address or p.end > block.address + block.count:
            plan.append(None)
            continue
        a = 2 * (p.address - block.address)
        order = "big" if p.type == "string" else p.word_order
        plan.append((p, a, a + 2 * p.size, order == "little", p.byte_order == "little"))
    units = tuple(p.unit if p else "" for p in points)
    return (points, tuple(plan), units, any(x is not None and x[4] for x in plan),
            struct.Struct(f">{block.count}H").pack)


class BlockDecoder:
    """Decodes one ReadBlock's registers into a SampleBlock: the registers are packed to bytes once and each point
    sliced out of them, instead of one Sample and one bytes object per register. Same values and quality as
    decode() (tests/test_regmap.py checks the two against each other); build it once per block and device."""

    def __init__(self, rmap: RegisterMap, block: ReadBlock, device_id: str) -> None:
        self.block = block
        self.count = block.count
        shared = rmap._decoding.get(block)
        if shared is None:     # the plan depends on the map and the block only: devices of one model share it
            shared = rmap._decoding[block] = _decoding_plan(rmap, block)
        self.points, self._plan, units, self._any_little_bytes, self._pack = shared
        self.layout = BlockLayout(device_id, block.points, units)

    def decode(self, registers, ts_ns: int) -> SampleBlock:
        try:
            data = self._pack(*registers)
        except (struct.error, TypeError):   # wrong length, a value outside 0..65535, not a list of ints
            return self._slow(registers, ts_ns)
        swapped = _swap_bytes(data) if self._any_little_bytes else data
        values: list = []
        quality: list | None = None
        for i, step in enumerate(self._plan):
            if step is None:
                v, q = None, (Validity.INVALID, Detail.BAD_REFERENCE)
            else:
                p, a, b, words_little, bytes_little = step
                chunk = (swapped if bytes_little else data)[a:b]
                if words_little and b - a > 2:
                    chunk = b"".join(chunk[j:j + 2] for j in range(len(chunk) - 2, -1, -2))
                v, q = _value(p, chunk)
            values.append(v)
            if q is not None:
                if quality is None:
                    quality = [None] * len(self._plan)
                quality[i] = q
        return SampleBlock(self.layout, ts_ns, values, quality)

    def _slow(self, registers, ts_ns: int) -> SampleBlock:
        samples = decode(self._rmap_view(), self.block, registers, self.layout.device, ts_ns)
        values = [s.value for s in samples]
        quality = [None if s.validity is Validity.GOOD else (s.validity, s.detail) for s in samples]
        return SampleBlock(self.layout, ts_ns, values, quality if any(quality) else None)

    def _rmap_view(self):
        return _PointsView(self.points, self.block)


class _PointsView:
    """What decode() needs of a RegisterMap (the block's points by name), so the slow path shares its code."""

    def __init__(self, points, block: ReadBlock) -> None:
        self._by_name = {n: p for n, p in zip(block.points, points) if p is not None}


def _swap_bytes(data: bytes) -> bytes:
    b = bytearray(data)
    b[0::2], b[1::2] = data[1::2], data[0::2]
    return bytes(b)


# ---------------------------------------------------------------- encoding

def encode(rmap: RegisterMap, name: str, value: Any) -> tuple[int, list[int]]:
    """(address, registers) to write `value` to point `name`: the scale and offset applied in reverse, integers
    rounded to the device's resolution. Raises EncodeError for read-only or unknown points and for values that
    are outside the point's min..max, outside the type's range, not finite, or equal to a not-implemented value."""
    p = rmap._by_name.get(name) if isinstance(name, str) else None
    if p is None:
        raise EncodeError(f"no point {name!r} in the map")
    if not p.writable:
        raise EncodeError(f"{p.name}: read-only (access = \"r\")")
    if p.type == "string":
        if not isinstance(value, str):
            raise EncodeError(f"{p.name}: must be a string, got {s.describe(value)}")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise EncodeError(f"{p.name}: not encodable as UTF-8") from None
        if len(data) > 2 * p.size:
            raise EncodeError(f"{p.name}: {len(data)} bytes do not fit in {p.size} registers ({2 * p.size} bytes)")
        return p.address, _to_registers(data.ljust(2 * p.size, b"\x00"), "big", p.byte_order)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodeError(f"{p.name}: must be a number, got {s.describe(value)}")
    try:
        if isinstance(value, float) and not math.isfinite(value):
            raise EncodeError(f"{p.name}: must be a finite number, got {_show(value)}")
        if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
            raise EncodeError(f"{p.name}: {_show(value)} is outside the point's range {_range(p)}")
        if p.scale == 1.0 and p.offset == 0.0:
            raw: int | float = value
        else:
            raw = (value - p.offset) / p.scale
        if p.type in _INT_RANGE:
            lo, hi = _INT_RANGE[p.type]
            if isinstance(raw, float):
                if not math.isfinite(raw):
                    raise OverflowError
                raw = round(raw)
            if not lo <= raw <= hi:
                raise EncodeError(f"{p.name}: {_show(value)} gives raw {_show(raw)}, outside {p.type} ({lo}..{hi})")
        else:
            raw = float(raw)
            if not math.isfinite(raw) or (p.type == "float32" and not _fits_float32(raw)):
                raise EncodeError(f"{p.name}: {_show(value)} gives raw {_show(raw)}, outside {p.type} range")
        data = struct.pack(_FMT[p.type], raw)
    except (OverflowError, struct.error):
        raise EncodeError(f"{p.name}: {_show(value)} is outside the range of {p.type}") from None
    if int.from_bytes(data, "big") in p.not_implemented:
        raise EncodeError(f"{p.name}: {_show(value)} encodes to a not-implemented value (0x{data.hex()})")
    return p.address, _to_registers(data, p.word_order, p.byte_order)


def _show(x: object) -> str:
    """repr, shortened for huge numbers so a message stays readable."""
    text = repr(x)
    return text if len(text) <= 40 else text[:20] + "..." + text[-8:]


def _range(p: PointSpec) -> str:
    lo = "" if p.min is None else f"{p.min!r}"
    hi = "" if p.max is None else f"{p.max!r}"
    return f"{lo}..{hi}"
