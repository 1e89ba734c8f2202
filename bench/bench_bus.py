"""Bus figures: the agent's own CPU time per Modbus request compared with the time the request spends on the wire,
for RTU at 9600 / 19200 / 115200 baud and for TCP; points per second per core polling 100 TCP devices; and the CPU
time of one SunSpec poll (every canonical point of the HIL inverter: 701, 702, 704 decoded) over RTU and TCP.

The simulators run in a separate process (python -m gridedge.hil.modbus_sim), so the agent's CPU time
(time.process_time of this process) is the gateway's cost alone. A pty has no baud rate: RTU wire time is computed
(11 bits per character, request + answer + two 3.5-character gaps); the pty round trip is shown for reference.

Run: .venv/bin/python bench/bench_bus.py [--quick]
"""
from __future__ import annotations

import argparse
import faulthandler
import signal
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pymodbus

from gridedge.drivers import regmap
from gridedge.drivers.modbus_rtu import SerialSettings
from gridedge.drivers.rtu import read_wire_time_s
from gridedge.drivers.regmap_device import LinkSpec, RegmapDevice
from gridedge.drivers.scheduler import BusPool, Read
from gridedge.drivers.sunspec import split_reads
from gridedge.drivers.sunspec_device import SunSpecDevice
from gridedge.core.model import Validity
from measure import describe  # bench/measure.py: the script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "drivers" / "maps" / "eastron_sdm630.toml"


class Sim:
    """A simulator subprocess; READY line gives the pty path or the TCP ports."""

    def __init__(self, *args: str, module: str = "gridedge.hil.modbus_sim"):
        extra = ["--map", str(MAP)] if module.endswith("modbus_sim") else []
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args, *extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL if extra == [] else None, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.ready = line[6:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def per_request(link: LinkSpec, count: int, n: int) -> tuple[float, float]:
    """(agent CPU s per request, wall s per request) for n reads of `count` input registers through the bus."""
    dev = RegmapDevice("m1", regmap.load_map(MAP), link, 1, pool=BusPool())
    await dev.connect()
    bus, bdev = dev.bus, dev.bus_device
    reads = [Read("input", 0, count)]
    for _ in range(20):                                   # warm-up
        await bus.read_once(bdev, reads)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        (value, _), = await bus.read_once(bdev, reads)
        if not isinstance(value, list):
            raise RuntimeError(f"read failed: {value}")
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    await dev.close()
    return cpu / n, wall / n


async def many_tcp(ports: list[int], period_s: float, seconds: float) -> tuple[float, float, int, int]:
    """(points/s, agent CPU s/s, devices, bad samples) polling every device every period_s."""
    rmap = regmap.load_map(MAP)
    pool = BusPool()
    devs = [RegmapDevice(f"m{i}", rmap, LinkSpec("tcp", host="127.0.0.1", port=p, timeout_s=2.0), 1,
                         period_s=period_s, pool=pool) for i, p in enumerate(ports)]
    loop = asyncio.get_running_loop()

    def dump_tasks() -> None:   # kill -USR2 <pid>: where every task waits
        for t in asyncio.all_tasks():
            t.print_stack(limit=6, file=sys.stderr)
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    for d in devs:
        await d.connect()
    counted = {"good": 0, "bad": 0}
    measuring = False

    def sink(readings):   # SampleBlocks, one per read: counted per value, as the agent takes them
        if measuring:
            for b in readings:
                bad = 0 if b.quality is None else sum(q is not None and q[0] is not Validity.GOOD for q in b.quality)
                counted["good"] += len(b.values) - bad
                counted["bad"] += bad
    tasks = [asyncio.create_task(d.run(sink)) for d in devs]
    await asyncio.sleep(1.0)
    measuring = True
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    measuring = False
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for d in devs:
        await d.close()
    return counted["good"] / wall, cpu / wall, len(devs), counted["bad"]


async def sunspec_polls(link: LinkSpec, n: int) -> tuple[float, float, int]:
    """(agent CPU s per poll, wall s per poll, points per poll) polling every canonical point of the HIL inverter."""
    dev = SunSpecDevice("inv1", link, 1, pool=BusPool())
    await dev.connect()
    for _ in range(5):
        await dev.poll()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        samples = await dev.poll()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if not any(s.good for s in samples):
        raise RuntimeError(f"SunSpec poll failed: {samples[:2]}")
    await dev.close()
    return cpu / n, wall / n, len(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests, shorter run")
    args = ap.parse_args()
    faulthandler.register(signal.SIGUSR1)   # kill -USR1 <pid> prints where it is
    n = 100 if args.quick else 400
    seconds = 3.0 if args.quick else 8.0
    print(f"machine: {describe()}, pymodbus {pymodbus.__version__}")
    print()
    print("Per request (read of N input registers), agent CPU vs wire time")
    print(f"{'link':<16}{'N':>5}{'wire ms':>10}{'agent CPU ms':>14}{'CPU/wire':>10}{'round trip ms':>15}")
    for baud in (9600, 19200, 115200):
        sim = Sim("rtu", "--units", "1", "--baudrate", str(baud))
        try:
            link = LinkSpec("rtu", serial=SerialSettings(sim.ready, baudrate=baud, parity="N", timeout_s=1.0))
            for count in (10, 72):
                cpu, wall = asyncio.run(per_request(link, count, n))
                wire = read_wire_time_s(count, baud)
                print(f"{f'RTU {baud}':<16}{count:>5}{wire * 1e3:>10.1f}{cpu * 1e3:>14.3f}{cpu / wire:>10.1%}"
                      f"{wall * 1e3:>15.2f}")
        finally:
            sim.stop()
    sim = Sim("tcp", "--count", "1")
    try:
        link = LinkSpec("tcp", host="127.0.0.1", port=int(sim.ready), timeout_s=1.0)
        for count in (10, 72):
            cpu, wall = asyncio.run(per_request(link, count, n))
            print(f"{'TCP loopback':<16}{count:>5}{'-':>10}{cpu * 1e3:>14.3f}{'-':>10}{wall * 1e3:>15.2f}")
    finally:
        sim.stop()
    print()
    print("SunSpec poll of every canonical point of the HIL inverter (701 + 702 + 704 fixed parts, 268 registers)")
    print(f"{'link':<16}{'points':>7}{'reads':>6}{'wire ms':>10}{'agent CPU ms':>14}{'CPU/wire':>10}"
          f"{'round trip ms':>15}")
    for kind in ("rtu", "tcp"):
        args = ("--rtu", "--baudrate", "19200") if kind == "rtu" else ("--port", "0")
        sim = Sim(*args, module="gridedge.hil.inverter_sim")
        try:
            if kind == "rtu":
                link = LinkSpec("rtu", serial=SerialSettings(sim.ready, baudrate=19200, parity="N", timeout_s=1.0))
            else:
                link = LinkSpec("tcp", host="127.0.0.1", port=int(sim.ready), timeout_s=1.0)
            cpu, wall, npts = asyncio.run(sunspec_polls(link, max(20, n // 4)))
            chunks = [c for length in (153, 50, 65) for _, c in split_reads(0, length)]
            wire = sum(read_wire_time_s(c, 19200) for c in chunks) if kind == "rtu" else None
            label = "RTU 19200" if kind == "rtu" else "TCP loopback"
            print(f"{label:<16}{npts:>7}{len(chunks):>6}{(f'{wire * 1e3:.1f}' if wire else '-'):>10}"
                  f"{cpu * 1e3:>14.3f}{(f'{cpu / wire:.1%}' if wire else '-'):>10}{wall * 1e3:>15.2f}")
        finally:
            sim.stop()
    print()
    sim = Sim("tcp", "--count", "100")
    try:
        ports = [int(p) for p in sim.ready.split(",")]
        rmap = regmap.load_map(MAP)
        blocks = regmap.plan_reads(rmap)
        print(f"100 Modbus TCP devices ({rmap.model} map: {len(rmap.points)} points in {len(blocks)} reads each), "
              f"simulators in another process, {seconds:.0f} s")
        print(f"{'period ms':>10}{'points/s':>12}{'agent CPU':>11}{'points/s per core':>19}{'bad':>6}")
        for period in (1.0, 0.2):
            pts, load, ndev, bad = asyncio.run(many_tcp(ports, period, seconds))
            print(f"{period * 1e3:>10.0f}{pts:>12.0f}{load:>11.1%}{pts / load if load else 0:>19.0f}{bad:>6}")
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
