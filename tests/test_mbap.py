"""Modbus TCP on gridedge's own codec: the sans-IO MBAP codec (known frames, fuzz), and TcpLink against a real
pymodbus server and against hand-made misbehaving servers (wrong unit, broken frames, late answers, writes)."""
from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gridedge.drivers import mbap
from gridedge.drivers.modbus import DeviceError
from gridedge.drivers.modbus_tcp import TcpLink
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


# ---------------------------------------------------------------- the client state machine

def frame(tid: int, unit: int, function: int, body: bytes) -> bytes:
    """An answer as a device would send it (or a broken one: nothing here is checked)."""
    return struct.pack(">HHHBB", tid, 0, 2 + len(body), unit, function) + body


def read_body(regs) -> bytes:
    return struct.pack(f">B{len(regs)}H", 2 * len(regs), *regs)


def test_client_matches_answers_to_their_requests():
    c = mbap.Client(max_outstanding=3)
    t1, f1 = c.send_read(7, mbap.READ_INPUT, 100, 2)
    t2, f2 = c.send_write(7, 10, [1, 2, 3])
    t3, _ = c.send_read(8, mbap.READ_HOLDING, 0, 1)
    assert (t1, t2, t3) == (1, 2, 3) and f1 == mbap.encode_read(1, 7, 4, 100, 2) and c.outstanding == (1, 2, 3)
    with pytest.raises(mbap.LocalProtocolError, match="at most 3"):
        c.send_read(7, 3, 0, 1)
    stream = (frame(t2, 7, 16, struct.pack(">HH", 10, 3)) + frame(t1, 7, 4, read_body([5, 6]))
              + frame(t3, 9, 3, read_body([1])))                       # out of order, the last from unit 9
    events = [e for i in range(0, len(stream), 3) for e in c.receive_data(stream[i:i + 3])]
    assert events == [mbap.Response(t2, 7, 16, address=10, count=3), mbap.Response(t1, 7, 4, registers=(5, 6)),
                      mbap.WrongUnit(t3, 8, 9)]
    assert c.outstanding == ()
    # an answer twice, an answer to nothing sent, an exception
    t4, _ = c.send_read(1, 3, 0, 2)
    assert c.receive_data(frame(t4, 1, 0x83, b"\x02") + frame(t4, 1, 3, read_body([1, 2])) + frame(999, 1, 3, b"\0")) \
        == [mbap.Response(t4, 1, 3, exception=2), mbap.Stray(t4), mbap.Stray(999)]


@pytest.mark.parametrize("request_,answer,reason", [
    (("read", 1, 3, 0, 2), frame(1, 1, 3, read_body([1])), "got 1 registers, not 2"),
    (("read", 1, 3, 0, 2), frame(1, 1, 4, read_body([1, 2])), "function 4 to a request of function 3"),
    (("read", 1, 3, 0, 2), frame(1, 1, 0x90, b"\x02"), "function 16 to a request of function 3"),
    (("write", 1, 10, [1]), frame(1, 1, 16, struct.pack(">HH", 11, 1)), "echoes 1 @ 11, not 1 @ 10"),
])
def test_client_answers_that_do_not_fit_their_request(request_, answer, reason):
    c = mbap.Client()
    kind, *args = request_
    (c.send_read if kind == "read" else c.send_write)(*args)
    (event,) = c.receive_data(answer)
    assert isinstance(event, mbap.Mismatch) and event.tid == 1 and reason in event.reason and c.outstanding == ()


def test_client_late_answer_and_ids_kept_out_of_use():
    c = mbap.Client()
    late, _ = c.send_read(1, 3, 0, 2)
    c.cancel(late)                                      # timed out
    for _ in range(0x10000):                            # every other id comes round again; `late` does not
        tid, _ = c.send_read(1, 3, 0, 2)
        assert tid != late
        assert c.receive_data(frame(tid, 1, 3, read_body([1, 2]))) == [mbap.Response(tid, 1, 3, registers=(1, 2))]
    assert c.receive_data(frame(late, 1, 3, read_body([6, 6]))) == [mbap.LateAnswer(late)]
    c.cancel(12345)                                     # not outstanding: nothing to give up


def test_client_after_bytes_that_are_not_modbus_is_broken():
    c = mbap.Client(max_outstanding=2)
    t1, _ = c.send_read(1, 3, 0, 2)
    c.send_read(1, 3, 0, 2)
    events = c.receive_data(frame(t1, 1, 3, read_body([1, 2])) + b"\x00\x02\x00\x09\x00\x03\x01\x03\x00")
    assert events == [mbap.Response(t1, 1, 3, registers=(1, 2)), mbap.BadFrame("protocol id 9, not 0 (Modbus)")]
    assert c.outstanding == () and c.broken == events[-1]
    with pytest.raises(mbap.LocalProtocolError):
        c.send_read(1, 3, 0, 2)
    with pytest.raises(mbap.LocalProtocolError):
        c.receive_data(b"")
    with pytest.raises(ValueError):
        mbap.Client(max_outstanding=0)


def _answer(data, tid: int, req) -> bytes:
    """Some answer for transaction `tid`: often the right one, otherwise wrong in one way or another."""
    unit, function, address, count = req if req is not None else (data.draw(st.integers(0, 255)), 3, 0, 1)
    unit = data.draw(st.sampled_from([unit, unit, data.draw(st.integers(0, 255))]))
    kind = data.draw(st.sampled_from(["right", "right", "count", "function", "exception", "echo"]))
    if kind == "function":
        function = data.draw(st.sampled_from([3, 4, 16]))
    if kind == "exception":
        return frame(tid, unit, function | 0x80, bytes([data.draw(st.integers(0, 255))]))
    if function == 16:
        if kind == "echo":
            address, count = data.draw(st.integers(0, 0xFFFF)), data.draw(st.integers(0, 0xFFFF))
        return frame(tid, unit, 16, struct.pack(">HH", address, count))
    n = data.draw(st.integers(0, 125)) if kind == "count" else min(count, 125)
    return frame(tid, unit, function, read_body([0x1234] * n))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_client_never_matches_an_answer_to_the_wrong_request(data):
    """Requests, give-ups, answers (right and wrong, to sent, given-up and unknown ids) and noise, in arbitrary
    chunks: only LocalProtocolError / ValueError are ever raised, and every event is about the request it names,
    with a Response only for an answer that fits that request; BadFrame comes last and breaks the client."""
    max_out = data.draw(st.integers(1, 4))
    c = mbap.Client(max_outstanding=max_out)
    sent: dict[int, tuple[int, int, int, int]] = {}      # the model: what is outstanding
    given_up: set[int] = set()
    for _ in range(data.draw(st.integers(1, 30))):
        op = data.draw(st.sampled_from(["read"] * 3 + ["write", "cancel", "noise"] + ["answer"] * 4))
        stream = b""
        if op in ("read", "write"):
            unit, address = data.draw(st.integers(0, 255)), data.draw(st.integers(0, 0xFFFF))
            count = data.draw(st.integers(0, 130))
            function = data.draw(st.sampled_from([3, 4, 16])) if op == "read" else 16
            valid = (1 <= count <= (125 if op == "read" else 123) and address + count <= 0x10000
                     and (op == "write" or function != 16))
            try:
                if op == "read":
                    tid, _ = c.send_read(unit, function, address, count)
                else:
                    tid, _ = c.send_write(unit, address, [7] * count)
            except ValueError:
                assert not valid
                continue
            except mbap.LocalProtocolError:
                assert len(sent) == max_out
                continue
            assert valid and tid not in sent and tid not in given_up
            sent[tid] = (unit, function, address, count)
        elif op == "cancel" and sent:
            tid = data.draw(st.sampled_from(sorted(sent)))
            c.cancel(tid)
            given_up.add(tid)
            del sent[tid]
        elif op == "answer":
            known = sorted(sent) * 4 + sorted(given_up)             # mostly answers to what was sent
            tid = data.draw(st.sampled_from(known) if known and data.draw(st.integers(0, 5))
                            else st.integers(0, 0xFFFF))
            stream = _answer(data, tid, sent.get(tid))
        else:
            stream = data.draw(st.binary(max_size=24))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
        for a, b in zip([0] + cuts, cuts + [len(stream)]):
            events = c.receive_data(stream[a:b])
            if events and isinstance(events[-1], mbap.BadFrame):
                event("BadFrame")
                assert c.outstanding == () and c.broken is events[-1]
                assert not any(isinstance(e, mbap.BadFrame) for e in events[:-1])
                with pytest.raises(mbap.LocalProtocolError):
                    c.receive_data(b"")
            for e in events:
                event(type(e).__name__ + ("" if not isinstance(e, mbap.Response) else
                                          " exception" if e.exception is not None else " ok"))
                if isinstance(e, mbap.LateAnswer):
                    assert e.tid in given_up
                    given_up.discard(e.tid)
                    continue
                if isinstance(e, mbap.Stray):
                    assert e.tid not in sent and e.tid not in given_up
                    continue
                if isinstance(e, mbap.BadFrame):
                    return
                req = sent.pop(e.tid)                        # KeyError: an event about a request never sent
                unit, function, address, count = req
                if isinstance(e, mbap.WrongUnit):
                    assert e.expected == unit != e.unit
                elif isinstance(e, mbap.Response):
                    assert (e.unit, e.function) == (unit, function)
                    if e.exception is None and function == 16:
                        assert (e.address, e.count) == (address, count)
                    elif e.exception is None:
                        assert len(e.registers) == count
                else:
                    assert isinstance(e, mbap.Mismatch) and e.reason
        assert set(c.outstanding) == set(sent)


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


def test_stray_and_repeated_answers_are_dropped_and_garbage_between_requests_means_a_new_connection():
    async def main():
        calls = []

        def respond(req):
            calls.append(req)
            right = answer_read(req)
            if len(calls) == 1:
                return answer_read(req, tid_delta=7) + right + right     # an id never sent, the answer twice
            if len(calls) == 2:
                return right + b"\x00\x01\x00\x07\x00\x03\x01"           # then bytes that are not Modbus TCP
            return right
        async with Misbehaving(respond) as srv:
            link = TcpLink("127.0.0.1", srv.port, 0.3)
            for _ in range(3):
                assert await link.read(1, "holding", 0, 2) == [1, 2]
            assert srv.connections == 2 and link.failures == 0          # reconnected before the third request
            await link.close()
    arun(main())
