"""The audit trail: a chain that verifies, and every kind of tampering found and placed."""
from __future__ import annotations

import json

import pytest

from gridedge.security.audit import GENESIS, AuditLog, record_hash, verify


def _fill(d, n=10, **kw):
    with AuditLog(d, fsync=False, **kw) as log:
        for i in range(n):
            log.append("command", cmd_id=f"c{i}", decision="accepted")
        return log.seq, log.head


def _lines(d):
    files = sorted(d.glob("audit-*.jsonl"))
    return files, [f.read_bytes().splitlines(keepends=True) for f in files]


def test_a_fresh_chain_verifies_and_survives_a_restart(tmp_path):
    _fill(tmp_path, 5)
    seq, head = _fill(tmp_path, 5)  # a second process run appends to the same chain
    v = verify(tmp_path)
    assert v.ok, v.problems
    assert (v.records, v.first_seq, v.last_seq, v.head) == (10, 1, 10, head) and seq == 10
    first = json.loads(_lines(tmp_path)[1][0][0])
    assert first["prev"] == GENESIS and first["hash"] == record_hash(first)


def test_rotation_carries_the_chain_across_files(tmp_path):
    _fill(tmp_path, 200, max_file_bytes=4096, keep_files=100)
    files, _ = _lines(tmp_path)
    assert len(files) > 3
    v = verify(tmp_path)
    assert v.ok and v.records == 200, v.problems


def test_rotated_away_files_leave_a_chain_that_still_verifies(tmp_path):
    _fill(tmp_path, 200, max_file_bytes=4096, keep_files=2)
    v = verify(tmp_path)
    assert v.ok and v.last_seq == 200 and v.first_seq > 1, v.problems


@pytest.mark.parametrize("tamper, expect", [
    ("change", "record 4 was changed"),
    ("remove", "records removed"),
    ("swap", "re-ordered"),
    ("relink", "does not link"),
])
def test_tampering_is_found_and_placed(tmp_path, tamper, expect):
    _fill(tmp_path, 8)
    files, (lines,) = _lines(tmp_path)
    if tamper == "change":
        rec = json.loads(lines[3])
        rec["decision"] = "rejected"
        lines[3] = json.dumps(rec).encode() + b"\n"
    elif tamper == "remove":
        del lines[4]
    elif tamper == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif tamper == "relink":  # a record changed AND re-hashed: the next one no longer links to it
        rec = json.loads(lines[3])
        rec["decision"] = "rejected"
        rec["hash"] = record_hash(rec)
        lines[3] = json.dumps(rec).encode() + b"\n"
    files[0].write_bytes(b"".join(lines))
    v = verify(tmp_path)
    assert not v.ok and any(expect in p for p in v.problems), v.problems
    assert all(p.startswith(files[0].name) for p in v.problems)


def test_cutting_off_the_newest_records_is_caught_by_the_head_ends_anchor(tmp_path):
    with AuditLog(tmp_path, fsync=False) as log:
        recs = [log.append("write", device="inv1", points={"WMaxLimPct": 40}) for _ in range(6)]
    files, (lines,) = _lines(tmp_path)
    files[0].write_bytes(b"".join(lines[:4]))
    assert verify(tmp_path).ok  # the chain alone cannot tell
    v = verify(tmp_path, anchor=(recs[-1]["seq"], recs[-1]["hash"]))
    assert not v.ok and "missing" in v.problems[0]
    assert verify(tmp_path, anchor=(recs[2]["seq"], recs[2]["hash"])).ok


def test_a_torn_last_record_is_cut_off_and_the_chain_goes_on(tmp_path):
    _fill(tmp_path, 3)
    f = sorted(tmp_path.glob("audit-*.jsonl"))[-1]
    f.write_bytes(f.read_bytes() + b'{"seq":4,"ts":"2026')  # power lost mid-write
    seq, _ = _fill(tmp_path, 2)
    assert seq == 5
    assert verify(tmp_path).ok


def test_strings_from_outside_stay_on_one_line(tmp_path):
    with AuditLog(tmp_path, fsync=False) as log:
        log.append("command", cmd_id="evil\nforged line\x00\u202e")
    files, (lines,) = _lines(tmp_path)
    assert len(lines) == 1 and verify(tmp_path).ok


def test_listeners_see_every_record_and_cannot_lose_it(tmp_path):
    seen = []
    with AuditLog(tmp_path, fsync=False) as log:
        log.listeners.append(seen.append)
        log.listeners.append(lambda rec: 1 / 0)
        log.append("start", version="x")
    assert [r["event"] for r in seen] == ["start"] and verify(tmp_path).records == 1


def test_the_head_ends_copies_lost_in_a_crash_are_made_again_at_the_next_start(tmp_path):
    """The agent copies audit records into the outbox with the telemetry beat, and the outbox remembers the last
    one it took (in the same transaction). Records a crash left uncopied are copied at the next start."""
    from gridedge.agent import AUDIT_COPIED, Agent
    from gridedge.config import parse_config
    from gridedge.outbox import Outbox

    cfg = parse_config({"gateway": {"id": "gw1"}, "uplink": {"broker": "mqtt://127.0.0.1", "allow_plaintext": True},
                        "storage": {"dir": str(tmp_path / "var")}})
    (tmp_path / "var").mkdir()
    with AuditLog(tmp_path / "var" / "audit", fsync=False) as log:
        for i in range(5):
            log.append("command", cmd_id=f"c{i}", decision="accepted")
    with Outbox(tmp_path / "var" / "outbox.sqlite", gateway_id="gw1") as ob:  # the copies of records 1 and 2 made it
        ob.append_many([("audit", "p/audit", {"schema": "gridedge.audit/1", "n": i}, "event") for i in (1, 2)],
                       marks={AUDIT_COPIED: 2})
    agent = Agent(cfg)
    try:
        assert [r["seq"] for r in agent._audit_pending] == [3, 4, 5]
        agent._flush_telemetry()                      # the next beat copies them, and the mark moves on
        assert agent.outbox.marked(AUDIT_COPIED) == 5 and agent._audit_pending == []
        assert agent.outbox.stats()["count"] == 5
    finally:
        agent.outbox.close()
        agent.audit.close()
        agent.replay.close()
