"""ISP grid and metering per ISP: alignment, known answers, energy conservation, resets, gaps, restart, history."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.flex.history import History
from gridedge.core.isp import DAY_NS, ISP_MINUTES, NS_PER_S, IspGrid, date_ns, day_start, is_weekend
from gridedge.flex.metering import IntervalEnergy, MeterSeries
from gridedge.core.model import Detail, Sample, invalid

S = NS_PER_S
T0 = date_ns(dt.date(2026, 11, 23))  # a Monday, 00:00 UTC
G15 = IspGrid(15)


def reg(point: str, t_s: float, v: float) -> Sample:
    return Sample(point, T0 + int(t_s * S), v, "Wh")


def feed_all(m: MeterSeries, samples) -> None:
    for smp in samples:
        m.feed(smp)


# ---------------------------------------------------------------- ISP grid

@given(st.sampled_from(ISP_MINUTES), st.integers(-10**18, 4 * 10**18))
def test_isp_start_is_aligned_and_contains_the_instant(minutes, ts):
    g = IspGrid(minutes)
    a = g.start(ts)
    assert a % (minutes * 60 * S) == 0 and a <= ts < a + g.ns
    assert day_start(ts) + g.slot(ts) * g.ns == a
    assert 0 <= g.slot(ts) < g.per_day and g.per_day * minutes == 1440


@given(st.sampled_from(ISP_MINUTES), st.integers(0, 4 * 10**18), st.integers(1, 3 * DAY_NS))
def test_isp_overlaps_add_up_to_the_interval(minutes, a, length):
    g = IspGrid(minutes)
    b = a + length
    starts = g.starts(a, b)
    assert sum(g.overlap_ns(s, a, b) for s in starts) == length
    assert all(g.overlap_ns(s, a, b) > 0 for s in starts)


def test_isp_lengths_and_day_types():
    with pytest.raises(ValueError, match="1, 5, 15, 30, 60"):
        IspGrid(10)
    with pytest.raises(ValueError):
        IspGrid(True)
    assert IspGrid(15).ns == 900 * S and IspGrid(60).per_day == 24 and IspGrid(1).per_day == 1440
    sat = date_ns(dt.date(2026, 11, 28))
    assert not is_weekend(T0) and is_weekend(sat) and is_weekend(sat + DAY_NS)
    assert is_weekend(T0 + 3600 * S, frozenset({dt.date(2026, 11, 23)}))


# ---------------------------------------------------------------- known answers

def test_registers_split_at_boundaries_by_time():
    m = MeterSeries("r", G15, energy_import="m/TotWhImp", energy_export="m/TotWhExp", max_gap_s=3600)
    m.begin(T0)
    # import grows 100 Wh from 00:10 to 00:20 (straddles 00:15: 50/50); export 30 Wh from 00:00 to 00:30
    feed_all(m, [reg("m/TotWhExp", 0, 1000.0), reg("m/TotWhImp", 0, 500.0), reg("m/TotWhImp", 600, 500.0),
                 reg("m/TotWhImp", 1200, 600.0), reg("m/TotWhImp", 1800, 600.0), reg("m/TotWhExp", 1800, 1030.0)])
    out = m.close(T0 + 1800 * S)
    assert [iv.start_ns for iv in out] == [T0, T0 + 900 * S]
    assert [iv.wh for iv in out] == pytest.approx([15.0 - 50.0, 15.0 - 50.0])
    assert all(iv.quality == "good" and iv.source == "register" and iv.completeness == 1.0 for iv in out)


def test_power_is_integrated_as_straight_lines():
    m = MeterSeries("r", G15, power="m/W", max_gap_s=3600)
    m.begin(T0)
    # 0 W at 00:00 rising linearly to 3600 W at 00:30: mean 900 W then 2700 W, 225 Wh and 675 Wh
    feed_all(m, [Sample("m/W", T0, 0.0), Sample("m/W", T0 + 1800 * S, 3600.0)])
    out = m.close(T0 + 1800 * S)
    assert [iv.wh for iv in out] == pytest.approx([225.0, 675.0])
    assert all(iv.quality == "good" and iv.source == "power" for iv in out)


def test_registers_are_preferred_and_power_fills_in():
    m = MeterSeries("r", G15, energy_export="m/TotWhExp", power="m/W", max_gap_s=60)
    m.begin(T0)
    samples = []
    for t in range(0, 1801, 10):
        samples.append(Sample("m/W", T0 + t * S, 4000.0))
        if t <= 900:  # the register stops answering after the first ISP
            samples.append(reg("m/TotWhExp", t, 4000.0 * t / 3600))
    feed_all(m, samples)
    (first,) = m.close(T0 + 1800 * S)  # the register has nothing after 00:15: the second ISP waits max_gap_s
    assert (first.source, first.wh, first.quality, first.flags) == ("register", pytest.approx(1000.0), "good", ())
    (second,) = m.close(T0 + 1860 * S)
    assert (second.source, second.wh, second.flags) == ("power", pytest.approx(1000.0), ("from_power",))


def test_invalid_samples_make_gaps_not_numbers():
    m = MeterSeries("r", G15, power="m/W", max_gap_s=60, min_completeness=0.5)
    m.begin(T0)
    for t in range(0, 901, 10):
        if 300 <= t < 600:
            m.feed(invalid("m/W", T0 + t * S, Detail.TIMEOUT, "W"))
        else:
            m.feed(Sample("m/W", T0 + t * S, 3600.0))
    m.feed(Sample("m/W", T0 + 905 * S, 3600.0))
    m.feed(Sample("m/W", T0 + 910 * S, "n/a"))
    m.feed(Sample("m/W", T0 + 911 * S, float("nan")))
    m.feed(Sample("m/W", T0 + 912 * S, True))
    (iv,) = m.close(T0 + 900 * S)
    # 00:04:50 .. 00:10:00 is a 310 s gap: not integrated; the rest (590 s) is scaled up
    assert iv.quality == "estimated" and "gap" in iv.flags
    assert iv.completeness == pytest.approx(590 / 900)
    assert iv.wh == pytest.approx(900.0)
    assert m.stats["invalid"] == 30 + 3


def test_register_reset_and_rollover():
    m = MeterSeries("r", G15, energy_export="m/E", rollover_wh=10000.0, min_completeness=0.5)
    m.begin(T0)
    feed_all(m, [reg("m/E", 0, 9990.0), reg("m/E", 60, 5.0),  # wrapped: +15 Wh
                 reg("m/E", 120, 20.0), reg("m/E", 180, 3.0),  # fell by 17: a reset, that span is lost
                 reg("m/E", 900, 10.0)])
    (iv,) = m.close(T0 + 900 * S)
    assert set(iv.flags) == {"register_rollover", "register_reset"}
    assert iv.quality == "estimated"
    assert iv.completeness == pytest.approx(840 / 900)
    assert iv.wh == pytest.approx((15 + 15 + 7) / (840 / 900))


def test_implausible_jump_is_not_counted():
    m = MeterSeries("r", G15, energy_export="m/E", max_power_w=20000.0, min_completeness=0.5)
    m.begin(T0)
    feed_all(m, [reg("m/E", 0, 0.0), reg("m/E", 60, 1e6), reg("m/E", 900, 1e6 + 10)])
    (iv,) = m.close(T0 + 900 * S)
    assert "implausible" in iv.flags and iv.wh == pytest.approx(10.0 / (840 / 900))


def test_a_long_register_gap_inside_one_isp_loses_nothing_across_a_boundary_is_estimated():
    m = MeterSeries("r", G15, energy_export="m/E", max_gap_s=30)
    m.begin(T0)
    feed_all(m, [reg("m/E", 0, 0.0), reg("m/E", 800, 100.0), reg("m/E", 1000, 150.0), reg("m/E", 1800, 250.0)])
    first, second = m.close(T0 + 1800 * S)
    assert first.quality == "estimated" and "gap" in first.flags  # 800-1000 s crosses 00:15 and is > 30 s
    assert first.wh + second.wh == pytest.approx(250.0)
    assert first.wh == pytest.approx(100.0 + 50.0 * 100 / 200)


def test_isps_without_data_close_as_missing_after_the_gap_allowance():
    m = MeterSeries("r", G15, power="m/W", max_gap_s=30)
    m.begin(T0)
    assert m.close(T0 + 900 * S) == []  # waits max_gap_s for late data
    out = m.close(T0 + 2 * 900 * S + 30 * S)
    assert [(iv.quality, iv.wh, iv.source) for iv in out] == [("missing", None, "none")] * 2
    m.feed(Sample("m/W", T0 + 100 * S, 1.0))  # late: for an ISP already reported
    assert m.closed_until == T0 + 1800 * S


def test_partial_and_latest_power_for_near_real_time():
    m = MeterSeries("r", G15, energy_import="m/I", energy_export="m/E")
    m.begin(T0)
    feed_all(m, [reg("m/I", 0, 0.0), reg("m/E", 0, 0.0), reg("m/I", 360, 10.0), reg("m/E", 360, 110.0)])
    start, wh, cov = m.partial(T0 + 360 * S)
    assert (start, wh, cov) == (T0, pytest.approx(100.0), pytest.approx(1.0))
    assert m.latest_w(T0 + 360 * S) == pytest.approx(1000.0)  # 100 Wh net in 0.1 h


def test_latest_power_is_none_when_old_or_invalid():
    """Defect 17: "never guessed": a reading older than max_gap_s, or one the device has since answered with an
    invalid value, is not the power now."""
    m = MeterSeries("r", G15, power="m/W", energy_export="m/E", max_gap_s=30)
    m.begin(T0)
    feed_all(m, [reg("m/E", 0, 0.0), reg("m/E", 10, 10.0), Sample("m/W", T0 + 10 * S, 3600.0)])
    assert m.latest_w(T0 + 40 * S) == 3600.0
    assert m.latest_w(T0 + 41 * S) is None                         # 31 s old: power and registers alike
    feed_all(m, [reg("m/E", 50, 20.0), Sample("m/W", T0 + 50 * S, 3000.0)])
    m.feed(invalid("m/W", T0 + 51 * S, Detail.TIMEOUT))
    assert m.latest_w(T0 + 52 * S) == pytest.approx(900.0)         # the registers stand in: 10 Wh in 40 s
    m.feed(invalid("m/E", T0 + 51 * S, Detail.TIMEOUT))
    assert m.latest_w(T0 + 52 * S) is None


def test_the_isp_in_which_a_long_gap_begins_is_flagged_when_it_closes():
    """Defect 19: the device goes silent at 10 min and is back at 20 min; the first ISP closes by the gap
    allowance, before the next sample shows the gap: it must carry the flag all the same."""
    for meter in (dict(power="m/W", min_completeness=0.5), dict(energy_export="m/E", min_completeness=0.5)):
        m = MeterSeries("r", G15, max_gap_s=30, **meter)
        m.begin(T0)
        point, = m.points
        feed_all(m, [Sample(point, T0 + t * S, 1000.0 + t) for t in range(0, 601, 10)])
        (first,) = m.close(T0 + 930 * S)
        assert (first.quality, first.flags) == ("estimated", ("gap",)), meter
        assert first.completeness == pytest.approx(600 / 900)


# ---------------------------------------------------------------- properties

@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ISP_MINUTES), st.lists(st.tuples(st.integers(1, 400), st.floats(0, 500)), min_size=1, max_size=60),
       st.floats(0, 1e6))
def test_register_energy_is_conserved(minutes, steps, start_value):
    """Whatever the sampling, gaps included, the ISP energies add up to the register's increase."""
    g = IspGrid(minutes)
    m = MeterSeries("r", g, energy_export="m/E", max_gap_s=60, min_completeness=1e-9)
    m.begin(T0)
    t, v = 0, start_value
    m.feed(reg("m/E", 0, v))
    for dt_s, dv in steps:
        t += dt_s
        v += dv
        m.feed(reg("m/E", t, v))
    end = g.end(T0 + t * S - 1)
    m.feed(reg("m/E", (end - T0) / S, v))  # no energy after the last step
    out = m.close(end)
    assert sum(iv.wh for iv in out) == pytest.approx(v - start_value, rel=1e-9, abs=1e-6)
    assert all(iv.completeness == pytest.approx(1.0) for iv in out)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from((1, 5, 15)), st.lists(st.tuples(st.integers(1, 30), st.floats(-5000, 5000)), min_size=2, max_size=80))
def test_power_energy_is_the_trapezoid_integral(minutes, steps):
    g = IspGrid(minutes)
    m = MeterSeries("r", g, power="m/W", max_gap_s=3600, min_completeness=1e-9)
    m.begin(T0)
    ts, ws, t = [0], [steps[0][1]], 0
    for dt_s, w in steps:
        t += dt_s
        ts.append(t)
        ws.append(w)
    end_s = (g.end(T0 + t * S - 1) - T0) // S
    ts.append(end_s)
    ws.append(ws[-1])
    for a, w in zip(ts, ws):
        m.feed(Sample("m/W", T0 + a * S, w))
    out = m.close(T0 + end_s * S)
    expected = float(np.sum((np.array(ws[1:]) + np.array(ws[:-1])) / 2 * np.diff(ts))) / 3600
    assert sum(iv.wh for iv in out) == pytest.approx(expected, rel=1e-9, abs=1e-6)


# ---------------------------------------------------------------- restart and history

def _stopped_at_7_min(tmp_path) -> History:
    h = History(tmp_path / "flex.sqlite")
    m = MeterSeries("r", G15, energy_export="m/E")
    m.begin(T0)
    feed_all(m, [reg("m/E", t, t / 3.6) for t in range(0, 421, 60)])  # 1000 W; the agent stops at 00:07
    h.set_meta("meter:r", m.state())
    h.close()
    return History(tmp_path / "flex.sqlite")


def test_restart_within_the_isp_loses_nothing(tmp_path):
    h = _stopped_at_7_min(tmp_path)
    m = MeterSeries("r", G15, energy_export="m/E")
    m.restore(h.get_meta("meter:r"), T0 + 540 * S)
    m.begin(T0 + 540 * S)
    feed_all(m, [reg("m/E", t, t / 3.6) for t in range(540, 1201, 60)])  # back at 00:09; the register counted on
    (iv,) = m.close(T0 + 1200 * S)
    assert (iv.wh, iv.quality, iv.completeness) == (pytest.approx(250.0), "good", pytest.approx(1.0))


def test_restart_after_the_isp_waits_for_data_then_splits_the_gap(tmp_path):
    h = _stopped_at_7_min(tmp_path)
    m = MeterSeries("r", G15, energy_export="m/E")
    m.restore(h.get_meta("meter:r"), T0 + 1000 * S)
    m.begin(T0 + 1000 * S)
    assert m.close(T0 + 1000 * S) == []  # just restarted: the ISP that ended meanwhile waits for the register
    feed_all(m, [reg("m/E", t, t / 3.6) for t in range(1020, 1801, 60)])
    first, second = m.close(T0 + 1800 * S)
    assert (first.quality, first.flags, first.completeness) == ("estimated", ("gap",), pytest.approx(1.0))
    assert first.wh + second.wh == pytest.approx(1800 / 3.6)  # every Wh counted, split by time


def test_restore_ignores_garbage():
    m = MeterSeries("r", G15, energy_export="m/E")
    for junk in ({"closed_until": "x", "tracks": {"m/E": ["a", None]}, "open": {"zz": 1}}, {"open": {"900": {"export": 5}}},
                 {"tracks": 5}):
        m.restore(junk, T0)
    m.begin(T0)
    assert m.closed_until == T0


def test_history_matrix_events_prune_and_corruption(tmp_path):
    path = tmp_path / "flex.sqlite"
    h = History(path, days=3)
    ivs = [IntervalEnergy(r, T0 - d * DAY_NS + k * 900 * S, 900, float(d * 100 + k), "good", 1.0, "register")
           for r in ("a", "b") for d in range(1, 6) for k in range(96)]
    ivs.append(IntervalEnergy("a", T0 - DAY_NS + 5 * 900 * S, 900, None, "missing", 0.0, "none"))
    h.add(ivs)
    mat = h.matrix(["b", "a"], T0 - 5 * DAY_NS, 5, G15)
    assert mat.shape == (2, 5, 96)
    assert mat[1, 4, 3] == 103.0 and math.isnan(mat[1, 4, 5]) and mat[0, 0, 0] == 500.0
    h.save_activation("act1", T0 - 2 * DAY_NS + 3600 * S, T0 - 2 * DAY_NS + 7200 * S, ["a"], {})
    assert h.event_days(["a", "b"], T0 - 5 * DAY_NS, 5).tolist() == [[False, False, False, True, False]] + \
        [[False] * 5]
    assert h.prune(T0) == 2 * 2 * 96 + 0  # days 4 and 5 ago of both resources
    h.close()
    path.write_bytes(b"this is not a database" * 100)
    h = History(path)
    assert h.store_resets == 1 and h.span(G15) is None
    assert list(tmp_path.glob("flex.sqlite.corrupt-*"))
