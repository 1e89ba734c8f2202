"""Modbus links (RTU on a pty line, RTU over TCP, TCP) against the real pymodbus server in hil/modbus_sim.py, and the
RTU arithmetic and frame parsers, fuzzed."""
from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.drivers.modbus_rtu import RtuSerialLink, RtuTcpLink, SerialSettings
from gridedge.drivers.modbus_tcp import TcpLink
from gridedge.drivers.rtu import classify_rtu_answer, crc16, crc_ok, frame_gap_s, read_wire_time_s, with_crc
from gridedge.drivers.modbus import DeviceError
from gridedge.hil.modbus_sim import (
    ModbusLineSim, ModbusTcpSim, UnitSim, rtu_request_length, rtu_response_length, split_frames,
)
from gridedge.core.model import Detail

from .aio import arun, until

REGS = {"holding": {0: 11, 1: 12, 2: 13, 10: 0xFFFF}, "input": {100: 7, 101: 8}}


# ---------------------------------------------------------------- sans-IO

def test_crc_known_frame():
    assert with_crc(bytes([1, 3, 0, 0, 0, 1])) == bytes.fromhex("010300000001840a")
    assert crc16(b"") == 0xFFFF


@given(st.binary(min_size=2, max_size=300), st.integers(0, 7), st.data())
def test_crc_detects_any_single_bit_error(payload, bit, data):
    frame = with_crc(payload)
    assert crc_ok(frame)
    i = data.draw(st.integers(0, len(frame) - 1))
    broken = bytearray(frame)
    broken[i] ^= 1 << bit
    assert not crc_ok(bytes(broken))


@given(st.binary(max_size=400), st.integers(0, 255))
@settings(max_examples=300)
def test_classify_never_raises(raw, unit):
    why = classify_rtu_answer(raw, unit)
    assert (why is None) == (raw == b"")
    assert why is None or isinstance(why, str)


def test_classify_names_the_cause():
    good = with_crc(bytes([9, 3, 2, 0, 5]))
    assert "unit 9 instead of 3" in classify_rtu_answer(good, 3)
    assert "CRC error" in classify_rtu_answer(good[:-1] + b"\x00", 9)
    assert "unit 9 instead of 3" in classify_rtu_answer(b"\x00\xff" + good, 3)
    assert "stray" in classify_rtu_answer(b"\x01", 1)


def test_wire_time_matches_the_domain_figures():
    # domain brief: 10 registers take about 50 ms at 9600 baud, 28 ms at 19200, 12 ms at 115200 (with turnaround)
    assert 0.040 < read_wire_time_s(10, 9600) < 0.055
    assert 0.020 < read_wire_time_s(10, 19200) < 0.030
    assert 0.003 < read_wire_time_s(10, 115200) < 0.012
    assert frame_gap_s(9600) == pytest.approx(3.5 * 11 / 9600)
    assert frame_gap_s(115200) == 0.00175


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_split_frames_fuzz(buf):
    for length_of in (rtu_request_length, rtu_response_length):
        frames, rest, dropped = split_frames(buf, length_of)
        assert sum(map(len, frames)) + len(rest) + dropped == len(buf)
        assert all(crc_ok(f) for f in frames)


def test_split_frames_resynchronises_after_noise():
    req = with_crc(bytes([2, 3, 0, 0, 0, 4]))
    frames, rest, dropped = split_frames(b"\xff\x00" + req + req[:3], rtu_request_length)
    assert frames == [req] and rest == req[:3] and dropped == 2


def test_serial_settings_are_checked():
    with pytest.raises(ValueError) as ei:
        SerialSettings("", baudrate=10, parity="X", stopbits=3, bytesize=5, timeout_s=0)
    for word in ("port", "baudrate", "parity", "stopbits", "bytesize", "timeout_s"):
        assert word in str(ei.value)
    assert SerialSettings("/dev/x", baudrate=9600).gap_s == pytest.approx(3.5 * 11 / 9600)
    assert SerialSettings("/dev/x", inter_frame_s=0.01).gap_s == 0.01


# ---------------------------------------------------------------- RTU on a pty

async def _line(**behaviours):
    sim = ModbusLineSim({1: REGS, 2: REGS, 3: REGS})
    await sim.start()
    for unit, (mode, kw) in behaviours.items():
        sim.set_behaviour(int(unit[1:]), mode, **kw)
    link = RtuSerialLink(SerialSettings(sim.port, timeout_s=0.2))
    await link.connect()
    return sim, link


def test_rtu_reads_both_tables_and_writes():
    async def main():
        sim, link = await _line()
        sim.units[2].writable.add(1)
        try:
            assert await link.read(1, "holding", 0, 3) == [11, 12, 13]
            assert await link.read(2, "input", 100, 2) == [7, 8]
            await link.write(2, 1, [4242])
            assert await link.read(2, "holding", 0, 2) == [11, 4242]
            assert await link.read(1, "holding", 0, 2) == [11, 12]       # units are separate devices
            with pytest.raises(DeviceError) as ei:
                await link.write(2, 0, [1])                              # not writable on the device
            assert ei.value.detail is Detail.DEVICE_EXCEPTION and ei.value.exception_code == 2
            with pytest.raises(DeviceError) as ei:
                await link.read(1, "holding", 500, 2)                    # outside the device's registers
            assert ei.value.exception_code == 2
        finally:
            await link.close()
            await sim.stop()
    arun(main())


@pytest.mark.parametrize("mode,kw,detail,text", [
    ("silent", {}, Detail.TIMEOUT, "no answer"),
    ("wrong_unit", {"answer_as": 9}, Detail.MALFORMED, "answer from unit 9 instead of 3"),
    ("bad_crc", {}, Detail.MALFORMED, "CRC error"),
    ("exception", {"exception_code": 6}, Detail.DEVICE_EXCEPTION, "exception 6 (SERVER_DEVICE_BUSY)"),
    ("slow", {"delay_s": 0.5}, Detail.TIMEOUT, "no answer"),
])
def test_rtu_faults_become_details_and_the_line_keeps_working(mode, kw, detail, text, caplog):
    async def main():
        sim, link = await _line(u3=(mode, kw))
        try:
            with pytest.raises(DeviceError) as ei:
                await link.read(3, "holding", 0, 2)
            assert ei.value.detail is detail and text in str(ei.value)
            # the other units on the line are not affected, also while a late answer is still on its way
            for _ in range(3):
                assert await link.read(1, "holding", 0, 3) == [11, 12, 13]
            if mode == "slow":  # the late answer is on the line: it must not be taken for unit 2's
                await until(lambda: sim.late_sent >= 1, timeout=5.0)
            assert await link.read(2, "holding", 0, 3) == [11, 12, 13]
        finally:
            await link.close()
            await sim.stop()
    arun(main())


def test_rtu_slow_but_within_timeout_is_fine():
    async def main():
        sim, link = await _line(u1=("slow", {"delay_s": 0.05}))
        try:
            assert await link.read(1, "holding", 0, 1) == [11]
        finally:
            await link.close()
            await sim.stop()
    arun(main())


def test_rtu_keeps_the_inter_frame_silence():
    async def main():
        sim = ModbusLineSim({1: REGS})
        await sim.start()
        link = RtuSerialLink(SerialSettings(sim.port, baudrate=1200, timeout_s=1.0))   # gap 32 ms
        sends: list[float] = []
        orig = link._trace

        def trace(sending, data):
            if sending:
                sends.append(time.monotonic())
            return orig(sending, data)
        link._trace = trace
        try:
            await link.read(1, "holding", 0, 1)
            answered = link._last_rx
            await link.read(1, "holding", 0, 1)
            assert sends[1] - answered >= link.settings.gap_s
        finally:
            await link.close()
            await sim.stop()
    arun(main())


def test_missing_serial_port_is_a_clear_comm_failure():
    async def main():
        link = RtuSerialLink(SerialSettings("/dev/does-not-exist-gridedge", timeout_s=0.2))
        with pytest.raises(DeviceError) as ei:
            await link.connect()
        assert ei.value.detail is Detail.COMM_FAILURE and "/dev/does-not-exist-gridedge" in str(ei.value)
        with pytest.raises(DeviceError):
            await link.read(1, "holding", 0, 1)
    arun(main())


def test_bad_arguments_raise_value_error():
    async def main():
        link = TcpLink("127.0.0.1", 1, 0.2)
        for args in [(1, "coils", 0, 1), (1, "holding", 0, 126), (1, "holding", 65535, 2), (256, "holding", 0, 1)]:
            with pytest.raises(ValueError):
                await link.read(*args)
        with pytest.raises(ValueError):
            await link.write(1, 0, [70000])
    arun(main())


# ---------------------------------------------------------------- TCP and RTU over TCP

@pytest.mark.parametrize("framer,cls", [("socket", TcpLink), ("rtu", RtuTcpLink)])
def test_tcp_links(framer, cls):
    async def main():
        sim = ModbusTcpSim({1: REGS, 5: REGS}, framer=framer)
        port = await sim.start()
        link = cls("127.0.0.1", port, 0.3)
        try:
            assert await link.read(1, "holding", 0, 3) == [11, 12, 13]
            assert await link.read(5, "input", 100, 2) == [7, 8]
            with pytest.raises(DeviceError) as ei:
                await link.read(7, "holding", 0, 1)          # nobody at unit 7: pymodbus answers an exception
            assert ei.value.detail is Detail.DEVICE_EXCEPTION
            assert await link.read(1, "holding", 2, 1) == [13]   # the shared connection still serves unit 1
        finally:
            await link.close()
            await sim.stop()
    arun(main())


@pytest.mark.parametrize("cls", [TcpLink, RtuTcpLink])
def test_tcp_black_hole_times_out(cls):
    async def main():
        async def swallow(reader, writer):
            while await reader.read(100):
                pass
            writer.close()
        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = cls("127.0.0.1", port, 0.2)
        try:
            for _ in range(2):
                with pytest.raises(DeviceError) as ei:
                    await link.read(1, "holding", 0, 1)
                assert ei.value.detail is Detail.TIMEOUT and "no answer within 0.2 s" in str(ei.value)
        finally:
            await link.close()
            server.close()
            await server.wait_closed()
    arun(main())


def test_tcp_refused_is_comm_failure():
    async def main():
        sim = ModbusTcpSim({1: REGS})
        port = await sim.start()
        await sim.stop()
        with pytest.raises(DeviceError) as ei:
            await TcpLink("127.0.0.1", port, 0.3).read(1, "holding", 0, 1)
        assert ei.value.detail in (Detail.COMM_FAILURE, Detail.TIMEOUT)
    arun(main())


def test_unit_sim_checks_its_input():
    with pytest.raises(ValueError):
        UnitSim(0)
    with pytest.raises(ValueError):
        UnitSim(1, registers={"coils": {0: 1}})
    with pytest.raises(ValueError):
        UnitSim(1, registers={"holding": {0: 70000}})
