"""Issue 13, remote configuration, end to end over the real broker (mosquitto with TLS and the deployment's ACL):
the DSO head-end signs `configure` commands as an engineer, the agent (a real `gridedge run` process) validates,
writes, re-executes itself and runs the health check; a bad configuration ends with the gateway healthy on its
previous one without a person. The state message says which configuration runs and flags a local edit.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time

from gridedge import contract, telemetry
from gridedge.fleet import write_json
from gridedge.fleet.configure import MAX_STARTS, PREVIOUS_FILE, TXN_FILE, at_start
from gridedge.config import load_config
from gridedge.hil.https_files import HttpsFiles
from gridedge.hil.rig import Rig

from .conftest import validate_message

FLEET_ROLES = {"dso": ["operator", "engineer", "installer", "secadm"], "tso": ["engineer"]}
FINAL = ("healthy", "rolled_back", "rejected", "failed")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 150))


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fleet_rig(tmp_path, **kw) -> Rig:
    ca = tmp_path / "pki" / "ca.crt"   # the rig's CA (made at start): it signed the file server's certificate
    return Rig(tmp_path, roles=FLEET_ROLES, fleet=f'[fleet]\nca_file = "{ca}"\ndownload_timeout_s = 2.0\n', **kw)


async def configure(rig: Rig, cmd_id: str, timeout_s: float = 40, issuer: str = "dso", **params) -> dict:
    """Send a configure command (signed by `issuer`); the result that ends it."""
    dso = rig.dso
    await dso.send(dso.command("configure", params, cmd_id=cmd_id, issuer=issuer))
    return await dso.wait_for(lambda: next((r for r in dso.results(cmd_id) if r["status"] in FINAL), None),
                              timeout_s, f"{cmd_id}: an end")


def states_after(rig: Rig, t: float) -> list[dict]:
    return [s.doc for s in rig.dso.seen if s.topic == rig.prefix + "state" and s.doc and s.t > t]


async def online_with(rig: Rig, t: float, config_sha: str, timeout_s: float = 20) -> dict:
    """The first online state after t whose configuration is config_sha."""
    return await rig.dso.wait_for(lambda: next((s for s in states_after(rig, t) if s["status"] == "online"
                                                and s["config"]["sha256"] == config_sha), None), timeout_s,
                                  f"online with configuration {config_sha[:12]}")


async def fresh_telemetry(rig: Rig, t: float, timeout_s: float = 15) -> None:
    """A telemetry message with a good W that arrived after t: the agent reads its inverter again."""
    def good(doc) -> bool:
        return any(s.point == "inv1/W" and s.good for s in telemetry.samples_of(doc))
    await rig.dso.wait_for(lambda: any(s.topic == rig.prefix + "telemetry" and s.t > t and s.doc and good(s.doc)
                                       for s in rig.dso.seen), timeout_s, "fresh telemetry")


def check_messages(rig: Rig) -> None:
    for s in rig.dso.seen:
        if s.topic.endswith(("/result", "/audit", "/state")) and s.doc is not None:
            validate_message(s.topic, s.doc)


def audit(rig: Rig, change: str) -> list[dict]:
    return [d["record"] for d in rig.dso.records(contract.TOPIC_AUDIT)
            if d["record"]["event"] == "config" and d["record"].get("change") == change]


def in_rig(tmp_path, body) -> None:
    """body(rig) on a fleet rig whose agent reads its inverter already; every message it saw checked at the end."""
    async def scenario():
        async with fleet_rig(tmp_path) as rig:
            await rig.dso.wait_for(lambda: rig.dso.latest.get("W") is not None, 15, "telemetry")
            await body(rig)
            check_messages(rig)
    run(scenario())


def test_a_good_configuration_runs_a_bad_one_is_refused_and_a_local_edit_is_flagged(tmp_path):
    async def body(rig: Rig) -> None:
        dso = rig.dso
        original = rig.config_path.read_text()
        first = await online_with(rig, 0, sha(original))
        assert first["config"] == {"sha256": sha(original), "version": None, "cmd_id": None,
                                   "local_edit": False, "file_sha256": None, "pending": False}
        assert first["device_health"]["inv1"]["status"] in ("ok", "unknown")

        # one that does not validate: refused with the validator's own lines (file, key path, reason)
        bad = original.replace("poll_ms = 250", "poll_ms = -5").replace("keepalive_s = 10", "keepalive_s = 1")
        r = await configure(rig, "cfg-invalid", config=bad, version="v0")
        assert r["status"] == "rejected" and dso.statuses("cfg-invalid") == ["accepted", "rejected"]
        src = str(rig.config_path)
        assert r["detail"]["errors"] == [f"{src}: uplink.keepalive_s: must be >= 5, got 1",
                                         f"{src}: devices[0].poll_ms: must be > 0, got -5"]
        assert r["reason"] == f"the configuration does not validate (2 problems): {r['detail']['errors'][0]}"
        assert rig.config_path.read_text() == original

        # an engineer may configure, but not change who may command the gateway (IEC 62351-8: that is secadm's)
        escalate = original.replace('roles = ["engineer"]', 'roles = ["engineer", "secadm"]')
        assert escalate != original
        r = await configure(rig, "cfg-escalate", config=escalate, issuer="tso")
        assert r["status"] == "rejected", r
        assert r["detail"]["errors"] == [f"{src}: security: changing who may command the gateway (issuers, keys, "
                                         f"roles) needs the secadm role; tso has engineer"]
        assert rig.config_path.read_text() == original

        # a good one: the parts of the transaction in order, then the state says it runs, as v1
        good = original.replace('description = "HIL rig gateway"', 'description = "set by the head-end"')
        t = time.monotonic()
        r = await configure(rig, "cfg-good", config=good, version="v1", health_window_s=10)
        assert dso.statuses("cfg-good") == ["accepted", "validated", "applied", "healthy"], dso.statuses("cfg-good")
        assert r["detail"]["config_sha256"] == sha(good) and r["detail"]["version"] == "v1"
        assert rig.config_path.read_text() == good
        s = await online_with(rig, t, sha(good))
        s = await dso.wait_for(lambda: next((x for x in states_after(rig, t) if x["config"]["sha256"] == sha(good)
                                             and not x["config"]["pending"]), None), 10, "committed state")
        assert s["config"] == {"sha256": sha(good), "version": "v1", "cmd_id": "cfg-good", "local_edit": False,
                               "file_sha256": None, "pending": False}
        assert s["device_health"]["inv1"]["status"] == "ok"
        assert [a["cmd_id"] for a in audit(rig, "applied")] == ["cfg-good"]

        # the same again: nothing to do, said at once
        r = await configure(rig, "cfg-same", config=good, version="v1")
        assert r["status"] == "healthy" and r["reason"] == "this configuration runs already"

        # a person edits the file on the gateway, behind the head-end's back, and restarts the agent
        edited = good + "\n# tuned on site\n"
        rig.config_path.write_text(edited)
        await rig.stop_agent()
        t = time.monotonic()
        await rig.start_agent()
        s = await online_with(rig, t, sha(edited))
        assert s["config"] == {"sha256": sha(edited), "version": None, "cmd_id": None, "local_edit": True,
                               "file_sha256": None, "pending": False}
        await dso.wait_for(lambda: audit(rig, "local_edit"), 10, "the local edit in the audit trail")
        assert audit(rig, "local_edit")[0]["config_sha256"] == sha(edited)
    in_rig(tmp_path, body)


def test_a_device_that_does_not_answer_rolls_the_change_back_by_itself(tmp_path):
    async def body(rig: Rig) -> None:
        dso = rig.dso
        v1 = rig.config_path.read_text().replace("HIL rig gateway", "v1")
        assert (await configure(rig, "cfg-v1", config=v1, version="v1", health_window_s=10))["status"] == "healthy"

        # validates (a port is a port) but the inverter is not there: not healthy within the window
        v2 = v1.replace(f"port = {rig.sim_port}", f"port = {dead_port()}")
        t = time.monotonic()
        r = await configure(rig, "cfg-v2", config=v2, version="v2", health_window_s=10)
        assert dso.statuses("cfg-v2") == ["accepted", "validated", "applied", "rolled_back"], dso.statuses("cfg-v2")
        assert r["reason"] == ("not healthy within 10 s: no good reading since the change from inv1; back on the "
                               "previous configuration")
        trial = next(x for x in states_after(rig, t) if x["config"]["sha256"] == sha(v2))
        assert trial["config"]["pending"] and trial["config"]["version"] == "v2"

        # healthy on v1 again, without a person: the file, the state, the inverter's readings
        assert rig.config_path.read_text() == v1
        back = time.monotonic()
        s = await online_with(rig, t, sha(v1))
        assert s["config"]["version"] == "v1" and not s["config"]["local_edit"] and not s["config"]["pending"]
        await fresh_telemetry(rig, back)
        assert len(dso.results("cfg-v2")) == 4   # the rollback is said once
        assert [a["reason"] for a in audit(rig, "rolled_back")] == [r["reason"]]
        assert not (tmp_path / "var" / "fleet" / TXN_FILE).exists()
    in_rig(tmp_path, body)


def test_a_broker_it_cannot_reach_rolls_the_change_back_and_the_results_arrive_after(tmp_path):
    async def body(rig: Rig) -> None:
        dso = rig.dso
        original = rig.config_path.read_text()
        cut_off = original.replace(rig.broker.url, f"mqtts://127.0.0.1:{dead_port()}")
        assert cut_off != original
        t = time.monotonic()
        r = await configure(rig, "cfg-nobroker", config=cut_off, health_window_s=10)
        assert r["status"] == "rolled_back"
        assert r["reason"].startswith("not healthy within 10 s: not connected to the broker")
        assert dso.statuses("cfg-nobroker") == ["accepted", "validated", "applied", "rolled_back"]
        assert rig.config_path.read_text() == original
        await online_with(rig, t, sha(original))
        await fresh_telemetry(rig, time.monotonic())
    in_rig(tmp_path, body)


def test_a_configuration_by_url_and_downloads_that_stall_or_exceed_their_size_are_refused(tmp_path):
    async def body(rig: Rig) -> None:
        dso = rig.dso
        good = rig.config_path.read_text().replace("HIL rig gateway", "by url").encode()
        async with HttpsFiles(rig.pki) as files:
            # drips one byte every 0.2 s: each gap far inside any read timeout, the whole bounded at 2 s
            url = files.put("/stall.toml", good, mode="drip", drip_s=0.2)
            r = await configure(rig, "url-stall", url=url, sha256=sha(good))
            assert r["status"] == "rejected"
            assert r["reason"] == ("download of params.url refused: not complete within 2 s "
                                   "(fleet.download_timeout_s bounds the whole download)")
            # more than the command declared: announced, or sent without a length
            url = files.put("/big.toml", good)
            r = await configure(rig, "url-big", url=url, sha256=sha(good), size=100)
            assert r["reason"] == (f"download of params.url refused: the server announces {len(good)} bytes, "
                                   f"more than the declared size of 100 bytes")
            url = files.put("/big2.toml", good, mode="no_length")
            r = await configure(rig, "url-big2", url=url, sha256=sha(good), size=100)
            assert r["reason"] == ("download of params.url refused: the server sent more than the declared size "
                                   "of 100 bytes")
            r = await configure(rig, "url-hash", url=url, sha256="0" * 64)
            assert r["reason"].startswith(f"download of params.url refused: sha256 mismatch: the {len(good)} "
                                          f"bytes hash to {sha(good)}")
            assert rig.config_path.read_bytes() != good
            # and one that is right
            url = files.put("/good.toml", good)
            r = await configure(rig, "url-good", url=url, sha256=sha(good), size=len(good), version="u1",
                                health_window_s=10)
            assert dso.statuses("url-good") == ["accepted", "validated", "applied", "healthy"]
            assert rig.config_path.read_bytes() == good
    in_rig(tmp_path, body)


def test_a_configuration_that_dies_at_start_twice_is_rolled_back_at_the_third(tmp_path):
    """systemd restarts an agent that dies (Restart=always); the pending change counts the starts. Here the two
    failed starts are in the counter (a crash that passes the validator cannot be made on purpose): the real
    `gridedge run` rolls back before it runs the new configuration, and says so over the broker."""
    async def body(rig: Rig) -> None:
        dso = rig.dso
        await rig.stop_agent()
        previous = rig.config_path.read_bytes()
        crashing = previous + b"\n# the configuration that crashed\n"
        fleet = tmp_path / "var" / "fleet"
        (fleet / PREVIOUS_FILE).write_bytes(previous)
        rig.config_path.write_bytes(crashing)
        write_json(fleet / TXN_FILE, {"cmd_id": "cfg-crash", "sha256": sha(crashing), "version": "v9",
                                      "phase": "applied", "previous_sha256": sha(previous), "window_s": 10,
                                      "starts": MAX_STARTS, "principal": "dso", "expected": ["inv1"]})
        t = time.monotonic()
        await rig.start_agent()
        r = await dso.wait_status("cfg-crash", "rolled_back", 20)
        assert r["reason"] == ("the agent did not come up with it: 2 starts ended before the health check "
                               "decided; back on the previous configuration")
        assert rig.config_path.read_bytes() == previous
        await online_with(rig, t, sha(previous))
        assert not (fleet / TXN_FILE).exists()
    in_rig(tmp_path, body)


def test_starts_are_counted_before_the_agent_is_built(tmp_path):
    """at_start: each start under a pending configuration counts; the third rolls back; nothing else is touched."""
    cfg_path = tmp_path / "gateway.toml"
    previous = (b'[gateway]\nid = "gw"\n[uplink]\nbroker = "mqtt://127.0.0.1"\nallow_plaintext = true\n'
                b'[storage]\ndir = "var"\n')
    new = previous + b"# new\n"
    cfg_path.write_bytes(new)
    fleet = tmp_path / "var" / "fleet"
    fleet.mkdir(parents=True)
    (fleet / PREVIOUS_FILE).write_bytes(previous)
    write_json(fleet / TXN_FILE, {"cmd_id": "c", "sha256": sha(new), "phase": "applied", "starts": 0,
                                  "previous_sha256": sha(previous), "window_s": 10, "expected": []})
    for n in range(1, MAX_STARTS + 1):
        assert at_start(load_config(cfg_path)).sha256 == sha(new)
        assert json.loads((fleet / TXN_FILE).read_text())["starts"] == n
    cfg = at_start(load_config(cfg_path))
    assert cfg.sha256 == sha(previous) and cfg_path.read_bytes() == previous
    txn = json.loads((fleet / TXN_FILE).read_text())
    assert txn["phase"] == "rolled_back" and txn["reported"] is False
    # a start under another configuration (a person put one back) does not count against the change
    assert at_start(load_config(cfg_path)).sha256 == sha(previous)
    assert json.loads((fleet / TXN_FILE).read_text()) == txn
