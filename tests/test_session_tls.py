"""Why the uplink's TLS failed, in the agent's log (issue 11, defect 15, the log half).

A real agent process (no devices: only its uplink matters here) against a real mosquitto, with certificates from
hil/pki.py that are wrong in one way each. The agent reaches the broker through the rig's fault proxy, which counts
its connection attempts. Each case: the log names the reason once (not once per retry), the agent keeps retrying
with back-off, and where the fault is the broker's, it connects once the broker has a good certificate.
"""
import asyncio
import os
import re
import signal
import sys
import uuid

import pytest

from gridedge.hil.broker import Mosquitto
from gridedge.hil.faultproxy import FaultProxy
from gridedge.hil.pki import make_pki, make_rogue_client, reissue_server

from .aio import arun, until

CONFIG = """\
[gateway]
id = "{gateway}"

[uplink]
broker = "mqtts://127.0.0.1:{port}"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
keepalive_s = 5

[storage]
dir = "{storage}"
"""


def _wrong_ca(tmp_path, pki, gateway):
    return make_pki(tmp_path / "other").ca_cert, pki.client(gateway)


def _expired_broker(tmp_path, pki, gateway):
    reissue_server(pki, expired=True)
    return pki.ca_cert, pki.client(gateway)


def _host_mismatch(tmp_path, pki, gateway):
    reissue_server(pki, server_names=("broker.example",))
    return pki.ca_cert, pki.client(gateway)


def _client_refused(tmp_path, pki, gateway):
    return pki.ca_cert, make_rogue_client(tmp_path / "rogue", gateway)  # signed by a CA the broker does not know


# case: (set-up, words the log line must hold, the broker can be mended without touching the agent)
CASES = {
    "wrong-ca": (_wrong_ca, ["certificate verify failed", "not signed by a CA in ca_file"], False),
    "expired-broker-cert": (_expired_broker, ["certificate verify failed", "has expired"], True),
    "host-name-mismatch": (_host_mismatch, ["certificate verify failed", "not valid for host 127.0.0.1"], True),
    "client-cert-refused": (_client_refused, ["refused our client certificate", "unknown ca"], False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tls_failure_is_named_once_and_retried(tmp_path, case):
    setup, words, mendable = CASES[case]
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    pki = make_pki(tmp_path / "pki")
    ca, (cert, key) = setup(tmp_path, pki, gateway)
    log_path = tmp_path / "agent.log"

    async def scenario():
        broker = Mosquitto(tmp_path / "broker", pki)
        await asyncio.to_thread(broker.start)
        proxy = FaultProxy("127.0.0.1", broker.port)
        await proxy.start()
        config = tmp_path / "gateway.toml"
        config.write_text(CONFIG.format(gateway=gateway, port=proxy.port, ca=ca, cert=cert, key=key,
                                        storage=tmp_path / "var"))
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridedge", "run", "-c", str(config), stdout=asyncio.subprocess.DEVNULL,
            stderr=open(log_path, "ab"), env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            await until(lambda: proxy.accepted >= 3, 30)  # it keeps trying, with back-off (1, 2, 4 s...)
            assert agent.returncode is None
            if mendable:
                reissue_server(pki)
                await asyncio.to_thread(broker.restart)
                await until(lambda: "MQTT connected to" in log_path.read_text(), 60)
            agent.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(agent.wait(), 15) == 0
        finally:
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
            await proxy.stop()
            await asyncio.to_thread(broker.stop)
        return proxy.accepted

    attempts = arun(scenario(), 120)
    log = log_path.read_text()
    said = [line for line in log.splitlines() if re.search(r" (WARNING|ERROR) gridedge\.mqtt: MQTT connect to", line)]
    assert len(said) == 1, f"the reason is not given exactly once in {attempts} attempts: {said}\n{log}"
    for w in words:
        assert w in said[0], f"{w!r} not in {said[0]!r}"
    others = [line for line in log.splitlines() if " ERROR " in line and line not in said]
    assert others == [], others
    if mendable:
        assert re.search(r"MQTT connected to \S+ after \d+ failed attempts", log), log
