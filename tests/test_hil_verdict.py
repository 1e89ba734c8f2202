"""Verdicts from a recording, and the report around them: each check's figure, accuracy, pass band and verdict on
recordings made here with known answers (a ramp of exactly 1000 W/s, a steady state 50 W off, a seq missing), so
that a check that cannot fail would show. The report is written with plots, and without them when matplotlib is
missing (simulated by hiding the module: it is installed here)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from gridedge.hil.report import write_report
from gridedge.hil.scenario import parse_scenario
from gridedge.hil.scenario_run import raw_sha256
from gridedge.hil.verdict import judge

S = 10**9
T0 = 1_800_000_000 * S


def scenario(*checks, faults=()):
    return parse_scenario({
        "scenario": {"name": "synthetic", "duration": 30},
        "devices": [{"id": "inv1", "kind": "inverter"}, {"id": "m1", "kind": "meter", "measures": ["inv1"]}],
        "timeline": [{"at": 2, "id": "lim", "action": "limit_active_power", "limit_pct": 40, "duration_s": 20}],
        "faults": list(faults), "checks": list(checks)}, "synthetic.toml")


def recording(*, ramp_w_per_s=1000.0, steady_w=4000.0, release_at_s=None, missing_seq=None, meter_writes=0):
    """inv1 at 8 kW (8 kW available); the 40 % limit (4 kW) is due at t=2 s, written at 2.3 s, P ramps down from
    2.5 s at ramp_w_per_s to steady_w; held until release_at_s (default: the activation's end at 22 s)."""
    t = np.arange(0, 30, 0.1)
    p = np.where(t < 2.5, 8000.0, np.maximum(steady_w, 8000.0 - ramp_w_per_s * (t - 2.5)))
    release = release_at_s if release_at_s is not None else 22.0
    held = (t >= 2.3) & (t < release)
    p = np.where(t >= release, 8000.0, p)
    ns = [T0 + int(round(x * 10)) * S // 10 for x in t]
    samples = {"t": ns, "W": list(p), "VAr": [0.0] * len(t), "v_pu": [1.0 + 0.00001 * x for x in p],
               "hz": [50.0] * len(t), "avail_w": [8000.0] * len(t),
               "setpoint_w": [4000.0 if h else None for h in held], "controlled": [bool(h) for h in held],
               "soc_pct": [None] * len(t)}
    seqs = [s for s in range(10) if s != missing_seq]
    doc = {"schema": "gridedge.command/2", "cmd_id": "lim-x-0", "type": "limit_active_power", "iss": "dso",
           "params": {"limit_pct": 40, "duration_s": 20}}
    return {
        "scenario": {"name": "synthetic", "source": "synthetic.toml", "sha256": "0" * 64, "speed": 1.0,
                     "duration_s": 30.0, "description": ""},
        "rig": {"version": "0.1.0", "python": "3", "run": "x"},
        "gateway": {"id": "gw", "mode": "gridedge", "version": "0.1.0", "boot_ids": ["b1"]},
        "t0": T0, "lag_s": 0.0, "late_events_s": 0.0,
        "devices": {"inv1": {"kind": "inverter", "w_max": 10000.0, "node": 1, "writable": True, "simulated": True},
                    "m1": {"kind": "meter", "w_max": None, "node": 1, "writable": False, "simulated": True}},
        "samples": {"inv1": samples},
        "writes": {"inv1": [{"t": T0 + 23 * S // 10, "points": {"WMaxLimPct": 40.0, "WMaxLimPctEna": 1}}]},
        "attempts": {"inv1": [], "m1": [{"t": T0 + 5 * S, "address": 0, "count": 2, "refused": True}] * meter_writes},
        "commands": [{"entry": "lim", "cmd_id": "lim-x-0", "type": "limit_active_power", "issuer": "dso",
                      "device": None, "devices": ["inv1"], "doc": doc, "t": T0 + 2 * S, "due": T0 + 2 * S,
                      "at_s": 2.0, "info": "INFO 6", "text": ""}],
        "notes": [], "phases": [{"t": T0, "name": "timeline"}, {"t": T0 + 30 * S, "name": "end"}],
        "faults": [{"id": "cut", "kind": "uplink_down", "at_s": 10.0, "t_on": T0 + 10 * S, "t_off": T0 + 20 * S,
                    "device": None, "target": None}],
        "results": [{"t": T0 + 2 * S + 50_000_000, "cmd_id": "lim-x-0", "status": "accepted", "reason": None,
                     "state": "validated", "backfill": False, "claimed": None},
                    {"t": T0 + 2 * S + 400_000_000, "cmd_id": "lim-x-0", "status": "active", "reason": None,
                     "state": "active", "backfill": False, "claimed": None},
                    {"t": T0 + 22 * S, "cmd_id": "lim-x-0", "status": "completed", "reason": None,
                     "state": "completed", "backfill": False, "claimed": None}],
        "states": [{"t": T0, "status": "online", "will": False, "version": "0.1.0", "boot_id": "b1", "next_seq": {}},
                   {"t": T0 + 29 * S, "status": "offline", "will": False, "version": "0.1.0", "boot_id": "b1",
                    "next_seq": {"telemetry": 10, "result": 3}}],
        "records": {}, "telemetry": {},
        "latency": [{"t": T0 + i * S + 200_000_000, "dev": "inv1", "t_read": T0 + i * S, "backfill": False}
                    for i in range(30)],
        "streams": {"telemetry": {"first": 0, "last": max(seqs), "received": len(seqs), "duplicates": 0,
                                  "missing": [missing_seq] if missing_seq is not None else [],
                                  "n_missing": int(missing_seq is not None), "out_of_order": 0, "reused": []},
                    "result": {"first": 0, "last": 2, "received": 3, "duplicates": 0, "missing": [], "n_missing": 0,
                               "out_of_order": 0, "reused": []}},
        "topics": {"telemetry": 9, "result": 3},
    }


def one(check: dict, rec: dict | None = None, **kw):
    (v,) = judge(scenario(check, faults=kw.pop("faults", ())), rec or recording(**kw))
    return v


ACT = {"command": "lim", "device": "inv1"}


def test_activation_delay_is_from_due_to_the_first_write_at_the_device():
    v = one({"id": "A", "kind": "activation_delay", **ACT, "max_s": 0.5})
    assert (v.verdict, v.figure, v.initial, v.target) == ("pass", pytest.approx(0.3), 8000.0, 4000.0)
    assert v.band == (0.0, pytest.approx(0.6))              # the limit widened by the sampling period
    assert one({"id": "A", "kind": "activation_delay", **ACT, "max_s": 0.1}).verdict == "fail"


def test_ramp_rate_measured_between_10_and_90_percent_of_the_step():
    check = {"id": "R", "kind": "ramp_rate", **ACT, "min_w_per_s": 900}
    v = one(check)
    assert v.verdict == "pass" and v.figure == pytest.approx(1000, rel=0.04)
    assert v.accuracy == pytest.approx(v.figure * 0.2 / 3.2, rel=0.05)
    slow = one(check, ramp_w_per_s=300.0)                   # the misbehaving gateway's ramp
    assert slow.verdict == "fail" and slow.figure == pytest.approx(300, rel=0.04)
    slower = one(check, ramp_w_per_s=100.0)                 # not at 90 % when the activation ends
    assert slower.verdict == "fail" and slower.figure == pytest.approx(100, rel=0.02)
    assert "never reached 90 %" in slower.reason
    too_fast = one({"id": "R", "kind": "ramp_rate", **ACT, "max_w_per_s": 500})
    assert too_fast.verdict == "fail"


def test_response_time_and_setpoint_accuracy():
    v = one({"id": "T", "kind": "response_time", **ACT, "max_s": 5.0})
    assert v.verdict == "pass" and v.figure == pytest.approx(0.5 + 3.6, abs=0.11)
    ok = one({"id": "P", "kind": "setpoint_accuracy", **ACT, "settle_s": 6, "tolerance_w": 100}, steady_w=4050.0)
    assert ok.verdict == "pass" and ok.figure == pytest.approx(50) and ok.steady == pytest.approx(4050)
    tight = one({"id": "P", "kind": "setpoint_accuracy", **ACT, "settle_s": 6, "tolerance_w": 20}, steady_w=4050.0)
    assert tight.verdict == "fail" and tight.band == (0.0, 21.0)


def test_delivery_against_the_plants_available_power():
    v = one({"id": "D", "kind": "delivery", **ACT, "settle_s": 6}, steady_w=4200.0)
    assert v.verdict == "pass" and v.figure == pytest.approx(3800 / 4000, rel=0.01)
    assert v.data["direction"] == "down" and v.data["requested_wh"] > 0
    short = one({"id": "D", "kind": "delivery", **ACT, "settle_s": 6, "min_ratio": 0.99}, steady_w=4200.0)
    assert short.verdict == "fail"


def test_failsafe_reversion_and_recovery_against_the_fault():
    fault = [{"at": 10, "for": 10, "id": "cut", "kind": "uplink_down"}]
    check = {"id": "F", "kind": "failsafe_reversion", "fault": "cut", "device": "inv1", "min_s": 5, "max_s": 6}
    v = one(check, faults=fault, release_at_s=15.2)
    assert v.verdict == "pass" and v.figure == pytest.approx(5.2, abs=0.11)
    assert one(check, faults=fault, release_at_s=13.0).verdict == "fail"       # released too early
    assert one(check, faults=fault, release_at_s=29.9).verdict == "fail"       # too late
    never = one(check, faults=fault, release_at_s=40)
    assert never.verdict == "fail" and "still held" in never.reason
    rec = one({"id": "V", "kind": "recovery", "fault": "cut", "max_s": 2}, faults=fault)
    assert rec.verdict == "pass" and rec.figure == pytest.approx(1.2)


def test_completeness_counts_missing_seqs_and_the_unsent_tail():
    v = one({"id": "C", "kind": "completeness"})
    assert v.verdict == "pass" and v.figure == 100.0
    gap = one({"id": "C", "kind": "completeness"}, missing_seq=4)
    assert gap.verdict == "fail" and gap.figure == pytest.approx(90.0) and "telemetry: 1 of 10 missing" in gap.reason
    rec = recording()
    rec["states"][-1]["next_seq"]["telemetry"] = 12                       # issued two more than arrived
    tail = one({"id": "C", "kind": "completeness"}, rec)
    assert tail.verdict == "fail" and "telemetry: 2 of 12 missing" in tail.reason


def test_no_writes_statuses_latency_and_voltage():
    assert one({"id": "N", "kind": "no_writes"}).verdict == "pass"
    w = one({"id": "N", "kind": "no_writes"}, meter_writes=2)
    assert w.verdict == "fail" and w.figure == 2 and w.data["devices"] == {"m1": 2}
    st = one({"id": "S", "kind": "statuses", "command": "lim", "expect": ["accepted", "active", "completed"]})
    assert st.verdict == "pass" and st.figure == "accepted -> active -> completed"
    lat = one({"id": "L", "kind": "telemetry_latency", "max_s": 0.1})
    assert lat.verdict == "fail" and lat.figure == pytest.approx(0.2) and lat.data["n"] == 14  # fault +5 s left out
    cmd = one({"id": "K", "kind": "command_latency", "status": "active", "max_s": 0.5})
    assert cmd.verdict == "pass" and cmd.figure == pytest.approx(0.4)
    v = one({"id": "U", "kind": "voltage", "device": "inv1", "min_pu": 0.95, "max_pu": 1.05})
    assert v.verdict == "fail" and v.figure == pytest.approx(1.08)


def test_device_setpoint_in_force_over_a_window():
    v = one({"id": "Z", "kind": "device_setpoint", "device": "inv1", "from": 5, "to": 20, "expect_pct": 40})
    assert v.verdict == "pass" and v.figure == pytest.approx(40)
    none = one({"id": "Z", "kind": "device_setpoint", "device": "inv1", "from": 5, "to": 20})
    assert none.verdict == "fail" and none.figure == 100.0


def test_report_with_plots_json_and_hash(tmp_path):
    sc = scenario({"id": "R", "kind": "ramp_rate", **ACT, "min_w_per_s": 900},
                  {"id": "N", "kind": "no_writes"})
    rec = recording(meter_writes=1)
    verdicts = judge(sc, rec)
    lines = []
    doc = write_report(sc, rec, verdicts, tmp_path, say=lines.append)
    assert doc["summary"] == {"verdict": "fail", "pass": 1, "fail": 1, "n/a": 0}
    assert doc["raw"]["sha256"] == raw_sha256(json.loads((tmp_path / "raw.json").read_text()))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [v["id"] for v in saved["verdicts"]] == ["R", "N"] and saved["verdicts"][0]["band"][0] is not None
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "FAIL" in html
    assert any(line.startswith("  FAIL N:") for line in lines) and lines[-1].startswith("verdict: FAIL")


def test_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # not installed (it is here: hidden)
    sc = scenario({"id": "N", "kind": "no_writes"})
    lines = []
    write_report(sc, recording(), judge(sc, recording()), tmp_path, say=lines.append)
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png" not in html and "Plots left out: matplotlib is not installed" in html
    assert "report without plots: matplotlib is not installed (pip install &#x27;gridedge[hil]&#x27;)" not in lines
    assert any("report without plots" in line for line in lines)


def test_outside_strings_are_escaped_in_the_html(tmp_path):
    sc = scenario({"id": "S", "kind": "statuses", "command": "lim", "expect": ["accepted"]})
    rec = recording()
    rec["results"][0]["reason"] = "<script>alert(1)</script>"
    write_report(sc, rec, judge(sc, rec), tmp_path, say=lambda _l: None)
    html = (tmp_path / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_records_check_counts_only_records_that_carry_the_fields_it_names():
    """INFO 7 is 'activated power and baseline in real time': a verification record whose baseline_w is null must
    not count, or a gateway that never reports its baseline passes."""
    rec = recording()
    doc = {"measured_w": 4000.0, "baseline_w": None, "activated_w": None}
    rec["records"] = {"verification": [{"t": T0 + k * S, "backfill": False, "doc": dict(doc)} for k in range(4, 20, 2)]}
    rec["records"]["verification"][-1]["doc"].update(baseline_w=8000.0, activated_w=4000.0)
    check = {"id": "INFO7", "kind": "records", "record": "verification", "min_count": 5,
             "fields": ["baseline_w", "activated_w"]}
    v = judge(scenario(check), rec)[0]
    assert v.verdict == "fail" and v.figure == 1.0 and v.data["lacking"] == 7, v.doc()
    assert "7 lacked baseline_w, activated_w" in v.reason
    assert judge(scenario(dict(check, fields=["measured_w"])), rec)[0].verdict == "pass"


def test_no_writes_watches_a_real_device_through_the_relay_in_front_of_it():
    rec = recording()
    rec["devices"]["meter2"] = {"kind": "real", "w_max": None, "node": None, "writable": False, "simulated": False,
                                "watched": True}
    rec["attempts"]["meter2"] = [{"t": T0 + 6 * S, "address": 40, "count": 2, "refused": None}]
    sc = parse_scenario({
        "scenario": {"name": "real", "duration": 30},
        "devices": [{"id": "meter2", "kind": "real", "relay": True,
                     "gateway": {"driver": "modbus_tcp", "host": "192.0.2.7", "map": "eastron_sdm630"}}],
        "checks": [{"id": "W", "kind": "no_writes", "devices": ["meter2"]}]}, "real.toml")
    v = judge(sc, rec)[0]
    assert v.verdict == "fail" and v.figure == 1.0, v.doc()
    rec["devices"]["meter2"]["watched"] = False                   # no relay: the rig cannot see its writes
    assert judge(sc, rec)[0].verdict == "n/a"
