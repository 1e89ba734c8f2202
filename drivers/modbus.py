"""What every Modbus link shares, whatever its transport: the error type, the request limits and checks, the
exception names, and the Link base (one lock, the counters, connect / close).

Every failure of a request (timeouts, lost links, exception responses, short or broken answers) becomes a
DeviceError whose `detail` is a gridedge.core.model.Detail, so callers turn it into sample quality without knowing the
link or the stack under it. The links: drivers/modbus_tcp.py (Modbus TCP on the sans-IO drivers/mbap.py) and
drivers/modbus_rtu.py (RTU on a serial line, RTU frames over TCP).
"""
from __future__ import annotations

import asyncio

from gridedge.core.model import Detail

from .mbap import MAX_READ, MAX_WRITE

__all__ = ["MAX_READ", "MAX_WRITE", "TABLES", "EXCEPTION_NAMES", "DeviceError", "WriteError", "Link", "write_runs",
           "exception_error", "check_unit", "check_read", "check_write"]

TABLES = ("holding", "input")

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


def exception_error(label: str, code: int | None) -> DeviceError:
    """The DeviceError of a Modbus exception response."""
    name = EXCEPTION_NAMES.get(code, "unknown")
    return DeviceError(f"{label}: device answered exception {code} ({name})", Detail.DEVICE_EXCEPTION, code)


def write_runs(encoded: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
    """Merge (address, registers) pieces into contiguous runs of at most MAX_WRITE registers, in address order:
    as few write requests as the device allows."""
    runs: list[tuple[int, list[int]]] = []
    for addr, regs in sorted(encoded):
        if runs and runs[-1][0] + len(runs[-1][1]) == addr and len(runs[-1][1]) + len(regs) <= MAX_WRITE:
            runs[-1][1].extend(regs)
        else:
            runs.append((addr, list(regs)))
    return runs


def check_unit(unit_id: int) -> None:
    if not isinstance(unit_id, int) or isinstance(unit_id, bool) or not 0 <= unit_id <= 255:
        raise ValueError(f"unit_id must be 0..255, got {unit_id!r}")


def check_read(table: str, address: int, count: int) -> None:
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    if not (isinstance(address, int) and isinstance(count, int) and 0 <= address and 1 <= count <= MAX_READ
            and address + count <= 0x10000):
        raise ValueError(f"bad read: address={address!r} count={count!r} (count 1..{MAX_READ}, within 0..65535)")


def check_write(address: int, values: list[int]) -> None:
    if not (isinstance(address, int) and 0 <= address and 1 <= len(values) <= MAX_WRITE
            and address + len(values) <= 0x10000
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in values)):
        raise ValueError(f"bad write: address={address!r} values={values!r} (1..{MAX_WRITE} uint16 values)")


class Link:
    """One physical path (a serial port, or one TCP connection) shared by every unit id behind it, so unit id is a
    per-request argument. One request at a time per link: Modbus has no pipelining, and on RS-485 a second request
    before the answer would collide on the wire. The scheduler (drivers/scheduler.py) decides the order; the lock
    here only guards against misuse.

    Subclasses provide _connect_locked / _drop and read(unit, table, address, count) / write(unit, address, values)."""

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
