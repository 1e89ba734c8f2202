"""The driver registry: per driver, the keys its devices take (by transport, see config_devices.py) and the factory
that builds them. `check` validates with it and the agent builds with it, so no driver is known to one and not the
other. A device object has poll() (and run(sink) where it keeps its own schedule) and, if it controls,
write_points()."""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import DeviceConfig

log = logging.getLogger("gridedge.devices")

__all__ = ["DriverSpec", "DRIVERS", "TRANSPORTS", "register_driver", "make_device"]

#: "tcp" needs `host` (Modbus: unit_id...); "serial" needs `serial_port` and takes the line keys; "opcua" needs
#: `endpoint` and `nodes`.
TRANSPORTS = ("tcp", "serial", "opcua")
#: The breaker's longest back-off for devices polled at least once a minute; slower ones back off one period.
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class DriverSpec:
    """What the config and the agent need to know about a driver."""

    name: str
    transport: str
    factory: Callable[[DeviceConfig], object]
    description: str = ""
    needs_map: bool = False         # reads a register map (`map` key required)
    link: str | None = None         # Modbus link kind (LinkSpec.kind): devices on one link share it and its settings
    parallel: bool = False          # may keep several requests in flight (max_outstanding > 1)
    read_only: bool = False         # `writable = true` is refused
    points: Callable[[], Collection[str]] | None = None   # the point names it knows; None: any (or the map's)
    keys: tuple[str, ...] | None = None  # its own keys besides the common ones; None: its transport's (Modbus)
    defaults: tuple[tuple[str, object], ...] = ()  # its defaults where they differ from the schema's (DLMS: port 4059)
    unit_key: str | None = "unit_id"    # the key that tells devices on one link apart; None: the link is its alone


DRIVERS: dict[str, DriverSpec] = {}


def register_driver(name: str, *, transport: str, factory: Callable[[DeviceConfig], object], **kw) -> DriverSpec:
    """Make `driver = "<name>"` valid in configs and buildable by the agent; a re-register replaces."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    spec = DriverSpec(name, transport, factory, **kw)
    DRIVERS[name] = spec
    return spec


def make_device(cfg: DeviceConfig):
    return DRIVERS[cfg.driver].factory(cfg)


# ---------------------------------------------------------------- the drivers shipped

def _link(cfg: DeviceConfig):
    """The Modbus link of a device; devices with equal links share one bus (serial line or TCP connection)."""
    from .drivers.modbus_rtu import SerialSettings
    from .drivers.regmap_device import LinkSpec

    timeout_s = cfg.timeout_ms / 1000
    kind = DRIVERS[cfg.driver].link
    if kind == "rtu":
        inter = cfg.inter_frame_ms / 1000 if cfg.inter_frame_ms is not None else None
        return LinkSpec("rtu", serial=SerialSettings(cfg.serial_port, cfg.baudrate, cfg.parity, cfg.stopbits,
                                                     cfg.bytesize, timeout_s, inter), timeout_s=timeout_s)
    return LinkSpec(kind, host=cfg.host, port=cfg.port, timeout_s=timeout_s, max_outstanding=cfg.max_outstanding)


def _backoff(cfg: DeviceConfig) -> dict[str, float]:
    """The circuit breaker's back-off: one poll period (at least 1 s), doubling up to a minute, or up to one period
    for devices polled less often (a 15-minute meter is not probed more often than it is read)."""
    period_s = max(1.0, cfg.poll_ms / 1000)
    return {"backoff_s": period_s, "max_backoff_s": max(MAX_BACKOFF_S, period_s)}


def _sunspec(cfg: DeviceConfig):
    """A SunSpec device on the shared bus of its link."""
    from .drivers.sunspec_device import SunSpecDevice

    return SunSpecDevice(cfg.id, _link(cfg), cfg.unit_id, role=cfg.role,
                         points=list(cfg.points) if cfg.points else None, period_s=cfg.poll_ms / 1000,
                         writable=cfg.writable, **_backoff(cfg))


def _regmap(cfg: DeviceConfig):
    """A register-map device on the shared bus of its link."""
    from .drivers import regmap
    from .drivers.regmap_device import PollGroupSpec, RegmapDevice

    groups = [PollGroupSpec(g.name, g.period_ms / 1000, g.points) for g in cfg.poll_groups]
    return RegmapDevice(cfg.id, regmap.load_map(cfg.map), _link(cfg), cfg.unit_id, role=cfg.role, points=cfg.points,
                        period_s=cfg.poll_ms / 1000, groups=groups, writable=cfg.writable, **_backoff(cfg))


def _opcua(cfg: DeviceConfig):
    """One subscription with every node; its data changes feed the process image as they arrive."""
    from .drivers.opcua import OpcUaDevice, OpcUaSecurity

    security = None
    if cfg.security_policy == "None":
        log.warning("OPC UA device %s: security_policy None (allow_insecure): its values travel in the clear and any "
                    "server at %s is trusted", cfg.id, cfg.endpoint)
    else:
        security = OpcUaSecurity(cfg.security_policy, cfg.security_mode, cfg.client_cert, cfg.client_key,
                                 cfg.server_cert)
    dev = OpcUaDevice(cfg.id, cfg.endpoint, dict(cfg.nodes), security=security, publishing_ms=cfg.poll_ms,
                      timeout_s=cfg.timeout_ms / 1000)
    dev.capability = cfg.role
    return dev


def _sunspec_points() -> Collection[str]:
    from .drivers.sunspec import CANONICAL

    return CANONICAL


register_driver("sunspec_tcp", transport="tcp", factory=_sunspec, link="tcp", points=_sunspec_points,
                description="SunSpec Modbus over TCP (inverters, batteries, meters)")
register_driver("sunspec_rtu", transport="serial", factory=_sunspec, link="rtu", points=_sunspec_points,
                description="SunSpec Modbus RTU on a serial line (RS-485)")
register_driver("sunspec_rtu_tcp", transport="tcp", factory=_sunspec, link="rtu_tcp", points=_sunspec_points,
                description="SunSpec, Modbus RTU frames over TCP (serial device server)")
register_driver("modbus_tcp", transport="tcp", factory=_regmap, link="tcp", needs_map=True, parallel=True,
                description="any register-map device (map = file) over Modbus TCP")
register_driver("modbus_rtu", transport="serial", factory=_regmap, link="rtu", needs_map=True,
                description="any register-map device (map = file) over Modbus RTU on a serial line")
register_driver("modbus_rtu_tcp", transport="tcp", factory=_regmap, link="rtu_tcp", needs_map=True,
                description="any register-map device (map = file), RTU frames over TCP (serial device server)")
register_driver("opcua", transport="opcua", factory=_opcua, read_only=True,
                description="OPC UA server (substation RTU, PMU concentrator): one subscription, read only")


# ---------------------------------------------------------------- DLMS/COSEM meters

def _dlms_settings(cfg: DeviceConfig, hdlc: bool):
    from .drivers.dlms.client import Settings
    from .drivers.dlms.security import Secrets, load_secrets

    secrets = load_secrets(cfg.secrets_file) if cfg.secrets_file is not None else Secrets()
    extra = {"system_title": secrets.system_title} if secrets.system_title else {}
    return Settings(client=cfg.client_address, logical=cfg.logical_address,
                    physical=cfg.physical_address if hdlc else None, authentication=cfg.authentication,
                    password=secrets.password, keys=secrets.keys, dedicated_key=cfg.dedicated_key, **extra)


def _dlms_link(cfg: DeviceConfig):
    from .drivers.dlms.device import DlmsLinkSpec

    if DRIVERS[cfg.driver].transport == "serial":
        return DlmsLinkSpec("serial", port=cfg.serial_port, baudrate=cfg.baudrate, parity=cfg.parity,
                            stopbits=cfg.stopbits, bytesize=cfg.bytesize, timeout_s=cfg.timeout_ms / 1000,
                            mode_e=cfg.mode_e)
    return DlmsLinkSpec("tcp", host=cfg.host, tcp_port=cfg.port, timeout_s=cfg.timeout_ms / 1000)


def _dlms(cfg: DeviceConfig):
    """A polled DLMS/COSEM meter on the shared bus of its line (HDLC) or endpoint (wrapper)."""
    from .drivers.dlms.device import DlmsDevice
    from .drivers.dlms.obismap import load_obis_map

    return DlmsDevice(cfg.id, load_obis_map(cfg.obis_map or "idis_polyphase"), _dlms_link(cfg),
                      _dlms_settings(cfg, cfg.driver != "dlms_tcp"), points=cfg.points, period_s=cfg.poll_ms / 1000,
                      profile_s=cfg.profile_ms / 1000 or None, catch_up_s=cfg.catch_up_h * 3600, role=cfg.role,
                      **_backoff(cfg))


def _dlms_push(cfg: DeviceConfig):
    """A HAN port that pushes DataNotifications (ciphered with the key of secrets_file, if any)."""
    from .drivers.dlms.obismap import load_obis_map
    from .drivers.dlms.push import DlmsPushDevice
    from .drivers.dlms.security import load_secrets

    keys = load_secrets(cfg.secrets_file).keys if cfg.secrets_file is not None else None
    return DlmsPushDevice(cfg.id, load_obis_map(cfg.obis_map or "han_austria"), _dlms_link(cfg), keys=keys,
                          points=cfg.points, role=cfg.role, stale_s=max(5.0, 3 * cfg.poll_ms / 1000))


_DLMS = ("obis_map", "client_address", "logical_address", "authentication", "secrets_file", "dedicated_key",
         "profile_ms", "catch_up_h")
_DLMS_SERIAL = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")
register_driver("dlms_hdlc", transport="serial", factory=_dlms, link="dlms_hdlc", unit_key="physical_address",
                keys=("points", "physical_address", "mode_e") + _DLMS_SERIAL + _DLMS,
                defaults=(("role", "meter"), ("baudrate", 9600), ("parity", "N"), ("poll_ms", 15000)),
                read_only=True, description="DLMS/COSEM meter, HDLC on a serial line (RS-485 multidrop, optical "
                                            "probe with mode_e)")
register_driver("dlms_tcp", transport="tcp", factory=_dlms, link="dlms_tcp", unit_key="logical_address",
                keys=("points", "host", "port") + _DLMS, read_only=True,
                defaults=(("role", "meter"), ("port", 4059), ("poll_ms", 15000)),
                description="DLMS/COSEM meter, TCP wrapper (IEC 62056-47)")
register_driver("dlms_hdlc_tcp", transport="tcp", factory=_dlms, link="dlms_hdlc_tcp", unit_key="physical_address",
                keys=("points", "host", "port", "physical_address") + _DLMS, read_only=True,
                defaults=(("role", "meter"), ("port", 4059), ("poll_ms", 15000)),
                description="DLMS/COSEM meter, HDLC frames over TCP (serial device server, meter port)")
register_driver("dlms_push", transport="serial", factory=_dlms_push, link="dlms_push", unit_key=None,
                keys=("points", "obis_map", "secrets_file") + _DLMS_SERIAL, read_only=True,
                defaults=(("role", "meter"), ("baudrate", 2400), ("parity", "E"), ("poll_ms", 5000)),
                description="DLMS/COSEM HAN port that pushes (Nordic HDLC, Austrian M-Bus), listen only")
register_driver("dlms_push_tcp", transport="tcp", factory=_dlms_push, link="dlms_push_tcp", unit_key=None,
                keys=("points", "host", "port", "obis_map", "secrets_file"), read_only=True,
                defaults=(("role", "meter"), ("poll_ms", 5000)),
                description="DLMS/COSEM HAN push from a TCP adapter, listen only")


# ---------------------------------------------------------------- PMUs (IEEE C37.118.2)

def _pmu(cfg: DeviceConfig):
    """A PMU or a PDC's stream: decoded in full, decimated for telemetry, events at once (gridedge.pmu)."""
    from .drivers.pmu import LinkSpec
    from .pmu import EventSettings, PmuDevice

    p = cfg.pmu
    spec = LinkSpec(p.get("mode", "tcp"), cfg.host, cfg.port, p.get("udp_port", 4713), p.get("pmu_id", 1),
                    p.get("cfg", 2), cfg.timeout_ms / 1000)
    return PmuDevice(cfg.id, spec, report_ms=p.get("report_ms", 1000), report=p.get("report"),
                     settings=EventSettings.from_config(p.get("events"), p.get("v_nom_v")), role=cfg.role)


register_driver("c37118", transport="tcp", factory=_pmu, read_only=True, unit_key=None,
                keys=("host", "port", "mode", "udp_port", "pmu_id", "cfg", "report_ms", "report", "v_nom_v", "events"),
                defaults=(("role", "meter"), ("port", 4712), ("timeout_ms", 5000)),
                description="IEEE C37.118.2 PMU or PDC stream (TCP, UDP, mixed): decimated telemetry, events at once")
