"""Certificate rotation and renewal (docs/fleet.md, "Certificate rotation"): the gateway's client certificate
changes without a person, and a bad one never leaves the gateway cut off.

A rotation is a transaction with one rotation id (the rotate_certificate's cmd_id, or `renew-...` when the gateway
starts it itself at `fleet.certificate.renew_at` of its certificate's lifetime):
1. a new key is made on the gateway and never leaves it; its request (CSR) goes out on <prefix>csr, or to the EST
   server (`simplereenroll`, est.py);                                                     -> accepted
2. the answer (an install_certificate, or the EST response) is checked: a certificate, of that key, for this
   gateway, valid now, for client authentication, issued by a trusted CA (identity.py)    -> validated
3. kept aside, it must pass a test connection to the broker (another client id: the live session stays up);
4. swapped in with one rename, the uplink reconnects with it                              -> applied
5. the gateway must be connected with it (and controlling) within the health window     -> healthy
   or the previous identity comes back by the same rename                                 -> rolled_back.
A refused answer, a refused test connection or no answer in time ends it as failed, the gateway unchanged.
The transaction is journalled in <storage.dir>/fleet/certificate.json, so a restart half-way resumes it: an applied
identity is checked again at start (and rolled back before connecting after a second failed start).
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import secrets
import ssl
import time
from dataclasses import asdict, dataclass, fields

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import contract
from ..config_files import uplink_tls_issues
from ..core.text import escape
from ..mqtt import MqttClient, MqttError, tls_context
from ..security import certs
from . import est, write_json
from .health import Health
from .identity import NAME, IdentityStore, Refused, check_answer, common_name, describe, make_csr, new_key_like, \
    read_anchors, read_chain

log = logging.getLogger("gridedge.fleet.certificate")

TOPIC_CSR = "csr"
SCHEMA_CSR = "gridedge.csr/1"
TICK_S = 60.0         # renewal and answer deadlines are looked at this often (at most)
TEST_CONNECT_S = 20.0  # a test connection that takes longer has failed
MAX_STARTS = 2         # starts of an applied identity that never proved healthy, before it is rolled back at start


@dataclass
class Rotation:
    """The journal: one rotation in progress."""

    id: str
    method: str
    state: str           # "requested": waiting for the certificate; "applied": switched, not yet proved healthy
    new: str             # the new identity's name (identity.py)
    started: float       # s since the epoch
    deadline: float      # an answer after this is too late
    window_s: float
    previous: str | None = None
    starts: int = 0      # agent starts since it was applied


class CertificateRotation:
    def __init__(self, agent) -> None:
        self.agent, self.fleet = agent, agent.config.fleet
        self.settings = self.fleet.certificate  # [fleet.certificate]
        up = agent.config.uplink
        self.store = IdentityStore(up.cert_file, up.key_file) if up.tls and up.cert_file and up.key_file else None
        self.journal = agent.config.storage.dir / "fleet" / "certificate.json"
        self.pending: Rotation | None = self._load()
        self.last_failure: dict | None = None
        self._retry_at = 0.0  # no renewal of its own before this (clock())
        self.clock = time.time  # s since the epoch: what renewal and deadlines are judged by (tests set it)
        self._jobs: asyncio.Queue = asyncio.Queue()
        self._busy = False
        self._rolled_back_at_start: tuple[str, str] | None = None  # reported once the uplink runs
        agent.fleet.register("rotate_certificate", self.rotate)
        agent.fleet.register("install_certificate", self.install)
        agent.fleet.on_start("certificate", self.run)
        self._recover()
        self._refresh()

    # -- the journal ---------------------------------------------------------------------------
    def _load(self) -> Rotation | None:
        """The rotation in progress, or None; a journal that is not one (a damaged disk, a hand edit) is set aside
        and said, and the identity in use stays."""
        try:
            data = self.journal.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("certificate journal %s unreadable (%s): no rotation resumed", self.journal, exc)
            return None
        try:
            return parse_journal(data)
        except ValueError as exc:
            log.error("certificate journal %s set aside: %s", self.journal, escape(exc))
            os.replace(self.journal, self.journal.with_suffix(".bad"))
            return None

    def _save(self, rot: Rotation | None) -> None:
        self.pending = rot
        if rot is None:
            self.journal.unlink(missing_ok=True)
            return
        self.journal.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json(self.journal, asdict(rot))

    def _recover(self) -> None:
        """At start, before the uplink connects: an applied identity that did not prove healthy in MAX_STARTS starts
        (it may be what stops the agent) goes back now; one that was being switched to is switched to."""
        rot = self.pending
        if rot is None or rot.state != "applied" or self.store is None:
            return
        rot.starts += 1
        self._save(rot)
        if rot.starts > MAX_STARTS:
            reason = f"the agent started {rot.starts - 1} times with the new certificate without proving healthy; " \
                     f"back on the previous certificate"
            self._restore(rot)
            self._finish(rot, "rolled_back", reason)
            self._rolled_back_at_start = (rot.id, reason)
        elif (cur := self.store.current()) is None or cur.name != rot.new:
            self.store.switch(self.store.identity(rot.new))  # the journal said applied: the switch comes first

    # -- commands --------------------------------------------------------------------------------
    async def rotate(self, cmd, who) -> None:
        method, window = cmd.params["method"], cmd.params.get("health_window_s")
        why = self._cannot(method)
        if why:
            await self.agent.report(cmd.cmd_id, "rejected", why)
            return
        await self._start(cmd.cmd_id, method, window)

    async def install(self, cmd, who) -> None:
        p, rot = cmd.params, self.pending
        if rot is None or rot.id != p["rotation_id"] or rot.state != "requested" or self._busy:
            now = f"rotation {rot.id} is {rot.state}" if rot else "none is in progress"
            await self.agent.report(cmd.cmd_id, "rejected", f"params.rotation_id: no rotation {p['rotation_id']!r} "
                                                            f"waits for a certificate ({now})")
            return
        if rot.method != "mqtt":
            await self.agent.report(cmd.cmd_id, "rejected", f"rotation {rot.id} asks the EST server, not MQTT")
            return
        try:
            chain = read_chain(p["certificate"].encode())
            leaf = self._check(rot, chain)
        except (Refused, OSError, ValueError) as exc:
            await self.agent.report(cmd.cmd_id, "rejected", f"params.certificate: {exc}")
            await self._fail(rot, f"the answer {cmd.cmd_id} was refused: {exc}")
            return
        await self.agent.report(cmd.cmd_id, "accepted", None, rotation_id=rot.id)
        self._busy = True
        self._jobs.put_nowait(lambda: self._apply(rot, chain, leaf, p.get("health_window_s")))

    def _cannot(self, method: str) -> str | None:
        if self.store is None:
            return "the uplink has no client certificate to rotate (mqtts:// with cert_file and key_file)"
        if method == "est" and not self.settings.est_url:
            return "params.method: est needs fleet.certificate.est_url"
        if self._busy or (self.pending is not None and self.pending.state != "requested"):
            return f"rotation {self.pending.id if self.pending else ''} is being applied: wait for its result"
        return None

    # -- the steps -------------------------------------------------------------------------------
    async def _start(self, rid: str, method: str, window: float | None) -> None:
        """Step 1: a new key and its request; a rotation still waiting for its answer is superseded."""
        if self.pending is not None:
            await self._fail(self.pending, f"superseded by rotation {rid}")
        try:
            self.store.adopt()
            chain = self.store.load_chain()
            key = new_key_like(self.store.load_key())
            ident = self.store.new(key)
        except (Refused, OSError, ValueError) as exc:
            why = f"cannot start a rotation: {exc}"
            self._failed(rid, why)
            await self.agent.report(rid, "failed", why)
            return
        sans = _sans(chain[0])
        csr = make_csr(key, chain[0].subject, sans)
        now = self.clock()
        rot = Rotation(rid, method, "requested", ident.name, now, now + self.settings.answer_timeout_s,
                       window or self.fleet.health_window_s)
        self._save(rot)
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        log.info("certificate rotation %s: new key made, request sent by %s", escape(rid), method)
        await self.agent.report(rid, "accepted", None, method=method, current=describe(chain[0]))
        if method == "mqtt":
            self.agent.outbox.append("csr", self.agent.topic(TOPIC_CSR), {
                "schema": SCHEMA_CSR, "ts": contract.iso_utc(time.time_ns()), "rotation_id": rid, "csr": pem,
                "current": describe(chain[0])}, "result")
            self.agent.publisher.notify()
        else:
            self._busy = True
            self._jobs.put_nowait(lambda: self._enroll(rot, csr))

    async def _enroll(self, rot: Rotation, csr: x509.CertificateSigningRequest) -> None:
        """EST: the request over HTTPS, authenticated with the current certificate."""
        s, up = self.settings, self.agent.config.uplink
        ctx = ssl.create_default_context(cafile=str(s.est_ca_file or up.ca_file))
        ctx.load_cert_chain(str(up.cert_file), str(up.key_file))
        try:
            chain = await est.simplereenroll(s.est_url, csr.public_bytes(serialization.Encoding.DER), ctx,
                                             self.fleet.download_timeout_s)
            leaf = self._check(rot, chain)
        except (est.EstError, Refused, OSError, ValueError) as exc:
            await self._fail(rot, f"EST: {exc}")
            return
        await self._apply(rot, [leaf] + [c for c in chain if c is not leaf], leaf, None)

    def _check(self, rot: Rotation, chain: list[x509.Certificate]) -> x509.Certificate:
        """Step 2, the answer against the key it was made for (Refused says why not)."""
        ident = self.store.identity(rot.new)
        current = self.store.load_chain()[0]
        anchors = read_anchors([self.settings.ca_file or self.agent.config.uplink.ca_file])
        return check_answer(chain, self.store.load_key(ident), name=common_name(current), anchors=anchors,
                            now=_dt.datetime.now(_dt.timezone.utc))

    async def _apply(self, rot: Rotation, chain: list[x509.Certificate], leaf: x509.Certificate,
                     window: float | None) -> None:
        """Steps 2 to 5: kept aside, tried, switched, proved or rolled back; one fleet change at a time (a
        configuration being proved first ends)."""
        a, up = self.agent, self.agent.config.uplink
        while a.fleet.change is not None and self.clock() < rot.deadline:
            await asyncio.sleep(0.5)  # bounded by the answer's deadline; the other change has no "ended" event
        if a.fleet.change is not None:
            await self._fail(rot, f"another change is still in progress: {a.fleet.change}")
            return
        a.fleet.change = f"certificate {rot.id}"
        ident = self.store.identity(rot.new)
        ident.cert.unlink(missing_ok=True)  # an answer that came before a restart
        self.store.put_chain(ident, [leaf] + [c for c in chain if c is not leaf])
        # what `gridedge check` (the unit's ExecStartPre) and the uplink will do with it: a switch to an identity they
        # refuse would stop the next start before anything could roll it back
        refused = uplink_tls_issues(up.ca_file, ident.cert, ident.key)
        if refused:
            await self._fail(rot, f"`gridedge check` would refuse it: {'; '.join(m for _k, m in refused)}")
            return
        ctx = tls_context(up.ca_file, ident.cert, ident.key)
        await a.report(rot.id, "validated", None, certificate=describe(leaf))
        probe = MqttClient(up.broker, f"{up.client_id}-rotation", ssl_context=ctx, keepalive_s=up.keepalive_s,
                           retry=False)
        try:
            await probe.connect(TEST_CONNECT_S)
        except MqttError as exc:
            await self._fail(rot, f"the broker refused the new certificate in a test connection ({exc}); the gateway "
                                  f"stays on its certificate")
            return
        await probe.close()
        rot.previous, rot.state = self.store.current().name, "applied"
        rot.window_s = window or rot.window_s
        self._save(rot)
        self.store.switch(ident)
        self._refresh()
        a.audit_event("config", change="certificate", rotation_id=rot.id, step="applied", serial=describe(leaf)["serial"])
        await a.report(rot.id, "applied", None, certificate=describe(leaf))
        before = a.mqtt.connects
        a.mqtt.use_identity(up.cert_file, up.key_file)
        await self._prove(rot, before)

    async def _prove(self, rot: Rotation, connects_before: int) -> None:
        """Step 5: connected again (a connection made after the switch) and controlling, within the window."""
        a = self.agent
        deadline = time.monotonic() + rot.window_s
        since = time.time_ns()
        while a.mqtt.connects <= connects_before and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # bounded by the window; the client has no event for "a new connection"
        why = await Health(a, since_ns=since, expected=set()).wait(max(0.0, deadline - time.monotonic()))
        if why is None:
            self._finish(rot, "healthy", None)
            await a.report(rot.id, "healthy", None, certificate=describe(self.store.load_chain()[0]))
            await self._tell()
            return
        failure = a.mqtt.last_failure
        self._restore(rot)
        a.mqtt.use_identity(a.config.uplink.cert_file, a.config.uplink.key_file)
        reason = f"{why} within {rot.window_s:g} s with the new certificate" + \
                 (f" (last failure: {failure})" if failure else "") + "; back on the previous certificate"
        self._finish(rot, "rolled_back", reason)
        await a.report(rot.id, "rolled_back", reason)
        await self._tell()

    def _restore(self, rot: Rotation) -> None:
        if rot.previous:
            self.store.switch(self.store.identity(rot.previous))
            self._refresh()

    def _finish(self, rot: Rotation, outcome: str, reason: str | None) -> None:
        """The end of an applied rotation: keep one identity, forget the journal."""
        keep = rot.new if outcome == "healthy" else rot.previous
        self.store.prune({keep} if keep else set())
        self._save(None)
        self._end()
        self.agent.audit_event("config", change="certificate", rotation_id=rot.id, step=outcome, reason=reason)
        if outcome == "healthy":
            self.last_failure = None
            log.info("certificate rotation %s: healthy on the new certificate", escape(rot.id))
        else:
            self._failed(rot.id, reason)

    async def _fail(self, rot: Rotation, reason: str) -> None:
        """The rotation ends before any switch: the new key is deleted, the gateway is as it was."""
        if self.pending is rot or (self.pending and self.pending.id == rot.id):
            self.store.remove(self.store.identity(rot.new))
            self._save(None)
        self._end()
        self._failed(rot.id, reason)
        self.agent.audit_event("config", change="certificate", rotation_id=rot.id, step="failed", reason=reason)
        await self.agent.report(rot.id, "failed", reason)
        await self._tell()

    def _end(self) -> None:
        self._busy = False
        if (self.agent.fleet.change or "").startswith("certificate "):
            self.agent.fleet.change = None

    def _failed(self, rid: str, reason: str) -> None:
        log.warning("certificate rotation %s: %s", escape(rid), escape(reason, 500))
        self.last_failure = {"rotation_id": rid, "reason": escape(reason, contract.MAX_REASON_CHARS),
                             "ts": contract.iso_utc(time.time_ns())}
        self._retry_at = self.clock() + self.settings.retry_s

    async def _tell(self) -> None:
        """The state at once after a rotation ends: the head-end sees the certificate in use (and a failure)."""
        if self.agent.mqtt is not None and self.agent.mqtt.connected.is_set():
            await self.agent._publish_state()

    def _refresh(self) -> None:
        """After a switch: the certificates the state and the renewal look at are the ones in use."""
        self.agent.certs = certs.read_certs(certs.config_certs(self.agent.config))
        self.leaf = self._leaf()

    def _leaf(self) -> x509.Certificate | None:
        try:
            return self.store.load_chain()[0] if self.store is not None else None
        except Exception:  # noqa: BLE001 - unreadable: `check` said why; nothing to renew
            return None

    # -- the task: resumed rotations, deadlines, renewal -----------------------------------------
    async def run(self) -> None:
        if self._rolled_back_at_start is not None:
            rid, reason = self._rolled_back_at_start
            await self.agent.report(rid, "rolled_back", reason)
        rot = self.pending
        if rot is not None and rot.state == "applied":
            self._busy, self.agent.fleet.change = True, f"certificate {rot.id}"
            await self._prove(rot, 0)
        while True:
            try:
                job = await asyncio.wait_for(self._jobs.get(), self._sleep_s())
            except asyncio.TimeoutError:
                job = self._due()
            if job is not None:
                try:
                    await job()
                except Exception as exc:  # a bug here must not leave a rotation half-done: it fails, said
                    log.exception("certificate rotation failed")
                    if self.pending is not None and self.pending.state == "requested":
                        await self._fail(self.pending, f"the gateway failed handling it ({type(exc).__name__})")
                    self._end()

    def _due(self):
        rot, now = self.pending, self.clock()
        if rot is not None and rot.state == "requested" and now >= rot.deadline and not self._busy:
            return lambda: self._fail(rot, f"no certificate came within {self.settings.answer_timeout_s:g} s")
        renew = self.renew_from()
        if rot is None and renew is not None and now >= renew and now >= self._retry_at \
                and self._cannot(self.settings.method) is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            return lambda: self._start(f"renew-{stamp}-{secrets.token_hex(3)}", self.settings.method, None)
        return None

    def _sleep_s(self) -> float:
        """Until the next thing due (an answer's deadline, the renewal), at most TICK_S."""
        now, due = self.clock(), [TICK_S]
        if self.pending is not None:
            due.append(self.pending.deadline - now)
        renew = self.renew_from()
        if renew is not None and self.pending is None:
            due.append(max(renew - now, self._retry_at - now))
        return max(0.05, min(due))

    def renew_from(self) -> float | None:
        """When renewal starts (s since the epoch), or None (no renewal: off, or no certificate)."""
        leaf = self.leaf
        if not self.settings.auto_renew or leaf is None:
            return None
        start, end = leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp()
        return start + self.settings.renew_at * (end - start)

    def state(self) -> dict:
        """The state message's security.certificate: the uplink certificate's end, when it renews, what is going
        on, and the last failure (a renewal that keeps failing is seen long before the certificate expires)."""
        renew, rot = self.renew_from(), self.pending
        return {"not_after": describe(self.leaf)["not_after"] if self.leaf is not None else None,
                "renew_from": contract.iso_utc(int(renew * 1e9)) if renew is not None else None,
                "rotation": {"id": rot.id, "state": rot.state, "method": rot.method} if rot else None,
                "last_failure": self.last_failure}


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


_FIELDS = {f.name for f in fields(Rotation)}


def parse_journal(data: bytes) -> Rotation:
    """The journal's bytes -> Rotation; ValueError says what is wrong (the file is read back from disk: hostile)."""
    if len(data) > 8192:
        raise ValueError("larger than 8 KiB")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise ValueError("not a rotation record")
    text = ("id", "method", "state", "new")
    if any(not isinstance(doc[k], str) for k in text) or doc["state"] not in ("requested", "applied") \
            or doc["method"] not in ("mqtt", "est") or not 1 <= len(doc["id"]) <= 128:
        raise ValueError("not a rotation record")
    for k in ("new", "previous"):
        if (doc[k] is not None or k == "new") and not (isinstance(doc[k], str) and NAME.fullmatch(doc[k])):
            raise ValueError(f"{k} is not an identity name")
    for k in ("started", "deadline", "window_s", "starts"):
        if isinstance(doc[k], bool) or not isinstance(doc[k], (int, float)) or not 0 <= doc[k] < 2**40:
            raise ValueError(f"{k} is not a number")
    if not isinstance(doc["starts"], int):
        raise ValueError("starts is not an integer")
    return Rotation(**doc)
