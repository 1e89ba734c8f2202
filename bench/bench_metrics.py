"""What the local metrics endpoint (edge/fleet/metrics.py) costs: the CPU of a process that serves it while nobody
scrapes (the issue's budget: under 0.1 % of a core), and the CPU of one scrape, so the cost at a Prometheus scrape
interval follows. Prints a table for docs/PERFORMANCE.md.

The endpoint runs here with the agent's real parts it reads (DeviceHealth fed with readings, the SQLite outbox) in
a process of its own, so its CPU time is the endpoint's alone; the agent's other tasks are not in it.

Run: .venv/bin/python bench/bench_metrics.py [--idle-s 30] [--devices 32] [--scrapes 200]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from gridedge.core.model import Sample
from gridedge.fleet.device_health import DeviceHealth
from gridedge.fleet.metrics import MetricsEndpoint
from gridedge.outbox import Outbox
from measure import describe  # bench/measure.py: the script's folder is on sys.path


def stub_agent(store: Path, devices: int) -> SimpleNamespace:
    """The attributes the collector reads, with the real DeviceHealth and Outbox behind them."""
    ids = [f"meter{i:02d}" for i in range(devices)]
    health = DeviceHealth({d: object() for d in ids})
    for _ in range(3):
        health.observe([Sample(f"{d}/W", time.time_ns(), 1000.0) for d in ids])
    outbox = Outbox(store / "outbox.db", gateway_id="gw-bench", durability="normal")
    connected = asyncio.Event()
    connected.set()
    return SimpleNamespace(gateway_id="gw-bench", config=SimpleNamespace(sha256="0" * 64), device_health=health,
                           outbox=outbox, mqtt=SimpleNamespace(connected=connected), certs=[],
                           control=SimpleNamespace(cycles=1000, last_cycle_s=0.0004),
                           gate=SimpleNamespace(counts={"accepted": 10, "rejected": 1}))


def cpu_s() -> float:
    """This process's CPU time, every thread, at ns resolution (os.times() counts 10-ms ticks)."""
    return time.process_time()


async def measure(idle_s: float, devices: int, scrapes: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        endpoint = MetricsEndpoint(stub_agent(Path(d), devices), "127.0.0.1", 0)
        await endpoint.start()
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())  # warm up
        # idle: the loop with the listening endpoint and nothing else, as in the agent between scrapes
        c0, t0 = cpu_s(), time.monotonic()
        await asyncio.sleep(idle_s)
        idle = (cpu_s() - c0) / (time.monotonic() - t0)
        # scrapes: the page built from the agent's figures and served (client and server both in this process)
        c0 = cpu_s()
        for _ in range(scrapes):
            await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        per_scrape = (cpu_s() - c0) / scrapes
        await endpoint.close()
        return {"idle": idle, "per_scrape": per_scrape, "page_bytes": len(page)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--scrapes", type=int, default=200)
    args = ap.parse_args()
    r = asyncio.run(measure(args.idle_s, args.devices, args.scrapes))
    print(describe())
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("| what | figure |")
    print("|---|---|")
    print(f"| idle, {args.idle_s:g} s without a scrape | {r['idle'] * 100:.4f} % of a core |")
    print(f"| one scrape, {args.devices} devices ({r['page_bytes']} bytes; client included) | "
          f"{r['per_scrape'] * 1e3:.2f} ms CPU |")
    for interval in (15, 60):
        print(f"| scraped every {interval} s | {r['per_scrape'] / interval * 100:.4f} % of a core |")


if __name__ == "__main__":
    main()
