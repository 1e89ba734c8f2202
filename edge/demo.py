"""`gridedge demo`: one DSO curtailment, end to end, on loopback, with a live view a person can follow.
`gridedge demo fleet`: a signed software update that succeeds and one that is refused (docs/fleet.md)."""
from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path


def run_demo(limit_pct: float = 40.0, duration_s: float = 10.0, keep: bool = False,
             scenario: str = "curtailment") -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gridedge-demo-"))
    try:
        demo = _fleet(workdir) if scenario == "fleet" else _demo(workdir, limit_pct, duration_s)
        line = asyncio.run(demo)
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


async def _fleet(workdir: Path) -> str:
    """The operator's TUF repository over HTTPS on loopback publishes a release made from this installation; the
    head-end asks the gateway to update: verified, installed beside the running release, switched, healthy. Then a
    release whose bytes were changed on the mirror: refused, the gateway stays on its release."""
    from gridedge import __version__
    from gridedge.fleet.release import Releases
    from gridedge.hil.broker import BrokerNotFound
    from gridedge.hil.rig import Rig
    from gridedge.hil.tufrepo import update_site
    from gridedge.hil.wheelhouse import dependency_wheels, wheelhouse

    good, tampered = f"{__version__}.post1", f"{__version__}.post2"
    say(f"building releases {good} and {tampered} from this installation (wheels of gridedge and its dependencies)")
    deps = await asyncio.to_thread(dependency_wheels, workdir / "deps")
    arts = {v: await asyncio.to_thread(wheelhouse, workdir, v, deps=deps) for v in (good, tampered)}
    op = update_site(workdir)
    repo, server, opt = op.repo, op.server, op.releases
    rig = Rig(workdir / "rig", gateway_id="gw-demo-001", roles={"dso": ["operator", "installer"]}, releases=opt,
              supervise=True, fleet=op.fleet)
    say(f"TUF repository on {server.url} (root 2 of 3 keys); starting broker, inverter simulator, gridedge "
        f"{__version__} from the A/B root {opt}, DSO simulator")
    try:
        await rig.start()
        await rig.dso.wait_for(lambda: rig.dso.latest.get("W") is not None, 20, "telemetry")
    except BrokerNotFound as exc:
        await rig.stop()
        server.stop()
        return f"demo: FAIL {exc}"
    except Exception as exc:
        await rig.stop()
        server.stop()
        return f"demo: FAIL rig did not start: {exc} (logs in {workdir}; rerun with --keep)"
    try:
        ok = await _update(rig, repo, arts[good], good, tamper=False)
        if ok.startswith("FAIL"):
            return "demo: " + ok
        bad = await _update(rig, repo, arts[tampered], tampered, tamper=True)
        if bad.startswith("FAIL"):
            return "demo: " + bad
        rel = Releases(opt)
        return f"demo: PASS {ok}; {bad}; current {rel.current}, previous {rel.previous}"
    except TimeoutError as exc:
        return f"demo: FAIL {exc} (logs in {workdir}; rerun with --keep)"
    finally:
        say("stopping every process the demo started")
        await rig.stop()
        server.stop()


async def _update(rig, repo, artefact: Path, version: str, *, tamper: bool) -> str:
    """Publish, ask for the update, print each step as the gateway reports it; the outcome in a few words."""
    name = repo.publish(artefact, version)
    if tamper:
        repo.tamper(name)
        say(f"operator: publishes {version}; on the mirror one byte of it is changed (its signed hash is not)")
    else:
        say(f"operator: publishes {version}, signed by the targets key")
    cmd = rig.dso.command("update", {"version": version, "health_window_s": 20})
    say(f"DSO (installer): update to {version}")
    await rig.dso.send(cmd)
    final = ("healthy", "rolled_back", "rejected", "failed")
    shown: list[dict] = []

    def step():
        for r in rig.dso.results(cmd["cmd_id"])[len(shown):]:
            shown.append(r)
            say(f"gateway: {r['status']}" + (f": {r['reason']}" if r.get("reason") else "")
                + f" (running {r['detail'].get('running')})")
        return next((r for r in shown if r["status"] in final), None)
    r = await rig.dso.wait_for(step, 180, f"the verdict on {version}")
    want = "rejected" if tamper else "healthy"
    if r["status"] != want:
        return f"FAIL update to {version}: {r['status']} ({r.get('reason')}), expected {want}"
    return f"{version} refused ({r['reason'][:60]}...)" if tamper else f"updated to {version}"


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
