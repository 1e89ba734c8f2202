"""A fleet larger than one process holds (fleet_sim.MAX_PER_PROCESS): shards of it in worker processes.

Each worker runs a fleet_sim.Fleet of its own gateways and answers the coordinator's calls over a pipe, so a
bench can drive a thousand gateways through the same phases (stop beating, store a backlog, read the outboxes)
as one Fleet. The certificates are issued once, in the coordinator, and the workers reuse them (the Pki travels
with its cache of issued ones).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
from collections.abc import Sequence
from pathlib import Path

from .fleet_sim import MAX_PER_PROCESS, Fleet
from .pki import Pki


def _worker(conn, workdir: Path, urls: list[str], pki: Pki | None, n: int, first: int, options: dict) -> None:
    """A worker process: build and start its Fleet, then serve calls until "stop"."""
    logging.basicConfig(level=logging.ERROR)  # a storm would log a warning per gateway and kind of failure
    async def serve() -> None:
        fleet = Fleet(workdir, urls, pki, n, first=first, **options)
        fleet.rss0_mb = _usage(fleet)[0]  # the worker before its gateways: Python and the imports
        try:
            await fleet.start(900)
            conn.send(("ready", fleet.certificates_s))
            while True:
                name, args = await asyncio.to_thread(conn.recv)
                if name == "stop":
                    break
                conn.send(_CALLS[name](fleet, *args))
        finally:
            await fleet.stop()
        conn.send("stopped")

    try:
        asyncio.run(serve())
    except Exception as exc:  # the coordinator raises it with the shard's name
        conn.send(("error", repr(exc)))


def _usage(fleet: Fleet) -> tuple[float, float, float]:
    """(RSS MiB, CPU seconds, RSS MiB before the gateways) of this worker."""
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    r = resource.getrusage(resource.RUSAGE_SELF)
    return rss, r.ru_utime + r.ru_stime, getattr(fleet, "rss0_mb", rss)


def _set_beating(fleet: Fleet, on: bool) -> None:
    fleet.beating = on


_CALLS = {
    "connected": lambda fleet: fleet.connected(),
    "pending": lambda fleet: fleet.pending(),
    "backlog": lambda fleet, duration_s: fleet.backlog(duration_s),
    "beating": _set_beating,
    "last_seqs": lambda fleet: {gw.gateway_id: gw.outbox.stats()["next_seq"]["telemetry"] - 1
                                for gw in fleet.gateways},
    "usage": _usage,
}


class ShardedFleet:
    """n gateways in ceil(n / per_process) worker processes; calls go to every shard and return their answers."""

    def __init__(self, workdir: Path, urls: str | Sequence[str], pki: Pki | None, n: int, *,
                 per_process: int = MAX_PER_PROCESS, **fleet_options) -> None:
        self.workdir, self.pki, self.n = Path(workdir), pki, n
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.per_process = min(per_process, MAX_PER_PROCESS)
        self.options = fleet_options
        self.ids: list[str] = []
        self.certificates_s = 0.0
        self._shards: list[tuple[multiprocessing.Process, object]] = []

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no inherited event loop, threads or file descriptors
        prefix = self.options.get("id_prefix", "gw-sim-")
        self.ids = [f"{prefix}{i:05d}" for i in range(self.n)]
        if self.pki:
            import time
            t0 = time.perf_counter()
            await asyncio.to_thread(lambda: [self.pki.client(i) for i in self.ids])
            self.certificates_s = time.perf_counter() - t0
        for first in range(0, self.n, self.per_process):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, daemon=True, args=(
                theirs, self.workdir / f"shard-{first}", self.urls, self.pki,
                min(self.per_process, self.n - first), first, self.options))
            proc.start()
            self._shards.append((proc, mine))
        for answer in await asyncio.gather(*(asyncio.to_thread(conn.recv) for _, conn in self._shards)):
            if answer[0] != "ready":
                raise RuntimeError(f"a fleet shard did not start: {answer}")

    async def call(self, name: str, *args) -> list:
        for _, conn in self._shards:
            conn.send((name, args))
        answers = await asyncio.gather(*(asyncio.to_thread(conn.recv) for _, conn in self._shards))
        for a in answers:
            if isinstance(a, tuple) and a and a[0] == "error":
                raise RuntimeError(f"fleet shard failed: {a[1]}")
        return answers

    async def connected(self) -> int:
        return sum(await self.call("connected"))

    async def pending(self) -> int:
        return sum(await self.call("pending"))

    async def wait(self, count, target, timeout_s: float, what: str, poll_s: float = 0.5) -> float:
        """Wait until await count() == target (a method of this class); returns the seconds it took."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while await count() != target:
            if loop.time() - t0 > timeout_s:
                raise TimeoutError(f"{what}: not within {timeout_s} s")
            await asyncio.sleep(poll_s)
        return loop.time() - t0

    async def stop(self) -> None:
        for proc, conn in self._shards:
            try:
                conn.send(("stop", ()))
            except OSError:
                pass
        for proc, _ in self._shards:
            await asyncio.to_thread(proc.join, 60)
            if proc.is_alive():
                proc.kill()
        self._shards.clear()
