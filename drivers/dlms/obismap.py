"""OBIS -> gridedge point maps for DLMS/COSEM meters, as register maps are for Modbus (docs/dlms.md).

A map file (TOML, drivers/maps/dlms/*.toml ships the standard ones) names, per point, the COSEM object(s) it is
read from, the interface class (which says where the value and its scaler live) and the SI unit the meter must
report. A point may be the signed sum of several objects: W = export - import = 1.0.2.7.0 - 1.0.1.7.0.

    [[points]]
    name = "W"
    obis = ["1.0.2.7.0.255", "-1.0.1.7.0.255"]
    class = 3
    unit = "W"

Optional sections: [clock] (the Clock object read for the skew), [profile] (the load profile read for catch-up;
its columns are matched to the points by OBIS) and [push] (a positional push: the OBIS codes of the push object
list, in order; without it a push is matched by the OBIS codes it carries, as HAN ports send them).
"""
from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gridedge.core import schema as s

from ..regmap import MAPS_DIR, MapError
from .cosem import CLOCK_OBIS, DATA, obis

__all__ = ["ObisPoint", "Profile", "ObisMap", "load_obis_map", "parse_obis_map", "shipped_obis_maps", "DLMS_MAPS_DIR"]

DLMS_MAPS_DIR = MAPS_DIR / "dlms"
_UNITS = ("V", "A", "W", "var", "VA", "Hz", "Wh", "varh", "VAh", "%", "s", "°", "°C", "")
_POINT = r"[A-Za-z][A-Za-z0-9_.:-]{0,63}"


def _obis(v: str) -> bytes:
    try:
        return obis(v)
    except ValueError as exc:
        raise s.Invalid(str(exc)) from None


def _term(v: str) -> tuple[int, bytes]:
    sign = -1 if v.startswith("-") else 1
    return sign, _obis(v.lstrip("+-"))


def _terms(v) -> tuple[tuple[int, bytes], ...]:
    if isinstance(v, str):
        return (_term(v),)
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return tuple(_term(x) for x in v)
    raise s.Invalid(f"must be an OBIS code or a list of them (a '-' in front subtracts), got {s.describe(v)}")


def _value_class(v: int) -> int:
    if v not in (1, 3, 4, 5):
        raise s.Invalid(f"must be 1 (Data), 3 (Register), 4 (Extended Register) or 5 (Demand Register), got {v}")
    return v


POINT = s.Dict({
    "name": s.Required(s.Str(regex=_POINT, regex_hint="be a point name like TotWhImp"), "gridedge point name"),
    "obis": s.Required(s.Custom(_terms), "OBIS code, or a list whose signed sum is the point"),
    "class": s.Required(s.All(s.Int(), s.Custom(_value_class)),
                        "interface class: 1 Data, 3 Register, 4 Extended Register, 5 Demand Register"),
    "attribute": s.Optional(s.Int(ge=2, le=20), default=2, doc="the value attribute"),
    "unit": s.Required(s.Str(choices=_UNITS), "SI unit the meter must report (checked against its scaler_unit)"),
    "scaler": s.Optional(s.Int(ge=-9, le=9), doc="fixed scaler where the object has none (Data, a bare push)"),
    "profile": s.Optional(s.Bool(), default=False, doc="captured in the load profile: read back after an outage"),
    "description": s.Optional(s.Str(max_len=512), default=""),
})
SCHEMA = s.Dict({
    "manufacturer": s.Optional(s.Str(max_len=128), default=""),
    "model": s.Required(s.Str(min_len=1, max_len=128), "what the map is for"),
    "source": s.Required(s.Str(min_len=1, max_len=1024), "the specification it was taken from"),
    "description": s.Optional(s.Str(max_len=1024), default=""),
    "clock": s.Optional(s.Dict({"obis": s.Optional(s.Custom(_obis), default="0.0.1.0.0.255")}),
                        doc="the Clock object"),
    "profile": s.Optional(s.Dict({
        "obis": s.Required(s.Custom(_obis), "the Profile Generic object (1.0.99.1.0.255 is load profile 1)"),
        "status": s.Optional(s.Custom(_obis), doc="the AMR profile status column (0.0.96.10.1.255 in IDIS)"),
    }), doc="the load profile read for catch-up"),
    "push": s.Optional(s.Dict({
        "objects": s.Required(s.List(s.Custom(_obis), min_len=1), "the push object list, in order"),
    }), doc="a positional push (IDIS push set-up)"),
    "points": s.Required(s.List(POINT, min_len=1, unique_key="name"), "the points"),
})


@dataclass(frozen=True, slots=True)
class ObisPoint:
    name: str
    terms: tuple[tuple[int, bytes], ...]        # (sign, OBIS) summed
    class_id: int
    attribute: int
    unit: str
    scaler: int | None = None
    profile: bool = False
    description: str = ""

    @property
    def objects(self) -> tuple[bytes, ...]:
        return tuple(o for _, o in self.terms)


@dataclass(frozen=True, slots=True)
class Profile:
    obis: bytes
    status: bytes | None = None


@dataclass(frozen=True)
class ObisMap:
    model: str
    source: str
    points: tuple[ObisPoint, ...]
    clock: bytes | None = CLOCK_OBIS
    profile: Profile | None = None
    push: tuple[bytes, ...] | None = None
    origin: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.points)

    def point(self, name: str) -> ObisPoint:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.points)

    def select(self, names) -> tuple[ObisPoint, ...]:
        """The points named, in the map's order (KeyError for a name it lacks)."""
        wanted = set(names)
        missing = wanted - set(self.names)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return tuple(p for p in self.points if p.name in wanted)


def parse_obis_map(data, source: str = "<map>") -> ObisMap:
    clean, issues = s.validate(SCHEMA, data)
    if not issues:
        for i, p in enumerate(clean["points"]):
            if p["class"] == DATA and p["unit"] not in ("", "s") and "scaler" not in p:
                issues.append(s.Issue(("points", i, "scaler"), "a Data object has no scaler_unit: give scaler"))
    if issues:
        raise MapError(s.format_issues(issues, source))
    points = tuple(ObisPoint(p["name"], p["obis"], p["class"], p["attribute"], p["unit"], p.get("scaler"),
                             p["profile"], p["description"]) for p in clean["points"])
    prof = clean.get("profile")
    return ObisMap(clean["model"], clean["source"], points,
                   clean["clock"]["obis"] if "clock" in clean else None,
                   Profile(prof["obis"], prof.get("status")) if prof else None,
                   tuple(clean["push"]["objects"]) if "push" in clean else None, source)


def load_obis_map(path: str | os.PathLike[str]) -> ObisMap:
    """Read and check a map file (a path, or the name of a shipped map). Raises MapError."""
    p = Path(path)
    if not p.exists() and "/" not in str(path):
        p = shipped_obis_maps().get(str(path).removesuffix(".toml"), p)
    try:
        raw = p.read_bytes()
    except (OSError, ValueError) as e:
        raise MapError([f"{path}: cannot read: {getattr(e, 'strerror', None) or e}"]) from None
    return _parse(str(p), raw)


@functools.lru_cache(maxsize=32)
def _parse(source: str, raw: bytes) -> ObisMap:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:
        raise MapError([f"{source}: invalid TOML: {e}"]) from None
    return parse_obis_map(data, source)


def shipped_obis_maps() -> dict[str, Path]:
    return {p.stem: p for p in sorted(DLMS_MAPS_DIR.glob("*.toml"))}
