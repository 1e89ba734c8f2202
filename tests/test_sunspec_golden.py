"""SunSpec in full: every model gridedge supports, repeating groups included, checked against pysunspec2 (the SunSpec
Alliance's own implementation, used here as the test oracle only): layouts, decoded values of device images, and
random register images decoded by both; plus encode/decode round trips and fuzzing of the decoders."""
from __future__ import annotations

import math
import os
import random

import pytest
import sunspec2
import sunspec2.file.client as sunspec_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.drivers import sunspec as ss
from gridedge.drivers.sunspec_models import ModelDefError, instance_layout, model_layout

#: The models of issue 4 (legacy 1, 101-103, 120-126; DER 701-705, 711, 712, 713, 715), and a few more that share
#: their structure (706 curves, 707 curves in sync groups, 129 legacy curves, 160 and 714 repeating modules/ports).
REQUIRED = (1, 101, 102, 103, 120, 121, 122, 123, 124, 125, 126, 701, 702, 703, 704, 705, 711, 712, 713, 715)
MORE = (706, 707, 129, 160, 714)
TEST_DATA = os.path.join(os.path.dirname(sunspec2.__file__), "tests", "test_data")


def ref_points(group, prefix: str = "") -> dict:
    """pysunspec2's points of a model instance, flattened with gridedge's names ("Crv[2].Pt[1].V")."""
    out = {prefix + n: p for n, p in group.points.items()}
    for gname, g in group.groups.items():
        if isinstance(g, list):
            for i, inst in enumerate(g, start=1):
                out.update(ref_points(inst, f"{prefix}{gname}[{i}]."))
        else:
            out.update(ref_points(g, f"{prefix}{gname}."))
    return out


def length_counted(mid: int) -> bool:
    grp = model_layout(mid)
    return bool(grp.repeating_groups) and not grp.count_points


def ref_model(mid: int, counts: dict[str, int], n_legacy: int = 1):
    """A pysunspec2 model instance sized by `counts` (count points) or, for legacy models, with n_legacy groups."""
    data = dict(counts)
    if length_counted(mid):
        data[model_layout(mid).repeating_groups[0]] = [{} for _ in range(n_legacy)]
    return sunspec_file.FileClientModel(model_id=mid, data=data)


def mine_layout(mid: int, counts: dict[str, int], ref) -> object:
    return instance_layout(mid, counts, ref.len - 2)


def counts_for(mid: int, rnd: random.Random) -> dict[str, int]:
    return {c: rnd.randint(1, 4) for c in model_layout(mid).count_points}


# ------------------------------------------------------------------ layouts

@pytest.mark.parametrize("mid", REQUIRED + MORE)
def test_instance_layout_offsets_match_pysunspec2(mid):
    """Offsets and sizes of every point, repeating groups expanded, equal pysunspec2's for several counts."""
    rnd = random.Random(mid)
    for trial in range(4):
        counts = counts_for(mid, rnd)
        ref = ref_model(mid, counts, n_legacy=trial + 1)
        assert not ref.error_info, ref.error_info
        lay = mine_layout(mid, counts, ref)
        want = {n: (p.offset, p.len) for n, p in ref_points(ref).items()}
        assert {n: (p.offset, p.size) for n, p in lay.points.items()} == want
        assert list(lay.points) == sorted(lay.points, key=lambda n: lay.points[n].offset)
        assert lay.fixed_len == ref.len


def test_fixed_layout_stops_at_the_first_repeating_group():
    lay = model_layout(705)
    assert lay.repeating_groups == ("Crv",) and lay.count_points == ("NCrv", "NPt")
    assert max(p.offset + p.size for p in lay.points.values()) == lay.fixed_len == 15
    assert not any("[" in n for n in lay.points)
    assert model_layout(126).repeating_groups == ("curve",) and model_layout(126).count_points == ()
    assert model_layout(704).repeating_groups == ()


def test_instance_layout_names_scale_factors_and_limits():
    lay = instance_layout(705, {"NCrv": 3, "NPt": 4})
    assert lay.points["Crv[3].Pt[4].Var"].sf == "DeptRef_SF"        # a top-level sf for a point two groups deep
    assert lay.points["Crv[2].VRef"].sf == "V_SF" and lay.points["Crv[2].ReadOnly"].access == "R"
    assert dict(lay.counts)["Crv"] == 3 and dict(lay.counts)["Crv[3].Pt"] == 4
    # instances that do not fit in the model length are left out, never a partial one
    # (fixed part 15 registers, a curve of 4 points 18: L = 50 holds two curves and a register of the third)
    short = instance_layout(705, {"NCrv": 3, "NPt": 4}, length=50)
    assert "Crv[2].Pt[4].Var" in short.points and "Crv[3].ActPt" not in short.points
    assert max(p.offset + p.size for p in short.points.values()) == 51
    assert dict(short.counts)["Crv"] == 2
    # absurd counts are bounded by the length, not materialised
    big = instance_layout(705, {"NCrv": 65535, "NPt": 65535}, length=200)
    assert len(big.points) < 200
    assert instance_layout(129, {}, 210).counts == (("curve", 4),)    # legacy: L = 10 + 4 x 50
    with pytest.raises(ModelDefError):
        instance_layout(705, {"NCrv": -1})
    with pytest.raises(ModelDefError):
        instance_layout(705, {"NCrv": 1}, length=70000)


# ------------------------------------------------------------------ device images shipped with pysunspec2

@pytest.mark.parametrize("image", ["device_1547.json", "inverter_123.json"])
def test_shipped_device_images_decode_like_pysunspec2(image):
    """Every point of every model in the images (705-712 curves, the legacy 129 curves) decodes to pysunspec2's
    computed value; a value whose scale factor is not implemented is BadValue (pysunspec2 leaves it unscaled)."""
    dev = sunspec_file.FileClientDevice(os.path.join(TEST_DATA, image))
    dev.scan()
    repeated = 0
    for model in dev.model_list:
        regs = ss.bytes_to_regs(model.get_mb())
        decoded = ss.decode_model(model.model_id, regs, first_offset=0)
        ref = ref_points(model)
        assert set(decoded) == set(ref), model.model_id
        for name, p in ref.items():
            check_value(model.model_id, name, decoded, ref)
            repeated += "[" in name
    assert repeated >= (100 if image == "device_1547.json" else 160)


def check_value(mid, name, decoded, ref):
    mine, p = decoded[name], ref[name]
    expect = p.cvalue
    if expect is None:
        assert mine is ss.NOT_IMPLEMENTED, (mid, name, mine)
    elif isinstance(mine, ss.BadValue):
        sfp = ref.get(_our_sf(mid, name, ref))
        assert sfp is not None and sfp.value is None, (mid, name, mine)
    elif isinstance(expect, float) or isinstance(mine, float):
        assert math.isclose(mine, expect, rel_tol=1e-9, abs_tol=1e-9), (mid, name, mine, expect)
    else:
        assert mine == expect, (mid, name, mine, expect)


def _our_sf(mid, name, ref):
    """The flattened name of the sf point of `name`, as gridedge resolves it."""
    p = ref[name]
    prefix = name[: len(name) - len(p.pdef["name"])]
    if prefix + p.sf in ref:
        return prefix + p.sf
    return p.sf


def test_shipped_705_curves_by_name():
    dev = sunspec_file.FileClientDevice(os.path.join(TEST_DATA, "device_1547.json"))
    dev.scan()
    m705 = next(m for m in dev.model_list if m.model_id == 705)
    d = ss.decode_model(705, ss.bytes_to_regs(m705.get_mb()), first_offset=0)
    assert d["NCrv"] == 3 and d["NPt"] == 4
    assert [d[f"Crv[1].Pt[{i}].V"] for i in range(1, 5)] == [92.0, 96.7, 103.0, 107.0]    # V_SF -2
    assert [d[f"Crv[1].Pt[{i}].Var"] for i in range(1, 5)] == [30.0, 0.0, 0.0, -30.0]     # DeptRef_SF -2
    assert d["Crv[1].ReadOnly"] == 1 and d["Crv[2].ReadOnly"] == 0       # curve 1 read-only, 2..3 writable
    assert d["Crv[3].Pt[4].V"] == 108.0


# ------------------------------------------------------------------ random images, decoded by both

SENTINELS = (0x8000, 0xFFFF, 0x0000, 0x7FFF)


def random_image(mid: int, counts: dict[str, int], n_legacy: int, data: st.DataObject):
    """A pysunspec2 instance and the register image of random values for it: count and scale-factor registers
    valid (sf -4..4 or not implemented), strings printable, the rest any 16-bit value with sentinels mixed in."""
    ref = ref_model(mid, counts, n_legacy)
    pts = ref_points(ref)
    regs = data.draw(st.lists(st.one_of(st.integers(0, 0xFFFF), st.sampled_from(SENTINELS)),
                              min_size=ref.len, max_size=ref.len), label="regs")
    regs[0], regs[1] = mid, ref.len - 2
    for name, p in pts.items():
        t = p.pdef["type"]
        if p.pdef["name"] in counts and "." not in name:
            regs[p.offset] = counts[p.pdef["name"]]
        elif t == "sunssf":
            v = data.draw(st.one_of(st.integers(-4, 4), st.just(None)), label=name)
            regs[p.offset] = 0x8000 if v is None else v & 0xFFFF
        elif t == "string":
            text = data.draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=p.len * 2),
                             label=name)
            regs[p.offset:p.offset + p.len] = ss.bytes_to_regs(text.encode().ljust(p.len * 2, b"\0"))
    return ref, regs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
@pytest.mark.parametrize("mid", REQUIRED + MORE)
def test_random_images_decode_like_pysunspec2(mid, data):
    counts = {c: data.draw(st.integers(0, 3), label=c) for c in model_layout(mid).count_points}
    n_legacy = data.draw(st.integers(1, 3), label="legacy groups")
    ref, regs = random_image(mid, counts, n_legacy, data)
    ref.set_mb(ss.regs_to_bytes(regs))
    assert not ref.error_info, ref.error_info
    decoded = ss.decode_model(mid, regs, first_offset=0)
    pts = ref_points(ref)
    assert set(decoded) == set(pts)
    for name in pts:
        check_value(mid, name, decoded, pts)
    # the same block read from the first data register, with L given, decodes the same
    assert ss.decode_model(mid, regs[2:], length=regs[1]) == {k: v for k, v in decoded.items() if k not in ("ID", "L")}


# ------------------------------------------------------------------ encode / decode round trips

def _draw_value(p, sfs, data):
    if p.type == "sunssf":
        return sfs[p.name], ss.encode_raw("sunssf", sfs[p.name])
    if p.type == "string":
        v = data.draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=p.size * 2))
        return v, ss.encode_point(p, v)
    if p.type == "pad":
        return 0, [0]
    if p.type in ss._FLOAT_FORMATS:
        v = data.draw(st.floats(-1e6, 1e6, allow_nan=False, width=32 if p.type == "float32" else 64))
        return v, ss.encode_point(p, v, sf=sfs.get(p.sf) if isinstance(p.sf, str) else None)
    fmt, sentinel = ss._INT_FORMATS[p.type]
    lo, hi = ss._INT_LIMITS[fmt]
    lo = max(lo, -10**6) if sentinel != lo else max(lo + 1, -10**6)
    hi = min(hi, 10**6) if sentinel != hi else min(hi - 1, 10**6)
    if sentinel == 0:
        lo = max(lo, 1)
    raw = data.draw(st.integers(lo, hi))
    exp = sfs.get(p.sf) if isinstance(p.sf, str) else p.sf
    v = ss.apply_sf(raw, exp)
    enc = ss.encode_point(p, v, sf=exp)
    assert enc == ss.encode_raw(p.type, raw), (p.name, v, exp)
    return v, enc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mid=st.sampled_from(REQUIRED + MORE), data=st.data())
def test_round_trip_every_point_of_an_instance(mid, data):
    """Any in-range value of any point, curves included, encodes and decodes back to itself."""
    counts = {c: data.draw(st.integers(0, 3)) for c in model_layout(mid).count_points}
    length = None
    if length_counted(mid):
        length = ref_model(mid, {}, data.draw(st.integers(1, 2))).len - 2
    lay = instance_layout(mid, counts, length)
    sfs = {n: data.draw(st.integers(-3, 3)) for n, p in lay.points.items() if p.type == "sunssf"}
    regs = [0] * lay.fixed_len
    expect = {}
    for n, p in lay.points.items():
        if n in counts:
            v, enc = counts[n], ss.encode_raw(p.type, counts[n])
        else:
            v, enc = _draw_value(p, sfs, data)
        regs[p.offset:p.offset + p.size] = enc
        expect[n] = v
    dec = ss.decode_model(mid, regs[2:], length=length)
    assert set(dec) == set(lay.points) - {"ID", "L"}
    for n, v in expect.items():
        if n in ("ID", "L"):
            continue
        got = dec[n]
        if isinstance(v, float):
            assert math.isclose(got, v, rel_tol=1e-6, abs_tol=1e-9), (n, got, v)
        else:
            assert got == v, (n, got, v)


# ------------------------------------------------------------------ fuzz

@settings(max_examples=400, deadline=None)
@given(mid=st.sampled_from(REQUIRED + MORE), regs=st.lists(st.integers(0, 0xFFFF), max_size=400),
       first=st.integers(0, 6), length=st.one_of(st.none(), st.integers(0, 0xFFFF)))
def test_fuzz_decode_any_block(mid, regs, first, length):
    """Any registers, any counts in them, any L: a dict of values, BadValue or NOT_IMPLEMENTED, never an exception,
    and never a point outside the block."""
    out = ss.decode_model(mid, regs, first_offset=first, length=length)
    lay = ss.block_layout(mid, regs, first, length)
    for name, v in out.items():
        p = lay.points[name]
        assert first <= p.offset and p.offset + p.size <= first + len(regs)
        assert v is ss.NOT_IMPLEMENTED or isinstance(v, (int, float, str, ss.BadValue))
        if isinstance(v, float):
            assert not math.isnan(v)


@settings(max_examples=200, deadline=None)
@given(mid=st.sampled_from((705, 711, 712, 126)), data=st.data())
def test_fuzz_sf_values_and_bad_input(mid, data):
    regs = data.draw(st.one_of(st.lists(st.integers(0, 0xFFFF), max_size=120),
                               st.lists(st.one_of(st.integers(), st.none(), st.floats()), max_size=20),
                               st.text(max_size=4), st.none()))
    try:
        sfs = ss.sf_values(mid, regs)
    except ss.DecodeError:
        return
    assert all(v is None or -32767 <= v <= 32767 for v in sfs.values())
