"""A flood on the command topic, over a real mosquitto with TLS: the inbound queue stays bounded (QoS 1 waits at
the broker, QoS 0 beyond the bound is dropped and counted), and the answers to garbage neither grow the outbox
nor push telemetry out of it (defect 7 of issue 11)."""
import asyncio
import signal
import uuid

from gridedge import mqtt
from gridedge.commands import UNREADABLE_BURST
from gridedge.hil.broker import Mosquitto
from gridedge.hil.pki import make_pki
from gridedge.hil.rig import Rig
from gridedge.mqtt import MqttClient, tls_context

from .aio import arun, until
from .conftest import message_kind, validate_message


def test_inbound_queue_stays_bounded_and_qos1_waits_at_the_broker(tmp_path):
    """Nobody consumes while 400 QoS 1 and 400 QoS 0 messages arrive: the queue holds at most its bound, the
    QoS 0 ones beyond it are dropped and counted, and every QoS 1 message is delivered once consumed."""
    async def scenario():
        pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
        broker = Mosquitto(tmp_path / "broker", pki)
        await asyncio.to_thread(broker.start)
        clients = []
        try:
            def client(name: str) -> MqttClient:
                cert, key = pki.client(name)
                c = MqttClient(broker.url, name, ssl_context=tls_context(pki.ca_cert, cert, key))
                clients.append(c)
                return c

            rx, tx = client("gw-flood"), client("dso-flood")
            await rx.subscribe("t/#", qos=1)
            await rx.connect()
            await tx.connect()
            sent = [tx.publish_nowait(f"t/q{qos}", str(i).encode(), qos=qos) for i in range(400) for qos in (1, 0)]
            await asyncio.gather(*sent)
            peak = await until(lambda: rx.messages.qsize() if rx.messages.qsize() >= mqtt.INBOX_LIMIT else 0, 10)
            assert peak <= mqtt.INBOX_LIMIT
            got: dict[str, list[int]] = {"t/q1": [], "t/q0": []}

            async def consume():
                while True:
                    msg = await rx.messages.get()
                    assert rx.messages.qsize() <= mqtt.INBOX_LIMIT
                    got[msg.topic].append(int(msg.payload))

            reader = asyncio.create_task(consume())
            await until(lambda: len(got["t/q1"]) == 400, 20)
            await until(lambda: len(got["t/q0"]) + rx.dropped == 400, 10)
            reader.cancel()
            assert got["t/q1"] == list(range(400))  # all of them, in order: they waited at the broker
            assert rx.dropped > 0 and got["t/q0"] == sorted(got["t/q0"])
        finally:
            for c in clients:
                await c.close()
            await asyncio.to_thread(broker.stop)
    arun(scenario(), 60)


def test_a_garbage_flood_on_a_slow_uplink_drops_no_telemetry(tmp_path):
    """300 unreadable commands arrive over a slow uplink (50 ms each way) while the outbox quota is 30 kB, every
    other one signed by a trusted issuer (its document unreadable) and the rest unsigned: they get their small
    budget of answers, the rest is counted, no telemetry is dropped, and a good command sent after the flood is
    still executed."""
    async def scenario():
        async with Rig(tmp_path, gateway_id=f"gw-{uuid.uuid4().hex[:6]}", proxy=True, quota_mb=0.03,
                       telemetry_ms=100, poll_ms=100, dso_session_expiry_s=600) as rig:
            await rig.dso.wait_for(lambda: rig.dso.latest.get("W") is not None, 15, "telemetry")
            rig.proxy.latency_s = 0.05
            for i in range(300):
                garbage = b'{"cmd_id": "flood-%d", ' % i + b"x" * 200
                await rig.dso.send(rig.dso.sign_bytes(garbage) if i % 2 == 0 else garbage)
            await rig.dso.wait_for(lambda: len(rig.dso.results(None)) >= UNREADABLE_BURST, 30, "the budget spent")
            rig.proxy.latency_s = 0.0
            good = rig.dso.activation(50, 1, cmd_id="after-flood", validity_s=120)
            await rig.dso.send(good)
            await rig.dso.wait_status("after-flood", "completed", 60)  # behind all 300 in the session's order
            assert await rig.stop_agent(signal.SIGTERM) == 0
            state = await rig.dso.wait_for(lambda: next((s.doc for s in reversed(rig.dso.seen)
                                                         if s.topic == rig.prefix + "state"
                                                         and s.doc["status"] == "offline"), None), 15, "offline")
            unreadable = rig.dso.results(None)
            assert UNREADABLE_BURST <= len(unreadable) < UNREADABLE_BURST + 15, len(unreadable)
            # the budget's first answers, in the order the flood was sent: signed garbage, unsigned, signed...
            first = sorted(unreadable, key=lambda r: r["seq"])[:UNREADABLE_BURST]
            assert [r["detail"].get("refusal") for r in first] == [None, "unauthenticated"] * (UNREADABLE_BURST // 2)
            assert all(r["reason"].startswith("malformed JSON") for r in first[::2]), first[0]["reason"]
            assert state["dropped"]["telemetry"] == 0, state["dropped"]
            assert state["commands"] == {"received": 301, "dropped": 0, "unanswered": 300 - len(unreadable),
                                         "unauthenticated": 150, "forbidden": 0, "replayed": 0}
            tel = rig.dso.audit.report(rig.gateway_id, "telemetry")
            assert tel.received > 0 and tel.missing == []
            for s in rig.dso.seen:
                if message_kind(s.topic) != "command":
                    validate_message(s.topic.replace("/backfill/", "/"), s.doc)
    arun(scenario(), 150)
