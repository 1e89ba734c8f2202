"""The C37.118.2 data-frame kernel: the compiled DataDecoder (cext/_pmu.pyx) when it imports, else its pure-Python
twin (cext/pmu_twin.py, same API and results); GRIDEDGE_PURE_PYTHON=1 forces the twin, as for the control kernels."""
from __future__ import annotations

from gridedge.cext import _FORCE
from gridedge.cext import pmu_twin as twin
from gridedge.cext.pmu_twin import BAD, FULL, MORE, OTHER

if _FORCE:
    _impl, _reason = twin, "forced by GRIDEDGE_PURE_PYTHON"
else:
    try:
        from gridedge.cext import _pmu as _impl
        _reason = ""
    except Exception as exc:  # ImportError, or a numpy ABI mismatch in a stale build
        _impl, _reason = twin, f"compiled extension not importable: {type(exc).__name__}: {exc}"

IMPLEMENTATION = "python" if _impl is twin else "cython"
DataDecoder = _impl.DataDecoder


def describe() -> str:
    return "pmu kernel: cython" if IMPLEMENTATION == "cython" else f"pmu kernel: pure-python twin ({_reason})"


__all__ = ["DataDecoder", "IMPLEMENTATION", "describe", "twin", "MORE", "OTHER", "BAD", "FULL"]
