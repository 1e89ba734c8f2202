"""SunSpec model definitions, flattened into register layouts.

The definitions are the JSON files shipped with pysunspec2 (Apache-2.0); we never hand-type register maps,
so a model revision upstream reaches us through a dependency bump, not a code edit.

Point names are flattened: a point of a sync group is "Group.Point" (704 "PFWInj.PF"); a point of a repeating
group carries the 1-based instance index, as SunSpec numbers curves from 1 (705 "Crv[2].Pt[1].V", the first point
of curve 2; AdptCrvReq = 2 adopts that curve). Offsets are in registers from the model's ID register (ID = 0,
L = 1, first data point = 2), as in the SunSpec definitions.

Two kinds of layout:
- `model_layout(id)`: the fixed part, the points before the first repeating group (the same for every device);
- `instance_layout(id, counts, length)`: the whole model of one device, with its repeating groups expanded by
  the device's count points (705 NCrv, NPt) or, for legacy models whose groups have count 0 (126, 129...), by
  the model length L.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: Registers per type, for the types whose size the definition may omit.
TYPE_SIZES: dict[str, int] = {
    "int16": 1, "uint16": 1, "count": 1, "acc16": 1, "enum16": 1, "bitfield16": 1, "pad": 1, "sunssf": 1,
    "int32": 2, "uint32": 2, "acc32": 2, "enum32": 2, "bitfield32": 2, "ipaddr": 2, "float32": 2,
    "int64": 4, "uint64": 4, "acc64": 4, "float64": 4, "eui48": 4,
    "ipv6addr": 8,
}
MAX_MODEL_REGS = 0x10000     # no model can be longer than the register space


class ModelDefError(Exception):
    """A model id has no definition, or its definition cannot be used."""


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a flattened layout."""

    name: str                 # "W", "PFWInj.PF" (sync group) or "Crv[1].Pt[2].V" (repeating groups, 1-based)
    offset: int               # registers from the model's ID register
    size: int                 # registers
    type: str                 # SunSpec type name (int16, uint32, sunssf, string, ...)
    sf: str | int | None      # name of the scale-factor point (flattened name), a fixed int, or None
    units: str | None
    access: str               # "R" or "RW"
    mandatory: bool
    static: bool
    symbols: tuple[int, ...] = ()     # the values an enumerated point may take (enum16/32); () = not enumerated

    @property
    def writable(self) -> bool:
        return self.access == "RW"


@dataclass(frozen=True, slots=True)
class ModelLayout:
    model_id: int
    name: str
    fixed_len: int                          # registers covered by `points`, ID and L included
    points: dict[str, PointDef]             # in register order
    repeating_groups: tuple[str, ...] = ()  # top-level repeating groups (not expanded in a fixed layout)
    counts: tuple[tuple[str, int], ...] = ()   # instance layouts: the instance count of each repeating group

    @property
    def fixed_data_len(self) -> int:
        """Registers after ID and L that `points` cover (what L counts, for a model without repeating groups)."""
        return self.fixed_len - 2

    @property
    def count_points(self) -> tuple[str, ...]:
        """Top-level points that give the number of instances of a repeating group (705: NCrv, NPt)."""
        return _count_points(self.model_id)


def _models_dir() -> Path:
    try:
        return Path(str(resources.files("sunspec2") / "models" / "json"))
    except (ModuleNotFoundError, TypeError) as exc:  # pragma: no cover - dependency missing
        raise ModelDefError(f"pysunspec2 is not installed: {exc}") from exc


@functools.lru_cache(maxsize=None)
def load_model_def(model_id: int) -> dict:
    """The raw pysunspec2 JSON definition of one model (cached)."""
    if not isinstance(model_id, int) or isinstance(model_id, bool) or not 0 < model_id < 0xFFFF:
        raise ModelDefError(f"invalid SunSpec model id {model_id!r}")
    path = _models_dir() / f"model_{model_id}.json"
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ModelDefError(f"no SunSpec definition for model {model_id} (looked for {path})") from None
    except (OSError, ValueError) as exc:
        raise ModelDefError(f"cannot read SunSpec definition of model {model_id}: {exc}") from exc


def _top_group(model_id: int) -> dict:
    group = load_model_def(model_id).get("group")
    if not isinstance(group, dict):
        raise ModelDefError(f"model {model_id} definition has no top-level group")
    return group


def _point_size(p: dict, where: str) -> int:
    size = p.get("size", TYPE_SIZES.get(p.get("type")))
    if size is None:
        raise ModelDefError(f"point {where}{p.get('name')} of type {p.get('type')} has no size")
    return int(size)


def _sf_ref(raw, scopes: list[tuple[str, set[str]]]) -> str | int | None:
    """Resolve an "sf" attribute: a fixed int, or a point name looked up from the innermost group outwards
    (pysunspec2 looks in the point's own group, then at the top level)."""
    if raw is None:
        return None
    if isinstance(raw, int):
        return raw
    try:
        return int(raw)
    except ValueError:
        pass
    for prefix, names in reversed(scopes):
        if raw in names:
            return prefix + raw
    return raw


def _count_of(g: dict, counts: Mapping[str, int] | None) -> int | str | None:
    """A repeating group's instance count: an int, "L" (legacy: as many as fit in the model length), or None for
    a sync group. Counts named by a point come from `counts` (0 when the device does not say)."""
    c = g.get("count")
    if c is None:
        return None
    if isinstance(c, int):
        return "L" if c == 0 else c
    try:
        n = int(c)
        return "L" if n == 0 else n
    except ValueError:
        pass
    if counts is None:
        raise ModelDefError(f"group {g.get('name')} needs the count point {c}")
    v = counts.get(c, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def _group_size(g: dict, counts: Mapping[str, int]) -> int:
    size = sum(_point_size(p, "") for p in g.get("points", []))
    for sub in g.get("groups", []):
        n = _count_of(sub, counts)
        if n == "L":
            raise ModelDefError(f"group {sub.get('name')}: a length-counted group must be at the top level")
        size += _group_size(sub, counts) * (1 if n is None else n)
        if size > MAX_MODEL_REGS:
            return size
    return size


def _symbol_values(p: dict) -> tuple[int, ...]:
    """The values of an enumeration's symbols (bitfields have symbols too, but they name bits, not values)."""
    if not str(p.get("type", "")).startswith("enum"):
        return ()
    return tuple(sorted(s["value"] for s in p.get("symbols", ()) if isinstance(s.get("value"), int)))


class _Flattener:
    def __init__(self, counts: Mapping[str, int] | None, limit: int | None):
        self.counts = counts
        self.limit = MAX_MODEL_REGS if limit is None else min(limit, MAX_MODEL_REGS)
        self.points: dict[str, PointDef] = {}
        self.repeating: list[str] = []
        self.instances: list[tuple[str, int]] = []
        self.stopped = False

    def group(self, g: dict, prefix: str, offset: int, scopes: list[tuple[str, set[str]]], top: bool) -> int:
        """Append g's points (and sub-groups) at `offset`; returns the next offset."""
        names = {p["name"] for p in g.get("points", [])}
        scopes = scopes + [(prefix, names)]
        for p in g.get("points", []):
            size = _point_size(p, prefix)
            if offset + size > self.limit:
                self.stopped = True
                return offset
            name = prefix + p["name"]
            self.points[name] = PointDef(
                name=name, offset=offset, size=size, type=p["type"], sf=_sf_ref(p.get("sf"), scopes),
                units=p.get("units"), access=p.get("access", "R"), mandatory=p.get("mandatory") == "M",
                static=p.get("static") == "S", symbols=_symbol_values(p))
            offset += size
        for sub in g.get("groups", []):
            if self.stopped:
                return offset
            n = _count_of(sub, self.counts) if self.counts is not None else (None if sub.get("count") is None
                                                                             else "fixed-part")
            if n == "fixed-part":
                # A fixed layout ends at the first repeating group: nothing after it has a fixed offset.
                self.repeating.append(prefix + sub["name"])
                self.stopped = True
                return offset
            if n is None:
                offset = self.group(sub, prefix + sub["name"] + ".", offset, scopes, False)
                continue
            if top:
                self.repeating.append(sub["name"])
            size = _group_size(sub, self.counts)
            if size <= 0:
                raise ModelDefError(f"repeating group {prefix}{sub['name']} has no registers")
            if n == "L":
                if not top:
                    raise ModelDefError(f"group {sub.get('name')}: a length-counted group must be at the top level")
                n = max(0, (self.limit - offset) // size)
            done = 0
            for i in range(1, n + 1):
                if offset + size > self.limit:
                    self.stopped = True
                    break
                offset = self.group(sub, f"{prefix}{sub['name']}[{i}].", offset, scopes, False)
                done = i
            self.instances.append((prefix + sub["name"], done))
        return offset


def _flatten(model_id: int, counts: Mapping[str, int] | None, limit: int | None) -> ModelLayout:
    group = _top_group(model_id)
    f = _Flattener(counts, limit)
    end = f.group(group, "", 0, [], True)
    return ModelLayout(model_id=model_id, name=group.get("name", str(model_id)), fixed_len=end, points=f.points,
                       repeating_groups=tuple(f.repeating), counts=tuple(f.instances) if counts is not None else ())


@functools.lru_cache(maxsize=None)
def model_layout(model_id: int) -> ModelLayout:
    """The flattened fixed part of a model: the points before its first repeating group (cached)."""
    return _flatten(model_id, None, None)


@functools.lru_cache(maxsize=None)
def _count_points(model_id: int) -> tuple[str, ...]:
    out: list[str] = []

    def walk(g: dict) -> None:
        for sub in g.get("groups", []):
            c = sub.get("count")
            if isinstance(c, str):
                try:
                    int(c)
                except ValueError:
                    if c not in out:
                        out.append(c)
            walk(sub)
    walk(_top_group(model_id))
    return tuple(out)


@functools.lru_cache(maxsize=512)
def _instance(model_id: int, counts: tuple[tuple[str, int], ...], length: int | None) -> ModelLayout:
    return _flatten(model_id, dict(counts), None if length is None else length + 2)


def instance_layout(model_id: int, counts: Mapping[str, int] | None = None, length: int | None = None) -> ModelLayout:
    """The whole model of one device: repeating groups expanded `counts[count point]` times (705 {"NCrv": 3,
    "NPt": 4}); legacy length-counted groups (count 0 in the definition) as many times as fit in `length` (the
    model's L). Instances that do not fit in `length` are left out. Cached."""
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or not 0 <= length < 0x10000):
        raise ModelDefError(f"model length must be 0..65535, got {length!r}")
    wanted = _count_points(model_id)
    clean = []
    for name in wanted:
        v = (counts or {}).get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ModelDefError(f"model {model_id}: count {name} must be an integer >= 0, got {v!r}")
        clean.append((name, min(v, MAX_MODEL_REGS)))
    return _instance(model_id, tuple(clean), length)
