"""The plots of a run's report, on one time axis, scenario time, so the fault schedule, the activations and the
devices' response line up; a reviewer reads them without the code. matplotlib is a rig-only dependency (the `hil`
extra), imported only when drawing.
"""
from __future__ import annotations

import base64
import io

import numpy as np

from .scenario import Scenario

__all__ = ["plots", "plots_available"]

S = 1e9
STATUS_COLOURS = {"accepted": "#9ecae1", "scheduled": "#fdd49e", "active": "#31a354", "completed": "#bdbdbd",
                  "terminated": "#756bb1", "cancelled": "#969696", "expired": "#fc9272", "rejected": "#de2d26",
                  "failed": "#a50f15"}
LIGHT_COLOURS = {"green": "#74c476", "amber": "#fec44f", "red": "#fb6a4a"}  # a traffic light while in force


def plots_available() -> str | None:
    """None when matplotlib can draw; else why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'gridedge[hil]')"
    return None


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


def plots(sc: Scenario, rec: dict) -> list[tuple[str, str, str]]:
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
