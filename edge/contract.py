"""The MQTT contract between a gateway and the DSO head-end (docs/mqtt-api.md, schemas/).

Topics under the prefix (default gridedge/v3/{gateway_id}/): telemetry, state (retained, last will
"offline"), cmd/<issuer> (an issuer -> gateway, signed: edge/security), result (gateway -> head-end) and audit.
Every payload is JSON with a `schema` field "gridedge.<kind>/<major>" (a command: the payload of a JWS); a
consumer rejects majors it does not know.
"""
from __future__ import annotations

import json
import math
import re
import sys
import sysconfig
from dataclasses import dataclass, field

from .core.utc import iso_utc, parse_iso_utc  # noqa: F401  (part of the contract's API)
from .telemetry import SCHEMA_TELEMETRY  # noqa: F401  (part of the contract; telemetry payloads: edge/telemetry.py)

SCHEMA_STATE = "gridedge.state/1"
SCHEMA_COMMAND = "gridedge.command/2"
SCHEMA_RESULT = "gridedge.result/1"
SCHEMA_AUDIT = "gridedge.audit/1"

TOPIC_TELEMETRY = "telemetry"
TOPIC_STATE = "state"
TOPIC_CMD = "cmd"              # <p>cmd/<issuer id>: one topic per issuer, so a broker ACL can confine each
TOPIC_NOMINATION = "nomination"  # <p>nomination/<issuer id>
TOPIC_AUDIT = "audit"
TOPIC_RESULT = "result"
TOPIC_EVENT = "event"              # events a device detected (PMUs), at once; schema gridedge.event/1
TOPIC_EVENT_WINDOW = "event_window"  # the full-rate window around an event, when it has passed; gridedge.event_window/1

ISSUERS = ("tso", "dso", "aggregator")
#: Commands that start an activation (a remote set-point for a while), and the unit of their quantity.
ACTIVATION_TYPES = {"limit_active_power": "%", "set_active_power": "W", "set_reactive_power": "var",
                    "set_power_factor": ""}
#: Commands that act on activations or on the gateway, at once.
ACTION_TYPES = ("terminate", "cancel", "traffic_light")
#: A prequalification step test of a flexibility resource: a set-point held for a while, its response analysed.
TEST_TYPES = ("prequalification_test",)
#: Commands that change the gateway itself (docs/fleet.md): a new configuration, a software release, a new client
#: certificate (the gateway makes the key and a CSR; the operator's CA answers with install_certificate).
FLEET_TYPES = ("configure", "update", "rotate_certificate", "install_certificate")
COMMAND_TYPES = tuple(ACTIVATION_TYPES) + ACTION_TYPES + TEST_TYPES + FLEET_TYPES
#: What a role may be given ([security.roles]): every command type, and "nominate" (send baseline nominations).
RIGHTS = COMMAND_TYPES + ("nominate",)
#: the steps of a fleet change (docs/fleet.md): validated, applied, then healthy or rolled_back
FLEET_STATUSES = ("validated", "applied", "healthy", "rolled_back")
RESULT_STATUSES = ("accepted", "rejected", "scheduled", "active", "completed", "expired", "cancelled", "terminated",
                   "failed") + FLEET_STATUSES
TRAFFIC_LIGHTS = ("green", "amber", "red")
MAX_COMMAND_BYTES = 16384  # a larger command (the JSON in the signature) is rejected unread
MAX_SIGNED_BYTES = 32768   # a larger message on a cmd topic (the JWS: base64 of the command, header, signature)
#: A command nests two deep (the command, its params); json recurses once per level, so deeper input is refused
#: before it is decoded (16 KiB of "[" would overflow the interpreter's stack).
MAX_COMMAND_DEPTH = 8
MAX_REASON_CHARS = 500  # a reason quotes what it refuses: bounded, so a result stays small whatever was sent
CONTRACT_VERSION = "3.1"  # 3: signed commands on per-issuer topics, prefix gridedge/v3/; .1: data thrift (docs/mqtt-api.md, "Versions")
#: The claims of a signed command (RFC 7519 names): who signed it, for which gateway, when, and until when.
CLAIMS = ("iss", "aud", "iat", "exp")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # one encoder: json.dumps(**kw) builds one per call


def dumps(obj: dict) -> bytes:
    return _ENCODER.encode(obj).encode()


def state(gateway_id: str, status: str, ts_ns: int, **info) -> dict:
    return {"schema": SCHEMA_STATE, "gateway": gateway_id, "status": status, "ts": iso_utc(ts_ns), **info}


def audit(record: dict) -> dict:
    """The body of an audit message: one record of the gateway's hash-chained audit trail, as written locally
    (edge/security/audit.py), so the head-end holds a copy that `gridedge audit verify --anchor` can check."""
    return {"schema": SCHEMA_AUDIT, "ts": record["ts"], "record": record}


#: The state (docs/mqtt-api.md, the life of an activation) a status reports, where the caller names none.
STATE_OF_STATUS = {"accepted": "validated", **{s: s for s in RESULT_STATUSES if s != "accepted"}}


def result(ts_ns: int, cmd_id: str | None, status: str, reason: str | None = None, **detail) -> dict:
    """The body of a command result; the outbox adds gateway, stream, seq and msg_id. Every result names its
    state in detail.state: the caller's, else the one its status reports."""
    return {"schema": SCHEMA_RESULT, "ts": iso_utc(ts_ns), "cmd_id": cmd_id, "status": status,
            "reason": None if reason is None else _bounded(reason), "detail": {"state": STATE_OF_STATUS[status], **detail}}


def _bounded(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 20] + f"... ({len(reason)} chars)"


class CommandRejected(Exception):
    """A command answered at once with `status` ("rejected", or "expired" when its window closed before it
    arrived) and the reason; cmd_id is None when it could not be read."""

    def __init__(self, cmd_id: str | None, reason: str, status: str = "rejected") -> None:
        reason = _bounded(reason)
        super().__init__(reason)
        self.cmd_id = cmd_id
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Command:
    """A command that has passed its checks. `issuer` is the actor class of whoever sent it (tso, dso,
    aggregator: the priority of its activations); `principal` the authenticated issuer id (None only for
    commands made inside the gateway's tests), both set from what verified the command, never from its text."""

    cmd_id: str
    type: str
    issuer: str
    device: str | None
    valid_from_ns: int | None
    valid_until_ns: int | None
    params: dict = field(default_factory=dict)
    principal: str | None = None
    issued_ns: int | None = None   # its signed iat: a time the gateway can trust when its own clock is not synchronised


_COMMAND_KEYS = {"schema", "cmd_id", "type", "device", "valid_from", "valid_until", "params", *CLAIMS}


def decode(payload: bytes, what: str = "command", max_bytes: int = MAX_COMMAND_BYTES) -> dict:
    """Hostile JSON -> a dict, or CommandRejected(None, reason): bounded size and nesting, long integers as
    floats, valid Unicode only. Shared by commands and nominations, signed or not."""
    if len(payload) > max_bytes:
        raise CommandRejected(None, f"{what} too large: {len(payload)} bytes > {max_bytes}")
    if _too_deep(payload):
        raise CommandRejected(None, f"malformed {what}: nested deeper than {MAX_COMMAND_DEPTH} levels")
    try:
        doc = json.loads(payload, parse_int=_parse_int)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CommandRejected(None, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandRejected(None, f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def parse_command(payload: bytes, now_ns: int, *, issuer: str = "dso", principal: str | None = None,
                  **kw) -> Command:
    """Bytes of a command document -> Command (see command_from): for the gateway's own tests and tools; the
    agent takes commands only through edge/security (authenticate, then command_from)."""
    return command_from(decode(payload), now_ns, issuer=issuer, principal=principal, **kw)


def command_from(doc: dict, now_ns: int, *, issuer: str, principal: str | None, max_activation_s: int,
                 clock_skew_s: float = 5.0, schedule_horizon_s: float = 0.0, max_revert_s: int = 65535) -> Command:
    """A decoded command document -> Command, or CommandRejected naming the fault. `issuer` (the actor class)
    and `principal` come from what authenticated the document.

    The validity window of an activation is when it may start: valid_from (default now) up to valid_until
    (default: it must start at once); one may be scheduled up to schedule_horizon_s ahead. Other commands
    act on receipt, so a valid_from in the future is refused for them.
    """
    cmd_id = doc.get("cmd_id")
    if not isinstance(cmd_id, str) or not 1 <= len(cmd_id) <= 128 or not _encodable(cmd_id):
        raise CommandRejected(None, "cmd_id: must be a string of 1 to 128 characters (valid Unicode)")

    def reject(reason: str) -> CommandRejected:
        return CommandRejected(cmd_id, reason)

    if doc.get("schema") != SCHEMA_COMMAND:
        raise reject(f"schema: must be {SCHEMA_COMMAND!r}, got {doc.get('schema')!r}")
    unknown = sorted(set(doc) - _COMMAND_KEYS)
    if unknown:
        raise reject(f"unknown key {unknown[0]!r}")
    ctype = doc.get("type")
    if ctype not in COMMAND_TYPES:
        raise reject(f"type: unknown command {ctype!r}; known: {', '.join(COMMAND_TYPES)}")
    if issuer not in ISSUERS:
        raise reject(f"issuer: must be one of {', '.join(ISSUERS)}, got {issuer!r}")
    device = doc.get("device")
    if "device" in doc and not isinstance(device, str):   # null too: the schema says a string, or no key at all
        raise reject("device: must be a device id string")

    window = []
    for key in ("valid_from", "valid_until"):
        raw = doc.get(key)
        if raw is None:
            window.append(None)
            continue
        try:
            window.append(parse_iso_utc(raw) if isinstance(raw, str) else _raise(ValueError("not a string")))
        except (ValueError, OverflowError) as exc:
            raise reject(f"{key}: must be an ISO 8601 UTC time like 2026-01-31T12:00:00Z ({exc})") from None
    valid_from, valid_until = window
    skew = int(clock_skew_s * 1e9)
    horizon = int(schedule_horizon_s * 1e9) if ctype in ACTIVATION_TYPES else 0
    if valid_until is not None and now_ns > valid_until:
        raise CommandRejected(cmd_id, f"expired: valid_until {doc['valid_until']} is in the past", "expired")
    if valid_from is not None and valid_from > now_ns + skew + horizon:
        raise reject(f"not yet valid: valid_from {doc['valid_from']} is in the future"
                     + (f", beyond the scheduling horizon of {schedule_horizon_s:g} s" if horizon else ""))
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise reject("valid_until must be after valid_from")

    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise reject("params: must be an object")
    if ctype in ACTIVATION_TYPES:
        params = _activation_params(ctype, params, max_activation_s, max_revert_s, reject)
    elif ctype == "traffic_light":
        if issuer != "dso":
            raise reject(f"issuer: only the dso sends a traffic light, got {issuer!r}")
        params = _traffic_light_params(params, max_activation_s, reject)
    elif ctype == "prequalification_test":
        params = _test_params(params, max_activation_s, reject)
    elif ctype in FLEET_TYPES:
        params = _fleet_params(ctype, params, reject)
    else:
        params = _target_params(ctype, params, reject)
    iat = doc.get("iat")
    issued = int(iat * 1e9) if isinstance(iat, (int, float)) and not isinstance(iat, bool) and 0 < iat < 2**34 else None
    return Command(cmd_id, ctype, issuer, device, valid_from, valid_until, params, principal, issued)


def _number(params: dict, key: str, lo: float, hi: float, reject) -> float:
    v = params.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise reject(f"params.{key}: must be a number, got {v!r}")
    if not lo <= v <= hi:
        raise reject(f"params.{key}: out of range: must be within [{lo:g}, {hi:g}], got {v:g}")
    return float(v)


#: The quantity key of each activation type and its range (W and var are bounded by the devices, later).
_QUANTITY = {"limit_active_power": ("limit_pct", 0.0, 100.0), "set_active_power": ("w", -1e9, 1e9),
             "set_reactive_power": ("var", -1e9, 1e9), "set_power_factor": ("pf", -1.0, 1.0)}


def _activation_params(ctype: str, params: dict, max_activation_s: int, max_revert_s: int, reject) -> dict:
    key = _QUANTITY[ctype][0]
    extra = sorted(set(params) - {key, "duration_s", "revert_s"})
    if extra:
        raise reject(f"params: unknown key {extra[0]!r} ({ctype} takes {key}, duration_s and optionally revert_s)")
    out = {key: _number(params, key, *_QUANTITY[ctype][1:], reject),
           "duration_s": _number(params, "duration_s", 1.0, float(max_activation_s), reject)}
    if ctype == "set_power_factor" and abs(out["pf"]) < 0.1:
        raise reject(f"params.pf: |pf| must be within [0.1, 1] (> 0 injects, < 0 absorbs reactive power), "
                     f"got {out['pf']:g}")
    if "revert_s" in params:
        revert = _number(params, "revert_s", 1.0, float(max_revert_s), reject)
        if not revert.is_integer():
            raise reject(f"params.revert_s: must be whole seconds, got {revert:g}")
        out["revert_s"] = revert
    return out


def _target_params(ctype: str, params: dict, reject) -> dict:
    target = params.get("activation_id")
    if set(params) != {"activation_id"} or not isinstance(target, str) or not 1 <= len(target) <= 128:
        raise reject(f"params: {ctype} takes exactly {{'activation_id': <cmd_id of the activation>}}")
    return {"activation_id": target}


def _test_params(params: dict, max_activation_s: int, reject) -> dict:
    extra = sorted(set(params) - {"resource", "w", "duration_s"})
    if extra:
        raise reject(f"params: unknown key {extra[0]!r} (prequalification_test takes resource, w and duration_s)")
    resource = params.get("resource")
    if not isinstance(resource, str) or not 1 <= len(resource) <= 32:
        raise reject(f"params.resource: must be a flex resource id (1-32 characters), got {resource!r}")
    return {"resource": resource, "w": _number(params, "w", -1e9, 1e9, reject),
            "duration_s": _number(params, "duration_s", 5.0, float(max_activation_s), reject)}


_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
MAX_DOWNLOAD_BYTES = 1 << 20  # a configuration fetched by URL


def _fleet_params(ctype: str, params: dict, reject) -> dict:
    """The fleet commands' params (docs/fleet.md); what they mean is edge/fleet's."""
    def only(*allowed: str) -> None:
        extra = sorted(set(params) - set(allowed))
        if extra:
            raise reject(f"params: unknown key {extra[0]!r} ({ctype} takes {', '.join(allowed) or 'nothing'})")

    out: dict = {}
    if "health_window_s" in params:
        out["health_window_s"] = _number(params, "health_window_s", 10.0, 3600.0, reject)
    if ctype == "configure":
        only("config", "url", "sha256", "size", "version", "health_window_s")
        if ("config" in params) == ("url" in params):
            raise reject("params: configure takes the configuration inline (config) or by url with its sha256")
        if "config" in params:
            if not isinstance(params["config"], str) or not params["config"]:
                raise reject("params.config: must be the TOML text of the configuration")
            out["config"] = params["config"]
        else:
            url, digest = params.get("url"), params.get("sha256")
            if not isinstance(url, str) or not url.startswith("https://") or len(url) > 2048:
                raise reject("params.url: must be an https:// URL of at most 2048 characters")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise reject("params.sha256: must be the file's SHA-256, 64 lowercase hex digits")
            out.update(url=url, sha256=digest,
                       size=int(_number(params, "size", 1, MAX_DOWNLOAD_BYTES, reject)) if "size" in params else None)
        if "version" in params:
            if not isinstance(params["version"], str) or not _VERSION.fullmatch(params["version"]):
                raise reject("params.version: a label of 1-64 characters (A-Z a-z 0-9 . + _ -)")
            out["version"] = params["version"]
    elif ctype == "update":
        only("version", "health_window_s")
        v = params.get("version")
        if not isinstance(v, str) or not _VERSION.fullmatch(v):
            raise reject("params.version: the release to install, 1-64 characters (A-Z a-z 0-9 . + _ -)")
        out["version"] = v
    elif ctype == "rotate_certificate":
        only("method", "health_window_s")
        method = params.get("method", "mqtt")
        if method not in ("mqtt", "est"):
            raise reject(f"params.method: mqtt or est, got {method!r}")
        out["method"] = method
    else:  # install_certificate
        only("certificate", "rotation_id", "health_window_s")
        cert, rid = params.get("certificate"), params.get("rotation_id")
        if not isinstance(cert, str) or "-----BEGIN CERTIFICATE-----" not in cert or len(cert) > 12000:
            raise reject("params.certificate: the PEM certificate (and its chain) issued for the gateway's CSR")
        if not isinstance(rid, str) or not 1 <= len(rid) <= 128:
            raise reject("params.rotation_id: the cmd_id of the rotate_certificate this answers")
        out.update(certificate=cert, rotation_id=rid)
    return out


def release_platform() -> str:
    """This gateway's platform in a release's name: its Python ABI and machine, e.g. cp311-linux_aarch64."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}-{re.sub(r'[-.]', '_', sysconfig.get_platform())}"


def release_target(version: str, platform: str | None = None) -> str:
    """The TUF target name of a release (docs/fleet.md): what a gateway asks its update repository for."""
    return f"gridedge/{version}/gridedge-{version}-{platform or release_platform()}.tar"


def _traffic_light_params(params: dict, max_activation_s: int, reject) -> dict:
    colour = params.get("colour")
    if colour not in TRAFFIC_LIGHTS:
        raise reject(f"params.colour: must be one of {', '.join(TRAFFIC_LIGHTS)}, got {colour!r}")
    allowed = {"colour", "duration_s"} | ({"limit_pct"} if colour == "amber" else set())
    extra = sorted(set(params) - allowed)
    if extra:
        raise reject(f"params: unknown key {extra[0]!r} for a {colour} traffic light"
                     + (" (only amber takes limit_pct)" if extra[0] == "limit_pct" else ""))
    out: dict = {"colour": colour}
    if colour == "amber":
        out["limit_pct"] = _number(params, "limit_pct", 0.0, 100.0, reject)
    if "duration_s" in params:
        out["duration_s"] = _number(params, "duration_s", 1.0, float(max_activation_s), reject)
    return out


def _raise(exc: Exception):
    raise exc


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def _too_deep(payload: bytes) -> bool:
    """True if brackets outside strings nest deeper than MAX_COMMAND_DEPTH anywhere. json.loads recurses once per
    open bracket of what it has read so far, so this bounds its recursion (it stops at the first stray closer)."""
    text = _STRING.sub(b"", payload)
    open_quote = text.find(b'"')  # an unterminated string: malformed, json.loads will say so
    depth = 0
    for m in _BRACKET.finditer(text, 0, len(text) if open_quote < 0 else open_quote):
        depth += 1 if m[0] in b"[{" else -1
        if depth > MAX_COMMAND_DEPTH:
            return True
    return False


def _parse_int(digits: str) -> int | float:
    """Short integers exactly; a long one as a float (inf beyond 1e308), which the range checks refuse by name
    (int() of more than 4300 digits raises, and a huge int breaks float formatting in the reasons). NaN and
    Infinity (not JSON, but what Python's json writes) stay floats and are refused by the same checks."""
    return int(digits) if len(digits) <= 20 else float(digits)


def _encodable(text: str) -> bool:
    """False for unpaired surrogates (JSON "\\ud800"): they cannot be stored or sent back as UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
