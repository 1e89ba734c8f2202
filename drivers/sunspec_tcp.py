"""SunSpec device on Modbus TCP: a SunSpecDevice (drivers/sunspec_device.py) on a TCP link of the bus scheduler.

Kept as its own name because the config driver `sunspec_tcp` and existing callers construct it with a host and a
port; everything else (discovery, polling, verified writes, curves) is SunSpecDevice's.
"""
from __future__ import annotations

from .modbus import WriteError
from .regmap_device import LinkSpec
from .scheduler import POOL, BusPool
from .sunspec_device import SunSpecDevice

__all__ = ["SunSpecTcpDevice", "WriteError"]


class SunSpecTcpDevice(SunSpecDevice):
    """One SunSpec device at host:port. Devices at the same host:port (several unit ids behind one gateway) share
    one connection and take turns."""

    def __init__(self, device_id: str, host: str, port: int, unit_id: int = 1, timeout_s: float = 1.0,
                 points: list[str] | None = None, *, pool: BusPool = POOL, **kw):
        super().__init__(device_id, LinkSpec("tcp", host=host, port=port, timeout_s=timeout_s), unit_id,
                         points=points, pool=pool, **kw)
