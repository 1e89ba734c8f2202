"""The controllers of one cycle, without I/O: measurements in, the points each device gets out."""
from __future__ import annotations

import json
import math

import pytest

import gridedge.cext as kernels
from gridedge import contract
from gridedge.cext import twin
from gridedge.control.book import ActivationBook
from gridedge.control.capability import Capability
from gridedge.control.controllers import PocLimit
from gridedge.control.measure import Meas, read_meas
from gridedge.control.planner import HEADROOM, Planner
from gridedge.control.profiles import EN50549_VDE4105, IEEE1547_CAT_B
from gridedge.core.model import Sample, Validity

S = 1_000_000_000
T0 = 1_800_000_000 * S
DT = 0.2
ALL = frozenset({"WMaxLimPctRvrtTms", "WSetRvrtTms", "VArSetRvrtTms"})


def inv(rated=10000.0, **kw):
    return Capability.build("inv1", "inverter", True, rated, **kw)


def meas(p=8000.0, q=0.0, v=230.0, hz=50.0, ts=T0, supports=ALL, **kw):
    return Meas(p_w=p, q_var=q, v_v=v, hz=hz, rated_w=10000.0, ts_ns=ts, supports=supports, **kw)


def run(planner, m, caps, in_force=(), cycles=1):
    plan = None
    for _ in range(cycles):
        plan = planner.plan(DT, m, caps, list(in_force))
    return plan


def active(ctype="limit_active_power", device="inv1", caps_fn=None, **params):
    """An activation in force, as the book gives it to the planner (with its effective shares)."""
    caps_fn = caps_fn or (lambda: {"inv1": inv(), "bat1": Capability.build("bat1", "battery", True, 6000.0),
                                   "load1": Capability.build("load1", "load", True, 4000.0)})
    book = ActivationBook(caps_fn)
    doc = {"schema": contract.SCHEMA_COMMAND, "cmd_id": "a1", "type": ctype, "device": device,
           "params": params | {"duration_s": 60}}
    book.submit(contract.parse_command(json.dumps(doc).encode(), T0, max_activation_s=3600), T0)
    (act,) = book.in_force(T0)
    return act, book.effective(act)


def test_idle_inverter_gets_no_writes():
    p = Planner(EN50549_VDE4105)
    plan = run(p, {"inv1": meas()}, {"inv1": inv()}, cycles=10)
    assert plan.devices["inv1"].points == {}


def test_remote_limit_is_written_at_once_with_device_reversion_then_released():
    p = Planner(EN50549_VDE4105, revert_s=60)
    act = active(limit_pct=30)
    plan = run(p, {"inv1": meas()}, {"inv1": inv()}, [act])
    dp = plan.devices["inv1"]
    assert dp.points == {"WMaxLimPct": 30.0, "WMaxLimPctEna": 1, }
    assert dp.reversion == {"WMaxLimPctRvrt": 100.0, "WMaxLimPctEnaRvrt": 0, "WMaxLimPctRvrtTms": 60}
    assert dp.carries == {"a1"} and dp.remote
    # without the device's reversion points, nothing of them is written
    p2 = Planner(EN50549_VDE4105)
    assert run(p2, {"inv1": meas(supports=frozenset())}, {"inv1": inv()}, [act]).devices["inv1"].reversion == {}
    # released without a release ramp: the safe default (limit disabled) at once
    p = Planner(EN50549_VDE4105.with_settings(ramp_up_pct_per_s=0.0))
    run(p, {"inv1": meas(p=3000.0)}, {"inv1": inv()}, [act])
    assert run(p, {"inv1": meas(p=3000.0)}, {"inv1": inv()}).devices["inv1"].points == \
        {"WMaxLimPct": 100, "WMaxLimPctEna": 0}
    # (the plan keeps the safe default; the writer writes only what differs from what the device holds)
    assert run(p, {"inv1": meas(p=8000.0)}, {"inv1": inv()}).devices["inv1"].points == \
        {"WMaxLimPct": 100, "WMaxLimPctEna": 0}


def test_release_ramp_of_the_profile_limits_the_rise():
    prof = EN50549_VDE4105.with_settings(ramp_up_pct_per_s=10.0)   # 10 %/s
    p = Planner(prof)
    run(p, {"inv1": meas(p=3000.0)}, {"inv1": inv()}, [active(limit_pct=30)])
    lims = [run(p, {"inv1": meas(p=3000.0)}, {"inv1": inv()}).devices["inv1"].points["WMaxLimPct"] for _ in range(5)]
    assert lims == pytest.approx([32.0, 34.0, 36.0, 38.0, 40.0])   # held even where it no longer binds the output
    for _ in range(80):
        last = run(p, {"inv1": meas(p=3000.0)}, {"inv1": inv()}).devices["inv1"].points
    assert last == {"WMaxLimPct": 100, "WMaxLimPctEna": 0}


def test_volt_watt_acts_on_the_measured_output_with_its_response_time():
    prof = IEEE1547_CAT_B.with_settings(f_nom_hz=50.0, olrt_p_s=10.0)
    p = Planner(prof, volt_watt=True)
    # 1.08 pu is half-way down the 1.06 -> 1.10 curve: P target 0.5 pu, from the measured 0.8 pu
    plan = run(p, {"inv1": meas(p=8000.0, v=1.08 * 230)}, {"inv1": inv()})
    first = plan.devices["inv1"].points["WMaxLimPct"]
    assert first < 80.0 + 100 * HEADROOM and first > 50.0
    alpha = 1 - math.exp(-DT / (10.0 / math.log(10)))
    assert first == pytest.approx(100 * ((0.8 + HEADROOM) + alpha * (0.5 - 0.8 - HEADROOM)), abs=1e-3)
    plan = run(p, {"inv1": meas(p=8000.0, v=1.08 * 230)}, {"inv1": inv()}, cycles=49)
    assert plan.devices["inv1"].points["WMaxLimPct"] == pytest.approx(50 + 0.1 * (80 + 100 * HEADROOM - 50), abs=0.01)


def test_frequency_watt_reduces_from_the_latched_output():
    p = Planner(EN50549_VDE4105.with_settings(olrt_p_s=0.0, ramp_up_pct_per_s=0.0))
    # LFSM-O: 50.7 Hz is 0.5 Hz beyond 50.2: 40 %/Hz of the latched 0.6 pu (VDE-AR-N 4105) takes 0.12 pu off
    plan = run(p, {"inv1": meas(p=6000.0, hz=50.7)}, {"inv1": inv()})
    assert plan.devices["inv1"].points == {"WMaxLimPct": pytest.approx(48.0), "WMaxLimPctEna": 1}
    # the output follows the ceiling, but the droop keeps counting from the output before the disturbance
    plan = run(p, {"inv1": meas(p=4800.0, hz=50.7)}, {"inv1": inv()})
    assert plan.devices["inv1"].points["WMaxLimPct"] == pytest.approx(48.0)
    plan = run(p, {"inv1": meas(p=4000.0, hz=50.0)}, {"inv1": inv()}, cycles=3)
    assert plan.devices["inv1"].points == {"WMaxLimPct": 100, "WMaxLimPctEna": 0}


def test_lfsm_o_of_the_vde_profile_counts_in_the_momentary_power():
    """VDE-AR-N 4105: 40 %/Hz of P_M, the output frozen when 50.2 Hz is crossed; IEEE 1547 counts in P_max."""
    p = Planner(EN50549_VDE4105.with_settings(olrt_p_s=0.0, ramp_up_pct_per_s=0.0))
    plan = run(p, {"inv1": meas(p=6000.0, hz=50.7)}, {"inv1": inv()})
    assert plan.devices["inv1"].points == {"WMaxLimPct": pytest.approx(48.0), "WMaxLimPctEna": 1}  # 0.6 x (1 - 0.2)
    p = Planner(EN50549_VDE4105.with_settings(olrt_p_s=0.0, ramp_up_pct_per_s=0.0, of_reference="p_max"))
    plan = run(p, {"inv1": meas(p=6000.0, hz=50.7)}, {"inv1": inv()})
    assert plan.devices["inv1"].points["WMaxLimPct"] == pytest.approx(40.0)                         # 0.6 - 0.2
    assert IEEE1547_CAT_B.of_reference == "p_max" and EN50549_VDE4105.of_reference == "p_momentary"
    assert IEEE1547_CAT_B.olrt_vw_s == 10.0 and IEEE1547_CAT_B.olrt_p_s == 5.0


def test_volt_var_and_constant_pf():
    p = Planner(EN50549_VDE4105.with_settings(olrt_q_s=0.0), q_mode="volt_var")
    plan = run(p, {"inv1": meas(v=1.06 * 230)}, {"inv1": inv()})
    # (1.04, 0) -> (1.08, -0.33): -0.165 pu at 1.06
    assert plan.devices["inv1"].points == {"VArSet": pytest.approx(-1650.0), "VArSetEna": 1}
    assert plan.devices["inv1"].reversion == {"VArSetEnaRvrt": 0, "VArSetRvrtTms": 60}
    p = Planner(EN50549_VDE4105.with_settings(olrt_q_s=0.0), q_mode="constant_pf", pf=-0.95)
    plan = run(p, {"inv1": meas(p=5000.0)}, {"inv1": inv()})
    assert plan.devices["inv1"].points["VArSet"] == pytest.approx(-5000 * math.tan(math.acos(0.95)), abs=0.1)


def test_a_remote_reactive_set_point_replaces_the_local_function_and_is_clamped():
    p = Planner(EN50549_VDE4105.with_settings(olrt_q_s=0.0), q_mode="volt_var")
    act = active("set_reactive_power", var=6000)     # beyond 44 % of 10 kW: the book clamps it to 4400
    plan = run(p, {"inv1": meas(v=1.06 * 230)}, {"inv1": inv()}, [act])
    assert plan.devices["inv1"].points["VArSet"] == pytest.approx(4400.0)
    act = active("set_power_factor", pf=0.9)
    plan = run(p, {"inv1": meas(p=4000.0, v=1.06 * 230)}, {"inv1": inv()}, [act])
    assert plan.devices["inv1"].points["VArSet"] == pytest.approx(4000 * math.tan(math.acos(0.9)), abs=0.1)


def test_battery_set_point_both_ways_within_its_limits():
    caps = {"bat1": Capability.build("bat1", "battery", True, 6000.0, cfg_p_min_w=-3000.0)}
    p = Planner(EN50549_VDE4105)
    m = {"bat1": meas(p=0.0)}
    act = active("set_active_power", device="bat1", caps_fn=lambda: caps, w=-5000)
    plan = run(p, m, caps, [act])
    assert plan.devices["bat1"].points == {"WSet": -3000.0, "WSetEna": 1}
    assert plan.devices["bat1"].reversion == {"WSetEnaRvrt": 0, "WSetRvrtTms": 60}
    act = active("set_active_power", device="bat1", caps_fn=lambda: caps, w=2500)
    assert run(p, m, caps, [act]).devices["bat1"].points == {"WSet": 2500.0, "WSetEna": 1}
    # a full battery does not charge, an empty one does not discharge
    act = active("set_active_power", device="bat1", caps_fn=lambda: caps, w=-2000)
    assert run(p, {"bat1": meas(p=0.0, soc_pct=97.0)}, caps, [act]).devices["bat1"].points["WSet"] == 0.0
    assert run(p, {"bat1": meas(p=0.0)}, caps).devices["bat1"].points == {"WSetEna": 0}   # released


def test_poc_export_limit_closes_the_loop_on_the_site_meter_and_fails_safe():
    poc = PocLimit("m1", export_limit_w=4000.0, import_limit_w=None, fail_safe_pct=50.0)
    p = Planner(EN50549_VDE4105.with_settings(olrt_p_s=0.0), poc=poc)
    caps = {"inv1": inv()}
    # the site exports 6 kW with the inverter at 8 kW: the ceiling goes to 8 - 0.7 * 2 = 6.6 kW
    plan = run(p, {"inv1": meas(p=8000.0), "m1": Meas(p_w=6000.0, ts_ns=T0)}, caps)
    assert plan.devices["inv1"].points["WMaxLimPct"] == pytest.approx(66.0)
    assert plan.devices["inv1"].reversion["WMaxLimPctRvrt"] == 50.0      # the device falls back to the fail-safe
    # the same meter sample again moves nothing; a new one moves the rest of the way
    plan = run(p, {"inv1": meas(p=6600.0), "m1": Meas(p_w=6000.0, ts_ns=T0)}, caps)
    assert plan.devices["inv1"].points["WMaxLimPct"] == pytest.approx(66.0)
    plan = run(p, {"inv1": meas(p=6600.0), "m1": Meas(p_w=4600.0, ts_ns=T0 + S)}, caps)
    assert plan.devices["inv1"].points["WMaxLimPct"] == pytest.approx(61.8)
    # the meter falls silent: the generators go to the fail-safe ceiling
    plan = run(p, {"inv1": meas(p=6180.0), "m1": Meas()}, caps)
    assert plan.devices["inv1"].points["WMaxLimPct"] == pytest.approx(50.0) and poc.meter_silent


def test_poc_import_limit_caps_the_controllable_load():
    poc = PocLimit("m1", export_limit_w=None, import_limit_w=5000.0)
    p = Planner(EN50549_VDE4105, poc=poc)
    caps = {"load1": Capability.build("load1", "load", True, 4000.0)}
    plan = run(p, {"load1": Meas(p_w=-4000.0), "m1": Meas(p_w=-7000.0, ts_ns=T0)}, caps)
    # consumption cap 4000 - 0.7 * 2000 = 2600 W = 65 % of the load's rating
    assert plan.devices["load1"].points == {"WMaxLimPct": pytest.approx(65.0), "WMaxLimPctEna": 1}
    act = active("limit_active_power", device="load1", limit_pct=50)
    plan = run(p, {"load1": Meas(p_w=-2600.0), "m1": Meas(p_w=-5600.0, ts_ns=T0 + S)}, caps, [act])
    assert plan.devices["load1"].points["WMaxLimPct"] == pytest.approx(50.0)


def test_prequalified_ceiling_is_always_enforced():
    caps = {"inv1": inv(cfg_p_max_w=7000.0)}
    plan = run(Planner(EN50549_VDE4105.with_settings(ramp_up_pct_per_s=0.0)), {"inv1": meas(p=6000.0)}, caps,
               cycles=30)
    assert plan.devices["inv1"].points == {"WMaxLimPct": pytest.approx(70.0, abs=0.01), "WMaxLimPctEna": 1}


def test_read_meas_takes_good_fresh_samples_only():
    image = {"inv1/W": Sample("inv1/W", T0, 5000.0, "W"),
             "inv1/VAr": Sample("inv1/VAr", T0 - 10 * S, 100.0, "var"),            # stale
             "inv1/Hz": Sample("inv1/Hz", T0, None, "Hz", Validity.INVALID),
             "inv1/WMax": Sample("inv1/WMax", T0 - 3600 * S, 10000.0, "W"),         # ratings never go stale
             "inv1/WMaxLimPctRvrtTms": Sample("inv1/WMaxLimPctRvrtTms", T0, 0, "s")}
    m = read_meas(image, "inv1", T0, stale_s=3.0)
    assert (m.p_w, m.q_var, m.hz, m.rated_w, m.ts_ns) == (5000.0, None, None, 10000.0, T0)
    assert m.supports == {"WMaxLimPctRvrtTms"}


def test_compiled_and_twin_plan_the_same():
    def plans(k):
        p = Planner(IEEE1547_CAT_B.with_settings(f_nom_hz=50.0), q_mode="volt_var", volt_watt=True, kernels=k)
        caps = {"inv1": inv(), "bat1": Capability.build("bat1", "battery", True, 6000.0)}
        out = []
        for i in range(20):
            m = {"inv1": meas(p=7000.0 - 100 * i, v=(1.0 + 0.005 * i) * 230, hz=50.0 + 0.05 * i),
                 "bat1": meas(p=-1000.0)}
            out.append(p.plan(DT, m, caps, [active("set_active_power", device="bat1", w=-1500)]).devices)
        return [{d: dp.points for d, dp in step.items()} for step in out]
    a, b = plans(kernels), plans(twin)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for d in x:
            assert x[d].keys() == y[d].keys()
            for k in x[d]:
                assert x[d][k] == pytest.approx(y[d][k], abs=1e-6)


def test_an_unrated_inverter_still_takes_a_limit_in_percent():
    unrated = {"inv1": Capability.build("inv1", "inverter", True, None)}
    act = active(limit_pct=35, caps_fn=lambda: unrated)
    p = Planner(EN50549_VDE4105, q_mode="volt_var")
    plan = run(p, {"inv1": Meas()}, unrated, [act])
    assert plan.devices["inv1"].points == {"WMaxLimPct": 35.0, "WMaxLimPctEna": 1} and plan.devices["inv1"].carries
    assert run(p, {"inv1": Meas()}, unrated).devices["inv1"].points == {"WMaxLimPct": 100, "WMaxLimPctEna": 0}
