"""Per-device health as the agent sees it: how often a device delivers, how often it fails, when it last gave a
good value and what its circuit breaker says. The head-end sees a failing meter in the state message without
asking, a person on the gateway sees it in `gridedge status`, Prometheus in the metrics (docs/fleet.md).

It watches what devices hand the agent (every poll, whatever the driver), so it needs nothing from the drivers
beyond the breaker a Modbus or DLMS device already has (`bus_device.breaker`).
"""
from __future__ import annotations

import asyncio
import time

from ..core.model import SampleBlock, Validity
from ..core.utc import iso_utc

_GOOD = Validity.GOOD
RATE_SMOOTHING = 0.2   # weight of the newest interval in the poll-rate average
STATE_EVERY_S = 10.0   # a device that turns ok or failing is in a state message within this (not every flap)


class DeviceStats:
    __slots__ = ("reads", "errors", "failing_since", "last_read", "last_good_ns", "last_error", "interval_s")

    def __init__(self) -> None:
        self.reads = 0          # deliveries: a poll's readings, a subscription's data change
        self.errors = 0         # deliveries without a single good value (no answer, an exception, garbage)
        self.failing_since = 0  # consecutive failed deliveries
        self.last_read = 0.0    # monotonic s of the last delivery
        self.last_good_ns = 0   # UTC ns of the last delivery with a good value
        self.last_error = ""    # the detail of the last failure (timeout, comm_failure...)
        self.interval_s = 0.0   # smoothed time between deliveries


class DeviceHealth:
    def __init__(self, devices: dict) -> None:
        """devices: id -> the agent's device object (read for its breaker, if it has one)."""
        self.devices = devices
        self.stats = {d: DeviceStats() for d in devices}
        self.changed = asyncio.Event()   # a device turned ok or failing since the state last said
        self.said: dict[str, str] = {}     # device -> the status the last state message carried

    def observe(self, readings) -> None:
        """One delivery of readings (the agent's sink): per device in it, good if any value is good."""
        outcome: dict[str, str | None] = {}   # device -> None (a good value came) or the detail of the failure
        for r in readings:
            if isinstance(r, SampleBlock):
                dev = r.layout.device
                q = r.quality
                good = q is None or None in q or any(x[0] is _GOOD for x in q)
                detail = "" if good else q[0][1].value
            else:
                dev = r.point.partition("/")[0]
                good = r.validity is _GOOD
                detail = "" if good else r.detail.value
            if good:
                outcome[dev] = None
            elif dev not in outcome:
                outcome[dev] = detail or "invalid"
        if not outcome:
            return
        now, now_ns = time.monotonic(), time.time_ns()
        for dev, failure in outcome.items():
            st = self.stats.get(dev)
            if st is None:
                continue
            if st.last_read:
                dt = now - st.last_read
                st.interval_s = dt if not st.interval_s else st.interval_s + RATE_SMOOTHING * (dt - st.interval_s)
            st.last_read = now
            st.reads += 1
            if failure is None:
                st.last_good_ns, st.failing_since = now_ns, 0
            else:
                st.errors += 1
                st.failing_since += 1
                st.last_error = failure
            if self.said.get(dev, "ok") != self.status(dev):
                self.changed.set()

    def breaker(self, device_id: str) -> str | None:
        """closed, open or half_open; None for a device without one (OPC UA, or not on a bus yet)."""
        bus_device = getattr(self.devices.get(device_id), "bus_device", None)
        breaker = getattr(bus_device, "breaker", None)
        return breaker.state.value if breaker is not None else None

    def poll_rate_hz(self, device_id: str) -> float:
        """Deliveries per second, smoothed; falls towards 0 while a device delivers nothing."""
        st = self.stats[device_id]
        if not st.interval_s:
            return 0.0
        return 1.0 / max(st.interval_s, time.monotonic() - st.last_read)

    def status(self, device_id: str) -> str:
        """ok (its last delivery had a good value), failing (it had none) or unknown (nothing yet)."""
        st = self.stats[device_id]
        return "unknown" if not st.reads else "failing" if st.failing_since else "ok"

    def summary(self) -> dict[str, dict]:
        """Per device, what the state message carries (schemas/state.schema.json, device_health)."""
        out = {}
        self.said = {dev: self.status(dev) for dev in self.stats}
        self.changed.clear()
        for dev, st in self.stats.items():
            out[dev] = {"status": self.status(dev), "reads": st.reads, "errors": st.errors,
                        "poll_rate_hz": round(self.poll_rate_hz(dev), 3),
                        "last_good": iso_utc(st.last_good_ns) if st.last_good_ns else None,
                        "last_error": st.last_error or None, "breaker": self.breaker(dev)}
        return out


def install(agent) -> None:
    """agent.device_health, and a state message soon after a device turns failing or ok again (rate-limited), so
    the head-end sees a failing meter without waiting for the next state interval."""
    health = agent.device_health = DeviceHealth(agent.devices)

    async def tell() -> None:
        while True:
            await health.changed.wait()
            if agent.mqtt.connected.is_set():
                await agent._publish_state()   # its summary() clears `changed`
            else:
                health.changed.clear()         # the state at the next connect says it
            await asyncio.sleep(STATE_EVERY_S)

    agent.fleet.on_start("device_health", tell)
