"""Modbus field devices for hardware-in-the-loop tests: several unit ids on one RTU line (a pseudo-terminal) or on
Modbus TCP / RTU-over-TCP, with registers from register-map files (drivers/maps/*.toml) or plain dicts.

RTU line layout: the gateway opens the slave side of pty A (`ModbusLineSim.port`). A relay owns the master side
of pty A and of pty B; the real pymodbus serial server listens on the slave side of pty B and holds the registers.
The relay frames each request and, per unit, either forwards it to pymodbus and passes the answer back, or
misbehaves with raw bytes the way field devices do (pymodbus cannot be made to):

    ok          forward, answer at once
    silent      never answer (dead or unpowered device, wrong address)
    slow        forward, answer `delay_s` late (without blocking the line for the other units)
    wrong_unit  answer with the unit id `answer_as` (a mis-addressed twin on the bus)
    bad_crc     answer with a corrupted CRC (noise, bad termination)
    exception   answer Modbus exception `exception_code` itself

Requests for unit ids nobody serves are dropped (silence), as on a real bus. `requests[unit]` counts the frames the
line carried for each unit, so a test can check that a device whose circuit is open is not polled.

CLI (for benchmarks; prints one "READY ..." line once serving, stops on SIGTERM/SIGINT):
    python -m gridedge.hil.modbus_sim rtu --map drivers/maps/eastron_sdm630.toml --units 1,2,3
    python -m gridedge.hil.modbus_sim tcp --map drivers/maps/eastron_sdm630.toml --count 100 [--framer rtu]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tty
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridedge.drivers import regmap
from gridedge.drivers.rtu import crc_ok, with_crc

log = logging.getLogger("gridedge.hil.modbus_sim")

MODES = ("ok", "silent", "slow", "wrong_unit", "bad_crc", "exception")
TABLES = ("holding", "input")


# ---------------------------------------------------------------- RTU framing (sans-IO)

def rtu_request_length(buf: bytes) -> int | None:
    """Length of the request frame at the start of `buf`; None if more bytes are needed; 0 if the function code
    is not one this simulator serves (the caller resynchronises)."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        if len(buf) < 7:
            return None
        return 9 + buf[6]
    return 0


def rtu_response_length(buf: bytes) -> int | None:
    """Length of the answer frame at the start of `buf`; None if more bytes are needed; 0 if not understood."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc & 0x80:
        return 5
    if fc in (1, 2, 3, 4):
        if len(buf) < 3:
            return None
        return 5 + buf[2]
    if fc in (5, 6, 15, 16):
        return 8
    return 0


def split_frames(buf: bytes, length_of) -> tuple[list[bytes], bytes, int]:
    """Cut complete CRC-valid frames off the front of `buf`. Returns (frames, rest, bytes dropped while hunting for a
    frame start after noise or a bad CRC)."""
    frames: list[bytes] = []
    dropped = 0
    while buf:
        n = length_of(buf)
        if n is None:
            break
        if n == 0 or (len(buf) >= n and not crc_ok(buf[:n])):
            buf = buf[1:]
            dropped += 1
            continue
        if len(buf) < n:
            break
        frames.append(buf[:n])
        buf = buf[n:]
    return frames, buf, dropped


# ---------------------------------------------------------------- units

@dataclass
class Behaviour:
    mode: str = "ok"
    delay_s: float = 0.0
    exception_code: int = 4
    answer_as: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0 <= self.delay_s <= 60:
            raise ValueError(f"delay_s must be 0..60, got {self.delay_s!r}")
        if not 1 <= self.exception_code <= 255:
            raise ValueError(f"exception_code must be 1..255, got {self.exception_code!r}")
        if not 0 <= self.answer_as <= 255:
            raise ValueError(f"answer_as must be 0..255, got {self.answer_as!r}")


def _writable_copy(rmap: regmap.RegisterMap) -> regmap.RegisterMap:
    """The map with every point writable and unbounded, so the simulator can encode any value into any point."""
    pts = tuple(dataclasses.replace(p, access="rw", min=None, max=None) for p in rmap.points)
    return dataclasses.replace(rmap, points=pts, _by_name={})


class UnitSim:
    """The registers of one simulated unit. Writes are accepted only into registers of writable points (from the
    map) or the `writable` addresses given; anything else gets ILLEGAL_DATA_ADDRESS, like a real device."""

    def __init__(self, unit_id: int, rmap: regmap.RegisterMap | None = None, values: Mapping[str, Any] | None = None,
                 registers: Mapping[str, Mapping[int, int]] | None = None, writable: set[int] | None = None):
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit_id must be 1..247, got {unit_id}")
        self.unit_id = unit_id
        self.rmap = rmap
        self._enc = _writable_copy(rmap) if rmap is not None else None
        self.regs: dict[str, dict[int, int]] = {t: {} for t in TABLES}
        self.writable: set[int] = set(writable or ())
        self.writes = 0
        if rmap is not None:
            for p in rmap.points:
                for a in range(p.address, p.end):
                    self.regs[p.table].setdefault(a, 0)
                    if p.writable:
                        self.writable.add(a)
            self.set_values(values or {})
        elif values:
            raise ValueError("values by point name need a register map")
        for table, regs in (registers or {}).items():
            if table not in TABLES:
                raise ValueError(f"table must be one of {TABLES}, got {table!r}")
            for a, v in regs.items():
                if not (0 <= a <= 0xFFFF and 0 <= v <= 0xFFFF):
                    raise ValueError(f"register {a}={v} out of range")
                self.regs[table][a] = v

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Set points by name (scaled values, as the gateway reads them)."""
        if self._enc is None:
            raise ValueError("values by point name need a register map")
        for name, value in values.items():
            p = self._enc.point(name)
            addr, regs = regmap.encode(self._enc, name, value)
            for i, r in enumerate(regs):
                self.regs[p.table][addr + i] = r

    def span(self, table: str) -> tuple[int, int]:
        """First address and count of the served range of `table` (gaps inside read as 0)."""
        addrs = self.regs[table]
        if not addrs:
            return 0, 1
        lo, hi = min(addrs), max(addrs)
        return lo, hi - lo + 1

    def sim_device(self) -> SimDevice:
        blocks = []
        for table in TABLES:
            lo, n = self.span(table)
            blocks.append([SimData(lo, values=[self.regs[table].get(lo + i, 0) for i in range(n)],
                                   datatype=DataType.REGISTERS)])
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(id=self.unit_id, simdata=([bits[0]], [dataclasses.replace(bits[0])], blocks[0], blocks[1]),
                         action=self._action)

    async def _action(self, fc: int, start: int, address: int, count: int, current: list[int],
                      set_values) -> ExcCodes | None:
        table = "input" if fc == 4 else "holding"
        if set_values is not None and fc in (6, 16):
            vals = set_values if isinstance(set_values, list) else [set_values]
            if any(address + i not in self.writable for i in range(len(vals))):
                return ExcCodes.ILLEGAL_ADDRESS
            for i, v in enumerate(vals):
                self.regs["holding"][address + i] = int(v)
            self.writes += 1
            return None
        if fc in (3, 4):
            regs = self.regs[table]
            for i in range(count):
                current[address - start + i] = regs.get(address + i, 0)
        return None


def make_units(spec: Mapping[int, Any]) -> dict[int, UnitSim]:
    """{unit id: UnitSim | RegisterMap | path to a map | {table: {address: register}} | any simulator with a
    sim_device() (e.g. a SunSpec inverter or battery sim)} -> units."""
    units: dict[int, UnitSim] = {}
    for uid, v in spec.items():
        if isinstance(v, UnitSim) or callable(getattr(v, "sim_device", None)):
            units[uid] = v
        elif isinstance(v, regmap.RegisterMap):
            units[uid] = UnitSim(uid, v)
        elif isinstance(v, (str, os.PathLike)):
            units[uid] = UnitSim(uid, regmap.load_map(v))
        elif isinstance(v, Mapping):
            units[uid] = UnitSim(uid, registers=v)
        else:
            raise TypeError(f"unit {uid}: expected a UnitSim, RegisterMap, map path or register dict, got {v!r}")
    return units


# ---------------------------------------------------------------- the RTU line

def _open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class ModbusLineSim:
    """Several units on one simulated RS-485 line, reached through a pseudo-terminal (see module docstring)."""

    def __init__(self, units: Mapping[int, Any], baudrate: int = 19200):
        self.units = make_units(units)
        self.baudrate = baudrate
        self.behaviour: dict[int, Behaviour] = {u: Behaviour() for u in self.units}
        self.requests: Counter[int] = Counter()       # frames on the line per unit id (served or not)
        self.noise_bytes = 0
        self.late_sent = 0                            # answers put on the line after their delay ("slow" units)
        self.port = ""
        self._fds: list[int] = []
        self._a = self._b = -1
        self._rx_a = b""
        self._rx_b = b""
        self._queue: asyncio.Queue[bytes] | None = None
        self._answer: asyncio.Future | None = None
        self._server: ModbusSerialServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def set_behaviour(self, unit_id: int, mode: str = "ok", **kw) -> None:
        if unit_id not in self.units:
            raise KeyError(f"no unit {unit_id} on this line")
        self.behaviour[unit_id] = Behaviour(mode, **kw)

    async def start(self) -> str:
        """Start the server and the relay; returns the device path the gateway opens."""
        self._loop = asyncio.get_running_loop()
        self._a, slave_a, self.port = _open_pty()
        self._b, slave_b, port_b = _open_pty()
        self._fds = [self._a, slave_a, self._b, slave_b]   # slaves stay open: no EIO/hang-up between clients
        self._queue = asyncio.Queue()
        self._server = ModbusSerialServer([u.sim_device() for u in self.units.values()], framer=FramerType.RTU,
                                          port=port_b, baudrate=self.baudrate, ignore_missing_devices=True)
        await self._server.serve_forever(background=True)
        self._loop.add_reader(self._a, self._read_a)
        self._loop.add_reader(self._b, self._read_b)
        self._spawn(self._forward())
        return self.port

    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._loop is not None:
            for fd in (self._a, self._b):
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(fd)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    async def __aenter__(self) -> ModbusLineSim:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- relay
    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return b""

    def _read_a(self) -> None:
        self._rx_a += self._read(self._a)
        frames, self._rx_a, dropped = split_frames(self._rx_a, rtu_request_length)
        self.noise_bytes += dropped
        for f in frames:
            self.requests[f[0]] += 1
            self._queue.put_nowait(f)

    def _read_b(self) -> None:
        self._rx_b += self._read(self._b)
        frames, self._rx_b, _ = split_frames(self._rx_b, rtu_response_length)
        for f in frames:
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(f)

    def _write_a(self, data: bytes) -> None:
        try:
            os.write(self._a, data)
        except OSError:   # nobody reading, buffer full: the bytes are lost, as on a real line
            pass

    def _send_later(self, data: bytes, delay: float) -> None:
        if delay > 0:
            self._loop.call_later(delay, self._write_late, data)
        else:
            self._write_a(data)

    def _write_late(self, data: bytes) -> None:
        self._write_a(data)
        self.late_sent += 1     # a test can await "the late answer is on the line" instead of sleeping

    async def _forward(self) -> None:
        while True:
            frame = await self._queue.get()
            unit = frame[0]
            b = self.behaviour.get(unit)
            if b is None or b.mode == "silent":
                continue
            delay = b.delay_s if b.mode == "slow" else 0.0
            if b.mode == "exception":
                self._send_later(with_crc(bytes((unit, frame[1] | 0x80, b.exception_code))), delay)
                continue
            self._answer = self._loop.create_future()
            try:
                os.write(self._b, frame)
                async with asyncio.timeout(2.0):  # not wait_for: on 3.11 it can swallow stop()'s cancel
                    answer = await self._answer
            except (OSError, TimeoutError):
                log.warning("unit %d: the pymodbus server did not answer %s", unit, frame.hex())
                continue
            finally:
                self._answer = None
            if b.mode == "wrong_unit":
                answer = with_crc(bytes((b.answer_as,)) + answer[1:-2])
            elif b.mode == "bad_crc":
                answer = answer[:-1] + bytes(((answer[-1] ^ 0x5A) or 1,))
            self._send_later(answer, delay)


# ---------------------------------------------------------------- TCP

class ModbusTcpSim:
    """Units behind one Modbus TCP server (framer "socket") or an RTU-over-TCP gateway (framer "rtu")."""

    def __init__(self, units: Mapping[int, Any], host: str = "127.0.0.1", port: int = 0, framer: str = "socket"):
        if framer not in ("socket", "rtu"):
            raise ValueError(f"framer must be 'socket' or 'rtu', got {framer!r}")
        self.units = make_units(units)
        self.host, self.port, self.framer = host, port, framer
        self._server: ModbusTcpServer | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port."""
        server = ModbusTcpServer([u.sim_device() for u in self.units.values()], address=(self.host, self.port),
                                 framer=FramerType.RTU if self.framer == "rtu" else FramerType.SOCKET,
                                 ignore_missing_devices=True)
        await server.serve_forever(background=True)
        self._server = server
        sockets = server.transport.sockets if server.transport is not None else []
        if not sockets:
            await self.stop()
            raise RuntimeError(f"simulator could not listen on {self.host}:{self.port}")
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def __aenter__(self) -> ModbusTcpSim:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


# ---------------------------------------------------------------- CLI

def demo_values(rmap: regmap.RegisterMap, seed: int = 0) -> dict[str, Any]:
    """Plausible values for every numeric point of a map (mid-range, or a small number), for benches and demos."""
    out: dict[str, Any] = {}
    for i, p in enumerate(rmap.points):
        if p.type == "string":
            continue
        lo = p.min if p.min is not None else 0.0
        hi = p.max if p.max is not None else lo + 100.0
        v = lo + (hi - lo) * (0.25 + 0.5 * (((i + seed) * 0.618) % 1.0))
        out[p.name] = round(v) if p.type in ("int16", "uint16", "int32", "uint32") and p.scale == 1 else v
    return out


def _units_from(map_path: str, ids: list[int]) -> dict[int, UnitSim]:
    rmap = regmap.load_map(map_path)
    return {u: UnitSim(u, rmap, demo_values(rmap, u)) for u in ids}


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sims: list[Any] = []
    try:
        if args.kind == "rtu":
            ids = [int(x) for x in args.units.split(",")]
            sim = ModbusLineSim(_units_from(args.map, ids), baudrate=args.baudrate)
            sims.append(sim)
            ready = await sim.start()
        else:
            ports = []
            for _ in range(args.count):
                sim = ModbusTcpSim(_units_from(args.map, [args.unit]), host=args.host, framer=args.framer)
                sims.append(sim)
                ports.append(str(await sim.start()))
            ready = ",".join(ports)
        print(f"READY {ready}", flush=True)
        await stop.wait()
    finally:
        for sim in sims:
            await sim.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gridedge.hil.modbus_sim", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    rtu = sub.add_parser("rtu", help="units on one pty line")
    rtu.add_argument("--map", required=True, type=Path)
    rtu.add_argument("--units", default="1")
    rtu.add_argument("--baudrate", type=int, default=19200)
    tcp = sub.add_parser("tcp", help="one TCP server per device")
    tcp.add_argument("--map", required=True, type=Path)
    tcp.add_argument("--count", type=int, default=1)
    tcp.add_argument("--unit", type=int, default=1)
    tcp.add_argument("--host", default="127.0.0.1")
    tcp.add_argument("--framer", choices=("socket", "rtu"), default="socket")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
