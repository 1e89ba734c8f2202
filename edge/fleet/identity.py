"""The gateway's own identity (its client certificate and key) on disk, and what a new one must be to replace it.

The first rotation turns uplink.cert_file and uplink.key_file into links into `identity/current/` beside the
certificate; `current` links to one identity's directory (cert.pem: the chain, leaf first; key.pem, mode 0600). A new
identity is written into a directory of its own, kept aside there while it is checked and tried, and made current by
renaming one new link over `current`: certificate and key change in the same instant, so nothing (the agent, `gridedge
check` in ExecStartPre, a power cut half-way) ever sees a certificate with another's key. The previous identity comes
back by the same rename, and is deleted once the new one has proved itself.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ..config_files import _certs, _client_usage, _is_ca, _key, _matches
from . import fsync_dir

CLOCK_SKEW = _dt.timedelta(minutes=5)  # a CA's clock a little ahead of ours does not make its certificate "not yet"
MAX_CHAIN = 5                           # leaf and intermediates, the most a chain may hold
#: an identity's directory name: made by the gateway (a UTC time and a random suffix), or the one it started with
NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}|adopted-[0-9a-f]{12}")


class Refused(Exception):
    """A certificate (or an identity on disk) that cannot become the gateway's; the message says why."""


# ---------------------------------------------------------------- keys and requests

def new_key_like(key):
    """A fresh key of the current key's kind: a CA or broker that takes one takes the other."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    if isinstance(key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(public_exponent=65537, key_size=max(2048, key.key_size))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ed25519.Ed25519PrivateKey.generate()
    raise Refused(f"the current key is {type(key).__name__}: the gateway makes EC, RSA or Ed25519 keys only")


def make_csr(key, subject: x509.Name, sans: x509.SubjectAlternativeName | None) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for the current certificate's subject (and alternative names), signed by the new key (RFC
    7030 re-enrolment wants both unchanged; the signature proves the gateway holds the key)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    return builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def common_name(cert: x509.Certificate) -> str | None:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else None


def describe(cert: x509.Certificate) -> dict:
    """What a result or the state says of a certificate."""
    return {"serial": format(cert.serial_number, "x"), "sha256": fingerprint(cert),
            "not_before": _iso(cert.not_valid_before_utc), "not_after": _iso(cert.not_valid_after_utc)}


def _iso(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the answer to a request

def read_chain(data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM answer, leaf first; Refused when it is not one (a CA's error page, a truncated
    paste, a key)."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise Refused("not a certificate: the answer holds no PEM certificate")
    try:
        chain = _certs(data, der=False, bundle=True)
    except Exception as exc:  # config_files._Bad, and whatever a hostile encoding makes the decoder raise
        raise Refused(f"not a certificate: {exc}") from None
    if len(chain) != data.count(b"-----BEGIN CERTIFICATE-----"):
        raise Refused("not a certificate: a certificate of the answer does not decode")
    if len(chain) > MAX_CHAIN:
        raise Refused(f"the answer holds {len(chain)} certificates: a chain has at most {MAX_CHAIN}")
    return chain


def check_answer(chain: list[x509.Certificate], key, *, name: str, anchors: list[x509.Certificate],
                 now: _dt.datetime) -> x509.Certificate:
    """The leaf of a CA's answer, once it is the certificate of `key`, for the same name, valid now, good for client
    authentication and issued (through the chain's intermediates) by one of `anchors`; else Refused with why."""
    leaf = next((c for c in chain if _matches(c, key)), None)
    if leaf is None:
        raise Refused(f"the certificate is for another key, not the one the gateway made for this request "
                      f"(its public key sha256 {_spki_hash(chain[0])[:16]}...)")
    cn = common_name(leaf)
    if cn != name:
        raise Refused(f"the certificate names {cn!r}, not the gateway's identity {name!r}")
    if leaf.not_valid_after_utc <= now:
        raise Refused(f"the certificate expired {_iso(leaf.not_valid_after_utc)}")
    if leaf.not_valid_before_utc > now + CLOCK_SKEW:
        raise Refused(f"the certificate is not valid before {_iso(leaf.not_valid_before_utc)} (is the clock right?)")
    usage = _client_usage(leaf)
    if usage:
        raise Refused(f"the certificate is {usage}")
    _chain_to(leaf, [c for c in chain if c is not leaf], anchors, now)
    return leaf


def _chain_to(leaf: x509.Certificate, intermediates: list[x509.Certificate], anchors: list[x509.Certificate],
              now: _dt.datetime) -> None:
    """Walk from the leaf through the given intermediates to a trusted CA: every link's signature, and every CA
    on the way a CA, valid now. The broker checks again (the test connection); this keeps garbage off the disk."""
    cert, seen = leaf, 0
    while seen <= MAX_CHAIN:
        for ca in anchors:
            if _issued_by(cert, ca):
                return
        parent = next((c for c in intermediates if c is not cert and _issued_by(cert, c)), None)
        if parent is None:
            issuer = cert.issuer.rfc4514_string()
            raise Refused(f"the certificate is not issued by a CA the gateway trusts (issuer {issuer!r}; trusted: "
                          f"{', '.join(a.subject.rfc4514_string() for a in anchors) or 'none'})")
        if not _is_ca(parent):
            raise Refused(f"the chain's {parent.subject.rfc4514_string()!r} is not a CA")
        if not parent.not_valid_before_utc <= now + CLOCK_SKEW or parent.not_valid_after_utc <= now:
            raise Refused(f"the chain's CA {parent.subject.rfc4514_string()!r} is not valid now")
        cert, seen = parent, seen + 1
    raise Refused(f"the chain is longer than {MAX_CHAIN}")


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _spki_hash(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def read_anchors(paths: list[Path]) -> list[x509.Certificate]:
    """The CA certificates in these PEM files (unreadable ones are skipped: `check` has named them)."""
    out = []
    for p in paths:
        try:
            out += [c for c in _certs(p.read_bytes(), der=False, bundle=True) if _is_ca(c)]
        except Exception:  # noqa: BLE001 - a CA file that went bad since `check`: it anchors nothing
            continue
    return out


# ---------------------------------------------------------------- the identity on disk

@dataclass(frozen=True)
class Identity:
    name: str
    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "cert.pem"

    @property
    def key(self) -> Path:
        return self.dir / "key.pem"


class IdentityStore:
    """uplink.cert_file and uplink.key_file, and the identities they can be switched between."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.root = self.cert_file.parent / "identity"
        self.link = self.root / "current"

    def identity(self, name: str) -> Identity:
        if not NAME.fullmatch(name):  # a name read back from the journal: never a path out of root
            raise Refused(f"not an identity name: {name!r}")
        return Identity(name, self.root / name)

    def current(self) -> Identity | None:
        try:
            return self.identity(os.readlink(self.link))
        except (OSError, Refused):
            return None

    def load_key(self, ident: Identity | None = None):
        path = ident.key if ident is not None else self.key_file
        return _key(path.read_bytes(), der=False)

    def load_chain(self, ident: Identity | None = None) -> list[x509.Certificate]:
        path = ident.cert if ident is not None else self.cert_file
        return _certs(path.read_bytes(), der=False, bundle=True)

    def adopt(self) -> Identity:
        """Make cert_file and key_file links into identity/current/, once (each step leaves a matching pair: a
        crash repeats it). Refused when the directories are not writable: the operator's part (docs/fleet.md)."""
        cur = self.current()
        if cur is not None and self._linked(self.cert_file, "cert.pem") and self._linked(self.key_file, "key.pem"):
            return cur
        try:
            if cur is None:
                chain = self.load_chain()
                cur = self.identity(f"adopted-{fingerprint(chain[0])[:12]}")
                if not cur.dir.is_dir():  # built aside and renamed into place: never half there
                    self.root.mkdir(mode=0o700, exist_ok=True)
                    tmp = self.root / f".{cur.name}.{secrets.token_hex(4)}"
                    tmp.mkdir(mode=0o700)
                    _write(tmp / "cert.pem", _pem(chain), 0o644)
                    _write(tmp / "key.pem", self.key_file.read_bytes(), 0o600)
                    fsync_dir(tmp)
                    os.rename(tmp, cur.dir)
                self.switch(cur)
            for path, leaf in ((self.cert_file, "cert.pem"), (self.key_file, "key.pem")):
                if not self._linked(path, leaf):
                    _relink(path, self.link / leaf)
        except OSError as exc:
            raise Refused(f"cannot keep the identity beside {self.cert_file} ({exc.strerror or exc}): the agent must "
                          f"be able to write {self.cert_file.parent} and {self.key_file.parent} (docs/fleet.md)") \
                from None
        return cur

    def _linked(self, path: Path, leaf: str) -> bool:
        try:
            return path.is_symlink() and Path(os.path.normpath(path.parent / os.readlink(path))) == self.link / leaf
        except OSError:
            return False

    def new(self, key) -> Identity:
        """A directory for a new identity, holding its key (0600 from the start); not current."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        ident = self.identity(f"{stamp}-{secrets.token_hex(4)}")
        self._mkdirs(ident)
        _write(ident.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
        return ident

    def _mkdirs(self, ident: Identity) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)
        ident.dir.mkdir(mode=0o700)

    def put_chain(self, ident: Identity, chain: list[x509.Certificate]) -> None:
        """The certificate beside its key; both names on disk before a switch can make them current."""
        _write(ident.cert, _pem(chain), 0o644)
        fsync_dir(ident.dir)

    def switch(self, ident: Identity) -> None:
        """Make `ident` the identity in use: one rename of the `current` link."""
        _relink(self.link, Path(ident.name))

    def remove(self, ident: Identity) -> None:
        if ident != self.current():
            shutil.rmtree(ident.dir, ignore_errors=True)

    def prune(self, keep: set[str]) -> None:
        """Delete every identity but the current one and `keep` (left over by a rotation that ended in a crash)."""
        cur = self.current()
        keep = keep | ({cur.name} if cur else set())
        for d in self.root.iterdir() if self.root.is_dir() else ():
            if d.is_dir() and not d.is_symlink() and NAME.fullmatch(d.name) and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)


def _pem(chain: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def _write(path: Path, data: bytes, mode: int) -> None:
    """A new file with its mode from the start, on disk before it is used."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _relink(path: Path, target: Path) -> None:
    """Replace `path` by a link to `target` (relative to path's directory when it is absolute) in one rename."""
    if target.is_absolute():
        target = Path(os.path.relpath(target, path.parent))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
