"""Control kernels: compiled vs twin agreement, IEEE 1547 known answers, validation errors, implementation switch."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gridedge.cext as kernels
from gridedge.cext import twin
from gridedge.cext.twin import IEEE1547_CAT_B_VOLT_VAR, IEEE1547_VOLT_WATT, Curve, CycleInputs, CycleParams, QMode

try:
    from gridedge.cext import _kernels as compiled
    _missing = ""
except Exception as exc:  # noqa: BLE001 - the reason goes into the skip message
    compiled = None
    _missing = f"compiled extension gridedge.cext._kernels not importable ({exc}); build with setup.py build_ext"

needs_compiled = pytest.mark.skipif(compiled is None, reason=_missing or "compiled")
IMPLS = [pytest.param(twin, id="twin"), pytest.param(compiled, id="cython", marks=needs_compiled)]
TOL = dict(rtol=1e-9, atol=1e-9)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- strategies

reals = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False)


@st.composite
def curves(draw, n, x_lo=0.7, y_lo=-1.0, y_hi=1.0, k_max=6):
    """Random valid curves for n devices; unused slots hold garbage (NaN) that must be ignored."""
    k = draw(st.integers(2, k_max))
    xs = np.full((n, k), np.nan)
    ys = np.full((n, k), np.nan)
    npts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        m = draw(st.integers(2, k))
        steps = draw(st.lists(st.floats(0.005, 0.2), min_size=m - 1, max_size=m - 1))
        x0 = draw(st.floats(x_lo, x_lo + 0.4))
        xs[i, :m] = x0 + np.concatenate([[0.0], np.cumsum(steps)])
        ys[i, :m] = draw(st.lists(st.floats(y_lo, y_hi), min_size=m, max_size=m))
        npts[i] = m
    return xs, ys, npts


def vec(n, lo, hi):
    return hnp.arrays(np.float64, n, elements=st.floats(lo, hi, allow_nan=False))


@st.composite
def cycle_case(draw):
    n = draw(st.integers(1, 12))
    vv = Curve(*draw(curves(n)), name="volt-var")
    vw = Curve(*draw(curves(n, y_lo=-0.2, y_hi=1.2)), name="volt-watt")
    wv = Curve(*draw(curves(n, x_lo=-0.1)), name="watt-var")
    olrt = st.one_of(st.just(0.0), st.floats(-1.0, 20.0))
    rate = st.one_of(st.just(math.inf), st.floats(0.0, 5.0))
    per = lambda s: st.lists(s, min_size=n, max_size=n)  # noqa: E731
    params = CycleParams(
        n=n, volt_var=vv, volt_watt=vw, watt_var=wv,
        f_nom=draw(per(st.sampled_from([50.0, 60.0]))), dbof=draw(vec(n, 0.0, 0.5)), dbuf=draw(vec(n, 0.0, 0.5)),
        kof=draw(vec(n, 0.02, 0.12)), kuf=draw(vec(n, 0.02, 0.12)), p_min=draw(vec(n, -0.5, 0.5)),
        q_mode=draw(per(st.sampled_from(list(QMode)))), q_set=draw(vec(n, -1.0, 1.0)),
        pf_set=draw(per(st.one_of(st.floats(0.05, 1.0), st.floats(-1.0, -0.05)))),
        p_priority=draw(per(st.booleans())), olrt_p=draw(per(olrt)), olrt_q=draw(per(olrt)),
        olrt_vw=draw(st.one_of(st.none(), per(olrt))), of_momentary=draw(per(st.booleans())),
        ramp_up_p=draw(per(rate)), ramp_dn_p=draw(per(rate)), ramp_q=draw(per(rate)))
    f_nom = params.f_nom
    inputs = CycleInputs(
        v=draw(vec(n, 0.8, 1.25)), f=f_nom + draw(vec(n, -2.0, 2.0)), p_avail=draw(vec(n, 0.0, 1.2)),
        p_limit=draw(vec(n, -0.2, 1.2)), p_prev=draw(vec(n, -0.2, 1.2)), q_prev=draw(vec(n, -1.2, 1.2)),
        p_pre=draw(st.one_of(st.none(), vec(n, -0.2, 1.2))),
        p_lo=draw(st.one_of(st.none(), vec(n, -1.0, 0.0))),
        p_meas=draw(st.one_of(st.none(), vec(n, -1.2, 1.2))))
    dt = draw(st.floats(0.01, 2.0))
    return params, inputs, dt


# --------------------------------------------------------------------------- compiled == twin


@needs_compiled
@FUZZ
@given(st.data())
def test_curve_eval_compiled_matches_twin(data):
    n = data.draw(st.integers(1, 20))
    xs, ys, npts = data.draw(curves(n))
    x = data.draw(vec(n, 0.5, 2.0))
    if data.draw(st.booleans()):  # hit breakpoints exactly
        x = xs[np.arange(n), np.minimum(npts - 1, data.draw(st.integers(0, 5)))].copy()
    np.testing.assert_allclose(compiled.curve_eval(xs, ys, npts, x), twin.curve_eval(xs, ys, npts, x), **TOL)


@needs_compiled
@FUZZ
@given(st.data())
def test_droop_compiled_matches_twin(data):
    n = data.draw(st.integers(1, 20))
    f_nom = data.draw(st.sampled_from([50.0, 60.0]))
    args = (f_nom + data.draw(vec(n, -3.0, 3.0)), f_nom, data.draw(vec(n, 0.0, 0.5)), data.draw(vec(n, 0.0, 0.5)),
            data.draw(vec(n, 0.01, 0.12)), data.draw(vec(n, 0.01, 0.12)), data.draw(vec(n, -0.5, 1.2)),
            data.draw(vec(n, -1.0, 0.5)), data.draw(vec(n, 0.0, 1.2)))
    mom = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    np.testing.assert_allclose(compiled.droop(*args, of_momentary=mom), twin.droop(*args, of_momentary=mom), **TOL)


@needs_compiled
@FUZZ
@given(st.data())
def test_ramp_and_first_order_compiled_match_twin(data):
    n = data.draw(st.integers(1, 20))
    y_prev, target = data.draw(vec(n, -2.0, 2.0)), data.draw(vec(n, -2.0, 2.0))
    rate = st.one_of(st.just(math.inf), st.floats(0.0, 10.0))
    up = np.array(data.draw(st.lists(rate, min_size=n, max_size=n)))
    dn = np.array(data.draw(st.lists(rate, min_size=n, max_size=n)))
    olrt = data.draw(vec(n, -1.0, 30.0))
    dt = data.draw(st.floats(0.001, 5.0))
    np.testing.assert_allclose(compiled.ramp_limit(y_prev, target, up, dn, dt),
                               twin.ramp_limit(y_prev, target, up, dn, dt), **TOL)
    np.testing.assert_allclose(compiled.first_order(y_prev, target, olrt, dt),
                               twin.first_order(y_prev, target, olrt, dt), **TOL)


@needs_compiled
@FUZZ
@given(cycle_case())
def test_cycle_compiled_matches_twin(case):
    params, inputs, dt = case
    pc, qc = compiled.cycle(params, inputs, dt)
    pt, qt = twin.cycle(params, inputs, dt)
    np.testing.assert_allclose(pc, pt, **TOL)
    np.testing.assert_allclose(qc, qt, **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@FUZZ
@given(case=cycle_case())
def test_cycle_output_within_capability(impl, case):
    params, inputs, dt = case
    p, q = impl.cycle(params, inputs, dt)
    p_avail = np.asarray(inputs.p_avail)
    p_lo = np.zeros_like(p) if inputs.p_lo is None else np.asarray(inputs.p_lo)
    assert np.all(p >= p_lo - 1e-12) and np.all(p <= np.minimum(p_avail, 1.0) + 1e-12)
    assert np.all(p * p + q * q <= 1.0 + 1e-9)


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("impl", IMPLS)
def test_ieee1547_cat_b_volt_var(impl):
    c = Curve.uniform(IEEE1547_CAT_B_VOLT_VAR, 9)
    v = np.array([0.85, 0.92, 0.95, 0.98, 1.00, 1.02, 1.05, 1.08, 1.15])
    q = impl.curve_eval(c.xs, c.ys, c.npts, v)
    np.testing.assert_allclose(q, [0.44, 0.44, 0.22, 0.0, 0.0, 0.0, -0.22, -0.44, -0.44], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_ieee1547_volt_watt(impl):
    c = Curve.uniform(IEEE1547_VOLT_WATT, 5)
    p = impl.curve_eval(c.xs, c.ys, c.npts, [1.0, 1.06, 1.08, 1.10, 1.2])
    np.testing.assert_allclose(p, [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_droop_ieee1547_cat_b(impl):
    # 5 % droop at 60 Hz: 3 Hz per 1 pu beyond the 0.036 Hz dead band.
    f = np.array([60.0, 60.036, 60.336, 63.0, 59.964, 59.664, 59.0])
    p = impl.droop(f, 60.0, 0.036, 0.036, 0.05, 0.05, 0.6, 0.1, 0.75)
    np.testing.assert_allclose(p, [0.6, 0.6, 0.5, 0.1, 0.6, 0.7, 0.75], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_droop_en50549_lfsm_o(impl):
    # LFSM-O from 50.2 Hz at 5 %: 2.5 Hz per 1 pu, so 50.7 Hz takes 0.2 pu off.
    p = impl.droop([50.1, 50.7], 50.0, 0.2, 0.2, 0.05, 0.05, 1.0, 0.0, 1.0)
    np.testing.assert_allclose(p, [1.0, 0.8], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_droop_over_frequency_reference_momentary_or_rated(impl):
    # VDE-AR-N 4105: from 50.2 Hz, 40 %/Hz (5 % at 50 Hz) of the momentary power P_M frozen at the crossing;
    # EN 50549-1 lets the DSO choose P_M or P_max; IEEE 1547 counts in the rating (P_max). Under-frequency
    # (LFSM-U) always counts in P_max; a P_M below 0 (storage charging) gives no reduction of its own.
    f = [50.7, 50.7, 50.7, 52.7, 50.7, 49.55, 50.7]
    p_pre = [0.6, 0.6, 1.0, 0.6, 0.3, 0.5, -0.2]
    mom = [True, False, True, True, False, True, True]
    p = impl.droop(f, 50.0, 0.2, 0.2, 0.05, 0.05, p_pre, -1.0, 1.0, of_momentary=mom)
    np.testing.assert_allclose(p, [0.6 * (1 - 0.4 * 0.5), 0.6 - 0.2, 0.8, 0.0, 0.1, 0.6, -0.2], atol=1e-12)
    np.testing.assert_allclose(impl.droop(f, 50.0, 0.2, 0.2, 0.05, 0.05, p_pre, -1.0, 1.0),   # default: P_max
                               impl.droop(f, 50.0, 0.2, 0.2, 0.05, 0.05, p_pre, -1.0, 1.0, of_momentary=False))


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_volt_watt_has_its_own_response_time(impl):
    # IEEE 1547-2018 Cat B defaults: volt-watt OLRT 10 s, frequency droop 5 s. A volt-watt step (1.08 pu: P 0.5)
    # and an over-frequency step (60.336 Hz: P 0.9) from P = 1, 5 s of 0.1 s steps.
    params = CycleParams.ieee1547_cat_b(2)
    inputs = _inputs(2, v=[1.08, 1.0], f=[60.0, 60.336], p_prev=1.0, p_pre=1.0)
    for _ in range(50):
        p, q = impl.cycle(params, inputs, 0.1)
        inputs.p_prev, inputs.q_prev = p, q
    np.testing.assert_allclose(p, [1 - 0.5 * (1 - 10 ** -0.5), 1 - 0.1 * 0.9], atol=1e-9)
    for _ in range(50):
        p, q = impl.cycle(params, inputs, 0.1)
        inputs.p_prev, inputs.q_prev = p, q
    np.testing.assert_allclose(p[0], 1 - 0.5 * 0.9, atol=1e-9)      # 90 % of the volt-watt step at 10 s


@pytest.mark.parametrize("impl", IMPLS)
def test_first_order_reaches_90_percent_at_olrt(impl):
    y = np.zeros(2)
    olrt, dt = np.array([5.0, 10.0]), 0.1
    for step in range(1, 101):
        y = impl.first_order(y, [1.0, 1.0], olrt, dt)
        if step == 49:
            assert y[0] < 0.9
        if step == 50:
            assert y[0] == pytest.approx(0.9, abs=1e-12)
    assert y[1] == pytest.approx(0.9, abs=1e-12)
    np.testing.assert_array_equal(impl.first_order([0.0, 0.2], [1.0, 1.0], [0.0, -3.0], dt), [1.0, 1.0])


@pytest.mark.parametrize("impl", IMPLS)
def test_ramp_limit(impl):
    y = impl.ramp_limit([0.0, 0.5, 0.5, 0.5], [1.0, 0.0, 0.52, 0.0], [0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, math.inf], 0.5)
    np.testing.assert_allclose(y, [0.05, 0.4, 0.52, 0.0], atol=1e-12)


def _inputs(n, **kw):
    base = dict(v=1.0, f=60.0, p_avail=1.0, p_limit=1.0, p_prev=0.0, q_prev=0.0)
    base.update(kw)
    return CycleInputs(**{k: np.broadcast_to(np.asarray(val, float), (n,)).copy() for k, val in base.items()})


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_cat_b_steady_state_and_priority(impl):
    n = 4
    params = CycleParams.ieee1547_cat_b(n, olrt_p=0.0, olrt_vw=0.0, olrt_q=0.0, p_priority=[False, True, False, True])
    p, q = impl.cycle(params, _inputs(n, v=[1.05, 1.05, 1.08, 1.08]), 0.1)
    # V 1.05: Q -0.22, P 1 -> Q priority curtails P to sqrt(1 - 0.22^2); P priority keeps P = 1, Q = 0.
    # V 1.08: volt-watt P 0.5, Q -0.44, both fit in S = 1.
    np.testing.assert_allclose(q, [-0.22, 0.0, -0.44, -0.44], atol=1e-12)
    np.testing.assert_allclose(p, [math.sqrt(1 - 0.22**2), 1.0, 0.5, 0.5], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_p_target_is_min_of_limit_volt_watt_droop_available(impl):
    n = 4
    params = CycleParams.ieee1547_cat_b(n)
    inputs = _inputs(n, v=[1.0, 1.08, 1.0, 1.0], f=[60.0, 60.0, 60.336, 60.0], p_avail=[1.0, 1.0, 1.0, 0.3],
                     p_limit=[0.6, 1.0, 1.0, 1.0])
    # OLRT 5 s for P (10 s where volt-watt acts): after 5 s of 0.1 s steps P has covered 90 % of its step from 0
    # (1 - 10^-0.5 of it under volt-watt).
    for _ in range(50):
        p, q = impl.cycle(params, inputs, 0.1)
        inputs.p_prev, inputs.q_prev = p, q
    np.testing.assert_allclose(p, np.array([0.9, 1 - 10 ** -0.5, 0.9, 0.9]) * [0.6, 0.5, 0.9, 0.3], atol=1e-9)


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_q_modes(impl):
    n = 4
    wv = Curve.uniform(((0.2, 0.0), (0.5, 0.0), (1.0, -0.44)), n, "watt-var")
    params = CycleParams(n=n, watt_var=wv, q_mode=[QMode.VOLT_VAR, QMode.FIXED_Q, QMode.FIXED_PF, QMode.WATT_VAR],
                         q_set=0.3, pf_set=[1.0, 1.0, -0.9, 1.0], p_priority=True)
    p, q = impl.cycle(params, _inputs(n, f=50.0, p_avail=0.75), 0.2)
    np.testing.assert_allclose(p, 0.75, atol=1e-12)
    np.testing.assert_allclose(q, [0.0, 0.3, -0.75 * math.tan(math.acos(0.9)), -0.22], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_ramp_and_in_place_update(impl):
    n = 2
    params = CycleParams(n=n, ramp_up_p=0.1, ramp_dn_p=0.2, ramp_q=0.05, q_mode=QMode.FIXED_Q, q_set=[0.4, -0.4])
    inputs = _inputs(n, f=50.0, p_prev=[0.0, 1.0], p_limit=[1.0, 0.0])
    p, q = impl.cycle(params, inputs, 1.0, out_p=inputs.p_prev, out_q=inputs.q_prev)
    assert p is inputs.p_prev and q is inputs.q_prev
    np.testing.assert_allclose(p, [0.1, 0.8], atol=1e-12)
    np.testing.assert_allclose(q, [0.05, -0.05], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_under_frequency_raises_from_latched_p_pre(impl):
    params = CycleParams(n=1, f_nom=50.0, dbuf=0.2, kuf=0.05)
    # 49.55 Hz is 0.25 Hz below 49.8: +0.1 pu from the latched 0.5, within p_avail and the limit.
    p, _ = impl.cycle(params, _inputs(1, f=49.55, p_pre=0.5), 0.1)
    np.testing.assert_allclose(p, [0.6], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_storage_goes_below_zero_down_to_p_lo(impl):
    # A battery asked to charge at 0.6 pu (p_limit -0.6), one that may not charge (p_lo 0), and over-frequency
    # pushing a battery idle at 0 towards charging: LFSM-O 0.25 Hz beyond 50.2 Hz at 5 % is -0.1 pu.
    params = CycleParams(n=3, f_nom=50.0, dbof=0.2, kof=0.05, p_min=-1.0)
    p, _ = impl.cycle(params, _inputs(3, f=[50.0, 50.0, 50.45], p_limit=[-0.6, -0.6, 1.0], p_pre=[-0.6, -0.6, 0.0],
                                      p_lo=[-1.0, 0.0, -1.0]), 0.1)
    np.testing.assert_allclose(p, [-0.6, 0.0, -0.1], atol=1e-12)
    # Q priority bounds |P| from both sides
    params = CycleParams(n=1, f_nom=50.0, q_mode=QMode.FIXED_Q, q_set=0.8)
    p, q = impl.cycle(params, _inputs(1, f=50.0, p_limit=-1.0, p_pre=-1.0, p_lo=-1.0), 0.1)
    np.testing.assert_allclose([p[0], q[0]], [-0.6, 0.8], atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_p_meas_drives_pf_and_watt_var_under_a_ceiling(impl):
    # The ceiling is 1 pu, the inverter produces 0.5: PF 0.9 and watt-var act on 0.5, not on the ceiling.
    wv = Curve.uniform(((0.2, 0.0), (0.5, 0.0), (1.0, -0.44)), 3, "watt-var")
    params = CycleParams(n=3, f_nom=50.0, watt_var=wv, q_mode=[QMode.FIXED_PF, QMode.WATT_VAR, QMode.FIXED_PF],
                         pf_set=[0.9, 1.0, -0.9], p_priority=True)
    p, q = impl.cycle(params, _inputs(3, f=50.0, p_meas=[0.5, 0.75, -0.5], p_lo=[0.0, 0.0, -1.0],
                                      p_limit=[1.0, 1.0, -0.5]), 0.1)
    tan = math.tan(math.acos(0.9))
    np.testing.assert_allclose(p, [1.0, 1.0, -0.5], atol=1e-12)
    np.testing.assert_allclose(q, [0.0, 0.0, -0.5 * tan], atol=1e-12)  # P priority: no room for Q at P = 1
    params = CycleParams(n=2, f_nom=50.0, watt_var=Curve.uniform(((0.2, 0.0), (0.5, 0.0), (1.0, -0.44)), 2),
                         q_mode=[QMode.FIXED_PF, QMode.WATT_VAR], pf_set=0.9)
    p, q = impl.cycle(params, _inputs(2, f=50.0, p_meas=[0.5, 0.75]), 0.1)
    np.testing.assert_allclose(q, [0.5 * tan, -0.22], atol=1e-12)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("impl", IMPLS)
def test_curve_validation_errors(impl):
    xs = np.array([[0.9, 1.0, 1.1], [0.9, 1.0, 1.1]])
    ys = np.zeros_like(xs)
    with pytest.raises(ValueError, match=r"npts=1 outside 2\.\.K=3"):
        impl.curve_eval(xs, ys, [3, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"device 1: npts=4"):
        impl.curve_eval(xs, ys, [3, 4], [1.0, 1.0])
    bad = xs.copy()
    bad[1, 2] = 0.95
    with pytest.raises(ValueError, match=r"device 1: x not strictly ascending at point 2"):
        impl.curve_eval(bad, ys, [3, 3], [1.0, 1.0])
    impl.curve_eval(bad, ys, [3, 2], [1.0, 1.0])  # the unused point does not matter
    with pytest.raises(ValueError, match=r"curve: 2 curves do not match the number of devices N=3"):
        impl.curve_eval(xs, ys, [3, 3], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"ys: shape"):
        impl.curve_eval(xs, ys[:, :2], [2, 2], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"x: device 1: value nan is not finite"):
        impl.curve_eval(xs, ys, [3, 3], [1.0, np.nan])
    with pytest.raises(ValueError, match=r"npts: expected integers"):
        impl.curve_eval(xs, ys, [3.5, 3], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"out: expected a float64 array of shape \(2,\)"):
        impl.curve_eval(xs, ys, [3, 3], [1.0, 1.0], out=np.zeros(3))


@pytest.mark.parametrize("impl", IMPLS)
def test_kernel_validation_errors(impl):
    with pytest.raises(ValueError, match=r"kof: device 1: value 0.0 must be > 0"):
        impl.droop([50.0, 50.0], 50.0, 0.2, 0.2, [0.05, 0.0], 0.05, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"f_nom: length 3 does not match the number of devices N=2"):
        impl.droop([50.0, 50.0], [50.0] * 3, 0.2, 0.2, 0.05, 0.05, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"rate_dn: device 0: value -1.0 must be >= 0"):
        impl.ramp_limit([0.0], [1.0], 1.0, -1.0, 0.1)
    with pytest.raises(ValueError, match=r"dt: must be finite and > 0"):
        impl.first_order([0.0], [1.0], 5.0, 0.0)
    with pytest.raises(ValueError, match=r"y_prev: expected a 1-D array"):
        impl.first_order([[0.0]], [1.0], 5.0, 0.1)
    with pytest.raises(ValueError, match=r"of_momentary: expected 2 booleans"):
        impl.droop([50.0, 50.0], 50.0, 0.2, 0.2, 0.05, 0.05, 1.0, 0.0, 1.0, of_momentary=[1, 2])


@pytest.mark.parametrize("impl", IMPLS)
def test_cycle_validation_errors(impl):
    params = CycleParams(n=2, f_nom=60.0)
    with pytest.raises(ValueError, match=r"v: device 1: value inf is not finite"):
        impl.cycle(params, _inputs(2, v=[1.0, np.inf]), 0.1)
    with pytest.raises(ValueError, match=r"p_avail: device 0: value -0.1 must be >= 0"):
        impl.cycle(params, _inputs(2, p_avail=[-0.1, 1.0]), 0.1)
    with pytest.raises(ValueError, match=r"f: length 3 does not match"):
        impl.cycle(params, CycleInputs(v=[1.0, 1.0], f=[50.0] * 3, p_avail=1, p_limit=1, p_prev=0, q_prev=0), 0.1)
    with pytest.raises(ValueError, match=r"params: expected CycleParams"):
        impl.cycle({}, _inputs(2), 0.1)
    with pytest.raises(ValueError, match=r"p_lo: device 1: value 0.5 must be <= 0.0"):
        impl.cycle(params, _inputs(2, p_lo=[0.0, 0.5]), 0.1)
    with pytest.raises(ValueError, match=r"p_meas: device 0: value nan is not finite"):
        impl.cycle(params, _inputs(2, p_meas=[np.nan, 0.5]), 0.1)


def test_params_validation_errors():
    with pytest.raises(ValueError, match=r"q_mode: device 1: 7 is not one of"):
        CycleParams(n=2, q_mode=[0, 7])
    with pytest.raises(ValueError, match=r"pf_set: device 0: power factor 0"):
        CycleParams(n=1, pf_set=0.0)
    with pytest.raises(ValueError, match=r"volt_var: 3 curves do not match the number of devices N=2"):
        CycleParams(n=2, volt_var=Curve.uniform(IEEE1547_CAT_B_VOLT_VAR, 3))
    with pytest.raises(ValueError, match=r"n: expected a positive number"):
        CycleParams(n=0)
    with pytest.raises(ValueError, match=r"of_momentary: expected 2 booleans"):
        CycleParams(n=2, of_momentary=[True])
    with pytest.raises(ValueError, match=r"olrt_vw: device 0: value nan is not finite"):
        CycleParams(n=1, olrt_vw=np.nan)
    assert CycleParams(n=1, olrt_p=3.0).olrt_vw[0] == 3.0           # volt-watt follows olrt_p unless set
    with pytest.raises(ValueError, match=r"volt-var: device 0: x not strictly ascending at point 1"):
        Curve.uniform(((1.0, 0.0), (1.0, 0.1)), 1, "volt-var")
    c = Curve.uniform(IEEE1547_VOLT_WATT, 1)
    with pytest.raises(ValueError):
        c.xs[0, 0] = 2.0  # validated arrays are read-only


@pytest.mark.parametrize("impl", IMPLS)
@FUZZ
@given(xs=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)),
       ys=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)),
       npts=st.one_of(st.integers(-3, 6), st.lists(st.integers(-3, 6), max_size=5), st.text(max_size=3)),
       x=st.one_of(reals, st.lists(st.floats(), max_size=5), st.text(max_size=3)))
def test_curve_eval_fuzz_only_value_errors(impl, xs, ys, npts, x):
    try:
        out = impl.curve_eval(xs, ys, npts, x)
    except ValueError:
        return
    assert np.all(np.isfinite(out))


# --------------------------------------------------------------------------- implementation selection


def _run(code: str, **env) -> str:
    full_env = {**os.environ, **env}
    full_env.pop("GRIDEDGE_PURE_PYTHON", None) if "GRIDEDGE_PURE_PYTHON" not in env else None
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_pure_python_env_forces_twin():
    out = _run("import gridedge.cext as k; print(k.IMPLEMENTATION); print(k.describe()); print(k.cycle.__module__)",
               GRIDEDGE_PURE_PYTHON="1")
    assert out.splitlines() == ["python", "control kernels: pure-python twin (forced by GRIDEDGE_PURE_PYTHON)",
                                "gridedge.cext.twin"]


def test_fallback_when_extension_missing_names_reason():
    code = ("import sys; sys.modules['gridedge.cext._kernels'] = None\n"
            "import gridedge.cext as k; print(k.IMPLEMENTATION); print(k.describe())")
    impl, desc = _run(code).splitlines()
    assert impl == "python"
    assert desc.startswith("control kernels: pure-python twin (compiled extension not importable: ")
    assert "gridedge.cext._kernels" in desc


@needs_compiled
def test_default_is_compiled():
    if os.environ.get("GRIDEDGE_PURE_PYTHON"):
        pytest.skip("GRIDEDGE_PURE_PYTHON is set in this environment")
    assert kernels.IMPLEMENTATION == "cython"
    assert kernels.describe() == "control kernels: cython (gridedge.cext._kernels)"
    assert kernels.cycle is compiled.cycle


# --------------------------------------------------------------------------- OpenDER cross-check (test-only dep)


def test_steady_state_matches_opender():
    """Volt-var + volt-watt steady state (reactive power priority) against EPRI's OpenDER reference model."""
    opender = pytest.importorskip("opender")
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # OpenDER warns about its default DC voltage
    volts = [0.88, 0.92, 0.95, 0.97, 1.0, 1.03, 1.05, 1.06, 1.07, 1.08, 1.09]
    der = opender.DER_PV(NP_VA_MAX=100e3, NP_P_MAX=100e3, NP_Q_MAX_INJ=44e3, NP_Q_MAX_ABS=44e3,
                         NP_NORMAL_OP_CAT="CAT_B", NP_AC_V_NOM=480, NP_PHASE="THREE")
    der.der_file.QV_MODE_ENABLE = True
    der.der_file.PV_MODE_ENABLE = True
    ref_p, ref_q = [], []
    for v in volts:
        der.update_der_input(v_pu=v, f=60.0, p_dc_pu=1.0)
        der.run()  # snapshot mode: steady state
        ref_p.append(der.p_out_pu)
        ref_q.append(der.q_out_pu)
    n = len(volts)
    params = CycleParams.ieee1547_cat_b(n, olrt_p=0.0, olrt_vw=0.0, olrt_q=0.0)
    p, q = kernels.cycle(params, _inputs(n, v=volts), 0.1)
    np.testing.assert_allclose(q, ref_q, atol=1e-6)
    np.testing.assert_allclose(p, ref_p, atol=1e-6)


def _opender_pv(opender, **der_file):
    der = opender.DER_PV(NP_VA_MAX=100e3, NP_P_MAX=100e3, NP_Q_MAX_INJ=44e3, NP_Q_MAX_ABS=44e3,
                         NP_NORMAL_OP_CAT="CAT_B", NP_AC_V_NOM=480, NP_PHASE="THREE")
    for k, v in der_file.items():
        setattr(der.der_file, k, v)
    return der


def test_lfsm_o_matches_opender_with_the_50_hz_mapping():
    """LFSM-O of EN 50549-1 / VDE-AR-N 4105 against OpenDER's frequency droop (a 60 Hz model): per-unit frequency
    maps 50 Hz to 60 Hz (f and the dead band x 1.2, the droop in % unchanged). OpenDER counts the reduction in
    P_max from the pre-disturbance power P_M; the momentary reference is P_M times OpenDER's answer at P_M = 1."""
    opender = pytest.importorskip("opender")
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    freqs = [50.1, 50.2, 50.25, 50.5, 50.7, 50.95]      # below OpenDER's Cat B over-frequency trip (61.2 Hz)
    for p_m in (1.0, 0.6, 0.3):
        ref = []
        for f in freqs:
            der = _opender_pv(opender, PF_DBOF=0.2 * 1.2, PF_DBUF=0.2 * 1.2, PF_KOF=0.05, PF_KUF=0.05)
            der.update_der_input(v_pu=1.0, f=f * 1.2, p_dc_pu=p_m)
            der.run()                                   # snapshot: steady state, P_M = the available power
            ref.append(der.p_out_pu)
        n = len(freqs)
        for mom, expected in ((False, ref), (True, None)):
            if mom:
                full = []
                for f in freqs:
                    der = _opender_pv(opender, PF_DBOF=0.2 * 1.2, PF_DBUF=0.2 * 1.2, PF_KOF=0.05, PF_KUF=0.05)
                    der.update_der_input(v_pu=1.0, f=f * 1.2, p_dc_pu=1.0)
                    der.run()
                    full.append(der.p_out_pu)
                expected = p_m * np.array(full)
            params = CycleParams(n=n, f_nom=50.0, dbof=0.2, dbuf=0.2, kof=0.05, kuf=0.05, q_mode=QMode.FIXED_Q,
                                 p_priority=True, of_momentary=mom)
            p, _ = kernels.cycle(params, _inputs(n, f=freqs, p_avail=p_m, p_pre=p_m, p_prev=p_m), 0.1)
            np.testing.assert_allclose(p, expected, atol=1e-6, err_msg=f"P_M {p_m}, momentary {mom}")


def test_volt_watt_response_matches_opender(monkeypatch):
    """IEEE 1547 Cat B volt-watt step (1.0 -> 1.08 pu) in time: OpenDER's default PV_OLRT is 10 s, and so is ours."""
    opender = pytest.importorskip("opender")
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    dt, steps = 0.02, 750
    monkeypatch.setattr(opender.DER, "t_s", dt)         # OpenDER's time step is a class attribute
    der = _opender_pv(opender, PV_MODE_ENABLE=True)
    der.update_der_input(v_pu=1.0, f=60.0, p_dc_pu=1.0)
    der.run()
    ref = []
    for _ in range(steps):
        der.update_der_input(v_pu=1.08, f=60.0, p_dc_pu=1.0)
        der.run()
        ref.append(der.p_out_pu)
    params = CycleParams.ieee1547_cat_b(1, q_mode=QMode.FIXED_Q, p_priority=True)
    inputs = _inputs(1, v=1.08, p_prev=1.0)
    ours = []
    for _ in range(steps):
        p, q = kernels.cycle(params, inputs, dt)
        inputs.p_prev, inputs.q_prev = p.copy(), q.copy()
        ours.append(p[0])
    # OpenDER discretises the lag with Tustin's method (half a step behind), gridedge exactly: the same curve
    # within half a step's change at this dt
    np.testing.assert_allclose(ours, ref, atol=2.5e-3)
    assert ours[round(10 / dt) - 1] == pytest.approx(0.55, abs=1e-9)   # 90 % of the step at the 10 s OLRT
