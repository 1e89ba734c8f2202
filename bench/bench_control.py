"""Control engine figures for docs/PERFORMANCE.md.

1. Time of one full control cycle (ControlEngine.step: process image -> measurements and capabilities ->
   activation book -> controllers and the kernel -> writer diffs) for N = 1, 10, 100, 1000 inverters, with the
   compiled kernels and with the numpy twin. Every device runs volt-var, volt-watt and frequency-watt, half of
   them have a remote limit in force; the writers are not started (no I/O is timed here).
2. Command-to-wire latency over the real rig (mosquitto with TLS, the agent and the SunSpec simulator as
   processes): from the agent receiving an MQTT activation (its log, t_ns) to the simulator receiving the Modbus
   write that carries it (its log, t_ns; same host clock), p50 and p99.

Run: .venv/bin/python bench/bench_control.py [--repeats 200] [--commands 200] [--skip-latency]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gridedge import contract
from gridedge.cext import twin
from gridedge.config import parse_config
from gridedge.control.engine import ControlEngine
from gridedge.core.model import Sample
from measure import describe  # bench/measure.py: the script's folder is on sys.path

try:
    from gridedge.cext import _kernels as compiled
except Exception as exc:  # noqa: BLE001
    compiled = None
    print(f"compiled extension not importable ({exc}); timing the twin only", file=sys.stderr)

S = 1_000_000_000


class NoDevice:
    async def write_points(self, values):  # never awaited: the writers are not started in this bench
        raise AssertionError("no I/O in the cycle bench")


def engine_for(n: int, kernels) -> tuple[ControlEngine, dict]:
    data = {"gateway": {"id": "bench"}, "uplink": {"broker": "mqtt://h", "allow_plaintext": True},
            "control": {"q_mode": "volt_var", "volt_watt": True, "freq_watt": True},
            "devices": [{"id": f"inv{i}", "driver": "sunspec_tcp", "host": "h", "port": 1502 + i, "writable": True,
                         "poll_ms": 200}
                        for i in range(n)]}
    cfg = parse_config(data, check_files=False)
    image: dict = {}

    async def report(*a, **k):
        pass

    eng = ControlEngine(cfg, {f"inv{i}": NoDevice() for i in range(n)}, image, report, kernels=kernels)
    return eng, image


def fill(image: dict, n: int, k: int) -> None:
    now = time.time_ns()
    for i in range(n):
        d = f"inv{i}"
        wobble = ((i * 7 + k) % 11) / 10
        for name, value, unit in (("W", 6000.0 + 100 * wobble, "W"), ("VAr", -200.0, "var"),
                                  ("PhVphA", 230.0 * (1.03 + 0.01 * wobble), "V"), ("Hz", 50.0 + 0.05 * wobble, "Hz"),
                                  ("WMax", 10000.0, "W"), ("VArMaxInj", 4400.0, "var"), ("VArMaxAbs", 4400.0, "var"),
                                  ("WMaxLimPctRvrtTms", 0, "s"), ("VArSetRvrtTms", 0, "s")):
            image[f"{d}/{name}"] = Sample(f"{d}/{name}", now, value, unit)


def cycle_ms(n: int, kernels, repeats: int) -> float:
    async def go():
        eng, image = engine_for(n, kernels)
        fill(image, n, 0)
        eng.read_image(time.time_ns())
        for i in range(0, n, 2):  # half the devices under a remote limit
            doc = {"schema": contract.SCHEMA_COMMAND, "cmd_id": f"a{i}", "type": "limit_active_power",
                   "device": f"inv{i}", "params": {"limit_pct": 50, "duration_s": 3600}}
            for ch in eng.book.submit(contract.parse_command(contract.dumps(doc), time.time_ns(),
                                                              max_activation_s=86400), time.time_ns()):
                pass
        samples = []
        for k in range(repeats + 5):
            fill(image, n, k)
            t0 = time.perf_counter_ns()
            eng.step()
            if k >= 5:
                samples.append(time.perf_counter_ns() - t0)
        return statistics.median(samples) / 1e6
    return asyncio.run(go())


# ---------------------------------------------------------------- latency over the rig

def latency(commands: int) -> list[float]:
    from gridedge.hil.rig import Rig

    async def go(workdir: Path) -> list[float]:
        async with Rig(workdir, poll_ms=250, telemetry_ms=500) as rig:
            dso = rig.dso
            await dso.wait_for(lambda: dso.latest.get("W") is not None, 15, "telemetry")
            ids = []
            for k in range(commands):
                pct = 30.0 if k % 2 else 70.0
                doc = dso.activation(pct, 3600, cmd_id=f"lat-{k}")
                await dso.send(doc)
                await dso.wait_status(doc["cmd_id"], "active", 10)
                ids.append((doc["cmd_id"], pct))
                await asyncio.sleep(0.05 + (k % 7) * 0.013)   # off the cycle's phase
            agent = rig.agent_log.read_text()
            writes = []
            for line in rig.sim_log.read_text().splitlines():
                m = re.search(r"applied write at \d+ \(model 704\): (\{.*\}) t_ns=(\d+)", line)
                if m:
                    writes.append((int(m.group(2)), m.group(1)))
        out = []
        for cmd_id, pct in ids:
            m = re.search(rf"command {re.escape(cmd_id)} \(.*\) received t_ns=(\d+)", agent)
            t_recv = int(m.group(1))
            t_wire = next(t for t, w in writes if t > t_recv and f"'WMaxLimPct': {pct}" in w)
            out.append((t_wire - t_recv) / 1e6)
        return out

    with tempfile.TemporaryDirectory(prefix="bench-control-") as d:
        return asyncio.run(go(Path(d)))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--commands", type=int, default=200)
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    print(f"# {describe()}, "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n## Control cycle (ControlEngine.step), median of {args.repeats}\n")
    print("| N devices | Cython (ms) | numpy twin (ms) | twin / Cython |")
    print("|---:|---:|---:|---:|")
    for n in (1, 10, 100, 1000):
        reps = args.repeats if n < 1000 else max(20, args.repeats // 4)
        tw = cycle_ms(n, twin, reps)
        cy = cycle_ms(n, compiled, reps) if compiled is not None else float("nan")
        print(f"| {n} | {cy:.3f} | {tw:.3f} | {tw / cy:.2f}x |", flush=True)
    if not args.skip_latency:
        lat = latency(args.commands)
        print(f"\n## Command-to-wire latency, {len(lat)} activations\n")
        print(f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, min {min(lat):.1f} ms, max {max(lat):.1f} ms")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
