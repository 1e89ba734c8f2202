"""A Modbus TCP relay between a gateway and one device (simulated or real) that can make the device misbehave.

Why at the wire: a fault the rig injects here looks to the gateway exactly like a field device going wrong, and it
works the same in front of a simulator and in front of a real meter or inverter on the bench. Modes:

    ok         forward requests and answers
    timeout    swallow requests: the device never answers (unpowered, unplugged, wrong address)
    slow       forward, and deliver each answer `delay_s` late
    exception  answer every request itself with Modbus exception `code` (4: server device failure)
    garbage    answer every request with random bytes of the length the device's answer had

Requests are framed by their MBAP header (7 bytes: transaction id, protocol id, length, unit id); a client that
sends something that is not MBAP is cut off. `requests` counts the requests the relay received; `writes` records
each write request (functions 5, 6, 15, 16, 22, 23) it received: in front of a real device it is the rig's only
way to see what a gateway wrote there.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time

__all__ = ["ModbusRelay", "MODES"]

log = logging.getLogger("gridedge.hil.modbus_relay")
MODES = ("ok", "timeout", "slow", "exception", "garbage")
_MBAP = struct.Struct(">HHHB")
MAX_ADU = 260
WRITE_FUNCTIONS = {5: 1, 6: 1, 15: None, 16: None, 22: 1, 23: None}    # function -> registers it writes (None: in the PDU)


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One MBAP frame, or None at EOF; ValueError for bytes that are not Modbus TCP."""
    try:
        head = await reader.readexactly(7)
    except asyncio.IncompleteReadError:
        return None
    _tid, proto, length, _unit = _MBAP.unpack(head)
    if proto != 0 or not 2 <= length <= MAX_ADU - 6:
        raise ValueError(f"not Modbus TCP: protocol {proto}, length {length}")
    try:
        return head + await reader.readexactly(length - 1)
    except asyncio.IncompleteReadError:
        return None


def exception_answer(request: bytes, code: int) -> bytes:
    """The exception response a device gives to `request`."""
    tid, _proto, _len, unit = _MBAP.unpack(request[:7])
    return _MBAP.pack(tid, 0, 3, unit) + bytes((request[7] | 0x80, code))


class ModbusRelay:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0,
                 seed: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port = host, port
        self.mode, self.delay_s, self.code = "ok", 0.0, 4
        self.requests = 0
        self.writes: list[dict] = []     # {"t" (wall ns), "function", "unit", "address", "count"}
        self.rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task] = set()

    def set(self, mode: str = "ok", *, delay_s: float = 0.0, code: int = 4) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 <= delay_s <= 60 or not 1 <= code <= 255:
            raise ValueError("delay_s must be 0..60 and code 1..255")
        self.mode, self.delay_s, self.code = mode, float(delay_s), int(code)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        up_w = None
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            answers = asyncio.Queue()
            pump = asyncio.create_task(self._answers(up_r, writer, answers))
            try:
                while (frame := await _read_frame(reader)) is not None:
                    self.requests += 1
                    self._note_write(frame)
                    await self._request(frame, up_w, writer, answers)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        except (OSError, ValueError) as exc:
            log.info("relay to %s:%d: connection ends: %s", *self.upstream, exc)
        except asyncio.CancelledError:
            pass
        finally:
            for w in (writer, up_w):
                if w is not None:
                    w.close()
            self._conns.discard(task)

    def _note_write(self, frame: bytes) -> None:
        fc = frame[7] if len(frame) > 7 else None
        if fc not in WRITE_FUNCTIONS or len(frame) < 10:
            return
        address = int.from_bytes(frame[8:10], "big")
        if fc == 23:        # read/write multiple: read address, read count, then the write address and count
            address = int.from_bytes(frame[12:14], "big") if len(frame) >= 16 else address
            count = int.from_bytes(frame[14:16], "big") if len(frame) >= 16 else None
        else:
            count = WRITE_FUNCTIONS[fc] or (int.from_bytes(frame[10:12], "big") if len(frame) >= 12 else None)
        self.writes.append({"t": time.time_ns(), "function": fc, "unit": frame[6], "address": address,
                            "count": count})

    async def _request(self, frame: bytes, up_w: asyncio.StreamWriter, writer: asyncio.StreamWriter,
                       answers: asyncio.Queue) -> None:
        mode = self.mode
        if mode == "timeout":
            return
        if mode == "exception":
            writer.write(exception_answer(frame, self.code))
            await writer.drain()
            return
        await answers.put((mode, self.delay_s))      # how to deliver the answer to this request
        up_w.write(frame)
        await up_w.drain()

    async def _answers(self, up_r: asyncio.StreamReader, writer: asyncio.StreamWriter, modes: asyncio.Queue) -> None:
        while (answer := await _read_frame(up_r)) is not None:
            mode, delay = modes.get_nowait() if not modes.empty() else ("ok", 0.0)
            if mode == "slow":
                await asyncio.sleep(delay)       # answers stay in order, as on a device that is slow
            elif mode == "garbage":
                answer = bytes(self.rng.randrange(256) for _ in answer)
            writer.write(answer)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
