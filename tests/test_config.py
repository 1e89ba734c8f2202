"""Config loader and the schema engine: exact messages, all errors at once, never a traceback."""
from __future__ import annotations

import copy
import json
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.core import schema as s
from gridedge.hil.pki import make_pki
from gridedge.config import (
    DRIVERS, SCHEMA, Config, ConfigError, check_main, load_config, parse_config, register_driver,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "gateway.toml"
DOCS = ROOT / "docs" / "configuration.md"


def example_dict() -> dict:
    with open(EXAMPLE, "rb") as f:
        return tomllib.load(f)


def errors_of(data, **kw) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "gateway.toml", check_files=False, **kw)
    return ei.value.errors


def minimal(**uplink) -> dict:
    up = {"broker": "mqtt://127.0.0.1", "allow_plaintext": True}
    up.update(uplink)
    return {"gateway": {"id": "gw1"}, "uplink": up}


@pytest.fixture()
def pki_dir(tmp_path: Path) -> Path:
    """A copy of the example next to a real PKI under the names it uses, and the issuer's public key it ships with,
    so check_files can pass."""
    pki = make_pki(tmp_path / "pki")
    cert, key = pki.client("gw-demo-001")
    cert.rename(tmp_path / "pki" / "gateway.crt")
    key.rename(tmp_path / "pki" / "gateway.key")
    shutil.copy(EXAMPLE, tmp_path / "gateway.toml")
    shutil.copytree(EXAMPLE.parent / "issuers", tmp_path / "issuers")
    return tmp_path


# ---------------------------------------------------------------- the example

def test_example_loads_without_file_checks(monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    cfg = load_config(EXAMPLE, check_files=False)
    assert isinstance(cfg, Config)
    assert cfg.gateway.id == "gw-demo-001"
    up = cfg.uplink
    assert (up.host, up.port, up.tls) == ("127.0.0.1", 8883, True)
    assert up.topic_prefix == "gridedge/v3/gw-demo-001/"
    assert up.client_id == "gw-demo-001"
    assert up.ca_file == EXAMPLE.parent / "pki" / "ca.crt"
    assert up.keepalive_s == 30 and up.telemetry_interval_ms == 1000 and up.allow_plaintext is False
    assert cfg.storage.dir == EXAMPLE.parent / "var"   # the default outside systemd: var/ beside the file
    (issuer,) = cfg.security.section["issuers"]
    assert (issuer["id"], issuer["actor"], issuer["roles"]) == ("dso", "dso", ["operator"])
    assert cfg.security.resolve(issuer["public_keys"][0]) == EXAMPLE.parent / "issuers" / "dso.pub.pem"
    assert cfg.security.allow_unsigned is False
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/gridedge:/var/lib/other")   # systemd's StateDirectory=
    assert load_config(EXAMPLE, check_files=False).storage.dir == Path("/var/lib/gridedge")
    assert cfg.control.priorities == ("tso", "dso", "aggregator")
    assert cfg.control.cycle_ms == 200 and cfg.control.revert_s == 60
    dev, meter = cfg.devices
    assert (meter.id, meter.role, meter.writable) == ("poc_meter", "meter", False)
    assert cfg.control.poc.meter == "poc_meter" and cfg.control.device("inv1").p_max_w == 10000.0
    assert dev.id == "inv1" and dev.driver == "sunspec_tcp" and dev.role == "inverter"
    assert (dev.host, dev.port, dev.unit_id) == ("127.0.0.1", 502, 1)
    assert dev.points == ("W", "VAr", "PF", "Hz", "PhVphA", "WMaxLimPct")
    assert dev.writable is False
    assert cfg.source == EXAMPLE
    import hashlib

    assert cfg.sha256 == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()


def test_example_loads_with_real_tls_files(pki_dir: Path):
    cfg = load_config(pki_dir / "gateway.toml")
    assert cfg.uplink.cert_file == pki_dir / "pki" / "gateway.crt"


def test_example_tls_files_missing_are_named_by_resolved_path(tmp_path: Path):
    shutil.copy(EXAMPLE, tmp_path / "gateway.toml")
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "gateway.toml")
    src = str(tmp_path / "gateway.toml")
    assert ei.value.errors == [
        f"{src}: uplink.ca_file: file not found: {tmp_path / 'pki' / 'ca.crt'}",
        f"{src}: uplink.cert_file: file not found: {tmp_path / 'pki' / 'gateway.crt'}",
        f"{src}: uplink.key_file: file not found: {tmp_path / 'pki' / 'gateway.key'}",
        f"{src}: security.issuers[0].public_keys[0]: not a usable public key: No such file or directory: "
        f"{tmp_path / 'issuers' / 'dso.pub.pem'}",
    ]


COMMENTED_OUT = {("storage", "dir"), ("security", "issuers", "[]", "devices"), ("security", "issuers", "[]", "ca_file"),
                 ("fleet", "ca_file"), ("fleet", "certificate", "est_url"), ("fleet", "certificate", "est_ca_file"),
                 ("fleet", "certificate", "ca_file"), ("fleet", "update"),
                 *(("fleet", "update", k) for k in ("repository", "root", "releases_dir", "download_timeout_s",
                                                     "max_release_mb"))}


def test_example_and_docs_cover_every_key():
    """The example shows every key and the reference table documents every key: no drift."""
    data = example_dict()
    docs = DOCS.read_text()
    for path, _key in s.walk(SCHEMA):
        dotted = ".".join(p for p in path if p != "[]")
        assert (f"`[{dotted}]`" if len(path) == 1 else f"`{dotted}`") in docs, f"{dotted} is not documented in docs/configuration.md"
        node = data
        try:
            for part in path:
                node = node[0] if part == "[]" else node[part]
        except KeyError:
            # Keys of other drivers (serial line, register maps) and other flex resource kinds are shown commented out,
            # and so are the keys whose default is best left alone (storage.dir: $STATE_DIRECTORY under systemd) or
            # that are the alternative (an issuer's CA, its device scope; the fleet's own CA for downloads, the
            # certificate's CAs and EST server), and
            # updates (the whole [fleet.update] table: it needs an A/B root and a TUF root).
            assert (path[0] in ("devices", "flex") or path in COMMENTED_OUT) and re.search(rf"^#\s*({re.escape(path[-1])}\s*=|\[\[?devices\.{re.escape(path[-1])}\]\]?|\[{re.escape(dotted)}\])",
                                                    EXAMPLE.read_text(), re.M), \
                f"{dotted} is not in examples/gateway.toml (not even commented out)"


@pytest.mark.parametrize("security, expected", [
    ({"roles": {"a": {}}}, "security.roles.a.commands: required key missing"),
    ({"roles": {"a": {"commands": [None]}}}, "security.roles.a.commands[0]: must be a string, got null"),
    ({"issuers": [None]}, "security.issuers[0]: must be a table, got null"),
])
def test_a_bad_security_section_is_named_not_a_crash(security, expected):
    """Found by test_fuzz_each_key_of_example: `check` (which opens files) names these as check_files=False does."""
    data = dict(minimal(), security=security)
    for check_files in (False, True):
        with pytest.raises(ConfigError) as ei:
            parse_config(data, "gateway.toml", check_files=check_files)
        assert ei.value.errors == [f"gateway.toml: {expected}"], check_files


def test_parse_config_defaults_and_sha():
    cfg = parse_config(minimal(), base_dir=Path("/etc/gridedge"))
    assert cfg.sha256 == "" and cfg.source is None
    assert cfg.devices == ()
    assert cfg.uplink.port == 1883 and cfg.uplink.tls is False and cfg.uplink.ca_file is None
    assert cfg.storage.dir == Path("/etc/gridedge/var")
    assert cfg.control.max_activation_s == 86400
    assert cfg.gateway.description == ""


def test_device_defaults():
    data = minimal()
    data["devices"] = [{"id": "m1", "driver": "sunspec_tcp", "host": "10.0.0.5"}]
    (dev,) = parse_config(data).devices
    assert (dev.role, dev.port, dev.unit_id, dev.poll_ms, dev.timeout_ms, dev.points, dev.writable) == (
        "inverter", 502, 1, 1000, 1000, None, False)


def test_topic_prefix_and_client_id():
    cfg = parse_config(minimal(topic_prefix="site/{gateway_id}/x/", client_id="c-1"))
    assert cfg.uplink.topic_prefix == "site/gw1/x/"
    assert cfg.uplink.client_id == "c-1"


def test_registered_driver_is_accepted_later():
    data = minimal()
    data["devices"] = [{"id": "d1", "driver": "fake_serial"}]
    assert errors_of(data)[0].startswith("gateway.toml: devices[0].driver: unknown driver")
    register_driver("fake_serial", transport="serial", factory=lambda cfg: cfg)
    try:
        assert errors_of(data) == [
            "gateway.toml: devices[0].serial_port: required key missing (driver 'fake_serial' uses a serial line)"]
        data["devices"][0]["serial_port"] = "/dev/ttyUSB0"
        (dev,) = parse_config(data).devices
        assert dev.host == ""  # not a TCP driver: no host needed
    finally:
        del DRIVERS["fake_serial"]


# ---------------------------------------------------------------- exact messages

def test_poll_ms_must_be_positive():
    data = example_dict()
    data["devices"] += [dict(data["devices"][0], id="inv2", unit_id=3),
                        dict(data["devices"][0], id="inv3", unit_id=4, poll_ms=-5)]
    assert errors_of(data) == ["gateway.toml: devices[3].poll_ms: must be > 0, got -5"]   # [1] is the site meter


def test_unknown_key_with_hint():
    data = example_dict()
    data["uplink"]["brokr"] = "x"
    assert errors_of(data) == ["gateway.toml: uplink.brokr: unknown key (did you mean 'broker'?)"]


def test_unknown_key_without_hint_lists_allowed():
    data = minimal()
    data["storage"] = {"zzz": 1}
    assert errors_of(data) == ["gateway.toml: storage.zzz: unknown key (expected one of: dir, quota_mb, max_age_h, durability)"]


def test_unknown_section_and_device_key():
    data = example_dict()
    data["uplnk"] = {}
    data["devices"][0]["pol_ms"] = 5
    assert errors_of(data) == [  # in the order of the data
        "gateway.toml: devices[0].pol_ms: unknown key (did you mean 'poll_ms'?)",
        "gateway.toml: uplnk: unknown key (did you mean 'uplink'?)",
    ]


def test_required_key_missing():
    data = example_dict()
    del data["gateway"]["id"]
    assert errors_of(data) == ["gateway.toml: gateway.id: required key missing"]


def test_type_errors():
    data = example_dict()
    data["devices"][0]["port"] = "abc"
    data["devices"][0]["unit_id"] = True  # a bool is not an int
    data["devices"][0]["poll_ms"] = 5.0  # nor is a float
    data["uplink"]["allow_plaintext"] = 1
    data["control"] = []
    assert sorted(errors_of(data)) == sorted([
        "gateway.toml: devices[0].port: must be an integer, got string 'abc'",
        "gateway.toml: devices[0].unit_id: must be an integer, got boolean true",
        "gateway.toml: devices[0].poll_ms: must be an integer, got float 5.0",
        "gateway.toml: uplink.allow_plaintext: must be true or false, got integer 1",
        "gateway.toml: control: must be a table, got array",
    ])


def test_ranges():
    data = example_dict()
    data["uplink"]["keepalive_s"] = 4
    data["control"]["cycle_ms"] = 60001
    data["devices"][0]["port"] = 0
    data["devices"][0]["unit_id"] = 256
    assert sorted(errors_of(data)) == sorted([
        "gateway.toml: uplink.keepalive_s: must be >= 5, got 4",
        "gateway.toml: control.cycle_ms: must be <= 60000, got 60001",
        "gateway.toml: devices[0].port: must be >= 1, got 0",
        "gateway.toml: devices[0].unit_id: must be <= 255, got 256",
    ])


def test_duplicate_device_id_names_both_indexes():
    data = example_dict()
    data["devices"] += [dict(data["devices"][0], id="inv2", unit_id=3), dict(data["devices"][0], unit_id=4)]
    assert errors_of(data) == ["gateway.toml: devices[3].id: duplicate 'inv1', already used by devices[0].id"]


def test_plaintext_needs_allow_plaintext():
    data = minimal()
    del data["uplink"]["allow_plaintext"]
    assert errors_of(data) == [
        "gateway.toml: uplink.broker: plaintext mqtt:// needs allow_plaintext = true (or use mqtts://)"]
    data["uplink"]["allow_plaintext"] = False
    assert len(errors_of(data)) == 1
    data["uplink"]["allow_plaintext"] = True
    assert parse_config(data).uplink.allow_plaintext is True


def test_mqtts_needs_tls_files():
    data = minimal(broker="mqtts://broker.example:9999")
    del data["uplink"]["allow_plaintext"]
    assert errors_of(data) == [
        "gateway.toml: uplink.ca_file: required key missing (needed for mqtts://)",
        "gateway.toml: uplink.cert_file: required key missing (needed for mqtts://)",
        "gateway.toml: uplink.key_file: required key missing (needed for mqtts://)",
    ]


def test_tls_file_relative_to_base_dir(tmp_path: Path):
    shutil.copy(make_pki(tmp_path / "pki").ca_cert, tmp_path / "ca.pem")
    (tmp_path / "k").mkdir()
    data = minimal(broker="mqtts://b", ca_file="ca.pem", cert_file=str(tmp_path / "nope.crt"), key_file="k")
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "g.toml", base_dir=tmp_path)
    assert ei.value.errors == [
        f"g.toml: uplink.cert_file: file not found: {tmp_path / 'nope.crt'}",
        f"g.toml: uplink.key_file: cannot read {tmp_path / 'k'}: Is a directory",
    ]


def test_tls_file_unreadable(pki_dir: Path):
    """As root the check runs in a child without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so mode 0 really denies."""
    key = pki_dir / "pki" / "gateway.key"
    key.chmod(0)
    code = ("import json, sys\nfrom gridedge.config import ConfigError, load_config\n"
            "try:\n    load_config(sys.argv[1])\nexcept ConfigError as e:\n    print(json.dumps(e.errors))\n")
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    out = subprocess.run(drop + [sys.executable, "-c", code, str(pki_dir / "gateway.toml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [f"{pki_dir / 'gateway.toml'}: uplink.key_file: cannot read {key}: "
                                      "Permission denied"]


def test_overlong_paths_are_errors_not_crashes(tmp_path: Path):
    long = "x" * 300  # longer than NAME_MAX: the OS refuses it with ENAMETOOLONG
    data = minimal(broker="mqtts://b", ca_file=long, cert_file=long, key_file=long)
    data["storage"] = {"dir": long}
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "g.toml", base_dir=tmp_path)
    assert ei.value.errors == [
        f"g.toml: uplink.{k}: cannot read {tmp_path / long}: File name too long"
        for k in ("ca_file", "cert_file", "key_file")] + [f"g.toml: storage.dir: cannot create {tmp_path / long}: "
                                                          "File name too long"]


def test_storage_dir_must_not_be_a_file(tmp_path: Path):
    (tmp_path / "var").write_text("")
    with pytest.raises(ConfigError) as ei:
        parse_config(minimal(), "g.toml", base_dir=tmp_path)
    assert ei.value.errors == [f"g.toml: storage.dir: not a directory: {tmp_path / 'var'}"]


@pytest.mark.parametrize(("broker", "message"), [
    ("http://h", "scheme must be mqtts (TLS) or mqtt (plaintext), got 'http'"),
    ("127.0.0.1:8883", "must be a URL like mqtts://host:8883, got string '127.0.0.1:8883'"),
    ("mqtts://", "has no host, got string 'mqtts://'"),
    ("mqtts://h:99999", "is not a valid URL (Port out of range 0-65535), got string 'mqtts://h:99999'"),
    ("mqtts://h:0", "port must be 1..65535, got 0"),
    ("mqtts://u:p@h", "must not contain credentials (the gateway authenticates with its client certificate)"),
    ("mqtts://h/x", "must be scheme://host[:port] with nothing after, got string 'mqtts://h/x'"),
    ("mqtts://h 1", "must not contain spaces or control characters, got string 'mqtts://h 1'"),
    ("", "must not be empty, got ''"),
    (8883, "must be a string, got integer 8883"),
])
def test_broker_errors(broker, message):
    assert errors_of(minimal(broker=broker)) == [f"gateway.toml: uplink.broker: {message}"]


def test_broker_ipv6_and_default_ports():
    cfg = parse_config(minimal(broker="mqtt://[::1]:1884"))
    assert (cfg.uplink.host, cfg.uplink.port) == ("::1", 1884)
    cfg = parse_config(minimal(broker="mqtts://b.example", ca_file="a", cert_file="b", key_file="c"),
                       check_files=False)
    assert (cfg.uplink.host, cfg.uplink.port, cfg.uplink.tls) == ("b.example", 8883, True)


@pytest.mark.parametrize(("prefix", "message"), [
    ("gridedge/+/x/", "must not contain MQTT wildcards + or #, got string 'gridedge/+/x/'"),
    ("gridedge/#", "must not contain MQTT wildcards + or #, got string 'gridedge/#'"),
    ("gridedge/{gateway_id}", "must end with '/', got string 'gridedge/{gateway_id}'"),
    ("a/{site}/", "only the placeholder {gateway_id} is supported, got string 'a/{site}/'"),
    ("$SYS/", "must not start with '$' (reserved for broker topics), got string '$SYS/'"),
])
def test_topic_prefix_errors(prefix, message):
    assert errors_of(minimal(topic_prefix=prefix)) == [f"gateway.toml: uplink.topic_prefix: {message}"]


def test_string_rules():
    data = example_dict()
    data["gateway"]["id"] = "gw 1"
    data["devices"][0]["role"] = "invertr"
    data["control"]["priorities"] = ["tso", "tso", "dso"]
    data["devices"][0]["points"] = []
    assert sorted(errors_of(data)) == sorted([
        "gateway.toml: gateway.id: must be 1-64 characters of A-Z a-z 0-9 _ -, got 'gw 1'",
        "gateway.toml: devices[0].role: must be one of: inverter, battery, meter, load; got 'invertr' "
        "(did you mean 'inverter'?)",
        "gateway.toml: control.priorities[1]: duplicate 'tso', already used by control.priorities[0]",
        "gateway.toml: devices[0].points: must have at least 1 item, got 0",
    ])


def test_tcp_driver_needs_host():
    data = minimal()
    data["devices"] = [{"id": "inv1", "driver": "sunspec_tcp"}]
    assert errors_of(data) == [
        "gateway.toml: devices[0].host: required key missing (driver 'sunspec_tcp' connects over TCP)"]


def test_not_a_table_at_top():
    assert errors_of([1, 2]) == ["gateway.toml: must be a table, got array"]


def test_many_errors_reported_at_once():
    data = example_dict()
    del data["gateway"]["id"]
    data["uplink"]["brokr"] = 1
    data["uplink"]["broker"] = "mqtt://h"
    data["control"]["revert_s"] = 0
    data["devices"].append({"id": "inv1", "driver": "sunspec_tcp", "host": "h", "poll_ms": -5, "writable": "yes"})
    assert sorted(errors_of(data)) == sorted([
        "gateway.toml: gateway.id: required key missing",
        "gateway.toml: uplink.brokr: unknown key (did you mean 'broker'?)",
        "gateway.toml: uplink.broker: plaintext mqtt:// needs allow_plaintext = true (or use mqtts://)",
        "gateway.toml: control.revert_s: must be >= 1, got 0",
        "gateway.toml: devices[2].poll_ms: must be > 0, got -5",     # [1] is the example's site meter
        "gateway.toml: devices[2].writable: must be true or false, got string 'yes'",
        "gateway.toml: devices[2].id: duplicate 'inv1', already used by devices[0].id",
    ])


# ---------------------------------------------------------------- files

def test_toml_syntax_error(tmp_path: Path):
    p = tmp_path / "gateway.toml"
    p.write_text('[gateway]\nid = "gw1"\nbad line\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    (msg,) = ei.value.errors
    assert msg.startswith(f"{p}: invalid TOML: ")
    assert "(at line 3, column 5)" in msg


def test_not_utf8(tmp_path: Path):
    p = tmp_path / "gateway.toml"
    p.write_bytes(b'[gateway]\nid = "\xff"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.errors == [f"{p}: invalid TOML: not UTF-8 (byte 0xff at offset 16)"]


def test_cannot_read(tmp_path: Path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "missing.toml")
    assert ei.value.errors == [f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"]
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path)
    assert ei.value.errors == [f"{tmp_path}: cannot read: Is a directory"]


def test_config_error_str_is_one_message_per_line():
    e = ConfigError(["a: x", "a: y"])
    assert str(e) == "a: x\na: y" and e.errors == ["a: x", "a: y"]


def test_check_main(pki_dir: Path, tmp_path: Path, capsys):
    good = pki_dir / "gateway.toml"
    assert check_main(good) == 0
    out, err = capsys.readouterr()
    assert out == f"OK {good}: 2 devices, gateway gw-demo-001\n" and err == ""
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "x y"\n')
    assert check_main(bad) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad}: gateway.id: must be 1-64 characters of A-Z a-z 0-9 _ -, got 'x y'",
        f"{bad}: uplink: required key missing",
    ]


# ---------------------------------------------------------------- schema engine

def test_schema_validate_fills_defaults_and_collects_all():
    sch = s.Dict({
        "a": s.Required(s.Int(gt=0, lt=10)),
        "b": s.Optional(s.Float(ge=0.0), default=1),
        "c": s.Optional(s.List(s.Str(max_len=2), max_len=2)),
    })
    assert s.validate(sch, {"a": 3}) == ({"a": 3, "b": 1.0}, [])
    clean, issues = s.validate(sch, {"a": 10, "b": float("nan"), "c": ["abc", "x", "y"]})
    assert clean is None
    assert [str(i) for i in issues] == [
        "a: must be < 10, got 10",
        "b: must be a finite number, got nan",
        "c: must have at most 2 items, got 3",
        "c[0]: must be at most 2 characters long, got 3",
    ]
    clean, _ = s.validate(sch, {"a": 10, "b": 2}, partial=True)
    assert clean == {"b": 2.0}


def test_schema_custom_and_all():
    def even(v):
        if v % 2:
            raise s.Invalid(f"must be even, got {v}")
        return v // 2

    sch = s.List(s.All(s.Int(), s.Custom(even)), unique=True)
    assert s.validate(sch, [2, 4]) == ([1, 2], [])
    _, issues = s.validate(sch, [3, "x", 2, 2])
    assert s.format_issues(issues, "msg") == [
        "msg: [0]: must be even, got 3",
        "msg: [1]: must be an integer, got string 'x'",
        "msg: [3]: duplicate integer 1, already used by [2]",
    ]


def test_schema_unique_does_not_confuse_types_and_handles_unhashable():
    sch = s.List(s.Custom(lambda v: v), unique=True)
    assert s.validate(sch, [1, True, 1.0, [1], {"a": 1}]) == ([1, True, 1.0, [1], {"a": 1}], [])
    _, issues = s.validate(sch, [[1], [1]])
    assert [str(i) for i in issues] == ["[1]: duplicate array, already used by [0]"]


def test_huge_numbers_and_odd_keys_do_not_break_messages():
    errs = errors_of({"gateway": {"id": "g", 10**5000: 1}, "uplink": {"broker": "mqtt://h", "allow_plaintext": True,
                                                                     "keepalive_s": -(10**6000)}})
    assert errs == [
        'gateway.toml: gateway."<16610-bit number>": unknown key (expected one of: id, description)',
        "gateway.toml: uplink.keepalive_s: must be >= 5, got -<19932-bit number>",
    ]


def test_format_path_quotes_odd_keys():
    assert s.format_path(("devices", 2, "poll_ms")) == "devices[2].poll_ms"
    assert s.format_path(("a", "b.c", "d e")) == 'a."b.c"."d e"'
    assert s.format_path((0, "x")) == "[0].x"


def test_describe():
    assert s.describe("abc") == "string 'abc'"
    assert s.describe(None) == "null"
    assert s.describe(dt.date(2024, 1, 2)) == "date 2024-01-02"
    assert s.describe("x" * 200).endswith("...'")


# ---------------------------------------------------------------- fuzz

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats() | st.text(max_size=20) | st.sampled_from(["", "mqtt://h", "mqtts://h", "sunspec_tcp", "inv1"])
           | st.datetimes() | st.dates() | st.times())
keys = st.text(max_size=12) | st.sampled_from(
    ["gateway", "uplink", "devices", "control", "storage", "id", "broker", "driver", "host", "points", "dir"])
values = st.recursive(scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(keys, ch, max_size=5),
                      max_leaves=25)


def _outcome(fn, *a, **kw) -> None:
    try:
        assert isinstance(fn(*a, **kw), Config)
    except ConfigError as e:
        assert e.errors and all(isinstance(m, str) and m for m in e.errors)


@settings(max_examples=300, deadline=None)
@given(values)
def test_fuzz_arbitrary_structures(data):
    _outcome(parse_config, data, "f.toml")
    _outcome(parse_config, data, "f.toml", check_files=False)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


EXAMPLE_PATHS = [p for p in _paths(example_dict()) if p]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(EXAMPLE_PATHS), st.sampled_from(["set", "del", "add"]), keys,
                          scalars | values),  # half scalars: containers alone rarely pass a type check
                min_size=1, max_size=4))
def test_fuzz_mutated_example(mutations):
    """Near-valid configs reach the deeper checks; they still give Config or ConfigError."""
    data = copy.deepcopy(example_dict())
    for path, op, key, value in mutations:
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            last = path[-1]
            if op == "set":
                parent[last] = value
            elif op == "del":
                del parent[last]
            elif isinstance(parent[last], dict):
                parent[last][key] = value
            elif isinstance(parent[last], list):
                parent[last].append(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    _outcome(parse_config, data, "f.toml", check_files=False)


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: s.format_path(p))
@settings(max_examples=40, deadline=None)
@given(value=scalars | values)
def test_fuzz_each_key_of_example(path, value):
    """Every key of the example, set to anything: each check's unhappy paths are reached."""
    data = copy.deepcopy(example_dict())
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    _outcome(parse_config, data, "f.toml", check_files=False)
    _outcome(parse_config, data, "f.toml")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzz_bytes_as_toml_file(tmp_path, blob):
    p = tmp_path / "fuzz.toml"
    p.write_bytes(blob)
    _outcome(load_config, p)


EXAMPLE_LINES = EXAMPLE.read_text().splitlines()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(EXAMPLE_LINES) | st.text(max_size=30), max_size=40))
def test_fuzz_toml_lines(tmp_path, lines):
    """Shuffled, dropped and repeated lines of the example: mostly valid TOML, often a bad config."""
    p = tmp_path / "fuzz.toml"
    p.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    _outcome(load_config, p, check_files=False)


# ---------------------------------------------------------------- register-map drivers and serial lines

def _rtu(**kw) -> dict:
    d = {"id": "m1", "driver": "modbus_rtu", "map": "eastron_sdm630", "serial_port": "/dev/ttyUSB0"}
    d.update(kw)
    return d


def errors_checked(data) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "gateway.toml", check_files=True)
    return ei.value.errors


def test_commented_rtu_meter_in_the_example_is_valid():
    text = EXAMPLE.read_text()
    block = text[text.index("# [[devices]]\n# id = \"meter1\""):]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.splitlines())
    data = minimal()
    data.update(tomllib.loads(uncommented))
    cfg = parse_config(data, "gateway.toml", base_dir=EXAMPLE.parent, check_files=True)
    (dev,) = cfg.devices
    assert (dev.driver, dev.serial_port, dev.baudrate, dev.parity, dev.inter_frame_ms) == (
        "modbus_rtu", "/dev/ttyUSB0", 9600, "N", 4.0)
    assert dev.map.name == "eastron_sdm630.toml" and dev.map.exists()
    assert dev.poll_groups[0].name == "fast" and dev.poll_groups[0].points == ("W", "Hz")


def test_register_map_device_defaults_and_relative_map(tmp_path: Path):
    shutil.copy(ROOT / "drivers" / "maps" / "eastron_sdm630.toml", tmp_path / "m.toml")
    data = minimal()
    data["devices"] = [_rtu(map="m.toml"), {"id": "t1", "driver": "modbus_tcp", "host": "10.0.0.9",
                                             "map": "m.toml", "max_outstanding": 2}]
    rtu, tcp = parse_config(data, base_dir=tmp_path).devices
    assert rtu.map == tmp_path / "m.toml" and tcp.map == tmp_path / "m.toml"
    assert (rtu.baudrate, rtu.parity, rtu.stopbits, rtu.bytesize, rtu.inter_frame_ms, rtu.poll_groups) == (
        19200, "E", 1, 8, None, ())
    assert tcp.max_outstanding == 2 and tcp.serial_port == ""


def test_register_map_driver_key_errors():
    data = minimal()
    data["devices"] = [
        {"id": "a", "driver": "modbus_rtu"},
        {"id": "b", "driver": "modbus_tcp", "host": "h", "map": "x", "baudrate": 9600},
        {"id": "c", "driver": "sunspec_tcp", "host": "h", "unit_id": 2, "map": "x"},
        {"id": "d", "driver": "modbus_rtu_tcp", "host": "h", "map": "x", "max_outstanding": 2},
        _rtu(id="e", parity="X"),
    ]
    assert errors_of(data) == [
        "gateway.toml: devices[4].parity: must be one of: N, E, O; got 'X'",   # type errors first, then the rest
        "gateway.toml: devices[0].serial_port: required key missing (driver 'modbus_rtu' uses a serial line)",
        "gateway.toml: devices[0].map: required key missing (driver 'modbus_rtu' reads a register map)",
        "gateway.toml: devices[1].baudrate: only for serial drivers, not 'modbus_tcp'",
        "gateway.toml: devices[2].map: only for register-map drivers, not 'sunspec_tcp'",
        "gateway.toml: devices[3].max_outstanding: only modbus_tcp may have more than 1 request in flight, "
        "not 'modbus_rtu_tcp'",
    ]


def test_map_and_points_are_checked_against_the_map(tmp_path: Path):
    (tmp_path / "bad.toml").write_text('manufacturer = "x"\n')
    data = minimal()
    data["devices"] = [_rtu(points=["PhVphA", "PhVpA"]),
                       _rtu(id="m2", unit_id=2, poll_groups=[{"name": "f", "period_ms": 100, "points": ["Hzz"]}]),
                       _rtu(id="m3", unit_id=3, map="missing.toml"),
                       _rtu(id="m4", unit_id=4, map="bad.toml")]
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "gateway.toml", base_dir=tmp_path, check_files=True)
    errs = ei.value.errors
    assert errs[0] == ("gateway.toml: devices[0].points[1]: no point 'PhVpA' in map "
                       f"{ROOT / 'drivers' / 'maps' / 'eastron_sdm630.toml'} (did you mean 'PhVphA'?)")
    assert errs[1].startswith("gateway.toml: devices[1].poll_groups[0].points[0]: no point 'Hzz' in map")
    assert errs[2] == f"gateway.toml: devices[2].map: bad register map: {tmp_path / 'missing.toml'}: cannot read: " \
                      "No such file or directory"
    assert errs[3].startswith(f"gateway.toml: devices[3].map: bad register map: {tmp_path / 'bad.toml'}: ")
    assert len(errs) == 4


def test_devices_on_one_serial_port_must_agree():
    data = minimal()
    data["devices"] = [_rtu(), _rtu(id="m2", baudrate=9600), _rtu(id="m3", unit_id=1),
                       _rtu(id="m4", unit_id=4, serial_port="/dev/ttyUSB1", baudrate=9600)]
    assert errors_of(data) == [
        "gateway.toml: devices[1].baudrate: differs from devices[0] on the same serial port '/dev/ttyUSB0' "
        "(9600 vs 19200)",
        "gateway.toml: devices[1].unit_id: unit 1 is already used by devices[0] on serial port '/dev/ttyUSB0'",
        "gateway.toml: devices[2].unit_id: unit 1 is already used by devices[0] on serial port '/dev/ttyUSB0'",
    ]
