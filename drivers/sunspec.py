"""Sans-IO SunSpec codec: discovery steps, block decoding, value encoding, canonical point names.

No sockets here: the transport (drivers/sunspec_device.py, over TCP, RTU or RTU-over-TCP) feeds register lists in
and gets values out, so every rule (sentinels, scale factors, range checks) is tested without a device.

Register values are unsigned 16-bit ints, big-endian word order for 32/64-bit types (as SunSpec requires).
"""
from __future__ import annotations

import math
import struct
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass

from .sunspec_models import ModelDefError, ModelLayout, PointDef, instance_layout, model_layout

SUNS_MARKER = (0x5375, 0x6E53)          # "SunS"
END_MODEL_ID = 0xFFFF
BASE_ADDRESSES = (40000, 0, 50000)      # where the marker may sit, in the order SunSpec recommends trying
MAX_READ = 125                          # Modbus read holding registers limit
MAX_WRITE = 123                         # Modbus write multiple registers limit
SF_RANGE = (-10, 10)                    # SunSpec scale factors are powers of ten in this range
MAX_MODELS = 256                        # guard against a device whose chain never ends


class DecodeError(ValueError):
    """Registers that cannot be decoded (wrong length, values outside 0..65535, bad layout)."""


class EncodeError(ValueError):
    """A value that cannot be written to a point (out of range for the type, not a number, ...)."""


class DiscoveryError(Exception):
    """No SunSpec map found, or the model chain is broken."""


class _NotImplemented:
    """Marker for a point holding SunSpec's "not implemented" value. Never a number."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_IMPLEMENTED"

    def __bool__(self) -> bool:
        return False


NOT_IMPLEMENTED = _NotImplemented()


@dataclass(frozen=True, slots=True)
class BadValue:
    """A point that is implemented but cannot be given a value (e.g. its scale factor is missing or absurd)."""

    reason: str


# --------------------------------------------------------------------------------------------- raw types

_INT_FORMATS = {
    "int16": (">h", -0x8000), "uint16": (">H", 0xFFFF), "count": (">H", 0xFFFF), "acc16": (">H", 0),
    "enum16": (">H", 0xFFFF), "bitfield16": (">H", 0xFFFF), "sunssf": (">h", -0x8000), "pad": (">H", None),
    "int32": (">i", -0x80000000), "uint32": (">I", 0xFFFFFFFF), "acc32": (">I", 0), "enum32": (">I", 0xFFFFFFFF),
    "bitfield32": (">I", 0xFFFFFFFF), "ipaddr": (">I", 0),
    "int64": (">q", -0x8000000000000000), "uint64": (">Q", 0xFFFFFFFFFFFFFFFF), "acc64": (">Q", 0),
}
_FLOAT_FORMATS = {"float32": ">f", "float64": ">d"}
_INT_LIMITS = {
    ">h": (-0x8000, 0x7FFF), ">H": (0, 0xFFFF), ">i": (-0x80000000, 0x7FFFFFFF), ">I": (0, 0xFFFFFFFF),
    ">q": (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF), ">Q": (0, 0xFFFFFFFFFFFFFFFF),
}


def regs_to_bytes(regs: Sequence[int]) -> bytes:
    try:
        return struct.pack(f">{len(regs)}H", *regs)
    except (struct.error, TypeError) as exc:
        raise DecodeError(f"registers must be ints in 0..65535: {exc}") from None


def bytes_to_regs(data: bytes) -> list[int]:
    if len(data) % 2:
        data += b"\0"
    return list(struct.unpack(f">{len(data) // 2}H", data))


def decode_raw(ptype: str, regs: Sequence[int]):
    """One point's raw (unscaled) value, or NOT_IMPLEMENTED for the type's sentinel."""
    data = regs_to_bytes(regs)
    if ptype in _INT_FORMATS:
        fmt, sentinel = _INT_FORMATS[ptype]
        need = struct.calcsize(fmt)
        if len(data) < need:
            raise DecodeError(f"{ptype} needs {need // 2} registers, got {len(regs)}")
        (v,) = struct.unpack(fmt, data[:need])
        return NOT_IMPLEMENTED if v == sentinel else v
    if ptype in _FLOAT_FORMATS:
        fmt = _FLOAT_FORMATS[ptype]
        need = struct.calcsize(fmt)
        if len(data) < need:
            raise DecodeError(f"{ptype} needs {need // 2} registers, got {len(regs)}")
        (v,) = struct.unpack(fmt, data[:need])
        return NOT_IMPLEMENTED if math.isnan(v) else v
    if ptype == "string":
        if not data or data[0] == 0:
            return NOT_IMPLEMENTED
        return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    if ptype == "eui48":
        if len(data) < 8:
            raise DecodeError(f"eui48 needs 4 registers, got {len(regs)}")
        mac = data[2:8]
        if mac in (b"\0" * 6, b"\xff" * 6):
            return NOT_IMPLEMENTED
        return ":".join(f"{b:02X}" for b in mac)
    if ptype == "ipv6addr":
        if len(data) < 16:
            raise DecodeError(f"ipv6addr needs 8 registers, got {len(regs)}")
        if data[:16] == b"\0" * 16:
            return NOT_IMPLEMENTED
        return ":".join(data[i:i + 2].hex().upper() for i in range(0, 16, 2))
    raise DecodeError(f"unknown SunSpec type {ptype!r}")


def encode_raw(ptype: str, value, size: int | None = None) -> list[int]:
    """Registers for a raw (already scaled) value; None gives the type's "not implemented" value."""
    if ptype in _INT_FORMATS:
        fmt, sentinel = _INT_FORMATS[ptype]
        lo, hi = _INT_LIMITS[fmt]
        if value is None or value is NOT_IMPLEMENTED:
            return bytes_to_regs(struct.pack(fmt, 0 if sentinel is None else sentinel))
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise EncodeError(f"{ptype} needs an integer, got {value!r}")
        # The sentinel is reserved, except where it is 0 (acc*, ipaddr): 0 is also a legal count.
        reserved = sentinel not in (0, None)
        if not lo <= value <= hi or (reserved and value == sentinel):
            raise EncodeError(f"{value} is out of range for {ptype} ({lo}..{hi}"
                              f"{f', {sentinel} reserved for not implemented' if reserved else ''})")
        return bytes_to_regs(struct.pack(fmt, value))
    if ptype in _FLOAT_FORMATS:
        if value is None or value is NOT_IMPLEMENTED:
            return bytes_to_regs(struct.pack(_FLOAT_FORMATS[ptype], math.nan))
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise EncodeError(f"{ptype} needs a number, got {value!r}") from None
        if not math.isfinite(f):
            raise EncodeError(f"{ptype} needs a finite number, got {value!r}")
        try:
            return bytes_to_regs(struct.pack(_FLOAT_FORMATS[ptype], f))
        except OverflowError:
            raise EncodeError(f"{value!r} is out of range for {ptype}") from None
    if ptype == "string":
        if size is None:
            raise EncodeError("string needs a size in registers")
        if value is None or value is NOT_IMPLEMENTED:
            return [0] * size
        if not isinstance(value, str):
            raise EncodeError(f"string needs a str, got {value!r}")
        data = value.encode("utf-8")
        if len(data) > size * 2:
            raise EncodeError(f"string {value!r} is longer than {size * 2} bytes")
        if b"\0" in data:
            raise EncodeError("string must not contain NUL")
        return bytes_to_regs(data.ljust(size * 2, b"\0"))
    raise EncodeError(f"cannot encode SunSpec type {ptype!r}")


# --------------------------------------------------------------------------------------------- blocks

def _layout(model: int | ModelLayout) -> ModelLayout:
    if isinstance(model, ModelLayout):
        return model
    try:
        return model_layout(model)
    except ModelDefError as exc:
        raise DecodeError(str(exc)) from None


def block_layout(model: int | ModelLayout, regs: Sequence[int], first_offset: int = 2,
                 length: int | None = None) -> ModelLayout:
    """The layout of one device's block: for a model with repeating groups, the groups expanded by the count points
    read from `regs` (a count that is not implemented or not in the block counts 0) and, for length-counted legacy
    groups, by `length` (the model's L; default: the block runs to the end of the model).

    A ModelLayout passed in is returned as is (the caller knows the instance)."""
    if isinstance(model, ModelLayout):
        return model
    fixed = _layout(model)
    if not fixed.repeating_groups:
        return fixed
    _check_regs(regs)
    if length is None:
        length = max(0, first_offset + len(regs) - 2)
    counts: dict[str, int] = {}
    for name in fixed.count_points:
        pd = fixed.points.get(name)
        if pd is None or pd.offset < first_offset or pd.offset + pd.size > first_offset + len(regs):
            continue
        v = decode_raw(pd.type, regs[pd.offset - first_offset:pd.offset - first_offset + pd.size])
        if isinstance(v, int):
            counts[name] = v
    try:
        return instance_layout(fixed.model_id, counts, min(length, 0xFFFF))
    except ModelDefError as exc:
        raise DecodeError(str(exc)) from None


def _check_regs(regs: Sequence[int]) -> None:
    if isinstance(regs, (str, bytes)) or not isinstance(regs, Sequence):
        raise DecodeError(f"registers must be a sequence of ints, got {type(regs).__name__}")
    for r in regs:
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 0xFFFF:
            raise DecodeError(f"register value {r!r} is not an int in 0..65535")


def _sf_value(pd: PointDef, raw_points: Mapping[str, object]):
    """The scale factor exponent of a point: int, None (no sf), or BadValue."""
    if pd.sf is None:
        return None
    if isinstance(pd.sf, int):
        sf = pd.sf
    else:
        if pd.sf not in raw_points:
            return BadValue(f"scale factor {pd.sf} not in the block")
        sf = raw_points[pd.sf]
        if sf is NOT_IMPLEMENTED:
            return BadValue(f"scale factor {pd.sf} not implemented")
    if not SF_RANGE[0] <= sf <= SF_RANGE[1]:
        return BadValue(f"scale factor {pd.sf}={sf} outside {SF_RANGE[0]}..{SF_RANGE[1]}")
    return sf


def apply_sf(raw: int | float, sf: int | None) -> int | float:
    """raw * 10**sf; exact for sf >= 0, rounded to the sf's decimals otherwise."""
    if not sf:
        return raw
    if sf > 0:
        return raw * 10 ** sf
    return round(raw / 10 ** (-sf), -sf)


def decode_model(model: int | ModelLayout, regs: Sequence[int], first_offset: int = 2,
                 names: Sequence[str] | None = None, length: int | None = None) -> dict[str, object]:
    """Decode a model block into {point name: value}, repeating groups included ("Crv[1].Pt[2].V").

    `regs[0]` is the register at `first_offset` in the model (2 = first data register, right after ID and L;
    0 = the ID register). `length` is the model's L (default: the block runs to the end of the model); with the
    count points in the block it sizes the repeating groups (see block_layout). Values are scaled by their *_SF
    point in the same block; "not implemented" points give NOT_IMPLEMENTED, points whose value cannot be
    computed give BadValue. Points not entirely inside the block are left out. Raises DecodeError only for
    registers that are not 16-bit values or an unknown model.
    """
    _check_regs(regs)
    if isinstance(first_offset, bool) or not isinstance(first_offset, int) or first_offset < 0:
        raise DecodeError(f"first_offset must be an int >= 0, got {first_offset!r}")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
        raise DecodeError(f"length must be an int >= 0, got {length!r}")
    layout = block_layout(model, regs, first_offset, length)
    end = first_offset + len(regs)
    raw: dict[str, object] = {}
    for pd in layout.points.values():
        if pd.offset >= first_offset and pd.offset + pd.size <= end:
            i = pd.offset - first_offset
            raw[pd.name] = decode_raw(pd.type, regs[i:i + pd.size])
    wanted = raw.keys() if names is None else [n for n in names if n in raw]
    out: dict[str, object] = {}
    for name in wanted:
        v = raw[name]
        pd = layout.points[name]
        if v is NOT_IMPLEMENTED or pd.type == "sunssf" or pd.sf is None or isinstance(v, str):
            out[name] = v
            continue
        sf = _sf_value(pd, raw)
        out[name] = sf if isinstance(sf, BadValue) else apply_sf(v, sf)
    return out


def sf_values(model: int | ModelLayout, regs: Sequence[int], first_offset: int = 2,
              length: int | None = None) -> dict[str, int | None]:
    """The scale factors present in a block ({sf point name: exponent or None if not implemented})."""
    layout = block_layout(model, regs, first_offset, length)
    sfs = [n for n, p in layout.points.items() if p.type == "sunssf"]
    dec = decode_model(layout, regs, first_offset, sfs)
    return {n: (None if v is NOT_IMPLEMENTED else v) for n, v in dec.items()}


def encode_point(pd: PointDef, value, sf: int | None = None) -> list[int]:
    """Registers for writing `value` (engineering units) to a point, applying its scale factor in reverse.

    `sf` is the exponent read from the device (needed when the point has a named sf); raises EncodeError if the
    value does not fit the point's type (e.g. 150 % into a uint16 with sf -2 -> 15000 fits; -5 does not).
    """
    if pd.type == "string":
        return encode_raw("string", value, pd.size)
    if value is None or value is NOT_IMPLEMENTED:
        return encode_raw(pd.type, None, pd.size)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodeError(f"{pd.name} needs a number, got {value!r}")
    if not math.isfinite(value):
        raise EncodeError(f"{pd.name} needs a finite number, got {value!r}")
    exp = pd.sf if isinstance(pd.sf, int) else (sf if pd.sf is not None else None)
    if pd.sf is not None and exp is None:
        raise EncodeError(f"{pd.name}: scale factor {pd.sf} unknown (not implemented by the device?)")
    if exp is not None and not SF_RANGE[0] <= exp <= SF_RANGE[1]:
        raise EncodeError(f"{pd.name}: scale factor {exp} outside {SF_RANGE[0]}..{SF_RANGE[1]}")
    if pd.type in _FLOAT_FORMATS:
        raw = value / 10 ** exp if exp else value
        return encode_raw(pd.type, raw, pd.size)
    # Values between two steps of the device's resolution are rounded to the nearest step.
    scaled = value * 10 ** (-exp) if exp else value
    if not math.isfinite(scaled):  # a finite value times 10**-sf can still overflow a float
        raise EncodeError(f"{pd.name}={value!r} does not fit the register at scale factor {exp}")
    raw_int = int(round(scaled))
    try:
        return encode_raw(pd.type, raw_int, pd.size)
    except EncodeError as exc:
        raise EncodeError(f"{pd.name}={value!r}: {exc}") from None


# --------------------------------------------------------------------------------------------- discovery

@dataclass(frozen=True, slots=True)
class ModelRef:
    model_id: int
    addr: int       # address of the model's first data register (right after ID and L)
    length: int     # L: data registers


@dataclass(frozen=True, slots=True)
class DiscoveryResult:
    base: int
    models: tuple[ModelRef, ...]

    def by_id(self) -> dict[int, ModelRef]:
        """First instance of each model id (a device may repeat a model; later copies are ignored)."""
        out: dict[int, ModelRef] = {}
        for m in self.models:
            out.setdefault(m.model_id, m)
        return out


DiscoveryStep = Generator[tuple[int, int], "Sequence[int] | None", DiscoveryResult]


def discover(bases: Sequence[int] = BASE_ADDRESSES, max_models: int = MAX_MODELS) -> DiscoveryStep:
    """Discovery as a generator of reads: yields (addr, count), is sent the registers read (or None if the read
    failed with a Modbus exception or a short answer), returns a DiscoveryResult.

    A chain that ends in a failed header read after at least one model is accepted (some devices omit the
    0xFFFF end marker); an empty chain, or one that runs past address 65535 or `max_models`, raises DiscoveryError.
    """
    for base in bases:
        regs = yield (base, 2)
        if regs is None or len(regs) < 2 or (regs[0], regs[1]) != SUNS_MARKER:
            continue
        models: list[ModelRef] = []
        addr = base + 2
        while True:
            if len(models) >= max_models:
                raise DiscoveryError(f"more than {max_models} models after base {base}: chain does not end")
            if addr + 2 > 0x10000:
                raise DiscoveryError(f"model chain at base {base} runs past register 65535")
            hdr = yield (addr, 2)
            if hdr is None or len(hdr) < 2:
                if models:
                    return DiscoveryResult(base, tuple(models))
                raise DiscoveryError(f"cannot read the first model header at {addr} (base {base})")
            mid, length = hdr[0], hdr[1]
            if mid == END_MODEL_ID:
                if not models:   # a device still starting shows "SunS" before its models are up
                    raise DiscoveryError(f"'SunS' at base {base} but no models after it (the device may be starting)")
                return DiscoveryResult(base, tuple(models))
            if mid == 0:
                raise DiscoveryError(f"model id 0 at {addr} (base {base}): not a SunSpec chain")
            if addr + 2 + length > 0x10000:
                raise DiscoveryError(f"model {mid} at {addr} with L={length} runs past register 65535")
            models.append(ModelRef(mid, addr + 2, length))
            addr += 2 + length
    raise DiscoveryError(f"no SunSpec marker 'SunS' at base addresses {', '.join(map(str, bases))}")


def split_reads(addr: int, count: int, max_count: int = MAX_READ) -> list[tuple[int, int]]:
    """(addr, count) chunks of at most max_count registers covering addr..addr+count-1."""
    return [(a, min(max_count, addr + count - a)) for a in range(addr, addr + count, max_count)]


# --------------------------------------------------------------------------------------------- canonical names

@dataclass(frozen=True, slots=True)
class Source:
    model_id: int
    point: str
    factor: float = 1.0     # multiply the SunSpec value (e.g. 0.01 for a PF given in %)


@dataclass(frozen=True, slots=True)
class Canonical:
    name: str
    unit: str
    meaning: str
    sources: tuple[Source, ...]     # in order of preference; the first present model that implements it wins
    control: bool = False


def _inv(point: str, factor: float = 1.0) -> tuple[Source, ...]:
    return tuple(Source(m, point, factor) for m in (103, 102, 101))


_CANONICAL_POINTS: tuple[Canonical, ...] = (
    Canonical("W", "W", "active power, + = export/injection", (Source(701, "W"),) + _inv("W")),
    Canonical("VAr", "var", "reactive power, + = injection (over-excited)", (Source(701, "Var"),) + _inv("VAr")),
    Canonical("VA", "VA", "apparent power", (Source(701, "VA"),) + _inv("VA")),
    Canonical("PF", "", "power factor, cos phi (-1..1); 10x models give % and are divided by 100",
              (Source(701, "PF"),) + _inv("PF", 0.01)),
    Canonical("Hz", "Hz", "grid frequency", (Source(701, "Hz"),) + _inv("Hz")),
    Canonical("A", "A", "total AC current", (Source(701, "A"),) + _inv("A")),
    Canonical("PhVphA", "V", "phase A (L1) to neutral voltage; 701 VL1, else 701 LNV (average L-N)",
              (Source(701, "VL1"), Source(701, "LNV")) + _inv("PhVphA")),
    Canonical("PhVphB", "V", "phase B (L2) to neutral voltage", (Source(701, "VL2"),) + _inv("PhVphB")),
    Canonical("PhVphC", "V", "phase C (L3) to neutral voltage", (Source(701, "VL3"),) + _inv("PhVphC")),
    Canonical("TotWhExp", "Wh", "total energy exported (injected)", (Source(701, "TotWhInj"),) + _inv("WH")),
    Canonical("TotWhImp", "Wh", "total energy imported (absorbed)", (Source(701, "TotWhAbs"),)),
    Canonical("WMax", "W", "nameplate maximum active power",
              (Source(702, "WMaxRtg"), Source(120, "WRtg"), Source(121, "WMax"))),
    Canonical("WMaxLimPct", "%", "active power limit, % of WMax",
              (Source(704, "WMaxLimPct"), Source(123, "WMaxLimPct")), True),
    Canonical("WMaxLimPctEna", "", "active power limit enabled (0/1)",
              (Source(704, "WMaxLimPctEna"), Source(123, "WMaxLim_Ena")), True),
    Canonical("WMaxLimPctRvrt", "%", "limit the device reverts to when the controller goes silent",
              (Source(704, "WMaxLimPctRvrt"),), True),
    Canonical("WMaxLimPctEnaRvrt", "", "enable the device reverts to (0/1)", (Source(704, "WMaxLimPctEnaRvrt"),), True),
    Canonical("WMaxLimPctRvrtTms", "s", "silence before reversion, 0 = never",
              (Source(704, "WMaxLimPctRvrtTms"), Source(123, "WMaxLimPct_RvrtTms")), True),
    Canonical("WMaxLimPctRvrtRem", "s", "time left before reversion (read only)", (Source(704, "WMaxLimPctRvrtRem"),)),
    Canonical("WSet", "W", "active power set-point", (Source(704, "WSet"),), True),
    Canonical("WSetEna", "", "active power set-point enabled (0/1)", (Source(704, "WSetEna"),), True),
    Canonical("VArSet", "var", "reactive power set-point", (Source(704, "VarSet"),), True),
    Canonical("VArSetEna", "", "reactive power set-point enabled (0/1)", (Source(704, "VarSetEna"),), True),
    Canonical("PFWInj", "", "constant power factor set-point while injecting",
              (Source(704, "PFWInj.PF"),), True),
    Canonical("PFWInjEna", "", "constant power factor (injection) enabled (0/1)", (Source(704, "PFWInjEna"),), True),
    # ---- drivers (issue 4): storage and legacy read points. Own block, appended: do not interleave. ----
    Canonical("SoC", "%", "state of charge", (Source(713, "SoC"), Source(124, "ChaState"))),
    Canonical("SoH", "%", "state of health", (Source(713, "SoH"),)),
    Canonical("WHRtg", "Wh", "energy rating of the storage", (Source(713, "WHRtg"), Source(120, "WHRtg"))),
    Canonical("WHAvail", "Wh", "energy available in the storage (WHRtg x SoC x SoH)", (Source(713, "WHAvail"),)),
    Canonical("StorSt", "", "storage status: 0 ok, 1 warning, 2 error", (Source(713, "Sta"),)),
    Canonical("WChaRteMaxRtg", "W", "maximum charge rate, rating",
              (Source(702, "WChaRteMaxRtg"), Source(120, "MaxChaRte"))),
    Canonical("WDisChaRteMaxRtg", "W", "maximum discharge rate, rating",
              (Source(702, "WDisChaRteMaxRtg"), Source(120, "MaxDisChaRte"))),
    Canonical("WChaRteMax", "W", "maximum charge rate, setting", (Source(702, "WChaRteMax"), Source(124, "WChaMax"))),
    Canonical("WDisChaRteMax", "W", "maximum discharge rate, setting", (Source(702, "WDisChaRteMax"),)),
    Canonical("VAMax", "VA", "maximum apparent power, rating",
              (Source(702, "VAMaxRtg"), Source(120, "VARtg"), Source(121, "VAMax"))),
    Canonical("VArMaxInj", "var", "maximum reactive power injected (over-excited), rating",
              (Source(702, "VarMaxInjRtg"), Source(120, "VArRtgQ1"), Source(121, "VArMaxQ1"))),
    Canonical("AMax", "A", "maximum AC current, rating", (Source(702, "AMaxRtg"), Source(120, "ARtg"))),
    Canonical("VNom", "V", "nominal AC voltage", (Source(702, "VNomRtg"), Source(121, "VRef"))),
    Canonical("VMax", "V", "maximum AC voltage, rating", (Source(702, "VMaxRtg"), Source(121, "VMax"))),
    Canonical("VMin", "V", "minimum AC voltage, rating", (Source(702, "VMinRtg"), Source(121, "VMin"))),
    Canonical("WAval", "W", "active power available (e.g. from the sun)", (Source(122, "WAval"),)),
    Canonical("VArAval", "var", "reactive power available", (Source(122, "VArAval"),)),
    Canonical("DCW", "W", "DC power", (Source(714, "DCW"),) + _inv("DCW")),
    Canonical("DCV", "V", "DC voltage", _inv("DCV")),
    Canonical("TmpCab", "°C", "cabinet temperature", (Source(701, "TmpCab"),) + _inv("TmpCab")),
    # ---- end of the drivers block ----
    # -- control block (control developer): ratings and set-point reversion the control engine uses --
    Canonical("VArMaxAbs", "var", "rated reactive power, absorption", (Source(702, "VarMaxAbsRtg"),)),
    Canonical("WSetRvrt", "W", "active power set-point the device reverts to when the controller goes silent",
              (Source(704, "WSetRvrt"),), True),
    Canonical("WSetEnaRvrt", "", "active power set-point enable the device reverts to (0/1)",
              (Source(704, "WSetEnaRvrt"),), True),
    Canonical("WSetRvrtTms", "s", "silence before the active power set-point reverts, 0 = never",
              (Source(704, "WSetRvrtTms"),), True),
    Canonical("VArSetRvrt", "var", "reactive power set-point the device reverts to", (Source(704, "VarSetRvrt"),), True),
    Canonical("VArSetEnaRvrt", "", "reactive power set-point enable the device reverts to (0/1)",
              (Source(704, "VarSetEnaRvrt"),), True),
    Canonical("VArSetRvrtTms", "s", "silence before the reactive power set-point reverts, 0 = never",
              (Source(704, "VarSetRvrtTms"),), True),
    Canonical("ControllerHb", "", "controller heartbeat, incremented every second by the gateway (715)",
              (Source(715, "ControllerHb"),), True),
)
CANONICAL: dict[str, Canonical] = {c.name: c for c in _CANONICAL_POINTS}
if len(CANONICAL) != len(_CANONICAL_POINTS):  # blocks appended by different hands: a repeated name would shadow one
    raise ImportError("drivers/sunspec.py: canonical point names repeat: "
                      + ", ".join(sorted({c.name for c in _CANONICAL_POINTS
                                          if sum(d.name == c.name for d in _CANONICAL_POINTS) > 1})))


def pick_source(name: str, present: Mapping[int, object] | Sequence[int]) -> Source | None:
    """The preferred source of a canonical point among the models a device has (by model presence only)."""
    c = CANONICAL.get(name)
    if c is None:
        return None
    for s in c.sources:
        if s.model_id in present:
            try:
                if s.point in model_layout(s.model_id).points:
                    return s
            except ModelDefError:
                continue
    return None


def candidate_sources(name: str, present: Mapping[int, object] | Sequence[int]) -> list[Source]:
    """All sources of a canonical point the device has, in preference order (for fallback on NOT_IMPLEMENTED)."""
    c = CANONICAL.get(name)
    if c is None:
        return []
    return [s for s in c.sources if s.model_id in present]


def canonical_value(name: str, decoded: Mapping[int, Mapping[str, object]]) -> object:
    """Value of a canonical point from decoded blocks {model id: {point: value}}: the first implemented source,
    scaled by its factor; NOT_IMPLEMENTED if no present source implements it (or the device lacks them all)."""
    c = CANONICAL[name]
    first_bad: object = NOT_IMPLEMENTED
    for s in c.sources:
        block = decoded.get(s.model_id)
        if block is None or s.point not in block:
            continue
        v = block[s.point]
        if v is NOT_IMPLEMENTED:
            continue
        if isinstance(v, BadValue):
            if first_bad is NOT_IMPLEMENTED:
                first_bad = v
            continue
        if s.factor != 1.0 and isinstance(v, (int, float)):
            v = round(v * s.factor, 12)
        return v
    return first_bad
