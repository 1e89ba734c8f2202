"""The command parser against hostile bytes: every payload is a Command or a named CommandRejected, nothing else.

Beyond tests/test_contract.py's field checks: deep nesting, huge numbers, big strings, invalid UTF-8, every field
of the wrong type, up to the 16 KiB limit (defect 5 of issue 11: these raised out of parse_command before).
"""
import json
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gridedge import contract
from gridedge.contract import MAX_COMMAND_BYTES, Command, CommandRejected, parse_command

from .conftest import as_signed, validate_message

NOW = time.time_ns()
GOOD = {"schema": "gridedge.command/2", "cmd_id": "c1", "type": "limit_active_power",
        "params": {"limit_pct": 50, "duration_s": 30}}


def outcome(payload: bytes, issuer: str = "dso") -> Command | CommandRejected:
    """What parse_command makes of payload; anything but a Command or a CommandRejected fails the test."""
    try:
        return parse_command(payload, NOW, issuer=issuer, max_activation_s=3600)
    except CommandRejected as rej:
        assert rej.reason and len(rej.reason) <= contract.MAX_REASON_CHARS, rej.reason[:200]
        assert rej.cmd_id is None or isinstance(rej.cmd_id, str) and rej.cmd_id.encode()
        return rej


@pytest.mark.parametrize("payload, expected", [
    (b"[" * 1000 + b"]" * 1000, "nested deeper than"),
    (b'{"a":' * 1000 + b"1" + b"}" * 1000, "nested deeper than"),
    (b'{"cmd_id": ' + b"9" * 5000 + b"}", "cmd_id: must be a string"),
    (b'{"cmd_id": "c1", "schema": ' + b"9" * 5000 + b"}", "schema: must be"),
    (json.dumps(dict(GOOD, params={"limit_pct": 10**400, "duration_s": 30})).encode(), "params.limit_pct"),
    (json.dumps(dict(GOOD, params={"limit_pct": 50, "duration_s": -10**300})).encode(), "params.duration_s"),
    (json.dumps(dict(GOOD, params={"limit_pct": float("nan"), "duration_s": 30})).encode(),
     "params.limit_pct: must be a number, got nan"),
    (json.dumps(dict(GOOD, params={"limit_pct": 1e999, "duration_s": 30})).encode().replace(b"Infinity", b"1e999"),
     "params.limit_pct: must be a number, got inf"),
    (json.dumps(dict(GOOD, cmd_id="\ud800")).encode(), "cmd_id: must be"),
    (b'{"cmd_id": "\xff\xfe", "type": 1}', "malformed JSON"),
    (b'{"cmd_id": "c1", "schema": "' + b"x" * 16000 + b'"}', "schema: must be"),
    (b" " * (MAX_COMMAND_BYTES + 1), "command too large"),
])
def test_hostile_payloads_are_rejected_by_name(payload, expected):
    assert len(payload) <= MAX_COMMAND_BYTES or expected == "command too large"
    rej = outcome(payload)
    assert isinstance(rej, CommandRejected)
    assert expected in rej.reason, rej.reason[:300]


def test_nesting_is_decoded_up_to_the_limit_and_refused_beyond():
    def deep(levels: int) -> bytes:  # the command object plus `levels` arrays inside it
        value = 1
        for _ in range(levels):
            value = [value]
        return json.dumps(dict(GOOD, extra=value)).encode()
    assert outcome(deep(contract.MAX_COMMAND_DEPTH - 1)).reason == "unknown key 'extra'"
    assert "nested deeper than" in outcome(deep(contract.MAX_COMMAND_DEPTH)).reason
    assert "nested deeper" not in outcome(b'{"cmd_id": "c1", "s": "' + b"[" * 100 + b'"}').reason  # in a string


def test_a_rejection_keeps_the_cmd_id_when_only_a_number_is_huge():
    rej = outcome(json.dumps(dict(GOOD, params={"limit_pct": 10**400, "duration_s": 30})).encode())
    assert rej.cmd_id == "c1"


def test_a_command_whose_window_closed_is_expired_not_rejected():
    doc = dict(GOOD, valid_until=contract.iso_utc(NOW - 10**9))
    rej = outcome(json.dumps(doc).encode())
    assert (rej.cmd_id, rej.status) == ("c1", "expired")
    assert outcome(json.dumps(dict(GOOD, type="reboot")).encode()).status == "rejected"


# -- fuzzing ------------------------------------------------------------------------------------
def nested(depth: int, opener: bytes) -> bytes:
    closer = opener.replace(b'{"k":', b"}").replace(b"[", b"]")[::-1]
    return opener * depth + b"1" + closer * depth


big_text = st.tuples(st.text(min_size=1, max_size=8), st.integers(1, 2000)).map(lambda t: t[0] * t[1])
hostile_bytes = (
    st.binary(max_size=2000)
    | st.tuples(st.binary(min_size=1, max_size=16), st.integers(1, 1100)).map(lambda t: t[0] * t[1])
    | st.builds(nested, st.integers(0, 8000), st.sampled_from([b"[", b'{"k":', b'[{"k":', b'{"cmd_id":"c","k":[']))
    | st.integers(1, 6000).map(lambda n: b'{"cmd_id": "c", "params": {"w": ' + b"7" * n + b"}}")
    | big_text.map(lambda s: json.dumps({"cmd_id": s, "schema": s}).encode())
    | st.binary(min_size=1, max_size=200).map(lambda b: b'{"cmd_id": "' + b + b'", "type": "cancel"}')
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_bytes)
def test_fuzz_hostile_bytes(payload):
    outcome(payload)


json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**400, 10**400) | st.floats()
                | st.text(max_size=300) | big_text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(st.text(max_size=20), inner, max_size=6), max_leaves=40)
PARAM_KEYS = ("limit_pct", "duration_s", "revert_s", "w", "var", "pf", "activation_id", "colour", "resource")
good_values = {"schema": st.just("gridedge.command/2"), "cmd_id": st.text(min_size=1, max_size=128),
               "type": st.sampled_from(contract.COMMAND_TYPES),
               "device": st.text(max_size=40), "valid_from": st.just(contract.iso_utc(NOW - 10**9)),
               "valid_until": st.just(contract.iso_utc(NOW + 60 * 10**9))}
params = st.dictionaries(st.sampled_from(PARAM_KEYS) | st.text(max_size=10), json_values | st.floats(-2e9, 2e9),
                         max_size=5)
command_docs = st.fixed_dictionaries(
    {k: v | json_values for k, v in good_values.items() if k in ("schema", "cmd_id", "type")},
    optional={**{k: v | json_values for k, v in good_values.items() if k not in ("schema", "cmd_id", "type")},
              "params": params | json_values, "extra": json_values, "issuer": json_values})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(command_docs, st.sampled_from(contract.ISSUERS))
@example(GOOD, "tso")  # an accepted one at least: the branch that checks it against the schema
def test_fuzz_every_field_of_every_type(doc, issuer):
    payload = json.dumps(doc).encode()
    got = outcome(payload, issuer)
    if isinstance(got, Command):  # what the parser accepts, the published schema accepts too (claims added)
        validate_message("gw/cmd/x", as_signed(doc, issuer))
        assert got.issuer == issuer and "issuer" not in doc
