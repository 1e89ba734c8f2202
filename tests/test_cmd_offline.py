"""Commands sent while the gateway is away are answered when it is back (defect 8 of issue 11).

The gateway keeps a persistent MQTT session (uplink.session_expiry_s), so mosquitto queues the QoS 1 commands
sent meanwhile and delivers them on the next connect, the first one after a restart included. Each is answered:
executed if its window is still open, `expired` if it closed while it waited.
"""
import asyncio
import signal
import time
import uuid

from gridedge.hil.rig import Rig

from .conftest import validate_message


def run(coro, timeout=150):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def offline_rig(tmp_path, protocol, **kw):
    return Rig(tmp_path, gateway_id=f"gw-{uuid.uuid4().hex[:6]}", dso_session_expiry_s=600, protocol=protocol,
               **kw)


async def send_while_away(rig, n: int) -> tuple[list[str], list[str], float]:
    """n commands: the even ones must start within 1 s (their window closes while the gateway is away), the odd
    ones within 120 s. Returns the ids of each kind and the wall time the short windows close."""
    short, long_ = [], []
    for i in range(n):
        cmd_id = f"away-{i}"
        validity = 1.0 if i % 2 == 0 else 120.0
        await rig.dso.send(rig.dso.activation(50 + i % 40, 1, cmd_id=cmd_id, validity_s=validity))
        (short if i % 2 == 0 else long_).append(cmd_id)
    return short, long_, time.time() + 1.0


async def all_answered(rig, short: list[str], long_: list[str]) -> None:
    await rig.dso.wait_for(lambda: all(rig.dso.results(c) for c in short + long_), 60,
                           "an answer to every command sent while the gateway was away")
    for c in short:
        assert rig.dso.statuses(c)[0] == "expired", (c, rig.dso.results(c))
        assert "expired: valid_until" in rig.dso.results(c)[0]["reason"]
    for c in long_:  # executed: accepted, then superseded by the next one of the same issuer, or run to the end
        assert rig.dso.statuses(c)[0] == "accepted", (c, rig.dso.results(c))
    for s in rig.dso.seen:  # the commands too: the documents the issuers signed
        validate_message(s.topic.replace("/backfill/", "/"), s.doc)


def test_commands_sent_while_the_agent_was_stopped_are_answered_after_its_restart(tmp_path, mqtt_protocol):
    async def scenario():
        async with offline_rig(tmp_path, mqtt_protocol) as rig:
            assert await rig.stop_agent(signal.SIGTERM) == 0
            short, long_, closes = await send_while_away(rig, 20)
            await asyncio.sleep(max(0.0, closes - time.time()) + 0.5)  # the outage outlasts the short windows
            await rig.start_agent()
            await all_answered(rig, short, long_)
    run(scenario())


def test_commands_sent_while_the_link_was_down_are_answered_when_it_is_back(tmp_path, mqtt_protocol):
    async def scenario():
        async with offline_rig(tmp_path, mqtt_protocol, proxy=True) as rig:
            rig.proxy.refuse(True)
            await rig.proxy.reset_all()  # the link dies under a running agent; it keeps trying to reconnect
            short, long_, closes = await send_while_away(rig, 20)
            await asyncio.sleep(max(0.0, closes - time.time()) + 0.5)
            rig.proxy.refuse(False)
            await all_answered(rig, short, long_)
    run(scenario())
