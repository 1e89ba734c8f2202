"""`gridedge status`: the metrics page of the running agent (edge/fleet/metrics.py), for a person on the gateway's
shell. It reads the same page Prometheus does, so what it prints and what the monitoring sees cannot differ.

Exit status: 0 all well; 2 something needs a look (the uplink is down, a device fails, a local edit, a
certificate within 30 days of its end); 1 no agent answers.
"""
from __future__ import annotations

import datetime as dt
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from ..core.text import escape

TIMEOUT_S = 5.0
MAX_PAGE_BYTES = 4 << 20
WARN_DAYS = 30


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:   # loopback: the agent's own endpoint
        return r.read(MAX_PAGE_BYTES).decode("utf-8")


def samples(page: str) -> dict[str, list[tuple[dict, float]]]:
    """Sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def _one(m, name: str, default: float = 0.0) -> float:
    return m[name][0][1] if m.get(name) else default


def _by_device(m, name: str) -> dict[str, float]:
    return {labels["device"]: v for labels, v in m.get(name, ())}


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render(m: dict, now: float | None = None) -> tuple[str, list[str]]:
    """The page as text for a person, and what needs a look."""
    now = time.time() if now is None else now
    look: list[str] = []
    info = m["gridedge_info"][0][0] if m.get("gridedge_info") else {}
    lines = [f"gridedge {info.get('version', '?')} on gateway {info.get('gateway', '?')}, up "
             f"{_ago(now - _one(m, 'gridedge_start_time_seconds', now)).removesuffix(' ago')}"]
    config = f"sha256 {info.get('config_sha256', '')[:12]}"
    config += f", version {info['config_version']}" if info.get("config_version") else ", not set by the head-end"
    if _one(m, "gridedge_config_local_edit"):
        config += "; EDITED ON THE GATEWAY since the head-end set it"
        look.append("the configuration was edited locally")
    lines.append(f"configuration  {config}")
    connected = bool(_one(m, "gridedge_uplink_connected"))
    if not connected:
        look.append("the uplink is down")
    lines.append(f"uplink         {'connected' if connected else 'NOT CONNECTED'}, "
                 f"{_one(m, 'gridedge_uplink_reconnects_total'):.0f} reconnects")
    lines.append(f"control        {_one(m, 'gridedge_control_cycles_total'):.0f} cycles, the last took "
                 f"{_one(m, 'gridedge_control_cycle_seconds') * 1000:.1f} ms")
    dropped = {labels["data_class"]: v for labels, v in m.get("gridedge_outbox_dropped_total", ()) if v}
    oldest = _one(m, "gridedge_outbox_oldest_age_seconds")
    lines.append(f"outbox         {_one(m, 'gridedge_outbox_messages'):.0f} messages, "
                 f"{_one(m, 'gridedge_outbox_bytes') / 1024:.1f} KiB"
                 + (f", oldest {_ago(oldest).removesuffix(' ago')}" if oldest else "")
                 + "; dropped: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(dropped.items())) or "none"))
    lines += _devices(m, now, look)
    certs = sorted(m.get("gridedge_certificate_expiry_timestamp_seconds", ()), key=lambda lv: lv[1])
    if certs:
        lines.append("certificates")
        for labels, t in certs:
            days = (t - now) / 86400
            end = dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d")
            flag = " EXPIRED" if days < 0 else " (soon)" if days < WARN_DAYS else ""
            if days < WARN_DAYS:
                look.append(f"certificate {labels['role']} ends {end}")
            lines.append(f"  {labels['role']:<28} {escape(labels['subject'], 40):<28} ends {end}, "
                         f"{days:.0f} days{flag}")
    commands = {labels["outcome"]: v for labels, v in m.get("gridedge_commands_total", ())}
    if commands:
        lines.append("commands       " + ", ".join(f"{k} {v:.0f}" for k, v in commands.items()))
    return "\n".join(lines), look


def _devices(m: dict, now: float, look: list[str]) -> list[str]:
    up, reads = _by_device(m, "gridedge_device_up"), _by_device(m, "gridedge_device_reads_total")
    if not reads:
        return ["devices        none configured"]
    errors, rate = _by_device(m, "gridedge_device_read_errors_total"), _by_device(m, "gridedge_device_poll_rate_hertz")
    last = _by_device(m, "gridedge_device_last_good_read_timestamp_seconds")
    breaker = {labels["device"]: labels["gridedge_device_breaker"]
               for labels, v in m.get("gridedge_device_breaker", ()) if v}
    out = ["devices", f"  {'id':<16} {'status':<8} {'rate/s':>7} {'reads':>8} {'errors':>7}  {'breaker':<9} last good"]
    for dev in sorted(reads):
        status = "ok" if up.get(dev) else "unknown" if not reads[dev] else "FAILING"
        if status != "ok":
            look.append(f"device {dev} is {status.lower()}")
        seen = _ago(now - last[dev]) if dev in last else "never"
        out.append(f"  {dev:<16} {status:<8} {rate.get(dev, 0):>7.2f} {reads[dev]:>8.0f} {errors.get(dev, 0):>7.0f}  "
                   f"{breaker.get(dev, '-'):<9} {seen}")
    return out


def main(args) -> int:
    if args.url:
        url = args.url
    else:
        from ..config import ConfigError, load_config

        try:
            m = load_config(args.config, check_files=False).fleet.metrics
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        if not m.port:
            print(f"{args.config}: fleet.metrics.port is 0: the agent has no status endpoint", file=sys.stderr)
            return 1
        url = f"http://{'[' + m.host + ']' if ':' in m.host else m.host}:{m.port}/metrics"
    try:
        page = fetch(url)
    except (OSError, urllib.error.URLError, UnicodeDecodeError) as exc:
        print(f"no agent answers at {url}: {escape(getattr(exc, 'reason', exc))}", file=sys.stderr)
        return 1
    try:
        text, look = render(samples(page))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        print(f"the answer at {url} is not gridedge's metrics page: {escape(exc)}", file=sys.stderr)
        return 1
    print(text)
    if look:
        print("needs a look: " + "; ".join(look))
    return 2 if look else 0
