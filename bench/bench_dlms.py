"""DLMS/COSEM figures (docs/PERFORMANCE.md, "DLMS/COSEM meters"):

1. decode of a one-day 15-minute load profile (96 entries: clock, AMR status and six energy registers), gridedge's
   A-XDR decoder against gurux-dlms's on the same bytes (gurux-dlms: a test-only dependency, `.[test]`);
2. the agent's CPU time against the wire time of a full register and profile read at 9600 baud (the meter in its
   own process, charging 10 bits per byte of its answers; the wire time counts both directions);
3. 20 meters on one RS-485 line (9600 baud, one of them dead): completeness and cycle time.

The meters run in a separate process (python -m gridedge.hil.dlms_sim), so time.process_time() of this process is
the gateway's cost alone.

Run: .venv/bin/python bench/bench_dlms.py [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import time

from gridedge.core.model import Validity
from gridedge.drivers.dlms import axdr
from gridedge.drivers.dlms.client import Settings
from gridedge.drivers.dlms.device import DlmsDevice, DlmsLinkSpec
from gridedge.drivers.dlms.obismap import load_obis_map
from gridedge.drivers.scheduler import BusPool
from gridedge.hil.dlms_meter import SimMeter
from bench_bus import Sim  # a simulator subprocess and its READY line
from measure import describe, median_ns  # bench/measure.py: the script's folder is on sys.path

BAUD = 9600


def profile_bytes() -> bytes:
    m = SimMeter()
    return axdr.encode([m.entry(t) for t in m.entry_times()[-96:]])


def bench_decode(repeats: int) -> None:
    raw = profile_bytes()
    ours = median_ns(lambda: axdr.decode_all(raw), repeats)
    line = f"decode of a one-day profile ({len(raw)} bytes, 96 entries x 8 columns): gridedge {ours / 1e6:.3f} ms"
    try:
        from gurux_dlms import GXByteBuffer
        from gurux_dlms.GXDLMSSettings import GXDLMSSettings
        from gurux_dlms.internal._GXCommon import _GXCommon
        from gurux_dlms.internal._GXDataInfo import _GXDataInfo
    except ImportError:
        print(line + "; gurux-dlms not installed (pip install .[test])")
        return
    settings = GXDLMSSettings(False, None)

    def gurux():
        return _GXCommon.getData(settings, GXByteBuffer(raw), _GXDataInfo())
    rows = gurux()
    assert len(rows) == 96 and list(rows[-1])[2:] == list(axdr.decode_all(raw)[-1])[2:]     # the same values
    ratios = []
    for _ in range(5):                    # alternating rounds: both decoders see the same machine load
        ours = median_ns(lambda: axdr.decode_all(raw), repeats)
        theirs = median_ns(gurux, max(3, repeats // 10))
        ratios.append((theirs / ours, ours, theirs))
    ratio, ours, theirs = sorted(ratios)[len(ratios) // 2]
    print(f"decode of a one-day profile ({len(raw)} bytes, 96 entries x 8 columns), median of 5 alternating rounds: "
          f"gridedge {ours / 1e6:.3f} ms, gurux-dlms 1.0.203 {theirs / 1e6:.3f} ms: {ratio:.1f}x "
          f"(rounds: {', '.join(f'{r[0]:.1f}x' for r in ratios)})")


async def _read_all(dev: DlmsDevice) -> tuple[float, int]:
    """One poll (every point of the IDIS map and the clock) and one read of the last day's load profile."""
    await dev.poll()                                  # associate first: the read itself is what is measured
    line = dev._bus.links[0]
    b0 = line.bytes_in + line.bytes_out
    c0, w0 = time.process_time(), time.perf_counter()
    await dev.poll()
    entries = await dev._bus.request(dev._attach(), _profile_op(dev))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    wire_bytes = line.bytes_in + line.bytes_out - b0
    return cpu, wire_bytes, wall, len(entries)


def _profile_op(dev: DlmsDevice):
    from gridedge.drivers.dlms.device import Op

    dev.last_entry_ns = time.time_ns() - 86400 * 10**9
    return Op("profile", dev._read_profile)


def bench_cpu_vs_wire() -> None:
    sim = Sim("line", "--meters", "1", "--baudrate", str(BAUD), module="gridedge.hil.dlms_sim")
    try:
        dev = DlmsDevice("m1", load_obis_map("idis_polyphase"), DlmsLinkSpec("serial", port=sim.ready, timeout_s=3),
                         Settings(physical=16), pool=BusPool())
        cpu, nbytes, wall, entries = asyncio.run(_read_all(dev))
        wire = nbytes * 10 / BAUD
        print(f"full read at {BAUD} baud (18 points + clock, {entries} profile entries): {nbytes} bytes on the "
              f"wire = {wire:.2f} s; agent CPU {cpu * 1000:.1f} ms = {100 * cpu / wire:.2f} % of the wire time "
              f"(wall {wall:.2f} s)")
    finally:
        sim.stop()


async def _line_of_20(port: str, window_s: float) -> None:
    pool = BusPool()
    omap = load_obis_map("idis_polyphase")
    points = ["TotWhImp", "TotWhExp", "W", "PhVphA", "PhVphB", "PhVphC"]
    devs = [DlmsDevice(f"m{i}", omap, DlmsLinkSpec("serial", port=port, timeout_s=0.5), Settings(physical=16 + i),
                       points=points, period_s=1.0, profile_s=None, pool=pool, backoff_s=10.0, max_backoff_s=60.0)
            for i in range(20)]
    seen = {d.device_id: [] for d in devs}
    tasks = [asyncio.create_task(d.run(lambda r, n=d.device_id: seen[n].extend(
        b for b in r if b.layout.names[0] == "TotWhImp"))) for d in devs]
    await asyncio.sleep(5)                            # associations (and the dead one's first timeouts)
    for v in seen.values():
        v.clear()
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(window_s)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    live = [n for n in seen if n != "m7"]
    good = {n: sum(1 for b in seen[n] if b.quality is None) for n in live}
    total = {n: len(seen[n]) for n in live}
    cycles = min(good.values())
    dead_bad = sum(1 for b in seen["m7"] if b.quality and b.quality[0][0] is Validity.INVALID)
    print(f"20 meters on one {BAUD}-baud line, m7 dead, {window_s:.0f} s: every live meter read {min(good.values())}"
          f"..{max(good.values())} times ({sum(good.values())} good of {sum(total.values())} polls: completeness "
          f"{100 * sum(good.values()) / max(1, sum(total.values())):.1f} %); cycle time over the 19 live meters "
          f"{wall / max(1, cycles):.2f} s; m7 gave {dead_bad} INVALID blocks, its circuit open; agent CPU "
          f"{100 * cpu / wall:.1f} % of one core")
    for d in devs:
        await d.close()


def bench_line_of_20(window_s: float) -> None:
    sim = Sim("line", "--meters", "20", "--dead", "7", "--baudrate", str(BAUD), module="gridedge.hil.dlms_sim")
    try:
        asyncio.run(_line_of_20(sim.ready, window_s))
    finally:
        sim.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(describe())
    bench_decode(50 if args.quick else 500)
    bench_cpu_vs_wire()
    bench_line_of_20(20.0 if args.quick else 120.0)


if __name__ == "__main__":
    main()
