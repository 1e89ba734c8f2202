"""Verification sign conventions and pass/fail, activation windows, availability, and the step-test analysis
(on synthetic responses and on the rig's PV inverter plant model)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.flex.availability import BatteryState, InverterState, LoadState, PreLimit, availability
from gridedge.core.isp import NS_PER_S, IspGrid
from gridedge.flex.prequal import StepRecorder, analyse_step
from gridedge.flex.verification import Tolerance, delivered, judge, settle
from gridedge.flex.window import LATENCY_NS, ActivationWindow
from gridedge.hil.plant import PVInverterPlant

S = NS_PER_S
G = IspGrid(15)
T = 1_795_392_000 * S  # 2026-11-23T00:00Z


# ---------------------------------------------------------------- signs and pass/fail

def test_delivered_is_positive_in_the_requested_direction():
    # PV curtailed from 8000 to 4000 W for an ISP: injection fell by 1000 Wh -> down regulation delivered 1000
    assert float(delivered(-1, 2000.0, 1000.0)) == 1000.0
    # a load shed 500 W (injection rose from -1000 to -500 W for 15 min): up regulation delivered 125 Wh
    assert float(delivered(+1, -250.0, -125.0)) == 125.0
    # the wrong way counts against it
    assert float(delivered(-1, 2000.0, 2100.0)) == -100.0


def test_pass_band_and_overdelivery():
    tol = Tolerance(pct=10, w=40)  # band = max(10 % of requested, 40 W x 0.25 h = 10 Wh)
    assert judge(1000.0, 905.0, tol, 0.25) == (0.905, True)
    assert judge(1000.0, 895.0, tol, 0.25) == (0.895, False)
    assert judge(1000.0, 1500.0, tol, 0.25) == (1.5, True)
    assert judge(1000.0, 1500.0, Tolerance(10, 40, overdelivery_passes=False), 0.25) == (1.5, False)
    assert judge(0.0, 9.0, tol, 0.25) == (None, True)       # nothing requested, nothing (within 10 Wh) delivered
    assert judge(0.0, -11.0, tol, 0.25) == (None, False)


def test_settle_names_what_is_missing():
    v = settle(-1, 1000.0, 2000.0, 1000.0, Tolerance(), 0.25)
    assert (v.delivered_wh, v.delivery_ratio, v.passed, v.reason) == (1000.0, 1.0, True, None)
    v = settle(-1, 1000.0, None, 1000.0, Tolerance(), 0.25)
    assert v.passed is None and v.reason == "baseline energy not available"
    v = settle(-1, None, 2000.0, None, Tolerance(), 0.25)
    assert v.passed is None and v.reason == "measured energy not available"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from((-1, 1)), st.floats(-1e6, 1e6), st.floats(0, 100), st.floats(0, 1e4))
def test_nothing_activated_nothing_delivered_passes(sign, baseline, pct, w):
    """Property: measured == baseline (no response) and nothing requested: delivered 0, ratio None, pass."""
    v = settle(sign, 0.0, baseline, baseline, Tolerance(pct, w), 0.25)
    assert v.delivered_wh == 0.0 and v.delivery_ratio is None and v.passed is True


@settings(max_examples=200, deadline=None)
@given(st.sampled_from((-1, 1)), st.floats(-1e6, 1e6), st.floats(1.0, 1e6), st.floats(0, 50))
def test_no_response_to_a_request_fails(sign, baseline, requested, pct):
    v = settle(sign, requested, baseline, baseline, Tolerance(pct, 0.0), 0.25)
    assert v.delivered_wh == 0.0 and v.delivery_ratio == 0.0 and v.passed is False


# ---------------------------------------------------------------- activation windows

def test_requested_energy_per_isp():
    w = ActivationWindow("a1", "dso", ("pv1",), "down", T + 600 * S, T + 1800 * S, requested_w=4000.0)
    assert w.requested_wh(T, G, None) == pytest.approx(4000 * 300 / 3600)  # 5 of 15 min inside
    assert w.requested_wh(T + 900 * S, G, None) == pytest.approx(1000.0)
    per = ActivationWindow("a2", "tso", ("pv1",), "up", T, T + 1800 * S, requested_w=(100.0, 200.0))
    assert per.requested_wh(T + 900 * S, G, None) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="spans 3 ISPs"):
        ActivationWindow("a3", "tso", ("pv1",), "up", T, T + 1801 * S, requested_w=(1.0, 2.0)).check(G)


def test_activation_latency_is_aligned_away():
    """Defect 18: the edges of an activation asked for whole ISPs come late by the gateway's own latency; the
    settlement window moves them back to the boundary, so latency counts against delivery and makes no ISP."""
    late = ActivationWindow("a1", "dso", ("pv1",), "down", T + 30_000_000, T + 900 * S + 30_000_000, limit_w=1.0)
    assert (late.aligned(G).start_ns, late.aligned(G).end_ns) == (T, T + 900 * S)
    assert G.starts(late.aligned(G).start_ns, late.aligned(G).end_ns) == range(T, T + 900 * S, 900 * S)
    on_time = ActivationWindow("a2", "dso", ("pv1",), "down", T + 10 * S, T + 910 * S, requested_w=1.0)
    assert on_time.aligned(G) == on_time  # 10 s after the boundary is not latency: a request from then on
    brief = ActivationWindow("a3", "dso", ("pv1",), "down", T + 30_000_000, T + 500_000_000, requested_w=1.0)
    assert (brief.aligned(G).start_ns, brief.aligned(G).end_ns) == (T, T + 500_000_000)  # never empty


@settings(max_examples=300, deadline=None)
@given(st.sampled_from((1, 5, 15, 60)), st.integers(0, 10**13), st.integers(1, 10**13))
def test_alignment_moves_edges_back_by_less_than_the_latency(minutes, start, length):
    grid = IspGrid(minutes)
    w = ActivationWindow("a", "tso", ("r",), "up", T + start, T + start + length, requested_w=1.0)
    a = w.aligned(grid)
    allowance = min(LATENCY_NS, grid.ns // 50)
    assert a.start_ns < a.end_ns and a.aligned(grid) == a
    for old, new in ((w.start_ns, a.start_ns), (w.end_ns, a.end_ns)):
        assert new == old or (new % grid.ns == 0 and 0 < old - new < allowance)


def test_a_limit_requests_how_far_the_baseline_lies_beyond_it():
    cap = ActivationWindow("a1", "dso", ("pv1",), "down", T, T + 900 * S, limit_w=4000.0)
    assert cap.requested_wh(T, G, 2000.0) == pytest.approx(1000.0)    # baseline 8000 W, cap 4000 W
    assert cap.requested_wh(T, G, 500.0) == 0.0                       # baseline 2000 W is under the cap already
    assert cap.requested_wh(T, G, None) is None
    floor = ActivationWindow("a2", "dso", ("bat",), "up", T, T + 900 * S, limit_w=1000.0)
    assert floor.requested_wh(T, G, -250.0) == pytest.approx(500.0)  # from -1000 W to at least +1000 W
    assert cap.requested_w_at(T + 10 * S, G, 7000.0) == 3000.0 and cap.requested_w_at(T + 901 * S, G, 7000.0) == 0.0


@pytest.mark.parametrize("kw, message", [
    (dict(activation_id=""), "activation_id"), (dict(issuer="fsp"), "issuer"), (dict(resources=()), "resources"),
    (dict(resources=("a", "a")), "resources"), (dict(direction="left"), "direction"), (dict(end_ns=T), "end_ns"),
    (dict(requested_w=None), "exactly one"), (dict(limit_w=5.0), "exactly one"), (dict(requested_w=-1.0), "requested_w"),
    (dict(requested_w=math.nan), "requested_w"), (dict(requested_w=()), "requested_w"), (dict(start_ns=1.5), "start_ns"),
])
def test_activation_window_is_validated(kw, message):
    args = dict(activation_id="a", issuer="dso", resources=("r",), direction="up", start_ns=T, end_ns=T + S,
                requested_w=1.0)
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        ActivationWindow(**args)


def test_activation_window_json_round_trip():
    w = ActivationWindow("a", "aggregator", ("r1", "r2"), "up", T, T + 3600 * S, requested_w=(1.0, 2.0, 3.0, 4.0))
    assert ActivationWindow.from_json(w.to_json()) == w


# ---------------------------------------------------------------- availability

def test_inverter_headroom_and_curtailment():
    up, down, basis = availability({"pv": InverterState(w=4000, w_max=10000, limit_w=4000, available_w=7000)}, 3, 0.25)["pv"]
    assert (up.tolist(), down.tolist(), basis) == ([3000.0] * 3, [4000.0] * 3, "persistence")
    up, down, basis = availability({"pv": InverterState(w=5000, w_max=6000, expected_w=[8000, 3000])}, 2, 0.25)["pv"]
    assert (up.tolist(), down.tolist(), basis) == ([0.0, 0.0], [6000.0, 3000.0], "history")


def test_battery_energy_and_power_limits():
    bat = BatteryState(w=0, soc_pct=50, capacity_wh=10000, max_charge_w=5000, max_discharge_w=5000,
                       soc_min_pct=10, soc_max_pct=90, efficiency=1.0)
    up, down, _ = availability({"b": bat}, 2, 1.0)["b"]
    assert up.tolist() == [4000.0, 4000.0] and down.tolist() == [4000.0, 4000.0]  # 4 kWh above min / below max
    up, down, _ = availability({"b": bat}, 2, 0.25)["b"]
    assert up.tolist() == [5000.0, 5000.0]  # power-limited for a quarter hour
    # discharging 4000 W: after an hour it sits at the minimum and stops
    busy = BatteryState(w=4000, soc_pct=50, capacity_wh=10000, max_charge_w=5000, max_discharge_w=5000, efficiency=1.0)
    up, down, _ = availability({"b": busy}, 3, 1.0)["b"]
    assert up.tolist() == [0.0, 0.0, 0.0] and down.tolist() == [8000.0, 5000.0, 5000.0]


def test_load_flexibility():
    up, down, _ = availability({"l": LoadState(w=-1500, shed_w=2000, add_w=700)}, 2, 0.25)["l"]
    assert up.tolist() == [1500.0, 1500.0] and down.tolist() == [700.0, 700.0]


@settings(max_examples=150, deadline=None)
@given(st.floats(-5000, 5000), st.floats(0, 100), st.floats(1, 1e5), st.floats(1, 1e4), st.floats(1, 1e4),
       st.floats(0.5, 1), st.sampled_from((1 / 60, 0.25, 1.0)))
def test_battery_availability_is_never_negative_and_respects_power_limits(w, soc, cap, pc, pd, eta, hours):
    st_ = BatteryState(w, soc, cap, pc, pd, efficiency=eta)
    up, down, _ = availability({"b": st_}, 28, hours)["b"]
    assert (up >= 0).all() and (down >= 0).all()
    assert (up <= pd + max(0.0, -w) + 1e-6).all()  # from the present power to at most full discharge
    assert (down <= pc + max(0.0, w) + 1e-6).all()
    assert np.isfinite(up).all() and np.isfinite(down).all()


@settings(max_examples=200, deadline=None)
@given(st.permutations(["inv1/W", "inv1/WMaxLimPct", "inv1/WMaxLimPctEna"]),
       st.permutations(["inv1/W", "inv1/WMaxLimPct", "inv1/WMaxLimPctEna"]))
def test_the_level_before_a_limit_never_takes_a_reading_of_the_limited_poll(first, second):
    """Defect 21: what a curtailed inverter could give is its output before the limit; the poll that shows the
    limit already shows the output falling, in whatever order its samples come."""
    pre = PreLimit("inv1/W", "inv1/WMaxLimPct", "inv1/WMaxLimPctEna")
    polls = [(1, {"inv1/W": 8000.0, "inv1/WMaxLimPct": 100.0, "inv1/WMaxLimPctEna": 0}),
             (2, {"inv1/W": 7900.0, "inv1/WMaxLimPct": 100.0, "inv1/WMaxLimPctEna": 0}),
             (3, {"inv1/W": 7000.0, "inv1/WMaxLimPct": 40.0, "inv1/WMaxLimPctEna": 1}),
             (4, {"inv1/W": 4000.0, "inv1/WMaxLimPct": 40.0, "inv1/WMaxLimPctEna": 1})]
    for (ts, values), order in zip(polls, (first, first, second, second)):
        for point in order:
            pre.feed(point, ts, values[point])
    assert pre.limited() and pre.level in (8000.0, 7900.0)  # 7900 once a limit reading after it confirmed it
    pre.feed("inv1/WMaxLimPctEna", 5, None)                 # an invalid reading confirms nothing
    assert pre.level in (8000.0, 7900.0)


# ---------------------------------------------------------------- step tests

def test_step_analysis_of_a_known_ramp():
    # 2 s dead time, then a ramp of 1000 W/s from 0 to 5000 W, sampled at 10 Hz, then flat
    t = np.arange(-1.0, 20.0, 0.1)
    w = np.clip((t - 2.0) * 1000.0, 0.0, 5000.0)
    r = analyse_step(t, w, 0.0, 5000.0)
    assert r.delay_s == pytest.approx(2.25, abs=1e-6)         # 5 % of 5000 W = 250 W after 2 s
    assert r.t10_s == pytest.approx(2.5) and r.t90_s == pytest.approx(6.5)
    assert r.ramp_w_per_s == pytest.approx(1000.0)
    assert r.settled and r.full_activation_time_s == pytest.approx(6.8, abs=1e-6)  # within 250 W of 5000
    assert r.accuracy_w == pytest.approx(np.mean(np.abs(w[t >= 6.8 - 1e-9] - 5000)), abs=1e-6)
    assert r.overshoot_pct == 0.0


def test_step_analysis_down_step_with_overshoot_and_no_settling():
    t = np.arange(0.0, 10.0, 1.0)
    w = np.array([8000, 6000, 3500, 3600, 4000, 4000, 4000, 4000, 4000, 4600.0])
    r = analyse_step(t, w, 8000.0, 4000.0)
    assert r.step_w == -4000.0 and r.overshoot_pct == pytest.approx(12.5)
    assert not r.settled and r.full_activation_time_s is None  # the last sample is outside the band


def test_step_crossings_before_the_first_sample_are_interpolated_from_the_step():
    """Defect 20: a battery ramping at 5000 W/s from the step on, first sampled at 0.367 s (already past 5 % and
    10 %): the response is at before_w at the step (t = 0), so those crossings lie on the line from there."""
    t = np.array([-1.0, -0.5, 0.367, 0.5, 0.7, 0.9, 1.5, 2.0])
    w = np.clip(t * 5000.0, 0.0, 4000.0)
    r = analyse_step(t, w, 0.0, 4000.0)
    assert r.delay_s == pytest.approx(0.04) and r.t10_s == pytest.approx(0.08)  # 200 W and 400 W at 5000 W/s
    assert r.t90_s == pytest.approx(0.74)                    # between 3500 W at 0.7 s and 4000 W at 0.9 s
    assert r.ramp_w_per_s <= 5000.0 and r.samples == 6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.001, 30.0), min_size=2, max_size=40, unique=True), st.floats(100.0, 10000.0),
       st.floats(0.0, 5.0), st.sampled_from((-1.0, 1.0)))
def test_step_crossings_are_ordered_and_never_before_the_step(times, ramp, dead_s, sign):
    t = np.sort(np.asarray(times))
    w = 1000.0 + sign * np.clip((t - dead_s) * ramp, 0.0, 4000.0)
    r = analyse_step(t, w, 1000.0, 1000.0 + sign * 4000.0)
    crossings = [c for c in (r.delay_s, r.t10_s, r.t90_s) if c is not None]
    assert crossings == sorted(crossings) and all(0.0 <= c <= t[-1] for c in crossings)
    if r.t90_s is not None:  # a linear ramp sampled coarsely: interpolation never makes it steeper than it is
        assert r.ramp_w_per_s <= ramp * (1 + 1e-9)


def test_step_analysis_rejects_bad_input():
    with pytest.raises(ValueError, match="zero"):
        analyse_step([0, 1], [0, 1], 5.0, 5.0)
    with pytest.raises(ValueError, match="at least 2"):
        analyse_step([-1, 0.5], [0, 1], 0.0, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        analyse_step([0, 1, 2], [0, 1], 0.0, 1.0)


def test_step_test_on_the_plant_model_measures_its_ramp():
    """The rig's inverter ramps at 10 %/s of WMax; the analysis finds that ramp and a settled response."""
    plant = PVInverterPlant(w_max=10000.0, pv=8000.0, ramp_pct_per_s=10.0)
    rec = StepRecorder("t1", "pv1", "inv1/W", step_ns=T, target_w=4000.0, duration_s=30.0)
    t = T - 10 * S
    while t <= T + 30 * S:
        if t == T:
            plant.write(WMaxLimPct=40.0, WMaxLimPctEna=1)
        plant.step(0.1)
        rec.feed(t, plant.W)
        t += S // 10
    r = rec.analyse()
    assert r.before_w == pytest.approx(8000.0) and r.step_w == pytest.approx(-4000.0)
    assert r.ramp_w_per_s == pytest.approx(1000.0, rel=0.03)
    assert r.settled and r.full_activation_time_s == pytest.approx(3.8, abs=0.15)
    assert r.accuracy_pct < 0.5  # after settling it holds the set-point (the tail of the ramp in the band)
