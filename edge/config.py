"""The gateway config: a TOML file checked up front, so a bad config stops the agent with a list of
every problem (file, key path, what is wrong) rather than a traceback an hour later.

See docs/configuration.md for every key and examples/gateway.toml for an annotated example.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import tomllib
from dataclasses import dataclass, replace
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gridedge.core import schema as s
from gridedge.control.profiles import OF_REFERENCES, PROFILES, Q_MODES
from gridedge.flex.settings import FLEX_SCHEMA, FlexConfig, build_flex, flex_issues

__all__ = [
    "ConfigError", "Config", "GatewayConfig", "UplinkConfig", "DeviceConfig", "ControlConfig", "StorageConfig",
    "DriverSpec", "DRIVERS", "register_driver", "load_config", "parse_config", "check_main", "SCHEMA",
    "PollGroupConfig", "FlexConfig", "PocConfig", "DeviceControlConfig",
]

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """All problems found in one config; `.errors` holds one rendered message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__(self.errors)  # args round-trip through pickle

    def __str__(self) -> str:
        return "\n".join(self.errors)


# ---------------------------------------------------------------- driver registry

@dataclass(frozen=True)
class DriverSpec:
    """What the config needs to know about a driver: its name and transport ("tcp" needs host/port)."""

    name: str
    transport: str = "tcp"
    description: str = ""
    needs_map: bool = False  # reads a register map (`map` key required)


DRIVERS: dict[str, DriverSpec] = {}


def register_driver(name: str, *, transport: str = "tcp", description: str = "", needs_map: bool = False) -> DriverSpec:
    """Make `driver = "<name>"` valid in configs. Drivers call this at import; a re-register replaces.
    transport "tcp" needs `host`; "serial" needs `serial_port` and takes the serial line keys; "opcua" needs
    `endpoint` and `nodes`."""
    spec = DriverSpec(name, transport, description, needs_map)
    DRIVERS[name] = spec
    return spec


register_driver("sunspec_tcp", transport="tcp", description="SunSpec Modbus over TCP (inverters, batteries, meters)")
register_driver("modbus_tcp", transport="tcp", needs_map=True,
                description="any register-map device (map = file) over Modbus TCP")
register_driver("modbus_rtu", transport="serial", needs_map=True,
                description="any register-map device (map = file) over Modbus RTU on a serial line")
register_driver("modbus_rtu_tcp", transport="tcp", needs_map=True,
                description="any register-map device (map = file), RTU frames over TCP (serial device server)")
register_driver("sunspec_rtu", transport="serial", description="SunSpec Modbus RTU on a serial line (RS-485)")
register_driver("sunspec_rtu_tcp", transport="tcp",
                description="SunSpec, Modbus RTU frames over TCP (serial device server)")
register_driver("opcua", transport="opcua",
                description="OPC UA server (substation RTU, PMU concentrator): one subscription, read only")


# ---------------------------------------------------------------- result types

@dataclass(frozen=True)
class GatewayConfig:
    id: str
    description: str


@dataclass(frozen=True)
class UplinkConfig:
    broker: str
    host: str
    port: int
    tls: bool
    topic_prefix: str  # {gateway_id} substituted, ends with "/"
    client_id: str
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    keepalive_s: int
    telemetry_interval_ms: int
    allow_plaintext: bool
    backfill_rate: float = 20.0
    backfill_jitter_s: float = 30.0


@dataclass(frozen=True)
class PollGroupConfig:
    name: str
    period_ms: int
    points: tuple[str, ...]


@dataclass(frozen=True)
class DeviceConfig:
    id: str
    driver: str
    role: str
    host: str
    port: int
    unit_id: int
    poll_ms: int
    timeout_ms: int
    points: tuple[str, ...] | None
    writable: bool
    # register-map drivers (modbus_tcp, modbus_rtu, modbus_rtu_tcp)
    map: Path | None = None
    poll_groups: tuple[PollGroupConfig, ...] = ()
    max_outstanding: int = 1
    # serial line (modbus_rtu, sunspec_rtu)
    serial_port: str = ""
    baudrate: int = 19200
    parity: str = "E"
    stopbits: int = 1
    bytesize: int = 8
    inter_frame_ms: float | None = None
    # OPC UA (opcua)
    endpoint: str = ""
    nodes: tuple[tuple[str, str], ...] = ()        # (point name, node id)
    security_policy: str = "None"
    security_mode: str = "SignAndEncrypt"
    client_cert: Path | None = None
    client_key: Path | None = None
    server_cert: Path | None = None


@dataclass(frozen=True)
class PocConfig:
    """Export/import limits at the point of connection, measured by the site meter (W > 0 = export)."""

    meter: str
    export_limit_w: float | None
    import_limit_w: float | None
    fail_safe_pct: float


@dataclass(frozen=True)
class DeviceControlConfig:
    """Prequalified limits and ratings of one controlled device (None = take it from the device)."""

    id: str
    rated_w: float | None = None
    p_max_w: float | None = None
    p_min_w: float | None = None
    q_max_var: float | None = None


@dataclass(frozen=True)
class ControlConfig:
    cycle_ms: int
    max_activation_s: int
    revert_s: int
    priorities: tuple[str, ...]
    schedule_horizon_s: int = 172800
    profile: Any = None  # gridedge.control.profiles.GridProfile with [control.settings] applied
    v_nom_v: float = 230.0
    q_mode: str = "off"
    pf: float = 1.0
    q_pct: float = 0.0
    volt_watt: bool = False
    freq_watt: bool = True
    write_deadband_pct: float = 0.2
    poc: PocConfig | None = None
    devices: tuple[DeviceControlConfig, ...] = ()

    def device(self, device_id: str) -> DeviceControlConfig:
        """The device's entry of [[control.devices]], or an empty one (everything from the device)."""
        by_id = self.__dict__.get("_by_id")
        if by_id is None:
            by_id = {d.id: d for d in self.devices}
            object.__setattr__(self, "_by_id", by_id)
        return by_id.get(device_id) or DeviceControlConfig(device_id)


@dataclass(frozen=True)
class StorageConfig:
    dir: Path
    quota_mb: float = 256.0
    max_age_h: float = 720.0
    durability: str = "full"


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig
    uplink: UplinkConfig
    devices: tuple[DeviceConfig, ...]
    control: ControlConfig
    storage: StorageConfig
    source: Path | None
    sha256: str  # of the file bytes; "" when parsed from a dict
    flex: FlexConfig = FlexConfig()  # [flex]: gridedge.flex.settings

    def device(self, device_id: str) -> DeviceConfig:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)


# ---------------------------------------------------------------- schema

ACTORS = ("tso", "dso", "aggregator")
ROLES = ("inverter", "battery", "meter", "load")
DEFAULT_TOPIC_PREFIX = "gridedge/v2/{gateway_id}/"
_PORTS = {"mqtts": 8883, "mqtt": 1883}


@dataclass(frozen=True)
class _Broker:
    url: str
    scheme: str
    host: str
    port: int


def _parse_broker(url: str) -> _Broker:
    """mqtts://host[:port] or mqtt://host[:port]; nothing else (no credentials, path or query)."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise s.Invalid(f"must not contain spaces or control characters, got {s.describe(url)}")
    if "://" not in url:
        raise s.Invalid(f"must be a URL like mqtts://host:8883, got {s.describe(url)}")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        raise s.Invalid(f"is not a valid URL ({e}), got {s.describe(url)}") from None
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise s.Invalid(f"scheme must be mqtts (TLS) or mqtt (plaintext), got {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise s.Invalid("must not contain credentials (the gateway authenticates with its client certificate)")
    if not host:
        raise s.Invalid(f"has no host, got {s.describe(url)}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise s.Invalid(f"must be scheme://host[:port] with nothing after, got {s.describe(url)}")
    if port is not None and not 1 <= port <= 65535:
        raise s.Invalid(f"port must be 1..65535, got {port}")
    return _Broker(url, scheme, host, port if port is not None else _PORTS[scheme])


def _check_topic_prefix(prefix: str) -> str:
    if "+" in prefix or "#" in prefix:
        raise s.Invalid(f"must not contain MQTT wildcards + or #, got {s.describe(prefix)}")
    if "\x00" in prefix:
        raise s.Invalid("must not contain NUL characters")
    if prefix.startswith("$"):
        raise s.Invalid(f"must not start with '$' (reserved for broker topics), got {s.describe(prefix)}")
    if not prefix.endswith("/"):
        raise s.Invalid(f"must end with '/', got {s.describe(prefix)}")
    rest = prefix.replace("{gateway_id}", "")
    if "{" in rest or "}" in rest:
        raise s.Invalid(f"only the placeholder {{gateway_id}} is supported, got {s.describe(prefix)}")
    return prefix


def _opcua_endpoint(url: str) -> str:
    """opc.tcp://host[:port][/path]."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise s.Invalid(f"must not contain spaces or control characters, got {s.describe(url)}")
    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.hostname
    except ValueError as e:
        raise s.Invalid(f"is not a valid URL ({e}), got {s.describe(url)}") from None
    if parts.scheme.lower() != "opc.tcp" or not host:
        raise s.Invalid(f"must be an OPC UA endpoint like opc.tcp://host:4840/path, got {s.describe(url)}")
    if parts.username is not None or parts.password is not None:
        raise s.Invalid("must not contain credentials")
    if port is not None and not 1 <= port <= 65535:
        raise s.Invalid(f"port must be 1..65535, got {port}")
    return url


def _node_id(text: str) -> str:
    """An OPC UA node id in its string form (ns=2;s=F1.MMXU1.TotW, i=2258, ns=3;g=..., ns=1;b=...)."""
    from asyncua import ua

    try:
        ua.NodeId.from_string(text)
    except Exception:  # noqa: BLE001 - asyncua raises several types for a bad string
        raise s.Invalid(f"must be an OPC UA node id like 'ns=2;s=F1.MMXU1.TotW' or 'i=2258', "
                        f"got {s.describe(text)}") from None
    return text


def _driver_choice(name: str) -> str:
    """Checked against the registry at validation time, so drivers registered later are accepted."""
    if name not in DRIVERS:
        msg = f"unknown driver; must be one of: {', '.join(sorted(DRIVERS))}; got {name!r}"
        guess = s.suggest(name, DRIVERS)
        if guess is not None:
            msg += f" (did you mean {guess!r}?)"
        raise s.Invalid(msg)
    return name


_ID = "[A-Za-z0-9_-]"
_PATH = s.Str(regex=r"[^\x00]+", regex_hint="be a file path (no NUL characters)", min_len=1, max_len=4096)

SCHEMA = s.Dict({
    "gateway": s.Required(s.Dict({
        "id": s.Required(s.Str(regex=f"{_ID}{{1,64}}", regex_hint="be 1-64 characters of A-Z a-z 0-9 _ -"),
                         "gateway identity; appears in MQTT topics"),
        "description": s.Optional(s.Str(max_len=1024), default="", doc="free text for operators"),
    })),
    "uplink": s.Required(s.Dict({
        "broker": s.Required(s.All(s.Str(min_len=1, max_len=1024), s.Custom(_parse_broker)),
                             "MQTT broker URL, mqtts://host[:port] or mqtt://host[:port]"),
        "topic_prefix": s.Optional(s.All(s.Str(min_len=1, max_len=1024), s.Custom(_check_topic_prefix)),
                                   default=DEFAULT_TOPIC_PREFIX, doc="prefix of every topic"),
        "client_id": s.Optional(s.Str(regex=r"[\x21-\x7e]*", regex_hint="be printable ASCII without spaces",
                                      max_len=256), default="", doc="MQTT client id; empty = gateway id"),
        "ca_file": s.Optional(_PATH, doc="CA certificate(s) that signed the broker's certificate (PEM)"),
        "cert_file": s.Optional(_PATH, doc="the gateway's client certificate (PEM)"),
        "key_file": s.Optional(_PATH, doc="the gateway's private key (PEM)"),
        "keepalive_s": s.Optional(s.Int(ge=5, le=3600), default=30, doc="MQTT keepalive, s"),
        "telemetry_interval_ms": s.Optional(s.Int(gt=0), default=1000,
                                            doc="samples are batched into one telemetry message this often, ms"),
        "allow_plaintext": s.Optional(s.Bool(), default=False, doc="must be true to use mqtt://"),
        "backfill_rate": s.Optional(s.Float(gt=0, le=100000), default=20.0,
                                    doc="stored messages replayed per second after a reconnect"),
        "backfill_jitter_s": s.Optional(s.Float(ge=0, le=3600), default=30.0,
                                        doc="replay starts after a random delay up to this, s (fleet jitter)"),
    })),
    "storage": s.Optional(s.Dict({
        "dir": s.Optional(_PATH, default="var", doc="durable state directory"),
        "quota_mb": s.Optional(s.Float(gt=0, le=1024 * 1024), default=256.0,
                               doc="outbox disk quota (stored payload bytes), MiB"),
        "max_age_h": s.Optional(s.Float(gt=0), default=720.0, doc="stored messages older than this are dropped, h"),
        "durability": s.Optional(s.Str(choices=("full", "normal")), default="full",
                                 doc="full: survives power loss; normal: survives a crash (docs/durability.md)"),
    }), default={}),
    "control": s.Optional(s.Dict({
        "cycle_ms": s.Optional(s.Int(ge=10, le=60000), default=200, doc="control loop period, ms"),
        "max_activation_s": s.Optional(s.Int(gt=0), default=86400, doc="longest activation accepted, s"),
        "revert_s": s.Optional(s.Int(ge=1, le=65535), default=60,
                               doc="remote set-points revert after this long without uplink, s"),
        "priorities": s.Optional(s.List(s.Str(choices=ACTORS), min_len=1, unique=True),
                                 default=list(ACTORS), doc="which actor wins a conflict, first wins"),
        "schedule_horizon_s": s.Optional(s.Int(ge=0, le=7 * 86400), default=172800,
                                         doc="how far ahead an activation may be scheduled, s"),
        "profile": s.Optional(s.Str(choices=tuple(PROFILES)), default="en50549_vde4105",
                              doc="grid-code parameter profile"),
        "v_nom_v": s.Optional(s.Float(gt=0, le=100000), default=230.0, doc="reference voltage of the curves, V"),
        "q_mode": s.Optional(s.Str(choices=Q_MODES),
                             default="off", doc="local reactive power function"),
        "pf": s.Optional(s.Float(ge=-1, le=1), default=1.0, doc="power factor for constant_pf, > 0 injects Q"),
        "q_pct": s.Optional(s.Float(ge=-100, le=100), default=0.0, doc="Q for constant_q, % of WMax"),
        "volt_watt": s.Optional(s.Bool(), default=False, doc="local volt-watt P(U)"),
        "freq_watt": s.Optional(s.Bool(), default=True, doc="local frequency-watt P(f)"),
        "write_deadband_pct": s.Optional(s.Float(ge=0, le=10), default=0.2,
                                         doc="a set-point change smaller than this (% of rating) is not written"),
        "settings": s.Optional(s.Dict({
            "f_nom_hz": s.Optional(s.Float(ge=40, le=70), doc="nominal frequency, Hz"),
            "volt_var": s.Optional(s.Custom(lambda v: v), doc="volt-var curve, [[V pu, Q pu], ...]"),
            "volt_watt": s.Optional(s.Custom(lambda v: v), doc="volt-watt curve, [[V pu, P pu], ...]"),
            "watt_var": s.Optional(s.Custom(lambda v: v), doc="watt-var curve, [[P pu, Q pu], ...]"),
            "olrt_q_s": s.Optional(s.Float(ge=0, le=600), doc="open-loop response time, reactive power, s"),
            "olrt_p_s": s.Optional(s.Float(ge=0, le=600), doc="open-loop response time, P(f), s"),
            "olrt_vw_s": s.Optional(s.Float(ge=0, le=600), doc="open-loop response time, volt-watt, s"),
            "of_reference": s.Optional(s.Str(choices=OF_REFERENCES),
                                       doc="over-frequency reduction in the momentary power or the rating"),
            "db_of_hz": s.Optional(s.Float(ge=0, le=5), doc="P(f) dead band above f_nom, Hz"),
            "db_uf_hz": s.Optional(s.Float(ge=0, le=5), doc="P(f) dead band below f_nom, Hz"),
            "k_of_pct": s.Optional(s.Float(ge=1, le=20), doc="over-frequency droop, %"),
            "k_uf_pct": s.Optional(s.Float(ge=1, le=20), doc="under-frequency droop, %"),
            "ramp_up_pct_per_s": s.Optional(s.Float(ge=0, le=1000), doc="P ceiling increase limit, %/s; 0 = none"),
            "ramp_dn_pct_per_s": s.Optional(s.Float(ge=0, le=1000), doc="P ceiling decrease limit, %/s; 0 = none"),
        }), default={}),
        "poc": s.Optional(s.Dict({
            "meter": s.Required(s.Str(regex=f"{_ID}{{1,32}}", regex_hint="be a device id"),
                                "device id of the site meter at the point of connection"),
            "export_limit_w": s.Optional(s.Float(ge=0), doc="largest export at the point of connection, W"),
            "import_limit_w": s.Optional(s.Float(ge=0), doc="largest import at the point of connection, W"),
            "fail_safe_pct": s.Optional(s.Float(ge=0, le=100), default=100.0,
                                        doc="generator ceiling when the meter is silent, % of WMax"),
        })),
        "devices": s.Optional(s.List(s.Dict({
            "id": s.Required(s.Str(regex=f"{_ID}{{1,32}}", regex_hint="be a device id"), "a [[devices]] id"),
            "rated_w": s.Optional(s.Float(gt=0), doc="rating, W, if the device does not report WMax"),
            "p_max_w": s.Optional(s.Float(), doc="prequalified largest P (export), W"),
            "p_min_w": s.Optional(s.Float(), doc="prequalified smallest P, W (< 0: storage may charge)"),
            "q_max_var": s.Optional(s.Float(ge=0), doc="reactive capability, var (each direction)"),
        }), unique_key="id"), default=[]),
    }), default={}),
    "devices": s.Optional(s.List(s.Dict({
        "id": s.Required(s.Str(regex=f"{_ID}{{1,32}}", regex_hint="be 1-32 characters of A-Z a-z 0-9 _ -"),
                         "device id, unique; first part of point names"),
        "driver": s.Required(s.All(s.Str(), s.Custom(_driver_choice)), "driver name"),
        "role": s.Optional(s.Str(choices=ROLES), default="inverter", doc="what the device is"),
        "host": s.Optional(s.Str(regex=r"[A-Za-z0-9._:%\[\]-]{1,253}",
                                 regex_hint="be a host name or IP address"), doc="device address (TCP drivers)"),
        "port": s.Optional(s.Int(ge=1, le=65535), default=502, doc="TCP port"),
        "unit_id": s.Optional(s.Int(ge=0, le=255), default=1, doc="Modbus unit id"),
        "poll_ms": s.Optional(s.Int(gt=0), default=1000, doc="poll period, ms"),
        "timeout_ms": s.Optional(s.Int(gt=0), default=1000, doc="request timeout, ms"),
        "points": s.Optional(s.List(s.Str(regex=r"[A-Za-z][A-Za-z0-9_.:-]{0,63}",
                                          regex_hint="be a point name like WMaxLimPct (letters, digits, _ . : -)"),
                                    min_len=1, unique=True), doc="points to poll; default all"),
        "writable": s.Optional(s.Bool(), default=False, doc="control writes reach this device only if true"),
        "map": s.Optional(_PATH, doc="register map file (register-map drivers); a shipped map by name also works"),
        "poll_groups": s.Optional(s.List(s.Dict({
            "name": s.Required(s.Str(regex=f"{_ID}{{1,32}}", regex_hint="be 1-32 characters of A-Z a-z 0-9 _ -"),
                               "group name, for logs"),
            "period_ms": s.Required(s.Int(gt=0), "poll period of this group, ms"),
            "points": s.Required(s.List(s.Str(regex=r"[A-Za-z][A-Za-z0-9_.:-]{0,63}",
                                              regex_hint="be a point name (letters, digits, _ . : -)"),
                                        min_len=1, unique=True), "points of the map polled in this group"),
        }), min_len=1, unique_key="name"), doc="points polled at their own period; the rest at poll_ms"),
        "max_outstanding": s.Optional(s.Int(ge=1, le=8), default=1,
                                      doc="requests in flight at once (modbus_tcp only; one connection each)"),
        "serial_port": s.Optional(_PATH, doc="serial device, e.g. /dev/ttyUSB0 (modbus_rtu)"),
        "baudrate": s.Optional(s.Int(ge=300, le=4_000_000), default=19200, doc="serial line speed, bit/s"),
        "parity": s.Optional(s.Str(choices=("N", "E", "O")), default="E", doc="serial parity (Modbus default E)"),
        "stopbits": s.Optional(s.Int(ge=1, le=2), default=1, doc="serial stop bits"),
        "bytesize": s.Optional(s.Int(ge=7, le=8), default=8, doc="serial data bits"),
        "inter_frame_ms": s.Optional(s.Float(ge=0, le=1000),
                                     doc="silence between frames, ms; default 3.5 characters (1.75 ms above 19200)"),
        "endpoint": s.Optional(s.All(s.Str(min_len=1, max_len=1024), s.Custom(_opcua_endpoint)),
                               doc="OPC UA endpoint URL, opc.tcp://host:port/path (opcua)"),
        "nodes": s.Optional(s.Map(s.Str(regex=r"[A-Za-z][A-Za-z0-9_.:-]{0,63}",
                                        regex_hint="be a point name like F1.W (letters, digits, _ . : -)"),
                                  s.All(s.Str(min_len=1, max_len=4096), s.Custom(_node_id)), min_len=1),
                            doc="point name -> OPC UA node id, all in one subscription (opcua)"),
        "security_policy": s.Optional(s.Str(choices=("None", "Basic256Sha256")), default="None",
                                      doc="OPC UA security policy (opcua)"),
        "security_mode": s.Optional(s.Str(choices=("Sign", "SignAndEncrypt")), default="SignAndEncrypt",
                                    doc="OPC UA message security mode with Basic256Sha256 (opcua)"),
        "client_cert": s.Optional(_PATH, doc="the gateway's OPC UA application certificate, PEM or DER (opcua)"),
        "client_key": s.Optional(_PATH, doc="its RSA private key, PEM or DER (opcua)"),
        "server_cert": s.Optional(_PATH, doc="the server's certificate, pinned (opcua; recommended)"),
    }), unique_key="id"), default=[]),
    "flex": s.Optional(FLEX_SCHEMA, default={}, doc="flexibility: ISPs, baselines, verification (gridedge.flex)"),
})


# ---------------------------------------------------------------- loading

def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and check a TOML config. Raises ConfigError (never anything else) for any bad input."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except (OSError, ValueError) as e:
        raise ConfigError([f"{source}: cannot read: {_reason(e)}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{source}: invalid TOML: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: invalid TOML: {e}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: invalid TOML: nested too deeply"]) from None
    p = Path(path)
    base = Path(os.path.abspath(p)).parent
    cfg = parse_config(data, source, base, check_files=check_files)
    return _with_source(cfg, Path(os.path.abspath(p)), hashlib.sha256(raw).hexdigest())


def _with_source(cfg: Config, source: Path, digest: str) -> Config:
    return replace(cfg, source=source, sha256=digest)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None, *,
                 check_files: bool = True) -> Config:
    """Check an already-parsed config (a dict as from tomllib). Relative paths resolve against
    base_dir (default: the current directory). With check_files, TLS files must be readable."""
    clean, issues = s.validate(SCHEMA, data, partial=True)
    base = Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd()))
    if isinstance(clean, dict):
        issues += _cross_checks(data, clean, base, check_files)
    if issues:
        raise ConfigError(s.format_issues(issues, source))
    return _build(clean, base)


def _resolve(base: Path, text: str) -> Path:
    p = Path(text)
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _cross_checks(raw: Any, clean: dict, base: Path, check_files: bool) -> list[s.Issue]:
    """Checks that span keys; run on the partial result so they add to (not hide behind) type errors."""
    issues: list[s.Issue] = []
    up = clean.get("uplink")
    raw_up = raw.get("uplink") if isinstance(raw, Mapping) else None
    if isinstance(up, dict) and isinstance(raw_up, Mapping) and isinstance(up.get("broker"), _Broker):
        broker: _Broker = up["broker"]
        if broker.scheme == "mqtt" and up.get("allow_plaintext") is False:
            issues.append(s.Issue(("uplink", "broker"),
                                  "plaintext mqtt:// needs allow_plaintext = true (or use mqtts://)"))
        if broker.scheme == "mqtts":
            for key in ("ca_file", "cert_file", "key_file"):
                if key not in raw_up:
                    issues.append(s.Issue(("uplink", key), "required key missing (needed for mqtts://)"))
                elif key in up and check_files:
                    msg = _file_problem(_resolve(base, up[key]))
                    if msg:
                        issues.append(s.Issue(("uplink", key), msg))
    storage = clean.get("storage")
    if check_files and isinstance(storage, dict) and "dir" in storage:
        d = _resolve(base, storage["dir"])
        if os.path.exists(d) and not os.path.isdir(d):  # os.path swallows ENAMETOOLONG and friends
            issues.append(s.Issue(("storage", "dir"), f"not a directory: {d}"))
    devices = clean.get("devices")
    raw_devices = raw.get("devices") if isinstance(raw, Mapping) else None
    if isinstance(devices, list) and isinstance(raw_devices, (list, tuple)):
        for i, dev in enumerate(devices):
            if not isinstance(dev, dict) or "driver" not in dev or not isinstance(raw_devices[i], Mapping):
                continue
            spec = DRIVERS.get(dev["driver"])
            if spec is not None and spec.transport == "tcp" and "host" not in raw_devices[i]:
                issues.append(s.Issue(("devices", i, "host"),
                                      f"required key missing (driver {spec.name!r} connects over TCP)"))
            if spec is not None:
                issues += _device_checks(i, dev, raw_devices[i], spec, base, check_files)
        issues += _line_checks(devices)
    if isinstance(raw, Mapping) and "flex" in raw:
        polled = {d["id"]: (tuple(d["points"]) if d.get("points") else None)  # [] is reported already
                  for d in (devices or ()) if isinstance(d, dict) and "id" in d}
        issues += flex_issues(raw["flex"], clean.get("flex"), polled)
    issues += _control_checks(clean.get("control"), devices if isinstance(devices, list) else [])
    return issues


def _control_checks(ctl: Any, devices: list) -> list[s.Issue]:
    """The control section against itself and the devices: curves, the site meter, prequalified limits."""
    from gridedge.control.profiles import curve_issues, profile_issues

    if not isinstance(ctl, dict):
        return []
    issues: list[s.Issue] = []
    roles = {d["id"]: d.get("role") for d in devices if isinstance(d, dict) and "id" in d}
    if ctl.get("pf") == 0.0:
        issues.append(s.Issue(("control", "pf"), "must not be 0 (|pf| in (0, 1]; > 0 injects, < 0 absorbs reactive power)"))
    # the smallest reactive capability among devices with a known rating: curves must fit every device
    q_limit, why = None, ""
    for i, d in enumerate(ctl.get("devices") or ()):
        if not isinstance(d, dict):
            continue
        if "id" in d and d["id"] not in roles:
            issues.append(s.Issue(("control", "devices", i, "id"), f"no device {d['id']!r} in [[devices]]"
                                  + (f" (devices: {', '.join(roles)})" if roles else "")))
        if d.get("p_min_w") is not None and d.get("p_max_w") is not None and d["p_min_w"] > d["p_max_w"]:
            issues.append(s.Issue(("control", "devices", i, "p_min_w"),
                                  f"must not be above p_max_w ({d['p_min_w']:g} > {d['p_max_w']:g})"))
        if roles.get(d.get("id")) == "inverter" and d.get("p_min_w") is not None and d["p_min_w"] < 0:
            issues.append(s.Issue(("control", "devices", i, "p_min_w"),
                                  f"an inverter cannot absorb active power, got {d['p_min_w']:g}"))
        if d.get("rated_w") is not None and d.get("p_max_w") is not None and d["p_max_w"] > d["rated_w"]:
            issues.append(s.Issue(("control", "devices", i, "p_max_w"),
                                  f"must not exceed rated_w ({d['p_max_w']:g} > {d['rated_w']:g})"))
        if d.get("q_max_var") is not None and d.get("rated_w"):
            pu = d["q_max_var"] / d["rated_w"]
            if q_limit is None or pu < q_limit:
                q_limit, why = pu, f"{d.get('id')}: q_max_var {d['q_max_var']:g} var of rated_w {d['rated_w']:g} W"
    settings = ctl.get("settings") if isinstance(ctl.get("settings"), dict) else {}
    for name in ("volt_var", "volt_watt", "watt_var"):
        if name in settings:
            _, found = curve_issues(name, settings[name], q_limit, why)
            issues += [s.Issue(("control", "settings", name) + i.path, i.message) for i in found]
    profile = PROFILES.get(ctl.get("profile"))
    if profile is not None and q_limit is not None:
        for i in profile_issues(profile, q_limit, why):
            if i.path[0] not in settings:
                issues.append(s.Issue(("control", "profile"), f"{profile.name} {i.path[0]} point {i.path[1]}: "
                                                              f"{i.message}; set control.settings.{i.path[0]}"))
    poc = ctl.get("poc")
    if isinstance(poc, dict):
        meter = poc.get("meter")
        if meter is not None and meter not in roles:
            issues.append(s.Issue(("control", "poc", "meter"), f"no device {meter!r} in [[devices]]"
                                  + (f" (devices: {', '.join(roles)})" if roles else "")))
        elif meter is not None and roles[meter] != "meter":
            issues.append(s.Issue(("control", "poc", "meter"), f"{meter!r} is not a meter (role {roles[meter]!r})"))
        if "export_limit_w" not in poc and "import_limit_w" not in poc:
            issues.append(s.Issue(("control", "poc"), "needs export_limit_w, import_limit_w or both"))
    return issues


_SERIAL_KEYS = ("serial_port", "baudrate", "parity", "stopbits", "bytesize", "inter_frame_ms")
_LINE_KEYS = ("baudrate", "parity", "stopbits", "bytesize", "inter_frame_ms", "timeout_ms")
_OPCUA_KEYS = ("endpoint", "nodes", "security_policy", "security_mode", "client_cert", "client_key", "server_cert")
_MODBUS_KEYS = ("host", "port", "unit_id", "max_outstanding")


def _find_map(base: Path, text: str) -> Path:
    """A map path relative to the config file, or the name of a map shipped in drivers/maps/."""
    p = _resolve(base, text)
    if not os.path.exists(p) and "/" not in text and os.sep not in text:
        from gridedge.drivers.regmap import shipped_maps

        shipped = shipped_maps().get(text.removesuffix(".toml"))
        if shipped is not None:
            return shipped
    return p


def _device_checks(i: int, dev: dict, raw: Mapping, spec: DriverSpec, base: Path, check_files: bool) -> list[s.Issue]:
    """Keys that belong to some drivers only; the register map and the points it must have."""
    issues: list[s.Issue] = []
    if spec.transport == "opcua":
        return issues + _opcua_checks(i, dev, raw, spec, base, check_files)
    for key in _OPCUA_KEYS:
        if key in raw:
            issues.append(s.Issue(("devices", i, key), f"only for the opcua driver, not {spec.name!r}"))
    if spec.transport == "serial" and "serial_port" not in raw:
        issues.append(s.Issue(("devices", i, "serial_port"),
                              f"required key missing (driver {spec.name!r} uses a serial line)"))
    if spec.transport != "serial":
        for key in _SERIAL_KEYS:
            if key in raw:
                issues.append(s.Issue(("devices", i, key), f"only for serial drivers, not {spec.name!r}"))
    if "max_outstanding" in raw and spec.name != "modbus_tcp" and dev.get("max_outstanding", 1) != 1:
        issues.append(s.Issue(("devices", i, "max_outstanding"),
                              f"only modbus_tcp may have more than 1 request in flight, not {spec.name!r}"))
    if not spec.needs_map:
        for key in ("map", "poll_groups"):
            if key in raw:
                issues.append(s.Issue(("devices", i, key), f"only for register-map drivers, not {spec.name!r}"))
        return issues
    if "map" not in raw:
        issues.append(s.Issue(("devices", i, "map"), f"required key missing (driver {spec.name!r} reads a register map)"))
        return issues
    if "map" not in dev or not check_files:
        return issues
    from gridedge.drivers.regmap import MapError, load_map

    try:
        rmap = load_map(_find_map(base, dev["map"]))
    except MapError as e:
        first, more = e.errors[0], len(e.errors) - 1
        issues.append(s.Issue(("devices", i, "map"), f"bad register map: {first}"
                              + (f" (and {more} more problem(s); run the map through gridedge.drivers.regmap)"
                                 if more else "")))
        return issues
    for j, name in enumerate(dev.get("points") or ()):
        if name not in rmap:
            issues.append(s.Issue(("devices", i, "points", j), _no_point(name, rmap)))
    for g, group in enumerate(dev.get("poll_groups") or ()):
        if not isinstance(group, dict):
            continue
        for j, name in enumerate(group.get("points") or ()):
            if name not in rmap:
                issues.append(s.Issue(("devices", i, "poll_groups", g, "points", j), _no_point(name, rmap)))
    return issues


def _opcua_checks(i: int, dev: dict, raw: Mapping, spec: DriverSpec, base: Path, check_files: bool) -> list[s.Issue]:
    issues: list[s.Issue] = []
    for key in ("endpoint", "nodes"):
        if key not in raw:
            issues.append(s.Issue(("devices", i, key), f"required key missing (driver {spec.name!r})"))
    for key in _MODBUS_KEYS + _SERIAL_KEYS + ("map", "poll_groups", "points"):
        if key in raw:
            hint = " (the endpoint URL holds host and port)" if key in ("host", "port") else ""
            hint = " (the point names are the keys of nodes)" if key == "points" else hint
            issues.append(s.Issue(("devices", i, key), f"not for the opcua driver{hint}"))
    if dev.get("writable") is True:
        issues.append(s.Issue(("devices", i, "writable"), "the opcua driver is read-only (monitoring); "
                                                          "set writable = false"))
    secure = dev.get("security_policy", "None") != "None"
    if not secure:
        for key in ("security_mode", "client_cert", "client_key", "server_cert"):
            if key in raw:
                issues.append(s.Issue(("devices", i, key), "only with security_policy = \"Basic256Sha256\""))
        return issues
    for key in ("client_cert", "client_key"):
        if key not in raw:
            issues.append(s.Issue(("devices", i, key), "required key missing (needed with security_policy "
                                                       f"{dev['security_policy']!r})"))
    if check_files:
        for key in ("client_cert", "client_key", "server_cert"):
            if key in dev:
                msg = _file_problem(_resolve(base, dev[key]))
                if msg:
                    issues.append(s.Issue(("devices", i, key), msg))
    return issues


def _no_point(name: str, rmap) -> str:
    msg = f"no point {name!r} in map {rmap.origin}"
    guess = s.suggest(name, rmap.names)
    return msg + (f" (did you mean {guess!r}?)" if guess else "")


#: TCP drivers whose devices at the same host:port share one connection (one bus), by framing.
_TCP_FRAMING = {"modbus_tcp": "tcp", "sunspec_tcp": "tcp", "modbus_rtu_tcp": "rtu_tcp", "sunspec_rtu_tcp": "rtu_tcp"}


def _line_checks(devices: list) -> list[s.Issue]:
    """Devices on one serial port share the line: same settings, distinct unit ids. Devices at one TCP endpoint
    (a gateway with several unit ids) share one connection: same timeout and requests in flight (the same unit
    may be read by two drivers, e.g. SunSpec and a register map of vendor registers)."""
    issues: list[s.Issue] = []
    first: dict[tuple, int] = {}
    units: dict[tuple, int] = {}
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict):
            continue
        spec = DRIVERS.get(dev.get("driver", ""))
        if spec is None:
            continue
        if spec.transport == "serial" and isinstance(dev.get("serial_port"), str):
            link, keys = ("serial", dev["serial_port"]), _LINE_KEYS
            where = f"serial port {dev['serial_port']!r}"
        elif spec.name in _TCP_FRAMING and isinstance(dev.get("host"), str):
            link, keys = (_TCP_FRAMING[spec.name], dev["host"], dev.get("port")), ("timeout_ms", "max_outstanding")
            where = f"endpoint {dev['host']}:{dev.get('port')}"
        else:
            continue
        j = first.setdefault(link, i)
        if j != i:
            for key in keys:
                if dev.get(key) != devices[j].get(key):
                    issues.append(s.Issue(("devices", i, key), f"differs from devices[{j}] on the same {where} "
                                                               f"({dev.get(key)!r} vs {devices[j].get(key)!r})"))
        if link[0] != "serial":
            continue
        unit = dev.get("unit_id")
        k = units.setdefault(link + (unit,), i)
        if k != i:
            issues.append(s.Issue(("devices", i, "unit_id"), f"unit {unit} is already used by devices[{k}] on "
                                                             f"{where}"))
    return issues


def _file_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        return f"file not found: {path}"
    except (OSError, ValueError) as e:
        return f"cannot read {path}: {_reason(e)}"
    return None


def _build(c: dict, base: Path) -> Config:
    gw = GatewayConfig(c["gateway"]["id"], c["gateway"]["description"])
    up = c["uplink"]
    broker: _Broker = up["broker"]

    def opt_path(key: str) -> Path | None:
        return _resolve(base, up[key]) if key in up else None

    uplink = UplinkConfig(
        broker=broker.url, host=broker.host, port=broker.port, tls=broker.scheme == "mqtts",
        topic_prefix=up["topic_prefix"].replace("{gateway_id}", gw.id),
        client_id=up["client_id"] or gw.id,
        ca_file=opt_path("ca_file"), cert_file=opt_path("cert_file"), key_file=opt_path("key_file"),
        keepalive_s=up["keepalive_s"], telemetry_interval_ms=up["telemetry_interval_ms"],
        allow_plaintext=up["allow_plaintext"], backfill_rate=up["backfill_rate"],
        backfill_jitter_s=up["backfill_jitter_s"],
    )
    if not uplink.tls:
        log.warning("uplink %s is plaintext MQTT: telemetry and commands travel unencrypted", uplink.broker)
    devices = tuple(
        DeviceConfig(
            id=d["id"], driver=d["driver"], role=d["role"], host=d.get("host", ""), port=d["port"],
            unit_id=d["unit_id"], poll_ms=d["poll_ms"], timeout_ms=d["timeout_ms"],
            points=tuple(d["points"]) if "points" in d else None, writable=d["writable"],
            map=_find_map(base, d["map"]) if "map" in d else None,
            poll_groups=tuple(PollGroupConfig(g["name"], g["period_ms"], tuple(g["points"]))
                              for g in d.get("poll_groups", ())),
            max_outstanding=d["max_outstanding"], serial_port=d.get("serial_port", ""), baudrate=d["baudrate"],
            parity=d["parity"], stopbits=d["stopbits"], bytesize=d["bytesize"],
            inter_frame_ms=d.get("inter_frame_ms"),
            endpoint=d.get("endpoint", ""), nodes=tuple(d.get("nodes", {}).items()),
            security_policy=d["security_policy"], security_mode=d["security_mode"],
            client_cert=_resolve(base, d["client_cert"]) if "client_cert" in d else None,
            client_key=_resolve(base, d["client_key"]) if "client_key" in d else None,
            server_cert=_resolve(base, d["server_cert"]) if "server_cert" in d else None,
        )
        for d in c["devices"]
    )
    control = _build_control(c["control"])
    st = c["storage"]
    storage = StorageConfig(_resolve(base, st["dir"]), st["quota_mb"], st["max_age_h"], st["durability"])
    return Config(gw, uplink, devices, control, storage, source=None, sha256="", flex=build_flex(c["flex"]))


def _build_control(ctl: dict) -> ControlConfig:
    settings = {k: (tuple(tuple(float(x) for x in pt) for pt in v) if isinstance(v, list) else v)
                for k, v in ctl["settings"].items()}
    poc = None
    if "poc" in ctl:
        p = ctl["poc"]
        poc = PocConfig(p["meter"], p.get("export_limit_w"), p.get("import_limit_w"), p["fail_safe_pct"])
    return ControlConfig(
        ctl["cycle_ms"], ctl["max_activation_s"], ctl["revert_s"], tuple(ctl["priorities"]),
        schedule_horizon_s=ctl["schedule_horizon_s"], profile=PROFILES[ctl["profile"]].with_settings(**settings),
        v_nom_v=ctl["v_nom_v"], q_mode=ctl["q_mode"], pf=ctl["pf"], q_pct=ctl["q_pct"], volt_watt=ctl["volt_watt"],
        freq_watt=ctl["freq_watt"], write_deadband_pct=ctl["write_deadband_pct"], poc=poc,
        devices=tuple(DeviceControlConfig(d["id"], d.get("rated_w"), d.get("p_max_w"), d.get("p_min_w"),
                                          d.get("q_max_var")) for d in ctl["devices"]),
    )


def check_main(path: str | Path, *, check_files: bool = True) -> int:
    """`gridedge check -c FILE`: print OK and a summary, or every error on stderr. 0 = OK, 1 = errors."""
    try:
        cfg = load_config(path, check_files=check_files)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 1
    n = len(cfg.devices)
    print(f"OK {path}: {n} device{'' if n == 1 else 's'}, gateway {cfg.gateway.id}")
    return 0
