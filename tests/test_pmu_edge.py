"""PMUs at the edge (gridedge.pmu): decimation to report intervals, events at full rate with their window, and the
device against the rig's PMU simulator over real sockets: TCP, UDP commanded and spontaneous, mixed, a
configuration change mid-stream, several PMUs at 50 and 60 frames/s, and the simulator's feeder model."""
from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from gridedge.core.model import Detail, Validity
from gridedge.drivers import c37118 as c
from gridedge.drivers.pmu import LinkSpec
from gridedge.hil.feeder import Feeder
from gridedge.hil.pmu_sim import PmuSim, Signal, config, station
from gridedge.pmu import EventSettings, PmuDevice
from gridedge.pmu.channels import Channels
from gridedge.pmu.decimate import Decimator
from gridedge.pmu.events import Detector

from .aio import arun, until

NS = 10**9


def rows(cfg, n, fps=50, t0=1_790_000_000 * NS, **over):
    """n rows of a stream as the kernel lays them out: a steady 230 V three-phase set at 50 Hz, then `over`."""
    ch = Channels(cfg)
    ts = t0 + np.arange(n, dtype=np.int64) * (NS // fps)
    vals = np.zeros((n, len(ch.columns)))
    for i, col in enumerate(ch.columns):
        vals[:, i] = {"mag": 230.0, "ang": 0.1, "freq": 50.0, "rocof": 0.0}.get(col.kind, 0.0)
    stat = np.zeros((n, len(cfg.stations)), np.uint16)
    tq = np.zeros(n, np.uint8)
    for k, v in over.items():
        {"vals": vals, "stat": stat, "tq": tq}[k][...] = v
    return ch, ts, vals, stat, tq


CFG = config(7, 50, [station("ST", 7, phasors=4)])


def test_decimation_mean_min_max_last_and_quality():
    ch, ts, vals, stat, tq = rows(CFG, 100)                        # two seconds
    vals[:, 0] = np.arange(100)                                    # VA.mag 0..99
    stat[60] = 0xC000                                              # a frame the PMU says not to use
    vals[60, 0] = 1e9
    dec = Decimator("pmu1", ch, 1000)
    blocks = dec.fold(ts[:70], vals[:70], stat[:70], tq[:70]) + dec.fold(ts[70:], vals[70:], stat[70:], tq[70:])
    blocks += dec.flush()
    assert [b.ts_ns for b in blocks] == [ts[0], ts[50]]
    b0, b1 = ({n: (v, q) for n, v, q in zip(b.layout.names, b.values, b.quality or [None] * len(b.values))}
              for b in blocks)
    assert b0["ST.VA.mag"][0] == pytest.approx(24.5) and b0["ST.VA.mag.min"][0] == 0 and b0["ST.VA.mag.max"][0] == 49
    assert b0["ST.VA.mag.last"][0] == 49 and b0["ST.VA.mag"][1] is None
    assert b1["ST.VA.mag.max"][0] == 99 and b1["ST.VA.mag"][0] == pytest.approx((sum(range(50, 100)) - 60) / 49)
    assert b1["ST.VA.mag"][1] == (Validity.QUESTIONABLE, Detail.DEVICE_EXCEPTION)  # one frame left out
    assert blocks[0].tq.source == "device" and blocks[0].tq.synchronised


def test_angles_average_across_pi_and_unsynchronised_angles_are_doubtful():
    ch, ts, vals, stat, tq = rows(CFG, 50)
    ang = ch.columns.index(next(col for col in ch.columns if col.name == "ST.VA.ang"))
    vals[:, ang] = np.where(np.arange(50) % 2, math.pi - 0.01, -math.pi + 0.01)
    stat[:] = 0x2000
    dec = Decimator("pmu1", ch, 1000)
    dec.fold(ts, vals, stat, tq)
    (b,) = dec.flush()
    got = dict(zip(b.layout.names, b.values))
    assert abs(abs(got["ST.VA.ang"]) - math.pi) < 1e-9               # not 0, the mean of -pi+ and pi-
    assert got["ST.VA.ang.max"] - got["ST.VA.ang.min"] == pytest.approx(0.02)
    q = dict(zip(b.layout.names, b.quality))
    assert q["ST.VA.ang"] == (Validity.QUESTIONABLE, Detail.CLOCK) and q["ST.VA.mag"] is None
    assert not b.tq.synchronised


def test_channels_with_their_own_report_interval():
    ch, ts, vals, stat, tq = rows(CFG, 50)
    dec = Decimator("pmu1", ch, 1000, {"Hz": 200, "ST.VA": 500})
    blocks = dec.fold(ts, vals, stat, tq) + dec.flush()
    by = {}
    for b in blocks:
        by.setdefault(b.layout.names[0], []).append(b.ts_ns)
    assert len(by["ST.Hz"]) == 5 and len(by["ST.VA.mag"]) == 2 and len(by["ST.VB.mag"]) == 1


SETTINGS = EventSettings(rocof_hz_per_s=1.0, f_min_hz=49.8, f_max_hz=50.2, angle_jump_deg=10.0, sag_pu=0.9,
                         swell_pu=1.1, v_nom_v=230.0, holdoff_s=1.0)


@pytest.mark.parametrize("kind, change", [
    ("rocof", {"HzRte": 2.0}), ("over_frequency", {"Hz": 50.3}), ("under_frequency", {"Hz": 49.5}),
    ("sag", {"VA.mag": 150.0}), ("swell", {"VB.mag": 260.0}), ("angle_jump", {"VA.ang": 0.6}),
    ("sync_loss", {"stat": 0x2000}), ("pmu_trigger", {"stat": 0x0805})])
@pytest.mark.parametrize("batch", [1, 3])                          # a frame per read (its own path), or several
def test_each_event_once_per_episode(kind, change, batch):
    ch, ts, vals, stat, tq = rows(CFG, 200)
    names = [col.name for col in ch.columns]
    for key, v in change.items():
        if key == "stat":
            stat[80:120] = v
        else:
            vals[80:120, names.index(f"ST.{key}")] = v
    det = Detector(ch, SETTINGS)
    found = []
    for i in range(0, 200, batch):                                 # batches as reads deliver them
        found += [(f.kind, int(i + f.row)) for f in det.check(ts[i:i + batch], vals[i:i + batch],
                                                              stat[i:i + batch])]
    expected = [(kind, 80)]             # the way back (a jump, a frequency drop...) is the same episode
    assert found == expected


def test_an_episode_after_the_holdoff_is_a_new_event_and_bad_frames_are_not_checked():
    ch, ts, vals, stat, tq = rows(CFG, 300)
    hz = [col.name for col in ch.columns].index("ST.Hz")
    vals[10:20, hz] = vals[30:40, hz] = vals[200:210, hz] = 51.0      # 0.2 s apart (one episode), then 3.2 s later
    vals[250, hz] = 99.0
    stat[250] = 0x8000                                            # "do not use": not an event
    det = Detector(ch, SETTINGS)
    found = [f.ts_ns for f in det.check(ts, vals, stat)]
    assert found == [ts[10]]
    det = Detector(ch, SETTINGS)
    found = [f.ts_ns for i in range(300) for f in det.check(ts[i:i + 1], vals[i:i + 1], stat[i:i + 1])]
    assert found == [ts[10], ts[200]]


def test_the_frequency_offset_is_not_an_angle_jump():
    """At 50.4 Hz a 50 Hz-referenced phasor turns 2.9 degrees a frame at 50 fps: steady rotation, no event."""
    ch, ts, vals, stat, tq = rows(CFG, 100)
    names = [col.name for col in ch.columns]
    vals[:, names.index("ST.Hz")] = 50.4
    for p in "ABC":
        vals[:, names.index(f"ST.V{p}.ang")] = np.remainder(np.arange(100) * 2 * math.pi * 0.4 / 50 + math.pi,
                                                            2 * math.pi) - math.pi
    det = Detector(ch, EventSettings(angle_jump_deg=2.0))
    assert det.check(ts, vals, stat) == []
    det = Detector(ch, EventSettings(angle_jump_deg=2.0))
    assert [f for i in range(100) for f in det.check(ts[i:i + 1], vals[i:i + 1], stat[i:i + 1])] == []


# ---------------------------------------------------------------- the device against the simulator

def device(sim: PmuSim, mode: str = "tcp", udp_port: int = 0, **kw) -> tuple[PmuDevice, list, list]:
    spec = LinkSpec(mode, "127.0.0.1", sim.port if mode in ("tcp", "mixed") else sim.udp_port, udp_port,
                    sim.cfg.idcode, kw.pop("cfg", 2), 2.0)
    dev = PmuDevice("pmu1", spec, settings=kw.pop("settings", SETTINGS), report_ms=kw.pop("report_ms", 200))
    blocks, events = [], []
    dev.on_event = lambda kind, body: events.append((kind, body))
    dev._sink = blocks.extend
    return dev, blocks, events


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["tcp", "udp", "udp_spontaneous", "mixed"])
def test_data_paths(mode):
    async def scenario():
        port = free_udp_port()
        sim_kw = {"mixed": {"mixed_udp_port": port}, "udp_spontaneous": {"spontaneous_to": ("127.0.0.1", port)}}
        async with PmuSim(config(7, 50, [station("ST", 7)]), Signal(), **sim_kw.get(mode, {})) as sim:
            dev, blocks, events = device(sim, mode, port)
            task = asyncio.create_task(dev.client.run())
            try:
                await until(lambda: len(blocks) >= 3, 15)
            finally:
                task.cancel()
                await dev.close()
            names = blocks[-1].layout.names
            assert "ST.VA.mag" in names and all(b.tq.source == "device" for b in blocks)
            if mode != "udp_spontaneous":
                assert c.CMD_DATA_ON in sim.commands and c.CMD_CFG2 in sim.commands
            else:
                assert sim.commands == []
            if mode in ("udp", "mixed", "udp_spontaneous"):
                assert dev.client._udp is None and dev.client.decoder.counts.frames > 0
    arun(scenario(), 40)


def test_a_configuration_change_mid_stream_and_cfg3():
    async def scenario():
        async with PmuSim(config(7, 50, [station("ST", 7, phasors=2)], kind=c.CFG3), Signal()) as sim:
            dev, blocks, _ = device(sim, cfg=3)
            task = asyncio.create_task(dev.client.run())
            try:
                await until(lambda: any("ST.VA.mag" in b.layout.names for b in blocks), 15)
                sim.change_config(config(7, 50, [station("ST", 7, phasors=4), station("ST2", 8)]), 5)
                await until(lambda: any("ST2.VA.mag" in b.layout.names for b in blocks), 15)
                n = dev.client.decoder.counts.frames
                await until(lambda: dev.client.decoder.counts.frames > n + 20, 5)
            finally:
                task.cancel()
                await dev.close()
            assert c.CMD_CFG3 in sim.commands and c.CMD_CFG2 not in sim.commands
            assert dev.client.decoder.streams[7].generation == 1
            assert any("ST.IA.mag" in b.layout.names for b in blocks)
    arun(scenario(), 40)


def test_several_pmus_at_50_and_60_fps_and_events_with_their_window():
    async def scenario():
        sims = [PmuSim(config(k + 1, fps, [station(f"P{k}", k + 1, fmt=fmt)]), Signal(f_nom=f))
                for k, (fps, fmt, f) in enumerate([(50, 0, 50.0), (60, c.FMT_PH_FLOAT | c.FMT_POLAR | 8, 60.0),
                                                   (50, c.FMT_POLAR, 50.0)])]
        for s in sims:
            await s.start()
        devs = []
        try:
            for s in sims:
                s.signals[0].f_hz = s.signals[0].f_nom
                settings = EventSettings(rocof_hz_per_s=1.0, before_s=0.4, after_s=0.4)
                devs.append(device(s, settings=settings))
            tasks = [asyncio.create_task(d.client.run()) for d, _, _ in devs]
            await until(lambda: all(len(b) >= 2 for _, b, _ in devs), 15)
            await until(lambda: all(d.client.decoder.counts.frames > 60 for d, _, _ in devs), 15)  # history to show
            sims[1].signals[0].frequency_step(0.1)                # 6 Hz/s at 60 fps
            await until(lambda: any(k == "event_window" for k, _ in devs[1][2]), 10)
        finally:
            for t in tasks:
                t.cancel()
            for d, _, _ in devs:
                await d.close()
            for s in sims:
                await s.stop()
        (kind, ev), (kind2, win) = devs[1][2][:2]
        assert (kind, ev["kind"], ev["station"], kind2) == ("event", "rocof", "P1", "event_window")
        assert ev["value"] == pytest.approx(6.0, rel=1e-3) and ev["tq"]["src"] == "device"
        t = [win["t0"] + dt for dt in win["dt"]]
        assert t[0] <= ev["t"] - 0.38 * NS and t[-1] >= ev["t"] + 0.38 * NS    # the window before and after
        assert len(t) == pytest.approx(0.8 * 60, abs=3) and not win["truncated"]
        hz = win["v"][win["n"].index("P1.Hz")]
        assert hz[0] == pytest.approx(60.0, abs=1e-4) and hz[-1] == pytest.approx(60.1, abs=1e-4)
        assert devs[0][2] == [] and devs[2][2] == []                  # the others saw nothing
    arun(scenario(), 60)


def test_the_simulated_voltage_angle_moves_with_the_der_power():
    """The feeder model: more export at the DER's node raises the voltage and advances its angle (x P - r Q)."""
    feeder = Feeder([(0.3, 0.6)], v_nom_v=230.0)
    sig = Signal(feeder=feeder)
    st = station("ST", 1)
    feeder.set_injection(1, "inv", 0.0, 0.0)
    d0 = sig.data(st, 0.02)
    feeder.set_injection(1, "inv", 9000.0, 0.0)
    d1 = sig.data(st, 0.02)
    a0, a1 = (math.atan2(d.phasors[0].imag, d.phasors[0].real) for d in (d0, d1))
    assert a1 - a0 == pytest.approx(0.6 * 9000 / (3 * 230.0**2), rel=1e-6)
    assert abs(d1.phasors[0]) > abs(d0.phasors[0])
    assert abs(d1.phasors[3]) == pytest.approx(9000 / (3 * abs(d1.phasors[0])), rel=1e-9)   # IA of the DER


def test_the_commented_pmu_in_the_example_is_a_valid_device():
    """examples/gateway.toml's PMU, uncommented, parses and builds the device it describes."""
    import tomllib
    from pathlib import Path

    from gridedge.config import parse_config
    from gridedge.devices import make_device

    text = (Path(__file__).resolve().parents[1] / "examples" / "gateway.toml").read_text()
    block = text[text.index("# [[devices]]\n# id = \"pmu1\""):].split("\n\n")[0]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.splitlines())
    data = {"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True}}
    data.update(tomllib.loads(uncommented))
    (cfg,) = parse_config(data, "gateway.toml").devices
    dev = make_device(cfg)
    assert isinstance(dev, PmuDevice) and dev.report_ms == 1000 and dev.report == {"Hz": 200, "FEEDER1.VA": 500}
    s = dev.settings
    assert (s.rocof_hz_per_s, s.f_min_hz, s.f_max_hz, s.angle_jump_deg, s.sag_pu, s.swell_pu, s.v_nom_v) == (
        1.0, 49.8, 50.2, 10.0, 0.9, 1.1, 11547.0)
    assert (s.before_s, s.after_s, s.holdoff_s, s.sync_loss, s.trigger) == (2.0, 2.0, 5.0, True, True)
    assert (dev.client.spec.transport, dev.client.spec.port, dev.client.spec.idcode) == ("tcp", 4712, 1)
