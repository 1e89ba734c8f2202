"""JWS compact serialization (RFC 7515) with EdDSA/Ed25519 (RFC 8037) and ES256 (ECDSA P-256), on `cryptography`.

Only what a signed command needs, so there is little to get wrong: the algorithm is bound to the key's type
(a header cannot pick "none" or an HMAC against a public key), no `crit` extensions, no unencoded payloads, no
duplicate JSON keys (two parsers must never read two different headers), strict base64url, bounded sizes.
Sans-IO: bytes in, a verified payload or a JwsError with the reason out.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

__all__ = ["JwsError", "Jws", "parse", "verify", "sign", "thumbprint", "ALGORITHMS", "PublicKey", "PrivateKey"]

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
ALGORITHMS = ("EdDSA", "ES256")
MAX_TOKEN_BYTES = 32 * 1024
MAX_HEADER_BYTES = 8 * 1024     # x5c with one or two certificates fits
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_HEADER_KEYS = {"alg", "kid", "typ", "cty", "x5c"}


class JwsError(ValueError):
    """The token is not a valid JWS for us; str() is the reason, fit for a `rejected` result."""


@dataclass(frozen=True)
class Jws:
    header: dict
    payload: bytes
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return self.header["alg"]

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")

    def x5c(self) -> list[bytes]:
        """The certificate chain in the header, DER, leaf first ([] if none)."""
        return [base64.b64decode(c, validate=True) for c in self.header.get("x5c", ())]


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64url(part: bytes, what: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise JwsError(f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise JwsError(f"{what} is not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != part:
        raise JwsError(f"{what} is not canonical base64url")
    return raw


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise JwsError(f"duplicate key {k!r} in the protected header")
        out[k] = v
    return out


def parse(token: bytes | str, *, max_bytes: int = MAX_TOKEN_BYTES) -> Jws:
    """The structure of a compact JWS, checked; the signature is NOT verified yet (see verify)."""
    if isinstance(token, str):
        try:
            token = token.encode("ascii")
        except UnicodeEncodeError:
            raise JwsError("a JWS is ASCII") from None
    token = token.strip()
    if len(token) > max_bytes:
        raise JwsError(f"JWS too large: {len(token)} bytes > {max_bytes}")
    parts = token.split(b".")
    if len(parts) != 3:
        raise JwsError(f"a compact JWS has 3 parts separated by '.', got {len(parts)}")
    h64, p64, s64 = parts
    if len(h64) > MAX_HEADER_BYTES:
        raise JwsError("protected header too large")
    raw = _unb64url(h64, "protected header")
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise JwsError("protected header is not JSON") from None
    if not isinstance(header, dict):
        raise JwsError("protected header is not a JSON object")
    unknown = sorted(set(header) - _HEADER_KEYS)
    if unknown:  # crit, b64, jku, x5u, jwk...: never followed, so never accepted
        raise JwsError(f"protected header: unsupported parameter {unknown[0]!r}")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise JwsError(f"alg must be one of {', '.join(ALGORITHMS)}, got {str(alg)[:32]!r}")
    for key in ("kid", "typ", "cty"):
        if key in header and (not isinstance(header[key], str) or not 1 <= len(header[key]) <= 256):
            raise JwsError(f"protected header: {key} must be a string of 1 to 256 characters")
    if "x5c" in header:
        chain = header["x5c"]
        if not isinstance(chain, list) or not 1 <= len(chain) <= 4 or not all(isinstance(c, str) for c in chain):
            raise JwsError("protected header: x5c must be a list of 1 to 4 base64 certificates")
        try:
            for c in chain:
                base64.b64decode(c, validate=True)
        except (binascii.Error, ValueError):
            raise JwsError("protected header: x5c holds a certificate that is not base64") from None
    payload = _unb64url(p64, "payload")
    signature = _unb64url(s64, "signature")
    want = 64  # Ed25519 and ES256 (R || S, 32 bytes each) alike
    if len(signature) != want:
        raise JwsError(f"signature must be {want} bytes for {alg}, got {len(signature)}")
    return Jws(header, payload, h64 + b"." + p64, signature)


def verify(jws: Jws, key: PublicKey) -> None:
    """Raise JwsError unless `key` signed `jws`. The key decides the algorithm the header must name."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        if jws.alg != "EdDSA":
            raise JwsError(f"alg {jws.alg} does not match the issuer's Ed25519 key")
        try:
            key.verify(jws.signature, jws.signing_input)
        except InvalidSignature:
            raise JwsError("bad signature") from None
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        if jws.alg != "ES256":
            raise JwsError(f"alg {jws.alg} does not match the issuer's P-256 key")
        r, s = int.from_bytes(jws.signature[:32], "big"), int.from_bytes(jws.signature[32:], "big")
        try:
            key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise JwsError("bad signature") from None
        return
    raise JwsError(f"unsupported issuer key type {type(key).__name__} (Ed25519 or P-256)")


def sign(payload: bytes, key: PrivateKey, *, kid: str | None = None, typ: str | None = None,
         x5c: list[bytes] | None = None) -> bytes:
    """A compact JWS of `payload` (the head-end side: `gridedge sign`, the DSO simulator, the tests)."""
    header: dict = {"alg": _alg_of(key)}
    if kid is not None:
        header["kid"] = kid
    if typ is not None:
        header["typ"] = typ
    if x5c:
        header["x5c"] = [base64.b64encode(c).decode() for c in x5c]
    signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + b"." + b64url(payload)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(signing_input)
    else:
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signing_input + b"." + b64url(sig)


def _alg_of(key) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError(f"unsupported key type {type(key).__name__}: use Ed25519 or ECDSA P-256")


def thumbprint(key: PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): a key id that needs no naming convention."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        x = b64url(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
        jwk = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        nums = key.public_numbers()
        x, y = (b64url(n.to_bytes(32, "big")).decode() for n in (nums.x, nums.y))
        jwk = f'{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'
    else:
        raise ValueError(f"unsupported key type {type(key).__name__}: use Ed25519 or ECDSA P-256")
    return b64url(hashlib.sha256(jwk.encode()).digest()).decode()
