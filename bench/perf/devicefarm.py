"""Device farm for the performance harness: N Modbus TCP devices x M holding registers, each device on its own port.

Why a counter per register: every read of a register returns the next value of that register's read counter
(1, 2, 3, ... mod 65536), so every datapoint an agent can deliver is distinct, and the farm's counters say
exactly what was offered: register r of device d offered the values 1..counts[d][r]. A subscriber that sees
value v of (d, r) twice has a duplicate; a value in that range it never sees is a loss. No clock or poll
schedule has to be guessed.

Latency reference: the farm records the wall-clock time (UTC ns) at which it served each read of register 0 of
each device, i.e. when value k of (d, 0) left the device. The subscriber's receive time minus that is the
device-to-subscriber latency, the same yardstick for every agent.

Runs as its own process (so its CPU is measured apart from the agent's):
    python -m bench.perf.devicefarm --devices 100 --registers 50
It prints one line `READY {"ports": [...], "pid": ...}` and then serves commands, one per stdin line:
    snapshot PATH   write counters and register-0 read times as JSON to PATH, answer `OK PATH`
    quit            stop (also on SIGTERM / SIGINT / stdin closed)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

log = logging.getLogger("bench.farm")

UNIT_ID = 1
WRAP = 0x10000


class FarmDevice:
    """One simulated device: M holding registers from address 0, each a read counter."""

    def __init__(self, index: int, registers: int) -> None:
        self.index = index
        self.registers = registers
        self.counts = [0] * registers          # reads served per register (unbounded ints)
        self.read_times0: list[int] = []       # UTC ns at which read k (1-based: index k-1) of register 0 was served
        self.requests = 0
        self.server: ModbusTcpServer | None = None
        self.port = 0

    async def action(self, function_code: int, start_address: int, address: int, count: int,
                     current_registers: list[int], set_values) -> None:
        """Called by pymodbus before it answers: bump the counters of the registers read, render them."""
        if set_values is not None:
            return None  # writes are not part of the benchmark; let pymodbus store them
        self.requests += 1
        lo = max(address, 0)
        hi = min(address + count, self.registers)
        counts = self.counts
        for a in range(lo, hi):
            counts[a] += 1
        if lo == 0 and hi > 0:
            self.read_times0.append(time.time_ns())
        off = start_address
        current_registers[lo - off:hi - off] = [c % WRAP for c in counts[lo:hi]]
        return None

    async def start(self, host: str, port: int) -> int:
        dev = SimDevice(id=UNIT_ID, simdata=[SimData(address=0, values=[0] * self.registers,
                                                     datatype=DataType.REGISTERS)],
                        action=self.action)
        server = ModbusTcpServer(dev, address=(host, port))
        await server.serve_forever(background=True)
        socks = server.transport.sockets if server.transport is not None else []
        if not socks:
            await server.shutdown()
            raise RuntimeError(f"device {self.index}: cannot listen on {host}:{port}")
        self.server = server
        self.port = socks[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


class Farm:
    def __init__(self, devices: int, registers: int, host: str = "127.0.0.1", base_port: int = 0) -> None:
        if not 0 <= devices <= 5000 or not 1 <= registers <= 125:
            raise ValueError(f"devices must be 0..5000 and registers 1..125, got {devices} x {registers}")
        self.host = host
        self.base_port = base_port
        self.devices = [FarmDevice(i, registers) for i in range(devices)]

    async def start(self) -> list[int]:
        ports = []
        for d in self.devices:
            ports.append(await d.start(self.host, self.base_port + d.index if self.base_port else 0))
        return ports

    async def stop(self) -> None:
        for d in self.devices:
            await d.stop()

    def snapshot(self) -> dict:
        """Counters and register-0 read times, as of now (one event-loop step: consistent across devices)."""
        return {
            "t_ns": time.time_ns(),
            "counts": [list(d.counts) for d in self.devices],
            "requests": sum(d.requests for d in self.devices),
            "read_times0": [list(d.read_times0) for d in self.devices],
        }


async def _stdin_reader() -> asyncio.StreamReader:
    """stdin as an asyncio stream (not a thread: a blocked reader thread would stall interpreter exit)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _commands(farm: Farm, stop: asyncio.Event) -> None:
    reader = await _stdin_reader()
    while not stop.is_set():
        line = (await reader.readline()).decode(errors="replace")
        if not line:
            stop.set()
            return
        cmd, _, arg = line.strip().partition(" ")
        try:
            if cmd == "snapshot" and arg:
                snap = farm.snapshot()
                tmp = arg + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(snap, f, separators=(",", ":"))
                os.replace(tmp, arg)
                print(f"OK {arg}", flush=True)
            elif cmd == "quit":
                stop.set()
                print("OK quit", flush=True)
            else:
                print(f"ERR unknown command {line.strip()!r}", flush=True)
        except Exception as exc:  # a bad command must not kill the farm mid-run
            print(f"ERR {exc}", flush=True)


async def _main(args: argparse.Namespace) -> None:
    farm = Farm(args.devices, args.registers, args.host, args.base_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ports = await farm.start()
    print("READY " + json.dumps({"ports": ports, "pid": os.getpid()}), flush=True)
    cmd_task = asyncio.create_task(_commands(farm, stop))
    try:
        await stop.wait()
    finally:
        cmd_task.cancel()
        await farm.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf.devicefarm", description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--registers", type=int, default=10)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--base-port", type=int, default=0, help="device i listens on base+i; 0 = free ports")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
