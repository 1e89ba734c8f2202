"""The nomination parser: accepted schedules, every fault named, and fuzzing (bytes, JSON, mutated documents)."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.core.isp import NS_PER_S, IspGrid
from gridedge.flex.nomination import (MAX_NOMINATION_BYTES, SCHEMA_NOMINATION, Nomination, NominationRejected,
                                      exact_ns, parse_nomination)

from .conftest import as_signed, validate_message

S = NS_PER_S
G = IspGrid(15)
NOW = exact_ns("2026-11-23T13:50:00Z")
RESOURCES = {"pv1", "site-2"}


def doc(**kw) -> dict:
    d = {"schema": SCHEMA_NOMINATION, "nomination_id": "fsp-7", "resource": "pv1",
         "start": "2026-11-23T14:00:00Z", "isp_s": 900, "w": [5200.0, 5100, -300.5]}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not ...}


def parse(d, now=NOW, issuer="aggregator", **kw) -> Nomination:
    """issuer: the actor class of whoever it was authenticated as (the command gate passes it)."""
    payload = d if isinstance(d, bytes) else json.dumps(d).encode()
    return parse_nomination(payload, now, grid=G, resources=RESOURCES, issuer=issuer, **kw)


def reason(d, **kw) -> str:
    with pytest.raises(NominationRejected) as ei:
        parse(d, **kw)
    return ei.value.reason


def test_a_valid_nomination():
    validate_message("gridedge/v3/gw1/nomination/fsp-1", as_signed(doc(), "fsp-1", "gw1"))
    n = parse(doc())
    assert n == Nomination("fsp-7", "aggregator", "pv1", exact_ns("2026-11-23T14:00:00Z"), 900, (5200.0, 5100.0, -300.5))
    assert n.end_ns == n.start_ns + 3 * 900 * S
    assert parse(doc(start="2026-11-23T15:00:00+01:00")).start_ns == n.start_ns  # offsets are fine
    assert parse(as_signed(doc(), "fsp-1", "gw1"), issuer="dso").issuer == "dso"  # the signed claims are allowed


def test_exact_ns_has_no_float_rounding():
    assert exact_ns("2026-11-23T14:00:00.123456Z") == 1_795_442_400_123_456_000
    with pytest.raises(ValueError):
        exact_ns("2026-11-23T14:00:00")


@pytest.mark.parametrize("kw, expected", [
    (dict(schema="gridedge.nomination/1"), "schema: must be 'gridedge.nomination/2', got 'gridedge.nomination/1'"),
    (dict(extra=1), "unknown key 'extra'"),
    (dict(issuer="aggregator"), "unknown key 'issuer'"),  # contract 3.0: the key names the issuer, not the document
    (dict(resource="pv9"), "resource: unknown resource 'pv9'; known: pv1, site-2"),
    (dict(isp_s=300), "isp_s: must be 900 (this gateway's ISP), got 300"),
    (dict(isp_s=900.0), "isp_s: must be 900 (this gateway's ISP), got 900.0"),
    (dict(start="tomorrow"), "start: must be an ISO 8601 UTC time like 2026-11-23T14:00:00Z"),
    (dict(start="2026-11-23T14:00:00"), "start: must be an ISO 8601 UTC time like 2026-11-23T14:00:00Z (time has no UTC offset)"),
    (dict(start="2026-11-23T14:05:00Z"), "start: 2026-11-23T14:05:00Z is not an ISP boundary (15-min ISPs aligned to UTC)"),
    (dict(start="2026-11-23T13:45:00Z"), "start: 2026-11-23T13:45:00Z is past gate closure: the first ISP must start at or after 2026-11-23T13:50:00.000Z"),
    (dict(w=[]), "w: must be an array of 1 to 672 numbers (7 days of ISPs)"),
    (dict(w=[1.0] * 673), "w: must be an array of 1 to 672 numbers (7 days of ISPs)"),
    (dict(w=[1.0, "2"]), "w[1]: must be a number, got '2'"),
    (dict(w=[True]), "w[0]: must be a number, got True"),
    (dict(w=[2e9]), "w[0]: must be a finite power within +/-1e+09 W, got 2000000000.0"),
    (dict(w=[10**400]), "w[0]: must be a finite power within +/-1e+09 W, got inf"),  # decoded as commands are
])
def test_every_fault_is_named(kw, expected):
    assert reason(doc(**kw)).startswith(expected)


def test_the_actor_class_is_checked():
    assert reason(doc(), issuer="fsp").startswith("issuer: must be one of tso, dso, aggregator, got 'fsp'")


def test_gate_closure():
    assert reason(doc(), gate_closure_s=900) .startswith("start: 2026-11-23T14:00:00Z is past gate closure")
    assert parse(doc(start="2026-11-23T14:15:00Z"), gate_closure_s=900).start_ns == exact_ns("2026-11-23T14:15:00Z")


def test_unreadable_payloads_have_no_id():
    for payload, expected in [(b"\xff", "malformed JSON"), (b"[1]", "must be a JSON object, got list"),
                              (b"{" * 100000, "malformed nomination: nested deeper than 8 levels"), (b" " * (MAX_NOMINATION_BYTES + 1), "too large"),
                              (json.dumps(doc(nomination_id="")).encode(), "nomination_id: must be a string"),
                              (b'{"nomination_id": 1' + b"0" * 5000 + b"}", "nomination_id: must be a string")]:
        with pytest.raises(NominationRejected) as ei:
            parse(payload)
        assert ei.value.nomination_id is None and expected in ei.value.reason


def _check(payload: bytes) -> None:
    """Either a valid Nomination or a NominationRejected; nothing else, ever."""
    try:
        n = parse(payload)
    except NominationRejected as rej:
        assert isinstance(rej.reason, str) and rej.reason
        assert rej.nomination_id is None or isinstance(rej.nomination_id, str)
        return
    assert n.resource in RESOURCES and n.start_ns % G.ns == 0 and n.start_ns >= NOW
    assert 1 <= len(n.values_w) <= 672 and all(math.isfinite(v) and abs(v) <= 1e9 for v in n.values_w)
    validate_message("gridedge/v3/gw1/nomination/aggregator", as_signed(json.loads(payload), "aggregator", "gw1"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes(payload):
    _check(payload)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_json(value):
    _check(json.dumps(value).encode())


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(doc()) + ["other"]), json_values | st.just(...))
def test_fuzz_mutated_documents(key, value):
    _check(json.dumps(doc(**{key: value})).encode())


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=672),
       st.sampled_from(sorted(RESOURCES)), st.text(min_size=1, max_size=128))
def test_fuzz_valid_schedules_are_accepted(isps_ahead, values, resource, nid):
    start = NOW - NOW % G.ns + (isps_ahead + 1) * G.ns
    from gridedge.core.utc import iso_utc

    n = parse(doc(start=iso_utc(start), w=values, resource=resource, nomination_id=nid))
    assert n.start_ns == start and list(n.values_w) == values and n.nomination_id == nid
