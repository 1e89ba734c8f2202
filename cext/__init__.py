"""Control kernels (curves, droop, ramp, first-order response, whole control cycle) for N devices at once.

Uses the compiled Cython module when it imports, else the numpy twin (same API and validation);
GRIDEDGE_PURE_PYTHON=1 forces the twin. Log describe() at start-up so the running variant is on record.
"""
from __future__ import annotations

import os

from gridedge.cext import twin
from gridedge.cext.twin import (IEEE1547_CAT_B_VOLT_VAR, IEEE1547_VOLT_WATT, Curve, CycleInputs, CycleParams,
                                QMode)

_FORCE = os.environ.get("GRIDEDGE_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes", "on")

if _FORCE:
    _impl = twin
    _reason = "forced by GRIDEDGE_PURE_PYTHON"
else:
    try:
        from gridedge.cext import _kernels as _impl
        _reason = ""
    except Exception as exc:  # ImportError, or a numpy ABI mismatch (ValueError) in a stale build
        _impl = twin
        _reason = f"compiled extension not importable: {type(exc).__name__}: {exc}"

IMPLEMENTATION = "python" if _impl is twin else "cython"

curve_eval = _impl.curve_eval
droop = _impl.droop
ramp_limit = _impl.ramp_limit
first_order = _impl.first_order
cycle = _impl.cycle


def describe() -> str:
    if IMPLEMENTATION == "cython":
        return f"control kernels: cython ({_impl.__name__})"
    return f"control kernels: pure-python twin ({_reason})"


__all__ = ["IMPLEMENTATION", "describe", "curve_eval", "droop", "ramp_limit", "first_order", "cycle",
           "Curve", "CycleParams", "CycleInputs", "QMode", "IEEE1547_CAT_B_VOLT_VAR", "IEEE1547_VOLT_WATT", "twin"]
