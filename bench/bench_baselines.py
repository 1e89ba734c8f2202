"""Times every baseline for 1,000 meters x 96 ISPs x 10 days of history (one event window, the whole batch at
once); prints a table for docs/PERFORMANCE.md.

Run: .venv/bin/python bench/bench_baselines.py [--meters 1000] [--days 10] [--repeats 50]
Input: generated mixed profiles (edge/flex/synthetic.py, seed 1), an event 14:00-16:00 UTC with the same-day
adjustment window before it, nominations for every ISP. Times are the compute() calls only (arrays in memory);
reading the history from SQLite is timed separately, for 10 resources (what one gateway holds), and so is
FlexEngine.tick() in a 2-hour run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np

from gridedge.flex import ActivationWindow, FlexEngine, parse_flex
from gridedge.flex.baselines import BaselineInput, make_baseline
from gridedge.flex.history import History
from gridedge.core.isp import DAY_NS, NS_PER_S, IspGrid, date_ns, is_weekend
from gridedge.flex.metering import IntervalEnergy
from gridedge.flex.synthetic import sites
from gridedge.core.model import Sample
from measure import describe, median_ns  # bench/measure.py: the script's folder is on sys.path

METHODS = [("x_of_y", {}), ("x_of_y", {"x": 4, "y": 5, "adjustment": "additive"}), ("meter_before_after", {}),
           ("meter_before_after", {"mode": "interpolate"}), ("nomination", {}), ("rolling_average", {})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    grid = IspGrid(15)
    first_day = dt.date(2026, 1, 5)
    wh = sites(args.meters, args.days + 1, first_day=first_day, seed=1) * grid.hours  # (n, D + 1, 96)
    first = date_ns(first_day)
    target = first + args.days * DAY_NS
    weekend = np.array([is_weekend(first + k * DAY_NS) for k in range(args.days)])
    today = wh[:, -1].copy()
    inp = BaselineInput(wh[:, :-1], weekend, np.zeros((args.meters, args.days), bool), today, target,
                        is_weekend(target), 56, 64, grid, nominated=today * 1.01,
                        nomination_ids=[["n1"]] * args.meters)
    print(f"machine: {describe()}; numpy {np.__version__}")
    print(f"{args.meters} meters x {grid.per_day} ISPs x {args.days} days of history; median of {args.repeats}\n")
    print("| method | parameters | ms |")
    print("|---|---|---:|")
    methods = [make_baseline(m, p) for m, p in METHODS]
    for (mid, params), m in zip(METHODS, methods):
        t = median_ns(lambda: m.compute(inp), args.repeats) / 1e6
        label = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        print(f"| {mid} | {label} | {t:.2f} |")
    total = median_ns(lambda: [m.compute(inp) for m in methods], args.repeats) / 1e6
    print(f"| **all six** | | **{total:.2f}** |")
    res = methods[0].compute(inp)
    t_desc = median_ns(lambda: [res.descriptor(i) for i in range(args.meters)], max(5, args.repeats // 10)) / 1e6
    print(f"\ninputs/descriptor JSON for all {args.meters} meters (only for records published): {t_desc:.1f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        h = History(Path(tmp) / "flex.sqlite")
        n = 10
        h.add(IntervalEnergy(f"r{i}", first + d * DAY_NS + k * grid.ns, 900, float(wh[i, d, k]), "good", 1.0, "register")
              for i in range(n) for d in range(args.days + 1) for k in range(grid.per_day))
        resources = [f"r{i}" for i in range(n)]
        t_read = median_ns(lambda: h.matrix(resources, first, args.days + 1, grid), max(5, args.repeats // 5)) / 1e6
        h.close()
    print(f"history read (SQLite, {n} resources x {args.days + 1} days): {t_read:.1f} ms")
    engine_ticks(grid)


def engine_ticks(grid: IspGrid, n: int = 10, seconds: int = 7200) -> None:
    """FlexEngine.tick() as the agent calls it: n inverter resources with 45 days of history, samples at 1 Hz,
    one pool activation of an hour; the first tick runs the daily accuracy evaluation."""
    day = date_ns(dt.date(2026, 11, 26))
    cfg = parse_flex({"resources": [{"id": f"r{i}", "kind": "inverter", "energy_export": f"d{i}/TotWhExp",
                                     "power": f"d{i}/W", "w_max": 10000.0} for i in range(n)]})
    wh = sites(n, 45, seed=3, kind="pv") * grid.hours
    with tempfile.TemporaryDirectory() as tmp:
        t = day + 10 * 3600 * NS_PER_S
        eng = FlexEngine(cfg, tmp, now_ns=t)
        eng.history.add(IntervalEnergy(f"r{i}", day - (45 - d) * DAY_NS + k * grid.ns, 900, float(wh[i, d, k]), "good",
                                       1.0, "register") for i in range(n) for d in range(45) for k in range(grid.per_day))
        eng.activation(ActivationWindow("a", "dso", tuple(f"r{i}" for i in range(n)), "down", t + 600 * NS_PER_S,
                                        t + 4200 * NS_PER_S, limit_w=20000.0))
        energy, ticks = 0.0, []
        for _ in range(seconds):
            energy += 5000 / 3600
            eng.feed([Sample(f"d{i}/W", t, 5000.0) for i in range(n)] +
                     [Sample(f"d{i}/TotWhExp", t, energy) for i in range(n)])
            t0 = time.perf_counter_ns()
            eng.tick(t)
            ticks.append(time.perf_counter_ns() - t0)
            t += NS_PER_S
        eng.close()
    ms = np.array(ticks) / 1e6
    print(f"engine tick ({n} resources, 1 Hz, {seconds} s, one activation): median {np.median(ms):.3f} ms, "
          f"p99 {np.percentile(ms, 99):.2f} ms, max {ms.max():.0f} ms (the first tick: daily accuracy)")


if __name__ == "__main__":
    main()
