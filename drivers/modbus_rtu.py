"""Modbus links for the bus scheduler: RTU over a serial line, RTU framing over a TCP gateway, and plain Modbus TCP.

A link is one physical path (a serial port, or one TCP connection) shared by every unit id behind it, so unit id is a
per-request argument. One request at a time per link: Modbus has no pipelining, and on RS-485 a second request
before the answer would collide on the wire. The scheduler (drivers/scheduler.py) decides the order; the lock here
only guards against misuse.

Every failure becomes a DeviceError (drivers/modbus_tcp.py) whose `detail` is a gridedge.core.model.Detail, so callers
turn it into sample quality without knowing pymodbus. On RTU, pymodbus silently drops a frame with a bad CRC or
from another unit and then times out; we keep the bytes that arrived (trace_packet) and tell a silent device
(TIMEOUT) from a broken or foreign answer (MALFORMED) in the error and the log.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gridedge.core.model import Detail

from . import mbap
from .rtu import char_time_s, classify_rtu_answer, frame_gap_s
from .modbus_tcp import EXCEPTION_NAMES, MAX_READ, MAX_WRITE, DeviceError

__all__ = ["SerialSettings", "ModbusLink", "RtuSerialLink", "RtuTcpLink", "TcpLink", "TABLES", "PARITIES"]

log = logging.getLogger(__name__)

TABLES = ("holding", "input")
PARITIES = ("N", "E", "O")
_READ_FC = {"holding": 3, "input": 4}


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class SerialSettings:
    """Serial line settings. `inter_frame_s` None = 3.5 character times (1.75 ms above 19200 baud)."""

    port: str
    baudrate: int = 19200
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout_s: float = 1.0
    inter_frame_s: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.port, str) or not self.port or "\x00" in self.port:
            problems.append(f"port must be a device path, got {self.port!r}")
        if not isinstance(self.baudrate, int) or not 50 <= self.baudrate <= 4_000_000:
            problems.append(f"baudrate must be 50..4000000, got {self.baudrate!r}")
        if self.parity not in PARITIES:
            problems.append(f"parity must be one of {PARITIES}, got {self.parity!r}")
        if self.stopbits not in (1, 2):
            problems.append(f"stopbits must be 1 or 2, got {self.stopbits!r}")
        if self.bytesize not in (7, 8):
            problems.append(f"bytesize must be 7 or 8, got {self.bytesize!r}")
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            problems.append(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if self.inter_frame_s is not None and not (isinstance(self.inter_frame_s, (int, float))
                                                   and 0 <= self.inter_frame_s <= 1):
            problems.append(f"inter_frame_s must be 0..1 s, got {self.inter_frame_s!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def gap_s(self) -> float:
        return frame_gap_s(self.baudrate) if self.inter_frame_s is None else float(self.inter_frame_s)


# ---------------------------------------------------------------- links

def _check_read(table: str, address: int, count: int) -> None:
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    if not (isinstance(address, int) and isinstance(count, int) and 0 <= address and 1 <= count <= MAX_READ
            and address + count <= 0x10000):
        raise ValueError(f"bad read: address={address!r} count={count!r} (count 1..{MAX_READ}, within 0..65535)")


def _check_write(address: int, values: list[int]) -> None:
    if not (isinstance(address, int) and 0 <= address and 1 <= len(values) <= MAX_WRITE
            and address + len(values) <= 0x10000
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in values)):
        raise ValueError(f"bad write: address={address!r} values={values!r} (1..{MAX_WRITE} uint16 values)")


def quiet_pymodbus_log() -> None:
    """pymodbus logs every timeout at ERROR with frame dumps; our links log one line per failure themselves. Only
    applied when nobody has set a level for the "pymodbus" logger."""
    lg = logging.getLogger("pymodbus")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.CRITICAL)


def _pymodbus():
    """pymodbus, loaded on first use: only the serial and RTU-over-TCP links need it (Modbus TCP has its own codec),
    and a TCP-only gateway saves its ~8 MB of RSS."""
    import pymodbus.client
    import pymodbus.exceptions
    import pymodbus.framer
    return pymodbus


def _check_unit(unit_id: int) -> None:
    if not isinstance(unit_id, int) or isinstance(unit_id, bool) or not 0 <= unit_id <= 255:
        raise ValueError(f"unit_id must be 0..255, got {unit_id!r}")


class Link:
    """What every Modbus link shares: one lock (one request, or one connect, at a time), the request and failure
    counters, and connect / close around the subclass's _connect_locked / _drop."""

    rtu = False                 # RTU framing: no transaction id, bad frames are only visible as bytes

    def __init__(self, name: str, timeout_s: float):
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.name = name
        self.timeout_s = float(timeout_s)
        self._lock = asyncio.Lock()
        self.requests = 0
        self.failures = 0

    async def connect(self) -> None:
        """Open the link; raises DeviceError(COMM_FAILURE / TIMEOUT) with a clear message."""
        async with self._lock:
            await self._connect_locked()

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    async def _connect_locked(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _drop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class ModbusLink(Link):
    """One physical path to one or more units on pymodbus; never more than one request outstanding.

    Subclasses make the pymodbus client. No automatic reconnect or retry inside pymodbus: the scheduler's circuit
    breaker decides when to try again, so a dead link costs one attempt per back-off, not a retry storm."""

    def __init__(self, name: str, timeout_s: float):
        super().__init__(name, timeout_s)
        self._client = None
        self._rx = b""                   # bytes seen since the current request was sent
        self._last_rx = 0.0              # monotonic time of the last byte received
        quiet_pymodbus_log()

    # -- subclass hooks
    def _make_client(self):  # pragma: no cover - abstract
        raise NotImplementedError

    async def _before_send(self) -> None:
        """Wait for the line to be quiet (RTU serial)."""

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx = b""
        else:
            self._rx = data
            self._last_rx = time.monotonic()
        return data

    # -- connection
    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def _connect_locked(self) -> None:
        if self.connected:
            return
        self._drop()
        try:
            client = self._make_client()
        except (ValueError, TypeError, OSError) as exc:
            raise DeviceError(f"{self.name}: cannot open: {exc}", Detail.COMM_FAILURE) from None
        # A dead unit behind a shared link must not make pymodbus close the link for everyone.
        client.set_max_no_responses(1 << 30)
        try:
            ok = await asyncio.wait_for(client.connect(), self.timeout_s * 2 + 0.5)
        except asyncio.TimeoutError:
            client.close()
            raise DeviceError(f"{self.name}: connect timed out after {self.timeout_s} s", Detail.TIMEOUT) from None
        except (OSError, _pymodbus().exceptions.ModbusException) as exc:
            client.close()
            raise DeviceError(f"{self.name}: cannot open: {exc}", Detail.COMM_FAILURE) from None
        if not ok:
            client.close()
            raise DeviceError(f"{self.name}: cannot open (refused, unreachable or no such port)",
                              Detail.COMM_FAILURE)
        self._client = client

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken client must not raise
                pass
            self._client = None

    # -- requests
    async def _execute(self, unit_id: int, what: str, call):
        async with self._lock:
            await self._connect_locked()
            await self._before_send()
            self.requests += 1
            try:
                return await self._execute_locked(unit_id, what, call)
            except DeviceError:
                self.failures += 1
                raise

    async def _execute_locked(self, unit_id: int, what: str, call):
        client = self._client
        label = f"{self.name}/{unit_id}: {what}"
        errors = _pymodbus().exceptions
        try:
            rsp = await asyncio.wait_for(call(client), self.timeout_s * 2 + 0.5)
        except asyncio.TimeoutError:
            raise self._no_answer(label, unit_id) from None
        except errors.ConnectionException as exc:
            self._drop()
            raise DeviceError(f"{label}: link lost: {exc}", Detail.COMM_FAILURE) from None
        except errors.ModbusIOException as exc:
            text = str(exc)
            if "No response" in text:
                raise self._no_answer(label, unit_id) from None
            if not self.rtu:
                self._drop()     # TCP: a confused stream is cheaper to reopen than to resynchronise
            raise DeviceError(f"{label}: bad answer: {text}", Detail.MALFORMED) from None
        except errors.ModbusException as exc:
            self._drop()
            raise DeviceError(f"{label}: {exc}", Detail.COMM_FAILURE) from None
        except OSError as exc:
            self._drop()
            raise DeviceError(f"{label}: {exc}", Detail.COMM_FAILURE) from None
        if rsp is None:
            raise DeviceError(f"{label}: empty answer", Detail.MALFORMED)
        if rsp.isError():
            code = getattr(rsp, "exception_code", None)
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise DeviceError(f"{label}: device answered exception {code} ({name})", Detail.DEVICE_EXCEPTION, code)
        return rsp

    def _no_answer(self, label: str, unit_id: int) -> DeviceError:
        why = classify_rtu_answer(self._rx, unit_id) if self.rtu else None
        if why is not None:
            log.warning("%s: %s", label, why)
            return DeviceError(f"{label}: {why}", Detail.MALFORMED)
        if not self.connected:
            return DeviceError(f"{label}: link lost", Detail.COMM_FAILURE)
        return DeviceError(f"{label}: no answer within {self.timeout_s} s", Detail.TIMEOUT)

    async def read(self, unit_id: int, table: str, address: int, count: int) -> list[int]:
        """Read `count` registers of `table` ("holding": function 3, "input": function 4) from `address`."""
        _check_unit(unit_id)
        _check_read(table, address, count)
        what = f"read {table} {count} @ {address}"
        if table == "holding":
            rsp = await self._execute(unit_id, what, lambda c: c.read_holding_registers(
                address, count=count, device_id=unit_id))
        else:
            rsp = await self._execute(unit_id, what, lambda c: c.read_input_registers(
                address, count=count, device_id=unit_id))
        regs = list(getattr(rsp, "registers", None) or [])
        if len(regs) != count:
            raise DeviceError(f"{self.name}/{unit_id}: {what}: got {len(regs)} registers", Detail.MALFORMED)
        return regs

    async def write(self, unit_id: int, address: int, values: list[int]) -> None:
        """Write holding registers from `address` (function 16)."""
        _check_unit(unit_id)
        values = list(values)
        _check_write(address, values)
        await self._execute(unit_id, f"write {len(values)} @ {address}",
                            lambda c: c.write_registers(address, values, device_id=unit_id))


class RtuSerialLink(ModbusLink):
    """Modbus RTU on a serial line (RS-485/RS-232) through pyserial; keeps the 3.5-character silence between
    frames that RTU framing relies on."""

    rtu = True

    def __init__(self, settings: SerialSettings):
        super().__init__(settings.port, settings.timeout_s)
        self.settings = settings
        self._quiet_at = 0.0

    def _make_client(self):
        s = self.settings
        pm = _pymodbus()
        return pm.client.AsyncModbusSerialClient(
            s.port, framer=pm.framer.FramerType.RTU, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity,
            stopbits=s.stopbits, timeout=s.timeout_s, retries=0, reconnect_delay=0, reconnect_delay_max=0,
            name=f"rtu:{s.port}", trace_packet=self._trace)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            # On a real line the frame occupies the wire for len * char time; the next frame may start one gap
            # after the answer's last byte, which _last_rx tracks.
            self._quiet_at = time.monotonic() + len(data) * char_time_s(self.settings.baudrate)
        return super()._trace(sending, data)

    async def _before_send(self) -> None:
        ready = max(self._quiet_at, self._last_rx) + self.settings.gap_s
        delay = ready - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class RtuTcpLink(ModbusLink):
    """Modbus RTU frames over a TCP socket (serial device servers / "RTU over TCP" gateways)."""

    rtu = True

    def __init__(self, host: str, port: int = 502, timeout_s: float = 1.0):
        super().__init__(f"rtu+tcp://{host}:{port}", timeout_s)
        self.host, self.port = host, port

    def _make_client(self):
        pm = _pymodbus()
        return pm.client.AsyncModbusTcpClient(self.host, port=self.port, framer=pm.framer.FramerType.RTU,
                                              timeout=self.timeout_s, retries=0, reconnect_delay=0,
                                              reconnect_delay_max=0, trace_packet=self._trace)


class TcpLink(Link):
    """Plain Modbus TCP (MBAP framing with transaction ids) on gridedge's own codec (drivers/mbap.py) and an asyncio
    Protocol: the hot path of a gateway polling many meters, so no pymodbus objects per request.

    Same contract as the other links: one request at a time, every failure a DeviceError with a Detail. A frame
    that is not Modbus TCP, or an answer to another transaction or unit, resets the connection (TCP: reopening is
    cheaper than resynchronising); a late answer after a timeout is recognised by its transaction id and dropped."""

    def __init__(self, host: str, port: int = 502, timeout_s: float = 1.0):
        super().__init__(f"tcp://{host}:{port}", timeout_s)
        self.host, self.port = host, port
        self._transport: asyncio.Transport | None = None
        self._proto: _MbapProtocol | None = None
        self._tid = 0

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

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

    async def _request(self, unit_id: int, what: str, frame_for) -> mbap.Response:
        async with self._lock:
            await self._connect_locked()
            self.requests += 1
            self._tid = (self._tid + 1) & 0xFFFF
            tid = self._tid
            label = f"{self.name}/{unit_id}: {what}"
            proto = self._proto
            fut = proto.expect(tid)
            self._transport.write(frame_for(tid))
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.timeout_s, _expire, fut)
            try:
                rsp = await fut
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
                proto.forget(tid)
            if rsp.unit != unit_id:
                self.failures += 1
                self._drop()
                raise DeviceError(f"{label}: answer from unit {rsp.unit}, not {unit_id}", Detail.MALFORMED)
            if rsp.exception is not None:
                self.failures += 1
                name = EXCEPTION_NAMES.get(rsp.exception, "unknown")
                raise DeviceError(f"{label}: device answered exception {rsp.exception} ({name})",
                                  Detail.DEVICE_EXCEPTION, rsp.exception)
            return rsp

    async def read(self, unit_id: int, table: str, address: int, count: int) -> list[int]:
        """Read `count` registers of `table` ("holding": function 3, "input": function 4) from `address`."""
        _check_unit(unit_id)
        _check_read(table, address, count)
        fc = _READ_FC[table]
        what = f"read {table} {count} @ {address}"
        rsp = await self._request(unit_id, what, lambda tid: mbap.encode_read(tid, unit_id, fc, address, count))
        if rsp.function != fc or rsp.registers is None or len(rsp.registers) != count:
            self.failures += 1
            got = "no" if rsp.registers is None else len(rsp.registers)
            raise DeviceError(f"{self.name}/{unit_id}: {what}: got {got} registers (function {rsp.function})",
                              Detail.MALFORMED)
        return list(rsp.registers)

    async def write(self, unit_id: int, address: int, values: list[int]) -> None:
        """Write holding registers from `address` (function 16)."""
        _check_unit(unit_id)
        values = list(values)
        _check_write(address, values)
        what = f"write {len(values)} @ {address}"
        rsp = await self._request(unit_id, what, lambda tid: mbap.encode_write(tid, unit_id, address, values))
        if rsp.function != mbap.WRITE_MULTIPLE or (rsp.address, rsp.count) != (address, len(values)):
            self.failures += 1
            raise DeviceError(f"{self.name}/{unit_id}: {what}: answer echoes {rsp.count} @ {rsp.address}",
                              Detail.MALFORMED)


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _MbapProtocol(asyncio.Protocol):
    """Bytes in, responses out to the one request waiting for that transaction id; anything else is dropped."""

    def __init__(self) -> None:
        self._decoder = mbap.Decoder()
        self._waiting: dict[int, asyncio.Future] = {}
        self._closed: BaseException | None = None

    def expect(self, tid: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self._closed is not None:
            fut.set_exception(ConnectionError(str(self._closed)))
        else:
            self._waiting[tid] = fut
        return fut

    def forget(self, tid: int) -> None:
        self._waiting.pop(tid, None)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self._decoder.feed(data)
        except mbap.FrameError as exc:
            self._fail(exc)
            return
        for rsp in responses:
            fut = self._waiting.pop(rsp.tid, None)
            if fut is None:
                log.debug("dropping an answer to transaction %d nobody waits for (late, after a timeout)", rsp.tid)
            elif not fut.done():
                fut.set_result(rsp)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed by the device"))

    def _fail(self, exc: BaseException) -> None:
        self._closed = exc
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)
