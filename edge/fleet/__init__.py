"""The gateway as one of a fleet nobody visits (docs/fleet.md): remote configuration, signed software updates,
certificate rotation, local status and metrics. Each change runs as a transaction that ends healthy or rolled
back by itself; the command gate (edge/commands.py) hands the fleet commands to `Fleet.handle`.

A change that needs a new process stores its state in `<storage.dir>/fleet/` and its step result in the outbox,
then asks for a re-execution in place (`Fleet.reexec`): the agent stops cleanly and `gridedge run` execs the same
command line (or the new release's), keeping the process id systemd watches.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Awaitable, Callable

log = logging.getLogger("gridedge.fleet")

Handler = Callable[..., Awaitable[None]]   # handler(cmd, principal)
Starter = Callable[[], Awaitable[None]]    # runs as a task of the agent from its start (a pending change's check)


class Fleet:
    """The fleet commands' handlers, by command type; a type nobody registered is refused, with its reason."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.handlers: dict[str, Handler] = {}
        self.starters: list[tuple[str, Starter]] = []
        self.exec_argv: list[str] | None = None   # set by reexec(): what `gridedge run` execs once the agent stopped

    def register(self, ctype: str, handler: Handler) -> None:
        self.handlers[ctype] = handler

    def on_start(self, name: str, starter: Starter) -> None:
        self.starters.append((name, starter))

    def start(self) -> list[asyncio.Task]:
        """The starters as tasks (the agent cancels them when it stops)."""
        return [asyncio.create_task(s(), name=f"fleet:{name}") for name, s in self.starters]

    async def handle(self, cmd, who) -> None:
        handler = self.handlers.get(cmd.type)
        if handler is None:
            await self.agent.report(cmd.cmd_id, "rejected", f"{cmd.type} is not available on this gateway")
            return
        await handler(cmd, who)

    def reexec(self, why: str, argv: list[str] | None = None) -> None:
        """Stop the agent cleanly, then exec argv (default: this process's own command line) in its place."""
        self.exec_argv = list(argv) if argv else [sys.executable, *sys.orig_argv[1:]]
        log.warning("restarting in place: %s", why)
        self.agent.stop_event.set()


def exec_in_place(argv: list[str]) -> None:
    """Replace this process (same pid, so systemd keeps watching it); returns only if the exec failed."""
    logging.shutdown()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        print(f"gridedge: cannot re-execute {argv[0]}: {exc}", file=sys.stderr)
