"""Prequalification: the unit's declared technical data, and the analysis of a step test.

A step test steps the set-point from `before_w` to `target_w` at t = 0 and records the measured active power.
From the response (docs/flex.md has a figure of the definitions):
- delay_s: time until the response has covered `start_pct` (default 5 %) of the step (activation delay);
- ramp_w_per_s: 80 % of the step divided by the time from 10 % to 90 % of it;
- full_activation_time_s: time after which the response stays within the band around the target until the end
  of the record (band = max(band_pct % of the step, band_w)); None if it never settles;
- accuracy_w / accuracy_pct: mean |response - target| after settling (or over the last fifth of the record
  when it never settles), in W and in % of the step; overshoot_pct: the largest excursion beyond the target.
Crossing times are interpolated linearly between samples; the response is at before_w at the step (t = 0), so a
level already passed by the first sample after the step lies on the line from (0, before_w) to that sample.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .settings import PREQUAL_KEYS, PrequalData  # noqa: F401  (declared data lives with the configuration)


@dataclass(frozen=True)
class StepResult:
    before_w: float
    target_w: float
    step_w: float
    delay_s: float | None
    t10_s: float | None
    t90_s: float | None
    ramp_w_per_s: float | None
    full_activation_time_s: float | None
    settled: bool
    accuracy_w: float | None
    accuracy_pct: float | None
    overshoot_pct: float
    samples: int
    duration_s: float
    band_w: float

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _crossing(t: np.ndarray, progress: np.ndarray, level: float) -> float | None:
    """First time progress reaches level (linear between samples); None if never."""
    idx = np.flatnonzero(progress >= level)
    if idx.size == 0:
        return None
    i = int(idx[0])
    if i == 0 or progress[i] == progress[i - 1]:
        return float(max(t[i], 0.0))
    t0, t1, p0, p1 = t[i - 1], t[i], progress[i - 1], progress[i]
    return float(t0 + (level - p0) * (t1 - t0) / (p1 - p0))


def analyse_step(t_s, w, before_w: float, target_w: float, *, start_pct: float = 5.0, band_pct: float = 5.0,
                 band_w: float = 0.0) -> StepResult:
    """t_s: sample times in s from the step (negative = before it); w: measured W. Samples before the step only
    serve the caller (before_w); the analysis uses t >= 0."""
    t = np.asarray(t_s, dtype=float)
    y = np.asarray(w, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError("t_s and w must be 1-D and of equal length")
    if not (math.isfinite(before_w) and math.isfinite(target_w)):
        raise ValueError("before_w and target_w must be finite")
    step = target_w - before_w
    if step == 0:
        raise ValueError("the step is zero: target_w equals before_w")
    keep = (t >= 0) & np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    if t.size < 2:
        raise ValueError(f"need at least 2 samples after the step, got {t.size}")
    progress = (y - before_w) / step
    # the step instant, where the response is by definition still before_w, anchors the first crossings
    tc, pc = (t, progress) if t[0] == 0 else (np.insert(t, 0, 0.0), np.insert(progress, 0, 0.0))
    delay = _crossing(tc, pc, start_pct / 100)
    t10 = _crossing(tc, pc, 0.1)
    t90 = _crossing(tc, pc, 0.9)
    ramp = abs(step) * 0.8 / (t90 - t10) if t10 is not None and t90 is not None and t90 > t10 else None
    band = max(band_pct / 100 * abs(step), band_w)
    outside = np.abs(y - target_w) > band
    if not outside.any():
        settle_t = float(t[0])
        settled = True
    elif outside[-1]:
        settle_t, settled = None, False
    else:
        last_out = int(np.flatnonzero(outside)[-1])
        settle_t, settled = float(t[last_out + 1]), True
    tail = y[t >= settle_t] if settled else y[t >= t[-1] - (t[-1] - t[0]) / 5]
    acc = float(np.mean(np.abs(tail - target_w))) if tail.size else None
    overshoot = max(0.0, float(np.max((progress - 1.0)))) * 100
    return StepResult(float(before_w), float(target_w), float(step), delay, t10, t90, ramp,
                      settle_t, settled, acc, None if acc is None else acc / abs(step) * 100, overshoot,
                      int(t.size), float(t[-1]), band)


class StepRecorder:
    """Collects one point's samples around a step test that the agent runs (it writes the set-point itself)."""

    def __init__(self, test_id: str, resource: str, point: str, step_ns: int, target_w: float, duration_s: float,
                 before_w: float | None = None, pre_s: float = 30.0) -> None:
        if not duration_s > 0:
            raise ValueError("duration_s must be > 0")
        self.test_id, self.resource, self.point = test_id, resource, point
        self.step_ns, self.target_w, self.before_w = step_ns, float(target_w), before_w
        self.end_ns = step_ns + int(duration_s * 1e9)
        self.from_ns = step_ns - int(pre_s * 1e9)
        self.t: list[float] = []
        self.w: list[float] = []

    def feed(self, ts_ns: int, value: float) -> None:
        if self.from_ns <= ts_ns <= self.end_ns:
            self.t.append((ts_ns - self.step_ns) / 1e9)
            self.w.append(float(value))

    def done(self, now_ns: int) -> bool:
        return now_ns >= self.end_ns

    def analyse(self, **kw) -> StepResult:
        before = self.before_w
        if before is None:
            pre = [w for t, w in zip(self.t, self.w) if t < 0]
            if not pre:
                raise ValueError("no sample before the step to take before_w from")
            before = float(np.mean(pre))
        return analyse_step(self.t, self.w, before, self.target_w, **kw)
