"""Tests of the harness's own measuring parts: the subscriber's decoders and bookkeeping, the farm's counters.

Run: .venv/bin/python -m pytest bench/perf/test_perf_harness.py -q
(not under tests/: the harness is a bench tool, not part of the gridedge package.)
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.perf import harness, tb
from bench.perf.devicefarm import Farm
from bench.perf.subscriber import Counter, parse_point

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- subscriber decoding

def test_parse_point_accepts_farm_points_only():
    assert parse_point("d007", "R12", 10, 50) == (7, 12)
    assert parse_point("d010", "R0", 10, 50) is None       # device out of range
    assert parse_point("d001", "R50", 10, 50) is None      # register out of range
    assert parse_point("x001", "R1", 10, 50) is None
    assert parse_point("d", "R1", 10, 50) is None
    assert parse_point("d١", "R1", 10, 50) is None         # non-ASCII digit


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_decoders_never_raise_on_arbitrary_bytes(payload):
    c = Counter(3, 4)
    c.on_gridedge(payload, 1)
    c.on_tb(payload, 1)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                           max_leaves=20)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_decoders_never_raise_on_arbitrary_json(doc):
    c = Counter(3, 4)
    try:
        payload = json.dumps(doc).encode()
    except ValueError:
        return
    c.on_gridedge(payload, 1)
    c.on_gridedge(json.dumps({"blocks": doc if isinstance(doc, list) else [doc]}).encode(), 1)
    c.on_tb(payload, 1)


def _snap(counts, times, t_ns=0):
    return {"t_ns": t_ns, "counts": counts, "requests": 0, "read_times0": times}


def test_evaluate_counts_loss_duplicates_and_latency():
    c = Counter(2, 2)
    def blk(dev, names, values, q=None):
        return {"dev": dev, "n": names, "u": [""] * len(names), "t": 0, "v": values, **({"q": q} if q else {})}
    gd = {"blocks": [blk("d000", ["R0", "R1"], [1, 1]), blk("d000", ["R0", "R1"], [2, 2]),
                     blk("d000", ["R0", "R1"], [3, 2]), blk("d000", ["R1"], [3]),       # one duplicate
                     blk("d001", ["R0", "R0"], [1, None], [None, ["invalid", "timeout"]])]}
    c.on_gridedge(json.dumps(gd).encode(), now=1_000)
    c.on_tb(json.dumps({"d001": [{"ts": 1, "values": {"R1": 1}}]}).encode(), now=2_000)
    s0 = _snap([[0, 0], [0, 0]], [[], []])
    s1 = _snap([[3, 3], [2, 2]], [[100, 200, 300], [400, 500]], t_ns=1_500)
    ev = c.evaluate(s0, s1)
    assert ev["offered"] == 10
    assert ev["delivered"] == 8            # d001/R0 value 2 and d001/R1 value 2 never arrived
    assert ev["missing"] == 2
    assert ev["duplicates"] == 1
    assert ev["registers_with_loss"] == 2
    assert ev["latency_samples"] == 4      # register 0 values 1..3 of d000 and 1 of d001
    assert ev["latency_max_s"] == pytest.approx((1_000 - 100) / 1e9)
    assert c.invalid == 1


def test_evaluate_only_counts_the_window():
    c = Counter(1, 1)
    c.on_tb(json.dumps({"d000": [{"ts": 1, "values": {"R0": v}} for v in range(1, 11)]}).encode(), now=5)
    ev = c.evaluate(_snap([[4]], [list(range(10))]), _snap([[7]], [list(range(10))]))
    assert (ev["offered"], ev["delivered"], ev["missing"]) == (3, 3, 0)


# ----------------------------------------------------------------------------- farm with a real client

def test_farm_counts_every_read_and_times_register_zero():
    from pymodbus.client import AsyncModbusTcpClient

    async def go():
        farm = Farm(2, 5)
        ports = await farm.start()
        try:
            cl = AsyncModbusTcpClient("127.0.0.1", port=ports[1])
            await cl.connect()
            seen = []
            for _ in range(3):
                seen.append((await cl.read_holding_registers(0, count=5, device_id=1)).registers)
            seen.append((await cl.read_holding_registers(2, count=2, device_id=1)).registers)
            cl.close()
        finally:
            await farm.stop()
        return farm, seen

    farm, seen = asyncio.run(go())
    assert seen == [[1] * 5, [2] * 5, [3] * 5, [4, 4]]
    snap = farm.snapshot()
    assert snap["counts"] == [[0] * 5, [3, 3, 4, 4, 3]]
    assert len(snap["read_times0"][1]) == 3 and snap["read_times0"][0] == []


def test_farm_process_protocol(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "bench.perf.devicefarm", "--devices", "1", "--registers", "3"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline().startswith("READY ")
        out = tmp_path / "s.json"
        p.stdin.write(f"snapshot {out}\nbogus\nquit\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == f"OK {out}"
        assert p.stdout.readline().startswith("ERR unknown command")
        assert json.loads(out.read_text())["counts"] == [[0, 0, 0]]
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()


# ----------------------------------------------------------------------------- config generation

def test_gridedge_config_is_accepted_by_gridedge(tmp_path):
    from gridedge.config import load_config
    from gridedge.hil.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    cert, keyf = pki.client("gw-t")
    cfg = harness.write_gridedge_config(tmp_path, gateway_id="gw-t", broker_url="mqtts://127.0.0.1:8883",
                                        ca=pki.ca_cert, cert=cert, key=keyf, ports=[1502, 1503], registers=50,
                                        poll_ms=100, driver="modbus_tcp", map_key="map", telemetry_ms=1000)
    c = load_config(cfg)
    assert [d.id for d in c.devices] == ["d000", "d001"] and c.devices[1].port == 1503


def test_tb_slave_config_block_and_register_reads():
    blk = tb.slave_config(3, 1600, 50, 1000, "block")
    assert blk["deviceName"] == "d003" and blk["port"] == 1600
    assert blk["timeseries"] == [{"tag": "R${address}", "type": "16uint", "functionCode": 3, "objectsCount": 1,
                                  "address": "0-49", "maxRegistersPerRequest": 125}]
    per = tb.slave_config(0, 1600, 4, 1000, "register")
    assert [t["address"] for t in per["timeseries"]] == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        tb.slave_config(0, 1, 1, 1, "bogus")


def test_summary_ratios():
    rs = [{"scenario": "s", "agent": "gridedge", "ok": True, "cpu_s_per_10k": 0.1, "complete": True},
          {"scenario": "s", "agent": "tb-memory", "ok": True, "cpu_s_per_10k": 0.5, "complete": True},
          {"scenario": "s", "agent": "tb-memory", "ok": False, "error": "x"}]
    s = harness.summarize(rs)
    assert s["s"]["ratio gridedge/tb-memory"]["cpu_s_per_10k"] == pytest.approx(0.2)
    assert s["s"]["tb-memory"]["runs_ok"] == 1 and s["s"]["tb-memory"]["errors"] == ["x"]
    assert "tb-memory" in harness.table(s)
