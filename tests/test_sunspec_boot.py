"""A SunSpec device that boots slowly: "SunS" answers before the models are up (an empty chain). The gateway must
keep reporting INVALID samples and discover again with back-off until the chain is there, then poll it; through
the bus directly and through the agent's run loop (edge/agent.py _poll_loop -> dev.run). Real pymodbus servers
(hil/inverter_sim.py with `booting` set), real sockets, a real mosquitto for the agent."""
from __future__ import annotations

import asyncio
import contextlib
import functools

import pytest

from gridedge.agent import Agent
from gridedge.config import parse_config
from gridedge.core.model import Detail, Validity, flatten
from gridedge.drivers import sunspec as ss
from gridedge.drivers.modbus import WriteError
from gridedge.drivers.regmap_device import LinkSpec
from gridedge.drivers.scheduler import BusPool
from gridedge.drivers.sunspec_device import SunSpecDevice
from gridedge.hil.broker import Mosquitto
from gridedge.hil.inverter_sim import InverterSim
from gridedge.hil.pki import make_pki

from . import aio
from .aio import until

arun = functools.partial(aio.arun, timeout=60.0)


def by_name(readings):
    return {s.point.split("/", 1)[1]: s for s in flatten(readings)}


def test_the_codec_refuses_an_empty_chain():
    gen = ss.discover()
    assert next(gen) == (40000, 2)
    assert gen.send(list(ss.SUNS_MARKER)) == (40002, 2)
    with pytest.raises(ss.DiscoveryError, match="no models"):
        gen.send([ss.END_MODEL_ID, 0])


@contextlib.asynccontextmanager
async def running(sim: InverterSim, points: list[str]):
    """The simulator served on TCP and a SunSpecDevice on it in run(); yields (device, batches of samples by name)."""
    port = await sim.start()
    dev = SunSpecDevice("inv1", LinkSpec("tcp", host="127.0.0.1", port=port, timeout_s=0.5), 1, pool=BusPool(),
                        points=points, period_s=0.05)
    batches: list[dict] = []
    task = asyncio.create_task(dev.run(lambda samples: batches.append(by_name(samples))))
    try:
        yield dev, batches
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dev.close()
        await sim.stop()


def test_a_booting_inverter_is_rediscovered_and_reports_invalid_samples_meanwhile():
    async def main():
        sim = InverterSim()
        sim.booting = True
        async with running(sim, ["W", "WMax"]) as (dev, batches):
            await until(lambda: len(batches) >= 3)        # unfixed: one batch, then silence for good
            assert all(b["W"].validity is Validity.INVALID and b["W"].detail is Detail.MALFORMED for b in batches)
            s = by_name(await dev.poll())                   # an explicit poll says the same
            assert s["W"].validity is Validity.INVALID and s["W"].detail is Detail.MALFORMED
            with pytest.raises(WriteError, match="no models"):
                await dev.write_points({"WMaxLimPct": 50})
            assert sim.writes_refused == 0                  # refused by the gateway, nothing sent
            sim.booting = False                             # the models come up
            await until(lambda: batches[-1]["W"].good, timeout=20)
            assert batches[-1]["WMax"].value == 10000
            assert set(dev.models) >= {1, 701, 702, 704}
            assert await dev.write_points({"WMaxLimPct": 50}) == {"WMaxLimPct": 50.0}
    arun(main())


def test_a_device_without_the_configured_models_is_looked_at_again():
    """A chain that is up but lacks the models of the configured points (a device whose models come up one by one)
    is not final either: NOT_IMPLEMENTED samples keep coming, and the device is discovered again each time."""
    async def main():
        async with running(InverterSim(models=(1, 701, 704)), ["SoC"]) as (dev, batches):
            await until(lambda: len(batches) >= 3)
            assert all(b["SoC"].detail is Detail.NOT_IMPLEMENTED for b in batches)
            assert dev.rediscoveries >= 2
    arun(main())


def test_the_agent_keeps_a_booting_inverter_alive(tmp_path):
    async def main():
        pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
        cert, key = pki.client("gw-boot")
        broker = Mosquitto(tmp_path / "broker", pki)
        await asyncio.to_thread(broker.start)
        sim = InverterSim()
        sim.booting = True
        stop = asyncio.Event()
        task = None
        try:
            port = await sim.start()
            cfg = parse_config({
                "gateway": {"id": "gw-boot"},
                "uplink": {"broker": broker.url, "ca_file": str(pki.ca_cert), "cert_file": str(cert),
                           "key_file": str(key), "telemetry_interval_ms": 200},
                "storage": {"dir": str(tmp_path / "var"), "durability": "normal"},
                "devices": [{"id": "inv1", "driver": "sunspec_tcp", "role": "inverter", "host": "127.0.0.1",
                             "port": port, "timeout_ms": 500, "poll_ms": 100, "points": ["W", "WMax"]}],
            }, "gateway.toml", tmp_path)
            agent = Agent(cfg)
            seen: list = []
            take = agent._take
            agent._take = lambda readings: (seen.append(by_name(readings)), take(readings))
            task = asyncio.create_task(agent.run(stop))
            await until(lambda: len(seen) >= 3, timeout=20)   # unfixed: one batch, then nothing
            assert all(b["W"].validity is Validity.INVALID for b in seen)
            assert agent.image["inv1/W"].detail is Detail.MALFORMED
            sim.booting = False
            await until(lambda: agent.image["inv1/W"].good, timeout=20)
            assert agent.image["inv1/WMax"].value == 10000
        finally:
            stop.set()
            if task is not None:
                await asyncio.wait_for(task, 30)
            await sim.stop()
            await asyncio.to_thread(broker.stop)
    arun(main())
