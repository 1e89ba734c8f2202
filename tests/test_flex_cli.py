"""`gridedge baselines` as an operator runs it: generated profiles, a gateway's history, bad arguments."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.flex.baselines import METHODS, BaselineError
from gridedge.flex.history import History
from gridedge.core.isp import DAY_NS, IspGrid, date_ns
from gridedge.flex.metering import IntervalEnergy
from gridedge.flex.report import parse_method
from gridedge.flex.synthetic import sites

GRIDEDGE = [sys.executable, "-m", "gridedge", "baselines"]


def run(*args):
    return subprocess.run(GRIDEDGE + list(args), capture_output=True, text=True, timeout=60)


def test_generated_profiles_table():
    res = run("--sites", "8", "--days", "25", "--placebo-days", "3", "--kind", "commercial")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "8 resource(s), last 3 day(s), window 08:00-20:00 UTC, 15-min ISPs" in lines[0]
    assert lines[1].split()[:4] == ["method", "parameters", "days", "ISPs"]
    x_of_y = lines[2].split()
    assert x_of_y[0] == "x_of_y" and x_of_y[2] == "3" and float(x_of_y[-1]) > 0  # RRMSE of noisy profiles
    assert any(line.startswith("nomination") and "no nominations stored" in line for line in lines)


def test_history_file_json(tmp_path):
    grid = IspGrid(15)
    first = date_ns(dt.date(2026, 1, 5))
    prof = sites(3, 20, seed=4, kind="residential") * grid.hours
    h = History(tmp_path / "flex.sqlite")
    h.add(IntervalEnergy(f"r{i}", first + d * DAY_NS + k * grid.ns, 900, float(prof[i, d, k]), "good", 1.0, "register")
          for i in range(3) for d in range(20) for k in range(96))
    h.close()
    res = run("--history", str(tmp_path / "flex.sqlite"), "--placebo-days", "4", "--json",
              "--method", "x_of_y:lookback_days=14", "--method", "meter_before_after:isps=2")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["resources"] == 3 and doc["placebo_days"] == 4
    a, b = doc["results"]
    assert (a["method"], a["params"]["lookback_days"], b["params"]["isps"]) == ("x_of_y", 14, 2)
    assert a["days"] == 4 and a["isps"] > 0 and a["mdape_pct"] > 0


def test_bad_arguments_are_named():
    res = run("--method", "x_of_y:x=20,y=5")
    assert res.returncode == 2 and "--method x_of_y:x=20,y=5: x: must be <= y (5), got 20" in res.stderr
    res = run("--method", "median")
    assert res.returncode == 2 and "unknown baseline method" in res.stderr
    res = run("--window", "9-17")
    assert res.returncode == 2 and 'must be a UTC time window like "08:00-20:00"' in res.stderr
    res = run("--history", "/nonexistent/flex.sqlite")
    assert res.returncode == 1 and "no history file /nonexistent/flex.sqlite" in res.stderr
    assert "Traceback" not in res.stderr


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.builds(lambda m, kv: m + ":" + kv, st.sampled_from(sorted(METHODS) + ["x"]),
                                        st.text(alphabet="xyzadjustmntcap_=,.0123456789-", max_size=40)))
def test_fuzz_method_specs(spec):
    """--method parsing: a configured method or a BaselineError naming the fault, nothing else."""
    try:
        m = parse_method(spec)
    except BaselineError as exc:
        assert str(exc)
    else:
        assert m.id in METHODS
