"""`gridedge baselines`: placebo-day accuracy of the baselines, on the gateway's history or on generated profiles.

    gridedge baselines                                 # generated profiles (edge/flex/synthetic.py), every method
    gridedge baselines --kind pv --sites 200 --seed 3
    gridedge baselines --config /etc/gridedge/gateway.toml      # the gateway's history and its configured methods
    gridedge baselines --history var/flex.sqlite --method x_of_y:x=4,y=5,adjustment=none

Prints, per method, the placebo days and ISPs used, the median absolute % error, the bias (median % error) and
the RRMSE (docs/flex.md, "Accuracy"); --json prints the same as JSON.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys

import numpy as np

from ..core import schema as s
from .accuracy import placebo
from .baselines import Baseline, BaselineError, make_baseline
from ..core.isp import DAY_NS, ISP_MINUTES, IspGrid, date_ns, day_start, is_weekend
from .settings import parse_window

DEFAULT_METHODS = ("x_of_y", "x_of_y:adjustment=additive", "x_of_y:adjustment=none",
                   "x_of_y:x=4,y=5,adjustment=none", "meter_before_after", "rolling_average", "nomination")


def parse_method(spec: str) -> Baseline:
    """"x_of_y:x=4,y=5,adjustment=none" -> a configured method (numbers parsed as int or float)."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BaselineError([s.Issue((), f"expected METHOD[:key=value,...], got {item!r} in {spec!r}")])
        params[key.strip()] = _value(value.strip())
    return make_baseline(name.strip(), params)


def _value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _window(text: str) -> tuple[int, int]:
    try:
        return parse_window(text)
    except s.Invalid as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _label(m: Baseline) -> str:
    defaults = type(m)().params
    diff = {k: v for k, v in m.params.items() if defaults.get(k) != v}
    return " ".join(f"{k}={v}" for k, v in diff.items()) or "(defaults)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gridedge baselines", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", help="gateway TOML: its flex history and each resource's configured method")
    src.add_argument("--history", help="a flex history file (flex.sqlite)")
    ap.add_argument("--resource", action="append", help="only these resources (history); repeatable")
    ap.add_argument("--kind", default="mixed", choices=("mixed", "residential", "commercial", "pv"),
                    help="generated profiles: site mix (default mixed)")
    ap.add_argument("--sites", type=int, default=50, help="generated profiles: number of sites (default 50)")
    ap.add_argument("--days", type=int, default=60, help="generated profiles: days (default 60)")
    ap.add_argument("--seed", type=int, default=0, help="generated profiles: seed (default 0)")
    ap.add_argument("--isp-min", type=int, default=None, choices=ISP_MINUTES, help="ISP length (default 15 or the config's)")
    ap.add_argument("--window", type=_window, default=None, help="UTC placebo window HH:MM-HH:MM (default 08:00-20:00)")
    ap.add_argument("--placebo-days", type=int, default=None, help="placebo days (default 10)")
    ap.add_argument("--method", action="append", help="METHOD[:key=value,...]; repeatable (default: a standard set)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    methods = []
    for spec in args.method or DEFAULT_METHODS:
        try:
            methods.append(parse_method(spec))
        except BaselineError as exc:
            print(f"gridedge baselines: --method {spec}: {exc}", file=sys.stderr)
            return 2
    isp_min, window, placebo_days, holidays = args.isp_min, args.window, args.placebo_days, frozenset()
    if args.config:
        from ..config import ConfigError, load_config

        try:
            cfg = load_config(args.config, check_files=False)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        fx = cfg.flex
        isp_min = isp_min or fx.isp_min
        window = window or fx.accuracy_window
        placebo_days = placebo_days or fx.placebo_days
        holidays = fx.holidays
        if not args.method:
            configured = [make_baseline(r.baseline_method, r.baseline_params) for r in fx.resources]
            methods = _unique(configured + methods)
        path = cfg.storage.dir / "flex.sqlite"
    else:
        path = args.history
    grid = IspGrid(isp_min or 15)
    window = window or (480, 1200)
    placebo_days = placebo_days or 10
    if placebo_days < 1 or args.sites < 1 or args.days < 2:
        print("gridedge baselines: --placebo-days and --sites must be >= 1, --days >= 2", file=sys.stderr)
        return 2
    if path is not None:
        loaded = _from_history(path, grid, args.resource, placebo_days, methods, holidays)
        if isinstance(loaded, str):
            print(f"gridedge baselines: {loaded}", file=sys.stderr)
            return 1
        hist, weekend, event, first, nominated, source = loaded
    else:
        from .synthetic import sites

        first_day = _dt.date(2026, 1, 5)
        hist = sites(args.sites, args.days, isp_min=grid.minutes, first_day=first_day, seed=args.seed, kind=args.kind)
        hist = hist * grid.hours
        first = date_ns(first_day)
        weekend = np.array([is_weekend(first + k * DAY_NS, holidays) for k in range(args.days)])
        event = np.zeros(hist.shape[:2], dtype=bool)
        nominated = None
        source = f"generated {args.kind} profiles, {args.sites} sites x {args.days} days, seed {args.seed}"
    s0, e = window[0] // grid.minutes, -(-window[1] // grid.minutes)
    results = placebo(hist, weekend, event, first, methods, window=(s0, e), placebo_days=placebo_days, grid=grid,
                      nominated=nominated)
    head = (f"placebo-day accuracy: {source}; {hist.shape[0]} resource(s), last {placebo_days} day(s), "
            f"window {window[0] // 60:02d}:{window[0] % 60:02d}-{window[1] // 60:02d}:{window[1] % 60:02d} UTC, "
            f"{grid.minutes}-min ISPs")
    if args.json:
        print(json.dumps({"source": source, "resources": int(hist.shape[0]), "placebo_days": placebo_days,
                          "isp_min": grid.minutes, "results": [r.to_json() for r in results]}, indent=1))
        return 0
    print(head)
    rows = [("method", "parameters", "days", "ISPs", "MdAPE %", "bias %", "RRMSE %")]
    for m, r in zip(methods, results):
        rows.append((r.method, _label(m), str(r.days), str(r.isps), _f(r.mdape_pct), _f(r.bias_pct),
                     _f(r.rrmse_pct) + (f"  ({r.reason})" if r.reason else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row[:6], widths)))
              + "  " + row[6].rjust(7))
    print("MdAPE: median |baseline - measured| / |measured|; bias: median (baseline - measured) / |measured| "
          "(+ = baseline above measured injection); RRMSE: RMS error / mean |measured|")
    return 0


def _from_history(path, grid: IspGrid, only, placebo_days: int, methods, holidays):
    from pathlib import Path

    from .history import History

    if not Path(path).is_file():
        return f"no history file {path}"
    h = History(path)
    try:
        span = h.span(grid)
        if span is None:
            return f"{path}: no {grid.minutes}-min ISP energies stored"
        resources = only or h.resources(grid)
        last_day = day_start(span[1])  # the newest (possibly partial) day is not a placebo day
        ndays = max(m.lookback_days for m in methods) + placebo_days
        first = last_day - ndays * DAY_NS
        hist = h.matrix(resources, first, ndays, grid)
        weekend = np.array([is_weekend(first + k * DAY_NS, holidays) for k in range(ndays)])
        event = h.event_days(resources, first, ndays)
        nominated = np.stack([h.nominations(resources, first + k * DAY_NS, grid)[0] for k in range(ndays)], axis=1)
    finally:
        h.close()
    return hist, weekend, event, first, nominated, f"history {path}"


def _unique(methods: list[Baseline]) -> list[Baseline]:
    seen, out = set(), []
    for m in methods:
        key = (m.id, tuple(sorted(m.params.items())))
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
