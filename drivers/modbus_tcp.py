"""Thin async Modbus TCP client on pymodbus: one request at a time, one error type.

Modbus has no pipelining, and many TCP devices accept one or two connections, so each device gets one client and
an asyncio.Lock around every request. Every failure (pymodbus exceptions, exception responses, timeouts, short
answers) becomes a DeviceError whose `detail` is a gridedge.model.Detail, so callers can turn it into sample
quality without knowing pymodbus.
"""
from __future__ import annotations

import asyncio
import logging

from gridedge.model import Detail

log = logging.getLogger(__name__)

MAX_READ = 125
MAX_WRITE = 123

#: Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
EXCEPTION_NAMES = {
    1: "ILLEGAL_FUNCTION", 2: "ILLEGAL_DATA_ADDRESS", 3: "ILLEGAL_DATA_VALUE", 4: "SERVER_DEVICE_FAILURE",
    5: "ACKNOWLEDGE", 6: "SERVER_DEVICE_BUSY", 8: "MEMORY_PARITY_ERROR", 10: "GATEWAY_PATH_UNAVAILABLE",
    11: "GATEWAY_TARGET_FAILED_TO_RESPOND",
}


class DeviceError(Exception):
    """A request to a field device failed; `detail` says why (TIMEOUT, COMM_FAILURE, DEVICE_EXCEPTION, ...)."""

    def __init__(self, message: str, detail: Detail, exception_code: int | None = None):
        super().__init__(message)
        self.detail = detail
        self.exception_code = exception_code


class WriteError(DeviceError):
    """A control write was refused (locally or by the device), failed, or did not read back as written."""


class ModbusTcpClient:
    """One Modbus TCP connection to one unit; never more than one request outstanding."""

    def __init__(self, host: str, port: int = 502, unit_id: int = 1, timeout_s: float = 1.0):
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be 0..255, got {unit_id}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.host, self.port, self.unit_id, self.timeout_s = host, port, unit_id, timeout_s
        self._lock = asyncio.Lock()
        self._client = None  # pymodbus AsyncModbusTcpClient

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}/{self.unit_id}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the TCP connection (no automatic reconnect: the caller decides when to retry)."""
        async with self._lock:
            await self._connect_locked()

    async def _connect_locked(self) -> None:
        if self.connected:
            return
        self._drop()
        from pymodbus.client import AsyncModbusTcpClient  # on first use: DeviceError users need no pymodbus
        from pymodbus.exceptions import ModbusException

        # retries=0 and reconnect_delay=0: timeouts and reconnects are ours to manage, not hidden in pymodbus.
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=0,
                                      reconnect_delay=0, reconnect_delay_max=0)
        try:
            ok = await asyncio.wait_for(client.connect(), self.timeout_s * 2)
        except asyncio.TimeoutError:
            client.close()
            raise DeviceError(f"{self.name}: connect timed out after {self.timeout_s} s", Detail.TIMEOUT) from None
        except (OSError, ModbusException) as exc:
            client.close()
            raise DeviceError(f"{self.name}: cannot connect: {exc}", Detail.COMM_FAILURE) from None
        if not ok:
            client.close()
            raise DeviceError(f"{self.name}: cannot connect (refused or unreachable)", Detail.COMM_FAILURE)
        self._client = client

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken client must not raise
                pass
            self._client = None

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    async def _execute(self, what: str, call):
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        async with self._lock:
            await self._connect_locked()
            assert self._client is not None
            try:
                rsp = await asyncio.wait_for(call(self._client), self.timeout_s * 2 + 0.5)
            except asyncio.TimeoutError:
                self._drop()
                raise DeviceError(f"{self.name}: {what}: no answer within {self.timeout_s} s", Detail.TIMEOUT) \
                    from None
            except ConnectionException as exc:
                self._drop()
                raise DeviceError(f"{self.name}: {what}: connection lost: {exc}", Detail.COMM_FAILURE) from None
            except ModbusIOException as exc:
                text = str(exc)
                if "No response" in text:
                    # A late answer could be matched to the next request: start over on a fresh connection.
                    self._drop()
                    raise DeviceError(f"{self.name}: {what}: no answer within {self.timeout_s} s",
                                      Detail.TIMEOUT) from None
                self._drop()
                raise DeviceError(f"{self.name}: {what}: bad answer: {text}", Detail.MALFORMED) from None
            except ModbusException as exc:
                self._drop()
                raise DeviceError(f"{self.name}: {what}: {exc}", Detail.COMM_FAILURE) from None
            except OSError as exc:
                self._drop()
                raise DeviceError(f"{self.name}: {what}: {exc}", Detail.COMM_FAILURE) from None
            if rsp is None:
                raise DeviceError(f"{self.name}: {what}: empty answer", Detail.MALFORMED)
            if rsp.isError():
                code = getattr(rsp, "exception_code", None)
                name = EXCEPTION_NAMES.get(code, "unknown")
                raise DeviceError(f"{self.name}: {what}: device answered exception {code} ({name})",
                                  Detail.DEVICE_EXCEPTION, code)
            return rsp

    async def read_holding(self, addr: int, count: int) -> list[int]:
        """Read `count` holding registers from `addr` (function 3)."""
        if not (isinstance(addr, int) and isinstance(count, int) and 0 <= addr and 1 <= count <= MAX_READ
                and addr + count <= 0x10000):
            raise ValueError(f"bad read: addr={addr!r} count={count!r} (count 1..{MAX_READ}, within 0..65535)")
        what = f"read {count} @ {addr}"
        rsp = await self._execute(what, lambda c: c.read_holding_registers(addr, count=count,
                                                                        device_id=self.unit_id))
        regs = list(getattr(rsp, "registers", None) or [])
        if len(regs) != count:
            raise DeviceError(f"{self.name}: {what}: got {len(regs)} registers", Detail.MALFORMED)
        return regs

    async def write_registers(self, addr: int, values: list[int]) -> None:
        """Write registers from `addr` (function 16)."""
        values = list(values)
        if not (isinstance(addr, int) and 0 <= addr and 1 <= len(values) <= MAX_WRITE
                and addr + len(values) <= 0x10000
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in values)):
            raise ValueError(f"bad write: addr={addr!r} values={values!r} (1..{MAX_WRITE} uint16 values)")
        await self._execute(f"write {len(values)} @ {addr}",
                            lambda c: c.write_registers(addr, values, device_id=self.unit_id))
