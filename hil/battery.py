"""A battery storage system as a plant: what the HIL battery simulator's registers show, stepped in simulated time
(no I/O).

State of charge integrates the power at the cells: discharging W at the AC side draws W / eff_dis from the cells,
charging -W puts -W * eff_cha in. Power follows the 704 set-point (WSet, + = discharge) with a ramp, clamped by the
charge / discharge rate limits, the active power limit (WMaxLimPct, on discharge) and the SoC window: the battery
stops charging at soc_max_pct and stops discharging at soc_min_pct, and never crosses either within a step.
Like the PV plant, the device itself reverts WSet and WMaxLimPct to their *Rvrt values when the controller goes
silent for *RvrtTms seconds.

Sign convention: W and VAr > 0 mean injection into the grid (discharge), as for every other device in gridedge.
"""
from __future__ import annotations

import math

from .controls import DeviceControls


class BatteryPlant(DeviceControls):
    """Units: W, var, VA, Wh, %, s, V, Hz, A."""

    #: Controls a write may set, with their valid range (validated like a real device does).
    CONTROL_RANGES: dict[str, tuple[float, float]] = {
        "WSet": (-math.inf, math.inf),          # bounds: -w_cha_max..w_dis_max, checked in validate()
        "WSetEna": (0, 1),
        "WSetRvrt": (-math.inf, math.inf),
        "WSetEnaRvrt": (0, 1),
        "WSetRvrtTms": (0, 86400 * 365),
        "WMaxLimPct": (0.0, 100.0),
        "WMaxLimPctEna": (0, 1),
        "WMaxLimPctRvrt": (0.0, 100.0),
        "WMaxLimPctEnaRvrt": (0, 1),
        "WMaxLimPctRvrtTms": (0, 86400 * 365),
        "VArSet": (-math.inf, math.inf),        # bounds: +/- var_max
        "VArSetEna": (0, 1),
    }
    REVERSION = {"WSetRvrtTms": (("WSet", "WSetRvrt"), ("WSetEna", "WSetEnaRvrt")),
                 "WMaxLimPctRvrtTms": (("WMaxLimPct", "WMaxLimPctRvrt"), ("WMaxLimPctEna", "WMaxLimPctEnaRvrt"))}

    def __init__(self, wh_rtg: float = 10000.0, w_cha_max: float = 5000.0, w_dis_max: float = 5000.0,
                 soc_pct: float = 50.0, soc_min_pct: float = 5.0, soc_max_pct: float = 95.0, eff_cha: float = 0.95,
                 eff_dis: float = 0.95, ramp_pct_per_s: float = 100.0, soh_pct: float = 100.0,
                 var_max: float | None = None, n_phases: int = 3, t0_s: float = 0.0):
        if not wh_rtg > 0 or not w_cha_max > 0 or not w_dis_max > 0:
            raise ValueError("wh_rtg, w_cha_max and w_dis_max must be > 0")
        if not 0 <= soc_min_pct < soc_max_pct <= 100:
            raise ValueError("need 0 <= soc_min_pct < soc_max_pct <= 100")
        if not 0 <= soc_pct <= 100:
            raise ValueError("soc_pct must be 0..100")
        if not (0 < eff_cha <= 1 and 0 < eff_dis <= 1):
            raise ValueError("efficiencies must be in (0, 1]")
        if not 0 < soh_pct <= 100:
            raise ValueError("soh_pct must be in (0, 100]")
        if not ramp_pct_per_s > 0:
            raise ValueError("ramp_pct_per_s must be > 0")
        if n_phases not in (1, 3):
            raise ValueError("n_phases must be 1 or 3")
        self.wh_rtg = float(wh_rtg)
        self.w_cha_max, self.w_dis_max = float(w_cha_max), float(w_dis_max)
        self.w_max = max(self.w_cha_max, self.w_dis_max)
        self.soc_min_pct, self.soc_max_pct = float(soc_min_pct), float(soc_max_pct)
        self.eff_cha, self.eff_dis = float(eff_cha), float(eff_dis)
        self.ramp_pct_per_s = float(ramp_pct_per_s)
        self.soh_pct = float(soh_pct)
        self.var_max = float(var_max) if var_max is not None else 0.44 * self.w_max
        self.n_phases = n_phases
        self.t_s = float(t0_s)
        self.energy_wh = self.capacity_wh * soc_pct / 100.0
        self.v, self.hz = 230.0, 50.0
        # controls
        self.WSet, self.WSetEna, self.WSetRvrt, self.WSetEnaRvrt, self.WSetRvrtTms = 0.0, 0, 0.0, 0, 0
        self.WMaxLimPct, self.WMaxLimPctEna = 100.0, 0
        self.WMaxLimPctRvrt, self.WMaxLimPctEnaRvrt, self.WMaxLimPctRvrtTms = 100.0, 0, 0
        self.VArSet, self.VArSetEna = 0.0, 0
        self.running = True                  # 715 OpCtl STOP -> False: no power
        # outputs
        self.W = 0.0
        self.VAr = 0.0
        self.TotWhExp = 0.0      # discharged into the grid
        self.TotWhImp = 0.0      # charged from the grid
        self.reversions = 0

    # ------------------------------------------------------------------ state

    @property
    def capacity_wh(self) -> float:
        """Usable energy when full: the rating derated by the state of health."""
        return self.wh_rtg * self.soh_pct / 100.0

    @property
    def soc_pct(self) -> float:
        return 100.0 * self.energy_wh / self.capacity_wh

    @property
    def WHAvail(self) -> float:
        """Energy available (713: WHRtg x SoC x SoH)."""
        return self.energy_wh

    @property
    def status(self) -> int:
        """713 Sta: 0 OK, 1 WARNING at either end of the SoC window."""
        return 1 if self.soc_pct <= self.soc_min_pct + 1e-9 or self.soc_pct >= self.soc_max_pct - 1e-9 else 0

    # ------------------------------------------------------------------ controls

    def control_range(self, name: str) -> tuple[float, float]:
        if name in ("WSet", "WSetRvrt"):
            return -self.w_cha_max, self.w_dis_max
        if name == "VArSet":
            return -self.var_max, self.var_max
        return self.CONTROL_RANGES[name]

    # ------------------------------------------------------------------ dynamics

    def limits_w(self) -> tuple[float, float]:
        """(most negative, most positive) AC power now: rate limits, the active power limit and the SoC window."""
        lo, hi = -self.w_cha_max, self.w_dis_max
        if self.WMaxLimPctEna:
            hi = min(hi, self.WMaxLimPct / 100.0 * self.w_max)
        if self.soc_pct >= self.soc_max_pct - 1e-9:
            lo = 0.0
        if self.soc_pct <= self.soc_min_pct + 1e-9:
            hi = 0.0
        return lo, hi

    def target_w(self) -> float:
        if not self.running:
            return 0.0
        lo, hi = self.limits_w()
        return max(lo, min(hi, self.WSet if self.WSetEna else 0.0))

    def target_var(self) -> float:
        if not self.running or not self.VArSetEna:
            return 0.0
        return max(-self.var_max, min(self.var_max, self.VArSet))

    def step(self, dt_s: float) -> None:
        """Advance by dt_s seconds: reversion timers, ramped power within the SoC window, SoC, energy counters."""
        self._advance(dt_s)
        target = self.target_w()
        max_dw = self.ramp_pct_per_s / 100.0 * self.w_max * dt_s
        w = self.W + max(-max_dw, min(max_dw, target - self.W))
        lo, hi = self.limits_w()
        w = max(lo, min(hi, w)) if self.running else 0.0
        h = dt_s / 3600.0
        if h > 0:
            # Never cross the SoC window inside a step: cap the power at what the energy left allows.
            e_min = self.capacity_wh * self.soc_min_pct / 100.0
            e_max = self.capacity_wh * self.soc_max_pct / 100.0
            if w > 0:
                w = min(w, max(0.0, (self.energy_wh - e_min) * self.eff_dis / h))
            elif w < 0:
                w = max(w, -max(0.0, (e_max - self.energy_wh) / (self.eff_cha * h)))
            self.energy_wh += (-w / self.eff_dis if w > 0 else -w * self.eff_cha) * h
            self.energy_wh = min(max(self.energy_wh, 0.0), self.capacity_wh)
            self.TotWhExp += max(w, 0.0) * h
            self.TotWhImp += max(-w, 0.0) * h
        self.W = w
        self.VAr = self.target_var()

    # ------------------------------------------------------------------ derived measurements

    @property
    def VA(self) -> float:
        return math.hypot(self.W, self.VAr)

    @property
    def PF(self) -> float:
        return 1.0 if self.VA < 1e-9 else self.W / self.VA     # < 0 while charging

    @property
    def A(self) -> float:
        return self.VA / (self.n_phases * self.v) if self.v > 0 else 0.0
