"""Baselines: hand-computable known answers for each method, properties, the registry, accuracy metrics."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gridedge.core import schema as s
from gridedge.flex.accuracy import metrics, placebo
from gridedge.flex.baselines import (METHODS, Baseline, BaselineError, BaselineInput, BaselineResult, make_baseline,
                                     register)
from gridedge.core.isp import DAY_NS, IspGrid, date_ns, is_weekend
from gridedge.flex.verification import Tolerance, delivered, judge
from gridedge.flex.synthetic import sites

G60 = IspGrid(60)  # 24 ISPs a day keeps hand computations small
TARGET = date_ns(dt.date(2026, 11, 23))  # Monday


def make_input(history, today=None, *, start=14, end=16, event=None, weekend=None, target_weekend=None,
               grid=G60, nominated=None):
    history = np.asarray(history, dtype=float)
    if history.ndim == 2:
        history = history[None]
    n, d, _ = history.shape
    days = [TARGET - (d - k) * DAY_NS for k in range(d)]
    wk = np.array([is_weekend(x) for x in days]) if weekend is None else np.asarray(weekend)
    ev = np.zeros((n, d), bool) if event is None else np.asarray(event)
    td = np.full((n, grid.per_day), np.nan) if today is None else np.asarray(today, dtype=float).reshape(n, -1)
    tw = is_weekend(TARGET) if target_weekend is None else target_weekend
    return BaselineInput(history, wk, ev, td, TARGET, tw, start, end, grid, nominated)


def flat_days(values):
    """One day per value: every ISP of day k equals values[k]."""
    return np.repeat(np.asarray(values, dtype=float)[:, None], 24, axis=1)


# ---------------------------------------------------------------- X-of-Y

def test_x_of_y_averages_the_most_recent_similar_non_event_days():
    # 14 days before Monday 23 Nov: Mon 9 .. Sun 22. Weekdays get 100 + k, weekend days 1000.
    vals = [1000.0 if is_weekend(TARGET - (14 - k) * DAY_NS) else 100.0 + k for k in range(14)]
    event = np.zeros((1, 14), bool)
    event[0, 11] = True  # Friday 20 Nov had an activation: never used
    m = make_baseline("x_of_y", {"x": 3, "y": 3, "adjustment": "none", "min_days": 1})
    res = m.compute(make_input(flat_days(vals), event=event))
    # eligible weekdays, newest first: Thu 19 (k=10), Wed 18 (k=9), Tue 17 (k=8) -> (110 + 109 + 108) / 3
    assert res.ok[0] and res.wh[0, 15] == pytest.approx(109.0)
    assert res.inputs(0)["days"] == ["2026-11-17", "2026-11-18", "2026-11-19"]
    assert res.inputs(0)["day_type"] == "weekday" and res.inputs(0)["adjustment"] is None


def test_x_of_y_weekend_target_uses_weekend_days():
    vals = [50.0 if is_weekend(TARGET - (14 - k) * DAY_NS) else 100.0 for k in range(14)]
    res = make_baseline("x_of_y", {"x": 4, "y": 4, "adjustment": "none", "min_days": 1}).compute(
        make_input(flat_days(vals), target_weekend=True))
    assert res.wh[0, 14] == pytest.approx(50.0) and len(res.inputs(0)["days"]) == 4


def test_high_x_of_y_picks_the_days_with_most_import_in_the_window():
    # 5 weekdays, injection -100, -300, -200, -500, -400 in the window (more negative = more import)
    vals = np.full((5, 24), -1.0)
    vals[:, 14:16] = np.array([-100, -300, -200, -500, -400])[:, None]
    weekend = np.zeros(5, bool)
    m = make_baseline("x_of_y", {"x": 2, "y": 5, "adjustment": "none", "min_days": 1})
    res = m.compute(make_input(vals, weekend=weekend, target_weekend=False))
    assert res.wh[0, 14] == pytest.approx(-450.0)
    m = make_baseline("x_of_y", {"x": 2, "y": 5, "adjustment": "none", "min_days": 1, "select": "high_export"})
    assert m.compute(make_input(vals, weekend=weekend, target_weekend=False)).wh[0, 14] == pytest.approx(-150.0)
    m = make_baseline("x_of_y", {"x": 2, "y": 5, "adjustment": "none", "min_days": 1, "select": "recent"})
    assert m.compute(make_input(vals, weekend=weekend, target_weekend=False)).wh[0, 14] == pytest.approx(-450.0)


def test_multiplicative_adjustment_known_answer_and_cap():
    hist = flat_days([100.0] * 5)
    weekend = np.zeros(5, bool)
    today = np.full(24, np.nan)
    today[10:13] = 110.0  # window: 3 h ending 1 h before the 14:00 event = 10:00-13:00
    m = make_baseline("x_of_y", {"x": 5, "y": 5, "min_days": 1})
    res = m.compute(make_input(hist, today, weekend=weekend, target_weekend=False))
    assert res.wh[0, 14] == pytest.approx(110.0)
    adj = res.inputs(0)["adjustment"]
    assert adj["kind"] == "multiplicative" and adj["raw"] == pytest.approx(1.1) and adj["applied"] == pytest.approx(1.1)
    assert adj["window"] == ["2026-11-23T10:00:00.000Z", "2026-11-23T13:00:00.000Z"]
    today[10:13] = 150.0  # +50 %: capped at +20 %
    res = m.compute(make_input(hist, today, weekend=weekend, target_weekend=False))
    assert res.wh[0, 14] == pytest.approx(120.0) and res.inputs(0)["adjustment"]["raw"] == pytest.approx(1.5)


def test_additive_adjustment_known_answer_and_cap():
    hist = flat_days([-200.0] * 5)  # a consumer: -200 Wh per ISP
    weekend = np.zeros(5, bool)
    today = np.full(24, np.nan)
    today[10:13] = -230.0
    m = make_baseline("x_of_y", {"x": 5, "y": 5, "min_days": 1, "adjustment": "additive"})
    res = m.compute(make_input(hist, today, weekend=weekend, target_weekend=False))
    assert res.wh[0, 15] == pytest.approx(-230.0)
    today[10:13] = -400.0  # -200 offset, capped at 20 % of |baseline| = 40
    assert m.compute(make_input(hist, today, weekend=weekend, target_weekend=False)).wh[0, 15] == pytest.approx(-240.0)


def test_adjustment_falls_back_with_a_reason():
    hist = flat_days([100.0] * 5)
    weekend = np.zeros(5, bool)
    m = make_baseline("x_of_y", {"x": 5, "y": 5, "min_days": 1})
    res = m.compute(make_input(hist, None, weekend=weekend, target_weekend=False))  # nothing measured today
    assert res.wh[0, 14] == pytest.approx(100.0)
    assert res.inputs(0)["adjustment"]["reason"] == "measurements missing in the adjustment window"
    res = m.compute(make_input(hist, None, weekend=weekend, target_weekend=False, start=0, end=2))
    assert res.inputs(0)["adjustment"]["reason"] == "no adjustment window before the event on this day"
    zero = m.compute(make_input(flat_days([0.0] * 5), np.zeros(24), weekend=weekend, target_weekend=False))
    assert "ratio is undefined" in zero.inputs(0)["adjustment"]["reason"] and zero.wh[0, 14] == 0.0


def test_x_of_y_without_enough_days_gives_no_baseline():
    res = make_baseline("x_of_y", {"min_days": 5}).compute(
        make_input(flat_days([1.0] * 3), weekend=np.zeros(3, bool), target_weekend=False))
    assert not res.ok[0] and np.isnan(res.wh).all()
    assert res.inputs(0)["reason"] == "only 3 eligible day(s), need 5"


def test_incomplete_days_are_not_eligible():
    hist = flat_days([10.0, 20.0, 30.0])
    hist[2, :5] = np.nan  # 19/24 measured < 0.9
    res = make_baseline("x_of_y", {"min_days": 1, "adjustment": "none"}).compute(
        make_input(hist, weekend=np.zeros(3, bool), target_weekend=False))
    assert res.wh[0, 14] == pytest.approx(15.0)


# ---------------------------------------------------------------- the other methods

def test_meter_before_after_known_answers():
    today = np.arange(24, dtype=float) * 10  # ISP j measured 10 j
    hist = flat_days([0.0])
    weekend = np.zeros(1, bool)
    before = make_baseline("meter_before_after", {"isps": 2}).compute(
        make_input(hist, today, weekend=weekend, target_weekend=False, start=14, end=16))
    assert before.wh[0, 14:16].tolist() == [125.0, 125.0] and np.isnan(before.wh[0, 13])  # mean of 120, 130
    after = make_baseline("meter_before_after", {"mode": "after"}).compute(
        make_input(hist, today, weekend=weekend, target_weekend=False, start=14, end=16))
    assert after.wh[0, 14:16].tolist() == [160.0, 160.0]
    line = make_baseline("meter_before_after", {"mode": "interpolate"}).compute(
        make_input(hist, today, weekend=weekend, target_weekend=False, start=14, end=16))
    assert line.wh[0, 14:16].tolist() == pytest.approx([130 + 30 * 0.25, 130 + 30 * 0.75])
    # before an event at 00:00 comes from yesterday's last ISP; after an event ending at midnight there is nothing
    hist[0, 23] = 77.0
    early = make_baseline("meter_before_after").compute(make_input(hist, today, weekend=weekend, target_weekend=False,
                                                                   start=0, end=2))
    assert early.wh[0, 0] == 77.0
    late = make_baseline("meter_before_after", {"mode": "after"}).compute(
        make_input(hist, today, weekend=weekend, target_weekend=False, start=22, end=24))
    assert not late.ok[0] and late.inputs(0)["reason"] == "the after window runs into the next day"


def test_nomination_baseline_is_the_schedule():
    nom = np.full((1, 24), np.nan)
    nom[0, 14:16] = [500.0, 600.0]
    res = make_baseline("nomination").compute(make_input(flat_days([0.0]), nominated=nom))
    assert res.ok[0] and res.wh[0, 14:16].tolist() == [500.0, 600.0]
    res = make_baseline("nomination").compute(make_input(flat_days([0.0]), nominated=nom, start=14, end=17))
    assert not res.ok[0] and "no nomination" in res.inputs(0)["reason"]


def test_rolling_average_known_answer():
    # eligible weekdays oldest first: 100, 200, 300; alpha 0.5: 100 -> 150 -> 225
    res = make_baseline("rolling_average", {"alpha": 0.5, "min_days": 1}).compute(
        make_input(flat_days([100.0, 200.0, 300.0]), weekend=np.zeros(3, bool), target_weekend=False))
    assert res.wh[0, 14] == pytest.approx(225.0)
    event = np.array([[False, True, False]])  # the 200 day is an event day: 100 -> 200
    res = make_baseline("rolling_average", {"alpha": 0.5, "min_days": 1}).compute(
        make_input(flat_days([100.0, 200.0, 300.0]), weekend=np.zeros(3, bool), target_weekend=False, event=event))
    assert res.wh[0, 14] == pytest.approx(200.0) and len(res.inputs(0)["days"]) == 2


def test_every_result_carries_method_parameters_and_inputs():
    hist = flat_days([100.0] * 12)
    for mid in METHODS:
        res = make_baseline(mid).compute(make_input(hist, flat_days([100.0])[0], nominated=np.full((1, 24), 25.0)))
        doc = res.descriptor(0)
        assert doc["method"] == mid and isinstance(doc["params"], dict) and isinstance(doc["inputs"], dict)
        import json

        json.dumps(doc)


def test_bad_method_or_parameters_name_the_key():
    with pytest.raises(BaselineError) as ei:
        make_baseline("x_of_z")
    assert ei.value.issues[0].path == ("method",) and "x_of_y" in ei.value.issues[0].message
    with pytest.raises(BaselineError) as ei:
        make_baseline("x_of_y", {"x": 0, "cap_pct": 150, "adjustmnt": "none"})
    assert {i.where for i in ei.value.issues} == {"x", "cap_pct", "adjustmnt"}
    with pytest.raises(BaselineError, match="must be <= y"):
        make_baseline("x_of_y", {"x": 6, "y": 5})


def test_a_registered_method_is_accepted_everywhere():
    @register
    class Yesterday(Baseline):
        """Test-only example of the extension interface: yesterday's values."""

        id = "test_yesterday"
        PARAMS = s.Dict({"scale": s.Optional(s.Float(gt=0), default=1.0)})

        def compute(self, inp: BaselineInput) -> BaselineResult:
            wh = inp.history[:, -1, :] * self.params["scale"]
            return BaselineResult(self.id, self.params, wh, ~np.isnan(wh).any(axis=1), lambda i: {"days": [inp.day_iso(-1)]})

    try:
        from gridedge.flex.settings import parse_flex

        cfg = parse_flex({"resources": [{"id": "r", "kind": "meter", "power": "m/W",
                                         "baseline": {"method": "test_yesterday", "scale": 2.0}}]})
        assert cfg.resources[0].baseline_params == {"scale": 2.0}
        res = make_baseline("test_yesterday", {"scale": 2.0}).compute(make_input(flat_days([1.0, 3.0])))
        assert res.wh[0, 0] == 6.0
    finally:
        del METHODS["test_yesterday"]


# ---------------------------------------------------------------- properties

days_arr = hnp.arrays(np.float64, (1, 24), elements=st.floats(-1e4, 1e4, allow_nan=False))


@settings(max_examples=80, deadline=None)
@given(days_arr, st.integers(1, 14), st.integers(2, 20), st.sampled_from(sorted(set(METHODS) - {"nomination"})))
def test_identical_days_give_zero_delivered(profile, n_days, start, method):
    """Nothing activated, every day alike: every similar-day method reproduces the day, delivered is 0 and it
    passes with nothing requested."""
    hist = np.repeat(profile[:, None, :], n_days, axis=1)
    res = make_baseline(method, {"min_days": 1} if method != "meter_before_after" else {}).compute(
        make_input(hist, profile[0], weekend=np.zeros(n_days, bool), target_weekend=False, start=start, end=start + 2))
    if method == "meter_before_after":
        profile = np.repeat(profile[:, start - 1:start], 24, axis=1)  # the held value
    d = delivered(1, res.wh[0, start:start + 2], profile[0, start:start + 2])
    assert res.ok[0]
    np.testing.assert_allclose(d, 0.0, atol=1e-6 * (1 + np.abs(profile).max()))
    _, passed = judge(np.zeros(2), d, Tolerance(pct=10, w=0.01), 1.0)
    assert passed.all()


@settings(max_examples=80, deadline=None)
@given(hnp.arrays(np.float64, (24,), elements=st.floats(1.0, 1e4)), st.floats(0.8, 1.2), st.integers(5, 10))
def test_multiplicative_adjustment_recovers_a_scaled_day(profile, factor, n_days):
    hist = np.repeat(profile[None, None, :], n_days, axis=1)
    today = profile * factor
    res = make_baseline("x_of_y", {"min_days": 1}).compute(
        make_input(hist, today, weekend=np.zeros(n_days, bool), target_weekend=False))
    np.testing.assert_allclose(res.wh[0, 14:16], today[14:16], rtol=1e-9)


@settings(max_examples=80, deadline=None)
@given(hnp.arrays(np.float64, (24,), elements=st.floats(-1e4, -100.0)), st.floats(-0.2, 0.2))
def test_additive_adjustment_recovers_an_offset_day(profile, rel):
    hist = np.repeat(profile[None, None, :], 5, axis=1)
    offset = rel * abs(profile[10:13].mean())
    today = profile + offset
    res = make_baseline("x_of_y", {"min_days": 1, "adjustment": "additive"}).compute(
        make_input(hist, today, weekend=np.zeros(5, bool), target_weekend=False))
    np.testing.assert_allclose(res.wh[0, 14:16], today[14:16], rtol=1e-9, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, (3, 6, 24), elements=st.floats(-1e3, 1e3) | st.just(np.nan)), st.integers(0, 22))
def test_methods_are_vectorised_row_by_row(hist, start):
    """Each resource's result depends on its own rows only: the batch equals the single-resource runs."""
    today = hist[:, -1, :].copy()
    weekend = np.zeros(6, bool)
    for mid in sorted(set(METHODS) - {"nomination"}):
        m = make_baseline(mid, {"min_days": 1} if mid != "meter_before_after" else {})
        batch = m.compute(make_input(hist, today, weekend=weekend, target_weekend=False, start=start, end=start + 1))
        for i in range(3):
            one = m.compute(make_input(hist[i:i + 1], today[i:i + 1], weekend=weekend, target_weekend=False,
                                       start=start, end=start + 1))
            np.testing.assert_array_equal(batch.wh[i], one.wh[0])
            assert batch.inputs(i) == one.inputs(0)


# ---------------------------------------------------------------- accuracy

def test_metrics_known_answer():
    err = np.array([10.0, -20.0, 30.0, 0.0])
    act = np.array([100.0, 100.0, 100.0, 0.5])  # the last is below 1 % of the mean |actual|: left out of medians
    mdape, bias, rrmse, skipped = metrics(err, act)
    assert (mdape, bias, skipped) == (20.0, 10.0, 1)
    assert rrmse == pytest.approx(np.sqrt((100 + 400 + 900) / 4) / np.mean(act) * 100)
    assert metrics(np.empty(0), np.empty(0)) == (None, None, None, 0)


def test_placebo_on_identical_days_is_exact_and_on_noise_is_not():
    hist = np.repeat(flat_days([100.0])[None], 30, axis=1)
    first = TARGET - 30 * DAY_NS
    weekend = np.array([is_weekend(first + k * DAY_NS) for k in range(30)])
    event = np.zeros((1, 30), bool)
    acc = placebo(hist, weekend, event, first, [make_baseline("x_of_y")], window=(14, 18), placebo_days=5, grid=G60)[0]
    assert (acc.days, acc.isps, acc.mdape_pct, acc.bias_pct, acc.rrmse_pct) == (5, 20, 0.0, 0.0, 0.0)
    noisy = sites(20, 40, isp_min=60, seed=1, kind="residential") * 1.0
    wk = np.array([is_weekend(date_ns(dt.date(2026, 1, 5)) + k * DAY_NS) for k in range(40)])
    res = placebo(noisy, wk, np.zeros((20, 40), bool), date_ns(dt.date(2026, 1, 5)),
                  [make_baseline("x_of_y"), make_baseline("nomination")], window=(8, 20), placebo_days=10, grid=G60)
    assert res[0].days == 10 and res[0].mdape_pct > 5 and res[0].rrmse_pct > 5
    assert res[1].reason == "no nominations stored" and res[1].mdape_pct is None


def test_placebo_skips_event_days():
    hist = np.repeat(flat_days([100.0])[None], 20, axis=1)
    hist[0, -1] = 500.0  # the last day differs but is an event day: not a placebo day
    event = np.zeros((1, 20), bool)
    event[0, -1] = True
    first = TARGET - 20 * DAY_NS
    weekend = np.zeros(20, bool)
    acc = placebo(hist, weekend, event, first, [make_baseline("x_of_y", {"min_days": 1})], window=(14, 18),
                  placebo_days=3, grid=G60)[0]
    assert acc.days == 2 and acc.mdape_pct == 0.0
