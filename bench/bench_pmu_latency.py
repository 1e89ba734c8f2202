"""PMU event latency (docs/PERFORMANCE.md, "PMUs"): from the PMU time stamp of the frame that shows an event to the
event's arrival at the head-end, through the whole rig: the PMU simulator (frames sent at the instants they are
stamped with), the agent as a real process (decode, detection, the outbox with durability "full", the uplink), the
real TLS broker, the DSO simulator's subscription. The head-end's arrival time is its monotonic receive time turned
into UTC; the simulator and the agent share this machine's clock, so the figure needs no clock alignment.

Run: .venv/bin/python bench/bench_pmu_latency.py [--events 20]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gridedge.hil.pmu_sim import PmuSim, Signal, config, station
from gridedge.hil.rig import Rig
from measure import describe  # bench/measure.py: the script's folder is on sys.path

DEVICE = """\
[[devices]]
id = "pmu1"
driver = "c37118"
host = "127.0.0.1"
port = {port}
pmu_id = 7
v_nom_v = 230.0

[devices.events]
sag_pu = 0.9
before_s = 0.2
after_s = 0.2
holdoff_s = 0.5
"""


async def run(n: int, workdir: Path) -> list[float]:
    sig = Signal(f_nom=50.0)
    async with PmuSim(config(7, 50, [station("FEEDER1", 7)]), sig, udp_port=None) as sim:
        async with Rig(workdir, flex=DEVICE.format(port=sim.port)) as rig:
            dso = rig.dso
            await dso.wait_for(lambda: any(s.topic.endswith("/telemetry") and b"pmu1" in s.raw
                               for s in dso.seen), 30, "PMU telemetry")
            for k in range(n):
                sig.sag(0.5, 0.1)
                await dso.wait_for(lambda: sum(s.topic == rig.prefix + "event" for s in dso.seen) > k, 15, "event")
                await asyncio.sleep(1.0)                    # past the hold-off: the next sag is a new event
            mono_to_wall = time.time_ns() - time.monotonic() * 1e9
            return [(s.t * 1e9 + mono_to_wall - s.doc["t"]) / 1e6 for s in dso.seen if s.topic == rig.prefix + "event"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20)
    args = ap.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as d:
        ms = asyncio.run(run(args.events, Path(d)))
    print(f"{len(ms)} events, frame time stamp -> head-end: median {statistics.median(ms):.1f} ms, "
          f"max {max(ms):.1f} ms, min {min(ms):.1f} ms")


if __name__ == "__main__":
    main()
