"""A bounded HTTPS download for fleet changes (a configuration by URL): one deadline over the whole of it, a size
cap, and the bytes must hash to the SHA-256 the signed command gave.

Why not urllib (or python-tuf's fetcher): their timeout is per socket operation, so a server that drips a byte
just inside it holds the download for ever. Here one asyncio deadline covers name lookup, connect, TLS, headers
and body, and the agent's loop keeps reading and controlling meanwhile. The request is HTTP/1.0, so the answer
is never chunked: the body is what follows the headers, up to Content-Length or the end of the connection.
Redirects are not followed (the command names the final URL; its hash protects the content either way).
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from ..core.text import escape

MAX_HEAD_BYTES = 16384   # status line and headers
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class DownloadError(Exception):
    """The download is refused; the message says why in one line (it ends up in a result)."""


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status line and headers (ending with an empty line) -> (status, lower-case name -> value). Hostile bytes:
    anything that is not plain HTTP/1.x is a DownloadError, never another exception."""
    lines = head.split(b"\r\n")
    m = _STATUS.fullmatch(lines[0])
    if m is None:
        raise DownloadError(f"not an HTTP/1.x answer: {escape(lines[0][:80])}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise DownloadError(f"malformed header line: {escape(line[:80])}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers and headers[key] != text:
            raise DownloadError(f"header {key} given twice with different values")
        headers[key] = text
    return int(m.group(1)), headers


def _declared_length(headers: dict[str, str]) -> int | None:
    if "transfer-encoding" in headers:  # not allowed in an answer to HTTP/1.0
        raise DownloadError(f"unexpected Transfer-Encoding {escape(headers['transfer-encoding'], 40)}")
    text = headers.get("content-length")
    if text is None:
        return None
    if not text.isdigit() or len(text) > 18:
        raise DownloadError(f"malformed Content-Length {escape(text, 40)}")
    return int(text)


async def _body(reader: asyncio.StreamReader, headers: dict[str, str], max_bytes: int, limit_text: str) -> bytes:
    length = _declared_length(headers)
    if length is not None:
        if length > max_bytes:
            raise DownloadError(f"the server announces {length} bytes, more than {limit_text}")
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise DownloadError(f"the connection ended after {len(exc.partial)} of {length} bytes") from None
    chunks, got = [], 0
    while chunk := await reader.read(65536):
        got += len(chunk)
        if got > max_bytes:
            raise DownloadError(f"the server sent more than {limit_text}")
        chunks.append(chunk)
    return b"".join(chunks)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def download(url: str, *, sha256: str, max_bytes: int, timeout_s: float, ca_file: Path | None = None,
                   declared_size: int | None = None) -> bytes:
    """The bytes at an https:// URL, or DownloadError: more than `declared_size` (or max_bytes), longer than
    timeout_s in all, a status other than 200, or bytes that do not hash to sha256."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 443
    except ValueError as exc:
        raise DownloadError(f"malformed URL: {exc}") from None
    if parts.scheme != "https" or not host:
        raise DownloadError("only https:// URLs with a host are fetched")
    limit = min(max_bytes, declared_size) if declared_size is not None else max_bytes
    limit_text = f"the declared size of {declared_size} bytes" if declared_size is not None and declared_size <= \
        max_bytes else f"the limit of {max_bytes} bytes"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = parts.netloc.rpartition("@")[2]
    if not all(0x20 < ord(c) < 0x7F for c in target + netloc):
        raise DownloadError("the URL must be printable ASCII without spaces (percent-encode the rest)")
    request = f"GET {target} HTTP/1.0\r\nHost: {netloc}\r\nUser-Agent: gridedge\r\nAccept: */*\r\n\r\n"
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls_context(ca_file),
                                                           server_hostname=host, limit=MAX_HEAD_BYTES)
            writer.write(request.encode("ascii"))
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise DownloadError(f"the status line and headers are longer than {MAX_HEAD_BYTES} bytes") from None
            except asyncio.IncompleteReadError:
                raise DownloadError("the connection ended before the headers did") from None
            status, headers = parse_head(head[:-4])
            if status != 200:
                extra = " (redirects are not followed: give the final URL)" if 300 <= status < 400 else ""
                raise DownloadError(f"HTTP status {status}{extra}")
            body = await _body(reader, headers, limit, limit_text)
    except TimeoutError:
        raise DownloadError(f"not complete within {timeout_s:g} s (fleet.download_timeout_s bounds the whole "
                            f"download)") from None
    except OSError as exc:  # ssl.SSLError, refused, unreachable, name not found
        raise DownloadError(f"{type(exc).__name__}: {escape(exc, 200)}") from None
    finally:
        if writer is not None:
            writer.transport.abort()   # HTTP/1.0: nothing more to say; a hostile server gets no graceful close
    digest = hashlib.sha256(body).hexdigest()
    if digest != sha256:
        raise DownloadError(f"sha256 mismatch: the {len(body)} bytes hash to {digest}, the command said {sha256}")
    return body

