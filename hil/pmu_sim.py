"""A PMU (or a PDC's stream of several) for hardware-in-the-loop tests, speaking IEEE C37.118.2: commands and data
over TCP, UDP commanded (answers go to the sender), UDP spontaneous (data and a CFG-2 now and then to a fixed
address, no commands needed), and mixed (commands over TCP, data over UDP to the commanding host).

What it measures comes from the rig's feeder model (hil/feeder.py): the voltage at its node, whose magnitude and
angle move with what the DERs on the feeder inject, a three-phase set around it, the current of the DER it watches,
the frequency of the feeder. Scripted events on the Signal: a frequency step (the ROCOF follows), an angle jump, a
sag or swell for a while, loss of sync (the STAT bits, unlocked-time count and FRACSEC time-quality code follow),
a time-quality code, a PMU trigger, a configuration change announced by the STAT bit and then served.

Frames are stamped at the instants a real PMU reports at: multiples of 1/fps of the UTC second.
CLI: python -m gridedge.hil.pmu_sim [--port 4712] [--udp-port 4713] [--fps 50] [--pmus 1] ...
     (prints "READY <tcp port> <udp port>" per PMU once serving; stops on SIGTERM/SIGINT)
"""
from __future__ import annotations

import argparse
import asyncio
import cmath
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field

from gridedge.drivers import c37118 as c

from .feeder import Feeder

__all__ = ["Signal", "PmuSim", "station", "config"]

log = logging.getLogger("gridedge.hil.pmu_sim")


def station(name: str = "FEEDER1", idcode: int = 1, *, phasors: int = 4, fmt: int = 0, analogs: int = 0,
            words: int = 0, fnom: float = 50.0, cfgcnt: int = 0, v_scale: float = 0.01, i_scale: float = 0.001):
    """A station: phasors VA, VB, VC (voltages), then IA, IB, IC... (currents), as many as asked."""
    names = [f"V{p}" for p in "ABC"] + [f"I{p}" for p in "ABC"] + [f"X{i}" for i in range(phasors)]
    names = tuple(names[:phasors])
    cur = tuple(n.startswith("I") for n in names)
    return c.Station(name, idcode, fmt, names, cur, tuple(i_scale if k else v_scale for k in cur), (0.0,) * phasors,
                     tuple(f"AN{i}" for i in range(analogs)), (1,) * analogs, (1.0,) * analogs, (0.0,) * analogs,
                     tuple(f"BRK{w}_{b}" for w in range(words) for b in range(16)), ((0, 0xFFFF),) * words, fnom,
                     cfgcnt)


def config(idcode: int = 1, fps: int = 50, stations=None, kind: int = c.CFG2, time_base: int = 1_000_000):
    return c.Config(idcode, time_base, tuple(stations or [station(idcode=idcode)]), fps, kind)


@dataclass
class Signal:
    """What the PMU measures, stepped frame by frame. feeder/node: the rig's feeder (None: a stiff grid at v_pu);
    der: the name of the DER at the node whose current the current phasors show."""

    feeder: Feeder | None = None
    node: int = 1
    der: str = "inv"
    v_nom: float = 230.0
    f_nom: float = 50.0
    v_pu: float = 1.0
    f_hz: float = 50.0
    synced: bool = True
    tq_code: int = 0            # FRACSEC time-quality code (0 locked; 1-11: error 10**(code-10) s; 15 failure)
    trigger: int = -1           # a trigger reason to report (STAT bits 11 and 3-0), -1 none
    data_error: int = 0
    _phase: float = 0.0
    _jump: float = 0.0
    _sag: tuple[float, float] = (1.0, 0.0)      # factor, until (monotonic)
    _prev_f: float | None = None
    _unsynced_at: float | None = None
    _step: float = 0.0          # frequency step applied at the next frame (so ROCOF sees it)
    log: list = field(default_factory=list)

    # -- the script
    def frequency_step(self, df_hz: float) -> None:
        self._step += df_hz
        self.log.append(("frequency_step", df_hz))

    def angle_jump(self, deg: float) -> None:
        self._jump += math.radians(deg)
        self.log.append(("angle_jump", deg))

    def sag(self, pu: float, duration_s: float) -> None:
        """The voltage at pu of what it was, for duration_s (a swell with pu > 1)."""
        self._sag = (pu, time.monotonic() + duration_s)
        self.log.append(("sag", pu))

    def lose_sync(self) -> None:
        self.synced, self._unsynced_at, self.tq_code = False, time.monotonic(), 11
        self.log.append(("lose_sync",))

    def regain_sync(self) -> None:
        self.synced, self._unsynced_at, self.tq_code = True, None, 0

    # -- the measurement
    def voltage(self) -> tuple[float, float]:
        """(|V| phase-neutral in V, angle against the source in rad) at the node, before scripted events."""
        if self.feeder is None:
            return self.v_pu * self.v_nom, 0.0
        return self.feeder.voltage_v(self.node), self.feeder.angle_rad(self.node)

    def step(self, dt: float) -> tuple[float, float, float, float]:
        """Advance one frame: (|V|, angle of VA, f, ROCOF)."""
        self.f_hz += self._step
        self._step = 0.0
        f = self.f_hz
        rocof = 0.0 if self._prev_f is None else (f - self._prev_f) / dt
        self._prev_f = f
        self._phase = math.remainder(self._phase + 2 * math.pi * (f - self.f_nom) * dt, 2 * math.pi)
        v, a = self.voltage()
        k, until = self._sag
        if time.monotonic() < until:
            v *= k
        return v, math.remainder(a + self._phase + self._jump, 2 * math.pi), f, rocof

    def stat(self) -> int:
        w = self.data_error << 14
        if not self.synced:
            w |= 0x2000
            lost = time.monotonic() - (self._unsynced_at or time.monotonic())
            w |= (0 if lost < 10 else 1 if lost < 100 else 2 if lost <= 1000 else 3) << 4
            w |= 7 << 6                              # time error unknown
        if self.trigger >= 0:
            w |= 0x0800 | (self.trigger & 0xF)
        return w

    def data(self, st: c.Station, dt: float) -> c.StationData:
        v, a, f, rocof = self.step(dt)
        p_w = q_var = 0.0
        if self.feeder is not None:
            inj = self.feeder.der.get(self.node, {}).get(self.der)
            if inj is not None:
                p_w, q_var = inj.p_w, inj.q_var
        i = complex(p_w, -q_var) / (3 * v) if v else 0j   # I* = S / (3 V)  ->  I = conj(S) / (3 conj(V)); V real here
        ph = []
        for j, cur in enumerate(st.currents):
            shift = -2 * math.pi / 3 * (j % 3)
            ph.append(cmath.rect(abs(i), a + shift + cmath.phase(i)) if cur else cmath.rect(v, a + shift))
        return c.StationData(self.stat(), tuple(ph), f, rocof, tuple(float(k) for k in range(len(st.analogs))),
                             (0,) * st.words)


class _Peer:
    def __init__(self, send, kind: str):
        self.send, self.kind, self.on = send, kind, False


class PmuSim:
    """One data stream (IDCODE) served over TCP and UDP. signals: one Signal per station (or one for all)."""

    def __init__(self, cfg: c.Config | None = None, signals: list[Signal] | Signal | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, udp_port: int | None = 0, mixed_udp_port: int | None = None,
                 spontaneous_to: tuple[str, int] | None = None, header: str = "gridedge rig PMU",
                 coalesce: int = 1, split: bool = False):
        self.cfg = cfg or config()
        n = len(self.cfg.stations)
        self.signals = signals if isinstance(signals, list) else [signals or Signal()] * n
        if len(self.signals) != n:
            raise ValueError(f"{len(self.signals)} signals for {n} stations")
        self.host, self.port, self.udp_port = host, port, udp_port
        self.mixed_udp_port, self.spontaneous_to, self.header = mixed_udp_port, spontaneous_to, header
        self.coalesce, self.split = max(1, coalesce), split
        self.commands: list[int] = []
        self.frames_sent = 0
        self.tq_code: int | None = None                 # overrides the signals' (None: the first station's)
        self._peers: list[_Peer] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._pending: dict[_Peer, list[bytes]] = {}
        self._change: tuple[c.Config, int] | None = None
        self._server = self._udp = None
        self._task: asyncio.Task | None = None

    # -- lifecycle
    async def start(self) -> PmuSim:
        loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._tcp_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.udp_port is not None:
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host,
                                                                                                 self.udp_port))
            self.udp_port = self._udp.get_extra_info("sockname")[1]
        if self.spontaneous_to is not None:
            peer = _Peer(lambda data: self._udp.sendto(data, self.spontaneous_to), "udp")
            peer.on = True
            self._peers.append(peer)
        self._task = asyncio.create_task(self._clock())
        return self

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
        if self._udp:
            self._udp.close()

    async def __aenter__(self) -> PmuSim:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- script
    def change_config(self, new: c.Config, announce_frames: int = 10) -> None:
        """Set the configuration-change bit for announce_frames frames, then serve `new` (the same IDCODE); new
        stations measure what the first one does."""
        self._change = (new, announce_frames)

    def drop_clients(self) -> None:
        for w in list(self._writers):
            w.transport.abort()

    # -- commands
    def command(self, data: bytes, peer: _Peer, data_peer: _Peer | None = None) -> None:
        """One command frame from `peer` (answers go to it); data on/off switches data_peer (default: the same)."""
        try:
            frame = c.parse_frame(data)
            cmd, _ext = c.decode_command(frame)
        except c.FrameError as exc:
            log.warning("PMU %d: not a command: %s", self.cfg.idcode, exc)
            return
        if frame.idcode != self.cfg.idcode:
            return
        self.commands.append(cmd)
        soc, frac = self._now()
        if cmd in (c.CMD_DATA_ON, c.CMD_DATA_OFF):
            (data_peer or peer).on = cmd == c.CMD_DATA_ON
        elif cmd in (c.CMD_CFG1, c.CMD_CFG2, c.CMD_CFG3):
            kind = {c.CMD_CFG1: c.CFG1, c.CMD_CFG2: c.CFG2, c.CMD_CFG3: c.CFG3}[cmd]
            cfg = c.Config(self.cfg.idcode, self.cfg.time_base, self.cfg.stations, self.cfg.data_rate, kind, soc, frac)
            peer.send(c.encode_config(cfg))
        elif cmd == c.CMD_HEADER:
            peer.send(c.encode_header(self.cfg.idcode, self.header, soc, frac))

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ctl = _Peer(writer.write, "tcp")
        data_peer = ctl
        if self.mixed_udp_port is not None and self._udp is not None:
            udp_to = (writer.get_extra_info("peername")[0], self.mixed_udp_port)
            data_peer = _Peer(lambda d: self._udp.sendto(d, udp_to), "udp")
        self._peers.append(data_peer)
        self._writers.append(writer)
        buf = bytearray()
        try:
            while chunk := await reader.read(4096):
                buf += chunk
                while True:
                    what, end = c.scan(buf)
                    if what == "more":
                        break
                    if what == "bad":
                        del buf[:1]
                        continue
                    frame = bytes(buf[:end])
                    del buf[:end]
                    self.command(frame, ctl, data_peer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._peers.remove(data_peer)
            self._writers.remove(writer)
            writer.close()

    # -- the frame clock
    def _now(self) -> tuple[int, int]:
        t = time.time_ns()
        soc = t // 10**9
        return soc, round((t % 10**9) * self.cfg.time_base / 1e9) % self.cfg.time_base

    async def _clock(self) -> None:
        try:
            await self._frames()
        except Exception:
            log.exception("PMU %d: the frame clock stopped", self.cfg.idcode)
            raise

    async def _frames(self) -> None:
        """Every instant gets its frame: a loop that falls behind (a loaded machine) sends the late ones at once, as
        a PMU's buffer would; only more than a second behind (or a new rate) starts again from now."""
        cfg_every = 0
        k, period_ns = 0, 0
        while True:
            cfg = self.cfg
            now = time.time_ns()
            if int(round(1e9 / cfg.fps)) != period_ns or now - (k + 1) * period_ns > 10**9:
                period_ns = int(round(1e9 / cfg.fps))
                k = now // period_ns
            k += 1
            await asyncio.sleep(max(0, k * period_ns - now) / 1e9)
            t_ns = k * period_ns
            soc, frac_ns = divmod(t_ns, 10**9)
            frac = round(frac_ns * cfg.time_base / 1e9)
            if frac >= cfg.time_base:
                soc, frac = soc + 1, 0
            data = [sig.data(st, period_ns / 1e9) for sig, st in zip(self.signals, cfg.stations)]
            if self._change is not None:
                new, left = self._change
                data = [c.StationData(d.stat | 0x0400, d.phasors, d.freq, d.rocof, d.analogs, d.digitals)
                        for d in data]
                self._change = (new, left - 1) if left > 1 else None
                if left <= 1:
                    self.cfg = new
                    self.signals = (self.signals + [self.signals[0]] * len(new.stations))[:len(new.stations)]
            code = self.tq_code if self.tq_code is not None else self.signals[0].tq_code
            frame = c.encode_data(cfg, soc, (code << 24) | frac, data)
            if self.spontaneous_to is not None:
                cfg_every -= 1
                if cfg_every <= 0:   # spontaneous: a CFG-2 every 5 s, so a listener can start decoding
                    cfg_every = int(5 * cfg.fps)
                    self._udp.sendto(c.encode_config(self.cfg, c.CFG2), self.spontaneous_to)
            for p in [p for p in self._peers if p.on]:
                self._send(p, frame)
            self.frames_sent += 1

    def _send(self, peer: _Peer, frame: bytes) -> None:
        if self.coalesce > 1 and peer.kind == "tcp":
            q = self._pending.setdefault(peer, [])
            q.append(frame)
            if len(q) < self.coalesce:
                return
            frame = b"".join(q)
            q.clear()
        if self.split and peer.kind == "tcp" and len(frame) > 2:
            half = len(frame) // 2
            peer.send(frame[:half])
            asyncio.get_running_loop().call_later(0.002, peer.send, frame[half:])
            return
        peer.send(frame)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, sim: PmuSim):
        self.sim = sim

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        peers = [p for p in self.sim._peers if getattr(p, "addr", None) == addr]
        if not peers:
            peer = _Peer(lambda d: self.transport.sendto(d, addr), "udp")
            peer.addr = addr
            self.sim._peers.append(peer)
            peers = [peer]
        self.sim.command(data, peers[0])


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m gridedge.hil.pmu_sim", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="TCP port of the first PMU (0: any); the next ones follow")
    ap.add_argument("--pmus", type=int, default=1, help="how many PMUs (each its own TCP/UDP ports)")
    ap.add_argument("--fps", type=int, default=50)
    ap.add_argument("--stations", type=int, default=1, help="stations per stream (a PDC's stream)")
    ap.add_argument("--phasors", type=int, default=4)
    ap.add_argument("--format", type=int, default=0, help="FORMAT bits: 1 polar, 2 float phasors, 4 float "
                                                           "analogs, 8 float frequency")
    ap.add_argument("--feeder", metavar="R,X", help="one-segment feeder with a DER at its end")
    ap.add_argument("--der-w", type=float, default=8000.0, help="the DER's injection on the feeder, W")
    return ap.parse_args(argv)


async def _serve(args) -> None:
    sims = []
    for k in range(args.pmus):
        feeder = None
        if args.feeder:
            r, x = (float(v) for v in args.feeder.split(","))
            feeder = Feeder([(r, x)])
            feeder.set_injection(1, "inv", args.der_w, 0.0)
        sts = [station(f"PMU{k + 1}_{j + 1}", k * 100 + j + 1, phasors=args.phasors, fmt=args.format)
               for j in range(args.stations)]
        sim = PmuSim(config(k + 1, args.fps, sts), Signal(feeder=feeder), host=args.host,
                     port=args.port + k if args.port else 0)
        await sim.start()
        sims.append(sim)
        print(f"READY {sim.port} {sim.udp_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sim in sims:
        await sim.stop()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(_parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
