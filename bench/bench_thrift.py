"""Data thrift (issue 18): bytes per datapoint on the wire, and the agent's CPU per datapoint, for each telemetry
form, on three reference gateways. Every message goes through the agent's encoder (gridedge.telemetry_writer) and a
real Outbox, and back through the reference decoder (gridedge.headend), which must return exactly what was sent.

    .venv/bin/python bench/bench_thrift.py [--minutes 10] [--site pv|meters|substation|all] [--codecs]

A datapoint is one value read from a device: report by exception sends fewer values for the same reads, so its
bytes are divided by the values read, not the values sent. "payload" is the MQTT payload; "MQTT" adds the PUBLISH
packet (fixed header, topic, packet id, the Content Type property); TLS adds 22-29 bytes per message and TCP/IP
40-52 per segment on top (not counted: they depend on the link, not on the form).

The signals: the rig's clear-sky PV profile (gridedge.hil.plant) and a load, at midday, with measurement noise
of a class-0.5 meter (seeded, so every run is the same): W/var/VA 0.2 % + 3 units, V 0.15 V, A 0.2 %, Hz 3 mHz,
PF 0.002, DC 0.2 %, temperature 0.05 K. Without the noise report by exception would flatter itself: a simulator's
steady values never change. Setpoints, limits and ratings are constant as they are in the field between commands.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import describe  # noqa: E402
from gridedge import compression  # noqa: E402
from gridedge.config_telemetry import TELEMETRY, build_telemetry  # noqa: E402
from gridedge.core.model import BlockLayout, SampleBlock, flatten  # noqa: E402
from gridedge.core.schema import validate  # noqa: E402
from gridedge.headend import HeadEnd  # noqa: E402
from gridedge.hil.plant import clear_sky_pv  # noqa: E402
from gridedge.outbox import Outbox  # noqa: E402
from gridedge.telemetry_writer import TelemetryWriter  # noqa: E402

#: The documented deadbands (docs/PERFORMANCE.md "Data thrift", examples in docs/mqtt-api.md): report = "exception".
DEADBANDS = {
    "heartbeat_s": 300,
    "measurement": {"deadband_pct": 1.0},
    "points": [
        {"match": "*/Hz", "deadband": 0.01},
        {"match": "*/PhVph*", "deadband": 1.0},
        {"match": "*/PF", "deadband": 0.01},
        {"match": "*/TmpCab", "deadband": 1.0},
        {"match": "*/A*", "deadband": 0.2, "deadband_pct": 1.0},
        {"match": "*/*W*", "deadband": 50.0, "deadband_pct": 1.0},
        {"match": "*/VA*", "deadband": 50.0, "deadband_pct": 1.0},
    ],
}
MODES = {  # name -> [telemetry] keys
    "today (blocks, JSON, every value)": {},
    "compression only": {"compression": "deflate"},
    "layouts + compression": {"form": "layouts", "compression": "deflate"},
    "layouts + compression + report by exception": {"form": "layouts", "compression": "deflate",
                                                    "report": "exception", **DEADBANDS},
    "layouts only (JSON)": {"form": "layouts"},
    "report by exception only (JSON)": {"report": "exception", **DEADBANDS},
    "layouts + compression + report by exception, 10-s beat": {"form": "layouts", "compression": "deflate",
                                                               "report": "exception", **DEADBANDS, "beat_s": 10},
}
"""beat_s: uplink.telemetry_interval_ms / 1000, how often the agent makes a telemetry message (default 1 s)."""

INVERTER = (("W", "W"), ("VAr", "var"), ("VA", "VA"), ("PF", ""), ("Hz", "Hz"), ("A", "A"), ("PhVphA", "V"),
            ("PhVphB", "V"), ("PhVphC", "V"), ("TotWhExp", "Wh"), ("TotWhImp", "Wh"), ("WMax", "W"),
            ("WMaxLimPct", "%"), ("WMaxLimPctEna", ""), ("WSet", "W"), ("WSetEna", ""), ("VArSet", "var"),
            ("VArSetEna", ""), ("WAval", "W"), ("VArAval", "var"), ("DCW", "W"), ("DCV", "V"), ("TmpCab", "°C"))
BATTERY = (("W", "W"), ("VAr", "var"), ("VA", "VA"), ("PF", ""), ("Hz", "Hz"), ("A", "A"), ("PhVphA", "V"),
           ("PhVphB", "V"), ("PhVphC", "V"), ("TotWhExp", "Wh"), ("TotWhImp", "Wh"), ("SoC", "%"), ("SoH", "%"),
           ("WHRtg", "Wh"), ("WHAvail", "Wh"), ("StorSt", ""), ("WChaRteMax", "W"), ("WDisChaRteMax", "W"),
           ("WSet", "W"), ("WSetEna", ""), ("DCW", "W"), ("DCV", "V"), ("TmpCab", "°C"))
METER = (("W", "W"), ("VAr", "var"), ("VA", "VA"), ("PF", ""), ("Hz", "Hz"), ("A", "A"), ("AphA", "A"),
         ("AphB", "A"), ("AphC", "A"), ("PhVphA", "V"), ("PhVphB", "V"), ("PhVphC", "V"), ("WphA", "W"),
         ("WphB", "W"), ("WphC", "W"), ("TotWhExp", "Wh"), ("TotWhImp", "Wh"))


class Device:
    """One device's reads: an AC power flow (w, var) given each instant, the rest derived, with meter noise."""

    def __init__(self, dev: str, points, rate_hz: float, rng: random.Random, **fixed) -> None:
        self.layout = BlockLayout(dev, [n for n, _ in points], [u for _, u in points])
        self.period_ns = int(1e9 / rate_hz)
        self.rng, self.fixed = rng, fixed
        self.wh_exp = self.wh_imp = 1_000_000.0
        self.soc = 62.0
        self.v = [230.0, 231.0, 229.5]
        self.hz = 50.0

    def read(self, t_ns: int, w: float, var: float) -> SampleBlock:
        g = self.rng.gauss
        dt_h = self.period_ns / 3.6e12
        self.wh_exp += max(w, 0) * dt_h
        self.wh_imp += max(-w, 0) * dt_h
        self.soc = min(95.0, max(5.0, self.soc - w * dt_h / 100.0))
        self.v = [v + g(0, 0.02) for v in self.v]  # the grid's voltage wanders slowly
        self.hz += g(0, 0.0005) - (self.hz - 50.0) * 0.01

        def pw(x):
            return round(x + g(0, abs(x) * 0.002 + 3))
        mw, mvar = pw(w), pw(var)
        va = math.hypot(w, var)
        amps = va / (3 * 230.0)
        known = {
            "W": mw, "VAr": mvar, "VA": pw(va), "PF": round(abs(w) / va + g(0, 0.002), 3) if va > 1 else 1.0,
            "Hz": round(self.hz + g(0, 0.003), 3), "A": round(3 * amps * (1 + g(0, 0.002)), 2),
            "PhVphA": round(self.v[0] + g(0, 0.15), 1), "PhVphB": round(self.v[1] + g(0, 0.15), 1),
            "PhVphC": round(self.v[2] + g(0, 0.15), 1), "TotWhExp": int(self.wh_exp), "TotWhImp": int(self.wh_imp),
            "AphA": round(amps * (1 + g(0, 0.002)), 2), "AphB": round(amps * (1 + g(0, 0.002)), 2),
            "AphC": round(amps * (1 + g(0, 0.002)), 2), "WphA": pw(w / 3), "WphB": pw(w / 3), "WphC": pw(w / 3),
            "SoC": round(self.soc, 1), "WHAvail": int(self.soc * 100), "DCW": pw(w * 1.03),
            "DCV": round(620 + g(0, 1.2), 1), "TmpCab": round(38 + g(0, 0.05), 1),
            "WAval": pw(max(w, 0) * 1.02), "VArAval": 4400,
        }
        return SampleBlock(self.layout, t_ns, [known[n] if n in known else self.fixed.get(n, 0)
                                               for n in self.layout.names])


def site(kind: str, seed: int = 18) -> tuple[list[Device], callable]:
    """The devices of a reference gateway and a function t_s -> {device: (w, var)}."""
    rng = random.Random(seed)
    pv = clear_sky_pv(9000.0)
    inv_fixed = dict(WMax=10000, WMaxLimPct=100, WMaxLimPctEna=0, WSet=0, WSetEna=0, VArSet=0, VArSetEna=0)
    bat_fixed = dict(SoH=98, WHRtg=10000, StorSt=3, WChaRteMax=5000, WDisChaRteMax=5000, WSet=-1500, WSetEna=1)
    load = {"w": 3000.0}

    if kind == "pv":
        devs = [Device("inv1", INVERTER, 1, rng, **inv_fixed), Device("bat1", BATTERY, 1, rng, **bat_fixed),
                Device("poc_meter", METER, 4, rng)]

        def flows(t_s: float) -> dict:
            load["w"] = max(500.0, load["w"] + rng.gauss(0, 15))
            p, b = pv(t_s), -1500.0
            return {"inv1": (p, 300.0), "bat1": (b, 0.0), "poc_meter": (p + b - load["w"], 300.0 - 800.0)}
    elif kind == "meters":
        devs = [Device(f"m{i}", METER, 1, rng) for i in range(1, 4)]

        def flows(t_s: float) -> dict:
            load["w"] = max(500.0, load["w"] + rng.gauss(0, 15))
            return {f"m{i}": (load["w"] * (0.5 + 0.25 * i), 400.0 * i) for i in range(1, 4)}
    else:  # a secondary substation: a transformer meter and 39 feeder/customer meters read every 5 s
        devs = [Device(f"m{i:02d}", METER, 0.2, rng) for i in range(40)]
        loads = [rng.uniform(2_000, 40_000) for _ in devs]

        def flows(t_s: float) -> dict:
            for i in range(len(loads)):
                loads[i] = max(200.0, loads[i] + rng.gauss(0, loads[i] * 0.003))
            return {d.layout.device: (-loads[i], -0.3 * loads[i]) for i, d in enumerate(devs)}
    return devs, flows


def readings(kind: str, minutes: float, beat_s: int = 1) -> list[list[SampleBlock]]:
    """One list of reads per telemetry beat (uplink.telemetry_interval_ms, default 1 s), from 12:00 UTC."""
    devs, flows = site(kind)
    t0 = 1_796_212_800 * 10**9  # 2026-12-02T12:00:00Z
    beats = []
    tick_ns = min(d.period_ns for d in devs)
    next_read = {d.layout.device: t0 for d in devs}
    beat: list[SampleBlock] = []
    t = t0
    while t < t0 + int(minutes * 60e9):
        f = flows((t - t0) / 1e9 + 12 * 3600)
        for d in devs:
            if t >= next_read[d.layout.device]:
                beat.append(d.read(t, *f[d.layout.device]))
                next_read[d.layout.device] += d.period_ns
        t += tick_ns
        if (t - t0) % (beat_s * 10**9) == 0:
            beats.append(beat)
            beat = []
    return beats


def publish_bytes(topic: str, payload: bytes, content_type: str) -> int:
    """The size of the MQTT 5 PUBLISH packet (QoS 1) that carries payload with its Content Type property."""
    props = 1 + 2 + len(content_type)
    body = 2 + len(topic) + 2 + 1 + props + len(payload)
    return 1 + len(_varint(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, b = n >> 7, n & 0x7F
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def run(kind: str, minutes: float, keys: dict, tmp: Path) -> dict:
    keys = dict(keys)
    beats = readings(kind, minutes, keys.pop("beat_s", 1))
    cfg = build_telemetry(validate(TELEMETRY, keys)[0])
    writer = TelemetryWriter(cfg)
    prefix = "gridedge/v3/gw-bench-001/"
    read = payload = wire = messages = 0
    records = []
    with Outbox(tmp / f"{kind}-{len(os.listdir(tmp))}.sqlite", gateway_id="gw-bench-001", durability="normal") as box:
        cpu0 = time.process_time()
        for k, beat in enumerate(beats):
            frags, n = [], 0
            for b in beat:
                f, m = writer.block(b)
                if f is not None:
                    frags.append(f)
                    n += m
            items = [("layout", prefix + s, body, "event") for s, body in writer.take_layouts()]
            if frags:
                items.append(("telemetry", prefix + "telemetry", writer.body(f"2026-12-02T12:00:{k % 60:02d}Z",
                                                                            frags, n), "telemetry"))
            records += box.append_many(items)
        cpu = time.process_time() - cpu0
    for rec in records:
        ctype = compression.encoding_of(rec.payload)
        payload += len(rec.payload)
        wire += publish_bytes(rec.topic, rec.payload, ctype)
        messages += 1
    read = sum(len(b) for beat in beats for b in beat)
    he = HeadEnd()
    got = [s for rec in records for s in he.take(rec.topic, rec.payload, compression.encoding_of(rec.payload))]
    if cfg.report == "all":
        assert got == flatten([b for beat in beats for b in beat]), "decoded samples differ from those sent"
    else:
        assert len(got) == writer.sent, (len(got), writer.sent)
    return {"read": read, "sent": writer.sent, "messages": messages, "payload": payload, "wire": wire, "cpu": cpu}


def codecs(kind: str, minutes: float, tmp: Path) -> None:
    """The choice of codec: the same JSON messages (today's form, and layouts + report by exception) through each
    candidate. zstd (python package zstandard, optional: a row is left out without it) with a dictionary trained on
    the first minute's messages, as a gateway could train one on its own layouts."""
    import zlib

    rows = []
    for form, keys in (("today", {}), ("layouts + exception", {"form": "layouts", "report": "exception",
                                                               **DEADBANDS})):
        beats = readings(kind, minutes)
        w = TelemetryWriter(build_telemetry(validate(TELEMETRY, keys)[0]))
        msgs, read = [], 0
        with Outbox(tmp / f"codec-{kind}-{len(os.listdir(tmp))}.sqlite", gateway_id="gw-bench-001",
                    durability="normal") as box:
            for beat in beats:
                read += sum(len(b) for b in beat)
                frags = [f for f, _ in (w.block(b) for b in beat) if f is not None]
                if frags:
                    msgs.append(box.append("telemetry", "t", w.body("2026-12-02T12:00:00Z", frags, 0),
                                           "telemetry").payload)
        cands = {"none": lambda m: m,
                 "deflate, no dictionary (zlib level 6)": lambda m: zlib.compress(m, 6),
                 "deflate + contract dictionary, level 6 (chosen)": compression.compress,
                 "deflate + contract dictionary, level 9": lambda m: _zd(m, 9)}
        try:
            import zstandard
            cands["zstd level 3, no dictionary"] = zstandard.ZstdCompressor(level=3).compress
            train = msgs[:60] * (1 if len(msgs[:60]) >= 10 else 10)
            zd = zstandard.train_dictionary(4096, train)
            cands["zstd level 3 + 4-KiB dictionary trained on the first minute"] = zstandard.ZstdCompressor(
                level=3, dict_data=zd).compress
        except ImportError:
            pass
        for name, fn in cands.items():
            t0 = time.process_time()
            size = sum(len(fn(m)) for m in msgs)
            cpu = time.process_time() - t0
            rows.append(f"| {form} | {name} | {size / read:.2f} | {cpu / read * 1e6:.2f} |")
    print(f"\n{kind}, codecs: | form | codec | payload B/datapoint | codec CPU us/datapoint |")
    print("\n".join(rows))


def _zd(m: bytes, level: int) -> bytes:
    import zlib
    c = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, compression.DICTIONARY)
    return c.compress(m) + c.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--site", choices=("pv", "meters", "substation", "all"), default="all")
    ap.add_argument("--codecs", action="store_true", help="also compare codecs on the same messages")
    a = ap.parse_args(argv)
    print(f"# {describe()}; load average {os.getloadavg()[0]:.2f}; {a.minutes:g} simulated minutes per site")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in (("meters", "pv", "substation") if a.site == "all" else (a.site,)):
            print(f"\n{kind}: | mode | values read | values sent | messages | payload B/datapoint | "
                  "MQTT B/datapoint | agent CPU us/datapoint |")
            for name, keys in MODES.items():
                r = run(kind, a.minutes, keys, Path(tmp))
                print(f"| {name} | {r['read']:,} | {r['sent']:,} | {r['messages']:,} | {r['payload'] / r['read']:.2f} "
                      f"| {r['wire'] / r['read']:.2f} | {r['cpu'] / r['read'] * 1e6:.2f} |", flush=True)
            if a.codecs:
                codecs(kind, a.minutes, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
