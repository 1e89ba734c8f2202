"""The book of activations: an explicit state machine, with no I/O, of what remote operators asked for.

    received -> validated -> [scheduled ->] active -> completed | terminated | cancelled | failed
                    |             |
                    |             +-> expired     (its window closed before it could start)
                    +-> rejected  (never validated)          (any non-final state can also be terminated,
                                                               cancelled or failed)

- received: the command was read; validated: its targets, quantity and conflicts are settled ("accepted");
  scheduled: it waits for its start, or for the traffic light; active: the control cycle has written it and
  read it back on every target device (the engine calls `confirm`); then one of the final states.
- Conflicts: two activations conflict when they act on the same quantity (P, or Q) of a device in overlapping
  time. The one from the higher priority issuer wins (control.priorities, default tso > dso > aggregator):
  a new one of higher priority terminates the others ("preempted"); one of lower or equal priority from another
  issuer is rejected, naming the one in force; the same issuer's newer activation supersedes its older one
  (cancelled). A loser gives way when the winner starts, not when it is accepted (`yields_to`), so a scheduled
  winner leaves no gap; a winner that ends before it starts preempts nothing. Every loser's result says who won
  and why.
- An activation id is executed once: a second submit of a known id is rejected.
- Traffic light (DSO): green allows, amber caps the active power change an activation may ask of a device
  (limit_pct, % of WMax), red lets none start and terminates running ones. It does not apply to the DSO's own
  activations. An activation held by red waits while its window is open, then expires.
- Termination (the DSO, or an issuer of at least the activation's priority) and cancellation (its issuer) act
  at once: the engine is woken and the next cycle, run immediately, no longer applies it.
- Fail-safe: `revert_remote` ends remote activations (uplink lost for longer than their revert time); after a
  restart, activations that were active are held only for what is left of their revert time counted from the last
  confirmed write before the restart, and end at once if nothing is left (`restore`): never resumed.

Every state change produces a `Change` (turned into a result message by the agent) and an `ActivationEvent` for
the listeners (the observer hook, e.g. flexibility verification).
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable, Iterable, Mapping

from gridedge.contract import ACTIVATION_TYPES, Command
from gridedge.core.text import escape
from gridedge.core.utc import iso_utc

from .activation import (PENDING, QUANTITY_KEY, S, SEEN_IDS, Activation, ActivationEvent, Change, Listener, State,
                         TrafficLight, capped, clamp_reason, resolve, targets)
from .capability import Capability

log = logging.getLogger("gridedge.control.activation")


class ActivationBook:
    """The state machine for all activations of one gateway. Pure: time comes in as now_ns, nothing is awaited.

    capabilities() gives the devices as the control engine sees them now (kind, writable, rating, limits).
    Methods return the Changes to publish, in order; listeners are called on every activation state change.
    """

    def __init__(self, capabilities: Callable[[], Mapping[str, Capability]], *,
                 priorities: Iterable[str] = ("tso", "dso", "aggregator"), revert_s: float = 60.0,
                 grid_operator: str = "dso") -> None:
        self.capabilities = capabilities
        self.priorities = tuple(priorities)
        self.rank = {issuer: i for i, issuer in enumerate(self.priorities)}
        self.revert_s = float(revert_s)
        self.grid_operator = grid_operator
        self.activations: dict[str, Activation] = {}   # non-final, by id
        self.light = TrafficLight()
        self.listeners: list[Listener] = []
        self.version = 0                               # +1 on every change of what is in force
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self.restored: list[Activation] = []           # the ones that were active before a restart (`restore`)

    # ------------------------------------------------------------------ queries

    def in_force(self, now_ns: int) -> list[Activation]:
        """What the control cycle applies now: active ones, and pending ones whose start has come and may start.

        A pending one in this list becomes active when the engine confirms its first write (`confirm`)."""
        out = []
        for act in self.activations.values():
            if now_ns >= act.interval()[1] or self._gives_way(act, now_ns):
                continue      # an activation acts only within its interval, so two never overlap (tick ends it)
            if act.state is State.ACTIVE:
                out.append(act)
            elif act.state in PENDING and act.start_ns <= now_ns and self._gate(act)[0]:
                out.append(act)
        return out

    def effective(self, act: Activation) -> dict[str, float]:
        """Each device's share with the traffic-light cap applied (the value the cycle writes)."""
        cap = self._gate(act)[1]
        if cap is None:
            return dict(act.resolved)
        caps = self.capabilities()
        out = {}
        for dev, value in act.resolved.items():
            c = caps.get(dev)
            out[dev] = capped(act.type, value, cap, c)
        return out

    def get(self, act_id: str) -> Activation | None:
        return self.activations.get(act_id)

    def _starts(self, act: Activation, now_ns: int) -> bool:
        """Is it in force now, or would be (its start has come and the traffic light lets it)?"""
        return act.state is State.ACTIVE or (act.state in PENDING and act.start_ns <= now_ns and self._gate(act)[0])

    def _winner(self, act: Activation, now_ns: int) -> tuple[str, State, str, str] | None:
        """The first of the activations that won a conflict with it that has started, if any."""
        for w in act.yields_to:
            winner = self.activations.get(w[0])
            if winner is not None and self._starts(winner, now_ns):
                return w
        return None

    def _gives_way(self, act: Activation, now_ns: int) -> bool:
        return bool(act.yields_to) and self._winner(act, now_ns) is not None

    def _yield_end(self, act: Activation) -> int:
        """When it is to give way (the earliest planned start of its winners), or its own end."""
        starts = [self.activations[w[0]].start_ns for w in act.yields_to if w[0] in self.activations]
        return min([act.end_ns] + starts) if act.end_ns is not None else min(starts, default=act.start_ns)

    def _yield(self, now_ns: int) -> list[Change]:
        """Activations give way once one that won their conflict starts; if those end before they started, they
        run on as they were."""
        changes = []
        for act in list(self.activations.values()):
            if not act.yields_to:
                continue
            won = self._winner(act, now_ns)
            if won is not None:
                changes.append(self._move(act, won[1], now_ns, won[3]))
                continue
            gone = [w for w in act.yields_to if w[0] not in self.activations]
            if gone:
                act.yields_to = [w for w in act.yields_to if w not in gone]
                if act.state is State.ACTIVE:
                    changes.append(self._move(act, State.ACTIVE, now_ns, f"no longer to be {gone[0][2]}: it ended "
                                                                          "before it started",
                                              end=iso_utc(self._yield_end(act))))
        return changes

    def _gate(self, act: Activation) -> tuple[bool, float | None]:
        """(may it start or run, the cap in % of WMax or None)."""
        if act.issuer == self.grid_operator or act.channel != "P":
            return True, None
        if self.light.colour == "red":
            return False, None
        if self.light.colour == "amber":
            return True, self.light.limit_pct
        return True, None

    # ------------------------------------------------------------------ transitions

    def _event(self, act: Activation, now_ns: int) -> None:
        caps = self.capabilities()
        resolved_w: dict[str, float | None] = {}
        eff = act.resolved if act.state.final else self.effective(act)
        for dev in act.devices:
            c = caps.get(dev)
            v = eff.get(dev)
            if act.type == "limit_active_power":
                resolved_w[dev] = v / 100 * c.rated_w if v is not None and c is not None and c.known else None
            elif act.type == "set_active_power":
                resolved_w[dev] = v
            else:
                resolved_w[dev] = None
        ev = ActivationEvent(act.id, act.issuer, act.type, act.devices, (act.quantity, act.unit), resolved_w,
                             act.start_ns, act.end_ns, act.state, act.reason, now_ns)
        for listener in list(self.listeners):
            try:
                listener(ev)
            except Exception:  # an observer must never break control
                log.exception("activation listener %r failed on %s %s", listener, escape(act.id), act.state.value)

    def _move(self, act: Activation, state: State, now_ns: int, reason: str | None = None,
              **detail) -> Change | None:
        act.state = state
        act.reason = reason
        self.version += 1
        if state.final:
            self.activations.pop(act.id, None)
        self._event(act, now_ns)
        status = state.status
        if status is None:
            return None
        return Change(act.id, status, reason, {"state": state.value, **detail})

    def _remember(self, act_id: str) -> None:
        self._seen.add(act_id)
        self._seen_order.append(act_id)
        while len(self._seen_order) > SEEN_IDS:
            self._seen.discard(self._seen_order.popleft())

    def submit(self, cmd: Command, now_ns: int) -> list[Change]:
        """A parsed command: an activation, a terminate, a cancel or a traffic light."""
        if cmd.cmd_id in self._seen:
            return [Change(cmd.cmd_id, "rejected", f"duplicate: id {cmd.cmd_id!r} was already received by this gateway "
                                                   "and is never executed twice", {"state": "rejected"})]
        self._remember(cmd.cmd_id)
        if cmd.issuer not in self.rank:
            return [Change(cmd.cmd_id, "rejected", f"issuer: {cmd.issuer!r} is not accepted by this gateway "
                                                   f"(control.priorities = {list(self.priorities)})",
                           {"state": "rejected"})]
        if cmd.type in ACTIVATION_TYPES:
            changes = self._start(cmd, now_ns)
        elif cmd.type == "traffic_light":
            changes = self._traffic_light(cmd, now_ns)
        else:
            changes = self._end(cmd, now_ns)
        return changes + self._yield(now_ns)

    def _start(self, cmd: Command, now_ns: int) -> list[Change]:
        p = cmd.params
        start = max(now_ns, cmd.valid_from_ns or now_ns)
        latest = cmd.valid_until_ns if cmd.valid_until_ns is not None else start
        act = Activation(cmd.cmd_id, cmd.issuer, cmd.type, (), p[QUANTITY_KEY[cmd.type]], p["duration_s"],
                         p.get("revert_s", self.revert_s), now_ns, start, max(latest, start),
                         principal=cmd.principal)
        self._event(act, now_ns)  # received
        try:
            caps = self.capabilities()
            act.devices = targets(cmd, caps)
            resolve(act, caps)
        except ValueError as exc:
            return [self._move(act, State.REJECTED, now_ns, str(exc))]
        ok, _cap = self._gate(act)
        if not ok and act.latest_start_ns <= now_ns:
            return [self._move(act, State.REJECTED, now_ns, f"not allowed now: {self.light.describe()}")]
        losers = []
        for other in self.activations.values():
            if other.channel != act.channel or not set(other.devices) & set(act.devices):
                continue
            a0, a1 = act.interval()
            o0, o1 = other.interval()
            if a0 >= o1 or o0 >= a1:
                continue
            if other.issuer == act.issuer and other.principal == act.principal:
                losers.append((other, State.CANCELLED, f"superseded by {act.issuer}'s newer activation {act.id}", ""))
            elif self.rank[act.issuer] < self.rank[other.issuer]:
                losers.append((other, State.TERMINATED, f"preempted by {act.issuer} activation {act.id}",
                               f" (priority {' > '.join(self.priorities)})"))
            else:
                when = "active" if other.state is State.ACTIVE else f"{other.state.value} from {iso_utc(other.start_ns)}"
                return [self._move(act, State.REJECTED, now_ns,
                                   f"conflict: {other.issuer} activation {other.id} ({when}) acts on the "
                                   f"{'active' if act.channel == 'P' else 'reactive'} power of "
                                   f"{', '.join(sorted(set(other.devices) & set(act.devices)))} and has equal or "
                                   f"higher priority ({' > '.join(self.priorities)})")]
        changes = []
        self.activations[act.id] = act
        detail = {"devices": list(act.devices), "start": iso_utc(act.start_ns),
                  "latest_start": iso_utc(act.latest_start_ns), "resolved": act.resolved}
        if act.clamped:
            detail["clamped"] = list(act.clamped)
        changes.append(self._move(act, State.VALIDATED, now_ns,
                                  clamp_reason(act, self.capabilities()) if act.clamped else None, **detail))
        for other, state, what, why in losers:
            if self._starts(act, now_ns):
                changes.append(self._move(other, state, now_ns, what + why))
                continue
            # it gives way when the winner starts, not before: until then it runs (or may start) as it was
            other.yields_to.append((act.id, state, what, what + why))
            if other.state is State.ACTIVE:
                changes.append(self._move(other, State.ACTIVE, now_ns, f"to be {what} when it starts (from "
                                                                        f"{iso_utc(act.start_ns)})",
                                          end=iso_utc(self._yield_end(other))))
        if act.start_ns > now_ns or not ok:
            why = None if ok else f"held: {self.light.describe()}; it may start until {iso_utc(act.latest_start_ns)}"
            changes.append(self._move(act, State.SCHEDULED, now_ns, why, start=iso_utc(act.start_ns)))
        return changes

    def _end(self, cmd: Command, now_ns: int) -> list[Change]:
        target_id = cmd.params["activation_id"]
        target = self.activations.get(target_id)
        if target is None:
            return [Change(cmd.cmd_id, "rejected", f"no activation {target_id!r} is scheduled or active",
                           {"state": "rejected"})]
        if cmd.type == "cancel":
            if (cmd.issuer, cmd.principal) != (target.issuer, target.principal):
                who = target.principal or target.issuer
                return [Change(cmd.cmd_id, "rejected", f"only its issuer ({who}) may cancel activation "
                                                       f"{target_id}; another ends it with terminate",
                               {"state": "rejected"})]
            state, why = State.CANCELLED, f"cancelled by its issuer (command {cmd.cmd_id})"
        else:
            if cmd.issuer != self.grid_operator and self.rank[cmd.issuer] > self.rank[target.issuer]:
                return [Change(cmd.cmd_id, "rejected", f"{cmd.issuer} may not terminate a {target.issuer} activation "
                                                       f"(only the {self.grid_operator} or an issuer of equal or higher "
                                                       "priority may)", {"state": "rejected"})]
            state, why = State.TERMINATED, f"terminated by {cmd.issuer} command {cmd.cmd_id}"
        return [Change(cmd.cmd_id, "accepted", None, {"activation_id": target_id}),
                self._move(target, state, now_ns, why),
                Change(cmd.cmd_id, "completed", None, {"activation_id": target_id})]

    def _traffic_light(self, cmd: Command, now_ns: int) -> list[Change]:
        p = cmd.params
        changes = [Change(cmd.cmd_id, "accepted", None, {"colour": p["colour"]})]
        if self.light.cmd_id is not None:
            changes.append(Change(self.light.cmd_id, "completed", f"replaced by traffic light command {cmd.cmd_id}",
                                  {"colour": self.light.colour}))
        until = now_ns + int(p["duration_s"] * S) if "duration_s" in p else None
        self.light = TrafficLight(p["colour"], p.get("limit_pct"), cmd.cmd_id, until)
        self.version += 1
        detail = {"colour": p["colour"]} | ({"limit_pct": p["limit_pct"]} if "limit_pct" in p else {})
        if until is not None:
            detail["end"] = iso_utc(until)
        changes.append(Change(cmd.cmd_id, "active", None, detail))
        return changes + self._apply_light(now_ns)

    def _apply_light(self, now_ns: int) -> list[Change]:
        """After the light changed: red ends running activations; amber/green re-report changed caps."""
        changes = []
        for act in list(self.activations.values()):
            ok, cap = self._gate(act)
            if act.state is State.ACTIVE and not ok:
                changes.append(self._move(act, State.TERMINATED, now_ns, f"stopped by {self.light.describe()}"))
            elif act.state is State.VALIDATED and not ok:
                changes.append(self._move(act, State.SCHEDULED, now_ns, f"held: {self.light.describe()}; it may "
                                                                         f"start until {iso_utc(act.latest_start_ns)}"))
            elif act.state is State.ACTIVE and cap != act.cap_pct:
                act.cap_pct = cap
                reason = (f"capped by {self.light.describe()}" if cap is not None
                          else f"cap lifted: {self.light.describe()}")
                changes.append(self._move(act, State.ACTIVE, now_ns, reason, setpoints=self.effective(act),
                                          end=iso_utc(act.end_ns)))
        return changes

    def confirm(self, act_id: str, now_ns: int, written: Mapping[str, dict] | None = None) -> list[Change]:
        """The engine wrote a pending activation to every target and read it back: it is active now."""
        act = self.activations.get(act_id)
        if act is None or act.state not in PENDING:
            return []
        act.start_ns = now_ns
        # it runs for duration_s, but never past its planned interval (latest start + duration), which the
        # conflict check reserved for it
        act.end_ns = min(now_ns, act.latest_start_ns) + int(act.duration_s * S)
        act.cap_pct = self._gate(act)[1]
        detail = {"devices": list(act.devices), "end": iso_utc(act.end_ns), "setpoints": self.effective(act)}
        if act.type == "limit_active_power":
            detail["limit_pct"] = act.quantity
        if written:
            detail["written"] = dict(written)
        reason = f"capped by {self.light.describe()}" if act.cap_pct is not None else None
        return [self._move(act, State.ACTIVE, now_ns, reason, **detail)]

    def refresh(self, act_id: str, device: str, sent_ns: int, points: Mapping[str, float]) -> None:
        """A write carrying the activation's set-point reached a device and was read back (sent at sent_ns): the
        device's reversion timer restarted then. Kept for the restart file."""
        act = self.activations.get(act_id)
        if act is None or device not in act.devices:
            return
        if act.confirmed_ns.get(device) != sent_ns or act.points.get(device) != points:
            act.confirmed_ns[device] = sent_ns
            act.points[device] = dict(points)
            self.version += 1

    def fail(self, act_id: str, now_ns: int, reason: str) -> list[Change]:
        act = self.activations.get(act_id)
        if act is None:
            return []
        return [self._move(act, State.FAILED, now_ns, reason)]

    def tick(self, now_ns: int) -> list[Change]:
        """Time passes: activations complete or expire, restored ones revert, the traffic light runs out."""
        changes = []
        if self.light.until_ns is not None and now_ns >= self.light.until_ns:
            changes.append(Change(self.light.cmd_id, "completed", "traffic light period over; back to green",
                                  {"colour": self.light.colour}))
            self.light = TrafficLight()
            self.version += 1
            changes += self._apply_light(now_ns)
        for act in list(self.activations.values()):
            if act.state is State.ACTIVE and act.end_ns is not None and now_ns >= act.end_ns:
                changes.append(self._move(act, State.COMPLETED, now_ns, None))
            elif act.state is State.ACTIVE and act.held_until_ns is not None and now_ns >= act.held_until_ns:
                changes.append(self._move(act, State.TERMINATED, now_ns,
                                          f"fail-safe: the gateway agent restarted; the set-point was left on the "
                                          f"devices until its revert time ({act.revert_s:g} s) ran out and reverted "
                                          "to its safe default"))
            elif act.state in PENDING and now_ns > act.latest_start_ns and not self._gate(act)[0]:
                # (one that may start is in force, being written: the engine confirms or fails it)
                changes.append(self._move(act, State.EXPIRED, now_ns,
                                          f"held by {self.light.describe()} until its window closed at "
                                          f"{iso_utc(act.latest_start_ns)}"))
            elif act.state in PENDING and now_ns >= act.interval()[1]:
                changes.append(self._move(act, State.EXPIRED, now_ns,
                                          "not started within its window: its devices did not take it"))
        return changes + self._yield(now_ns)

    def revert_remote(self, now_ns: int, down_s: float) -> list[Change]:
        """Uplink lost for down_s: every activation whose revert time has passed reverts to its safe default."""
        changes = []
        for act in list(self.activations.values()):
            if down_s >= act.revert_s:
                changes.append(self._move(act, State.TERMINATED, now_ns,
                                          f"fail-safe: uplink lost for {down_s:.0f} s, longer than the revert time "
                                          f"{act.revert_s:g} s; reverted to the safe default"))
        return changes

    def end_all(self, now_ns: int, reason: str) -> list[Change]:
        changes = []
        for act in list(self.activations.values()):
            changes.append(self._move(act, State.TERMINATED, now_ns, reason))
        return changes

    # ------------------------------------------------------------------ restart

    def snapshot(self) -> list[dict]:
        return [a.to_json() for a in self.activations.values()]

    def restore(self, items: Iterable[dict], now_ns: int,
                allowed: Callable[[Activation], str | None] | None = None) -> list[Change]:
        """After a restart. Nothing is resumed: what the gateway wrote before stays on a device only until the
        device's own reversion timer, armed by the last confirmed write, runs out (revert_s after it), and the
        time the agent was down counts. An active activation whose revert time is left is held for what is left
        (its set-point is not written again: `held_until_ns`); one whose revert time ran out while the agent was
        down ends at once (the devices have fallen back); pending ones end. `allowed(act)` checks an activation
        against the trust configuration of this run: one whose issuer may no longer send it ends at once."""
        changes = []
        for it in items:
            try:
                act = Activation.from_json(it)
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                log.error("restart file: unreadable activation %s (%s); not restored", escape(repr(it), 200), escape(exc))
                continue
            self._remember(act.id)
            refused = allowed(act) if allowed is not None else None
            if act.state is State.ACTIVE:  # terminated or held: its devices get their safe default once
                self.restored.append(act)
            reverts = act.reverts_at()
            if refused is not None:
                state, reason = State.TERMINATED, f"gateway agent restarted: not resumed: {refused}"
            elif act.state is State.ACTIVE and act.end_ns is not None and act.end_ns <= min(now_ns, reverts):
                state, reason = State.COMPLETED, "gateway agent restarted after its end"
            elif act.state is State.ACTIVE and reverts <= now_ns:
                state, reason = State.TERMINATED, (
                    f"fail-safe: the gateway agent was down; the set-point was last confirmed at "
                    f"{iso_utc(reverts - int(act.revert_s * S))} and its revert time ({act.revert_s:g} s) ran out "
                    f"at {iso_utc(reverts)}: the devices had reverted to their safe default; not resumed")
            elif act.state is State.ACTIVE:
                act.held_until_ns = reverts if act.end_ns is None else min(act.end_ns, reverts)
                self.activations[act.id] = act
                self.version += 1
                self._event(act, now_ns)
                changes.append(Change(act.id, "active", f"gateway agent restarted: held until its revert time "
                                                        f"({act.revert_s:g} s) has passed, counted from the last "
                                                        f"confirmed write at {iso_utc(reverts - int(act.revert_s * S))}"
                                                        "; not written again, then reverted",
                                      {"state": "active", "end": iso_utc(act.held_until_ns)}))
                continue
            else:
                state, reason = State.TERMINATED, "gateway agent restarted before it started"
            act.state, act.reason = state, reason
            self._event(act, now_ns)
            changes.append(Change(act.id, state.value, reason, {"state": state.value}))
        return changes
