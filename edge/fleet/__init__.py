"""The gateway as one of a fleet nobody visits (docs/fleet.md): remote configuration, signed software updates,
certificate rotation, local status and metrics. Each change runs as a transaction that ends healthy or rolled
back by itself; the command gate (edge/commands.py) hands the fleet commands to `Fleet.handle`.

A change that needs a new process stores its state in `<storage.dir>/fleet/` and its step result in the outbox,
then asks for a re-execution in place (`Fleet.reexec`): the agent stops cleanly and `gridedge run` execs the same
command line (or the new release's), keeping the process id systemd watches.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
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
        self.change: str | None = None  # the change in progress ("configure cmd-7"): one at a time

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

    @property
    def dir(self) -> Path:
        """Where pending changes wait across a restart: <storage.dir>/fleet (made on first use)."""
        d = self.agent.config.storage.dir / "fleet"
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    def reexec(self, why: str, argv: list[str] | None = None) -> None:
        """Stop the agent cleanly, then exec argv (default: this process's own command line) in its place."""
        self.exec_argv = list(argv) if argv else [sys.executable, *sys.orig_argv[1:]]
        log.warning("restarting in place: %s", why)
        self.agent.stop_event.set()


def exec_in_place(argv: list[str]) -> None:
    """Replace this process (same pid, so systemd keeps watching it); returns only if the exec failed."""
    from ..service import RESTARTED_ENV

    os.environ[RESTARTED_ENV] = "1"
    logging.shutdown()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        print(f"gridedge: cannot re-execute {argv[0]}: {exc}", file=sys.stderr)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """New file beside it, fsync, rename over, fsync the directory: after a power cut `path` holds the old bytes or
    the new, never a mix. The mode is kept from the file it replaces (else `mode`, else 0600)."""
    path = Path(path)
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask narrowed it at creation
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json(path: Path) -> dict | None:
    """A state file of ours, or None when there is none; a damaged one is logged and treated as none."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("fleet: %s is unreadable (%s): ignored", path, exc)
        return None
    return doc if isinstance(doc, dict) else None


def write_json(path: Path, doc: dict) -> None:
    write_atomic(path, json.dumps(doc, sort_keys=True).encode())
