"""Energy per ISP from a meter: from its cumulative energy registers (preferred) or from integrated power.

Sign: net **injection**, as the W point (docs/points.md): energy = ΔTotWhExp - ΔTotWhImp = ∫W dt, in Wh.
A consuming site has negative values.

Registers. Between two readings the register's increase is spread over the time between them at constant power,
so an ISP boundary falls between two readings and each side gets its share. A long gap inside one ISP loses
nothing (the register counted through it); a gap across a boundary keeps the total but its split is estimated
(flag ``gap``). A register that goes down is a rollover when ``rollover_wh`` is set and the drop is more than
half of it (flag ``register_rollover``, energy kept), otherwise a reset or a replaced meter: the span is lost
(flag ``register_reset``). A jump above ``max_power_w`` is treated like a reset (flag ``implausible``).
Power. Consecutive good samples no more than ``max_gap_s`` apart are integrated as straight lines (trapezoid),
split exactly at boundaries; longer gaps are not integrated (flag ``gap``). An ISP closed by the gap allowance
while a point was silent since before its end gets the flag too (the next sample, which shows the gap, comes late).

Each closed ISP gets a quality: ``good`` (covered >= 99.9 % and nothing estimated), ``estimated`` (a gap, a reset,
or partly covered: the energy is scaled by 1 / completeness) or ``missing`` (completeness below
``min_completeness``; no value). Registers are used when their completeness suffices, else power
(flag ``from_power``). Invalid or non-numeric samples are ignored: they make gaps, never numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..core.model import Sample
from ..core.isp import IspGrid

NS_PER_H = 3_600 * 1_000_000_000
GOOD_COMPLETENESS = 0.999
QUALITIES = ("good", "estimated", "missing")
FLAGS = ("gap", "register_reset", "register_rollover", "implausible", "from_power")
_ESTIMATING_FLAGS = frozenset({"gap", "register_reset", "implausible"})


@dataclass(frozen=True, slots=True)
class IntervalEnergy:
    """The metered energy of one resource in one ISP (net injection, Wh; None when missing)."""

    resource: str
    start_ns: int
    isp_s: int
    wh: float | None
    quality: str
    completeness: float
    source: str  # "register", "power", "profile" (read back from the meter's load profile) or "none"
    flags: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"wh": self.wh, "quality": self.quality, "completeness": round(self.completeness, 4),
                "source": self.source, "flags": list(self.flags)}


@dataclass(slots=True)
class _Acc:
    wh: float = 0.0
    covered_ns: int = 0
    flags: set = field(default_factory=set)


class _Track:
    """One point feeding one ISP accumulator: a cumulative register (import or export) or a power series."""

    def __init__(self, name: str, kind: str, sign: float) -> None:
        self.name = name  # "import", "export" or "power"
        self.kind = kind  # "register" or "power"
        self.sign = sign
        self.last_ts: int | None = None
        self.last_v: float | None = None
        self.last_w: float | None = None  # mean injection power of the last span (registers) or last sample (power)
        self.failed = False  # the device answered the last read with an invalid value: last_w is not "now"


class MeterSeries:
    """Streams samples of one resource's meter points into per-ISP energies. Sans-IO: feed(), then close(now)."""

    def __init__(self, resource: str, grid: IspGrid, *, energy_import: str | None = None,
                 energy_export: str | None = None, power: str | None = None, max_gap_s: float = 30.0,
                 rollover_wh: float | None = None, max_power_w: float | None = None,
                 min_completeness: float = 0.9) -> None:
        if not (energy_import or energy_export or power):
            raise ValueError(f"resource {resource!r}: needs an energy register or a power point")
        if not max_gap_s > 0:
            raise ValueError("max_gap_s must be > 0")
        if not 0 < min_completeness <= 1:
            raise ValueError("min_completeness must be in (0, 1]")
        self.resource = resource
        self.grid = grid
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.rollover_wh = rollover_wh
        self.max_power_w = max_power_w
        self.min_completeness = min_completeness
        self._tracks: dict[str, _Track] = {}
        for point, name, kind, sign in ((energy_import, "import", "register", -1.0),
                                        (energy_export, "export", "register", 1.0), (power, "power", "power", 1.0)):
            if point:
                if point in self._tracks:
                    raise ValueError(f"resource {resource!r}: point {point!r} used twice")
                self._tracks[point] = _Track(name, kind, sign)
        self._open: dict[int, dict[str, _Acc]] = {}
        self.closed_until: int | None = None  # every ISP that ends at or before this has been closed
        self._resumed_ns: int | None = None
        self.stats = {"samples": 0, "invalid": 0, "out_of_order": 0, "late_wh": 0.0}

    @property
    def points(self) -> tuple[str, ...]:
        return tuple(self._tracks)

    @property
    def has_registers(self) -> bool:
        return any(t.kind == "register" for t in self._tracks.values())

    # ------------------------------------------------------------------ input

    def feed(self, sample: Sample) -> None:
        track = self._tracks.get(sample.point)
        if track is None:
            return
        v = sample.value
        ts = sample.ts_ns
        if not sample.good or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.stats["invalid"] += 1
            if track.last_ts is None or ts > track.last_ts:
                track.failed = True
            return
        if track.last_ts is not None and ts <= track.last_ts:
            self.stats["out_of_order"] += 1
            return
        self.stats["samples"] += 1
        track.failed = False
        if self.closed_until is None:
            self.closed_until = self.grid.start(ts)
        v = float(v)
        t0, v0 = track.last_ts, track.last_v
        track.last_ts, track.last_v = ts, v
        if track.kind == "power":
            track.last_w = v
            if t0 is not None:
                self._power_span(track, t0, v0, ts, v)
        elif t0 is not None:
            self._register_span(track, t0, v0, ts, v)

    def _register_span(self, track: _Track, t0: int, v0: float, t1: int, v1: float) -> None:
        delta = v1 - v0
        flag = None
        if delta < 0:
            if self.rollover_wh and -delta > self.rollover_wh / 2:
                delta += self.rollover_wh
                flag = "register_rollover"
            else:
                self._mark(t1, track.name, "register_reset")
                return
        if self.max_power_w is not None and delta / ((t1 - t0) / NS_PER_H) > self.max_power_w:
            self._mark(t1, track.name, "implausible")
            return
        track.last_w = track.sign * delta / ((t1 - t0) / NS_PER_H)
        crosses = self.grid.start(t0) != self.grid.start(t1 - 1)
        gap = "gap" if crosses and t1 - t0 > self.max_gap_ns else None
        span = t1 - t0
        for a in self.grid.starts(t0, t1):
            p, q = max(t0, a), min(t1, a + self.grid.ns)
            self._put(a, track.name, track.sign * delta * (q - p) / span, q - p, flag, gap)

    def _power_span(self, track: _Track, t0: int, w0: float, t1: int, w1: float) -> None:
        if t1 - t0 > self.max_gap_ns:
            for a in self.grid.starts(t0, t1):
                self._mark(max(a, t0), track.name, "gap")
            return
        span = t1 - t0
        for a in self.grid.starts(t0, t1):
            p, q = max(t0, a), min(t1, a + self.grid.ns)
            wp = w0 + (w1 - w0) * (p - t0) / span
            wq = w0 + (w1 - w0) * (q - t0) / span
            self._put(a, track.name, (wp + wq) / 2 * (q - p) / NS_PER_H, q - p)

    def _acc(self, isp: int, name: str) -> _Acc | None:
        if self.closed_until is not None and isp < self.closed_until:
            return None
        return self._open.setdefault(isp, {}).setdefault(name, _Acc())

    def _put(self, isp: int, name: str, wh: float, covered_ns: int, *flags: str | None) -> None:
        acc = self._acc(isp, name)
        if acc is None:  # belongs to an ISP already closed and reported
            self.stats["late_wh"] += abs(wh)
            return
        acc.wh += wh
        acc.covered_ns += covered_ns
        acc.flags.update(f for f in flags if f)

    def _mark(self, ts: int, name: str, flag: str) -> None:
        acc = self._acc(self.grid.start(ts), name)
        if acc is not None:
            acc.flags.add(flag)

    # ------------------------------------------------------------------ output

    def closable_until(self, now_ns: int) -> int | None:
        """End of the last ISP that can be closed now: every track has a sample at or after its end, or the
        gap allowance has passed (counted from a restore, so a restart does not close ISPs before data returns)."""
        if self.closed_until is None:
            return None
        end = self.grid.start(now_ns)
        last = min(t.last_ts if t.last_ts is not None else -1 for t in self._tracks.values())
        timeout_end = self.grid.start(now_ns - self.max_gap_ns)
        if self._resumed_ns is not None and now_ns - self._resumed_ns < self.max_gap_ns:
            timeout_end = self.closed_until
        by_data = self.grid.start(last) if last >= 0 else self.closed_until
        return max(self.closed_until, min(end, max(by_data, timeout_end)))

    def close(self, now_ns: int) -> list[IntervalEnergy]:
        """Close every ISP that is complete by now (see closable_until), in time order, including ISPs without
        any data (quality "missing")."""
        until = self.closable_until(now_ns)
        out: list[IntervalEnergy] = []
        if until is None:
            return out
        for a in range(self.closed_until, until, self.grid.ns):
            accs = self._open.pop(a, {})
            for t in self._tracks.values():  # closed by the gap allowance: this track fell silent before its end
                if t.last_ts is not None and t.last_ts < a + self.grid.ns:
                    accs.setdefault(t.name, _Acc()).flags.add("gap")
            out.append(self._finish(a, accs))
        self.closed_until = until
        return out

    def _finish(self, a: int, accs: dict[str, _Acc]) -> IntervalEnergy:
        ns = self.grid.ns
        names = {t.name: t.kind for t in self._tracks.values()}
        registers = [n for n, k in names.items() if k == "register"]
        candidates = []
        if registers:
            c = min(accs[n].covered_ns if n in accs else 0 for n in registers) / ns
            wh = sum(accs[n].wh for n in registers if n in accs)
            flags = set().union(*(accs[n].flags for n in registers if n in accs))
            candidates.append(("register", min(c, 1.0), wh, flags))
        if "power" in names:
            acc = accs.get("power", _Acc())
            flags = set(acc.flags) | ({"from_power"} if registers else set())
            candidates.append(("power", min(acc.covered_ns / ns, 1.0), acc.wh, flags))
        chosen = next((cand for cand in candidates if cand[1] >= self.min_completeness), None)
        if chosen is None:
            source, c, _, flags = max(candidates, key=lambda cand: cand[1])
            if c == 0:
                source = "none"
            flags.discard("from_power")
            return IntervalEnergy(self.resource, a, self.grid.seconds, None, "missing", c, source, _sorted(flags))
        source, c, wh, flags = chosen
        good = c >= GOOD_COMPLETENESS and not flags & _ESTIMATING_FLAGS
        return IntervalEnergy(self.resource, a, self.grid.seconds, wh / c if c < 1.0 else wh,
                              "good" if good else "estimated", c, source, _sorted(flags))

    def partial(self, now_ns: int) -> tuple[int, float | None, float]:
        """The ISP in progress: (start, energy so far in Wh or None, fraction of the elapsed part covered)."""
        a = self.grid.start(now_ns)
        accs = self._open.get(a, {})
        elapsed = max(1, now_ns - a)
        registers = [t.name for t in self._tracks.values() if t.kind == "register"]
        for names in (registers, ["power"] if any(t.kind == "power" for t in self._tracks.values()) else []):
            if not names:
                continue
            c = min(accs[n].covered_ns if n in accs else 0 for n in names) / elapsed
            if c >= self.min_completeness:
                return a, sum(accs[n].wh for n in names if n in accs), min(c, 1.0)
        return a, None, 0.0

    def latest_w(self, now_ns: int) -> float | None:
        """Injection power now: the power point's last sample, else the registers' last span; None when that is
        older than max_gap_s or the device has answered with an invalid value since (never a guess)."""
        def fresh(t: _Track) -> bool:
            return t.last_w is not None and not t.failed and now_ns - t.last_ts <= self.max_gap_ns

        for t in self._tracks.values():
            if t.kind == "power" and fresh(t):
                return t.last_w
        regs = [t for t in self._tracks.values() if t.kind == "register"]
        return sum(t.last_w for t in regs) if regs and all(fresh(t) for t in regs) else None

    # ------------------------------------------------------------------ catch-up

    def backfill(self, samples) -> list[IntervalEnergy]:
        """ISP energies from register readings out of the meter's own record (its load profile, read after an
        outage of the link or the gateway): every closed ISP that consecutive good readings of every register
        cover completely, computed from them alone (source "profile"). Open ISPs are left to the live stream.
        The live tracks are not touched: this only offers better values for ISPs already closed."""
        regs = {p: t for p, t in self._tracks.items() if t.kind == "register"}
        if not regs or self.closed_until is None:
            return []
        accs: dict[int, dict[str, _Acc]] = {}
        for point, track in regs.items():
            readings = sorted({(smp.ts_ns, float(smp.value)) for smp in samples if smp.point == point and smp.good
                               and isinstance(smp.value, (int, float)) and not isinstance(smp.value, bool)
                               and math.isfinite(smp.value)})
            for (t0, v0), (t1, v1) in zip(readings, readings[1:]):
                delta = v1 - v0
                if t1 <= t0 or delta < 0 or (self.max_power_w is not None
                                             and delta / ((t1 - t0) / NS_PER_H) > self.max_power_w):
                    continue
                for a in self.grid.starts(t0, t1):
                    if a + self.grid.ns > self.closed_until:
                        break
                    p, q = max(t0, a), min(t1, a + self.grid.ns)
                    acc = accs.setdefault(a, {}).setdefault(track.name, _Acc())
                    acc.wh += track.sign * delta * (q - p) / (t1 - t0)
                    acc.covered_ns += q - p
        out = []
        for a in sorted(accs):
            got = accs[a]
            if all(t.name in got and got[t.name].covered_ns >= GOOD_COMPLETENESS * self.grid.ns for t in regs.values()):
                out.append(IntervalEnergy(self.resource, a, self.grid.seconds, sum(x.wh for x in got.values()), "good",
                                          1.0, "profile"))
        return out

    # ------------------------------------------------------------------ restart

    def state(self) -> dict:
        """What a restart needs to continue without losing the ISP in progress (JSON-ready)."""
        return {"closed_until": self.closed_until,
                "tracks": {p: [t.last_ts, t.last_v] for p, t in self._tracks.items()},
                "open": {str(a): {n: [acc.wh, acc.covered_ns, sorted(acc.flags)] for n, acc in accs.items()}
                         for a, accs in self._open.items()}}

    def begin(self, now_ns: int) -> None:
        """Start counting ISPs at now_ns (the ISP in progress is partly covered); after restore() this keeps the
        restored position. Timeouts count from now_ns, so ISPs are not closed before data had a chance to arrive."""
        if self.closed_until is None:
            self.closed_until = self.grid.start(now_ns)
        self._resumed_ns = now_ns

    def restore(self, state: dict, now_ns: int) -> None:
        """Continue from state(); a saved value that does not fit this configuration is ignored."""
        try:
            closed = state.get("closed_until")
            if isinstance(closed, int) and closed % self.grid.ns == 0:
                self.closed_until = closed
            for point, (ts, v) in state.get("tracks", {}).items():
                t = self._tracks.get(point)
                if t is not None and isinstance(ts, int) and isinstance(v, (int, float)) and t.kind == "register":
                    t.last_ts, t.last_v = ts, float(v)
            names = {t.name for t in self._tracks.values()}
            for a, accs in state.get("open", {}).items():
                a = int(a)
                if self.closed_until is None or a < self.closed_until or a % self.grid.ns:
                    continue
                for n, (wh, cov, flags) in accs.items():
                    if n in names:
                        self._open.setdefault(a, {})[n] = _Acc(float(wh), int(cov), set(flags) & set(FLAGS))
        except (AttributeError, TypeError, ValueError):
            self._open.clear()
        self._resumed_ns = now_ns


def _sorted(flags: set) -> tuple[str, ...]:
    return tuple(f for f in FLAGS if f in flags)
