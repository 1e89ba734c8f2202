"""How the benches time a call, and the machine line they print next to every figure (docs/PERFORMANCE.md)."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (x86 "model name", ARM "Hardware" / "cpu model"), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """One line: CPU, cores, OS and Python."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()} "
            f"{platform.machine()}, Python {platform.python_version()}")


def median_ns(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls, in ns, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)
