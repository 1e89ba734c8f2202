"""Sustained outbox throughput: append_many + pending + ack cycles, as the uplink runs them.

Each record is a telemetry message carrying 50 samples (~4 kB of JSON). One cycle = one append_many of
`batch` records (one transaction), one pending() read and one ack() (a second transaction), so with
durability "full" every cycle pays two fsyncs. CPU is process time (user + system) of this process.

    .venv/bin/python bench/bench_outbox.py [--seconds 3] [--dir DIR]

Put --dir on the storage the gateway uses (an SD card or eMMC behaves very differently from an SSD).
"""
from __future__ import annotations

import argparse
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

from gridedge import contract, telemetry
from gridedge.core.model import Sample
from gridedge.outbox import Outbox

SAMPLES_PER_RECORD = 50


def body(t0: int) -> telemetry.Encoded:
    samples = [Sample(f"inv{i // 10}/P{i % 10}", t0, 1234.5 + i, "W") for i in range(SAMPLES_PER_RECORD)]
    return telemetry.body(contract.iso_utc(t0), telemetry.encode_samples(samples), SAMPLES_PER_RECORD)


def run(directory: Path, durability: str, batch: int, seconds: float) -> dict:
    path = directory / f"bench-{durability}-{batch}.db"
    item = ("telemetry", "gridedge/v2/gw-bench/telemetry", body(time.time_ns()), "telemetry")
    with Outbox(path, gateway_id="gw-bench", durability=durability) as ob:
        records = 0
        payload = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < seconds:
            recs = ob.append_many([item] * batch)
            out = ob.pending(batch)
            ob.ack(r.id for r in out)
            records += len(recs)
            payload += sum(len(r.payload) for r in recs)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        assert ob.stats()["count"] == 0
    for f in directory.glob(f"{path.name}*"):
        f.unlink()
    samples = records * SAMPLES_PER_RECORD
    return {"durability": durability, "batch": batch, "records_s": records / wall, "samples_s": samples / wall,
            "cpu_s_per_10k": cpu / samples * 10_000, "bytes_per_record": payload / records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each configuration")
    ap.add_argument("--dir", type=Path, default=None, help="directory for the store (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [run(Path(tmp), d, b, args.seconds) for d in ("full", "normal") for b in (1, 10, 50)]
    print(f"# {platform.machine()} {platform.python_implementation()} {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, {SAMPLES_PER_RECORD} samples/record, "
          f"~{rows[0]['bytes_per_record']:.0f} B/record")
    print(f"{'durability':<10} {'rec/txn':>7} {'records/s':>10} {'samples/s':>11} {'CPU s/10k samples':>18}")
    for r in rows:
        print(f"{r['durability']:<10} {r['batch']:>7} {r['records_s']:>10.0f} {r['samples_s']:>11.0f} "
              f"{r['cpu_s_per_10k']:>18.4f}")


if __name__ == "__main__":
    main()
