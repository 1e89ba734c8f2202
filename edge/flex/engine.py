"""FlexEngine: the runtime face of gridedge.flex, driven by the agent without asyncio.

    engine = FlexEngine(config.flex, config.storage.dir)          # opens <storage>/flex.sqlite
    engine.feed(samples)                                          # every Sample the drivers produce
    engine.backfill(samples)                                      # a meter's load profile read after an outage
    engine.activation(ActivationWindow(...))                      # when an activation starts or its end changes
    engine.end_activation(activation_id, end_ns)                  # when it ends early (terminated, failed)
    nomination = engine.nomination(payload, now_ns)               # bytes from <prefix>nomination
    engine.start_step_test(test_id, resource, step_ns, target_w, duration_s)
    for rec in engine.tick(now_ns):                               # e.g. once a second
        outbox.append(rec.kind, prefix + rec.kind, rec.body, rec.data_class)
    engine.close()

tick() closes the ISPs that are complete into the history, and returns the records due: near-real-time
verification every `verification_interval_s` during an activation, a settlement record per activation and ISP
once the ISP's energy is closed and its baseline final, availability at each ISP start, prequalification at
start and after each step test, and the baseline accuracy once a UTC day. A failing stage is logged and
counted in `errors`; it never raises into the agent. Everything it needs across a restart is in the history
(ISP energies, the ISP in progress, open activations and what was settled, nominations, step-test results).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.text import escape
from ..core.utc import iso_utc
from ..core.model import Sample
from . import messages as msg
from .accuracy import placebo
from .availability import BatteryState, InverterState, LoadState, PreLimit, availability
from .baselines import METHODS, Baseline, BaselineError, BaselineInput, BaselineResult, make_baseline
from .history import History
from ..core.isp import DAY_NS, IspGrid, day_start, is_weekend
from .metering import QUALITIES, MeterSeries
from .nomination import Nomination, parse_nomination
from .prequal import StepRecorder
from .settings import FlexConfig, ResourceConfig
from .verification import Tolerance, settle
from .window import ActivationWindow

log = logging.getLogger("gridedge.flex")

STATE_SAVE_NS = 60 * 1_000_000_000
MAX_STEP_TESTS = 8
ERROR_LOG_NS = 600 * 1_000_000_000
_EXPECTED = dict(x=10, y=10, select="recent", adjustment="none", lookback_days=21, min_days=1)


@dataclass(frozen=True)
class FlexRecord:
    """One message to publish: topic <prefix><kind>, outbox stream <kind>, the outbox data class, the body."""

    kind: str
    data_class: str
    body: dict


@dataclass
class _Active:
    window: ActivationWindow
    settled: set
    baselines: dict = dataclasses.field(default_factory=dict)  # day -> {resource: (BaselineResult, row)}
    final: set = dataclasses.field(default_factory=set)         # days whose baselines are final
    last_nrt: int | None = None


class FlexEngine:
    def __init__(self, config: FlexConfig, storage_dir: Path | str | None = None, *, now_ns: int | None = None) -> None:
        now = time.time_ns() if now_ns is None else now_ns
        self.config = config
        self.grid = IspGrid(config.isp_min)
        self.tolerance = Tolerance(config.tolerance_pct, config.tolerance_w, config.overdelivery_passes)
        path = Path(storage_dir) / "flex.sqlite" if storage_dir is not None else None
        self.history = History(path, days=config.history_days)
        self.resources: dict[str, ResourceConfig] = {r.id: r for r in config.resources}
        self.methods: dict[str, Baseline] = {r.id: make_baseline(r.baseline_method, r.baseline_params)
                                             for r in config.resources}
        self.meters: dict[str, MeterSeries] = {}
        self._by_point: dict[str, list[MeterSeries]] = {}
        self.latest: dict[str, Sample] = {}
        self._watched: set[str] = set()
        self._prelimit: dict[str, PreLimit] = {}
        self._prelimit_by_point: dict[str, list[PreLimit]] = {}
        for r in config.resources:
            m = MeterSeries(r.id, self.grid, energy_import=r.energy_import, energy_export=r.energy_export,
                            power=r.power, max_gap_s=r.max_gap_s, rollover_wh=r.rollover_wh,
                            max_power_w=r.max_power_w, min_completeness=r.min_completeness)
            saved = self.history.get_meta(f"meter:{r.id}")
            if isinstance(saved, dict):
                m.restore(saved, now)
            m.begin(now)
            self.meters[r.id] = m
            for p in m.points:
                self._by_point.setdefault(p, []).append(m)
            self._watched.update(self._state_points(r))
            if r.kind == "inverter" and r.devices and r.power:
                dev = r.devices[0]
                pre = self._prelimit[r.id] = PreLimit(r.power, f"{dev}/WMaxLimPct", f"{dev}/WMaxLimPctEna")
                for p in pre.points:
                    self._prelimit_by_point.setdefault(p, []).append(pre)
        self.active: dict[str, _Active] = {}
        for doc in self.history.open_activations():
            try:
                w = ActivationWindow.from_json(doc)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("flex: stored activation not readable, skipped: %s", escape(exc))
                continue
            gone = [r for r in w.resources if r not in self.resources]
            if gone:  # the configuration changed under it: it cannot be settled any more
                log.error("flex: activation %s names resources no longer configured (%s); not settled further",
                          escape(w.activation_id), escape(", ".join(gone)))
                self.history.save_activation(w.activation_id, w.start_ns, w.end_ns, w.resources, doc, done=True)
                continue
            self.active[w.activation_id] = _Active(w, self.history.settled(w.activation_id))
        self._tests: dict[str, StepRecorder] = {}
        self._last_availability: int | None = None
        self._prequal_due = set(self.resources)
        self._accuracy_day = self.history.get_meta("accuracy_day")
        self._pruned_day: int | None = None
        self._saved_ns = now
        self.errors = 0
        self._logged: dict[str, int] = {}

    # ------------------------------------------------------------------ inputs

    def _state_points(self, r: ResourceConfig) -> set[str]:
        pts = {p for p in (r.power, r.soc) if p}
        if r.kind == "inverter" and r.devices:
            dev = r.devices[0]
            pts |= {f"{dev}/WMax", f"{dev}/WMaxLimPct", f"{dev}/WMaxLimPctEna", f"{dev}/WAval"}
        return pts

    @property
    def points(self) -> set[str]:
        """Every point id the engine reads: the agent may feed only these."""
        return set(self._by_point) | self._watched

    def feed(self, samples) -> None:
        for smp in samples:
            for m in self._by_point.get(smp.point, ()):
                m.feed(smp)
            if smp.point in self._watched:
                self.latest[smp.point] = smp
                for pre in self._prelimit_by_point.get(smp.point, ()):
                    pre.feed(smp.point, smp.ts_ns, _number(smp))
            if self._tests and (v := _number(smp)) is not None:
                for t in self._tests.values():
                    if t.point == smp.point:
                        t.feed(smp.ts_ns, v)

    def backfill(self, samples) -> int:
        """Register readings from a meter's own record of the past (its load profile, read after an outage of the
        link or the gateway): ISPs closed without a good value (missing, estimated) or not yet in the history get
        the exact energy between the meter's readings; ISPs of open activations already settled with the old value
        are settled again. Returns how many ISPs were completed."""
        samples = [smp for smp in samples if smp.point in self._by_point]
        done = 0
        for rid, m in self.meters.items():
            ivs = m.backfill(samples)
            if not ivs:
                continue
            have = {iv.start_ns: iv for iv in self.history.intervals(rid, ivs[0].start_ns, ivs[-1].start_ns + 1,
                                                                      self.grid)}
            better = [iv for iv in ivs if iv.start_ns not in have or have[iv.start_ns].quality != "good"]
            if not better:
                continue
            self.history.add(better)
            done += len(better)
            self._settle_again(rid, {iv.start_ns for iv in better})
            log.info("flex: %s: %d ISP(s) completed from the meter's load profile", rid, len(better))
        return done

    def _settle_again(self, rid: str, starts: set[int]) -> None:
        """Activations of `rid` with ISPs among `starts` already settled: settle those again (an activation already
        finished is opened again until they are)."""
        for doc in self.history.activations_between(min(starts), max(starts) + self.grid.ns):
            try:
                w = ActivationWindow.from_json(doc)
            except (KeyError, TypeError, ValueError):
                continue
            if rid not in w.resources or any(r not in self.resources for r in w.resources):
                continue
            act = self.active.get(w.activation_id)
            settled = act.settled if act is not None else self.history.settled(w.activation_id)
            again = settled & starts
            if not again:
                continue
            if act is None:
                act = self.active[w.activation_id] = _Active(w, settled)
                self.history.save_activation(w.activation_id, w.start_ns, w.end_ns, w.resources, w.to_json())
            act.settled -= again
            self.history.unmark_settled(w.activation_id, again)

    def activation(self, window: ActivationWindow) -> None:
        """An activation started, or its window changed (same activation_id). Raises ValueError if it names an
        unknown resource or its per-ISP request does not cover the window."""
        unknown = [r for r in window.resources if r not in self.resources]
        if unknown:
            raise ValueError(f"resources: unknown flex resource(s) {', '.join(unknown)}; "
                             f"known: {', '.join(self.resources) or 'none'}")
        window = window.aligned(self.grid)
        window.check(self.grid)
        act = self.active.get(window.activation_id)
        if act is None:
            self.active[window.activation_id] = _Active(window, self.history.settled(window.activation_id))
        else:
            act.window = window
            act.baselines.clear()
            act.final.clear()
        self.history.save_activation(window.activation_id, window.start_ns, window.end_ns, window.resources,
                                     window.to_json())

    def end_activation(self, activation_id: str, end_ns: int) -> bool:
        """The activation ended at end_ns (earlier than planned). False if flex does not know it."""
        act = self.active.get(activation_id)
        if act is None:
            return False
        w = act.window
        new_end = max(w.start_ns + 1, min(end_ns, w.end_ns))
        self.activation(dataclasses.replace(w, end_ns=new_end))
        return True

    def nomination(self, payload: bytes | dict, now_ns: int, *, issuer: str = "aggregator") -> Nomination:
        """Parse and store a nomination; raises NominationRejected (answer it like a rejected command)."""
        return self.apply_nomination(self.check_nomination(payload, now_ns, issuer=issuer), now_ns)

    def check_nomination(self, payload: bytes | dict, now_ns: int, *, issuer: str = "aggregator") -> Nomination:
        """Parse a nomination without storing it (the gate authorises it first); raises NominationRejected."""
        return parse_nomination(payload, now_ns, grid=self.grid, resources=self.resources,
                                gate_closure_s=self.config.gate_closure_s, issuer=issuer)

    def apply_nomination(self, nom: Nomination, now_ns: int) -> Nomination:
        """Store a checked nomination. A nomination_id seen before is not applied again (it would undo a newer
        one): `repeated` is then True."""
        if self.history.nomination_seen(nom.nomination_id):
            return dataclasses.replace(nom, repeated=True)
        self.history.add_nomination(nom.resource, self.grid, nom.start_ns, nom.values_w, nom.nomination_id, now_ns)
        return nom

    def start_step_test(self, test_id: str, resource: str, step_ns: int, target_w: float, duration_s: float, *,
                        point: str | None = None, before_w: float | None = None) -> None:
        """Record the response to a set-point step the agent makes at step_ns; analysed and published when
        duration_s has passed. point: default the resource's power point."""
        r = self.resources.get(resource)
        if r is None:
            raise ValueError(f"resource: unknown flex resource {resource!r}")
        point = point or r.power
        if not point:
            raise ValueError(f"resource {resource!r} has no power point to record; pass point=")
        if len(self._tests) >= MAX_STEP_TESTS and test_id not in self._tests:
            raise ValueError(f"too many step tests running (at most {MAX_STEP_TESTS})")
        self._tests[test_id] = StepRecorder(test_id, resource, point, step_ns, target_w, duration_s, before_w)

    def cancel_step_test(self, test_id: str) -> None:
        """The step was not made after all (the set-point was refused): nothing is analysed or published."""
        self._tests.pop(test_id, None)

    # ------------------------------------------------------------------ the clock

    def tick(self, now_ns: int) -> list[FlexRecord]:
        out: list[FlexRecord] = []
        for stage in (self._close_intervals, self._activations, self._availability, self._step_tests,
                      self._prequalification, self._accuracy):
            try:
                out += stage(now_ns)
            except Exception:  # one failing stage must not stop the others, nor the agent
                self.errors += 1
                name = stage.__name__.lstrip("_")
                last = self._logged.get(name)
                if last is None or now_ns - last >= ERROR_LOG_NS:  # a stage failing every tick logs once in a while
                    self._logged[name] = now_ns
                    log.exception("flex: %s failed (%d failures so far)", name, self.errors)
        return out

    def close(self) -> None:
        for rid, m in self.meters.items():
            self.history.set_meta(f"meter:{rid}", m.state())
        self.history.close()

    def _close_intervals(self, now: int) -> list[FlexRecord]:
        closed_any = False
        for rid, m in self.meters.items():
            closed = m.close(now)
            if closed:
                self.history.add(closed)
                closed_any = True
        if closed_any or now - self._saved_ns >= STATE_SAVE_NS:
            for rid, m in self.meters.items():
                self.history.set_meta(f"meter:{rid}", m.state())
            self._saved_ns = now
        if day_start(now) != self._pruned_day:
            self.history.prune(now)
            self._pruned_day = day_start(now)
        return []

    # ------------------------------------------------------------------ baselines

    def _input(self, resources: list[str], day: int, s0: int, e: int, lookback: int) -> BaselineInput:
        first = day - lookback * DAY_NS
        mat = self.history.matrix(resources, first, lookback + 1, self.grid)
        weekend = np.array([is_weekend(first + k * DAY_NS, self.config.holidays) for k in range(lookback)], dtype=bool)
        event = self.history.event_days(resources, first, lookback)
        nominated, ids = self.history.nominations(resources, day, self.grid)
        return BaselineInput(mat[:, :lookback], weekend, event, mat[:, lookback], day,
                             is_weekend(day, self.config.holidays), s0, e, self.grid, nominated, ids)

    def _event_slots(self, w: ActivationWindow, day: int) -> tuple[int, int]:
        a = max(w.start_ns, day)
        b = min(w.end_ns, day + DAY_NS)
        return self.grid.slot(a), self.grid.slot(b - 1) + 1

    def _baseline(self, act: _Active, day: int, *, final: bool) -> dict[str, tuple[BaselineResult, int]] | None:
        """Baselines of the activation's resources on one day. final=True: None until every input is closed."""
        if day in act.final:
            return act.baselines[day]
        s0, e = self._event_slots(act.window, day)
        groups: dict[tuple, list[str]] = {}
        for rid in act.window.resources:
            m = self.methods[rid]
            groups.setdefault((m.id, tuple(sorted(m.params.items()))), []).append(rid)
        out: dict[str, tuple[BaselineResult, int]] = {}
        ready = True
        for rids in groups.values():
            method = self.methods[rids[0]]
            need = day + method.needs_until(s0, e, self.grid) * self.grid.ns
            if any((self.meters[r].closed_until or 0) < need for r in rids):
                ready = False
                if final:
                    return None
            res = method.compute(self._input(rids, day, s0, e, method.lookback_days))
            out.update({r: (res, i) for i, r in enumerate(rids)})
        if ready:
            act.baselines[day] = out
            act.final.add(day)
        return out

    # ------------------------------------------------------------------ activations

    def _activations(self, now: int) -> list[FlexRecord]:
        out = []
        for aid, act in list(self.active.items()):
            w = act.window
            if w.start_ns <= now < w.end_ns and (act.last_nrt is None
                                                 or now - act.last_nrt >= self.config.verification_interval_s * 1e9):
                out.append(self._verification(act, now))
                act.last_nrt = now
            closed = min((self.meters[r].closed_until or 0) for r in w.resources)
            starts = self.grid.starts(w.start_ns, w.end_ns)
            for a in starts:
                if a in act.settled:
                    continue
                if a + self.grid.ns > closed:
                    break
                rec = self._settlement(act, a, now)
                if rec is None:
                    break
                out.append(rec)
                act.settled.add(a)
                self.history.mark_settled(aid, [a])
            if now >= w.end_ns and all(a in act.settled for a in starts):
                self.history.save_activation(aid, w.start_ns, w.end_ns, w.resources, w.to_json(), done=True)
                del self.active[aid]
        return out

    def _verification(self, act: _Active, now: int) -> FlexRecord:
        w = act.window
        a = self.grid.start(now)
        day, j = day_start(a), self.grid.slot(a)
        bl = self._baseline(act, day, final=False) or {}
        rows, meas_total, base_total = [], 0.0, 0.0
        for rid in w.resources:
            m = self.meters[rid]
            measured = m.latest_w(now)
            res_i = bl.get(rid)
            base_wh = float(res_i[0].wh[res_i[1], j]) if res_i is not None else float("nan")
            base_w = None if np.isnan(base_wh) else base_wh / self.grid.hours
            _, so_far, _ = m.partial(now)
            rows.append({"resource": rid, "measured_w": msg.num(measured), "baseline_w": msg.num(base_w),
                         "isp_measured_wh": msg.num(so_far), "baseline_method": self.methods[rid].id})
            meas_total = None if measured is None or meas_total is None else meas_total + measured
            base_total = None if base_w is None or base_total is None else base_total + base_w
        requested = w.requested_w_at(now, self.grid, base_total)
        activated = None if meas_total is None or base_total is None else w.sign * (meas_total - base_total)
        body = msg.body("verification", now, activation_id=w.activation_id, issuer=w.issuer, direction=w.direction,
                        sign_convention=msg.SIGN_CONVENTION, isp=msg.isp(a, self.grid.ns),
                        measured_w=msg.num(meas_total), baseline_w=msg.num(base_total),
                        activated_w=msg.num(activated), requested_w=msg.num(requested),
                        baseline_final=day in act.final, resources=rows)
        return FlexRecord("verification", msg.DATA_CLASS["verification"], body)

    def _settlement(self, act: _Active, a: int, now: int) -> FlexRecord | None:
        w = act.window
        day, j = day_start(a), self.grid.slot(a)
        bl = self._baseline(act, day, final=True)
        if bl is None:
            return None
        rows, meas_total, base_total = [], 0.0, 0.0
        worst, completeness = "good", 1.0
        for rid in w.resources:
            ivs = self.history.intervals(rid, a, a + self.grid.ns, self.grid)
            iv = ivs[0] if ivs else None
            res, i = bl[rid]
            b = float(res.wh[i, j])
            base = None if np.isnan(b) else b
            meas = iv.wh if iv is not None else None
            quality = iv.quality if iv is not None else "missing"
            worst = max(worst, quality, key=QUALITIES.index)
            completeness = min(completeness, iv.completeness if iv is not None else 0.0)
            rows.append({"resource": rid, "measured_wh": msg.num(meas), "baseline_wh": msg.num(base),
                         "quality": quality, "completeness": round(iv.completeness, 4) if iv else 0.0,
                         "source": iv.source if iv else "none", "flags": list(iv.flags) if iv else [],
                         "baseline": res.descriptor(i)})
            meas_total = None if meas is None or meas_total is None else meas_total + meas
            base_total = None if base is None or base_total is None else base_total + base
        requested = w.requested_wh(a, self.grid, base_total)
        v = settle(w.sign, requested, base_total, meas_total, self.tolerance, self.grid.hours)
        body = msg.body("settlement", now, activation_id=w.activation_id, issuer=w.issuer, direction=w.direction,
                        sign_convention=msg.SIGN_CONVENTION, isp=msg.isp(a, self.grid.ns),
                        active_s=self.grid.overlap_ns(a, w.start_ns, w.end_ns) / 1e9,
                        requested_wh=msg.num(v.requested_wh), baseline_wh=msg.num(v.baseline_wh),
                        measured_wh=msg.num(v.measured_wh), delivered_wh=msg.num(v.delivered_wh),
                        delivery_ratio=msg.num(v.delivery_ratio, 4), **{"pass": v.passed}, reason=v.reason,
                        tolerance=self.tolerance.to_json(), quality=worst, completeness=round(completeness, 4),
                        resources=rows)
        return FlexRecord("settlement", msg.DATA_CLASS["settlement"], body)

    # ------------------------------------------------------------------ availability

    def _value(self, point: str, now: int | None = None, max_age_ns: int = 0) -> float | None:
        """The point's latest good number; with now, only if it is at most max_age_ns old."""
        smp = self.latest.get(point)
        if smp is None or (now is not None and now - smp.ts_ns > max_age_ns):
            return None
        return _number(smp)

    def _expected_w(self, r: ResourceConfig, start: int, n: int) -> list[float] | None:
        """The uncurtailed output forecast: the same ISPs on recent similar days (wrapping past midnight)."""
        day = day_start(start)
        method = make_baseline("x_of_y", {**_EXPECTED, "lookback_days": min(21, self.config.history_days)})
        res = method.compute(self._input([r.id], day, 0, self.grid.per_day, method.lookback_days))
        if not res.ok[0]:
            return None
        j0 = self.grid.slot(start)
        prof = res.wh[0] / self.grid.hours
        return [float(prof[(j0 + k) % self.grid.per_day]) for k in range(n)]

    def _state(self, r: ResourceConfig, start: int, n: int, now: int):
        m = self.meters[r.id]
        w = m.latest_w(now)
        if w is None:
            return None, "no recent power measurement"
        if r.kind == "inverter":
            dev = r.devices[0] if r.devices else None
            w_max = r.w_max or (self._value(f"{dev}/WMax") if dev else None)
            if not w_max:
                return None, "no w_max configured and no WMax point"
            pct, ena = (self._value(f"{dev}/WMaxLimPct"), self._value(f"{dev}/WMaxLimPctEna")) if dev else (None, None)
            limit = pct / 100 * w_max if pct is not None and ena == 1 else None
            # what it could give now: the device's own figure, else (curtailed) its output before the limit
            available = self._value(f"{dev}/WAval", now, m.max_gap_ns) if dev else None
            if available is None and limit is not None and limit < w_max and r.id in self._prelimit:
                available = self._prelimit[r.id].level
            available = None if available is None else max(available, w)
            return InverterState(w, w_max, limit, available, self._expected_w(r, start, n)), None
        if r.kind == "battery":
            soc = self._value(r.soc)
            if soc is None:
                return None, f"no state of charge from {r.soc}"
            return BatteryState(w, soc, r.capacity_wh, r.max_charge_w, r.max_discharge_w, r.soc_min_pct,
                                r.soc_max_pct, r.efficiency), None
        if r.kind == "load":
            return LoadState(w, r.shed_w, r.add_w), None
        return None, None

    def _availability(self, now: int) -> list[FlexRecord]:
        start = self.grid.start(now)
        flexible = [r for r in self.config.resources if r.kind != "meter"]
        if start == self._last_availability or not flexible:
            return []
        self._last_availability = start
        n = self.config.horizon_isps
        up_total, down_total, rows = np.zeros(n), np.zeros(n), []
        for r in flexible:
            st, why = self._state(r, start, n, now)
            if st is None:
                rows.append({"resource": r.id, "kind": r.kind, "up_w": None, "down_w": None, "basis": None,
                             "reason": why})
                continue
            up, down, basis = availability({r.id: st}, n, self.grid.hours)[r.id]
            up_total += up
            down_total += down
            rows.append({"resource": r.id, "kind": r.kind, "up_w": [msg.num(x, 1) for x in up],
                         "down_w": [msg.num(x, 1) for x in down], "basis": basis})
        body = msg.body("availability", now, start=msg.isp(start, self.grid.ns)["start"], isp_s=self.grid.seconds,
                        n=n, up_w=[msg.num(x, 1) for x in up_total], down_w=[msg.num(x, 1) for x in down_total],
                        resources=rows)
        return [FlexRecord("availability", msg.DATA_CLASS["availability"], body)]

    # ------------------------------------------------------------------ prequalification

    def _step_tests(self, now: int) -> list[FlexRecord]:
        for tid, t in list(self._tests.items()):
            if not t.done(now):
                continue
            del self._tests[tid]
            try:
                result = {"test_id": tid, "point": t.point, "step": iso_utc(t.step_ns), "ok": True,
                          "result": t.analyse().to_json()}
            except ValueError as exc:
                result = {"test_id": tid, "point": t.point, "step": iso_utc(t.step_ns), "ok": False, "reason": str(exc)}
            self.history.set_meta(f"steptest:{t.resource}", result)
            self._prequal_due.add(t.resource)
        return []

    def _prequalification(self, now: int) -> list[FlexRecord]:
        out = []
        due, self._prequal_due = sorted(self._prequal_due), set()
        for rid in due:
            r = self.resources[rid]
            test = self.history.get_meta(f"steptest:{rid}")
            if r.prequalification is None and test is None:
                continue
            body = msg.body("prequalification", now, resource=rid, kind=r.kind,
                            declared=r.prequalification.to_json() if r.prequalification else None, test=test)
            out.append(FlexRecord("prequalification", msg.DATA_CLASS["prequalification"], body))
        return out

    # ------------------------------------------------------------------ accuracy

    def _accuracy(self, now: int) -> list[FlexRecord]:
        day = day_start(now)
        if self._accuracy_day == day or not self.resources:
            return []
        closed = min((m.closed_until or 0) for m in self.meters.values())
        if closed < day and now < day + 3600 * 1_000_000_000:
            return []  # wait (up to an hour) until yesterday's last ISPs are closed
        if self.history.span(self.grid) is None:
            return []
        self._accuracy_day = day
        self.history.set_meta("accuracy_day", day)
        rows = []
        for r in self.config.resources:
            rows.append({"resource": r.id, "configured": self.methods[r.id].id,
                         "methods": [a.to_json() for a in self.evaluate([r.id], day)]})
        s0, e = self.config.accuracy_window
        body = msg.body("baseline_accuracy", now, window=[_hhmm(s0), _hhmm(e)],
                        placebo_days=self.config.placebo_days, resources=rows)
        return [FlexRecord("baseline_accuracy", msg.DATA_CLASS["baseline_accuracy"], body)]

    def evaluate(self, resources: list[str], day: int):
        """Placebo-day accuracy of each resource's configured method and of every built-in method (defaults),
        on the days before `day`."""
        methods: list[Baseline] = [self.methods[resources[0]]]
        for mid, cls in METHODS.items():
            if mid != methods[0].id:
                try:
                    methods.append(cls())
                except BaselineError:  # a registered method without usable defaults is compared only if configured
                    continue
        lookback = max(m.lookback_days for m in methods)
        ndays = lookback + self.config.placebo_days
        first = day - ndays * DAY_NS
        hist = self.history.matrix(resources, first, ndays, self.grid)
        weekend = np.array([is_weekend(first + k * DAY_NS, self.config.holidays) for k in range(ndays)], dtype=bool)
        event = self.history.event_days(resources, first, ndays)
        nominated = np.stack([self.history.nominations(resources, first + k * DAY_NS, self.grid)[0]
                              for k in range(ndays)], axis=1)
        s0, e = self.config.accuracy_window
        window = (s0 // self.config.isp_min, -(-e // self.config.isp_min))
        return placebo(hist, weekend, event, first, methods, window=window, placebo_days=self.config.placebo_days,
                       grid=self.grid, nominated=nominated)


def _number(smp: Sample) -> float | None:
    """A good, finite number from the bus, else None (bytes from a device are hostile until checked)."""
    v = smp.value
    if not smp.good or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
