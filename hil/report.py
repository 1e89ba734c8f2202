"""The report of a run: one self-contained HTML file (plots embedded as PNG), report.json with every figure the
verdicts used, and raw.json, the recording whose hash both carry.

The plots share one time axis, scenario time, so the fault schedule, the activations and the devices' response
line up. matplotlib is a rig-only dependency (the `hil` extra); without it the report is written without plots
and says why.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .scenario import Scenario
from .scenario_run import raw_sha256
from .verdict import Verdict

__all__ = ["write_report", "plots_available", "REPORT_FORMAT"]

REPORT_FORMAT = "gridedge.hil.report/1"
S = 1e9
STATUS_COLOURS = {"accepted": "#9ecae1", "scheduled": "#fdd49e", "active": "#31a354", "completed": "#bdbdbd",
                  "terminated": "#756bb1", "cancelled": "#969696", "expired": "#fc9272", "rejected": "#de2d26",
                  "failed": "#a50f15"}
LIGHT_COLOURS = {"green": "#74c476", "amber": "#fec44f", "red": "#fb6a4a"}  # a traffic light while in force
VERDICT_COLOURS = {"pass": "#2ca25f", "fail": "#de2d26", "n/a": "#969696"}


def plots_available() -> str | None:
    """None when matplotlib can draw; else why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'gridedge[hil]')"
    return None


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
    plots = [] if why else _plots(sc, rec)
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


# ---------------------------------------------------------------- plots

def _x(rec: dict, t_ns) -> np.ndarray:
    return (np.asarray(t_ns, dtype=float) - rec["t0"]) / S * rec["scenario"]["speed"]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _time_axis(ax, rec: dict) -> None:
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    duration = rec["scenario"]["duration_s"]
    if duration >= 3 * 3600:
        step_h = next(h for h in (1, 2, 3, 4, 6, 12, 24, 48) if duration / (h * 3600) <= 12)
        ax.xaxis.set_major_locator(MultipleLocator(step_h * 3600))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{int(x // 3600)}:{int(x % 3600 // 60):02d}"))
        ax.set_xlabel("scenario time (h:mm)")
    else:
        ax.set_xlabel("scenario time (s)")


def _shade_faults(ax, rec: dict) -> None:
    end = max(p["t"] for p in rec["phases"])
    for f in rec["faults"]:
        a, b = _x(rec, [f["t_on"], f["t_off"] or end])
        ax.axvspan(a, max(b, a + 1e-3 * rec["scenario"]["duration_s"]), color="#fcbba1", alpha=0.35, lw=0)


def _plots(sc: Scenario, rec: dict) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) of each plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    power_devs = [d for d, i in rec["devices"].items() if i["kind"] != "real" or d in rec["telemetry"]]
    flex = bool(rec["records"].get("verification"))
    rows = len(power_devs) + flex + 4
    fig, axes = plt.subplots(rows, 1, sharex=True, figsize=(11, 2.1 * rows),
                             gridspec_kw={"height_ratios": [3] * (len(power_devs) + flex) + [2, 2, 2.5, 1.5]})
    for ax, dev in zip(axes, power_devs):
        _power_panel(ax, rec, dev)
    if flex:
        _flex_panel(axes[len(power_devs)], rec)
    _grid_panels(axes[-4], axes[-3], rec)
    _activation_panel(axes[-2], rec)
    _fault_panel(axes[-1], rec)
    for ax in axes:
        _shade_faults(ax, rec)
        ax.grid(alpha=0.3)
    _time_axis(axes[-1], rec)
    speed = rec["scenario"]["speed"]
    caption = ("Per device: the power measured at the device, the set-point in force there (what the gateway wrote), "
               "the power the commands asked for, and the baseline (what the device would have made without them). "
               "Below: the voltage and frequency at each connection point, each command's states as its results "
               "arrived, and the fault schedule. Red bands mark faults in every panel. "
               + (f"Scenario time runs {speed:g} times faster than the wall clock." if speed != 1 else ""))
    out = [("Power, grid, activations and faults", caption, _png(fig))]
    out.append(("Latency", "Left: from each device read to its arrival at the head-end (live telemetry; backfill "
                "left out). Right: from publishing each command to its first result.", _latency_png(rec)))
    out.append(("Completeness per stream", "Per stream, the share of seqs received and missing between the first "
                "seen and the last issued (after de-duplication by msg_id), and the counts.", _completeness_png(rec)))
    return out


def _power_panel(ax, rec: dict, dev: str) -> None:
    info = rec["devices"][dev]
    sr = rec["samples"].get(dev)
    if sr:
        x = _x(rec, sr["t"])
        ax.plot(x, sr["W"], color="#08519c", lw=1.4, label="P measured", zorder=3)
        if any(v is not None for v in sr["avail_w"]):
            ax.plot(x, [np.nan if v is None else v for v in sr["avail_w"]], color="#fd8d3c", lw=1.2, ls=":",
                    label="baseline (available)", zorder=2)
        sp = [np.nan if v is None else v for v in sr["setpoint_w"]]
        if not np.all(np.isnan(sp)):
            ax.step(x, sp, where="post", color="#e6550d", lw=1.2, ls="--", label="set-point at the device",
                    zorder=4)
    tel = rec["telemetry"].get(dev)
    if tel and tel["t"]:
        seen = [np.nan if v is None else v for v in tel["W"]]
        if sr:
            ax.plot(_x(rec, tel["t"]), seen, ".", ms=2, color="#636363", label="P in the gateway's telemetry",
                    zorder=5)
        else:
            ax.plot(_x(rec, tel["t"]), seen, color="#08519c", lw=1.4, label="P (gateway's telemetry)")
    for c in rec["commands"]:
        if c["type"] in ("limit_active_power", "set_active_power", "prequalification_test"):
            _asked(ax, rec, c, dev, info)
    ax.set_ylabel(f"{dev}\n{info['kind']}, W")
    if ax.get_legend_handles_labels()[0]:
        _legend(ax)


def _legend(ax, **kw) -> None:
    """Beside the panel, never over the data it explains."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0, fontsize=7, **kw)


def _asked(ax, rec: dict, c: dict, dev: str, info: dict) -> None:
    """What a command asked of this device, as a level over its window (a step test: on the device its checks
    name, the rig does not know the gateway's resources)."""
    doc = c["doc"]
    if doc.get("device") not in (None, dev) or info["kind"] == "meter":
        return
    p = doc.get("params", {})
    if c["type"] == "limit_active_power":
        if info["kind"] != "inverter" or doc.get("device") is None and not info["writable"]:
            return
        level = p["limit_pct"] / 100 * (info["w_max"] or 0)
    elif c["type"] == "prequalification_test":
        if dev not in c.get("devices", ()):
            return
        level = p["w"]
    else:
        if info["kind"] != "battery" and doc.get("device") != dev:
            return
        level = p["w"]
    final = [r["t"] for r in rec["results"] if r["cmd_id"] == c["cmd_id"]
             and r["status"] in ("completed", "terminated", "cancelled", "failed", "expired", "rejected")]
    end = min(final) if final else c["due"] + int(p.get("duration_s", 0) * S)
    a, b = _x(rec, [c["due"], end])
    ax.hlines(level, a, b, colors="#31a354", lw=6, alpha=0.35, label=f"asked: {c['entry'] or c['type']}", zorder=1)


def _flex_panel(ax, rec: dict) -> None:
    """What the gateway itself reported during activations (verification: the real-time INFO 7 of the balancing
    use case): the pool's measured power, its baseline and the activated power."""
    ver = sorted(rec["records"].get("verification", []), key=lambda r: r["t"])
    for key, colour, label in (("measured_w", "#08519c", "measured"), ("baseline_w", "#fd8d3c", "baseline"),
                               ("activated_w", "#31a354", "activated")):
        ys = [r["doc"][key] if isinstance(r["doc"].get(key), (int, float)) else np.nan for r in ver]
        none = all(np.isnan(ys))
        ax.plot(_x(rec, [r["t"] for r in ver]), ys, "o-", ms=3, lw=0.8, color=colour,
                label=label + (" (none reported)" if none else ""))
    ax.set_ylabel("gateway's\nverification, W")
    _legend(ax)


def _grid_panels(ax_v, ax_f, rec: dict) -> None:
    for dev, sr in rec["samples"].items():
        x = _x(rec, sr["t"])
        ax_v.plot(x, sr["v_pu"], lw=1, label=dev)
        ax_f.plot(x, sr["hz"], lw=1, label=dev)
    for lim in (0.9, 1.1):
        ax_v.axhline(lim, color="#de2d26", lw=0.8, ls="--")
    ax_v.set_ylabel("voltage, pu")
    ax_f.set_ylabel("frequency, Hz")
    if rec["samples"]:
        _legend(ax_v)
    ax_f.get_yaxis().get_major_formatter().set_useOffset(False)


def _activation_panel(ax, rec: dict) -> None:
    end = _x(rec, [max(p["t"] for p in rec["phases"])])[0]
    labels = []
    for row, c in enumerate(rec["commands"]):
        res = [r for r in rec["results"] if r["cmd_id"] == c["cmd_id"]]
        x0 = _x(rec, [c["t"]])[0]
        ax.plot([x0], [row], marker="|", color="black", ms=10)
        for r, nxt in zip(res, res[1:] + [None]):
            a = _x(rec, [r["t"]])[0]
            b = _x(rec, [nxt["t"]])[0] if nxt else (end if r["status"] in ("active", "scheduled", "accepted") else a)
            light = c["doc"].get("params", {}).get("colour") if c["type"] == "traffic_light" else None
            colour = LIGHT_COLOURS.get(light) if r["status"] == "active" else None
            ax.barh(row, max(b - a, 0.004 * rec["scenario"]["duration_s"]), left=a, height=0.6,
                    color=colour or STATUS_COLOURS.get(r["status"], "#636363"))
            if colour and b - a > 0.05 * rec["scenario"]["duration_s"]:
                ax.text((a + b) / 2, row, f"{light} in force", ha="center", va="center", fontsize=6)
        labels.append(f"{c['info'] + ' ' if c.get('info') else ''}{c['entry'] or c['type']}")
    groups: list[tuple[float, list[str]]] = []          # notes close together share one label
    for n in sorted(rec["notes"], key=lambda n: n["t"]):
        x = _x(rec, [n["t"]])[0]
        ax.axvline(x, color="#636363", lw=0.8, ls=":")
        if groups and x - groups[-1][0] < 0.03 * rec["scenario"]["duration_s"]:
            groups[-1][1].append(n.get("info") or "note")
        else:
            groups.append((x, [n.get("info") or "note"]))
    for x, names in groups:
        ax.text(x, 0.97, " " + ", ".join(dict.fromkeys(names)), fontsize=6, rotation=90, va="top",
                transform=ax.get_xaxis_transform())
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(-0.7, max(len(labels), 1) - 0.3)
    ax.invert_yaxis()
    from matplotlib.patches import Patch

    shown = {r["status"] for r in rec["results"]}
    handles = [Patch(color=c, label=s) for s, c in STATUS_COLOURS.items() if s in shown]
    if handles:
        _legend(ax, handles=handles, ncol=2 if len(handles) > 4 else 1)
    ax.set_ylabel("commands")


def _fault_panel(ax, rec: dict) -> None:
    end = max(p["t"] for p in rec["phases"])
    labels = []
    for row, f in enumerate(rec["faults"]):
        a, b = _x(rec, [f["t_on"], f["t_off"] or end])
        ax.barh(row, max(b - a, 0.004 * rec["scenario"]["duration_s"]), left=a, height=0.6, color="#de2d26")
        labels.append(f"{f['kind']}{' ' + f['device'] if f.get('device') else ''}")
    if not labels:
        ax.text(0.5, 0.5, "no faults in this scenario", transform=ax.transAxes, ha="center", va="center",
                fontsize=8, color="#636363")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(-0.7, max(len(labels), 1) - 0.3)
    ax.invert_yaxis()
    ax.set_ylabel("faults")


def _latency_png(rec: dict) -> str:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3))
    lat = [(e["t"] - e["t_read"]) / 1e6 for e in rec["latency"] if not e["backfill"]]
    a.hist(lat or [0], bins=40, color="#3182bd")
    a.set_xlabel("device read to head-end, ms")
    a.set_ylabel("reads")
    cmd = []
    for c in rec["commands"]:
        first = next((r for r in rec["results"] if r["cmd_id"] == c["cmd_id"]), None)
        if first:
            cmd.append((first["t"] - c["t"]) / 1e6)
    b.hist(cmd or [0], bins=20, color="#31a354")
    b.set_xlabel("command to its first result, ms")
    b.set_ylabel("commands")
    return _png(fig)


def _completeness_png(rec: dict) -> str:
    import matplotlib.pyplot as plt

    streams = rec["streams"]
    fig, ax = plt.subplots(figsize=(11, 0.5 + 0.45 * max(len(streams), 1)))
    names = list(streams)
    got = np.array([streams[n]["received"] for n in names], dtype=float)
    miss = np.array([streams[n]["n_missing"] for n in names], dtype=float)
    total = np.maximum(got + miss, 1)
    ax.barh(names, 100 * got / total, color="#2ca25f", label="received")
    ax.barh(names, 100 * miss / total, left=100 * got / total, color="#de2d26", label="missing")
    for i in range(len(names)):
        ax.text(101, i, f"{int(got[i])} of {int(got[i] + miss[i])} ({100 * got[i] / total[i]:.1f} %)",
                va="center", fontsize=8)
    ax.set_xlim(0, 125)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("% of the seqs issued (first seen to last issued)")
    _legend(ax)
    return _png(fig)


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
