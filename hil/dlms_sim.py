"""DLMS/COSEM meters for hardware-in-the-loop tests: several meters on one HDLC line (a pseudo-terminal, as on
RS-485 multidrop or behind an optical probe with the IEC 62056-21 mode E start-up), the wrapper on TCP (port 4059
style), HDLC over TCP, and push (DataNotification) on a line or a TCP port. The meters are hil/dlms_meter.py.

Faults, per meter (`DlmsLineSim.fault(address, ...)` / `DlmsTcpSim.fault(...)`):
    silent        never answer (dead meter, wrong address)
    bad_crc       answer with a broken FCS
    slow          answer `delay_s` late (other meters on the line are not held up while it waits)
    segmented     answer in small HDLC segments and small GET blocks
and on the meter itself: repeat_counter (wrong frame counter), drop_next (the association is dropped), clock
skew and status, profile entry status (see SimMeter).

CLI (for benchmarks; prints "READY <port or path>" once serving, stops on SIGTERM/SIGINT):
    python -m gridedge.hil.dlms_sim line --meters 20 [--dead 7] [--baudrate 9600]
    python -m gridedge.hil.dlms_sim tcp [--port 4059]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tty
from collections import Counter
from dataclasses import dataclass

from gridedge.drivers.dlms import hdlc, mbus, wrapper
from gridedge.drivers.dlms.iec21 import even_parity
from gridedge.drivers.dlms.hdlc import LLC_REQUEST, LLC_RESPONSE, Frame, HdlcParams

from .dlms_meter import ServerAssociation, SimMeter

__all__ = ["DlmsLineSim", "DlmsTcpSim", "HdlcServer", "Fault", "FAULTS", "char_time_s"]

log = logging.getLogger("gridedge.hil.dlms_sim")

FAULTS = ("ok", "silent", "bad_crc", "slow", "segmented")
IDENTIFICATION = b"/GRE5\\2SIMMETER\r\n"          # mode E: 9600 baud offered, HDLC ("\2")


def char_time_s(baudrate: int) -> float:
    """One character on a 10-bit frame (8N1), the wire time the line simulator charges per byte."""
    return 10.0 / baudrate


@dataclass
class Fault:
    mode: str = "ok"
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {self.mode!r}")


def _segmented(server: HdlcServer, on: bool) -> None:
    """Small HDLC segments (from the next SNRM) and small GET blocks (from the next association)."""
    server.params = HdlcParams(32, 128) if on else HdlcParams()
    server.meter.max_pdu = 128 if on else 1024


class HdlcServer:
    """The HDLC secondary station of one meter, sans-IO: frames in, frames out (window 1, segmentation both ways)."""

    def __init__(self, meter: SimMeter, physical: int, logical: int = 1, params: HdlcParams = HdlcParams()):
        self.meter, self.physical, self.logical = meter, physical, logical
        self.params = params
        self.assoc = ServerAssociation(meter)
        self.connected = False
        self.ns = self.nr = 0
        self._rx = bytearray()
        self._tx: list[bytes] = []          # info fields still to send (segmented answer)
        self._peer = b""
        self._me = b""
        self.max_tx = params.max_tx

    def mine(self, f: Frame) -> bool:
        try:
            upper, lower = hdlc.parse_address(f.dst)
        except hdlc.FrameError:
            return False
        return lower == self.physical and upper == self.logical

    def handle(self, f: Frame) -> list[bytes]:
        """The frames this meter answers `f` with (encoded), possibly none."""
        self._peer, self._me = f.src, f.dst
        kind = hdlc.frame_kind(f.control)
        if kind == "SNRM":
            try:
                theirs = hdlc.decode_params(f.info)
            except hdlc.FrameError:
                return [self._frame(hdlc.FRMR)]
            self.max_tx = min(self.params.max_tx, theirs.max_rx)
            self.connected, self.ns, self.nr = True, 0, 0
            self._rx.clear()
            self._tx.clear()
            self.assoc.reset()
            ua = HdlcParams(self.max_tx, min(self.params.max_rx, theirs.max_tx), 1, 1)
            return [self._frame(hdlc.UA, hdlc.encode_params(ua))]
        if kind == "DISC":
            was = self.connected
            self.connected = False
            self.assoc.reset()
            return [self._frame(hdlc.UA if was else hdlc.DM)]
        if self.meter.drop_next and kind == "I":
            self.meter.drop_next = False
            self.connected = False
            self.assoc.reset()
        if not self.connected:
            return [self._frame(hdlc.DM)] if kind in ("I", "RR") else []
        if kind == "RR":
            return [self._next_segment()] if self._tx else []
        if kind != "I":
            return []
        ns = (f.control >> 1) & 7
        if ns != self.nr:
            return [self._frame(hdlc.rr_control(self.nr))]     # a repeat: acknowledge again
        self.nr = (self.nr + 1) & 7
        self._rx += f.info
        if f.segmented:
            return [self._frame(hdlc.rr_control(self.nr))]
        data = bytes(self._rx)
        self._rx.clear()
        if not data.startswith(LLC_REQUEST):
            return [self._frame(hdlc.FRMR)]
        answer = self.assoc.handle(data[3:])
        if answer is None:
            return []
        payload = LLC_RESPONSE + answer
        self._tx = [payload[i:i + self.max_tx] for i in range(0, len(payload), self.max_tx)]
        return [self._next_segment()]

    def _next_segment(self) -> bytes:
        chunk = self._tx.pop(0)
        frame = Frame(self._peer, self._me, hdlc.i_control(self.ns, self.nr), chunk, segmented=bool(self._tx))
        self.ns = (self.ns + 1) & 7
        return hdlc.encode_frame(frame)

    def _frame(self, control: int, info: bytes = b"") -> bytes:
        return hdlc.encode_frame(Frame(self._peer, self._me, control, info))


def _open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class _HdlcBus:
    """Meters sharing one HDLC byte stream (a pty or a TCP connection): frames are dispatched by address; answers
    leave one at a time, each after its meter's delay, at the line's baud rate (so the wire time is real)."""

    def __init__(self, servers: dict[int, HdlcServer], faults: dict[int, Fault], write, baudrate: int | None,
                 mode_e: bool = False):
        self.servers, self.faults, self._write = servers, faults, write
        self.baudrate = baudrate
        self.reader = hdlc.FrameReader()
        self.frames: Counter[int] = Counter()       # request frames on the wire per physical address
        self.mode_e = mode_e
        self.iec21 = mode_e                          # waiting for the mode E start-up
        self._text = b""
        self._loop = asyncio.get_running_loop()
        self._busy_until = 0.0

    def feed(self, data: bytes) -> None:
        if self.iec21:
            # 7E1 as an 8N1 reader sees it: the parity bit in bit 7 (a pty cannot be set to 7E1 either way)
            self._text += bytes(b & 0x7F for b in data)
            if b"/?" in self._text and self._text.endswith(b"!\r\n"):
                self._text = b""
                self._send(even_parity(IDENTIFICATION), 0.0)
            elif self._text.startswith(b"\x06") and self._text.endswith(b"\r\n"):
                self._text = b""
                self.iec21 = False                  # HDLC from here
            self._text = self._text[-64:]
            return
        for f in self.reader.feed(data):
            for addr, server in self.servers.items():
                if server.mine(f):
                    self.frames[addr] += 1
                    self._answer(addr, server, f)

    def _answer(self, addr: int, server: HdlcServer, f: Frame) -> None:
        fault = self.faults.get(addr, Fault())
        if fault.mode == "silent":
            return
        out = server.handle(f)
        if self.mode_e and hdlc.frame_kind(f.control) == "DISC":
            self.iec21 = True
        for frame in out:
            if fault.mode == "bad_crc":
                frame = frame[:-3] + bytes(((frame[-3] ^ 0x5A),)) + frame[-2:]
            self._send(frame, fault.delay_s if fault.mode == "slow" else 0.0)

    def _send(self, data: bytes, delay: float) -> None:
        now = self._loop.time()
        wire = len(data) * char_time_s(self.baudrate) if self.baudrate else 0.0
        start = max(now + delay, self._busy_until)
        self._busy_until = start + wire
        self._loop.call_at(self._busy_until, self._write, data)


class DlmsLineSim:
    """Meters on one simulated serial line, reached through a pseudo-terminal: {physical address: SimMeter}."""

    def __init__(self, meters: dict[int, SimMeter], *, baudrate: int | None = 9600, mode_e: bool = False,
                 logical: int = 1):
        self.meters = meters
        self.baudrate = baudrate
        self.mode_e = mode_e
        self.servers = {a: HdlcServer(m, a, logical) for a, m in meters.items()}
        self.faults: dict[int, Fault] = {}
        self.port = ""
        self._fds: list[int] = []
        self._master = -1
        self.bus: _HdlcBus | None = None
        self._push: asyncio.Task | None = None

    def fault(self, address: int, mode: str = "ok", **kw) -> None:
        if address not in self.servers:
            raise KeyError(f"no meter at address {address}")
        self.faults[address] = Fault(mode, **kw)
        _segmented(self.servers[address], mode == "segmented")

    async def start(self) -> str:
        self._master, slave, self.port = _open_pty()
        self._fds = [self._master, slave]
        self.bus = _HdlcBus(self.servers, self.faults, self._write, self.baudrate, self.mode_e)
        asyncio.get_running_loop().add_reader(self._master, self._read)
        return self.port

    def _read(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        if data:
            self.bus.feed(data)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, data)

    def push_every(self, address: int, period_s: float, framing: str = "hdlc") -> None:
        """Send the meter's HAN notification every period_s, unasked: in HDLC UI frames (Nordic HAN) or M-Bus long
        frames (Austrian HAN)."""
        meter = self.meters[address]

        async def pusher() -> None:
            n = 0
            while True:
                n += 1
                apdu = meter.notification(meter.han_body(), n)
                if framing == "mbus":
                    self._write(mbus.encode_mbus(apdu))
                else:
                    info = LLC_RESPONSE + apdu
                    dst, src = hdlc.client_address(16), hdlc.server_address(1, address)
                    chunks = [info[i:i + 128] for i in range(0, len(info), 128)]
                    for k, c in enumerate(chunks):
                        self._write(hdlc.encode_frame(Frame(dst, src, hdlc.UI, c, segmented=k < len(chunks) - 1)))
                await asyncio.sleep(period_s)
        self._push = asyncio.create_task(pusher())

    async def stop(self) -> None:
        if self._push is not None:
            self._push.cancel()
            await asyncio.gather(self._push, return_exceptions=True)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._master)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    async def __aenter__(self) -> DlmsLineSim:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


class DlmsTcpSim:
    """One meter on TCP: the wrapper ("wrapper", IEC 62056-47) or HDLC frames ("hdlc"); each connection has its own
    association. `connections` counts the accepted ones; `down()` / `up()` take the listener away and back."""

    def __init__(self, meter: SimMeter, *, framing: str = "wrapper", host: str = "127.0.0.1", port: int = 0,
                 physical: int = 17):
        if framing not in ("wrapper", "hdlc"):
            raise ValueError("framing must be 'wrapper' or 'hdlc'")
        self.meter, self.framing, self.host, self.port, self.physical = meter, framing, host, port, physical
        self.faults: dict[int, Fault] = {}
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def fault(self, mode: str = "ok", **kw) -> None:
        self.faults[self.physical] = Fault(mode, **kw)
        self.meter.max_pdu = 128 if mode == "segmented" else 1024

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            if self.framing == "hdlc":
                server = HdlcServer(self.meter, self.physical)
                _segmented(server, self.faults.get(self.physical, Fault()).mode == "segmented")
                servers = {self.physical: server}
                bus = _HdlcBus(servers, self.faults, writer.write, None)
                while data := await reader.read(4096):
                    bus.feed(data)
            else:
                await self._wrapper(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _wrapper(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assoc = ServerAssociation(self.meter)
        frames = wrapper.WrapperReader()
        while data := await reader.read(4096):
            try:
                msgs = frames.feed(data)
            except wrapper.FrameError:
                return
            for m in msgs:
                fault = self.faults.get(self.physical, Fault())
                if fault.mode == "silent" or m.destination != 1:
                    continue
                answer = assoc.handle(m.apdu)
                if answer is None:
                    continue
                if fault.mode == "slow":
                    await asyncio.sleep(fault.delay_s)
                writer.write(wrapper.encode_wrapper(m.destination, m.source, answer))

    async def down(self) -> None:
        """The link fails: the listener closes and every connection is cut."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def up(self) -> None:
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        await self.down()

    async def __aenter__(self) -> DlmsTcpSim:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


# ---------------------------------------------------------------- CLI

async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.kind == "line":
        meters = {16 + i: SimMeter(serial=f"GRE{i:07d}") for i in range(args.meters)}
        sim = DlmsLineSim(meters, baudrate=args.baudrate or None)
        ready = await sim.start()
        for d in args.dead or ():
            sim.fault(16 + d, "silent")
    else:
        sim = DlmsTcpSim(SimMeter(), framing=args.framing, port=args.port)
        ready = str(await sim.start())
    print(f"READY {ready}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gridedge.hil.dlms_sim", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    line = sub.add_parser("line", help="meters at physical addresses 16.. on one pty")
    line.add_argument("--meters", type=int, default=1)
    line.add_argument("--dead", type=int, action="append", help="index of a meter that never answers")
    line.add_argument("--baudrate", type=int, default=9600, help="wire speed charged per byte; 0 = none")
    tcp = sub.add_parser("tcp", help="one meter on TCP")
    tcp.add_argument("--port", type=int, default=0)
    tcp.add_argument("--framing", choices=("wrapper", "hdlc"), default="wrapper")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
