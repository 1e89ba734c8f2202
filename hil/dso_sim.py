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

from gridedge import contract, telemetry
from gridedge.core.text import escape
from gridedge.mqtt import MqttClient, tls_context

from .stream_audit import StreamAudit

log = logging.getLogger(__name__)


@dataclass
class Seen:
    topic: str
    doc: dict | None  # None when the payload was not JSON
    raw: bytes
    t: float  # monotonic arrival time


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


class DsoSimulator:
    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, prefix: str, *,
                 client_id: str = "dso-sim", allow_plaintext: bool = False, session_expiry_s: int = 0) -> None:
        self.url, self.ssl_context, self.prefix = url, ssl_context, prefix
        self.session_expiry_s = session_expiry_s
        self.audit = StreamAudit()
        self.client_id, self.allow_plaintext = client_id, allow_plaintext
        self.seen: list[Seen] = []
        self.latest: dict[str, float | None] = {}  # point name (without device) -> value, last telemetry
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
        if self._mqtt:
            await self._mqtt.close()

    async def _read(self) -> None:
        while True:
            msg = await self._mqtt.messages.get()
            try:
                doc = json.loads(msg.payload)
            except (ValueError, RecursionError):  # the rig sees its own hostile test commands too
                doc = None
            self.seen.append(Seen(msg.topic, doc, msg.payload, time.monotonic()))
            self.audit.add(msg.topic, doc)
            if msg.topic == self.prefix + contract.TOPIC_TELEMETRY and isinstance(doc, dict):
                try:
                    for s in telemetry.samples_of(doc):
                        self.latest[s.point.split("/", 1)[-1]] = s.value
                except ValueError as exc:  # the audit keeps the message; a bad one must not stop the simulator
                    log.warning("telemetry not understood: %s", escape(exc))
                if self.on_telemetry:
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
    async def send(self, doc: dict | bytes) -> None:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        await self._mqtt.publish(self.prefix + contract.TOPIC_CMD, payload)

    @staticmethod
    def activation(limit_pct: float, duration_s: float, *, cmd_id: str | None = None, issuer: str = "dso",
                   device: str | None = None, validity_s: float = 60.0) -> dict:
        now = time.time_ns()
        doc = {"schema": contract.SCHEMA_COMMAND, "cmd_id": cmd_id or f"act-{uuid.uuid4().hex[:12]}",
               "type": "limit_active_power", "issuer": issuer,
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
               "type": ctype, "issuer": issuer, "params": params}
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
        return {"schema": "gridedge.nomination/1", "nomination_id": nomination_id or f"nom-{uuid.uuid4().hex[:12]}",
                "issuer": issuer, "resource": resource, "start": contract.iso_utc(start_ns), "isp_s": isp_s, "w": w}

    async def send_nomination(self, doc: dict) -> None:
        await self._mqtt.publish(self.prefix + "nomination", json.dumps(doc).encode())

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

    def results(self, cmd_id: str | None) -> list[dict]:
        topics = (self.prefix + contract.TOPIC_RESULT, self.prefix + "backfill/" + contract.TOPIC_RESULT)
        return [s.doc for s in self.seen if s.topic in topics
                and isinstance(s.doc, dict) and s.doc.get("cmd_id") == cmd_id]

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gridedge.hil.dso_sim",
                                 description="Send one curtailment to a gateway and check its response.")
    ap.add_argument("--broker", required=True, help="mqtts://host:port")
    ap.add_argument("--ca", type=Path, required=True)
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--prefix", required=True, help="the gateway's topic prefix, e.g. gridedge/v2/gw-1/")
    ap.add_argument("--limit-pct", type=float, default=50.0)
    ap.add_argument("--duration-s", type=float, default=20.0)
    ap.add_argument("--reach-within-s", type=float, default=15.0)
    args = ap.parse_args(argv)

    async def go() -> int:
        dso = DsoSimulator(args.broker, tls_context(args.ca, args.cert, args.key), args.prefix)
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
