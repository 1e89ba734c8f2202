"""The [telemetry] section: the form of telemetry messages, their compression and report by exception
(docs/mqtt-api.md, "Data thrift"; the logic is in edge/telemetry_writer.py and edge/reporting.py)."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from gridedge.core import schema as s

from .reporting import Policy, data_class

__all__ = ["TELEMETRY", "TelemetryConfig", "build_telemetry", "telemetry_issues"]

FORMS = ("blocks", "layouts")
REPORTS = ("all", "exception")
_BAND = {
    "deadband": s.Optional(s.Float(ge=0, le=1e12), doc="a change of at most this much (the point's unit) is not sent"),
    "deadband_pct": s.Optional(s.Float(ge=0, le=100),
                               doc="a change of at most this % of the value last sent is not sent"),
    "min_interval_ms": s.Optional(s.Int(ge=0, le=86_400_000), doc="a point is not sent again sooner than this, ms"),
}
_HEARTBEAT = s.Int(ge=1, le=86400)

TELEMETRY = s.Dict({
    "form": s.Optional(s.Str(choices=FORMS), default="blocks",
                       doc="blocks: names and units in every block (gridedge.telemetry/2); layouts: a layout id, the "
                           "layouts once on <prefix>layout/<device>/<id> (gridedge.telemetry/3)"),
    "compression": s.Optional(s.Str(choices=("none", "deflate")), default="none",
                              doc="none: JSON (application/json); deflate: zlib with the contract's preset dictionary "
                                  "(application/zlib)"),
    "report": s.Optional(s.Str(choices=REPORTS), default="all",
                         doc="all: every value of every read; exception: changes past their deadband, and a "
                             "heartbeat"),
    "heartbeat_s": s.Optional(_HEARTBEAT, default=300,
                              doc="report by exception: every point is sent at least this often (integrity period), s"),
    "measurement": s.Optional(s.Dict(_BAND), default={},
                              doc="report by exception: numbers with a unit (W, var, V, A, Hz, %, ...)"),
    "points": s.Optional(s.List(s.Dict({
        "match": s.Required(s.Str(min_len=1, max_len=200, regex=r"[A-Za-z0-9_.:*?\[\]!/-]+",
                                  regex_hint="be a pattern on <device>/<point>, e.g. inv1/W or */Hz"),
                            "the points: a pattern on <device>/<point> (* and ? as in a shell)"),
        **_BAND,
        "heartbeat_s": s.Optional(_HEARTBEAT, doc="sent at least this often, s"),
    }), max_len=1000), default=[], doc="report by exception per point: the first entry that matches wins"),
})


@dataclass(frozen=True)
class TelemetryConfig:
    form: str = "blocks"
    compression: str = "none"
    report: str = "all"
    heartbeat_s: int = 300
    measurement: tuple[tuple[str, Any], ...] = ()
    points: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # (pattern, its keys)

    def policy_of(self, full_resolution: frozenset[str] = frozenset()):
        """(device, name, unit) -> Policy: energy counters and `full_resolution` points (what flex settles) at
        every change; else the first matching [[telemetry.points]] over the point's class over the defaults."""
        classes = {"measurement": dict(self.measurement), "status": {}}
        points = [(pattern, dict(keys)) for pattern, keys in self.points]

        def policy(device: str, name: str, unit: str) -> Policy:
            cls = data_class(unit)
            point = f"{device}/{name}"
            keys = dict(heartbeat_s=self.heartbeat_s)
            if cls == "energy" or point in full_resolution:
                return Policy(heartbeat_ns=self.heartbeat_s * 10**9)
            keys.update(classes[cls])
            for pattern, own in points:
                if fnmatch.fnmatchcase(point, pattern):
                    keys.update(own)
                    break
            return Policy(keys.get("deadband", 0.0), keys.get("deadband_pct", 0.0),
                          keys.get("min_interval_ms", 0) * 10**6, keys["heartbeat_s"] * 10**9)
        return policy


def build_telemetry(t: dict) -> TelemetryConfig:
    return TelemetryConfig(t["form"], t["compression"], t["report"], t["heartbeat_s"],
                           tuple(sorted(t["measurement"].items())),
                           tuple((p["match"], tuple(sorted((k, v) for k, v in p.items() if k != "match")))
                                 for p in t["points"]))


def telemetry_issues(t: Any, devices: list) -> list[s.Issue]:
    """A [[telemetry.points]] pattern whose device part names no configured device is a typo, not a wildcard."""
    if not isinstance(t, dict):
        return []
    known = {d["id"] for d in devices if isinstance(d, dict) and "id" in d}
    issues = []
    for i, p in enumerate(t.get("points") or ()):
        dev = p.get("match", "").partition("/")[0] if isinstance(p, dict) else ""
        if dev and not any(c in dev for c in "*?[") and dev not in known:
            near = s.suggest(dev, sorted(known))
            issues.append(s.Issue(("telemetry", "points", i, "match"),
                                  f"no device {dev!r}" + (f" (did you mean {near!r}?)" if near else "")
                                  + f"; devices: {', '.join(sorted(known)) or 'none'}"))
    return issues
