"""`configure`: a new configuration from the head-end, as a transaction that ends healthy or rolled back by itself
(docs/fleet.md, "Remote configuration").

1. accepted: the text inline, or downloaded by URL (whole duration and size bounded, its SHA-256 checked);
2. validated: the very validator of `gridedge check`, as if the bytes were the configuration file, or rejected
   with its own messages (file, key path, reason);
3. applied: the previous bytes and the transaction go to <storage.dir>/fleet/, the new bytes over the file
   atomically (new file, fsync, rename), then the agent re-executes itself with it;
4. healthy or rolled_back: the new process runs the health check (edge/fleet/health.py) within the window; if it
   fails, the previous bytes go back, the result says why, and the agent re-executes itself again. A process that
   dies at start twice with the new configuration is rolled back at its third start, before it runs.

The state message says which configuration runs (its hash, the version the head-end gave it) and flags a local
edit: a running configuration, or a file on disk, that is not the one the head-end set last.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import tomllib
from pathlib import Path

from .. import contract
from ..config import Config, ConfigError, config_from_bytes, load_config
from ..core.text import escape
from . import read_json, write_atomic, write_json
from .download import DownloadError, download
from .health import Health

log = logging.getLogger("gridedge.fleet.configure")

TXN_FILE = "configure.json"              # the change in progress, across the restarts
PREVIOUS_FILE = "configure-previous.toml"  # the bytes it rolls back to
MANAGED_FILE = "config.json"             # what the head-end set last: sha256, version, cmd_id
MAX_STARTS = 2                           # starts a new configuration gets to reach its health check
SECURITY_ROLE = "secadm"                 # IEC 62351-8: changes security settings, keys and roles
MAX_ERRORS = 50                          # validator messages carried in a result (each one line, bounded)


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _security_table(raw: bytes | None) -> dict | None:
    """The [security] table as data (comments and layout aside); None when the bytes are not TOML."""
    try:
        return tomllib.loads(raw.decode("utf-8")).get("security", {}) if raw is not None else None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _read(path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path is not None else None
    except OSError:
        return None


class ConfigState:
    """The configure handler, and what the state message says about the configuration (agent.fleet_config)."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.path: Path | None = agent.config.source
        raw = _read(self.path)
        self.running = raw if raw is not None and _sha(raw) == agent.config.sha256 else None  # for a rollback
        self.managed = read_json(agent.fleet.dir / MANAGED_FILE)
        txn = read_json(agent.fleet.dir / TXN_FILE)
        self.pending = txn if txn and txn.get("phase") == "applied" and txn.get("sha256") == agent.config.sha256 \
            else None   # the change on trial in this process, until its health check decides
        self.leaving = False  # rolled back: the file holds the previous configuration until the restart
        self._edits_said: set[str] = set()

    # -- what the state says ------------------------------------------------------------------
    def state(self) -> dict:
        """sha256 of the running configuration; its version (as the head-end named it) if it is the one the head-end
        set (or is trying: pending); local_edit when the running one or the file on disk is not that one;
        file_sha256 when the file on disk is not the running one (edited, not yet running)."""
        running, m = self.agent.config.sha256, self.pending or self.managed
        raw = _read(self.path)
        disk = _sha(raw) if raw is not None else None
        local_edit = bool(m) and not self.leaving and (running != m["sha256"] or (disk is not None and
                                                                                  disk != m["sha256"]))
        if local_edit:
            self._said_edit(disk if disk != m["sha256"] else running)
        return {"sha256": running, "version": m.get("version") if m and m["sha256"] == running else None,
                "cmd_id": m.get("cmd_id") if m and m["sha256"] == running else None, "local_edit": local_edit,
                "file_sha256": disk if disk != running else None, "pending": self.pending is not None}

    def _said_edit(self, sha: str) -> None:
        if sha in self._edits_said:
            return
        self._edits_said.add(sha)
        log.warning("the configuration was edited on the gateway (sha256 %s), not by the head-end (it set %s)",
                    sha[:12], (self.pending or self.managed)["sha256"][:12])
        self.agent.audit_event("config", change="local_edit", config_sha256=sha,
                               managed_sha256=(self.pending or self.managed)["sha256"])

    # -- the command --------------------------------------------------------------------------
    async def handle(self, cmd: contract.Command, who) -> None:
        a = self.agent
        if a.fleet.change is not None:
            await a.report(cmd.cmd_id, "rejected", f"another change is in progress: {a.fleet.change}")
            return
        if self.path is None:
            await a.report(cmd.cmd_id, "rejected", "this agent was not started from a configuration file")
            return
        a.fleet.change = f"configure {cmd.cmd_id}"
        try:
            await self._configure(cmd, who)
        finally:
            if a.fleet.exec_argv is None:
                a.fleet.change = None

    async def _configure(self, cmd: contract.Command, who) -> None:
        a, p = self.agent, cmd.params
        version = p.get("version")
        await a.report(cmd.cmd_id, "accepted", None, version=version)
        if "config" in p:
            raw = p["config"].encode()
        else:
            f = a.config.fleet
            try:
                raw = await download(p["url"], sha256=p["sha256"], max_bytes=contract.MAX_DOWNLOAD_BYTES,
                                     declared_size=p.get("size"), timeout_s=f.download_timeout_s, ca_file=f.ca_file)
            except DownloadError as exc:
                await a.report(cmd.cmd_id, "rejected", f"download of params.url refused: {exc}", version=version)
                return
        sha = _sha(raw)
        previous = self.running if self.running is not None else _read(self.path)
        new, errors = await asyncio.to_thread(self._validate, raw, previous, who)
        if errors:
            shown = errors[:MAX_ERRORS]
            await a.report(cmd.cmd_id, "rejected", f"the configuration does not validate ({len(errors)} problem"
                           f"{'s' if len(errors) > 1 else ''}): {errors[0]}", version=version, config_sha256=sha,
                           errors=[escape(e, 300) for e in shown])
            return
        if sha == a.config.sha256 and _read(self.path) == raw:
            self._commit(cmd.cmd_id, sha, version)
            await a.report(cmd.cmd_id, "healthy", "this configuration runs already", version=version,
                           config_sha256=sha)
            return
        await a.report(cmd.cmd_id, "validated", None, version=version, config_sha256=sha)
        window = p.get("health_window_s", new.fleet.health_window_s)
        before = {d for d, st in a.device_health.stats.items() if a.device_health.status(d) == "ok"}
        old_ids, new_ids = set(a.devices), {d.id for d in new.devices}
        d = a.fleet.dir
        write_atomic(d / PREVIOUS_FILE, previous)
        write_json(d / TXN_FILE, {"cmd_id": cmd.cmd_id, "sha256": sha, "version": version, "phase": "applied",
                                  "previous_sha256": _sha(previous), "window_s": window, "starts": 0,
                                  "principal": who.id if who is not None else None,
                                  "expected": sorted((before & new_ids) | (new_ids - old_ids))})
        try:
            write_atomic(self.path, raw)
        except OSError as exc:
            (d / TXN_FILE).unlink(missing_ok=True)
            await a.report(cmd.cmd_id, "failed", f"cannot write {self.path}: {exc.strerror or exc}", version=version)
            return
        a.audit_event("config", change="applied", cmd_id=cmd.cmd_id, config_sha256=sha, version=version,
                      previous_sha256=_sha(previous), issuer=who.id if who is not None else None)
        await a.report(cmd.cmd_id, "applied", None, version=version, config_sha256=sha, health_window_s=window)
        a.fleet.reexec(f"configuration {sha[:12]} applied ({cmd.cmd_id})")

    def _validate(self, raw: bytes, previous: bytes | None, who) -> tuple[Config | None, list[str]]:
        """The validator of `gridedge check`, as if the bytes were the file; then what a remote change may not do,
        and what only a security administrator may do: change [security] (else an engineer could make itself one)."""
        try:
            new = config_from_bytes(raw, self.path)
        except ConfigError as exc:
            return None, exc.errors
        old, errors = self.agent.config, []
        if new.gateway.id != old.gateway.id:
            errors.append(f"{self.path}: gateway.id: a remote configuration cannot rename the gateway (its certificate "
                          f"and topics are its identity): got {new.gateway.id!r}, this is {old.gateway.id!r}")
        if new.storage.dir != old.storage.dir:
            errors.append(f"{self.path}: storage.dir: a remote configuration cannot move the state directory (the "
                          f"outbox and this change live there): got {str(new.storage.dir)!r}, it is "
                          f"{str(old.storage.dir)!r}")
        roles = tuple(getattr(who, "roles", ()))
        if SECURITY_ROLE not in roles and _security_table(raw) != _security_table(previous):
            errors.append(f"{self.path}: security: changing who may command the gateway (issuers, keys, roles) needs "
                          f"the {SECURITY_ROLE} role; {getattr(who, 'id', 'the sender')} has "
                          f"{', '.join(roles) or 'no role'}")
        return new, errors

    # -- after the restart --------------------------------------------------------------------
    async def resume(self) -> None:
        """The pending change, if any: report a rollback done before this start, or run the health check."""
        a = self.agent
        txn = read_json(a.fleet.dir / TXN_FILE)
        if txn is None:
            return
        cmd_id, version = txn["cmd_id"], txn.get("version")
        if txn["phase"] == "rolled_back":
            if not txn.get("reported"):
                await a.report(cmd_id, "rolled_back", txn["reason"], version=version, config_sha256=txn["sha256"])
            self._finish()
            return
        if a.config.sha256 != txn["sha256"]:  # the file changed under the change (by hand, or a rollback cut short)
            status = "rolled_back" if a.config.sha256 == txn["previous_sha256"] else "failed"
            await a.report(cmd_id, status, "the gateway restarted with another configuration before the health check "
                           "decided", version=version, config_sha256=txn["sha256"])
            self._finish()
            return
        a.fleet.change = f"configure {cmd_id}"
        t0 = time.monotonic()
        why = await Health(a, expected=set(txn["expected"])).wait(txn["window_s"])
        if why is None:
            self._commit(cmd_id, txn["sha256"], version)
            self.pending = None
            self._finish()
            a.fleet.change = None
            a.audit_event("config", change="healthy", cmd_id=cmd_id, config_sha256=txn["sha256"], version=version)
            await a.report(cmd_id, "healthy", None, version=version, config_sha256=txn["sha256"],
                           healthy_after_s=round(time.monotonic() - t0, 1))
            await a._publish_state()   # the head-end sees the version now, not at the next state interval
            return
        reason = f"not healthy within {txn['window_s']:g} s: {why}; back on the previous configuration"
        txn = self._restore(txn, reason)
        await a.report(cmd_id, "rolled_back", reason, version=version, config_sha256=txn["sha256"])
        write_json(a.fleet.dir / TXN_FILE, dict(txn, reported=True))
        a.fleet.reexec(f"configuration {txn['sha256'][:12]} rolled back ({cmd_id})")

    def _restore(self, txn: dict, reason: str) -> dict:
        """The previous bytes over the file, and the transaction marked rolled back (not yet reported)."""
        d = self.agent.fleet.dir
        self.leaving = True
        write_atomic(self.path, (d / PREVIOUS_FILE).read_bytes())
        txn = dict(txn, phase="rolled_back", reason=reason, reported=False)
        write_json(d / TXN_FILE, txn)
        self.agent.audit_event("config", change="rolled_back", cmd_id=txn["cmd_id"], config_sha256=txn["sha256"],
                               reason=reason)
        log.error("configuration %s (%s) rolled back: %s", txn["sha256"][:12], escape(txn["cmd_id"]), reason)
        return txn

    def _commit(self, cmd_id: str, sha: str, version: str | None) -> None:
        self.managed = {"sha256": sha, "version": version, "cmd_id": cmd_id, "ts": contract.iso_utc(time.time_ns())}
        write_json(self.agent.fleet.dir / MANAGED_FILE, self.managed)

    def _finish(self) -> None:
        for name in (TXN_FILE, PREVIOUS_FILE):
            (self.agent.fleet.dir / name).unlink(missing_ok=True)


def at_start(config: Config) -> Config:
    """Before the agent is built: a new configuration whose process died at start MAX_STARTS times is rolled back
    here (systemd restarts a crashing agent; nothing else would). Returns the configuration to run."""
    d = config.storage.dir / "fleet"
    txn = read_json(d / TXN_FILE)
    if txn is None or txn.get("phase") != "applied" or txn.get("sha256") != config.sha256 or config.source is None:
        return config
    txn["starts"] = txn.get("starts", 0) + 1
    if txn["starts"] <= MAX_STARTS:
        write_json(d / TXN_FILE, txn)
        return config
    reason = (f"the agent did not come up with it: {MAX_STARTS} starts ended before the health check decided; back "
              f"on the previous configuration")
    write_atomic(config.source, (d / PREVIOUS_FILE).read_bytes())
    write_json(d / TXN_FILE, dict(txn, phase="rolled_back", reason=reason, reported=False))
    log.error("configuration %s (%s) rolled back: %s", config.sha256[:12], escape(txn["cmd_id"]), reason)
    return load_config(config.source)


def install(agent) -> None:
    agent.fleet_config = state = ConfigState(agent)
    agent.fleet.register("configure", state.handle)
    agent.fleet.on_start("configure", state.resume)
