"""C37.118.2 figures (docs/PERFORMANCE.md, "PMUs"):

1. data-frame decode, frames/s, on the same frames (one TCP read's worth, back to back): gridedge's compiled kernel
   (CRC checked, values scaled into its numpy ring), its pure-Python twin, a plain-Python `struct` decoder (CRC with
   binascii.crc_hqx, values into a list) and pypmu (`synchrophasor`, test extra; patched for Python 3.10+ as in
   tests/test_pmu_interop.py); one station with 4 phasors, and a PDC's 10 stations with 6 phasors;
2. 10 PMUs at 50 frames/s through the whole device path (stream decoder, kernel, decimation to 1 s, event
   detection), one frame per read as TCP delivers them: CPU time per second of stream, as % of one core.

Run: .venv/bin/python bench/bench_pmu.py [--quick]
"""
from __future__ import annotations

import argparse
import binascii
import collections.abc
import struct
import time
import types

from gridedge.cext import pmu_twin
from gridedge.cext.pmu import IMPLEMENTATION, DataDecoder
from gridedge.drivers import c37118 as c
from gridedge.drivers.pmu import LinkSpec
from gridedge.hil.pmu_sim import Signal, config, station
from gridedge.pmu import EventSettings, PmuDevice
from measure import describe  # bench/measure.py: the script's folder is on sys.path

SOC = 1_790_000_000


def stream(nst: int, nph: int, n: int, fps: int = 50, idcode: int = 7) -> tuple[c.Config, list[bytes]]:
    cfg = config(idcode, fps, [station(f"ST{k}", 100 + k, phasors=nph) for k in range(nst)])
    sig = Signal(f_nom=50.0)
    period = cfg.time_base // fps
    frames = [c.encode_data(cfg, SOC + i // fps, (i % fps) * period,
                            [sig.data(st, 1 / fps) for st in cfg.stations]) for i in range(n)]
    return cfg, frames


def struct_decoder(cfg: c.Config):
    """The plain-Python reference: CRC, header, and per station STAT, integer rectangular phasors, FREQ, DFREQ."""
    stations = [(len(s.phasors), [x for x in s.ph_scale]) for s in cfg.stations]
    head = struct.Struct(">BBHHII")

    def decode(buf: bytes) -> list:
        out, pos, n = [], 0, len(buf)
        while pos < n:
            size = buf[pos + 2] << 8 | buf[pos + 3]
            if binascii.crc_hqx(buf[pos:pos + size - 2], 0xFFFF) != (buf[pos + size - 2] << 8 | buf[pos + size - 1]):
                raise ValueError("CRC")
            _, _, _, idcode, soc, frac = head.unpack_from(buf, pos)
            i = pos + 14
            row = [soc, frac]
            for nph, scale in stations:
                vals = struct.unpack_from(f">H{2 * nph}hhh", buf, i)
                row.append(vals[0])
                row += [v * scale[k // 2] for k, v in enumerate(vals[1:1 + 2 * nph])]
                row += [vals[-2] / 1000 + 50.0, vals[-1] / 100]
                i += 2 + 4 * nph + 4
            out.append(row)
            pos += size
        return out
    return decode


def pypmu_decoder(cfg: c.Config):
    try:
        from synchrophasor import frame
    except ImportError:
        return None
    frame.collections = types.SimpleNamespace(Sequence=collections.abc.Sequence)
    cfg2 = frame.CommonFrame.convert2frame(c.encode_config(cfg, c.CFG2))

    def decode(frames: list[bytes]) -> list:
        return [frame.CommonFrame.convert2frame(f, cfg2) for f in frames]
    return decode


def rate(fn, arg, n_frames: int, seconds: float) -> float:
    """Frames/s: the best of repeated runs over `seconds` (the least disturbed by the rest of the machine)."""
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            return n_frames / best


def bench_decode(quick: bool) -> None:
    secs = 0.5 if quick else 3.0
    for nst, nph, n in ((1, 4, 5000), (10, 6, 1000)):
        cfg, frames = stream(nst, nph, n)
        buf = b"".join(frames)
        layout = cfg.kernel_layout()
        kernel = DataDecoder(cfg.idcode, cfg.data_frame_size, cfg.time_base, *layout, capacity=n)
        twin = pmu_twin.DataDecoder(cfg.idcode, cfg.data_frame_size, cfg.time_base, *layout, capacity=n)
        figures = {f"gridedge {IMPLEMENTATION}": rate(kernel.feed, buf, n, secs),
                   "struct": rate(struct_decoder(cfg), buf, n, secs),
                   "gridedge twin": rate(twin.feed, b"".join(frames[: n // 10]), n // 10, secs / 3)}
        py = pypmu_decoder(cfg)
        figures["pypmu"] = rate(py, frames[: n // 10], n // 10, secs / 3) if py else None
        line = ", ".join(f"{k} {v:,.0f}" if v else f"{k}: not installed" for k, v in figures.items())
        print(f"decode, {nst} station(s) x {nph} phasors ({cfg.data_frame_size} bytes/frame), frames/s: {line}")


def bench_device_path(quick: bool) -> None:
    seconds = 10 if quick else 60
    devs, streams = [], []
    for k in range(10):
        cfg, frames = stream(1, 6, seconds * 50, idcode=k + 1)
        dev = PmuDevice(f"pmu{k}", LinkSpec("tcp", "127.0.0.1", 4712, 0, k + 1, 2, 2.0), report_ms=1000,
                        settings=EventSettings(rocof_hz_per_s=1.0, f_min_hz=49.8, f_max_hz=50.2, angle_jump_deg=10,
                                               sag_pu=0.9, swell_pu=1.1, v_nom_v=230.0))
        dev._sink = lambda blocks: None
        dev.on_event = lambda kind, body: None
        dev.client.received(c.encode_config(cfg, c.CFG2), False)
        devs.append(dev)
        streams.append(frames)
    t0 = time.process_time()
    for i in range(seconds * 50):
        for dev, frames in zip(devs, streams):
            dev.client.received(frames[i], False)
    cpu = time.process_time() - t0
    frames_done = sum(d.client.decoder.counts.frames for d in devs)
    print(f"10 PMUs x 50 frames/s x {seconds} s, one frame per read, decode + decimation (1 s) + 7 event checks: "
          f"{frames_done} frames, CPU {cpu:.3f} s = {100 * cpu / seconds:.2f} % of one core")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(describe())
    bench_decode(args.quick)
    bench_device_path(args.quick)


if __name__ == "__main__":
    main()
