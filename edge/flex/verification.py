"""Verification of delivered flexibility, per activation and ISP.

Sign conventions (docs/flex.md): every power and energy is net **injection** (+ = export, as the W point).
For an ``up`` activation (more injection or less consumption) delivered = measured - baseline; for ``down``
(less injection or more consumption, e.g. curtailed PV) delivered = baseline - measured. So delivered is
positive when the resource moved the way it was asked, whatever the direction, and the issue's
"baseline minus measured" is literally the rule in the load convention (+ = consumption) for up, and in the
injection convention for down. requested is a quantity >= 0 in the same sense.

Pass or fail: a band around the request, band = max(tolerance_pct % of requested, tolerance_w x ISP hours).
Under-delivery beyond the band fails; over-delivery beyond it passes only with ``overdelivery_passes``.
With nothing requested the same rule checks that nothing was delivered (the placebo case).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    pct: float = 10.0
    w: float = 0.0
    overdelivery_passes: bool = True

    def band_wh(self, requested_wh, hours: float):
        return np.maximum(self.pct / 100.0 * np.abs(requested_wh), self.w * hours)

    def to_json(self) -> dict:
        return {"pct": self.pct, "w": self.w, "overdelivery_passes": self.overdelivery_passes}


def delivered(sign: int, baseline, measured):
    """sign +1 (up) or -1 (down); numbers or numpy arrays (a number gives a 0-d array: float() it)."""
    return sign * (np.asarray(measured, dtype=float) - np.asarray(baseline, dtype=float))


def judge(requested_wh, delivered_wh, tolerance: Tolerance, hours: float):
    """(delivery ratio or NaN/None where nothing was requested, passed) for numbers or arrays."""
    band = tolerance.band_wh(requested_wh, hours)
    low_ok = np.asarray(delivered_wh) >= np.asarray(requested_wh) - band
    high_ok = True if tolerance.overdelivery_passes else np.asarray(delivered_wh) <= np.asarray(requested_wh) + band
    passed = np.logical_and(low_ok, high_ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.asarray(requested_wh) > 0, np.asarray(delivered_wh) / np.asarray(requested_wh), np.nan)
    if np.ndim(ratio) == 0:
        r = float(ratio)
        return (None if r != r else r), bool(passed)
    return ratio, passed


@dataclass(frozen=True)
class IspVerdict:
    """The settlement figures of one ISP of one activation (pool totals)."""

    requested_wh: float | None
    baseline_wh: float | None
    measured_wh: float | None
    delivered_wh: float | None
    delivery_ratio: float | None
    passed: bool | None
    reason: str | None = None


def settle(sign: int, requested_wh: float | None, baseline_wh: float | None, measured_wh: float | None,
           tolerance: Tolerance, hours: float) -> IspVerdict:
    """One ISP: delivered, ratio and pass/fail; with a missing input the figures it needs are None and the
    reason says which."""
    missing = [name for name, v in (("measured", measured_wh), ("baseline", baseline_wh)) if v is None]
    if missing:
        return IspVerdict(requested_wh, baseline_wh, measured_wh, None, None, None,
                          " and ".join(missing) + " energy not available")
    d = float(delivered(sign, baseline_wh, measured_wh))
    if requested_wh is None:
        return IspVerdict(None, baseline_wh, measured_wh, d, None, None, "requested energy not available")
    ratio, passed = judge(requested_wh, d, tolerance, hours)
    return IspVerdict(requested_wh, baseline_wh, measured_wh, d, ratio, passed)
