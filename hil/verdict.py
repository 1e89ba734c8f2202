"""The checks of a scenario, judged from what the rig recorded at the broker and at the devices.

Each verdict is laid out like a DER conformance tool's result summary (SunSpec SVP, IEEE 1547.1): the check's id,
the initial, target and steady-state values where they apply, the figure measured, the measurement accuracy, the
pass band derived from the limit widened by that accuracy, and pass, fail or not applicable with the reason.

The accuracies are the rig's own: device states are sampled every 0.1 s (TICK_S) and the rig's event loop was
late by at most `lag_s` (measured during the run), so a time is known to TICK_S + lag_s; a power to the devices'
register resolution of 1 W.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .scenario import Scenario
from .scenario_run import FINAL, TICK_S

__all__ = ["Verdict", "judge"]

S = 1e9
W_RESOLUTION = 1.0


@dataclass
class Verdict:
    id: str
    title: str
    kind: str
    verdict: str                      # pass, fail, n/a
    figure: float | str | None = None
    unit: str = ""
    limit: str = ""
    accuracy: float | None = None
    band: tuple[float | None, float | None] | None = None
    initial: float | None = None
    target: float | None = None
    steady: float | None = None
    reason: str = ""
    data: dict = field(default_factory=dict)

    def doc(self) -> dict:
        return {k: (_round(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _round(v: float) -> float:
    return v if not math.isfinite(v) else float(f"{v:.6g}")


def _judge_band(v: Verdict, value: float) -> Verdict:
    lo, hi = v.band
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    v.verdict = "pass" if ok else "fail"
    return v


class Judge:
    def __init__(self, sc: Scenario, rec: dict) -> None:
        self.sc, self.rec = sc, rec
        self.t0 = rec["t0"] or 0
        self.acc_t = TICK_S + rec.get("lag_s", 0.0)
        self.cmds = {c["entry"]: c for c in rec["commands"] if c.get("entry")}
        self.t_end = max([self.t0] + [p["t"] for p in rec["phases"]])

    # -- helpers
    def series(self, dev: str) -> dict[str, np.ndarray]:
        raw = self.rec["samples"].get(dev) or {"t": []}
        return {k: np.array([np.nan if x is None else x for x in v], dtype=float) for k, v in raw.items()}

    def ns(self, scenario_s: float | None, default: int) -> int:
        return default if scenario_s is None else int(self.t0 + scenario_s / self.sc.speed * S)

    def results(self, cmd_id: str) -> list[dict]:
        """Its results, and the refusals of messages that only claimed its id (unauthenticated: cmd_id null)."""
        return [r for r in self.rec["results"] if r["cmd_id"] == cmd_id or r["cmd_id"] is None
                and r.get("claimed") == cmd_id]

    def end_of(self, c: dict) -> int:
        final = [r["t"] for r in self.results(c["cmd_id"]) if r["status"] in FINAL]
        if final:
            return min(final)
        dur = c["doc"].get("params", {}).get("duration_s")
        return min(self.t_end, c["due"] + int(dur * S)) if dur else self.t_end

    def targets(self, c: dict) -> list[str]:
        if c["doc"].get("device"):
            return [c["doc"]["device"]]
        kind = "battery" if c["type"] == "set_active_power" else "inverter"
        return [d for d, info in self.rec["devices"].items() if info["kind"] == kind and info["writable"]]

    def expected(self, c: dict, dev: str, sr: dict, initial: float) -> np.ndarray | None:
        """The power the command asks of `dev` over its samples (None: not an active power command)."""
        info = self.rec["devices"][dev]
        params = c["doc"].get("params", {})
        base = sr["avail_w"] if info["kind"] == "inverter" else np.full_like(sr["t"], initial)
        if c["type"] == "limit_active_power":
            return np.minimum(base, params["limit_pct"] / 100 * info["w_max"])
        if c["type"] == "set_active_power":
            total = sum(self.rec["devices"][d]["w_max"] or 0 for d in self.targets(c)) or info["w_max"]
            share = params["w"] * info["w_max"] / total
        elif c["type"] == "prequalification_test":
            share = params["w"]
        else:
            return None
        return np.minimum(sr["avail_w"], share) if info["kind"] == "inverter" else np.full_like(sr["t"], share)

    def activation(self, v: Verdict, check: dict):
        """(command, samples, mask of its window, expected power, initial power), or a verdict n/a / fail."""
        c = self.cmds.get(check["command"])
        if c is None:
            return _na(v, f"the command {check['command']!r} was not sent")
        sr = self.series(check["device"])
        if not len(sr["t"]):
            return _na(v, f"no samples of {check['device']}")
        i0 = max(0, int(np.searchsorted(sr["t"], c["due"])) - 1)
        initial = float(sr["W"][i0])
        exp = self.expected(c, check["device"], sr, initial)
        if exp is None:
            return _na(v, f"{c['type']} asks no active power")
        end = self.end_of(c)
        settle = check.get("settle_s", 0.0) * S
        mask = (sr["t"] >= c["due"] + settle) & (sr["t"] < end)
        v.initial = initial
        v.target = float(np.nanmean(exp[mask])) if mask.any() else None
        v.data.update(cmd_id=c["cmd_id"], due_ns=c["due"], end_ns=end, before_w=initial)
        return c, sr, mask, exp, initial


def _na(v: Verdict, reason: str) -> Verdict:
    v.verdict, v.reason = "n/a", reason
    return v


def _fail(v: Verdict, reason: str) -> Verdict:
    v.verdict, v.reason = "fail", reason
    return v


def _limit_text(lo: float | None, hi: float | None, unit: str) -> str:
    if lo is not None and hi is not None:
        return f"{lo:g} .. {hi:g} {unit}"
    return f"<= {hi:g} {unit}" if hi is not None else f">= {lo:g} {unit}"


def _at_most(v: Verdict, max_s: float, accuracy: float) -> None:
    """A time limit: the figure in seconds, pass band 0 .. max_s + accuracy."""
    v.unit, v.accuracy = "s", accuracy
    v.band, v.limit = (0.0, max_s + accuracy), _limit_text(None, max_s, "s")


def _crossing(t: np.ndarray, p: np.ndarray, start: int, end: int, level: float, rising: bool) -> float | None:
    idx = np.nonzero((t >= start) & (t < end) & ((p >= level) if rising else (p <= level)))[0]
    return float(t[idx[0]]) if len(idx) else None


# ---------------------------------------------------------------- the checks

def activation_delay(j: Judge, check: dict, v: Verdict) -> Verdict:
    got = j.activation(v, check)
    if isinstance(got, Verdict):
        return got
    c = got[0]
    writes = [w for w in j.rec["writes"].get(check["device"], []) if w["t"] >= c["t"]]
    _at_most(v, check["max_s"], j.acc_t)
    if not writes:
        return _fail(v, f"no control write reached {check['device']} after the command")
    v.figure = (writes[0]["t"] - c["due"]) / S
    v.data["first_write"] = writes[0]
    v.reason = f"from the command (due) to its first control write at {check['device']}"
    return _judge_band(v, v.figure)


def response_time(j: Judge, check: dict, v: Verdict) -> Verdict:
    got = j.activation(v, check)
    if isinstance(got, Verdict):
        return got
    c, sr, mask, exp, initial = got
    _at_most(v, check["max_s"], j.acc_t)
    w_max = j.rec["devices"][check["device"]]["w_max"]
    if v.target is None or abs(v.target - initial) < 0.01 * w_max:
        return _na(v, "no step: the set-point asks less than 1 % of the rating of change")
    level = initial + check["fraction"] * (v.target - initial)
    t = _crossing(sr["t"], sr["W"], c["due"], v.data["end_ns"], level, v.target > initial)
    v.steady = float(np.nanmean(sr["W"][mask])) if mask.any() else None
    if t is None:
        return _fail(v, f"P never reached {check['fraction']:.0%} of the step ({level:.0f} W)")
    v.figure = (t - c["due"]) / S
    v.reason = f"from the command (due) to P at {check['fraction']:.0%} of the step ({level:.0f} W)"
    return _judge_band(v, v.figure)


def ramp_rate(j: Judge, check: dict, v: Verdict) -> Verdict:
    got = j.activation(v, check)
    if isinstance(got, Verdict):
        return got
    c, sr, mask, exp, initial = got
    v.unit = "W/s"
    lo, hi = check.get("min_w_per_s"), check.get("max_w_per_s")
    v.limit = _limit_text(lo, hi, "W/s")
    w_max = j.rec["devices"][check["device"]]["w_max"]
    start, end = c["due"], v.data["end_ns"]
    if check["edge"] == "end":        # the release: from the end of the activation back to the baseline
        later = [x["due"] for x in j.rec["commands"] if x["due"] > end]
        start, end = end, min(later + [j.t_end])
        i0 = max(0, int(np.searchsorted(sr["t"], start)) - 1)
        v.initial = initial = float(sr["W"][i0])
        info = j.rec["devices"][check["device"]]
        v.target = float(sr["avail_w"][i0]) if info["kind"] == "inverter" else v.data["before_w"]
        mask = (sr["t"] >= start) & (sr["t"] < end)
        v.data.update(release_ns=start)
    if v.target is None or abs(v.target - initial) < 0.05 * w_max:
        return _na(v, "no step of at least 5 % of the rating to measure a ramp on")
    step = v.target - initial
    rising = step > 0
    t10 = _crossing(sr["t"], sr["W"], start, end, initial + 0.1 * step, rising)
    t90 = _crossing(sr["t"], sr["W"], start, end, initial + 0.9 * step, rising)
    v.steady = float(np.nanmean(sr["W"][mask])) if mask.any() else None
    if t10 is None:
        return _fail(v, "P never crossed 10 % of the step")
    v.band = (None if lo is None else lo, None if hi is None else hi)
    if t90 is None:           # too slow to finish: its mean rate from 10 % to the end of the activation
        last = np.nonzero((sr["t"] >= t10) & (sr["t"] < end))[0][-1]
        dt = max((sr["t"][last] - t10) / S, TICK_S)
        v.figure = abs(sr["W"][last] - (initial + 0.1 * step)) / dt
        v.reason = "P never reached 90 % of the step within the activation: its mean rate from 10 % to the end"
    else:
        dt = max((t90 - t10) / S, TICK_S)
        v.figure = 0.8 * abs(step) / dt
        v.reason = (f"0.8 x step over the time from 10 % to 90 % of the {'release' if check['edge'] == 'end' else 'step'}"
                    ", at the device")
        v.data.update(t90_s=(t90 - start) / S)
    v.accuracy = v.figure * 2 * TICK_S / dt       # each crossing is known to one sampling period
    v.band = (None if lo is None else lo - v.accuracy, None if hi is None else hi + v.accuracy)
    v.data.update(t10_s=(t10 - start) / S, step_w=step)
    return _judge_band(v, v.figure)


def setpoint_accuracy(j: Judge, check: dict, v: Verdict) -> Verdict:
    got = j.activation(v, check)
    if isinstance(got, Verdict):
        return got
    c, sr, mask, exp, initial = got
    w_max = j.rec["devices"][check["device"]]["w_max"]
    tol = max(check.get("tolerance_w", 0.0), check.get("tolerance_pct", 0.0) / 100 * w_max)
    v.unit, v.accuracy = "W", W_RESOLUTION
    v.band, v.limit = (0.0, tol + W_RESOLUTION), f"|steady - target| <= {tol:g} W"
    if not mask.any():
        return _na(v, f"the activation ended within its settling time ({check['settle_s']:g} s)")
    v.steady = float(np.nanmean(sr["W"][mask]))
    v.figure = abs(v.steady - v.target)
    v.data["max_abs_error_w"] = float(np.nanmax(np.abs(sr["W"][mask] - exp[mask])))
    v.reason = f"mean P against the power asked, from {check['settle_s']:g} s after the command to its end"
    return _judge_band(v, v.figure)


def delivery(j: Judge, check: dict, v: Verdict) -> Verdict:
    got = j.activation(v, check)
    if isinstance(got, Verdict):
        return got
    c, sr, mask, exp, initial = got
    info = j.rec["devices"][check["device"]]
    base = sr["avail_w"] if info["kind"] == "inverter" else np.full_like(sr["t"], initial)
    v.unit, v.limit = "", _limit_text(check["min_ratio"], check["max_ratio"], "(delivered / requested)")
    if mask.sum() < 2:
        return _na(v, "the activation ended within its settling time")
    t = sr["t"][mask] / S
    dt = np.diff(t, append=t[-1])
    down = np.nanmean(exp[mask]) < np.nanmean(base[mask])
    sign = 1.0 if down else -1.0
    requested = float(np.nansum(sign * (base[mask] - exp[mask]) * dt)) / 3600
    delivered = float(np.nansum(sign * (base[mask] - sr["W"][mask]) * dt)) / 3600
    span_h = (t[-1] - t[0]) / 3600
    v.data.update(requested_wh=requested, delivered_wh=delivered, direction="down" if down else "up",
                  baseline="the plant's available power" if info["kind"] == "inverter" else "P before the command")
    if requested < 0.01 * info["w_max"] * span_h:
        return _na(v, "nothing was requested: the baseline was already within the set-point")
    v.figure = delivered / requested
    v.accuracy = 2 * W_RESOLUTION * span_h / requested
    v.band = (check["min_ratio"] - v.accuracy, check["max_ratio"] + v.accuracy)
    v.steady = float(np.nanmean(sr["W"][mask]))
    v.reason = (f"delivered {delivered:.2f} Wh of {requested:.2f} Wh requested against the baseline "
                f"({v.data['baseline']})")
    return _judge_band(v, v.figure)


def statuses(j: Judge, check: dict, v: Verdict) -> Verdict:
    c = j.cmds.get(check["command"])
    v.limit = " -> ".join(check["expect"])
    if c is None:
        return _na(v, f"the command {check['command']!r} was not sent")
    got = [r["status"] for r in j.results(c["cmd_id"])]
    v.figure = " -> ".join(got) or "(no result)"
    v.data.update(cmd_id=c["cmd_id"], reasons=[r["reason"] for r in j.results(c["cmd_id"])])
    v.verdict = "pass" if got == check["expect"] else "fail"
    v.reason = "the statuses of its results, in the order they arrived (duplicates by msg_id removed)"
    return v


def command_latency(j: Judge, check: dict, v: Verdict) -> Verdict:
    cmds = [j.cmds[check["command"]]] if check.get("command") in j.cmds else \
        ([] if check.get("command") else j.rec["commands"])
    _at_most(v, check["max_s"], j.rec.get("lag_s", 0.0))
    if not cmds:
        return _na(v, "no command was sent")
    lat, missing = {}, []
    for c in cmds:
        first = next((r for r in j.results(c["cmd_id"]) if r["status"] == check["status"]), None)
        if first is None:
            missing.append(c["cmd_id"])
        else:
            lat[c["cmd_id"]] = (first["t"] - c["t"]) / S
    v.data.update(latencies_s=lat, missing=missing)
    if missing:
        return _fail(v, f"no {check['status']!r} result for {', '.join(missing[:5])}")
    v.figure = max(lat.values())
    v.reason = f"the largest time from publishing a command to its {check['status']!r} result"
    return _judge_band(v, v.figure)


def _in_faults(j: Judge, t: int, margin_s: float = 5.0) -> bool:
    return any(f["t_on"] <= t <= (f["t_off"] or j.t_end) + margin_s * S for f in j.rec["faults"])


def telemetry_latency(j: Judge, check: dict, v: Verdict) -> Verdict:
    lo, hi = j.ns(check.get("from"), j.t0), j.ns(check.get("to"), j.t_end)
    lat = [(e["t"] - e["t_read"]) / S for e in j.rec["latency"]
           if not e["backfill"] and lo <= e["t_read"] <= hi and not _in_faults(j, e["t_read"])]
    v.unit, v.accuracy = "s", j.rec.get("lag_s", 0.0)
    v.band, v.limit = (0.0, check["max_s"] + v.accuracy), f"p{check['percentile']:g} <= {check['max_s']:g} s"
    if not lat:
        return _fail(v, "no live telemetry outside the faults")
    v.figure = float(np.percentile(lat, check["percentile"]))
    v.data.update(n=len(lat), median_s=float(np.median(lat)), max_s=float(max(lat)))
    v.reason = (f"p{check['percentile']:g} of device read to arrival at the head-end over {len(lat)} reads "
                "(reads during a fault and 5 s after it left out)")
    return _judge_band(v, v.figure)


def completeness(j: Judge, check: dict, v: Verdict) -> Verdict:
    final = [s for s in j.rec["states"] if s["status"] == "offline" and not s["will"] and s.get("next_seq")]
    next_seq = final[-1]["next_seq"] if final else {}
    v.unit, v.limit, v.accuracy = "%", f">= {check['min_pct']:g} % of seqs, none reused or out of order", 0.0
    v.band = (check["min_pct"], 100.0)
    worst, why, per = 100.0, [], {}
    for stream in check["streams"]:
        st = j.rec["streams"].get(stream)
        if not st or not st["received"]:
            per[stream] = {"received": 0}
            worst, why = 0.0, why + [f"{stream}: nothing received"]
            continue
        last = max(st["last"], next_seq.get(stream, 0) - 1)
        expected = last - st["first"] + 1
        pct = 100.0 * st["received"] / expected
        per[stream] = dict(st, expected=expected, pct=pct, issued_last=next_seq.get(stream, 0) - 1 or None)
        worst = min(worst, pct)
        if st["reused"] or st["out_of_order"]:
            why.append(f"{stream}: {len(st['reused'])} seqs reused, {st['out_of_order']} out of order")
        if pct < check["min_pct"]:
            why.append(f"{stream}: {expected - st['received']} of {expected} missing")
    v.figure, v.data = worst, {"streams": per, "checked_against_final_next_seq": bool(final)}
    v.reason = "; ".join(why) or ("every seq from the first seen to the last issued arrived"
                                   if final else "every seq from the first to the last seen arrived")
    v.verdict = "pass" if not why else "fail"
    return v


def failsafe_reversion(j: Judge, check: dict, v: Verdict) -> Verdict:
    f = next((f for f in j.rec["faults"] if f["id"] == check["fault"]), None)
    v.unit, v.accuracy = "s", j.acc_t
    v.band = (check["min_s"] - j.acc_t, check["max_s"] + j.acc_t)
    v.limit = _limit_text(check["min_s"], check["max_s"], "s")
    if f is None:
        return _na(v, f"the fault {check['fault']!r} did not happen")
    sr = j.series(check["device"])
    i = int(np.searchsorted(sr["t"], f["t_on"]))
    if i >= len(sr["t"]) or not sr["controlled"][i]:
        return _na(v, f"{check['device']} had no set-point in force when the fault began")
    v.initial = float(sr["setpoint_w"][i])
    after = np.nonzero(sr["controlled"][i:] == 0)[0]
    if not len(after):
        return _fail(v, f"{check['device']} still held its set-point at the end")
    t = sr["t"][i + after[0]]
    v.figure = (t - f["t_on"]) / S
    v.reason = f"from the fault's start to {check['device']} no longer holding a set-point"
    return _judge_band(v, v.figure)


def recovery(j: Judge, check: dict, v: Verdict) -> Verdict:
    f = next((f for f in j.rec["faults"] if f["id"] == check["fault"]), None)
    _at_most(v, check["max_s"], j.rec.get("lag_s", 0.0))
    if f is None or f["t_off"] is None:
        return _na(v, f"the fault {check['fault']!r} did not happen and end")
    live = sorted(e["t"] for e in j.rec["latency"] if not e["backfill"] and e["t"] > f["t_off"]
                  and e["t_read"] > f["t_off"])
    if not live:
        return _fail(v, "no live telemetry after the fault ended")
    v.figure = (live[0] - f["t_off"]) / S
    v.reason = "from the fault's end to the first live telemetry read after it"
    return _judge_band(v, v.figure)


def no_writes(j: Judge, check: dict, v: Verdict) -> Verdict:
    watched = [d for d, i in j.rec["devices"].items() if i["simulated"] or i.get("watched")]
    devs = check.get("devices") or [d for d in watched if not j.rec["devices"][d]["writable"]]
    lo, hi = j.ns(check.get("from"), 0), j.ns(check.get("to"), 2**63)
    v.unit, v.band, v.limit, v.accuracy = "writes", (0.0, 0.0), "no write request", 0.0
    seen = {d: [a for a in j.rec["attempts"].get(d, []) if lo <= a["t"] <= hi] for d in devs if d in watched}
    if not seen:
        return _na(v, "no device the rig can watch (a simulated one, or a real one behind the rig's relay)")
    v.figure = float(sum(len(a) for a in seen.values()))
    v.data = {"devices": {d: len(a) for d, a in seen.items()}, "first": {d: a[:3] for d, a in seen.items() if a}}
    v.reason = f"write requests that reached {', '.join(seen)}"
    return _judge_band(v, v.figure)


def voltage(j: Judge, check: dict, v: Verdict) -> Verdict:
    sr = j.series(check["device"])
    lo, hi = j.ns(check.get("from"), j.t0), j.ns(check.get("to"), j.t_end)
    m = (sr["t"] >= lo) & (sr["t"] <= hi)
    v.unit, v.accuracy = "pu", 0.001
    v.limit = _limit_text(check["min_pu"], check["max_pu"], "pu")
    if not m.any():
        return _na(v, "no samples in the window")
    vmin, vmax = float(np.nanmin(sr["v_pu"][m])), float(np.nanmax(sr["v_pu"][m]))
    v.initial, v.steady = float(sr["v_pu"][m][0]), float(sr["v_pu"][m][-1])
    v.band = (check["min_pu"] - v.accuracy, check["max_pu"] + v.accuracy)
    v.figure = vmax if vmax - check["max_pu"] >= check["min_pu"] - vmin else vmin
    v.data.update(min_pu=vmin, max_pu=vmax)
    v.reason = f"voltage at {check['device']}'s connection point: {vmin:.3f} .. {vmax:.3f} pu"
    ok = vmin >= v.band[0] and vmax <= v.band[1]
    v.verdict = "pass" if ok else "fail"
    return v


def device_setpoint(j: Judge, check: dict, v: Verdict) -> Verdict:
    sr = j.series(check["device"])
    lo, hi = j.ns(check.get("from"), j.t0), j.ns(check.get("to"), j.t_end)
    m = (sr["t"] >= lo) & (sr["t"] <= hi)
    w_max = j.rec["devices"][check["device"]]["w_max"]
    v.unit, v.accuracy = "%", 100 * W_RESOLUTION / w_max
    if not m.any():
        return _na(v, "no samples in the window")
    pct = 100 * sr["setpoint_w"][m] / w_max
    held = ~np.isnan(pct)
    if "expect_pct" not in check:
        v.limit, v.band = "no set-point in force", (0.0, 0.0)
        v.figure = float(100 * held.mean())
        v.reason = f"share of the window in which {check['device']} held a set-point, %"
        return _judge_band(v, v.figure)
    exp, tol = check["expect_pct"], check["tolerance_pct"]
    v.target, v.limit = exp, f"{exp:g} +/- {tol:g} % of w_max throughout"
    v.band = (exp - tol - v.accuracy, exp + tol + v.accuracy)
    if not held.all():
        v.figure = float(np.nanmean(pct)) if held.any() else None
        return _fail(v, f"no set-point in force for {100 * (1 - held.mean()):.0f} % of the window")
    v.figure = float(np.mean(pct))
    worst = float(pct[np.argmax(np.abs(pct - exp))])
    v.data.update(worst_pct=worst)
    v.reason = f"the set-point {check['device']} held (what the gateway wrote), mean over the window"
    return _judge_band(v, worst)


def records(j: Judge, check: dict, v: Verdict) -> Verdict:
    lo, hi = j.ns(check.get("from"), 0), j.ns(check.get("to"), 2**63)
    fields, lacking = check.get("fields") or (), 0
    if check["record"] == "telemetry":
        times = sorted({e["t"] for e in j.rec["latency"] if not e["backfill"]})
    else:
        times = []
        for r in j.rec["records"].get(check["record"], []):
            if not lo <= r["t"] <= hi:
                continue
            if all(_number(r["doc"].get(f)) for f in fields):
                times.append(r["t"])
            else:
                lacking += 1
        times.sort()
    times = [t for t in times if lo <= t <= hi]
    gap = max((b - a) / S for a, b in zip(times, times[1:])) if len(times) > 1 else None
    v.unit, v.figure, v.accuracy = "records", float(len(times)), j.rec.get("lag_s", 0.0)
    v.limit = f">= {check['min_count']}" + (f", at most {check['max_interval_s']:g} s apart"
                                            if check.get("max_interval_s") else "") \
        + (f", each with {', '.join(fields)}" if fields else "")
    v.band = (float(check["min_count"]), None)
    v.data.update(largest_gap_s=gap, lacking=lacking)
    v.reason = f"{check['record']} records received in the window" + (f", largest gap {gap:.1f} s" if gap else "")
    if fields:
        v.reason += f"; counted only with {', '.join(fields)} as numbers: {lacking} lacked {', '.join(fields)}"
    _judge_band(v, v.figure)
    if v.verdict == "pass" and check.get("max_interval_s") and gap is not None and \
            gap > check["max_interval_s"] + v.accuracy:
        v.verdict = "fail"
    return v


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


CHECKS = {f.__name__: f for f in (activation_delay, response_time, ramp_rate, setpoint_accuracy, delivery, statuses,
                                   command_latency, telemetry_latency, completeness, failsafe_reversion, recovery,
                                   no_writes, voltage, device_setpoint, records)}


def judge(sc: Scenario, recording: dict) -> list[Verdict]:
    """One verdict per check of the scenario, in its order."""
    j = Judge(sc, recording)
    out = []
    for check in sc.checks:
        v = Verdict(check["id"], check["title"], check["kind"], "n/a")
        try:
            out.append(CHECKS[check["kind"]](j, check, v))
        except (KeyError, ValueError, IndexError, TypeError, ZeroDivisionError) as exc:
            out.append(_fail(v, f"could not be evaluated from the recording: {type(exc).__name__}: {exc}"))
    return out
