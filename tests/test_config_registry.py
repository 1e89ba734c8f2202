"""One driver registry (issue 11, structure): per driver its configuration keys and its factory, in one place, so a
driver that `check` accepts is a driver the agent can build."""
from __future__ import annotations

import pytest

from gridedge import config, devices
from gridedge.config import ConfigError, parse_config, register_driver

#: the smallest valid device of each transport
REQUIRED = {"tcp": {"host": "10.0.0.5"}, "serial": {"serial_port": "/dev/ttyUSB0"},
            "opcua": {"endpoint": "opc.tcp://10.0.0.20:4840", "nodes": {"F1.W": "ns=2;s=F1.W"},
                      "security_policy": "None", "allow_insecure": True}}   # (the secure default needs certificates)


def minimal(*devs) -> dict:
    return {"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
            "devices": list(devs)}


def test_config_and_the_agent_read_the_same_registry():
    assert config.DRIVERS is devices.DRIVERS


@pytest.mark.parametrize("name", sorted(devices.DRIVERS))
def test_every_driver_check_accepts_is_built(name):
    spec = devices.DRIVERS[name]
    dev = {"id": "d1", "driver": name, **REQUIRED[spec.transport]}
    if spec.needs_map:
        dev["map"] = "eastron_sdm630"
    (cfg,) = parse_config(minimal(dev)).devices
    built = devices.make_device(cfg)
    assert getattr(built, "device_id", None) == "d1"


class Probe:
    def __init__(self, cfg):
        self.device_id, self.cfg = cfg.id, cfg


def test_a_registered_driver_is_checked_and_built():
    spec = register_driver("probe_tcp", transport="tcp", description="a test driver", factory=Probe)
    try:
        assert spec.name == "probe_tcp" and devices.DRIVERS["probe_tcp"] is spec
        with pytest.raises(ConfigError) as ei:
            parse_config(minimal({"id": "p1", "driver": "probe_tcp"}), "gateway.toml")
        assert ei.value.errors == [
            "gateway.toml: devices[0].host: required key missing (driver 'probe_tcp' connects over TCP)"]
        (cfg,) = parse_config(minimal({"id": "p1", "driver": "probe_tcp", "host": "10.0.0.9"})).devices
        built = devices.make_device(cfg)
        assert isinstance(built, Probe) and built.cfg.host == "10.0.0.9"
    finally:
        del devices.DRIVERS["probe_tcp"]


def test_a_driver_without_a_factory_cannot_be_registered():
    with pytest.raises(TypeError):
        register_driver("half_tcp", transport="tcp")   # the missing factory is the point
    with pytest.raises(ValueError, match="transport"):
        register_driver("odd", transport="carrier-pigeon", factory=Probe)
    assert "half_tcp" not in devices.DRIVERS and "odd" not in devices.DRIVERS
