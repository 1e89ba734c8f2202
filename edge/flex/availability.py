"""Flexibility available per ISP over a horizon, from device capability and state.

Each ISP's figure is what the resource could deliver in that ISP alone, for the whole ISP, if nothing else were
activated: up = extra injection (or less consumption) in W, down = less injection (or more consumption) in W,
both >= 0. The future state is a simple forecast: the battery keeps its present power (its state of charge moves
accordingly and stops at its limits), an inverter follows `expected_w` (e.g. the same ISPs on similar past days)
or, without it, keeps what it could give now (`available_w`: the device's own figure, or its output before the
limit, see PreLimit; else its present output), a load keeps its present consumption.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InverterState:
    """A PV inverter. w: present injection; w_max: nameplate; limit_w: the active limit (None = none);
    available_w: what it could give now without the limit (if the device tells); expected_w: the uncurtailed
    output forecast per horizon ISP (overrides persistence); min_w: the lowest it may be curtailed to."""

    w: float
    w_max: float
    limit_w: float | None = None
    available_w: float | None = None
    expected_w: Sequence[float] | None = None
    min_w: float = 0.0


@dataclass(frozen=True)
class BatteryState:
    """A battery. w: present injection (+ discharging); soc_pct of capacity_wh; one-way efficiency."""

    w: float
    soc_pct: float
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_min_pct: float = 10.0
    soc_max_pct: float = 90.0
    efficiency: float = 0.95


@dataclass(frozen=True)
class LoadState:
    """A controllable load. w: present injection (negative while consuming); shed_w: how much consumption it can
    drop; add_w: how much it can add."""

    w: float
    shed_w: float = 0.0
    add_w: float = 0.0


State = InverterState | BatteryState | LoadState


class PreLimit:
    """An inverter's output before its present limit (WMaxLimPct with WMaxLimPctEna = 1): while curtailed, its
    present output is the limit, not what it could give. A power reading counts only once both limit readings at
    or after it say there was no limit, so the readings of a poll that already shows the new limit (the output
    falling) never count, whatever order the poll's samples come in."""

    def __init__(self, power: str, pct: str, ena: str) -> None:
        self.power, self.pct, self.ena = power, pct, ena
        self._limit: dict[str, tuple[int, float]] = {}
        self._candidate: tuple[int, float] | None = None
        self.level: float | None = None  # W, the last confirmed output without a limit

    @property
    def points(self) -> tuple[str, str, str]:
        return self.power, self.pct, self.ena

    def limited(self) -> bool:
        pct, ena = self._limit.get(self.pct), self._limit.get(self.ena)
        return pct is not None and ena is not None and ena[1] == 1 and pct[1] < 100

    def feed(self, point: str, ts_ns: int, value: float | None) -> None:
        """value: None for an invalid reading (which confirms nothing)."""
        if point == self.power:
            if value is not None and not self.limited():
                self._candidate = (ts_ns, value)
            return
        if value is None:
            self._limit.pop(point, None)
            return
        self._limit[point] = (ts_ns, value)
        if self.limited():
            self._candidate = None
        elif self._candidate is not None and len(self._limit) == 2 and \
                min(ts for ts, _ in self._limit.values()) >= self._candidate[0]:
            self.level = self._candidate[1]


def inverter(st: InverterState, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if st.expected_w is not None and len(st.expected_w) >= n:
        expected, basis = np.asarray(st.expected_w[:n], dtype=float), "history"
    else:
        now = st.available_w if st.available_w is not None else st.w
        expected, basis = np.full(n, float(now)), "persistence"
    expected = np.clip(expected, 0.0, st.w_max)
    cap = st.w_max if st.limit_w is None else min(st.w_max, max(0.0, st.limit_w))
    planned = np.minimum(expected, cap)
    return np.maximum(0.0, expected - planned), np.maximum(0.0, planned - st.min_w), basis


def battery(st: BatteryState, n: int, hours: float) -> tuple[np.ndarray, np.ndarray, str]:
    e_min = st.capacity_wh * st.soc_min_pct / 100
    e_max = st.capacity_wh * st.soc_max_pct / 100
    e = min(max(st.capacity_wh * st.soc_pct / 100, 0.0), st.capacity_wh)
    eta = st.efficiency
    up, down = np.zeros(n), np.zeros(n)
    for k in range(n):
        p = st.w
        if (p > 0 and e <= e_min) or (p < 0 and e >= e_max):
            p = 0.0  # the battery management stops at its limits
        p_hi = min(st.max_discharge_w, max(0.0, (e - e_min) * eta / hours))
        p_lo = -min(st.max_charge_w, max(0.0, (e_max - e) / (eta * hours)))
        up[k] = max(0.0, p_hi - p)
        down[k] = max(0.0, p - p_lo)
        if p > 0:
            e = max(e_min, e - p * hours / eta)
        elif p < 0:
            e = min(e_max, e - p * hours * eta)
    return up, down, "persistence"


def load(st: LoadState, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    consumption = max(0.0, -st.w)
    return np.full(n, min(st.shed_w, consumption)), np.full(n, float(st.add_w)), "persistence"


def availability(states: Mapping[str, State], n: int, hours: float) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Per resource (up_w, down_w, basis) arrays of n ISPs of `hours` each."""
    out = {}
    for rid, st in states.items():
        if isinstance(st, InverterState):
            out[rid] = inverter(st, n)
        elif isinstance(st, BatteryState):
            out[rid] = battery(st, n, hours)
        elif isinstance(st, LoadState):
            out[rid] = load(st, n)
        else:
            raise TypeError(f"{rid}: unknown state type {type(st).__name__}")
    return out
