"""The security commands of `gridedge`: keygen and sign (the issuer's side), audit verify, unit devices."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("keygen", help="make an issuer's signing key pair (Ed25519 or P-256)")
    p.add_argument("issuer", help="the issuer id (its command topic is <prefix>cmd/<issuer>)")
    p.add_argument("--dir", default=".", help="where to write <issuer>.key.pem (0600) and <issuer>.pub.pem")
    p.add_argument("--kind", default="ed25519", choices=["ed25519", "p256"])
    p.set_defaults(func=keygen)
    p = sub.add_parser("sign", help="sign a command document as an issuer; prints the JWS to publish")
    p.add_argument("document", nargs="?", default="-", help="the command JSON (file, or - for stdin)")
    p.add_argument("--key", required=True, help="the issuer's private key (PEM)")
    p.add_argument("--issuer", required=True, help="the issuer id (iss)")
    p.add_argument("--gateway", required=True, action="append",
                   help="the gateway id it is for (aud); repeat for several gateways")
    p.add_argument("--lifetime-s", type=float, default=300.0, help="exp - iat, s (default 300)")
    p.set_defaults(func=sign)
    p = sub.add_parser("audit", help="the local audit trail")
    asub = p.add_subparsers(dest="audit_cmd", required=True)
    v = asub.add_parser("verify", help="check the hash chain: a changed, removed or re-ordered record is named")
    where = v.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="the gateway's configuration (its storage.dir/audit)")
    where.add_argument("--dir", help="an audit directory")
    v.add_argument("--anchor", metavar="SEQ:HASH",
                   help="a record the head-end holds (state: security.audit): it must be there, unchanged")
    v.set_defaults(func=audit_verify)
    p = sub.add_parser("unit", help="systemd helpers")
    usub = p.add_subparsers(dest="unit_cmd", required=True)
    d = usub.add_parser("devices", help="print the drop-in that lets the unit open exactly the configured serial ports")
    d.add_argument("-c", "--config", required=True)
    d.set_defaults(func=unit_devices)


def keygen(args) -> int:
    from . import jws
    from .signing import load_private_key, new_issuer_key

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.issuer):
        print("gridedge keygen: the issuer id must be 1-64 characters of A-Z a-z 0-9 _ . -", file=sys.stderr)
        return 2
    priv, pub = new_issuer_key(args.dir, args.issuer, args.kind)
    kid = jws.thumbprint(load_private_key(priv).public_key())
    print(f"private key (keep it with the issuer): {priv}\npublic key (give it to the gateways): {pub}\n"
          f"key id (RFC 7638 thumbprint): {kid}\n\nfor the gateways' configuration:\n\n[[security.issuers]]\n"
          f'id = "{args.issuer}"\nactor = "dso"            # tso, dso or aggregator\nroles = ["operator"]\n'
          f'public_keys = ["{pub.name}"]')
    return 0


def sign(args) -> int:
    from .signing import load_private_key, sign_command

    try:
        text = sys.stdin.read() if args.document == "-" else Path(args.document).read_text()
        doc = json.loads(text)
        key = load_private_key(args.key)
    except (OSError, ValueError) as exc:
        print(f"gridedge sign: {exc}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict):
        print("gridedge sign: the document must be a JSON object", file=sys.stderr)
        return 2
    aud = args.gateway[0] if len(args.gateway) == 1 else args.gateway
    token = sign_command(doc, key, issuer=args.issuer, audience=aud, lifetime_s=args.lifetime_s)
    print(token.decode())
    kind = "nomination" if "nomination_id" in doc else "cmd"
    print(f"publish it (QoS 1) on gridedge/v3/<gateway>/{kind}/{args.issuer}", file=sys.stderr)
    return 0


def audit_verify(args) -> int:
    from .audit import verify

    if args.config:
        from ..config import ConfigError, load_config

        try:
            directory = load_config(args.config, check_files=False).storage.dir / "audit"
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    else:
        directory = Path(args.dir)
    anchor = None
    if args.anchor:
        m = re.fullmatch(r"(\d+):([0-9a-f]{64})", args.anchor)
        if m is None:
            print("gridedge audit verify: --anchor is SEQ:HASH (the state's security.audit)", file=sys.stderr)
            return 2
        anchor = (int(m.group(1)), m.group(2))
    if not directory.is_dir():
        print(f"gridedge audit verify: no audit trail in {directory}", file=sys.stderr)
        return 2
    v = verify(directory, anchor=anchor)
    for problem in v.problems:
        print(f"{directory}/{problem}", file=sys.stderr)
    if not v.ok:
        print(f"TAMPERED: {len(v.problems)} problem(s) in {v.records} records", file=sys.stderr)
        return 1
    span = f"records {v.first_seq}..{v.last_seq}" if v.records else "no records"
    print(f"OK {directory}: {v.records} records ({span}), head {v.head}")
    return 0


def unit_devices(args) -> int:
    from ..config import ConfigError, load_config

    try:
        cfg = load_config(args.config, check_files=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    ports = sorted({d.serial_port for d in cfg.devices if d.serial_port})
    print("# /etc/systemd/system/gridedge.service.d/devices.conf, made by `gridedge unit devices` from "
          f"{cfg.source}\n[Service]")
    for port in ports:
        print(f"DeviceAllow={port} rw")
    if not ports:
        print("# no serial port is configured: the unit needs no device")
    return 0
