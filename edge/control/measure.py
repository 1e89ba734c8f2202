"""What the control cycle knows of each device: its measurements and ratings from the process image.

Apart from the controllers (controllers.py, planner.py) because it needs no numpy: the engine reads the site meter
and the controllable devices even where nothing asks for the kernels.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gridedge.core.model import Sample, Validity


@dataclass(frozen=True)
class Meas:
    """What the cycle knows of a device now (None = no good sample younger than the stale limit)."""

    p_w: float | None = None
    q_var: float | None = None
    v_v: float | None = None
    hz: float | None = None
    rated_w: float | None = None
    q_rtg_var: float | None = None
    soc_pct: float | None = None
    ts_ns: int | None = None      # of the P sample (the POC controller acts on new meter samples only)
    supports: frozenset[str] = frozenset()   # optional control points the device implements (reversion, 715)


OPTIONAL_POINTS = ("WMaxLimPctRvrtTms", "WSetRvrtTms", "VArSetRvrtTms", "ControllerHb")


def read_meas(image: Mapping[str, Sample], device: str, now_ns: int, stale_s: float) -> Meas:
    def good(name: str, max_age_s: float | None = stale_s):
        smp = image.get(f"{device}/{name}")
        if smp is None or smp.validity is not Validity.GOOD or not isinstance(smp.value, (int, float)):
            return None
        if max_age_s is not None and now_ns - smp.ts_ns > max_age_s * 1e9:
            return None
        return smp

    p = good("W")
    q_rtg = [s.value for s in (good("VArMaxInj", None), good("VArMaxAbs", None)) if s is not None]
    return Meas(
        p_w=float(p.value) if p else None,
        q_var=_val(good("VAr")), v_v=_val(good("PhVphA")), hz=_val(good("Hz")),
        rated_w=_val(good("WMax", None)), q_rtg_var=min(q_rtg) if q_rtg else None, soc_pct=_val(good("SoC")),
        ts_ns=p.ts_ns if p else None,
        supports=frozenset(n for n in OPTIONAL_POINTS if good(n, None) is not None),
    )


def _val(smp: Sample | None) -> float | None:
    return float(smp.value) if smp is not None else None
