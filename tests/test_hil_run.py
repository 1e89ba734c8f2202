"""The rig as a product, end to end with real parts (mosquitto with TLS, the simulated devices, gridedge as a
process): a gateway with a fault injected through its configuration fails the right check, and the rig judges a
gateway it did not start, which was given only the broker's address, the certificates and the devices' addresses.

These run two of the ready-made scenarios (about a minute each); the others are validated in test_hil_scenario.py
and run with `gridedge hil run NAME` (docs/hil.md).
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import sys
import tomllib

import pytest

from gridedge.hil.scenario import parse_scenario, resolve
from gridedge.hil.scenario_bench import toml_text
from gridedge.hil.scenario_run import Progress, RESULT_FAIL, main_run, run_scenario
from gridedge.hil.verdict import judge

from .aio import arun, until


def ready_made(name: str) -> dict:
    return tomllib.loads(resolve(name).read_text())


@pytest.mark.timeout(240)
def test_a_gateway_with_a_wrong_ramp_fails_the_ramp_check(tmp_path):
    """The step test of prequalification_step.toml against a gateway whose configuration has the wrong release
    ramp: none (the limit lifted at once) where the grid code allows 5 % of WMax per second and the scenario's
    gateway ramps at 4 %/s. The inverter climbs back at its own 20 %/s: the release-ramp check fails with the
    ramp it measured at the inverter, the run exits 1, and every other check passes."""
    doc = ready_made("prequalification_step")
    doc["gateway"]["config"]["control"]["settings"]["ramp_up_pct_per_s"] = 0.0     # the fault: no release ramp
    doc["scenario"]["duration"] = 26
    doc["timeline"] = [e for e in doc["timeline"] if e.get("id") == "step"]
    doc["checks"] = [c for c in doc["checks"] if not c["id"].startswith("LIM")]
    sc = parse_scenario(doc, "prequalification_step.toml (ramp_up_pct_per_s = 0)")
    rc, report = main_run(sc, tmp_path)
    assert rc == RESULT_FAIL
    verdicts = {v["id"]: v for v in report["verdicts"]}
    ramp = verdicts["PQ-3b"]
    assert ramp["verdict"] == "fail" and 1500 < ramp["figure"] < 2500, ramp      # the inverter's own 2000 W/s
    assert [i for i, v in verdicts.items() if v["verdict"] != "pass"] == ["PQ-3b"]
    assert report["summary"]["verdict"] == "fail" and report["gateway"]["version"]
    assert (tmp_path / "report.html").read_text().count("data:image/png") == 3
    assert "ramp_up_pct_per_s = 0.0" in (tmp_path / "gateway" / "gateway.toml").read_text()


def gateway_config_from(sheet: dict, storage) -> str:
    """A gridedge configuration made from the bench sheet alone, as the operator of any gateway would."""
    return toml_text({
        "gateway": {"id": sheet["gateway_id"]},
        "uplink": {"broker": sheet["broker"], "ca_file": sheet["ca_file"], "cert_file": sheet["cert_file"],
                   "key_file": sheet["key_file"]},
        "storage": {"dir": str(storage)},
        "security": {"issuers": [{"id": i, "actor": v["actor"], "roles": ["operator"],
                                  "public_keys": [v["public_key"]]} for i, v in sheet["issuers"].items()]},
        "devices": sheet["devices"],
    })


@pytest.mark.timeout(240)
def test_the_rig_judges_an_external_gateway_given_only_the_broker_and_certificates(tmp_path):
    """dso_congestion.toml with gateway.mode = "external": the rig builds the bench, writes bench.json and waits.
    The test, standing for the gateway's operator, starts gridedge itself with a configuration made from that
    sheet only (broker URL, CA, its certificate and key, the issuers' public keys, the devices' addresses); the
    rig never starts, stops or reads it, and every check passes from what it saw at the broker and devices."""
    doc = ready_made("dso_congestion")
    doc["gateway"] = {"mode": "external", "id": "gw-ext-001", "online_timeout_s": 60}
    sc = parse_scenario(doc, "dso_congestion.toml (external)")
    run_dir = tmp_path / "run"
    gateway = None

    async def operator():
        nonlocal gateway
        sheet_path = run_dir / "bench.json"
        await until(sheet_path.exists, 30)
        sheet = json.loads(sheet_path.read_text())
        assert set(sheet) == {"gateway_id", "topic_prefix", "broker", "ca_file", "cert_file", "key_file", "issuers",
                              "devices"}
        cfg = tmp_path / "own-gateway.toml"
        cfg.write_text(gateway_config_from(sheet, tmp_path / "var"))
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridedge", "run", "-c", str(cfg), stdout=asyncio.subprocess.DEVNULL,
            stderr=open(tmp_path / "own-gateway.log", "ab"), env=dict(os.environ, PYTHONUNBUFFERED="1"))

    async def go():
        op = asyncio.create_task(operator())
        try:
            rec = await run_scenario(sc, run_dir, progress=Progress(open(os.devnull, "w")))
        finally:
            await op
            if gateway is not None and gateway.returncode is None:
                gateway.send_signal(signal.SIGTERM)
                await gateway.wait()
        return rec

    rec = arun(go(), timeout=200)
    assert rec["gateway"]["mode"] == "external" and rec["gateway"]["version"]
    assert not (run_dir / "gateway" / "gateway.toml").exists()          # the rig wrote no configuration for it
    verdicts = judge(sc, rec)
    assert [(v.id, v.verdict) for v in verdicts if v.verdict != "pass"] == []
    assert len(verdicts) == 10


def test_an_external_gateway_that_never_comes_is_a_bench_failure(tmp_path):
    doc = copy.deepcopy(ready_made("dso_congestion"))
    doc["gateway"] = {"mode": "external", "id": "gw-absent", "online_timeout_s": 2}
    lines = []
    progress = Progress(open(os.devnull, "w"))
    progress.say = lines.append
    from gridedge.hil.scenario_bench import BenchError

    with pytest.raises(BenchError, match="after 2 s the gateway 'gw-absent' is not online"):
        arun(run_scenario(parse_scenario(doc), tmp_path, progress=progress), timeout=60)
    assert any("bench.json" in line for line in lines)


def test_progress_shows_the_time_elapsed_the_time_left_in_the_phase_and_the_phase():
    import io

    out = io.StringIO()
    progress = Progress(out)
    progress.t_run -= 65                                  # the run began 65 s ago
    progress.set("timeline", 40)
    progress.t_start -= 10                                # 10 s into a 40-s timeline
    progress.show(scenario_s=7200, force=True)
    progress.set("stopping the gateway")
    lines = out.getvalue().splitlines()
    assert lines[-2] == "hil: [0:01:05 elapsed, 0:00:30 left in this phase, scenario time 2:00:00] timeline", lines
    assert lines[-1] == "hil: [0:01:05 elapsed] stopping the gateway", lines


def test_the_meters_show_the_grid_before_a_gateway_first_reads_them(tmp_path):
    """The bench is up (bench.json written) before the rig's clock ticks: a gateway that polls at once must read
    the meter's voltage and frequency from the feeder, not the zeros of registers never set. A real Modbus TCP
    read through the rig's relay, decoded with gridedge's register-map codec."""
    from pymodbus.client import AsyncModbusTcpClient

    from gridedge.drivers import regmap as rm
    from gridedge.hil.scenario_bench import Bench, Clock

    doc = ready_made("dso_congestion")
    doc["gateway"] = {"mode": "external", "id": "gw-meter"}
    for d in doc["devices"]:
        if d["kind"] == "meter":
            d["bus"] = "tcp"
    sc = parse_scenario(doc)
    rmap = rm.load_map(rm.shipped_maps()["eastron_sdm630"])

    async def go():
        bench = Bench(sc, tmp_path, Clock(sc.speed), say=lambda _t: None)
        try:
            await bench.start()
            meter = next(d for d in json.loads(bench.bench_sheet.read_text())["devices"] if d["role"] == "meter")
            client = AsyncModbusTcpClient(meter["host"], port=meter["port"], timeout=2, retries=0)
            assert await client.connect()
            got = {}
            try:
                for block in rm.plan_reads(rmap, ["PhVphA", "Hz"]):
                    rr = await client.read_input_registers(block.address, count=block.count,
                                                           device_id=meter["unit_id"])
                    assert not rr.isError(), rr
                    got.update({s.point: s.value for s in rm.decode(rmap, block, rr.registers, "m", 0)})
            finally:
                client.close()
            return got
        finally:
            await bench.stop()

    got = arun(go(), timeout=60)
    assert got["m/Hz"] == pytest.approx(50.0) and 0.95 * 230 < got["m/PhVphA"] < 1.1 * 230, got
