"""Asyncio TCP proxy between the agent and the broker, for injecting network faults in the HIL rig.

Fault model (what each knob means on a TCP stream):

* ``latency_s``: every chunk is delivered ``latency_s`` after it arrived, per direction, in order
  (one queue and one pump task per direction, so delay never reorders bytes).
* ``drop_rate`` / ``drop_stall_s``: a lossy link does not lose bytes inside a TCP stream; TCP
  retransmits, so the application sees a *stall*, not a gap (deleting bytes would corrupt MQTT framing,
  which no real link does). So with probability ``drop_rate`` per chunk, that direction stalls for
  ``drop_stall_s`` (a retransmission timeout, 200 ms by default) before the chunk is delivered. Later
  chunks queue behind it (head-of-line blocking), so order is kept and every byte arrives.
* ``blackhole()``: the path goes silent in both directions: no data, no FIN, no RST; sockets stay
  open. Data arriving meanwhile is discarded. A connection that lost data this way would be corrupt
  if it resumed, so it stays silent for good (like a lost NAT/firewall state): its peers must detect it
  by their own keepalive timeouts, as in the field. A connection that lost nothing resumes after
  ``blackhole(False)``. Connections accepted during the blackhole get no upstream and stay silent.
* ``reset_all()``: abort every proxied connection with RST (SO_LINGER 0) on both sides.
* ``refuse()``: new connections are accepted and reset at once (closest to "connection refused"
  a user-space proxy can do, since the kernel completes the handshake); the upstream sees nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

__all__ = ["FaultProxy"]

_CHUNK = 65536
_QUEUE_CHUNKS = 256  # bounded per-direction queue: back-pressure instead of unbounded buffering
_EOF = None


def _abort_with_rst(writer: asyncio.StreamWriter | None) -> None:
    """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    if writer is None:
        return
    sock = writer.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Pair:
    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    up_r: asyncio.StreamReader | None = None
    up_w: asyncio.StreamWriter | None = None
    broken: bool = False  # lost data in a blackhole: never forwards again
    eof_done: int = 0  # directions that finished (EOF forwarded)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class FaultProxy:
    """One listening port forwarding to ``upstream_host:upstream_port`` with switchable faults."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_s: float = 0.0,
        drop_rate: float = 0.0,
        drop_stall_s: float = 0.2,
        seed: int | None = None,
    ) -> None:
        if not isinstance(upstream_port, int) or not 0 < upstream_port <= 65535:
            raise ValueError(f"upstream_port must be an int in 1..65535, got {upstream_port!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self.latency_s = latency_s
        self.drop_rate = drop_rate
        self.drop_stall_s = drop_stall_s
        self.rng = random.Random(seed)
        self.bytes_up = 0  # client -> upstream, delivered
        self.bytes_down = 0  # upstream -> client, delivered
        self.bytes_discarded = 0  # swallowed by a blackhole
        self.stalls = 0  # simulated retransmission stalls
        self.accepted = 0  # connections accepted in total (refused ones included)
        self._blackhole = False
        self._refuse = False
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    # --- knobs with validation ---------------------------------------------------------------
    @property
    def latency_s(self) -> float:
        return self._latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self._latency_s = self._non_negative("latency_s", value)

    @property
    def drop_stall_s(self) -> float:
        return self._drop_stall_s

    @drop_stall_s.setter
    def drop_stall_s(self, value: float) -> None:
        self._drop_stall_s = self._non_negative("drop_stall_s", value)

    @property
    def drop_rate(self) -> float:
        return self._drop_rate

    @drop_rate.setter
    def drop_rate(self, value: float) -> None:
        value = self._non_negative("drop_rate", value)
        if value > 1.0:
            raise ValueError(f"drop_rate is a probability in [0, 1], got {value!r}")
        self._drop_rate = value

    @staticmethod
    def _non_negative(name: str, value: float) -> float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not value >= 0.0 or value == float("inf"):  # also rejects NaN
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        return value

    def blackhole(self, on: bool = True) -> None:
        self._blackhole = bool(on)

    def refuse(self, on: bool = True) -> None:
        self._refuse = bool(on)

    @property
    def blackholed(self) -> bool:
        return self._blackhole

    @property
    def refusing(self) -> bool:
        return self._refuse

    @property
    def connections(self) -> int:
        """Currently open proxied connections (client side accepted, not yet closed)."""
        return len(self._pairs)

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> int:
        if self._server is not None:
            raise RuntimeError("FaultProxy already started")
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.reset_all()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def reset_all(self) -> None:
        """Abort every proxied connection with RST on both sides and wait until they are gone."""
        pairs = list(self._pairs)
        for pair in pairs:
            self._abort(pair)
        await asyncio.gather(*(p.closed.wait() for p in pairs))

    # --- per-connection machinery --------------------------------------------------------------
    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refuse:
            _abort_with_rst(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        pair = _Pair(reader, writer)
        self._pairs.add(pair)
        try:
            if self._blackhole:
                pair.broken = True  # the SYN would have been lost: never reaches the upstream
            else:
                try:
                    pair.up_r, pair.up_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
                except OSError:
                    return  # upstream down: the finally clause resets the client
                if pair.closed.is_set():  # reset_all() ran while we were connecting
                    _abort_with_rst(pair.up_w)
                    return
            if pair.up_r is None:
                await self._drain_silently(pair)
                return
            pair.tasks = [
                asyncio.ensure_future(self._direction(pair, pair.client_r, pair.up_w, up=True)),
                asyncio.ensure_future(self._direction(pair, pair.up_r, pair.client_w, up=False)),
            ]
            await asyncio.gather(*pair.tasks, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # stop(): this is a top-level connection task, ending it quietly is the point
        finally:
            self._abort(pair)
            self._handlers.discard(task)

    async def _drain_silently(self, pair: _Pair) -> None:
        """A connection with no upstream: swallow its data until the client goes away."""
        while True:
            try:
                data = await pair.client_r.read(_CHUNK)
            except OSError:
                return
            if not data:
                return
            self.bytes_discarded += len(data)

    async def _direction(
        self,
        pair: _Pair,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        """Reader side of one direction: stamp chunks with their arrival time and queue them."""
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(_QUEUE_CHUNKS)
        pump = asyncio.ensure_future(self._pump(pair, queue, writer, up=up))
        try:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except OSError:  # RST from this side: reset the other side too
                    self._abort(pair)
                    return
                if self._blackhole or pair.broken:
                    if data:
                        self.bytes_discarded += len(data)
                        pair.broken = True
                        continue
                    if self._blackhole:  # FIN lost in the blackhole; keep the other side open
                        pair.broken = True
                        await pair.closed.wait()
                        return
                    self._abort(pair)  # peer of a dead connection gave up: clean up both sides
                    return
                await queue.put((time.monotonic() + self._latency_s, data if data else _EOF))
                if not data:
                    break
            await pump
        finally:
            if not pump.done():
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    async def _pump(
        self,
        pair: _Pair,
        queue: asyncio.Queue[tuple[float, bytes | None]],
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        """Writer side of one direction: deliver queued chunks in order after latency and stalls."""
        while True:
            due, data = await queue.get()
            if self._drop_rate > 0.0 and self.rng.random() < self._drop_rate:
                self.stalls += 1
                due = max(due, time.monotonic()) + self._drop_stall_s
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._blackhole or pair.broken:
                pair.broken = True
                if data is not _EOF:
                    self.bytes_discarded += len(data)
                    continue
                if not self._blackhole:  # a dead connection's peer gave up: clean up both sides
                    self._abort(pair)
                    return
                continue  # FIN lost in the blackhole
            try:
                if data is _EOF:
                    if writer.can_write_eof():
                        writer.write_eof()
                    pair.eof_done += 1
                    if pair.eof_done == 2:
                        self._close(pair)
                    return
                writer.write(data)
                await writer.drain()
            except (OSError, RuntimeError):
                self._abort(pair)
                return
            if up:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)

    def _close(self, pair: _Pair) -> None:
        """Both directions ended with FIN: close normally."""
        for w in (pair.client_w, pair.up_w):
            if w is not None:
                w.close()
        self._forget(pair)

    def _abort(self, pair: _Pair) -> None:
        if pair.closed.is_set():
            return
        _abort_with_rst(pair.client_w)
        _abort_with_rst(pair.up_w)
        current = asyncio.current_task()
        for t in pair.tasks:
            if t is not current:
                t.cancel()
        self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        self._pairs.discard(pair)
        pair.closed.set()
