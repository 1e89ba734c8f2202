"""Register maps: parsing and validation messages, read planning, decoding and encoding (sans-IO), the shipped
meter maps, and one pass over a real pymodbus server and client."""
from __future__ import annotations

import asyncio
import copy
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.drivers import regmap as rm
from gridedge.core.model import Detail, Validity

ORDERS = [("big", "big"), ("little", "big"), ("big", "little"), ("little", "little")]
T0 = 1_700_000_000_000_000_000


def mk(points: list[dict], **device) -> dict:
    base = {"manufacturer": "ACME", "model": "M1", "source": "test"}
    base.update(device)
    base["points"] = points
    return base


def one(point: dict, **device) -> rm.RegisterMap:
    p = {"name": "X", "address": 10, "access": "rw"}
    p.update(point)
    return rm.parse_map(mk([p], **device), "t.toml")


def read_one(rmap: rm.RegisterMap, regs: list[int], name: str = "X"):
    p = rmap.point(name)
    block = rm.ReadBlock(p.table, p.address, p.size, (name,))
    [sample] = rm.decode(rmap, block, regs, "dev", T0)
    assert sample.point == f"dev/{name}" and sample.ts_ns == T0
    return sample


def errors(data, source: str = "m.toml") -> list[str]:
    with pytest.raises(rm.MapError) as e:
        rm.parse_map(data, source)
    return e.value.errors


# ---------------------------------------------------------------- orders and types: known vectors

def permute(be: bytes, word: str, byte: str) -> list[int]:
    """Independent reference: big-endian value bytes -> registers as a device with these orders sends them."""
    words = [be[i:i + 2] for i in range(0, len(be), 2)]
    if word == "little":
        words = words[::-1]
    if byte == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def test_float32_230_5_in_all_four_orders():
    expected = {("big", "big"): [0x4366, 0x8000], ("little", "big"): [0x8000, 0x4366],
                ("big", "little"): [0x6643, 0x0080], ("little", "little"): [0x0080, 0x6643]}
    for (word, byte), regs in expected.items():
        rmap = one({"type": "float32", "word_order": word, "byte_order": byte})
        assert rm.encode(rmap, "X", 230.5) == (10, regs)
        s = read_one(rmap, regs)
        assert (s.value, s.validity, s.detail) == (230.5, Validity.GOOD, Detail.NONE)


VECTORS = [  # type, value, big-endian bytes
    ("int16", -2, bytes.fromhex("fffe")),
    ("int16", 12345, bytes.fromhex("3039")),
    ("uint16", 0x1234, bytes.fromhex("1234")),
    ("uint16", 65535, bytes.fromhex("ffff")),
    ("int32", -123456, bytes.fromhex("fffe1dc0")),
    ("int32", 2_000_000_000, bytes.fromhex("77359400")),
    ("uint32", 0x12345678, bytes.fromhex("12345678")),
    ("uint32", 4_000_000_000, bytes.fromhex("ee6b2800")),
    ("float32", 230.5, bytes.fromhex("43668000")),
    ("float32", -0.75, bytes.fromhex("bf400000")),
    ("float64", 230.5, bytes.fromhex("406cd00000000000")),
    ("float64", -1e300, struct.pack(">d", -1e300)),
]


@pytest.mark.parametrize("word,byte", ORDERS)
@pytest.mark.parametrize("kind,value,be", VECTORS)
def test_every_type_and_order_round_trips_known_vectors(kind, value, be, word, byte):
    rmap = one({"type": kind, "word_order": word, "byte_order": byte})
    regs = permute(be, word, byte)
    assert rm.encode(rmap, "X", value) == (10, regs)
    s = read_one(rmap, regs)
    assert s.value == value and type(s.value) is type(value) and s.good


def test_int32_vectors_written_out():
    # -123456 = 0xFFFE1DC0: the four orders, spelled out so a wrong reference helper cannot hide a bug
    for (word, byte), regs in {("big", "big"): [0xFFFE, 0x1DC0], ("little", "big"): [0x1DC0, 0xFFFE],
                               ("big", "little"): [0xFEFF, 0xC01D], ("little", "little"): [0xC01D, 0xFEFF]}.items():
        rmap = one({"type": "int32", "word_order": word, "byte_order": byte})
        assert read_one(rmap, regs).value == -123456
        assert rm.encode(rmap, "X", -123456)[1] == regs


def test_float64_word_order_reverses_all_four_words():
    rmap = one({"type": "float64", "word_order": "little"})
    assert rm.encode(rmap, "X", 230.5)[1] == [0, 0, 0xD000, 0x406C]


@pytest.mark.parametrize("byte,regs", [("big", [0x5344, 0x4D36, 0x3330, 0x0000]),
                                       ("little", [0x4453, 0x364D, 0x3033, 0x0000])])
def test_string_vectors(byte, regs):
    rmap = one({"type": "string", "length": 4, "byte_order": byte})
    assert rm.encode(rmap, "X", "SDM630") == (10, regs)
    assert read_one(rmap, regs).value == "SDM630"


def test_string_word_order_does_not_reorder_characters():
    rmap = one({"type": "string", "length": 2, "word_order": "little"})
    assert read_one(rmap, [0x4142, 0x4344]).value == "ABCD"


def test_string_stops_at_nul_and_strips_trailing_spaces_and_rejects_bad_utf8():
    rmap = one({"type": "string", "length": 3})
    assert read_one(rmap, [0x4142, 0x2020, 0x0043]).value == "AB"
    assert read_one(rmap, [0x0041, 0x4200, 0x0000]).value == ""
    bad = read_one(rmap, [0xFFFE, 0x0000, 0x0000])
    assert (bad.validity, bad.detail) == (Validity.INVALID, Detail.MALFORMED)


_INT_BOUNDS = {"int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-2**31, 2**31 - 1),
               "uint32": (0, 2**32 - 1)}


@st.composite
def typed_values(draw):
    kind = draw(st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "float64", "string"]))
    word, byte = draw(st.sampled_from(ORDERS))
    if kind in _INT_BOUNDS:
        value = draw(st.integers(*_INT_BOUNDS[kind]))
    elif kind == "float32":
        value = draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
    elif kind == "float64":
        value = draw(st.floats(allow_nan=False, allow_infinity=False))
    else:
        value = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12))
    return kind, word, byte, value


@settings(max_examples=300, deadline=None)
@given(typed_values())
def test_encode_decode_round_trip_property(case):
    kind, word, byte, value = case
    extra = {"length": 6} if kind == "string" else {}
    rmap = one({"type": kind, "word_order": word, "byte_order": byte, **extra})
    addr, regs = rm.encode(rmap, "X", value)
    assert addr == 10 and all(0 <= r <= 0xFFFF for r in regs) and len(regs) == rmap.point("X").size
    got = read_one(rmap, regs).value
    if kind == "float32":  # read as the shortest decimal of the float32: equal in float32, registers identical
        assert struct.pack(">f", got) == struct.pack(">f", value)
    else:
        assert got == value and type(got) is type(value)
    assert rm.encode(rmap, "X", got) == (addr, regs)


# ---------------------------------------------------------------- scale, offset, quality

def test_scale_and_offset_apply_as_raw_times_scale_plus_offset_and_invert_on_encode():
    rmap = one({"type": "int16", "scale": 0.1, "offset": -40.0, "unit": "°C"})
    s = read_one(rmap, [2301])
    assert s.value == 190.1 and s.unit == "°C"          # 2301 * 0.1 - 40, rounded to the scale's decimals
    assert rm.encode(rmap, "X", 190.1) == (10, [2301])
    assert rm.encode(rmap, "X", 190.14) == (10, [2301])  # rounded to the device's resolution
    assert read_one(rmap, [0xFFFF]).value == -40.1


def test_integer_without_scale_stays_int_and_float32_reads_shortest():
    assert type(read_one(one({"type": "uint16"}), [7]).value) is int
    assert type(read_one(one({"type": "uint16", "scale": 2.0}), [7]).value) is float
    # 230.1 is not exact in float32; the reading is the shortest decimal that maps to the same float32
    rmap = one({"type": "float32"})
    assert read_one(rmap, rm.encode(rmap, "X", 230.1)[1]).value == 230.1
    kwh = one({"type": "float32", "scale": 1000.0, "unit": "Wh"})
    assert read_one(kwh, rm.encode(rmap, "X", 1234.567)[1]).value == 1234567.0


@pytest.mark.parametrize("kind,sentinel,regs", [
    ("int16", 0x8000, [0x8000]), ("int16", -32768, [0x8000]), ("uint16", 0xFFFF, [0xFFFF]),
    ("int32", 0x80000000, [0x8000, 0x0000]), ("uint32", 0xFFFFFFFF, [0xFFFF, 0xFFFF]),
    ("float32", 0xFF7FFFFF, [0xFF7F, 0xFFFF]),
])
def test_sentinels_give_not_implemented(kind, sentinel, regs):
    rmap = one({"type": kind, "not_implemented": [sentinel], "min": 0.0, "max": 1.0})
    s = read_one(rmap, regs)
    assert (s.value, s.validity, s.detail) == (None, Validity.INVALID, Detail.NOT_IMPLEMENTED)


def test_sentinel_is_matched_after_word_order():
    rmap = one({"type": "int32", "word_order": "little", "not_implemented": [0x80000000]})
    assert read_one(rmap, [0x0000, 0x8000]).detail is Detail.NOT_IMPLEMENTED
    assert read_one(rmap, [0x8000, 0x0000]).good  # 0x00008000 in this order


@pytest.mark.parametrize("kind,regs,detail", [
    ("float32", [0x7FC0, 0x0000], Detail.NOT_IMPLEMENTED),   # NaN
    ("float32", [0x7F80, 0x0000], Detail.MALFORMED),         # +inf
    ("float32", [0xFF80, 0x0000], Detail.MALFORMED),         # -inf
    ("float64", [0x7FF8, 0, 0, 0], Detail.NOT_IMPLEMENTED),
    ("float64", [0xFFF0, 0, 0, 0], Detail.MALFORMED),
])
def test_nan_and_infinity_are_invalid(kind, regs, detail):
    s = read_one(one({"type": kind}), regs)
    assert (s.value, s.validity, s.detail) == (None, Validity.INVALID, detail)


def test_scaled_overflow_is_malformed():
    s = read_one(one({"type": "float64", "scale": 1e10}), list(struct.unpack(">4H", struct.pack(">d", 1e300))))
    assert (s.validity, s.detail) == (Validity.INVALID, Detail.MALFORMED)


def test_out_of_range_is_questionable_and_keeps_the_value():
    rmap = one({"type": "uint16", "scale": 0.1, "unit": "Hz", "min": 45.0, "max": 65.0})
    for raw, value, ok in [(500, 50.0, True), (450, 45.0, True), (650, 65.0, True), (449, 44.9, False),
                           (651, 65.1, False)]:
        s = read_one(rmap, [raw])
        assert s.value == value
        assert (s.validity, s.detail) == ((Validity.GOOD, Detail.NONE) if ok else
                                          (Validity.QUESTIONABLE, Detail.OUT_OF_RANGE))


# ---------------------------------------------------------------- decode: bad answers

def two_points() -> tuple[rm.RegisterMap, rm.ReadBlock]:
    rmap = rm.parse_map(mk([{"name": "A", "address": 0, "type": "uint16", "unit": "A"},
                            {"name": "B", "address": 1, "type": "float32", "unit": "V"}]), "t")
    [block] = rm.plan_reads(rmap)
    return rmap, block


@pytest.mark.parametrize("regs", [[], [1, 2], [1, 2, 3, 4], None, 5, "abc"])
def test_wrong_length_or_not_a_list_gives_malformed_for_every_point(regs):
    rmap, block = two_points()
    samples = rm.decode(rmap, block, regs, "m1", T0)
    assert [(x.point, x.validity, x.detail, x.unit) for x in samples] == [
        ("m1/A", Validity.INVALID, Detail.MALFORMED, "A"), ("m1/B", Validity.INVALID, Detail.MALFORMED, "V")]


@pytest.mark.parametrize("bad", [-1, 0x10000, True, 1.0, None, "1"])
def test_a_bad_register_spoils_only_its_point(bad):
    rmap, block = two_points()
    a, b = rm.decode(rmap, block, [7, bad, 0], "m1", T0)
    assert a.good and a.value == 7
    assert (b.validity, b.detail) == (Validity.INVALID, Detail.MALFORMED)


def test_block_not_from_this_map_gives_bad_reference():
    rmap, _ = two_points()
    samples = rm.decode(rmap, rm.ReadBlock("input", 0, 3, ("A", "Nope")), [1, 2, 3], "m1", T0)
    assert [x.detail for x in samples] == [Detail.BAD_REFERENCE, Detail.BAD_REFERENCE]
    samples = rm.decode(rmap, rm.ReadBlock("holding", 1, 1, ("B",)), [1], "m1", T0)  # B needs 2 registers
    assert samples[0].detail is Detail.BAD_REFERENCE


# ---------------------------------------------------------------- encode refusals

@pytest.mark.parametrize("point,value,message", [
    ({"type": "uint16", "access": "r"}, 1, 'X: read-only (access = "r")'),
    ({"type": "uint16", "min": 0.0, "max": 100.0}, 100.5, "X: 100.5 is outside the point's range 0.0..100.0"),
    ({"type": "uint16", "max": 100.0}, 101, "X: 101 is outside the point's range ..100.0"),
    ({"type": "int16"}, 32768, "X: 32768 gives raw 32768, outside int16 (-32768..32767)"),
    ({"type": "uint16", "scale": 0.1}, 6553.6, "X: 6553.6 gives raw 65536, outside uint16 (0..65535)"),
    ({"type": "uint32"}, -1, "X: -1 gives raw -1, outside uint32 (0..4294967295)"),
    ({"type": "float32"}, 1e39, "X: 1e+39 gives raw 1e+39, outside float32 range"),
    ({"type": "float32"}, math.nan, "X: must be a finite number, got nan"),
    ({"type": "float64"}, -math.inf, "X: must be a finite number, got -inf"),
    ({"type": "float64"}, 10**400, "X: 10000000000000000000...00000000 is outside the range of float64"),
    ({"type": "uint16"}, True, "X: must be a number, got boolean true"),
    ({"type": "uint16"}, "5", "X: must be a number, got string '5'"),
    ({"type": "int16", "not_implemented": [0x8000]}, -32768,
     "X: -32768 encodes to a not-implemented value (0x8000)"),
    ({"type": "string", "length": 2}, "ABCDE", "X: 5 bytes do not fit in 2 registers (4 bytes)"),
    ({"type": "string", "length": 2}, 5, "X: must be a string, got integer 5"),
    ({"type": "string", "length": 2}, "\ud800", "X: not encodable as UTF-8"),
])
def test_encode_refusals_are_exact(point, value, message):
    with pytest.raises(rm.EncodeError) as e:
        rm.encode(one(point), "X", value)
    assert str(e.value) == message


def test_encode_unknown_point():
    with pytest.raises(rm.EncodeError, match=r"^no point 'Y' in the map$"):
        rm.encode(one({"type": "uint16"}), "Y", 1)


# ---------------------------------------------------------------- validation messages

VALID_POINT = {"name": "W", "address": 0, "type": "int16"}


@pytest.mark.parametrize("data,expected", [
    ([], ["m.toml: must be a table, got array"]),
    ({}, ["m.toml: manufacturer: required key missing", "m.toml: model: required key missing",
          "m.toml: source: required key missing", "m.toml: points: required key missing"]),
    (mk([{**VALID_POINT, "type": "int8"}]),
     ["m.toml: points[0].type: must be one of: int16, uint16, int32, uint32, float32, float64, string; got 'int8' "
      "(did you mean 'int32'?)"]),
    (mk([VALID_POINT, {"name": "V", "address": 2, "type": "int8"}, VALID_POINT,
         {**VALID_POINT, "name": "Z", "address": 5, "type": "byte"}]),
     ["m.toml: points[1].type: must be one of: int16, uint16, int32, uint32, float32, float64, string; got 'int8' "
      "(did you mean 'int32'?)",
      "m.toml: points[3].type: must be one of: int16, uint16, int32, uint32, float32, float64, string; got 'byte'",
      "m.toml: points[2].name: duplicate 'W', already used by points[0].name",
      "m.toml: points[2].address: registers 0..0 overlap points[0] 'W' (registers 0..0)"]),
    (mk([{**VALID_POINT, "address": -1}]), ["m.toml: points[0].address: must be >= 0, got -1"]),
    (mk([{**VALID_POINT, "address": 65536}]), ["m.toml: points[0].address: must be <= 65535, got 65536"]),
    (mk([{**VALID_POINT, "address": 65535, "type": "int32"}]),
     ["m.toml: points[0].address: runs past the last register 65535: 2 registers from 65535"]),
    (mk([{**VALID_POINT, "address": "0x10"}]), ["m.toml: points[0].address: must be an integer, got string '0x10'"]),
    (mk([{**VALID_POINT, "address": 1.0}]), ["m.toml: points[0].address: must be an integer, got float 1.0"]),
    (mk([{**VALID_POINT, "name": "1W"}]),
     ["m.toml: points[0].name: must be a point name like PhVphA (letters, digits, _ . : -; up to 64), got '1W'"]),
    (mk([{**VALID_POINT, "table": "coil"}]),
     ["m.toml: points[0].table: must be one of: holding, input; got 'coil'"]),
    (mk([{**VALID_POINT, "word_order": "middle"}]),
     ["m.toml: points[0].word_order: must be one of: big, little; got 'middle'"]),
    (mk([{**VALID_POINT, "byte_order": "Big"}]),
     ["m.toml: points[0].byte_order: must be one of: big, little; got 'Big' (did you mean 'big'?)"]),
    (mk([{**VALID_POINT, "scale": 0}]),
     ["m.toml: points[0].scale: must not be 0 (a zero scale would hide every reading)"]),
    (mk([{**VALID_POINT, "scale": "0.1"}]), ["m.toml: points[0].scale: must be a number, got string '0.1'"]),
    (mk([{**VALID_POINT, "scale": math.nan}]), ["m.toml: points[0].scale: must be a finite number, got nan"]),
    (mk([{**VALID_POINT, "offset": math.inf}]), ["m.toml: points[0].offset: must be a finite number, got inf"]),
    (mk([{**VALID_POINT, "unit": "KWh"}]),
     ['m.toml: points[0].unit: must be an SI unit symbol (V, A, W, var, VA, Hz, Wh, varh, VAh, Ah, %, s, °, °C, K, '
      'Pa, W/m2, Ohm) or "" for none, got \'KWh\' (did you mean \'Wh\'?)']),
    (mk([{**VALID_POINT, "unit": "VAR"}]),
     ['m.toml: points[0].unit: must be an SI unit symbol (V, A, W, var, VA, Hz, Wh, varh, VAh, Ah, %, s, °, °C, K, '
      'Pa, W/m2, Ohm) or "" for none, got \'VAR\' (did you mean \'var\'?)']),
    (mk([{**VALID_POINT, "unit": 5}]), ["m.toml: points[0].unit: must be a string, got integer 5"]),
    (mk([{**VALID_POINT, "access": "w"}]),
     ["m.toml: points[0].access: must be one of: r, rw; got 'w' (did you mean 'rw'?)"]),
    (mk([{**VALID_POINT, "access": "rw", "table": "input"}]),
     ['m.toml: points[0].access: rw needs table = "holding" (input registers are read-only)']),
    (mk([{**VALID_POINT, "access": "rw"}], table="input"),
     ['m.toml: points[0].access: rw needs table = "holding" (input registers are read-only)']),
    (mk([{**VALID_POINT, "min": 5, "max": 1}]), ["m.toml: points[0].min: must be <= max (1.0), got 5.0"]),
    (mk([{**VALID_POINT, "not_implemented": [0x8000, 0x10000]}]),
     ["m.toml: points[0].not_implemented[1]: must fit in 16 bits (-32768..65535) for type int16, got 65536"]),
    (mk([{**VALID_POINT, "not_implemented": [1, 1]}]),
     ["m.toml: points[0].not_implemented[1]: duplicate integer 1, already used by points[0].not_implemented[0]"]),
    (mk([{**VALID_POINT, "not_implemented": 0x8000}]),
     ["m.toml: points[0].not_implemented: must be an array, got integer 32768"]),
    (mk([{**VALID_POINT, "type": "string"}]),
     ["m.toml: points[0].length: required key missing (type string needs a length in registers)"]),
    (mk([{**VALID_POINT, "type": "string", "length": 2, "scale": 2, "not_implemented": [0], "min": 0}]),
     ["m.toml: points[0].min: not allowed for type string",
      "m.toml: points[0].not_implemented: not allowed for type string",
      "m.toml: points[0].scale: not allowed for type string"]),
    (mk([{**VALID_POINT, "length": 2}]), ["m.toml: points[0].length: only allowed for type string, not int16"]),
    (mk([{**VALID_POINT, "type": "string", "length": 126}]),
     ["m.toml: points[0].length: must be <= 125, got 126"]),
    (mk([{**VALID_POINT, "type": "string", "length": 20}], max_registers_per_request=10),
     ["m.toml: points[0].length: needs 20 registers, more than max_registers_per_request (10)"]),
    (mk([{**VALID_POINT, "type": "float64"}], max_registers_per_request=2),
     ["m.toml: points[0].type: needs 4 registers, more than max_registers_per_request (2)"]),
    (mk([VALID_POINT], max_registers_per_request=126),
     ["m.toml: max_registers_per_request: must be <= 125, got 126"]),
    (mk([VALID_POINT], max_registers_per_request=0), ["m.toml: max_registers_per_request: must be >= 1, got 0"]),
    (mk([VALID_POINT], max_gap=-1), ["m.toml: max_gap: must be >= 0, got -1"]),
    (mk([VALID_POINT], word_order="le"), ["m.toml: word_order: must be one of: big, little; got 'le'"]),
    (mk([VALID_POINT], manufacturer=""), ["m.toml: manufacturer: must not be empty, got ''"]),
    (mk([VALID_POINT], colour="red"),
     ["m.toml: colour: unknown key (expected one of: manufacturer, model, source, description, "
      "max_registers_per_request, max_gap, table, word_order, byte_order, points)"]),
    (mk([{**VALID_POINT, "adress": 3}]),
     ["m.toml: points[0].adress: unknown key (did you mean 'address'?)"]),
    (mk([]), ["m.toml: points: must have at least 1 item, got 0"]),
    (mk([VALID_POINT, {"name": "X", "address": 1, "type": "int32"}, {"name": "Y", "address": 2, "type": "uint16"}]),
     ["m.toml: points[2].address: registers 2..2 overlap points[1] 'X' (registers 1..2)"]),
    (mk([{"name": "X", "address": 0, "type": "string", "length": 10},
         {"name": "Y", "address": 0, "type": "uint16"}]),
     ["m.toml: points[1].address: registers 0..0 overlap points[0] 'X' (registers 0..9)"]),
    (mk([{"name": "X", "address": 0, "type": "string", "length": 10},
         {"name": "Y", "address": 3, "type": "uint16"}, {"name": "Z", "address": 5, "type": "uint16"}]),
     ["m.toml: points[1].address: registers 3..3 overlap points[0] 'X' (registers 0..9)",
      "m.toml: points[2].address: registers 5..5 overlap points[0] 'X' (registers 0..9)"]),
])
def test_validation_messages_are_exact(data, expected):
    assert errors(data) == expected


def test_same_address_in_different_tables_is_fine():
    rmap = rm.parse_map(mk([VALID_POINT, {**VALID_POINT, "name": "V", "table": "input"}]), "t")
    assert [(p.name, p.table) for p in rmap.points] == [("W", "holding"), ("V", "input")]


def test_defaults_and_device_level_orders_apply():
    rmap = rm.parse_map(mk([VALID_POINT, {"name": "V", "address": 5, "type": "int32", "word_order": "big"}],
                           word_order="little", byte_order="little", table="input"), "t")
    w, v = rmap.points
    assert (w.table, w.word_order, w.byte_order, w.scale, w.offset, w.unit, w.access) == (
        "input", "little", "little", 1.0, 0.0, "", "r")
    assert (v.word_order, v.byte_order) == ("big", "little")
    assert (rmap.max_registers_per_request, rmap.max_gap, rmap.origin) == (125, 0, "t")


# ---------------------------------------------------------------- loading files

def test_load_map_file_errors(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(rm.MapError) as e:
        rm.load_map(missing)
    assert e.value.errors == [f"{missing}: cannot read: No such file or directory"]
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"manufacturer = \n")
    with pytest.raises(rm.MapError) as e:
        rm.load_map(bad)
    assert e.value.errors[0].startswith(f"{bad}: invalid TOML: ")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'model = "\xe9"\n')
    with pytest.raises(rm.MapError) as e:
        rm.load_map(latin)
    assert e.value.errors == [f"{latin}: invalid TOML: not UTF-8 (byte 0xe9 at offset 9)"]


def test_load_map_reports_the_file_and_key_path(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text('manufacturer = "A"\nmodel = "B"\nsource = "C"\n'
                 '[[points]]\nname = "W"\naddress = 0\ntype = "int16"\n'
                 '[[points]]\nname = "V"\naddress = 0x10\ntype = "int8"\n')
    with pytest.raises(rm.MapError) as e:
        rm.load_map(f)
    assert str(e.value) == (f"{f}: points[1].type: must be one of: int16, uint16, int32, uint32, float32, float64, "
                            "string; got 'int8' (did you mean 'int32'?)")


# ---------------------------------------------------------------- shipped maps

def test_shipped_maps_load_and_say_where_they_came_from():
    maps = rm.shipped_maps()
    assert {"eastron_sdm630", "carlo_gavazzi_em24"} <= set(maps)
    for path in maps.values():
        rmap = rm.load_map(path)
        assert rmap.source.startswith("vendor manual: ") and "check against the manual" in rmap.source
        assert "CHECK THEM AGAINST THE MANUAL" in path.read_text()
        assert 1 <= rmap.max_registers_per_request <= 125
        assert {"W", "Hz", "PhVphA", "PhVphB", "PhVphC", "TotWhImp", "TotWhExp"} <= set(rmap.names)
        assert all(not p.writable for p in rmap.points)  # meters: read only
        blocks = rm.plan_reads(rmap)
        check_plan(rmap, blocks, rmap.points)


def image(rmap: rm.RegisterMap, raws: dict[str, int | float], table: str = "input") -> dict[int, int]:
    """Registers a device would hold for these raw (unscaled) values, built with encode on writable twins."""
    regs: dict[int, int] = {}
    for name, raw in raws.items():
        p = rmap.point(name)
        twin = one({"type": p.type, "word_order": p.word_order, "byte_order": p.byte_order, "address": p.address})
        addr, words = rm.encode(twin, "X", raw)
        for i, w in enumerate(words):
            regs[addr + i] = w
    return regs


def read_all(rmap: rm.RegisterMap, regs: dict[int, int]) -> dict[str, object]:
    out = {}
    for b in rm.plan_reads(rmap):
        for s in rm.decode(rmap, b, [regs.get(b.address + i, 0) for i in range(b.count)], "m", T0):
            out[s.point.split("/", 1)[1]] = s
    return out


def test_sdm630_decodes_manual_style_values():
    rmap = rm.load_map(rm.shipped_maps()["eastron_sdm630"])
    regs = image(rmap, {"PhVphA": 230.5, "W": 1500.0, "Hz": 49.98, "TotWhImp": 1234.5, "PF": -0.97,
                        "AphA": 0.0})
    assert (regs[0], regs[1]) == (0x4366, 0x8000)  # 230.5 V as float32, high word first
    got = read_all(rmap, regs)
    assert got["PhVphA"].value == 230.5 and got["PhVphA"].unit == "V"
    assert got["W"].value == -1500.0                 # meter + = import; gridedge + = export
    assert got["Hz"].value == 49.98 and got["Hz"].good
    assert got["TotWhImp"].value == 1234500.0 and got["TotWhImp"].unit == "Wh"
    assert got["PF"].value == -0.97
    assert got["PhVphB"].value == 0.0 and got["Hz"].good


def test_em24_decodes_lsw_first_int32_with_weights():
    rmap = rm.load_map(rm.shipped_maps()["carlo_gavazzi_em24"])
    regs = image(rmap, {"PhVphA": 2305, "AphA": 12345, "W": 123456, "PF": -980, "Hz": 500, "TotWhImp": 98765,
                        "TotWhExp": 70000})
    assert (regs[0x28], regs[0x29]) == (0xE240, 0x0001)   # 123456 = 0x0001E240, least significant word first
    got = read_all(rmap, regs)
    assert got["PhVphA"].value == 230.5
    assert got["AphA"].value == 12.345
    assert got["W"].value == -12345.6                   # import of 12345.6 W -> -12345.6 (export positive)
    assert got["PF"].value == -0.98
    assert got["Hz"].value == 50.0 and got["Hz"].good
    assert got["TotWhImp"].value == 9876500.0
    assert got["TotWhExp"].value == 7000000.0
    assert got["PhVphB"].good and got["PhVphB"].value == 0.0
    assert got["PFphA"].good and got["PFphA"].value == 0.0


# ---------------------------------------------------------------- planning

def check_plan(rmap, blocks, wanted):
    """Every wanted point in exactly one block; blocks within limits; no two neighbours could be merged."""
    seen: list[str] = []
    for b in blocks:
        assert 1 <= b.count <= rmap.max_registers_per_request <= 125
        pts = [rmap.point(n) for n in b.points]
        assert all(p.table == b.table for p in pts)
        assert pts[0].address == b.address and max(p.end for p in pts) == b.address + b.count
        assert [p.address for p in pts] == sorted(p.address for p in pts)
        for prev, nxt in zip(pts, pts[1:]):
            assert nxt.address - prev.end <= rmap.max_gap
        seen += b.points
    assert sorted(seen) == sorted(p.name for p in wanted)
    for a, b in zip(blocks, blocks[1:]):
        if a.table == b.table:
            assert a.address + a.count <= b.address
            assert (b.address - (a.address + a.count) > rmap.max_gap
                    or b.address + b.count - a.address > rmap.max_registers_per_request)


def test_plan_splits_at_125_registers():
    rmap = rm.parse_map(mk([{"name": f"P{i}", "address": i, "type": "uint16"} for i in range(260)]), "t")
    blocks = rm.plan_reads(rmap)
    assert [(b.address, b.count) for b in blocks] == [(0, 125), (125, 125), (250, 10)]
    check_plan(rmap, blocks, rmap.points)


def test_plan_never_splits_a_point():
    rmap = rm.parse_map(mk([{"name": f"P{i}", "address": 2 * i, "type": "float32"} for i in range(70)]), "t")
    blocks = rm.plan_reads(rmap)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 16)]


@pytest.mark.parametrize("gap,expected", [(0, [(0, 1), (5, 1)]), (3, [(0, 1), (5, 1)]), (4, [(0, 6)]),
                                          (10, [(0, 6)])])
def test_plan_respects_max_gap(gap, expected):
    rmap = rm.parse_map(mk([{"name": "A", "address": 0, "type": "uint16"},
                            {"name": "B", "address": 5, "type": "uint16"}], max_gap=gap), "t")
    assert [(b.address, b.count) for b in rm.plan_reads(rmap)] == expected


def test_plan_separates_tables_subsets_and_rejects_unknown_names():
    rmap = rm.parse_map(mk([{"name": "H", "address": 0, "type": "uint16"},
                            {"name": "I", "address": 1, "type": "uint16", "table": "input"},
                            {"name": "H2", "address": 1, "type": "uint16"}]), "t")
    blocks = rm.plan_reads(rmap)
    assert blocks == [rm.ReadBlock("holding", 0, 2, ("H", "H2")), rm.ReadBlock("input", 1, 1, ("I",))]
    assert [b.function_code for b in blocks] == [3, 4]
    assert rm.plan_reads(rmap, ["H2", "H2"]) == [rm.ReadBlock("holding", 1, 1, ("H2",))]
    assert rm.plan_reads(rmap, []) == []
    with pytest.raises(rm.PlanError, match=r"^t: no such point\(s\) in the map: 'Q', 'R'$"):
        rm.plan_reads(rmap, ["H", "Q", "R"])


@st.composite
def layouts(draw):
    limit = draw(st.integers(4, 125))
    gap = draw(st.integers(0, 20))
    n = draw(st.integers(1, 60))
    points, cursor = [], {"holding": 0, "input": 0}
    for i in range(n):
        table = draw(st.sampled_from(["holding", "input"]))
        kind = draw(st.sampled_from(["uint16", "int32", "float64", "string"]))
        p = {"name": f"P{i}", "type": kind, "table": table}
        size = {"uint16": 1, "int32": 2, "float64": 4}.get(kind, 0)
        if kind == "string":
            size = draw(st.integers(1, limit))
            p["length"] = size
        cursor[table] += draw(st.integers(0, 30))
        if cursor[table] + size > 65536:
            break
        p["address"] = cursor[table]
        cursor[table] += size
        points.append(p)
    return mk(draw(st.permutations(points)), max_registers_per_request=limit, max_gap=gap)


@settings(max_examples=200, deadline=None)
@given(layouts(), st.data())
def test_plan_property(data, more):
    rmap = rm.parse_map(data, "t")
    check_plan(rmap, rm.plan_reads(rmap), rmap.points)
    subset = more.draw(st.lists(st.sampled_from(rmap.names), unique=True))
    check_plan(rmap, rm.plan_reads(rmap, subset), [rmap.point(n) for n in subset])


# ---------------------------------------------------------------- fuzz

FUZZ_MAP = rm.parse_map(mk([
    {"name": "a", "address": 0, "type": "int16", "not_implemented": [0x8000], "min": -5.0, "max": 5.0},
    {"name": "b", "address": 1, "type": "uint32", "word_order": "little", "scale": 0.01},
    {"name": "c", "address": 3, "type": "float32", "byte_order": "little", "scale": 1e30, "offset": 1.0},
    {"name": "d", "address": 5, "type": "float64", "min": 0.0},
    {"name": "e", "address": 9, "type": "string", "length": 3},
    {"name": "f", "address": 12, "type": "int32", "scale": 1e-300},
], max_gap=2), "fuzz")
FUZZ_BLOCKS = rm.plan_reads(FUZZ_MAP)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FUZZ_BLOCKS + [rm.ReadBlock("holding", 0, 3, ("a", "zz", "d"))]),
       st.one_of(st.lists(st.integers(0, 0xFFFF), min_size=13, max_size=13),
                 st.lists(st.integers(-2**70, 2**70), max_size=20),
                 st.lists(st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=2)), max_size=16),
                 st.none(), st.integers(), st.binary(max_size=30)))
def test_fuzz_decode_never_raises(block, registers):
    samples = rm.decode(FUZZ_MAP, block, registers, "fz", T0)
    assert [x.point for x in samples] == [f"fz/{n}" for n in block.points]
    for x in samples:
        assert isinstance(x.validity, Validity)
        if x.validity is Validity.INVALID:
            assert x.value is None and x.detail is not Detail.NONE
        elif isinstance(x.value, float):
            assert math.isfinite(x.value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FUZZ_BLOCKS + rm.plan_reads(FUZZ_MAP, ["b", "e"]) + [rm.ReadBlock("holding", 0, 3, ("a", "zz", "d"))]),
       st.one_of(st.lists(st.integers(0, 0xFFFF), min_size=13, max_size=13),
                 st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=13),
                 st.lists(st.integers(-2**70, 2**70), max_size=20),
                 st.lists(st.one_of(st.none(), st.floats(), st.text(max_size=2)), max_size=16),
                 st.none(), st.integers(), st.binary(max_size=30)))
def test_block_decoder_gives_what_decode_gives(block, registers):
    """The fast path (one pack per block, points sliced out) against the reference decoder, point for point.
    Registers are ints or garbage; links never return bools, which the fast path would read as 0/1."""
    fast = list(rm.BlockDecoder(FUZZ_MAP, block, "fz").decode(registers, T0))
    assert fast == rm.decode(FUZZ_MAP, block, registers, "fz", T0)


def test_block_decoder_on_the_shipped_maps():
    for path in rm.shipped_maps().values():
        rmap = rm.load_map(path)
        for i, b in enumerate(rm.plan_reads(rmap)):
            regs = [(i * 7919 + k * 104729) & 0xFFFF for k in range(b.count)]
            assert list(rm.BlockDecoder(rmap, b, "m").decode(regs, T0)) == rm.decode(rmap, b, regs, "m", T0)


toml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8))
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4)), max_leaves=20)
KEYS = ["name", "address", "table", "type", "length", "word_order", "byte_order", "scale", "offset", "unit",
        "access", "not_implemented", "min", "max", "description"]


@st.composite
def mutated_maps(draw):
    """A valid map with some keys replaced, removed or added: reaches the cross-field checks."""
    data = copy.deepcopy(mk([{"name": "A", "address": 0, "type": "string", "length": 2},
                             {"name": "B", "address": 2, "type": "int32", "not_implemented": [1]},
                             {"name": "C", "address": 4, "type": "float32", "min": 0.0, "max": 1.0}],
                            max_registers_per_request=4))
    targets = [data] + data["points"]
    for _ in range(draw(st.integers(1, 5))):
        target = draw(st.sampled_from(targets))
        key = draw(st.sampled_from(KEYS + list(data) + ["zzz"]))
        if draw(st.booleans()):
            target[key] = draw(st.one_of(toml_values, st.sampled_from(
                ["string", "int16", "float64", "input", "rw", "little", 0, 1, 65535, 126, [0x8000], 2.5, -1])))
        else:
            target.pop(key, None)
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(toml_values, st.dictionaries(st.sampled_from(KEYS + ["manufacturer", "points"]), toml_values),
                 mutated_maps()))
def test_fuzz_parse_map_gives_a_map_or_maperror(data):
    try:
        rmap = rm.parse_map(data, "fz.toml")
    except rm.MapError as e:
        assert e.errors and all(line.startswith("fz.toml: ") for line in e.errors)
        return
    assert isinstance(rmap, rm.RegisterMap)
    check_plan(rmap, rm.plan_reads(rmap), rmap.points)


# ---------------------------------------------------------------- real pymodbus server and client

def test_plan_and_decode_against_a_real_pymodbus_server():
    """The blocks are real requests: a pymodbus server holding an EM24 image answers them, and what the client
    returns decodes to the values we stored (function 04, LSW-first int32, 11-register limit)."""
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    rmap = rm.load_map(rm.shipped_maps()["carlo_gavazzi_em24"])
    regs = image(rmap, {"PhVphA": 2305, "W": -4321, "Hz": 499, "TotWhExp": 70000, "PF": 1000})
    values = [regs.get(a, 0) for a in range(0x60)]

    async def run():
        device = SimDevice(id=1, simdata=([SimData(0, values=[0], datatype=DataType.BITS)],
                                          [SimData(0, values=[0], datatype=DataType.BITS)],
                                          [SimData(0, values=[0xAAAA] * 0x60, datatype=DataType.REGISTERS)],
                                          [SimData(0, values=values, datatype=DataType.REGISTERS)]))
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        try:
            port = server.transport.sockets[0].getsockname()[1]
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
            assert await client.connect()
            got = {}
            try:
                for block in rm.plan_reads(rmap):
                    assert block.function_code == 4
                    rr = await client.read_input_registers(block.address, count=block.count, device_id=1)
                    assert not rr.isError(), rr
                    for s in rm.decode(rmap, block, rr.registers, "em24", T0):
                        got[s.point] = s
            finally:
                client.close()
            return got
        finally:
            await server.shutdown()

    got = asyncio.run(run())
    assert len(got) == len(rmap.points)
    assert got["em24/PhVphA"].value == 230.5
    assert got["em24/W"].value == 432.1                 # meter -432.1 W (export) -> +432.1
    assert got["em24/Hz"].value == 49.9
    assert got["em24/PF"].value == 1.0 and got["em24/PF"].good
    assert got["em24/TotWhExp"].value == 7000000.0


ENC_MAP = rm.parse_map(mk([
    {"name": "i", "address": 0, "type": "int16", "access": "rw", "scale": 0.1, "not_implemented": [0x8000]},
    {"name": "u", "address": 1, "type": "uint32", "access": "rw", "min": 0.0, "max": 1e9, "word_order": "little"},
    {"name": "f", "address": 3, "type": "float32", "access": "rw", "offset": 1e38},
    {"name": "d", "address": 5, "type": "float64", "access": "rw", "scale": 1e-300},
    {"name": "s", "address": 9, "type": "string", "length": 2, "access": "rw", "byte_order": "little"},
    {"name": "r", "address": 11, "type": "uint16"},
]), "enc")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["i", "u", "f", "d", "s", "r", "nope"]),
       st.one_of(st.integers(-2**1100, 2**1100), st.floats(), st.text(max_size=6), st.none(), st.booleans()))
def test_fuzz_encode_gives_registers_or_encodeerror(name, value):
    try:
        addr, regs = rm.encode(ENC_MAP, name, value)
    except rm.EncodeError as e:
        assert str(e)
        return
    p = ENC_MAP.point(name)
    assert addr == p.address and len(regs) == p.size and all(0 <= r <= 0xFFFF for r in regs)
    block = rm.ReadBlock(p.table, p.address, p.size, (name,))
    assert rm.decode(ENC_MAP, block, regs, "e", T0)[0].validity is not Validity.INVALID


def test_one_map_file_is_one_map_in_memory_until_its_bytes_change(tmp_path):
    """A hundred meters of one model share one RegisterMap and one decoding plan per block; only the device id
    differs. Editing the file gives a new map (the cache is keyed by content, not by name)."""
    src = rm.shipped_maps()["eastron_sdm630"]
    path = tmp_path / "meter.toml"
    path.write_bytes(src.read_bytes())
    a, b = rm.load_map(path), rm.load_map(path)
    assert a is b
    block = rm.plan_reads(a)[0]
    d1, d2 = rm.BlockDecoder(a, block, "m1"), rm.BlockDecoder(b, block, "m2")
    assert d1._plan is d2._plan and d1.layout.index is d2.layout.index
    regs = [0x4366, 0x8000] * (block.count // 2) + [0] * (block.count % 2)
    s1, s2 = list(d1.decode(regs, 1)), list(d2.decode(regs, 1))
    assert [s.point for s in s1] == [f"m1/{n}" for n in block.points]
    assert [s.point for s in s2] == [f"m2/{n}" for n in block.points]
    assert [(s.value, s.validity) for s in s1] == [(s.value, s.validity) for s in s2]
    path.write_bytes(src.read_bytes().replace(b'manufacturer = "Eastron"', b'manufacturer = "Eastron Ltd"'))
    c = rm.load_map(path)
    assert c is not a and c.manufacturer == "Eastron Ltd"
    path.write_bytes(b"not = [toml")
    with pytest.raises(rm.MapError, match="invalid TOML"):
        rm.load_map(path)
