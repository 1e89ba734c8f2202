"""The report of a run: one self-contained HTML file (plots embedded as PNG), report.json with every figure the
verdicts used, and raw.json, the recording whose hash both carry.

The plots (report_plots.py) need matplotlib, a rig-only dependency (the `hil` extra); without it the report is
written without plots and says why.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .report_plots import plots as draw_plots, plots_available
from .scenario import Scenario
from .scenario_run import raw_sha256
from .verdict import Verdict

__all__ = ["write_report", "plots_available", "REPORT_FORMAT"]

REPORT_FORMAT = "gridedge.hil.report/1"
S = 1e9
VERDICT_COLOURS = {"pass": "#2ca25f", "fail": "#de2d26", "n/a": "#969696"}


def write_report(sc: Scenario, rec: dict, verdicts: list[Verdict], outdir: Path,
                 say: Callable[[str], None] = print) -> dict:
    """Write raw.json, report.json and report.html into outdir; returns the report document."""
    raw_path = outdir / "raw.json"
    raw_path.write_text(json.dumps(rec, sort_keys=True, separators=(",", ":"), default=str))
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("pass", "fail", "n/a")}
    doc = {
        "format": REPORT_FORMAT,
        "scenario": rec["scenario"], "rig": rec["rig"], "gateway": rec["gateway"],
        "run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((rec["t0"] or time.time_ns()) / S)),
        "raw": {"file": raw_path.name, "sha256": raw_sha256(rec)},
        "accuracy": {"sampling_s": 0.1, "rig_lag_s": rec["lag_s"], "late_events_s": rec["late_events_s"]},
        "summary": {"verdict": "fail" if counts["fail"] else "pass", **counts},
        "verdicts": [v.doc() for v in verdicts],
        "figures": _figures(rec),
    }
    (outdir / "report.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    why = plots_available()
    plots = [] if why else draw_plots(sc, rec)
    if why:
        say(f"report without plots: {why}")
    (outdir / "report.html").write_text(_html(sc, rec, doc, verdicts, plots, why))
    say(f"report: {outdir / 'report.html'} (and report.json, raw.json)")
    for v in verdicts:
        fig = v.figure if isinstance(v.figure, str) or v.figure is None else f"{v.figure:.4g} {v.unit}".rstrip()
        say(f"  {v.verdict.upper():4} {v.id}: {fig} (limit {v.limit}){'; ' + v.reason if v.verdict != 'pass' else ''}")
    say(f"verdict: {doc['summary']['verdict'].upper()} ({counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['n/a']} not applicable)")
    return doc


def _figures(rec: dict) -> dict:
    """The distributions behind the plots (latency, completeness), summarised."""
    lat = np.array([(e["t"] - e["t_read"]) / S for e in rec["latency"] if not e["backfill"]])
    firsts = {}
    for r in rec["results"]:
        firsts.setdefault(r["cmd_id"], r["t"])
    cmd = [(firsts[c["cmd_id"]] - c["t"]) / S for c in rec["commands"] if c["cmd_id"] in firsts]
    out = {"streams": rec["streams"], "topics": rec["topics"]}
    for name, a in (("telemetry_latency_s", lat), ("command_latency_s", np.array(cmd))):
        out[name] = {"n": int(a.size)} | ({"median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
                                           "max": float(a.max())} if a.size else {})
    return out


# ---------------------------------------------------------------- HTML

CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}table{border-collapse:collapse;
margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0}.pass{background:#e5f5e0}.fail{background:#fee0d2}.na{background:#f0f0f0}
.big{font-size:22px;font-weight:bold;padding:4px 12px;color:white}img{max-width:100%}code{font-size:12px}
.small{font-size:12px;color:#555}"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _num(v, unit: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return _e(f"{v:.4g}{' ' + unit if unit else ''}")
    return _e(v)


def _html(sc: Scenario, rec: dict, doc: dict, verdicts: list[Verdict], plots, why_no_plots: str | None) -> str:
    summ = doc["summary"]
    colour = VERDICT_COLOURS["fail" if summ["verdict"] == "fail" else "pass"]
    gw = rec["gateway"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HIL report: {_e(sc.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_e(sc.name)} <span class='big' style='background:{colour}'>{summ['verdict'].upper()}</span></h1>",
             f"<p>{_e(sc.description)}</p>",
             "<table>",
             *(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in (
                 ("checks", f"{summ['pass']} passed, {summ['fail']} failed, {summ['n/a']} not applicable"),
                 ("run", f"{_e(doc['run_at'])} (run {_e(rec['rig']['run'])})"),
                 ("gateway under test", f"{_e(gw['id'])} ({_e(gw['mode'])}), version {_e(gw['version'] or '?')}, "
                                        f"boots {len(gw['boot_ids'])}"),
                 ("rig", f"gridedge HIL rig {_e(rec['rig']['version'])}, Python {_e(rec['rig']['python'])}"),
                 ("scenario file", f"{_e(sc.source)}, sha256 <code>{_e(sc.sha256)}</code>"),
                 ("raw data", f"{_e(doc['raw']['file'])}, sha256 <code>{_e(doc['raw']['sha256'])}</code>"),
                 ("time", f"scenario {sc.duration_s:g} s at {sc.speed:g}x = {sc.duration_s / sc.speed:.0f} s of "
                          "wall-clock time; every figure below is wall-clock time"),
                 ("accuracy", f"device states sampled every 0.1 s; the rig's loop was late by at most "
                              f"{rec['lag_s'] * 1000:.0f} ms, timeline events by {rec['late_events_s'] * 1000:.0f} ms"),
             )),
             "</table>", "<h2>Verdicts</h2>", _verdict_table(verdicts)]
    if why_no_plots:
        parts.append(f"<p><b>Plots left out: {_e(why_no_plots)}.</b></p>")
    for title, caption, png in plots:
        parts.append(f"<h2>{_e(title)}</h2><p class='small'>{_e(caption)}</p>"
                     f"<img alt='{_e(title)}' src='data:image/png;base64,{png}'>")
    parts += [_commands_table(rec), _faults_table(rec), _streams_table(rec), _glossary(), "</body></html>"]
    return "\n".join(parts)


def _verdict_table(verdicts: list[Verdict]) -> str:
    rows = ["<table><tr><th>check</th><th>kind</th><th>initial</th><th>target</th><th>steady state</th>"
            "<th>figure</th><th>accuracy</th><th>pass band</th><th>limit</th><th>verdict</th><th>how / why</th></tr>"]
    for v in verdicts:
        band = "" if v.band is None else " .. ".join("" if b is None else f"{b:.4g}" for b in v.band)
        cls = {"pass": "pass", "fail": "fail"}.get(v.verdict, "na")
        rows.append(f"<tr class='{cls}'><td><b>{_e(v.id)}</b><br><span class='small'>{_e(v.title)}</span></td>"
                    f"<td>{_e(v.kind)}</td><td>{_num(v.initial)}</td><td>{_num(v.target)}</td>"
                    f"<td>{_num(v.steady)}</td><td><b>{_num(v.figure, v.unit)}</b></td>"
                    f"<td>{_num(v.accuracy)}</td><td>{_e(band)}</td><td>{_e(v.limit)}</td>"
                    f"<td><b>{_e(v.verdict.upper())}</b></td><td class='small'>{_e(v.reason)}</td></tr>")
    return "\n".join(rows) + "</table>"


def _commands_table(rec: dict) -> str:
    rows = ["<h2>Timeline</h2><table><tr><th>at (scenario)</th><th>message</th><th>sent</th><th>issuer</th>"
            "<th>cmd_id</th><th>results (status: reason)</th></tr>"]
    items = [(c["at_s"], c) for c in rec["commands"]] + [(n["at_s"], n) for n in rec["notes"]]
    for at, it in sorted(items, key=lambda x: x[0]):
        if "cmd_id" not in it:
            rows.append(f"<tr><td>{at:g} s</td><td>{_e(it.get('info') or 'note')}</td><td colspan=4>"
                        f"{_e(it['text'])}</td></tr>")
            continue
        res = "<br>".join(f"{_e(r['status'])}{': ' + _e(r['reason']) if r['reason'] else ''}"
                          for r in rec["results"] if r["cmd_id"] == it["cmd_id"])
        label = f"{it['info'] + ': ' if it.get('info') else ''}{it['type']} {json.dumps(it['doc'].get('params', {}))}"
        rows.append(f"<tr><td>{at:g} s</td><td>{_e(label)}<br><span class='small'>{_e(it['text'])}</span></td>"
                    f"<td>{_e(time.strftime('%H:%M:%S', time.gmtime(it['t'] / S)))}</td><td>{_e(it['issuer'])}</td>"
                    f"<td><code>{_e(it['cmd_id'])}</code></td><td class='small'>{res}</td></tr>")
    return "\n".join(rows) + "</table>"


def _faults_table(rec: dict) -> str:
    if not rec["faults"]:
        return "<h2>Faults</h2><p>none</p>"
    rows = ["<h2>Faults</h2><table><tr><th>id</th><th>kind</th><th>target</th><th>at (scenario)</th>"
            "<th>lasted (wall)</th></tr>"]
    for f in rec["faults"]:
        lasted = f"{(f['t_off'] - f['t_on']) / S:.1f} s" if f["t_off"] else "to the end"
        rows.append(f"<tr><td>{_e(f['id'])}</td><td>{_e(f['kind'])}</td><td>{_e(f.get('device') or f.get('target'))}"
                    f"</td><td>{f['at_s']:g} s</td><td>{_e(lasted)}</td></tr>")
    return "\n".join(rows) + "</table>"


def _streams_table(rec: dict) -> str:
    rows = ["<h2>Streams</h2><table><tr><th>stream</th><th>first seq</th><th>last seq</th><th>received</th>"
            "<th>missing</th><th>duplicates</th><th>reused</th><th>out of order</th></tr>"]
    for name, st in rec["streams"].items():
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(st['first'])}</td><td>{_e(st['last'])}</td>"
                    f"<td>{st['received']}</td><td>{st['n_missing']}</td><td>{st['duplicates']}</td>"
                    f"<td>{len(st['reused'])}</td><td>{st['out_of_order']}</td></tr>")
    topics = ", ".join(f"{_e(k)}: {v}" for k, v in sorted(rec["topics"].items()))
    bad = rec.get("unreadable", 0)
    return "\n".join(rows) + (f"</table><p class='small'>Messages per topic: {topics}. Messages that did not follow "
                              f"the contract (JSON with the wrong fields or types): {bad}.</p>")


def _glossary() -> str:
    return ("<h2>How to read this</h2><ul class='small'>"
            "<li><b>figure</b>: what the rig measured for the check; <b>limit</b>: what the scenario requires; "
            "<b>accuracy</b>: how well the rig knows the figure; <b>pass band</b>: the limit widened by the accuracy. "
            "A check passes when its figure lies in its pass band.</li>"
            "<li><b>initial</b>: the device's power when the command was due; <b>target</b>: the power the command "
            "asked for (mean over its window); <b>steady state</b>: the mean power measured once settled.</li>"
            "<li><b>baseline</b>: what the device would have produced without the activation: for a PV inverter its "
            "available power, known to the rig from the simulated plant, not from the gateway.</li>"
            "<li>Times are measured at the devices (writes, power) and at the broker (messages) by the rig; the rig "
            "never reads the gateway's internals, so the same report comes from any gateway.</li></ul>")
