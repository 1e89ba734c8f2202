"""The files behind a config, opened at check time as the agent will open them: the uplink's CA, certificate and key
(through `cryptography`, then `ssl` exactly as gridedge.mqtt does), the OPC UA security material (PEM or DER, as
drivers/opcua.py loads it) and the storage directory. So what `check` passes, `run` does not crash on, and a TLS
failure that can be known in advance (unparsable, wrong key, expired, wrong purpose, no CA) is named before it
happens. Every function returns (key, message) pairs; the caller adds the key path."""
from __future__ import annotations

import datetime as dt
import functools
import os
import re
import tempfile
import warnings
from pathlib import Path

from gridedge.core import schema as s

__all__ = ["PATH", "resolve", "reason", "file_problem", "uplink_tls_issues", "opcua_security_issues",
           "storage_problem"]

PATH = s.Str(regex=r"[^\x00]+", regex_hint="be a file path (no NUL characters)", min_len=1, max_len=4096)

Found = list[tuple[str, str]]


def resolve(base: Path, text: str) -> Path:
    p = Path(text)
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _read(path: Path) -> bytes | str:
    """The file's bytes, or why not."""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)   # a certificate bundle, not a disk image
    except FileNotFoundError:
        return f"file not found: {path}"
    except (OSError, ValueError) as e:
        return f"cannot read {path}: {reason(e)}"


def file_problem(path: Path) -> str | None:
    data = _read(path)
    return data if isinstance(data, str) else None


# ---------------------------------------------------------------- certificates and keys

class _Bad(Exception):
    """A file that does not hold what it should; the message says what it is not."""


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _certs(data: bytes, *, der: bool, bundle: bool = False) -> list:
    """The certificates of a file, decoded whole (cryptography decodes lazily: a damaged part would fail in a later
    check). The first must decode, except in a CA bundle: OpenSSL, which the agent's TLS uses, skips a certificate it
    cannot read there (system bundles hold a few that cryptography refuses), so one good CA is enough."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.utils import CryptographyDeprecationWarning

    what = "not a certificate (PEM or DER)" if der else "not a PEM certificate"
    pem = b"-----BEGIN" in data
    blocks = _PEM_CERT.findall(data) if pem else [data] if der else []
    good, error = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for block in blocks if bundle else blocks[:1]:
            try:
                c = x509.load_pem_x509_certificate(block) if pem else x509.load_der_x509_certificate(block)
                c.public_key(), c.extensions, c.not_valid_before_utc, c.not_valid_after_utc
                good.append(c)
            except (ValueError, UnsupportedAlgorithm) as e:
                error = error or e
    if good:
        return good
    raise _Bad(f"{what} ({error})" if pem and error else what)   # a damaged certificate says how


def _key(data: bytes, *, der: bool):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        if b"-----BEGIN" in data or not der:
            return serialization.load_pem_private_key(data, None)
        return serialization.load_der_private_key(data, None)
    except TypeError:   # cryptography: "Password was not given but private key is encrypted"
        raise _Bad("the private key is encrypted (the agent cannot ask for a password)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise _Bad("not a private key (PEM or DER)" if der else "not a PEM private key") from None


def _when(t: dt.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC"


def _validity(cert) -> str | None:
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc < now:
        return f"certificate expired {_when(cert.not_valid_after_utc)}"
    if cert.not_valid_before_utc > now:
        return f"certificate not valid before {_when(cert.not_valid_before_utc)} (is the clock right?)"
    return None


def _matches(cert, key) -> bool:
    from cryptography.hazmat.primitives import serialization

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _is_ca(cert) -> bool:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _client_usage(cert) -> str | None:
    """Why the broker would refuse this certificate for client authentication (extended key usage), or None."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID as Eku

    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None
    if Eku.CLIENT_AUTH in usages or Eku.ANY_EXTENDED_KEY_USAGE in usages:
        return None
    names = ", ".join(getattr(u, "_name", u.dotted_string) for u in usages)
    return f"not a client certificate (extended key usage {names}; needs clientAuth)"


def _load(path: Path, loader, *, der: bool):
    """(object, None) or (None, message)."""
    data = _read(path)
    if isinstance(data, str):
        return None, data
    try:
        return loader(data, der=der), None
    except _Bad as e:
        return None, f"{e}: {path}"


def uplink_tls_issues(ca: Path, cert: Path, key: Path) -> Found:
    """mqtts: the CA that verifies the broker, the gateway's certificate and its key."""
    found: Found = []
    cas, msg = _load(ca, functools.partial(_certs, bundle=True), der=False)
    if msg is None:
        msg = _ca_problem(cas, ca)
    if msg:
        found.append(("ca_file", msg))
    chain, msg = _load(cert, _certs, der=False)
    if msg is None:
        msg = _validity(chain[0]) or _client_usage(chain[0])
        msg = f"{msg}: {cert}" if msg else None
    if msg:
        found.append(("cert_file", msg))
    private, msg = _load(key, _key, der=False)
    if msg is None and chain and not _matches(chain[0], private):
        msg = f"not the private key of cert_file {cert}: {key}"
    msg = msg or key_mode_problem(key)
    if msg:
        found.append(("key_file", msg))
    if not found:
        found += _as_mqtt_does(ca, cert, key)
    return found


def key_mode_problem(path: Path) -> str | None:
    """A private key that others can read is refused, as ssh refuses one: a key copied with the wrong mode is
    how a fleet's identities leak (IEC 62443-4-2 CR 1.5, authenticator management)."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError as e:
        return f"cannot read {path}: {reason(e)}"
    if mode & 0o077:
        return f"permissions {mode:04o} are too open: a private key must be readable by its owner only " \
               f"(chmod 600 {path})"
    return None


def _ca_problem(cas: list, path: Path) -> str | None:
    authorities = [c for c in cas if _is_ca(c)]
    if not authorities:
        return f"holds no CA certificate (give the CA that signed the broker's certificate): {path}"
    if all(_validity(c) for c in authorities):
        return f"{_validity(max(authorities, key=lambda c: c.not_valid_after_utc))}: {path}"
    return None


def _as_mqtt_does(ca: Path, cert: Path, key: Path) -> Found:
    """Last, the very call the agent makes: whatever `ssl` refuses that the checks above let through."""
    import ssl

    from .mqtt import tls_context

    try:
        tls_context(ca, cert, key)
    except (ssl.SSLError, OSError, ValueError) as e:
        return [("cert_file", f"refused by TLS ({getattr(e, 'reason', None) or reason(e)}): {cert}")]
    return []


def opcua_security_issues(cert: Path | None, key: Path | None, server: Path | None) -> Found:
    """Basic256Sha256: the gateway's application certificate and RSA key, the pinned server certificate."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    found: Found = []
    own = None
    if cert is not None:
        chain, msg = _load(cert, _certs, der=True)
        own = chain[0] if chain else None
        msg = msg or (f"{_validity(own)}: {cert}" if _validity(own) else None)
        if msg:
            found.append(("client_cert", msg))
    if key is not None:
        private, msg = _load(key, _key, der=True)
        if msg is None and not isinstance(private, rsa.RSAPrivateKey):
            kind = "EC" if isinstance(private, ec.EllipticCurvePrivateKey) else type(private).__name__
            msg = f"Basic256Sha256 needs an RSA key, got {kind}: {key}"
        elif msg is None and own is not None and not _matches(own, private):
            msg = f"not the private key of client_cert {cert}: {key}"
        msg = msg or key_mode_problem(key)
        if msg:
            found.append(("client_key", msg))
    if server is not None:
        chain, msg = _load(server, _certs, der=True)
        msg = msg or (f"{_validity(chain[0])}: {server}" if _validity(chain[0]) else None)
        if msg:
            found.append(("server_cert", msg))
    return found


# ---------------------------------------------------------------- the storage directory

def storage_problem(d: Path) -> str | None:
    """Create the directory (and its parents) as the agent will, write a file in it, then undo both: the answer
    is the operating system's own (permissions, read-only or vanished file systems, a file in the way), which
    no access() test gives for root."""
    if os.path.exists(d) and not os.path.isdir(d):   # os.path swallows ENAMETOOLONG and friends
        return f"not a directory: {d}"
    missing = []
    p = d
    while not os.path.lexists(p) and p.parent != p:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for p in reversed(missing):
            try:
                os.mkdir(p, 0o750)
            except OSError as e:
                return f"cannot create {d}: {reason(e)}"
            created.append(p)
        try:
            fd, probe = tempfile.mkstemp(dir=d, prefix=".gridedge-check-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            return f"cannot write in {d}: {reason(e)}"
        return None
    finally:
        for p in reversed(created):
            try:
                os.rmdir(p)
            except OSError:
                pass
