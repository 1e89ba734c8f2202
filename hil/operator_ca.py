"""The operator's CA in the rig: it answers a gateway's certificate request (docs/fleet.md, "Certificate rotation") as
a head-end's CA adapter would, over MQTT (CaService) and over EST (est_server.py).

Over MQTT it reads <root>/+/csr (and its backfill), checks the request (its signature, the gateway's name in the topic
and in the request) and answers with an install_certificate command signed by an issuer that has the secadm role, on
that gateway's cmd/<issuer> topic, through the broker's ACL like any issuer. `mode` makes it a bad CA for the negative
tests: an answer that is not a certificate, a certificate for another key, an expired one, one valid only from two
minutes on (a CA whose clock is ahead), or one from its second issuing CA, which the broker does not know: a gateway
refuses it unless its fleet.certificate.ca_file names that CA (the rig writes pki/issuing-cas.pem: both CAs), and
then the broker refuses it (the operator moved to a new CA and did not tell the broker).
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import ssl
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gridedge import contract
from gridedge.core.text import escape
from gridedge.mqtt import MqttClient
from gridedge.security.signing import sign_command

from .acl import ROOT
from .dso_sim import Issuer
from .pki import load_ca, make_ca, sign_client

log = logging.getLogger(__name__)

MODES = ("good", "garbage", "other_key", "expired", "other_ca", "future")
GARBAGE = "-----BEGIN CERTIFICATE-----\nVGhpcyBpcyBub3QgYSBjZXJ0aWZpY2F0ZS4=\n-----END CERTIFICATE-----\n"


class OperatorCa:
    def __init__(self, pki_dir: Path) -> None:
        self.ca = load_ca(pki_dir)                     # the rig's CA: the broker trusts what it issues
        self.other_ca = make_ca("gridedge rig issuing CA 2")  # a CA the broker does not know
        self.bundle = Path(pki_dir) / "issuing-cas.pem"        # both: for a gateway's fleet.certificate.ca_file
        self.bundle.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                         for c in (self.ca[0], self.other_ca[0])))
        self.mode = "good"
        self.lifetime: _dt.timedelta | None = None     # of what it issues; None: until the CA ends
        self.issued: list[x509.Certificate] = []

    def issue(self, csr: x509.CertificateSigningRequest, name: str) -> list[x509.Certificate]:
        """The chain (leaf first) that answers a request for `name`, made as `mode` says; ValueError for a request a
        CA must refuse (not signed by its key, another name)."""
        if not csr.is_signature_valid:
            raise ValueError("the request's signature does not verify")
        cn = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cn != [name]:
            raise ValueError(f"the request names {cn}, not {name!r}")
        key = csr.public_key() if self.mode != "other_key" else ec.generate_private_key(ec.SECP256R1()).public_key()
        ca_cert, ca_key = self.other_ca if self.mode == "other_ca" else self.ca
        now = _dt.datetime.now(_dt.timezone.utc)
        validity = {"expired": {"not_before": now - _dt.timedelta(days=10), "not_after": now - _dt.timedelta(days=1)},
                    "future": {"not_before": now + _dt.timedelta(minutes=2)}}.get(self.mode, {})
        if self.lifetime and self.mode != "expired":
            validity["not_after"] = now + self.lifetime
        cert = sign_client(ca_cert, ca_key, name, key, **validity)
        self.issued.append(cert)
        return [cert]

    def answer_pem(self, csr: x509.CertificateSigningRequest, name: str) -> str:
        if self.mode == "garbage":
            return GARBAGE
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.issue(csr, name)).decode()


class CaService:
    """Answers the CSRs of every gateway on the broker with install_certificate commands."""

    def __init__(self, ca: OperatorCa, url: str, ssl_context: ssl.SSLContext, issuer: Issuer, *,
                 root: str = ROOT, client_id: str = "operator-ca") -> None:
        self.ca, self.url, self.ssl_context, self.issuer = ca, url, ssl_context, issuer
        self.root, self.client_id = root, client_id
        self.answers: dict[str, str] = {}   # rotation_id -> cmd_id of the install_certificate that answered it
        self.refused: list[str] = []        # why requests were not answered
        self._mqtt: MqttClient | None = None
        self._task: asyncio.Task | None = None
        self._answered = asyncio.Condition()

    async def start(self) -> None:
        self._mqtt = MqttClient(self.url, self.client_id, ssl_context=self.ssl_context, receive_maximum=100,
                                inbox_limit=0)
        for topic in (f"{self.root}/+/csr", f"{self.root}/+/backfill/csr"):
            await self._mqtt.subscribe(topic, qos=1)
        await self._mqtt.connect()
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._mqtt:
            await self._mqtt.close()

    async def answer_for(self, rotation_id: str, timeout_s: float) -> str:
        """The cmd_id of the install_certificate sent for a rotation, once sent."""
        async def waiter():
            async with self._answered:
                await self._answered.wait_for(lambda: rotation_id in self.answers)
                return self.answers[rotation_id]
        return await asyncio.wait_for(waiter(), timeout_s)

    async def _serve(self) -> None:
        while True:
            msg = await self._mqtt.messages.get()
            try:
                await self._answer(msg.topic, msg.payload)
            except (ValueError, KeyError, TypeError) as exc:  # a request no CA would answer
                self.refused.append(str(exc))
                log.warning("CSR on %s not answered: %s", escape(msg.topic), escape(exc))

    async def _answer(self, topic: str, payload: bytes) -> None:
        gateway = topic[len(self.root) + 1:].split("/", 1)[0]
        doc = json.loads(payload)
        rid = doc["rotation_id"]
        if rid in self.answers:
            return  # the same request again (a backfill of one already answered)
        csr = x509.load_pem_x509_csr(doc["csr"].encode())
        pem = self.ca.answer_pem(csr, gateway)
        cmd = {"schema": contract.SCHEMA_COMMAND, "cmd_id": f"cert-{uuid.uuid4().hex[:12]}",
               "type": "install_certificate", "params": {"certificate": pem, "rotation_id": rid}}
        token = sign_command(cmd, self.issuer.key, issuer=self.issuer.id, audience=gateway)
        await self._mqtt.publish(f"{self.root}/{gateway}/{contract.TOPIC_CMD}/{self.issuer.id}", token)
        async with self._answered:
            self.answers[rid] = cmd["cmd_id"]
            self._answered.notify_all()
