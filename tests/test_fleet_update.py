"""Issue 13, signed software updates, end to end over the real broker (mosquitto with TLS and the rig's ACL): the
DSO's head-end, as an installer, sends `update`; the gateway takes the release from a TUF repository served over
HTTPS on loopback by the rig's repository tool, installs it beside the running one (A/B) and re-executes through
the start guard, as the systemd unit starts it. The rig restarts the agent when it exits, as Restart=always does.

The releases are made from this checkout once per module (gridedge.hil.wheelhouse: gridedge and every dependency
as wheels, offline): a good one, one that runs but reads nothing, one that crashes at start.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from gridedge import __version__ as RUNNING
from gridedge.contract import release_target
from gridedge.fleet.release import Releases
from gridedge.hil.rig import Rig
from gridedge.hil.tufrepo import update_site
from gridedge.hil.wheelhouse import dependency_wheels, wheelhouse

from .conftest import validate_message

GOOD, UNHEALTHY, CRASHES, ROGUE = (f"{RUNNING}.post{n}" for n in (1, 2, 3, 4))
READS_NOTHING = """
async def _reads_nothing(self, cfg):   # a test release: it runs, connects and controls, but reads no device
    await asyncio.Event().wait()
Agent._poll_loop = _reads_nothing
"""
CRASH = 'raise RuntimeError("a test release that crashes at start")'
ROLES = {"dso": ["operator", "installer"]}
FINAL = ("healthy", "rolled_back", "rejected", "failed")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("artefacts")
    deps = dependency_wheels(d / "deps")
    return {GOOD: wheelhouse(d, GOOD, deps=deps),
            UNHEALTHY: wheelhouse(d, UNHEALTHY, patch={"gridedge/agent.py": READS_NOTHING}, deps=deps),
            CRASHES: wheelhouse(d, CRASHES, patch={"gridedge/agent.py": CRASH}, deps=deps)}


@asynccontextmanager
async def site(tmp_path: Path):
    """The operator's repository (its own CA), and the rig whose gateway takes releases from it."""
    op = update_site(tmp_path)
    rig = Rig(tmp_path / "rig", roles=ROLES, releases=op.releases, supervise=True, fleet=op.fleet)
    try:
        async with rig:
            await rig.dso.wait_for(lambda: rig.dso.latest.get("W") is not None, 20, "telemetry")
            yield SimpleNamespace(rig=rig, dso=rig.dso, repo=op.repo, server=op.server, releases=Releases(op.releases))
    finally:
        op.server.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 230))


async def update(s, version: str, window_s: float = 30.0) -> str:
    cmd = s.dso.command("update", {"version": version, "health_window_s": window_s})
    await s.dso.send(cmd)
    return cmd["cmd_id"]


async def verdict(s, cmd_id: str, timeout_s: float = 120.0) -> dict:
    return await s.dso.wait_for(lambda: next((r for r in s.dso.results(cmd_id) if r["status"] in FINAL), None),
                                timeout_s, f"{cmd_id}: a final result")


def state(s) -> dict | None:
    for seen in reversed(s.dso.seen):
        if seen.topic == s.rig.prefix + "state" and isinstance(seen.doc, dict) and not seen.doc.get("will"):
            return seen.doc
    return None


async def running(s, version: str, timeout_s: float = 30.0) -> dict:
    """The gateway online, saying it runs `version`, and reading its device again."""
    doc = await s.dso.wait_for(lambda: (d := state(s)) and d["status"] == "online" and d["version"] == version
                               and d, timeout_s, f"state online with version {version}")
    n = len(s.dso.seen)
    await s.dso.wait_for(lambda: any(x.topic == s.rig.prefix + "telemetry" for x in s.dso.seen[n:]), 20,
                         "telemetry after it")
    return doc


def no_gaps_and_valid(s) -> None:
    """The outbox survived every restart: no seq missing in the results and the telemetry; every message follows
    its schema."""
    for stream in ("result", "telemetry"):
        rep = s.dso.audit.report(s.rig.gateway_id, stream)
        assert rep.complete and rep.received, (stream, rep)
    for seen in s.dso.seen:
        if "/cmd/" not in seen.topic:
            validate_message(seen.topic, seen.doc if seen.doc is not None else seen.raw)


def test_an_update_succeeds_end_to_end_while_the_gateway_keeps_controlling(tmp_path, artefacts):
    """accepted, validated, applied, healthy; while the release downloads (held half way by the server) the gateway
    executes a curtailment and keeps sending telemetry; afterwards it runs the new release, the old one kept."""
    async def scenario():
        async with site(tmp_path) as s:
            name = s.repo.publish(artefacts[GOOD], GOOD)
            release_sent = threading.Event()
            s.server.faults.hold[Path(name).name] = release_sent
            cmd_id = await update(s, GOOD)
            assert await asyncio.to_thread(s.server.faults.holding.wait, 60), "the download never started"

            # the download hangs half way: reading and control go on
            t0 = len(s.dso.seen)
            act = s.dso.activation(30.0, 4.0)
            await s.dso.send(act)
            await s.dso.wait_status(act["cmd_id"], "active", 10)
            limit_w = 0.30 * float(s.dso.latest["WMax"])
            await s.dso.wait_for(lambda: s.dso.latest.get("W") is not None and s.dso.latest["W"] <= limit_w + 100,
                                 15, "W under the limit during the download")
            await s.dso.wait_status(act["cmd_id"], "completed", 15)
            assert sum(x.topic == s.rig.prefix + "telemetry" for x in s.dso.seen[t0:]) >= 5
            assert s.dso.statuses(cmd_id) == ["accepted"]
            release_sent.set()

            r = await verdict(s, cmd_id)
            assert r["status"] == "healthy", (r.get("reason"), r.get("detail"))
            assert s.dso.statuses(cmd_id) == ["accepted", "validated", "applied", "healthy"]
            assert r["detail"]["version"] == GOOD and r["detail"]["previous"] == RUNNING
            await running(s, GOOD)
            assert (s.releases.current, s.releases.previous, s.releases.trial()) == (GOOD, RUNNING, None)
            validated = next(x for x in s.dso.results(cmd_id) if x["status"] == "validated")
            assert validated["detail"]["sha256"] == \
                s.repo.md["targets"].signed.targets[release_target(GOOD)].hashes["sha256"]
            no_gaps_and_valid(s)
    run(scenario())


def test_a_release_that_fails_its_health_check_is_rolled_back_by_itself(tmp_path, artefacts):
    """It installs, starts and connects, but reads no device: within its window it rolls itself back."""
    async def scenario():
        async with site(tmp_path) as s:
            s.repo.publish(artefacts[UNHEALTHY], UNHEALTHY)
            cmd_id = await update(s, UNHEALTHY, window_s=10)
            r = await verdict(s, cmd_id)
            assert r["status"] == "rolled_back", r
            assert f"release {UNHEALTHY} failed its health check: no good reading since the change from inv1" \
                in r["reason"] and f"back to {RUNNING}" in r["reason"]
            assert r["detail"]["running"] == RUNNING
            assert s.dso.statuses(cmd_id) == ["accepted", "validated", "applied", "rolled_back"]
            await running(s, RUNNING)
            assert s.releases.current == RUNNING and s.releases.trial() is None
            assert not s.releases.path(UNHEALTHY).exists()
            no_gaps_and_valid(s)
    run(scenario())


def test_a_release_that_crashes_at_start_is_rolled_back_by_the_start_guard(tmp_path, artefacts):
    """Its code never runs far enough to judge itself: boot.py counts two failed starts and goes back."""
    async def scenario():
        async with site(tmp_path) as s:
            s.repo.publish(artefacts[CRASHES], CRASHES)
            cmd_id = await update(s, CRASHES)
            r = await verdict(s, cmd_id)
            assert r["status"] == "rolled_back", r
            assert f"release {CRASHES} did not come up: 2 starts ended before its health check passed" in r["reason"]
            assert r["detail"] == {"state": "rolled_back", "version": CRASHES, "running": RUNNING}
            assert len([rc for rc in s.rig.agent_exits if rc != 0]) == 2     # the two crashes the rig restarted
            await running(s, RUNNING)
            assert s.releases.current == RUNNING and s.releases.trial() is None
            assert "a test release that crashes at start" in s.rig.agent_log.read_text()
            no_gaps_and_valid(s)
    run(scenario())


def test_untrustworthy_releases_are_refused_and_the_gateway_stays_on_its_release(tmp_path, artefacts):
    """A downgrade, a release the repository does not have, a tampered artefact, an expired timestamp, older
    metadata served again, a release signed by a key the root does not name: each refused with its reason, nothing
    installed, the gateway running and reading throughout."""
    async def refused(s, version: str, status: str = "rejected") -> str:
        r = await verdict(s, await update(s, version), 60)
        assert r["status"] == status, r
        assert r["detail"]["running"] == RUNNING
        return r["reason"]

    async def scenario():
        async with site(tmp_path) as s:
            why = await refused(s, "0.0.1")
            assert "older than the running" in why and "downgrade is refused" in why
            assert not s.server.requests                       # refused before asking the repository

            assert "has no release 9.9.9" in await refused(s, "9.9.9")

            name = s.repo.publish(artefacts[GOOD], GOOD)
            s.repo.tamper(name)
            assert "does not match its signed length and hash" in await refused(s, GOOD)

            s.repo.expire_timestamp()
            why = await refused(s, GOOD)
            assert "metadata has expired" in why and "judged at" in why

            old = s.repo.saved()                               # a mirror keeps this state...
            for _ in range(2):
                s.repo.refresh_timestamp()
            assert "has no release 9.9.9" in await refused(s, "9.9.9")   # ...the gateway sees newer metadata...
            s.repo.restore(old)                                # ...and the mirror serves the old state again
            assert "rollback attack" in await refused(s, GOOD)

            for _ in range(3):
                s.repo.refresh_timestamp()
            s.repo.publish(artefacts[GOOD], ROGUE, targets_signers=[s.repo.rogue_signer()])
            assert "not signed by the keys the trusted root names" in await refused(s, ROGUE)

            await running(s, RUNNING)
            assert s.releases.current == RUNNING and s.releases.previous is None
            assert sorted(p.name for p in (s.releases.root / "releases").iterdir()) == [RUNNING]
            assert not s.rig.agent_exits                       # it never restarted

            # stopped during a download (held half way): the agent stops at once, and says so when it is back
            name = s.repo.publish(artefacts[GOOD], GOOD)
            s.server.faults.hold[Path(name).name] = threading.Event()
            cmd_id = await update(s, GOOD)
            assert await asyncio.to_thread(s.server.faults.holding.wait, 60)
            assert await s.rig.stop_agent(timeout_s=10) == 0   # not killed: it did not wait for the download
            await s.rig.start_agent()
            r = await verdict(s, cmd_id)
            assert r["status"] == "failed" and "the agent stopped" in r["reason"], r
            await running(s, RUNNING)
            no_gaps_and_valid(s)
    run(scenario())


@pytest.mark.timeout(400)   # builds two releases, installs one (pip, ~100 MB of wheels) and refuses the other
def test_demo_fleet_shows_a_good_update_and_a_refused_one():
    """`gridedge demo fleet`, as a person runs it: a release updated to (healthy), a tampered one refused."""
    out = subprocess.run([sys.executable, "-m", "gridedge", "demo", "fleet"], capture_output=True, text=True,
                         timeout=380)
    last = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0 and last.startswith("demo: PASS"), out.stdout[-3000:] + out.stderr[-3000:]
    assert f"updated to {GOOD}" in last and f"{RUNNING}.post2 refused (the download does not match" in last, last
    assert "gateway: healthy" in out.stdout and "gateway: rejected" in out.stdout
