"""Baseline accuracy on placebo days: run a method on days without any activation, as if there had been one in a
fixed window, and compare it with what was measured.

Errors e = baseline - measured per ISP of the window (Wh, injection convention, so e > 0 means the baseline
expected more injection / less consumption than happened). Over every resource, placebo day and window ISP:
- mdape_pct: median of |e| / |measured| x 100 (median absolute percentage error);
- bias_pct:  median of  e  / |measured| x 100 (median percentage error);
- rrmse_pct: sqrt(mean(e^2)) / mean(|measured|) x 100 (relative root mean square error).
ISPs whose |measured| is below 1 % of the mean |measured| are left out of the two medians (a percentage of
almost nothing says nothing; PV at night) and counted in ``skipped_isps``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .baselines import Baseline, BaselineInput
from ..core.isp import DAY_NS, IspGrid

SMALL_FRACTION = 0.01


@dataclass(frozen=True)
class Accuracy:
    method: str
    params: dict
    days: int   # placebo days that contributed
    isps: int   # ISPs in the error statistics
    skipped_isps: int
    mdape_pct: float | None
    bias_pct: float | None
    rrmse_pct: float | None
    reason: str | None = None

    def to_json(self) -> dict:
        doc = {"method": self.method, "params": dict(self.params), "days": self.days, "isps": self.isps,
               "skipped_isps": self.skipped_isps, "mdape_pct": _r(self.mdape_pct), "bias_pct": _r(self.bias_pct),
               "rrmse_pct": _r(self.rrmse_pct)}
        if self.reason:
            doc["reason"] = self.reason
        return doc


def metrics(errors: np.ndarray, actual: np.ndarray) -> tuple[float | None, float | None, float | None, int]:
    """(mdape, bias, rrmse, skipped) of flat arrays of errors and measured values."""
    if errors.size == 0:
        return None, None, None, 0
    scale = float(np.mean(np.abs(actual)))
    if scale <= 0:
        return None, None, None, int(errors.size)
    big = np.abs(actual) >= SMALL_FRACTION * scale
    rrmse = float(np.sqrt(np.mean(errors ** 2)) / scale * 100)
    if not big.any():
        return None, None, rrmse, int(errors.size)
    pct = errors[big] / np.abs(actual[big]) * 100
    return float(np.median(np.abs(pct))), float(np.median(pct)), rrmse, int((~big).sum())


def placebo(history: np.ndarray, weekend: np.ndarray, event: np.ndarray, first_day_ns: int,
            methods: Sequence[Baseline], *, window: tuple[int, int], placebo_days: int = 10,
            grid: IspGrid = IspGrid(), nominated: np.ndarray | None = None) -> list[Accuracy]:
    """Evaluate each method on the last `placebo_days` days of `history` (n, D, S) that are non-event days for a
    resource; each day's baseline sees only the days before it. window = (start_slot, end_slot) of the placebo
    event on each day. nominated (n, D, S) Wh, if any, feeds the nomination method."""
    n, d_total, slots = history.shape
    s0, e = window
    first = max(0, d_total - placebo_days)
    out = []
    for method in methods:
        lookback = method.lookback_days
        errors, actual, days = [], [], 0
        if method.id == "nomination" and (nominated is None or np.isnan(nominated).all()):
            out.append(Accuracy(method.id, method.params, 0, 0, 0, None, None, None, "no nominations stored"))
            continue
        for t in range(first, d_total):
            lo = max(0, t - lookback)
            inp = BaselineInput(history[:, lo:t, :], weekend[lo:t], event[:, lo:t], history[:, t, :],
                                first_day_ns + t * DAY_NS, bool(weekend[t]), s0, e, grid,
                                nominated[:, t, :] if nominated is not None else None)
            res = method.compute(inp)
            meas = history[:, t, s0:e]
            base = res.wh[:, s0:e]
            use = res.ok & ~event[:, t] & ~np.isnan(meas).any(axis=1)
            if use.any():
                days += 1
                errors.append((base[use] - meas[use]).ravel())
                actual.append(meas[use].ravel())
        err = np.concatenate(errors) if errors else np.empty(0)
        act = np.concatenate(actual) if actual else np.empty(0)
        mdape, bias, rrmse, skipped = metrics(err, act)
        reason = None if days else "no placebo day with enough history"
        out.append(Accuracy(method.id, method.params, days, int(err.size) - skipped, skipped, mdape, bias, rrmse, reason))
    return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
