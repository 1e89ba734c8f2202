"""A minimal EST server (RFC 7030) for the rig: `simplereenroll` and `cacerts` over HTTPS with client-certificate
authentication, answered by the rig's operator CA (operator_ca.py, its `mode` included).

Re-enrolment renews an identity the server already knows: the TLS client certificate must be one the rig's CA
issued, and the request must name the same subject (RFC 7030 4.2.2). The answer is a certs-only PKCS#7, base64.
`drip` sends a valid answer one byte at a time, slower than any client should wait, to show the gateway bounds an
exchange's whole duration. HTTP is read with limits (a test tool still must not hang on a bad client).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from gridedge.core.text import escape

from .operator_ca import OperatorCa
from .pki import Pki

log = logging.getLogger(__name__)

PATH = "/.well-known/est"
MAX_HEAD = 16384
MAX_BODY = 65536
PKCS7 = "application/pkcs7-mime; smime-type=certs-only"


class EstServer:
    def __init__(self, ca: OperatorCa, pki: Pki, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ca, self.pki, self.host, self.port = ca, pki, host, port
        self.drip_s: float | None = None  # seconds between the bytes of an answer (a server that drips)
        self.requests: list[str] = []     # "<method> <path> <status>" of every request served
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))
        ctx.verify_mode = ssl.CERT_REQUIRED  # client-certificate authentication (RFC 7030 3.3.2)
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, body = await asyncio.wait_for(_read_request(reader), 10)
            peer = x509.load_der_x509_certificate(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
            status, ctype, answer = self._route(method, path, body, peer)
            self.requests.append(f"{method} {path} {status}")
            head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n" \
                   f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
            if self.drip_s is None:
                writer.write(head + answer)
            else:
                for i in range(len(head + answer)):
                    writer.write((head + answer)[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(self.drip_s)
            await writer.drain()
        except (ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ssl.SSLError) as exc:
            log.info("EST request not served: %s", escape(exc))
        finally:
            writer.close()

    def _route(self, method: str, path: str, body: bytes, peer: x509.Certificate) -> tuple[int, str, bytes]:
        if method == "GET" and path == PATH + "/cacerts":
            return 200, PKCS7, _certs_only([self.ca.ca[0]])
        if method != "POST" or path != PATH + "/simplereenroll":
            return 404, "text/plain", b"not found"
        try:
            csr = x509.load_der_x509_csr(base64.b64decode(b"".join(body.split()), validate=True))
        except (binascii.Error, ValueError):
            return 400, "text/plain", b"not a base64 PKCS#10 request"
        if csr.subject != peer.subject:  # re-enrolment renews the identity that authenticated (RFC 7030 4.2.2)
            return 400, "text/plain", b"the request's subject is not the client certificate's"
        if self.ca.mode == "garbage":
            return 200, PKCS7, base64.b64encode(b"this is not a certificate")
        try:
            chain = self.ca.issue(csr, _cn(peer))
        except ValueError as exc:
            return 400, "text/plain", str(exc).encode()
        return 200, PKCS7, _certs_only(chain)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise ValueError("request head too large")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if not 0 <= length <= MAX_BODY:
        raise ValueError("request body too large")
    return method, path, await reader.readexactly(length)


def _certs_only(certs: list[x509.Certificate]) -> bytes:
    return base64.b64encode(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}
