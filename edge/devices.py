"""Driver registry: the config's `driver` name -> a device object with poll() and, if it controls, write_points()."""
from __future__ import annotations

from typing import Callable

from .config import DeviceConfig


def _sunspec_tcp(cfg: DeviceConfig):
    from .drivers.sunspec_tcp import SunSpecTcpDevice

    return SunSpecTcpDevice(cfg.id, cfg.host, cfg.port, cfg.unit_id, timeout_s=cfg.timeout_ms / 1000,
                            points=list(cfg.points) if cfg.points else None)


def _regmap(cfg: DeviceConfig):
    """modbus_tcp / modbus_rtu / modbus_rtu_tcp: a register-map device on the shared bus of its link."""
    from .drivers import regmap
    from .drivers.modbus_rtu import SerialSettings
    from .drivers.regmap_device import LinkSpec, PollGroupSpec, RegmapDevice

    timeout_s = cfg.timeout_ms / 1000
    if cfg.driver == "modbus_rtu":
        inter = cfg.inter_frame_ms / 1000 if cfg.inter_frame_ms is not None else None
        link = LinkSpec("rtu", serial=SerialSettings(cfg.serial_port, cfg.baudrate, cfg.parity, cfg.stopbits,
                                                     cfg.bytesize, timeout_s, inter), timeout_s=timeout_s)
    else:
        link = LinkSpec("tcp" if cfg.driver == "modbus_tcp" else "rtu_tcp", host=cfg.host, port=cfg.port,
                        timeout_s=timeout_s, max_outstanding=cfg.max_outstanding)
    groups = [PollGroupSpec(g.name, g.period_ms / 1000, g.points) for g in cfg.poll_groups]
    return RegmapDevice(cfg.id, regmap.load_map(cfg.map), link, cfg.unit_id, role=cfg.role, points=cfg.points,
                        period_s=cfg.poll_ms / 1000, groups=groups, writable=cfg.writable,
                        backoff_s=max(1.0, cfg.poll_ms / 1000))


DRIVERS: dict[str, Callable[[DeviceConfig], object]] = {
    "sunspec_tcp": _sunspec_tcp, "modbus_tcp": _regmap, "modbus_rtu": _regmap, "modbus_rtu_tcp": _regmap,
}


def make_device(cfg: DeviceConfig):
    return DRIVERS[cfg.driver](cfg)
