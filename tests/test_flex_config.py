"""The [flex] configuration section: defaults, messages with file and key path, fuzzing."""
from __future__ import annotations

import copy
import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.config import Config, ConfigError, parse_config
from gridedge.flex.settings import FlexConfig, FlexConfigError, parse_flex


def base(**flex) -> dict:
    return {"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
            "devices": [{"id": "inv1", "driver": "sunspec_tcp", "host": "10.0.0.2", "points": ["W", "TotWhExp", "WMax"]},
                        {"id": "m1", "driver": "sunspec_tcp", "host": "10.0.0.3"}],
            "flex": flex}


PV = {"id": "pv1", "kind": "inverter", "energy_export": "inv1/TotWhExp", "power": "inv1/W"}


def errors(data) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "gateway.toml", check_files=False)
    return ei.value.errors


def test_defaults_without_a_flex_section():
    data = base()
    del data["flex"]
    cfg = parse_config(data)
    assert cfg.flex == FlexConfig() and cfg.flex.resources == ()


def test_a_full_resource():
    cfg = parse_config(base(isp_min=5, holidays=[dt.date(2026, 12, 25), "2026-12-26"], accuracy_window="06:30-24:00",
                            resources=[{**PV, "baseline": {"method": "meter_before_after", "mode": "interpolate"},
                                        "prequalification": {"min_quantity_w": 100, "max_quantity_w": 200}},
                                       {"id": "b1", "kind": "battery", "power": "m1/W", "soc": "m1/SoC",
                                        "capacity_wh": 1e4, "max_charge_w": 5e3, "max_discharge_w": 5e3}]))
    fx = cfg.flex
    assert fx.isp_min == 5 and fx.holidays == {dt.date(2026, 12, 25), dt.date(2026, 12, 26)}
    assert fx.accuracy_window == (390, 1440)
    pv, bat = fx.resources
    assert pv.devices == ("inv1",) and pv.baseline_method == "meter_before_after"
    assert pv.baseline_params == {"mode": "interpolate", "isps": 1}
    assert pv.prequalification.min_quantity_w == 100.0 and pv.prequalification.max_duration_s is None
    assert (bat.capacity_wh, bat.soc_min_pct, bat.efficiency, bat.devices) == (1e4, 10.0, 0.95, ("m1",))
    assert isinstance(cfg, Config)


def test_messages_name_file_and_key_path():
    data = base(isp_min=10, tolerance_pct=-1, accuracy_window="20:00-08:00", holidays=["2026-02-30", 5],
                resources=[{**PV, "energy_import": "inv1/TotWhImp", "shed_w": 5.0,
                            "baseline": {"method": "x_of_y", "x": 12, "y": 5}},
                           {"id": "b1", "kind": "battery", "power": "bat9/W", "soc_min_pct": 95},
                           {"id": "pv1", "kind": "load", "power": "m1/W", "baseline": {"method": "x_of_yy"}},
                           {"id": "l2", "kind": "meter", "prequalification": {"min_duration_s": 10, "max_duration_s": 5}},
                           {"id": "l3", "kind": "meter", "power": "m1/W",
                            "baseline": {"method": "rolling_average", "lookback_days": 90}}])
    assert sorted(errors(data)) == sorted([
        "gateway.toml: flex.isp_min: must be one of 1, 5, 15, 30, 60 (minutes), got 10",
        "gateway.toml: flex.tolerance_pct: must be >= 0, got -1.0",
        "gateway.toml: flex.accuracy_window: must be HH:MM-HH:MM within one day, start before end, got string '20:00-08:00'",
        "gateway.toml: flex.holidays[0]: is not a valid date (day is out of range for month), got string '2026-02-30'",
        "gateway.toml: flex.holidays[1]: must be a date like 2026-12-25, got integer 5",
        "gateway.toml: flex.resources[0].shed_w: only for kind 'load', not 'inverter'",
        "gateway.toml: flex.resources[0].baseline.x: must be <= y (5), got 12",
        "gateway.toml: flex.resources[0].energy_import: device 'inv1' does not poll 'TotWhImp' (add it to its points)",
        "gateway.toml: flex.resources[1].soc: required key missing (kind 'battery')",
        "gateway.toml: flex.resources[1].capacity_wh: required key missing (kind 'battery')",
        "gateway.toml: flex.resources[1].max_charge_w: required key missing (kind 'battery')",
        "gateway.toml: flex.resources[1].max_discharge_w: required key missing (kind 'battery')",
        "gateway.toml: flex.resources[1].soc_min_pct: must be below soc_max_pct (90.0)",
        "gateway.toml: flex.resources[1].power: no device 'bat9' in devices (known: inv1, m1)",
        "gateway.toml: flex.resources[2].id: duplicate 'pv1', already used by flex.resources[0].id",
        "gateway.toml: flex.resources[2].baseline.method: unknown baseline method; must be one of: x_of_y, "
        "meter_before_after, nomination, rolling_average; got 'x_of_yy' (did you mean 'x_of_y'?)",
        "gateway.toml: flex.resources[3]: needs energy_import and/or energy_export registers, or power",
        "gateway.toml: flex.resources[3].prequalification.min_duration_s: must be <= max_duration_s (5)",
        "gateway.toml: flex.resources[4].baseline.lookback_days: needs 90 days of history, flex.history_days is 45",
    ])


def test_unknown_keys_get_a_hint():
    assert errors(base(isp_mins=15)) == ["gateway.toml: flex.isp_mins: unknown key (did you mean 'isp_min'?)"]
    assert errors(base(resources=[{**PV, "powr": "inv1/W"}])) == [
        "gateway.toml: flex.resources[0].powr: unknown key (did you mean 'power'?)"]
    assert errors(base(resources=[{**PV, "power": "W"}])) == [
        "gateway.toml: flex.resources[0].power: must be a point id <device>/<point> like meter1/TotWhImp, got 'W'"]


def test_parse_flex_on_its_own():
    assert parse_flex({"resources": [PV]}).resources[0].id == "pv1"  # no device list: points are not checked
    with pytest.raises(FlexConfigError) as ei:
        parse_flex({"resources": [{"id": "x"}]}, "flex.toml")
    assert ei.value.errors == ["flex.toml: flex.resources[0].kind: required key missing",
                               "flex.toml: flex.resources[0]: needs energy_import and/or energy_export registers, or power"]


_values = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=12) | \
    st.lists(st.integers(0, 5) | st.text(max_size=5), max_size=3) | st.dictionaries(st.text(max_size=6), st.integers(), max_size=2) | \
    st.dates()
_flex_keys = ["isp_min", "history_days", "tolerance_pct", "tolerance_w", "overdelivery_passes", "verification_interval_s",
              "horizon_isps", "gate_closure_s", "holidays", "accuracy_window", "placebo_days", "resources", "bogus"]
_res_keys = sorted(set(PV) | {"kind", "devices", "max_gap_s", "min_completeness", "rollover_wh", "max_power_w",
                              "baseline", "w_max", "soc", "capacity_wh", "shed_w", "add_w", "prequalification", "x"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(_flex_keys + _res_keys), _values), min_size=1, max_size=5))
def test_fuzz_flex_section(mutations):
    """Any mutation of a good flex section gives a Config or a ConfigError whose lines name gateway.toml: never a
    traceback."""
    flex = {"resources": [copy.deepcopy(PV), {"id": "b", "kind": "battery", "power": "m1/W", "soc": "m1/SoC",
                                              "capacity_wh": 1.0, "max_charge_w": 1.0, "max_discharge_w": 1.0}]}
    for in_resource, key, value in mutations:
        res = flex.get("resources")  # an earlier mutation may have replaced the list itself
        first = res[0] if isinstance(res, list) and res and isinstance(res[0], dict) else None
        (first if in_resource and first is not None else flex)[key] = value
    try:
        cfg = parse_config(base(**flex), "gateway.toml", check_files=False)
    except ConfigError as e:
        assert e.errors and all(line.startswith("gateway.toml: ") for line in e.errors)
    else:
        assert isinstance(cfg.flex, FlexConfig)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["method", "x", "y", "select", "adjustment", "cap_pct", "mode", "isps", "alpha",
                                        "lookback_days", "min_days", "adjust_hours", "zzz"]), _values, max_size=5))
def test_fuzz_baseline_parameters(baseline):
    try:
        cfg = parse_config(base(resources=[{**PV, "baseline": baseline}]), "gateway.toml", check_files=False)
    except ConfigError as e:
        assert e.errors and all(line.startswith("gateway.toml: flex.resources[0]") for line in e.errors), e.errors
    else:
        assert cfg.flex.resources[0].baseline_method in ("x_of_y", "meter_before_after", "nomination", "rolling_average")
