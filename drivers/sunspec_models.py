"""SunSpec model definitions, flattened into register layouts.

The definitions are the JSON files shipped with pysunspec2 (Apache-2.0); we never hand-type register maps,
so a model revision upstream reaches us through a dependency bump, not a code edit.

A layout lists the *fixed* part of a model: the top-level points and the points of non-repeating (sync)
groups, flattened as "Group.Point" (e.g. 704 "PFWInj.PF"). Repeating groups (those with a "count", e.g. the
curves of 705/706 or the curves of 129) are skipped for now; their names are kept in `ModelLayout.skipped_groups`.
Offsets are in registers from the model's ID register (ID = 0, L = 1, first data point = 2), as in the
SunSpec definitions.
"""
from __future__ import annotations

import functools
import json
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


class ModelDefError(Exception):
    """A model id has no definition, or its definition cannot be used."""


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a flattened layout."""

    name: str                 # "W", or "PFWInj.PF" for a point of a sync group
    offset: int               # registers from the model's ID register
    size: int                 # registers
    type: str                 # SunSpec type name (int16, uint32, sunssf, string, ...)
    sf: str | int | None      # name of the scale-factor point (flattened name), a fixed int, or None
    units: str | None
    access: str               # "R" or "RW"
    mandatory: bool
    static: bool

    @property
    def writable(self) -> bool:
        return self.access == "RW"


@dataclass(frozen=True, slots=True)
class ModelLayout:
    model_id: int
    name: str
    fixed_len: int                          # registers of the fixed part, ID and L included
    points: dict[str, PointDef]             # in register order
    skipped_groups: tuple[str, ...] = ()    # repeating groups not flattened

    @property
    def fixed_data_len(self) -> int:
        """Registers of the fixed part after ID and L (what L counts, without repeating groups)."""
        return self.fixed_len - 2


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


def _sf_ref(raw, prefix: str, group_point_names: set[str]) -> str | int | None:
    """Resolve an "sf" attribute: a point name (in the same group first, else top level) or a fixed int."""
    if raw is None:
        return None
    if isinstance(raw, int):
        return raw
    try:
        return int(raw)
    except ValueError:
        pass
    if prefix and raw in group_point_names:
        return prefix + raw
    return raw


def _flatten(group: dict, prefix: str, offset: int, points: dict[str, PointDef], skipped: list[str]) -> int | None:
    """Append the group's points; returns the next offset, or None once a repeating group ends the fixed part."""
    names = {p["name"] for p in group.get("points", [])}
    for p in group.get("points", []):
        ptype = p["type"]
        size = p.get("size", TYPE_SIZES.get(ptype))
        if size is None:
            raise ModelDefError(f"point {prefix}{p['name']} of type {ptype} has no size")
        size = int(size)
        name = prefix + p["name"]
        points[name] = PointDef(
            name=name,
            offset=offset,
            size=size,
            type=ptype,
            sf=_sf_ref(p.get("sf"), prefix, names),
            units=p.get("units"),
            access=p.get("access", "R"),
            mandatory=p.get("mandatory") == "M",
            static=p.get("static") == "S",
        )
        offset += size
    groups = group.get("groups", [])
    for i, g in enumerate(groups):
        if g.get("count") is not None:
            # A repeating group: its length depends on count points, so nothing after it has a fixed offset.
            skipped.extend(prefix + x["name"] for x in groups[i:])
            return None
        nxt = _flatten(g, prefix + g["name"] + ".", offset, points, skipped)
        if nxt is None:
            skipped.extend(prefix + x["name"] for x in groups[i + 1:])
            return None
        offset = nxt
    return offset


@functools.lru_cache(maxsize=None)
def model_layout(model_id: int) -> ModelLayout:
    """The flattened fixed layout of a model (cached)."""
    mdef = load_model_def(model_id)
    group = mdef.get("group")
    if not isinstance(group, dict):
        raise ModelDefError(f"model {model_id} definition has no top-level group")
    points: dict[str, PointDef] = {}
    skipped: list[str] = []
    end = _flatten(group, "", 0, points, skipped)
    if end is None:
        last = next(reversed(points.values()), None)
        end = last.offset + last.size if last else 0
    return ModelLayout(model_id=model_id, name=group.get("name", str(model_id)), fixed_len=end,
                       points=points, skipped_groups=tuple(skipped))
