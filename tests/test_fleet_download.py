"""The fleet's bounded download (edge/fleet/download.py) against a real HTTPS server on loopback (hil/https_files.py):
one deadline over the whole download, the declared size, the hash; and its parser fuzzed with hostile answers."""
from __future__ import annotations

import asyncio
import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from gridedge.fleet.download import DownloadError, _body, download, parse_head
from gridedge.hil.https_files import HttpsFiles
from gridedge.hil.pki import make_pki

from .aio import arun

BODY = b"[gateway]\nid = \"gw\"\n" * 20
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def fetch(pki, path: str, body: bytes = BODY, *, mode: str = "ok", sha: str = SHA, timeout_s: float = 5.0,
          ca: bool = True, **kw) -> bytes:
    async def go():
        async with HttpsFiles(pki) as files:
            url = files.put(path, body, mode=mode, **{k: v for k, v in kw.items() if k in ("drip_s", "status")})
            return await download(url, sha256=sha, max_bytes=kw.get("max_bytes", 1 << 20), timeout_s=timeout_s,
                                  ca_file=pki.ca_cert if ca else None, declared_size=kw.get("size"))
    return arun(go(), 30)


def refused(pki, path: str, **kw) -> str:
    with pytest.raises(DownloadError) as ei:
        fetch(pki, path, **kw)
    return str(ei.value)


def test_a_download_is_its_bytes(pki):
    assert fetch(pki, "/a.toml") == BODY
    assert fetch(pki, "/b.toml", mode="no_length", size=len(BODY)) == BODY


def test_a_dripping_server_is_cut_off_by_the_whole_deadline(pki):
    """One byte every 0.1 s: no gap comes near any per-read timeout; the whole is bounded at 1 s."""
    loop_free = []

    async def go():
        async with HttpsFiles(pki) as files:
            url = files.put("/drip", BODY, mode="drip", drip_s=0.1)
            ticker = asyncio.create_task(_tick(loop_free))  # the agent's loop keeps running meanwhile
            try:
                with pytest.raises(DownloadError) as ei:
                    await download(url, sha256=SHA, max_bytes=1 << 20, timeout_s=1.0, ca_file=pki.ca_cert)
            finally:
                ticker.cancel()
            return str(ei.value)
    why = arun(go(), 30)
    assert why == "not complete within 1 s (fleet.download_timeout_s bounds the whole download)"
    assert len(loop_free) >= 5


async def _tick(out: list) -> None:
    while True:
        await asyncio.sleep(0.05)
        out.append(1)


def test_more_than_declared_or_allowed_is_refused(pki):
    assert refused(pki, "/big", size=10) == f"the server announces {len(BODY)} bytes, more than the declared size " \
                                           f"of 10 bytes"
    assert refused(pki, "/big", mode="no_length", size=10) == "the server sent more than the declared size of 10 bytes"
    assert refused(pki, "/big", mode="no_length", max_bytes=64) == "the server sent more than the limit of 64 bytes"


def test_a_wrong_hash_a_status_and_an_untrusted_server_are_refused(pki):
    assert refused(pki, "/x", sha="0" * 64).startswith(f"sha256 mismatch: the {len(BODY)} bytes hash to {SHA}")
    assert refused(pki, "/x", mode="status", status=404) == "HTTP status 404"
    assert refused(pki, "/x", mode="status", status=302) == \
        "HTTP status 302 (redirects are not followed: give the final URL)"
    assert refused(pki, "/x", ca=False).startswith("SSLCertVerificationError")


def test_only_https_urls_are_fetched():
    for url in ("http://127.0.0.1/x", "https:///x", "file:///etc/passwd", "https://[::1/x", "https://h/a b",
                "https://h/\u00e9", "https://h:99999/"):
        with pytest.raises(DownloadError):
            arun(download(url, sha256=SHA, max_bytes=10, timeout_s=1))


def test_parse_head():
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b ") == (200, {"content-length": "5",
                                                                                      "x-a": "b"})
    for bad in (b"HTTP/2 200", b"HTTP/1.1 20 OK", b"HTTP/1.1 200 OK\r\nno colon", b"HTTP/1.1 200 OK\r\n: x",
                b"HTTP/1.1 200 OK\r\nA: 1\r\nA: 2", b"junk"):
        with pytest.raises(DownloadError):
            parse_head(bad)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400) | st.builds(lambda h, t: b"HTTP/1.0 200 OK\r\n" + h + b"\r\n" + t,
                                            st.binary(max_size=200), st.binary(max_size=200)))
def test_fuzz_parse_head_says_why_or_parses(head):
    try:
        status, headers = parse_head(head)
    except DownloadError as exc:
        assert str(exc).isprintable()
        return
    assert 100 <= status <= 999 and all(k == k.lower() for k in headers)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["content-length", "transfer-encoding", "x"]), st.text(max_size=30)),
       st.binary(max_size=300), st.integers(0, 400))
def test_fuzz_body_never_exceeds_its_limit(headers, data, limit):
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await _body(reader, headers, limit, "the limit")
    try:
        body = asyncio.run(go())
    except DownloadError as exc:
        assert str(exc).isprintable()
        return
    assert len(body) <= limit and data.startswith(body)
