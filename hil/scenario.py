"""Scenario files of the HIL rig: what bench to build, what happens when, what must hold (docs/hil.md).

Checked like the gateway's configuration, with the same validator (gridedge.core.schema) and the same kind of
messages, every problem at once: `dso_congestion.toml: timeline[2].limit_pct: must be <= 100, got 150`.

Times on the timeline (`at`, `for`, profile points) are scenario time: seconds, or "H:MM[:SS]" from the start. The
rig runs scenario time `scenario.speed` times faster than the wall clock (a day in two minutes at 720); everything
the gateway and the devices do, and every figure a check measures, stays in wall-clock time.
"""
from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridedge.core import schema as s

__all__ = ["ScenarioError", "Scenario", "load_scenario", "parse_scenario", "SCENARIO", "shipped", "resolve"]

ID = r"[A-Za-z0-9_-]{1,32}"
ID_HINT = "be 1-32 characters of A-Z a-z 0-9 _ -"
ISSUERS = ("tso", "dso", "aggregator")
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class ScenarioError(Exception):
    """Every problem of one scenario file, one printable line each (`file: key.path: reason`)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = ["".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in m)
                       for m in errors]
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------- value types

_CLOCK = re.compile(r"(\d{1,3}):([0-5]\d)(?::([0-5]\d(?:\.\d{1,3})?))?")


def _time(value: Any) -> float:
    """Seconds from the scenario start: a number >= 0, or "H:MM[:SS]"."""
    if isinstance(value, str):
        m = _CLOCK.fullmatch(value)
        if not m:
            raise s.Invalid(f'must be seconds or "H:MM[:SS]", got {s.describe(value)}')
        return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3] or 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 30 * 86400:
        raise s.Invalid(f'must be seconds (0..2592000) or "H:MM[:SS]", got {s.describe(value)}')
    return float(value)


TIME = s.Custom(_time)


def _profile(lo: float, hi: float):
    """A constant, or [[at, value], ...] with `at` increasing (two points at one time make a step)."""
    def check(value: Any):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not lo <= value <= hi:
                raise s.Invalid(f"must be within {lo:g}..{hi:g}, got {s.describe(value)}")
            return float(value)
        if not isinstance(value, list) or not value:
            raise s.Invalid(f"must be a number or an array of [at, value] points, got {s.describe(value)}")
        points, last = [], -1.0
        for i, pt in enumerate(value):
            if not isinstance(pt, list) or len(pt) != 2:
                raise s.Invalid(f"must be a point [at, value], got {s.describe(pt)}", (i,))
            try:
                at = _time(pt[0])
            except s.Invalid as e:
                raise s.Invalid(e.message, (i, 0)) from None
            v = pt[1]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise s.Invalid(f"must be a number within {lo:g}..{hi:g}, got {s.describe(v)}", (i, 1))
            if at < last:
                raise s.Invalid(f"points must be in time order: {at:g} s comes after {last:g} s", (i, 0))
            points.append((at, float(v)))
            last = at
        return points
    return s.Custom(check)


class Tagged(s.Schema):
    """A table whose `tag` key chooses its schema (a timeline action, a fault, a check): all problems reported at
    once, each at its own key, like every other table."""

    def __init__(self, tag: str, variants: dict[str, s.Dict], common: dict[str, s.Key]) -> None:
        self.tag = tag
        self.variants = {k: s.Dict({tag: s.Required(s.Str()), **common, **v.fields}) for k, v in variants.items()}

    def _run(self, value: Any, path, issues):
        if not isinstance(value, dict):
            return self._fail(path, issues, f"must be a table, got {s.describe(value)}")
        kind = value.get(self.tag)
        if not isinstance(kind, str) or kind not in self.variants:
            where = path + (self.tag,)
            if kind is None:
                issues.append(s.Issue(where, f"required key missing (one of: {', '.join(self.variants)})"))
            else:
                s.Str(choices=tuple(self.variants))._run(kind, where, issues)
            return s.INVALID
        return self.variants[kind]._run(value, path, issues)


def _ref(doc: str) -> s.Key:
    return s.Optional(s.Str(regex=ID, regex_hint=ID_HINT), doc=doc)


# ---------------------------------------------------------------- the schema

_SIM = {
    "node": s.Optional(s.Int(ge=1, le=64), default=1, doc="feeder node of its connection point"),
    "bus": s.Optional(s.Str(choices=("tcp", "rtu")), default="tcp",
                      doc="how the gateway reaches it: Modbus TCP, or a pseudo-terminal RS-485 line"),
    "port": s.Optional(s.Int(ge=0, le=65535), default=0, doc="TCP port (0: any free; fix it for an external gateway)"),
    "unit_id": s.Optional(s.Int(ge=1, le=247), default=1),
    "poll_ms": s.Optional(s.Int(ge=50, le=60000), doc="the gateway's poll period (default gateway.poll_ms)"),
}
_W_MAX = s.Optional(s.Float(gt=0, le=1e7), default=10000.0, doc="rating, W")
DEVICE = Tagged("kind", {
    "inverter": s.Dict({
        **_SIM, "w_max": _W_MAX, "writable": s.Optional(s.Bool(), default=True),
        "ramp_pct_per_s": s.Optional(s.Float(gt=0, le=1000), default=20.0, doc="the inverter's own ramp, %/s"),
        "pv": s.Optional(_profile(0, 1e7), doc="available PV power, W (default 80 % of w_max)"),
        "clear_sky": s.Optional(s.Dict({
            "peak_w": s.Required(s.Float(gt=0, le=1e7)),
            "sunrise": s.Optional(TIME, default="6:00"), "sunset": s.Optional(TIME, default="20:00"),
        }), doc="available PV power of a clear day on scenario time (instead of pv)"),
        "var_response_s": s.Optional(s.Float(ge=0, le=60), default=0.0),
    }),
    "battery": s.Dict({
        **_SIM, "w_max": s.Optional(s.Float(gt=0, le=1e7), default=5000.0),
        "writable": s.Optional(s.Bool(), default=True),
        "wh": s.Optional(s.Float(gt=0, le=1e9), default=10000.0, doc="energy rating, Wh"),
        "soc_pct": s.Optional(s.Float(ge=0, le=100), default=50.0),
    }),
    "meter": s.Dict({
        **_SIM, "bus": s.Optional(s.Str(choices=("tcp", "rtu")), default="rtu"),
        "map": s.Optional(s.Str(regex=r"[A-Za-z0-9_]{1,64}", regex_hint="be a shipped register map's name"),
                          default="eastron_sdm630"),
        "measures": s.Optional(s.List(s.Str(regex=ID, regex_hint=ID_HINT), unique=True), default=[],
                               doc="devices behind the meter (their power is summed, with the loads of its node)"),
    }),
    "real": s.Dict({
        "gateway": s.Required(s.Dict({}, allow_unknown=True), "the gateway's [[devices]] keys for it, as they are"),
        "relay": s.Optional(s.Bool(), default=False,
                            doc="put the rig's Modbus TCP fault relay between the gateway and it (host, port)"),
    }),
}, {"id": s.Required(s.Str(regex=ID, regex_hint=ID_HINT))})

_CMD = {"issuer": s.Optional(s.Str(choices=ISSUERS), default="dso"), "device": _ref("the target device"),
        "start_in_s": s.Optional(s.Float(ge=0, le=86400), doc="valid_from this far ahead of sending, wall s"),
        "valid_for_s": s.Optional(s.Float(gt=0, le=86400), default=60.0,
                                  doc="valid_until after valid_from (or sending), wall s")}
_RUN = {"duration_s": s.Required(s.Float(gt=0, le=7 * 86400), "wall s, sent as written"),
        "revert_s": s.Optional(s.Int(ge=1, le=65535))}
TIMELINE = Tagged("action", {
    "limit_active_power": s.Dict({**_CMD, **_RUN, "limit_pct": s.Required(s.Float(ge=0, le=100))}),
    "set_active_power": s.Dict({**_CMD, **_RUN, "w": s.Required(s.Float(ge=-1e9, le=1e9))}),
    "set_reactive_power": s.Dict({**_CMD, **_RUN, "var": s.Required(s.Float(ge=-1e9, le=1e9))}),
    "set_power_factor": s.Dict({**_CMD, **_RUN, "pf": s.Required(s.Float(ge=-1, le=1))}),
    "terminate": s.Dict({**_CMD, "activation": s.Required(s.Str(regex=ID, regex_hint=ID_HINT))}),
    "cancel": s.Dict({**_CMD, "activation": s.Required(s.Str(regex=ID, regex_hint=ID_HINT))}),
    "traffic_light": s.Dict({**_CMD, "colour": s.Required(s.Str(choices=("green", "amber", "red"))),
                             "limit_pct": s.Optional(s.Float(ge=0, le=100)),
                             "duration_s": s.Optional(s.Float(gt=0, le=7 * 86400))}),
    "prequalification_test": s.Dict({**_CMD, "issuer": s.Optional(s.Str(choices=ISSUERS), default="aggregator"),
                                     "resource": s.Required(s.Str(regex=ID, regex_hint=ID_HINT)),
                                     "w": s.Required(s.Float(ge=-1e9, le=1e9)),
                                     "duration_s": s.Required(s.Float(ge=1, le=86400))}),
    "nomination": s.Dict({"issuer": s.Optional(s.Str(choices=ISSUERS), default="aggregator"),
                          "resource": s.Required(s.Str(regex=ID, regex_hint=ID_HINT)),
                          "isp_s": s.Optional(s.Int(ge=60, le=3600), default=60),
                          "w": s.Required(s.List(s.Float(ge=-1e9, le=1e9), min_len=1, max_len=672)),
                          "gate_s": s.Optional(s.Float(ge=0, le=3600), default=5.0,
                                               doc="the first ISP starts at least this long after sending, wall s")}),
    "note": s.Dict({}),
}, {"at": s.Required(TIME), "id": _ref("its name: the cmd_id's stem, and what checks refer to"),
    "info": s.Optional(s.Str(min_len=1, max_len=40), doc="the message of a use case it stands for, e.g. INFO 6"),
    "text": s.Optional(s.Str(max_len=300), default="")})

_DEV = {"device": s.Required(s.Str(regex=ID, regex_hint=ID_HINT))}
_FOR = {"for": s.Required(TIME, "how long, scenario time")}
FAULT = Tagged("kind", {
    "uplink_latency": s.Dict({**_FOR, "latency_s": s.Required(s.Float(ge=0, le=60), "wall s, each way")}),
    "uplink_loss": s.Dict({**_FOR, "rate": s.Required(s.Float(ge=0, le=1)),
                           "stall_s": s.Optional(s.Float(ge=0, le=10), default=0.2)}),
    "uplink_blackhole": s.Dict(_FOR),
    "uplink_down": s.Dict(_FOR),
    "broker_restart": s.Dict({"for": s.Optional(TIME, default=0.0, doc="how long the broker stays down")}),
    "device_timeout": s.Dict({**_FOR, **_DEV}),
    "device_exception": s.Dict({**_FOR, **_DEV, "code": s.Optional(s.Int(ge=1, le=255), default=4)}),
    "device_garbage": s.Dict({**_FOR, **_DEV}),
    "device_slow": s.Dict({**_FOR, **_DEV, "delay_s": s.Required(s.Float(gt=0, le=30), "wall s")}),
    "gateway_kill": s.Dict({"for": s.Optional(TIME, default=0.0, doc="down this long, then started again"),
                            "signal": s.Optional(s.Str(choices=("KILL", "TERM")), default="KILL")}),
    "clock_step": s.Dict({"target": s.Optional(s.Str(choices=("headend",)), default="headend",
                                               doc="whose clock: the head-end's, that signs and dates commands"),
                          "step_s": s.Required(s.Float(ge=-86400 * 365, le=86400 * 365)),
                          "for": s.Optional(TIME, doc="stepped back after this long; default: stays")}),
}, {"at": s.Required(TIME), "id": _ref("its name, for checks")})

_WINDOW = {"from": s.Optional(TIME), "to": s.Optional(TIME)}
_ACT = {"command": s.Required(s.Str(regex=ID, regex_hint=ID_HINT), "the timeline entry's id"), **_DEV}
CHECK = Tagged("kind", {
    "activation_delay": s.Dict({**_ACT, "max_s": s.Required(s.Float(gt=0, le=3600))}),
    "response_time": s.Dict({**_ACT, "max_s": s.Required(s.Float(gt=0, le=3600)),
                             "fraction": s.Optional(s.Float(gt=0, le=1), default=0.9)}),
    "ramp_rate": s.Dict({**_ACT, "min_w_per_s": s.Optional(s.Float(ge=0, le=1e9)),
                         "max_w_per_s": s.Optional(s.Float(gt=0, le=1e9)),
                         "edge": s.Optional(s.Str(choices=("start", "end")), default="start",
                                            doc="the step into the set-point, or the release back to the baseline "
                                                "when it ends")}),
    "setpoint_accuracy": s.Dict({**_ACT, "settle_s": s.Optional(s.Float(ge=0, le=3600), default=5.0),
                                 "tolerance_w": s.Optional(s.Float(ge=0, le=1e9)),
                                 "tolerance_pct": s.Optional(s.Float(ge=0, le=100), doc="of w_max")}),
    "delivery": s.Dict({**_ACT, "settle_s": s.Optional(s.Float(ge=0, le=3600), default=5.0),
                        "min_ratio": s.Optional(s.Float(ge=0, le=10), default=0.9),
                        "max_ratio": s.Optional(s.Float(ge=0, le=10), default=1.1)}),
    "statuses": s.Dict({"command": s.Required(s.Str(regex=ID, regex_hint=ID_HINT)),
                        "expect": s.Required(s.List(s.Str(max_len=20), min_len=1))}),
    "command_latency": s.Dict({"command": _ref("one command; default all"),
                               "status": s.Optional(s.Str(max_len=20), default="accepted"),
                               "max_s": s.Required(s.Float(gt=0, le=3600))}),
    "telemetry_latency": s.Dict({**_WINDOW, "percentile": s.Optional(s.Float(gt=0, le=100), default=95.0),
                                 "max_s": s.Required(s.Float(gt=0, le=3600))}),
    "completeness": s.Dict({"streams": s.Optional(s.List(s.Str(regex=r"[a-z_]{1,32}", regex_hint="be a stream"),
                                                         min_len=1, unique=True), default=["telemetry", "result"]),
                            "min_pct": s.Optional(s.Float(ge=0, le=100), default=100.0)}),
    "failsafe_reversion": s.Dict({"fault": s.Required(s.Str(regex=ID, regex_hint=ID_HINT)), **_DEV,
                                  "min_s": s.Optional(s.Float(ge=0, le=86400), default=0.0),
                                  "max_s": s.Required(s.Float(gt=0, le=86400))}),
    "recovery": s.Dict({"fault": s.Required(s.Str(regex=ID, regex_hint=ID_HINT)),
                        "max_s": s.Required(s.Float(gt=0, le=86400), "from the fault's end to live telemetry")}),
    "no_writes": s.Dict({**_WINDOW, "devices": s.Optional(s.List(s.Str(regex=ID, regex_hint=ID_HINT), unique=True),
                                                          doc="default: every device the gateway may not write")}),
    "voltage": s.Dict({**_WINDOW, **_DEV, "min_pu": s.Optional(s.Float(ge=0, le=2), default=0.9),
                       "max_pu": s.Optional(s.Float(ge=0, le=2), default=1.1)}),
    "device_setpoint": s.Dict({**_WINDOW, **_DEV,
                               "expect_pct": s.Optional(s.Float(ge=-1000, le=1000),
                                                        doc="% of w_max; absent: no set-point in force"),
                               "tolerance_pct": s.Optional(s.Float(ge=0, le=100), default=1.0)}),
    "records": s.Dict({**_WINDOW, "record": s.Required(s.Str(choices=(
        "verification", "settlement", "availability", "prequalification", "baseline_accuracy", "telemetry"))),
                       "min_count": s.Optional(s.Int(ge=0, le=10**6), default=1),
                       "max_interval_s": s.Optional(s.Float(gt=0, le=86400), doc="largest gap between two, wall s"),
                       "fields": s.Optional(s.List(s.Str(regex=r"[a-z_]{1,40}", regex_hint="be a field name"),
                                                   unique=True), default=[],
                                            doc="top-level fields a record must carry as numbers to count")}),
}, {"id": s.Required(s.Str(regex=r"[A-Za-z0-9_.:-]{1,40}", regex_hint="be 1-40 characters of A-Z a-z 0-9 _ . : -"),
                     "the check's id, e.g. a clause of the standard it follows"),
    "title": s.Optional(s.Str(max_len=200), default="")})

SCENARIO = s.Dict({
    "scenario": s.Required(s.Dict({
        "name": s.Required(s.Str(min_len=1, max_len=120)),
        "description": s.Optional(s.Str(max_len=4000), default=""),
        "duration": s.Required(TIME, "scenario time"),
        "speed": s.Optional(s.Float(gt=0, le=100000), default=1.0, doc="scenario seconds per wall-clock second"),
        "warmup_s": s.Optional(s.Float(ge=0, le=600), default=3.0, doc="after the gateway is online, wall s"),
        "cooldown_s": s.Optional(s.Float(ge=0, le=600), default=3.0, doc="after the timeline, before the stop"),
        "seed": s.Optional(s.Int(ge=0, le=2**31), default=1),
    })),
    "gateway": s.Optional(s.Dict({
        "mode": s.Optional(s.Str(choices=("gridedge", "external")), default="gridedge"),
        "id": s.Optional(s.Str(regex=r"[A-Za-z0-9_-]{1,64}", regex_hint="be 1-64 characters of A-Z a-z 0-9 _ -"),
                         default="gw-hil-001"),
        "command": s.Optional(s.List(s.Str(min_len=1, max_len=4096), min_len=1),
                              doc="external: the rig starts this (and may kill it); {bench} is the bench sheet"),
        "online_timeout_s": s.Optional(s.Float(gt=0, le=3600), default=60.0),
        "poll_ms": s.Optional(s.Int(ge=50, le=60000), default=250),
        "telemetry_ms": s.Optional(s.Int(ge=50, le=60000), default=250),
        "config": s.Optional(s.Dict({}, allow_unknown=True), default={},
                             doc="gridedge: tables merged into the gateway.toml the rig writes"),
    }), default={}),
    "broker": s.Optional(s.Dict({
        "host": s.Optional(s.Str(regex=r"[A-Za-z0-9.:-]{1,253}", regex_hint="be a host name or address"),
                           default="127.0.0.1"),
        "port": s.Optional(s.Int(ge=0, le=65535), default=0),
        "pki_dir": s.Optional(s.Str(min_len=1, max_len=4096), doc="keep the PKI and issuer keys here, reused"),
    }), default={}),
    "uplink": s.Optional(s.Dict({"path": s.Optional(s.Str(choices=("proxy", "direct")), default="proxy")}),
                         default={}),
    "grid": s.Optional(s.Dict({
        "segments": s.Optional(s.List(s.List(s.Float(ge=0, le=100), min_len=2, max_len=2), min_len=1, max_len=64),
                               default=[[0.1, 0.1]], doc="[R, X] ohm per phase of each feeder segment"),
        "v_source_pu": s.Optional(_profile(0.5, 1.5), default=1.0),
        "f_hz": s.Optional(_profile(40, 70), default=50.0),
    }), default={}),
    "loads": s.Optional(s.List(s.Dict({
        "node": s.Optional(s.Int(ge=1, le=64), default=1),
        "w": s.Required(_profile(-1e9, 1e9), "consumption, W"),
        "var": s.Optional(_profile(-1e9, 1e9), default=0.0),
    })), default=[]),
    "devices": s.Required(s.List(DEVICE, min_len=1, max_len=64, unique_key="id")),
    "timeline": s.Optional(s.List(TIMELINE, max_len=10000, unique_key="id"), default=[]),
    "faults": s.Optional(s.List(FAULT, max_len=1000, unique_key="id"), default=[]),
    "checks": s.Optional(s.List(CHECK, max_len=1000, unique_key="id"), default=[]),
})


# ---------------------------------------------------------------- the parsed scenario

@dataclass
class Scenario:
    source: str
    name: str
    description: str
    duration_s: float
    speed: float
    warmup_s: float
    cooldown_s: float
    seed: int
    gateway: dict
    broker: dict
    uplink: dict
    grid: dict
    loads: list[dict]
    devices: list[dict]
    timeline: list[dict]
    faults: list[dict]
    checks: list[dict]
    sha256: str = ""
    by_id: dict[str, dict] = field(default_factory=dict)

    def device(self, dev_id: str) -> dict:
        return next(d for d in self.devices if d["id"] == dev_id)

    def wall_s(self, scenario_s: float) -> float:
        return scenario_s / self.speed


def _cross_checks(doc: dict) -> list[s.Issue]:
    """What the schema cannot see: references between entries, times within the scenario, what a mode allows."""
    issues: list[s.Issue] = []
    devs = {d["id"]: d for d in doc["devices"] if isinstance(d, dict) and "id" in d}
    entries = {e["id"]: e for e in doc["timeline"] if isinstance(e, dict) and "id" in e}
    faults = {f["id"]: f for f in doc["faults"] if isinstance(f, dict) and "id" in f}
    duration = doc["scenario"]["duration"]
    n_nodes = len(doc["grid"]["segments"])
    gw = doc["gateway"]

    def dev_ref(path, name, kinds=None):
        if name not in devs:
            issues.append(s.Issue(path, f"no device {name!r}" + (f" (devices: {', '.join(devs)})" if devs else "")))
        elif kinds and devs[name]["kind"] not in kinds:
            issues.append(s.Issue(path, f"{name!r} is a {devs[name]['kind']}, not a {' or '.join(kinds)}"))

    rtu_units: dict[int, str] = {}
    for i, d in enumerate(doc["devices"]):
        if d.get("bus") == "rtu":
            if d["unit_id"] in rtu_units:
                issues.append(s.Issue(("devices", i, "unit_id"), f"{rtu_units[d['unit_id']]!r} has unit id "
                                      f"{d['unit_id']} on the RS-485 line already"))
            rtu_units.setdefault(d["unit_id"], d["id"])
        if d.get("node", 1) > n_nodes:
            issues.append(s.Issue(("devices", i, "node"), f"the feeder has {n_nodes} node(s) (grid.segments)"))
        if d["kind"] == "inverter" and "pv" in d and "clear_sky" in d:
            issues.append(s.Issue(("devices", i, "clear_sky"), "give pv or clear_sky, not both"))
        for j, m in enumerate(d.get("measures", ())):
            dev_ref(("devices", i, "measures", j), m, ("inverter", "battery"))
        if d["kind"] == "real" and gw["mode"] == "gridedge" and "driver" not in d["gateway"]:
            issues.append(s.Issue(("devices", i, "gateway", "driver"), "required key missing"))
        if d["kind"] == "real" and d["relay"] and not isinstance(d["gateway"].get("host"), str):
            issues.append(s.Issue(("devices", i, "relay"), "a relay needs the device's gateway.host (and port)"))
    for i, ld in enumerate(doc["loads"]):
        if ld["node"] > n_nodes:
            issues.append(s.Issue(("loads", i, "node"), f"the feeder has {n_nodes} node(s) (grid.segments)"))
    for i, e in enumerate(doc["timeline"]):
        if e["at"] > duration:
            issues.append(s.Issue(("timeline", i, "at"), f"after the end of the scenario ({duration:g} s)"))
        if "device" in e:
            dev_ref(("timeline", i, "device"), e["device"], ("inverter", "battery", "real"))
        if "activation" in e and e["activation"] not in entries:
            issues.append(s.Issue(("timeline", i, "activation"), f"no timeline entry with id {e['activation']!r}"))
        if e["action"] == "traffic_light" and (e["colour"] == "amber") != ("limit_pct" in e):
            issues.append(s.Issue(("timeline", i, "limit_pct"), "required for amber, and only for amber"))
    for i, f in enumerate(doc["faults"]):
        if f["at"] > duration:
            issues.append(s.Issue(("faults", i, "at"), f"after the end of the scenario ({duration:g} s)"))
        elif f["at"] + (f.get("for") or 0.0) > duration:
            issues.append(s.Issue(("faults", i, "for"), f"ends after the end of the scenario ({duration:g} s)"))
        if "device" in f:
            dev_ref(("faults", i, "device"), f["device"])
            d = devs.get(f["device"])
            if d is not None and d["kind"] == "real" and not d["relay"]:
                issues.append(s.Issue(("faults", i, "device"), f"{f['device']!r} is a real device without relay = "
                                                               "true: the rig cannot reach between it and the gateway"))
        if f["kind"].startswith("uplink_") and doc["uplink"]["path"] == "direct":
            issues.append(s.Issue(("faults", i, "kind"), "uplink faults need uplink.path = \"proxy\""))
        if f["kind"] == "gateway_kill":
            if gw["mode"] == "external" and "command" not in gw:
                issues.append(s.Issue(("faults", i, "kind"), "needs a gateway the rig starts (gateway.mode = "
                                                             "\"gridedge\", or gateway.command)"))
    for i, c in enumerate(doc["checks"]):
        if "command" in c and c["command"] not in entries:
            issues.append(s.Issue(("checks", i, "command"), f"no timeline entry with id {c['command']!r}"))
        if "fault" in c and c["fault"] not in faults:
            issues.append(s.Issue(("checks", i, "fault"), f"no fault with id {c['fault']!r}"))
        if "device" in c:
            dev_ref(("checks", i, "device"), c["device"])
        for j, d in enumerate(c.get("devices") or ()):
            dev_ref(("checks", i, "devices", j), d)
        if c["kind"] == "ramp_rate" and "min_w_per_s" not in c and "max_w_per_s" not in c:
            issues.append(s.Issue(("checks", i), "needs min_w_per_s, max_w_per_s or both"))
        if c["kind"] == "setpoint_accuracy" and "tolerance_w" not in c and "tolerance_pct" not in c:
            issues.append(s.Issue(("checks", i), "needs tolerance_w or tolerance_pct"))
        if c["kind"] in ("activation_delay", "response_time", "ramp_rate", "setpoint_accuracy", "delivery") and \
                c.get("device") in devs and devs[c["device"]]["kind"] not in ("inverter", "battery"):
            issues.append(s.Issue(("checks", i, "device"), "must be a simulated inverter or battery (the rig "
                                                           "measures it at the device)"))
        if c["kind"] == "device_setpoint" and c.get("device") in devs and \
                devs[c["device"]]["kind"] not in ("inverter", "battery"):
            issues.append(s.Issue(("checks", i, "device"), "must be a simulated inverter or battery"))
        if c["kind"] == "voltage" and c.get("device") in devs and devs[c["device"]]["kind"] == "real":
            issues.append(s.Issue(("checks", i, "device"), "must be a simulated device"))
        if c.get("from") is not None and c.get("to") is not None and c["from"] > c["to"]:
            issues.append(s.Issue(("checks", i, "to"), "must not be before from"))
    return issues


def parse_scenario(data: Any, source: str = "<scenario>", text: bytes = b"") -> Scenario:
    """Check an already-parsed scenario (a dict as from tomllib). Raises ScenarioError with every problem."""
    clean, issues = s.validate(SCENARIO, data, partial=True)
    if not issues:
        issues = _cross_checks(clean)
    if issues:
        raise ScenarioError(s.format_issues(issues, source))
    sc = clean["scenario"]
    timeline = sorted(clean["timeline"], key=lambda e: e["at"])     # stable: equal times keep the file's order
    out = Scenario(source=source, name=sc["name"], description=sc["description"], duration_s=sc["duration"],
                   speed=sc["speed"], warmup_s=sc["warmup_s"], cooldown_s=sc["cooldown_s"], seed=sc["seed"],
                   gateway=clean["gateway"], broker=clean["broker"], uplink=clean["uplink"], grid=clean["grid"],
                   loads=clean["loads"], devices=clean["devices"], timeline=timeline, faults=clean["faults"],
                   checks=clean["checks"], sha256=hashlib.sha256(text).hexdigest())
    out.by_id = {e["id"]: e for e in timeline if "id" in e} | {f["id"]: f for f in clean["faults"] if "id" in f}
    return out


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file. Raises ScenarioError (never anything else) for any bad input."""
    source = Path(path).name
    try:
        raw = Path(path).read_bytes()
    except (OSError, ValueError) as e:
        raise ScenarioError([f"{source}: cannot read: {e.strerror if isinstance(e, OSError) else e}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ScenarioError([f"{source}: not UTF-8 text: {e.reason} at byte {e.start}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError([f"{source}: invalid TOML: {e}"]) from None
    except RecursionError:
        raise ScenarioError([f"{source}: invalid TOML: nested too deeply"]) from None
    return parse_scenario(data, source, raw)


def shipped() -> list[Path]:
    """The ready-made scenarios (hil/scenarios/)."""
    return sorted(SCENARIO_DIR.glob("*.toml"))


def resolve(name: str) -> Path:
    """A scenario file by path, or a ready-made one by name (`dso_congestion`)."""
    p = Path(name)
    if p.suffix == ".toml" or p.exists() or "/" in name:
        return p
    ready = SCENARIO_DIR / f"{name}.toml"
    if not ready.is_file():
        raise ScenarioError([f"no scenario file {name!r} and no ready-made scenario of that name "
                             "(gridedge hil list)"])
    return ready
