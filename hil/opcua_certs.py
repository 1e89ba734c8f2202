"""Throwaway RSA certificates for OPC UA in the rig (Basic256Sha256 needs RSA; hil/pki.py defaults to EC).

OPC UA application instance certificates differ from TLS ones: the SubjectAltName must carry the application URI
(the peer compares it with the ApplicationDescription), and strict validators (asyncua's EXT_VALIDATION) want
digitalSignature, nonRepudiation, keyEncipherment and dataEncipherment all set. Generated fresh per run, never
for production. Files are written in DER (certificates) and PKCS#8 PEM (keys); `trusted/` holds the CA in the
layout asyncua's TrustStore reads (a directory of *.der / *.pem).
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["OpcUaPki", "make_opcua_pki", "SERVER_URI", "CLIENT_URI"]

SERVER_URI = "urn:gridedge:hil:substation-rtu"
CLIENT_URI = "urn:gridedge:gateway"
_SKEW = _dt.timedelta(minutes=5)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridedge HIL rig"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_der(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER))


def _ca(cn: str, days: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key, now = _key(), _now()
    pub = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, cn: str, uri: str, hosts: list[str],
          eku: list[x509.ObjectIdentifier]) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key, now = _key(), _now()
    pub = key.public_key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(ca_cert.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


@dataclass(frozen=True)
class OpcUaPki:
    """Paths of a generated OPC UA PKI (certificates DER, keys PKCS#8 PEM)."""

    dir: Path
    ca_cert: Path
    trusted_dir: Path        # holds only the CA: give it to a server's trust store
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path         # client certificate from an untrusted CA, same URI: a strict server must refuse it
    rogue_key: Path
    server_uri: str = SERVER_URI
    client_uri: str = CLIENT_URI


def make_opcua_pki(directory: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 30,
                   server_uri: str = SERVER_URI, client_uri: str = CLIENT_URI) -> OpcUaPki:
    """A CA, a server and a client certificate (RSA 2048, URIs in the SAN), and a rogue client, in `directory`."""
    if not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a positive integer, got {days!r}")
    for uri in (server_uri, client_uri):
        if not isinstance(uri, str) or ":" not in uri:
            raise ValueError(f"application URI must look like 'urn:...', got {uri!r}")
    directory = Path(directory)
    trusted = directory / "trusted"
    trusted.mkdir(parents=True, exist_ok=True)
    for old in trusted.iterdir():
        if old.suffix in (".der", ".pem"):
            old.unlink()
    local = socket.gethostname()   # asyncua warns when the local host name is missing from the SAN
    all_hosts = list(dict.fromkeys([*hosts, local]))
    ca_cert, ca_key = _ca("gridedge HIL OPC UA CA", days)
    srv, srv_key = _leaf(ca_cert, ca_key, "gridedge substation RTU sim", server_uri, all_hosts,
                         [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    cli, cli_key = _leaf(ca_cert, ca_key, "gridedge gateway", client_uri, [local], [ExtendedKeyUsageOID.CLIENT_AUTH])
    rogue_ca, rogue_ca_key = _ca("gridedge rogue CA", days)
    rogue, rogue_key = _leaf(rogue_ca, rogue_ca_key, "gridedge gateway", client_uri, [local],
                             [ExtendedKeyUsageOID.CLIENT_AUTH])
    pki = OpcUaPki(dir=directory, ca_cert=directory / "ca.der", trusted_dir=trusted,
                   server_cert=directory / "server.der", server_key=directory / "server.key",
                   client_cert=directory / "client.der", client_key=directory / "client.key",
                   rogue_cert=directory / "rogue.der", rogue_key=directory / "rogue.key",
                   server_uri=server_uri, client_uri=client_uri)
    _write_der(pki.ca_cert, ca_cert)
    _write_der(trusted / "ca.der", ca_cert)
    for cert_path, key_path, cert, key in ((pki.server_cert, pki.server_key, srv, srv_key),
                                           (pki.client_cert, pki.client_key, cli, cli_key),
                                           (pki.rogue_cert, pki.rogue_key, rogue, rogue_key)):
        _write_key(key_path, key)
        _write_der(cert_path, cert)
    return pki
