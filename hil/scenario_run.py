"""Run a scenario: build its bench, play its timeline and fault schedule in scenario time, record what the broker
and the devices saw, then judge the checks and write the report (docs/hil.md).

`python -m gridedge.hil run SCENARIO.toml` (or `gridedge hil run ...`) exits 0 when every check passed (or was
not applicable), 1 when one failed, 2 for a scenario file with errors, 3 when the bench could not be built or the
gateway never came up.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable

from gridedge import contract

from .broker import BrokerNotFound, BrokerStartError
from .dso_sim import DsoSimulator
from .scenario import Scenario
from .scenario_bench import Bench, BenchError, Clock

__all__ = ["run_scenario", "main_run", "rejudge", "observe", "RESULT_OK", "RESULT_FAIL", "RESULT_INVALID", "RESULT_BENCH"]

RESULT_OK, RESULT_FAIL, RESULT_INVALID, RESULT_BENCH = 0, 1, 2, 3
TICK_S = 0.1
FLEX_KINDS = ("verification", "settlement", "availability", "prequalification", "baseline_accuracy")
FINAL = ("completed", "terminated", "cancelled", "failed", "expired", "rejected")
#: fault kinds whose `for` ends them (the others are instants, or end by their own `for` if given)
ENDED = ("uplink_latency", "uplink_loss", "uplink_blackhole", "uplink_down", "broker_restart", "device_timeout",
         "device_exception", "device_garbage", "device_slow", "gateway_kill")


def rig_version() -> str:
    try:
        return metadata.version("gridedge")
    except metadata.PackageNotFoundError:
        return "unknown"


class Progress:
    """The time elapsed since the run began, the time left in the current phase (warm-up, timeline, cool-down)
    and the phase: a line that rewrites itself on a terminal, a line every 10 s in a log."""

    def __init__(self, out=sys.stdout, every_s: float = 10.0) -> None:
        self.out, self.tty = out, out.isatty()
        self.every_s = every_s if not self.tty else 0.5
        self.phase, self.total_s = "starting the bench", None
        self.t_run = self.t_start = time.monotonic()
        self._last = 0.0

    def say(self, text: str) -> None:
        self._clear()
        print(f"hil: {text}", file=self.out, flush=True)

    def set(self, phase: str, total_s: float | None = None) -> None:
        self.phase, self.total_s, self.t_start = phase, total_s, time.monotonic()
        self.show(force=True)

    def show(self, scenario_s: float | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        left = f", {_hms(max(0.0, self.total_s - (now - self.t_start)))} left in this phase" if self.total_s else ""
        at = f", scenario time {_hms(scenario_s)}" if scenario_s is not None else ""
        line = f"hil: [{_hms(now - self.t_run)} elapsed{left}{at}] {self.phase}"
        if self.tty:
            print("\r" + line[:150].ljust(150), end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def _clear(self) -> None:
        if self.tty:
            print("\r" + " " * 150 + "\r", end="", file=self.out, flush=True)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Recorder:
    """Everything the checks and the report use, in wall-clock ns: the devices' states every tick, the commands
    sent, the faults, the phases; the broker's side is read from the DSO simulator at the end."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.samples: dict[str, dict[str, list]] = {}
        self.commands: list[dict] = []
        self.notes: list[dict] = []
        self.faults: list[dict] = []
        self.phases: list[dict] = []
        self.lag_s = 0.0              # the largest lateness of a tick: the rig's own timing accuracy
        self.late_events_s = 0.0      # the largest lateness of a timeline event or fault

    def sample(self, t_ns: int, states: dict[str, dict]) -> None:
        for dev, st in states.items():
            series = self.samples.setdefault(dev, {})
            series.setdefault("t", []).append(t_ns)
            for k in ("W", "VAr", "v_pu", "hz", "avail_w", "setpoint_w", "controlled", "soc_pct"):
                v = st.get(k)
                series.setdefault(k, []).append(round(v, 3) if isinstance(v, float) else v)


async def run_scenario(sc: Scenario, outdir: Path, *, progress: Progress | None = None) -> dict:
    """Run one scenario; returns the recording (a JSON-able dict). Raises BenchError when the bench fails."""
    progress = progress or Progress()
    outdir.mkdir(parents=True, exist_ok=True)
    clock = Clock(sc.speed)
    bench = Bench(sc, outdir, clock, progress.say)
    rec = Recorder(sc)
    tag = uuid.uuid4().hex[:6]
    stop_ticks = asyncio.Event()
    ticker = None
    try:
        try:
            await bench.start()
        except (BrokerNotFound, BrokerStartError, OSError) as exc:
            raise BenchError(str(exc)) from None
        recording = asyncio.Event()
        ticker = asyncio.create_task(_tick(bench, rec, progress, stop_ticks, recording))
        progress.set(f"waiting for the gateway {sc.gateway['id']!r} to come online and report its devices")
        await bench.wait_ready()
        recording.set()
        rec.phases.append({"t": time.time_ns(), "name": "warm-up"})
        progress.set("warm-up", sc.warmup_s)
        await asyncio.sleep(sc.warmup_s)
        clock.start()
        rec.phases.append({"t": clock.t0_ns, "name": "timeline"})
        progress.set("timeline", sc.duration_s / sc.speed)
        last = "timeline"
        for at, _order, what, item in _events(sc):
            delay = clock.deadline(at) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            rec.late_events_s = max(rec.late_events_s, -delay)
            await _do(bench, rec, what, item, tag, at)
            if what == "timeline":
                last = _describe(what, item)
            on = [f["kind"] + (f" {f['device']}" if f.get("device") else "") for f in rec.faults if f["t_off"] is None]
            progress.phase = last + (f" | faults: {', '.join(on)}" if on else "")
        delay = clock.deadline(sc.duration_s) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        rec.phases.append({"t": time.time_ns(), "name": "cool-down"})
        for f in rec.faults:                       # a fault still on at the end is ended now
            if f["t_off"] is None and f["kind"] in ENDED:
                await bench.fault(f["spec"], False)
                f["t_off"] = time.time_ns()
        progress.set("cool-down", sc.cooldown_s)
        await asyncio.sleep(sc.cooldown_s)
        rec.phases.append({"t": time.time_ns(), "name": "stop"})
        if bench.gateway is not None:
            progress.set("stopping the gateway (it drains its outbox and says offline)")
            await bench.stop_gateway()
            try:
                await bench.dso.wait_for(lambda: not bench.online(), 15, "the gateway's death message")
            except TimeoutError:
                pass
        rec.phases.append({"t": time.time_ns(), "name": "end"})
    finally:
        stop_ticks.set()
        if ticker is not None:
            await asyncio.gather(ticker, return_exceptions=True)
        progress._clear()
        observed = _observed(bench, rec) if bench.dso is not None else None
        await bench.stop()
    return _recording(sc, bench, rec, clock, observed, tag)


async def _tick(bench: Bench, rec: Recorder, progress: Progress, stop: asyncio.Event,
                recording: asyncio.Event) -> None:
    """The grid and the devices move from the moment the gateway may read them (a meter never shows it a
    world that has not started); they are recorded from the warm-up on."""
    due = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        states = bench.tick()
        if recording.is_set():
            rec.lag_s = max(rec.lag_s, now - due)
            rec.sample(time.time_ns(), states)
        progress.show(bench.clock.scenario_s() if bench.clock.t0 is not None else None)
        due = max(due + TICK_S, now)
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
        except asyncio.TimeoutError:
            pass


def _events(sc: Scenario) -> list[tuple[float, int, str, dict]]:
    out = [(e["at"], 1, "timeline", e) for e in sc.timeline]
    for f in sc.faults:
        out.append((f["at"], 0, "fault_on", f))
        if f["kind"] in ENDED or (f["kind"] == "clock_step" and f.get("for") is not None):
            out.append((f["at"] + (f.get("for") or 0.0), 0, "fault_off", f))
    return sorted(out, key=lambda x: (x[0], x[1]))


def _describe(what: str, item: dict) -> str:
    if what == "timeline":
        label = item.get("info") or item.get("id") or ""
        return f"{item['action']} {label}".strip() + (f": {item['text']}" if item.get("text") else "")
    return f"fault {item['kind']} {'begins' if what == 'fault_on' else 'ends'}"


async def _do(bench: Bench, rec: Recorder, what: str, item: dict, tag: str, at: float) -> None:
    if what == "timeline":
        if item["action"] == "note":
            rec.notes.append({"t": time.time_ns(), "at_s": at, "info": item.get("info"), "text": item["text"]})
        else:
            await _send(bench, rec, item, tag, at)
        return
    if what == "fault_on":
        rec.faults.append({"id": item.get("id"), "kind": item["kind"], "at_s": at, "t_on": time.time_ns(),
                           "t_off": None, "spec": item,
                           "device": item.get("device"), "target": item.get("target")})
    await bench.fault(item, what == "fault_on")
    if what == "fault_off":
        for f in rec.faults:
            if f["spec"] is item and f["t_off"] is None:
                f["t_off"] = time.time_ns()


def command_doc(item: dict, cmd_id: str, ids: dict[str, str], step_s: float) -> dict:
    """The command document of a timeline entry (the head-end's clock `step_s` off)."""
    action = item["action"]
    keys = {"limit_active_power": ("limit_pct",), "set_active_power": ("w",), "set_reactive_power": ("var",),
            "set_power_factor": ("pf",), "traffic_light": ("colour", "limit_pct"),
            "prequalification_test": ("resource", "w")}.get(action, ())
    params = {k: item[k] for k in keys + ("duration_s", "revert_s") if k in item}
    if action in ("terminate", "cancel"):
        params = {"activation_id": ids.get(item["activation"], item["activation"])}
    start = item.get("start_in_s")
    window = {}
    if start is not None:
        window = {"valid_from": start + step_s, "valid_until": start + item["valid_for_s"] + step_s}
    elif action in contract.ACTIVATION_TYPES:
        window = {"valid_until": item["valid_for_s"] + step_s}
    return DsoSimulator.command(action, params, cmd_id=cmd_id, issuer=item["issuer"], device=item.get("device"),
                                **window)


async def _send(bench: Bench, rec: Recorder, item: dict, tag: str, at: float) -> None:
    dso, step = bench.dso, bench.headend_offset_s
    ids = {c["entry"]: c["cmd_id"] for c in rec.commands if c["entry"]}
    cmd_id = f"{item.get('id') or item['action'][:10]}-{tag}-{len(rec.commands)}"
    claims = None
    if step:
        now = time.time() + step
        claims = {"iat": int(now), "exp": int(now + 300)}
    if item["action"] == "nomination":
        isp = item["isp_s"] * 10**9
        first = ((time.time_ns() + int((item["gate_s"] + step) * 1e9)) // isp + 1) * isp
        doc = DsoSimulator.nomination(item["resource"], first, item["isp_s"], item["w"], nomination_id=cmd_id,
                                      issuer=item["issuer"])
        kind = contract.TOPIC_NOMINATION
    else:
        doc = command_doc(item, cmd_id, ids, step)
        kind = contract.TOPIC_CMD
    payload = dso.sign(doc, claims=claims)
    t = time.time_ns()
    await dso.send(payload, issuer=item["issuer"], kind=kind)
    checked = sorted({c["device"] for c in bench.sc.checks if c.get("command") == item.get("id") and "device" in c})
    rec.commands.append({"entry": item.get("id"), "cmd_id": cmd_id, "type": item["action"], "issuer": item["issuer"],
                         "device": item.get("device"), "devices": checked, "doc": doc, "t": t, "at_s": at,
                         "due": t + int((item.get("start_in_s") or 0.0) * 1e9),
                         "info": item.get("info"), "text": item.get("text", "")})


def _observed(bench: Bench, rec: Recorder) -> dict:
    """What the head-end saw at the broker, in wall-clock ns of arrival."""
    out = observe(bench.dso.seen, bench.prefix, bench.mono_to_wall_ns)
    for stream in ("telemetry", "result", "audit", *FLEX_KINDS):
        r = bench.dso.audit.report(bench.gateway_id, stream)
        if r.received or stream in ("telemetry", "result"):
            out["streams"][stream] = {"first": r.first, "last": r.last, "received": r.received,
                                      "duplicates": r.duplicates, "missing": r.missing[:1000],
                                      "n_missing": len(r.missing), "out_of_order": len(r.out_of_order),
                                      "reused": r.reused[:1000]}
    return out


def observe(seen, prefix: str, mono_to_wall_ns: int) -> dict:
    """The messages a head-end saw (DsoSimulator.seen), sorted for the checks. A gateway under test is not
    trusted: a message that does not follow the contract is counted in `unreadable`, never a crash."""
    out = {"results": [], "states": [], "records": {}, "telemetry": {}, "latency": [], "streams": {}, "topics": {},
           "unreadable": 0}
    seen_ids: set = set()
    for s in seen:
        rel = s.topic[len(prefix):] if s.topic.startswith(prefix) else s.topic
        out["topics"][rel] = out["topics"].get(rel, 0) + 1
        if not isinstance(s.doc, dict):
            continue
        try:
            _observe_one(out, rel, s.doc, int(s.t * 1e9) + mono_to_wall_ns, seen_ids)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError):
            out["unreadable"] += 1
    return out


def _observe_one(out: dict, rel: str, doc: dict, t: int, seen_ids: set) -> None:
    kind = rel.removeprefix("backfill/")
    backfill = rel.startswith("backfill/")
    if kind in ("result", "telemetry", *FLEX_KINDS):
        mid = doc.get("msg_id")
        if not isinstance(mid, str) or mid in seen_ids:
            return
        seen_ids.add(mid)
    if kind == "result":
        detail = doc.get("detail") if isinstance(doc.get("detail"), dict) else {}
        out["results"].append({"t": t, "cmd_id": _text(doc.get("cmd_id")), "status": _text(doc.get("status")),
                               "reason": _text(doc.get("reason")), "state": _text(detail.get("state")),
                               "backfill": backfill, "claimed": _text(detail.get("claimed_cmd_id"))})
    elif kind == "state":
        out["states"].append({"t": t, "status": _text(doc.get("status")), "will": doc.get("will") is True,
                              "version": _text(doc.get("version")), "boot_id": _text(doc.get("boot_id")),
                              "next_seq": {k: v for k, v in doc["next_seq"].items() if isinstance(v, int)}
                              if isinstance(doc.get("next_seq"), dict) else None})
    elif kind in FLEX_KINDS:
        out["records"].setdefault(kind, []).append({"t": t, "backfill": backfill, "doc": doc})
    elif kind == "telemetry":
        for b in doc.get("blocks") or ():
            if not isinstance(b, dict) or type(b.get("t")) is not int or not isinstance(b.get("dev"), str):
                continue
            names, values = b.get("n"), b.get("v")
            if not isinstance(names, list) or not isinstance(values, list) or len(names) != len(values):
                continue
            out["latency"].append({"t": t, "dev": b["dev"], "t_read": b["t"], "backfill": backfill})
            series = out["telemetry"].setdefault(b["dev"], {"t": []})
            series["t"].append(b["t"])
            for name in ("W", "VAr", "PhVphA", "Hz", "WMaxLimPct", "WMaxLimPctEna"):
                v = values[names.index(name)] if name in names else None
                series.setdefault(name, []).append(v if isinstance(v, (int, float)) else None)


def _text(v) -> str | None:
    """A string from the gateway, as it is (escaped where it is shown), or None."""
    return v if isinstance(v, str) else None if v is None else repr(v)[:200]


def _recording(sc: Scenario, bench: Bench, rec: Recorder, clock: Clock, observed: dict | None, tag: str) -> dict:
    observed = observed or observe([], bench.prefix, 0)
    versions = [s["version"] for s in observed["states"] if s.get("version") and not s.get("will")]
    devices = {d["id"]: {"kind": d["kind"], "w_max": d.get("w_max"), "node": d.get("node"),
                         "writable": d.get("writable", d["kind"] == "real" and bool(d["gateway"].get("writable"))),
                         "simulated": d["kind"] != "real", "watched": d["kind"] != "real" or bool(d.get("relay"))}
               for d in sc.devices}
    return {
        "scenario": {"name": sc.name, "source": sc.source, "sha256": sc.sha256, "speed": sc.speed,
                     "duration_s": sc.duration_s, "description": sc.description},
        "rig": {"version": rig_version(), "python": sys.version.split()[0], "run": tag},
        "gateway": {"id": bench.gateway_id, "mode": bench.mode, "version": versions[-1] if versions else None,
                    "boot_ids": sorted({s["boot_id"] for s in observed["states"] if s.get("boot_id")})},
        "t0": clock.t0_ns, "lag_s": round(rec.lag_s, 4), "late_events_s": round(rec.late_events_s, 4),
        "devices": devices, "samples": rec.samples,
        "writes": {i: d.writes for i, d in bench.devices.items()},
        "attempts": {**{i: d.attempts for i, d in bench.devices.items()},     # real devices: what their relay saw
                     **{i: [dict(w, refused=None) for w in r.writes] for i, r in bench.relays.items()}},
        "commands": rec.commands, "notes": rec.notes, "phases": rec.phases,
        "faults": [{k: v for k, v in f.items() if k != "spec"} for f in rec.faults],
        **observed,
    }


def raw_sha256(recording: dict) -> str:
    """The hash of the raw data: the recording as canonical JSON."""
    return hashlib.sha256(json.dumps(recording, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def rejudge(sc: Scenario, outdir: Path) -> int:
    """Judge a recorded run (outdir/raw.json) against the scenario's checks and write its report again."""
    from .report import write_report
    from .verdict import judge

    try:
        recording = json.loads((outdir / "raw.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"hil: cannot read {outdir / 'raw.json'}: {exc}", file=sys.stderr)
        return RESULT_BENCH
    verdicts = judge(sc, recording)
    write_report(sc, recording, verdicts, outdir, say=Progress().say)
    return RESULT_FAIL if any(v.verdict == "fail" for v in verdicts) else RESULT_OK


def main_run(sc: Scenario, outdir: Path, say: Callable[[str], None] | None = None) -> tuple[int, dict | None]:
    """Run, judge and report; (exit code, the report document)."""
    from .report import write_report
    from .verdict import judge

    progress = Progress()
    outdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=outdir / "rig.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    try:
        recording = asyncio.run(run_scenario(sc, outdir, progress=progress))
    except BenchError as exc:
        progress.say(f"BENCH FAILED: {exc}")
        return RESULT_BENCH, None
    except KeyboardInterrupt:
        progress.say("interrupted: every process the rig started was stopped")
        return RESULT_BENCH, None
    verdicts = judge(sc, recording)
    doc = write_report(sc, recording, verdicts, outdir, say=progress.say)
    failed = [v for v in verdicts if v.verdict == "fail"]
    return (RESULT_FAIL if failed else RESULT_OK), doc
