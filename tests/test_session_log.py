"""The agent's log about its MQTT session: a broker that is down is a warning saying why, once, not an ERROR
line per retry; a clean stop logs no error at all (issue 11, defect 11).

A real agent process, a real mosquitto; the agent reaches the broker through the rig's fault proxy so that its
own connection attempts can be counted while the broker is down.
"""
import asyncio
import logging
import re
import signal
import uuid

from gridedge.hil.broker import Mosquitto
from gridedge.hil.pki import make_pki
from gridedge.hil.rig import Rig
from gridedge.mqtt import MqttClient, tls_context

from .aio import arun, until


def connected_count(rig) -> int:
    return rig.agent_log.read_text().count("MQTT connected to")


def test_broker_down_then_up_and_clean_stop_log_no_errors(tmp_path):
    async def scenario():
        async with Rig(tmp_path, gateway_id=f"gw-{uuid.uuid4().hex[:6]}", proxy=True) as rig:
            await until(lambda: connected_count(rig) == 1, 15)
            await asyncio.to_thread(rig.broker.stop)
            attempts = rig.proxy.accepted
            await until(lambda: rig.proxy.accepted >= attempts + 3, 30)  # three retries hit the dead broker
            await asyncio.to_thread(rig.broker.start)
            await until(lambda: connected_count(rig) == 2, 30)
            assert await rig.stop_agent(signal.SIGTERM) == 0
        return rig.agent_log.read_text()

    log = arun(scenario(), 120)
    assert "Client is not connected" not in log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert errors == [], errors
    failures = re.findall(r"WARNING gridedge\.mqtt: MQTT connect to \S+ failed: (.*)", log)
    assert failures, "the failed attempts are not explained in the log"
    assert len(failures) == len(set(failures)), f"a failure logged more than once: {failures}"
    assert "stopped" in log.splitlines()[-1]


def test_clean_close_logs_no_error(tmp_path, caplog):
    """In process, a client that connects, publishes and closes cleanly, ten times over: not one error line."""
    pki = make_pki(tmp_path / "pki")
    ctx = tls_context(pki.ca_cert, *pki.client("gw-close"))

    async def scenario(url):
        for i in range(10):
            client = MqttClient(url, f"gw-close-{i}", ssl_context=ctx)
            await client.connect()
            await client.publish("gridedge/v2/gw-close/telemetry", b"{}")
            await client.close(final=("gridedge/v2/gw-close/state", b"{}"))

    with caplog.at_level(logging.DEBUG), Mosquitto(tmp_path / "broker", pki) as broker:
        arun(scenario(broker.url))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], errors
