"""Signed software updates with A/B install and rollback (docs/fleet.md, "Software updates").

An `update` command names a version. Its steps, each a result under the command's cmd_id:
  accepted     the gateway takes it (one change at a time, never an older release than the running one)
  validated    the repository's metadata and the release verified (TUF), installed beside the running release,
               and the new release accepts this gateway's configuration (`gridedge check`)
  applied      `current` points at it; the agent stops cleanly and re-executes through boot.py
  healthy      the new release passed the health check (gridedge.fleet.health) within the window
  rolled_back  it failed the check, or did not come up (boot.py counted its starts): the previous release runs
               again and says which version runs and why
A refusal on the way is `rejected` (not to be trusted: bad signatures, expired or older metadata, a tampered
artefact, a downgrade) or `failed` (not finished: network, disk, pip), the running release untouched.

The download and its verification run in a worker thread: polling, control and the uplink go on meanwhile.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import threading
import time

from packaging.version import InvalidVersion, Version

from .. import __version__
from ..core.text import escape
from ..core.utc import iso_utc
from .boot import TrialError
from .health import Health
from .release import Releases, ReleaseError
from .repository import UpdateRefused, clock_synchronised, fetch_release, trusted_time

log = logging.getLogger("gridedge.fleet.update")

MAX_STARTS = 2          # starts of a new release that may end without a verdict before boot.py rolls it back
ANSWERED_WITHIN_S = 60  # the devices the new release must read: those that answered this recently


class ReleaseUpdates:
    """The `update` command and, at start, the verdict on a release on trial."""

    def __init__(self, agent, cfg) -> None:
        self.agent, self.cfg = agent, cfg
        self.releases = Releases(cfg.releases_dir)
        self.work = agent.config.storage.dir / "fleet" / "update"    # TUF's cache, the time floor, downloads
        self.jobs: asyncio.Queue = asyncio.Queue()
        agent.fleet.register("update", self.handle)
        agent.fleet.on_start("release", self.resume)
        agent.fleet.on_start("release-updates", self._worker)

    # -- the command ---------------------------------------------------------------------------
    async def handle(self, cmd, who) -> None:
        """Accepted or refused at once; the work is done by a task of its own (`_worker`), so the command loop stays
        free for what comes meanwhile (a curtailment during a download is executed at once)."""
        version = cmd.params["version"]
        why = self._refusal(version)
        if why:
            await self.agent.report(cmd.cmd_id, "rejected", why, version=version, running=__version__)
            return
        self.agent.fleet.change = f"update {cmd.cmd_id}"   # one change at a time, a configuration's or a release's
        await self.agent.report(cmd.cmd_id, "accepted", None, version=version, running=__version__)
        self.jobs.put_nowait((cmd, version))

    async def _worker(self) -> None:
        """One update at a time. A task of the agent: when it stops, the download or install in progress is cut
        off and said (the result waits in the outbox), the running release untouched."""
        while True:
            cmd, version = await self.jobs.get()
            say = {"version": version, "running": __version__}
            try:
                await self._update(cmd, version)
            except asyncio.CancelledError:
                await self.agent.report(cmd.cmd_id, "failed", "the agent stopped before the update was done; the "
                                        "running release is unchanged", **say)
                raise
            except Exception as exc:   # a bug or a machine fault: said, the running release untouched
                log.exception("update %s failed", escape(cmd.cmd_id))
                await self.agent.report(cmd.cmd_id, "failed", f"the gateway failed updating ({type(exc).__name__}: "
                                        f"{escape(exc, 200)}; see its log)", **say)
            finally:
                if self.agent.fleet.exec_argv is None:
                    self.agent.fleet.change = None

    def _refusal(self, version: str) -> str | None:
        if self.agent.fleet.change is not None:
            return f"another change is in progress: {self.agent.fleet.change}"
        try:
            trial = self.releases.trial()
        except TrialError as exc:
            return f"the trial record in {self.releases.root} is unreadable ({exc})"
        if trial is not None:
            return f"release {trial['version']} is on trial ({trial['state']})"
        if self.releases.current != __version__:
            return (f"this agent ({__version__}) is not the current release of {self.releases.root} "
                    f"({self.releases.current or 'none'}): it was not started from there")
        try:
            new, running = Version(version), Version(__version__)
        except InvalidVersion:
            return f"{escape(version, 80)} is not a release version (PEP 440)"
        if new == running:
            return f"release {version} is running already"
        if new < running:
            return (f"release {version} is older than the running {__version__}: a downgrade is refused (a rollback "
                    f"attack; a fix for a bad release is published under a newer version)")
        return None

    async def _update(self, cmd, version: str) -> None:
        a, cfg = self.agent, self.cfg
        say = {"version": version, "running": __version__}
        issued_s = cmd.issued_ns / 1e9 if cmd.issued_ns else None
        try:
            at_s, basis = trusted_time(self.work / "time_floor", issued_s=issued_s, synced=clock_synchronised(),
                                       now_s=time.time())
            at = dt.datetime.fromtimestamp(at_s, dt.timezone.utc)
            path, digest = await self._fetch(
                version, url=cfg.repository, root=cfg.root.read_bytes(), cache=self.work / "tuf",
                dest=self.work / "download", ca_file=a.config.fleet.ca_file, timeout_s=cfg.download_timeout_s,
                max_bytes=int(cfg.max_release_mb * 2**20), at=at)
        except UpdateRefused as r:
            reason = r.reason + (f" (judged at {iso_utc(int(at_s * 1e9))}: {basis})" if "expired" in r.reason else "")
            await a.report(cmd.cmd_id, r.status, reason, step=r.step, **say)
            return
        except OSError as exc:   # the trusted root or the storage cannot be read or written
            await a.report(cmd.cmd_id, "failed", f"{type(exc).__name__}: {escape(exc, 300)}", step="metadata", **say)
            return
        try:
            await self.releases.install(path, version)
            await self.releases.check(version, a.config.source)
        except ReleaseError as exc:
            await asyncio.to_thread(Releases._remove, self.releases.path(version))
            await a.report(cmd.cmd_id, exc.status, str(exc), step="install", **say)
            return
        finally:
            path.unlink(missing_ok=True)
        await a.report(cmd.cmd_id, "validated", None, sha256=digest, **say)
        expected = Health(a, since_ns=time.time_ns() - ANSWERED_WITHIN_S * 10**9).answered()
        window = cmd.params.get("health_window_s", a.config.fleet.health_window_s)
        self.releases.begin_trial(version, {"cmd_id": cmd.cmd_id, "max_starts": MAX_STARTS, "window_s": window,
                                            "expected": sorted(expected), "reason": None})
        a.audit_event("release", cmd_id=cmd.cmd_id, step="applied", version=version, previous=__version__,
                      sha256=digest)
        await a.report(cmd.cmd_id, "applied", None, previous=__version__, **say)
        a.fleet.reexec(f"release {version} installed", self.releases.restart_argv(sys.argv[1:]))

    @staticmethod
    async def _fetch(version: str, **kw):
        """fetch_release in a worker thread; cancelled (the agent stops), the download is cut off at once."""
        abort = threading.Event()
        try:
            return await asyncio.to_thread(fetch_release, version, abort=abort, **kw)
        except asyncio.CancelledError:
            abort.set()
            raise

    # -- at start: the verdict on a release on trial ----------------------------------------------
    async def resume(self) -> None:
        a = self.agent
        try:
            trial = self.releases.trial()
        except TrialError as exc:
            log.error("release trial record unreadable (%s): boot.py rolls back at the next start", escape(exc))
            return
        if trial is None:
            return
        say = {"version": trial["version"], "running": __version__}
        if trial["state"] == "rolled_back" or trial["version"] != __version__:
            reason = trial["reason"] or f"release {trial['version']} was on trial, {__version__} started instead"
            await self._close(trial, "rolled_back", reason, **say)
            return
        started = time.time_ns()
        a.fleet.change = f"update {trial.get('cmd_id')} (on trial)"
        why = await Health(a, since_ns=started, expected=set(trial.get("expected", ()))).wait(
            float(trial.get("window_s") or a.config.fleet.health_window_s))
        if why is None:
            a.fleet.change = None
            await self._close(trial, "healthy", None, previous=trial["previous"], **say)
            return
        reason = f"release {__version__} failed its health check: {why}; back to {trial['previous']}"
        log.error("%s", reason)
        self.releases.roll_back(reason)
        a.fleet.reexec(reason, self.releases.restart_argv(sys.argv[1:]))

    async def _close(self, trial: dict, status: str, reason: str | None, **detail) -> None:
        """The verdict: reported, audited, the trial record removed, the releases no link names removed."""
        a = self.agent
        self.releases.end_trial()
        gone = await asyncio.to_thread(self.releases.prune)
        a.audit_event("release", cmd_id=trial.get("cmd_id"), step=status, reason=reason, removed=gone or None,
                      **detail)
        await a.report(trial.get("cmd_id"), status, reason, **detail)


def install(agent) -> None:
    """Updates on this gateway when [fleet.update] says where from (docs/fleet.md); without it `update` is refused."""
    cfg = agent.config.fleet.update
    if cfg is not None:
        ReleaseUpdates(agent, cfg)

