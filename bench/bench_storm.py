"""Fleet storms on loopback (issue 17): N simulated gateways (hil/fleet_sim.py: the agent's own outbox, publisher
and MQTT client each, one client certificate each) on one mosquitto with TLS and the per-gateway ACL.

Measures: the time to issue the certificates; the memory per simulated gateway and the CPU a gateway costs in
steady state (hence gateways per simulator core); then the broker restarts (SIGTERM, an outage of --outage-s,
start) and it measures the time until every gateway is back, until every backlog is drained and the head-end has
seen every seq, and the broker's accepted connections per second (its log) and messages per second (the
head-end). --no-jitter: the reconnect back-off without its jitter (the comparison; gridedge always jitters).

Run: .venv/bin/python bench/bench_storm.py --gateways 1000 [--no-jitter] [--protocol 3.1.1]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path

from gridedge.hil.acl import fleet_acl, gateway_patterns
from gridedge.hil.broker import Mosquitto
from gridedge.hil.fleet_sim import Fleet, HeadEnd, connections_per_second
from gridedge.hil.pki import make_pki
from gridedge.hil.rig import HEADEND_CN
from gridedge.mqtt import tls_context


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def storm(args, work: Path) -> dict:
    pki = make_pki(work / "pki")
    out: dict = {}
    with Mosquitto(work / "broker", pki, acl=fleet_acl({}, {HEADEND_CN: None}), acl_patterns=gateway_patterns()) as mosq:
        head = HeadEnd(mosq.url, tls_context(pki.ca_cert, *pki.client(HEADEND_CN)), HEADEND_CN)
        await head.start()
        rss0 = rss_mb()
        fleet = Fleet(work / "fleet", mosq.url, pki, args.gateways, beat_s=args.beat_s, protocol=args.protocol,
                      backfill_rate=args.backfill_rate, backfill_jitter_s=args.backfill_jitter_s,
                      jitter=not args.no_jitter)
        t0 = time.monotonic()
        await fleet.start(600)
        out["certificates_s"] = fleet.certificates_s
        out["first_connect_s"] = time.monotonic() - t0 - fleet.certificates_s
        await asyncio.sleep(5)
        c0, w0 = cpu_s(), time.monotonic()
        await asyncio.sleep(args.steady_s)
        out["steady_cpu_per_wall"] = (cpu_s() - c0) / (time.monotonic() - w0)
        out["rss_per_gateway_kb"] = (rss_mb() - rss0) * 1024 / args.gateways

        await asyncio.to_thread(mosq.stop)
        await fleet.wait(lambda: fleet.connected() == 0, 120, "every gateway saw the broker go")
        await asyncio.sleep(args.outage_s)
        stored = fleet.backlog(args.backlog_s) if args.backlog_s else 0
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        received0 = head.received
        t_back = time.monotonic()
        await asyncio.to_thread(mosq.start)
        out["all_back_s"] = await fleet.wait(lambda: fleet.connected() == args.gateways, 900, "every gateway back")
        fleet.beating = False
        await fleet.wait(lambda: fleet.pending() == 0, 3600, "every outbox drained", poll_s=1.0)
        last = {gw.gateway_id: gw.outbox.stats()["next_seq"]["telemetry"] - 1 for gw in fleet.gateways}
        await fleet.wait(lambda: all(head.seen(g) >= s for g, s in last.items()), 600, "head-end saw every seq")
        out["drained_s"] = time.monotonic() - t_back
        out["backlog_messages"] = stored
        per_s = connections_per_second(mosq.log_path, since)
        out["peak_connects_per_s"] = max(per_s.values()) if per_s else 0
        out["connect_seconds"] = len(per_s)
        msgs = [n for t, n in head.per_second.items() if t >= int(time.time() - out["drained_s"] - 1)]
        out["peak_messages_per_s"] = max(msgs) if msgs else 0
        out["messages_after_restart"] = head.received - received0
        missing = sum(len(head.audit.report(g, "telemetry").missing) for g in fleet.ids)
        out["missing_seqs"] = missing
        await fleet.stop()
        await head.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gateways", type=int, default=1000)
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument("--beat-s", type=float, default=1.0, help="telemetry interval of every gateway, s")
    p.add_argument("--steady-s", type=float, default=20.0, help="steady-state window for the CPU figure, s")
    p.add_argument("--outage-s", type=float, default=5.0, help="broker down this long, s")
    p.add_argument("--backlog-s", type=float, default=0.0,
                   help="also give every gateway the backlog of an outage this long (3600: an hour), s")
    p.add_argument("--backfill-rate", type=float, default=20.0, help="uplink.backfill_rate (shipped: 20)")
    p.add_argument("--backfill-jitter-s", type=float, default=30.0, help="uplink.backfill_jitter_s (shipped: 30)")
    p.add_argument("--no-jitter", action="store_true", help="reconnect back-off without jitter (comparison only)")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket and three SQLite files per gateway
    with tempfile.TemporaryDirectory() as d:
        out = asyncio.run(storm(args, Path(d)))
    load = os.getloadavg()
    print(f"{args.gateways} gateways, MQTT {args.protocol}, jitter {'off' if args.no_jitter else 'on'}, "
          f"load average before/after {load[2]:.2f}/{load[0]:.2f}")
    for k, v in out.items():
        print(f"  {k:26s} {v:.2f}" if isinstance(v, float) else f"  {k:26s} {v}")
    cores = out["steady_cpu_per_wall"]
    if cores > 0:
        print(f"  {'gateways_per_core':26s} {args.gateways / cores:.0f} (at one message per {args.beat_s} s each)")


if __name__ == "__main__":
    main()
