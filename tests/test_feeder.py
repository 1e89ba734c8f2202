"""The feeder model (LinDistFlow) and its coupling to the PV plant: voltage responds to P and Q."""
from __future__ import annotations

import asyncio
import io

import pytest

from gridedge.hil.feeder import Feeder, grid_commands
from gridedge.hil.plant import PVInverterPlant


def test_voltage_rise_follows_linearised_distflow():
    f = Feeder([(0.2, 0.1), (0.3, 0.2)], v_nom_v=230.0, v_source_pu=1.0)
    base = 3 * 230.0 ** 2
    f.set_injection(2, "pv", 9000.0, -3000.0)
    # segment 1 carries the whole injection, segment 2 too: v2 = 1 + (0.5 * 9000 + 0.3 * -3000) / base
    assert f.voltage_pu(1) == pytest.approx(1 + (0.2 * 9000 - 0.1 * 3000) / base)
    assert f.voltage_pu(2) == pytest.approx(1 + (0.5 * 9000 - 0.3 * 3000) / base)
    f.set_load(1, 4000.0)                       # consumption at node 1 lowers both
    assert f.voltage_pu(2) == pytest.approx(1 + (0.2 * 5000 - 0.1 * 3000 + 0.3 * 9000 - 0.2 * 3000) / base)
    f.v_source_pu = 1.05
    assert f.voltage_v(1) == pytest.approx(230.0 * (1.05 + (0.2 * 5000 - 0.1 * 3000) / base))


def test_sensitivities_are_the_linear_model():
    f = Feeder([(0.2, 0.1), (0.3, 0.2), (0.1, 0.4)])
    dp, dq = f.sensitivities()
    v0 = [f.voltage_pu(n) for n in (1, 2, 3)]
    f.set_injection(2, "x", 1000.0, 500.0)
    for i, n in enumerate((1, 2, 3)):
        assert f.voltage_pu(n) - v0[i] == pytest.approx(dp[i][1] * 1000.0 + dq[i][1] * 500.0)
    assert dp[0][0] == dp[0][2] and dp[2][2] > dp[1][1] > dp[0][0]   # the far end is the weakest


def test_bad_feeders_are_refused():
    with pytest.raises(ValueError, match="at least one segment"):
        Feeder([])
    with pytest.raises(ValueError, match="segment 2: r and x must be >= 0"):
        Feeder([(0.1, 0.1), (-0.1, 0.0)])
    with pytest.raises(ValueError, match="node must be 1..1"):
        Feeder([(0.1, 0.1)]).voltage_pu(2)


def test_plant_on_a_feeder_sees_its_own_p_and_q():
    f = Feeder([(0.2, 1.2)], v_source_pu=1.0)
    p = PVInverterPlant(w_max=10000, pv=8000, ramp_pct_per_s=100, grid=f.tap(1, "inv"), var_response_s=0.5)
    assert p.v == pytest.approx(230 * (1 + 0.2 * 8000 / (3 * 230 ** 2)))
    p.write(VArSet=-4000, VArSetEna=1)
    p.step(0.5)
    assert p.VAr == pytest.approx(-4000 * (1 - 2.718281828 ** -1), rel=1e-6)   # first order, tau 0.5 s
    for _ in range(50):
        p.step(0.1)
    assert p.VAr == pytest.approx(-4000, abs=1)
    assert p.v == pytest.approx(230 * (1 + (0.2 * 8000 - 1.2 * 4000) / (3 * 230 ** 2)), abs=0.01)
    f.f_hz = 50.4
    p.step(0.1)
    assert p.hz == 50.4


def test_set_point_reversion_groups():
    p = PVInverterPlant(w_max=10000, pv=8000, ramp_pct_per_s=100)
    p.write(WSet=3000, WSetEna=1, WSetEnaRvrt=0, WSetRvrtTms=5, VArSet=-2000, VArSetEna=1, VArSetEnaRvrt=0,
            VArSetRvrtTms=2)
    for _ in range(25):
        p.step(0.1)
    assert p.VArSetEna == 0 and p.WSetEna == 1 and p.VAr == 0     # Q reverted after 2 s, P not yet
    assert p.rvrt_rem("WSetRvrtTms") == pytest.approx(2.5)
    for _ in range(30):
        p.step(0.1)
    assert p.WSetEna == 0 and p.reversions == 2 and p.W == pytest.approx(8000)
    with pytest.raises(ValueError):
        p.write(WSetRvrtTms=1.5)


def test_grid_commands_from_a_stream():
    async def go():
        f = Feeder([(0.1, 0.1)])
        p = PVInverterPlant(grid=f.tap(1, "inv"))
        await grid_commands(io.StringIO("grid v_pu=1.07 hz=50.2\nnonsense\ngrid v_pu=x\ngrid volt=3\n"), f, p)
        assert (f.v_source_pu, f.f_hz, p.hz) == (1.07, 50.2, 50.2)
        stiff = PVInverterPlant()
        await grid_commands(io.StringIO("grid v_pu=1.1\n"), None, stiff)
        assert stiff.v == pytest.approx(253.0)
    asyncio.run(go())
