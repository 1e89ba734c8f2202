"""Events at full rate: every new batch of rows of a PMU stream is checked at once (not at the report interval), so
an event leaves the gateway within a frame of the one that shows it.

Conditions, per station: ROCOF above a limit, frequency outside a band, a voltage angle jump between frames (after
the rotation its frequency offset explains: 2 pi (f - f_nom) dt), a voltage sag or swell (|V| against v_nom), the
PMU losing its time sync (STAT sync error or unlocked time), the PMU's own trigger bit. Frames the PMU marks "do
not use" are not checked. A condition is one event however long it lasts: it fires on its first frame and may fire
again only after it has been clear for `holdoff` (PMU time). The common case, nothing wrong, is a few vectorised
comparisons per batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .channels import Channels

TAU = 2.0 * math.pi
KINDS = ("rocof", "under_frequency", "over_frequency", "angle_jump", "sag", "swell", "sync_loss", "pmu_trigger")


@dataclass(frozen=True)
class EventSettings:
    rocof_hz_per_s: float | None = None
    f_min_hz: float | None = None
    f_max_hz: float | None = None
    angle_jump_deg: float | None = None
    sag_pu: float | None = None
    swell_pu: float | None = None
    v_nom_v: float | None = None
    sync_loss: bool = True
    trigger: bool = True
    before_s: float = 2.0
    after_s: float = 2.0
    holdoff_s: float = 5.0

    @classmethod
    def from_config(cls, events: dict | None, v_nom_v: float | None) -> EventSettings:
        return cls(v_nom_v=v_nom_v, **(events or {}))


@dataclass(frozen=True)
class Found:
    """One event: which condition, on which channel, at which frame (its PMU time), the value and the limit."""

    kind: str
    station: int
    column: int           # the column that shows it (-1: the station's STAT word)
    ts_ns: int
    value: float | int
    limit: float | None
    row: int              # index of the frame in the batch


class Detector:
    def __init__(self, ch: Channels, s: EventSettings):
        self.ch, self.s = ch, s
        self.holdoff_ns = int(s.holdoff_s * 1e9)
        cols, lo, hi, kinds = [], [], [], []

        def band(columns, low, high, k_lo, k_hi):
            for col in columns:
                cols.append(int(col))
                lo.append(-math.inf if low is None else low)
                hi.append(math.inf if high is None else high)
                kinds.append((k_lo, k_hi))

        if s.f_min_hz is not None or s.f_max_hz is not None:
            band(ch.freq, s.f_min_hz, s.f_max_hz, "under_frequency", "over_frequency")
        if s.rocof_hz_per_s is not None:
            band(ch.rocof, -s.rocof_hz_per_s, s.rocof_hz_per_s, "rocof", "rocof")
        if s.v_nom_v is not None and (s.sag_pu is not None or s.swell_pu is not None):
            band(ch.vmag, None if s.sag_pu is None else s.sag_pu * s.v_nom_v,
                 None if s.swell_pu is None else s.swell_pu * s.v_nom_v, "sag", "swell")
        self.cols = np.array(cols, dtype=np.intp)
        self.lo, self.hi = np.array(lo, dtype=float), np.array(hi, dtype=float)
        self.band_kinds = kinds
        self.jump = None if s.angle_jump_deg is None or not len(ch.vang) else math.radians(s.angle_jump_deg)
        self.vang = ch.vang
        self.vang_f = ch.freq[ch.station_of[ch.vang]] if len(ch.vang) else ch.vang
        self.vang_fnom = ch.fnom[ch.station_of[ch.vang]] if len(ch.vang) else np.zeros(0)
        self.stat_mask = (0x2030 if s.sync_loss else 0) | (0x0800 if s.trigger else 0)
        self.active: dict[tuple, int] = {}      # condition -> PMU time it was last seen
        self._prev: tuple | None = None        # (ts, angles, freqs) of the last frame checked

    def check(self, ts: np.ndarray, vals: np.ndarray, stat: np.ndarray) -> list[Found]:
        hits: list[tuple[tuple, int, int, float, float | None]] = []   # (condition, row, column, value, limit)
        ok_rows = ts >= 0
        use = ((stat >> 14) < 2) & ok_rows[:, None]                    # rows x stations
        if len(self.cols):
            x = vals[:, self.cols]
            low, high = x < self.lo, x > self.hi
            if low.any() or high.any():
                ok = use[:, self.ch.station_of[self.cols]]
                for r, j in zip(*np.nonzero((low | high) & ok)):
                    k = self.band_kinds[j][0 if low[r, j] else 1]
                    lim = self.lo[j] if low[r, j] else self.hi[j]
                    col = int(self.cols[j])
                    hits.append(((k, int(self.ch.station_of[col])), int(r), col, float(x[r, j]), float(lim)))
        if self.jump is not None:
            hits += self._jumps(ts, vals, use)
        if self.stat_mask and (stat & self.stat_mask).any():
            for r, st in zip(*np.nonzero(stat & self.stat_mask)):
                w = int(stat[r, st])
                if not ok_rows[r]:
                    continue
                if w & 0x2030 and self.s.sync_loss:
                    hits.append((("sync_loss", int(st)), int(r), -1, w, None))
                if w & 0x0800 and self.s.trigger and (w >> 14) < 2:
                    hits.append((("pmu_trigger", int(st)), int(r), -1, w & 0xF, None))
        if not hits and not self.active:
            return []
        return self._edges(hits, ts)

    def _jumps(self, ts, vals, use) -> list:
        a, f = vals[:, self.vang], vals[:, self.vang_f]
        ok = use[:, self.ch.station_of[self.vang]]
        prev, self._prev = self._prev, (ts[-1], a[-1], f[-1], ok[-1])
        if prev is not None and len(ts) == 1:       # a frame per read (TCP at 50 fps): no stacking, a few vector ops
            pt, pa, pf, pok = prev
            dt = (int(ts[0]) - int(pt)) / 1e9
            if not 0 < dt <= 1.0:
                return []
            d = np.remainder(a[0] - pa - TAU * ((f[0] + pf) / 2 - self.vang_fnom) * dt + math.pi, TAU) - math.pi
            big = (np.abs(d) > self.jump) & ok[0] & pok
            return [(("angle_jump", int(self.ch.station_of[self.vang[j]])), 0, int(self.vang[j]), float(d[j]),
                     float(self.jump)) for j in np.flatnonzero(big)]
        t = ts
        shift = 1 if prev is not None else 0
        if prev is not None:
            pt, pa, pf, pok = prev
            a, f, t, ok = np.vstack([pa, a]), np.vstack([pf, f]), np.concatenate([[pt], ts]), np.vstack([pok, ok])
        if len(t) < 2:
            return []
        dt = np.diff(t)[:, None] / 1e9
        expected = TAU * ((f[1:] + f[:-1]) / 2 - self.vang_fnom) * dt
        d = np.remainder(np.diff(a, axis=0) - expected + math.pi, TAU) - math.pi
        big = (np.abs(d) > self.jump) & ok[1:] & ok[:-1] & (dt > 0) & (dt <= 1.0)
        if not big.any():
            return []
        out = []
        for r, j in zip(*np.nonzero(big)):
            row = int(r) + 1 - shift
            col = int(self.vang[j])
            out.append((("angle_jump", int(self.ch.station_of[col])), row, col, float(d[r, j]), float(self.jump)))
        return out

    def _edges(self, hits, ts) -> list[Found]:
        """Fire conditions not already active; retire those clear for the hold-off."""
        out = []
        seen: dict[tuple, int] = {}
        for cond, row, col, value, lim in hits:
            t = int(ts[row])
            if cond not in self.active and cond not in seen:
                st = col if col < 0 else int(self.ch.station_of[col])
                out.append(Found(cond[0], cond[1] if col < 0 else st, col, t, value, lim, row))
            seen[cond] = max(seen.get(cond, t), t)
        self.active.update(seen)
        now = int(ts[ts >= 0].max()) if (ts >= 0).any() else None
        if now is not None:
            for cond in [k for k, last in self.active.items() if k not in seen and now - last > self.holdoff_ns]:
                del self.active[cond]
        return out
