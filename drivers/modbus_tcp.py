"""Plain Modbus TCP: the TcpLink, a thin asyncio layer over the sans-IO client of drivers/mbap.py (its transaction
ids, late answers and answers from the wrong unit are decided there, and fuzzed there).

The hot path of a gateway polling many meters, so no pymodbus objects per request (drivers/mbap.py says why).
"""
from __future__ import annotations

import asyncio
import logging

from gridedge.core.model import Detail

from . import mbap
from .modbus import DeviceError, Link, check_read, check_unit, check_write, exception_error

__all__ = ["TcpLink"]

log = logging.getLogger(__name__)

_READ_FC = {"holding": mbap.READ_HOLDING, "input": mbap.READ_INPUT}


class TcpLink(Link):
    """One Modbus TCP connection. Same contract as the other links (drivers/modbus.py): one request at a time, every
    failure a DeviceError with a Detail. A frame that is not Modbus TCP, or an answer from another unit, resets the
    connection (reopening is cheaper than resynchronising); a late answer after a timeout is recognised by its
    transaction id and dropped."""

    def __init__(self, host: str, port: int = 502, timeout_s: float = 1.0):
        super().__init__(f"tcp://{host}:{port}", timeout_s)
        self.host, self.port = host, port
        self._transport: asyncio.Transport | None = None
        self._proto: _MbapProtocol | None = None

    @property
    def connected(self) -> bool:
        return (self._transport is not None and not self._transport.is_closing()
                and self._proto is not None and self._proto.closed is None)

    async def _connect_locked(self) -> None:
        if self.connected:
            return
        self._drop()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s * 2 + 0.5):
                transport, proto = await loop.create_connection(_MbapProtocol, self.host, self.port)
        except TimeoutError:
            raise DeviceError(f"{self.name}: connect timed out after {self.timeout_s} s", Detail.TIMEOUT) from None
        except (OSError, ValueError, UnicodeError) as exc:
            raise DeviceError(f"{self.name}: cannot open: {exc}", Detail.COMM_FAILURE) from None
        self._transport, self._proto = transport, proto

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._transport = self._proto = None

    async def _request(self, unit_id: int, what: str, send) -> mbap.Response:
        """Send `send(client) -> (tid, bytes)` and wait for its answer; the Response, or a DeviceError."""
        async with self._lock:
            await self._connect_locked()
            self.requests += 1
            label = f"{self.name}/{unit_id}: {what}"
            proto = self._proto
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            tid = proto.send(send, fut)
            timer = loop.call_later(self.timeout_s, _expire, fut)
            try:
                event = await fut
            except TimeoutError:
                self.failures += 1
                raise DeviceError(f"{label}: no answer within {self.timeout_s} s", Detail.TIMEOUT) from None
            except (ConnectionError, OSError) as exc:
                self.failures += 1
                self._drop()
                raise DeviceError(f"{label}: link lost: {exc or 'connection closed'}", Detail.COMM_FAILURE) from None
            except mbap.FrameError as exc:
                self.failures += 1
                self._drop()
                raise DeviceError(f"{label}: bad answer: {exc}", Detail.MALFORMED) from None
            finally:
                timer.cancel()
                proto.give_up(tid)
            if type(event) is mbap.Response and event.exception is None:
                return event
            self.failures += 1
            if type(event) is mbap.Response:
                raise exception_error(label, event.exception)
            if type(event) is mbap.WrongUnit:
                self._drop()
                raise DeviceError(f"{label}: answer from unit {event.unit}, not {event.expected}", Detail.MALFORMED)
            raise DeviceError(f"{label}: {event.reason}", Detail.MALFORMED)

    async def read(self, unit_id: int, table: str, address: int, count: int) -> list[int]:
        """Read `count` registers of `table` ("holding": function 3, "input": function 4) from `address`."""
        check_unit(unit_id)
        check_read(table, address, count)
        fc = _READ_FC[table]
        rsp = await self._request(unit_id, f"read {table} {count} @ {address}",
                                  lambda c: c.send_read(unit_id, fc, address, count))
        return list(rsp.registers)

    async def write(self, unit_id: int, address: int, values: list[int]) -> None:
        """Write holding registers from `address` (function 16)."""
        check_unit(unit_id)
        values = list(values)
        check_write(address, values)
        await self._request(unit_id, f"write {len(values)} @ {address}",
                            lambda c: c.send_write(unit_id, address, values))


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _MbapProtocol(asyncio.Protocol):
    """Bytes between the socket and the connection's mbap.Client; each event to the request waiting for its id."""

    def __init__(self) -> None:
        self.client = mbap.Client()
        self.closed: BaseException | None = None
        self._transport: asyncio.Transport | None = None
        self._waiting: dict[int, asyncio.Future] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def send(self, make, fut: asyncio.Future) -> int | None:
        """Send the request `make(client)` gives; `fut` gets its event. None (and `fut` the error) if closed."""
        if self.closed is not None:
            fut.set_exception(ConnectionError(str(self.closed)))
            return None
        tid, frame = make(self.client)
        self._waiting[tid] = fut
        self._transport.write(frame)
        return tid

    def give_up(self, tid: int | None) -> None:
        """The request is over (answered, timed out or cancelled); if unanswered, a later answer is a LateAnswer."""
        if self._waiting.pop(tid, None) is not None and self.closed is None:
            self.client.cancel(tid)

    def data_received(self, data: bytes) -> None:
        if self.closed is not None:
            return
        for event in self.client.receive_data(data):
            if type(event) is mbap.BadFrame:
                self._fail(mbap.FrameError(event.reason))
                return
            fut = self._waiting.pop(event.tid, None)
            if fut is None:
                log.debug("dropping an answer nobody waits for: %s", event)
            elif not fut.done():
                fut.set_result(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed by the device"))

    def _fail(self, exc: BaseException) -> None:
        if self.closed is None:
            self.closed = exc
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)
