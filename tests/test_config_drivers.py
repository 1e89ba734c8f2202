"""Config of the SunSpec RTU drivers and the OPC UA driver: keys, key-path messages, shared links, the example."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.config import ConfigError, parse_config
from gridedge.devices import make_device
from gridedge.drivers.opcua import OpcUaDevice
from gridedge.drivers.sunspec_device import SunSpecDevice
from gridedge.hil.opcua_certs import make_opcua_pki

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gateway.toml"
NODES = {"F1.W": "ns=2;s=F1.MMXU1.TotW", "Hz": "ns=2;s=Bus.MMXU1.Hz"}


def minimal(*devices) -> dict:
    return {"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
            "devices": list(devices)}


def errors_of(data, check_files=False, base=None) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "gateway.toml", base, check_files=check_files)
    return ei.value.errors


def opcua(**kw) -> dict:
    d = {"id": "rtu1", "driver": "opcua", "role": "meter", "endpoint": "opc.tcp://10.0.0.20:4840/rtu",
         "nodes": dict(NODES)}
    d.update(kw)
    return d


INSECURE = {"security_policy": "None", "allow_insecure": True}   # a lab: no certificates


def test_opcua_device_config_and_factory():
    cfg = parse_config(minimal(opcua(poll_ms=250, timeout_ms=3000, **INSECURE)))
    (dev,) = cfg.devices
    assert dev.endpoint == "opc.tcp://10.0.0.20:4840/rtu" and dict(dev.nodes) == NODES
    assert (dev.security_policy, dev.client_cert, dev.writable) == ("None", None, False)
    obj = make_device(dev)
    assert isinstance(obj, OpcUaDevice) and obj.capability == "meter"
    assert obj.nodes == NODES and obj.publishing_ms == 250 and obj.timeout_s == 3.0 and obj.security is None


def test_opcua_security_files_resolve_and_are_checked(tmp_path: Path):
    ua = make_opcua_pki(tmp_path / "ua")
    for src, name in ((ua.client_cert, "gw.der"), (ua.client_key, "gw.key"), (ua.server_cert, "srv.der")):
        src.rename(tmp_path / name)
    d = opcua(security_policy="Basic256Sha256", security_mode="Sign", client_cert="gw.der", client_key="gw.key",
              server_cert="srv.der")
    (dev,) = parse_config(minimal(d), base_dir=tmp_path, check_files=True).devices
    assert (dev.client_cert, dev.client_key, dev.server_cert) == (tmp_path / "gw.der", tmp_path / "gw.key",
                                                                  tmp_path / "srv.der")
    assert dev.security_mode == "Sign"
    d = opcua(client_cert="missing.der", client_key="gw.key", server_cert="srv.der")   # Basic256Sha256: the default
    assert errors_of(minimal(d), check_files=True, base=tmp_path) == [
        f"gateway.toml: devices[0].client_cert: file not found: {tmp_path / 'missing.der'}"]


def test_opcua_faults_are_named_with_their_key_path():
    bad = [
        {"id": "a", "driver": "opcua", **INSECURE},
        opcua(id="b", endpoint="http://x:4840", **INSECURE),
        opcua(id="c", nodes={"F1.W": "ns=2;x=1", "1bad": "i=2258", "ok": 5}, **INSECURE),
        opcua(id="d", nodes={}, **INSECURE),
        opcua(id="e", host="10.0.0.1", port=4840, writable=True, points=["W"], **INSECURE),
        opcua(id="f", security_mode="Sign", client_cert="c.der", **INSECURE),
        opcua(id="g", security_policy="Basic256Sha256"),
        opcua(id="h"),                                      # secure by default: the same three files needed
        {"id": "i", "driver": "sunspec_tcp", "host": "h", "endpoint": "opc.tcp://x", "nodes": dict(NODES)},
        opcua(id="j", security_policy="None"),              # in the clear only when the config says so
        opcua(id="k", client_cert="c.der", client_key="c.key", server_cert="s.der", allow_insecure=True),
    ]
    needs = "required key missing (needed with security_policy 'Basic256Sha256'"
    assert errors_of(minimal(*bad)) == [
        "gateway.toml: devices[1].endpoint: must be an OPC UA endpoint like opc.tcp://host:4840/path, "
        "got string 'http://x:4840'",
        "gateway.toml: devices[2].nodes.\"F1.W\": must be an OPC UA node id like 'ns=2;s=F1.MMXU1.TotW' or "
        "'i=2258', got string 'ns=2;x=1'",
        "gateway.toml: devices[2].nodes.1bad: key must be a point name like F1.W (letters, digits, _ . : -), "
        "got '1bad'",
        "gateway.toml: devices[2].nodes.ok: must be a string, got integer 5",
        "gateway.toml: devices[3].nodes: must have at least 1 entry, got 0",
        "gateway.toml: devices[0].endpoint: required key missing (driver 'opcua')",
        "gateway.toml: devices[0].nodes: required key missing (driver 'opcua')",
        "gateway.toml: devices[4].host: not for the opcua driver (the endpoint URL holds host and port)",
        "gateway.toml: devices[4].port: not for the opcua driver (the endpoint URL holds host and port)",
        "gateway.toml: devices[4].points: not for the opcua driver (the point names are the keys of nodes)",
        "gateway.toml: devices[4].writable: the opcua driver is read-only (monitoring); set writable = false",
        'gateway.toml: devices[5].security_mode: only with security_policy = "Basic256Sha256"',
        'gateway.toml: devices[5].client_cert: only with security_policy = "Basic256Sha256"',
        *(f"gateway.toml: devices[{i}].{k}: {needs}" + (")" if k != "server_cert" else
                                                        ": the server's certificate, pinned, or any server would be "
                                                        "trusted)")
          for i in (6, 7) for k in ("client_cert", "client_key", "server_cert")),
        "gateway.toml: devices[8].endpoint: only for the opcua driver, not 'sunspec_tcp'",
        "gateway.toml: devices[8].nodes: only for the opcua driver, not 'sunspec_tcp'",
        'gateway.toml: devices[9].security_policy: "None" sends everything in the clear and trusts any server: set '
        'allow_insecure = true to accept that (a lab), or use Basic256Sha256 with a pinned server_cert',
        'gateway.toml: devices[10].allow_insecure: only with security_policy = "None"',
    ]


def test_an_unknown_opcua_security_policy_is_named_not_a_crash():
    errors = errors_of(minimal(opcua(security_policy="Basic128Rsa15")))
    assert "gateway.toml: devices[0].security_policy: must be one of: None, Basic256Sha256; got 'Basic128Rsa15'" \
        in errors, errors


def test_sunspec_rtu_drivers_keys_and_factory():
    rtu = {"id": "bat1", "driver": "sunspec_rtu", "role": "battery", "serial_port": "/dev/ttyUSB0", "unit_id": 2,
           "baudrate": 9600, "parity": "N", "writable": True, "points": ["SoC", "W"]}
    gw = {"id": "inv1", "driver": "sunspec_rtu_tcp", "host": "10.0.0.7", "port": 4001}
    a, b = parse_config(minimal(rtu, gw)).devices
    bat, inv = make_device(a), make_device(b)
    assert isinstance(bat, SunSpecDevice) and bat.capability == "battery" and bat.writable
    assert bat.link.kind == "rtu" and bat.link.serial.baudrate == 9600 and bat.link.serial.parity == "N"
    assert bat.points == ["SoC", "W"] and bat.unit_id == 2
    assert inv.link.kind == "rtu_tcp" and inv.link.key == ("rtu_tcp", "10.0.0.7", 4001) and not inv.writable
    assert errors_of(minimal({"id": "x", "driver": "sunspec_rtu"}, {"id": "y", "driver": "sunspec_rtu_tcp"},
                             {"id": "z", "driver": "sunspec_tcp", "host": "h", "baudrate": 9600,
                              "map": "eastron_sdm630"})) == [
        "gateway.toml: devices[0].serial_port: required key missing (driver 'sunspec_rtu' uses a serial line)",
        "gateway.toml: devices[1].host: required key missing (driver 'sunspec_rtu_tcp' connects over TCP)",
        "gateway.toml: devices[2].baudrate: only for serial drivers, not 'sunspec_tcp'",
        "gateway.toml: devices[2].map: only for register-map drivers, not 'sunspec_tcp'",
    ]


def test_devices_sharing_a_link_must_agree():
    meter = {"id": "m1", "driver": "modbus_rtu", "map": "eastron_sdm630", "serial_port": "/dev/ttyUSB0"}
    inv = {"id": "inv1", "driver": "sunspec_rtu", "serial_port": "/dev/ttyUSB0", "baudrate": 9600, "unit_id": 2}
    same = {"id": "inv2", "driver": "sunspec_rtu", "serial_port": "/dev/ttyUSB0"}
    t1 = {"id": "t1", "driver": "sunspec_tcp", "host": "10.0.0.5", "unit_id": 1}
    t2 = {"id": "t2", "driver": "modbus_tcp", "host": "10.0.0.5", "unit_id": 2, "map": "eastron_sdm630",
          "timeout_ms": 300}
    t3 = {"id": "t3", "driver": "sunspec_rtu_tcp", "host": "10.0.0.5", "unit_id": 3, "timeout_ms": 300}
    assert errors_of(minimal(meter, inv, same, t1, t2, t3)) == [
        "gateway.toml: devices[1].baudrate: differs from devices[0] on the same serial port '/dev/ttyUSB0' "
        "(9600 vs 19200)",
        "gateway.toml: devices[2].unit_id: unit 1 is already used by devices[0] on serial port '/dev/ttyUSB0'",
        "gateway.toml: devices[4].timeout_ms: differs from devices[3] on the same endpoint 10.0.0.5:502 "
        "(300 vs 1000)",
    ]   # t3 uses RTU framing: another connection, not compared with t1


def _uncommented(block_start: str) -> dict:
    text = EXAMPLE.read_text()
    start = text.index(block_start)
    end = text.index("\n\n", start)
    lines = text[start:end].splitlines()
    return tomllib.loads("\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines))


@pytest.mark.parametrize("block", ['# [[devices]]\n# id = "bat1"', '# [[devices]]\n# id = "rtu1"'])
def test_commented_battery_and_opcua_devices_in_the_example_are_valid(block):
    data = minimal()
    data.update(_uncommented(block))
    (dev,) = parse_config(data, "gateway.toml", base_dir=EXAMPLE.parent, check_files=False).devices
    if dev.driver == "opcua":     # its certificate files are the operator's: check the parsed settings only
        assert dev.security_policy == "Basic256Sha256" and len(dev.nodes) == 4
        assert dev.client_cert == EXAMPLE.parent / "pki" / "opcua-gateway.der"
    else:
        assert make_device(dev).device_id == dev.id


names = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


@settings(max_examples=200, deadline=None)
@given(nodes=st.one_of(st.dictionaries(names, st.one_of(names, st.integers(), st.none(), st.lists(names))),
                       names, st.integers(), st.lists(names)),
       endpoint=st.one_of(names, st.just("opc.tcp://h:4840"), st.integers()))
def test_fuzz_opcua_config(nodes, endpoint):
    """Any nodes table and endpoint: a config or a ConfigError naming the key, never another exception."""
    try:
        cfg = parse_config(minimal(opcua(nodes=nodes, endpoint=endpoint)))
    except ConfigError as e:
        assert e.errors and all(line.startswith("<config>: devices[0].") or line.startswith("gateway.toml: devices[0].")
                   or ": devices[0]." in line for line in e.errors)
        return
    assert isinstance(make_device(cfg.devices[0]), OpcUaDevice)


@pytest.mark.parametrize("driver", ["sunspec_tcp", "modbus_tcp"])
def test_a_device_polled_every_15_minutes_is_polled(driver):
    """Issue 11, defect 2: a poll period above 60 s set the breaker's back-off above its ceiling, and every start
    of the device's run loop raised; meters read every 15 min are normal."""
    import asyncio

    from gridedge.core.model import flatten
    from gridedge.drivers import regmap
    from gridedge.hil.inverter_sim import InverterSim
    from gridedge.hil.modbus_sim import ModbusTcpSim, UnitSim

    from .aio import arun, until

    async def main():
        sim = (InverterSim() if driver == "sunspec_tcp"
               else UnitSim(1, regmap.load_map(regmap.shipped_maps()["eastron_sdm630"]), {"W": -1500.0}))
        tcp = ModbusTcpSim({1: sim})
        dev = {"id": "m1", "driver": driver, "host": "127.0.0.1", "port": await tcp.start(), "poll_ms": 900_000,
               "points": ["W"], **({"map": "eastron_sdm630"} if driver == "modbus_tcp" else {})}
        device = make_device(parse_config(minimal(dev)).devices[0])
        got = []
        task = asyncio.create_task(device.run(lambda readings: got.extend(flatten(readings))))
        try:
            await until(lambda: got or task.done())
            assert not task.done(), f"the run loop ended: {task.exception()!r}"
            assert got[0].point == "m1/W" and got[0].good
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await device.close()
            await tcp.stop()
            if isinstance(sim, InverterSim):
                await sim.stop()
    arun(main())
