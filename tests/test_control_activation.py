"""The activation state machine, without I/O: states, windows, priorities, traffic light, fail-safe, restart."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gridedge import contract
from gridedge.control.activation import FINAL, State
from gridedge.control.book import ActivationBook
from gridedge.control.capability import Capability

S = 1_000_000_000
T0 = 1_800_000_000 * S


def caps():
    return {
        "inv1": Capability.build("inv1", "inverter", True, 10000.0),
        "inv2": Capability.build("inv2", "inverter", True, 5000.0, cfg_p_max_w=4000.0),
        "bat1": Capability.build("bat1", "battery", True, 6000.0, cfg_p_min_w=-3000.0),
        "ro1": Capability.build("ro1", "inverter", False, 10000.0),
        "m1": Capability.build("m1", "meter", False, None),
    }


def cmd(cmd_id, ctype="limit_active_power", now=T0, **kw):
    """A command as the parser makes it from the wire."""
    params = kw.pop("params", None)
    if params is None:
        params = {"limit_active_power": {"limit_pct": 40, "duration_s": 60}, "set_active_power": {"w": -2000, "duration_s": 60},
                  "set_reactive_power": {"var": 1000, "duration_s": 60}, "set_power_factor": {"pf": -0.95, "duration_s": 60},
                  "terminate": {}, "cancel": {}, "traffic_light": {"colour": "green"}}[ctype]
    issuer = kw.pop("issuer", "dso")  # what authenticated it (the actor class), never a field of the document
    principal = kw.pop("principal", issuer)
    if kw.get("device", "") is None:   # no device: the key left out, as the schema wants it (null is refused)
        del kw["device"]
    doc = {"schema": contract.SCHEMA_COMMAND, "cmd_id": cmd_id, "type": ctype, "params": params, **kw}
    return contract.parse_command(json.dumps(doc).encode(), now, issuer=issuer, principal=principal,
                                  max_activation_s=86400, schedule_horizon_s=86400)


def iso(ns):
    return contract.iso_utc(ns)


@pytest.fixture
def book():
    b = ActivationBook(caps, revert_s=60)
    b.events = []
    b.listeners.append(b.events.append)
    return b


def statuses(changes, cmd_id=None):
    return [c.status for c in changes if cmd_id is None or c.cmd_id == cmd_id]


def test_immediate_activation_lifecycle_and_events(book):
    ch = book.submit(cmd("a1", device="inv1"), T0)
    assert statuses(ch) == ["accepted"]
    assert ch[0].detail["resolved"] == {"inv1": 40.0} and ch[0].detail["state"] == "validated"
    (act,) = book.in_force(T0)
    assert act.state is State.VALIDATED
    ch = book.confirm("a1", T0 + S // 10)
    # no window: it had to start at once, and it acts until at most its start + duration (the interval the
    # conflict check reserved), so the 0.1 s to confirm the write does not extend it
    assert statuses(ch) == ["active"] and ch[0].detail["end"] == iso(T0 + 60 * S)
    assert book.tick(T0 + 30 * S) == []
    ch = book.tick(T0 + 60 * S)
    assert statuses(ch) == ["completed"]
    assert book.in_force(T0 + 61 * S) == []
    assert [e.state for e in book.events] == [State.RECEIVED, State.VALIDATED, State.ACTIVE, State.COMPLETED]
    ev = book.events[-1]
    assert (ev.activation_id, ev.issuer, ev.type, ev.devices) == ("a1", "dso", "limit_active_power", ("inv1",))
    assert ev.requested == (40.0, "%") and ev.resolved_w == {"inv1": 4000.0}
    assert ev.start_ns == T0 + S // 10 and ev.end_ns == T0 + 60 * S


def test_default_targets_are_every_writable_inverter(book):
    ch = book.submit(cmd("a1"), T0)
    assert ch[0].detail["devices"] == ["inv1", "inv2"]
    ch = book.submit(cmd("p1", "set_active_power"), T0)       # P set-points default to the batteries
    assert ch[0].detail["devices"] == ["bat1"]


def test_scheduled_start_then_active(book):
    ch = book.submit(cmd("s1", device="inv1", valid_from=iso(T0 + 600 * S), valid_until=iso(T0 + 900 * S)), T0)
    assert statuses(ch) == ["accepted", "scheduled"]
    assert book.in_force(T0 + 599 * S) == []
    assert [a.id for a in book.in_force(T0 + 600 * S)] == ["s1"]
    assert statuses(book.confirm("s1", T0 + 600 * S)) == ["active"]


def test_red_holds_then_expires_and_rejects_without_a_window(book):
    book.submit(cmd("tl1", "traffic_light", issuer="dso", params={"colour": "red"}), T0)
    ch = book.submit(cmd("h1", issuer="aggregator", device="inv1", valid_until=iso(T0 + 120 * S)), T0)
    assert statuses(ch) == ["accepted", "scheduled"] and "held: traffic light red" in ch[1].reason
    assert book.in_force(T0 + S) == []
    ch = book.tick(T0 + 121 * S)
    assert statuses(ch) == ["expired"] and "held by traffic light red" in ch[0].reason
    ch = book.submit(cmd("h2", issuer="aggregator", device="inv1"), T0 + 122 * S)
    assert statuses(ch) == ["rejected"] and "not allowed now: traffic light red" in ch[0].reason
    # the DSO's own activations are not gated by its traffic light
    assert statuses(book.submit(cmd("d1", device="inv1"), T0 + 122 * S)) == ["accepted"]


def test_held_activation_starts_when_the_light_turns_green(book):
    book.submit(cmd("tl1", "traffic_light", issuer="dso", params={"colour": "red"}), T0)
    book.submit(cmd("h1", issuer="tso", device="inv1", valid_until=iso(T0 + 120 * S)), T0)
    ch = book.submit(cmd("tl2", "traffic_light", issuer="dso", params={"colour": "green"}), T0 + 10 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("tl2", "accepted"), ("tl1", "completed"), ("tl2", "active")]
    assert [a.id for a in book.in_force(T0 + 10 * S)] == ["h1"]
    assert statuses(book.confirm("h1", T0 + 10 * S)) == ["active"]
    assert book.tick(T0 + 65 * S) == []    # active past valid_until: its window was for starting, not for running


def test_priorities_conflicts_and_the_loser_is_told_why(book):
    book.submit(cmd("d1", device="inv1"), T0)
    book.confirm("d1", T0)
    ch = book.submit(cmd("g1", issuer="aggregator", device="inv1"), T0 + S)
    assert statuses(ch) == ["rejected"]
    assert ch[0].reason.startswith("conflict: dso activation d1 (active) acts on the active power of inv1")
    assert "tso > dso > aggregator" in ch[0].reason
    ch = book.submit(cmd("t1", issuer="tso", device="inv1"), T0 + 2 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("t1", "accepted"), ("d1", "terminated")]
    assert "preempted by tso activation t1" in ch[1].reason
    ch = book.submit(cmd("t2", issuer="tso", device="inv1", params={"limit_pct": 20, "duration_s": 60}), T0 + 3 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("t2", "accepted"), ("t1", "cancelled")]
    assert "superseded by tso's newer activation t2" in ch[1].reason


def test_a_scheduled_higher_priority_activation_preempts_when_it_starts_not_when_accepted(book):
    """Issue 11 defect 16: the running DSO activation keeps running until the scheduled TSO one starts."""
    book.submit(cmd("d1", device="inv1", params={"limit_pct": 40, "duration_s": 600}), T0)
    book.confirm("d1", T0)
    ch = book.submit(cmd("t1", issuer="tso", device="inv1", valid_from=iso(T0 + 60 * S),
                         valid_until=iso(T0 + 120 * S)), T0 + S)
    assert [(c.cmd_id, c.status) for c in ch] == [("t1", "accepted"), ("d1", "active"), ("t1", "scheduled")]
    assert ch[1].reason == f"to be preempted by tso activation t1 when it starts (from {iso(T0 + 60 * S)})"
    assert [a.id for a in book.in_force(T0 + 60 * S - 1)] == ["d1"] and book.tick(T0 + 60 * S - 1) == []
    ch = book.tick(T0 + 60 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("d1", "terminated")]
    assert ch[0].reason == "preempted by tso activation t1 (priority tso > dso > aggregator)"
    assert [a.id for a in book.in_force(T0 + 60 * S)] == ["t1"]


def test_a_preemption_waits_for_the_winner_to_be_allowed_and_lapses_with_it(book):
    book.submit(cmd("g1", issuer="aggregator", device="inv1", params={"limit_pct": 40, "duration_s": 600}), T0)
    book.confirm("g1", T0)
    book.submit(cmd("t1", issuer="tso", device="inv1", valid_from=iso(T0 + 10 * S), valid_until=iso(T0 + 100 * S)),
                T0)
    book.submit(cmd("d1", device="inv2", params={"limit_pct": 40, "duration_s": 600}), T0)   # (other device)
    # a winner cancelled by its issuer before it starts preempts nothing: the loser runs on
    ch = book.submit(cmd("x1", "cancel", issuer="tso", params={"activation_id": "t1"}), T0 + 5 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("x1", "accepted"), ("t1", "cancelled"), ("x1", "completed"),
                                                  ("g1", "active")]
    assert ch[-1].reason == "no longer to be preempted by tso activation t1: it ended before it started"
    assert book.tick(T0 + 10 * S) == [] and {a.id for a in book.in_force(T0 + 10 * S)} == {"g1", "d1"}
    # a scheduled superseding activation of the same issuer also waits for its start
    ch = book.submit(cmd("g2", issuer="aggregator", device="inv1", valid_from=iso(T0 + 30 * S),
                         valid_until=iso(T0 + 40 * S)), T0 + 20 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("g2", "accepted"), ("g1", "active"), ("g2", "scheduled")]
    ch = book.tick(T0 + 30 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("g1", "cancelled")]
    assert ch[0].reason == "superseded by aggregator's newer activation g2"
    # a winner held by a red traffic light does not start, so the DSO's own activation it would preempt runs on
    book.submit(cmd("tl", "traffic_light", params={"colour": "red"}), T0 + 31 * S)
    book.submit(cmd("t2", issuer="tso", device="inv2", valid_until=iso(T0 + 90 * S)), T0 + 32 * S)
    assert book.tick(T0 + 33 * S) == [] and "d1" in {a.id for a in book.in_force(T0 + 33 * S)}
    ch = book.submit(cmd("tl2", "traffic_light", params={"colour": "green"}), T0 + 34 * S)
    assert ("d1", "terminated") in [(c.cmd_id, c.status) for c in ch]
    assert [a.id for a in book.in_force(T0 + 34 * S) if "inv2" in a.devices] == ["t2"]


def test_no_conflict_across_quantities_devices_or_time(book):
    book.submit(cmd("p1", device="inv1"), T0)
    assert statuses(book.submit(cmd("q1", "set_reactive_power", issuer="aggregator", device="inv1"), T0)) == ["accepted"]
    assert statuses(book.submit(cmd("p2", issuer="aggregator", device="inv2"), T0)) == ["accepted"]
    later = iso(T0 + 3600 * S)
    assert statuses(book.submit(cmd("p3", issuer="aggregator", device="inv1", valid_from=later,
                                    valid_until=iso(T0 + 3700 * S)), T0)) == ["accepted", "scheduled"]


def test_conflict_resolution_is_deterministic(book):
    """The same commands in the same order give the same outcome, whatever else is in the book."""
    def outcome():
        b = ActivationBook(caps)
        out = []
        for c in [cmd("a", issuer="aggregator", device="inv1"), cmd("b", issuer="dso", device="inv1"),
                  cmd("c", issuer="aggregator", device="inv1"), cmd("d", issuer="tso", device="inv1")]:
            out += [(x.cmd_id, x.status, x.reason) for x in b.submit(c, T0)]
        return out
    assert outcome() == outcome()
    assert [(i, s) for i, s, _ in outcome()] == [("a", "accepted"), ("b", "accepted"), ("a", "terminated"),
                                                 ("c", "rejected"), ("d", "accepted"), ("b", "terminated")]


def test_terminate_and_cancel_rules(book):
    book.submit(cmd("t1", issuer="tso", device="inv1"), T0)
    book.confirm("t1", T0)
    ch = book.submit(cmd("x1", "terminate", issuer="aggregator", params={"activation_id": "t1"}), T0)
    assert statuses(ch) == ["rejected"] and "aggregator may not terminate a tso activation" in ch[0].reason
    ch = book.submit(cmd("x2", "cancel", issuer="dso", params={"activation_id": "t1"}), T0)
    assert statuses(ch) == ["rejected"] and "only its issuer (tso) may cancel" in ch[0].reason
    # the DSO may terminate any activation on its grid (domain brief section 4)
    ch = book.submit(cmd("x3", "terminate", issuer="dso", params={"activation_id": "t1"}), T0)
    assert [(c.cmd_id, c.status) for c in ch] == [("x3", "accepted"), ("t1", "terminated"), ("x3", "completed")]
    assert "x3" in ch[1].reason
    ch = book.submit(cmd("x4", "terminate", params={"activation_id": "t1"}), T0)
    assert statuses(ch) == ["rejected"] and "no activation 't1' is scheduled or active" in ch[0].reason
    book.submit(cmd("g1", issuer="aggregator", device="inv2"), T0)
    ch = book.submit(cmd("x5", "cancel", issuer="aggregator", params={"activation_id": "g1"}), T0)
    assert [(c.cmd_id, c.status) for c in ch] == [("x5", "accepted"), ("g1", "cancelled"), ("x5", "completed")]


def test_same_id_never_executed_twice(book):
    book.submit(cmd("a1", device="inv1"), T0)
    book.confirm("a1", T0)
    book.tick(T0 + 61 * S)
    ch = book.submit(cmd("a1", device="inv1", now=T0 + 62 * S), T0 + 62 * S)
    assert statuses(ch) == ["rejected"] and "duplicate" in ch[0].reason and "never executed twice" in ch[0].reason
    assert book.in_force(T0 + 62 * S) == []


def test_targets_shares_and_clamping(book):
    ch = book.submit(cmd("r1", device="ro1"), T0)
    assert statuses(ch) == ["rejected"] and "read-only" in ch[0].reason
    ch = book.submit(cmd("r2", device="nope"), T0)
    assert "unknown device 'nope'" in ch[0].reason
    ch = book.submit(cmd("r3", "set_active_power", device="m1"), T0)
    assert "'m1' is a meter; set_active_power needs a inverter or battery" in ch[0].reason
    # 12 kvar over inv1 (10 kW) and inv2 (5 kW): shared by rating, each clamped to 44 % of its rating
    ch = book.submit(cmd("q1", "set_reactive_power", params={"var": 12000, "duration_s": 60}, device=None), T0)
    assert ch[0].detail["resolved"] == {"inv1": 4400.0, "inv2": 2200.0, "bat1": 2640.0}
    assert ch[0].detail["clamped"] == ["inv1", "inv2", "bat1"] and ch[0].reason.startswith("clamped to inv1:")
    # a battery may charge only down to its prequalified -3 kW
    ch = book.submit(cmd("b1", "set_active_power", device="bat1", params={"w": -5000, "duration_s": 60}), T0)
    assert ch[0].detail["resolved"] == {"bat1": -3000.0} and ch[0].detail["clamped"] == ["bat1"]
    # a limit above the prequalified maximum of inv2 (4 kW of 5 kW) is clamped to 80 %
    ch = book.submit(cmd("l1", device="inv2", params={"limit_pct": 95, "duration_s": 60}), T0)
    assert ch[0].detail["resolved"] == {"inv2": 80.0}


def test_unknown_rating_rejects_a_watt_set_point():
    def no_rating():
        return {"inv1": Capability.build("inv1", "inverter", True, None)}
    b = ActivationBook(no_rating)
    ch = b.submit(cmd("w1", "set_active_power", device="inv1"), T0)
    assert statuses(ch) == ["rejected"] and "rating of inv1 unknown" in ch[0].reason
    assert statuses(b.submit(cmd("l1", device="inv1"), T0)) == ["accepted"]    # a % limit needs no rating


def test_amber_caps_running_activations_and_green_lifts_it(book):
    book.submit(cmd("g1", issuer="aggregator", device="inv1", params={"limit_pct": 30, "duration_s": 600}), T0)
    book.submit(cmd("b1", "set_active_power", issuer="aggregator", device="bat1",
                    params={"w": 3000, "duration_s": 600}), T0)
    book.confirm("g1", T0)
    book.confirm("b1", T0)
    ch = book.submit(cmd("tl1", "traffic_light", params={"colour": "amber", "limit_pct": 50}), T0 + S)
    assert [(c.cmd_id, c.status) for c in ch] == [("tl1", "accepted"), ("tl1", "active"), ("g1", "active"),
                                                  ("b1", "active")]
    assert ch[2].detail["setpoints"] == {"inv1": 50.0} and "capped by traffic light amber 50 %" in ch[2].reason
    assert ch[3].detail["setpoints"] == {"bat1": 3000.0}     # 3 kW <= 50 % of 6 kW: unchanged value, capped state
    assert {a.id: book.effective(a) for a in book.in_force(T0 + S)} == {"g1": {"inv1": 50.0}, "b1": {"bat1": 3000.0}}
    book.submit(cmd("tl2", "traffic_light", params={"colour": "amber", "limit_pct": 20}), T0 + 2 * S)
    assert {a.id: book.effective(a) for a in book.in_force(T0 + 2 * S)} == {"g1": {"inv1": 80.0}, "b1": {"bat1": 1200.0}}
    ch = book.submit(cmd("tl3", "traffic_light", params={"colour": "green"}), T0 + 3 * S)
    assert [c.reason for c in ch if c.cmd_id == "g1"] == ["cap lifted: traffic light green (dso command tl3)"]
    assert {a.id: book.effective(a) for a in book.in_force(T0 + 3 * S)} == {"g1": {"inv1": 30.0}, "b1": {"bat1": 3000.0}}


def test_red_terminates_running_third_party_activations_within_the_call(book):
    book.submit(cmd("g1", issuer="aggregator", device="inv1"), T0)
    book.submit(cmd("d1", device="inv2"), T0)
    book.submit(cmd("q1", "set_reactive_power", issuer="tso", device="inv1"), T0)
    for a in ("g1", "d1", "q1"):
        book.confirm(a, T0)
    ch = book.submit(cmd("tl1", "traffic_light", params={"colour": "red", "duration_s": 30}), T0 + S)
    assert [(c.cmd_id, c.status) for c in ch] == [("tl1", "accepted"), ("tl1", "active"), ("g1", "terminated")]
    assert ch[-1].reason == "stopped by traffic light red (dso command tl1)"
    assert sorted(a.id for a in book.in_force(T0 + S)) == ["d1", "q1"]   # the DSO's own, and reactive power
    ch = book.tick(T0 + 31 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("tl1", "completed")] and book.light.colour == "green"


def test_uplink_fail_safe_uses_each_activation_revert_time(book):
    book.submit(cmd("a1", device="inv1", params={"limit_pct": 40, "duration_s": 600, "revert_s": 10}), T0)
    book.submit(cmd("a2", device="inv2"), T0)
    book.confirm("a1", T0)
    book.confirm("a2", T0)
    assert book.revert_remote(T0 + 9 * S, 9.0) == []
    ch = book.revert_remote(T0 + 10 * S, 10.0)
    assert [(c.cmd_id, c.status) for c in ch] == [("a1", "terminated")]
    assert "fail-safe: uplink lost for 10 s, longer than the revert time 10 s" in ch[0].reason
    assert [(c.cmd_id, c.status) for c in book.revert_remote(T0 + 60 * S, 60.0)] == [("a2", "terminated")]


def test_restart_holds_active_until_revert_time_and_ends_pending(book):
    book.submit(cmd("a1", device="inv1", params={"limit_pct": 40, "duration_s": 3600, "revert_s": 30}), T0)
    book.confirm("a1", T0)
    book.submit(cmd("s1", device="inv2", valid_from=iso(T0 + 600 * S), valid_until=iso(T0 + 700 * S)), T0)
    snap = json.loads(json.dumps(book.snapshot()))
    fresh = ActivationBook(caps, revert_s=60)
    later = T0 + 10 * S          # within the revert time: held for the 20 s that are left of it
    ch = fresh.restore(snap, later)
    assert [(c.cmd_id, c.status) for c in ch] == [("a1", "active"), ("s1", "terminated")]
    assert "restarted" in ch[0].reason and "restarted before it started" in ch[1].reason
    assert [a.id for a in fresh.in_force(later)] == ["a1"]
    assert fresh.tick(later + 19 * S) == []
    ch = fresh.tick(later + 20 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("a1", "terminated")] and "fail-safe" in ch[0].reason
    assert statuses(fresh.submit(cmd("a1", device="inv1"), later + 31 * S)) == ["rejected"]   # still never twice
    assert fresh.restore([{"id": "broken"}], later) == []


def limit_45_restarted_at(book, now_ns):
    """A 45 % limit (revert 10 s) confirmed at T0, then the agent restarted at now_ns: (the new book, its results)."""
    book.submit(cmd("a1", device="inv1", params={"limit_pct": 45, "duration_s": 600, "revert_s": 10}), T0)
    book.confirm("a1", T0)
    fresh = ActivationBook(caps, revert_s=60)
    return fresh, fresh.restore(json.loads(json.dumps(book.snapshot())), now_ns)


def test_restart_after_the_revert_time_ends_the_activation_and_holds_nothing(book):
    """Issue 11 defect 14: the agent was down longer than the revert time. The device has fallen back by itself;
    the activation must stay released: terminated at restore, nothing in force, nothing to write."""
    fresh, ch = limit_45_restarted_at(book, T0 + 25 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("a1", "terminated")]
    assert ch[0].reason.startswith("fail-safe: the gateway agent was down") and "not resumed" in ch[0].reason
    assert iso(T0 + 10 * S) in ch[0].reason              # when the device fell back by itself
    assert fresh.in_force(T0 + 25 * S) == [] and fresh.activations == {}


def test_restart_within_the_revert_time_holds_only_what_is_left_of_it(book):
    """The revert time counts from the last confirmed write before the restart, not from the restart."""
    fresh, ch = limit_45_restarted_at(book, T0 + 4 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("a1", "active")]
    assert ch[0].detail["end"] == iso(T0 + 10 * S)
    assert [a.id for a in fresh.in_force(T0 + 4 * S)] == ["a1"]
    assert fresh.tick(T0 + 10 * S - 1) == []
    ch = fresh.tick(T0 + 10 * S)
    assert [(c.cmd_id, c.status) for c in ch] == [("a1", "terminated")] and "fail-safe" in ch[0].reason


def test_the_last_confirmed_write_of_each_device_counts_and_the_oldest_one_decides(book):
    book.submit(cmd("a1", params={"limit_pct": 45, "duration_s": 600, "revert_s": 10}), T0)   # inv1 and inv2
    book.confirm("a1", T0)
    book.refresh("a1", "inv1", T0 + 6 * S, {"WMaxLimPct": 45.0, "WMaxLimPctEna": 1})        # keepalives
    book.refresh("a1", "inv2", T0 + 3 * S, {"WMaxLimPct": 45.0, "WMaxLimPctEna": 1})
    book.refresh("a1", "inv9", T0 + 9 * S, {"WMaxLimPct": 1.0})                            # not a target
    book.refresh("nope", "inv1", T0 + 9 * S, {})
    snap = json.loads(json.dumps(book.snapshot()))
    assert snap[0]["points"] == {"inv1": {"WMaxLimPct": 45.0, "WMaxLimPctEna": 1},
                                 "inv2": {"WMaxLimPct": 45.0, "WMaxLimPctEna": 1}}
    fresh = ActivationBook(caps, revert_s=60)
    ch = fresh.restore(snap, T0 + 12 * S)
    assert [(c.cmd_id, c.status, c.detail["end"]) for c in ch] == [("a1", "active", iso(T0 + 13 * S))]
    assert iso(T0 + 3 * S) in ch[0].reason and "not written again" in ch[0].reason
    (act,) = fresh.activations.values()
    assert act.held_until_ns == T0 + 13 * S and act.points == snap[0]["points"]
    # the held activation still reserves its devices against one of lower priority
    assert statuses(fresh.submit(cmd("g1", issuer="aggregator", device="inv1"), T0 + 12 * S)) == ["rejected"]
    # it never outlives its own end
    book2 = ActivationBook(caps)
    book2.submit(cmd("e1", device="inv1", params={"limit_pct": 45, "duration_s": 5, "revert_s": 10}), T0)
    book2.confirm("e1", T0)
    ch = ActivationBook(caps).restore(book2.snapshot(), T0 + 2 * S)
    assert ch[0].detail["end"] == iso(T0 + 5 * S)
    ch = ActivationBook(caps).restore(book2.snapshot(), T0 + 6 * S)
    assert [(c.status, c.reason) for c in ch] == [("completed", "gateway agent restarted after its end")]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                                      max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "id": json_values | st.text(max_size=3), "issuer": st.sampled_from(["dso", "tso"]) | json_values,
    "type": st.sampled_from(["limit_active_power", "set_active_power"]) | json_values,
    "devices": st.just(["inv1"]) | json_values, "quantity": json_values, "duration_s": json_values,
    "revert_s": json_values, "received_ns": json_values, "start_ns": json_values, "latest_start_ns": json_values,
    "state": st.sampled_from(["active", "scheduled", "completed"]) | json_values, "resolved": json_values,
    "end_ns": json_values, "confirmed_ns": json_values, "points": json_values})), max_size=4))
def test_fuzz_the_restart_file_is_hostile_input(items):
    """Whatever the file holds: no exception, and an activation is held only with time left before it reverts."""
    fresh = ActivationBook(caps)
    fresh.restore([i for i in items if isinstance(i, dict)], T0)
    for act in fresh.activations.values():
        assert act.state is State.ACTIVE and act.held_until_ns > T0 and act.held_until_ns <= act.reverts_at()
        assert all(isinstance(d, str) for d in act.devices) and math.isfinite(act.quantity)
        assert all(math.isfinite(v) for p in act.points.values() for v in p.values())


def test_a_failing_listener_does_not_break_the_book(book):
    book.listeners.insert(0, lambda ev: 1 / 0)
    assert statuses(book.submit(cmd("a1", device="inv1"), T0)) == ["accepted"]
    assert [e.state for e in book.events] == [State.RECEIVED, State.VALIDATED]


def test_issuer_outside_the_priorities_is_refused():
    b = ActivationBook(caps, priorities=("dso",))
    ch = b.submit(cmd("t1", issuer="tso", device="inv1"), T0)
    assert statuses(ch) == ["rejected"] and "issuer: 'tso' is not accepted by this gateway" in ch[0].reason


# ---------------------------------------------------------------- fuzz: any sequence keeps the invariants

ALLOWED = {  # status after status, per activation (from docs/mqtt-api.md)
    None: {"accepted", "rejected"},
    "accepted": {"scheduled", "active", "expired", "terminated", "cancelled", "failed"},
    "scheduled": {"active", "expired", "terminated", "cancelled", "failed"},
    "active": {"active", "completed", "terminated", "cancelled", "failed"},
}

ids = st.sampled_from(["a", "b", "c", "d", "e"])
ops = st.one_of(
    st.tuples(st.just("act"), ids, st.sampled_from(["tso", "dso", "aggregator"]),
              st.sampled_from(["limit_active_power", "set_active_power", "set_reactive_power", "set_power_factor"]),
              st.sampled_from([None, "inv1", "inv2", "bat1"]), st.integers(0, 120), st.integers(0, 200)),
    st.tuples(st.just("end"), ids, st.sampled_from(["tso", "dso", "aggregator"]), st.sampled_from(["terminate", "cancel"])),
    st.tuples(st.just("light"), st.sampled_from(["green", "amber", "red"]), st.floats(0, 100)),
    st.tuples(st.just("tick"), st.integers(1, 100)),
    st.tuples(st.just("confirm"), ids),
    st.tuples(st.just("uplink"), st.floats(0, 120)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=40))
@example([("act", "a", "tso", "set_reactive_power", None, 0, 0),     # a loser of two scheduled winners gives way
          ("act", "a", "tso", "set_reactive_power", None, 1, 0),     # to the first that starts
          ("act", "a", "tso", "set_reactive_power", None, 2, 0), ("tick", 1)])
def test_fuzz_sequences_keep_the_invariants(seq):
    book = ActivationBook(caps, revert_s=60)
    now = T0
    last: dict[str, str | None] = {}
    n = 0
    for op in seq:
        n += 1
        changes = []
        if op[0] == "act":
            _, i, issuer, ctype, dev, start_s, window_s = op
            p = {"limit_active_power": {"limit_pct": 50}, "set_active_power": {"w": 1000},
                 "set_reactive_power": {"var": -500}, "set_power_factor": {"pf": 0.9}}[ctype] | {"duration_s": 30}
            kw = {"valid_from": iso(now + start_s * S), "valid_until": iso(now + (start_s + window_s + 1) * S)}
            try:
                c = cmd(f"{i}{n}", ctype, now=now, issuer=issuer, params=p, **({"device": dev} if dev else {}), **kw)
            except contract.CommandRejected:
                continue
            changes = book.submit(c, now)
        elif op[0] == "end":
            _, i, issuer, ctype = op
            target = next((a for a in book.activations if a.startswith(i)), i)
            changes = book.submit(cmd(f"x{n}", ctype, now=now, issuer=issuer, params={"activation_id": target}), now)
        elif op[0] == "light":
            params = {"colour": op[1]} | ({"limit_pct": op[2]} if op[1] == "amber" else {})
            changes = book.submit(cmd(f"l{n}", "traffic_light", now=now, params=params), now)
        elif op[0] == "tick":
            now += op[1] * S
            changes = book.tick(now)
        elif op[0] == "confirm":
            for act in book.in_force(now):
                if act.id.startswith(op[1]):
                    changes += book.confirm(act.id, now)
        else:
            changes = book.revert_remote(now, op[1])
        for ch in changes:
            if ch.cmd_id[0] not in "abcde":
                continue
            prev = last.get(ch.cmd_id)
            assert prev != "final", f"{ch.cmd_id}: {ch.status} after a final state"
            assert ch.status in ALLOWED[prev] | ({"rejected"} if prev is None else set()), (ch.cmd_id, prev, ch.status)
            last[ch.cmd_id] = "final" if ch.status in {s.value for s in FINAL} else ch.status
        # invariant: at most one activation in force per device and quantity
        seen = set()
        for act in book.in_force(now):
            for dev in act.devices:
                key = (dev, act.channel)
                assert key not in seen, f"two activations in force on {key}"
                seen.add(key)
        assert all(not a.state.final for a in book.activations.values())
