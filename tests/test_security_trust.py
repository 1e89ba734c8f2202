"""Trusted issuers: the key names the issuer, claims bind it to this gateway and to a time, roles bound its rights."""
from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from gridedge.core import schema as s
from gridedge.security import jws
from gridedge.security.replay import ReplayGuard
from gridedge.security.trust import SECURITY_SCHEMA, TrustStore, Unauthenticated, trust_issues

GW = "gw-1"
COMMANDS = ("limit_active_power", "set_active_power", "terminate", "cancel", "traffic_light")


def _pem_pub(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _cert(subject_key, cn, issuer_key=None, issuer_cn=None, ca=False, days=30, start=None):
    start = start or dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)]))
         .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    signer = issuer_key or subject_key
    return b.sign(signer, None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256())


@pytest.fixture
def pki(tmp_path):
    keys = {"dso": ed25519.Ed25519PrivateKey.generate(), "tso": ec.generate_private_key(ec.SECP256R1()),
            "agg": ed25519.Ed25519PrivateKey.generate()}
    for name, k in keys.items():
        (tmp_path / f"{name}.pub.pem").write_bytes(_pem_pub(k))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_key, "issuer-ca", ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cfg = {"issuers": [
        {"id": "dso", "actor": "dso", "roles": ["operator"], "public_keys": ["dso.pub.pem"]},
        {"id": "tso", "actor": "tso", "roles": ["operator"], "public_keys": ["tso.pub.pem"]},
        {"id": "agg-1", "actor": "aggregator", "roles": ["operator"], "devices": ["bat1"],
         "public_keys": ["agg.pub.pem"]},
        {"id": "agg-2", "actor": "aggregator", "roles": ["operator"], "ca_file": "ca.pem"},
        {"id": "viewer", "actor": "dso", "roles": ["viewer"], "public_keys": ["dso.pub.pem"]},
    ]}
    return {"dir": tmp_path, "keys": keys, "ca_key": ca_key, "ca": ca, "cfg": cfg}


def _store(pki, **over):
    cfg = dict(pki["cfg"], **over)
    cfg["issuers"] = [i for i in cfg["issuers"] if i["id"] != "viewer"]
    clean, issues = s.validate(SECURITY_SCHEMA, cfg)
    assert not issues, issues
    return TrustStore(clean, lambda p: pki["dir"] / p, GW)


def _cmd(iss="dso", **over):
    now = time.time()
    doc = {"schema": "gridedge.command/2", "iss": iss, "aud": GW, "iat": int(now), "exp": int(now) + 60,
           "cmd_id": "c-1", "type": "limit_active_power", "params": {"limit_pct": 40, "duration_s": 60}}
    doc.update(over)
    return json.dumps(doc).encode()


def _signed(key, payload, **kw):
    return jws.sign(payload, key, kid=jws.thumbprint(key.public_key()), typ="gridedge-command+jws", **kw)


def test_the_key_names_the_issuer(pki):
    store = _store(pki)
    who, claims = store.authenticate(_signed(pki["keys"]["tso"], _cmd("tso")), "tso", time.time())
    assert (who.id, who.actor, who.via) == ("tso", "tso", "key") and claims["cmd_id"] == "c-1"


@pytest.mark.parametrize("case, reason", [
    ("forged issuer", "iss 'tso' is not the signer 'dso'"),
    ("other topic", "signed by 'dso' but sent on the command topic of 'tso'"),
    ("other gateway", "aud does not name this gateway"),
    ("expired", "expired"),
    ("future", "issued in the future"),
    ("long lived", "lifetime"),
    ("unknown key", "unknown key id"),
    ("unsigned", "unsigned command refused"),
    ("wrong typ", "typ must be"),
])
def test_what_authentication_refuses(pki, case, reason):
    store, now, dso = _store(pki), time.time(), pki["keys"]["dso"]
    topic, payload = "dso", _signed(dso, _cmd())
    if case == "forged issuer":      # the DSO's key signing a command that says it comes from the TSO
        payload, topic = _signed(dso, _cmd("tso")), "tso"
    elif case == "other topic":
        topic = "tso"
    elif case == "other gateway":
        payload = _signed(dso, _cmd(aud="gw-2"))
    elif case == "expired":
        payload = _signed(dso, _cmd(iat=int(now) - 200, exp=int(now) - 100))
    elif case == "future":
        payload = _signed(dso, _cmd(iat=int(now) + 300, exp=int(now) + 400))
    elif case == "long lived":
        payload = _signed(dso, _cmd(exp=int(now) + 86400))
    elif case == "unknown key":
        payload = _signed(ed25519.Ed25519PrivateKey.generate(), _cmd())
    elif case == "unsigned":
        payload = _cmd()
    elif case == "wrong typ":
        payload = jws.sign(_cmd(), dso, kid=jws.thumbprint(dso.public_key()), typ="JWT")
    with pytest.raises(Unauthenticated, match=reason):
        store.authenticate(payload, topic, now)


def test_issuer_certificates_from_the_configured_ca(pki):
    store = _store(pki)
    leaf_key = ed25519.Ed25519PrivateKey.generate()
    leaf = _cert(leaf_key, "agg-2", pki["ca_key"], "issuer-ca")
    token = jws.sign(_cmd("agg-2"), leaf_key, typ="gridedge-command+jws",
                     x5c=[leaf.public_bytes(serialization.Encoding.DER)])
    who, _ = store.authenticate(token, "agg-2", time.time())
    assert (who.id, who.via) == ("agg-2", "certificate")
    rogue = _cert(leaf_key, "agg-2", ec.generate_private_key(ec.SECP256R1()), "issuer-ca")
    token = jws.sign(_cmd("agg-2"), leaf_key, typ="gridedge-command+jws",
                     x5c=[rogue.public_bytes(serialization.Encoding.DER)])
    with pytest.raises(Unauthenticated, match="not issued by"):
        store.authenticate(token, "agg-2", time.time())
    other_cn = _cert(leaf_key, "tso", pki["ca_key"], "issuer-ca")
    token = jws.sign(_cmd("agg-2"), leaf_key, typ="gridedge-command+jws",
                     x5c=[other_cn.public_bytes(serialization.Encoding.DER)])
    with pytest.raises(Unauthenticated, match="CN"):
        store.authenticate(token, "agg-2", time.time())


def test_unsigned_only_when_allowed_and_only_for_configured_issuers(pki):
    store = _store(pki, allow_unsigned=True)
    who, _ = store.authenticate(_cmd(), "dso", time.time())
    assert who.via == "unsigned"
    with pytest.raises(Unauthenticated, match="not in"):
        store.authenticate(_cmd(), "nobody", time.time())


def test_rights_come_from_roles_and_device_scopes(pki):
    store = _store(pki, roles={"operator": {"commands": ["limit_active_power", "cancel"]}})
    dso = store.principal(store.issuers["dso"], "k", "key")
    agg = store.principal(store.issuers["agg-1"], "k", "key")
    assert store.authorize(dso, "limit_active_power", None) is None
    assert "may not send traffic_light" in store.authorize(dso, "traffic_light", None)
    assert store.authorize(agg, "limit_active_power", ("bat1",)) is None
    assert "may not act on inv1" in store.authorize(agg, "limit_active_power", ("bat1", "inv1"))
    assert "name the device" in store.authorize(agg, "limit_active_power", None)


def test_check_finds_bad_trust_configuration(pki):
    cfg = {"roles": {"operator": {"commands": ["limit_active_powr"]}},
           "issuers": [{"id": "a", "actor": "dso", "roles": ["operater"], "devices": ["nope"]},
                       {"id": "b", "actor": "dso", "roles": ["operator"], "public_keys": ["missing.pem"]},
                       {"id": "c", "actor": "dso", "roles": ["operator"], "public_keys": ["ca.pem"],
                        "ca_file": "dso.pub.pem"}]}
    clean, issues = s.validate(SECURITY_SCHEMA, cfg)
    assert not issues
    found = [s.format_issue(i) for i in trust_issues(clean, {"inv1"}, COMMANDS, lambda p: pki["dir"] / p)]
    text = "\n".join(found)
    assert "security.roles.operator.commands[0]: unknown command type 'limit_active_powr' (did you mean " \
           "'limit_active_power'?)" in text
    assert "security.issuers[0].roles[0]: unknown role 'operater'" in text
    assert "security.issuers[0].devices[0]: no device 'nope'" in text
    assert "security.issuers[0]: needs public_keys, ca_file or both" in text
    assert "security.issuers[1].public_keys[0]: not a usable public key: No such file or directory" in text
    assert "security.issuers[2].ca_file: not a usable CA certificate" in text


def test_replay_guard_remembers_across_restarts_until_expiry(tmp_path):
    now = time.time_ns()
    g = ReplayGuard(tmp_path / "replay.sqlite", durable=False)
    assert g.admit("c-1", "dso", now + 60 * 10**9, now) is None
    assert "replay" in g.admit("c-1", "tso", now + 60 * 10**9, now + 1)
    g.close()
    g = ReplayGuard(tmp_path / "replay.sqlite", durable=False)
    assert "already received" in g.admit("c-1", "dso", now + 60 * 10**9, now + 2)
    later = now + 200 * 10**9  # past exp + skew: forgotten (authentication refuses it as expired anyway)
    assert g.admit("c-2", "dso", later + 60 * 10**9, later) is None and len(g) == 1


def test_check_survives_an_issuer_without_an_id_that_shares_a_key(pki):
    """Found by test_check_agent's mutations: the schema reports the missing id, and the cross-check must still run
    (it raised KeyError: 'id' when a second issuer's key was the first one's)."""
    cfg = {"issuers": [{"id": "a", "actor": "dso", "roles": ["operator"], "public_keys": ["dso.pub.pem"]},
                       {"actor": "dso", "roles": ["operator"], "public_keys": ["dso.pub.pem"]}]}
    # the configuration's cross-checks get what the schema let through, the issuer without its id included
    found = [s.format_issue(i) for i in trust_issues(cfg, {"inv1"}, COMMANDS, lambda p: pki["dir"] / p)]
    assert any("security.issuers[1].public_keys[0]: the same key is already issuer 'a'" in f for f in found), found
