"""The network path between namespaces (hil/netns.py): real veth pairs, a client process in the gateway namespace,
an echo server here. Delay, loss and blackhole act on packets, so TCP itself must cope with them."""
from __future__ import annotations

import asyncio
import hashlib
import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridedge.hil import netns

from . import aio

needs_netns = pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))

#: Run in the gateway namespace: connect, send N bytes, half-close, read the echo; one JSON line about it.
CLIENT = r"""
import hashlib, json, socket, sys, time
host, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t0 = time.monotonic()
try:
    s = socket.create_connection((host, port), timeout=timeout)
    connected = time.monotonic() - t0
    s.sendall(bytes(range(256)) * (n // 256))
    s.shutdown(socket.SHUT_WR)
    h, got = hashlib.sha256(), 0
    while d := s.recv(65536):
        h.update(d)
        got += len(d)
    print(json.dumps({"connect_s": connected, "total_s": time.monotonic() - t0, "got": got, "sha": h.hexdigest()}))
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__}))
"""


async def echo_server(host: str) -> asyncio.Server:
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    return await asyncio.start_server(echo, host, 0)


async def client(wan: netns.WanPath, port: int, n: int = 256, timeout_s: float = 10.0) -> dict:
    proc = await asyncio.create_subprocess_exec(*wan.exec_prefix, sys.executable, "-c", CLIENT, wan.broker_host,
                                                str(port), str(n), str(timeout_s), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    return json.loads(out)


def sent_sha(n: int) -> str:
    return hashlib.sha256(bytes(range(256)) * (n // 256)).hexdigest()


@needs_netns
def test_the_path_carries_tcp_and_delays_each_direction():
    async def main():
        async with netns.WanPath() as wan:
            srv = await echo_server(wan.broker_host)
            port = srv.sockets[0].getsockname()[1]
            plain = await client(wan, port, 204_800)
            assert (plain["got"], plain["sha"]) == (204_800, sent_sha(204_800))
            await wan.set(latency_s=0.1)
            slow = await client(wan, port)
            # SYN out and SYN-ACK back: two one-way delays; then the data out and its echo back: two more
            assert slow["connect_s"] >= 0.2 and slow["total_s"] >= 0.4, slow
            srv.close()
    aio.arun(main())


@needs_netns
def test_lost_packets_are_retransmitted_by_tcp_not_lost_from_the_stream():
    async def main():
        async with netns.WanPath(seed=3) as wan:
            srv = await echo_server(wan.broker_host)
            port = srv.sockets[0].getsockname()[1]
            before = await wan.set(loss=0.2)
            got = await client(wan, port, 102_400, timeout_s=20)
            after = await wan.stats()
            assert (got.get("got"), got.get("sha")) == (102_400, sent_sha(102_400)), got
            assert after["lost"] > before["lost"]
            srv.close()
    aio.arun(main(), timeout=60)


@needs_netns
def test_blackhole_drops_everything_without_a_reset_and_ends():
    async def main():
        async with netns.WanPath() as wan:
            srv = await echo_server(wan.broker_host)
            closed = await echo_server(wan.broker_host)
            nobody = closed.sockets[0].getsockname()[1]
            closed.close()
            await closed.wait_closed()
            assert (await client(wan, nobody))["error"] == "ConnectionRefusedError"     # the RST comes back
            await wan.set(blackhole=True)
            assert (await client(wan, nobody, timeout_s=1.0))["error"] == "TimeoutError"   # now nothing does
            dark = await wan.set(blackhole=False)
            assert dark["lost"] + dark.get("blackholed", 0) > 0      # (netem counts both as lost)
            port = srv.sockets[0].getsockname()[1]
            assert (await client(wan, port))["sha"] == sent_sha(256)
            srv.close()
    aio.arun(main())


@needs_netns
def test_bad_settings_are_refused_and_change_nothing():
    async def main():
        async with netns.WanPath() as wan:
            for bad in ({"loss": 1.5}, {"latency_s": -1}, {"blackhole": 1}, {"jitter_s": 0.1}):
                with pytest.raises(ValueError):
                    await wan.set(**bad)
            now = await wan.stats()
            assert (now["latency_s"], now["loss"], now["blackhole"]) == (0.0, 0.0, False)
    aio.arun(main())


@needs_netns
def test_nothing_is_left_behind():
    async def main():
        wan = netns.WanPath()
        async with wan:
            names = netns._run("ip", "netns", "list")
            assert wan.gateway_ns in names and wan.path_ns in names
        assert wan.gateway_ns not in netns._run("ip", "netns", "list")
        assert wan.host_if not in netns._run("ip", "-o", "link")
        broken = netns.WanPath()
        broken.host_if = "x" * 16                   # longer than IFNAMSIZ: the veth cannot be made
        with pytest.raises(RuntimeError, match="ip link add"):
            await broken.start()                    # fails half-way, and removes the namespaces it made
        assert broken.gateway_ns not in netns._run("ip", "netns", "list")
    aio.arun(main())


def test_settings_examples():
    assert netns.parse_settings('{"latency_s": 0.1, "loss": 0, "blackhole": true}') == \
        {"latency_s": 0.1, "loss": 0.0, "blackhole": True}
    assert netns.parse_settings(b"{}") == {}
    for bad in ('{"loss": NaN}', '{"latency_s": 1e999}', '{"loss": true}', "[]", "", '{"x": 1}', b"\xff"):
        with pytest.raises(ValueError):
            netns.parse_settings(bad)


KNOB = st.sampled_from(["latency_s", "loss", "blackhole"]) | st.text(max_size=6)
VALUE = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)


@given(st.dictionaries(KNOB, VALUE, max_size=4).map(json.dumps) | st.binary(max_size=40))
def test_fuzz_settings(line):
    """Any line: settings inside their ranges, or ValueError."""
    try:
        got = netns.parse_settings(line)
    except ValueError:
        return
    assert set(got) <= {"latency_s", "loss", "blackhole"}
    assert 0.0 <= got.get("latency_s", 0.0) <= 60.0 and 0.0 <= got.get("loss", 0.0) <= 1.0
    assert isinstance(got.get("blackhole", False), bool)
