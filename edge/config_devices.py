"""The [[devices]] section: the keys of each transport, and the checks that span one device's keys or the devices on
one link. Which keys a device takes, and which points it may name, follow from its driver's entry in the registry
(gridedge.devices), the same entry the agent builds the device with."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from gridedge.core import schema as s

from .config_files import PATH, opcua_security_issues, resolve
from .devices import DRIVERS, DriverSpec

__all__ = ["ID", "DEVICES", "ROLES", "PMU_KEYS", "device_issues", "link_issues", "find_map", "find_obis_map"]

ID = "[A-Za-z0-9_-]"
ROLES = ("inverter", "battery", "meter", "load")
_POINT = r"[A-Za-z][A-Za-z0-9_.:-]{0,63}"
DAY_MS = 86_400_000


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


#: Every key a device may have (the union of the transports'; this order is the order of docs and messages).
FIELDS = {
    "id": s.Required(s.Str(regex=f"{ID}{{1,32}}", regex_hint="be 1-32 characters of A-Z a-z 0-9 _ -"),
                     "device id, unique; first part of point names"),
    "driver": s.Required(s.All(s.Str(), s.Custom(_driver_choice)), "driver name"),
    "role": s.Optional(s.Str(choices=ROLES), default="inverter", doc="what the device is"),
    "host": s.Optional(s.Str(regex=r"[A-Za-z0-9._:%\[\]-]{1,253}",
                             regex_hint="be a host name or IP address"), doc="device address (TCP drivers)"),
    "port": s.Optional(s.Int(ge=1, le=65535), default=502, doc="TCP port"),
    "unit_id": s.Optional(s.Int(ge=0, le=255), default=1, doc="Modbus unit id"),
    "poll_ms": s.Optional(s.Int(gt=0, le=DAY_MS), default=1000, doc="poll period, ms"),
    "timeout_ms": s.Optional(s.Int(gt=0, le=60_000), default=1000, doc="request timeout, ms"),
    "points": s.Optional(s.List(s.Str(regex=_POINT,
                                      regex_hint="be a point name like WMaxLimPct (letters, digits, _ . : -)"),
                                min_len=1, unique=True), doc="points to poll; default all"),
    "writable": s.Optional(s.Bool(), default=False, doc="control writes reach this device only if true"),
    "map": s.Optional(PATH, doc="register map file (register-map drivers); a shipped map by name also works"),
    "poll_groups": s.Optional(s.List(s.Dict({
        "name": s.Required(s.Str(regex=f"{ID}{{1,32}}", regex_hint="be 1-32 characters of A-Z a-z 0-9 _ -"),
                           "group name, for logs"),
        "period_ms": s.Required(s.Int(gt=0, le=DAY_MS), "poll period of this group, ms"),
        "points": s.Required(s.List(s.Str(regex=_POINT, regex_hint="be a point name (letters, digits, _ . : -)"),
                                    min_len=1, unique=True), "points of the map polled in this group"),
    }), min_len=1, unique_key="name"), doc="points polled at their own period; the rest at poll_ms"),
    "max_outstanding": s.Optional(s.Int(ge=1, le=8), default=1,
                                  doc="requests in flight at once (modbus_tcp only; one connection each)"),
    "serial_port": s.Optional(PATH, doc="serial device, e.g. /dev/ttyUSB0 (modbus_rtu)"),
    "baudrate": s.Optional(s.Int(ge=300, le=4_000_000), default=19200, doc="serial line speed, bit/s"),
    "parity": s.Optional(s.Str(choices=("N", "E", "O")), default="E", doc="serial parity (Modbus default E)"),
    "stopbits": s.Optional(s.Int(ge=1, le=2), default=1, doc="serial stop bits"),
    "bytesize": s.Optional(s.Int(ge=7, le=8), default=8, doc="serial data bits"),
    "inter_frame_ms": s.Optional(s.Float(ge=0, le=1000),
                                 doc="silence between frames, ms; default 3.5 characters (1.75 ms above 19200)"),
    "endpoint": s.Optional(s.All(s.Str(min_len=1, max_len=1024), s.Custom(_opcua_endpoint)),
                           doc="OPC UA endpoint URL, opc.tcp://host:port/path (opcua)"),
    "nodes": s.Optional(s.Map(s.Str(regex=_POINT, regex_hint="be a point name like F1.W (letters, digits, _ . : -)"),
                              s.All(s.Str(min_len=1, max_len=4096), s.Custom(_node_id)), min_len=1),
                        doc="point name -> OPC UA node id, all in one subscription (opcua)"),
    "security_policy": s.Optional(s.Str(choices=("None", "Basic256Sha256")), default="Basic256Sha256",
                                  doc="OPC UA security policy (opcua); None needs allow_insecure = true"),
    "allow_insecure": s.Optional(s.Bool(), default=False,
                                 doc="accept security_policy = \"None\": no encryption, any server (opcua; lab only)"),
    "security_mode": s.Optional(s.Str(choices=("Sign", "SignAndEncrypt")), default="SignAndEncrypt",
                                doc="OPC UA message security mode with Basic256Sha256 (opcua)"),
    "client_cert": s.Optional(PATH, doc="the gateway's OPC UA application certificate, PEM or DER (opcua)"),
    "client_key": s.Optional(PATH, doc="its RSA private key, PEM or DER (opcua)"),
    "server_cert": s.Optional(PATH, doc="the server's certificate, pinned (opcua; required with Basic256Sha256)"),
    "obis_map": s.Optional(PATH, doc="OBIS map file, or a shipped one by name (DLMS; default idis_polyphase, "
                                     "han_austria for push)"),
    "client_address": s.Optional(s.Int(ge=1, le=127), default=16,
                                 doc="DLMS client SAP: 16 public, 32 reading, 1 management"),
    "logical_address": s.Optional(s.Int(ge=0, le=16383), default=1, doc="DLMS server logical device"),
    "physical_address": s.Optional(s.Int(ge=0, le=16383), default=17,
                                   doc="DLMS server physical address on an HDLC line (lower HDLC address)"),
    "authentication": s.Optional(s.Str(choices=("none", "low", "high_gmac")), default="none",
                                 doc="DLMS association: none, low (LLS password), high_gmac (HLS, suite 0)"),
    "secrets_file": s.Optional(PATH, doc="TOML file with the DLMS password and/or suite 0 keys"),
    "dedicated_key": s.Optional(s.Bool(), default=False, doc="DLMS: cipher with a fresh key per association"),
    "mode_e": s.Optional(s.Bool(), default=False, doc="IEC 62056-21 mode E start-up (optical probe)"),
    "profile_ms": s.Optional(s.Int(ge=0, le=DAY_MS), default=900_000,
                             doc="load profile read period, ms (0: never; catch-up needs it)"),
    "catch_up_h": s.Optional(s.Float(gt=0, le=2400), default=24.0,
                             doc="how far back the load profile is read after an outage, h"),
    "mode": s.Optional(s.Str(choices=("tcp", "udp", "udp_spontaneous", "mixed")), default="tcp",
                       doc="C37.118 data path: tcp, udp (commanded), udp_spontaneous, mixed (commands over TCP, "
                           "data over UDP) (c37118)"),
    "udp_port": s.Optional(s.Int(ge=0, le=65535), default=4713, doc="the gateway's UDP port for PMU data (c37118)"),
    "pmu_id": s.Optional(s.Int(ge=1, le=65534), default=1, doc="IDCODE of the data stream to command (c37118)"),
    "cfg": s.Optional(s.Int(ge=2, le=3), default=2, doc="configuration frame to ask for, 2 or 3 (c37118)"),
    "report_ms": s.Optional(s.Int(ge=20, le=DAY_MS), default=1000,
                            doc="report interval of the decimated values (mean, min, max, last), ms (c37118)"),
    "report": s.Optional(s.Map(s.Str(regex=_POINT, regex_hint="be a channel name"), s.Int(ge=20, le=DAY_MS),
                               min_len=1), doc="channel -> its own report interval, ms (c37118)"),
    "v_nom_v": s.Optional(s.Float(gt=0, le=1_000_000), doc="nominal voltage of the PMU's voltage phasors, V (c37118: sag/swell)"),
    "events": s.Optional(s.Dict({
        "rocof_hz_per_s": s.Optional(s.Float(gt=0, le=100), doc="|ROCOF| above this is an event, Hz/s"),
        "f_min_hz": s.Optional(s.Float(gt=0, le=1000), doc="frequency below this is an event, Hz"),
        "f_max_hz": s.Optional(s.Float(gt=0, le=1000), doc="frequency above this is an event, Hz"),
        "angle_jump_deg": s.Optional(s.Float(gt=0, le=180), doc="a voltage angle step between frames above this "
                                                                   "(after the rotation the frequency explains), deg"),
        "sag_pu": s.Optional(s.Float(gt=0, lt=1), doc="voltage below this share of v_nom_v is a sag"),
        "swell_pu": s.Optional(s.Float(gt=1, le=10), doc="voltage above this share of v_nom_v is a swell"),
        "sync_loss": s.Optional(s.Bool(), default=True, doc="a PMU losing its time sync is an event"),
        "trigger": s.Optional(s.Bool(), default=True, doc="the PMU's own trigger bit is an event"),
        "before_s": s.Optional(s.Float(ge=0, le=60), default=2.0, doc="full-rate window before an event, s"),
        "after_s": s.Optional(s.Float(ge=0, le=60), default=2.0, doc="full-rate window after an event, s"),
        "holdoff_s": s.Optional(s.Float(ge=0, le=3600), default=5.0,
                                doc="a condition must have cleared this long before it is an event again, s"),
    }), doc="events detected at full rate and published at once with their window (c37118)"),
}
DEVICES = s.List(s.Dict(FIELDS), unique_key="id")

_COMMON = ("id", "driver", "role", "poll_ms", "timeout_ms", "writable")
_SERIAL = ("serial_port", "baudrate", "parity", "stopbits", "bytesize", "inter_frame_ms")
_MAP = ("map", "poll_groups")
_OPCUA = ("endpoint", "nodes", "security_policy", "security_mode", "client_cert", "client_key", "server_cert",
          "allow_insecure")
_MODBUS = ("unit_id", "max_outstanding", "points")
_DLMS = ("obis_map", "client_address", "logical_address", "physical_address", "authentication", "secrets_file",
         "dedicated_key", "mode_e", "profile_ms", "catch_up_h")
#: Per transport: its own keys, the keys it needs and why, and who else's keys it refuses in what words.
_KEYS = {"tcp": _MODBUS + ("host", "port"), "serial": _MODBUS + _SERIAL, "opcua": _OPCUA}
_NEEDS = {"tcp": (("host",), "connects over TCP"), "serial": (("serial_port",), "uses a serial line"),
          "opcua": (("endpoint", "nodes"), "")}
_OWNER = {**dict.fromkeys(_OPCUA, "the opcua driver"), **dict.fromkeys(("host", "port"), "TCP drivers"),
          **dict.fromkeys(_SERIAL, "serial drivers"), **dict.fromkeys(_MAP, "register-map drivers"),
          **dict.fromkeys(("unit_id", "max_outstanding"), "Modbus drivers"), "points": "polled drivers",
          **dict.fromkeys(_DLMS, "DLMS drivers"), "physical_address": "DLMS drivers on HDLC",
          "mode_e": "the dlms_hdlc driver", "inter_frame_ms": "Modbus serial drivers"}
_PMU = PMU_KEYS = ("mode", "udp_port", "pmu_id", "cfg", "report_ms", "report", "v_nom_v", "events")
_OWNER.update(dict.fromkeys(_PMU, "the c37118 driver"))
_REFUSED_ORDER = _OPCUA + ("host", "port", "unit_id", "max_outstanding") + _SERIAL + _MAP + _DLMS + _PMU + ("points",)
_HINT = dict.fromkeys(("host", "port"), " (the endpoint URL holds host and port)") | {
    "points": " (the point names are the keys of nodes)"}
assert (set(FIELDS) == set(_COMMON + _KEYS["tcp"] + _KEYS["serial"] + _MAP + _OPCUA + _DLMS + _PMU)
        == set(_REFUSED_ORDER + _COMMON))


def keys_of(spec: DriverSpec) -> frozenset[str]:
    """The keys a device of this driver may have: its own list, or its transport's (and a register map's if it
    reads one)."""
    own = spec.keys if spec.keys is not None else _KEYS[spec.transport]
    return frozenset(_COMMON + own + (_MAP if spec.needs_map else ()))


def _find(base: Path, text: str, shipped) -> Path:
    """A path relative to the config file, or the name of a file `shipped()` knows (by stem)."""
    p = resolve(base, text)
    if not os.path.exists(p) and "/" not in text and os.sep not in text:
        found = shipped().get(text.removesuffix(".toml"))
        if found is not None:
            return found
    return p


def find_map(base: Path, text: str) -> Path:
    """A map path relative to the config file, or the name of a map shipped in drivers/maps/."""
    from gridedge.drivers.regmap import shipped_maps

    return _find(base, text, shipped_maps)


def device_issues(i: int, dev: dict, raw: Mapping, spec: DriverSpec, base: Path, check_files: bool) -> list[s.Issue]:
    """What this driver needs, refuses and allows of the keys given; its register map, points and key files."""
    def at(key, message):
        return s.Issue(("devices", i, key), message)

    needs, why = _NEEDS[spec.transport]
    issues = [at(k, f"required key missing (driver {spec.name!r}{f' {why}' if why else ''})") for k in needs
              if k not in raw]
    allowed = keys_of(spec)
    for key in _REFUSED_ORDER:
        if key in raw and key not in allowed:
            issues.append(at(key, f"not for the {spec.name} driver{_HINT.get(key, '')}" if spec.transport == "opcua"
                             else f"only for {_OWNER[key]}, not {spec.name!r}"))
    if "max_outstanding" in allowed and not spec.parallel and dev.get("max_outstanding", 1) != 1:
        parallel = " or ".join(sorted(n for n, d in DRIVERS.items() if d.parallel)) or "no driver"
        issues.append(at("max_outstanding", f"only {parallel} may have more than 1 request in flight, not "
                                            f"{spec.name!r}"))
    if spec.read_only and dev.get("writable") is True:
        issues.append(at("writable", f"the {spec.name} driver is read-only (monitoring); set writable = false"))
    if spec.transport == "opcua":
        issues += _opcua_security(dev, raw, at, base, check_files)
    if spec.needs_map:
        issues += _map_issues(i, dev, raw, spec, at, base, check_files)
    elif "obis_map" in allowed:
        issues += _dlms_issues(i, dev, raw, spec, at, base, check_files)
    elif spec.points is not None:
        known = spec.points()
        issues += [s.Issue(("devices", i, "points", j), _no_point(name, f"for driver {spec.name!r}", known))
                   for j, name in enumerate(dev.get("points") or ()) if isinstance(name, str) and name not in known]
    return issues


def _opcua_security(dev: dict, raw: Mapping, at, base: Path, check_files: bool) -> list[s.Issue]:
    files = ("client_cert", "client_key", "server_cert")
    if dev.get("security_policy", "Basic256Sha256") == "None":
        issues = [at(k, "only with security_policy = \"Basic256Sha256\"") for k in ("security_mode",) + files if k in raw]
        if dev.get("allow_insecure") is not True:
            issues.append(at("security_policy", "\"None\" sends everything in the clear and trusts any server: "
                                                "set allow_insecure = true to accept that (a lab), or use "
                                                "Basic256Sha256 with a pinned server_cert"))
        return issues
    if "allow_insecure" in raw:
        issues = [at("allow_insecure", "only with security_policy = \"None\"")]
    else:
        issues = []
    issues += [at(k, f"required key missing (needed with security_policy {dev.get('security_policy', 'Basic256Sha256')!r}"
                     + (": the server's certificate, pinned, or any server would be trusted)" if k == "server_cert"
                        else ")")) for k in files if k not in raw]
    if check_files:
        paths = [resolve(base, dev[k]) if k in dev else None for k in files]
        issues += [at(k, msg) for k, msg in opcua_security_issues(*paths)]
    return issues


def _map_issues(i: int, dev: dict, raw: Mapping, spec: DriverSpec, at, base: Path, check_files: bool) -> list[s.Issue]:
    if "map" not in raw:
        return [at("map", f"required key missing (driver {spec.name!r} reads a register map)")]
    if "map" not in dev or not check_files:
        return []
    from gridedge.drivers.regmap import MapError, load_map

    try:
        rmap = load_map(find_map(base, dev["map"]))
    except MapError as e:
        first, more = e.errors[0], len(e.errors) - 1
        return [at("map", f"bad register map: {first}" + (f" (and {more} more problem(s); run the map through "
                                                            f"gridedge.drivers.regmap)" if more else ""))]
    where = f"in map {rmap.origin}"
    issues = [s.Issue(("devices", i, "points", j), _no_point(name, where, rmap.names))
              for j, name in enumerate(dev.get("points") or ()) if isinstance(name, str) and name not in rmap]
    for g, group in enumerate(dev.get("poll_groups") or ()):
        if isinstance(group, dict):
            issues += [s.Issue(("devices", i, "poll_groups", g, "points", j), _no_point(name, where, rmap.names))
                       for j, name in enumerate(group.get("points") or ())
                       if isinstance(name, str) and name not in rmap]
    return issues


def find_obis_map(base: Path, text: str) -> Path:
    """An OBIS map path relative to the config file, or the name of a map shipped in drivers/maps/dlms/."""
    from gridedge.drivers.dlms.obismap import shipped_obis_maps

    return _find(base, text, shipped_obis_maps)


def _dlms_issues(i: int, dev: dict, raw: Mapping, spec: DriverSpec, at, base: Path, check_files: bool) -> list[s.Issue]:
    """The OBIS map and its points, and the secrets an authenticated association needs."""
    issues = []
    auth = dev.get("authentication", "none")
    if auth != "none" and "secrets_file" not in raw:
        issues.append(at("secrets_file", f"required key missing (authentication {auth!r} needs the password or keys)"))
    if dev.get("dedicated_key") and auth != "high_gmac":
        issues.append(at("dedicated_key", "only with authentication = \"high_gmac\" (a dedicated key needs ciphering)"))
    if not check_files:
        return issues
    from gridedge.drivers.dlms.obismap import load_obis_map
    from gridedge.drivers.regmap import MapError

    default = "han_austria" if spec.unit_key is None else "idis_polyphase"
    try:
        omap = load_obis_map(find_obis_map(base, dev["obis_map"]) if "obis_map" in dev else default)
    except MapError as e:
        return issues + [at("obis_map", f"bad OBIS map: {e.errors[0]}")]
    issues += [s.Issue(("devices", i, "points", j), _no_point(name, f"in OBIS map {omap.origin}", omap.names))
               for j, name in enumerate(dev.get("points") or ()) if isinstance(name, str) and name not in omap]
    if "secrets_file" in dev:
        from gridedge.drivers.dlms.security import load_secrets

        try:
            sec = load_secrets(resolve(base, dev["secrets_file"]))
        except ValueError as e:
            return issues + [at("secrets_file", str(e))]
        if auth == "low" and not sec.password:
            issues.append(at("secrets_file", "has no password (authentication \"low\" needs it)"))
        if (auth == "high_gmac" or spec.unit_key is None) and sec.keys is None:
            if auth == "high_gmac":
                issues.append(at("secrets_file", "has no ek and ak (authentication \"high_gmac\" needs both)"))
    return issues


def _no_point(name: str, where: str, known) -> str:
    guess = s.suggest(name, known)
    return f"no point {name!r} {where}" + (f" (did you mean {guess!r}?)" if guess else "")


def _protocol(spec: DriverSpec) -> str:
    """What a line speaks: one serial line carries Modbus or DLMS, never both."""
    return "dlms" if spec.name.startswith("dlms") else "modbus"


def link_issues(devices: list) -> list[s.Issue]:
    """Devices on one serial port share the line, devices at one TCP endpoint (a gateway with several unit ids) share
    its connection: the same line settings (timeout, requests in flight) and distinct unit ids."""
    issues: list[s.Issue] = []
    first: dict[tuple, int] = {}
    units: dict[tuple, int] = {}
    for i, dev in enumerate(devices):
        spec = DRIVERS.get(dev.get("driver", "")) if isinstance(dev, dict) else None
        if spec is None or spec.link is None:
            continue
        if spec.transport == "serial" and isinstance(dev.get("serial_port"), str):
            link, keys = ("serial", dev["serial_port"]), _SERIAL[1:] + ("timeout_ms",)
            where = f"serial port {dev['serial_port']!r}"
        elif spec.transport != "serial" and isinstance(dev.get("host"), str):
            link, keys = (spec.link, dev["host"], dev.get("port")), ("timeout_ms", "max_outstanding")
            where = f"endpoint {dev['host']}:{dev.get('port')}"
        else:
            continue
        j = first.setdefault(link, i)
        if j != i:
            other = DRIVERS[devices[j]["driver"]]
            if _protocol(other) != _protocol(spec) or spec.unit_key is None or other.unit_key is None:
                issues.append(s.Issue(("devices", i, "driver"), f"{spec.name!r} cannot share the {where} with "
                                                                f"devices[{j}] ({other.name!r})"))
                continue
            issues += [s.Issue(("devices", i, key), f"differs from devices[{j}] on the same {where} "
                                                    f"({dev.get(key)!r} vs {devices[j].get(key)!r})")
                       for key in keys if dev.get(key) != devices[j].get(key)]
        unit = dev.get(spec.unit_key) if spec.unit_key else None
        k = units.setdefault(link + (unit,), i)
        if k != i and spec.unit_key:
            what = "unit" if spec.unit_key == "unit_id" else spec.unit_key.replace("_", " ")
            issues.append(s.Issue(("devices", i, spec.unit_key),
                                  f"{what} {unit} is already used by devices[{k}] on {where}"))
    return issues
