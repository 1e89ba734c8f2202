"""Telemetry blocks (gridedge.telemetry/2): encoding, the schema, the head-end parser (fuzzed), the splice into the
outbox envelope, and the process image that stores blocks whole."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge import telemetry
from gridedge.image import ProcessImage
from gridedge.core.model import BlockLayout, Detail, Sample, SampleBlock, Validity, flatten
from gridedge.outbox import Outbox

from .conftest import VALIDATORS, validate_message

T = 1_795_442_401_123_456_789
LAY = BlockLayout("m1", ["W", "Hz", "PhVphA"], ["W", "Hz", "V"])


def message(blocks: list[bytes], tmp_path) -> dict:
    with Outbox(tmp_path / "o.sqlite", gateway_id="gw-1") as box:
        rec = box.append("telemetry", "p/telemetry", telemetry.body("2026-12-01T00:00:00.000Z", blocks), "telemetry")
    doc = json.loads(rec.payload)
    validate_message("p/telemetry", doc)
    return doc


def test_block_round_trip_through_the_outbox_envelope(tmp_path):
    good = SampleBlock(LAY, T, [7998.5, 50.01, 230])
    mixed = SampleBlock(LAY, T + 1, [None, 50.0, 262.0],
                        [(Validity.INVALID, Detail.NOT_IMPLEMENTED), None, (Validity.QUESTIONABLE, Detail.OUT_OF_RANGE)])
    doc = message([telemetry.encode_block(good), telemetry.encode_block(mixed)], tmp_path)
    assert (doc["gateway"], doc["stream"], doc["seq"], len(doc["msg_id"])) == ("gw-1", "telemetry", 0, 32)
    assert doc["blocks"][0] == {"dev": "m1", "n": ["W", "Hz", "PhVphA"], "u": ["W", "Hz", "V"], "t": T,
                                "v": [7998.5, 50.01, 230]}
    assert doc["blocks"][1]["q"] == [["invalid", "not_implemented"], None, ["questionable", "out_of_range"]]
    assert list(telemetry.samples_of(doc)) == flatten([good, mixed])


def test_invalid_block_and_loose_samples_group_by_device_and_instant(tmp_path):
    dead = SampleBlock.invalid(LAY, T, Detail.TIMEOUT)
    loose = [Sample("inv1/W", T, 10.0, "W"), Sample("inv1/VAr", T, -2.0, "var"),
             Sample("inv1/Hz", T + 5, None, "Hz", Validity.INVALID, Detail.COMM_FAILURE),
             Sample("sub1/F7.XCBR1.Pos", T + 5, "on", "")]
    frags = telemetry.encode_samples(loose)
    assert len(frags) == 3          # inv1@T, inv1@T+5, sub1@T+5
    doc = message([telemetry.encode_block(dead)] + frags, tmp_path)
    assert doc["blocks"][0]["v"] == [None] * 3 and doc["blocks"][0]["q"] == [["invalid", "timeout"]] * 3
    assert list(telemetry.samples_of(doc)) == flatten([dead]) + loose


def test_values_json_cannot_carry_become_malformed_not_a_lost_message(tmp_path):
    blk = SampleBlock(LAY, T, [math.nan, math.inf, 230.0])
    doc = message([telemetry.encode_block(blk)], tmp_path)
    assert doc["blocks"][0]["v"] == [None, None, 230.0]
    assert doc["blocks"][0]["q"] == [["invalid", "malformed"], ["invalid", "malformed"], None]


def test_the_layout_part_is_encoded_once():
    lay = BlockLayout("m9", ["A"], ["A"])
    telemetry.encode_block(SampleBlock(lay, T, [1]))
    head = lay.json_head
    assert head is not None and telemetry.encode_block(SampleBlock(lay, T, [2])).startswith(head)


def test_bad_blocks_are_refused_at_construction():
    with pytest.raises(ValueError):
        SampleBlock(LAY, T, [1.0])
    with pytest.raises(ValueError):
        SampleBlock(LAY, T, [1.0, 2.0, 3.0], [None])
    with pytest.raises(ValueError):
        BlockLayout("x", ["a", "b"], ["W"])


VALUES = st.one_of(st.none(), st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8))
QUAL = st.one_of(st.none(), st.tuples(st.sampled_from(list(Validity)), st.sampled_from(list(Detail))))


@given(st.lists(st.tuples(VALUES, QUAL), min_size=1, max_size=12), st.integers(0, 2**63 - 1))
def test_round_trip_property(items, ts):
    names = [f"P{i}" for i in range(len(items))]
    lay = BlockLayout("d1", names, ["W"] * len(items))
    quality = [q for _, q in items]
    blk = SampleBlock(lay, ts, [v for v, _ in items], quality if any(q is not None for q in quality) else None)
    doc = {"schema": telemetry.SCHEMA_TELEMETRY, "gateway": "gw-1", "stream": "telemetry", "seq": 0, "msg_id": "0" * 32,
           "ts": "2026-12-06T21:00:00.000Z", "blocks": [json.loads(telemetry.encode_block(blk))]}
    got = list(telemetry.samples_of(doc))
    assert len(got) == len(items)
    for want, s in zip(blk, got, strict=True):
        finite = not (isinstance(want.value, float) and not math.isfinite(want.value))
        assert s.point == want.point and s.ts_ns == ts
        if finite:
            assert (s.value, s.validity, s.detail) == (want.value, want.validity, want.detail)
        else:
            assert (s.value, s.validity, s.detail) == (None, Validity.INVALID, Detail.MALFORMED)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=5),
                       max_leaves=20)


_ANY = st.one_of(JSONISH, st.none(), st.booleans(), st.integers(-5, 2**64), st.text(max_size=3))
_BLOCK = st.fixed_dictionaries(
    {"dev": st.one_of(st.just("m1"), _ANY), "t": st.one_of(st.integers(0, 2**63), _ANY),
     "n": st.one_of(st.lists(st.sampled_from(["W", "Hz", "a b", ""]), max_size=3), _ANY),
     "u": st.one_of(st.lists(st.sampled_from(["W", "Hz", ""]), max_size=3), _ANY),
     "v": st.one_of(st.lists(st.one_of(st.none(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=2),
                                       JSONISH), max_size=3), _ANY)},
    optional={"q": st.one_of(st.lists(st.one_of(st.none(), st.just(["invalid", "timeout"]), _ANY), max_size=3),
                             _ANY), "x": _ANY})
_MESSAGE = st.fixed_dictionaries(
    {"schema": st.just(telemetry.SCHEMA_TELEMETRY), "gateway": st.sampled_from(["gw-1", "gw 1"]),
     "stream": st.just("telemetry"), "seq": st.one_of(st.integers(-1, 10), _ANY),
     "msg_id": st.sampled_from(["0" * 32, "X"]), "ts": st.sampled_from(["2026-12-06T21:00:00.000Z", "now"]),
     "blocks": st.lists(st.one_of(_BLOCK, JSONISH), max_size=3)})


@settings(max_examples=500, deadline=None)
@given(st.one_of(JSONISH, _MESSAGE))
def test_fuzz_the_head_end_parser(doc):
    """Any JSON: Samples from a message that follows the schema, or ValueError; never another exception, and
    nothing the schema refuses is accepted; what the schema allows is refused only for what it cannot say (n, u, v
    and q of one block of different lengths)."""
    follows = VALIDATORS["telemetry"].is_valid(doc)
    try:
        samples = list(telemetry.samples_of(doc))
    except ValueError as exc:
        assert not follows or "differ in length" in str(exc), exc
        return
    assert follows
    assert len(samples) == sum(len(b["n"]) for b in doc["blocks"])


def test_process_image_holds_blocks_whole_and_loose_samples():
    img = ProcessImage()
    assert img.put([SampleBlock(LAY, T, [1.0, 50.0, 230.0]), Sample("inv1/W", T, 5.0, "W")]) == 4
    assert img["m1/Hz"] == Sample("m1/Hz", T, 50.0, "Hz") and img.get("inv1/W").value == 5.0
    img.put([SampleBlock(LAY, T + 1, [2.0, None, 231.0], [None, (Validity.INVALID, Detail.TIMEOUT), None])])
    assert img["m1/W"].value == 2.0 and img["m1/Hz"].validity is Validity.INVALID
    assert sorted(img) == ["inv1/W", "m1/Hz", "m1/PhVphA", "m1/W"] and len(img) == 4
    img.put([Sample("m1/W", T + 2, 3.0, "W")])      # a point with two sources: the newest wins
    assert img["m1/W"].value == 3.0 and len(img) == 4
    assert "m1/VAr" not in img and img.get("m1/VAr") is None
    with pytest.raises(KeyError):
        img["nope"]
