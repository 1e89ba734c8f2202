"""The command parser: every fault is named, nothing else escapes (fuzzed)."""
import json
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gridedge import contract, telemetry
from gridedge.contract import CommandRejected, parse_command
from gridedge.core.model import Detail, Sample, Validity

from .conftest import SCHEMAS, as_signed, validate_message

NOW = time.time_ns()


def cmd(**over):
    """A command document as an issuer writes it (no issuer in it: that is what verified its signature)."""
    doc = {"schema": "gridedge.command/2", "cmd_id": "c1", "type": "limit_active_power",
           "valid_from": contract.iso_utc(NOW - 10**9), "valid_until": contract.iso_utc(NOW + 60 * 10**9),
           "params": {"limit_pct": 50, "duration_s": 30}}
    doc.update(over)
    return json.dumps(doc).encode()


def reason(payload: bytes, issuer: str = "dso") -> str:
    with pytest.raises(CommandRejected) as exc:
        parse_command(payload, NOW, issuer=issuer, max_activation_s=3600)
    return exc.value.reason


def test_valid_activation_parses():
    c = parse_command(cmd(), NOW, issuer="tso", principal="tso-north", max_activation_s=3600)
    assert (c.cmd_id, c.type, c.issuer, c.principal, c.params) == ("c1", "limit_active_power", "tso", "tso-north",
                                                                   {"limit_pct": 50.0, "duration_s": 30.0})
    validate_message("gridedge/v3/gw/cmd/tso-north", as_signed(json.loads(cmd()), "tso-north"))


def test_the_issuer_comes_from_what_verified_the_command_never_from_the_document():
    """Contract 3.0: a document that names its issuer is refused (the key names it); the actor class passed in
    by the trust layer is still checked."""
    assert reason(cmd(issuer="tso")) == "unknown key 'issuer'"
    assert "issuer: must be one of tso, dso, aggregator, got 'neighbour'" in reason(cmd(), issuer="neighbour")
    assert "schema: must be 'gridedge.command/2', got 'gridedge.command/1'" in reason(cmd(schema="gridedge.command/1"))


@pytest.mark.parametrize("payload, expected", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (cmd(type="reboot"), "unknown command 'reboot'"),
    (cmd(params={"limit_pct": 150, "duration_s": 30}), "params.limit_pct: out of range"),
    (cmd(params={"limit_pct": -1, "duration_s": 30}), "params.limit_pct: out of range"),
    (cmd(params={"limit_pct": "50", "duration_s": 30}), "params.limit_pct: must be a number"),
    (cmd(params={"limit_pct": 50, "duration_s": 10**7}), "params.duration_s: out of range"),
    (cmd(valid_until=contract.iso_utc(NOW - 10**9)), "expired"),
    (cmd(valid_from=contract.iso_utc(NOW + 3600 * 10**9), valid_until=contract.iso_utc(NOW + 7200 * 10**9)), "not yet valid"),
    (cmd(valid_until="2026-01-01T00:00:00"), "valid_until: must be an ISO 8601 UTC time"),
    (cmd(schema="gridedge.command/9"), "schema: must be"),
    (cmd(colour="red"), "unknown key 'colour'"),
])
def test_bad_commands_are_named(payload, expected):
    assert expected in reason(payload)


def test_rejection_keeps_cmd_id_when_readable():
    with pytest.raises(CommandRejected) as exc:
        parse_command(cmd(type="reboot"), NOW, issuer="dso", max_activation_s=3600)
    assert exc.value.cmd_id == "c1"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
numbers = st.integers(-10**10, 10**10) | st.floats(allow_nan=False) | st.sampled_from([0, 0.05, 0.1, 1, 30, 65535, 65536])
param_values = json_values | numbers | st.sampled_from(["green", "amber", "red", "a1"])
command_like = st.fixed_dictionaries(
    {"schema": st.sampled_from(["gridedge.command/2", "gridedge.command/1", "x"]),
     "cmd_id": st.text(max_size=5) | json_values, "type": st.sampled_from(list(contract.COMMAND_TYPES) + ["x"])},
    optional={"issuer": json_values | st.sampled_from(["tso", "dso", "aggregator"]), "device": json_values,
              "valid_from": json_values, "valid_until": json_values,
              "params": json_values | st.fixed_dictionaries({}, optional={
                  k: param_values for k in ("limit_pct", "duration_s", "activation_id", "w", "var", "pf", "revert_s",
                                            "colour")})},
)


@settings(max_examples=600, deadline=None)
@given(command_like, st.sampled_from(contract.ISSUERS))
@example(json.loads(cmd()), "aggregator")  # an accepted one at least: the branch that checks it against the schema
@example(json.loads(cmd(type="cancel", params={"activation_id": "a1"})), "tso")
def test_fuzz_structured(doc, issuer):
    try:
        c = parse_command(json.dumps(doc).encode(), NOW, issuer=issuer, max_activation_s=3600)
    except CommandRejected as rej:
        assert rej.reason
    else:  # what the parser accepts, the published schema accepts too (with the claims its signer adds)
        validate_message("gw/cmd/x", as_signed(doc, issuer))
        assert c.type in contract.COMMAND_TYPES and c.issuer == issuer and "issuer" not in doc


def test_payloads_match_schemas(tmp_path):
    from gridedge.outbox import Outbox
    from gridedge.security.audit import AuditLog

    samples = [Sample("inv1/W", NOW, 1234.5, "W"), Sample("inv1/Hz", NOW, None, "Hz", Validity.INVALID, Detail.TIMEOUT)]
    with Outbox(tmp_path / "o.sqlite", gateway_id="gw-1") as box:
        body = telemetry.body(contract.iso_utc(NOW), telemetry.encode_samples(samples), len(samples))
        t = box.append("telemetry", "p/telemetry", body, "telemetry")
        r = box.append("result", "p/result", contract.result(NOW, "c1", "rejected", "because"), "result")
        record = AuditLog(tmp_path / "audit", fsync=False).append("command", cmd_id="c1", decision="accepted")
        a = box.append("audit", "p/audit", contract.audit(record), "event")  # as the agent does
        assert box.next_seq() == {"telemetry": 1, "result": 1, "audit": 1}
    validate_message("p/telemetry", json.loads(t.payload))
    validate_message("p/result", json.loads(r.payload))
    validate_message("p/audit", json.loads(a.payload))
    validate_message("p/state", contract.state("gw-1", "online", NOW, version="0", boot_id="b", config_sha256="x",
                                               next_seq={"telemetry": 1}, dropped_samples=0, devices=["inv1"]))
    assert (t.seq, r.seq) == (0, 0)
    from gridedge.flex import messages as flex_messages

    assert set(SCHEMAS) == {"telemetry", "layout", "state", "command", "result", "nomination", "audit",
                           *flex_messages.SCHEMAS}


traffic_lights = st.fixed_dictionaries(
    {"schema": st.just("gridedge.command/2"), "cmd_id": st.text(min_size=1, max_size=8),
     "type": st.just("traffic_light")},
    optional={"params": st.fixed_dictionaries({}, optional={"colour": st.sampled_from(["green", "amber", "red", "blue"]) | json_values,
                                                             "limit_pct": numbers | json_values,
                                                             "duration_s": numbers | json_values,
                                                             "extra": json_values})},
)


@settings(max_examples=400, deadline=None)
@given(traffic_lights, st.sampled_from(["tso", "dso", "aggregator", "x"]))
@example({"schema": "gridedge.command/2", "cmd_id": "t", "type": "traffic_light",
          "params": {"colour": "amber", "limit_pct": 30}}, "dso")
def test_fuzz_traffic_light_messages(doc, issuer):
    """Traffic lights: every fault named; what is accepted is a well-formed light from the DSO."""
    try:
        c = parse_command(json.dumps(doc).encode(), NOW, issuer=issuer, max_activation_s=3600)
    except CommandRejected as rej:
        assert rej.reason and rej.cmd_id == doc["cmd_id"]
        return
    validate_message("gw/cmd/dso", as_signed(doc))
    assert c.issuer == "dso" and c.params["colour"] in contract.TRAFFIC_LIGHTS
    assert ("limit_pct" in c.params) == (c.params["colour"] == "amber")


@pytest.mark.parametrize("doc, expected", [
    ({"type": "traffic_light", "params": {"colour": "red"}, "issuer": "tso"}, "only the dso sends a traffic light"),
    ({"type": "traffic_light", "params": {"colour": "amber"}}, "params.limit_pct: must be a number"),
    ({"type": "traffic_light", "params": {"colour": "red", "limit_pct": 5}}, "(only amber takes limit_pct)"),
    ({"type": "traffic_light", "params": {"colour": "blue"}}, "params.colour: must be one of green, amber, red"),
    ({"type": "set_power_factor", "params": {"pf": 0.05, "duration_s": 10}}, "params.pf: |pf| must be within [0.1, 1]"),
    ({"type": "set_active_power", "params": {"w": 100, "duration_s": 10, "revert_s": 2.5}}, "revert_s: must be whole"),
    ({"type": "set_reactive_power", "params": {"var": 100}}, "params.duration_s: must be a number"),
    ({"type": "cancel", "params": {}}, "cancel takes exactly {'activation_id'"),
    ({"type": "prequalification_test", "params": {"w": 1, "duration_s": 10}}, "params.resource: must be a flex resource"),
    ({"type": "prequalification_test", "params": {"resource": "pv1", "w": 1, "duration_s": 2}},
     "params.duration_s: out of range: must be within [5, 3600]"),
    ({"type": "prequalification_test", "params": {"resource": "pv1", "w": 1, "duration_s": 9, "limit_pct": 5}},
     "params: unknown key 'limit_pct' (prequalification_test takes resource, w and duration_s)"),
    ({"type": "terminate", "params": {"activation_id": "a"}, "valid_from": contract.iso_utc(NOW + 3600 * 10**9)},
     "not yet valid"),
])
def test_new_command_faults_are_named(doc, expected):
    doc = dict(doc)
    issuer = doc.pop("issuer", "dso")  # the actor class that verified it, not a key of the document
    assert expected in reason(cmd(**doc), issuer=issuer)


def test_activations_may_be_scheduled_within_the_horizon_only():
    future = dict(valid_from=contract.iso_utc(NOW + 3600 * 10**9), valid_until=contract.iso_utc(NOW + 7200 * 10**9))
    c = parse_command(cmd(**future), NOW, max_activation_s=3600, schedule_horizon_s=86400)
    assert c.valid_from_ns == contract.parse_iso_utc(future["valid_from"])
    with pytest.raises(CommandRejected, match="beyond the scheduling horizon of 1800 s"):
        parse_command(cmd(**future), NOW, max_activation_s=3600, schedule_horizon_s=1800)


def test_prequalification_test_command_parses_and_matches_the_schema():
    doc = {"schema": "gridedge.command/2", "cmd_id": "st1", "type": "prequalification_test",
           "params": {"resource": "pv1", "w": 4000, "duration_s": 60}}
    c = parse_command(json.dumps(doc).encode(), NOW, issuer="aggregator", max_activation_s=3600)
    assert (c.type, c.issuer, c.params) == ("prequalification_test", "aggregator",
                                            {"resource": "pv1", "w": 4000.0, "duration_s": 60.0})
    validate_message("gw/cmd/aggregator", as_signed(doc, "aggregator"))


def test_a_null_device_is_refused_as_the_schema_refuses_it():
    """Found by test_fuzz_structured: `"device": null` was accepted though the command schema says a string."""
    doc = {"schema": "gridedge.command/2", "cmd_id": "c", "type": "rotate_certificate", "device": None,
           "params": {"method": "mqtt"}}
    with pytest.raises(CommandRejected, match="device: must be a device id string"):
        parse_command(json.dumps(doc).encode(), NOW, issuer="dso", max_activation_s=3600)
