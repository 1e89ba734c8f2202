"""A PMU (or a PDC's stream) as an agent device: the C37.118.2 client (drivers/pmu.py) with the compiled data kernel,
and at the edge what a cellular uplink can carry: decimated values as telemetry, events at once on their own stream
with the full-rate window around them (from the stream's ring, sent when the window after has passed).

The agent gives the device two sinks: run(sink) for telemetry blocks, `on_event(kind, body)` for the event stream
(kind "event" or "event_window"; the agent stores them in the outbox, so an outage does not lose them).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import numpy as np

from gridedge.contract import iso_utc
from gridedge.core.model import Detail, Reading, SampleBlock
from gridedge.core.text import escape
from gridedge.drivers.pmu import LinkSpec, Listener, PmuClient, Stream, time_quality

from .channels import Channels
from .decimate import Decimator
from .events import Detector, EventSettings, Found

log = logging.getLogger("gridedge.pmu")

SCHEMA_EVENT = "gridedge.event/1"
SCHEMA_EVENT_WINDOW = "gridedge.event_window/1"
MAX_FPS = 120          # the ring is sized for this rate (C37.118.1 rates go to 60 fps on 60 Hz systems, 50 on 50 Hz)


def make_decoder(cfg, capacity: int):
    from gridedge.cext.pmu import DataDecoder

    return DataDecoder(cfg.idcode, cfg.data_frame_size, cfg.time_base, *cfg.kernel_layout(), capacity=capacity)


def _ring(a: np.ndarray, i0: int, i1: int) -> np.ndarray:
    cap = len(a)
    r0, n = i0 % cap, i1 - i0
    return a[r0:r0 + n] if r0 + n <= cap else np.concatenate([a[r0:], a[:r0 + n - cap]])


def _json_values(x: np.ndarray) -> list:
    return [v if v == v and abs(v) != float("inf") else None for v in x.tolist()]


class _Window:
    """An event whose full-rate window is still being recorded: rows from `first` (a ring index) to end_ns."""

    def __init__(self, event_id: str, found: Found, station: str, first: int, end_ns: int):
        self.event_id, self.found, self.station, self.first, self.end_ns = event_id, found, station, first, end_ns


class _Proc:
    """Detection, decimation and event windows for one stream configuration."""

    def __init__(self, dev: PmuDevice, stream: Stream):
        self.dev, self.stream = dev, stream
        cfg = stream.config
        self.ch = Channels(cfg)
        self.dec = Decimator(dev.device_id, self.ch, dev.report_ms, dev.report)
        self.det = Detector(self.ch, dev.settings)
        self.folded = stream.decoder.total
        self.fold_rows = max(1, int(cfg.fps * 0.5)) if cfg.fps else 1
        self.iv = None
        self.windows: list[_Window] = []

    def arrays(self, i0: int, i1: int):
        d = self.stream.decoder
        i0 = max(i0, i1 - d.capacity)
        return _ring(d.ts, i0, i1), _ring(d.values, i0, i1), _ring(d.stat, i0, i1), _ring(d.tq, i0, i1)

    def rows(self, n: int) -> None:
        d = self.stream.decoder
        total = d.total
        ts, vals, stat, tq = self.arrays(total - n, total)
        for f in self.det.check(ts, vals, stat):
            self.dev.event(self, f, total - n + f.row, tq[f.row], stat[f.row, f.station])
        if (stat & 0x0400).any():                          # the PMU's configuration will change: ask for it
            self.dev.client.ask_config(self.stream.config.idcode)
        newest = int(ts[-1])
        iv = newest // self.dec.shortest_ns if newest >= 0 else self.iv
        if total - self.folded >= self.fold_rows or iv != self.iv:
            self.fold(total)
            self.iv = iv
        if self.windows:
            self.finish(newest)

    def fold(self, total: int) -> None:
        blocks = self.dec.fold(*self.arrays(self.folded, total))
        self.folded = total
        if blocks:
            self.dev.publish(blocks)

    def finish(self, newest_ns: int, force: bool = False) -> None:
        keep = []
        for w in self.windows:
            if force or newest_ns >= w.end_ns:
                self.dev.window(self, w, truncated=newest_ns < w.end_ns)
            else:
                keep.append(w)
        self.windows = keep

    def newest(self) -> int:
        d = self.stream.decoder
        return int(d.ts[(d.row - 1) % d.capacity]) if d.total else 0

    def close(self) -> None:
        d = self.stream.decoder
        self.finish(self.newest(), force=True)
        if d.total > self.folded:
            self.fold(d.total)
        blocks = self.dec.flush()
        if blocks:
            self.dev.publish(blocks)


class PmuDevice(Listener):
    writable = False

    def __init__(self, device_id: str, spec: LinkSpec, *, report_ms: int = 1000, report: dict | None = None,
                 settings: EventSettings | None = None, role: str = "meter", decoder=make_decoder):
        self.device_id, self.capability = device_id, role
        self.report_ms, self.report = report_ms, dict(report or {})
        self.settings = settings or EventSettings()
        s = self.settings
        capacity = max(2048, int((s.before_s + s.after_s + 4) * MAX_FPS) * 2)
        self.client = PmuClient(device_id, spec, decoder, self, capacity)
        self.on_event: Callable[[str, dict], None] | None = None
        self._sink: Callable[[list[Reading]], None] | None = None
        self._procs: dict[int, _Proc] = {}
        self.latest: dict[object, SampleBlock] = {}
        self.counts = {"events": 0, "windows": 0}

    # -- the agent's device interface
    async def connect(self) -> None:
        return None

    async def poll(self) -> list[Reading]:
        return list(self.latest.values())

    async def run(self, sink: Callable[[list[Reading]], None]) -> None:
        self._sink = sink
        await self.client.run()

    async def close(self) -> None:
        for p in self._procs.values():
            p.close()
        self._procs.clear()
        await self.client.close()

    # -- what the client tells
    def config(self, stream: Stream) -> None:
        cfg = stream.config
        old = self._procs.pop(cfg.idcode, None)
        if old is not None:
            old.close()
        self._procs[cfg.idcode] = _Proc(self, stream)
        from gridedge.cext.pmu import describe

        log.info("%s: stream %d configured (CFG-%d, %d station(s), %s fps, %d columns; %s)", self.device_id,
                 cfg.idcode, {2: 1, 3: 2, 5: 3}[cfg.kind], len(cfg.stations), cfg.fps, cfg.columns, describe())

    def rows(self, stream: Stream, n: int) -> None:
        proc = self._procs.get(stream.config.idcode)
        if proc is not None and proc.stream is stream:
            proc.rows(n)

    def header(self, idcode: int, text: str) -> None:
        log.info("%s: stream %d header: %s", self.device_id, idcode, escape(text, 200))

    def link(self, up: bool, why: str = "") -> None:
        if up:
            log.info("%s: data on", self.device_id)
            return
        log.warning("%s: %s", self.device_id, escape(why, 300))
        for p in self._procs.values():          # the windows waiting for frames that will not come
            p.finish(p.newest(), force=True)
        now = time.time_ns()
        bad = [SampleBlock.invalid(g.layout, now, Detail.COMM_FAILURE) for p in self._procs.values()
               for g in p.dec.groups]
        if bad:
            self.publish(bad)

    # -- out
    def publish(self, blocks: list[SampleBlock]) -> None:
        for b in blocks:
            self.latest[b.layout] = b
        if self._sink is not None:
            self._sink(blocks)

    def event(self, proc: _Proc, f: Found, index: int, tq: int, word: int) -> None:
        s = self.settings
        event_id = uuid.uuid4().hex
        station = proc.ch.stations[f.station]
        col = proc.ch.columns[f.column].name if f.column >= 0 else None
        body = {"schema": SCHEMA_EVENT, "ts": iso_utc(time.time_ns()), "event_id": event_id, "device": self.device_id,
                "station": station, "kind": f.kind, "point": f"{self.device_id}/{col}" if col else None,
                "value": f.value, "limit": f.limit, "t": f.ts_ns, "tq": time_quality(int(word), int(tq)).to_json(),
                "stat": int(word), "window": {"before_s": s.before_s, "after_s": s.after_s}}
        self.counts["events"] += 1
        log.warning("%s: event %s at %s (%s = %s, limit %s)", self.device_id, f.kind, station, col, f.value, f.limit)
        if self.on_event is not None:
            self.on_event("event", body)
        d = proc.stream.decoder
        first = index
        start = f.ts_ns - int(s.before_s * 1e9)
        while first > max(0, d.total - d.capacity) and d.ts[(first - 1) % d.capacity] >= start:
            first -= 1
        proc.windows.append(_Window(event_id, f, station, first, f.ts_ns + int(s.after_s * 1e9)))

    def window(self, proc: _Proc, w: _Window, truncated: bool) -> None:
        d = proc.stream.decoder
        first = max(w.first, d.total - d.capacity)
        ts, vals, stat, tq = proc.arrays(first, d.total)
        keep = (ts >= 0) & (ts <= w.end_ns)
        cols = proc.ch.station_cols[w.found.station]
        ts, vals = ts[keep], vals[keep][:, cols.start:cols.stop]
        t0 = int(ts[0]) if len(ts) else w.found.ts_ns
        body = {"schema": SCHEMA_EVENT_WINDOW, "ts": iso_utc(time.time_ns()), "event_id": w.event_id,
                "device": self.device_id, "station": w.station, "kind": w.found.kind, "t": w.found.ts_ns,
                "fps": proc.stream.config.fps, "truncated": truncated or first > w.first,
                "n": [c.name for c in proc.ch.columns[cols.start:cols.stop]],
                "u": [c.unit for c in proc.ch.columns[cols.start:cols.stop]],
                "t0": t0, "dt": (ts - t0).tolist(), "v": [_json_values(vals[:, j]) for j in range(vals.shape[1])],
                "stat": stat[keep][:, w.found.station].tolist(), "tq": tq[keep].tolist()}
        self.counts["windows"] += 1
        if self.on_event is not None:
            self.on_event("event_window", body)
