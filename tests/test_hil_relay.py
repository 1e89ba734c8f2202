"""The rig's Modbus TCP fault relay between a gateway and a device: each mode as the gateway's own Modbus TCP codec
sees it, against a real pymodbus server of the rig (no mocks)."""
from __future__ import annotations

import asyncio
import time

from gridedge.drivers import mbap
from gridedge.hil.modbus_relay import ModbusRelay, exception_answer
from gridedge.hil.modbus_sim import ModbusTcpSim, UnitSim

from .aio import arun


async def _read(port: int, timeout: float = 1.0):
    """One read of holding registers 0..3 of unit 1: the decoded answer, or 'timeout', or 'frame error'."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(mbap.encode_read(7, 1, mbap.READ_HOLDING, 0, 4))
        await w.drain()
        dec = mbap.Decoder()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            try:
                data = await asyncio.wait_for(r.read(300), left)
            except asyncio.TimeoutError:
                return "timeout"
            if not data:
                return "closed"
            try:
                got = dec.feed(data)
            except mbap.FrameError:
                return "frame error"
            if got:
                return got[0]
    finally:
        w.close()


def test_each_mode_as_the_gateway_sees_it():
    async def go():
        async with ModbusTcpSim({1: UnitSim(1, registers={"holding": {0: 11, 1: 22, 2: 33, 3: 44}})}) as sim:
            relay = ModbusRelay("127.0.0.1", sim.port, seed=3)
            port = await relay.start()
            try:
                ok = await _read(port)
                assert ok.registers == (11, 22, 33, 44) and ok.tid == 7
                relay.set("exception", code=6)
                exc = await _read(port)
                assert exc.exception == 6 and exc.function == mbap.READ_HOLDING and exc.tid == 7
                relay.set("timeout")
                assert await _read(port, 0.5) == "timeout"
                relay.set("slow", delay_s=0.4)
                t0 = time.monotonic()
                slow = await _read(port, 2.0)
                assert slow.registers == (11, 22, 33, 44) and time.monotonic() - t0 >= 0.4
                relay.set("garbage")
                garbled = [await _read(port) for _ in range(5)]
                assert all(g != ok for g in garbled), garbled   # never the right answer
                relay.set("ok")
                assert (await _read(port)).registers == (11, 22, 33, 44)
                assert relay.requests == 10
            finally:
                await relay.stop()
    arun(go())


def test_bytes_that_are_not_modbus_cut_the_client_off_and_the_relay_serves_on():
    async def go():
        async with ModbusTcpSim({1: UnitSim(1, registers={"holding": {0: 5, 1: 0, 2: 0, 3: 0}})}) as sim:
            relay = ModbusRelay("127.0.0.1", sim.port)
            port = await relay.start()
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"GET / HTTP/1.1\r\n\r\n")
                await w.drain()
                assert await asyncio.wait_for(r.read(100), 5) == b""      # closed, no answer
                w.close()
                assert (await _read(port)).registers[0] == 5
            finally:
                await relay.stop()
    arun(go())


def test_exception_answer_keeps_the_transaction_and_unit():
    req = mbap.encode_read(0x1234, 9, mbap.READ_INPUT, 100, 2)
    (rsp,) = mbap.Decoder().feed(exception_answer(req, 4))
    assert (rsp.tid, rsp.unit, rsp.function, rsp.exception) == (0x1234, 9, mbap.READ_INPUT, 4)


def test_the_relay_records_every_write_request_it_passes_so_a_real_device_can_be_watched():
    """In front of a real device the relay is the rig's only eye: a write request (function 16 here) is recorded
    with its time, unit, address and count, a read is not, and the device's refusal is recorded too."""
    async def go():
        async with ModbusTcpSim({1: UnitSim(1, registers={"holding": {0: 5, 1: 0, 2: 0, 3: 0}})}) as sim:
            relay = ModbusRelay("127.0.0.1", sim.port)
            port = await relay.start()
            try:
                assert (await _read(port)).registers[0] == 5
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(mbap.encode_write(9, 1, 2, [7, 8]))
                await w.drain()
                assert await asyncio.wait_for(r.read(100), 5)
                w.close()
                return list(relay.writes)
            finally:
                await relay.stop()
    writes = arun(go())
    assert [(x["function"], x["unit"], x["address"], x["count"]) for x in writes] == [(16, 1, 2, 2)], writes
    assert isinstance(writes[0]["t"], int)
