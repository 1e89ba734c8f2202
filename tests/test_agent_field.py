"""The agent with field devices that keep their own schedule, end to end over real parts: an OPC UA substation RTU
(hil/opcua_server.py, asyncua) and a register-map meter with poll groups (hil/modbus_sim.py, pymodbus), a real
mosquitto with TLS, the DSO simulator reading the telemetry. Every message seen is validated against schemas/."""
from __future__ import annotations

import asyncio
from collections import Counter

from gridedge import contract, telemetry
from gridedge.agent import Agent
from gridedge.config import parse_config
from gridedge.drivers import regmap
from gridedge.hil.broker import Mosquitto
from gridedge.hil.dso_sim import DsoSimulator
from gridedge.hil.modbus_sim import ModbusTcpSim, UnitSim
from gridedge.hil.opcua_server import DBPOS_OFF, DBPOS_ON, OpcUaSubstationSim
from gridedge.hil.pki import make_pki
from gridedge.core.model import Validity
from gridedge.mqtt import tls_context

from .conftest import validate_message

SDM = regmap.load_map(regmap.shipped_maps()["eastron_sdm630"])
GW = "gw-field-1"
PREFIX = f"gridedge/v3/{GW}/"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


def telemetry_samples(dso: DsoSimulator) -> list[dict]:
    return [s._asdict() | {"p": s.point} for m in dso.seen if m.topic == PREFIX + contract.TOPIC_TELEMETRY
            for s in telemetry.samples_of(m.doc)]


def test_opcua_subscription_and_poll_groups_reach_the_image_and_the_telemetry(tmp_path):
    async def scenario():
        pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
        gw_cert, gw_key = pki.client(GW)
        dso_cert, dso_key = pki.client("dso-headend")
        broker = Mosquitto(tmp_path / "broker", pki)
        await asyncio.to_thread(broker.start)
        rtu = OpcUaSubstationSim(feeders=2, period_s=0.1, seed=3)
        meter = ModbusTcpSim({1: UnitSim(1, SDM, {"W": 1234.0, "Hz": 50.01, "PhVphA": 231.0})})
        agent = dso = None
        stop = asyncio.Event()
        task = None
        try:
            endpoint = await rtu.start()
            meter_port = await meter.start()
            nodes = {p: n for p, n in rtu.points().items() if p.startswith("F1.") or p == "Hz"}
            cfg = parse_config({
                "gateway": {"id": GW},
                "uplink": {"broker": broker.url, "ca_file": str(pki.ca_cert), "cert_file": str(gw_cert),
                           "key_file": str(gw_key), "telemetry_interval_ms": 200, "backfill_jitter_s": 0.0},
                "storage": {"dir": str(tmp_path / "var"), "durability": "normal"},
                "devices": [
                    {"id": "rtu1", "driver": "opcua", "role": "meter", "endpoint": endpoint, "nodes": nodes,
                     "poll_ms": 100, "security_policy": "None", "allow_insecure": True},   # Basic256Sha256:
                    # tests/test_opcua.py (the secure channel costs this test a second: its point is the stream)
                    {"id": "m1", "driver": "modbus_tcp", "role": "meter", "map": "eastron_sdm630",
                     "host": "127.0.0.1", "port": meter_port, "points": ["PhVphA", "W"], "poll_ms": 2000,
                     "poll_groups": [{"name": "fast", "period_ms": 100, "points": ["W"]}]},
                ]}, "gateway.toml", tmp_path)
            agent = Agent(cfg)
            assert agent.control.kernels().startswith("control kernels: not loaded")   # meters only: no numpy
            task = asyncio.create_task(agent.run(stop))
            dso = DsoSimulator(broker.url, tls_context(pki.ca_cert, dso_cert, dso_key), PREFIX)
            await dso.start()
            await dso.wait_for(lambda: all(dso.latest.get(p) is not None for p in nodes)
                               and dso.latest.get("W") == 1234.0 and dso.latest.get("PhVphA") == 231.0,
                               30, "OPC UA and meter values in the telemetry")
            # the process image holds them too, good, with the OPC UA source timestamps and units
            img = agent.image
            assert img["rtu1/F1.W"].validity is Validity.GOOD and img["rtu1/F1.W"].unit == "W"
            assert img["rtu1/F1.PhVphA"].unit == "V" and img["rtu1/F1.XCBR1.Pos"].value == DBPOS_ON
            assert img["m1/W"].value == 1234.0 and img["m1/W"].unit == "W"
            # a breaker opening at the RTU arrives as a data change, without polling
            rtu.set_breaker(1, False)
            await dso.wait_for(lambda: dso.latest.get("F1.XCBR1.Pos") == DBPOS_OFF, 10, "breaker open")
            # poll groups through the agent: W every 100 ms, PhVphA every 2 s
            before = Counter(s["p"] for s in telemetry_samples(dso))
            await dso.wait_for(lambda: Counter(s["p"] for s in telemetry_samples(dso))["m1/PhVphA"]
                               >= before["m1/PhVphA"] + 2, 10, "two more slow-group polls")
            after = Counter(s["p"] for s in telemetry_samples(dso))
            fast, slow = after["m1/W"] - before["m1/W"], after["m1/PhVphA"] - before["m1/PhVphA"]
            assert fast >= 5 * slow, (fast, slow)
            # the subscription streams every change (the busbar frequency changes every 100 ms)
            assert after["rtu1/Hz"] - before["rtu1/Hz"] > slow
            assert rtu.subscription_count() == 1
            for m in dso.seen:
                validate_message(m.topic, m.doc)
        finally:
            stop.set()
            if task is not None:
                await asyncio.wait_for(task, 30)
            if dso is not None:
                await dso.stop()
            await rtu.stop()
            await meter.stop()
            await asyncio.to_thread(broker.stop)
    run(scenario())
