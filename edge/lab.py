"""`gridedge lab init DIR`: everything a first trial needs that is not the device: a throwaway CA with broker, gateway,
head-end and issuer certificates, an issuer's signing key, a mosquitto configuration (mutual TLS, the ACL of
hil/acl.py that confines every certificate) and a gateway.toml that `gridedge check` passes, pointed at one SunSpec
device on the LAN and trusting that issuer's signed commands (contract 3.0, docs/security.md).

The certificates come from the rig's PKI (gridedge.hil.pki), which is why this module, like the demo, may import the
rig (tests/test_layout.py, RIG_USERS): a lab CA is for a bench, never for a fleet, and keeping its code in the rig
keeps the agent proper (run, check) free of key generation.
"""
from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shutil
import sys
from pathlib import Path

HEADEND = "headend"   # pki/headend.crt: mosquitto_sub with it sees every gateway of the lab (it sends nothing)
HEADEND_CN = "headend.lab"   # identities other than gateways are dotted (hil/acl.py)
ISSUER = "dso"        # the lab's operator: issuers/dso.key.pem signs, pki/issuer-dso.crt publishes on cmd/dso
PLACEHOLDER = "192.0.2.10"   # TEST-NET-1 (RFC 5737): never a real device; edit it or pass --device
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")            # as gateway.id: it goes into the ACL and topics
_HOST = re.compile(r"[A-Za-z0-9._:%-]{1,253}")      # as devices.host: it goes into files, so nothing else


def init_lab(directory: Path, *, gateway_id: str = "gw-lab-001", broker_hosts: tuple[str, ...] = (),
             port: int = 8883, device: str = PLACEHOLDER, unit_id: int = 1, role: str = "inverter",
             days: int = 365, force: bool = False) -> list[Path]:
    """Write the lab into `directory`; returns the files written (never a private key's path). Refuses to replace a
    lab's CA unless `force`."""
    from gridedge.hil.acl import fleet_acl, gateway_patterns
    from gridedge.hil.broker import render_acl
    from gridedge.hil.pki import make_pki
    from gridedge.security.signing import new_issuer_key

    directory = Path(os.path.abspath(directory))
    pki_dir = directory / "pki"
    host, dev_port = _host_port(device)
    if not _ID.fullmatch(gateway_id):
        raise ValueError(f"--gateway-id must be 1-64 characters of A-Z a-z 0-9 _ -, got {gateway_id!r}")
    for name in (host, *broker_hosts):
        if not _HOST.fullmatch(name):
            raise ValueError(f"not a host name or IP address: {name!r}")
    if (pki_dir / "ca.crt").exists() and not force:
        raise FileExistsError(f"{directory} already holds a lab (pki/ca.crt); --force replaces it, "
                              "gateway.toml included")
    names = tuple(dict.fromkeys(("localhost", "127.0.0.1", *broker_hosts)))
    pki = make_pki(pki_dir, server_names=names, days=days)
    issuer_tls = f"issuer-{ISSUER}"
    for cn, stem in ((gateway_id, "gateway"), (HEADEND_CN, HEADEND), (f"issuer.{ISSUER}", issuer_tls)):
        cert, key = pki.client(cn)
        os.replace(cert, pki_dir / f"{stem}.crt")
        os.replace(key, pki_dir / f"{stem}.key")
    shutil.rmtree(pki_dir / "clients", ignore_errors=True)
    _priv, pub = new_issuer_key(directory / "issuers", ISSUER)
    acl = fleet_acl({f"issuer.{ISSUER}": ISSUER}, {HEADEND_CN: None})
    files = {
        "acl": "# written by gridedge lab init (hil/acl.py): a gateway (its CN is its id) only under its own prefix,\n"
               f"# the issuer {ISSUER} only on its command topics, the head-end reads all (docs/security.md)\n"
               + render_acl(acl, gateway_patterns()),
        "mosquitto.conf": _mosquitto_conf(directory, port, listen_all=bool(broker_hosts)),
        "gateway.toml": _gateway_toml(gateway_id, broker_hosts[0] if broker_hosts else "localhost", port, host,
                                      dev_port, unit_id, role),
    }
    (directory / "mosquitto").mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return [pki_dir / n for n in ("ca.crt", "server.crt", "gateway.crt", f"{HEADEND}.crt", f"{issuer_tls}.crt")] + [
        pub] + [directory / n for n in files]


def _host_port(device: str) -> tuple[str, int]:
    """HOST, HOST:PORT, an IPv6 address, [IPv6] or [IPv6]:PORT."""
    if device.startswith("[") and device.endswith("]"):
        return device[1:-1], 502
    host, sep, port = device.rpartition(":")
    if not sep or ":" in host and not host.startswith("["):   # no port, or a bare IPv6 address
        return device, 502
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--device must be HOST or HOST:PORT, got {device!r}")
    return host.strip("[]"), int(port)


def _mosquitto_conf(directory: Path, port: int, *, listen_all: bool) -> str:
    user = pwd.getpwuid(os.getuid()).pw_name
    return "\n".join([
        "# mosquitto for a gridedge lab, written by `gridedge lab init`. Start it in the foreground with",
        f"#   mosquitto -c {directory / 'mosquitto.conf'}       (Debian: /usr/sbin/mosquitto)",
        "# Every client needs a certificate of this lab's CA; its CN is its user name in the ACL.",
        "per_listener_settings true",
        "# started as root, mosquitto stays this user (the keys are readable by it only)",
        f"user {user}",
        "persistence true",
        f"persistence_location {directory / 'mosquitto'}/",
        "log_dest stderr",
        *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
        "connection_messages true",
        "",
        f"listener {port}" + ("" if listen_all else " 127.0.0.1"),
        "protocol mqtt",
        f"cafile {directory / 'pki' / 'ca.crt'}",
        f"certfile {directory / 'pki' / 'server.crt'}",
        f"keyfile {directory / 'pki' / 'server.key'}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        f"acl_file {directory / 'acl'}",
        "",
    ])


def _gateway_toml(gateway_id: str, broker_host: str, port: int, host: str, dev_port: int, unit_id: int,
                  role: str) -> str:
    url_host = f"[{broker_host}]" if _is_ipv6(broker_host) else broker_host
    return f'''# A lab gateway, written by `gridedge lab init`. Every key: examples/gateway.toml, docs/configuration.md.
# Check it with:  gridedge check -c gateway.toml      Run it with:  gridedge run -c gateway.toml

[gateway]
id = "{gateway_id}"
description = "lab gateway: one SunSpec device, read only"

[uplink]
broker = "mqtts://{url_host}:{port}"
ca_file = "pki/ca.crt"
cert_file = "pki/gateway.crt"
key_file = "pki/gateway.key"

[storage]
dir = "var"

# Who may command this gateway: commands are signed (JWS) by a trusted issuer and sent on <prefix>cmd/<issuer id>.
# The lab's operator signs with issuers/{ISSUER}.key.pem:  gridedge sign --key issuers/{ISSUER}.key.pem --issuer {ISSUER} ...
[[security.issuers]]
id = "{ISSUER}"
actor = "dso"               # its activations have the DSO's priority
roles = ["operator"]        # may send every command type (edge/security/roles.toml)
public_keys = ["issuers/{ISSUER}.pub.pem"]

[[devices]]
id = "dev1"
driver = "sunspec_tcp"      # SunSpec Modbus TCP: most PV inverters, batteries and many meters; see docs/points.md
role = "{role}"
host = "{host}"{"          # <- your device's address" if host == PLACEHOLDER else ""}
port = {dev_port}
unit_id = {unit_id}
poll_ms = 1000
writable = false            # read only: nothing is written to the device until you set this to true
'''


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def main(args) -> int:
    """`gridedge lab init`: write the lab and say what to do next."""
    try:
        files = init_lab(Path(args.dir), gateway_id=args.gateway_id, broker_hosts=tuple(args.broker_host),
                         port=args.port, device=args.device, unit_id=args.unit_id, role=args.role,
                         days=args.days, force=args.force)
    except (OSError, ValueError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    for f in files:
        print(f"wrote {f}")
    lab = files[-1].parent
    print(f"next:\n  mosquitto -c {lab / 'mosquitto.conf'}     (a second terminal; Debian: /usr/sbin/mosquitto)\n"
          f"  gridedge check -c {lab / 'gateway.toml'}\n  gridedge run -c {lab / 'gateway.toml'}\n"
          f"  signed commands: gridedge sign --key {lab / 'issuers' / (ISSUER + '.key.pem')} --issuer {ISSUER} ... "
          "(README.md, quick start)")
    return 0
