"""Baselines: what a resource would have injected without the activation, per ISP (Wh, + = injection).

All methods are vectorised over meters: the input holds n resources x D past days x S ISPs per day, and one
event window [start_slot, end_slot) on the target day shared by them (a pool activation). Every result keeps
its method id, its parameters and, per resource, the inputs it used (days chosen, adjustment window and value,
nomination ids), so the operator can recompute it (docs/flex.md, "Recomputing a verification").

Methods (ids as in the configuration):
- ``x_of_y``: of the Y most recent eligible days (same day type, no activation, complete enough), take X
  (the most recent, or those with the highest import/export in the event window) and average them per ISP;
  then a same-day adjustment from the hours before the event, additive or multiplicative, capped.
- ``meter_before_after``: the mean of the last ISPs before the event held through it ("before"), the mean of
  the first ISPs after it ("after"), or a straight line between the two ("interpolate").
- ``nomination``: the schedule the FSP/DSO sent ex ante (edge/flex/nomination.py).
- ``rolling_average``: exponential average per ISP over eligible days, b <- (1 - alpha) b + alpha x (ISO-NE 90/10).
New methods subclass `Baseline` and are added with `@register`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core import schema as s
from ..core.utc import iso_utc
from ..core.isp import DAY_NS, IspGrid, utc_date

ADJUSTMENTS = ("none", "additive", "multiplicative")
_WHY = {
    1: "no adjustment window before the event on this day",
    2: "measurements missing in the adjustment window",
    3: "baseline is about zero in the adjustment window: a ratio is undefined",
    4: "baseline missing in the adjustment window",
}


class BaselineError(ValueError):
    """Bad method id or parameters; `issues` name each key (gridedge.core.schema.Issue)."""

    def __init__(self, issues: list[s.Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


@dataclass(frozen=True)
class BaselineInput:
    """Inputs shared by every method. Arrays are float Wh per ISP (net injection), NaN where missing.

    history   (n, D, S)  the D UTC days before the target day, oldest first (history[:, -1] is yesterday)
    weekend   (D,)       day type of each past day (weekend or holiday)
    event     (n, D)     True where the resource had an activation that day (such days are never used)
    today     (n, S)     the target day as measured so far (NaN after now)
    start_slot, end_slot the event's ISPs on the target day: [start_slot, end_slot)
    nominated (n, S)     nominated Wh per ISP of the target day (NaN where none), for ``nomination``
    """

    history: np.ndarray
    weekend: np.ndarray
    event: np.ndarray
    today: np.ndarray
    target_day_ns: int
    target_weekend: bool
    start_slot: int
    end_slot: int
    grid: IspGrid = field(default_factory=IspGrid)
    nominated: np.ndarray | None = None
    nomination_ids: Sequence[Sequence[str]] | None = None

    def __post_init__(self) -> None:
        n, d, slots = self.history.shape
        if slots != self.grid.per_day:
            raise ValueError(f"history has {slots} ISPs per day, the grid {self.grid.per_day}")
        if self.weekend.shape != (d,) or self.event.shape != (n, d) or self.today.shape != (n, slots):
            raise ValueError("weekend (D,), event (n, D) and today (n, S) must match history (n, D, S)")
        if not 0 <= self.start_slot < self.end_slot <= slots:
            raise ValueError(f"event window must satisfy 0 <= start_slot < end_slot <= {slots}, "
                             f"got [{self.start_slot}, {self.end_slot})")
        if self.nominated is not None and self.nominated.shape != (n, slots):
            raise ValueError("nominated must be (n, S)")

    @property
    def n(self) -> int:
        return self.history.shape[0]

    @property
    def days(self) -> int:
        return self.history.shape[1]

    def day_iso(self, k: int) -> str:
        """Calendar date (UTC) of history day k."""
        return utc_date(self.target_day_ns - (self.days - k) * DAY_NS).isoformat()

    def slot_iso(self, slot: int) -> str:
        return iso_utc(self.target_day_ns + slot * self.grid.ns)


@dataclass
class BaselineResult:
    """wh (n, S): the baseline per ISP of the target day (NaN where the method gives none). ok (n,): usable for
    the whole event window. inputs(i): what resource i's value was computed from."""

    method: str
    params: dict
    wh: np.ndarray
    ok: np.ndarray
    _describe: Callable[[int], dict]

    def inputs(self, i: int) -> dict:
        return self._describe(i)

    def descriptor(self, i: int) -> dict:
        """JSON-ready: method, parameters and inputs of resource i (goes into every verification record)."""
        return {"method": self.method, "params": dict(self.params), "inputs": self._describe(i)}


class Baseline:
    """A baseline method. Subclasses set `id`, `PARAMS` (a gridedge.core.schema.Dict with defaults) and compute()."""

    id = ""
    PARAMS = s.Dict({})

    def __init__(self, **params) -> None:
        clean, issues = s.validate(self.PARAMS, params)
        if issues:
            raise BaselineError(issues)
        self.params: dict = clean

    @property
    def lookback_days(self) -> int:
        """Past days the method reads."""
        return int(self.params.get("lookback_days", 1))

    def needs_until(self, start_slot: int, end_slot: int, grid: IspGrid) -> int:
        """The target-day ISPs [0, returned slot) that must be closed before the result is final."""
        return start_slot

    def compute(self, inp: BaselineInput) -> BaselineResult:  # pragma: no cover - abstract
        raise NotImplementedError


METHODS: dict[str, type[Baseline]] = {}


def register(cls: type[Baseline]) -> type[Baseline]:
    """Class decorator: make `cls.id` a method name the configuration accepts."""
    if not cls.id:
        raise ValueError("a baseline method needs an id")
    METHODS[cls.id] = cls
    return cls


def make_baseline(method: str, params: dict | None = None) -> Baseline:
    cls = METHODS.get(method)
    if cls is None:
        raise BaselineError([s.Issue(("method",), f"unknown baseline method; must be one of: {', '.join(METHODS)}; "
                                                  f"got {method!r}")])
    return cls(**(params or {}))


# ---------------------------------------------------------------- shared pieces

_ADJUST_PARAMS = {
    "adjustment": s.Optional(s.Str(choices=ADJUSTMENTS), default="multiplicative",
                             doc="same-day adjustment from the hours before the event"),
    "cap_pct": s.Optional(s.Float(ge=0, le=100), default=20.0, doc="adjustment capped at +/- this % of the baseline"),
    "adjust_hours": s.Optional(s.Int(ge=1, le=12), default=3, doc="length of the adjustment window, h"),
    "adjust_gap_hours": s.Optional(s.Int(ge=0, le=6), default=1,
                                   doc="hours between the adjustment window and the event start"),
}
_DAY_PARAMS = {
    "lookback_days": s.Optional(s.Int(ge=1, le=366), default=45, doc="calendar days searched for eligible days"),
    "min_days": s.Optional(s.Int(ge=1, le=366), default=5, doc="fewer eligible days than this: no baseline"),
    "min_day_completeness": s.Optional(s.Float(gt=0, le=1), default=0.9,
                                       doc="a day is eligible only if this fraction of its ISPs was measured"),
}


def _eligible(inp: BaselineInput, min_completeness: float) -> np.ndarray:
    """(n, D): same day type as the target, no activation, complete enough."""
    complete = np.mean(~np.isnan(inp.history), axis=2) >= min_completeness
    return complete & ~inp.event & (inp.weekend == inp.target_weekend)[None, :]


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over axis 1 of values (n, D, S) where mask (n, D) and not NaN; NaN where nothing is left."""
    use = mask[:, :, None] & ~np.isnan(values)
    total = np.where(use, values, 0.0).sum(axis=1)
    count = use.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _adjust(base: np.ndarray, inp: BaselineInput, p: dict):
    """Same-day adjustment. Returns (adjusted, raw, applied, why, (a, b)): per resource the raw and capped
    offset (Wh per ISP) or factor, a reason code where none was applied, and the window's slots."""
    n = inp.n
    kind = p["adjustment"]
    neutral = 1.0 if kind == "multiplicative" else 0.0
    raw = np.full(n, np.nan)
    applied = np.full(n, neutral)
    why = np.zeros(n, dtype=np.int8)
    per_h = inp.grid.hours_per_slot(1)
    b = inp.start_slot - p["adjust_gap_hours"] * per_h
    a = max(0, b - p["adjust_hours"] * per_h)
    if kind == "none":
        return base, raw, applied, why, (a, max(a, b))
    if b <= a:
        why[:] = 1
        return base, raw, applied, why, (a, max(a, b))
    meas = inp.today[:, a:b]
    ref = base[:, a:b]
    have_meas = ~np.isnan(meas).any(axis=1)
    have_ref = ~np.isnan(ref).any(axis=1)
    m = np.where(have_meas, np.mean(np.where(have_meas[:, None], meas, 0.0), axis=1), np.nan)
    r = np.where(have_ref, np.mean(np.where(have_ref[:, None], ref, 0.0), axis=1), np.nan)
    cap = p["cap_pct"] / 100.0
    why[~have_ref] = 4
    why[~have_meas] = 2
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "additive":
            raw = m - r
            limit = cap * np.abs(r)
            value = np.clip(raw, -limit, limit)
        else:
            tiny = np.abs(r) <= 1e-9
            why[(why == 0) & tiny] = 3
            raw = np.where(tiny, np.nan, m / np.where(tiny, 1.0, r))
            value = np.clip(raw, 1.0 - cap, 1.0 + cap)
    good = why == 0
    applied = np.where(good, value, neutral)
    raw = np.where(good | (why == 3), raw, np.nan)
    adjusted = base * applied[:, None] if kind == "multiplicative" else base + applied[:, None]
    return adjusted, raw, applied, why, (a, b)


def _adjust_doc(inp: BaselineInput, p: dict, i: int, raw, applied, why, window) -> dict | None:
    if p["adjustment"] == "none":
        return None
    a, b = window
    doc = {"kind": p["adjustment"], "window": [inp.slot_iso(a), inp.slot_iso(b)],
           "raw": None if np.isnan(raw[i]) else float(raw[i]), "applied": float(applied[i])}
    if why[i]:
        doc["reason"] = _WHY[int(why[i])]
    return doc


def _adjust_needs(p: dict, start_slot: int, grid: IspGrid) -> int:
    if p["adjustment"] == "none":
        return 0
    return max(0, start_slot - p["adjust_gap_hours"] * grid.hours_per_slot(1))


# ---------------------------------------------------------------- methods

@register
class XofY(Baseline):
    id = "x_of_y"
    PARAMS = s.Dict({
        "x": s.Optional(s.Int(ge=1, le=60), default=10, doc="days averaged"),
        "y": s.Optional(s.Int(ge=1, le=60), default=10, doc="most recent eligible days considered"),
        "select": s.Optional(s.Str(choices=("recent", "high_import", "high_export")), default="high_import",
                             doc="which X of the Y days: most recent, or highest import / export in the event window"),
        **_DAY_PARAMS, **_ADJUST_PARAMS,
    })

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.params["x"] > self.params["y"]:
            raise BaselineError([s.Issue(("x",), f"must be <= y ({self.params['y']}), got {self.params['x']}")])

    def needs_until(self, start_slot: int, end_slot: int, grid: IspGrid) -> int:
        return _adjust_needs(self.params, start_slot, grid)

    def compute(self, inp: BaselineInput) -> BaselineResult:
        p = self.params
        x, y = p["x"], p["y"]
        hist = inp.history
        elig = _eligible(inp, p["min_day_completeness"])
        newer = np.cumsum(elig[:, ::-1], axis=1)[:, ::-1]  # eligible days from this one to the newest
        cand = elig & (newer <= y)
        if x >= y:
            sel = cand
        elif p["select"] == "recent":
            sel = cand & (newer <= x)
        else:
            win = hist[:, :, inp.start_slot:inp.end_slot]
            cnt = (~np.isnan(win)).sum(axis=2)
            with np.errstate(invalid="ignore", divide="ignore"):
                score = np.where(cnt > 0, np.nansum(win, axis=2) / np.maximum(cnt, 1), np.nan)
            if p["select"] == "high_export":
                score = -score
            key = np.where(cand & ~np.isnan(score), score, np.inf)  # ascending: most import (least injection) first
            order = np.argsort(key, axis=1, kind="stable")[:, :x]
            sel = np.zeros_like(cand)
            np.put_along_axis(sel, order, True, axis=1)
            sel &= cand
        count = sel.sum(axis=1)
        base = _masked_mean(hist, sel)
        adjusted, raw, applied, why, window = _adjust(base, inp, p)
        ok = (count >= min(p["min_days"], x)) & ~np.isnan(adjusted[:, inp.start_slot:inp.end_slot]).any(axis=1)
        adjusted = np.where(ok[:, None], adjusted, np.nan)

        def describe(i: int) -> dict:
            doc = {"days": [inp.day_iso(k) for k in np.flatnonzero(sel[i])],
                   "day_type": "weekend" if inp.target_weekend else "weekday",
                   "candidates": int(cand[i].sum()),
                   "adjustment": _adjust_doc(inp, p, i, raw, applied, why, window)}
            if not ok[i]:
                doc["reason"] = (f"only {int(count[i])} eligible day(s), need {min(p['min_days'], x)}"
                                 if count[i] < min(p["min_days"], x) else "no value for some ISP of the event")
            return doc

        return BaselineResult(self.id, p, adjusted, ok, describe)


@register
class MeterBeforeAfter(Baseline):
    id = "meter_before_after"
    PARAMS = s.Dict({
        "mode": s.Optional(s.Str(choices=("before", "after", "interpolate")), default="before",
                           doc="hold the value before, the value after, or a line between them"),
        "isps": s.Optional(s.Int(ge=1, le=96), default=1, doc="ISPs averaged before / after the event"),
    })

    def needs_until(self, start_slot: int, end_slot: int, grid: IspGrid) -> int:
        if self.params["mode"] == "before":
            return start_slot
        return min(grid.per_day, end_slot + self.params["isps"])

    def compute(self, inp: BaselineInput) -> BaselineResult:
        p = self.params
        k, mode = p["isps"], p["mode"]
        slots = inp.grid.per_day
        s0, e = inp.start_slot, inp.end_slot
        n = inp.n
        two_days = np.concatenate([inp.history[:, -1, :] if inp.days else np.full((n, slots), np.nan), inp.today], 1)
        before = np.full(n, np.nan)
        if k <= slots + s0:
            before_win = two_days[:, slots + s0 - k: slots + s0]
            before = np.where(np.isnan(before_win).any(axis=1), np.nan, before_win.mean(axis=1))
        if e + k <= slots:
            after_win = inp.today[:, e:e + k]
            after = np.where(np.isnan(after_win).any(axis=1), np.nan, after_win.mean(axis=1))
        else:
            after = np.full(n, np.nan)
        out = np.full((n, slots), np.nan)
        if mode == "before":
            out[:, s0:e] = before[:, None]
        elif mode == "after":
            out[:, s0:e] = after[:, None]
        else:
            frac = (np.arange(e - s0) + 0.5) / (e - s0)
            out[:, s0:e] = before[:, None] + (after - before)[:, None] * frac[None, :]
        ok = ~np.isnan(out[:, s0:e]).any(axis=1)

        def describe(i: int) -> dict:
            doc = {}
            if mode in ("before", "interpolate"):
                doc["before"] = {"window": [inp.slot_iso(s0 - k), inp.slot_iso(s0)],
                                 "wh": None if np.isnan(before[i]) else float(before[i])}
            if mode in ("after", "interpolate"):
                doc["after"] = {"window": [inp.slot_iso(e), inp.slot_iso(e + k)],
                                "wh": None if np.isnan(after[i]) else float(after[i])}
            if not ok[i]:
                doc["reason"] = ("the after window runs into the next day" if mode != "before" and e + k > slots
                                 else "measurements missing in the before/after window")
            return doc

        return BaselineResult(self.id, p, out, ok, describe)


@register
class NominationBaseline(Baseline):
    id = "nomination"
    PARAMS = s.Dict({})

    def needs_until(self, start_slot: int, end_slot: int, grid: IspGrid) -> int:
        return 0

    def compute(self, inp: BaselineInput) -> BaselineResult:
        n, slots = inp.n, inp.grid.per_day
        nom = inp.nominated if inp.nominated is not None else np.full((n, slots), np.nan)
        out = np.full((n, slots), np.nan)
        out[:, inp.start_slot:inp.end_slot] = nom[:, inp.start_slot:inp.end_slot]
        ok = ~np.isnan(out[:, inp.start_slot:inp.end_slot]).any(axis=1)
        ids = inp.nomination_ids

        def describe(i: int) -> dict:
            doc = {"nominations": list(ids[i]) if ids is not None else []}
            if not ok[i]:
                doc["reason"] = "no nomination for some ISP of the event"
            return doc

        return BaselineResult(self.id, {}, out, ok, describe)


@register
class RollingAverage(Baseline):
    id = "rolling_average"
    PARAMS = s.Dict({
        "alpha": s.Optional(s.Float(gt=0, le=1), default=0.1, doc="weight of the newest day"),
        **_DAY_PARAMS,
        **{**_ADJUST_PARAMS, "adjustment": s.Optional(s.Str(choices=ADJUSTMENTS), default="none",
                                                       doc="same-day adjustment from the hours before the event")},
    })

    def needs_until(self, start_slot: int, end_slot: int, grid: IspGrid) -> int:
        return _adjust_needs(self.params, start_slot, grid)

    def compute(self, inp: BaselineInput) -> BaselineResult:
        p = self.params
        alpha = p["alpha"]
        elig = _eligible(inp, p["min_day_completeness"])
        hist = inp.history
        state = np.full((inp.n, inp.grid.per_day), np.nan)
        for d in range(inp.days):
            day = hist[:, d, :]
            upd = elig[:, d, None] & ~np.isnan(day)
            fresh = upd & np.isnan(state)
            state = np.where(fresh, day, np.where(upd, (1.0 - alpha) * state + alpha * day, state))
        count = elig.sum(axis=1)
        adjusted, raw, applied, why, window = _adjust(state, inp, p)
        ok = (count >= p["min_days"]) & ~np.isnan(adjusted[:, inp.start_slot:inp.end_slot]).any(axis=1)
        adjusted = np.where(ok[:, None], adjusted, np.nan)

        def describe(i: int) -> dict:
            doc = {"days": [inp.day_iso(k) for k in np.flatnonzero(elig[i])],
                   "day_type": "weekend" if inp.target_weekend else "weekday",
                   "adjustment": _adjust_doc(inp, p, i, raw, applied, why, window)}
            if not ok[i]:
                doc["reason"] = (f"only {int(count[i])} eligible day(s), need {p['min_days']}"
                                 if count[i] < p["min_days"] else "no value for some ISP of the event")
            return doc

        return BaselineResult(self.id, p, adjusted, ok, describe)
