"""The command gate: every message on <prefix>cmd/<issuer> and <prefix>nomination/<issuer>, from bytes to action.

In order, each step refusing with its reason (docs/security.md):
1. who sent it: the signature, checked against the trusted issuers (TrustStore); the topic and the payload must
   name the same issuer as the key. Until the trust configuration is loaded, nothing passes.
2. the document: contract.command_from (or the flex nomination parser), the same checks as ever;
3. new or a replay: the ReplayGuard remembers every cmd_id until its signed expiry, across restarts;
4. allowed: the issuer's roles must give the command type, its device scope the devices;
5. then control (or flex) acts; every step is an audit record, every message gets a result or is counted.

Answers to what could not be authenticated carry no cmd_id (a forger must not be able to make the gateway
answer for a real command's id; the id it claimed is in detail.claimed_cmd_id) and have a small budget, like
unreadable ones, so a flood of forgeries can neither grow the outbox nor push telemetry out of it.
"""
from __future__ import annotations

import hashlib
import logging
import time

from . import contract
from .compression import ZLIB, PayloadError, encoding_of, open_payload
from .contract import CommandRejected
from .core.rate import TokenBucket
from .core.text import escape
from .flex.nomination import NominationRejected
from .security.trust import Principal, Unauthenticated

log = logging.getLogger("gridedge.commands")

#: Answers to messages that could not be read or authenticated (no verified cmd_id to answer to): this many at
#: once, then one per UNANSWERED_EVERY_S; beyond that they are counted (state: commands.unanswered).
UNREADABLE_BURST = 10
UNREADABLE_EVERY_S = 6.0
MAX_NOMINATION_BYTES = 262_144
#: A compressed message (content type application/zlib, edge/compression.py) is inflated to at most this much: past
#: it the JWS would be refused as too large anyway, so a zip bomb is refused before it takes memory.
MAX_INFLATED = {contract.TOPIC_CMD: contract.MAX_SIGNED_BYTES, contract.TOPIC_NOMINATION: 2 * MAX_NOMINATION_BYTES}


class CommandGate:
    def __init__(self, agent) -> None:
        self.agent = agent
        self.counts = {"received": 0, "unanswered": 0, "unauthenticated": 0, "forbidden": 0, "replayed": 0}
        self._budget = TokenBucket(1 / UNREADABLE_EVERY_S, UNREADABLE_BURST)
        self._log_budget = TokenBucket(1 / 60, 1)
        # the audit trail's share of a flood: refusals nobody could be held to account for (unreadable,
        # unauthenticated) are recorded one by one within this budget, the rest summed up once a minute
        self._audit_budget = TokenBucket(1 / UNREADABLE_EVERY_S, 2 * UNREADABLE_BURST)
        self._unaudited = 0
        self._summary_at = time.monotonic()

    def subscriptions(self) -> list[str]:
        kinds = [contract.TOPIC_CMD] + ([contract.TOPIC_NOMINATION] if self.agent.flex is not None else [])
        return [self.agent.topic(k) + "/+" for k in kinds]

    async def handle(self, topic: str | None, payload: bytes, content_type: str | None = None) -> None:
        """One inbound message, JSON or compressed (`content_type`: MQTT 5's, None: read from the bytes); never
        raises (a failure is counted and logged)."""
        kind, _, issuer = (topic or "").removeprefix(self.agent.prefix).partition("/")
        if topic is None or not topic.startswith(self.agent.prefix) or not issuer or "/" in issuer:
            return
        handler = {contract.TOPIC_CMD: self._command, contract.TOPIC_NOMINATION: self._nomination}.get(kind)
        if handler is None:
            return
        self.counts["received"] += 1
        try:
            try:
                zlib_said = (content_type or "").split(";")[0].strip().lower() == ZLIB
                if zlib_said or encoding_of(payload) == ZLIB:  # other content types (application/jose) pass as before
                    payload = open_payload(payload, ZLIB if zlib_said else None, limit=MAX_INFLATED[kind])
            except PayloadError as exc:  # a zip bomb, a corrupt stream, a content type that lies: unreadable
                return await self._refuse(None, issuer, hashlib.sha256(payload).hexdigest(), "rejected",
                                          f"unreadable {kind} payload: {exc}", None)
            await handler(issuer, payload, time.time_ns())
        except Exception:  # the agent keeps running whatever a command does; the loss is counted
            self._unanswered(f"handling a message on {topic} failed", exc_info=True)

    # -- the steps ------------------------------------------------------------------------------
    async def _authenticate(self, issuer: str, payload: bytes, what: str, max_bytes: int):
        """(principal, document), or None when the message has been answered (or counted) already."""
        a = self.agent
        now = time.time_ns()
        digest = hashlib.sha256(payload).hexdigest()
        if a.trust is None:
            return await self._refuse(None, issuer, digest, "unauthenticated",
                                      f"the gateway's trust configuration is not loaded ({a.trust_error}): "
                                      f"every {what} is refused", None)
        try:
            return a.trust.authenticate(payload, issuer, now / 1e9, what=what, max_bytes=max_bytes)
        except Unauthenticated as exc:
            return await self._refuse(exc.cmd_id, issuer, digest, "expired" if exc.status == "expired"
                                      else "unauthenticated", exc.reason, _claimed(payload))
        except CommandRejected as exc:  # signed, but its document is not readable
            return await self._refuse(None, issuer, digest, "rejected", exc.reason, None)

    async def _refuse(self, cmd_id: str | None, issuer: str, digest: str, decision: str, reason: str,
                      claimed: str | None) -> None:
        """Audit a refusal and answer it: with its cmd_id where that was verified, else within the budget."""
        a = self.agent
        if decision == "unauthenticated":
            self.counts["unauthenticated"] += 1
        if cmd_id is not None or self._audit_budget.take():
            a.audit_event("command", topic_issuer=issuer, payload_sha256=digest, cmd_id=cmd_id, decision=decision,
                          reason=reason)
        else:
            self._unaudited += 1
        self.summarise()
        if cmd_id is None and not self._budget.take():
            self._unanswered(f"{decision} ({reason}), over the budget of {UNREADABLE_BURST} answers and one per "
                             f"{UNREADABLE_EVERY_S:g} s")
            return None
        status = "expired" if decision == "expired" else "rejected"
        detail = {"refusal": decision} if decision in ("unauthenticated", "forbidden", "replay") else {}
        if claimed is not None and cmd_id is None:
            detail["claimed_cmd_id"] = claimed
        await a.report(cmd_id, status, f"{decision}: {reason}" if decision not in ("rejected", "expired") else reason,
                       **detail)
        return None

    async def _admit(self, who: Principal, issuer: str, cmd_id: str, exp_s, ctype: str, devices, digest: str) -> bool:
        """Replay and rights; True when the command may act (it is then audited as accepted)."""
        a = self.agent
        why = a.replay.admit(cmd_id, who.id, _exp_ns({"exp": exp_s}, a), time.time_ns())
        if why is not None:
            self.counts["replayed"] += 1
            await self._refuse(cmd_id, issuer, digest, "replay", why, None)
            return False
        why = a.trust.authorize(who, ctype, devices)
        if why is not None:
            self.counts["forbidden"] += 1
            await self._refuse(cmd_id, issuer, digest, "forbidden", why, None)
            return False
        if who.via == "unsigned":
            log.warning("command %s from %s is UNSIGNED, accepted because security.allow_unsigned is true",
                        escape(cmd_id), escape(who.id))
        a.audit_event("command", topic_issuer=issuer, payload_sha256=digest, cmd_id=cmd_id, decision="accepted",
                      issuer=who.id, actor=who.actor, key=who.key_id, via=who.via, type=ctype)
        return True

    async def _command(self, issuer: str, payload: bytes, received_ns: int) -> None:
        """received_ns: when the message was taken up, before its signature was checked (the latency counts it)."""
        a = self.agent
        found = await self._authenticate(issuer, payload, "command", contract.MAX_COMMAND_BYTES)
        if found is None:
            return
        who, doc = found
        digest = hashlib.sha256(payload).hexdigest()
        ctl = a.config.control
        try:
            cmd = contract.command_from(doc, received_ns, issuer=who.actor, principal=who.id,
                                        max_activation_s=ctl.max_activation_s,
                                        schedule_horizon_s=ctl.schedule_horizon_s)
        except CommandRejected as rej:  # its cmd_id is used up all the same: a corrected command needs a new one
            why = a.replay.admit(rej.cmd_id, who.id, _exp_ns(doc, a), received_ns) if rej.cmd_id else None
            if why is not None:
                self.counts["replayed"] += 1
                return await self._refuse(rej.cmd_id, issuer, digest, "replay", why, None)
            return await self._refuse(rej.cmd_id, issuer, digest, rej.status, rej.reason, None)
        if not await self._admit(who, issuer, cmd.cmd_id, doc.get("exp"), cmd.type, a.devices_of(cmd), digest):
            return
        log.info("command %s (%s from %s) received t_ns=%d", escape(cmd.cmd_id), cmd.type, escape(who.id),
                 received_ns)
        try:
            if cmd.type == "prequalification_test":
                await a.step_test(cmd, received_ns)
            elif cmd.type in contract.FLEET_TYPES:
                await a.fleet_command(cmd, who)
            else:
                await a.control.submit(cmd)
        except Exception:
            log.exception("command %s: handling failed", escape(cmd.cmd_id))
            if a.outbox.results_for(cmd.cmd_id) is None:  # nothing said yet: say that it failed here
                await a.report(cmd.cmd_id, "rejected", "the gateway failed handling it (see its log)")

    async def _nomination(self, issuer: str, payload: bytes, _received_ns: int) -> None:
        a = self.agent
        if a.flex is None:
            return
        found = await self._authenticate(issuer, payload, "nomination", MAX_NOMINATION_BYTES)
        if found is None:
            return
        who, doc = found
        digest = hashlib.sha256(payload).hexdigest()
        try:
            nom = a.flex.check_nomination(doc, time.time_ns(), issuer=who.actor)
        except NominationRejected as rej:
            return await self._refuse(rej.nomination_id, issuer, digest, "rejected", rej.reason, None)
        devices = a.flex.resources[nom.resource].devices
        if not await self._admit(who, issuer, nom.nomination_id, doc.get("exp"), "nominate", tuple(devices) or None,
                                 digest):
            return
        a.flex.apply_nomination(nom, time.time_ns())
        await a.report(nom.nomination_id, "accepted", None, resource=nom.resource, isps=len(nom.values_w))

    def summarise(self, force: bool = False) -> None:
        """Once a minute (and at a stop), one audit record for the refusals not recorded one by one."""
        now = time.monotonic()
        if self._unaudited and (force or now - self._summary_at >= 60):
            self.agent.audit_event("command", decision="unauthenticated", suppressed=self._unaudited,
                                   reason="refused, not recorded one by one (a flood of unreadable or unauthenticated "
                                          "messages beyond the audit budget)")
            self._unaudited, self._summary_at = 0, now

    def _unanswered(self, why: str, exc_info: bool = False) -> None:
        self.counts["unanswered"] += 1
        if self._log_budget.take() or exc_info:
            log.warning("command not answered: %s; %d unanswered so far", escape(why, 500), self.counts["unanswered"],
                        exc_info=exc_info)


def _exp_ns(doc: dict, agent) -> int:
    """Until when a cmd_id is remembered: its signed exp, or (unsigned) the longest lifetime from now."""
    exp = doc.get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp < 2**40:
        return int(exp * 1e9)
    return time.time_ns() + agent.trust.max_lifetime_s * 10**9


def _claimed(payload: bytes) -> str | None:
    """The cmd_id a message claims, unverified, bounded: only ever shown as claimed_cmd_id."""
    try:
        from .security import jws

        doc = contract.decode(jws.parse(payload).payload if payload.lstrip()[:1] != b"{" else payload)
    except Exception:  # noqa: BLE001 - anything unreadable simply claims nothing
        return None
    cid = doc.get("cmd_id") or doc.get("nomination_id")
    return escape(cid, 128) if isinstance(cid, str) else None
