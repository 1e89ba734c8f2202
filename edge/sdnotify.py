"""systemd's notify protocol without a dependency: one datagram on the Unix socket named by $NOTIFY_SOCKET.

The agent says READY=1 once it is connected and polling, WATCHDOG=1 from its main loop while the loop is
healthy (so a wedged event loop is restarted by systemd after WatchdogSec), STOPPING=1 on a clean stop, and a
STATUS= line a person sees in `systemctl status`. Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("gridedge.sdnotify")


#: What systemd gives the service's main process alone. A child that inherits them speaks for the service: systemd's
#: own tools (timedatectl, which the clock reader runs) send ERRNO= to $NOTIFY_SOCKET when they fail.
SERVICE_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_env(environ: dict | None = None) -> dict[str, str]:
    """The environment for a child process: the service's, without its notify socket and watchdog."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k not in SERVICE_ONLY}


class Notifier:
    def __init__(self, environ: dict | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        if self.address and self.address.startswith("@"):  # abstract namespace
            self.address = "\0" + self.address[1:]
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        #: how often to pet the watchdog (half its period, as sd_watchdog_enabled(3) advises); None = no watchdog
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send "KEY=value" lines in one datagram; False (and one debug line) if it could not be sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", lines, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *(["STATUS=" + status] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """The agent re-executes itself in place (a fleet change): the same pid says READY=1 again when it is back."""
        return self.notify("RELOADING=1", "WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text.replace("\n", " "))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
