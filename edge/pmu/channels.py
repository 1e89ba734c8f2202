"""What the columns of a PMU stream's rows are (drivers/pmu.py fills them, in the kernel's order) and how they are
named as points: "<station>.<channel>.mag" (V or A) and ".ang" (rad) per phasor, "<station>.Hz", "<station>.HzRte"
(ROCOF, Hz/s), "<station>.<analog>" and "<station>.Dig<n>" (a raw 16-bit status word). Station and channel names
come from the PMU (hostile text): anything but letters, digits, _ and - becomes _, and a clash gets a suffix."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gridedge.drivers import c37118 as c

_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def clean(name: str, fallback: str) -> str:
    out = _BAD.sub("_", name.strip()).strip("_")[:32]
    return out or fallback


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k}")
    return out


@dataclass(frozen=True)
class Column:
    name: str           # the point name (without the device)
    channel: str        # "<station>.<channel>" (what [devices.report] may name), or "<station>.Hz" ...
    unit: str
    kind: str           # mag, ang, freq, rocof, analog, digital
    station: int
    current: bool = False


class Channels:
    """The columns of one stream's configuration, with the index arrays detection and decimation use."""

    def __init__(self, cfg: c.Config):
        self.config = cfg
        self.stations = _unique([clean(s.name, f"PMU{s.idcode}") for s in cfg.stations])
        cols: list[Column] = []
        self.station_cols: list[range] = []
        for k, (st, sn) in enumerate(zip(cfg.stations, self.stations)):
            first = len(cols)
            ph = _unique([clean(n, f"PH{i}") for i, n in enumerate(st.phasors)])
            an = _unique([clean(n, f"AN{i}") for i, n in enumerate(st.analogs)])
            an = [f"{a}_" if a in ("Hz", "HzRte") or re.fullmatch(r"Dig\d+", a) else a for a in an]
            for p, cur in zip(ph, st.currents):
                cols.append(Column(f"{sn}.{p}.mag", f"{sn}.{p}", "A" if cur else "V", "mag", k, cur))
            for p, cur in zip(ph, st.currents):
                cols.append(Column(f"{sn}.{p}.ang", f"{sn}.{p}", "rad", "ang", k, cur))
            cols.append(Column(f"{sn}.Hz", f"{sn}.Hz", "Hz", "freq", k))
            cols.append(Column(f"{sn}.HzRte", f"{sn}.HzRte", "Hz/s", "rocof", k))
            cols += [Column(f"{sn}.{a}", f"{sn}.{a}", "", "analog", k) for a in an]
            cols += [Column(f"{sn}.Dig{w}", f"{sn}.Dig{w}", "", "digital", k) for w in range(st.words)]
            self.station_cols.append(range(first, len(cols)))
        self.columns = tuple(cols)
        kinds = np.array([col.kind for col in cols])
        self.station_of = np.array([col.station for col in cols], dtype=np.intp)
        self.ang = np.flatnonzero(kinds == "ang")
        self.freq = np.flatnonzero(kinds == "freq")          # one per station, in station order
        self.rocof = np.flatnonzero(kinds == "rocof")
        volt = np.array([not col.current for col in cols])
        self.vmag = np.flatnonzero((kinds == "mag") & volt)
        self.vang = np.flatnonzero((kinds == "ang") & volt)
        self.digital = np.flatnonzero(kinds == "digital")
        self.fnom = np.array([s.fnom for s in cfg.stations])

    def interval_of(self, col: Column, default_ms: int, report: dict[str, int]) -> int:
        """Its report interval, ms: [devices.report] by channel ("VA", "Hz") or station and channel."""
        short = col.channel.split(".", 1)[1]
        return report.get(col.channel, report.get(short, default_ms))
