"""What the rig reads from the broker and the devices is hostile until checked: any message a gateway under test
publishes is sorted or counted as unreadable, never a crash of the rig (fuzzed); and a simulated inverter whose
PV falls below its output (a clear-sky evening in compressed time) still renders its registers."""
from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from gridedge.hil.dso_sim import Seen
from gridedge.hil.inverter_sim import InverterSim
from gridedge.hil.scenario_run import observe

P = "gridedge/v3/gw/"
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["msg_id", "blocks", "t", "dev", "n", "v", "status", "detail", "next_seq",
                                         "cmd_id", "will", "x"]), inner, max_size=6), max_leaves=20)
TOPICS = st.sampled_from([P + k for k in ("telemetry", "result", "state", "verification", "backfill/telemetry",
                                          "backfill/result", "audit", "cmd/dso")] + ["other/topic"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(TOPICS, JSON), max_size=8))
def test_fuzz_any_message_from_the_gateway(messages):
    seen = [Seen(topic, doc if isinstance(doc, dict) else None, json.dumps(doc).encode(), 1.0 + i)
            for i, (topic, doc) in enumerate(messages)]
    out = observe(seen, P, 0)
    assert sum(out["topics"].values()) == len(messages)
    json.dumps(out)                                          # what it keeps goes into raw.json
    for r in out["results"]:
        assert all(v is None or isinstance(v, str) for k, v in r.items() if k in ("cmd_id", "status", "reason"))


def test_a_good_telemetry_message_is_read_and_a_bad_block_skipped():
    doc = {"msg_id": "a" * 32, "blocks": [{"dev": "inv1", "t": 5_000_000_000, "n": ["W", "Hz"], "v": [100.0, 50.0]},
                                          {"dev": "inv1", "t": "soon", "n": ["W"], "v": [1]},
                                          {"dev": "inv1", "t": 6_000_000_000, "n": ["W"], "v": [1, 2]}]}
    out = observe([Seen(P + "telemetry", doc, b"", 7.0)], P, 0)
    assert out["latency"] == [{"t": 7_000_000_000, "dev": "inv1", "t_read": 5_000_000_000, "backfill": False}]
    assert out["telemetry"]["inv1"]["W"] == [100.0] and out["telemetry"]["inv1"]["VAr"] == [None]


def test_an_inverter_producing_more_than_its_falling_pv_still_renders():
    """The plant's output follows its PV with a ramp, so for a moment it can exceed what the PV now gives; the
    throttle (ThrotPct, a uint16) was rendered negative and the refresh failed: the registers froze."""
    pv = [8000.0]
    sim = InverterSim(pv=lambda _t: pv[0])
    sim.plant.W = 8000.0
    pv[0] = 7000.0
    sim.refresh()
    assert sim.image.get(701)["ThrotPct"] == 0
