"""Driver registry: the config's `driver` name -> a device object with poll() (and run(sink) where the device
keeps its own schedule) and, if it controls, write_points()."""
from __future__ import annotations

from typing import Callable

from .config import DeviceConfig


def _link(cfg: DeviceConfig):
    """The Modbus link of a device; devices with equal links share one bus (serial line or TCP connection)."""
    from .drivers.modbus_rtu import SerialSettings
    from .drivers.regmap_device import LinkSpec

    timeout_s = cfg.timeout_ms / 1000
    if cfg.driver in ("modbus_rtu", "sunspec_rtu"):
        inter = cfg.inter_frame_ms / 1000 if cfg.inter_frame_ms is not None else None
        return LinkSpec("rtu", serial=SerialSettings(cfg.serial_port, cfg.baudrate, cfg.parity, cfg.stopbits,
                                                     cfg.bytesize, timeout_s, inter), timeout_s=timeout_s)
    kind = "rtu_tcp" if cfg.driver in ("modbus_rtu_tcp", "sunspec_rtu_tcp") else "tcp"
    return LinkSpec(kind, host=cfg.host, port=cfg.port, timeout_s=timeout_s, max_outstanding=cfg.max_outstanding)


def _sunspec(cfg: DeviceConfig):
    """sunspec_tcp / sunspec_rtu / sunspec_rtu_tcp: a SunSpec device on the shared bus of its link."""
    from .drivers.sunspec_device import SunSpecDevice

    return SunSpecDevice(cfg.id, _link(cfg), cfg.unit_id, role=cfg.role,
                         points=list(cfg.points) if cfg.points else None, period_s=cfg.poll_ms / 1000,
                         writable=cfg.writable, backoff_s=max(1.0, cfg.poll_ms / 1000))


def _regmap(cfg: DeviceConfig):
    """modbus_tcp / modbus_rtu / modbus_rtu_tcp: a register-map device on the shared bus of its link."""
    from .drivers import regmap
    from .drivers.regmap_device import PollGroupSpec, RegmapDevice

    groups = [PollGroupSpec(g.name, g.period_ms / 1000, g.points) for g in cfg.poll_groups]
    return RegmapDevice(cfg.id, regmap.load_map(cfg.map), _link(cfg), cfg.unit_id, role=cfg.role, points=cfg.points,
                        period_s=cfg.poll_ms / 1000, groups=groups, writable=cfg.writable,
                        backoff_s=max(1.0, cfg.poll_ms / 1000))


def _opcua(cfg: DeviceConfig):
    """opcua: one subscription with every node; its data changes feed the process image as they arrive."""
    from .drivers.opcua import OpcUaDevice, OpcUaSecurity

    security = None
    if cfg.security_policy != "None":
        security = OpcUaSecurity(cfg.security_policy, cfg.security_mode, cfg.client_cert, cfg.client_key,
                                 cfg.server_cert)
    dev = OpcUaDevice(cfg.id, cfg.endpoint, dict(cfg.nodes), security=security, publishing_ms=cfg.poll_ms,
                      timeout_s=cfg.timeout_ms / 1000)
    dev.capability = cfg.role
    return dev


DRIVERS: dict[str, Callable[[DeviceConfig], object]] = {
    "sunspec_tcp": _sunspec, "sunspec_rtu": _sunspec, "sunspec_rtu_tcp": _sunspec,
    "modbus_tcp": _regmap, "modbus_rtu": _regmap, "modbus_rtu_tcp": _regmap,
    "opcua": _opcua,
}


def make_device(cfg: DeviceConfig):
    return DRIVERS[cfg.driver](cfg)
