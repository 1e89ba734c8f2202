"""End to end over real parts: mosquitto with TLS, the inverter simulator and the agent as processes.

The DSO simulator sends activations over MQTT; the agent writes the SunSpec limit over Modbus TCP;
every message seen on the gateway's topics is validated against schemas/.
"""
import asyncio
import signal


import gridedge
from gridedge import contract
from gridedge.hil.rig import Rig

from .conftest import message_kind, validate_message


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def validate_all(rig: Rig, *, commands: bool = True) -> int:
    """Validate what was seen on the gateway's topics; commands=False skips the ones this test made bad on purpose."""
    seen = [s for s in rig.dso.seen if commands or message_kind(s.topic) != "command"]
    for s in seen:
        validate_message(s.topic, s.doc)
    return len(seen)


def applied_writes(rig: Rig) -> list[str]:
    """Lines in which the simulator logged a register write it applied."""
    return [line for line in rig.sim_log.read_text().splitlines() if "applied write at" in line]


def test_curtailment_reaches_limit_acks_in_order_and_restores(tmp_path):
    async def scenario():
        async with Rig(tmp_path, ramp_pct_per_s=20.0, pv_w=8000.0) as rig:
            await rig.dso.wait_for(lambda: rig.dso.latest.get("W", 0) > 7500, 15, "PV output near 8 kW")
            p0 = rig.dso.latest["W"]
            limit_pct = 30.0
            ramp_s = (p0 - limit_pct / 100 * rig.w_max) / (rig.ramp_pct_per_s / 100 * rig.w_max)
            rep = await rig.dso.curtailment(limit_pct, 5.0, reach_within_s=ramp_s + 2.0)
            assert rep.passed, rep.reasons
            assert rep.statuses == ["accepted", "active", "completed"]
            assert rep.p_min_w <= 0.31 * rig.w_max
            # after the restore the inverter climbs back towards the PV available
            await rig.dso.wait_for(lambda: rig.dso.latest["W"] > 7500, ramp_s + 5, "P back after the limit ends")
            assert validate_all(rig) > 5
            from gridedge.cext import describe   # the start-up log says which kernels run (compiled here)
            assert f"gridedge {gridedge.__version__} starting" in rig.agent_log.read_text()
            assert describe() in rig.agent_log.read_text()
    run(scenario())


BAD = [
    ("malformed JSON", b'{"cmd_id": "x1", ', None, "malformed JSON"),
    ("unknown command", {"type": "open_breaker"}, "bad-type", "unknown command"),
    ("limit out of range", {"params": {"limit_pct": 250, "duration_s": 10}}, "bad-range", "out of range"),
    ("expired window", {"valid_from": "2020-01-01T00:00:00Z", "valid_until": "2020-01-01T00:05:00Z"}, "bad-expired",
     "expired"),
    ("future window", {"valid_from": "2099-01-01T00:00:00Z", "valid_until": "2099-01-01T00:05:00Z"}, "bad-future",
     "not yet valid"),
]


def test_bad_commands_are_rejected_with_a_reason_and_nothing_is_written(tmp_path):
    async def scenario():
        async with Rig(tmp_path) as rig:
            writes_before = len(applied_writes(rig))
            for name, change, cmd_id, expected in BAD:
                if isinstance(change, bytes):  # signed, so it gets past authentication to the document's checks
                    payload = rig.dso.sign_bytes(change)
                else:
                    doc = rig.dso.activation(50, 10, cmd_id=cmd_id)
                    doc.update(change)
                    payload = rig.dso.sign(doc)
                n_before = len(rig.dso.results(cmd_id))
                await rig.dso.send(payload)
                await rig.dso.wait_for(lambda: len(rig.dso.results(cmd_id)) > n_before, 10, f"a result for {name}")
                res = rig.dso.results(cmd_id)[-1]
                assert res["status"] == ("expired" if cmd_id == "bad-expired" else "rejected"), name
                assert expected in res["reason"], (name, res["reason"])
            # the agent is still alive and still answers a good command
            assert rig.agent.returncode is None
            lim = await rig.dso.wait_for(lambda: rig.dso.latest.get("WMaxLimPctEna") is not None, 10, "limit points")
            assert lim is not None and rig.dso.latest["WMaxLimPctEna"] == 0
            assert len(applied_writes(rig)) == writes_before, "a rejected command reached the device"
            good = rig.dso.activation(60, 2, cmd_id="good-after-bad")
            await rig.dso.send(good)
            await rig.dso.wait_status("good-after-bad", "completed", 15)
            assert len(applied_writes(rig)) > writes_before
            validate_all(rig, commands=False)
    run(scenario())


def test_redelivered_command_is_not_executed_twice(tmp_path):
    async def scenario():
        async with Rig(tmp_path) as rig:
            token = rig.dso.sign(rig.dso.activation(50, 2, cmd_id="dup-1"))
            await rig.dso.send(token)
            await rig.dso.wait_status("dup-1", "completed", 15)
            writes = len(applied_writes(rig))
            await rig.dso.send(token)  # the same signed command again, as a QoS 1 re-delivery or a replay brings it
            res = await rig.dso.wait_status("dup-1", "rejected", 10)
            assert res["detail"]["refusal"] == "replay" and "already received" in res["reason"]
            assert rig.dso.statuses("dup-1") == ["accepted", "active", "completed", "rejected"]
            assert len(applied_writes(rig)) == writes
    run(scenario())


def test_termination_restores_previous_limit_and_read_only_device_is_never_written(tmp_path):
    async def scenario():
        async with Rig(tmp_path / "rw") as rig:
            await rig.dso.send(rig.dso.activation(20, 600, cmd_id="long-1"))
            await rig.dso.wait_status("long-1", "active", 10)
            await rig.dso.wait_for(lambda: rig.dso.latest.get("WMaxLimPctEna") == 1, 10, "limit enabled")
            await rig.dso.send(rig.dso.terminate("long-1", cmd_id="term-1"))   # signed by the dso, as long-1
            done = await rig.dso.wait_status("long-1", "terminated", 5)
            assert "term-1" in done["reason"]
            await rig.dso.wait_for(lambda: rig.dso.latest.get("WMaxLimPctEna") == 0, 10, "limit released")
            validate_all(rig)
        async with Rig(tmp_path / "ro", writable=False) as rig:
            writes = len(applied_writes(rig))
            await rig.dso.send(rig.dso.activation(20, 10, cmd_id="ro-1"))
            res = await rig.dso.wait_status("ro-1", "rejected", 10)
            assert "read-only" in res["reason"]
            assert len(applied_writes(rig)) == writes
    run(scenario())


def test_clean_stop_publishes_offline_and_sigkill_leaves_the_last_will(tmp_path):
    async def scenario():
        async with Rig(tmp_path) as rig:
            state = rig.prefix + contract.TOPIC_STATE

            def last_state():
                docs = [s.doc for s in rig.dso.seen if s.topic == state]
                return docs[-1]["status"] if docs else None

            online = await rig.dso.wait_online()
            assert online["version"] and online["boot_id"] and online["config_sha256"]
            assert await rig.stop_agent(signal.SIGTERM) == 0
            await rig.dso.wait_for(lambda: last_state() == "offline", 10, "death message")
            await rig.start_agent()
            await rig.dso.wait_for(lambda: last_state() == "online", 30, "back online")
            await rig.stop_agent(signal.SIGKILL)
            # the broker publishes the will once it sees the connection die (socket closed by the kernel)
            await rig.dso.wait_for(lambda: last_state() == "offline", 30, "last will")
            validate_all(rig)
    run(scenario())
