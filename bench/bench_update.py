"""What a software update costs the running agent: its resident memory while the release downloads and is verified
(TUF metadata, the artefact's length and hash) and installed beside it (pip runs in a subprocess of its own), against
its memory before the update. Issue 13's budget: no more than 10 MB of growth. The agent's RSS is read from
/proc/<pid>/status every 20 ms from the update command until the gateway reports `validated` (after that the agent
re-executes into the new release, a new process image).

Run: .venv/bin/python bench/bench_update.py [--runs 3]
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gridedge import __version__
from gridedge.hil.rig import Rig
from gridedge.hil.tufrepo import update_site
from gridedge.hil.wheelhouse import dependency_wheels, wheelhouse


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one(work: Path, artefact: Path, version: str) -> tuple[int, int, float]:
    """(RSS before, peak RSS until validated, seconds to validated) of one update."""
    op = update_site(work)
    repo, server = op.repo, op.server
    rig = Rig(work / "rig", roles={"dso": ["operator", "installer"]}, releases=op.releases, supervise=True,
              fleet=op.fleet)
    try:
        async with rig:
            await rig.dso.wait_for(lambda: rig.dso.latest.get("W") is not None, 30, "telemetry")
            await asyncio.sleep(5)     # past start-up: connections, first polls, first telemetry flushes
            pid = rig.agent.pid
            before = 0
            for _ in range(50):           # the agent's own peak over 1 s of normal work
                before = max(before, rss_kib(pid))
                await asyncio.sleep(0.02)
            repo.publish(artefact, version)
            cmd = rig.dso.command("update", {"version": version, "health_window_s": 30})
            t0 = time.monotonic()
            await rig.dso.send(cmd)
            peak = before
            while not any(r["status"] in ("validated", "rejected", "failed") for r in rig.dso.results(cmd["cmd_id"])):
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0.02)
                if time.monotonic() - t0 > 600:
                    raise TimeoutError("no verdict within 600 s")
            statuses = [r["status"] for r in rig.dso.results(cmd["cmd_id"])]
            if "validated" not in statuses:
                raise RuntimeError(f"the update did not validate: {rig.dso.results(cmd['cmd_id'])}")
            return before, peak, time.monotonic() - t0
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-update-") as d:
        d = Path(d)
        version = f"{__version__}.post1"
        artefact = wheelhouse(d, version, deps=dependency_wheels(d / "deps"))
        print(f"release artefact: {artefact.stat().st_size / 2**20:.1f} MiB")
        print("| run | RSS before (MiB) | peak until validated (MiB) | growth (MiB) | to validated (s) |")
        print("|---|---|---|---|---|")
        for i in range(args.runs):
            before, peak, took = asyncio.run(one(d / f"run{i}", artefact, version))
            print(f"| {i + 1} | {before / 1024:.1f} | {peak / 1024:.1f} | {(peak - before) / 1024:.1f} | {took:.1f} |")


if __name__ == "__main__":
    main()
