"""Control registers of a simulated SunSpec device: validated writes and device-side reversion (no I/O).

A real inverter or battery checks every control write itself and, when the controller goes silent for *RvrtTms
seconds, falls back to the *Rvrt values on its own. That fallback is what a gateway's fail-safe relies on, so the
plants model it once, here.
"""
from __future__ import annotations

import math


class DeviceControls:
    """Mixin for a plant: subclasses set CONTROL_RANGES and REVERSION, and start every step() with _advance(dt)."""

    #: Controls a write may set, with their static valid range.
    CONTROL_RANGES: dict[str, tuple[float, float]] = {}
    #: Reversion groups (SunSpec 704): timeout point -> ((control, its reversion value), ...).
    REVERSION: dict[str, tuple[tuple[str, str], ...]] = {}

    t_s: float
    reversions: int
    _last_write_t: float | None = None     # reversion timer start: the last control write
    _armed: frozenset[str] | set[str] = frozenset()   # reversion groups armed by that write

    def control_range(self, name: str) -> tuple[float, float]:
        """The valid range of a control now; override where it depends on the rating."""
        return self.CONTROL_RANGES[name]

    def validate(self, name: str, value: float) -> float:
        """Check one control value; raises ValueError (the simulator maps it to ILLEGAL_DATA_VALUE)."""
        if name not in self.CONTROL_RANGES:
            raise KeyError(f"{name} is not a control of this plant")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} needs a number, got {value!r}") from None
        lo, hi = self.control_range(name)
        if math.isnan(v) or not lo <= v <= hi:
            raise ValueError(f"{name}={value} outside {lo}..{hi}")
        if name.endswith("Ena") or name.endswith("EnaRvrt"):
            if v not in (0.0, 1.0):
                raise ValueError(f"{name} must be 0 or 1, got {value}")
            return int(v)
        if name.endswith("RvrtTms"):
            if not v.is_integer():
                raise ValueError(f"{name} must be whole seconds, got {value}")
            return int(v)
        return v

    def write(self, **values: float) -> None:
        """Apply a control write atomically (all values valid, or nothing changes); restarts every reversion timer."""
        checked = {n: self.validate(n, v) for n, v in values.items()}
        for n, v in checked.items():
            setattr(self, n, v)
        self._last_write_t = self.t_s
        self._armed = set(self.REVERSION)

    def rvrt_rem(self, timeout_point: str) -> float:
        """Seconds until a reversion group reverts; 0 when none is pending."""
        tms = getattr(self, timeout_point)
        if tms <= 0 or self._last_write_t is None or timeout_point not in self._armed:
            return 0.0
        return max(0.0, tms - (self.t_s - self._last_write_t))

    def _advance(self, dt_s: float) -> None:
        """The start of every plant step: the clock moves on and the reversion timers are checked."""
        if not dt_s >= 0:
            raise ValueError("dt_s must be >= 0")
        self.t_s += dt_s
        self._check_reversion()

    def _check_reversion(self) -> None:
        if self._last_write_t is None:
            return
        for tms_point, pairs in self.REVERSION.items():
            tms = getattr(self, tms_point)
            if tms > 0 and tms_point in self._armed and self.t_s - self._last_write_t >= tms:
                for control, value in pairs:
                    setattr(self, control, getattr(self, value))
                self._armed.discard(tms_point)   # disarmed until the next control write
                self.reversions += 1
