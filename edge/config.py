"""The gateway config: a TOML file checked up front, so a bad config stops the agent with a list of
every problem (file, key path, what is wrong) rather than a traceback an hour later.

This module reads, checks and builds it; the sections' keys and checks are in config_devices (by transport, from the
driver registry in devices.py), config_control and config_files (the files behind the keys, opened as the agent
will open them). See docs/configuration.md for every key and examples/gateway.toml for an annotated example.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import tomllib
from dataclasses import dataclass, field, replace
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gridedge.control.profiles import PROFILES
from gridedge.core import schema as s
from gridedge.fleet.settings import FLEET_SCHEMA, FleetConfig, build_fleet, fleet_issues
from gridedge.flex.settings import FLEX_SCHEMA, FlexConfig, build_flex, flex_issues
from gridedge.security.trust import SECURITY_SCHEMA, trust_issues

from .clock import SOURCES, ClockSettings
from .config_control import CONTROL, control_issues
from .config_devices import DEVICES, ID, PMU_KEYS, device_issues, find_map, find_obis_map, link_issues
from .config_telemetry import TELEMETRY, TelemetryConfig, build_telemetry, telemetry_issues
from .config_files import PATH, file_problem, reason, resolve, storage_problem, uplink_tls_issues
from .devices import DRIVERS, DriverSpec, register_driver

__all__ = [
    "ConfigError", "Config", "GatewayConfig", "UplinkConfig", "DeviceConfig", "ControlConfig", "StorageConfig",
    "DriverSpec", "DRIVERS", "register_driver", "load_config", "config_from_bytes", "parse_config", "check_main", "SCHEMA",
    "PollGroupConfig", "FlexConfig", "PocConfig", "DeviceControlConfig",
]

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """All problems found in one config; `.errors` holds one rendered message per problem, each one printable line
    (paths and library messages come from outside: a newline in a file name must not forge a second message)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = [m if m.isprintable() else "".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                                                         for c in m) for m in errors]
        super().__init__(self.errors)  # args round-trip through pickle

    def __str__(self) -> str:
        return "\n".join(self.errors)


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
    session_expiry_s: int = 3600
    protocol: str = "5"  # "5" or "3.1.1" (gridedge.mqtt.PROTOCOLS)
    failover: tuple[str, ...] = ()  # more broker URLs (other nodes of the cluster), tried in turn after broker


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
    security_policy: str = "Basic256Sha256"
    allow_insecure: bool = False
    security_mode: str = "SignAndEncrypt"
    client_cert: Path | None = None
    client_key: Path | None = None
    server_cert: Path | None = None
    # DLMS/COSEM (dlms_*)
    obis_map: Path | None = None
    client_address: int = 16
    logical_address: int = 1
    physical_address: int = 17
    authentication: str = "none"
    secrets_file: Path | None = None
    dedicated_key: bool = False
    mode_e: bool = False
    profile_ms: int = 900_000
    catch_up_h: float = 24.0
    # C37.118 PMUs (c37118): mode, udp_port, pmu_id, cfg, report_ms, report, v_nom_v, events (config_devices.py)
    pmu: dict = field(default_factory=dict, compare=False, hash=False)


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
class SecurityConfig:
    """The checked [security] section and the directory its key files are relative to; the agent builds its
    TrustStore from it (gridedge.security.trust)."""

    section: dict
    base: Path

    @property
    def allow_unsigned(self) -> bool:
        return self.section.get("allow_unsigned", False)

    def resolve(self, text: str) -> Path:
        return resolve(self.base, text)


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
    security: "SecurityConfig" = None  # [security]: gridedge.security.trust; None only where built by hand
    telemetry: TelemetryConfig = TelemetryConfig()  # [telemetry]: edge/config_telemetry.py
    fleet: FleetConfig = FleetConfig()  # [fleet]: gridedge.fleet.settings
    clock: ClockSettings = ClockSettings()  # [clock]: gridedge.clock

    def device(self, device_id: str) -> DeviceConfig:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)


# ---------------------------------------------------------------- schema

DEFAULT_TOPIC_PREFIX = "gridedge/v3/{gateway_id}/"
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


SCHEMA = s.Dict({
    "gateway": s.Required(s.Dict({
        "id": s.Required(s.Str(regex=f"{ID}{{1,64}}", regex_hint="be 1-64 characters of A-Z a-z 0-9 _ -"),
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
        "ca_file": s.Optional(PATH, doc="CA certificate(s) that signed the broker's certificate (PEM)"),
        "cert_file": s.Optional(PATH, doc="the gateway's client certificate (PEM)"),
        "key_file": s.Optional(PATH, doc="the gateway's private key (PEM)"),
        "keepalive_s": s.Optional(s.Int(ge=5, le=3600), default=30, doc="MQTT keepalive, s"),
        "telemetry_interval_ms": s.Optional(s.Int(gt=0, le=3_600_000), default=1000,
                                            doc="samples are batched into one telemetry message this often, ms"),
        "allow_plaintext": s.Optional(s.Bool(), default=False, doc="must be true to use mqtt://"),
        "backfill_rate": s.Optional(s.Float(gt=0, le=100000), default=20.0,
                                    doc="stored messages replayed per second after a reconnect"),
        "backfill_jitter_s": s.Optional(s.Float(ge=0, le=3600), default=30.0,
                                        doc="replay starts after a random delay up to this, s (fleet jitter)"),
        "session_expiry_s": s.Optional(s.Int(ge=0, le=30 * 86400), default=3600,
                                       doc="the broker keeps the MQTT session, and the commands sent to it, this "
                                           "long while the gateway is away, s; 0: no session"),
        "protocol": s.Optional(s.Str(choices=("5", "3.1.1")), default="5",
                               doc="MQTT version: 5, or 3.1.1 for brokers that speak only that (docs/mqtt-api.md)"),
        "failover": s.Optional(s.List(s.All(s.Str(min_len=1, max_len=1024), s.Custom(_parse_broker)), unique=True),
                               default=[], doc="more broker URLs, the other nodes of a clustered broker: a "
                                               "gateway whose broker fails connects to the next (docs/fleet.md)"),
    })),
    "telemetry": s.Optional(TELEMETRY, default={},
                            doc="the form of telemetry: compression, layouts, report by exception (data thrift)"),
    "storage": s.Optional(s.Dict({
        "dir": s.Optional(PATH, doc="durable state directory; default $STATE_DIRECTORY (systemd's StateDirectory=), "
                                    "else var/ next to the configuration"),
        "quota_mb": s.Optional(s.Float(ge=0.01, le=1024 * 1024), default=256.0,
                               doc="outbox disk quota (stored payload bytes), MiB"),
        "max_age_h": s.Optional(s.Float(gt=0, le=87600), default=720.0,
                                doc="stored messages older than this are dropped, h (at most 10 years)"),
        "durability": s.Optional(s.Str(choices=("full", "normal")), default="full",
                                 doc="full: survives power loss; normal: survives a crash (docs/durability.md)"),
    }), default={}),
    "control": s.Optional(CONTROL, default={}),
    "devices": s.Optional(DEVICES, default=[]),
    "flex": s.Optional(FLEX_SCHEMA, default={}, doc="flexibility: ISPs, baselines, verification (gridedge.flex)"),
    "security": s.Optional(SECURITY_SCHEMA, default={},
                           doc="who may command the gateway: trusted issuers, their roles and keys (gridedge.security)"),
    "fleet": s.Optional(FLEET_SCHEMA, default={},
                        doc="remote configuration, updates, certificates and local status (gridedge.fleet)"),
    "clock": s.Optional(s.Dict({
        "source": s.Optional(s.Str(choices=SOURCES), default="auto",
                             doc="clock discipline to read: auto (PTP, chrony, timedatectl: the first that answers), "
                                 "ptp, chrony, timedatectl, none (the clock is then not synchronised)"),
        "interval_s": s.Optional(s.Float(ge=1, le=3600), default=16.0, doc="read it this often, s"),
        "max_error_ms": s.Optional(s.Float(gt=0, le=86_400_000), default=500.0,
                                   doc="a worse error bound counts as not synchronised, ms"),
        "step_ms": s.Optional(s.Float(gt=0, le=86_400_000), default=100.0,
                              doc="a jump of the wall clock against the monotonic clock above this is a step, ms"),
        "step_hold_s": s.Optional(s.Float(ge=0, le=86400), default=60.0,
                                  doc="samples stamped this long after a step carry step = true, s"),
        "chrony_socket": s.Optional(s.Str(max_len=1024), default="", doc="chronyc -h (its socket or host)"),
        "ptp_socket": s.Optional(s.Str(max_len=1024), default="", doc="pmc -s (ptp4l's UNIX socket)"),
    }), default={}, doc="the gateway's own clock: how good the time stamps it puts on samples are (gridedge.clock)"),
})


# ---------------------------------------------------------------- loading

def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and check a TOML config. Raises ConfigError (never anything else) for any bad input."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except (OSError, ValueError) as e:
        raise ConfigError([f"{source}: cannot read: {reason(e)}"]) from None
    return config_from_bytes(raw, path, check_files=check_files)


def config_from_bytes(raw: bytes, path: str | Path, *, check_files: bool = True) -> Config:
    """The bytes of a config as if they were the file at `path` (relative paths resolve beside it): how a
    configuration that arrives over the network is checked before it is written there (gridedge.fleet)."""
    source = str(path)
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


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None, *,
                 check_files: bool = True) -> Config:
    """Check an already-parsed config (a dict as from tomllib). Relative paths resolve against
    base_dir (default: the current directory). With check_files, TLS files must be readable."""
    data = _driver_defaults(data)
    clean, issues = s.validate(SCHEMA, data, partial=True)
    base = Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd()))
    if isinstance(clean, dict):
        issues += _cross_checks(data, clean, base, check_files)
    if issues:
        raise ConfigError(s.format_issues(issues, source))
    return _build(clean, base)


def _driver_defaults(data: Any) -> Any:
    """The config with each device's driver defaults filled in where the device does not give the key (a DLMS
    meter's port is 4059, not Modbus's 502), before validation, so they are checked like any value."""
    devices = data.get("devices") if isinstance(data, Mapping) else None
    if not isinstance(devices, (list, tuple)):
        return data
    filled = []
    for dev in devices:
        spec = DRIVERS.get(dev.get("driver")) if isinstance(dev, Mapping) and isinstance(dev.get("driver"), str) \
            else None
        filled.append({**dict(spec.defaults), **dev} if spec is not None and spec.defaults else dev)
    return {**data, "devices": filled}


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
            issues += _tls_issues(up, raw_up, base, check_files)
        for i, other in enumerate(up.get("failover") or ()):
            if isinstance(other, _Broker) and other.scheme != broker.scheme:
                issues.append(s.Issue(("uplink", "failover", i),
                                      f"must be {broker.scheme}:// like broker (one TLS setting for the cluster)"))
    storage = clean.get("storage")
    if check_files and isinstance(storage, dict) and ("dir" in storage or not isinstance(raw.get("storage"), Mapping)
                                                      or "dir" not in raw["storage"]):
        msg = storage_problem(storage_dir(storage, base))
        if msg:
            issues.append(s.Issue(("storage", "dir"), msg))
    devices = clean.get("devices")
    raw_devices = raw.get("devices") if isinstance(raw, Mapping) else None
    if isinstance(devices, list) and isinstance(raw_devices, (list, tuple)):
        for i, dev in enumerate(devices):
            if isinstance(dev, dict) and dev.get("driver") in DRIVERS and isinstance(raw_devices[i], Mapping):
                issues += device_issues(i, dev, raw_devices[i], DRIVERS[dev["driver"]], base, check_files)
        issues += link_issues(devices)
    if isinstance(raw, Mapping) and "flex" in raw:
        polled = {d["id"]: (tuple(d["points"]) if d.get("points") else None)  # [] is reported already
                  for d in (devices or ()) if isinstance(d, dict) and "id" in d}
        issues += flex_issues(raw["flex"], clean.get("flex"), polled)
    issues += control_issues(clean.get("control"), devices if isinstance(devices, list) else [])
    issues += telemetry_issues(clean.get("telemetry"), devices if isinstance(devices, list) else [])
    if isinstance(clean.get("security"), dict) and check_files:
        from gridedge.contract import RIGHTS

        known = {d["id"] for d in (devices or ()) if isinstance(d, dict) and "id" in d}
        issues += trust_issues(clean["security"], known, RIGHTS, lambda text: resolve(base, text))
    issues += fleet_issues(clean.get("fleet"), lambda text: resolve(base, text), check_files)
    return issues


def _tls_issues(up: dict, raw_up: Mapping, base: Path, check_files: bool) -> list[s.Issue]:
    """mqtts needs the three files; with check_files they are parsed and matched as the agent will."""
    keys = ("ca_file", "cert_file", "key_file")
    issues = [s.Issue(("uplink", k), "required key missing (needed for mqtts://)") for k in keys if k not in raw_up]
    if not check_files:
        return issues
    if all(k in up for k in keys):
        found = uplink_tls_issues(*(resolve(base, up[k]) for k in keys))
    else:   # some are missing or invalid (reported): say what can be said of the others
        found = [(k, msg) for k in keys if k in up and (msg := file_problem(resolve(base, up[k])))]
    return issues + [s.Issue(("uplink", k), msg) for k, msg in found]


def storage_dir(st: dict, base: Path) -> Path:
    """storage.dir; without it, the state directory systemd made for the unit (StateDirectory=gridedge sets
    $STATE_DIRECTORY, the first of a colon-separated list), else var/ beside the configuration file."""
    if "dir" in st:
        return resolve(base, st["dir"])
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state.startswith("/") else resolve(base, "var")


def _build(c: dict, base: Path) -> Config:
    gw = GatewayConfig(c["gateway"]["id"], c["gateway"]["description"])
    up = c["uplink"]
    broker: _Broker = up["broker"]

    def opt_path(key: str) -> Path | None:
        return resolve(base, up[key]) if key in up else None

    uplink = UplinkConfig(
        broker=broker.url, host=broker.host, port=broker.port, tls=broker.scheme == "mqtts",
        topic_prefix=up["topic_prefix"].replace("{gateway_id}", gw.id),
        client_id=up["client_id"] or gw.id,
        ca_file=opt_path("ca_file"), cert_file=opt_path("cert_file"), key_file=opt_path("key_file"),
        keepalive_s=up["keepalive_s"], telemetry_interval_ms=up["telemetry_interval_ms"],
        allow_plaintext=up["allow_plaintext"], backfill_rate=up["backfill_rate"],
        backfill_jitter_s=up["backfill_jitter_s"], session_expiry_s=up["session_expiry_s"],
        protocol=up["protocol"], failover=tuple(b.url for b in up["failover"]),
    )
    if not uplink.tls:
        log.warning("uplink %s is plaintext MQTT: telemetry and commands travel unencrypted", uplink.broker)
    devices = tuple(
        DeviceConfig(
            id=d["id"], driver=d["driver"], role=d["role"], host=d.get("host", ""), port=d["port"],
            unit_id=d["unit_id"], poll_ms=d["poll_ms"], timeout_ms=d["timeout_ms"],
            points=tuple(d["points"]) if "points" in d else None, writable=d["writable"],
            map=find_map(base, d["map"]) if "map" in d else None,
            poll_groups=tuple(PollGroupConfig(g["name"], g["period_ms"], tuple(g["points"]))
                              for g in d.get("poll_groups", ())),
            max_outstanding=d["max_outstanding"], serial_port=d.get("serial_port", ""), baudrate=d["baudrate"],
            parity=d["parity"], stopbits=d["stopbits"], bytesize=d["bytesize"],
            inter_frame_ms=d.get("inter_frame_ms"),
            endpoint=d.get("endpoint", ""), nodes=tuple(d.get("nodes", {}).items()),
            security_policy=d["security_policy"], security_mode=d["security_mode"], allow_insecure=d["allow_insecure"],
            client_cert=resolve(base, d["client_cert"]) if "client_cert" in d else None,
            client_key=resolve(base, d["client_key"]) if "client_key" in d else None,
            server_cert=resolve(base, d["server_cert"]) if "server_cert" in d else None,
            obis_map=find_obis_map(base, d["obis_map"]) if "obis_map" in d else None,
            client_address=d["client_address"], logical_address=d["logical_address"],
            physical_address=d["physical_address"], authentication=d["authentication"],
            secrets_file=resolve(base, d["secrets_file"]) if "secrets_file" in d else None,
            dedicated_key=d["dedicated_key"], mode_e=d["mode_e"], profile_ms=d["profile_ms"],
            catch_up_h=d["catch_up_h"], pmu={k: d[k] for k in PMU_KEYS if k in d},
        )
        for d in c["devices"]
    )
    control = _build_control(c["control"])
    st = c["storage"]
    storage = StorageConfig(storage_dir(st, base), st["quota_mb"], st["max_age_h"], st["durability"])
    if c["security"].get("allow_unsigned"):
        log.warning("security.allow_unsigned is true: commands are trusted by the topic they arrive on")
    return Config(gw, uplink, devices, control, storage, source=None, sha256="", flex=build_flex(c["flex"]),
                  security=SecurityConfig(c["security"], base), telemetry=build_telemetry(c["telemetry"]),
                  fleet=build_fleet(c["fleet"], lambda t: resolve(base, t)), clock=ClockSettings(**c["clock"]))


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
