"""A PV inverter as a plant: what the HIL simulator's registers show, stepped in simulated time (no I/O).

The controls follow SunSpec model 704 (IEEE 1547-2018 "limit active power", active/reactive power set-points),
including the device-side reversion: when the controller goes silent for WMaxLimPctRvrtTms seconds, the inverter
itself falls back to WMaxLimPctRvrt / WMaxLimPctEnaRvrt, which is the failsafe a gateway must be able to rely on.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from .controls import DeviceControls

PvProfile = Callable[[float], float]


def constant_pv(w: float) -> PvProfile:
    """PV availability that never changes."""
    w = float(w)
    return lambda t_s: w


def clear_sky_pv(peak_w: float, sunrise_s: float = 6 * 3600, sunset_s: float = 20 * 3600,
                 day_s: float = 86400.0) -> PvProfile:
    """A clear-sky day: sin^1.5 between sunrise and sunset (seconds since midnight, repeating daily), 0 at night."""
    if not sunset_s > sunrise_s:
        raise ValueError("sunset must be after sunrise")

    def pv(t_s: float) -> float:
        tod = t_s % day_s
        if not sunrise_s < tod < sunset_s:
            return 0.0
        x = math.sin(math.pi * (tod - sunrise_s) / (sunset_s - sunrise_s))
        return peak_w * x ** 1.5

    return pv


class PVInverterPlant(DeviceControls):
    """Active power follows min(PV available, limit, set-point) with a ramp; reactive power follows VArSet.

    Sign convention: W and VAr > 0 means injection into the grid (export). Units: W, var, VA, V, Hz, A, Wh, %, s.
    """

    #: Controls a write may set, with their valid range (validation is the device's, as a real inverter does).
    CONTROL_RANGES: dict[str, tuple[float, float]] = {
        "WMaxLimPct": (0.0, 100.0),
        "WMaxLimPctEna": (0, 1),
        "WMaxLimPctRvrt": (0.0, 100.0),
        "WMaxLimPctEnaRvrt": (0, 1),
        "WMaxLimPctRvrtTms": (0, 86400 * 365),
        "WSet": (0.0, math.inf),           # upper bound: w_max, checked in write()
        "WSetEna": (0, 1),
        "WSetRvrt": (0.0, math.inf),
        "WSetEnaRvrt": (0, 1),
        "WSetRvrtTms": (0, 86400 * 365),
        "VArSet": (-math.inf, math.inf),   # bounds: +/- var_max, checked in write()
        "VArSetEna": (0, 1),
        "VArSetRvrt": (-math.inf, math.inf),
        "VArSetEnaRvrt": (0, 1),
        "VArSetRvrtTms": (0, 86400 * 365),
    }
    #: Reversion groups (SunSpec 704): timeout point -> (control, its reversion value), applied on silence.
    REVERSION = {
        "WMaxLimPctRvrtTms": (("WMaxLimPct", "WMaxLimPctRvrt"), ("WMaxLimPctEna", "WMaxLimPctEnaRvrt")),
        "WSetRvrtTms": (("WSet", "WSetRvrt"), ("WSetEna", "WSetEnaRvrt")),
        "VArSetRvrtTms": (("VArSet", "VArSetRvrt"), ("VArSetEna", "VArSetEnaRvrt")),
    }

    def __init__(self, w_max: float = 10000.0, pv: PvProfile | float = 8000.0, ramp_pct_per_s: float = 10.0,
                 var_max: float | None = None, n_phases: int = 3, t0_s: float = 0.0, grid=None,
                 var_response_s: float = 0.0):
        """grid: an object with update(p_w, q_var) -> (V, Hz) (hil/feeder.py FeederTap), or None for a stiff
        grid (v and hz as set). var_response_s: time constant of the reactive power following its set-point."""
        if not w_max > 0:
            raise ValueError("w_max must be > 0")
        if not ramp_pct_per_s > 0:
            raise ValueError("ramp_pct_per_s must be > 0")
        if n_phases not in (1, 3):
            raise ValueError("n_phases must be 1 or 3")
        self.w_max = float(w_max)
        self.pv: PvProfile = constant_pv(pv) if isinstance(pv, (int, float)) else pv
        self.ramp_pct_per_s = float(ramp_pct_per_s)
        self.var_max = float(var_max) if var_max is not None else 0.44 * self.w_max  # IEEE 1547 Cat B capability
        self.n_phases = n_phases
        self.t_s = float(t0_s)
        if not var_response_s >= 0:
            raise ValueError("var_response_s must be >= 0")
        self.var_response_s = float(var_response_s)
        self.grid = grid
        # grid inputs (settable; with a grid model they follow it)
        self.v = 230.0
        self.hz = 50.0
        # controls
        self.WMaxLimPct = 100.0
        self.WMaxLimPctEna = 0
        self.WMaxLimPctRvrt = 100.0
        self.WMaxLimPctEnaRvrt = 0
        self.WMaxLimPctRvrtTms = 0
        self.WSet = self.w_max
        self.WSetEna = 0
        self.VArSet = 0.0
        self.VArSetEna = 0
        self.WSetRvrt = self.w_max
        self.WSetEnaRvrt = 0
        self.WSetRvrtTms = 0
        self.VArSetRvrt = 0.0
        self.VArSetEnaRvrt = 0
        self.VArSetRvrtTms = 0
        # outputs
        self.W = self.target_w()
        self.VAr = self.target_var()
        self.TotWhExp = 0.0
        self.TotWhImp = 0.0
        self.TotVArhInj = 0.0
        self.TotVArhAbs = 0.0
        self.reversions = 0
        if self.grid is not None:
            self.v, self.hz = self.grid.update(self.W, self.VAr)

    # ------------------------------------------------------------------ controls

    def control_range(self, name: str) -> tuple[float, float]:
        if name in ("WSet", "WSetRvrt"):
            return 0.0, self.w_max
        if name in ("VArSet", "VArSetRvrt"):
            return -self.var_max, self.var_max
        return self.CONTROL_RANGES[name]

    @property
    def WMaxLimPctRvrtRem(self) -> float:
        """Seconds until the limit reverts; 0 when no reversion is pending."""
        return self.rvrt_rem("WMaxLimPctRvrtTms")

    # ------------------------------------------------------------------ dynamics

    def available_w(self) -> float:
        return min(self.w_max, max(0.0, float(self.pv(self.t_s))))

    def limit_w(self) -> float:
        lim = self.w_max
        if self.WMaxLimPctEna:
            lim = min(lim, self.WMaxLimPct / 100.0 * self.w_max)
        if self.WSetEna:
            lim = min(lim, self.WSet)
        return lim

    def target_w(self) -> float:
        return max(0.0, min(self.available_w(), self.limit_w()))

    def target_var(self) -> float:
        return max(-self.var_max, min(self.var_max, self.VArSet)) if self.VArSetEna else 0.0

    def step(self, dt_s: float) -> None:
        """Advance by dt_s seconds: reversion timer, ramped active power, reactive power, energy counters."""
        self._advance(dt_s)
        target = self.target_w()
        max_dw = self.ramp_pct_per_s / 100.0 * self.w_max * dt_s
        # Never above what the PV gives, even mid-ramp (the sun does not wait for the ramp).
        self.W = min(self.available_w(), self.W + max(-max_dw, min(max_dw, target - self.W)))
        self.W = max(0.0, self.W)
        target_var = self.target_var()
        if self.var_response_s > 0:
            self.VAr += (target_var - self.VAr) * (1.0 - math.exp(-dt_s / self.var_response_s))
        else:
            self.VAr = target_var
        if self.grid is not None:
            self.v, self.hz = self.grid.update(self.W, self.VAr)
        h = dt_s / 3600.0
        self.TotWhExp += max(self.W, 0.0) * h
        self.TotWhImp += max(-self.W, 0.0) * h
        self.TotVArhInj += max(self.VAr, 0.0) * h
        self.TotVArhAbs += max(-self.VAr, 0.0) * h

    # ------------------------------------------------------------------ derived measurements

    @property
    def VA(self) -> float:
        return math.hypot(self.W, self.VAr)

    @property
    def PF(self) -> float:
        """cos phi, 1.0 at no load."""
        return 1.0 if self.VA < 1e-9 else self.W / self.VA

    @property
    def A(self) -> float:
        """Line (per-phase) current, balanced phases assumed."""
        return self.VA / (self.n_phases * self.v) if self.v > 0 else 0.0
