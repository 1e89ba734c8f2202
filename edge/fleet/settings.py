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

__all__ = ["FLEET_SCHEMA", "FleetConfig", "MetricsConfig", "build_fleet", "fleet_issues"]

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


# ---------------------------------------------------------------- fleetupdate: [fleet.update] goes here

# ---------------------------------------------------------------- fleetcert: [fleet.certificate] goes here


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
})


@dataclass(frozen=True)
class FleetConfig:
    health_window_s: float = 120.0
    ca_file: Path | None = None
    download_timeout_s: float = 120.0
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def fleet_issues(clean: dict | None, resolve: Callable[[str], Path], check_files: bool) -> list[s.Issue]:
    """Checks of [fleet] that need the files: the CA file must be readable (it is parsed when it is used)."""
    if not isinstance(clean, dict) or not check_files or "ca_file" not in clean:
        return []
    msg = file_problem(resolve(clean["ca_file"]))
    return [s.Issue(("fleet", "ca_file"), msg)] if msg else []


def build_fleet(c: dict, resolve: Callable[[str], Path]) -> FleetConfig:
    m = c["metrics"]
    return FleetConfig(health_window_s=c["health_window_s"],
                       ca_file=resolve(c["ca_file"]) if "ca_file" in c else None,
                       download_timeout_s=c["download_timeout_s"], metrics=MetricsConfig(m["port"], m["host"]))
