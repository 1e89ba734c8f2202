"""`gridedge check` opens every file the agent will open, as the agent will open it (issue 11, defects 4 and 15):
TLS certificates, CA and key through `cryptography` and `ssl`, OPC UA certificates, the storage directory. What
check passes, run does not crash on; what check refuses, run refuses with the same lines and no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gridedge.config import ConfigError, load_config
from gridedge.hil.opcua_certs import make_opcua_pki
from gridedge.hil.pki import make_future_client, make_pki, make_rogue_client

GRIDEDGE = [sys.executable, "-m", "gridedge"]


@pytest.fixture
def site(tmp_path: Path):
    """A gateway directory with a throwaway PKI; write(...) makes its gateway.toml."""

    class Site:
        pki = make_pki(tmp_path / "pki")
        cert, key = pki.client("gw1")
        ca = pki.ca_cert
        dir = tmp_path

        def write(self, *, ca=None, cert=None, key=None, storage="var", devices="") -> Path:
            path = tmp_path / "gateway.toml"
            path.write_text(f'[gateway]\nid = "gw1"\n[uplink]\nbroker = "mqtts://localhost:8883"\n'
                            f'ca_file = "{ca or self.ca}"\ncert_file = "{cert or self.cert}"\n'
                            f'key_file = "{key or self.key}"\n[storage]\ndir = "{storage}"\n{devices}')
            return path

    return Site()


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    return [line.removeprefix(f"{path}: ") for line in ei.value.errors]


def junk(path: Path, text: str = "hello, not a certificate\n") -> Path:
    path.write_text(text)
    return path


def when(cert: Path) -> tuple[str, str]:
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    return f"{c.not_valid_before_utc:%Y-%m-%d %H:%M}", f"{c.not_valid_after_utc:%Y-%m-%d %H:%M}"


def test_the_good_site_passes(site):
    cfg = load_config(site.write())
    assert cfg.uplink.cert_file == site.cert and cfg.storage.dir == site.dir / "var"
    assert not (site.dir / "var").exists(), "check leaves nothing behind: run creates the directory"


def test_unparsable_certificate_ca_and_key(site, tmp_path):
    bad_ca, bad_cert, bad_key = junk(tmp_path / "ca.pem"), junk(tmp_path / "gw.pem"), junk(tmp_path / "gw.key")
    assert errors(site.write(ca=bad_ca, cert=bad_cert, key=bad_key)) == [
        f"uplink.ca_file: not a PEM certificate: {bad_ca}",
        f"uplink.cert_file: not a PEM certificate: {bad_cert}",
        f"uplink.key_file: not a PEM private key: {bad_key}",
    ]
    broken = junk(tmp_path / "broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (msg,) = errors(site.write(cert=broken))
    assert msg.startswith("uplink.cert_file: not a PEM certificate (") and msg.endswith(f"): {broken}")


SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.mark.skipif(not SYSTEM_CAS.is_file(), reason="no system CA bundle")
def test_the_system_ca_bundle_passes(site, recwarn):
    """It holds certificates cryptography frowns on (a negative serial) that OpenSSL loads: check judges the bundle as
    the agent's TLS will, and says nothing about them."""
    load_config(site.write(ca=SYSTEM_CAS))
    assert not [w for w in recwarn if "serial" in str(w.message)]


def test_key_that_does_not_match_the_certificate(site):
    _, other_key = site.pki.client("gw2")
    assert errors(site.write(key=other_key)) == [f"uplink.key_file: not the private key of cert_file {site.cert}: "
                                                 f"{other_key}"]


def test_encrypted_key(site, tmp_path):
    key = serialization.load_pem_private_key(site.key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    assert errors(site.write(key=locked)) == [
        f"uplink.key_file: the private key is encrypted (the agent cannot ask for a password): {locked}"]


def test_expired_and_not_yet_valid_client_certificates(site):
    old_cert, old_key = make_rogue_client(site.pki.dir, "gw1", expired=True)
    new_cert, new_key = make_future_client(site.pki.dir, "gw1")
    assert errors(site.write(cert=old_cert, key=old_key)) == [
        f"uplink.cert_file: certificate expired {when(old_cert)[1]} UTC: {old_cert}"]
    assert errors(site.write(cert=new_cert, key=new_key)) == [
        f"uplink.cert_file: certificate not valid before {when(new_cert)[0]} UTC (is the clock right?): {new_cert}"]


def test_certificate_not_for_client_authentication(site):
    """The broker's own certificate (serverAuth only) given as the gateway's: the broker would refuse it."""
    assert errors(site.write(cert=site.pki.server_cert, key=site.pki.server_key)) == [
        f"uplink.cert_file: not a client certificate (extended key usage serverAuth; needs clientAuth): "
        f"{site.pki.server_cert}"]


def test_ca_file_without_a_ca_certificate(site):
    assert errors(site.write(ca=site.cert)) == [
        f"uplink.ca_file: holds no CA certificate (give the CA that signed the broker's certificate): {site.cert}"]


@pytest.mark.parametrize("where, reason", [
    ("file/var", "Not a directory"),            # under a file
    ("/proc/gridedge-var", "No such file or directory"),   # where nothing can be created, even by root
])
def test_storage_dir_that_cannot_be_created(site, where, reason):
    (site.dir / "file").write_text("")
    target = site.dir / where if not where.startswith("/") else Path(where)
    assert errors(site.write(storage=where)) == [f"storage.dir: cannot create {target}: {reason}"]


def test_a_file_name_cannot_forge_a_second_message(site):
    where = "file/line one\nsite.toml: uplink.broker: all fine"
    (site.dir / "file").write_text("")
    assert errors(site.write(storage=where.replace("\n", "\\n"))) == [
        f"storage.dir: cannot create {site.dir / 'file'}/line one\\nsite.toml: uplink.broker: all fine: "
        "Not a directory"]


def test_storage_dir_that_cannot_be_written(site):
    assert errors(site.write(storage="/proc")) == ["storage.dir: cannot write in /proc: No such file or directory"]


def test_storage_dir_existing_and_writable_is_left_as_it_was(site):
    (site.dir / "var").mkdir()
    (site.dir / "var" / "outbox.sqlite").write_bytes(b"")
    load_config(site.write())
    assert sorted(p.name for p in (site.dir / "var").iterdir()) == ["outbox.sqlite"]


# ---------------------------------------------------------------- OPC UA security material

def opcua_device(**files) -> str:
    keys = "".join(f'{k} = "{v}"\n' for k, v in files.items())
    return ('[[devices]]\nid = "rtu1"\ndriver = "opcua"\nrole = "meter"\nendpoint = "opc.tcp://127.0.0.1:4840/rtu"\n'
            'nodes = { "F1.W" = "ns=2;s=F1.MMXU1.TotW" }\nsecurity_policy = "Basic256Sha256"\n' + keys)


def test_opcua_certificates_are_parsed_like_the_driver_does(site, tmp_path):
    ua = make_opcua_pki(tmp_path / "ua")
    good = dict(client_cert=ua.client_cert, client_key=ua.client_key, server_cert=ua.server_cert)
    load_config(site.write(devices=opcua_device(**good)))
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    bad = junk(tmp_path / "x.der")
    assert errors(site.write(devices=opcua_device(client_cert=bad, client_key=ua.client_key, server_cert=bad))) == [
        f"devices[0].client_cert: not a certificate (PEM or DER): {bad}",
        f"devices[0].server_cert: not a certificate (PEM or DER): {bad}",
    ]
    assert errors(site.write(devices=opcua_device(client_cert=ua.client_cert, client_key=ec_key, server_cert=ua.server_cert))) == [
        f"devices[0].client_key: Basic256Sha256 needs an RSA key, got EC: {ec_key}"]
    assert errors(site.write(devices=opcua_device(client_cert=ua.client_cert, client_key=ua.server_key, server_cert=ua.server_cert))) == [
        f"devices[0].client_key: not the private key of client_cert {ua.client_cert}: {ua.server_key}"]
    assert errors(site.write(devices=opcua_device(client_cert=ua.client_cert, client_key=bad, server_cert=ua.server_cert))) == [
        f"devices[0].client_key: not a private key (PEM or DER): {bad}"]


# ---------------------------------------------------------------- run says what check says

def test_run_refuses_what_check_refuses_with_the_same_lines(site, tmp_path):
    bad_key = junk(tmp_path / "gw.key")
    path = site.write(key=bad_key, storage="file/var")
    (site.dir / "file").write_text("")
    check = subprocess.run(GRIDEDGE + ["check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    run = subprocess.run(GRIDEDGE + ["run", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and run.returncode == 2
    assert check.stderr.splitlines() == run.stderr.splitlines() == [
        f"{path}: uplink.key_file: not a PEM private key: {bad_key}",
        f"{path}: storage.dir: cannot create {site.dir / 'file' / 'var'}: Not a directory",
    ]
    assert "Traceback" not in run.stderr



# ---------------------------------------------------------------- fuzz: any bytes in any of the files

def _pem(kind: str, der: bytes) -> bytes:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n".encode()


def _damaged(pem: bytes, flips: list[tuple[int, int]]) -> bytes:
    """A real PEM object with some bytes of its DER changed: it still looks like a certificate or key."""
    import base64

    lines = pem.decode().strip().splitlines()
    der = bytearray(base64.b64decode("".join(lines[1:-1])))
    for at, value in flips:
        der[at % len(der)] = value
    return _pem(lines[0][11:-5], bytes(der))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["ca", "cert", "key"]), how=st.sampled_from(["raw", "damaged", "wrapped"]),
       blob=st.binary(max_size=600), flips=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)),
                                                    min_size=1, max_size=6))
def test_fuzz_tls_files(site, tmp_path, which, how, blob, flips):
    """Whatever is in the CA, certificate or key file: check names the file or passes, and a pass means the agent's
    own TLS call accepts the three."""
    original = {"ca": site.ca, "cert": site.cert, "key": site.key}[which]
    bad = tmp_path / f"fuzz-{which}"
    kind = "PRIVATE KEY" if which == "key" else "CERTIFICATE"
    bad.write_bytes({"raw": lambda: blob, "wrapped": lambda: _pem(kind, blob),
                     "damaged": lambda: _damaged(original.read_bytes(), flips)}[how]())
    path = site.write(**{which: bad})
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert all(line.startswith(f"{path}: uplink.") for line in e.errors), e.errors
        return
    from gridedge.mqtt import tls_context

    tls_context(cfg.uplink.ca_file, cfg.uplink.cert_file, cfg.uplink.key_file)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["client_cert", "client_key", "server_cert"]), blob=st.binary(max_size=600),
       flips=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), min_size=1, max_size=6),
       damaged=st.booleans())
def test_fuzz_opcua_files(site, tmp_path, which, blob, flips, damaged):
    """Whatever is in the OPC UA certificate, key or pinned server certificate: check names the key or passes."""
    ua = tmp_path / "ua"
    if not ua.exists():
        make_opcua_pki(ua)
    files = {"client_cert": ua / "client.der", "client_key": ua / "client.key", "server_cert": ua / "server.der"}
    src = files[which].read_bytes()
    if not damaged:
        data = blob
    elif src.startswith(b"-----"):
        data = _damaged(src, flips)
    else:
        data = bytearray(src)
        for at, value in flips:
            data[at % len(data)] = value
    bad = tmp_path / f"fuzz-{which}"
    bad.write_bytes(bytes(data))
    path = site.write(devices=opcua_device(**dict(files, **{which: bad})))
    try:
        load_config(path)
    except ConfigError as e:
        assert all(line.startswith(f"{path}: devices[0].") for line in e.errors), e.errors


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_private_key_others_can_read_is_refused(site, mode):
    """As ssh refuses one: a key copied with the wrong mode is how a fleet's identities leak."""
    site.key.chmod(mode)
    assert errors(site.write()) == [f"uplink.key_file: permissions {mode:04o} are too open: a private key must be "
                                    f"readable by its owner only (chmod 600 {site.key})"]
    site.key.chmod(0o600)
    load_config(site.write())


def test_certificates_near_their_end_are_listed_for_the_state(site):
    """security.expiring: every certificate the configuration names that ends within 30 days (the rig's PKI is
    made for 30 days: the gateway's certificate and its CA are listed, with their days left)."""
    import datetime as dt

    from gridedge.security import certs

    cfg = load_config(site.write())
    found = certs.read_certs(certs.config_certs(cfg))
    assert {c.role for c in found} == {"uplink.cert_file", "uplink.ca_file"}
    now = dt.datetime.now(dt.timezone.utc)
    soon = certs.expiring(found, now)
    assert {e["role"] for e in soon} == {"uplink.cert_file", "uplink.ca_file"}
    assert all(0 < e["days_left"] <= 30 for e in soon) and soon[0]["subject"]
    assert certs.expiring(found, now - dt.timedelta(days=60)) == []   # two months earlier: nothing to say
