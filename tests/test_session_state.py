"""The state topic tells the truth (issue 11): the last will says only what it can know (defects 9 and 16), and
after a crash the birth message carries the loss window that no seq gap shows (defect 10).

Real agent processes, SIGKILLed and restarted, with the rig's broker, simulator and DSO head-end.
"""
import signal
import time
import uuid

import pytest

from gridedge import contract, telemetry
from gridedge.hil.rig import Rig

from .aio import arun
from .conftest import VALIDATORS, validate_message

#: what changes while the agent runs: a will, fixed at connect time, cannot know it
LIVE_FIELDS = ("next_seq", "dropped_samples", "dropped", "outbox", "last_stored_t")


def states(rig) -> list[dict]:
    return [s.doc for s in rig.dso.seen if s.topic == rig.prefix + contract.TOPIC_STATE]


def telemetry_docs(rig) -> list[dict]:
    """Every telemetry message seen, live or backfilled, once (by msg_id)."""
    topics = (rig.prefix + "telemetry", rig.prefix + "backfill/telemetry")
    return list({s.doc["msg_id"]: s.doc for s in rig.dso.seen if s.topic in topics}.values())


def last_seq(rig) -> int:
    rep = rig.dso.audit.report(rig.gateway_id, "telemetry")
    return -1 if rep.last is None else rep.last


def online_count(rig) -> int:
    return sum(d["status"] == "online" for d in states(rig))


def test_last_will_is_small_and_its_ts_is_the_last_connect(tmp_path):
    async def scenario():
        async with Rig(tmp_path, gateway_id=f"gw-{uuid.uuid4().hex[:6]}", proxy=True) as rig:
            await rig.dso.wait_for(lambda: last_seq(rig) >= 5, 15, "telemetry seq 5")
            first = [d for d in states(rig) if d["status"] == "online"][-1]
            await rig.proxy.reset_all()  # the link drops: the agent connects again, registering its will anew
            await rig.dso.wait_for(lambda: online_count(rig) >= 2, 30, "the second birth message")
            await rig.dso.wait_for(lambda: last_seq(rig) >= 10, 15, "telemetry seq 10")
            await rig.stop_agent(signal.SIGKILL)
            await rig.dso.wait_for(lambda: states(rig)[-1]["status"] == "offline", 15, "the last will")
            return first, states(rig), last_seq(rig)

    first, docs, seq_seen = arun(scenario(), 90)
    will = docs[-1]
    validate_message("gridedge/v2/x/state", will)
    for field in LIVE_FIELDS:
        assert field not in will, f"the will claims {field} {will[field]} (telemetry seq {seq_seen} was seen)"
    assert will["will"] is True
    assert will["boot_id"] == first["boot_id"] and will["config_sha256"] == first["config_sha256"]
    # ts is the time of the connect that registered the will: the broker sent one when the link was reset (made at
    # the first connect, before the first birth message) and one at the kill (made at the second connect, after it)
    t = contract.parse_iso_utc
    wills = [d for d in docs if d.get("will")]
    assert len(wills) == 2 and wills[-1] is will
    assert t(wills[0]["ts"]) <= t(first["ts"]) < t(will["ts"])


def test_schema_keeps_live_fields_out_of_the_will():
    state = VALIDATORS["state"]
    will = {"schema": "gridedge.state/1", "gateway": "gw-1", "status": "offline", "ts": "2026-12-01T00:00:00.000Z",
            "boot_id": "ab" * 16, "will": True}
    state.validate(will)
    for field, value in (("next_seq", {"telemetry": 3}), ("dropped_samples", 0), ("last_stored_t", 1)):
        assert not state.is_valid(dict(will, **{field: value})), field
    assert not state.is_valid(dict(will, status="online"))


def test_sigkill_loss_window_in_the_birth_message(tmp_path):
    async def scenario():
        async with Rig(tmp_path, gateway_id=f"gw-{uuid.uuid4().hex[:6]}", dso_session_expiry_s=600) as rig:
            await rig.dso.wait_for(lambda: last_seq(rig) >= 8, 15, "telemetry seq 8")
            first_boot = [d for d in states(rig) if d["status"] == "online"][-1]["boot_id"]
            await rig.stop_agent(signal.SIGKILL)  # what it held in memory (< one telemetry interval) is gone
            restart_ns = time.time_ns()
            await rig.start_agent()
            birth = await rig.dso.wait_for(
                lambda: next((d for d in states(rig) if d["status"] == "online" and d["boot_id"] != first_boot),
                             None), 30, "the birth message of the new boot")
            await rig.dso.wait_for(
                lambda: any(b["t"] > restart_ns for d in telemetry_docs(rig) for b in d["blocks"]), 15,
                "telemetry of the new boot")
            assert await rig.stop_agent(signal.SIGTERM) == 0  # drains the outbox: every stored sample arrives
            await rig.dso.wait_for(lambda: states(rig)[-1]["status"] == "offline", 15, "the death message")
            for d in states(rig):
                validate_message(rig.prefix + "state", d)
            return birth, rig.dso.audit.report(rig.gateway_id, "telemetry"), telemetry_docs(rig), restart_ns

    birth, audit, docs, restart_ns = arun(scenario(), 120)
    assert audit.missing == [], "a seq gap: the loss would have shown without the state message"
    times = sorted(s.ts_ns for d in docs for s in telemetry.samples_of(d))
    before = [t for t in times if t < restart_ns]
    after = [t for t in times if t > restart_ns]
    assert "last_stored_t" in birth, f"the birth message does not say where the data stops: {birth}"
    assert birth["last_stored_t"] == before[-1], "last_stored_t is not the newest sample the head-end has"
    assert after[0] > birth["last_stored_t"]  # the window (last_stored_t, first sample of the new boot) is empty


@pytest.mark.parametrize("status", ["online", "offline"])
def test_state_documents_validate(status):
    doc = contract.state("gw-1", status, time.time_ns(), boot_id="ab" * 16, next_seq={"telemetry": 4},
                         last_stored_t=None)
    VALIDATORS["state"].validate(doc)
