"""Interoperability of gridedge's C37.118.2 with two independent stacks: pypmu (`synchrophasor`, BSD-3, test only)
as a PMU feeding gridedge's client and as a PDC reading the rig's simulator, and Wireshark's dissector (tshark) on a
loopback capture of the simulator talking to gridedge's client (its commands and the PMU's frames).

pypmu 1.0.0a0 is patched here only, and only where it cannot run at all:
- frame.py uses `collections.Sequence` (gone in Python 3.10): its module's `collections` is replaced by a namespace
  whose Sequence is collections.abc.Sequence;
- Pdc.get() decodes nothing when two frames arrive in one recv() (pypmu#8/#10): the test's Pdc reads exactly one
  frame (its 4-byte head, then the rest of FRAMESIZE).
pypmu's set_time() makes FRACSEC from the decimal digits of the time (0.05 s becomes 5 us): the frames fed to gridedge
carry time stamps set by the test instead."""
from __future__ import annotations

import asyncio
import collections.abc
import json
import logging
import math
import shutil
import signal
import socket
import subprocess
import types

import pytest

from gridedge.drivers import c37118 as c
from gridedge.drivers.pmu import LinkSpec
from gridedge.hil.pmu_sim import PmuSim, Signal, config, station
from gridedge.pmu import PmuDevice

from .aio import arun, until

synchrophasor = pytest.importorskip("synchrophasor")
from synchrophasor import frame as pypmu_frame  # noqa: E402
from synchrophasor.frame import DataFrame, HeaderFrame  # noqa: E402
from synchrophasor.pdc import Pdc  # noqa: E402
from synchrophasor.pmu import Pmu  # noqa: E402


@pytest.fixture(autouse=True)
def patched_pypmu(monkeypatch):
    monkeypatch.setattr(pypmu_frame, "collections", types.SimpleNamespace(Sequence=collections.abc.Sequence))
    for name in ("synchrophasor.pmu", "synchrophasor.pdc"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.WARNING)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the PMU closed the connection")
        out += chunk
    return out


class OneFramePdc(Pdc):
    """pypmu's Pdc reading exactly one frame per get() (its own loses both when two arrive in one read)."""

    def get(self):
        head = _recv_exactly(self.pmu_socket, 4)
        data = head + _recv_exactly(self.pmu_socket, int.from_bytes(head[2:4], "big") - 4)
        return pypmu_frame.CommonFrame.convert2frame(data, self.pmu_cfg2)


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def test_pypmu_pmu_feeds_gridedges_client():
    """pypmu's sample PMU (its IEEE example configuration: 4 integer rectangular phasors, 3 float analogs, a digital
    word, integer frequency, 60 Hz) serves gridedge's client; the values are the ones C37.118.2 defines for what
    pypmu encoded: phasor x PHUNIT x 1e-5, FNOM + FREQ/1000, the analogs as they are, the word."""
    pmu = Pmu(pmu_id=7734, data_rate=50, port=free_port(), ip="127.0.0.1", set_timestamp=False)
    pmu.set_configuration()
    pmu.set_header("pypmu as a test peer")
    pmu.run()
    sample = pmu.ieee_data_sample
    soc0 = 1_790_000_000

    async def scenario():
        spec = LinkSpec("tcp", "127.0.0.1", pmu.port, 0, 7734, 2, 2.0)
        dev = PmuDevice("pmu1", spec, report_ms=200)
        blocks = []
        dev._sink = blocks.extend
        task = asyncio.create_task(dev.client.run())
        try:
            await until(lambda: pmu.client_buffers, 10)
            for i in range(60):
                sample.set_time(soc0 + i // 50, (i % 50) * 20_000)
                pmu.client_buffers[0].put(sample.convert2bytes())
            await until(lambda: dev.client.decoder.counts.frames >= 60, 20)
        finally:
            task.cancel()
            await dev.close()
        return dev, blocks

    try:
        dev, blocks = arun(scenario(), 40)
    finally:
        for p in pmu.clients:
            p.terminate()
            p.join(5)
        pmu.socket.close()
    good = [b for b in blocks if soc0 * 10**9 <= b.ts_ns < (soc0 + 2) * 10**9]   # the fed frames' intervals
    got = dict(zip(good[-1].layout.names, good[-1].values))
    units = [u for u, _ in pmu.cfg2.get_ph_units()]
    for (name, (re, im)), unit in zip(zip(("VA", "VB", "VC", "I1"), [(14635, 0), (-7318, -12676), (-7318, 12675),
                                                                     (1092, 0)]), units):
        assert got[f"Station_A.{name}.mag.last"] == pytest.approx(math.hypot(re, im) * unit * 1e-5, rel=1e-6)
        assert got[f"Station_A.{name}.ang.last"] == pytest.approx(math.atan2(im, re), abs=1e-6)
    assert got["Station_A.Hz.last"] == pytest.approx(60 + 2500 / 1000) and got["Station_A.HzRte.last"] == 0
    assert [got[f"Station_A.ANALOG{i}.last"] for i in (1, 2, 3)] == [100, 1000, 10000]
    assert got["Station_A.Dig0"] == 0x3C12
    # pypmu's PMU may lose our first commands (two in one read): the stream then starts a little later
    b = good[-1]
    assert b.ts_ns % (200 * 10**6) == 0 and soc0 * 10**9 <= b.ts_ns < (soc0 + 2) * 10**9
    assert b.tq.source == "device" and b.tq.synchronised


def test_pypmu_pdc_reads_the_simulator():
    """pypmu's PDC against the rig's simulator: header, CFG-2, data on, data frames whose values are the
    simulator's (a stiff 230 V, 50 Hz grid), data off."""
    async def scenario():
        async with PmuSim(config(7, 50, [station("FEEDER1", 7)]), Signal(f_nom=50.0), udp_port=None) as sim:
            def pdc_session():
                pdc = OneFramePdc(pdc_id=7, pmu_ip="127.0.0.1", pmu_port=sim.port)
                pdc.run()
                try:
                    header = pdc.get_header()
                    cfg = pdc.get_config("cfg2")
                    pdc.start()
                    frames = []
                    while len(frames) < 25:
                        f = pdc.get()
                        if isinstance(f, DataFrame):
                            frames.append(f)
                    pdc.stop()
                    return header, cfg, frames
                finally:
                    pdc.quit()
            header, cfg, frames = await asyncio.to_thread(pdc_session)
            return sim, header, cfg, frames
    sim, header, cfg, frames = arun(scenario(), 40)
    assert isinstance(header, HeaderFrame) and header.get_header() == "b'gridedge rig PMU'"  # pypmu: str() of the bytes
    assert cfg.get_id_code() == 7 and cfg.get_station_name().strip() == "FEEDER1" and cfg.get_data_rate() == 50
    assert [n.strip() for n in cfg.get_channel_names()[:4]] == ["VA", "VB", "VC", "IA"]
    assert c.CMD_DATA_ON in sim.commands and c.CMD_DATA_OFF in sim.commands
    for f in frames:
        m = f.get_measurements()
        assert m["pmu_id"] == 7
        va = m["measurements"][0]["phasors"][0]
        assert m["measurements"][0]["frequency"] == pytest.approx(50.0, abs=1e-3)
        assert math.hypot(*va) == pytest.approx(230.0, rel=1e-3)


def _tshark_missing() -> str | None:
    if not shutil.which("tshark") or not shutil.which("dumpcap"):
        return "tshark/dumpcap are not installed (Debian package tshark; ./run installs it)"
    return None


@pytest.mark.skipif(_tshark_missing() is not None, reason=str(_tshark_missing()))
def test_tshark_decodes_the_simulator_and_gridedges_commands(tmp_path):
    """A loopback capture of gridedge's client and the simulator (CFG-2 and data, a PDC's stream of two stations,
    polar float phasors on one): Wireshark's synphasor dissector finds no error, every checksum good, gridedge's
    commands as C37.118 commands, and per data frame the same time stamp, STAT bits and frequencies as gridedge's
    decoder."""
    pcap = tmp_path / "c37118.pcapng"
    cfg = config(9, 50, [station("FEEDER1", 9), station("FEEDER2", 10, fmt=c.FMT_PH_FLOAT | c.FMT_POLAR)])

    async def scenario():
        sig = Signal(f_nom=50.0)
        sig.frequency_step(0.037)                            # 37 mHz off nominal
        async with PmuSim(cfg, sig, udp_port=None) as sim:
            probe = free_udp_port()
            cap = await asyncio.create_subprocess_exec(
                "dumpcap", "-q", "-i", "lo", "-f", f"tcp port {sim.port} or udp port {probe}", "-w", str(pcap),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                # "Capturing on" comes before the filter is in place: capturing is when a probe datagram (to a port
                # nobody listens on) reaches the file, which dumpcap writes as it goes (Wireshark reads it live)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    def probed():
                        s.sendto(b"probe", ("127.0.0.1", probe))
                        return pcap.exists() and b"probe" in pcap.read_bytes()
                    await until(probed, 15, every=0.1)
                spec = LinkSpec("tcp", "127.0.0.1", sim.port, 0, 9, 2, 2.0)
                dev = PmuDevice("pmu1", spec, report_ms=200)
                dev._sink = lambda blocks: None
                task = asyncio.create_task(dev.client.run())
                try:
                    await until(lambda: dev.client.decoder.counts.frames >= 25, 15)
                    sig.lose_sync()                          # STAT bit and time-quality code on the wire
                    await until(lambda: dev.client.decoder.counts.frames >= 50, 15)
                finally:
                    task.cancel()
                    await dev.close()
            finally:
                cap.send_signal(signal.SIGINT)
                await asyncio.wait_for(cap.wait(), 15)
            return sim.port
    port = arun(scenario(), 45)
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},synphasor", "-Y", "synphasor",
                          "-T", "json", "-e", "synphasor.frtype", "-e", "synphasor.command", "-e",
                          "synphasor.checksum.status", "-e", "_ws.expert", "-e", "_ws.malformed", "-e",
                          "synphasor.timeqal.timequalindic", "-e", "synphasor.fracsec_raw", "-e",
                          "synphasor.frequency_deviation_from_nominal", "-e", "synphasor.data.sync", "-e",
                          "synphasor.data.status", "-e", "tcp.payload"],
                         capture_output=True, text=True, timeout=60, check=True)
    packets = [p["_source"]["layers"] for p in json.loads(out.stdout)]
    assert packets, "tshark saw no C37.118 frame"
    commands, data, unsynced = [], 0, 0
    for layers in packets:
        assert "_ws.malformed" not in layers, layers
        # the dissector's only remark: a note where the STAT says the PMU is not synchronised (the script's)
        assert all("PMU not sync flag set" in e for e in layers.get("_ws.expert", [])), layers
        assert set(layers["synphasor.checksum.status"]) == {"1"}, layers     # 1: good (0 bad, 2 unverified)
        payload = bytes.fromhex(layers["tcp.payload"][0].replace(":", ""))
        frames, pos = [], 0
        while pos < len(payload):
            size = int.from_bytes(payload[pos + 2:pos + 4], "big")
            frames.append(c.parse_frame(payload[pos:pos + size]))
            pos += size
        types_ = [int(t, 0) for t in layers["synphasor.frtype"]]
        assert types_ == [f.type for f in frames]
        cmds = [c.decode_command(f)[0] for f in frames if f.type == c.CMD]
        assert cmds == [int(x, 0) for x in layers.get("synphasor.command", [])]
        commands += cmds
        if types_ == [c.DATA]:
            data += 1
            (f,) = frames
            _, stations = c.decode_data(f, cfg)
            assert int(layers["synphasor.fracsec_raw"][0]) == f.fracsec & 0xFFFFFF
            assert int(layers["synphasor.timeqal.timequalindic"][0], 0) == f.tq & 0x0F
            assert [int(x) for x in layers["synphasor.frequency_deviation_from_nominal"]] == [
                round((s.freq - 50.0) * 1000) for s in stations]
            # Wireshark's "sync" field is the STAT bit, set when the PMU is NOT synchronised
            sync_bits = [x in ("1", "True", "true") for x in layers["synphasor.data.sync"]]
            assert sync_bits == [bool(s.stat & 0x2000) for s in stations]
            assert [int(x, 0) for x in layers["synphasor.data.status"]] == [s.stat >> 14 for s in stations]
            unsynced += sync_bits[0]
    assert c.CMD_CFG2 in commands and c.CMD_DATA_ON in commands and data >= 40 and 0 < unsynced < data
