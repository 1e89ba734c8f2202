"""Configurations and frames for the PMU tests: hypothesis strategies and a few fixed streams."""
from __future__ import annotations

import cmath
import random

from hypothesis import strategies as st

from gridedge.drivers import c37118 as c

FORMATS = list(range(16))


def make_station(k: int, nph: int, nan: int, words: int, fmt: int, fnom: float = 50.0, kind: int = c.CFG2,
                 scale: float = 0.01, offset: float = 0.0) -> c.Station:
    cur = tuple(i % 4 == 3 for i in range(nph))
    return c.Station(f"ST{k}", 100 + k, fmt, tuple(f"P{i}" for i in range(nph)), cur,
                     tuple(scale * (0.1 if x else 1.0) for x in cur),
                     tuple((offset,) * nph) if kind == c.CFG3 else (0.0,) * nph,
                     tuple(f"A{i}" for i in range(nan)), (1,) * nan,
                     tuple(2.0 for _ in range(nan)), tuple((0.5 if kind == c.CFG3 else 0.0) for _ in range(nan)),
                     tuple(f"D{w}_{b}" for w in range(words) for b in range(16)), ((0, 0xFFFF),) * words, fnom, 1)


def make_config(stations, idcode: int = 7, fps: int = 50, kind: int = c.CFG2, time_base: int = 1_000_000):
    return c.Config(idcode, time_base, tuple(stations), fps, kind)


def one_station(nph: int = 4, fmt: int = 0, idcode: int = 7, fps: int = 50, **kw) -> c.Config:
    return make_config([make_station(0, nph, 0, 0, fmt, **kw)], idcode, fps)


def station_data(s: c.Station, rng: random.Random, stat: int = 0) -> c.StationData:
    ph = tuple(cmath.rect(rng.uniform(0, 300), rng.uniform(-3.1, 3.1)) for _ in s.phasors)
    return c.StationData(stat, ph, 50 + rng.uniform(-1, 1), rng.uniform(-2, 2),
                         tuple(rng.uniform(-100, 100) for _ in s.analogs), tuple(rng.randrange(65536)
                                                                                 for _ in range(s.words)))


def data_frames(cfg: c.Config, n: int, seed: int = 1, soc: int = 1_790_000_000, stat: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    period = cfg.time_base // cfg.data_rate
    out = []
    for i in range(n):
        frac = (i % cfg.data_rate) * period
        out.append(c.encode_data(cfg, soc + i // cfg.data_rate, frac,
                                 [station_data(s, rng, stat) for s in cfg.stations]))
    return out


@st.composite
def configs(draw, max_stations: int = 3):
    kind = draw(st.sampled_from([c.CFG2, c.CFG3]))
    n = draw(st.integers(1, max_stations))
    sts = [make_station(k, draw(st.integers(0, 5)), draw(st.integers(0, 3)), draw(st.integers(0, 2)),
                        draw(st.sampled_from(FORMATS)), draw(st.sampled_from([50.0, 60.0])), kind,
                        draw(st.sampled_from([1e-5, 0.01, 0.5, 1.0])), draw(st.sampled_from([0.0, 0.3, -2.9])))
           for k in range(n)]
    return make_config(sts, draw(st.integers(1, 65534)), draw(st.sampled_from([10, 25, 50, 60])), kind,
                       draw(st.sampled_from([1_000_000, 16_777_215, 1000])))
