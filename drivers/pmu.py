"""A C37.118.2 client: the connection to a PMU or PDC (TCP; UDP commanded or spontaneous; mixed: commands over
TCP, data over UDP), the commands (configuration, data on/off), and the byte stream cut into frames and decoded.

StreamDecoder is sans-IO. Bytes go in as they arrive: several frames in one read, a frame split across reads,
frames of several data streams (IDCODEs) interleaved, garbage between frames; each stream's data frames are
decoded in bulk by its DataDecoder (the compiled kernel, handed in by the caller: drivers import only the core)
into the stream's ring of numpy arrays, and every other frame is decoded here. A new configuration replaces the
stream's decoder (a configuration change mid-stream), without losing the frames that follow it.

PmuClient runs a connection under asyncio and tells a listener what arrives (config, rows, header, link up/down).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gridedge.core.model import Detail, Quality, TimeQuality, Validity, accuracy_bits

from . import c37118 as c

__all__ = ["Stream", "StreamDecoder", "PmuClient", "Listener", "stat_quality", "time_quality", "TRANSPORTS"]

log = logging.getLogger(__name__)

TRANSPORTS = ("tcp", "udp", "udp_spontaneous", "mixed")
MORE, OTHER, BAD, FULL = 0, 1, 2, 3        # DataDecoder.feed's stops (gridedge.cext.pmu)
MAX_BUFFER = 1 << 20                       # a TCP buffer that grows past this without a frame is dropped
_LEAP = {(True, False): "insert_pending", (True, True): "delete_pending"}


def stat_quality(word: int) -> Quality | None:
    """What a STAT word says of its station's values: None (good), or (validity, detail). Data error 2 or 3
    (test mode, absent data put in by a PDC, PMU error: "do not use") is invalid; error 1 (no information) and
    data modified by post-processing are questionable."""
    err = word >> 14
    if err == 3:
        return Validity.INVALID, Detail.DEVICE_EXCEPTION
    if err == 2:
        return Validity.INVALID, Detail.TEST
    if err == 1:
        return Validity.QUESTIONABLE, Detail.DEVICE_EXCEPTION
    if word & 0x0200:
        return Validity.QUESTIONABLE, Detail.SUBSTITUTED
    return None


def angle_doubtful(word: int) -> bool:
    """A phase angle needs the PMU's clock: doubtful while it is not synchronised, unlocked, or sorted by arrival."""
    return bool(word & 0x3030)


def time_quality(word: int, tq: int) -> TimeQuality:
    """The PMU's time quality from a station's STAT word and the frame's FRACSEC time-quality byte: synchronised
    unless the sync-error bit or an unlocked time is set; clock failure on code 15; accuracy from the worse of the
    time-quality code and the 2011 STAT time-error bits; a pending or past leap second."""
    code = tq & 0xF
    errors = [c.TQ_ERROR_S.get(code, float("inf"))] if code else []
    if (word >> 6) & 7:
        errors.append(c.STAT_TIME_ERROR_S[(word >> 6) & 7])
    leap = _LEAP.get((bool(tq & 0x10), bool(tq & 0x40)), "")
    if not leap and tq & 0x20:
        leap = "deleted" if tq & 0x40 else "inserted"
    return TimeQuality("device", not (word & 0x2000 or word & 0x0030), code == 0xF,
                       accuracy_bits(max(errors)) if errors else None, True, False, leap)


@dataclass
class Stream:
    """One data stream (IDCODE): its configuration and the decoder holding its ring of rows."""

    config: c.Config
    decoder: object                         # gridedge.cext.pmu.DataDecoder
    generation: int = 0                     # how many configurations this stream has had


@dataclass
class Counts:
    frames: int = 0
    bad_bytes: int = 0                      # bytes skipped to find a frame (garbage, bad CRC)
    unknown: int = 0                        # data frames of a stream with no configuration yet
    mismatched: int = 0                     # data frames whose size does not fit the configuration
    bad_configs: int = 0
    other: int = 0                          # commands and frame types a client does not expect


class Listener:
    """What a PmuClient tells; override what you need."""

    def config(self, stream: Stream) -> None: ...
    def rows(self, stream: Stream, n: int) -> None: ...
    def header(self, idcode: int, text: str) -> None: ...
    def need_config(self, idcode: int) -> None: ...
    def link(self, up: bool, why: str = "") -> None: ...


class StreamDecoder:
    """Bytes of one connection in, frames out to a Listener, synchronously (the rows are in the ring when
    rows() is called, and stay there until `capacity` more arrive)."""

    def __init__(self, make_decoder: Callable[[c.Config, int], object], listener: Listener, *, capacity: int = 4096,
                 configs: tuple[int, ...] = (c.CFG2, c.CFG3)):
        self.make_decoder = make_decoder
        self.listener = listener
        self.capacity = capacity
        self.configs = configs              # the configuration frames that define a stream (CFG-1 only describes)
        self.streams: dict[int, Stream] = {}
        self.counts = Counts()
        self.cfg1: dict[int, c.Config] = {}
        self._buf = bytearray()
        self._current: Stream | None = None

    def feed(self, data: bytes, *, datagram: bool = False) -> None:
        """A TCP read, or one UDP datagram (whole frames only: what is left over is dropped, not kept)."""
        buf = self._buf
        buf += data
        pos = 0
        limit = max(1, self.capacity // 2)  # rows per kernel call: the listener reads them before they are overwritten
        while pos < len(buf):
            cur = self._current
            if cur is not None:
                pos, rows, why = cur.decoder.feed(buf, pos, limit)
                if rows:
                    self.counts.frames += rows
                    self.listener.rows(cur, rows)
                if why == MORE:
                    if (q := self._stalled(buf, pos)) is None:
                        break
                    pos = q
                    continue
                if why == FULL:
                    continue
                end = pos + (buf[pos + 2] << 8 | buf[pos + 3]) if why == OTHER else 0
            else:
                what, end = c.scan(buf, pos)
                if what == "more":
                    if (q := self._stalled(buf, pos)) is None:
                        break
                    pos = q
                    continue
                why = OTHER if what == "frame" else BAD
            if why == BAD:
                nxt = buf.find(b"\xaa", pos + 1)
                nxt = len(buf) if nxt < 0 else nxt
                self.counts.bad_bytes += nxt - pos
                pos = nxt
                continue
            self._frame(buf, pos, end)
            pos = end
        if datagram or (pos == 0 and len(buf) > MAX_BUFFER):
            self.counts.bad_bytes += len(buf) - pos
            pos = len(buf)
        del buf[:pos]

    def _stalled(self, buf: bytearray, pos: int) -> int | None:
        """The frame at pos is not whole yet. If a whole frame with a right CRC starts after it within the bytes at
        hand, what is at pos was garbage that claimed a length (it would hold the stream up to 64 KiB): the
        position of that frame (the bytes before it counted as bad). None: wait for more."""
        q = buf.find(b"\xaa", pos + 1)
        while q >= 0:
            if c.scan(buf, q)[0] == "frame":
                self.counts.bad_bytes += q - pos
                return q
            q = buf.find(b"\xaa", q + 1)
        return None

    def _frame(self, buf: bytearray, pos: int, end: int) -> None:
        """A whole frame with a right CRC that the current stream's kernel did not take."""
        ftype, idcode = (buf[pos + 1] >> 4) & 7, buf[pos + 4] << 8 | buf[pos + 5]
        if ftype == c.DATA:
            st = self.streams.get(idcode)
            if st is None:
                self.counts.unknown += 1
                self.listener.need_config(idcode)
            elif end - pos != st.config.data_frame_size:
                self.counts.mismatched += 1
                self.listener.need_config(idcode)
            else:
                self._current = st          # the kernel takes it (and what follows of this stream) next round
                n = st.decoder.feed(buf[pos:end])[1]
                self.counts.frames += n
                self.listener.rows(st, n)
            return
        frame = c.frame_at(buf, pos, end)
        if ftype in (c.CFG1, c.CFG2, c.CFG3):
            try:
                cfg = c.decode_config(frame)
            except c.FrameError as exc:
                self.counts.bad_configs += 1
                if _seldom(self.counts.bad_configs):
                    log.warning("PMU stream %d: configuration not understood (%d so far): %s", idcode,
                                self.counts.bad_configs, _esc(exc))
                return
            if ftype not in self.configs:
                self.cfg1[idcode] = cfg
                return
            self._configure(cfg)
        elif ftype == c.HEADER:
            self.listener.header(idcode, frame.body.decode("latin-1"))
        else:
            self.counts.other += 1

    def _configure(self, cfg: c.Config) -> None:
        old = self.streams.get(cfg.idcode)
        if old is not None and old.config == cfg:
            return                          # the same configuration again (asked for after a change bit)
        try:
            dec = self.make_decoder(cfg, self.capacity)
        except ValueError as exc:
            self.counts.bad_configs += 1
            if _seldom(self.counts.bad_configs):
                log.warning("PMU stream %d: configuration not usable (%d so far): %s", cfg.idcode,
                            self.counts.bad_configs, _esc(exc))
            return
        st = Stream(cfg, dec, old.generation + 1 if old else 0)
        self.streams[cfg.idcode] = st
        self._current = st
        self.listener.config(st)


def _seldom(n: int) -> bool:
    """Log the 1st, 2nd, 4th, 8th... occurrence: a hostile peer cannot flood the log."""
    return n & (n - 1) == 0


def _esc(x) -> str:
    return str(x).encode("unicode_escape").decode()[:300]


# ---------------------------------------------------------------- asyncio transports

class _TcpProto(asyncio.Protocol):
    def __init__(self, client: PmuClient):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.received(data, False)

    def connection_lost(self, exc) -> None:
        self.client.lost(f"connection lost: {exc or 'closed by the PMU'}")


class _UdpProto(asyncio.DatagramProtocol):
    def __init__(self, client: PmuClient):
        self.client = client

    def datagram_received(self, data: bytes, addr) -> None:
        if self.client.accepts(addr):
            self.client.received(data, True)

    def error_received(self, exc) -> None:
        log.debug("PMU UDP error: %s", exc)


@dataclass
class LinkSpec:
    """How to reach a PMU: transport (TRANSPORTS), its address, the gateway's UDP port for data, the stream to
    command, and which configuration frame to ask for (2 or 3)."""

    transport: str = "tcp"
    host: str = "127.0.0.1"
    port: int = 4712
    udp_port: int = 4713
    idcode: int = 1
    cfg: int = 2
    timeout_s: float = 5.0
    bind: str = "0.0.0.0"
    extra: dict = field(default_factory=dict)


class PmuClient:
    """One connection to a PMU or PDC. run() keeps it up: connect, ask for the configuration, turn data on, watch
    for silence (the data stops: reconnect, or ask again over UDP), follow configuration changes."""

    def __init__(self, name: str, spec: LinkSpec, make_decoder, listener: Listener, capacity: int = 4096):
        if spec.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {spec.transport!r}")
        self.name, self.spec, self.listener = name, spec, listener
        self.decoder = StreamDecoder(make_decoder, _Relay(self, listener), capacity=capacity,
                                     configs=(c.CFG3,) if spec.cfg == 3 else (c.CFG2,))
        self._tcp: asyncio.Transport | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._gone: asyncio.Event | None = None
        self._why = ""
        self._peer_ip = spec.host
        self.last_rx = 0.0
        self._asked: dict[int, float] = {}

    # -- what the transports call
    def received(self, data: bytes, datagram: bool) -> None:
        self.last_rx = time.monotonic()
        self.decoder.feed(data, datagram=datagram)

    def lost(self, why: str) -> None:
        self._why = why
        if self._gone is not None:
            self._gone.set()

    def accepts(self, addr) -> bool:
        """UDP data from the PMU's address only (any in spontaneous mode without a host)."""
        return self.spec.transport == "udp_spontaneous" and not self.spec.host or addr[0] == self._peer_ip

    # -- commands
    def command(self, cmd: int, idcode: int | None = None) -> None:
        now = time.time_ns()
        frame = c.encode_command(self.spec.idcode if idcode is None else idcode, cmd, now // 10**9,
                                 (now % 10**9) // 1000)
        if self._tcp is not None and not self._tcp.is_closing():
            self._tcp.write(frame)
        elif self._udp is not None and self.spec.transport == "udp":
            self._udp.sendto(frame, (self.spec.host, self.spec.port))

    def ask_config(self, idcode: int) -> None:
        """CFG-2/3 for a stream, at most once a second each (a change bit stays set for a minute)."""
        now = time.monotonic()
        if now - self._asked.get(idcode, -10.0) >= 1.0 and self.spec.transport != "udp_spontaneous":
            self._asked[idcode] = now
            self.command(c.CMD_CFG3 if self.spec.cfg == 3 else c.CMD_CFG2, idcode)

    # -- the connection
    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        sp = self.spec
        self._peer_ip = sp.host
        if sp.transport in ("tcp", "mixed"):
            self._tcp, _ = await asyncio.wait_for(loop.create_connection(lambda: _TcpProto(self), sp.host, sp.port),
                                                  sp.timeout_s)
            self._peer_ip = self._tcp.get_extra_info("peername")[0]
        if sp.transport != "tcp":
            local = (sp.bind, sp.udp_port if sp.transport != "udp" or sp.udp_port else 0)
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpProto(self), local_addr=local)

    async def close(self) -> None:
        if self._tcp is not None or self._udp is not None:
            for idcode in self.decoder.streams or (self.spec.idcode,):
                self.command(c.CMD_DATA_OFF, idcode)
        for t in (self._tcp, self._udp):
            if t is not None:
                t.close()
        self._tcp = self._udp = None

    async def run(self) -> None:
        backoff = 1.0
        while True:
            self._gone = asyncio.Event()
            try:
                await self._open()
            except (OSError, asyncio.TimeoutError) as exc:
                self.listener.link(False, f"cannot connect: {exc}")
                await self.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            self.last_rx = time.monotonic()
            self.ask_config(self.spec.idcode)
            started = False
            while not self._gone.is_set():
                if not started and self.spec.idcode in self.decoder.streams:
                    self.command(c.CMD_DATA_ON)
                    started = True
                    backoff = 1.0
                    self.listener.link(True)
                silent = time.monotonic() - self.last_rx
                if silent > self.spec.timeout_s:
                    self._why = f"no frame for {silent:.1f} s"
                    break
                if not started and silent > 1.0:
                    self.ask_config(self.spec.idcode)
                try:
                    await asyncio.wait_for(self._gone.wait(), min(0.5, self.spec.timeout_s / 4))
                except asyncio.TimeoutError:
                    pass
            self.listener.link(False, self._why)
            await self.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)


class _Relay(Listener):
    """Between the decoder and the caller's listener: asks for a configuration when a stream needs one."""

    def __init__(self, client: PmuClient, inner: Listener):
        self.client, self.inner = client, inner

    def config(self, stream):
        self.inner.config(stream)

    def rows(self, stream, n):
        self.inner.rows(stream, n)

    def header(self, idcode, text):
        self.inner.header(idcode, text)

    def need_config(self, idcode):
        self.client.ask_config(idcode)
        self.inner.need_config(idcode)
