"""IEEE C37.118.2 frames (drivers/c37118.py) and the stream decoder (drivers/pmu.py): known answers, round trips of
every configuration frame and data format, the STAT word and time quality, and a byte stream as TCP and UDP deliver
it: several frames in one read, a frame split across reads, several PMUs interleaved, garbage, a configuration
change mid-stream."""
from __future__ import annotations

import cmath
import math
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.cext.pmu import DataDecoder
from gridedge.core.model import Detail, Validity
from gridedge.drivers import c37118 as c
from gridedge.drivers.pmu import Listener, StreamDecoder, stat_quality, time_quality

from .pmu_frames import configs, data_frames, make_config, make_station, one_station

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_crc_is_crc_ccitt_false():
    assert c.crc_ccitt(b"123456789") == 0x29B1           # CRC-16/CCITT-FALSE check value
    assert c.crc_ccitt(b"") == 0xFFFF


def test_a_command_frame_to_the_byte():
    """DATA ON to IDCODE 7 at SOC 0x5F5E1000: the layout of C37.118.2 table 3 and table 15, CHK over all before it."""
    frame = c.encode_command(7, c.CMD_DATA_ON, 0x5F5E1000, 0x00012345)
    assert frame[:14] == bytes.fromhex("aa42" "0012" "0007" "5f5e1000" "00012345")
    assert frame[14:16] == b"\x00\x02"
    assert struct.unpack(">H", frame[-2:])[0] == c.crc_ccitt(frame[:-2])
    f = c.parse_frame(frame)
    assert (f.type, f.version, f.idcode, f.soc) == (c.CMD, 2, 7, 0x5F5E1000)
    assert c.decode_command(f) == (c.CMD_DATA_ON, b"")


@FUZZ
@given(configs(), st.sampled_from([c.CFG1, c.CFG2, c.CFG3]))
def test_configuration_frames_round_trip(cfg, kind):
    got = c.decode_config(c.parse_frame(c.encode_config(cfg, kind)))
    assert got.kind == kind and got.idcode == cfg.idcode and got.time_base == cfg.time_base
    assert got.data_frame_size == cfg.data_frame_size and got.data_rate == cfg.data_rate
    for a, b in zip(got.stations, cfg.stations):
        assert (a.name, a.idcode, a.format, a.phasors, a.currents, a.analogs, a.digitals, a.fnom) == \
               (b.name, b.idcode, b.format, b.phasors, b.currents, b.analogs, b.digitals, b.fnom)
        if kind == c.CFG3:
            assert a.ph_scale == pytest.approx(b.ph_scale, rel=1e-6) and a.an_offset == pytest.approx(b.an_offset)
        else:  # PHUNIT: 24-bit unsigned in 1e-5 V/A per bit
            assert a.ph_scale == pytest.approx([round(x / 1e-5) * 1e-5 for x in b.ph_scale])


@FUZZ
@given(configs(), st.integers(0, 2**31), st.integers(0, 10**6 - 1))
def test_data_frames_round_trip_within_the_format(cfg, soc, frac):
    cfg = c.Config(cfg.idcode, 1_000_000, cfg.stations, cfg.data_rate, cfg.kind)
    rng = random.Random(soc)
    sent = []
    for s in cfg.stations:
        ph = tuple(cmath.rect(rng.uniform(10, 200) * (s.ph_scale[i] if not s.format & c.FMT_PH_FLOAT else 1.0),
                              rng.uniform(-3.1, 3.1)) for i in range(len(s.phasors)))
        sent.append(c.StationData(rng.randrange(65536), ph, 50 + rng.uniform(-0.5, 0.5), rng.uniform(-1, 1),
                                  tuple(rng.uniform(-50, 50) for _ in s.analogs), tuple(rng.randrange(65536)
                                                                                        for _ in range(s.words))))
    frame = c.encode_data(cfg, soc, frac, sent)
    assert len(frame) == cfg.data_frame_size
    ts, got = c.decode_data(c.parse_frame(frame), cfg)
    assert ts == soc * 10**9 + frac * 1000
    for s, a, b in zip(cfg.stations, got, sent):
        assert a.stat == b.stat and a.digitals == b.digitals
        for i, (x, y) in enumerate(zip(a.phasors, b.phasors)):
            step = s.ph_scale[i] if not s.format & c.FMT_PH_FLOAT else abs(y) * 1e-6
            assert abs(x - y) <= 2 * step + abs(y) * 2e-4 + 1e-9, (s.format, x, y)
        assert a.freq == pytest.approx(b.freq, abs=1e-3) and a.rocof == pytest.approx(b.rocof, abs=0.01)
        for x, y in zip(a.analogs, b.analogs):
            assert x == pytest.approx(y, abs=2.0 if not s.format & c.FMT_AN_FLOAT else 1e-4 * abs(y) + 1e-4)


def test_frequency_in_hz_as_float_and_as_millihertz_deviation():
    """2011: integer FREQ is the deviation from nominal in mHz, floating-point FREQ the frequency in Hz (pypmu
    reads the float as a deviation)."""
    for fmt in (0, c.FMT_FREQ_FLOAT):
        cfg = make_config([make_station(0, 1, 0, 0, fmt, fnom=60.0)])
        frame = c.encode_data(cfg, 1, 0, [c.StationData(0, (100 + 0j,), 59.95, -0.25)])
        _, (d,) = c.decode_data(c.parse_frame(frame), cfg)
        assert d.freq == pytest.approx(59.95, abs=1e-6) and d.rocof == pytest.approx(-0.25, abs=1e-6)


def test_time_with_time_base_and_bad_fractions():
    assert c.time_ns(1_700_000_000, (0x0F << 24) | 8_388_607, 16_777_215) == 1_700_000_000 * 10**9 + 499_999_970
    assert c.time_ns(1_700_000_000, 999_999, 1_000_000) == 1_700_000_000 * 10**9 + 999_999_000
    with pytest.raises(c.FrameError):
        c.time_ns(1, 1_000_000, 1_000_000)


@pytest.mark.parametrize("word, expected", [
    (0x0000, None), (0x8000, (Validity.INVALID, Detail.TEST)), (0xC000, (Validity.INVALID, Detail.DEVICE_EXCEPTION)),
    (0x4000, (Validity.QUESTIONABLE, Detail.DEVICE_EXCEPTION)), (0x0200, (Validity.QUESTIONABLE, Detail.SUBSTITUTED)),
    (0x2000, None), (0x0800, None), (0x1000, None), (0x0400, None)])
def test_stat_data_error_bits(word, expected):
    """Bits 15-14 are the data error (00 good, 01 PMU error no information, 10 test/absent data, 11 PMU error); pypmu
    reads them in the wrong order. Sync, sorting, trigger and configuration change are not value quality."""
    assert stat_quality(word) == expected
    s = c.Stat(word)
    assert s.data_error == word >> 14


def test_time_quality_from_stat_and_fracsec():
    good = time_quality(0x0000, 0x00)
    assert good.source == "device" and good.synchronised and not good.failure and good.accuracy is None
    unsync = time_quality(0x2000 | (1 << 4) | (6 << 6), 0x0B)          # sync error, unlocked 10-100 s, 10 ms, 10 s
    assert not unsync.synchronised and unsync.accuracy == 0             # the worse of 10 ms and 10 s
    assert time_quality(0x0010, 0).synchronised is False                # unlocked time alone
    assert time_quality(0, 0x0F).failure
    assert time_quality(1 << 6, 0).accuracy == 23                       # < 100 ns
    assert time_quality(0, 0x07).accuracy == 9                          # 1 ms
    assert time_quality(0, 0x10).leap == "insert_pending"
    assert time_quality(0, 0x50).leap == "delete_pending"
    assert time_quality(0, 0x20).leap == "inserted" and time_quality(0, 0x60).leap == "deleted"


def test_bad_configurations_are_refused_cleanly():
    cfg = one_station()
    body = c.parse_frame(c.encode_config(cfg)).body
    for broken in (body[:-3], body + b"\0\0", body[:4] + b"\0\0" + body[6:]):   # short, long, NUM_PMU 0
        with pytest.raises(c.FrameError):
            c.decode_config(c.Frame(c.CFG2, 2, 7, 0, 0, broken))


# ---------------------------------------------------------------- the stream decoder

class Seen(Listener):
    def __init__(self):
        self.configs, self.got, self.need, self.headers = [], [], [], []

    def config(self, stream):
        self.configs.append(stream.config)

    def rows(self, stream, n):
        d = stream.decoder
        for i in range(d.total - n, d.total):
            self.got.append((stream.config.idcode, int(d.ts[i % d.capacity]), d.values[i % d.capacity].copy()))

    def need_config(self, idcode):
        self.need.append(idcode)

    def header(self, idcode, text):
        self.headers.append(text)


def decoder(capacity=64):
    seen = Seen()
    return StreamDecoder(lambda cfg, cap: DataDecoder(cfg.idcode, cfg.data_frame_size, cfg.time_base,
                                                      *cfg.kernel_layout(), capacity=cap), seen,
                         capacity=capacity), seen


def expected_rows(cfg, frames):
    out = []
    for f in frames:
        ts, data = c.decode_data(c.parse_frame(f), cfg)
        out.append((cfg.idcode, ts, [abs(p) for p in data[0].phasors]))
    return out


def assert_rows(seen_rows, expected):
    assert [(i, t) for i, t, _ in seen_rows] == [(i, t) for i, t, _ in expected]
    for (_, _, got), (_, _, mags) in zip(seen_rows, expected):
        assert got[:len(mags)] == pytest.approx(mags, rel=1e-12)


@pytest.mark.parametrize("chunking", ["all_at_once", "byte_by_byte", "random"])
def test_several_frames_per_read_and_frames_split_across_reads(chunking):
    cfg = one_station()
    frames = data_frames(cfg, 40)
    stream = c.encode_config(cfg) + c.encode_header(7, "hello") + b"".join(frames)
    dec, seen = decoder(capacity=16)        # fewer rows than frames: the ring wraps, each row seen before it does
    if chunking == "all_at_once":
        dec.feed(stream)
    elif chunking == "byte_by_byte":
        for i in range(len(stream)):
            dec.feed(stream[i:i + 1])
    else:
        rng, i = random.Random(3), 0
        while i < len(stream):
            k = rng.randint(1, 90)
            dec.feed(stream[i:i + k])
            i += k
    assert seen.configs == [cfg] and seen.headers == ["hello"]
    assert_rows(seen.got, expected_rows(cfg, frames))
    assert dec.counts.frames == 40 and dec.counts.bad_bytes == 0


def test_interleaved_pmus_and_garbage_between_frames():
    """Two PMUs' frames alternating on one connection (a PDC relaying, or two PMUs sending to one UDP port), with
    noise, a frame with a broken CRC and a truncated one between them: every good frame is decoded once."""
    a, b = one_station(idcode=7), one_station(nph=2, fmt=c.FMT_PH_FLOAT | c.FMT_POLAR, idcode=9)
    fa, fb = data_frames(a, 10, seed=1), data_frames(b, 10, seed=2)
    broken = bytearray(fa[0])
    broken[20] ^= 0x40
    stream = c.encode_config(a) + c.encode_config(b) + b"\x00\xaa\x31garbage"
    for x, y in zip(fa, fb):
        stream += x + bytes(broken) + y + y[:9]
    dec, seen = decoder()
    dec.feed(stream)
    want = expected_rows(a, fa[:1]) + [r for pair in zip(expected_rows(b, fb), expected_rows(a, fa[1:])) for r in pair]
    want += expected_rows(b, fb[-1:])
    assert sorted((i, t) for i, t, _ in seen.got) == sorted((i, t) for i, t, _ in want)
    assert dec.counts.frames == 20 and dec.counts.bad_bytes > 0


def test_data_before_its_configuration_asks_for_it():
    cfg = one_station()
    frames = data_frames(cfg, 3)
    dec, seen = decoder()
    dec.feed(b"".join(frames))
    assert seen.need == [7, 7, 7] and not seen.got and dec.counts.unknown == 3
    dec.feed(c.encode_config(cfg) + frames[0])
    assert len(seen.got) == 1


def test_a_configuration_change_mid_stream_is_followed():
    """The PMU announces a change (STAT bit 10), its frames change size (two phasors more): the decoder asks for the
    configuration, takes the new CFG-2 and decodes what follows, without losing a frame after it."""
    old, new = one_station(nph=2), one_station(nph=4)
    f_old, f_new = data_frames(old, 5, stat=0x0400), data_frames(new, 5, seed=5)
    dec, seen = decoder()
    dec.feed(c.encode_config(old) + b"".join(f_old) + f_new[0])
    assert len(seen.got) == 5 and seen.need == [7] and dec.counts.mismatched == 1
    dec.feed(c.encode_config(new) + b"".join(f_new[1:]))
    assert seen.configs == [old, new]
    assert_rows(seen.got[5:], expected_rows(new, f_new[1:]))
    assert dec.streams[7].generation == 1


def test_a_datagram_keeps_nothing_over():
    cfg = one_station()
    f = data_frames(cfg, 2)
    dec, seen = decoder()
    dec.feed(c.encode_config(cfg), datagram=True)
    dec.feed(f[0] + f[1][:10], datagram=True)     # a datagram that ends in half a frame: it cannot continue
    dec.feed(f[1][10:], datagram=True)
    assert len(seen.got) == 1 and dec.counts.bad_bytes == len(f[1])


def test_hostile_names_do_not_reach_point_names():
    from gridedge.pmu.channels import Channels

    st = make_station(0, 2, 1, 1, 0)
    st = c.Station("bad/name\n\x1b[31m", 1, 0, ("V A", "V A"), (False, False), (1.0, 1.0), (0.0, 0.0), ("Hz",), (1,),
                   (1.0,), (0.0,), st.digitals, st.dig_masks)
    ch = Channels(make_config([st, st]))
    names = [col.name for col in ch.columns]
    assert len(set(names)) == len(names)
    assert all(all(ch.isalnum() or ch in "_.-" for ch in n) for n in names), names
    assert "bad_name_31m.V_A.mag" in names and "bad_name_31m.V_A_1.mag" in names and "bad_name_31m.Hz_" in names
    assert math.isfinite(len(names))
