"""JWS: the RFC vectors, what the verifier refuses, and a fuzzer that only ever gets JwsError."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.security import jws

# RFC 8037 appendix A: the Ed25519 key, its JWK thumbprint (A.3) and the signature of "Example of Ed25519 signing"
RFC_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC_THUMB = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC_JWS = ("eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijc"
           "NR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg")


def _b(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


RFC_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(_b(RFC_D))
ED = ed25519.Ed25519PrivateKey.generate()
P256 = ec.generate_private_key(ec.SECP256R1())


def test_rfc8037_vectors():
    pub = RFC_KEY.public_key()
    assert jws.b64url(pub.public_bytes_raw()).decode() == RFC_X
    assert jws.thumbprint(pub) == RFC_THUMB
    token = jws.parse(RFC_JWS)
    jws.verify(token, pub)
    assert token.payload == b"Example of Ed25519 signing"
    assert jws.sign(b"Example of Ed25519 signing", RFC_KEY).decode() == RFC_JWS  # Ed25519 is deterministic


@pytest.mark.parametrize("key", [ED, P256], ids=["Ed25519", "P-256"])
def test_round_trip(key):
    token = jws.sign(b'{"x":1}', key, kid=jws.thumbprint(key.public_key()), typ="gridedge-command+jws")
    parsed = jws.parse(token)
    jws.verify(parsed, key.public_key())
    assert parsed.payload == b'{"x":1}' and parsed.kid == jws.thumbprint(key.public_key())


def test_wrong_key_and_tampered_payload_are_refused():
    token = jws.sign(b'{"limit_pct":40}', ED)
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(jws.JwsError, match="bad signature"):
        jws.verify(jws.parse(token), other)
    h, p, s = token.split(b".")
    forged = h + b"." + jws.b64url(b'{"limit_pct":0}') + b"." + s
    with pytest.raises(jws.JwsError, match="bad signature"):
        jws.verify(jws.parse(forged), ED.public_key())


def _token(header: dict, payload: bytes = b"{}", sig: bytes = bytes(64)) -> bytes:
    return b".".join([jws.b64url(json.dumps(header).encode()), jws.b64url(payload), jws.b64url(sig)])


@pytest.mark.parametrize("token, reason", [
    (_token({"alg": "none"}), "alg must be one of"),
    (_token({"alg": "HS256"}), "alg must be one of"),
    (_token({"alg": "EdDSA", "crit": ["exp"]}), "unsupported parameter 'crit'"),
    (_token({"alg": "EdDSA", "jku": "https://evil"}), "unsupported parameter 'jku'"),
    (_token({"alg": "EdDSA", "b64": False}), "unsupported parameter 'b64'"),
    (_token({"alg": "EdDSA"}, sig=bytes(10)), "signature must be 64 bytes"),
    (_token({"alg": "EdDSA", "kid": 7}), "kid must be a string"),
    (_token({"alg": "EdDSA", "x5c": "MII"}), "x5c must be a list"),
    (b"a.b", "3 parts"),
    (b"a.b.c.d", "3 parts"),
    (b"e30=.e30.AAAA", "not base64url"),
    (b"eyJ+.e30.AAAA", "not base64url"),
    (jws.b64url(b'{"alg":"EdDSA","alg":"none"}') + b".e30." + jws.b64url(bytes(64)), "duplicate key 'alg'"),
    (jws.b64url(b"[1]") + b".e30." + jws.b64url(bytes(64)), "not a JSON object"),
    (jws.b64url(b"[" * 5000 + b"]" * 5000) + b".e30." + jws.b64url(bytes(64)), "too large"),
    (b"x" * 40000, "too large"),
    ("é.e30.AAAA", "ASCII"),
])
def test_malformed_tokens_are_refused_with_a_reason(token, reason):
    with pytest.raises(jws.JwsError, match=reason):
        jws.parse(token)


def test_the_key_decides_the_algorithm():
    """An ES256 token cannot be checked against an Ed25519 key (or the other way round): no algorithm confusion."""
    es = jws.parse(jws.sign(b"{}", P256))
    with pytest.raises(jws.JwsError, match="does not match the issuer's Ed25519 key"):
        jws.verify(es, ED.public_key())
    ed = jws.parse(jws.sign(b"{}", ED))
    with pytest.raises(jws.JwsError, match="does not match the issuer's P-256 key"):
        jws.verify(ed, P256.public_key())


GOOD = jws.sign(b'{"cmd_id":"c1"}', ED)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500),
    st.builds(lambda i, b: GOOD[:i] + bytes([b]) + GOOD[i + 1:], st.integers(0, len(GOOD) - 1), st.integers(0, 255)),
    st.builds(lambda a, b: GOOD[:a] + GOOD[b:], st.integers(0, len(GOOD)), st.integers(0, len(GOOD))),
))
def test_fuzz_only_jws_errors(data):
    """Anything at all: parse+verify either succeed (only the untouched token can) or raise JwsError."""
    try:
        jws.verify(jws.parse(data), ED.public_key())
    except jws.JwsError:
        return
    assert (data.strip() if isinstance(data, bytes) else data.strip().encode()) == GOOD
