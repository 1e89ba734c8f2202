"""The uplink speaks MQTT 5 or 3.1.1, keeps its session on either, and fails over along a list of brokers (issue 17).

Real mosquitto brokers with mutual TLS, in process clients (gridedge.mqtt.MqttClient, the agent's own). mosquitto
logs the protocol level of every CONNECT ("p2" is 3.1.1, "p5" is 5) and whether it asked for a clean session
("c1") or not ("c0"): that is what went over the wire.
"""
import asyncio
import re

import pytest

from gridedge.hil.broker import Mosquitto
from gridedge.hil.pki import make_pki
from gridedge.mqtt import PROTOCOLS, MqttClient, MqttError, tls_context

from .aio import arun, until

LEVEL = {"5": "p5", "3.1.1": "p2"}  # mosquitto logs its protocol enum: 2 is 3.1.1


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def client(url, pki, name, **kw) -> MqttClient:
    return MqttClient(url, name, ssl_context=tls_context(pki.ca_cert, *pki.client(name)), **kw)


def connects(broker: Mosquitto, client_id: str) -> list[str]:
    """The (protocol, clean session) of each CONNECT of client_id, as mosquitto logged it."""
    return re.findall(rf"New client connected from \S+ as {re.escape(client_id)} \((p\d), (c\d)",
                      broker.log_path.read_text())


async def until_marker(sender: MqttClient, sub: MqttClient, topic: str) -> list[bytes]:
    """What sub receives on topic up to a marker (other topics are skipped): the marker is published again every
    0.5 s until it arrives, because subscribe() does not wait for the SUBACK and the first marker may be routed
    before the subscription exists."""
    async def markers():
        while True:
            await sender.publish(topic, b"after")
            await asyncio.sleep(0.5)

    task = asyncio.create_task(markers())
    got: list[bytes] = []
    try:
        while not got or got[-1] != b"after":
            msg = await asyncio.wait_for(sub.messages.get(), 10)
            if msg.topic == topic:
                got.append(msg.payload)
        return got
    finally:
        task.cancel()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_persistent_session_on_either_version_keeps_what_was_sent_while_away(tmp_path, pki, protocol):
    """session_expiry_s > 0: MQTT 5's Session Expiry, or 3.1.1's clean session off. A QoS 1 message sent while the
    subscriber is away is delivered when it is back; with session_expiry_s = 0 (clean) it is not."""
    async def scenario(url):
        sender = client(url, pki, "issuer.dso")
        await sender.connect()
        got = {}
        for name, expiry in (("gw-keep", 600), ("gw-clean", 0)):
            sub = client(url, pki, name, protocol=protocol, session_expiry_s=expiry)
            await sub.subscribe(f"gridedge/v3/{name}/cmd/+", qos=1)
            await sub.connect()
            await until_marker(sender, sub, f"gridedge/v3/{name}/cmd/ready")  # the subscription is in place
            await sub.close()
            await sender.publish(f"gridedge/v3/{name}/cmd/dso", b"while away")
            sub = client(url, pki, name, protocol=protocol, session_expiry_s=expiry)
            await sub.subscribe(f"gridedge/v3/{name}/cmd/+", qos=1)  # a clean session has to subscribe anew
            await sub.connect()
            got[name] = await until_marker(sender, sub, f"gridedge/v3/{name}/cmd/dso")
            await sub.close()
        await sender.close()
        return got

    with Mosquitto(tmp_path / "broker", pki) as broker:
        got = arun(scenario(broker.url), 60)
        assert connects(broker, "gw-keep") == [(LEVEL[protocol], "c0")] * 2
        assert connects(broker, "gw-clean") == [(LEVEL[protocol], "c1")] * 2
    assert got == {"gw-keep": [b"while away", b"after"], "gw-clean": [b"after"]}


def test_an_unknown_protocol_is_refused(pki):
    async def make():
        client("mqtts://127.0.0.1:1", pki, "gw-x", protocol="3.1")
    with pytest.raises(MqttError, match="protocol"):
        arun(make())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_client_moves_to_the_next_broker_when_its_broker_dies(tmp_path, pki, protocol):
    """Two brokers of one "cluster" (two mosquittos with the same CA: no shared state, which is not the point here):
    the client starts on the first URL of its list, and when that broker is killed it connects to the next."""
    first, second = Mosquitto(tmp_path / "a", pki), Mosquitto(tmp_path / "b", pki)

    async def scenario():
        c = client([first.url, second.url], pki, "gw-move", protocol=protocol, session_expiry_s=600)
        await c.connect()
        assert c.endpoint.port == first.port
        await c.publish("gridedge/v3/gw-move/telemetry", b"1")
        await asyncio.to_thread(first.kill)
        await until(lambda: not c.connected.is_set(), 10)
        await asyncio.wait_for(c.connected.wait(), 20)
        assert c.endpoint.port == second.port
        await c.publish("gridedge/v3/gw-move/telemetry", b"2")
        await c.close()

    with first, second:
        arun(scenario(), 60)
        assert connects(second, "gw-move") == [(LEVEL[protocol], "c0")]


def test_broker_urls_must_agree_on_tls(pki):
    async def make():
        client(["mqtts://127.0.0.1:8883", "mqtt://127.0.0.1:1883"], pki, "gw-mixed", allow_plaintext=True)
    with pytest.raises(MqttError, match="all mqtts:// or all mqtt://"):
        arun(make())


# ---- configuration: uplink.protocol and uplink.failover ------------------------------------------------------
def uplink(**keys) -> dict:
    return {"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://10.0.0.1", "allow_plaintext": True, **keys}}


def test_protocol_and_failover_are_configured_and_default_to_mqtt5_and_one_broker():
    from gridedge.config import parse_config
    assert (parse_config(uplink()).uplink.protocol, parse_config(uplink()).uplink.failover) == ("5", ())
    cfg = parse_config(uplink(protocol="3.1.1", failover=["mqtt://10.0.0.2", "mqtt://10.0.0.3:1884"])).uplink
    assert (cfg.protocol, cfg.failover) == ("3.1.1", ("mqtt://10.0.0.2", "mqtt://10.0.0.3:1884"))


@pytest.mark.parametrize("keys, expected", [
    ({"protocol": "3.1"}, "uplink.protocol"),
    ({"protocol": 5}, "uplink.protocol"),
    ({"failover": ["mqtts://10.0.0.2"]}, "uplink.failover[0]: must be mqtt:// like broker"),
    ({"failover": ["mqtt://10.0.0.2", "mqtt://10.0.0.2"]}, "duplicate"),
    ({"failover": ["http://10.0.0.2"]}, "scheme must be mqtts"),
    ({"failover": "mqtt://10.0.0.2"}, "must be an array"),
])
def test_a_bad_protocol_or_failover_is_named(keys, expected):
    from gridedge.config import ConfigError, parse_config
    with pytest.raises(ConfigError) as ei:
        parse_config(uplink(**keys), "gateway.toml", check_files=False)
    assert any(expected in e for e in ei.value.errors), ei.value.errors
