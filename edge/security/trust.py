"""Who may command this gateway: the trusted issuers of the configuration, how a command proves its issuer, and
what each issuer may do.

A command is trusted only by what verified it: the key that signed it names the issuer (never the payload, never
the topic, never the broker), the issuer's entry gives its actor class (tso, dso, aggregator: the priority of
its activations), its roles and the devices it may act on, and the role table ([security.roles], shipped
defaults in roles.toml) gives the command types each role may send. Until a TrustStore is built from a
configuration that checked out, nothing is trusted: there is no default issuer and no default right.
"""
from __future__ import annotations

import datetime as _dt
import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from gridedge import contract
from gridedge.core import schema as s

from . import jws

ACTORS = ("tso", "dso", "aggregator")
ISSUER_ID = r"[A-Za-z0-9_.-]{1,64}"
TYP = "gridedge-command+jws"


class Unauthenticated(Exception):
    """The command does not prove who sent it, or no longer does; `reason` goes into the result. `cmd_id` is
    set only where the signature verified (so a forger cannot make the gateway answer for a real command's id),
    `status` is "expired" for a verified command whose exp has passed, else "rejected"."""

    def __init__(self, reason: str, cmd_id: str | None = None, status: str = "rejected") -> None:
        super().__init__(reason)
        self.reason, self.cmd_id, self.status = reason, cmd_id, status


@dataclass(frozen=True)
class Principal:
    """An authenticated issuer: what every later decision (priority, rights, audit) is based on."""

    id: str
    actor: str
    roles: tuple[str, ...]
    devices: frozenset[str] | None          # None: every device
    key_id: str                             # the key's RFC 7638 thumbprint, or "unsigned"
    via: str                                # "key", "certificate" or "unsigned"


@dataclass(frozen=True)
class Issuer:
    id: str
    actor: str
    roles: tuple[str, ...]
    devices: frozenset[str] | None
    keys: tuple[tuple[str, Any], ...]       # (thumbprint, public key), from public keys or pinned certificates
    ca: x509.Certificate | None             # issuer certificates signed by it, CN = id, travel in x5c


# ------------------------------------------------------------------ configuration

def _role_table_schema() -> s.Schema:
    return s.Map(s.Str(regex=r"[a-z][a-z0-9_]{0,31}", regex_hint="be a role name like operator (a-z 0-9 _)"),
                 s.Dict({"commands": s.Required(s.List(s.Str(min_len=1, max_len=64), unique=True),
                                                "command types this role may send")}))


SECURITY_SCHEMA = s.Dict({
    "allow_unsigned": s.Optional(s.Bool(), default=False,
                                 doc="accept unsigned commands (the topic names the issuer): lab use only"),
    "clock_skew_s": s.Optional(s.Float(ge=0, le=600), default=30.0,
                               doc="tolerated difference between the issuer's clock and the gateway's, s"),
    "max_lifetime_s": s.Optional(s.Int(ge=10, le=7 * 86400), default=3600,
                                 doc="longest exp - iat a command may have; its cmd_id is remembered that long"),
    "roles": s.Optional(_role_table_schema(), default={},
                        doc="role -> command types; replaces or adds to the shipped table (roles.toml)"),
    "issuers": s.Optional(s.List(s.Dict({
        "id": s.Required(s.Str(regex=ISSUER_ID, regex_hint="be 1-64 characters of A-Z a-z 0-9 _ . -"),
                         "issuer id: its command topic is <prefix>cmd/<id>"),
        "actor": s.Required(s.Str(choices=ACTORS), "priority class of its activations"),
        "roles": s.Required(s.List(s.Str(min_len=1, max_len=32), min_len=1, unique=True), "its roles"),
        "devices": s.Optional(s.List(s.Str(regex=r"[A-Za-z0-9_-]{1,32}", regex_hint="be a device id"),
                                     min_len=1, unique=True), doc="devices it may act on; default all"),
        "public_keys": s.Optional(s.List(s.Str(min_len=1, max_len=4096), min_len=1, max_len=16),
                                  doc="PEM public keys or certificates (Ed25519 or ECDSA P-256) it signs with"),
        "ca_file": s.Optional(s.Str(min_len=1, max_len=4096),
                              doc="a CA whose certificates with CN = id it signs with (sent in the JWS x5c)"),
    }), unique_key="id"), default=[]),
})


def shipped_roles() -> dict[str, tuple[str, ...]]:
    data = tomllib.loads(resources.files("gridedge.security").joinpath("roles.toml").read_text())
    return {name: tuple(r["commands"]) for name, r in data["roles"].items()}


def _load_key(path: Path) -> tuple[str, Any, x509.Certificate | None]:
    """A PEM public key or certificate -> (thumbprint, key, certificate or None). ValueError names the fault."""
    data = path.read_bytes()
    cert = None
    if b"-----BEGIN CERTIFICATE-----" in data:
        cert = x509.load_pem_x509_certificate(data)
        key = cert.public_key()
    else:
        key = serialization.load_pem_public_key(data)
    if not (isinstance(key, ed25519.Ed25519PublicKey) or
            (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1))):
        raise ValueError(f"{type(key).__name__} keys are not accepted: use Ed25519 or ECDSA P-256")
    return jws.thumbprint(key), key, cert


def trust_issues(clean: dict, known_devices: set[str], command_types: tuple[str, ...], resolve,
                 now: _dt.datetime | None = None) -> list[s.Issue]:
    """What SECURITY_SCHEMA cannot see: role names, command types, devices, key files that must parse."""
    issues: list[s.Issue] = []
    given = clean.get("roles") if isinstance(clean.get("roles"), dict) else {}
    roles = {k: v for k, v in given.items() if isinstance(v, dict) and isinstance(v.get("commands"), list)}
    table = shipped_roles() | {k: tuple(v["commands"]) for k, v in roles.items()}
    for name, role in roles.items():
        for j, ctype in enumerate(role["commands"]):
            if isinstance(ctype, str) and ctype not in command_types:
                guess = s.suggest(ctype, command_types)
                issues.append(s.Issue(("security", "roles", name, "commands", j), f"unknown command type {ctype!r}"
                                      + (f" (did you mean {guess!r}?)" if guess else "")))
    seen_keys: dict[str, str] = {}
    for i, iss in enumerate(_list(clean.get("issuers"))):
        if not isinstance(iss, dict):
            continue   # its type is reported already
        where = ("security", "issuers", i)
        for j, role in enumerate(_list(iss.get("roles"))):
            if isinstance(role, str) and role not in table:
                issues.append(s.Issue(where + ("roles", j), f"unknown role {role!r}; roles: {', '.join(table)}"))
        for j, dev in enumerate(_list(iss.get("devices"))):
            if isinstance(dev, str) and dev not in known_devices:
                issues.append(s.Issue(where + ("devices", j), f"no device {dev!r} in [[devices]]"))
        if "public_keys" not in iss and "ca_file" not in iss:
            issues.append(s.Issue(where, "needs public_keys, ca_file or both: how else would its commands be verified?"))
        for j, text in enumerate(_list(iss.get("public_keys"))):
            if not isinstance(text, str):
                continue
            try:
                thumb, _key, cert = _load_key(resolve(text))
            except (OSError, ValueError, TypeError) as exc:
                issues.append(s.Issue(where + ("public_keys", j), f"not a usable public key: {_why(exc)}"))
                continue
            if thumb in seen_keys and seen_keys[thumb] != iss.get("id"):
                issues.append(s.Issue(where + ("public_keys", j), f"the same key is already issuer "
                                                                  f"{seen_keys[thumb]!r}'s: one key, one issuer"))
            seen_keys[thumb] = iss.get("id")   # a missing id is the schema's issue; the check goes on
            if cert is not None and _expired(cert, now):
                issues.append(s.Issue(where + ("public_keys", j), f"certificate expired on "
                                                                  f"{cert.not_valid_after_utc:%Y-%m-%d}"))
        if isinstance(iss.get("ca_file"), str):
            try:
                ca = x509.load_pem_x509_certificate(resolve(iss["ca_file"]).read_bytes())
                _check_ca(ca)
            except (OSError, ValueError, TypeError) as exc:
                issues.append(s.Issue(where + ("ca_file",), f"not a usable CA certificate: {_why(exc)}"))
    return issues


def _list(v) -> list:
    """A list from the checked section, or [] where it held something else (reported already)."""
    return v if isinstance(v, list) else []


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _check_ca(ca: x509.Certificate) -> None:
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("has no basicConstraints: not a CA certificate") from None
    if not bc.ca:
        raise ValueError("basicConstraints says it is not a CA")


def _expired(cert: x509.Certificate, now: _dt.datetime | None) -> bool:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return cert.not_valid_after_utc < now


# ------------------------------------------------------------------ the store

class TrustStore:
    """Built from the checked [security] section. authenticate() turns a command payload into (Principal,
    claims) or raises Unauthenticated; authorize() says whether a principal may send a command type to devices."""

    def __init__(self, clean: dict, resolve, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.allow_unsigned: bool = clean.get("allow_unsigned", False)
        self.skew_s: float = clean.get("clock_skew_s", 30.0)
        self.max_lifetime_s: int = clean.get("max_lifetime_s", 3600)
        self.roles = shipped_roles() | {k: tuple(v["commands"]) for k, v in clean.get("roles", {}).items()}
        self.issuers: dict[str, Issuer] = {}
        self._by_key: dict[str, Issuer] = {}
        for iss in clean.get("issuers", []):
            keys = tuple(_load_key(resolve(p))[:2] for p in iss.get("public_keys", ()))
            ca = x509.load_pem_x509_certificate(resolve(iss["ca_file"]).read_bytes()) if "ca_file" in iss else None
            entry = Issuer(iss["id"], iss["actor"], tuple(iss["roles"]),
                           frozenset(iss["devices"]) if iss.get("devices") else None, keys, ca)
            self.issuers[entry.id] = entry
            for thumb, _ in keys:
                self._by_key[thumb] = entry

    def principal(self, entry: Issuer, key_id: str, via: str) -> Principal:
        return Principal(entry.id, entry.actor, entry.roles, entry.devices, key_id, via)

    # -- authentication ---------------------------------------------------------------------------
    def authenticate(self, payload: bytes, topic_issuer: str, now_s: float, *, what: str = "command",
                     max_bytes: int = contract.MAX_COMMAND_BYTES) -> tuple[Principal, dict]:
        """The payload of a message on <prefix>cmd/<topic_issuer> -> (who sent it, the document it signed).
        Raises Unauthenticated, or contract.CommandRejected for a signed document that is not valid JSON."""
        if payload.lstrip()[:1] == b"{":
            return self._unsigned(payload, topic_issuer, what, max_bytes)
        try:
            token = jws.parse(payload, max_bytes=max_bytes * 4 // 3 + jws.MAX_HEADER_BYTES + 200)
        except jws.JwsError as exc:
            raise Unauthenticated(f"not a signed {what}: {exc}") from None
        entry, key, via = self._key_for(token, topic_issuer)
        try:
            jws.verify(token, key)
        except jws.JwsError as exc:
            raise Unauthenticated(f"signature of issuer {entry.id!r} does not verify: {exc}") from None
        claims = contract.decode(token.payload, what, max_bytes)
        cmd_id = claims.get("cmd_id") if isinstance(claims.get("cmd_id"), str) else None
        if token.header.get("typ", TYP) != TYP:
            raise Unauthenticated(f"typ must be {TYP!r}", cmd_id)
        if claims.get("iss") != entry.id:
            raise Unauthenticated(f"iss {str(claims.get('iss'))[:64]!r} is not the signer {entry.id!r}", cmd_id)
        if entry.id != topic_issuer:
            raise Unauthenticated(f"signed by {entry.id!r} but sent on the command topic of {topic_issuer!r}", cmd_id)
        aud = claims.get("aud")
        if not (aud == self.gateway_id or (isinstance(aud, list) and self.gateway_id in aud)):
            raise Unauthenticated(f"aud does not name this gateway ({self.gateway_id})", cmd_id)
        self._check_times(claims, now_s, cmd_id)
        return self.principal(entry, jws.thumbprint(key), via), claims

    def _key_for(self, token: jws.Jws, topic_issuer: str):
        if "x5c" in token.header:
            return self._certificate_key(token, topic_issuer)
        if token.kid is not None:
            entry = self._by_key.get(token.kid)
            if entry is None:
                raise Unauthenticated(f"unknown key id {token.kid[:64]!r}: no trusted issuer has it")
            return entry, dict(entry.keys)[token.kid], "key"
        entry = self.issuers.get(topic_issuer)
        if entry is None or len(entry.keys) != 1:
            raise Unauthenticated("the JWS header names no kid (the key's RFC 7638 thumbprint)")
        return entry, entry.keys[0][1], "key"

    def _certificate_key(self, token: jws.Jws, topic_issuer: str):
        entry = self.issuers.get(topic_issuer)
        if entry is None or entry.ca is None:
            raise Unauthenticated(f"issuer {topic_issuer[:64]!r} is not trusted by certificate")
        try:
            leaf = x509.load_der_x509_certificate(token.x5c()[0])
        except ValueError:
            raise Unauthenticated("x5c[0] is not a certificate") from None
        try:
            leaf.verify_directly_issued_by(entry.ca)
        except (ValueError, TypeError, Exception) as exc:  # InvalidSignature and friends
            raise Unauthenticated(f"certificate not issued by {entry.id!r}'s CA ({type(exc).__name__})") from None
        now = _dt.datetime.now(_dt.timezone.utc)
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise Unauthenticated(f"issuer certificate not valid now (valid {leaf.not_valid_before_utc:%Y-%m-%d} to "
                                  f"{leaf.not_valid_after_utc:%Y-%m-%d})")
        cns = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cns != [entry.id]:
            raise Unauthenticated(f"certificate CN {cns[:1]!r} is not issuer {entry.id!r}")
        key = leaf.public_key()
        if not (isinstance(key, ed25519.Ed25519PublicKey) or
                (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1))):
            raise Unauthenticated("issuer certificate key must be Ed25519 or ECDSA P-256")
        return entry, key, "certificate"

    def _check_times(self, claims: dict, now_s: float, cmd_id: str | None) -> None:
        iat, exp = claims.get("iat"), claims.get("exp")
        for name, v in (("iat", iat), ("exp", exp)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise Unauthenticated(f"{name} must be a NumericDate (seconds since the epoch)", cmd_id)
        if iat > now_s + self.skew_s:
            raise Unauthenticated(f"issued in the future (iat {iat:.0f} > now {now_s:.0f} + {self.skew_s:g} s skew)",
                                  cmd_id)
        if exp <= iat:
            raise Unauthenticated("exp must be after iat", cmd_id)
        if exp - iat > self.max_lifetime_s:
            raise Unauthenticated(f"lifetime exp - iat of {exp - iat:.0f} s exceeds {self.max_lifetime_s} s", cmd_id)
        if now_s > exp + self.skew_s:
            raise Unauthenticated(f"expired: exp {exp:.0f} passed {now_s - exp:.0f} s ago", cmd_id, "expired")

    def _unsigned(self, payload: bytes, topic_issuer: str, what: str, max_bytes: int) -> tuple[Principal, dict]:
        if not self.allow_unsigned:
            raise Unauthenticated(f"unsigned {what} refused (security.allow_unsigned is false)")
        entry = self.issuers.get(topic_issuer)
        if entry is None:
            raise Unauthenticated(f"issuer {topic_issuer[:64]!r} is not in [[security.issuers]]")
        return self.principal(entry, "unsigned", "unsigned"), contract.decode(payload, what, max_bytes)

    # -- authorization ----------------------------------------------------------------------------
    def authorize(self, who: Principal, ctype: str, devices: tuple[str, ...] | None) -> str | None:
        """None if `who` may send `ctype` to `devices` (None: the command names no device), else the reason."""
        if not any(ctype in self.roles.get(r, ()) for r in who.roles):
            return f"issuer {who.id!r} (roles {', '.join(who.roles)}) may not send {ctype}"
        if who.devices is not None:
            if devices is None:
                return f"issuer {who.id!r} is limited to devices {', '.join(sorted(who.devices))}: name the device"
            outside = sorted(set(devices) - who.devices)
            if outside:
                return f"issuer {who.id!r} may not act on {', '.join(outside)}"
        return None
