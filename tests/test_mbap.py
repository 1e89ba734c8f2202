"""Modbus TCP on gridedge's own codec: the sans-IO MBAP codec (known frames, fuzz), and TcpLink against a real
pymodbus server and against hand-made misbehaving servers (wrong unit, broken frames, late answers, writes)."""
from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridedge.drivers import mbap
from gridedge.drivers.modbus_rtu import TcpLink
from gridedge.drivers.modbus_tcp import DeviceError
from gridedge.hil.modbus_sim import ModbusTcpSim, UnitSim
from gridedge.core.model import Detail

from .aio import arun


# ---------------------------------------------------------------- codec

def test_known_request_frames():
    # Modbus Messaging on TCP/IP, the read holding registers example: tid 1, unit 0x11, 3 registers from 0x006B.
    assert mbap.encode_read(1, 0x11, 3, 0x6B, 3) == bytes.fromhex("0001 0000 0006 11 03 006B 0003")
    assert mbap.encode_write(0x1234, 1, 1, [0x000A, 0x0102]) == bytes.fromhex(
        "1234 0000 000B 01 10 0001 0002 04 000A 0102")
    for bad in [(1, 1, 5, 0, 1), (1, 1, 3, 0, 0), (1, 1, 3, 0, 126), (1, 1, 3, 65535, 2), (70000, 1, 3, 0, 1),
                (1, 256, 3, 0, 1)]:
        with pytest.raises(ValueError):
            mbap.encode_read(*bad)
    for values in ([], [70000], [1.5], list(range(124))):
        with pytest.raises(ValueError):
            mbap.encode_write(1, 1, 0, values)


def test_decoder_reassembles_split_and_joined_frames():
    rsp = bytes.fromhex("0001 0000 0009 11 03 06 022B 0000 0064")
    exc = bytes.fromhex("0002 0000 0003 11 83 02")
    wr = bytes.fromhex("0003 0000 0006 01 10 0001 0002")
    d = mbap.Decoder()
    stream = rsp + exc + wr
    got = []
    for i in range(0, len(stream), 5):
        got += d.feed(stream[i:i + 5])
    assert got == [mbap.Response(1, 0x11, 3, registers=(0x022B, 0, 0x64)),
                   mbap.Response(2, 0x11, 3, exception=2),
                   mbap.Response(3, 1, 16, address=1, count=2)]
    assert mbap.Decoder().feed(stream) == got


@pytest.mark.parametrize("frame,reason", [
    ("0001 0001 0003 01 03 00", "protocol id 1"),
    ("0001 0000 0001 01", "MBAP length 1"),
    ("0001 0000 0200 01 03", "MBAP length 512"),
    ("0001 0000 0005 01 03 04 0001", "byte count 4 does not match its 2 data bytes"),
    ("0001 0000 0004 01 03 01 00", "byte count 1"),
    ("0001 0000 0004 01 83 02 00", "exception response of 2 bytes"),
    ("0001 0000 0004 01 10 0001", "write response of 2 bytes"),
    ("0001 0000 0003 01 2B 00", "unexpected function code 43"),
])
def test_frames_that_are_not_modbus_are_refused(frame, reason):
    with pytest.raises(mbap.FrameError, match=reason):
        mbap.Decoder().feed(bytes.fromhex(frame))


@given(st.lists(st.binary(max_size=40), max_size=10))
def test_fuzz_decoder(chunks):
    """Arbitrary bytes in arbitrary pieces: responses or FrameError, never anything else; after a FrameError the
    decoder starts clean."""
    d = mbap.Decoder()
    for c in chunks:
        try:
            for r in d.feed(c):
                assert 0 <= r.tid <= 0xFFFF and 0 <= r.unit <= 0xFF
                assert (r.registers is not None) + (r.exception is not None) + (r.count is not None) == 1
        except mbap.FrameError:
            assert d._buf == b""


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
       st.integers(1, 7))
def test_fuzz_round_trip_of_read_answers(tid, unit, regs, piece):
    frame = struct.pack(">HHHBBB", tid, 0, 3 + 2 * len(regs), unit, 3, 2 * len(regs)) + struct.pack(
        f">{len(regs)}H", *regs)
    d = mbap.Decoder()
    got = [r for i in range(0, len(frame), piece) for r in d.feed(frame[i:i + piece])]
    assert got == [mbap.Response(tid, unit, 3, registers=tuple(regs))]


# ---------------------------------------------------------------- the link against servers

REGS = {"holding": {0: 11, 1: 12, 2: 13, 10: 0}, "input": {100: 7, 101: 8}}


def test_reads_and_writes_against_pymodbus():
    async def main():
        sim = ModbusTcpSim({1: UnitSim(1, registers=REGS, writable={10})})
        port = await sim.start()
        link = TcpLink("127.0.0.1", port, 0.5)
        try:
            await link.write(1, 10, [4242])
            assert await link.read(1, "holding", 10, 1) == [4242]
            assert await link.read(1, "input", 100, 2) == [7, 8]
            with pytest.raises(DeviceError) as ei:
                await link.read(1, "holding", 500, 2)        # outside the unit's registers
            assert ei.value.detail is Detail.DEVICE_EXCEPTION and ei.value.exception_code == 2
            assert "ILLEGAL_DATA_ADDRESS" in str(ei.value)
            assert link.requests == 4 and link.failures == 1
        finally:
            await link.close()
            await sim.stop()
    arun(main())


class Misbehaving:
    """A TCP server that answers each request with whatever `answer(request) -> bytes | None` makes of it."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0

    async def __aenter__(self):
        async def serve(reader, writer):
            self.connections += 1
            try:
                while True:
                    head = await reader.readexactly(7)
                    length = struct.unpack(">H", head[4:6])[0]
                    req = head + await reader.readexactly(length - 1)
                    out = self.answer(req)
                    if out:
                        writer.write(out)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


def answer_read(req: bytes, *, unit_delta: int = 0, tid_delta: int = 0, regs=(1, 2)) -> bytes:
    tid, unit = struct.unpack(">H", req[:2])[0], req[6]
    body = struct.pack(">BB", 3, 2 * len(regs)) + struct.pack(f">{len(regs)}H", *regs)
    return struct.pack(">HHHB", (tid + tid_delta) & 0xFFFF, 0, 1 + len(body), (unit + unit_delta) & 0xFF) + body


@pytest.mark.parametrize("answer,detail,text", [
    (lambda r: answer_read(r, unit_delta=1), Detail.MALFORMED, "answer from unit 2, not 1"),
    (lambda r: b"\x00\x01\x00\x07\x00\x03\x01\x03\x00", Detail.MALFORMED, "protocol id 7"),
    (lambda r: answer_read(r, regs=(1,)), Detail.MALFORMED, "got 1 registers"),
])
def test_bad_answers_are_malformed_and_the_link_recovers(answer, detail, text):
    async def main():
        calls = []

        def respond(req):
            calls.append(req)
            return answer(req) if len(calls) == 1 else answer_read(req)
        async with Misbehaving(respond) as srv:
            link = TcpLink("127.0.0.1", srv.port, 0.3)
            with pytest.raises(DeviceError) as ei:
                await link.read(1, "holding", 0, 2)
            assert ei.value.detail is detail and text in str(ei.value)
            assert await link.read(1, "holding", 0, 2) == [1, 2]     # next request: clean answer
            await link.close()
    arun(main())


def test_a_late_answer_is_never_taken_for_the_next_request():
    async def main():
        pending: list[bytes] = []

        def respond(req):
            pending.append(req)
            if len(pending) == 1:
                return None                                          # first request: silence (timeout)
            late = answer_read(pending[0], regs=(666, 666))          # then the late answer, then the right one
            return late + answer_read(req, regs=(1, 2))
        async with Misbehaving(respond) as srv:
            link = TcpLink("127.0.0.1", srv.port, 0.2)
            with pytest.raises(DeviceError) as ei:
                await link.read(1, "holding", 0, 2)
            assert ei.value.detail is Detail.TIMEOUT
            assert await link.read(1, "holding", 0, 2) == [1, 2]
            assert srv.connections == 1                              # no reconnect needed for a timeout
            await link.close()
    arun(main())


def test_connection_closed_by_the_device_is_comm_failure_and_reconnects():
    async def main():
        state = {"n": 0}

        def respond(req):
            state["n"] += 1
            if state["n"] == 1:
                raise ConnectionError("hang up")                     # the server closes the connection
            return answer_read(req)
        async with Misbehaving(respond) as srv:
            link = TcpLink("127.0.0.1", srv.port, 0.5)
            with pytest.raises(DeviceError) as ei:
                await link.read(1, "holding", 0, 2)
            assert ei.value.detail is Detail.COMM_FAILURE and "link lost" in str(ei.value)
            assert await link.read(1, "holding", 0, 2) == [1, 2]
            assert srv.connections == 2
            await link.close()
    arun(main())
