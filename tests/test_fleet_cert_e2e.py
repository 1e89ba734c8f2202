"""Issue 13, certificate rotation over the real broker (mosquitto with TLS and the rig's ACL): the gateway makes its key
and CSR, the operator's CA in the rig answers with a signed install_certificate (the DSO holds the secadm role), and
the gateway swaps its identity only after checking the answer and a test connection; every bad answer ends with the
gateway connected on its previous certificate, without a person.
"""
from __future__ import annotations

import asyncio
import datetime
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
                              ("other_ca", "not issued by a CA the gateway trusts"),
                              # valid two minutes from now (the CA's clock is ahead): within the gateway's allowance
                              # for skew, but `gridedge check` (the unit's ExecStartPre) would refuse it: not switched
                              ("future", "`gridedge check` would refuse it: certificate not valid before")):
                rig.ca.mode = mode
                rid, answer = await rotate(rig)
                r = await dso.wait_status(answer, "accepted" if mode == "future" else "rejected", 10)
                assert mode == "future" or why in r["reason"], (mode, r["reason"])
                r = await dso.wait_status(rid, "failed", 10)
                assert why in r["reason"] and steps(rig, rid) == ["accepted", "failed"], (mode, r["reason"])
                assert leaf(rig.gw_cert) == before
                assert sorted(p.name for p in (rig.gw_cert.parent / "identity").iterdir()) == \
                    sorted(["current", os.readlink(rig.gw_cert.parent / "identity" / "current")])

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
            assert connections(rig) == 2 and connections(rig, "-rotation") == 1
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
            # the audit trail's copies leave with the next telemetry flush: awaited, not assumed
            def audit_steps():
                return [d["record"]["step"] for d in dso.records(contract.TOPIC_AUDIT)
                        if d["record"].get("rotation_id") == rid]
            await dso.wait_for(lambda: len(audit_steps()) >= 2, 10, "the rotation's audit records")
            assert audit_steps() == ["applied", "healthy"]
            check_schemas(rig)
            log = rig.agent_log.read_text()
            assert "Traceback" not in log, log[-3000:]
            assert json.dumps(r)  # the result is JSON
    run(scenario())


def _applied_before_a_crash(rig: Rig, *, starts: int) -> str:
    """What the disk holds when the agent dies right after switching to a new identity (the journal says applied):
    here, one that `gridedge check` passes and the broker refuses (issued by a CA it does not know: the operator moved
    to a new CA and the broker was not told). Returns the rotation id."""
    import time

    from cryptography.hazmat.primitives.asymmetric import ec

    from gridedge.fleet.certificate import Rotation
    from gridedge.fleet.identity import IdentityStore
    from gridedge.hil.pki import make_ca, sign_client

    store = IdentityStore(rig.gw_cert, rig.gw_key)
    before = store.adopt()
    key = ec.generate_private_key(ec.SECP256R1())
    ident = store.new(key)
    ca_cert, ca_key = make_ca("another CA")
    store.put_chain(ident, [sign_client(ca_cert, ca_key, rig.gateway_id, key.public_key())])
    rid = f"crash-{starts}"
    journal = rig.workdir / "var" / "fleet" / "certificate.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps(Rotation(rid, "mqtt", "applied", ident.name, time.time(), time.time() + 60, 10.0,
                                           previous=before.name, starts=starts).__dict__))
    store.switch(ident)
    return rid


def test_a_certificate_the_broker_refuses_is_never_kept(tmp_path):
    """A certificate the broker refuses: refused in the test connection, so never switched to; and if the agent stopped
    right after a switch to one (the broker changed in between), at its next start it cannot connect within the window
    and goes back to the previous certificate; after two such starts (a crash loop) it goes back before connecting."""
    async def scenario():
        async with Rig(tmp_path, roles=ROLES, operator_ca=True,
                       fleet='[fleet.certificate]\nca_file = "pki/issuing-cas.pem"\n') as rig:
            dso = rig.dso
            await dso.wait_for(lambda: dso.latest.get("W") is not None, 15, "telemetry")
            before = leaf(rig.gw_cert)

            # from the operator's second CA, which the gateway trusts and the broker does not: the test connection
            # fails, nothing is switched, the live connection never dropped
            rig.ca.mode = "other_ca"
            rid, answer = await rotate(rig)
            await dso.wait_status(answer, "accepted", 10)
            r = await dso.wait_status(rid, "failed", 30)
            assert r["reason"].startswith("the broker refused the new certificate in a test connection"), r["reason"]
            assert "the broker refused our client certificate" in r["reason"]
            assert steps(rig, rid) == ["accepted", "validated", "failed"]
            assert leaf(rig.gw_cert) == before and connections(rig) == 1

            await rig.stop_agent()
            rid = _applied_before_a_crash(rig, starts=0)
            assert leaf(rig.gw_cert) != before   # what the next start finds in place
            await rig.start_agent()
            r = await dso.wait_status(rid, "rolled_back", 40)
            assert "not connected to the broker within 10 s with the new certificate" in r["reason"], r["reason"]
            assert "the broker refused our client certificate" in r["reason"], r["reason"]
            assert leaf(rig.gw_cert) == before
            await dso.wait_for(lambda: states(rig)[-1]["status"] == "online"
                               and states(rig)[-1]["security"]["certificate"]["last_failure"], 10, "online")
            assert states(rig)[-1]["security"]["certificate"]["last_failure"]["rotation_id"] == rid

            # a crash loop: the journal counts the starts; the third goes back before connecting
            await rig.stop_agent()
            refused = rig.broker.log_path.read_text().count("certificate verify failed")
            rid = _applied_before_a_crash(rig, starts=2)
            await rig.start_agent()
            r = await dso.wait_status(rid, "rolled_back", 40)   # a whole agent start, as above: 40 s on a loaded machine
            assert "started 2 times with the new certificate without proving healthy" in r["reason"], r["reason"]
            assert leaf(rig.gw_cert) == before
            assert refused > 0 and rig.broker.log_path.read_text().count("certificate verify failed") == refused
            await dso.wait_online(10)
            check_schemas(rig)
    run(scenario())


def test_renewal_starts_by_itself_past_its_fraction_and_the_expiry_is_reported_before_it_happens(tmp_path):
    """A certificate issued an hour ago that ends in half an hour is past renew_at = 0.5: the state says so from the
    first message (expiring, with the time left), and the gateway renews it by itself through the operator's CA."""
    async def scenario():
        async with Rig(tmp_path, roles=ROLES, operator_ca=True, gateway_cert_s=(-3600, 1800),
                       fleet="[fleet.certificate]\nrenew_at = 0.5\n") as rig:
            dso = rig.dso
            before = leaf(rig.gw_cert)
            first = next(s for s in states(rig) if s["status"] == "online")
            expiring = {e["role"]: e for e in first["security"]["expiring"]}
            assert 0 < expiring["uplink.cert_file"]["days_left"] <= 0.03
            cert = first["security"]["certificate"]
            assert cert["not_after"] == before.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert contract.parse_iso_utc(cert["renew_from"]) == \
                int((before.not_valid_before_utc.timestamp() + 0.5 * 5400) * 1e9)

            r = await dso.wait_for(lambda: next((r for r in dso.seen if r.topic.endswith("/result")
                                                 and r.doc["cmd_id"].startswith("renew-")
                                                 and r.doc["status"] == "healthy"), None), 30, "a renewal healthy")
            rid = r.doc["cmd_id"]
            assert steps(rig, rid) == ["accepted", "validated", "applied", "healthy"]
            after = leaf(rig.gw_cert)
            assert after.not_valid_after_utc > before.not_valid_after_utc + datetime.timedelta(days=1)
            await dso.wait_for(lambda: states(rig)[-1]["security"]["certificate"]["not_after"] ==
                               after.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), 10, "the new end in the state")
            expiring = {e["role"]: e for e in states(rig)[-1]["security"]["expiring"]}
            assert expiring["uplink.cert_file"]["days_left"] > 1
            assert len({d.doc["cmd_id"] for d in dso.seen if d.topic.endswith("/result")
                        and d.doc["cmd_id"] and d.doc["cmd_id"].startswith("renew-")}) == 1   # once, not again
            check_schemas(rig)
    run(scenario())


def test_a_rotation_over_est_with_client_certificate_authentication(tmp_path):
    """rotate_certificate with method est: the request goes to the rig's EST server (simplereenroll over HTTPS, the
    gateway authenticated by its current certificate); bad answers and a server that drips end failed, unchanged."""
    async def scenario():
        async with Rig(tmp_path, roles=ROLES, est=True,
                       fleet='[fleet]\ndownload_timeout_s = 3\n\n[fleet.certificate]\nest_url = "{est_url}"\n') as rig:
            dso = rig.dso
            await dso.wait_for(lambda: dso.latest.get("W") is not None, 15, "telemetry")
            before = leaf(rig.gw_cert)

            async def rotate_est() -> str:
                cmd = dso.command("rotate_certificate", {"method": "est", "health_window_s": 10})
                await dso.send(cmd)
                return cmd["cmd_id"]

            for mode, drip, why in (("garbage", None, "EST: not a certificate"),
                                    ("other_key", None, "is for another key"),
                                    ("good", 0.2, "no complete answer from 127.0.0.1")):
                rig.ca.mode, rig.est.drip_s = mode, drip
                rid = await rotate_est()
                r = await dso.wait_status(rid, "failed", 20)
                assert why in r["reason"], (mode, r["reason"])
                assert leaf(rig.gw_cert) == before

            rig.est.drip_s = None
            rid = await rotate_est()
            await dso.wait_status(rid, "healthy", 30)
            assert steps(rig, rid) == ["accepted", "validated", "applied", "healthy"]
            assert leaf(rig.gw_cert) != before and spki(leaf(rig.gw_cert)) == spki(rig.ca.issued[-1])
            assert rig.est.requests[-1] == "POST /.well-known/est/simplereenroll 200"
            assert not any(s.topic == rig.prefix + "csr" for s in dso.seen)   # EST, not MQTT
            check_schemas(rig)
    run(scenario())
