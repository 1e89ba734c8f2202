"""What the command gate costs a command before it reaches control: the signature (Ed25519 and ECDSA P-256), the
replay guard's durable insert (the one fsync a command waits for) and the audit record; and a forged command's
refusal. Prints a table for docs/PERFORMANCE.md.

Run: .venv/bin/python bench/bench_gate.py [--repeats 2000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gridedge import contract
from gridedge.core import schema as s
from gridedge.security.audit import AuditLog
from gridedge.security.replay import ReplayGuard
from gridedge.security.signing import sign_command
from gridedge.security.trust import SECURITY_SCHEMA, TrustStore, Unauthenticated
from measure import describe, median_ns  # bench/measure.py: the script's folder is on sys.path

DOC = {"schema": contract.SCHEMA_COMMAND, "cmd_id": "c", "type": "limit_active_power",
       "params": {"limit_pct": 40, "duration_s": 900}}


def store(d: Path, keys: dict) -> TrustStore:
    issuers = []
    for name, key in keys.items():
        (d / f"{name}.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        issuers.append({"id": name, "actor": "dso", "roles": ["operator"], "public_keys": [f"{name}.pem"]})
    clean, issues = s.validate(SECURITY_SCHEMA, {"issuers": issuers})
    assert not issues, issues
    return TrustStore(clean, lambda p: d / p, "gw")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args()
    n = args.repeats
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        d = Path(tmp)
        keys = {"ed": ed25519.Ed25519PrivateKey.generate(), "p256": ec.generate_private_key(ec.SECP256R1())}
        trust = store(d, keys)
        tokens = {k: sign_command(DOC, key, issuer=k, audience="gw", lifetime_s=3600) for k, key in keys.items()}
        forged = sign_command(DOC, ed25519.Ed25519PrivateKey.generate(), issuer="ed", audience="gw")
        replay = ReplayGuard(d / "replay.sqlite")
        audit = AuditLog(d / "audit")   # its fsync runs on its own thread; the head-end's copy leaves with the
                                        # telemetry beat, in that transaction: neither is on a command's way
        counter = iter(range(10**9))

        def refused():
            try:
                trust.authenticate(forged, "ed", time.time())
            except Unauthenticated:
                return
            raise AssertionError("a forgery passed")

        rows = [
            ("authenticate, Ed25519 (parse, verify, claims)", median_ns(
                lambda: trust.authenticate(tokens["ed"], "ed", time.time()), n)),
            ("authenticate, ECDSA P-256", median_ns(lambda: trust.authenticate(tokens["p256"], "p256", time.time()), n)),
            ("refuse a forgery (unknown key)", median_ns(refused, n)),
            ("replay guard: remember a cmd_id (SQLite, synchronous=FULL)", median_ns(
                lambda: replay.admit(f"c{next(counter)}", "ed", time.time_ns() + 3600 * 10**9, time.time_ns()), n)),
            ("audit record (hash chain, written; fsync'd by its own thread)", median_ns(
                lambda: audit.append("command", cmd_id=f"c{next(counter)}", decision="accepted"), n)),
        ]
        total = rows[0][1] + rows[3][1] + rows[4][1]
    print(f"machine: {describe()}\n")
    print("| step | median |\n|---|---:|")
    for name, ns in rows:
        print(f"| {name} | {ns / 1e3:.0f} µs |")
    print(f"| **a signed command's gate (Ed25519 + replay + audit)** | **{total / 1e3:.0f} µs** |")


if __name__ == "__main__":
    main()
