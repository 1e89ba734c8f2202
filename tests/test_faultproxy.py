"""FaultProxy against a real asyncio echo server over loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.hil.faultproxy import FaultProxy

from .aio import until

TIMEOUT = 5.0
QUIET = 0.4  # how long "nothing happens" is observed in blackhole/refuse checks


class Upstream:
    """Echo server that records what it received and lets a test push data to its clients."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.accepted = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.connected = asyncio.Event()
        self.ended: asyncio.Queue[str] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        self.connected.set()
        how = "eof"
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except ConnectionResetError:
            how = "reset"
        finally:
            writer.close()
            await self.ended.put(how)

    async def stop(self) -> None:
        assert self.server is not None
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()


def run(body: Callable[[Upstream, FaultProxy], Awaitable[None]], **proxy_kw: float) -> None:
    """Run one scenario with a fresh upstream and proxy inside its own event loop."""

    async def main() -> None:
        up = Upstream()
        await up.start()
        proxy = FaultProxy("127.0.0.1", up.port, **proxy_kw)
        await proxy.start()
        try:
            await asyncio.wait_for(body(up, proxy), 30)
        finally:
            await proxy.stop()
            await up.stop()

    asyncio.run(main())


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), TIMEOUT)


async def assert_silent(reader: asyncio.StreamReader) -> None:
    """No data, no EOF and no RST for QUIET seconds."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), QUIET)


async def assert_reset(reader: asyncio.StreamReader) -> None:
    """The proxy ended the connection with RST (not FIN: an orderly close would look like the upstream's)."""
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), TIMEOUT)


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """A client crash as the peer sees it: SO_LINGER 0 makes the close an RST (a plain abort sends FIN)."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _chunks(n: int) -> list[bytes]:
    return [f"{i:05d}:".encode() + bytes([i % 251]) * (i % 97) for i in range(n)]


def test_bytes_pass_both_ways_in_order() -> None:
    async def body(up: Upstream, proxy: FaultProxy) -> None:
        r, w = await connect(proxy)
        chunks = _chunks(300)
        for c in chunks:
            w.write(c)
        await w.drain()
        expected = b"".join(chunks)
        assert await read_exactly(r, len(expected)) == expected
        assert bytes(up.received) == expected
        assert proxy.bytes_up == proxy.bytes_down == len(expected)
        assert proxy.connections == 1
        # half-close travels as FIN: upstream sees EOF, echoes nothing more and closes; so do we
        w.write_eof()
        assert await asyncio.wait_for(up.ended.get(), TIMEOUT) == "eof"
        assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
        w.close()

    run(body)


def test_latency_adds_at_least_the_delay() -> None:
    async def body(up: Upstream, proxy: FaultProxy) -> None:
        r, w = await connect(proxy)
        w.write(b"warm")
        assert await read_exactly(r, 4) == b"warm"
        proxy.latency_s = 0.15
        t0 = time.monotonic()
        for c in (b"a", b"b", b"c"):
            w.write(c)
            await w.drain()
        assert await read_exactly(r, 3) == b"abc"  # order kept
        assert time.monotonic() - t0 >= 2 * 0.15  # one-way delay in each direction
        w.close()

    run(body)


def test_blackhole_is_silent_and_new_connections_work_after() -> None:
    async def body(up: Upstream, proxy: FaultProxy) -> None:
        r, w = await connect(proxy)
        w.write(b"hello")
        assert await read_exactly(r, 5) == b"hello"
        idle_r, idle_w = await connect(proxy)  # sends nothing during the blackhole
        idle_w.write(b"x")
        assert await read_exactly(idle_r, 1) == b"x"
        seen = len(up.received)

        proxy.blackhole()
        w.write(b"lost in the void")
        await w.drain()
        up.writers[0].write(b"push")  # the upstream pushes on the first connection: must not arrive
        await assert_silent(r)  # no data, no FIN, no RST
        assert len(up.received) == seen  # the upstream saw nothing
        assert up.ended.empty()  # and was not closed
        assert proxy.bytes_discarded > 0
        late_r, late_w = await connect(proxy)  # accepted, but goes nowhere
        late_w.write(b"during")
        await assert_silent(late_r)
        assert up.accepted == 2

        proxy.blackhole(False)
        nr, nw = await connect(proxy)
        nw.write(b"again")
        assert await read_exactly(nr, 5) == b"again"
        # a connection that lost data stays dead rather than resume with a gap in its stream
        w.write(b"more")
        await assert_silent(r)
        # a connection that lost nothing resumes
        idle_w.write(b"y")
        assert await read_exactly(idle_r, 1) == b"y"
        for writer in (w, idle_w, late_w, nw):
            writer.close()

    run(body)


def test_reset_all_resets_clients_and_upstream() -> None:
    async def body(up: Upstream, proxy: FaultProxy) -> None:
        conns = [await connect(proxy) for _ in range(3)]
        for r, w in conns:
            w.write(b"ping")
            assert await read_exactly(r, 4) == b"ping"
        assert proxy.connections == 3
        await proxy.reset_all()
        assert proxy.connections == 0
        for r, w in conns:
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await read_exactly(r, 1)
            w.close()
        ends = [await asyncio.wait_for(up.ended.get(), TIMEOUT) for _ in conns]
        assert ends == ["reset"] * 3
        r, w = await connect(proxy)  # the proxy itself keeps serving
        w.write(b"next")
        assert await read_exactly(r, 4) == b"next"
        w.close()

    run(body)


def test_refuse() -> None:
    async def body(up: Upstream, proxy: FaultProxy) -> None:
        proxy.refuse()
        r, w = await connect(proxy)
        await assert_reset(r)
        w.close()
        assert up.accepted == 0 and proxy.accepted == 1
        proxy.refuse(False)
        r, w = await connect(proxy)
        w.write(b"ok")
        assert await read_exactly(r, 2) == b"ok"
        w.close()

    run(body)


def test_upstream_down_resets_client() -> None:
    async def body(up: Upstream, proxy: FaultProxy) -> None:
        await up.stop()
        r, w = await connect(proxy)
        await assert_reset(r)
        assert proxy.connections == 0
        w.close()

    run(body)


def test_client_reset_propagates_to_upstream() -> None:
    async def body(up: Upstream, proxy: FaultProxy) -> None:
        r, w = await connect(proxy)
        w.write(b"abc")
        assert await read_exactly(r, 3) == b"abc"
        abort_with_rst(w)
        assert await asyncio.wait_for(up.ended.get(), TIMEOUT) == "reset"
        await until(lambda: proxy.connections == 0, TIMEOUT)  # no event for "pair forgotten"

    run(body)


def test_drop_rate_one_stalls_but_delivers_everything_in_order() -> None:
    async def body(up: Upstream, proxy: FaultProxy) -> None:
        r, w = await connect(proxy)
        chunks = _chunks(40)
        expected = b"".join(chunks)
        for c in chunks:
            w.write(c)
            await w.drain()
        assert await read_exactly(r, len(expected)) == expected
        assert bytes(up.received) == expected
        assert proxy.stalls >= 2  # at least one chunk each way was "lost" and retransmitted
        w.close()

    run(body, drop_rate=1.0, drop_stall_s=0.005)


def test_knob_validation() -> None:
    p = FaultProxy("127.0.0.1", 1883)
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="drop_rate"):
            p.drop_rate = bad  # type: ignore[assignment]
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="latency_s"):
            p.latency_s = bad
        with pytest.raises(ValueError, match="drop_stall_s"):
            p.drop_stall_s = bad
    with pytest.raises(ValueError, match="upstream_port"):
        FaultProxy("127.0.0.1", 0)
    with pytest.raises(ValueError, match="port"):
        FaultProxy("127.0.0.1", 1883, port=-1)


@settings(max_examples=20, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=12),
    drop_rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_stream_integrity_fuzz(chunks: list[bytes], drop_rate: float, seed: int) -> None:
    """Whatever the chunking and loss rate, the echoed stream is byte-identical."""

    async def body(up: Upstream, proxy: FaultProxy) -> None:
        r, w = await connect(proxy)
        for c in chunks:
            w.write(c)
            await w.drain()
        expected = b"".join(chunks)
        assert await read_exactly(r, len(expected)) == expected
        w.close()

    run(body, drop_rate=drop_rate, drop_stall_s=0.001, seed=seed)
