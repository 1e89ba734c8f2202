"""The C37.118.2 data kernel: the compiled DataDecoder against its pure-Python twin (the oracle) to the bit, on any
configuration and any frame content (NaN and infinities in float frames included); both against the readable
reference decode_data; where feed() stops and why; the ring; invalid fractions of a second."""
from __future__ import annotations

import math
import os
import random
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.cext import pmu, pmu_twin
from gridedge.drivers import c37118 as c

from .pmu_frames import configs, data_frames, one_station

try:
    from gridedge.cext import _pmu as compiled
    _missing = ""
except Exception as exc:  # noqa: BLE001 - the reason goes into the skip message
    compiled, _missing = None, f"gridedge.cext._pmu not importable ({exc}); build with setup.py build_ext"

needs_compiled = pytest.mark.skipif(compiled is None, reason=_missing or "compiled")
IMPLS = [pytest.param(pmu_twin, id="twin"), pytest.param(compiled, id="cython", marks=needs_compiled)]
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(impl, cfg, capacity=64):
    return impl.DataDecoder(cfg.idcode, cfg.data_frame_size, cfg.time_base, *cfg.kernel_layout(), capacity=capacity)


def raw_frame(cfg: c.Config, body: bytes, soc: int, fracsec: int) -> bytes:
    return c.encode_frame(c.DATA, cfg.idcode, soc, fracsec, body)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """To the bit (signed zeros included), NaN where NaN (its payload is the platform's conversion's)."""
    if a.dtype.kind != "f":
        return a.tobytes() == b.tobytes()
    nan = np.isnan(a)
    return (nan == np.isnan(b)).all() and a[~nan].tobytes() == b[~nan].tobytes()


@needs_compiled
@FUZZ
@given(configs(), st.data())
def test_compiled_and_twin_agree_to_the_bit_on_any_frame(cfg, data):
    """Random bodies: any bit pattern of the int16, uint16 and float32 fields (NaN, inf, -0.0) in any format."""
    size = cfg.data_frame_size - c.MIN_FRAME
    frames = [raw_frame(cfg, data.draw(st.binary(min_size=size, max_size=size)), data.draw(st.integers(0, 2**32 - 1)),
                        data.draw(st.integers(0, 2**32 - 1))) for _ in range(data.draw(st.integers(1, 6)))]
    buf = b"".join(frames)
    a, b = make(pmu_twin, cfg), make(compiled, cfg)
    assert a.feed(buf) == b.feed(buf) == (len(buf), len(frames), pmu.MORE)
    for name in ("ts", "tq", "stat", "values"):
        assert same(getattr(a, name), getattr(b, name)), name
    assert (a.row, a.total) == (b.row, b.total)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_kernel_matches_the_reference_decoder(impl, cfg):
    cfg = c.Config(cfg.idcode, cfg.time_base, cfg.stations, cfg.data_rate, cfg.kind)
    frames = data_frames(cfg, 3, seed=cfg.idcode)
    dec = make(impl, cfg)
    assert dec.feed(b"".join(frames))[1] == 3
    for r, f in enumerate(frames):
        ts, ref = c.decode_data(c.parse_frame(f), cfg)
        assert dec.ts[r] == ts
        row, col = dec.values[r], 0
        for k, (s, d) in enumerate(zip(cfg.stations, ref)):
            assert dec.stat[r, k] == d.stat
            n = len(s.phasors)
            for j, p in enumerate(d.phasors):
                assert row[col + j] == pytest.approx(abs(p), rel=1e-9, abs=1e-9)
                if abs(p) > 1e-9:
                    assert math.remainder(row[col + n + j] - math.atan2(p.imag, p.real), math.tau) == \
                        pytest.approx(0, abs=1e-9)
                assert -math.pi <= row[col + n + j] <= math.pi
            col += 2 * n
            assert row[col:col + 2].tolist() == pytest.approx([d.freq, d.rocof], rel=1e-12)
            col += 2
            assert row[col:col + len(d.analogs)].tolist() == pytest.approx(list(d.analogs), rel=1e-12)
            col += len(d.analogs)
            assert row[col:col + s.words].tolist() == list(d.digitals)
            col += s.words


@pytest.mark.parametrize("impl", IMPLS)
def test_where_feed_stops(impl):
    cfg = one_station()
    f = data_frames(cfg, 3)
    other = data_frames(one_station(idcode=9), 1)[0]
    dec = make(impl, cfg)
    assert dec.feed(f[0] + f[1][:5]) == (len(f[0]), 1, pmu.MORE)
    assert dec.feed(f[0] + c.encode_config(cfg)) == (len(f[0]), 1, pmu.OTHER)       # not a data frame
    assert dec.feed(other + f[0]) == (0, 0, pmu.OTHER)                                # another stream
    assert dec.feed(data_frames(one_station(nph=2), 1)[0])[2] == pmu.OTHER                 # another size
    bad = bytearray(f[2])
    bad[-1] ^= 1
    assert dec.feed(f[0] + bytes(bad)) == (len(f[0]), 1, pmu.BAD)                     # CRC
    assert dec.feed(b"\x55" + f[0]) == (0, 0, pmu.BAD)                                # not a SYNC byte
    assert dec.feed(b"\xaa\x71\x00\x20") == (0, 0, pmu.BAD)                           # type 7
    assert dec.feed(b"\xaa\x01\x00\x05") == (0, 0, pmu.BAD)                           # shorter than a frame
    assert dec.feed(f[0] * 3, 0, 2) == (2 * len(f[0]), 2, pmu.FULL)
    assert dec.feed(b"") == (0, 0, pmu.MORE)
    assert dec.feed(bytearray(f[0]), len(f[0])) == (len(f[0]), 0, pmu.MORE)
    with pytest.raises(ValueError):
        dec.feed(f[0], -1)


@pytest.mark.parametrize("impl", IMPLS)
def test_ring_wraps_and_bad_fractions_are_marked(impl):
    cfg = one_station()
    dec = make(impl, cfg, capacity=4)
    frames = data_frames(cfg, 6)
    buf = b"".join(frames)
    pos, n, why = dec.feed(buf)                     # at most a ring's worth per call (the caller reads them first)
    assert (n, why) == (4, pmu.FULL)
    assert dec.feed(buf, pos)[1:] == (2, pmu.MORE)
    assert (dec.row, dec.total) == (2, 6)
    want = [c.decode_data(c.parse_frame(f), cfg)[0] for f in frames]
    assert dec.ts.tolist() == [want[4], want[5], want[2], want[3]]
    late = c.encode_data(cfg, 5, (0x0B << 24) | 1_000_000, [c.StationData(0, (1j,) * 4)])   # FRACSEC = TIME_BASE
    dec.feed(late)
    assert dec.ts[2] == -1 and dec.tq[2] == 0x0B


@pytest.mark.parametrize("impl", IMPLS)
def test_layouts_that_do_not_add_up_are_refused(impl):
    cfg = one_station()
    lay, a, b, x, y = cfg.kernel_layout()
    with pytest.raises(ValueError):
        impl.DataDecoder(7, cfg.data_frame_size + 2, cfg.time_base, lay, a, b, x, y, capacity=8)
    with pytest.raises(ValueError):
        impl.DataDecoder(7, cfg.data_frame_size, 0, lay, a, b, x, y, capacity=8)
    with pytest.raises(ValueError):
        impl.DataDecoder(7, cfg.data_frame_size, cfg.time_base, lay, a[:-1], b, x, y, capacity=8)


def test_crc_of_the_kernel_and_of_the_codec_agree():
    rng = random.Random(4)
    for n in (0, 1, 17, 300):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert c.crc_ccitt(data) == (compiled.crc_ccitt(data) if compiled else c.crc_ccitt(data))


def test_the_implementation_switch(tmp_path):
    env = dict(os.environ, GRIDEDGE_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", "import gridedge.cext.pmu as p; print(p.IMPLEMENTATION, p.describe())"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("python pmu kernel: pure-python twin (forced")
    if compiled is not None:
        assert pmu.IMPLEMENTATION == "cython"


def test_fnom_and_float_frequency_in_the_kernel():
    cfg = one_station(fmt=c.FMT_FREQ_FLOAT, fnom=60.0)
    frame = c.encode_data(cfg, 1, 0, [c.StationData(0, (1 + 0j,) * 4, 59.97, 0.5)])
    for impl in (pmu_twin, compiled) if compiled else (pmu_twin,):
        dec = make(impl, cfg)
        dec.feed(frame)
        assert dec.values[0, 8] == pytest.approx(59.97, abs=1e-5)
        assert dec.values[0, 9] == struct.unpack(">f", struct.pack(">f", 0.5))[0]
