"""Times one control cycle() for N devices, compiled Cython vs the numpy twin; prints a table for docs/PERFORMANCE.md.

Run: .venv/bin/python bench/bench_kernels.py [--repeats 200]
Times include the per-call validation at the Python boundary (what the agent pays each cycle).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from gridedge.cext import twin
from gridedge.cext.twin import CycleInputs, CycleParams, QMode
from measure import describe, median_ns  # bench/measure.py: the script's folder is on sys.path

try:
    from gridedge.cext import _kernels as compiled
except Exception as exc:  # noqa: BLE001
    compiled = None
    print(f"compiled extension not importable ({exc}); timing the twin only", file=sys.stderr)


def make_case(n: int, rng: np.random.Generator):
    modes = np.array(list(QMode))[rng.integers(0, len(QMode), n)]
    params = CycleParams.ieee1547_cat_b(n, q_mode=modes, pf_set=0.95, q_set=0.1, p_priority=rng.random(n) < 0.5,
                                        ramp_up_p=0.2, ramp_dn_p=1.0, ramp_q=0.5)
    inputs = CycleInputs(v=rng.uniform(0.9, 1.1, n), f=rng.uniform(59.8, 60.2, n), p_avail=rng.uniform(0, 1, n),
                         p_limit=rng.uniform(0.3, 1, n), p_prev=rng.uniform(0, 1, n), q_prev=rng.uniform(-0.4, 0.4, n))
    return params, inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(1547)
    print(f"machine: {describe()}; numpy {np.__version__}")
    print(f"cycle(), median of {args.repeats} calls, dt = 0.1 s, validation included\n")
    print("| N devices | cython (us) | twin (us) | twin / cython |")
    print("|---:|---:|---:|---:|")
    for n in (1, 10, 100, 1000):
        params, inputs = make_case(n, rng)
        out_p, out_q = np.empty(n), np.empty(n)
        t_twin = median_ns(lambda: twin.cycle(params, inputs, 0.1, out_p, out_q), args.repeats) / 1e3
        if compiled is not None:
            t_cy = median_ns(lambda: compiled.cycle(params, inputs, 0.1, out_p, out_q), args.repeats) / 1e3
            print(f"| {n} | {t_cy:.1f} | {t_twin:.1f} | {t_twin / t_cy:.1f}x |")
        else:
            print(f"| {n} | n/a | {t_twin:.1f} | n/a |")


if __name__ == "__main__":
    main()
