"""PKI and mosquitto launcher: real TLS handshakes over loopback, a real broker, a real paho client."""

from __future__ import annotations

import queue
import socket
import ssl
import stat
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridedge.hil import broker as broker_mod
from gridedge.hil.broker import BrokerNotFound, BrokerStartError, Mosquitto, find_mosquitto
from gridedge.hil.pki import Pki, make_pki, make_rogue_client

TIMEOUT = 10.0


def _have_mosquitto() -> bool:
    try:
        find_mosquitto()
        return True
    except BrokerNotFound:
        return False


needs_mosquitto = pytest.mark.skipif(not _have_mosquitto(), reason="mosquitto not installed")


# --------------------------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_exchange(
    pki: Pki, client_cert: Path | None, client_key: Path | None, *, ca: Path | None = None,
    hostname: str = "127.0.0.1",
):
    """Handshake a server (server cert, client cert required) and a client over a loopback socket.

    Returns (server_outcome, client_outcome); each is the peer CN / b"ok" or the exception raised.
    """
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    srv_ctx.load_verify_locations(pki.ca_cert)
    srv_ctx.verify_mode = ssl.CERT_REQUIRED
    cli_ctx = ssl.create_default_context(cafile=str(ca or pki.ca_cert))
    if client_cert is not None:
        cli_ctx.load_cert_chain(client_cert, client_key)

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    outcome: queue.Queue[object] = queue.Queue()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        try:
            with srv_ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                cn = dict(x[0] for x in peer["subject"])["commonName"]
                tls.sendall(b"ok")
                outcome.put(cn)
        except (ssl.SSLError, OSError) as exc:
            outcome.put(exc)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            try:
                with cli_ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                    # with TLS 1.3 the server's verdict on our certificate arrives after the handshake
                    client_result: object = tls.recv(2)
            except (ssl.SSLError, OSError) as exc:
                client_result = exc
        server_result = outcome.get(timeout=TIMEOUT)
    finally:
        t.join(TIMEOUT)
        listener.close()
    return server_result, client_result


def test_chain_verifies_both_ways(pki: Pki) -> None:
    cert, key = pki.client("gw-01")
    server_result, client_result = _tls_exchange(pki, cert, key)
    assert server_result == "gw-01"
    assert client_result == b"ok"


def test_server_cert_has_sans_and_eku(pki: Pki) -> None:
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_cert_cn_eku_and_cache(pki: Pki) -> None:
    first = pki.client("meter-7")
    assert pki.client("meter-7") == first  # made once
    cert = x509.load_pem_x509_certificate(first[0].read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "meter-7"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_key_files_are_private(pki: Pki) -> None:
    _, client_key = pki.client("gw-01")
    for key in (pki.ca_key, pki.server_key, client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_rogue_client_rejected(pki: Pki) -> None:
    cert, key = make_rogue_client(pki.dir, "gw-01")
    server_result, client_result = _tls_exchange(pki, cert, key)
    assert isinstance(server_result, ssl.SSLCertVerificationError), server_result
    assert "issuer" in server_result.verify_message
    assert not isinstance(client_result, bytes)


def test_expired_client_rejected(pki: Pki) -> None:
    cert, key = make_rogue_client(pki.dir, "gw-01", expired=True)
    server_result, client_result = _tls_exchange(pki, cert, key)
    assert isinstance(server_result, ssl.SSLCertVerificationError), server_result
    assert "expired" in server_result.verify_message
    assert not isinstance(client_result, bytes)


def test_client_rejects_server_of_other_ca(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    cert, key = pki.client("gw-01")
    _, client_result = _tls_exchange(pki, cert, key, ca=other.ca_cert)
    assert isinstance(client_result, ssl.SSLCertVerificationError), client_result


def test_rsa_and_bad_arguments(tmp_path: Path) -> None:
    rsa_pki = make_pki(tmp_path / "rsa", key="rsa", server_names=["broker.example"])
    server_result, client_result = _tls_exchange(rsa_pki, *rsa_pki.client("gw-rsa"), hostname="broker.example")
    assert server_result == "gw-rsa" and client_result == b"ok"
    _, client_result = _tls_exchange(rsa_pki, *rsa_pki.client("gw-rsa"), hostname="127.0.0.1")
    assert isinstance(client_result, ssl.SSLCertVerificationError)  # no SAN for that name
    with pytest.raises(ValueError, match="key type"):
        make_pki(tmp_path / "x", key="dsa")
    with pytest.raises(ValueError, match="days"):
        make_pki(tmp_path / "x", days=0)
    with pytest.raises(ValueError, match="server_names"):
        make_pki(tmp_path / "x", server_names=[])
    with pytest.raises(FileNotFoundError, match="make_pki"):
        make_rogue_client(tmp_path / "empty", "gw", expired=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=80))
@example(name="00000" + "\u0800" * 20)  # 25 characters, 65 bytes of UTF-8: what the fuzzer found
def test_client_name_fuzz(pki: Pki, name: str) -> None:
    """Any string: a certificate whose CN is exactly that string, or a clear ValueError when it is empty, longer
    than the 64 bytes of UTF-8 cryptography allows for a CN, or has a control character; nothing else is refused."""
    refused = not 0 < len(name.encode("utf-8", "surrogatepass")) <= 64 \
        or any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in name)
    try:
        cert_path, key_path = pki.client(name)
    except ValueError as exc:
        assert refused, f"{name!r} refused"
        assert str(exc).startswith("certificate name "), exc  # the rig's own words, not the library's
        return
    assert not refused, f"{name!r} accepted"
    assert cert_path.parent == pki.dir / "clients" and key_path.parent == pki.dir / "clients"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name


# --------------------------------------------------------------------------------------------
# Broker
# --------------------------------------------------------------------------------------------
ACL = {
    "gw-01": ["readwrite grid/gw-01/#", "read grid/broadcast/+"],
    "dso": ["readwrite grid/#"],
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    if not _have_mosquitto():
        pytest.skip("mosquitto not installed")
    with Mosquitto(tmp_path_factory.mktemp("broker"), pki, plaintext_port=0, acl=ACL) as b:
        yield b


class Probe:
    """paho-mqtt 2.x client (MQTT v5) whose callbacks feed queues, so tests wait on events."""

    def __init__(self, client_id: str, *, pki: Pki | None = None, cert: tuple[Path, Path] | None = None,
                 ca: Path | None = None) -> None:
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if pki is not None or ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca or pki.ca_cert))  # type: ignore[union-attr]
            if cert is not None:
                ctx.load_cert_chain(*cert)
            self.client.tls_set_context(ctx)
        self.client.on_connect = lambda c, u, flags, rc, props: self.events.put(("connect", (rc, flags)))
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.events.put(("disconnect", rc))
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.events.put(("subscribe", rcs))
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)

    def connect(self, port: int, *, clean_start: bool = True, session_expiry: int = 0) -> tuple[str, object]:
        """('connect', (reason, flags)) on success; ('refused', why) when TLS or MQTT refuses."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        try:
            self.client.connect("127.0.0.1", port, keepalive=10, clean_start=clean_start, properties=props)
        except (ssl.SSLError, OSError) as exc:
            return ("refused", exc)
        self.client.loop_start()
        kind, value = self.events.get(timeout=TIMEOUT)
        if kind == "connect" and not value[0].is_failure:  # type: ignore[index]
            return kind, value
        self.client.loop_stop()
        return ("refused", value)

    def subscribe(self, topic: str, qos: int = 1) -> list:
        self.client.subscribe(topic, qos=qos)
        kind, value = self.events.get(timeout=TIMEOUT)
        assert kind == "subscribe", (kind, value)
        return value  # type: ignore[return-value]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@needs_mosquitto
def test_tls_client_pub_sub_roundtrip(broker: Mosquitto, pki: Pki) -> None:
    assert broker.url == f"mqtts://127.0.0.1:{broker.port}"
    p = Probe("gw-01-a", pki=pki, cert=pki.client("gw-01"))
    kind, _ = p.connect(broker.port)
    assert kind == "connect"
    try:
        [rc] = p.subscribe("grid/gw-01/meas")
        assert not rc.is_failure
        p.client.publish("grid/gw-01/meas", b"P=1200.0", qos=1).wait_for_publish(TIMEOUT)
        msg = p.messages.get(timeout=TIMEOUT)
        assert (msg.topic, msg.payload) == ("grid/gw-01/meas", b"P=1200.0")
    finally:
        p.close()


@needs_mosquitto
def test_acl_uses_cert_cn(broker: Mosquitto, pki: Pki) -> None:
    """mosquitto 2.0 grants wildcard subscriptions and filters per message: check delivery."""
    gw = Probe("gw-01-acl", pki=pki, cert=pki.client("gw-01"))
    dso = Probe("dso-acl", pki=pki, cert=pki.client("dso"))
    assert gw.connect(broker.port)[0] == "connect"
    assert dso.connect(broker.port)[0] == "connect"
    try:
        assert not gw.subscribe("grid/#")[0].is_failure
        assert not dso.subscribe("grid/#")[0].is_failure
        # gw-01 may not write outside its subtree: the broker drops it, dso sees only the allowed one
        gw.client.publish("grid/gw-02/meas", b"forbidden", qos=1).wait_for_publish(TIMEOUT)
        gw.client.publish("grid/gw-01/meas", b"allowed", qos=1).wait_for_publish(TIMEOUT)
        msg = dso.messages.get(timeout=TIMEOUT)
        assert (msg.topic, msg.payload) == ("grid/gw-01/meas", b"allowed")
        # gw-01 may not read another gateway's topics, but may read its own and the broadcast ones
        dso.client.publish("grid/gw-02/cmd", b"not for gw-01", qos=1).wait_for_publish(TIMEOUT)
        dso.client.publish("grid/broadcast/price", b"0.31", qos=1).wait_for_publish(TIMEOUT)
        got = [gw.messages.get(timeout=TIMEOUT) for _ in range(2)]
        assert [(m.topic, m.payload) for m in got] == [
            ("grid/gw-01/meas", b"allowed"),  # its own publish, echoed back by grid/#
            ("grid/broadcast/price", b"0.31"),
        ]
    finally:
        gw.close()
        dso.close()


@needs_mosquitto
def test_client_without_cert_refused(broker: Mosquitto, pki: Pki) -> None:
    p = Probe("nocert", pki=pki, cert=None)
    kind, why = p.connect(broker.port)
    assert kind == "refused", why


@needs_mosquitto
@pytest.mark.parametrize("expired", [False, True], ids=["other-ca", "expired"])
def test_rogue_cert_refused(broker: Mosquitto, pki: Pki, tmp_path: Path, expired: bool) -> None:
    if expired:
        cert = make_rogue_client(pki.dir, "gw-01", expired=True)
    else:
        cert = make_rogue_client(tmp_path, "gw-01")
    p = Probe("rogue", pki=pki, cert=cert)
    kind, why = p.connect(broker.port)
    assert kind == "refused", why


@needs_mosquitto
def test_client_refuses_server_of_wrong_ca(broker: Mosquitto, pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    p = Probe("wrong-ca", ca=other.ca_cert, cert=pki.client("gw-01"))
    kind, why = p.connect(broker.port)
    assert kind == "refused"
    assert isinstance(why, ssl.SSLCertVerificationError), why


@needs_mosquitto
def test_plaintext_listener_is_anonymous_and_tls_port_is_not_plaintext(broker: Mosquitto) -> None:
    assert broker.plaintext_port and broker.plaintext_url == f"mqtt://127.0.0.1:{broker.plaintext_port}"
    plain = Probe("plain")
    assert plain.connect(broker.plaintext_port)[0] == "connect"
    plain.close()
    wrong = Probe("plain-on-tls")
    assert wrong.connect(broker.port)[0] == "refused"


@needs_mosquitto
def test_restart_keeps_port_and_qos1_session(tmp_path: Path, pki: Pki) -> None:
    with Mosquitto(tmp_path / "b", pki) as b:
        port = b.port
        sub = Probe("gw-sub", pki=pki, cert=pki.client("gw-01"))
        assert sub.connect(port, clean_start=False, session_expiry=300)[0] == "connect"
        [rc] = sub.subscribe("grid/gw-01/cmd", qos=1)
        assert not rc.is_failure
        sub.close()
        assert sub.events.get(timeout=TIMEOUT)[0] == "disconnect"
        old_pid = b.pid

        b.restart()
        assert b.port == port and b.pid != old_pid and b.running

        pub = Probe("dso-pub", pki=pki, cert=pki.client("dso"))
        assert pub.connect(port)[0] == "connect"
        pub.client.publish("grid/gw-01/cmd", b"WMaxLimPct=50", qos=1).wait_for_publish(TIMEOUT)
        pub.close()

        again = Probe("gw-sub", pki=pki, cert=pki.client("gw-01"))
        kind, (reason, flags) = again.connect(port, clean_start=False, session_expiry=300)  # type: ignore[misc]
        assert kind == "connect"
        assert flags.session_present  # session restored from the persistence file
        msg = again.messages.get(timeout=TIMEOUT)
        assert (msg.topic, msg.payload, msg.qos) == ("grid/gw-01/cmd", b"WMaxLimPct=50", 1)
        again.close()
    assert not b.running
    b.stop()  # idempotent


@needs_mosquitto
def test_kill_then_start_again(tmp_path: Path, pki: Pki) -> None:
    b = Mosquitto(tmp_path / "k", pki)
    b.start()
    port = b.port
    b.kill()
    assert not b.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    b.restart()
    try:
        p = Probe("after-kill", pki=pki, cert=pki.client("gw-01"))
        assert p.connect(port)[0] == "connect"
        p.close()
    finally:
        b.stop()


@needs_mosquitto
def test_start_failure_reports_log_tail(tmp_path: Path, pki: Pki) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        b = Mosquitto(tmp_path / "f", pki, port=port)
        with pytest.raises(BrokerStartError, match="in use"):
            b.start(timeout=5)
        assert not b.running
    assert "Address already in use" in b.log_path.read_text()


@needs_mosquitto
def test_auto_port_retries_once_when_taken(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """port=0: if the released port is grabbed before mosquitto binds it, a new one is picked."""
    real_free_port = broker_mod.free_port
    with socket.create_server(("127.0.0.1", 0)) as taken:
        picks = iter([taken.getsockname()[1]])
        monkeypatch.setattr(broker_mod, "free_port", lambda host: next(picks, None) or real_free_port(host))
        with Mosquitto(tmp_path / "r", pki) as b:
            assert b.port != taken.getsockname()[1]
            p = Probe("retry", pki=pki, cert=pki.client("gw-01"))
            assert p.connect(b.port)[0] == "connect"
            p.close()
        assert "Address already in use" in b.log_path.read_text()


def test_find_mosquitto_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: Pki) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(broker_mod, "_SBIN", str(tmp_path / "no-such-dir" / "mosquitto"))
    with pytest.raises(BrokerNotFound) as err:
        find_mosquitto()
    assert "sudo apt-get install mosquitto" in str(err.value)
    assert str(err.value) == broker_mod.INSTALL_HINT
    with pytest.raises(BrokerNotFound):
        Mosquitto(tmp_path / "m", pki).start()


def test_bad_constructor_arguments(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="port"):
        Mosquitto(tmp_path, pki, port=70000)
    with pytest.raises(ValueError, match="ACL line"):
        Mosquitto(tmp_path, pki, acl={"gw": ["publish grid/#"]})
    with pytest.raises(ValueError, match="list of lines"):
        Mosquitto(tmp_path, pki, acl={"gw": "readwrite grid/#"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="single-line"):
        Mosquitto(tmp_path, pki, acl={"gw\ntopic readwrite #": ["read a"]})


ACL_LINE = st.tuples(st.sampled_from(["read", "write", "readwrite", "deny"]), st.sampled_from([" ", "   "]),
                     st.from_regex(r"[A-Za-z0-9/+#_.-]{1,20}", fullmatch=True)).map("".join)
GOOD_ACL = st.dictionaries(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True), st.lists(ACL_LINE, max_size=3),
                           max_size=3)
ANY_ACL = st.dictionaries(st.text(max_size=12), st.lists(ACL_LINE | st.text(max_size=20), max_size=3), max_size=3)


@settings(max_examples=100, deadline=None)
@given(case=st.tuples(st.just(True), GOOD_ACL) | st.tuples(st.just(False), ANY_ACL))
def test_acl_render_fuzz(case: tuple[bool, dict[str, list[str]]]) -> None:
    """ACL input: a file with exactly the user and topic lines asked for, in order; a ValueError only for input
    outside the grammar (well-formed input, the first kind drawn, is never refused)."""
    well_formed, acl = case
    try:
        text = broker_mod.render_acl(acl)
    except ValueError:
        assert not well_formed, acl
        return
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    expected = []
    for user, entries in acl.items():
        expected.append(f"user {user}")
        expected += ["topic " + " ".join(e.strip().split(None, 1)) for e in entries]
    assert lines == expected
