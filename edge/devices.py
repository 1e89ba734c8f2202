"""Driver registry: the config's `driver` name -> a device object with poll() and, if it controls, write_points()."""
from __future__ import annotations

from typing import Callable

from .config import DeviceConfig


def _sunspec_tcp(cfg: DeviceConfig):
    from .drivers.sunspec_tcp import SunSpecTcpDevice

    return SunSpecTcpDevice(cfg.id, cfg.host, cfg.port, cfg.unit_id, timeout_s=cfg.timeout_ms / 1000,
                            points=list(cfg.points) if cfg.points else None)


DRIVERS: dict[str, Callable[[DeviceConfig], object]] = {"sunspec_tcp": _sunspec_tcp}


def make_device(cfg: DeviceConfig):
    return DRIVERS[cfg.driver](cfg)
