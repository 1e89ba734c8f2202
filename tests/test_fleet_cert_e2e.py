"""Issue 13, certificate rotation over the real broker (mosquitto with TLS and the rig's ACL): the gateway makes its key
and CSR, the operator's CA in the rig answers with a signed install_certificate (the DSO holds the secadm role), and
the gateway swaps its identity only after checking the answer and a test connection; every bad answer ends with the
gateway connected on its previous certificate, without a person.
"""
from __future__ import annotations

import asyncio
import json
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gridedge import contract
from gridedge.hil.rig import Rig

from .conftest import validate_message

ROLES = {"dso": ["operator", "secadm"]}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 150))


def leaf(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(open(path, "rb").read())


def spki(obj) -> bytes:
    key = obj.public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def rotate(rig: Rig, **params) -> tuple[str, str]:
    """Send rotate_certificate; (its cmd_id, the cmd_id of the CA's install_certificate answer)."""
    cmd = rig.dso.command("rotate_certificate", {"health_window_s": 10, **params})
    await rig.dso.send(cmd)
    await rig.dso.wait_status(cmd["cmd_id"], "accepted", 10)
    return cmd["cmd_id"], await rig.ca_service.answer_for(cmd["cmd_id"], 10)


def steps(rig: Rig, cmd_id: str) -> list[str]:
    """The statuses of a command's results, each once (one published again after the reconnect comes twice, live and
    on backfill/result), in seq order."""
    unique = {r["msg_id"]: r for r in rig.dso.results(cmd_id)}
    return [r["status"] for r in sorted(unique.values(), key=lambda r: r["seq"])]


def connections(rig: Rig, suffix: str = "") -> int:
    """How often the gateway's uplink (suffix "-rotation": its test connection) has connected: the broker's log."""
    return rig.broker.log_path.read_text().count(f" as {rig.gateway_id}{suffix} (")


def states(rig: Rig) -> list[dict]:
    return [s.doc for s in rig.dso.seen if s.topic == rig.prefix + "state" and isinstance(s.doc, dict)]


def check_schemas(rig: Rig) -> None:
    for s in rig.dso.seen:
        if s.doc is not None and not s.topic.split("/")[-2:-1] == ["cmd"]:
            validate_message(s.topic, s.doc)


def test_a_rotation_over_mqtt_refuses_every_bad_answer_and_swaps_a_good_one(tmp_path):
    async def scenario():
        async with Rig(tmp_path, roles=ROLES, operator_ca=True) as rig:
            dso = rig.dso
            await dso.wait_for(lambda: dso.latest.get("W") is not None, 15, "telemetry")
            before = leaf(rig.gw_cert)

            # bad answers: each refused with its reason, the rotation failed, the new key gone, nothing changed
            for mode, why in (("garbage", "not a certificate"), ("other_key", "is for another key"),
                              ("expired", "the certificate expired"),
                              ("untrusted", "not issued by a CA the gateway trusts")):
                rig.ca.mode = mode
                rid, answer = await rotate(rig)
                r = await dso.wait_status(answer, "rejected", 10)
                assert why in r["reason"], (mode, r["reason"])
                r = await dso.wait_status(rid, "failed", 10)
                assert why in r["reason"] and steps(rig, rid) == ["accepted", "failed"]
                assert leaf(rig.gw_cert) == before
                assert sorted(p.name for p in (rig.gw_cert.parent / "identity").iterdir()) == \
                    sorted(["current", os.readlink(rig.gw_cert.parent / "identity" / "current")])

            # the broker refuses it (a CA clock two minutes ahead: the gateway allows for skew, mosquitto does not):
            # the test connection fails, nothing is swapped, the live connection never dropped
            rig.ca.mode = "future"
            connects = connections(rig)
            rid, answer = await rotate(rig)
            await dso.wait_status(answer, "accepted", 10)
            r = await dso.wait_status(rid, "failed", 30)
            assert "the broker refused the new certificate in a test connection" in r["reason"], r["reason"]
            assert steps(rig, rid) == ["accepted", "validated", "failed"]
            assert leaf(rig.gw_cert) == before
            assert connections(rig) == connects

            # a good answer: checked, tried, swapped, reconnected, healthy
            rig.ca.mode = "good"
            rid, answer = await rotate(rig)
            await dso.wait_status(answer, "accepted", 10)
            r = await dso.wait_status(rid, "healthy", 30)
            assert steps(rig, rid) == ["accepted", "validated", "applied", "healthy"]
            after = leaf(rig.gw_cert)
            assert after != before and after.subject == before.subject
            assert r["detail"]["certificate"]["serial"] == format(after.serial_number, "x")
            csr_msgs = [s.doc for s in dso.seen if s.topic == rig.prefix + "csr" and s.doc["rotation_id"] == rid]
            csr = x509.load_pem_x509_csr(csr_msgs[0]["csr"].encode())
            key = serialization.load_pem_private_key(rig.gw_key.read_bytes(), None)
            assert spki(after) == spki(csr) == spki(key)          # the new key is the one in the request
            assert stat.S_IMODE(os.stat(rig.gw_key).st_mode) == 0o600
            der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            secret = key.private_numbers().private_value.to_bytes(32, "big")
            assert not any(secret in s.raw or der in s.raw or der.hex().encode() in s.raw for s in dso.seen)

            # reconnected with it: a new "online" state, and telemetry flows after the swap
            assert connections(rig) == connects + 1 and connections(rig, "-rotation") == 1
            n = len(dso.seen)
            await dso.wait_for(lambda: any(s.topic == rig.prefix + "telemetry" for s in dso.seen[n:]), 10,
                               "telemetry after the swap")
            # the state tells at once: the certificate in use, no rotation going on, no failure since
            cert = states(rig)[-1]["security"]["certificate"]
            assert cert == {"not_after": after.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "renew_from": cert["renew_from"], "rotation": None, "last_failure": None}
            # only the identity in use is kept
            assert sorted(os.listdir(rig.gw_cert.parent / "identity")) == \
                sorted(["current", os.readlink(rig.gw_cert.parent / "identity" / "current")])
            audit = [d["record"] for d in dso.records(contract.TOPIC_AUDIT)]
            assert [a["step"] for a in audit if a.get("rotation_id") == rid] == ["applied", "healthy"]
            check_schemas(rig)
            log = rig.agent_log.read_text()
            assert "Traceback" not in log, log[-3000:]
            assert json.dumps(r)  # the result is JSON
    run(scenario())
