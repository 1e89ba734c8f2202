"""What every Modbus link shares: the one error type, the request limits and the exception names.

Every failure of a request (timeouts, lost links, exception responses, short or broken answers) becomes a
DeviceError whose `detail` is a gridedge.core.model.Detail, so callers turn it into sample quality without knowing the
link or the stack under it. The links themselves are in drivers/modbus_rtu.py.
"""
from __future__ import annotations

from gridedge.core.model import Detail

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
