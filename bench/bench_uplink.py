"""The uplink end to end: outbox (durable) -> Publisher -> mosquitto with TLS -> a counting subscriber.

Two measurements, each on a fresh broker and outbox:
  throughput  telemetry messages of --samples samples appended as fast as the publisher drains them, for
              --seconds; reports delivered samples/s, CPU s per 10,000 samples (this process: agent side,
              paho thread included; the subscriber and broker are separate processes), and peak RSS.
  drain       --stored-s seconds of stored telemetry (one message a second, as the agent writes it) are in the
              outbox when the connection comes up; reports the time until the subscriber has all of it, at
              --backfill-rate messages/s (the configured limit; default 20 as in the shipped config).

    .venv/bin/python bench/bench_uplink.py [--seconds 10] [--samples 50] [--stored-s 3600] [--backfill-rate 20]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path

from gridedge import contract, telemetry
from gridedge.hil.broker import Mosquitto
from gridedge.hil.pki import make_pki
from gridedge.core.model import Sample
from gridedge.mqtt import MqttClient, tls_context
from gridedge.outbox import Outbox
from gridedge.uplink import Publisher
from measure import describe  # bench/measure.py: the script's folder is on sys.path

PREFIX = "gridedge/v2/gw-bench/"


def body(n: int) -> telemetry.Encoded:
    """n values in blocks of 10 (ten points per device), as the agent encodes them."""
    t = time.time_ns()
    samples = [Sample(f"dev{i // 10}/P{i % 10}", t, 1000.0 + i, "W") for i in range(n)]
    return telemetry.body(contract.iso_utc(t), telemetry.encode_samples(samples), n)


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.samples = 0
        self.changed = asyncio.Event()

    async def consume(self, client: MqttClient) -> None:
        while True:
            msg = await client.messages.get()
            self.messages += 1
            self.samples += sum(len(b["v"]) for b in json.loads(msg.payload).get("blocks", ()))
            self.changed.set()

    async def wait_messages(self, n: int) -> None:
        while self.messages < n:
            self.changed.clear()
            await self.changed.wait()


async def setup(work: Path):
    pki = make_pki(work / "pki")
    broker = Mosquitto(work / "broker", pki)
    await asyncio.to_thread(broker.start)
    gw, sub = pki.client("gw-bench"), pki.client("counter")
    subscriber = MqttClient(broker.url, "counter", ssl_context=tls_context(pki.ca_cert, *sub), receive_maximum=65535,
                            inbox_limit=0)
    await subscriber.subscribe(PREFIX + "#")
    await subscriber.connect()
    counter = Counter()
    consumer = asyncio.create_task(counter.consume(subscriber))
    agent = MqttClient(broker.url, "gw-bench", ssl_context=tls_context(pki.ca_cert, *gw))
    return broker, subscriber, consumer, counter, agent


async def throughput(work: Path, seconds: float, samples: int, durability: str) -> dict:
    broker, subscriber, consumer, counter, agent = await setup(work)
    outbox = Outbox(work / "outbox.sqlite", gateway_id="gw-bench", durability=durability)
    await agent.connect()
    pub = Publisher(agent, outbox, PREFIX, backfill_jitter_s=0)
    task = asyncio.create_task(pub.run())
    template = body(samples)
    appended = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if outbox.stats()["count"] < 200:  # keep the publisher fed, as a busy agent would
            outbox.append_many([("telemetry", PREFIX + "telemetry", template, "telemetry")] * 10)
            appended += 10
            pub.notify()
        await asyncio.sleep(0)
    await counter.wait_messages(appended)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    task.cancel()
    await agent.close()
    await subscriber.close()
    consumer.cancel()
    outbox.close()
    await asyncio.to_thread(broker.stop)
    delivered = counter.samples
    return {"durability": durability, "messages": counter.messages, "samples_per_s": delivered / wall,
            "cpu_s_per_10k_samples": cpu / delivered * 10_000,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


async def drain(work: Path, stored_s: int, samples: int, rate: float) -> dict:
    broker, subscriber, consumer, counter, agent = await setup(work)
    outbox = Outbox(work / "outbox.sqlite", gateway_id="gw-bench", durability="normal")
    template = body(samples)
    for _ in range(0, stored_s, 100):
        outbox.append_many([("telemetry", PREFIX + "telemetry", template, "telemetry")] * min(100, stored_s))
    stored = outbox.stats()["count"]
    await agent.connect()
    pub = Publisher(agent, outbox, PREFIX, backfill_rate=rate, backfill_jitter_s=0)
    t0 = time.perf_counter()
    task = asyncio.create_task(pub.run())
    await counter.wait_messages(stored)
    elapsed = time.perf_counter() - t0
    task.cancel()
    await agent.close()
    await subscriber.close()
    consumer.cancel()
    outbox.close()
    await asyncio.to_thread(broker.stop)
    return {"stored_messages": stored, "backfill_rate": rate, "drain_s": elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--samples", type=int, default=50, help="samples per telemetry message")
    ap.add_argument("--stored-s", type=int, default=3600, help="seconds of stored telemetry (1 message/s)")
    ap.add_argument("--backfill-rate", type=float, default=20.0)
    ap.add_argument("--skip-drain", action="store_true")
    args = ap.parse_args()
    print(f"# {describe()}; mosquitto TLS on loopback; {args.samples} samples per message")
    print("| durability | messages | samples/s | CPU s / 10k samples | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for durability in ("full", "normal"):
        with tempfile.TemporaryDirectory() as d:
            r = asyncio.run(throughput(Path(d), args.seconds, args.samples, durability))
        print(f"| {durability} | {r['messages']} | {r['samples_per_s']:.0f} | {r['cpu_s_per_10k_samples']:.3f} | "
              f"{r['peak_rss_mib']:.0f} |", flush=True)
    if not args.skip_drain:
        with tempfile.TemporaryDirectory() as d:
            r = asyncio.run(drain(Path(d), args.stored_s, args.samples, args.backfill_rate))
        print(f"\ndrain: {r['stored_messages']} stored messages ({args.stored_s} s of telemetry) replayed at "
              f"{r['backfill_rate']:g} msg/s in {r['drain_s']:.1f} s")


if __name__ == "__main__":
    main()
