"""Throwaway X.509 PKI for the hardware-in-the-loop rig.

Why: the uplink is mutual TLS only (the gateway's identity is its client certificate CN), so every
rig run needs a CA, a broker certificate and client certificates. They are generated fresh in a
temporary directory (EC P-256 by default: key generation takes milliseconds) and never leave it.
Nothing here is meant for production key management.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki", "make_rogue_client", "make_future_client", "reissue_server", "reissue_client",
           "make_ca", "sign_client", "load_ca"]

_CLOCK_SKEW = _dt.timedelta(minutes=5)  # not_before back-dated so a slightly slow peer clock still accepts
_SAFE_STEM = re.compile(r"[^A-Za-z0-9._-]")

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_key(kind: str) -> _PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {kind!r}: use 'ec' (P-256) or 'rsa' (2048 bit)")


def _key_kind(key: _PrivateKey) -> str:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ec"


def _write_key(path: Path, key: _PrivateKey) -> None:
    """Write a PKCS#8 PEM key with mode 0600 from the start (no window where it is world-readable)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT mode does not apply when the file already existed
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _check_cn(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ValueError(f"certificate name must be a non-empty string of at most 64 characters, got {name!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"certificate name must not contain control characters: {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"certificate name is not valid Unicode text: {name!r}") from None
    if size > 64:  # cryptography bounds a CN by its UTF-8 bytes, not its characters
        raise ValueError(f"certificate name must be at most 64 bytes of UTF-8, got {size}: {name!r}")
    return name


def _file_stem(name: str) -> str:
    """File-system safe stem for a CN; a hash suffix keeps distinct names distinct after sanitising."""
    stem = _SAFE_STEM.sub("_", name)
    if stem != name or stem.startswith("."):
        stem = f"{stem.lstrip('.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return stem


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridedge HIL rig"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _key_usage(*, ca: bool, kind: str) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=(not ca and kind == "rsa"),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(cn: str, kind: str, days: int) -> tuple[x509.Certificate, _PrivateKey]:
    key = _new_key(kind)
    now = _now()
    pub = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, kind=kind), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: _PrivateKey,
    cn: str,
    *,
    kind: str,
    eku: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
    public_key=None,
) -> tuple[x509.Certificate, _PrivateKey | None]:
    """A certificate for a new key of `kind` (returned with it), or for `public_key` (a CSR's: no key returned)."""
    key = _new_key(kind) if public_key is None else None
    now = _now()
    pub = key.public_key() if key is not None else public_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or (now - _CLOCK_SKEW))
        .not_valid_after(not_after or ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False, kind=kind), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _load_ca(directory: Path) -> tuple[x509.Certificate, _PrivateKey]:
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if not cert_path.is_file() or not key_path.is_file():
        raise FileNotFoundError(
            f"no CA in {directory} (expected ca.crt and ca.key): call make_pki({str(directory)!r}) first"
        )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(f"unsupported CA key type in {key_path}")
    return cert, key


@dataclass
class Pki:
    """Paths of a generated PKI; client certificates are issued lazily by :meth:`client`."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    _clients: dict[str, tuple[Path, Path]] = field(default_factory=dict, repr=False, compare=False)

    def client(self, name: str) -> tuple[Path, Path]:
        """(cert, key) of a clientAuth certificate with CN=name; issued on the first call for that name."""
        _check_cn(name)
        if name not in self._clients:
            ca_cert, ca_key = _load_ca(self.dir)
            cert, key = _issue(
                ca_cert, ca_key, name, kind=_key_kind(ca_key), eku=ExtendedKeyUsageOID.CLIENT_AUTH
            )
            stem = _file_stem(name)
            cdir = self.dir / "clients"
            cdir.mkdir(mode=0o700, exist_ok=True)
            cert_path, key_path = cdir / f"{stem}.crt", cdir / f"{stem}.key"
            _write_key(key_path, key)
            _write_cert(cert_path, cert)
            self._clients[name] = (cert_path, key_path)
        return self._clients[name]


def make_pki(
    directory: Path,
    *,
    server_names: tuple[str, ...] | list[str] = ("localhost", "127.0.0.1"),
    days: int = 30,
    key: str = "ec",
) -> Pki:
    """Create a fresh CA and a serverAuth certificate for ``server_names`` in ``directory``.

    Any PKI previously generated in the directory is replaced (client certificates included), so
    stale client certificates from an older CA cannot be picked up by accident.
    """
    directory = Path(directory)
    if isinstance(server_names, str):
        server_names = (server_names,)
    names = [n.strip() for n in server_names]
    if not names or any(not n for n in names):
        raise ValueError(f"server_names must be a non-empty list of host names / IPs, got {server_names!r}")
    if not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a positive integer, got {days!r}")
    if key not in ("ec", "rsa"):
        raise ValueError(f"unknown key type {key!r}: use 'ec' (P-256) or 'rsa' (2048 bit)")

    directory.mkdir(parents=True, exist_ok=True)
    cdir = directory / "clients"
    if cdir.is_dir():
        for old in cdir.iterdir():
            if old.suffix in (".crt", ".key"):
                old.unlink()

    ca_cert, ca_key = _make_ca("gridedge HIL test CA", key, days)
    srv_cert, srv_key = _issue(
        ca_cert,
        ca_key,
        names[0],
        kind=key,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[_san(n) for n in names],
    )
    pki = Pki(
        dir=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
    )
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca_cert)
    _write_key(pki.server_key, srv_key)
    _write_cert(pki.server_cert, srv_cert)
    return pki


def make_rogue_client(directory: Path, name: str, *, expired: bool = False) -> tuple[Path, Path]:
    """A client certificate that a correct server must reject, for negative tests.

    ``expired=False``: a valid-looking clientAuth certificate signed by a separate, untrusted CA
    (created as ``rogue-ca.crt`` in ``directory``).
    ``expired=True``: signed by the *trusted* CA of the PKI in ``directory`` (from :func:`make_pki`)
    but valid only in the past, so the rejection is about expiry and not about the issuer.
    """
    directory = Path(directory)
    _check_cn(name)
    directory.mkdir(parents=True, exist_ok=True)
    stem = _file_stem(name)
    if expired:
        ca_cert, ca_key = _load_ca(directory)
        now = _now()
        cert, key = _issue(
            ca_cert,
            ca_key,
            name,
            kind=_key_kind(ca_key),
            eku=ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before=now - _dt.timedelta(days=10),
            not_after=now - _dt.timedelta(days=1),
        )
        cert_path, key_path = directory / f"expired-{stem}.crt", directory / f"expired-{stem}.key"
    else:
        ca_cert, ca_key = _make_ca("gridedge rogue CA", "ec", 30)
        _write_key(directory / "rogue-ca.key", ca_key)
        _write_cert(directory / "rogue-ca.crt", ca_cert)
        cert, key = _issue(ca_cert, ca_key, name, kind="ec", eku=ExtendedKeyUsageOID.CLIENT_AUTH)
        cert_path, key_path = directory / f"rogue-{stem}.crt", directory / f"rogue-{stem}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def reissue_server(pki: Pki, *, server_names: tuple[str, ...] | list[str] = ("localhost", "127.0.0.1"),
                   expired: bool = False) -> Pki:
    """Replace the broker's certificate, signed by the same CA: for other host names, or one that has expired
    (for the agent's TLS diagnostics). Restart the broker to load it."""
    names = [server_names] if isinstance(server_names, str) else [n.strip() for n in server_names]
    if not names or any(not n for n in names):
        raise ValueError(f"server_names must be a non-empty list of host names / IPs, got {server_names!r}")
    ca_cert, ca_key = _load_ca(pki.dir)
    now = _now()
    validity = dict(not_before=now - _dt.timedelta(days=10), not_after=now - _dt.timedelta(days=1)) if expired else {}
    cert, key = _issue(ca_cert, ca_key, names[0], kind=_key_kind(ca_key), eku=ExtendedKeyUsageOID.SERVER_AUTH,
                       sans=[_san(n) for n in names], **validity)
    _write_key(pki.server_key, key)
    _write_cert(pki.server_cert, cert)
    return pki


def reissue_client(pki: Pki, name: str, *, not_before: _dt.datetime, not_after: _dt.datetime) -> tuple[Path, Path]:
    """Replace a client's certificate and key (same files) by ones valid from not_before to not_after: a short-lived
    gateway certificate, to see its renewal without waiting days."""
    cert_path, key_path = pki.client(name)
    ca_cert, ca_key = _load_ca(pki.dir)
    cert, key = _issue(ca_cert, ca_key, name, kind=_key_kind(ca_key), eku=ExtendedKeyUsageOID.CLIENT_AUTH,
                       not_before=not_before, not_after=not_after)
    key_path.unlink()
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def make_ca(cn: str, *, kind: str = "ec", days: int = 30) -> tuple[x509.Certificate, _PrivateKey]:
    """Another CA (in memory): an operator's second issuing CA, one the broker does not know."""
    return _make_ca(cn, kind, days)


def sign_client(ca_cert: x509.Certificate, ca_key: _PrivateKey, cn: str, public_key, *,
                not_before: _dt.datetime | None = None, not_after: _dt.datetime | None = None) -> x509.Certificate:
    """A clientAuth certificate for someone else's key (the answer to a CSR), valid until the CA ends unless given."""
    kind = "rsa" if isinstance(public_key, rsa.RSAPublicKey) else "ec"
    return _issue(ca_cert, ca_key, cn, kind=kind, eku=ExtendedKeyUsageOID.CLIENT_AUTH,
                  not_before=not_before, not_after=not_after, public_key=public_key)[0]


def load_ca(directory: Path) -> tuple[x509.Certificate, _PrivateKey]:
    """The CA of a PKI made by make_pki."""
    return _load_ca(Path(directory))


def make_future_client(directory: Path, name: str, *, days_ahead: int = 1) -> tuple[Path, Path]:
    """A clientAuth certificate signed by the PKI's CA in ``directory`` that becomes valid only ``days_ahead``
    days from now (a gateway with a fast clock, or a certificate issued for later), for negative tests."""
    directory = Path(directory)
    _check_cn(name)
    ca_cert, ca_key = _load_ca(directory)
    start = _now() + _dt.timedelta(days=days_ahead)
    cert, key = _issue(ca_cert, ca_key, name, kind=_key_kind(ca_key), eku=ExtendedKeyUsageOID.CLIENT_AUTH,
                       not_before=start, not_after=start + _dt.timedelta(days=30))
    stem = _file_stem(name)
    cert_path, key_path = directory / f"future-{stem}.crt", directory / f"future-{stem}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path
