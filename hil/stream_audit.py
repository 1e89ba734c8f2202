"""What a DSO-side consumer does with gridedge's at-least-once delivery: de-duplicate, then find gaps.

Rules (docs/mqtt-api.md): a msg_id seen before is a duplicate and is dropped; within one (gateway, stream)
the seqs that remain must be contiguous; live messages arrive in seq order on their topic and backfill
messages in seq order on <prefix>backfill/<kind>, each on its own.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class StreamReport:
    first: int | None = None
    last: int | None = None
    received: int = 0  # after de-duplication
    duplicates: int = 0
    missing: list[int] = field(default_factory=list)
    out_of_order: list[tuple[str, int, int]] = field(default_factory=list)  # (topic, previous seq, seq)
    reused: list[int] = field(default_factory=list)  # seqs that came with two different msg_ids: a gateway bug

    @property
    def complete(self) -> bool:
        return not self.missing and not self.out_of_order and not self.reused


class StreamAudit:
    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._seqs: dict[tuple[str, str], set[int]] = defaultdict(set)
        self._reused: dict[tuple[str, str], set[int]] = defaultdict(set)
        self._dups: dict[tuple[str, str], int] = defaultdict(int)
        self._last_on_topic: dict[str, int] = {}
        self._disorder: dict[tuple[str, str], list] = defaultdict(list)

    def add(self, topic: str, doc: dict) -> bool:
        """Take one message; False when it is a duplicate (or carries no stream envelope)."""
        if not isinstance(doc, dict) or "msg_id" not in doc or "seq" not in doc:
            return False
        key = (doc.get("gateway"), doc.get("stream"))
        if doc["msg_id"] in self._ids:
            self._dups[key] += 1
            return False
        self._ids.add(doc["msg_id"])
        seq = doc["seq"]
        prev = self._last_on_topic.get(topic)
        if prev is not None and seq < prev:
            self._disorder[key].append((topic, prev, seq))
        self._last_on_topic[topic] = seq
        if seq in self._seqs[key]:  # a new msg_id for a seq already seen: the same seq was issued twice
            self._reused[key].add(seq)
        self._seqs[key].add(seq)
        return True

    def report(self, gateway: str, stream: str) -> StreamReport:
        seqs = self._seqs.get((gateway, stream), set())
        rep = StreamReport(duplicates=self._dups.get((gateway, stream), 0),
                           out_of_order=list(self._disorder.get((gateway, stream), [])),
                           reused=sorted(self._reused.get((gateway, stream), ())))
        if seqs:
            rep.first, rep.last, rep.received = min(seqs), max(seqs), len(seqs)
            rep.missing = [s for s in range(rep.first, rep.last + 1) if s not in seqs]
        return rep
