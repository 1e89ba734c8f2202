"""DSO head-end simulator: subscribes to a gateway's topics, sends activations, checks acks and response.

It speaks only the documented MQTT contract (edge/contract.py), over the same TLS broker as the gateway,
so whatever it accepts a real head-end can rely on.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gridedge import contract
from gridedge.core.text import escape
from gridedge.headend import HeadEnd, decode
from gridedge.mqtt import MqttClient, tls_context
from gridedge.security import jws
from gridedge.security.signing import TYP, load_private_key, sign_command

from .stream_audit import StreamAudit

log = logging.getLogger(__name__)


@dataclass
class Seen:
    topic: str
    doc: dict | None  # the JSON document (inflated when compressed); None when the payload was not one
    raw: bytes
    t: float  # monotonic arrival time
    content_type: str | None = None  # MQTT 5 Content Type, as sent


@dataclass
class CurtailmentReport:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    p_before_w: float | None = None
    reach_s: float | None = None  # from "active" to W at or under the limit
    p_min_w: float | None = None

    def line(self) -> str:
        if self.passed:
            return (f"demo: PASS curtailment acknowledged {' -> '.join(self.statuses)}, "
                    f"P {self.p_before_w:.0f} W -> {self.p_min_w:.0f} W in {self.reach_s:.1f} s, limit restored")
        return "demo: FAIL " + "; ".join(self.reasons)


@dataclass
class Issuer:
    """How the simulator sends as one issuer: the key it signs with, and the broker identity it publishes as."""

    id: str
    key: object                         # an Ed25519 or P-256 private key (gridedge.security.signing)
    ssl_context: ssl.SSLContext | None
    client_id: str


class DsoSimulator:
    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, prefix: str, *,
                 client_id: str = "dso-sim", allow_plaintext: bool = False, session_expiry_s: int = 0,
                 issuers: dict[str, Issuer] | None = None, gateway_id: str | None = None) -> None:
        """issuers: who it can send commands as (its own identity is the issuer whose client_id is its own)."""
        self.url, self.ssl_context, self.prefix = url, ssl_context, prefix
        self.gateway_id = gateway_id or prefix.rstrip("/").rsplit("/", 1)[-1]
        self.issuers = dict(issuers or {})
        self._senders: dict[str, MqttClient] = {}
        self.session_expiry_s = session_expiry_s
        self.audit = StreamAudit()
        self.client_id, self.allow_plaintext = client_id, allow_plaintext
        self.seen: list[Seen] = []
        self.latest: dict[str, float | None] = {}  # point name (without device) -> value, last telemetry
        self.headend = HeadEnd()  # the reference decoder: every telemetry form, layouts, duplicates
        self.on_telemetry: Callable[[dict], None] | None = None
        self._changed = asyncio.Condition()
        self._mqtt: MqttClient | None = None
        self._reader: asyncio.Task | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        self._mqtt = MqttClient(self.url, self.client_id, ssl_context=self.ssl_context,
                                allow_plaintext=self.allow_plaintext, session_expiry_s=self.session_expiry_s,
                                receive_maximum=65535, inbox_limit=0)  # a head-end sees every message
        await self._mqtt.subscribe(self.prefix + "#", qos=1)
        await self._mqtt.connect(timeout_s)
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
        for client in self._senders.values():
            await client.close()
        if self._mqtt:
            await self._mqtt.close()

    async def _read(self) -> None:
        while True:
            msg = await self._mqtt.messages.get()
            doc = _document(msg.payload, msg.content_type)
            self.seen.append(Seen(msg.topic, doc, msg.payload, time.monotonic(), msg.content_type))
            self.audit.add(msg.topic, doc)
            live = msg.topic == self.prefix + contract.TOPIC_TELEMETRY
            if live or msg.topic.startswith(self.prefix + "layout/"):
                try:
                    for s in self.headend.take(msg.topic, msg.payload, msg.content_type):
                        self.latest[s.point.split("/", 1)[-1]] = s.value
                except ValueError as exc:  # the audit keeps the message; a bad one must not stop the simulator
                    log.warning("telemetry not understood: %s", escape(exc))
                if self.on_telemetry and live:
                    self.on_telemetry(self.latest)
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], object], timeout_s: float, what: str):
        """Wait until predicate() is truthy, re-checking on every message; TimeoutError names `what`."""
        async def waiter():
            async with self._changed:
                while not (value := predicate()):
                    await self._changed.wait()
                return value
        try:
            return await asyncio.wait_for(waiter(), timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}") from None

    # -- commands ---------------------------------------------------------------------------
    async def _sender(self, issuer: str) -> MqttClient:
        """The broker connection that publishes as `issuer` (the broker ACL confines each identity)."""
        ident = self.issuers.get(issuer)
        if ident is None or ident.client_id == self.client_id:
            return self._mqtt
        if issuer not in self._senders:
            client = MqttClient(self.url, ident.client_id, ssl_context=ident.ssl_context,
                                allow_plaintext=self.allow_plaintext)
            await client.connect()
            self._senders[issuer] = client
        return self._senders[issuer]

    def sign(self, doc: dict, *, key=None, claims: dict | None = None, lifetime_s: float = 300.0) -> bytes:
        """The JWS of a command document, signed by the key of its issuer (doc["iss"]) unless `key` is given;
        `claims` overrides iss, aud, iat or exp after signing would set them (for forgeries in tests)."""
        issuer = doc.get("iss", "dso")
        body = {k: v for k, v in doc.items() if k not in contract.CLAIMS}
        signer = key if key is not None else self.issuers[issuer].key
        if not claims:
            return sign_command(body, signer, issuer=issuer, audience=self.gateway_id, lifetime_s=lifetime_s)
        now = time.time()
        full = {"iss": issuer, "aud": self.gateway_id, "iat": int(now), "exp": int(now + lifetime_s)} | claims
        payload = json.dumps(body | full, separators=(",", ":")).encode()
        return jws.sign(payload, signer, kid=jws.thumbprint(signer.public_key()), typ=TYP)

    def sign_bytes(self, payload: bytes, issuer: str = "dso") -> bytes:
        """Any bytes signed by an issuer: a malformed document that still reaches the gateway's content checks."""
        key = self.issuers[issuer].key
        return jws.sign(payload, key, kid=jws.thumbprint(key.public_key()), typ=TYP)

    async def send(self, doc: dict | bytes, *, issuer: str | None = None, topic_issuer: str | None = None,
                   kind: str = contract.TOPIC_CMD, **sign_kw) -> None:
        """Publish a command: a document is signed (see sign); bytes go as they are. It goes on
        <prefix><kind>/<topic_issuer>, published as `issuer` (default: the document's iss, else "dso")."""
        issuer = issuer or (doc.get("iss") if isinstance(doc, dict) else None) or "dso"
        payload = doc if isinstance(doc, bytes) else self.sign(doc, **sign_kw)
        client = await self._sender(issuer)
        await client.publish(f"{self.prefix}{kind}/{topic_issuer or issuer}", payload)

    @staticmethod
    def activation(limit_pct: float, duration_s: float, *, cmd_id: str | None = None, issuer: str = "dso",
                   device: str | None = None, validity_s: float = 60.0) -> dict:
        now = time.time_ns()
        doc = {"schema": contract.SCHEMA_COMMAND, "cmd_id": cmd_id or f"act-{uuid.uuid4().hex[:12]}",
               "type": "limit_active_power", "iss": issuer,
               "valid_from": contract.iso_utc(now - 1_000_000_000),
               "valid_until": contract.iso_utc(now + int(validity_s * 1e9)),
               "params": {"limit_pct": limit_pct, "duration_s": duration_s}}
        if device:
            doc["device"] = device
        return doc

    @staticmethod
    def command(ctype: str, params: dict, *, cmd_id: str | None = None, issuer: str = "dso",
                device: str | None = None, valid_from: float | None = None, valid_until: float | None = None) -> dict:
        """Any command of the contract; valid_from/valid_until in seconds from now (None: not sent)."""
        now = time.time_ns()
        doc = {"schema": contract.SCHEMA_COMMAND, "cmd_id": cmd_id or f"{ctype[:4]}-{uuid.uuid4().hex[:12]}",
               "type": ctype, "iss": issuer, "params": params}
        if device:
            doc["device"] = device
        if valid_from is not None:
            doc["valid_from"] = contract.iso_utc(now + int(valid_from * 1e9))
        if valid_until is not None:
            doc["valid_until"] = contract.iso_utc(now + int(valid_until * 1e9))
        return doc

    @classmethod
    def traffic_light(cls, colour: str, limit_pct: float | None = None, duration_s: float | None = None,
                      **kw) -> dict:
        params = {"colour": colour} | ({"limit_pct": limit_pct} if limit_pct is not None else {}) \
            | ({"duration_s": duration_s} if duration_s is not None else {})
        return cls.command("traffic_light", params, **kw)

    @classmethod
    def prequalification_test(cls, resource: str, w: float, duration_s: float, **kw) -> dict:
        return cls.command("prequalification_test", {"resource": resource, "w": w, "duration_s": duration_s}, **kw)

    @staticmethod
    def nomination(resource: str, start_ns: int, isp_s: int, w: list[float], *, nomination_id: str | None = None,
                   issuer: str = "aggregator") -> dict:
        """A baseline schedule, ex ante: mean W per ISP from start_ns (an ISP boundary)."""
        return {"schema": "gridedge.nomination/2", "nomination_id": nomination_id or f"nom-{uuid.uuid4().hex[:12]}",
                "iss": issuer, "resource": resource, "start": contract.iso_utc(start_ns), "isp_s": isp_s, "w": w}

    async def send_nomination(self, doc: dict | bytes, **kw) -> None:
        await self.send(doc, kind=contract.TOPIC_NOMINATION, **kw)

    def records(self, kind: str) -> list[dict]:
        """Flex records seen on <prefix><kind> and its backfill topic, de-duplicated by msg_id."""
        topics = (self.prefix + kind, self.prefix + "backfill/" + kind)
        out: dict[str, dict] = {}
        for s in self.seen:
            if s.topic in topics and isinstance(s.doc, dict):
                out.setdefault(s.doc.get("msg_id"), s.doc)
        return list(out.values())

    @classmethod
    def terminate(cls, activation_id: str, **kw) -> dict:
        return cls.command("terminate", {"activation_id": activation_id}, **kw)

    @classmethod
    def cancel(cls, activation_id: str, **kw) -> dict:
        return cls.command("cancel", {"activation_id": activation_id}, **kw)

    def results(self, cmd_id: str | None, *, claimed: bool = False) -> list[dict]:
        """Results for cmd_id; claimed=True: the refusals of messages that only claimed it (unauthenticated)."""
        topics = (self.prefix + contract.TOPIC_RESULT, self.prefix + "backfill/" + contract.TOPIC_RESULT)
        docs = [s.doc for s in self.seen if s.topic in topics and isinstance(s.doc, dict)]
        if claimed:
            return [d for d in docs if d.get("cmd_id") is None and d["detail"].get("claimed_cmd_id") == cmd_id]
        return [d for d in docs if d.get("cmd_id") == cmd_id]

    def statuses(self, cmd_id: str | None) -> list[str]:
        return [r["status"] for r in self.results(cmd_id)]

    async def wait_status(self, cmd_id: str | None, status: str, timeout_s: float) -> dict:
        return await self.wait_for(
            lambda: next((r for r in self.results(cmd_id) if r["status"] == status), None),
            timeout_s, f"{cmd_id}: {status}")

    async def wait_online(self, timeout_s: float = 20.0) -> dict:
        def online():
            for s in reversed(self.seen):
                if s.topic == self.prefix + contract.TOPIC_STATE and isinstance(s.doc, dict):
                    return s.doc if s.doc.get("status") == "online" else None
            return None
        return await self.wait_for(online, timeout_s, "the gateway's state 'online'")

    # -- the scenario -----------------------------------------------------------------------
    async def curtailment(self, limit_pct: float, duration_s: float, *, reach_within_s: float,
                          tolerance_pct: float = 1.0, device: str | None = None) -> CurtailmentReport:
        """Limit P to limit_pct % of WMax for duration_s; check acks, the response and the restore."""
        rep = CurtailmentReport(passed=False)
        try:
            await self.wait_for(lambda: self.latest.get("W") is not None and self.latest.get("WMax"), 15,
                                "telemetry with W and WMax")
            w_max = float(self.latest["WMax"])
            prev_limit = (self.latest.get("WMaxLimPct"), self.latest.get("WMaxLimPctEna"))
            rep.p_before_w = float(self.latest["W"])
            limit_w = limit_pct / 100 * w_max
            cmd = self.activation(limit_pct, duration_s, device=device)
            await self.send(cmd)
            await self.wait_status(cmd["cmd_id"], "active", 10)
            t_active = time.monotonic()
            margin = tolerance_pct / 100 * w_max
            await self.wait_for(lambda: self.latest.get("W") is not None and self.latest["W"] <= limit_w + margin,
                                reach_within_s, f"W <= {limit_w:.0f} W (+{margin:.0f} W)")
            rep.reach_s = time.monotonic() - t_active
            rep.p_min_w = float(self.latest["W"])
            await self.wait_status(cmd["cmd_id"], "completed", duration_s + 10)
            await self.wait_for(lambda: (self.latest.get("WMaxLimPct"), self.latest.get("WMaxLimPctEna")) == prev_limit,
                                10, f"the previous limit {prev_limit} back in telemetry")
            rep.statuses = self.statuses(cmd["cmd_id"])
            if rep.statuses != ["accepted", "active", "completed"]:
                rep.reasons.append(f"acknowledgements out of order: {rep.statuses}")
        except TimeoutError as exc:
            rep.reasons.append(str(exc))
        rep.passed = not rep.reasons
        return rep


def _document(payload: bytes, content_type: str | None = None) -> dict | None:
    """A message as JSON (compressed or not: the reference decoder's bounded read); a signed command (a JWS) as the
    document it signs, unverified: the simulator only files what it sent itself. None when it is neither (the rig
    sends hostile test payloads too)."""
    try:
        return decode(payload, content_type)
    except ValueError:
        pass
    try:
        return json.loads(jws.parse(payload).payload)
    except (jws.JwsError, ValueError, RecursionError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gridedge.hil.dso_sim",
                                 description="Send one curtailment to a gateway and check its response.")
    ap.add_argument("--broker", required=True, help="mqtts://host:port")
    ap.add_argument("--ca", type=Path, required=True)
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--prefix", required=True, help="the gateway's topic prefix, e.g. gridedge/v3/gw-1/")
    ap.add_argument("--issuer", default="dso", help="the issuer id it sends as (its key must be trusted)")
    ap.add_argument("--issuer-key", type=Path, required=True, help="that issuer's private key (PEM)")
    ap.add_argument("--limit-pct", type=float, default=50.0)
    ap.add_argument("--duration-s", type=float, default=20.0)
    ap.add_argument("--reach-within-s", type=float, default=15.0)
    args = ap.parse_args(argv)

    async def go() -> int:
        ctx = tls_context(args.ca, args.cert, args.key)
        me = Issuer(args.issuer, load_private_key(args.issuer_key), ctx, "dso-sim")
        dso = DsoSimulator(args.broker, ctx, args.prefix, issuers={args.issuer: me})
        await dso.start()
        try:
            await dso.wait_online()
            rep = await dso.curtailment(args.limit_pct, args.duration_s, reach_within_s=args.reach_within_s)
        finally:
            await dso.stop()
        print(rep.line())
        return 0 if rep.passed else 1

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
