"""From the control engine's activations to the windows flex verifies and settles.

The control engine reports every activation state change (gridedge.control.activation.ActivationEvent) in device
terms; flex settles resources ([[flex.resources]], each naming the devices it controls). An activation becomes a
window when it goes active on a device of some resource, and its window ends early when it ends otherwise than
completed. Only active power is flexibility here: reactive power and power factor activations make no window.

- limit_active_power: `down`, the limit is the sum of the devices' ceilings in W (`resolved_w`);
- set_active_power: a set-point below what the devices were producing is `down` with that cap, above it `up`
  with that floor (a battery asked to discharge, a load asked to consume less).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from .window import ActivationWindow

#: Activation types whose requested quantity is active power, and so flexibility flex can settle.
ACTIVE_POWER_TYPES = ("limit_active_power", "set_active_power")


def resources_of(resources) -> dict[str, tuple[str, ...]]:
    """device id -> the ids of the flex resources that control it."""
    out: dict[str, list[str]] = {}
    for r in resources:
        for d in r.devices:
            out.setdefault(d, []).append(r.id)
    return {d: tuple(rs) for d, rs in out.items()}


def window_for(event, by_device: Mapping[str, tuple[str, ...]],
               measured_w: Callable[[str], float | None]) -> ActivationWindow | str:
    """The window of an activation that just went active, or the reason it has none (a string, for the log).

    measured_w(device) is the device's active power now (from the process image), for the direction of a
    set-point."""
    if event.type not in ACTIVE_POWER_TYPES:
        return f"{event.type} is not active power"
    resources = tuple(dict.fromkeys(r for d in event.devices for r in by_device.get(d, ())))
    if not resources:
        return f"no flex resource controls {', '.join(event.devices)}"
    if event.end_ns is None or event.end_ns <= event.start_ns:
        return "no end time"
    watts = [event.resolved_w.get(d) for d in event.devices]
    if any(w is None for w in watts):
        return f"the rating of {', '.join(d for d in event.devices if event.resolved_w.get(d) is None)} is unknown"
    limit = float(sum(watts))
    direction = "down"
    if event.type == "set_active_power":
        now = [measured_w(d) for d in event.devices]
        if any(w is None for w in now):
            return "the devices' power before the set-point is unknown"
        direction = "down" if limit < sum(now) else "up"
    return ActivationWindow(event.activation_id, event.issuer, resources, direction, event.start_ns, event.end_ns,
                            limit_w=limit)
