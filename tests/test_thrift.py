"""Data thrift (issue 18): every telemetry form through a real Outbox and back through the reference decoder
(gridedge.headend), report by exception's promise to the head-end, and bounded decompression (fuzzed)."""
from __future__ import annotations

import asyncio
import itertools
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge import compression
from gridedge.config import ConfigError, parse_config
from gridedge.config_telemetry import TELEMETRY, build_telemetry
from gridedge.core.model import BlockLayout, Detail, Sample, SampleBlock, Validity, flatten
from gridedge.core.schema import validate
from gridedge.headend import HeadEnd, decode
from gridedge.outbox import Outbox
from gridedge.telemetry_writer import TelemetryWriter

from .conftest import validate_message

T0 = 1_795_442_400_000_000_000
INV = BlockLayout("inv1", ["W", "VAr", "Hz", "PhVphA", "TotWhExp", "St"], ["W", "var", "Hz", "V", "Wh", ""])
MET = BlockLayout("m1", ["W", "Hz"], ["W", "Hz"])
BAD = (Validity.INVALID, Detail.TIMEOUT)


def reads(n: int = 40) -> list:
    """A PV inverter and a meter at 4 Hz: noise within and beyond the deadbands, a counter, a state, a bad read,
    and loose samples (they have no fixed layout)."""
    out = []
    for k in range(n):
        t = T0 + k * 250_000_000
        w = 5000.0 + (k % 7) * 3.0 + (400.0 if k >= 20 else 0.0)
        out.append(SampleBlock(INV, t, [w, -1.5, 50.0 + (k % 3) * 0.002, 230.1, 1_000_000 + k * 347, "MPPT"
                                        if k < 30 else "THROTTLED"],
                               [BAD, None, None, None, None, None] if k == 11 else None))
        out.append(SampleBlock(MET, t, [w - 10, 50.0]))
        if k % 10 == 0:
            out.append(Sample("inv1/WMaxLimPct", t, 100.0 - k, "%"))
    return out


MODES = list(itertools.product(("blocks", "layouts"), ("none", "deflate"), ("all", "exception")))


def send(tmp_path, form, comp, report, readings, **measurement) -> list:
    """The records the outbox stores for `readings`, as the agent makes them: blocks encoded on arrival, one message
    per beat of four reads, the layouts first."""
    cfg = build_telemetry(validate(TELEMETRY, {"form": form, "compression": comp, "report": report,
                                               "heartbeat_s": 5, "measurement": measurement})[0])
    w = TelemetryWriter(cfg, frozenset({"m1/W"}))
    with Outbox(tmp_path / f"{form}-{comp}-{report}.sqlite", gateway_id="gw-1") as box:
        records = []
        for beat in range(0, len(readings), 12):
            frags, n = [], 0
            for r in readings[beat:beat + 12]:
                f, k = w.block(r) if isinstance(r, SampleBlock) else w.samples([r])
                frags += [f] if isinstance(f, bytes) else (f or [])
                n += k
            items = [("layout", "p/" + suffix, body, "event") for suffix, body in w.take_layouts()]
            if frags:
                items.append(("telemetry", "p/telemetry", w.body("2026-12-07T00:00:00Z", frags, n), "telemetry"))
            records += box.append_many(items)
    return records


def receive(records, headend=None) -> list[Sample]:
    """What a head-end makes of the records, checking each against schemas/ and its announced content type."""
    headend = headend or HeadEnd()
    out = []
    for rec in records:
        ctype = compression.encoding_of(rec.payload)
        validate_message(rec.topic, decode(rec.payload, ctype))
        out += headend.take(rec.topic, rec.payload, ctype)
    return out


@pytest.mark.parametrize("form, comp, report", MODES)
def test_every_mode_decodes_to_the_samples_sent(tmp_path, form, comp, report):
    sent = reads()
    records = send(tmp_path, form, comp, report, sent, deadband=5.0, deadband_pct=0.0)
    got = receive(records)
    kinds = {json.loads(r.payload)["schema"] if r.payload[:1] == b"{" else None for r in records}
    assert (None in kinds) == (comp == "deflate")  # compressed messages are not JSON on the wire
    if report == "all":
        assert got == flatten(sent)
        return
    every = flatten(sent)
    assert set(got) < set(every) and len(got) < len(every) / 2
    held: dict[str, Sample] = {}
    gi = iter(got)
    pending = next(gi, None)
    for s in every:  # the head-end's promise: what it holds is within the deadband of every read, at every read
        while pending is not None and pending.ts_ns <= s.ts_ns:
            held[pending.point] = pending
            pending = next(gi, None)
        h = held[s.point]
        assert (h.validity, h.detail) == (s.validity, s.detail), s
        if s.unit in ("Wh", "") or s.point == "m1/W":  # counters, states and settled points: exact
            assert h.value == s.value, s
        else:
            assert abs(h.value - s.value) <= 5.0, s
            assert s.ts_ns - h.ts_ns < 5 * 10**9  # the heartbeat


def test_layouts_are_sent_once_and_a_block_waits_for_its_layout(tmp_path):
    records = send(tmp_path, "layouts", "deflate", "all", reads(8))
    layouts = [r for r in records if r.stream == "layout"]
    assert sorted(r.topic.split("/")[1:3] for r in layouts) == [["layout", "inv1"], ["layout", "m1"]]
    telem = [r for r in records if r.stream == "telemetry"]
    he = HeadEnd()
    assert receive(telem, he) == [] and len(he.waiting) == len(telem)  # no layout yet: the messages wait
    got = receive(layouts, he)  # the layouts arrive: the waiting messages are given, in their order
    assert sorted(got, key=lambda s: (s.ts_ns, s.point)) == sorted(flatten(reads(8)), key=lambda s: (s.ts_ns, s.point))
    assert receive(telem, he) == [] and he.duplicates == len(telem)  # a replay is recognised by its msg_id


def test_a_layout_message_whose_id_is_not_its_hash_is_refused(tmp_path):
    lay = next(r for r in send(tmp_path, "layouts", "none", "all", reads(1)) if r.stream == "layout")
    doc = json.loads(lay.payload)
    doc["u"][0] = "kW"
    with pytest.raises(ValueError, match="not the layout's hash"):
        HeadEnd().take(lay.topic, json.dumps(doc).encode())


def test_a_compressed_message_is_smaller_and_the_content_type_must_not_lie(tmp_path):
    plain = send(tmp_path, "blocks", "none", "all", reads(8))[0].payload
    packed = send(tmp_path, "blocks", "deflate", "all", reads(8))[0].payload
    assert len(packed) * 5 < len(plain)
    assert compression.encoding_of(packed) == "application/zlib" and compression.encoding_of(plain) == "application/json"
    with pytest.raises(compression.PayloadError, match="content type application/json but the payload is"):
        decode(packed, "application/json")
    with pytest.raises(compression.PayloadError, match="unknown content type"):
        decode(plain, "application/cbor")
    assert dict(decode(packed, "application/zlib; v=1"), msg_id=0) == dict(decode(plain), msg_id=0)


BOMB = compression.compress(b'{"a":"' + b" " * 20_000_000 + b'"}')  # 20 MB in ~20 KB


def test_a_zip_bomb_is_refused_before_it_is_held():
    assert len(BOMB) < 30_000
    with pytest.raises(compression.PayloadError, match="expands past 2097152 bytes"):
        decode(BOMB)
    with pytest.raises(compression.PayloadError, match="expands past 100 bytes"):
        compression.open_payload(compression.compress(b"x" * 101), limit=100)
    assert compression.open_payload(compression.compress(b"x" * 100), limit=100) == b"x" * 100


zlib_like = st.binary(max_size=300).map(lambda b: b"\x78\x9c" + b) | st.binary(max_size=300).map(
    lambda b: compression.compress(b)[:len(b) % 40 + 2] + b) | st.binary(max_size=300).map(
    lambda b: zlib.compress(b)) | st.binary(max_size=300)


@settings(max_examples=300, deadline=None)
@given(payload=zlib_like, ctype=st.sampled_from([None, "application/zlib", "application/json", "text/x"]),
       limit=st.integers(0, 400))
def test_fuzz_bounded_decompression(payload, ctype, limit):
    """Any bytes: at most `limit` bytes back, or PayloadError; never another exception."""
    try:
        out = compression.open_payload(payload, ctype, limit=limit)
    except compression.PayloadError:
        return
    assert len(out) <= limit


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**6, 10**6),
                                 st.none(), st.text(max_size=5)), min_size=2, max_size=2),
       blob=st.binary(max_size=64))
def test_fuzz_the_reference_decoder(values, blob):
    """A real message with bytes spliced in after its header: samples or ValueError, never another exception."""
    lay = BlockLayout("d", ["a", "b"], ["W", ""])
    w = TelemetryWriter(build_telemetry(validate(TELEMETRY, {"form": "layouts", "compression": "deflate"})[0]))
    frag, _ = w.block(SampleBlock(lay, T0, values))
    (suffix, body), = w.take_layouts()
    he = HeadEnd()
    layout = json.dumps(dict(body, gateway="g", stream="layout", seq=0, msg_id="0" * 32)).encode()
    assert he.take("p/" + suffix, layout) == []
    msg = compression.compress(b'{"schema":"gridedge.telemetry/3","gateway":"g","stream":"telemetry","seq":1,'
                               b'"msg_id":"' + b"1" * 32 + b'","ts":"2026-12-07T00:00:00Z",'
                               + w.body("x", [frag], 2).raw + b"}")
    assert [s.value for s in he.take("p/telemetry", msg)] == values
    for bad in (msg[:6] + blob + msg[6:], msg[:len(blob) % len(msg)], blob, layout[:len(blob)] + blob):
        for topic in ("p/telemetry", "p/" + suffix):
            try:
                he.take(topic, bad)
            except ValueError:
                pass


def test_configuration_refuses_what_it_cannot_do():
    base = {"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
            "devices": [{"id": "inv1", "driver": "sunspec_tcp", "host": "127.0.0.1"}]}
    with pytest.raises(ConfigError) as ei:
        parse_config(dict(base, telemetry={"compression": "zstd", "points": [{"match": "inv2/W", "deadband": 1}]}))
    assert any("telemetry.compression" in e and "deflate" in e for e in ei.value.errors), ei.value.errors
    assert any("telemetry.points[0].match: no device 'inv2'" in e for e in ei.value.errors), ei.value.errors
    cfg = parse_config(dict(base, telemetry={"report": "exception", "measurement": {"deadband_pct": 1},
                                             "points": [{"match": "*/Hz", "deadband": 0.01, "heartbeat_s": 60}]}))
    policy = cfg.telemetry.policy_of(frozenset({"inv1/W"}))
    assert policy("inv1", "Hz", "Hz").deadband == 0.01 and policy("inv1", "Hz", "Hz").heartbeat_ns == 60 * 10**9
    assert policy("inv1", "VAr", "var").deadband_pct == 1 and policy("inv1", "W", "W").exact
    assert policy("inv1", "TotWhExp", "Wh").exact


def test_the_agent_sends_layouts_compressed_and_its_command_path_refuses_a_zip_bomb(tmp_path):
    """The agent's own path: readings -> outbox records a head-end decodes; a compressed command that would
    inflate past the command limit is refused (audited, counted), the agent keeps going."""
    from gridedge.agent import Agent

    cfg = parse_config({"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
                        "storage": {"dir": str(tmp_path / "var")},
                        "telemetry": {"form": "layouts", "compression": "deflate"}})
    (tmp_path / "var").mkdir()
    agent = Agent(cfg)
    try:
        agent._telemetry(reads(4))
        agent._flush_telemetry()
        records = agent.outbox.pending(100)
        got = receive([r for r in records if r.stream in ("layout", "telemetry")])
        assert sorted(got, key=lambda s: (s.ts_ns, s.point)) == sorted(flatten(reads(4)),
                                                                       key=lambda s: (s.ts_ns, s.point))
        before = dict(agent.gate.counts)
        asyncio.run(agent.gate.handle(agent.topic("cmd") + "/dso", BOMB, "application/zlib"))
        assert agent.gate.counts["received"] == before["received"] + 1
        assert any(r.get("decision") == "rejected" and "expands past" in r.get("reason", "")
                   for r in agent._audit_pending), agent._audit_pending[-1:]
        # a compressed command goes where the same command uncompressed goes (here: to authentication, which refuses
        # both alike: the issuer is not configured)
        cmd = json.dumps({"schema": "gridedge.command/2", "cmd_id": "z1", "type": "traffic_light"}).encode()
        for payload in (compression.compress(cmd), cmd):
            asyncio.run(agent.gate.handle(agent.topic("cmd") + "/dso", payload))
        packed, plain = agent._audit_pending[-2:]
        assert (packed["decision"], packed["reason"]) == (plain["decision"], plain["reason"]) != ("rejected", "")
    finally:
        agent.outbox.close()
        agent.audit.close()
        agent.replay.close()


def test_the_documented_dictionary_and_layout_id_are_the_ones_in_use():
    """A head-end is written from docs/mqtt-api.md alone: its dictionary and its example layout id must be exact."""
    from pathlib import Path

    from gridedge.layouts import layout_id

    doc = (Path(__file__).resolve().parents[1] / "docs" / "mqtt-api.md").read_text()
    assert "\n" + compression.DICTIONARY.decode() + "\n" in doc
    assert f"the Adler-32 of the dictionary, `{compression.DICTIONARY_ID:#010x}`" in doc
    assert f'"id": "{layout_id("inv1", ["W", "Hz"], ["W", "Hz"])}", "n": ["W", "Hz"]' in doc


def test_end_to_end_compressed_layouts_by_exception_through_mosquitto_with_the_fleet_acl(tmp_path):
    """The agent, a register-map meter (pymodbus), mosquitto with TLS and the fleet ACL (a gateway may write its
    layouts), the DSO simulator decoding through the reference decoder; a head-end that subscribes later gets the
    retained layout from the broker."""
    from gridedge.agent import Agent
    from gridedge.drivers import regmap
    from gridedge.hil.acl import fleet_acl, gateway_patterns
    from gridedge.hil.broker import Mosquitto
    from gridedge.hil.dso_sim import DsoSimulator
    from gridedge.hil.modbus_sim import ModbusTcpSim, UnitSim
    from gridedge.hil.pki import make_pki
    from gridedge.mqtt import tls_context

    gw, prefix = "gw-thrift-1", "gridedge/v3/gw-thrift-1/"
    sdm = regmap.load_map(regmap.shipped_maps()["eastron_sdm630"])

    async def scenario():
        pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
        gw_cert, gw_key = pki.client(gw)
        he_cert, he_key = pki.client("headend.dso")
        broker = Mosquitto(tmp_path / "broker", pki, acl=fleet_acl({}, {"headend.dso": "dso"}),
                           acl_patterns=gateway_patterns())
        await asyncio.to_thread(broker.start)
        unit = UnitSim(1, sdm, {"W": 1234.0, "Hz": 50.01, "PhVphA": 231.0})
        meter = ModbusTcpSim({1: unit})
        stop, task, dsos = asyncio.Event(), None, []
        try:
            port = await meter.start()
            cfg = parse_config({
                "gateway": {"id": gw},
                "uplink": {"broker": broker.url, "ca_file": str(pki.ca_cert), "cert_file": str(gw_cert),
                           "key_file": str(gw_key), "telemetry_interval_ms": 200, "backfill_jitter_s": 0.0},
                "storage": {"dir": str(tmp_path / "var"), "durability": "normal"},
                "telemetry": {"form": "layouts", "compression": "deflate", "report": "exception",
                              "measurement": {"deadband": 5.0}},
                "devices": [{"id": "m1", "driver": "modbus_tcp", "role": "meter", "map": "eastron_sdm630",
                             "host": "127.0.0.1", "port": port, "points": ["W", "Hz", "PhVphA"], "poll_ms": 100}],
            }, "gateway.toml", tmp_path)
            agent = Agent(cfg)
            task = asyncio.create_task(agent.run(stop))
            tls = tls_context(pki.ca_cert, he_cert, he_key)
            dsos.append(DsoSimulator(broker.url, tls, prefix))
            dso = dsos[0]
            await dso.start()
            await dso.wait_for(lambda: dso.latest.get("W") == 1234.0, 30, "the first values")
            unit.set_values({"W": 1300.0})             # past the deadband: sent
            await dso.wait_for(lambda: dso.latest.get("W") == 1300.0, 30, "a change past the deadband")
            telem = [m for m in dso.seen if m.topic == prefix + "telemetry"]
            assert telem and all(m.content_type == "application/zlib" and m.raw[:1] == b"x" for m in telem)
            assert all(m.doc["schema"] == "gridedge.telemetry/3" for m in telem)
            assert dso.headend.duplicates == 0 and dso.headend.waiting == []
            for m in dso.seen:
                validate_message(m.topic, m.doc)
            late = DsoSimulator(broker.url, tls, prefix)   # subscribes now: the layout comes retained
            dsos.append(late)
            await late.start()
            unit.set_values({"W": 1400.0})
            await late.wait_for(lambda: late.latest.get("W") == 1400.0, 30, "a late head-end decodes")
            assert any(m.topic.startswith(prefix + "layout/m1/") for m in late.seen)
        finally:
            stop.set()
            if task is not None:
                await asyncio.wait_for(task, 30)
            for d in dsos:
                await d.stop()
            await meter.stop()
            await asyncio.to_thread(broker.stop)
    asyncio.run(asyncio.wait_for(scenario(), 100))
