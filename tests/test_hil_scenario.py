"""Scenario files of the HIL rig: every ready-made one is valid, errors read like the configuration's
(`file: key.path: reason`, all at once), and the parser is fuzzed: any input gives a Scenario or ScenarioError."""
from __future__ import annotations

import copy
import subprocess
import sys
import tomllib

import pytest
from hypothesis import given, settings, strategies as st

from gridedge.hil.scenario import ScenarioError, load_scenario, parse_scenario, resolve, shipped

READY = ("balancing_scenario_1", "balancing_scenario_2", "dso_congestion", "traffic_light_day",
         "outage_recovery_day", "prequalification_step")

MINIMAL = {"scenario": {"name": "t", "duration": 10}, "devices": [{"id": "inv1", "kind": "inverter"}]}


def errors(doc: dict) -> list[str]:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(doc, "s.toml")
    return exc.value.errors


def test_every_ready_made_scenario_is_valid_and_shipped():
    assert {p.stem for p in shipped()} == set(READY)
    for name in READY:
        sc = load_scenario(resolve(name))
        assert sc.checks, name
        assert sc.duration_s / sc.speed <= 200, f"{name}: more than 200 s of wall-clock time"


def test_day_scenarios_run_in_compressed_time():
    for name in ("traffic_light_day", "outage_recovery_day"):
        sc = load_scenario(resolve(name))
        assert sc.duration_s == 86400 and sc.wall_s(sc.duration_s) == 120


def test_the_balancing_scenarios_carry_the_info_messages_of_the_seed_use_case():
    infos = set()
    for name in ("balancing_scenario_1", "balancing_scenario_2"):
        sc = load_scenario(resolve(name))
        infos |= {e["info"] for e in sc.timeline if "info" in e}
        infos |= {c["id"].split("-")[0] for c in sc.checks}
    for n in (1, 2, 3, 6, 7, 8, 9, 10):
        assert any(f"INFO {n}" in i or f"INFO{n}" in i or f"/{n}" in i for i in infos), n


def test_minimal_scenario_gets_the_defaults():
    sc = parse_scenario(copy.deepcopy(MINIMAL))
    assert sc.speed == 1.0 and sc.gateway["mode"] == "gridedge" and sc.uplink["path"] == "proxy"
    (d,) = sc.devices
    assert d["w_max"] == 10000.0 and d["writable"] is True and d["bus"] == "tcp"


def test_errors_name_file_path_and_reason_all_at_once():
    doc = copy.deepcopy(MINIMAL)
    doc["scenario"]["speed"] = 0
    doc["devices"][0]["ramp_pct_per_s"] = "fast"
    doc["devices"].append({"id": "x", "kind": "inverterr"})
    doc["timeline"] = [{"at": "25:99", "action": "limit_active_power", "limit_pct": 150, "duration_s": 5}]
    doc["checks"] = [{"id": "C1", "kind": "ramp_rate", "command": "a", "device": "inv1", "max_w_per_s": 1,
                      "colour": 1}]
    assert errors(doc) == [
        "s.toml: scenario.speed: must be > 0, got 0.0",
        "s.toml: devices[0].ramp_pct_per_s: must be a number, got string 'fast'",
        "s.toml: devices[1].kind: must be one of: inverter, battery, meter, real; got 'inverterr' "
        "(did you mean 'inverter'?)",
        's.toml: timeline[0].at: must be seconds or "H:MM[:SS]", got string \'25:99\'',
        "s.toml: timeline[0].limit_pct: must be <= 100, got 150.0",
        "s.toml: checks[0].colour: unknown key (expected one of: kind, id, title, command, device, min_w_per_s, "
        "max_w_per_s, edge)",
    ]


def test_references_and_times_are_cross_checked():
    doc = copy.deepcopy(MINIMAL)
    doc["devices"].append({"id": "m1", "kind": "meter", "measures": ["inv9"], "node": 3})
    doc["timeline"] = [{"at": 11, "id": "a", "action": "terminate", "activation": "zz"}]
    doc["faults"] = [{"at": 5, "for": 8, "kind": "device_slow", "device": "m2", "delay_s": 1}]
    doc["checks"] = [{"id": "C1", "kind": "failsafe_reversion", "fault": "f9", "device": "inv1", "max_s": 3},
                     {"id": "C2", "kind": "ramp_rate", "command": "a", "device": "m1"}]
    assert errors(doc) == [
        "s.toml: devices[1].node: the feeder has 1 node(s) (grid.segments)",
        "s.toml: devices[1].measures[0]: no device 'inv9' (devices: inv1, m1)",
        "s.toml: timeline[0].at: after the end of the scenario (10 s)",
        "s.toml: timeline[0].activation: no timeline entry with id 'zz'",
        "s.toml: faults[0].for: ends after the end of the scenario (10 s)",
        "s.toml: faults[0].device: no device 'm2' (devices: inv1, m1)",
        "s.toml: checks[0].fault: no fault with id 'f9'",
        "s.toml: checks[1]: needs min_w_per_s, max_w_per_s or both",
        "s.toml: checks[1].device: must be a simulated inverter or battery (the rig measures it at the device)",
    ]


def test_what_an_external_gateway_cannot_do_is_refused():
    doc = copy.deepcopy(MINIMAL)
    doc["gateway"] = {"mode": "external"}
    doc["faults"] = [{"at": 1, "kind": "gateway_kill"}]
    assert errors(doc) == ['s.toml: faults[0].kind: needs a gateway the rig starts (gateway.mode = "gridedge", '
                           'or gateway.command)']
    clock = dict(doc, faults=[{"at": 2, "kind": "clock_step", "target": "gateway", "step_s": 60}])
    assert errors(clock) == ["s.toml: faults[0].target: must be one of: headend; got 'gateway'"]
    doc["gateway"]["command"] = ["my-gateway", "--bench", "{bench}"]
    assert parse_scenario(doc).gateway["command"][2] == "{bench}"


def test_profiles_are_points_in_time_order():
    doc = copy.deepcopy(MINIMAL)
    doc["grid"] = {"v_source_pu": [[0, 1.0], ["0:00:05", 1.08], [3, 1.0]], "f_hz": [[0, 80]]}
    assert errors(doc) == ["s.toml: grid.v_source_pu[2][0]: points must be in time order: 3 s comes after 5 s",
                           "s.toml: grid.f_hz[0][1]: must be a number within 40..70, got integer 80"]
    doc["grid"] = {"v_source_pu": [[0, 1.0], [5, 1.0], [5, 1.08]]}
    assert parse_scenario(doc).grid["v_source_pu"] == [(0.0, 1.0), (5.0, 1.0), (5.0, 1.08)]


def test_files_that_are_not_toml_or_not_there_get_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[scenario\nname = 1")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(bad)
    assert exc.value.errors[0].startswith("bad.toml: invalid TOML: ")
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError, match="bad.toml: not UTF-8 text"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="no scenario file 'nope' and no ready-made scenario of that name"):
        load_scenario(resolve("nope"))


def test_gridedge_hil_launches_the_rigs_entry_point(tmp_path):
    """`gridedge hil` is a thin launcher: `python -m gridedge.hil` in a new process; a bad file exits 2."""
    bad = tmp_path / "s.toml"
    bad.write_text('[scenario]\nname = "x"\nduration = -1\n')
    run = subprocess.run([sys.executable, "-m", "gridedge", "hil", "check", "dso_congestion", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run
    assert "dso_congestion.toml: OK" in run.stdout
    assert run.stderr.splitlines() == ['s.toml: scenario.duration: must be seconds (0..2592000) or "H:MM[:SS]", '
                                       'got integer -1', "s.toml: devices: required key missing"]


# ---------------------------------------------------------------- fuzzing

def _ready_docs() -> list[dict]:
    return [tomllib.loads(resolve(n).read_text()) for n in READY]


DOCS = _ready_docs()
JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=12)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return value
    *head, last = path
    node = doc
    for p in head:
        node = node[p]
    node[last] = value
    return doc


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(range(len(DOCS))), st.data(), JUNK)
def test_fuzz_any_value_anywhere_in_a_real_scenario(which, data, junk):
    doc = copy.deepcopy(DOCS[which])
    paths = list(_paths(doc))
    path = data.draw(st.sampled_from(paths))
    doc = _set(doc, path, junk)
    try:
        parse_scenario(doc, "f.toml")
    except ScenarioError as exc:
        assert exc.errors and all(e.startswith("f.toml: ") and e.isprintable() for e in exc.errors)


@settings(max_examples=300, deadline=None)
@given(JUNK)
def test_fuzz_any_document(junk):
    try:
        parse_scenario(junk, "f.toml")
    except ScenarioError as exc:
        assert exc.errors and all(e.isprintable() for e in exc.errors)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_any_bytes(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("fz") / "s.toml"
    p.write_bytes(blob)
    try:
        load_scenario(p)
    except ScenarioError as exc:
        assert all(e.isprintable() for e in exc.errors)


_scalars = st.one_of(st.text(max_size=20), st.integers(-2**63, 2**63 - 1), st.booleans(),
                     st.floats(allow_nan=False, width=64))
_keys = st.text(min_size=1, max_size=12)
_tables = st.recursive(
    st.dictionaries(_keys, st.one_of(_scalars, st.lists(_scalars, max_size=3)), max_size=4),
    lambda inner: st.dictionaries(_keys, st.one_of(_scalars, inner, st.lists(inner, min_size=1, max_size=2)),
                                  max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_tables)
def test_fuzz_the_gateway_toml_the_rig_writes_reads_back_as_written(doc):
    """The rig writes the gateway's configuration from the scenario's [gateway.config] tables: whatever the scenario
    held (a newline in a string, a dot or a space in a key) must reach the gateway as it was, as valid TOML."""
    from gridedge.hil.scenario_bench import toml_text

    assert tomllib.loads(toml_text(doc)) == doc
