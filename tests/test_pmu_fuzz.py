"""100,000 hostile inputs through every C37.118.2 decoder: a seeded loop (random bytes, and valid frames with bit
flips, truncations, splices, changed length fields, most with the CRC made right again so the inner decoders are
reached), then hypothesis properties. Only FrameError may come out of a frame decoder, nothing out of the stream
decoder, and the stream decoder still decodes a good frame after all of it."""
from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.cext.pmu import DataDecoder
from gridedge.drivers import c37118 as c
from gridedge.drivers.pmu import Listener, StreamDecoder

from .pmu_frames import data_frames, make_config, make_station

N = 100_000


class Count(Listener):
    rows_seen = 0

    def rows(self, stream, n):
        self.rows_seen += n


def _decoder():
    listener = Count()
    dec = StreamDecoder(lambda cfg, cap: DataDecoder(cfg.idcode, cfg.data_frame_size, cfg.time_base,
                                                     *cfg.kernel_layout(), capacity=cap), listener, capacity=64)
    return dec, listener


def _seeds() -> tuple[list[bytes], dict[int, c.Config]]:
    cfgs = [make_config([make_station(0, 4, 0, 0, 0)], idcode=7),
            make_config([make_station(0, 2, 2, 1, 15), make_station(1, 3, 1, 0, 6)], idcode=8, kind=c.CFG3),
            make_config([make_station(0, 6, 0, 0, c.FMT_POLAR)], idcode=9, fps=60)]
    seeds = [c.encode_command(7, k) for k in (1, 2, 3, 4, 5, 6)] + [c.encode_header(7, "PMU header text")]
    for cfg in cfgs:
        seeds += [c.encode_config(cfg, k) for k in (c.CFG1, c.CFG2, c.CFG3)] + data_frames(cfg, 3)
    return seeds, {cfg.idcode: cfg for cfg in cfgs}


def _with_crc(b: bytearray) -> bytes:
    if len(b) >= 4:
        b[-2:] = struct.pack(">H", c.crc_ccitt(bytes(b[:-2])))
    return bytes(b)


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 80))
    b = bytearray(rng.choice(seeds))
    if kind == 1:                                   # bit flips, CRC made right: the body decoders see them
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return _with_crc(b) if rng.random() < 0.8 else bytes(b)
    if kind == 2:                                   # truncated, or a tail cut and the length left
        return bytes(b[:rng.randrange(len(b))])
    if kind == 3:                                   # splice of two frames
        other = rng.choice(seeds)
        return bytes(b[:rng.randrange(len(b))] + other[rng.randrange(len(other)):])
    if kind == 4:                                   # FRAMESIZE changed, body cut or padded to it, CRC right
        size = max(16, len(b) + rng.randint(-12, 12))
        b = b[:size] + bytes(max(0, size - len(b)))
        b[2:4] = struct.pack(">H", size)
        return _with_crc(b)
    if kind == 5:                                   # a count field in a configuration (NUM_PMU, PHNMR...) changed
        if len(b) > 24:
            i = rng.randrange(14, len(b) - 4)
            b[i:i + 2] = struct.pack(">H", rng.choice([0, 1, 2, 255, 0xFFFF, rng.randrange(65536)]))
        return _with_crc(b)
    b[1] = rng.randrange(256)                      # frame type / version byte
    return _with_crc(b)


def _decode_one(data: bytes, cfgs: dict[int, c.Config]) -> str:
    try:
        f = c.parse_frame(data)
    except c.FrameError:
        return "rejected"
    try:
        if f.type in (c.CFG1, c.CFG2, c.CFG3):
            c.decode_config(f)
        elif f.type == c.CMD:
            c.decode_command(f)
        elif f.type == c.DATA and f.idcode in cfgs:
            c.decode_data(f, cfgs[f.idcode])
        return "decoded"
    except c.FrameError:
        return "refused"


def test_hundred_thousand_hostile_inputs():
    seeds, cfgs = _seeds()
    rng = random.Random(15)
    stream, listener = _decoder()
    udp, _ = _decoder()
    outcome = {"rejected": 0, "decoded": 0, "refused": 0}
    for i in range(N):
        data = mutate(rng, seeds)
        outcome[_decode_one(data, cfgs)] += 1
        stream.feed(data)
        udp.feed(data, datagram=True)
        if i % 5000 == 0:                           # configurations keep arriving, so data frames are decoded too
            for cfg in cfgs.values():
                stream.feed(c.encode_config(cfg, cfg.kind))
    # the inner decoders were reached (CRC right) and refused or decoded; nothing else came out
    assert outcome["decoded"] > 10_000 and outcome["refused"] > 5_000 and outcome["rejected"] > 10_000, outcome
    assert listener.rows_seen > 1000
    # and the stream still works: a resync, then every good frame
    cfg = cfgs[7]
    before = listener.rows_seen
    stream.feed(b"\xaa" + c.encode_config(cfg) + b"".join(data_frames(cfg, 5)))
    assert listener.rows_seen - before == 5 or stream.counts.bad_bytes > 0


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_frame_decoders_only_raise_frame_error(data):
    seeds, cfgs = _seeds()
    _decode_one(data, cfgs)
    try:
        c.decode_config(c.Frame(c.CFG3, 2, 1, 0, 0, data))
    except c.FrameError:
        pass
    try:
        c.decode_config(c.Frame(c.CFG2, 2, 1, 0, 0, data))
    except c.FrameError:
        pass


@FUZZ
@given(st.lists(st.binary(max_size=120), max_size=8), st.booleans())
def test_stream_decoder_takes_any_bytes(chunks, datagram):
    stream, listener = _decoder()
    seeds, cfgs = _seeds()
    stream.feed(c.encode_config(cfgs[7]))
    for chunk in chunks:
        stream.feed(chunk, datagram=datagram)
    good = data_frames(cfgs[7], 2)
    stream.feed(b"".join(good) if datagram else b"\x00" + b"".join(good))
    stream.feed(b"".join(data_frames(cfgs[7], 2, seed=9)))
    assert listener.rows_seen >= 2      # what it held back was garbage: good frames after it are decoded
