"""The head-end's de-duplication rules as the rig applies them (docs/mqtt-api.md, Delivery semantics)."""
from gridedge.hil.stream_audit import StreamAudit


def _msg(seq, msg_id):
    return {"gateway": "gw", "stream": "telemetry", "seq": seq, "msg_id": msg_id}


def test_duplicates_gaps_disorder_and_a_seq_issued_twice():
    a = StreamAudit()
    assert a.add("p/telemetry", _msg(0, "a"))
    assert not a.add("p/telemetry", _msg(0, "a"))          # re-delivery: same msg_id, dropped
    assert a.add("p/telemetry", _msg(2, "c"))
    assert a.add("p/telemetry", _msg(1, "b"))              # backwards on one topic
    assert a.add("p/backfill/telemetry", _msg(2, "x"))     # seq 2 again under another msg_id: issued twice
    rep = a.report("gw", "telemetry")
    assert (rep.first, rep.last, rep.received, rep.duplicates) == (0, 2, 3, 1)
    assert rep.out_of_order == [("p/telemetry", 2, 1)] and rep.reused == [2] and not rep.complete
    assert a.add("p/telemetry", _msg(4, "e"))
    assert a.report("gw", "telemetry").missing == [3]
