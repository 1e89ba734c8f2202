"""What an activation is: its states, what it acts on, how it is shared out over devices, what it reports.

The state machine itself (conflicts, priorities, the traffic light, the fail-safe, restart) is the book
(book.ActivationBook); this module is its vocabulary: `State`, `Activation` (and its restart-file form),
`Change` (a result to publish), `ActivationEvent` (for observers), `TrafficLight`, and the sharing rules
(`targets`, `resolve`, `capped`).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

from gridedge.contract import ACTIVATION_TYPES, Command

from .capability import Capability

S = 1_000_000_000


class State(enum.Enum):
    RECEIVED = "received"
    VALIDATED = "validated"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in FINAL

    @property
    def status(self) -> str | None:
        """The result status reported for entering this state (received is not reported on its own)."""
        return None if self is State.RECEIVED else ("accepted" if self is State.VALIDATED else self.value)


FINAL = frozenset({State.COMPLETED, State.EXPIRED, State.CANCELLED, State.TERMINATED, State.REJECTED, State.FAILED})
PENDING = frozenset({State.VALIDATED, State.SCHEDULED})

#: Which quantity of a device an activation type acts on: one activation per (device, channel) at a time.
CHANNEL = {"limit_active_power": "P", "set_active_power": "P", "set_reactive_power": "Q", "set_power_factor": "Q"}
#: The points that carry each quantity's set-point on a device (canonical names, docs/points.md), by prefix.
CHANNEL_POINTS = {"P": ("WMaxLimPct", "WSet"), "Q": ("VArSet",)}
#: Which device kinds take which activation type, and the default targets when the command names no device.
TAKES = {"limit_active_power": ("inverter", "load"), "set_active_power": ("inverter", "battery"),
         "set_reactive_power": ("inverter", "battery"), "set_power_factor": ("inverter", "battery")}
DEFAULT_TARGETS = {"limit_active_power": ("inverter",), "set_active_power": ("battery",),
                   "set_reactive_power": ("inverter", "battery"), "set_power_factor": ("inverter", "battery")}
QUANTITY_KEY = {"limit_active_power": "limit_pct", "set_active_power": "w", "set_reactive_power": "var",
                "set_power_factor": "pf"}
SEEN_IDS = 10000  # ids remembered in memory (the outbox also remembers results across restarts)


@dataclass
class Activation:
    """One activation. Times are UTC ns; `resolved` holds each device's share, clamped to its capability."""

    id: str
    issuer: str
    type: str
    devices: tuple[str, ...]
    quantity: float                 # as requested: % for limit_active_power, W, var, or signed PF
    duration_s: float
    revert_s: float
    received_ns: int
    start_ns: int                   # planned start; the actual start once active
    latest_start_ns: int            # it must have started by then, else it expires
    state: State = State.RECEIVED
    reason: str | None = None
    resolved: dict[str, float] = field(default_factory=dict)   # per device: % (limit), W, var or PF
    clamped: tuple[str, ...] = ()   # devices whose share was clamped
    end_ns: int | None = None       # set when active
    cap_pct: float | None = None    # traffic-light cap in force on it
    # per device: when its set-point was last sent in a write that was read back (UTC ns; the device's reversion
    # timer restarted then), and the points of that write; kept across a restart (see `restore`)
    confirmed_ns: dict[str, int] = field(default_factory=dict)
    points: dict[str, dict[str, float]] = field(default_factory=dict)
    held_until_ns: int | None = None   # restored after a restart: left on the devices until then, then reverted
    # the activations that won a conflict with it: (winner id, final state, what, reason); it ends when one starts
    yields_to: list[tuple[str, State, str, str]] = field(default_factory=list)
    principal: str | None = None    # the authenticated issuer id (`issuer` is its actor class, the priority)

    @property
    def channel(self) -> str:
        return CHANNEL[self.type]

    @property
    def unit(self) -> str:
        return ACTIVATION_TYPES[self.type]

    def interval(self) -> tuple[int, int]:
        """When it acts: [start, end] once active; before that, from its start to its latest start + duration."""
        if self.end_ns is not None:
            return self.start_ns, self.end_ns
        return self.start_ns, self.latest_start_ns + int(self.duration_s * S)

    def to_json(self) -> dict:
        """For the restart file: enough to restore it (and to say what it was)."""
        return {"id": self.id, "issuer": self.issuer, "type": self.type, "devices": list(self.devices),
                "quantity": self.quantity, "duration_s": self.duration_s, "revert_s": self.revert_s,
                "received_ns": self.received_ns, "start_ns": self.start_ns, "latest_start_ns": self.latest_start_ns,
                "state": self.state.value, "resolved": self.resolved, "end_ns": self.end_ns,
                "confirmed_ns": self.confirmed_ns, "points": self.points, "principal": self.principal}

    @classmethod
    def from_json(cls, it: Mapping) -> "Activation":
        """From the restart file (hostile until checked): ValueError, TypeError, KeyError on anything odd."""
        def text(v) -> str:
            if not isinstance(v, str):
                raise TypeError(f"expected a string, got {type(v).__name__}")
            return v

        def num(v) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"expected a finite number, got {v!r}")
            return float(v)

        def ns(v) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"expected an integer time in ns, got {v!r}")
            return v

        atype = text(it["type"])
        if atype not in CHANNEL:
            raise ValueError(f"unknown activation type {atype!r}")
        devices = tuple(text(d) for d in it["devices"])
        act = cls(text(it["id"]), text(it["issuer"]), atype, devices, num(it["quantity"]), num(it["duration_s"]),
                  num(it["revert_s"]), ns(it["received_ns"]), ns(it["start_ns"]), ns(it["latest_start_ns"]),
                  State(it["state"]), resolved={text(k): num(v) for k, v in it["resolved"].items()},
                  end_ns=None if it["end_ns"] is None else ns(it["end_ns"]),
                  confirmed_ns={text(k): ns(v) for k, v in it.get("confirmed_ns", {}).items()},
                  points={text(d): {text(k): num(v) for k, v in p.items()} for d, p in it.get("points", {}).items()},
                  principal=None if it.get("principal") is None else text(it["principal"]))
        if not act.revert_s > 0 or not act.duration_s > 0:
            raise ValueError("revert_s and duration_s must be > 0")
        return act

    def reverts_at(self) -> int:
        """When its devices fall back by themselves if the gateway goes silent: revert_s after the oldest last
        confirmed write (a device never confirmed counts from the activation's start, its first confirmation)."""
        last = min((self.confirmed_ns.get(d, self.start_ns) for d in self.devices), default=self.start_ns)
        return last + int(self.revert_s * S)


@dataclass(frozen=True)
class ActivationEvent:
    """A state change, for observers (the flex module): what was asked, of whom, when, and what it is now.

    requested is (value, unit) as the issuer sent it; resolved_w is each device's share in W (for limits: the
    ceiling in W), None where the device's rating is unknown or the quantity is not active power.
    """

    activation_id: str
    issuer: str
    type: str
    devices: tuple[str, ...]
    requested: tuple[float, str]
    resolved_w: dict[str, float | None]
    start_ns: int
    end_ns: int | None
    state: State
    reason: str | None
    ts_ns: int


@dataclass(frozen=True)
class Change:
    """A result to publish: cmd_id, status, reason and detail (see docs/mqtt-api.md)."""

    cmd_id: str
    status: str
    reason: str | None = None
    detail: dict = field(default_factory=dict)


@dataclass
class TrafficLight:
    colour: str = "green"
    limit_pct: float | None = None
    cmd_id: str | None = None
    until_ns: int | None = None

    def describe(self) -> str:
        what = f"traffic light {self.colour}" + (f" {self.limit_pct:g} %" if self.colour == "amber" else "")
        return what + (f" (dso command {self.cmd_id})" if self.cmd_id else "")


Listener = Callable[[ActivationEvent], None]


# ---------------------------------------------------------------- sharing out

def targets(cmd: Command, caps: Mapping[str, Capability]) -> tuple[str, ...]:
    """The devices an activation command acts on; raises ValueError naming the fault."""
    takes = TAKES[cmd.type]
    if cmd.device is not None:
        c = caps.get(cmd.device)
        if c is None:
            raise ValueError(f"device: unknown device {cmd.device!r}")
        if c.kind not in takes:
            raise ValueError(f"device: {cmd.device!r} is a {c.kind}; {cmd.type} needs a "
                             f"{' or '.join(takes)}")
        if not c.writable:
            raise ValueError(f"device: {cmd.device!r} is read-only (writable = false in the configuration)")
        return (cmd.device,)
    kinds = DEFAULT_TARGETS[cmd.type]
    candidates = [d for d, c in caps.items() if c.kind in kinds]
    targets = tuple(d for d in candidates if caps[d].writable)
    if not targets:
        ro = ", ".join(candidates)
        raise ValueError(f"no writable {' or '.join(kinds)} on this gateway"
                         + (f" ({ro}: read-only, writable = false in the configuration)" if ro else ""))
    return targets

def resolve(act: Activation, caps: Mapping[str, Capability]) -> None:
    """Each device's share, clamped to its capability; raises ValueError if a rating is missing."""
    resolved, clamped = {}, []
    if act.type == "limit_active_power":
        for dev in act.devices:
            c = caps[dev]
            pct = act.quantity
            if c.known:
                lo, hi = (c.p_min_w, c.p_max_w) if c.kind != "load" else (-c.p_max_w, -c.p_min_w)
                bounded = min(max(pct, lo / c.rated_w * 100), hi / c.rated_w * 100)
                if abs(bounded - pct) > 1e-9:
                    clamped.append(dev)
                pct = bounded
            resolved[dev] = pct
    elif act.type == "set_power_factor":
        resolved = {dev: act.quantity for dev in act.devices}
    else:
        missing = [d for d in act.devices if not caps[d].known]
        if missing:
            raise ValueError(f"rating of {', '.join(missing)} unknown (no WMax from the device yet and no "
                             "control.devices rated_w): cannot share out a set-point in "
                             + ("W" if act.type == "set_active_power" else "var"))
        total = sum(caps[d].rated_w for d in act.devices)
        for dev in act.devices:
            c = caps[dev]
            share = act.quantity * c.rated_w / total
            value, was = c.clamp_w(share) if act.type == "set_active_power" else c.clamp_var(share)
            resolved[dev] = value
            if was:
                clamped.append(dev)
    act.resolved, act.clamped = resolved, tuple(clamped)


def capped(atype: str, value: float, cap_pct: float, c: Capability | None) -> float:
    """The traffic-light cap: the active power change an activation may ask, from what the device would do
    without it (a generator's full output; a battery or load idle at 0 W)."""
    if atype == "limit_active_power":
        return max(value, 100.0 - cap_pct)
    if atype == "set_active_power" and c is not None and c.known:
        span = cap_pct / 100 * c.rated_w
        if c.kind == "inverter":
            return max(value, c.p_max_w - span)
        return min(max(value, -span), span)
    return value


def clamp_reason(act: Activation, caps: Mapping[str, Capability]) -> str:
    return "clamped to " + "; ".join(caps[d].describe() for d in act.clamped if d in caps)
