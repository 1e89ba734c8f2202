"""`python -m gridedge.hil` (also `gridedge hil`): run, check or list HIL scenarios (docs/hil.md)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .scenario import ScenarioError, load_scenario, resolve, shipped
from .scenario_run import RESULT_INVALID, main_run, rejudge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gridedge hil", description="The hardware-in-the-loop rig: run a scenario "
                                 "against a gateway and report pass or fail per check.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="build the bench, play the scenario, judge its checks, write the report")
    p.add_argument("scenario", help="a scenario file, or the name of a ready-made one (see `list`)")
    p.add_argument("--out", type=Path, help="directory of the run: report.html, report.json, raw.json, logs "
                                            "(default: hil-runs/<name>-<UTC time>)")
    p = sub.add_parser("check", help="validate scenario files and exit non-zero on any error")
    p.add_argument("scenario", nargs="+")
    p = sub.add_parser("report", help="judge a finished run again (its raw.json) and write its report anew, e.g. "
                                      "with other limits in the scenario")
    p.add_argument("scenario")
    p.add_argument("run_dir", type=Path)
    sub.add_parser("list", help="the ready-made scenarios")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for path in shipped():
            try:
                sc = load_scenario(path)
                print(f"{path.stem:28} {sc.duration_s / sc.speed:5.0f} s  {sc.name}")
            except ScenarioError as exc:
                print(f"{path.stem:28} INVALID: {exc.errors[0]}")
        return 0
    if args.cmd == "check":
        rc = 0
        for name in args.scenario:
            try:
                path = resolve(name)
                sc = load_scenario(path)
                print(f"{path}: OK ({len(sc.timeline)} timeline entries, {len(sc.faults)} faults, "
                      f"{len(sc.checks)} checks)")
            except ScenarioError as exc:
                print("\n".join(exc.errors), file=sys.stderr)
                rc = RESULT_INVALID
        return rc
    try:
        path = resolve(args.scenario)
        sc = load_scenario(path)
    except ScenarioError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return RESULT_INVALID
    if args.cmd == "report":
        return rejudge(sc, args.run_dir)
    out = args.out or Path("hil-runs") / f"{path.stem}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    print(f"hil: {sc.name}: {sc.duration_s:g} s of scenario time at {sc.speed:g}x; run directory {out}", flush=True)
    rc, _doc = main_run(sc, Path(out))
    return rc


if __name__ == "__main__":
    sys.exit(main())
