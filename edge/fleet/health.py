"""The health check every fleet change must pass (a configuration, a release, a certificate): the gateway is back
at its job, or the change is rolled back by itself.

Healthy means, within the window: connected to the broker; every device that answered before the change (and
every device the change added) has answered with a good reading since; and the control cycle runs. A device that
was already failing before the change does not hold the change back, and is said in the result.
"""
from __future__ import annotations

import asyncio
import time


class Health:
    def __init__(self, agent, *, since_ns: int | None = None, expected: set[str] | None = None) -> None:
        """since_ns: readings before it do not count (default: now); expected: the devices that must answer
        (default: every configured one; a change passes the ones that answered before it plus the new ones)."""
        self.agent = agent
        self.since_ns = time.time_ns() if since_ns is None else since_ns
        self.expected = set(agent.devices) if expected is None else set(expected) & set(agent.devices)
        self.cycles0 = agent.control.cycles

    def answered(self) -> set[str]:
        """Devices with a good reading since the change."""
        out = set()
        for point in self.agent.image:
            s = self.agent.image.get(point)
            if s is not None and s.good and s.ts_ns >= self.since_ns:
                out.add(point.split("/", 1)[0])
        return out

    def missing(self) -> str | None:
        """None when healthy now, else what is missing."""
        a = self.agent
        if a.mqtt is None or not a.mqtt.connected.is_set():
            return "not connected to the broker"
        silent = sorted(self.expected - self.answered())
        if silent:
            return f"no good reading since the change from {', '.join(silent)}"
        if a.control.cycles <= self.cycles0:
            return "the control cycle has not run"
        return None

    async def wait(self, window_s: float, every_s: float = 0.5) -> str | None:
        """None as soon as healthy; else, at the end of the window, what was still missing."""
        deadline = time.monotonic() + window_s
        while True:
            why = self.missing()
            if why is None:
                return None
            if time.monotonic() >= deadline:
                return why
            await asyncio.sleep(every_s)
