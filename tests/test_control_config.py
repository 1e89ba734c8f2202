"""The [control] section: profiles, curve checks with key paths, the site meter, prequalified limits (fuzzed)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.config import ConfigError, parse_config
from gridedge.control.profiles import EN50549_VDE4105, IEEE1547_CAT_B, PROFILES, profile_issues


def base(**control):
    return {"gateway": {"id": "gw"}, "uplink": {"broker": "mqtt://h", "allow_plaintext": True},
            "control": control,
            "devices": [{"id": "inv1", "driver": "sunspec_tcp", "host": "h", "writable": True},
                        {"id": "m1", "driver": "sunspec_tcp", "host": "h", "unit_id": 2, "role": "meter"}]}


def errors(data) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "gateway.toml", check_files=False)
    return ei.value.errors


def test_defaults_and_profile_with_settings():
    c = parse_config(base(), check_files=False).control
    assert c.profile == EN50549_VDE4105 and c.q_mode == "off" and c.freq_watt and not c.volt_watt
    assert c.poc is None and c.devices == () and c.schedule_horizon_s == 172800
    c = parse_config(base(profile="ieee1547_cat_b", settings={"f_nom_hz": 50.0, "olrt_q_s": 3.0,
                                                               "volt_var": [[0.9, 0.3], [1.1, -0.3]]}),
                     check_files=False).control
    assert c.profile.name == "ieee1547_cat_b" and c.profile.f_nom_hz == 50.0 and c.profile.olrt_q_s == 3.0
    assert c.profile.volt_var == ((0.9, 0.3), (1.1, -0.3)) and c.profile.volt_watt == IEEE1547_CAT_B.volt_watt


def test_shipped_profiles_are_valid_curves():
    for p in PROFILES.values():
        assert profile_issues(p) == []


def test_curve_faults_are_named_by_key_path():
    data = base(settings={"volt_var": [[0.92, 0.44], [0.98, 0.0], [0.97, 0.0], [1.08, "x"]],
                          "volt_watt": [[1.06, 1.2]], "watt_var": "no"},
                devices=[{"id": "inv1", "rated_w": 10000.0, "q_max_var": 3000.0}])
    assert errors(data) == [
        "gateway.toml: control.settings.volt_var[0][1]: Q 0.44 pu exceeds the device capability 0.3 pu "
        "(inv1: q_max_var 3000 var of rated_w 10000 W)",
        "gateway.toml: control.settings.volt_var[2][0]: voltage 0.97 must be above the previous point's 0.98 "
        "(points ascend)",
        "gateway.toml: control.settings.volt_var[3][1]: must be a finite number, got string 'x'",
        "gateway.toml: control.settings.volt_watt: needs 2 to 10 points, got 1",
        "gateway.toml: control.settings.volt_watt[0][1]: P 1.2 pu outside 0..1",
        "gateway.toml: control.settings.watt_var: must be an array of [P, Q] pairs, got string 'no'",
    ]


def test_the_profile_curves_are_checked_against_the_capability_too():
    data = base(profile="ieee1547_cat_b", devices=[{"id": "inv1", "rated_w": 10000.0, "q_max_var": 3000.0}])
    errs = errors(data)
    assert errs[0] == ("gateway.toml: control.profile: ieee1547_cat_b volt_var point 0: Q 0.44 pu exceeds the device "
                       "capability 0.3 pu (inv1: q_max_var 3000 var of rated_w 10000 W); set control.settings.volt_var")


def test_poc_and_device_limits():
    assert errors(base(poc={"meter": "inv1", "export_limit_w": 0.0})) == [
        "gateway.toml: control.poc.meter: 'inv1' is not a meter (role 'inverter')"]
    assert errors(base(poc={"meter": "m9", "export_limit_w": 0.0})) == [
        "gateway.toml: control.poc.meter: no device 'm9' in [[devices]] (devices: inv1, m1)"]
    assert errors(base(poc={"meter": "m1"})) == [
        "gateway.toml: control.poc: needs export_limit_w, import_limit_w or both"]
    assert "gateway.toml: control.devices[1].id: duplicate 'inv1', already used by control.devices[0].id" in \
        errors(base(devices=[{"id": "inv1"}, {"id": "inv1"}]))
    assert errors(base(devices=[{"id": "inv9"}, {"id": "inv1", "p_min_w": -10.0, "p_max_w": -20.0},
                                {"id": "m1", "rated_w": 5.0, "p_max_w": 6.0}], pf=0.0)) == [
        "gateway.toml: control.pf: must not be 0 (|pf| in (0, 1]; > 0 injects, < 0 absorbs reactive power)",
        "gateway.toml: control.devices[0].id: no device 'inv9' in [[devices]] (devices: inv1, m1)",
        "gateway.toml: control.devices[1].p_min_w: must not be above p_max_w (-10 > -20)",
        "gateway.toml: control.devices[1].p_min_w: an inverter cannot absorb active power, got -10",
        "gateway.toml: control.devices[2].p_max_w: must not exceed rated_w (6 > 5)",
    ]
    c = parse_config(base(poc={"meter": "m1", "export_limit_w": 5000.0, "fail_safe_pct": 60.0},
                          devices=[{"id": "inv1", "p_max_w": 8000.0}]), check_files=False).control
    assert (c.poc.meter, c.poc.export_limit_w, c.poc.import_limit_w, c.poc.fail_safe_pct) == ("m1", 5000.0, None, 60.0)
    assert c.device("inv1").p_max_w == 8000.0 and c.device("m1").p_max_w is None


def test_unknown_keys_and_choices():
    assert errors(base(profile="vde4105", q_mode="voltvar", settings={"olrt": 1})) == [
        "gateway.toml: control.profile: must be one of: en50549_vde4105, ieee1547_cat_b; got 'vde4105' "
        "(did you mean 'en50549_vde4105'?)",
        "gateway.toml: control.q_mode: must be one of: off, volt_var, watt_var, constant_pf, constant_q; got "
        "'voltvar' (did you mean 'volt_var'?)",
        "gateway.toml: control.settings.olrt: unknown key (did you mean 'olrt_q_s'?)",
    ]


json_like = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=10)
pairs = st.lists(st.lists(st.floats(-2, 2) | st.integers(-2, 2) | json_like, min_size=0, max_size=3), max_size=12)
control_like = st.fixed_dictionaries({}, optional={
    "profile": st.sampled_from(list(PROFILES)) | json_like, "q_mode": st.sampled_from(["off", "volt_var"]) | json_like,
    "pf": st.floats(-1.5, 1.5) | json_like, "settings": st.fixed_dictionaries({}, optional={
        "volt_var": pairs | json_like, "volt_watt": pairs, "watt_var": pairs, "olrt_q_s": json_like | st.floats(-1, 700),
        "f_nom_hz": json_like}),
    "poc": st.fixed_dictionaries({}, optional={"meter": st.sampled_from(["m1", "inv1", "x"]) | json_like,
                                               "export_limit_w": json_like, "import_limit_w": json_like}),
    "devices": st.lists(st.fixed_dictionaries({"id": st.sampled_from(["inv1", "m1", "z"]) | json_like}, optional={
        "rated_w": json_like | st.floats(0, 1e5), "p_max_w": json_like, "p_min_w": json_like,
        "q_max_var": json_like | st.floats(0, 1e5)}), max_size=3) | json_like,
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(control_like)
def test_fuzz_control_section_only_config_errors(control):
    try:
        cfg = parse_config(base(**control), "gateway.toml", check_files=False)
    except ConfigError as e:
        assert e.errors and all(line.startswith("gateway.toml: ") for line in e.errors)
        return
    assert profile_issues(cfg.control.profile) == [] or "settings" not in control
