"""The gateway as one of a fleet nobody visits (docs/fleet.md): remote configuration, signed software updates,
certificate rotation, local status and metrics. Each change runs as a transaction that ends healthy or rolled
back by itself; the command gate (edge/commands.py) hands the fleet commands to `Fleet.handle`."""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

log = logging.getLogger("gridedge.fleet")

Handler = Callable[..., Awaitable[None]]   # handler(cmd, principal)


class Fleet:
    """The fleet commands' handlers, by command type; a type nobody registered is refused, with its reason."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.handlers: dict[str, Handler] = {}

    def register(self, ctype: str, handler: Handler) -> None:
        self.handlers[ctype] = handler

    async def handle(self, cmd, who) -> None:
        handler = self.handlers.get(cmd.type)
        if handler is None:
            await self.agent.report(cmd.cmd_id, "rejected", f"{cmd.type} is not available on this gateway")
            return
        await handler(cmd, who)
