"""`gridedge demo`: one DSO curtailment, end to end, on loopback, with a live view a person can follow."""
from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path


def run_demo(limit_pct: float = 40.0, duration_s: float = 10.0, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gridedge-demo-"))
    try:
        line = asyncio.run(_demo(workdir, limit_pct, duration_s))
    except KeyboardInterrupt:
        line = "demo: FAIL interrupted (every process started was stopped)"
    finally:
        if keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(line, flush=True)
    return 0 if line.startswith("demo: PASS") else 1


async def _demo(workdir: Path, limit_pct: float, duration_s: float) -> str:
    from gridedge.hil.broker import BrokerNotFound
    from gridedge.hil.rig import Rig

    rig = Rig(workdir, gateway_id="gw-demo-001")
    say("starting: mosquitto (TLS, throwaway CA), SunSpec inverter simulator, gridedge agent, DSO simulator")
    try:
        await rig.start()
    except BrokerNotFound as exc:
        await rig.stop()
        return f"demo: FAIL {exc}"
    except Exception as exc:
        await rig.stop()
        return f"demo: FAIL rig did not start: {exc} (logs in {workdir}; rerun with --keep)"
    try:
        say(f"gateway online; broker {rig.broker.url}; inverter WMax {rig.w_max:.0f} W, PV {rig.pv_w:.0f} W available")
        say(f"DSO: limit active power to {limit_pct:g} % for {duration_s:g} s")
        view = LiveView(rig)
        rig.dso.on_telemetry = view.update
        ramp_s = 100.0 / rig.ramp_pct_per_s
        report = await rig.dso.curtailment(limit_pct, duration_s, reach_within_s=ramp_s + 2.0)
        if not report.passed:
            return report.line()
        tail = await forged(rig)
        return "demo: " + tail if tail.startswith("FAIL") else report.line() + "; " + tail
    finally:
        say("stopping every process the demo started")
        await rig.stop()


async def forged(rig) -> str:
    """A command that claims to be the DSO's but is signed by a key the gateway does not trust: refused, not run."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    say("a forged command: the DSO's limit of 0 %, signed by a key the gateway does not trust")
    cmd = rig.dso.activation(0.0, 600, cmd_id="forged-in-demo")
    await rig.dso.send(cmd, key=ed25519.Ed25519PrivateKey.generate())
    try:
        res = await rig.dso.wait_for(lambda: next(iter(rig.dso.results(cmd["cmd_id"], claimed=True)), None), 10,
                                     "the refusal of the forged command")
    except TimeoutError as exc:
        return f"FAIL {exc}"
    say(f"gateway: {res['status']} ({res['detail'].get('refusal')}): {res['reason']}")
    if rig.dso.latest.get("WMaxLimPctEna"):
        return "FAIL the forged limit reached the inverter"
    return f"a forged command refused ({res['detail'].get('refusal')})"


class LiveView:
    """One line a second: active power, the limit in force and the state of the activation."""

    def __init__(self, rig) -> None:
        self.rig, self.t0, self.last = rig, time.monotonic(), 0.0

    def update(self, latest: dict) -> None:
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        results = [s.doc for s in self.rig.dso.seen if s.topic.endswith("/result") and isinstance(s.doc, dict)]
        state = results[-1]["status"] if results else "-"
        w, lim, ena = latest.get("W"), latest.get("WMaxLimPct"), latest.get("WMaxLimPctEna")
        lim_txt = f"{lim:5.1f} % ({'on' if ena else 'off'})" if lim is not None else "   -"
        w_txt = f"{w:7.0f} W" if w is not None else "      - W"
        say(f"t={now - self.t0:5.1f} s  P={w_txt}  limit={lim_txt}  activation: {state}")


def say(text: str) -> None:
    print(f"  {text}", file=sys.stdout, flush=True)
