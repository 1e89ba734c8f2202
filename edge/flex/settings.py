"""The ``[flex]`` section of the gateway configuration: ISP, tolerance, horizon, and per resource which meter
points measure it, which baseline verifies it and what it can do (docs/configuration.md, ``[flex]``).

gridedge.config plugs FLEX_SCHEMA, flex_issues() and build_flex() into the gateway config, so messages carry the
file and key path like every other section, e.g.
``gateway.toml: flex.resources[0].baseline.x: must be <= y (5), got 10``.
"""
from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core import schema as s
from ..core.isp import ISP_MINUTES

PREQUAL_KEYS = ("full_activation_time_s", "ramp_rate_w_per_s", "min_quantity_w", "max_quantity_w",
                "min_duration_s", "max_duration_s", "preparation_period_s", "deactivation_period_s")


@dataclass(frozen=True)
class PrequalData:
    """What the BSP/FSP declares for a unit (TDX-ASSIST prequalification); None = not declared."""

    full_activation_time_s: float | None = None
    ramp_rate_w_per_s: float | None = None
    min_quantity_w: float | None = None
    max_quantity_w: float | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    preparation_period_s: float | None = None
    deactivation_period_s: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

RESOURCE_KINDS = ("inverter", "battery", "load", "meter")
_ID = "[A-Za-z0-9_-]"
_POINT_RE = rf"{_ID}{{1,32}}/[A-Za-z][A-Za-z0-9_.:-]{{0,63}}"
_POINT = s.Str(regex=_POINT_RE, regex_hint="be a point id <device>/<point> like meter1/TotWhImp")
_KIND_KEYS = {
    "inverter": ("w_max",),
    "battery": ("soc", "capacity_wh", "max_charge_w", "max_discharge_w", "soc_min_pct", "soc_max_pct", "efficiency"),
    "load": ("shed_w", "add_w"),
}
_BATTERY_REQUIRED = ("soc", "capacity_wh", "max_charge_w", "max_discharge_w")


def _isp_minutes(v: int) -> int:
    if v not in ISP_MINUTES:
        raise s.Invalid(f"must be one of {', '.join(map(str, ISP_MINUTES))} (minutes), got {v}")
    return v


def _date(v: Any) -> _dt.date:
    if isinstance(v, _dt.date) and not isinstance(v, _dt.datetime):
        return v
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        try:
            return _dt.date.fromisoformat(v)
        except ValueError as e:
            raise s.Invalid(f"is not a valid date ({e}), got {s.describe(v)}") from None
    raise s.Invalid(f"must be a date like 2026-12-25, got {s.describe(v)}")


def parse_window(v: Any) -> tuple[int, int]:
    """"HH:MM-HH:MM" (UTC) -> minutes since midnight (start, end); end 24:00 allowed."""
    m = re.fullmatch(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})", v) if isinstance(v, str) else None
    if m is None:
        raise s.Invalid(f"must be a UTC time window like \"08:00-20:00\", got {s.describe(v)}")
    h0, m0, h1, m1 = map(int, m.groups())
    start, end = h0 * 60 + m0, h1 * 60 + m1
    if h0 > 23 or m0 > 59 or m1 > 59 or end > 1440 or end <= start:
        raise s.Invalid(f"must be HH:MM-HH:MM within one day, start before end, got {s.describe(v)}")
    return start, end


def _method(v: str) -> str:
    from .baselines import METHODS  # the numeric code (numpy) loads only when a [flex] section is checked

    if v not in METHODS:
        msg = f"unknown baseline method; must be one of: {', '.join(METHODS)}; got {v!r}"
        guess = s.suggest(v, METHODS)
        raise s.Invalid(msg + (f" (did you mean {guess!r}?)" if guess else ""))
    return v


_GW = 1e9  # upper bound of the W, Wh and s keys: above any resource, and sums of them stay finite

RESOURCE_SCHEMA = s.Dict({
    "id": s.Required(s.Str(regex=f"{_ID}{{1,32}}", regex_hint="be 1-32 characters of A-Z a-z 0-9 _ -"),
                     "resource id, unique; activations and nominations name it"),
    "kind": s.Required(s.Str(choices=RESOURCE_KINDS), "what the resource is (decides its availability)"),
    "devices": s.Optional(s.List(s.Str(regex=f"{_ID}{{1,32}}", regex_hint="be a device id"), min_len=1, unique=True),
                          doc="devices the resource controls; default: the devices of its points"),
    "energy_import": s.Optional(_POINT, doc="cumulative imported energy register, Wh (e.g. meter1/TotWhImp)"),
    "energy_export": s.Optional(_POINT, doc="cumulative exported energy register, Wh (e.g. meter1/TotWhExp)"),
    "power": s.Optional(_POINT, doc="active power, W, + = injection (e.g. meter1/W)"),
    "max_gap_s": s.Optional(s.Float(gt=0, le=3600), default=30.0,
                            doc="samples further apart than this make a gap, s"),
    "min_completeness": s.Optional(s.Float(gt=0, le=1), default=0.9,
                                   doc="an ISP measured less than this fraction is missing"),
    "rollover_wh": s.Optional(s.Float(gt=0, le=1e20), doc="energy registers wrap at this value, Wh"),
    "max_power_w": s.Optional(s.Float(gt=0, le=_GW), doc="a register jump above this mean power is implausible, W"),
    "baseline": s.Optional(s.Dict({"method": s.Required(s.All(s.Str(), s.Custom(_method)), "baseline method id")},
                                  allow_unknown=True), default={"method": "x_of_y"},
                           doc="baseline method and its parameters"),
    "w_max": s.Optional(s.Float(gt=0, le=_GW), doc="inverter nameplate, W (default: the device's WMax point)"),
    "soc": s.Optional(_POINT, doc="battery state of charge point, % (e.g. bat1/SoC)"),
    "capacity_wh": s.Optional(s.Float(gt=0, le=_GW), doc="battery usable capacity, Wh"),
    "max_charge_w": s.Optional(s.Float(gt=0, le=_GW), doc="battery charge power limit, W"),
    "max_discharge_w": s.Optional(s.Float(gt=0, le=_GW), doc="battery discharge power limit, W"),
    "soc_min_pct": s.Optional(s.Float(ge=0, le=100), default=10.0, doc="battery lowest state of charge, %"),
    "soc_max_pct": s.Optional(s.Float(ge=0, le=100), default=90.0, doc="battery highest state of charge, %"),
    "efficiency": s.Optional(s.Float(gt=0, le=1), default=0.95, doc="battery one-way efficiency"),
    "shed_w": s.Optional(s.Float(ge=0, le=_GW), default=0.0, doc="load: consumption it can drop, W"),
    "add_w": s.Optional(s.Float(ge=0, le=_GW), default=0.0, doc="load: consumption it can add, W"),
    "prequalification": s.Optional(s.Dict({k: s.Optional(s.Float(ge=0, le=_GW), doc=k) for k in PREQUAL_KEYS}),
                                   doc="declared prequalification data"),
})

FLEX_SCHEMA = s.Dict({
    "isp_min": s.Optional(s.All(s.Int(), s.Custom(_isp_minutes)), default=15,
                          doc="settlement interval (ISP), minutes: 1, 5, 15, 30 or 60"),
    "history_days": s.Optional(s.Int(ge=1, le=366), default=45, doc="days of ISP energies kept on the gateway"),
    "tolerance_pct": s.Optional(s.Float(ge=0, le=100), default=10.0, doc="pass band, % of the requested energy"),
    "tolerance_w": s.Optional(s.Float(ge=0, le=_GW), default=0.0, doc="smallest pass band, W over the ISP"),
    "overdelivery_passes": s.Optional(s.Bool(), default=True, doc="delivering more than requested passes"),
    "verification_interval_s": s.Optional(s.Int(ge=1, le=3600), default=60,
                                          doc="near-real-time verification records this often during an activation"),
    "horizon_isps": s.Optional(s.Int(ge=1, le=672), default=28, doc="ISPs of availability published"),
    "gate_closure_s": s.Optional(s.Int(ge=0, le=7 * 86400), default=0,
                                 doc="nominations must start at least this long after they arrive"),
    "holidays": s.Optional(s.List(s.Custom(_date), unique=True), default=[],
                           doc="dates (UTC) treated as weekend days by the baselines"),
    "accuracy_window": s.Optional(s.Custom(parse_window), default="08:00-20:00",
                                  doc="UTC window of the daily placebo-day accuracy evaluation"),
    "placebo_days": s.Optional(s.Int(ge=1, le=60), default=10, doc="placebo days in the accuracy evaluation"),
    "resources": s.Optional(s.List(RESOURCE_SCHEMA, unique_key="id"), default=[], doc="flexible resources"),
})


@dataclass(frozen=True)
class ResourceConfig:
    id: str
    kind: str
    devices: tuple[str, ...]
    energy_import: str | None = None
    energy_export: str | None = None
    power: str | None = None
    max_gap_s: float = 30.0
    min_completeness: float = 0.9
    rollover_wh: float | None = None
    max_power_w: float | None = None
    baseline_method: str = "x_of_y"
    baseline_params: dict = field(default_factory=dict)
    w_max: float | None = None
    soc: str | None = None
    capacity_wh: float | None = None
    max_charge_w: float | None = None
    max_discharge_w: float | None = None
    soc_min_pct: float = 10.0
    soc_max_pct: float = 90.0
    efficiency: float = 0.95
    shed_w: float = 0.0
    add_w: float = 0.0
    prequalification: PrequalData | None = None


@dataclass(frozen=True)
class FlexConfig:
    isp_min: int = 15
    history_days: int = 45
    tolerance_pct: float = 10.0
    tolerance_w: float = 0.0
    overdelivery_passes: bool = True
    verification_interval_s: int = 60
    horizon_isps: int = 28
    gate_closure_s: int = 0
    holidays: frozenset = frozenset()
    accuracy_window: tuple[int, int] = (480, 1200)  # minutes since 00:00 UTC
    placebo_days: int = 10
    resources: tuple[ResourceConfig, ...] = ()

    def resource(self, rid: str) -> ResourceConfig:
        for r in self.resources:
            if r.id == rid:
                return r
        raise KeyError(rid)


class FlexConfigError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def _points_of(res: Mapping) -> list[tuple[str, str]]:
    return [(k, res[k]) for k in ("energy_import", "energy_export", "power", "soc") if isinstance(res.get(k), str)]


def flex_issues(raw: Any, clean: Any, devices: Mapping[str, tuple[str, ...] | None] | None) -> list[s.Issue]:
    """Checks across keys, on the partial result. devices: id -> polled points (None = all), or None to skip
    the checks against the device list (a flex section checked on its own)."""
    issues: list[s.Issue] = []
    if not isinstance(clean, dict) or not isinstance(raw, Mapping):
        return issues
    history_days = clean.get("history_days", 45)
    raw_res = raw.get("resources")
    for i, res in enumerate(clean.get("resources") or ()):
        if not isinstance(res, dict) or not isinstance(raw_res, (list, tuple)) or not isinstance(raw_res[i], Mapping):
            continue
        path = ("flex", "resources", i)
        given = raw_res[i]
        kind = res.get("kind")
        if not any(k in given for k in ("energy_import", "energy_export", "power")):
            issues.append(s.Issue(path, "needs energy_import and/or energy_export registers, or power"))
        if kind in RESOURCE_KINDS:
            for other, keys in _KIND_KEYS.items():
                if other != kind:
                    issues += [s.Issue(path + (k,), f"only for kind {other!r}, not {kind!r}") for k in keys if k in given]
        if kind == "battery":
            issues += [s.Issue(path + (k,), "required key missing (kind 'battery')") for k in _BATTERY_REQUIRED
                       if k not in given]
            if res.get("soc_min_pct", 0) >= res.get("soc_max_pct", 100):
                issues.append(s.Issue(path + ("soc_min_pct",), f"must be below soc_max_pct ({res.get('soc_max_pct')})"))
        pq = res.get("prequalification")
        if isinstance(pq, dict):
            for lo, hi in (("min_quantity_w", "max_quantity_w"), ("min_duration_s", "max_duration_s")):
                if lo in pq and hi in pq and pq[lo] > pq[hi]:
                    issues.append(s.Issue(path + ("prequalification", lo), f"must be <= {hi} ({pq[hi]:g})"))
        base = res.get("baseline")
        from .baselines import BaselineError, make_baseline  # numpy: only for a config with resources
        if isinstance(base, dict) and "method" in base:
            params = {k: v for k, v in base.items() if k != "method"}
            try:
                method = make_baseline(base["method"], params)
            except BaselineError as e:
                issues += [s.Issue(path + ("baseline",) + iss.path, iss.message) for iss in e.issues]
            else:
                if method.lookback_days > history_days:
                    issues.append(s.Issue(path + ("baseline", "lookback_days"),
                                          f"needs {method.lookback_days} days of history, flex.history_days is "
                                          f"{history_days}"))
        if devices is None:
            continue
        for key, point in _points_of(res):
            dev, name = point.split("/", 1)
            if dev not in devices:
                issues.append(s.Issue(path + (key,), f"no device {dev!r} in devices"
                                      + (f" (known: {', '.join(devices)})" if devices else " (none configured)")))
            elif devices[dev] is not None and name not in devices[dev]:
                issues.append(s.Issue(path + (key,), f"device {dev!r} does not poll {name!r} (add it to its points)"))
        for j, dev in enumerate(res.get("devices") or ()):
            if dev not in devices:
                issues.append(s.Issue(path + ("devices", j), f"no device {dev!r} in devices"))
    return issues


def build_flex(c: dict) -> FlexConfig:
    if c["resources"]:
        from .baselines import make_baseline  # numpy: only for a config with resources
    resources = []
    for r in c["resources"]:
        devices = tuple(r["devices"]) if "devices" in r else tuple(dict.fromkeys(p.split("/", 1)[0] for _, p in _points_of(r)))
        params = {k: v for k, v in r["baseline"].items() if k != "method"}
        params = make_baseline(r["baseline"]["method"], params).params  # with defaults filled
        kind = r["kind"]
        extra = {k: r[k] for k in _KIND_KEYS.get(kind, ()) if k in r}
        pq = PrequalData(**r["prequalification"]) if "prequalification" in r else None
        resources.append(ResourceConfig(
            id=r["id"], kind=kind, devices=devices, energy_import=r.get("energy_import"),
            energy_export=r.get("energy_export"), power=r.get("power"), max_gap_s=r["max_gap_s"],
            min_completeness=r["min_completeness"], rollover_wh=r.get("rollover_wh"), max_power_w=r.get("max_power_w"),
            baseline_method=r["baseline"]["method"], baseline_params=params, prequalification=pq, **extra))
    return FlexConfig(
        isp_min=c["isp_min"], history_days=c["history_days"], tolerance_pct=c["tolerance_pct"],
        tolerance_w=c["tolerance_w"], overdelivery_passes=c["overdelivery_passes"],
        verification_interval_s=c["verification_interval_s"], horizon_isps=c["horizon_isps"],
        gate_closure_s=c["gate_closure_s"], holidays=frozenset(c["holidays"]), accuracy_window=c["accuracy_window"],
        placebo_days=c["placebo_days"], resources=tuple(resources))


def parse_flex(data: Any, source: str = "<flex>", devices: Mapping[str, tuple[str, ...] | None] | None = None) -> FlexConfig:
    """Check a flex section on its own (a dict as under [flex]); FlexConfigError lists every problem."""
    clean, issues = s.validate(FLEX_SCHEMA, data, partial=True)
    issues = [s.Issue(("flex",) + i.path, i.message) for i in issues]
    issues += flex_issues(data, clean, devices)
    if issues:
        raise FlexConfigError(s.format_issues(issues, source))
    return build_flex(clean)
