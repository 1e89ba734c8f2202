"""EST (RFC 7030) `simplereenroll`: the certificate rotation's other way to the operator's CA, where it runs EST.

The same key and request as over MQTT (identity.py), POSTed over HTTPS; the gateway authenticates with its current
certificate (TLS client authentication, RFC 7030 3.3.2), so the EST server knows whose identity it renews. The
answer is a certs-only PKCS#7, base64 (RFC 7030 4.2.3, RFC 8951). A 202 means the CA holds the request for a person:
the rotation fails with the time the server asks to wait, and the next renewal tries again.

A small HTTP/1.1 client on asyncio streams rather than a library: one request, its whole duration bounded (not only
the gap between bytes: a server that drips its answer must not hold the rotation), its answer bounded in size, and
every byte of it hostile until checked.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from ..core.text import escape

MAX_ANSWER_BYTES = 65536  # a few certificates; anything larger is not an EST answer
PATH = "/.well-known/est"


class EstError(Exception):
    """The EST server did not give a certificate; the message says what it did."""


def check_url(url: str) -> str:
    """An EST base URL: https://host[:port]/.well-known/est[/label]. ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"must be an https:// URL like https://est.example.net{PATH}, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"must be https://host[:port]{PATH}[/label] with nothing after, got {url!r}")
    path = parts.path.rstrip("/")
    if path != PATH and not (path.startswith(PATH + "/") and "/" not in path[len(PATH) + 1:]):
        raise ValueError(f"the path must be {PATH} or {PATH}/<label> (RFC 7030 3.2.2), got {parts.path!r}")
    parts.port  # noqa: B018 - raises ValueError for a port out of range
    return url


async def simplereenroll(url: str, csr_der: bytes, ssl_context: ssl.SSLContext, timeout_s: float) \
        -> list[x509.Certificate]:
    """POST the request to <url>/simplereenroll; the certificates of the answer, or EstError (TimeoutError past
    timeout_s, whatever the server does meanwhile)."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 443
    path = parts.path.rstrip("/") + "/simplereenroll"
    body = base64.b64encode(csr_der)
    head = (f"POST {path} HTTP/1.1\r\nHost: {_host_header(host, port)}\r\nContent-Type: application/pkcs10\r\n"
            f"Content-Transfer-Encoding: base64\r\nContent-Length: {len(body)}\r\nAccept: application/pkcs7-mime\r\n"
            f"Connection: close\r\n\r\n").encode()
    try:
        answer = await asyncio.wait_for(_exchange(host, port, ssl_context, head + body), timeout_s)
    except asyncio.TimeoutError:
        raise EstError(f"no complete answer from {host}:{port} within {timeout_s:g} s") from None
    except ssl.SSLError as exc:
        raise EstError(f"TLS with {host}:{port} failed ({exc.reason or exc})") from None
    except OSError as exc:  # refused, unreachable, reset
        raise EstError(f"connection to {host}:{port} failed: {exc.strerror or exc}") from None
    return certificates(*parse_response(answer))


async def _exchange(host: str, port: int, ctx: ssl.SSLContext, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    try:
        writer.write(request)
        await writer.drain()
        data = b""
        while chunk := await reader.read(MAX_ANSWER_BYTES + 1 - len(data)):
            data += chunk
            if len(data) > MAX_ANSWER_BYTES:
                raise EstError(f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
        return data
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            pass


def _host_header(host: str, port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == 443 else f"{name}:{port}"


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """An HTTP/1.1 response read to its end: (status, headers by lower-case name, body). EstError when it is not
    one."""
    if not data:  # TLS 1.3: the server refuses a client certificate after the handshake, by closing
        raise EstError("the EST server closed the connection without an answer (did it refuse the gateway's "
                       "certificate?)")
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise EstError("the answer is not HTTP (no end of headers)")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit() \
            or len(status_line[1]) != 3:
        raise EstError(f"the answer is not HTTP: {escape(lines[0], 80)}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise EstError(f"malformed header line {escape(line, 80)}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(rest)
    elif "content-length" in headers:
        n = headers["content-length"]
        if not n.isdigit() or int(n) > len(rest):
            raise EstError(f"the answer is cut short or its Content-Length is wrong ({escape(n, 20)})")
        body = rest[:int(n)]
    else:
        body = rest
    return int(status_line[1]), headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, sep, data = data.partition(b"\r\n")
        try:
            n = int(size.split(b";")[0].strip(), 16)
        except ValueError:
            n = -1
        if not sep or n < 0 or len(data) < n + 2:
            raise EstError("malformed chunked answer")
        if n == 0:
            return out
        out, data = out + data[:n], data[n + 2:]


def certificates(status: int, headers: dict[str, str], body: bytes) -> list[x509.Certificate]:
    """The certificates of a 200 with a certs-only PKCS#7; EstError for anything else, saying what it was."""
    if status == 202:
        wait = headers.get("retry-after", "")
        raise EstError("the EST server holds the request for approval (202)"
                       + (f"; it asks to try again in {escape(wait, 40)} s" if wait.isdigit() else ""))
    if status != 200:
        text = escape(body[:200].decode("utf-8", "replace"), 200)
        raise EstError(f"the EST server answered {status}" + (f": {text}" if text else ""))
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/pkcs7-mime":
        raise EstError(f"the answer is {escape(ctype or 'untyped', 60)}, not application/pkcs7-mime")
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except (binascii.Error, ValueError) as exc:
        raise EstError(f"not a certificate: the answer is not a base64 certs-only PKCS#7 ({escape(exc, 120)})") \
            from None
    if not certs:
        raise EstError("not a certificate: the PKCS#7 answer holds none")
    return certs
