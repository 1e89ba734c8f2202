"""Fleet storms on loopback (issue 17): N simulated gateways (hil/fleet_sim.py: the agent's own outbox, publisher
and MQTT client each, one client certificate each) on one mosquitto with TLS and the per-gateway ACL.

Measures: the time to issue the certificates; the memory per simulated gateway and the CPU a gateway costs in
steady state (hence gateways per simulator core; the fleet runs in processes of --per-process gateways,
hil/fleet_sim.py MAX_PER_PROCESS says why); then the broker restarts (SIGTERM, an outage of --outage-s,
start) and it measures the time until every gateway is back, until every backlog is drained and the head-end has
seen every seq, and the broker's accepted connections per second (its log) and messages per second (the
head-end). --no-jitter: the reconnect back-off without its jitter (the comparison; gridedge always jitters).

Run: .venv/bin/python bench/bench_storm.py --gateways 1000 [--no-jitter] [--protocol 3.1.1]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

from gridedge.hil.acl import fleet_acl, gateway_patterns
from gridedge.hil.broker import Mosquitto
from gridedge.hil.fleet_shards import ShardedFleet
from gridedge.hil.fleet_sim import MAX_PER_PROCESS, HeadEnd, connections_per_second
from gridedge.hil.pki import make_pki
from gridedge.hil.rig import HEADEND_CN
from gridedge.mqtt import tls_context


async def storm(args, work: Path) -> dict:
    pki = make_pki(work / "pki")
    out: dict = {}
    # The one head-end consumer must not be the limit: mosquitto's default keeps 1000 messages for a client that is
    # behind and drops the rest (it did, in a 1000-gateway storm: docs/fleet.md, shared subscriptions).
    with Mosquitto(work / "broker", pki, acl=fleet_acl({}, {HEADEND_CN: None}), acl_patterns=gateway_patterns(),
                   settings=[f"max_queued_messages {args.max_queued}"]) as mosq:
        head = HeadEnd(mosq.url, tls_context(pki.ca_cert, *pki.client(HEADEND_CN)), HEADEND_CN)
        await head.start()
        fleet = ShardedFleet(work / "fleet", mosq.url, pki, args.gateways, per_process=args.per_process,
                             beat_s=args.beat_s, protocol=args.protocol, backfill_rate=args.backfill_rate,
                             backfill_jitter_s=args.backfill_jitter_s, jitter=not args.no_jitter)
        t0 = time.monotonic()
        await fleet.start()
        out["certificates_s"] = fleet.certificates_s
        out["first_connect_s"] = time.monotonic() - t0 - fleet.certificates_s
        await asyncio.sleep(5)
        u0, w0 = await fleet.call("usage"), time.monotonic()
        await asyncio.sleep(args.steady_s)
        u1, wall = await fleet.call("usage"), time.monotonic() - w0
        out["shards"] = len(u1)
        out["steady_cpu_per_wall"] = sum(b[1] - a[1] for a, b in zip(u0, u1)) / wall
        out["rss_per_gateway_kb"] = sum(b[0] - b[2] for b in u1) * 1024 / args.gateways  # less each worker's Python

        await asyncio.to_thread(mosq.stop)
        await fleet.wait(fleet.connected, 0, 120, "every gateway saw the broker go")
        await asyncio.sleep(args.outage_s)
        stored = sum(await fleet.call("backlog", args.backlog_s)) if args.backlog_s else 0
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        received0 = head.received
        t_back = time.monotonic()
        await asyncio.to_thread(mosq.start)
        out["all_back_s"] = await fleet.wait(fleet.connected, args.gateways, 900, "every gateway back")
        await fleet.call("beating", False)
        await fleet.wait(fleet.pending, 0, 3600, "every outbox drained", poll_s=1.0)
        last = {g: s for shard in await fleet.call("last_seqs") for g, s in shard.items()}
        end = time.monotonic() + 300
        while not all(head.seen(g) >= s for g, s in last.items()) and time.monotonic() < end:
            await asyncio.sleep(0.5)  # gives up after 300 s: what is missing then is counted in missing_seqs
        out["drained_s"] = time.monotonic() - t_back
        out["backlog_messages"] = stored
        per_s = connections_per_second(mosq.log_path, since)
        out["peak_connects_per_s"] = max(per_s.values()) if per_s else 0
        out["connect_seconds"] = len(per_s)
        out["peak_messages_per_s"] = max((n for t, n in head.per_second.items() if t >= int(time.time() -
                                                                                          out["drained_s"])), default=0)
        out["messages_after_restart"] = head.received - received0
        out["broker_drop_warnings"] = mosq.log_path.read_text(errors="replace").count("messages are being dropped")
        out["missing_seqs"] = sum(s - head.seen(g) + len(head.audit.report(g, "telemetry").missing)
                                  for g, s in last.items())
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
    p.add_argument("--max-queued", type=int, default=1_000_000,
                   help="mosquitto max_queued_messages (its default, 1000, drops for a head-end that falls behind)")
    p.add_argument("--per-process", type=int, default=MAX_PER_PROCESS, help="gateways per simulator process")
    p.add_argument("--no-jitter", action="store_true", help="reconnect back-off without jitter (comparison only)")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # a storm logs a warning per gateway and failure kind
    t_start = time.monotonic()
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
    print(f"  {'wall_s':26s} {time.monotonic() - t_start:.0f}")


if __name__ == "__main__":
    main()
