"""The agent as a systemd service: READY when it is doing its job, the watchdog petted only while it is healthy.

READY=1 goes out once the uplink is connected and every device has been polled at least once, or after
READY_AFTER_S whatever the uplink does: a gateway whose cellular link is down at boot still reads, controls and
stores, and must not be restarted in a loop for it (its STATUS says it runs offline). WATCHDOG=1 is sent from the
event loop, and only while the agent's own tasks are alive and the control cycle advances: a wedged loop or a
dead task stops the petting, and systemd restarts the agent after WatchdogSec (docs/security.md, FR7).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from .sdnotify import Notifier

log = logging.getLogger("gridedge.service")

READY_AFTER_S = 60.0
#: Set by a process that re-executes itself in place (edge/fleet): systemd's watchdog keeps running across the exec
#: (the service is reloading, not starting), so the new process pets it before it is READY too.
RESTARTED_ENV = "GRIDEDGE_RESTARTED_IN_PLACE"


class Service:
    def __init__(self, agent, notifier: Notifier | None = None) -> None:
        self.agent = agent
        self.notifier = notifier or Notifier()
        self.ready = False
        self.unhealthy: str | None = None
        self.restarted = os.environ.pop(RESTARTED_ENV, "") == "1"

    def polled_all(self) -> bool:
        seen = {p.split("/", 1)[0] for p in self.agent.image}
        return all(d in seen for d in self.agent.devices)

    def health(self, tasks) -> str | None:
        """None while healthy, else why not: a task of the agent that ended, or a control cycle that stopped."""
        for t in tasks:
            if t.done():
                return f"task {t.get_name()} ended"
        ctl = self.agent.control
        if ctl._task is not None and ctl._task.done():
            return "the control cycle ended"
        return None

    async def run(self, tasks) -> None:
        """Until cancelled: READY once, then WATCHDOG while healthy. Without systemd it only waits."""
        n = self.notifier
        if not n.enabled:
            return
        t0 = time.monotonic()
        period = min(n.watchdog_s or 1.0, 1.0)
        last_cycles, advanced = -1, t0
        while True:
            if not self.ready:
                up = self.agent.mqtt is not None and self.agent.mqtt.connected.is_set()
                if (up and self.polled_all()) or time.monotonic() - t0 >= READY_AFTER_S:
                    self.ready = True
                    status = "connected, every device polled" if up else "running offline: the broker is not reachable"
                    n.ready(status)
                    log.info("systemd: ready (%s)", status)
                elif self.restarted and n.watchdog_s is not None:
                    n.watchdog()
            if n.watchdog_s is not None and self.ready:  # before READY, systemd's TimeoutStartSec applies
                why = self.health(tasks)
                ctl, now = self.agent.control, time.monotonic()
                if ctl.cycles != last_cycles:
                    last_cycles, advanced = ctl.cycles, now
                elif why is None and ctl._task is not None and now - advanced > 3 * ctl.period() + 1.0:
                    why = f"the control cycle has not run for {now - advanced:.0f} s"
                if why is None:
                    n.watchdog()
                elif why != self.unhealthy:
                    log.error("systemd watchdog: not petted any more (%s); systemd will restart the agent", why)
                    n.status(f"unhealthy: {why}")
                self.unhealthy = why
                await asyncio.sleep(n.watchdog_s)
            elif self.ready:     # no watchdog: nothing more to say
                return
            else:
                await asyncio.sleep(period)
