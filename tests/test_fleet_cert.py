"""Certificate rotation, the parts: the identity on disk (adopted once, switched in one rename), the checks of a CA's
answer, the journal, EST's client against the rig's EST server, the one-shot test connection, renewal by the clock;
every parser fuzzed (a CA's answer, an EST response, an EST URL, the journal read back from disk)."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings, strategies as st

from gridedge.config import load_config
from gridedge.config_files import uplink_tls_issues
from gridedge.fleet import est
from gridedge.fleet.certificate import parse_journal
from gridedge.fleet.identity import IdentityStore, Refused, check_answer, make_csr, read_chain
from gridedge.hil.broker import Mosquitto
from gridedge.hil.est_server import EstServer
from gridedge.hil.operator_ca import OperatorCa
from gridedge.hil.pki import load_ca, make_ca, make_pki, make_rogue_client, reissue_client, sign_client
from gridedge.mqtt import MqttClient, MqttError, tls_context

from .aio import arun

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def gateway(pki, tmp_path):
    """The gateway's certificate and key where a configuration names them: etc/pki/gateway.{crt,key}."""
    cert, key = pki.client("gw-1")
    d = tmp_path / "etc" / "pki"
    d.mkdir(parents=True)
    shutil.copy(cert, d / "gateway.crt")
    shutil.copy(key, d / "gateway.key")
    return d / "gateway.crt", d / "gateway.key"


def pem(*certs) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# ---------------------------------------------------------------- the identity on disk

def test_adopt_makes_both_files_links_into_current_and_every_step_leaves_a_pair_tls_loads(pki, gateway):
    cert, key = gateway
    before = cert.read_bytes()
    store = IdentityStore(cert, key)
    ident = store.adopt()
    assert cert.is_symlink() and key.is_symlink() and store.current() == ident
    assert os.readlink(cert) == "identity/current/cert.pem" and os.readlink(key) == "identity/current/key.pem"
    assert cert.read_bytes() == before and oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert uplink_tls_issues(pki.ca_cert, cert, key) == []   # what `gridedge check` says of it
    assert store.adopt() == ident                            # once: again is nothing

    # a crash after the certificate became a link and before the key did: the pair still matches, adopt completes
    os.unlink(key)
    shutil.copy(ident.key, key)
    os.chmod(key, 0o600)
    assert uplink_tls_issues(pki.ca_cert, cert, key) == []
    assert store.adopt() == ident and key.is_symlink()


def test_adopt_says_what_the_operator_must_allow_when_it_cannot_write_beside_the_certificate(pki, gateway):
    """(The tests run as root, which writes read-only directories: a file where identity/ must go fails the same.)"""
    cert, key = gateway
    (cert.parent / "identity").write_text("in the way")
    with pytest.raises(Refused, match=f"cannot keep the identity beside {cert} .*the agent must be able to write"):
        IdentityStore(cert, key).adopt()
    assert not cert.is_symlink() and uplink_tls_issues(pki.ca_cert, cert, key) == []   # nothing changed


def test_switch_changes_certificate_and_key_together_by_one_rename(pki, gateway):
    cert, key = gateway
    store = IdentityStore(cert, key)
    old = store.adopt()
    ca_cert, ca_key = load_ca(pki.dir)
    new_key = ec.generate_private_key(ec.SECP256R1())
    new = store.new(new_key)
    assert oct(os.stat(new.key).st_mode & 0o777) == "0o600"
    store.put_chain(new, [sign_client(ca_cert, ca_key, "gw-1", new_key.public_key())])
    links = os.readlink(cert), os.readlink(key)
    store.switch(new)
    assert (os.readlink(cert), os.readlink(key)) == links     # the files' links stay; only `current` moved
    assert store.current() == new and uplink_tls_issues(pki.ca_cert, cert, key) == []
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    assert loaded.public_key().public_numbers() == new_key.public_key().public_numbers()
    tls_context(pki.ca_cert, cert, key)
    store.switch(old)                                        # and back
    store.prune({old.name})
    assert sorted(os.listdir(store.root)) == sorted(["current", old.name])


def test_an_identity_name_from_the_journal_never_leaves_the_identity_directory(gateway):
    store = IdentityStore(*gateway)
    for bad in ("../../etc", "current", "/tmp/x", "adopted-../x"):
        with pytest.raises(Refused):
            store.identity(bad)


# ---------------------------------------------------------------- the CA's answer

def _answer(pki, key, *, cn="gw-1", ca=None, eku=ExtendedKeyUsageOID.CLIENT_AUTH, **validity):
    """A CA's answer for `key` (the rig's _issue: sign_client makes clientAuth only, this needs serverAuth too)."""
    from gridedge.hil.pki import _issue

    ca_cert, ca_key = ca or load_ca(pki.dir)
    return _issue(ca_cert, ca_key, cn, kind="ec", eku=eku, public_key=key.public_key(), **validity)[0]


def test_check_answer_takes_a_certificate_of_the_key_for_the_name_through_an_intermediate(pki):
    key = ec.generate_private_key(ec.SECP256R1())
    root = load_ca(pki.dir)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuing")]))
             .issuer_name(root[0].subject).public_key(inter_key.public_key()).serial_number(7)
             .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=5))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(root[1], hashes.SHA256()))
    leaf = _answer(pki, key, ca=(inter, inter_key))
    assert check_answer(read_chain(pem(leaf, inter)), key, name="gw-1", anchors=[root[0]], now=NOW) == leaf
    with pytest.raises(Refused, match="not issued by a CA the gateway trusts"):   # without its intermediate
        check_answer([leaf], key, name="gw-1", anchors=[root[0]], now=NOW)


@pytest.mark.parametrize("case, why", [
    ("other_key", "is for another key"),
    ("other_name", "names 'gw-2', not the gateway's identity 'gw-1'"),
    ("expired", "the certificate expired"),
    ("future", "is not valid before"),
    ("server", "not a client certificate"),
    ("other_ca", "not issued by a CA the gateway trusts"),
])
def test_check_answer_refuses_what_cannot_be_the_gateways_with_its_reason(pki, case, why):
    key = ec.generate_private_key(ec.SECP256R1())
    kw = {"other_key": {}, "other_name": {"cn": "gw-2"},
          "expired": {"not_before": NOW - dt.timedelta(days=3), "not_after": NOW - dt.timedelta(seconds=1)},
          "future": {"not_before": NOW + dt.timedelta(minutes=10)}, "server": {"eku": ExtendedKeyUsageOID.SERVER_AUTH},
          "other_ca": {"ca": make_ca("elsewhere")}}[case]
    cert = _answer(pki, ec.generate_private_key(ec.SECP256R1()) if case == "other_key" else key, **kw)
    with pytest.raises(Refused, match=why):
        check_answer([cert], key, name="gw-1", anchors=[load_ca(pki.dir)[0]], now=NOW)


def make_pki_dir():
    import tempfile
    from pathlib import Path

    return make_pki(Path(tempfile.mkdtemp())).dir


def test_read_chain_refuses_what_is_not_a_certificate():
    for data, why in ((b"", "holds no PEM certificate"), (b"<html>502 Bad Gateway</html>", "holds no PEM"),
                      (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a certificate"),
                      (b"-----BEGIN CERTIFICATE-----\nMIIB", "not a certificate"),
                      (pem(load_ca(make_pki_dir())[0]) + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                       "does not decode")):
        with pytest.raises(Refused, match=why):
            read_chain(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=600), st.text(max_size=600).map(str.encode),
                 st.builds(lambda a, b: b"-----BEGIN CERTIFICATE-----\n" + a + b"\n-----END CERTIFICATE-----\n" + b,
                           st.binary(max_size=300), st.binary(max_size=60))))
def test_read_chain_fuzzed_gives_certificates_or_refuses(data):
    try:
        chain = read_chain(data)
    except Refused as exc:
        assert str(exc)
    else:
        assert chain and all(isinstance(c, x509.Certificate) for c in chain)


# ---------------------------------------------------------------- the journal

GOOD = {"id": "rot-1", "method": "mqtt", "state": "applied", "new": "20261207T000000Z-0123abcd", "started": 1.0,
        "deadline": 2.0, "window_s": 10.0, "previous": "adopted-0123456789ab", "starts": 1}


def test_the_journal_reads_back_what_was_written_and_refuses_anything_else():
    assert parse_journal(json.dumps(GOOD).encode()).new == GOOD["new"]
    for bad in ({**GOOD, "new": "../../x"}, {**GOOD, "previous": "/etc"}, {**GOOD, "state": "done"},
                {**GOOD, "starts": 1.5}, {**GOOD, "window_s": True}, {k: v for k, v in GOOD.items() if k != "id"},
                {**GOOD, "extra": 1}, [GOOD]):
        with pytest.raises(ValueError):
            parse_journal(json.dumps(bad).encode())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(sorted(GOOD)), st.one_of(
                     st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40)), max_size=10)
                 .map(lambda d: json.dumps({**GOOD, **d}).encode())))
def test_the_journal_fuzzed_reads_as_a_rotation_or_a_value_error(data):
    try:
        rot = parse_journal(data)
    except ValueError:
        return
    assert rot.state in ("requested", "applied") and isinstance(rot.starts, int)


# ---------------------------------------------------------------- EST

def test_est_client_against_the_rigs_server_with_client_certificate_authentication(pki, tmp_path):
    ca = OperatorCa(pki.dir)
    cert, key = pki.client("gw-1")
    subject = x509.load_pem_x509_certificate(cert.read_bytes()).subject
    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(new_key, subject, None).public_bytes(serialization.Encoding.DER)

    def client(c, k) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(c), str(k))
        return ctx

    async def scenario():
        server = EstServer(ca, pki)
        await server.start()
        try:
            certs = await est.simplereenroll(server.url, csr, client(cert, key), 5)
            assert certs[0].public_key().public_numbers() == new_key.public_key().public_numbers()
            # another identity's request: refused by the server (re-enrolment keeps the subject)
            other = make_csr(new_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-2")]), None)
            with pytest.raises(est.EstError, match="answered 400: the request's subject"):
                await est.simplereenroll(server.url, other.public_bytes(serialization.Encoding.DER),
                                         client(cert, key), 5)
            # a client certificate of another CA: the TLS handshake fails, said as such
            rogue = make_rogue_client(tmp_path, "gw-1")
            with pytest.raises(est.EstError, match=r"did it refuse the gateway's certificate|TLS with 127.0.0.1:\d+ "
                                                   r"failed|connection to 127.0.0.1:\d+ failed"):
                await est.simplereenroll(server.url, csr, client(*rogue), 5)
            # a server that drips its answer: the whole exchange is bounded, not only the gap between bytes
            server.drip_s = 0.05
            with pytest.raises(est.EstError, match="no complete answer from 127.0.0.1:.* within 0.5 s"):
                await est.simplereenroll(server.url, csr, client(cert, key), 0.5)
        finally:
            await server.stop()
    arun(scenario())


@pytest.mark.parametrize("url, ok", [
    ("https://est.example.net/.well-known/est", True), ("https://est.example.net:8443/.well-known/est/gw/", True),
    ("http://est.example.net/.well-known/est", False), ("https://est.example.net/est", False),
    ("https://est.example.net/.well-known/est/a/b", False), ("https://u:p@est/.well-known/est", False),
    ("https://est.example.net:99999/.well-known/est", False), ("https:///.well-known/est", False),
])
def test_est_url(url, ok):
    if ok:
        assert est.check_url(url) == url
    else:
        with pytest.raises(ValueError):
            est.check_url(url)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_est_url_fuzzed(url):
    try:
        est.check_url(url)
    except ValueError:
        pass


def _http(status: str, headers: list[str], body: bytes) -> bytes:
    return ("HTTP/1.1 " + status + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body


def test_est_answers_that_are_not_certificates_are_said_as_such(pki):
    good = base64.b64encode(pkcs7.serialize_certificates([load_ca(pki.dir)[0]], serialization.Encoding.DER))
    ct = "Content-Type: application/pkcs7-mime; smime-type=certs-only"
    assert est.certificates(*est.parse_response(_http("200 OK", [ct], good)))
    chunked = _http("200 OK", [ct, "Transfer-Encoding: chunked"], b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good))
    assert est.certificates(*est.parse_response(chunked))
    for answer, why in ((_http("202 Accepted", ["Retry-After: 60"], b""), "holds the request for approval.*60 s"),
                        (_http("500 Oops", [], b"<h1>\x1b[2Jboom</h1>"), r"answered 500: <h1>\\x1b\[2Jboom"),
                        (_http("200 OK", ["Content-Type: text/html"], b"<html>"), "text/html, not application"),
                        (_http("200 OK", [ct], b"not base64!"), "not a certificate"),
                        (_http("200 OK", [ct, "Content-Length: 999"], good), "cut short"),
                        (b"SSH-2.0-OpenSSH\r\n", "not HTTP")):
        with pytest.raises(est.EstError, match=why):
            est.certificates(*est.parse_response(answer))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.builds(lambda s, h, b: _http(s, h, b), st.text(max_size=20),
                           st.lists(st.text(max_size=40), max_size=4), st.binary(max_size=200))))
def test_est_response_fuzzed_gives_certificates_or_an_est_error(data):
    try:
        certs = est.certificates(*est.parse_response(data))
    except est.EstError as exc:
        assert str(exc).isprintable()
    else:
        assert certs


# ---------------------------------------------------------------- the test connection

def test_a_test_connection_fails_at_once_with_the_brokers_reason(pki, tmp_path):
    """retry=False: one attempt, its reason (not "no CONNACK within ..." after the timeout)."""
    async def scenario():
        broker = Mosquitto(tmp_path / "broker", pki)
        await asyncio.to_thread(broker.start)
        try:
            rogue = make_rogue_client(tmp_path, "gw-1")
            probe = MqttClient(broker.url, "gw-1-rotation", ssl_context=tls_context(pki.ca_cert, *rogue), retry=False)
            with pytest.raises(MqttError, match="the broker refused our client certificate"):
                await probe.connect(30)
            good = MqttClient(broker.url, "gw-1-rotation", ssl_context=tls_context(pki.ca_cert, *pki.client("gw-1")),
                              retry=False)
            await good.connect(10)
            await good.close()
        finally:
            await asyncio.to_thread(broker.stop)
    arun(scenario(), 60)


# ---------------------------------------------------------------- renewal by the clock

def test_renewal_is_due_at_its_fraction_of_the_lifetime_and_not_again_until_retry_s(pki, tmp_path):
    """The clock injected: renew_at 0.5 of a certificate valid for 10 days is day 5; after a failure the next try
    waits retry_s."""
    cert, key = pki.client("gw-renew")
    start = NOW - dt.timedelta(days=1)
    reissue_client(pki, "gw-renew", not_before=start, not_after=start + dt.timedelta(days=10))
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nid = "gw-renew"\n\n[uplink]\nbroker = "mqtts://127.0.0.1:1"\nca_file = "{pki.ca_cert}"\n'
                   f'cert_file = "{cert}"\nkey_file = "{key}"\n\n[storage]\ndir = "{tmp_path / "var"}"\n\n'
                   f'[fleet.certificate]\nrenew_at = 0.5\nretry_s = 600\n')
    from gridedge.agent import Agent

    async def scenario():
        agent = Agent(load_config(cfg))
        rot = agent.rotation
        due = rot.renew_from()   # certificates hold whole seconds
        assert due == pytest.approx((start + dt.timedelta(days=5)).timestamp(), abs=1)
        assert rot.state()["renew_from"].startswith((start + dt.timedelta(days=5)).strftime("%Y-%m-%dT%H:%M"))
        rot.clock = lambda: due - 1
        assert rot._due() is None and rot._sleep_s() == pytest.approx(1, abs=0.01)
        rot.clock = lambda: due + 1
        assert rot._due() is not None
        rot._failed("renew-x", "the CA did not answer")
        assert rot._due() is None and rot._sleep_s() == pytest.approx(60)       # TICK_S: retry in 600 s
        rot.clock = lambda: due + 602
        assert rot._due() is not None
        assert rot.state()["last_failure"]["reason"] == "the CA did not answer"
        agent.outbox.close()
        agent.audit.close()
        agent.replay.close()
    arun(scenario())
