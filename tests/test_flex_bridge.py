"""Activations (control's events) to flex windows: which activations are flexibility, for which resources, which
direction and limit; the rest say why not."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gridedge.control.activation import ActivationEvent, State
from gridedge.flex.bridge import resources_of, window_for
from gridedge.flex.settings import ResourceConfig
from gridedge.flex.window import ActivationWindow

S = 1_000_000_000
T = 1_800_000_000 * S
BY_DEVICE = resources_of([ResourceConfig("pv1", "inverter", ("inv1",), power="inv1/W"),
                          ResourceConfig("site", "meter", ("inv1", "inv2"), power="m1/W"),
                          ResourceConfig("bat1", "battery", ("bat1",), power="bat1/W")])


def event(ctype="limit_active_power", devices=("inv1",), resolved=None, end=T + 60 * S, **kw) -> ActivationEvent:
    base = dict(activation_id="a1", issuer="dso", type=ctype, devices=tuple(devices), requested=(50.0, "%"),
                resolved_w=resolved if resolved is not None else {d: 5000.0 for d in devices}, start_ns=T,
                end_ns=end, state=State.ACTIVE, reason=None, ts_ns=T)
    base.update(kw)
    return ActivationEvent(**base)


def test_a_limit_is_a_down_window_with_the_ceilings_summed_over_every_resource_of_its_devices():
    w = window_for(event(devices=("inv1", "inv2")), BY_DEVICE, lambda d: 8000.0)
    assert w == ActivationWindow("a1", "dso", ("pv1", "site"), "down", T, T + 60 * S, limit_w=10000.0)


def test_a_set_point_is_down_below_the_present_power_and_up_above_it():
    lower = window_for(event("set_active_power", ("bat1",), {"bat1": -1000.0}), BY_DEVICE, lambda d: 2000.0)
    higher = window_for(event("set_active_power", ("bat1",), {"bat1": 3000.0}), BY_DEVICE, lambda d: 2000.0)
    assert (lower.direction, lower.limit_w, higher.direction, higher.limit_w) == ("down", -1000.0, "up", 3000.0)
    assert window_for(event("set_active_power", ("bat1",)), BY_DEVICE, lambda d: None) == \
        "the devices' power before the set-point is unknown"


def test_what_is_not_settled_says_why():
    assert window_for(event("set_reactive_power"), BY_DEVICE, lambda d: 0.0) == "set_reactive_power is not active power"
    assert window_for(event(devices=("inv9",)), BY_DEVICE, lambda d: 0.0) == "no flex resource controls inv9"
    assert window_for(event(resolved={"inv1": None}), BY_DEVICE, lambda d: 0.0) == "the rating of inv1 is unknown"
    assert window_for(event(end=None), BY_DEVICE, lambda d: 0.0) == "no end time"


@given(st.sampled_from(["limit_active_power", "set_active_power", "set_reactive_power", "set_power_factor"]),
       st.lists(st.sampled_from(["inv1", "inv2", "bat1", "x"]), min_size=1, max_size=3, unique=True),
       st.floats(-1e6, 1e6), st.one_of(st.none(), st.floats(-1e6, 1e6)), st.integers(1, 10**12))
def test_property_a_window_or_a_reason(ctype, devices, w, now_w, dur):
    got = window_for(event(ctype, devices, {d: w for d in devices}, end=T + dur), BY_DEVICE, lambda d: now_w)
    if isinstance(got, ActivationWindow):
        assert set(got.resources) <= {"pv1", "site", "bat1"} and got.start_ns == T and got.end_ns == T + dur
        assert got.limit_w == w * len(devices)
    else:
        assert isinstance(got, str) and got
