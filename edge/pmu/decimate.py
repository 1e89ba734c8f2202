"""Decimation of a PMU stream to report intervals: per channel the mean, min, max and last value of each interval
(aligned to UTC multiples of it), as one SampleBlock per station and interval length, stamped with the interval's
start. Rows are folded in chunks (not per frame) straight from the stream's ring.

Frames whose STAT says "do not use" (data error 2, 3) or whose time is invalid are left out of the figures; the
values then say so: invalid when nothing was left, questionable when some frames were left out or questionable
(data error 1, data modified), angles questionable when the PMU's clock was not synchronised. The block's time
quality is the PMU's over the interval (the worst of its frames). Angles are averaged unwrapped from the
interval's first angle, so an interval across +-pi keeps its mean; min and max are on the same unwrapped scale.
"""
from __future__ import annotations

import numpy as np

from gridedge.core.model import BlockLayout, Detail, SampleBlock, Validity
from gridedge.drivers.pmu import time_quality

from .channels import Channels

TAU = 2.0 * np.pi


class _Group:
    """One station's channels that share a report interval."""

    def __init__(self, device: str, ch: Channels, station: int, cols: list[int], interval_ms: int):
        self.station, self.interval_ns = station, interval_ms * 1_000_000
        self.cols = np.array(cols, dtype=np.intp)
        kinds = [ch.columns[i].kind for i in cols]
        self.ang = np.array([k == "ang" for k in kinds])
        self.dig = np.array([k == "digital" for k in kinds])
        names, units = [], []
        for i, k in zip(cols, kinds):
            col = ch.columns[i]
            if k == "digital":
                names.append(col.name)
                units.append(col.unit)
            else:
                names += [col.name, col.name + ".min", col.name + ".max", col.name + ".last"]
                units += [col.unit] * 4
        self.layout = BlockLayout(device, names, units)
        self.cur: int | None = None
        self.late = 0
        self._reset()

    def _reset(self) -> None:
        n = len(self.cols)
        self.sum, self.count = np.zeros(n), np.zeros(n, np.int64)
        self.min, self.max = np.full(n, np.inf), np.full(n, -np.inf)
        self.last, self.ref = np.full(n, np.nan), np.full(n, np.nan)
        self.excluded = self.questionable = 0
        self.test = False
        self.stat_or = self.terr = self.code = self.leap = 0

    def fold(self, ts: np.ndarray, vals: np.ndarray, stat: np.ndarray, tq: np.ndarray) -> list[SampleBlock]:
        out = []
        st = stat[:, self.station]
        iv = np.where(ts >= 0, ts // self.interval_ns, -1)
        for v in np.unique(iv[iv >= 0]):
            if self.cur is None:
                self.cur = int(v)
            if v < self.cur:
                self.late += int((iv == v).sum())
                continue
            if v > self.cur:
                out.append(self.emit())
                self.cur = int(v)
            m = iv == v
            self._add(vals[m][:, self.cols], st[m], tq[m])
        return out

    def _add(self, x: np.ndarray, st: np.ndarray, tq: np.ndarray) -> None:
        err = st >> 14
        use = err < 2
        self.excluded += int((~use).sum())
        self.test |= bool((err == 2).any())
        self.questionable += int(((err == 1) | (st & 0x0200 != 0)).sum())
        self.stat_or |= int(np.bitwise_or.reduce(st))
        self.terr = max(self.terr, int(((st >> 6) & 7).max()))
        self.code = max(self.code, int((tq & 0xF).max()))
        self.leap |= int(np.bitwise_or.reduce(tq & 0x70))
        x = x[use]
        if not len(x):
            return
        x = x.copy()
        if self.ang.any():
            a = x[:, self.ang]
            ref = self.ref[self.ang]
            ref = np.where(np.isnan(ref), a[0], ref)
            self.ref[self.ang] = ref
            self.last[self.ang] = a[-1]
            x[:, self.ang] = np.remainder(a - ref + np.pi, TAU) - np.pi
        fin = np.isfinite(x)
        xs = np.where(fin, x, 0.0)
        self.sum += xs.sum(0)
        self.count += fin.sum(0)
        self.min = np.minimum(self.min, np.where(fin, x, np.inf).min(0))
        self.max = np.maximum(self.max, np.where(fin, x, -np.inf).max(0))
        last = np.where(fin[-1], x[-1], self.last)
        self.last = np.where(self.ang, self.last, last)

    def emit(self) -> SampleBlock:
        n = np.maximum(self.count, 1)
        lo, hi = self.min.copy(), self.max.copy()
        mean = np.clip(self.sum / n, lo, hi)       # the rounding of a sum must not put the mean outside [min, max]
        if self.ang.any():
            a = self.ang
            centre = self.ref[a] + mean[a]
            shift = (np.remainder(centre + np.pi, TAU) - np.pi) - centre
            mean[a], lo[a], hi[a] = centre + shift, self.ref[a] + lo[a] + shift, self.ref[a] + hi[a] + shift
        doubtful = bool(self.stat_or & 0x3030)
        values, quality = [], []
        bad = (Validity.INVALID, Detail.TEST if self.test else Detail.DEVICE_EXCEPTION)
        partial = None
        if self.excluded or self.questionable:
            partial = (Validity.QUESTIONABLE, Detail.TEST if self.test and not self.questionable
                       else Detail.DEVICE_EXCEPTION if self.excluded or not self.stat_or & 0x0200
                       else Detail.SUBSTITUTED)
        for j in range(len(self.cols)):
            k = 1 if self.dig[j] else 4
            if self.count[j] == 0:
                values += [None] * k
                quality += [bad] * k
                continue
            q = (Validity.QUESTIONABLE, Detail.CLOCK) if self.ang[j] and doubtful else partial
            values += [float(self.last[j])] if self.dig[j] else [float(mean[j]), float(lo[j]), float(hi[j]),
                                                                  float(self.last[j])]
            quality += [q] * k
        word = (self.stat_or & 0x3030) | (self.terr << 6)
        block = SampleBlock(self.layout, self.cur * self.interval_ns, values,
                            quality if any(quality) else None, time_quality(word, self.code | self.leap))
        self._reset()
        return block


class Decimator:
    """The report-interval groups of one stream configuration."""

    def __init__(self, device: str, ch: Channels, default_ms: int, report: dict[str, int] | None = None):
        by: dict[tuple[int, int], list[int]] = {}
        for i, col in enumerate(ch.columns):
            by.setdefault((col.station, ch.interval_of(col, default_ms, report or {})), []).append(i)
        self.groups = [_Group(device, ch, st, cols, ms) for (st, ms), cols in sorted(by.items())]
        self.shortest_ns = min(g.interval_ns for g in self.groups)

    def fold(self, ts, vals, stat, tq) -> list[SampleBlock]:
        out: list[SampleBlock] = []
        for g in self.groups:
            out += g.fold(ts, vals, stat, tq)
        return out

    def flush(self) -> list[SampleBlock]:
        """The intervals in progress, as they are (a configuration change or a stop)."""
        out = [g.emit() for g in self.groups if g.cur is not None and g.count.any()]
        for g in self.groups:
            g.cur = None
        return out
