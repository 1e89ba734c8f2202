"""The durable outbox: seqs survive restarts and SIGKILL, bounds drop by class, corrupt files are moved aside."""
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gridedge import contract, telemetry
from gridedge.core.model import Sample
from gridedge.outbox import DATA_CLASSES, Outbox, OutboxError, Replay

from .conftest import validate_message

GW = "gw-test-01"
S = 10**9


class FakeClock:
    def __init__(self, t: int = 1_800_000_000 * S) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def tel_body(n: int = 1) -> dict:
    """A telemetry body as the agent builds it (edge/telemetry.py), decoded to a dict: the outbox stores either."""
    samples = [Sample(f"inv1/W{i}", 1_800_000_000 * S + i, float(i), "W") for i in range(n)]
    enc = telemetry.body(contract.iso_utc(1_800_000_000 * S), telemetry.encode_samples(samples))
    return {**enc.head, **json.loads(b"{" + enc.raw + b"}")}


def result_body(cmd_id: str = "c1") -> dict:
    return contract.result(1_800_000_000 * S, cmd_id, "accepted")


def test_envelope_is_valid_contract_message(tmp_path):
    with Outbox(tmp_path / "o.db", gateway_id=GW) as ob:
        t = ob.append("telemetry", "gridedge/v2/gw/telemetry", tel_body(3), "telemetry")
        r = ob.append("result", "gridedge/v2/gw/result", result_body(), "result")
    for rec, topic in ((t, "telemetry"), (r, "result")):
        doc = json.loads(rec.payload)
        validate_message(topic, doc)
        assert (doc["gateway"], doc["stream"], doc["seq"], doc["msg_id"]) == (GW, rec.stream, rec.seq, rec.msg_id)
        assert list(doc)[:5] == ["schema", "gateway", "stream", "seq", "msg_id"]


def test_records_and_seq_survive_reopen(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, gateway_id=GW) as ob:
        first = [ob.append("telemetry", "t", tel_body(), "telemetry") for _ in range(5)]
        first += ob.append_many([("result", "r", result_body(f"c{i}"), "result") for i in range(3)])
        assert ob.next_seq() == {"result": 3, "telemetry": 5}
    with Outbox(path, gateway_id=GW) as ob:
        assert ob.next_seq() == {"result": 3, "telemetry": 5}
        assert ob.pending(100) == first
        ob.ack([r.id for r in first])  # acking everything must not reset the sequence
    with Outbox(path, gateway_id=GW) as ob:
        assert ob.pending(100) == []
        more = [ob.append("telemetry", "t", tel_body(), "telemetry") for _ in range(3)]
        assert [r.seq for r in more] == [5, 6, 7]
        assert min(r.id for r in more) > max(r.id for r in first)  # ids never reused either
        assert ob.append("event", "e", {"what": "x"}, "event").seq == 0  # each stream has its own sequence


def test_ack_removes_only_acked_and_pending_is_ordered(tmp_path):
    with Outbox(tmp_path / "o.db", gateway_id=GW, durability="normal") as ob:
        recs = ob.append_many([(("telemetry", "result")[i % 2], "t", {"i": i}, ("telemetry", "result")[i % 2])
                               for i in range(20)])
        assert ob.ack([recs[3].id, recs[4].id, recs[10].id, 999_999]) == 3
        left = [r for i, r in enumerate(recs) if i not in (3, 4, 10)]
        assert ob.pending(100) == left
        assert ob.pending(5) == left[:5]
        assert ob.pending(5, after_id=left[4].id) == left[5:10]
        assert ob.pending(100, upto=recs[6].id) == [r for r in left if r.id <= recs[6].id]
        tel = ob.pending(100, stream="telemetry")
        assert [r.seq for r in tel] == sorted(r.seq for r in tel) and {r.stream for r in tel} == {"telemetry"}
        assert ob.ack([]) == 0
        assert ob.mark() == recs[-1].id


def test_bad_input_is_refused_and_consumes_no_seq(tmp_path):
    with Outbox(tmp_path / "o.db", gateway_id=GW) as ob:
        for args, exc in [
            (("telemetry", "t", {"seq": 4}, "telemetry"), ValueError),
            (("telemetry", "t", {"msg_id": "x"}, "telemetry"), ValueError),
            (("telemetry", "t", {"gateway": "other"}, "telemetry"), ValueError),
            (("telemetry", "t", {"stream": "result"}, "telemetry"), ValueError),
            (("telemetry", "t", {}, "gossip"), ValueError),
            (("", "t", {}, "telemetry"), ValueError),
            (("telemetry", "t", [1, 2], "telemetry"), TypeError),
            (("telemetry", "t", {"v": float("nan")}, "telemetry"), ValueError),
            (("telemetry", "t", {"v": object()}, "telemetry"), TypeError),
        ]:
            with pytest.raises(exc):
                ob.append(*args)
        with pytest.raises(ValueError):  # the bad item makes the whole batch fail
            ob.append_many([("telemetry", "t", {}, "telemetry"), ("telemetry", "t", {"v": float("inf")}, "telemetry")])
        assert ob.pending() == [] and ob.next_seq() == {}
        assert ob.append("telemetry", "t", {}, "telemetry").seq == 0
    with pytest.raises(ValueError):
        Outbox(tmp_path / "x.db", gateway_id=GW, durability="off")
    with pytest.raises(ValueError):
        Outbox(tmp_path / "x.db", gateway_id=GW, max_age_s={"gossip": 1})
    with Outbox(tmp_path / "q.db", gateway_id=GW, quota_bytes=100) as ob, pytest.raises(ValueError, match="quota"):
        ob.append("telemetry", "t", tel_body(5), "telemetry")


def test_newest_sample_time_is_stored_with_the_records_it_describes(tmp_path):
    """stats()["newest_sample_ns"] is where the stored data ends (docs/durability.md): written in the append's own
    transaction, kept across a reopen, untouched by a batch that was refused."""
    path = tmp_path / "o.db"
    with Outbox(path, gateway_id=GW) as ob:
        assert ob.stats()["newest_sample_ns"] is None
        ob.append_many([("telemetry", "t", tel_body(), "telemetry")], newest_sample_ns=5 * S)
        with pytest.raises(ValueError):
            ob.append_many([("telemetry", "t", {"v": float("nan")}, "telemetry")], newest_sample_ns=9 * S)
        for bad in (1.5, True, "5"):
            with pytest.raises(TypeError):
                ob.append_many([("telemetry", "t", tel_body(), "telemetry")], newest_sample_ns=bad)
        ob.append("result", "r", result_body(), "result")  # an append without sample time leaves it as it is
    with Outbox(path, gateway_id=GW) as ob:
        assert ob.stats()["newest_sample_ns"] == 5 * S
        assert ob.next_seq() == {"result": 1, "telemetry": 1}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)


def _non_finite(v) -> bool:
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, dict):
        return any(_non_finite(x) for x in v.values())
    return isinstance(v, list) and any(_non_finite(x) for x in v)


def refusal(body) -> type[Exception] | None:
    """What append must raise for a body, by the rules in edge/outbox.py: not an object; a key the outbox assigns
    (seq, msg_id) or one that contradicts it (stream, gateway); a value JSON cannot carry."""
    if not isinstance(body, dict):
        return TypeError
    if "seq" in body or "msg_id" in body or body.get("stream", "telemetry") != "telemetry" \
            or body.get("gateway", GW) != GW or _non_finite(body):
        return ValueError
    return None


KEYS = st.sampled_from(["seq", "msg_id", "stream", "gateway", "schema"]) | st.text(max_size=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(KEYS, json_values | st.sampled_from(["telemetry", GW]), max_size=6) | json_values)
def test_fuzz_append_stores_or_refuses(tmp_path, body):
    """Any body: stored as given, or refused for a stated reason without using a seq; nothing else is refused."""
    with Outbox(tmp_path / "fuzz.db", gateway_id=GW, durability="normal") as ob:
        before = ob.next_seq().get("telemetry")
        expected = refusal(body)
        try:
            rec = ob.append("telemetry", "t", body, "telemetry")
        except (ValueError, TypeError) as exc:
            assert type(exc) is expected, (body, exc)
            assert ob.next_seq().get("telemetry") == before
            return
        assert expected is None, body
        doc = json.loads(rec.payload)
        assert doc["seq"] == rec.seq and doc["msg_id"] == rec.msg_id and doc["gateway"] == GW
        assert {k: v for k, v in doc.items() if k not in ("gateway", "stream", "seq", "msg_id")} == \
            {k: v for k, v in body.items() if k not in ("gateway", "stream")}
        assert ob.pending(1, after_id=rec.id - 1) == [rec]


CHILD = r"""
import sys
from gridedge.outbox import Outbox
ob = Outbox(sys.argv[1], gateway_id="gw-test-01", durability=sys.argv[2])
i = 0
while True:
    if i % 7 == 6:
        recs = ob.append_many([("result", "r", {"i": i}, "result"), ("telemetry", "t", {"i": i}, "telemetry")])
    else:
        recs = [ob.append("telemetry", "t", {"i": i}, "telemetry")]
    if i % 5 == 4:
        ob.ack([recs[0].id])  # acked records leave; their seqs must still never come back
    print(" ".join(f"{r.stream}:{r.seq}" for r in recs), flush=True)
    i += 1
"""


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_sigkill_loses_nothing_committed_and_reuses_no_seq(tmp_path, durability):
    path = tmp_path / "o.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), durability], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        for _ in range(300):  # committed before printed: every line names records that are on disk
            line = child.stdout.readline()
            assert line, "child died"
            lines.append(line)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        lines += child.stdout.read().splitlines()
        child.wait()
    reported: dict[str, list[int]] = {"telemetry": [], "result": []}
    acked: dict[str, set[int]] = {"telemetry": set(), "result": set()}
    for i, line in enumerate(lines):
        for k, item in enumerate(line.split()):
            stream, seq = item.split(":")
            reported[stream].append(int(seq))
            if i % 5 == 4 and k == 0:  # the child acked the first record of every fifth line
                acked[stream].add(int(seq))
    with Outbox(path, gateway_id=GW) as ob:
        stored: dict[str, list[int]] = {"telemetry": [], "result": []}
        after = 0
        while batch := ob.pending(128, after_id=after):
            for r in batch:
                stored[r.stream].append(r.seq)
            after = batch[-1].id
        nxt = ob.next_seq()
        for stream, seqs in reported.items():
            assert seqs == list(range(len(seqs))), "the child saw contiguous seqs"
            # what the child saw committed is in the store, unless it acked it; an acked record is gone
            have = set(stored[stream])
            assert sorted(set(seqs) - acked[stream] - have) == [], f"{stream}: committed records lost"
            assert sorted(acked[stream] & have) == [], f"{stream}: acked records still stored"
            # beyond what was reported, at most the one batch committed just before the kill
            assert have - set(seqs) <= {len(seqs)}, have - set(seqs)
            assert set(stored[stream]) <= set(range(nxt[stream]))
            assert nxt[stream] >= len(seqs)  # never below anything reported: no seq can be issued twice
        assert stored["telemetry"] == sorted(stored["telemetry"])
        new = ob.append("telemetry", "t", {}, "telemetry")
        assert new.seq == nxt["telemetry"] and new.seq >= len(reported["telemetry"])


def test_sigkill_store_keeps_every_unacked_reported_record(tmp_path):
    """Without acks the check is exact: every reported seq is stored, and the stored seqs are contiguous."""
    script = CHILD.replace("if i % 5 == 4:", "if False:")
    path = tmp_path / "o.db"
    child = subprocess.Popen([sys.executable, "-c", script, str(path), "full"], stdout=subprocess.PIPE, text=True)
    seen = []
    try:
        while len(seen) < 200:
            line = child.stdout.readline()
            assert line, "child died"
            seen += [int(x.split(":")[1]) for x in line.split() if x.startswith("telemetry:")]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        seen += [int(x.split(":")[1]) for x in child.stdout.read().split() if x.startswith("telemetry:")]
        child.wait()
    with Outbox(path, gateway_id=GW) as ob:
        stored = [r.seq for r in ob.pending(100_000, stream="telemetry")]
        assert stored == list(range(len(stored)))
        assert set(seen) <= set(stored)
        assert ob.next_seq()["telemetry"] == len(stored)


def test_quota_drops_lowest_class_oldest_first_and_counts_persist(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, gateway_id=GW, quota_bytes=10_000) as ob:
        size = len(ob.append("result", "r", {"pad": "x" * 900}, "result").payload)  # ~1 kB each
        ob.append_many([("settlement", "s", {"pad": "x" * 900}, "settlement"),
                        ("event", "e", {"pad": "x" * 900}, "event"),
                        ("event", "e", {"pad": "x" * 900}, "event")])
        tel = ob.append_many([("telemetry", "t", {"pad": "x" * 900}, "telemetry") for _ in range(5)])
        assert ob.stats()["dropped"] == dict.fromkeys(DATA_CLASSES, 0)
        # 9 records of ~size fit under 10 kB; each further telemetry pushes the oldest telemetry out
        new = ob.append("telemetry", "t", {"pad": "x" * 900}, "telemetry")
        left = ob.pending(100)
        assert tel[0] not in left and new in left and all(r in left for r in tel[1:])
        st1 = ob.stats()
        assert st1["dropped"]["telemetry"] == 1 and st1["bytes"] <= 10_000
        # results and settlement arriving now push out all telemetry first, then events, never a result
        ob.append_many([("result", "r", {"pad": "x" * 900}, "result") for _ in range(7)])
        st2 = ob.stats()
        classes = {c: st2["classes"][c]["count"] for c in DATA_CLASSES}
        assert classes == {"telemetry": 0, "event": 0, "verification": 0, "settlement": 1, "result": 8}
        assert st2["dropped"] == {"telemetry": 6, "event": 2, "verification": 0, "settlement": 0, "result": 0}
        assert st2["classes"]["telemetry"]["dropped_quota"] == 6
        assert st2["bytes"] <= 10_000 and st2["bytes"] == sum(len(r.payload) for r in ob.pending(100))
        assert size * 9 <= 10_000
        # only when nothing else is left do results go, oldest first
        ob.append_many([("result", "r", {"pad": "x" * 900}, "result") for _ in range(2)])
        st3 = ob.stats()
        assert st3["dropped"]["settlement"] == 1 and st3["dropped"]["result"] == 1
        assert [json.loads(r.payload)["seq"] for r in ob.pending(100)] == list(range(1, 10))
    with Outbox(path, gateway_id=GW, quota_bytes=10_000) as ob:
        assert ob.stats()["dropped"] == st3["dropped"]


def test_age_bound_per_class_and_counted(tmp_path):
    clock = FakeClock()
    path = tmp_path / "o.db"
    ages = {"telemetry": 3600, "result": 10 * 86400}
    with Outbox(path, gateway_id=GW, max_age_s=ages, clock=clock) as ob:
        ob.append("telemetry", "t", {}, "telemetry")  # aged out below
        old_e = ob.append("event", "e", {}, "event")  # default age: 30 days
        old_r = ob.append("result", "r", {}, "result")
        clock.t += 3000 * S
        young_t = ob.append("telemetry", "t", {}, "telemetry")
        clock.t += 601 * S  # old_t is now 3601 s old, young_t 601 s
        assert ob.pending() == [old_e, old_r, young_t]
        assert ob.stats()["classes"]["telemetry"]["dropped_age"] == 1
        clock.t += 9 * 86400 * S
    with Outbox(path, gateway_id=GW, max_age_s=ages, clock=clock) as ob:
        # after a long stop the bound applies at once, before anything is published
        assert ob.pending() == [old_e, old_r]
        clock.t += 2 * 86400 * S
        ob.expire()
        st_ = ob.stats()
        assert ob.pending() == [old_e]
        assert st_["dropped"] == {"telemetry": 2, "event": 0, "verification": 0, "settlement": 0, "result": 1}
        assert st_["oldest_age_s"] == pytest.approx((clock.t - old_e.created_ns) / S)
        assert st_["classes"]["result"]["dropped_quota"] == 0


def test_bounded_file_and_memory_over_a_long_outage(tmp_path):
    path = tmp_path / "o.db"
    quota = 256 * 1024
    n = 200_000

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    with Outbox(path, gateway_id=GW, quota_bytes=quota, durability="normal") as ob:
        item = ("telemetry", "gridedge/v2/gw/telemetry", {"v": 1.0}, "telemetry")
        peak_files = 0
        for i in range(n // 1000):
            ob.append_many([item] * 1000)
            if i == 49:
                rss_at_50k = rss_kib()
            files = path.stat().st_size + os.path.getsize(str(path) + "-wal")
            peak_files = max(peak_files, files)
        st_ = ob.stats()
        assert st_["bytes"] <= quota
        assert st_["count"] + st_["dropped"]["telemetry"] == n
        assert st_["next_seq"]["telemetry"] == n
        assert rss_kib() - rss_at_50k < 20 * 1024  # no growth with the number of records ever appended
        oldest = ob.pending(3)
        assert [r.seq for r in oldest] == [n - st_["count"] + k for k in range(3)]
    # WAL is bounded by the checkpoint (journal_size_limit 8 MiB), the main file by quota plus overhead
    assert path.stat().st_size < 4 * quota
    assert peak_files < 4 * quota + 9 * 2**20


def test_garbage_file_is_moved_aside_and_reported(tmp_path, caplog):
    path = tmp_path / "o.db"
    garbage = os.urandom(3 * 4096)
    path.write_bytes(garbage)
    with Outbox(path, gateway_id=GW) as ob:
        st_ = ob.stats()
        assert st_["store_resets"] == 1 and st_["last_reset"]["moved_to"].startswith("o.db.corrupt-")
        assert (tmp_path / st_["last_reset"]["moved_to"]).read_bytes() == garbage  # kept for inspection
        rec = ob.append("telemetry", "t", {}, "telemetry")
        # nothing could be salvaged: seqs restart above anything the old file can have issued
        assert rec.seq >= 1_700_000_000_000 and st_["seq_floor"] == rec.seq
        assert ob.pending() == [rec]
    assert any(r.levelname == "ERROR" and "moved aside" in r.getMessage() for r in caplog.records)
    with Outbox(path, gateway_id=GW) as ob:  # the fresh store is a normal store now
        assert ob.stats()["store_resets"] == 1
        assert ob.append("telemetry", "t", {}, "telemetry").seq == rec.seq + 1


def test_corrupt_pages_are_detected_and_seqs_salvaged(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, gateway_id=GW, durability="normal") as ob:
        ob.append_many([("telemetry", "t", {"pad": "y" * 200, "i": i}, "telemetry") for i in range(3000)])
        nxt = ob.next_seq()["telemetry"]
    size = path.stat().st_size
    with open(path, "r+b") as f:  # wreck a page in the middle of the records table
        f.seek((size // 2) // 4096 * 4096)
        f.write(b"\xff" * 4096)
    with Outbox(path, gateway_id=GW) as ob:
        st_ = ob.stats()
        reason = st_["last_reset"]["reason"]
        assert st_["store_resets"] == 1 and ("quick_check" in reason or "malformed" in reason)
        assert ob.next_seq() == {"telemetry": nxt}  # the seqs table was still readable
        rec = ob.append("telemetry", "t", {}, "telemetry")
        assert rec.seq == nxt and rec.id > 3000


def test_corruption_found_at_run_time_resets_the_store(tmp_path, caplog):
    path = tmp_path / "o.db"
    with Outbox(path, gateway_id=GW, durability="normal") as ob:
        ob.append_many([("telemetry", "t", {"pad": "z" * 200, "i": i}, "telemetry") for i in range(3000)])
        nxt = ob.next_seq()["telemetry"]
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for page in range(size // 4096 // 2, size // 4096 - 1, 7):
            f.seek(page * 4096)
            f.write(b"\x00\xff" * 2048)
    with Outbox(path, gateway_id=GW, verify=False) as ob:  # not checked at open: found when records are read
        assert ob.stats()["store_resets"] == 0
        after, seen = 0, 0
        while batch := ob.pending(200, after_id=after):
            after, seen = batch[-1].id, seen + len(batch)
        assert seen < 3000
        st_ = ob.stats()
        assert st_["store_resets"] == 1 and "run time" in st_["last_reset"]["reason"]
        rec = ob.append("telemetry", "t", {}, "telemetry")
        assert rec.seq == nxt and rec.id > 3000  # ids continue too: a publisher's cursors stay valid
    assert any("moved aside" in r.getMessage() for r in caplog.records)


def test_foreign_sqlite_file_is_moved_aside_newer_schema_is_refused(tmp_path):
    path = tmp_path / "o.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()
    with Outbox(path, gateway_id=GW) as ob:
        assert ob.stats()["store_resets"] == 1
    newer = tmp_path / "n.db"
    with Outbox(newer, gateway_id=GW) as ob:
        ob.append("telemetry", "t", {}, "telemetry")
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value=99 WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(newer, gateway_id=GW)
    assert not list(tmp_path.glob("n.db.corrupt-*"))


def test_command_results_survive_reopen_and_expire(tmp_path):
    clock = FakeClock()
    path = tmp_path / "o.db"
    with Outbox(path, gateway_id=GW, keep_results=3, keep_results_s=86400, clock=clock) as ob:
        ob.remember_result("c1", b"accepted")
        ob.remember_result("c1", b"active")
        assert ob.results_for("c1") == [b"accepted", b"active"]
        assert ob.results_for("never") is None
        with pytest.raises(ValueError):
            ob.remember_result("", b"x")
        with pytest.raises(TypeError):
            ob.remember_result("c9", "text")
    with Outbox(path, gateway_id=GW, keep_results=3, keep_results_s=86400, clock=clock) as ob:
        assert ob.results_for("c1") == [b"accepted", b"active"]
        for i in range(2, 5):
            clock.t += S
            ob.remember_result(f"c{i}", b"rejected")
        assert ob.results_for("c1") is None  # the oldest of 4 goes when 3 are kept
        assert [ob.results_for(f"c{i}") for i in range(2, 5)] == [[b"rejected"]] * 3
        clock.t += 86400 * S - S
        assert ob.results_for("c2") is None and ob.results_for("c4") == [b"rejected"]


def test_replay_sends_live_first_and_backlog_at_a_rate(tmp_path):
    mono = [0.0]
    with Outbox(tmp_path / "o.db", gateway_id=GW, durability="normal") as ob:
        backlog = ob.append_many([("telemetry", "t", {"i": i}, "telemetry") for i in range(10)])
        ob.ack([backlog[0].id])  # acked before the outage ended: not replayed
        rp = Replay(ob, backlog_rate=2.0, burst=2, clock=lambda: mono[0])
        assert rp.mark == backlog[-1].id
        live = ob.append_many([("result", "r", {"i": i}, "result") for i in range(3)])
        got = rp.take(100)
        assert got == [(r, False) for r in live] + [(backlog[1], True), (backlog[2], True)]
        assert rp.take(100) == [] and rp.wait_s() == pytest.approx(0.5)
        newer = ob.append("telemetry", "t", {"i": 99}, "telemetry")
        assert rp.take(100) == [(newer, False)]  # live is never held back by the rate limit
        mono[0] += 1.0
        assert rp.take(1) == [(backlog[3], True)]  # limit counts live and backlog together
        assert [r for r, flag in rp.take(100)] == [backlog[4]]
        mono[0] += 100.0
        sent = []
        while not rp.backlog_done:
            batch = rp.take(100)
            assert all(flag for _, flag in batch)
            sent += [r for r, _ in batch]
            mono[0] += 1.0
        assert sent == backlog[5:] and rp.wait_s() is None
        ob.ack([r.id for r in backlog + live] + [newer.id])
        assert ob.pending() == []
        empty = Replay(ob)  # ids are never reused, so the mark stays; the backlog is found empty at once
        assert empty.mark == newer.id and empty.take() == [] and empty.backlog_done


class OutboxMachine(RuleBasedStateMachine):
    """Random append/ack/reopen/clock steps against a plain model of the store and its drop policy."""

    QUOTA = 3000
    AGES = {"telemetry": 50, "event": 80, "verification": 100, "settlement": 200, "result": 300}

    @initialize()
    def setup(self):
        import tempfile
        self.dir = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        self.path = os.path.join(self.dir.name, "o.db")
        self.model: list = []  # Records not acked or dropped, in id order
        self.dropped = dict.fromkeys(DATA_CLASSES, 0)
        self.next = {}
        self.ob = self._open()

    def _open(self):
        return Outbox(self.path, gateway_id=GW, quota_bytes=self.QUOTA, max_age_s=self.AGES, durability="normal",
                      clock=self.clock)

    def _apply_bounds(self, quota=True):
        total = sum(len(r.payload) for r in self.model)
        while quota and total > self.QUOTA:
            victim = min(self.model, key=lambda r: (DATA_CLASSES.index(r.data_class), r.id))
            self.model.remove(victim)
            self.dropped[victim.data_class] += 1
            total -= len(victim.payload)
        for r in list(self.model):
            if r.created_ns < self.clock.t - self.AGES[r.data_class] * S:
                self.model.remove(r)
                self.dropped[r.data_class] += 1

    def _added(self, recs):
        for r in recs:
            assert r.seq == self.next.get(r.stream, 0)
            self.next[r.stream] = r.seq + 1
        self.model += recs
        self._apply_bounds()

    @rule(cls=st.sampled_from(DATA_CLASSES), pad=st.integers(0, 400))
    def append(self, cls, pad):
        self._added([self.ob.append(cls, "t/" + cls, {"pad": "p" * pad}, cls)])

    @rule(items=st.lists(st.tuples(st.sampled_from(DATA_CLASSES), st.integers(0, 300)), min_size=1, max_size=8))
    def append_many(self, items):
        self._added(self.ob.append_many([(c, "t/" + c, {"pad": "p" * p}, c) for c, p in items]))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def ack(self, data):
        chosen = data.draw(st.lists(st.sampled_from(self.model), unique_by=lambda r: r.id, max_size=6))
        self.ob.ack([r.id for r in chosen] + [10**9])
        for r in chosen:
            self.model.remove(r)

    @rule(dt=st.integers(0, 120))
    def tick(self, dt):
        self.clock.t += dt * S

    @rule()
    def reopen(self):
        self.ob.close()
        self.ob = self._open()

    @invariant()
    def matches_model(self):
        got = self.ob.pending(10_000)
        self._apply_bounds(quota=False)  # pending applies the age bound first
        assert got == self.model
        st_ = self.ob.stats()
        assert st_["dropped"] == self.dropped
        assert st_["bytes"] == sum(len(r.payload) for r in self.model) <= self.QUOTA
        assert st_["next_seq"] == self.next
        for stream in self.next:
            seqs = [r.seq for r in got if r.stream == stream]
            assert seqs == sorted(seqs)

    def teardown(self):
        self.ob.close()
        self.dir.cleanup()


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
