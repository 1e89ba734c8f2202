"""The head-end side: issuer keys and signed commands, as `gridedge sign` and `gridedge keygen` make them.

A small documented library call for a head-end written in Python (the rig's DSO simulator uses it); any JOSE
library that writes a compact JWS with EdDSA or ES256 and these claims does the same (docs/security.md):

    token = sign_command({"schema": "gridedge.command/2", "cmd_id": "dso-42", "type": "limit_active_power",
                          "params": {"limit_pct": 40, "duration_s": 900}},
                         load_private_key("dso.key.pem"), issuer="dso", audience="gw-0042")
    mqtt.publish("gridedge/v3/gw-0042/cmd/dso", token, qos=1)
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from . import jws
from .trust import TYP

__all__ = ["TYP", "DEFAULT_LIFETIME_S", "load_private_key", "new_issuer_key", "sign_command"]

DEFAULT_LIFETIME_S = 300


def load_private_key(path: str | Path) -> jws.PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError(f"{path}: {type(key).__name__} keys cannot sign commands: use Ed25519 or ECDSA P-256")
    return key


def new_issuer_key(directory: str | Path, name: str, kind: str = "ed25519") -> tuple[Path, Path]:
    """A new issuer key pair: <name>.key.pem (mode 0600, stays with the issuer) and <name>.pub.pem (goes into the
    gateways' [[security.issuers]] public_keys)."""
    if kind not in ("ed25519", "p256"):
        raise ValueError(f"kind must be ed25519 or p256, got {kind!r}")
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / f"{name}.key.pem", d / f"{name}.pub.pem"
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    finally:
        os.close(fd)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def sign_command(doc: dict, key: jws.PrivateKey, *, issuer: str, audience: str | list[str],
                 lifetime_s: float = DEFAULT_LIFETIME_S, now_s: float | None = None,
                 x5c: list[bytes] | None = None) -> bytes:
    """The JWS of a command (or nomination) document with its claims: iss, aud, iat and exp."""
    now = time.time() if now_s is None else now_s
    body = dict(doc, iss=issuer, aud=audience, iat=int(now), exp=int(now + lifetime_s))
    payload = json.dumps(body, separators=(",", ":")).encode()
    kid = None if x5c else jws.thumbprint(key.public_key())
    return jws.sign(payload, key, kid=kid, typ=TYP, x5c=x5c)
