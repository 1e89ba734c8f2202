"""Modbus RTU links for the bus scheduler, on pymodbus: RTU on a serial line, and RTU frames over a TCP gateway
(serial device servers). Plain Modbus TCP is drivers/modbus_tcp.py; what all links share is drivers/modbus.py.

Every failure becomes a DeviceError whose `detail` is a gridedge.core.model.Detail, so callers turn it into sample
quality without knowing pymodbus. On RTU, pymodbus silently drops a frame with a bad CRC or from another unit and
then times out; we keep the bytes that arrived (trace_packet) and tell a silent device (TIMEOUT) from a broken or
foreign answer (MALFORMED) in the error and the log.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gridedge.core.model import Detail

from .modbus import DeviceError, Link, check_read, check_unit, check_write, exception_error
from .rtu import char_time_s, classify_rtu_answer, frame_gap_s

__all__ = ["SerialSettings", "ModbusLink", "RtuSerialLink", "RtuTcpLink", "PARITIES"]

log = logging.getLogger(__name__)

PARITIES = ("N", "E", "O")


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
            raise exception_error(label, getattr(rsp, "exception_code", None))
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
        check_unit(unit_id)
        check_read(table, address, count)
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
        check_unit(unit_id)
        values = list(values)
        check_write(address, values)
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
