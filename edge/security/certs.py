"""Certificate expiry: a field gateway must say that its identity runs out well before it does.

Every certificate the configuration names (the uplink's, its CA, OPC UA's, the issuers') is read once at start;
those that end within WARN_DAYS are logged at start and listed in every state message with the days left, so a
head-end can renew them (docs/fleet.md) before the broker starts refusing the gateway.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

log = logging.getLogger("gridedge.security")

WARN_DAYS = 30
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class CertInfo:
    role: str            # what it is for: "uplink.cert_file", "devices[2].client_cert", ...
    path: Path
    subject: str
    not_after: _dt.datetime

    def days_left(self, now: _dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def to_json(self, now: _dt.datetime) -> dict:
        return {"role": self.role, "subject": self.subject,
                "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), "days_left": round(self.days_left(now), 3)}


def read_certs(files: dict[str, Path]) -> list[CertInfo]:
    """Every certificate in the given PEM or DER files (a CA bundle gives several); unreadable files are skipped
    (`check` has said why already)."""
    out = []
    for role, path in files.items():
        try:
            data = Path(path).read_bytes()
            certs = [x509.load_pem_x509_certificate(m) for m in _PEM.findall(data)] if b"-----BEGIN" in data \
                else [x509.load_der_x509_certificate(data)]
        except (OSError, ValueError):
            continue
        for c in certs:
            cn = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            out.append(CertInfo(role, Path(path), str(cn[0].value) if cn else c.subject.rfc4514_string(),
                                c.not_valid_after_utc))
    return out


def expiring(certs: list[CertInfo], now: _dt.datetime | None = None, within_days: float = WARN_DAYS) -> list[dict]:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return [c.to_json(now) for c in sorted(certs, key=lambda c: c.not_after) if c.days_left(now) <= within_days]


def config_certs(config) -> dict[str, Path]:
    """The certificate files a gateway configuration names, by what they are for."""
    files: dict[str, Path] = {}
    up = config.uplink
    for key in ("cert_file", "ca_file"):
        if getattr(up, key, None) is not None:
            files[f"uplink.{key}"] = getattr(up, key)
    for i, d in enumerate(config.devices):
        for key in ("client_cert", "server_cert"):
            if getattr(d, key, None) is not None:
                files[f"devices[{i}].{key}"] = getattr(d, key)
    sec = config.security
    if sec is not None:
        for i, iss in enumerate(sec.section.get("issuers", ())):
            for j, text in enumerate(iss.get("public_keys", ())):
                files[f"security.issuers[{i}].public_keys[{j}]"] = sec.resolve(text)
            if "ca_file" in iss:
                files[f"security.issuers[{i}].ca_file"] = sec.resolve(iss["ca_file"])
    return files


def log_expiring(certs: list[CertInfo], now: _dt.datetime | None = None) -> None:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    for c in certs:
        left = c.days_left(now)
        if left <= 0:
            log.error("certificate %s (%s, %s) EXPIRED on %s", c.role, c.subject, c.path, c.not_after.date())
        elif left <= WARN_DAYS:
            log.warning("certificate %s (%s, %s) expires in %.0f days, on %s: renew it", c.role, c.subject, c.path,
                        left, c.not_after.date())
