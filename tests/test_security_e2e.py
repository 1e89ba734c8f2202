"""Issue 12 with the real broker and the rig: every way to move the plant without the right is refused with its
reason, and nothing reaches the device; the audit trail records it and `gridedge audit verify` catches tampering.

The rig runs mosquitto with the deployment's ACL (hil/acl.py) and a gateway that trusts three issuers' Ed25519
keys (tso, dso, aggregator); the aggregator is a viewer here, so its valid signature has the wrong role.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from gridedge import contract
from gridedge.hil.rig import Rig
from gridedge.mqtt import MqttClient, MqttError, tls_context

from .conftest import validate_message


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 150))


def writes(rig: Rig) -> int:
    return sum("applied write at" in line for line in rig.sim_log.read_text().splitlines())


def audit_records(rig: Rig) -> list[dict]:
    return [d["record"] for d in rig.dso.records(contract.TOPIC_AUDIT)]


async def refused(rig: Rig, cmd_id: str, *, claimed: bool = False, status: str = "rejected") -> dict:
    return await rig.dso.wait_for(
        lambda: next((r for r in rig.dso.results(cmd_id, claimed=claimed) if r["status"] == status), None), 10,
        f"{cmd_id}: {status}")


async def as_identity(rig: Rig, cn: str) -> MqttClient:
    cert, key = rig.pki.client(cn)
    client = MqttClient(rig.broker.url, cn, ssl_context=tls_context(rig.pki.ca_cert, cert, key))
    await client.connect()
    return client


def test_every_unauthorised_command_is_refused_with_its_reason_and_nothing_is_written(tmp_path):
    async def scenario():
        async with Rig(tmp_path, roles={"aggregator": ["viewer"]}) as rig:
            dso = rig.dso
            await dso.wait_for(lambda: dso.latest.get("W") is not None, 15, "telemetry")
            before = writes(rig)

            # a forged issuer: a command that says it is the TSO's, signed by a key nobody trusts
            forged = dso.activation(0, 86400, cmd_id="forged-tso", issuer="tso")
            await dso.send(forged, key=ed25519.Ed25519PrivateKey.generate())
            r = await refused(rig, "forged-tso", claimed=True)
            assert r["cmd_id"] is None and r["detail"]["refusal"] == "unauthenticated"
            assert "unknown key id" in r["reason"]

            # the DSO's own key, claiming to be the TSO (iss and topic say tso; the key says dso)
            await dso.send(dso.activation(0, 60, cmd_id="dso-as-tso", issuer="dso"), issuer="tso",
                           topic_issuer="tso", claims={"iss": "tso"})
            r = await refused(rig, "dso-as-tso")
            assert r["detail"]["refusal"] == "unauthenticated" and "is not the signer 'dso'" in r["reason"]

            # an aggregator's valid signature on the DSO's topic (a broker that let it through): the gateway
            # itself refuses, whatever the ACL did
            await dso.send(dso.sign(dso.activation(10, 60, cmd_id="agg-on-dso", issuer="aggregator")),
                           issuer="dso", topic_issuer="dso")
            r = await refused(rig, "agg-on-dso")
            assert "signed by 'aggregator' but sent on the command topic of 'dso'" in r["reason"]

            # a valid signature with the wrong role: the aggregator is a viewer here
            await dso.send(dso.activation(10, 60, cmd_id="viewer-act", issuer="aggregator"))
            r = await refused(rig, "viewer-act")
            assert r["detail"]["refusal"] == "forbidden" and "may not send limit_active_power" in r["reason"]

            # an expired signature: exp is past (it waited at a broker, or it was captured)
            now = int(time.time())
            await dso.send(dso.activation(10, 60, cmd_id="stale"), claims={"iat": now - 600, "exp": now - 300})
            r = await refused(rig, "stale", status="expired")
            assert r["reason"].startswith("expired: exp")

            # a replay: a command that ran, sent again byte for byte
            token = dso.sign(dso.activation(70, 2, cmd_id="once"))
            await dso.send(token)
            await dso.wait_status("once", "completed", 15)
            ran = writes(rig)
            await dso.send(token)
            r = await refused(rig, "once")
            assert r["detail"]["refusal"] == "replay" and "already received" in r["reason"]
            # the gateway for another gateway: aud names gw-other
            await dso.send(dso.activation(10, 60, cmd_id="not-for-me"), claims={"aud": "gw-other"})
            r = await refused(rig, "not-for-me")
            assert "aud does not name this gateway" in r["reason"]

            # a refusal is decided before anything reaches control, and each was answered: nothing was written
            assert writes(rig) == ran and ran > before   # only the one good command wrote anything
            state = await dso.wait_for(lambda: next((s.doc for s in reversed(dso.seen)
                                                     if s.topic == rig.prefix + "state" and s.doc), None), 5, "state")
            assert state["security"]["signed_only"] and state["security"]["trust_loaded"]
            # the rig's certificates are made for 30 days: the gateway says its own runs out, and logs it
            assert {"uplink.cert_file", "uplink.ca_file"} <= {e["role"] for e in state["security"]["expiring"]}
            assert "certificate uplink.cert_file" in rig.agent_log.read_text()

            # the audit trail has every decision, at the head-end as well (its copies travel with the telemetry)
            def decisions() -> dict:
                return {r.get("cmd_id"): r["decision"] for r in audit_records(rig) if r["event"] == "command"}
            await dso.wait_for(lambda: "not-for-me" in decisions(), 10, "the audit records at the head-end")
            decisions = decisions()
            assert decisions.get("dso-as-tso") == "unauthenticated" and decisions.get("viewer-act") == "forbidden"
            assert decisions.get("stale") == "expired" and decisions.get("not-for-me") == "unauthenticated"
            assert any(r["event"] == "write" and "once" in r["activations"] for r in audit_records(rig))
            for s in dso.seen:
                if s.topic.endswith(("/result", "/audit", "/state")) and s.doc is not None:
                    validate_message(s.topic, s.doc)
    run(scenario())


def test_the_broker_confines_every_identity(tmp_path):
    """Another gateway's certificate cannot command this one or forge its telemetry; an aggregator cannot publish
    on the TSO's topic. mosquitto refuses the publish (PUBACK: not authorized) and nobody receives it."""
    async def scenario():
        async with Rig(tmp_path) as rig:
            dso = rig.dso
            await dso.wait_for(lambda: dso.latest.get("W") is not None, 15, "telemetry")
            before = writes(rig)
            other = await as_identity(rig, "gw-other")
            try:
                token = dso.sign(dso.activation(10, 60, cmd_id="from-other-gw"))   # even a valid DSO signature
                for topic, payload in ((rig.prefix + "cmd/dso", token),
                                       (rig.prefix + "telemetry", json.dumps({"forged": True}).encode())):
                    try:
                        await other.publish(topic, payload)
                    except MqttError as exc:
                        assert "not authorized" in str(exc).lower(), exc
                    else:
                        raise AssertionError(f"the broker took gw-other's publish on {topic}")
            finally:
                await other.close()
            try:
                await dso.send(dso.activation(10, 60, cmd_id="agg-as-tso", issuer="aggregator"), topic_issuer="tso")
            except MqttError as exc:
                assert "not authorized" in str(exc).lower(), exc
            else:
                raise AssertionError("the broker took the aggregator's publish on the TSO's topic")
            # what the gateway was sent reaches it: a good command is answered, the refused ones never arrived
            await dso.send(dso.activation(80, 2, cmd_id="good"))
            await dso.wait_status("good", "completed", 15)
            seen_cmd_ids = {r.get("cmd_id") for r in audit_records(rig) if r["event"] == "command"}
            assert "good" in seen_cmd_ids and not {"from-other-gw", "agg-as-tso"} & seen_cmd_ids
            assert not dso.results("from-other-gw") and not dso.results("agg-as-tso")
            assert not any(isinstance(s.doc, dict) and s.doc.get("forged") for s in dso.seen)
            assert writes(rig) > before
    run(scenario())


def test_audit_verify_catches_a_tampered_log(tmp_path):
    async def scenario():
        async with Rig(tmp_path) as rig:
            await rig.dso.send(rig.dso.activation(50, 1, cmd_id="a1"))
            await rig.dso.wait_status("a1", "completed", 15)
            await rig.dso.wait_for(lambda: any(r["event"] == "write" for r in audit_records(rig)), 10,
                                   "the audit records at the head-end")
            assert await rig.stop_agent() == 0
            await rig.dso.wait_for(lambda: any(r["event"] == "stop" for r in audit_records(rig)), 10, "stop")
            return rig.config_path, max(audit_records(rig), key=lambda r: r["seq"])
    config, newest = run(scenario())
    gridedge = [sys.executable, "-m", "gridedge", "audit", "verify", "-c", str(config)]
    anchor = ["--anchor", f"{newest['seq']}:{newest['hash']}"]
    ok = subprocess.run(gridedge + anchor, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("OK "), ok.stdout + ok.stderr
    (log,) = (tmp_path / "var" / "audit").glob("audit-*.jsonl")
    lines = log.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[2])
    rec["event"] = "config"      # change one record in the middle
    log.write_bytes(b"".join(lines[:2] + [json.dumps(rec).encode() + b"\n"] + lines[3:]))
    bad = subprocess.run(gridedge, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and f"record {rec['seq']} was changed" in bad.stderr, bad.stderr
    log.write_bytes(b"".join(lines[:-2]))   # the newest two cut off: only the head-end's anchor shows it
    assert subprocess.run(gridedge, capture_output=True, timeout=60).returncode == 0
    cut = subprocess.run(gridedge + anchor, capture_output=True, text=True, timeout=60)
    assert cut.returncode == 1 and "missing" in cut.stderr, cut.stderr


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_flood_of_forged_commands_is_refused_cheaply(tmp_path):
    """A compromised issuer identity floods the gateway with forgeries: each is refused, their answers and audit
    records have a budget (the outbox and the audit trail do not grow with the flood), telemetry goes on without
    a gap, memory stays flat, and a real command behind the flood is still executed."""
    async def scenario():
        async with Rig(tmp_path, telemetry_ms=250) as rig:
            dso = rig.dso
            await dso.wait_for(lambda: dso.latest.get("W") is not None, 15, "telemetry")
            rss0 = _rss_kb(rig.agent.pid)
            fake = ed25519.Ed25519PrivateKey.generate()
            doc = dso.activation(0, 86400, issuer="aggregator")
            n = 400
            t0 = time.monotonic()
            for k in range(n):   # valid-looking, signed, on the aggregator's own topic: only the key is wrong
                await dso.send(dict(doc, cmd_id=f"flood-{k}"), key=fake)
            await dso.send(dso.activation(60, 2, cmd_id="real"))
            await dso.wait_status("real", "completed", 60)   # behind the whole flood (one inbound queue)
            elapsed = time.monotonic() - t0
            rss1 = _rss_kb(rig.agent.pid)
            assert rss1 - rss0 < 10_000, (rss0, rss1)
            answers = [r for r in dso.results(None) if r["detail"].get("refusal") == "unauthenticated"]
            assert 10 <= len(answers) <= 10 + elapsed / 6 + 1
            refusals = [r for r in audit_records(rig) if r.get("decision") == "unauthenticated"]
            assert len(refusals) <= 20 + elapsed / 6 + 1          # one by one within the budget only
            rep = dso.audit.report(rig.gateway_id, "telemetry")
            assert rep.received > elapsed and rep.missing == [] and not rep.reused
            assert await rig.stop_agent() == 0
            await dso.wait_for(lambda: any(r.get("suppressed") for r in audit_records(rig)), 10, "the summary")
            summed = sum(r.get("suppressed", 0) for r in audit_records(rig))
            one_by_one = sum(1 for r in audit_records(rig) if r.get("decision") == "unauthenticated"
                             and not r.get("suppressed"))
            assert summed + one_by_one == n          # every forgery is accounted for in the trail
    run(scenario())
