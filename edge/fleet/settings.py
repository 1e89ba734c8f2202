"""The ``[fleet]`` section of the gateway configuration: how the gateway takes changes from its head-end (a
configuration, a release, a certificate) and how it shows its health on the gateway itself (docs/fleet.md).

One block per part, each its own sub-table, so the parts are read (and merged) apart: the keys every fleet change
shares sit at the top of [fleet]; [fleet.metrics] is the local status endpoint; [fleet.update] and
[fleet.certificate] belong to the update and certificate parts. gridedge.config plugs FLEET_SCHEMA,
fleet_issues() and build_fleet() into the gateway configuration, so messages carry file and key path like every
other section (``gateway.toml: fleet.metrics.host: must be a loopback address...``).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config_files import PATH, file_problem
from ..core import schema as s

__all__ = ["FLEET_SCHEMA", "FleetConfig", "MetricsConfig", "CertificateConfig", "UpdateConfig", "build_fleet",
           "fleet_issues"]

DEFAULT_METRICS_PORT = 9480


def _loopback(host: str) -> str:
    """The endpoint has no authentication: it answers on this machine only."""
    if host == "localhost":
        return host
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise s.Invalid(f"must be a loopback address (127.0.0.1, ::1 or localhost): the endpoint has no "
                        f"authentication, scrape it through a local agent or a tunnel; got {s.describe(host)}")
    return host


# ---------------------------------------------------------------- fleetconfig: status and metrics

METRICS = s.Dict({
    "port": s.Optional(s.Int(ge=0, le=65535), default=DEFAULT_METRICS_PORT,
                       doc="TCP port of the Prometheus endpoint and of `gridedge status`; 0: none"),
    "host": s.Optional(s.All(s.Str(min_len=1, max_len=64), s.Custom(_loopback)), default="127.0.0.1",
                       doc="loopback address it listens on"),
})


@dataclass(frozen=True)
class MetricsConfig:
    port: int = DEFAULT_METRICS_PORT
    host: str = "127.0.0.1"


# ---------------------------------------------------------------- fleetupdate: signed software updates

UPDATE = s.Dict({
    "repository": s.Required(s.Str(regex=r"https://[^\s]{1,2040}", regex_hint="be an https:// URL",
                                   doc="the operator's TUF repository: <url>/metadata/ and <url>/targets/")),
    "root": s.Required(PATH, doc="the TUF root metadata this gateway trusts (root.json from the key ceremony)"),
    "releases_dir": s.Optional(PATH, default="/opt/gridedge",
                               doc="the A/B root: releases/<version>/venv, current, previous, boot.py"),
    "download_timeout_s": s.Optional(s.Float(ge=1, le=7200), default=1800.0,
                                     doc="the whole duration of an update's downloads (metadata and release), s"),
    "max_release_mb": s.Optional(s.Float(gt=0, le=4096), default=512.0,
                                 doc="the largest release artefact accepted, MiB"),
})


@dataclass(frozen=True)
class UpdateConfig:
    repository: str
    root: Path
    releases_dir: Path = Path("/opt/gridedge")
    download_timeout_s: float = 1800.0
    max_release_mb: float = 512.0


def _update_issues(clean: dict, resolve: Callable[[str], Path]) -> list[s.Issue]:
    """The trusted root must be TUF root metadata (signed by its own threshold: that is checked when it is used);
    the releases folder must be an A/B root (`gridedge release init`)."""
    from .release import Releases

    out = []
    path = resolve(clean["root"])
    msg = file_problem(path)
    if msg is None:
        from tuf.api.exceptions import RepositoryError
        from tuf.api.metadata import Metadata, Root

        try:
            if not isinstance(Metadata.from_bytes(path.read_bytes()).signed, Root):
                msg = "is TUF metadata, but not a root"
        except (RepositoryError, OSError, ValueError) as exc:
            msg = f"is not TUF root metadata: {exc}"
    if msg:
        out.append(s.Issue(("fleet", "update", "root"), msg))
    rel = Releases(resolve(clean["releases_dir"]))
    if rel.current is None:
        out.append(s.Issue(("fleet", "update", "releases_dir"),
                           f"{rel.root} is not an A/B root (no current link): set it up with `gridedge release init`"))
    return out


# ---------------------------------------------------------------- fleetcert: [fleet.certificate]

def _est_url(url: str) -> str:
    from .est import check_url

    return check_url(url)


CERTIFICATE = s.Dict({
    "auto_renew": s.Optional(s.Bool(), default=True,
                             doc="renew the uplink's client certificate by itself once renew_at of its lifetime passed"),
    "renew_at": s.Optional(s.Float(ge=0.1, le=0.95), default=0.67,
                           doc="the fraction of the certificate's lifetime after which it is renewed"),
    "method": s.Optional(s.Str(choices=("mqtt", "est")), default="mqtt",
                         doc="how a renewal asks the operator's CA: a CSR on <prefix>csr, or EST simplereenroll"),
    "est_url": s.Optional(s.All(s.Str(min_len=1, max_len=2048), s.Custom(_est_url)),
                          doc="the EST server: https://host[:port]/.well-known/est[/label]"),
    "est_ca_file": s.Optional(PATH, doc="CA certificates of the EST server's TLS certificate; default uplink.ca_file"),
    "ca_file": s.Optional(PATH, doc="the CAs that issue the gateway's client certificates (a new one must chain to "
                                    "one); default uplink.ca_file"),
    "answer_timeout_s": s.Optional(s.Float(ge=10, le=30 * 86400), default=86400.0,
                                   doc="how long a CSR waits for its certificate, s"),
    "retry_s": s.Optional(s.Float(ge=10, le=7 * 86400), default=3600.0,
                          doc="a renewal that failed is tried again after this, s"),
})


@dataclass(frozen=True)
class CertificateConfig:
    auto_renew: bool = True
    renew_at: float = 0.67
    method: str = "mqtt"
    est_url: str | None = None
    est_ca_file: Path | None = None
    ca_file: Path | None = None
    answer_timeout_s: float = 86400.0
    retry_s: float = 3600.0


def _certificate_issues(c: dict, resolve: Callable[[str], Path], check_files: bool) -> list[s.Issue]:
    issues = []
    if c.get("method") == "est" and "est_url" not in c:
        issues.append(s.Issue(("fleet", "certificate", "method"), "est needs fleet.certificate.est_url"))
    for key in ("est_ca_file", "ca_file"):
        if check_files and key in c and (msg := file_problem(resolve(c[key]))):
            issues.append(s.Issue(("fleet", "certificate", key), msg))
    return issues


# ---------------------------------------------------------------- the section

FLEET_SCHEMA = s.Dict({
    "health_window_s": s.Optional(s.Float(ge=10, le=3600), default=120.0,
                                  doc="a change (configuration, release, certificate) must prove healthy within "
                                      "this, s, or it is rolled back; a command's params.health_window_s overrides"),
    "ca_file": s.Optional(PATH, doc="CA certificates trusted for the fleet's HTTPS downloads (a configuration by "
                                    "URL, the update repository); default: the system's"),
    "download_timeout_s": s.Optional(s.Float(ge=1, le=3600), default=120.0,
                                     doc="a download's whole duration, s (not only the gap between bytes)"),
    "metrics": s.Optional(METRICS, default={}, doc="the local status endpoint (Prometheus) on loopback"),
    "certificate": s.Optional(CERTIFICATE, default={},
                              doc="rotation and renewal of the uplink's client certificate (docs/fleet.md)"),
    "update": s.Optional(UPDATE, doc="signed software updates (TUF) with A/B install; absent: no updates"),
})


@dataclass(frozen=True)
class FleetConfig:
    health_window_s: float = 120.0
    ca_file: Path | None = None
    download_timeout_s: float = 120.0
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    certificate: CertificateConfig = field(default_factory=CertificateConfig)
    update: UpdateConfig | None = None


def fleet_issues(clean: dict | None, resolve: Callable[[str], Path], check_files: bool) -> list[s.Issue]:
    """Checks of [fleet] that need the files: the CA file must be readable (it is parsed when it is used)."""
    if not isinstance(clean, dict):
        return []
    issues = _certificate_issues(clean["certificate"], resolve, check_files) \
        if isinstance(clean.get("certificate"), dict) else []
    if check_files and isinstance(clean.get("update"), dict):
        issues += _update_issues(clean["update"], resolve)
    if not check_files or "ca_file" not in clean:
        return issues
    msg = file_problem(resolve(clean["ca_file"]))
    return issues + ([s.Issue(("fleet", "ca_file"), msg)] if msg else [])


def build_fleet(c: dict, resolve: Callable[[str], Path]) -> FleetConfig:
    m, cert = c["metrics"], c["certificate"]
    return FleetConfig(health_window_s=c["health_window_s"],
                       ca_file=resolve(c["ca_file"]) if "ca_file" in c else None,
                       download_timeout_s=c["download_timeout_s"], metrics=MetricsConfig(m["port"], m["host"]),
                       certificate=CertificateConfig(**{k: resolve(v) if k.endswith("ca_file") else v
                                                        for k, v in cert.items()}),
                       update=_build_update(c["update"], resolve) if "update" in c else None)


def _build_update(u: dict, resolve: Callable[[str], Path]) -> UpdateConfig:
    return UpdateConfig(u["repository"], resolve(u["root"]), resolve(u["releases_dir"]), u["download_timeout_s"],
                        u["max_release_mb"])
