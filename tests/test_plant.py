"""PV inverter plant: ramp, limit, set-points, reversion after RvrtTms, energy, validation."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.hil.plant import PVInverterPlant, clear_sky_pv, constant_pv


def run(p: PVInverterPlant, seconds: float, dt: float = 0.1) -> None:
    for _ in range(round(seconds / dt)):
        p.step(dt)


def test_starts_at_pv_availability_and_caps_at_w_max():
    assert PVInverterPlant(w_max=10000, pv=8000).W == 8000
    assert PVInverterPlant(w_max=10000, pv=12000).W == 10000


def test_limit_reached_with_ramp():
    p = PVInverterPlant(w_max=10000, pv=8000, ramp_pct_per_s=10)
    p.write(WMaxLimPct=50, WMaxLimPctEna=1)
    p.step(1.0)
    assert p.W == pytest.approx(7000)          # 10 %/s of 10 kW = 1000 W/s
    p.step(1.0)
    assert p.W == pytest.approx(6000)
    run(p, 1.5)
    assert p.W == pytest.approx(5000)          # reached, and held there
    run(p, 2.0)
    assert p.W == pytest.approx(5000)
    p.write(WMaxLimPctEna=0)                   # release: back up to the PV availability, ramped
    p.step(0.5)
    assert p.W == pytest.approx(5500)
    run(p, 5)
    assert p.W == pytest.approx(8000)


def test_limit_ignored_while_disabled_and_limit_above_pv():
    p = PVInverterPlant(w_max=10000, pv=8000)
    p.write(WMaxLimPct=30)
    run(p, 3)
    assert p.W == 8000
    p.write(WMaxLimPct=90, WMaxLimPctEna=1)
    run(p, 3)
    assert p.W == 8000                         # 9 kW limit above 8 kW available


def test_pv_drop_is_followed_immediately():
    level = {"w": 8000.0}
    p = PVInverterPlant(w_max=10000, pv=lambda t: level["w"])
    level["w"] = 2000.0
    p.step(0.1)
    assert p.W == 2000


def test_wset_and_varset():
    p = PVInverterPlant(w_max=10000, pv=8000, ramp_pct_per_s=100)
    p.write(WSet=3000, WSetEna=1, VArSet=-2000, VArSetEna=1)
    run(p, 1)
    assert p.W == pytest.approx(3000)
    assert p.VAr == -2000
    assert p.VA == pytest.approx((3000**2 + 2000**2) ** 0.5)
    assert 0 < p.PF < 1
    assert p.A == pytest.approx(p.VA / (3 * 230))


def test_reversion_after_rvrt_tms():
    p = PVInverterPlant(w_max=10000, pv=8000, ramp_pct_per_s=100)
    p.write(WMaxLimPct=40, WMaxLimPctEna=1, WMaxLimPctRvrt=70, WMaxLimPctEnaRvrt=1, WMaxLimPctRvrtTms=10)
    assert p.WMaxLimPctRvrtRem == 10
    run(p, 4)
    assert p.WMaxLimPctRvrtRem == pytest.approx(6)
    p.write(WMaxLimPct=40)                     # a control write restarts the timer
    assert p.WMaxLimPctRvrtRem == 10
    run(p, 9.5)
    assert p.WMaxLimPct == 40 and p.W == pytest.approx(4000)
    run(p, 0.6)
    assert p.WMaxLimPct == 70 and p.WMaxLimPctEna == 1 and p.reversions == 1
    assert p.WMaxLimPctRvrtRem == 0
    run(p, 1)
    assert p.W == pytest.approx(7000)
    run(p, 20)
    assert p.reversions == 1                   # disarmed until the next write


def test_no_reversion_when_rvrt_tms_zero():
    p = PVInverterPlant(w_max=10000, pv=8000)
    p.write(WMaxLimPct=40, WMaxLimPctEna=1, WMaxLimPctRvrtTms=0)
    run(p, 30, dt=1.0)
    assert p.WMaxLimPctEna == 1 and p.WMaxLimPctRvrtRem == 0 and p.reversions == 0


def test_energy_counter_integrates_w():
    p = PVInverterPlant(w_max=10000, pv=3600)
    run(p, 100, dt=1.0)
    assert p.TotWhExp == pytest.approx(100.0)  # 3600 W for 100 s = 100 Wh
    assert p.TotWhImp == 0


def test_write_is_validated_and_atomic():
    p = PVInverterPlant(w_max=10000, pv=8000)
    for bad in ({"WMaxLimPct": 101}, {"WMaxLimPct": -1}, {"WMaxLimPctEna": 2}, {"WSet": 20000},
                {"VArSet": 9000}, {"WMaxLimPctRvrtTms": 1.5}, {"WMaxLimPct": float("nan")}, {"WMaxLimPct": "x"}):
        with pytest.raises(ValueError):
            p.write(WMaxLimPctRvrt=50, **bad)
        assert p.WMaxLimPctRvrt == 100.0       # nothing applied
    with pytest.raises(KeyError):
        p.write(W=5)


def test_grid_inputs_are_settable():
    p = PVInverterPlant(w_max=10000, pv=6900, n_phases=1)
    p.v, p.hz = 240.0, 49.9
    assert p.A == pytest.approx(6900 / 240)


def test_clear_sky_shape():
    pv = clear_sky_pv(8000)
    assert pv(3 * 3600) == 0 and pv(22 * 3600) == 0
    assert pv(13 * 3600) == pytest.approx(8000)
    assert 0 < pv(8 * 3600) < pv(11 * 3600) < 8000
    assert pv(13 * 3600 + 86400) == pytest.approx(8000)
    assert constant_pv(5)(123.0) == 5.0
    with pytest.raises(ValueError):
        clear_sky_pv(1, sunrise_s=10, sunset_s=5)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0, 2), st.floats(0, 100), st.integers(0, 1)), max_size=40))
def test_output_always_within_bounds(steps):
    p = PVInverterPlant(w_max=10000, pv=clear_sky_pv(9000), t0_s=12 * 3600)
    for dt, pct, ena in steps:
        p.write(WMaxLimPct=pct, WMaxLimPctEna=ena)
        before = p.W
        p.step(dt)
        assert 0 <= p.W <= min(p.available_w(), 10000) + 1e-9
        assert p.W - before <= 0.1 * 10000 * dt + 1e-6   # never faster than the ramp upwards
