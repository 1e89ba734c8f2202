"""The controllers as units, table-driven: (measurements, capabilities, activations) -> what each asks of each
device; then the planner's merge of them into the points each device gets in one cycle."""
from __future__ import annotations

import json
import math

import pytest

from gridedge import contract
from gridedge.cext.twin import QMode
from gridedge.control.book import ActivationBook
from gridedge.control.capability import Capability
from gridedge.control.controllers import (Contribution, CycleView, LocalFunctions, PmLatch, PocLimit, Prequalified,
                                          QAsk, RemoteSetpoints)
from gridedge.control.measure import Meas
from gridedge.control.planner import Planner
from gridedge.control.profiles import EN50549_VDE4105, IEEE1547_CAT_B

S = 1_000_000_000
T0 = 1_800_000_000 * S
ALL = frozenset({"WMaxLimPctRvrtTms", "WSetRvrtTms", "VArSetRvrtTms"})

CAPS = {
    "inv1": Capability.build("inv1", "inverter", True, 10000.0),
    "inv2": Capability.build("inv2", "inverter", True, 5000.0, cfg_p_max_w=4000.0),
    "bat1": Capability.build("bat1", "battery", True, 6000.0, cfg_p_min_w=-3000.0),
    "load1": Capability.build("load1", "load", True, 4000.0, cfg_p_min_w=-3000.0),
    "ro1": Capability.build("ro1", "inverter", False, 10000.0),
    "new1": Capability.build("new1", "inverter", True, None),          # no rating yet
    "m1": Capability.build("m1", "meter", False, None),
}


def in_force(*acts):
    """(type, device, params) -> what the book gives the planner: (activation, effective share per device)."""
    book = ActivationBook(lambda: CAPS)
    for i, (ctype, device, params) in enumerate(acts):
        doc = {"schema": contract.SCHEMA_COMMAND, "cmd_id": f"a{i}", "type": ctype, "device": device,
               "params": params | {"duration_s": 60}}
        book.submit(contract.parse_command(json.dumps(doc).encode(), T0, max_activation_s=3600), T0)
    return [(a, book.effective(a)) for a in book.in_force(T0)]


def meas(p=8000.0, v=230.0, hz=50.0, **kw):
    return Meas(p_w=p, q_var=0.0, v_v=v, hz=hz, ts_ns=T0, supports=ALL, **kw)


def view(acts=(), caps=CAPS, **m):
    return CycleView(0.2, {d: meas() for d in caps} | m, caps, in_force(*acts))


# ---------------------------------------------------------------- each controller on its own

def test_prequalified_limits_are_permanent_ceilings():
    assert Prequalified().contribute(view()) == {     # inv1 at its rating; read-only, unrated, battery, meter
        "inv2": Contribution(p_ceiling=0.8), "load1": Contribution(p_ceiling=0.75)}


REMOTE = [  # (activation, device) -> what RemoteSetpoints asks of it
    (("limit_active_power", "inv1", {"limit_pct": 40}), Contribution(p_ceiling=0.4, carries_p={"a0"})),
    (("set_active_power", "inv1", {"w": 2500}), Contribution(p_ceiling=0.25, carries_p={"a0"})),
    (("set_active_power", "bat1", {"w": -2000}), Contribution(p_set=-2000 / 6000, carries_p={"a0"})),
    (("limit_active_power", "load1", {"limit_pct": 50}), Contribution(p_ceiling=0.5, carries_p={"a0"})),
    (("limit_active_power", "new1", {"limit_pct": 35}), Contribution(p_ceiling=0.35, carries_p={"a0"})),
    (("set_reactive_power", "inv1", {"var": -2000}),
     Contribution(q=QAsk(QMode.FIXED_Q, -0.2), carries_q={"a0"})),
    (("set_reactive_power", "inv1", {"var": 9000}),                  # the book clamps it to 44 % of 10 kW
     Contribution(q=QAsk(QMode.FIXED_Q, 0.44), carries_q={"a0"})),
    (("set_power_factor", "bat1", {"pf": -0.9}), Contribution(q=QAsk(QMode.FIXED_PF, pf=-0.9), carries_q={"a0"})),
]


@pytest.mark.parametrize("act, expected", REMOTE, ids=[f"{a[0]}-{a[1]}" for a, _ in REMOTE])
def test_remote_setpoints(act, expected):
    out = RemoteSetpoints().contribute(view([act]))
    assert out.keys() == {act[1]}
    got = out[act[1]]
    assert got.carries_p == expected.carries_p and got.carries_q == expected.carries_q and got.q == expected.q
    for f in ("p_ceiling", "p_set"):
        assert getattr(got, f) == pytest.approx(getattr(expected, f)), f


LOCAL = [  # (q_mode, pf, q_pct) -> the reactive power function every controlled device gets
    ("off", 1.0, 0.0, None),
    ("volt_var", 1.0, 0.0, QAsk(QMode.VOLT_VAR, 0.0, 1.0)),
    ("watt_var", 1.0, 0.0, QAsk(QMode.WATT_VAR, 0.0, 1.0)),
    ("constant_pf", -0.95, 0.0, QAsk(QMode.FIXED_PF, 0.0, -0.95)),
    ("constant_q", 1.0, -30.0, QAsk(QMode.FIXED_Q, -0.3, 1.0)),
]


@pytest.mark.parametrize("q_mode, pf, q_pct, expected", LOCAL, ids=[r[0] for r in LOCAL])
def test_local_reactive_power_function(q_mode, pf, q_pct, expected):
    out = LocalFunctions(EN50549_VDE4105, q_mode=q_mode, pf=pf, q_pct=q_pct).contribute(view())
    assert {d: c.q for d, c in out.items()} == ({} if expected is None else dict.fromkeys(("inv1", "inv2", "bat1"),
                                                                                       expected))


PM = [  # frequency, measured output (pu) per cycle -> the P_M frequency-watt counts from (EN 50549: 50 +/- 0.2 Hz)
    ("frozen at the crossing, held while above",
     [(50.1, 0.8), (50.3, 0.6), (50.7, 0.4), (50.3, 0.5)], [None, 0.6, 0.6, 0.6]),
    ("released at the threshold, frozen anew at the next crossing",
     [(50.5, 0.6), (50.2, 0.5), (50.21, 0.7)], [0.6, None, 0.7]),
    ("under-frequency as well", [(49.7, 0.3), (49.5, 0.9), (49.8, 0.9)], [0.3, 0.3, None]),
    ("clipped to 0..1", [(50.5, 1.3)], [1.0]),
    ("no frequency measured: in band", [(None, 0.5)], [None]),
]


@pytest.mark.parametrize("steps, expected", [r[1:] for r in PM], ids=[r[0] for r in PM])
def test_p_m_of_frequency_watt(steps, expected):
    local = LocalFunctions(EN50549_VDE4105)
    got = []
    for hz, p in steps:
        got.append(local.contribute(view(inv1=meas(p=p * 10000, hz=hz))).get("inv1", Contribution()).p_m)
    assert got == expected
    assert PmLatch().update(True, -0.2) == 0.0
    off = LocalFunctions(EN50549_VDE4105, freq_watt=False)
    assert off.contribute(view(inv1=meas(hz=51.0))) == {}      # frequency-watt off, no Q function: nothing


POC = [  # (site meter W, inverter outputs W) -> generator ceilings (pu), export limit 4 kW, gain 0.7
    ("within the limit: nothing", 3000.0, {"inv1": 6000.0, "inv2": 3000.0}, {}),
    ("2 kW over: 9 - 1.4 = 7.6 kW shared by prequalified P", 6000.0, {"inv1": 6000.0, "inv2": 3000.0},
     {"inv1": 7600 * 10 / 14 / 10000, "inv2": 7600 * 4 / 14 / 5000}),
]


@pytest.mark.parametrize("site_w, outputs, expected", [r[1:] for r in POC], ids=[r[0] for r in POC])
def test_poc_export_limit(site_w, outputs, expected):
    poc = PocLimit("m1", export_limit_w=4000.0, import_limit_w=None)
    v = view(m1=Meas(p_w=site_w, ts_ns=T0), **{d: meas(p=w) for d, w in outputs.items()})
    got = {d: c.p_ceiling for d, c in poc.contribute(v).items()}
    assert got == pytest.approx(expected)


# ---------------------------------------------------------------- the planner: all of them, one cycle

NO_RAMP = EN50549_VDE4105.with_settings(ramp_up_pct_per_s=0.0, olrt_p_s=0.0, olrt_q_s=0.0)
LOAD75 = {"WMaxLimPct": 75.0, "WMaxLimPctEna": 1}     # load1's prequalified consumption: 3 of its 4 kW
PLANS = [  # (planner settings, measurements, activations) -> points per device
    ("idle: nothing written but the prequalified ceilings", {}, {}, [],
     {"inv2": {"WMaxLimPct": 80.0, "WMaxLimPctEna": 1}, "load1": LOAD75}),
    ("a remote limit beats the prequalified ceiling", {}, {}, [("limit_active_power", "inv2", {"limit_pct": 30})],
     {"inv2": {"WMaxLimPct": 30.0, "WMaxLimPctEna": 1}, "load1": LOAD75}),
    ("the tighter of remote and frequency-watt (P_M 0.8: 40 %/Hz x 0.5 Hz)", {}, {"inv1": meas(hz=50.7)},
     [("limit_active_power", "inv1", {"limit_pct": 70})],
     {"inv1": {"WMaxLimPct": 64.0, "WMaxLimPctEna": 1}, "inv2": {"WMaxLimPct": 80.0, "WMaxLimPctEna": 1},
      "load1": LOAD75}),
    ("a remote Q set-point replaces volt-var", {"q_mode": "volt_var"}, {},
     [("set_reactive_power", "inv1", {"var": -1000})],
     {"inv1": {"VArSet": -1000.0, "VArSetEna": 1}, "inv2": {"VArSet": 0.0, "VArSetEna": 1,
                                                           "WMaxLimPct": 80.0, "WMaxLimPctEna": 1},
      "bat1": {"VArSet": 0.0, "VArSetEna": 1}, "load1": LOAD75}),
    ("battery set-point clamped to its prequalified charge; load cap; unrated inverter in %", {}, {},
     [("set_active_power", "bat1", {"w": -5000}), ("limit_active_power", "load1", {"limit_pct": 50}),
      ("limit_active_power", "new1", {"limit_pct": 35})],
     {"bat1": {"WSet": -3000.0, "WSetEna": 1}, "load1": {"WMaxLimPct": 50.0, "WMaxLimPctEna": 1},
      "new1": {"WMaxLimPct": 35.0, "WMaxLimPctEna": 1}, "inv2": {"WMaxLimPct": 80.0, "WMaxLimPctEna": 1}}),
]


@pytest.mark.parametrize("settings, m, acts, expected", [r[1:] for r in PLANS], ids=[r[0] for r in PLANS])
def test_planner_merges_the_controllers(settings, m, acts, expected):
    p = Planner(NO_RAMP, **settings)
    v = view(acts, **m)
    plan = p.plan(v.dt, v.meas, v.caps, v.in_force)
    got = {d: dp.points for d, dp in plan.devices.items() if dp.points}
    assert got.keys() == expected.keys()
    for d, points in expected.items():
        assert got[d] == pytest.approx(points), d


def test_a_new_function_is_one_more_unit():
    """E.g. a site rule 'inv1 never above 60 %': appended to the planner's controllers, merged like the others."""
    class Cap60:
        def contribute(self, view):
            return {"inv1": Contribution(p_ceiling=0.6)}

    p = Planner(NO_RAMP)
    p.controllers.append(Cap60())
    v = view()
    plan = p.plan(v.dt, v.meas, v.caps, v.in_force)
    assert plan.devices["inv1"].points == {"WMaxLimPct": 60.0, "WMaxLimPctEna": 1}
    assert plan.devices["inv1"].reversion == {"WMaxLimPctRvrt": 100.0, "WMaxLimPctEnaRvrt": 0, "WMaxLimPctRvrtTms": 60}
    assert not math.isnan(plan.devices["inv1"].points["WMaxLimPct"])


def test_ieee_profile_counts_lfsm_o_in_the_rating():
    p = Planner(IEEE1547_CAT_B.with_settings(olrt_p_s=0.0, f_nom_hz=50.0, db_of_hz=0.2))
    v = view(inv1=meas(p=6000.0, hz=50.7))
    assert p.plan(v.dt, v.meas, v.caps, v.in_force).devices["inv1"].points["WMaxLimPct"] == pytest.approx(40.0)
