"""Durable outbox: every uplink message is stored here before it is published, and leaves only after its PUBACK.

Why: a gateway loses data when the uplink or the agent dies (a buffer in memory is gone after a restart)
and fills its disk after a long outage. The outbox is one SQLite file (WAL mode) in the agent's storage dir:

- ``append()`` / ``append_many()`` give each message its envelope (``gateway``, ``stream``, ``seq``,
  ``msg_id``) and store it, seq assignment and insert in one transaction, so a seq is never reused, not even
  after a SIGKILL or, with ``durability="full"``, a power loss. The stored payload bytes are final: a re-send
  after a reconnect is byte-identical, so the head-end de-duplicates it by ``msg_id``.
- ``pending()`` reads the oldest unacknowledged records (id order; within a stream that is seq order) with
  a LIMIT, so memory stays bounded whatever the length of the outage. ``ack(ids)`` after the PUBACK removes them.
- Bounds: ``quota_bytes`` (sum of stored payload lengths) and ``max_age_s``. On the quota, the oldest records of
  the lowest-priority class that has records go first: telemetry, then event, verification, settlement, and
  command results last. Records older than their class's max age are dropped. Every drop is counted per class
  and persisted, so the state topic can report totals across restarts.
- ``remember_result()`` / ``results_for()``: the results given to a command, kept across restarts, so a
  re-delivered command is answered again but never executed twice.
- A file that is not a SQLite database, or is corrupt, is moved aside (``<name>.corrupt-<UTC time>``), logged
  as an error, a fresh store is started and ``stats()["store_resets"]`` counts it. Seq numbers are salvaged
  from the old file where readable; a stream not read back restarts from the wall clock in ms, which is above
  any seq the old store can have issued (at < 1000 messages/s) and shows the head-end a gap, which is the truth.

Replay after a reconnect (backfill). Records appended before the reconnect are the backlog; live data must
not wait behind hours of it. ``mark()`` is the highest id ever issued: records with ``id <= mark`` are backlog.
``Replay`` wraps the two cursors and a token bucket, so a publisher is a short loop::

    replay = Replay(outbox, backlog_rate=50.0)          # at every (re)connect
    while connected:
        batch = replay.take(100)                         # live records first, then backlog at <= 50 records/s
        for rec, backfill in batch:
            await mqtt.publish(rec.topic, rec.payload)   # returns after the PUBACK; flag backfill e.g. as an
            outbox.ack([rec.id])                         # MQTT 5 user property: the payload itself is final
        if not batch:
            await new_append_event_or(replay.wait_s())   # the caller's own wake-up

Within the backlog the order is oldest first; a backlog record has a lower seq than live ones already sent,
and the flag tells the consumer it is filling a gap, not going backwards. A publish that fails drops the
Replay: the next connection makes a new one, and everything not acked is pending again.

Use from one thread (the asyncio loop thread). Every call is one short synchronous transaction (tens of
microseconds to a few ms, plus one fsync per commit with ``durability="full"``): batch appends with
``append_many()`` to keep throughput. See docs/durability.md.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .contract import dumps
from .core.rate import TokenBucket
from .telemetry import Encoded

log = logging.getLogger("gridedge.outbox")

DATA_CLASSES = ("telemetry", "event", "verification", "settlement", "result")
"""Drop priority, dropped first to dropped last."""
_CLASS_INDEX = {name: i for i, name in enumerate(DATA_CLASSES)}
DURABILITY = {"full": "FULL", "normal": "NORMAL"}
SCHEMA_VERSION = 1
_CHUNK = 500  # rows per LIMITed step when dropping or acking: bounds memory and statement size
_RESERVED = ("seq", "msg_id")
_NEVER = 2**63 - 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seqs (gateway TEXT NOT NULL, stream TEXT NOT NULL, next_seq INTEGER NOT NULL,
    PRIMARY KEY (gateway, stream)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, seq INTEGER NOT NULL, msg_id TEXT NOT NULL,
    topic TEXT NOT NULL, payload BLOB NOT NULL, data_class INTEGER NOT NULL, created_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS records_class ON records (data_class, id);
CREATE INDEX IF NOT EXISTS records_stream ON records (stream, id);
CREATE TABLE IF NOT EXISTS classes (data_class INTEGER PRIMARY KEY, count INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, dropped_quota INTEGER NOT NULL DEFAULT 0,
    dropped_age INTEGER NOT NULL DEFAULT 0);
INSERT OR IGNORE INTO classes (data_class) VALUES {", ".join(f"({i})" for i in range(len(DATA_CLASSES)))};
CREATE TRIGGER IF NOT EXISTS records_ins AFTER INSERT ON records BEGIN
    UPDATE classes SET count = count + 1, bytes = bytes + length(NEW.payload) WHERE data_class = NEW.data_class;
END;
CREATE TRIGGER IF NOT EXISTS records_del AFTER DELETE ON records BEGIN
    UPDATE classes SET count = count - 1, bytes = bytes - length(OLD.payload) WHERE data_class = OLD.data_class;
END;
CREATE TABLE IF NOT EXISTS commands (cmd_id TEXT PRIMARY KEY, first_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS commands_age ON commands (first_ns);
CREATE TABLE IF NOT EXISTS cmd_results (id INTEGER PRIMARY KEY AUTOINCREMENT, cmd_id TEXT NOT NULL,
    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS cmd_results_cmd ON cmd_results (cmd_id, id);
"""


class OutboxError(Exception):
    """The store cannot be used as asked (e.g. it was written by a newer agent); nothing was destroyed."""


class _Corrupt(Exception):
    """Internal: the file is not a usable outbox database."""


@dataclass(frozen=True, slots=True)
class Record:
    id: int  # store-wide, strictly increasing, never reused: the cursor for pending() and mark()
    stream: str
    seq: int
    msg_id: str
    topic: str
    payload: bytes  # the exact bytes to publish
    data_class: str
    created_ns: int  # UTC ns when appended


def _is_corruption(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


class Outbox:
    """The durable outbox of one gateway. See the module docstring for the publish/ack/replay cycle."""

    def __init__(self, path: Path | str, *, gateway_id: str, quota_bytes: int = 256 * 2**20,
                 max_age_s: float | Mapping[str, float] = 30 * 86400, durability: str = "full",
                 keep_results: int = 1000, keep_results_s: float = 7 * 86400, verify: bool = True,
                 clock: Callable[[], int] = time.time_ns) -> None:
        """Open or create the store at `path`. `max_age_s` is one value for every class or a mapping
        class -> seconds (classes not named keep 30 days). `verify` runs PRAGMA quick_check at open
        (reads the whole file once; turn off only if start-up time matters more than detecting corruption)."""
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, got {durability!r}")
        if not isinstance(gateway_id, str) or not gateway_id:
            raise ValueError("gateway_id must be a non-empty string")
        if not isinstance(quota_bytes, int) or quota_bytes <= 0:
            raise ValueError(f"quota_bytes must be a positive integer, got {quota_bytes!r}")
        ages = dict.fromkeys(DATA_CLASSES, 30 * 86400.0)
        if isinstance(max_age_s, Mapping):
            unknown = set(max_age_s) - set(DATA_CLASSES)
            if unknown:
                raise ValueError(f"max_age_s: unknown data class {sorted(unknown)[0]!r}; "
                                 f"known: {', '.join(DATA_CLASSES)}")
            ages.update(max_age_s)
        else:
            ages = dict.fromkeys(DATA_CLASSES, max_age_s)
        for name, age in ages.items():
            if isinstance(age, bool) or not isinstance(age, (int, float)) or not age > 0:
                raise ValueError(f"max_age_s for {name} must be a positive number of seconds, got {age!r}")
        if not isinstance(keep_results, int) or keep_results < 1 or not keep_results_s > 0:
            raise ValueError("keep_results must be an integer >= 1 and keep_results_s > 0")
        self.path = Path(path)
        self.gateway_id = gateway_id
        self.quota_bytes = quota_bytes
        self.durability = durability
        self.keep_results = keep_results
        self.keep_results_s = keep_results_s
        self._max_age_ns = [int(ages[c] * 1e9) for c in DATA_CLASSES]
        self._clock = clock
        self._verify = verify
        self._seq_cache: dict[str, int] = {}  # what this process knows; used to salvage seqs after corruption
        self._max_id = 0  # likewise for record ids, so ids (and cursors held by a Replay) keep increasing
        self._age_due_ns: int | None = None  # no record expires before this (None: unknown): skips most age queries
        self._db: sqlite3.Connection | None = None
        self._open()

    # -- opening and recovery ---------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self._db = self._connect(self._verify)
        except _Corrupt as exc:
            self._reset(str(exc))

    def _connect(self, verify: bool) -> sqlite3.Connection:
        existed = self.path.exists() and self.path.stat().st_size > 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("outbox %s: journal mode is %s, not WAL (file system without shared memory?)",
                            self.path, mode)
            db.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
            db.execute("PRAGMA journal_size_limit=8388608")  # WAL truncated to 8 MiB after a checkpoint
            if verify and existed:
                rows = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
                if rows != ["ok"]:
                    raise _Corrupt("quick_check: " + "; ".join(rows))
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise _Corrupt(f"not a gridedge outbox (tables: {', '.join(sorted(tables))})")
            if "meta" in tables:
                version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if version is None or not isinstance(version[0], int):
                    raise _Corrupt("outbox meta table has no schema_version")
                if version[0] > SCHEMA_VERSION:
                    raise OutboxError(f"{self.path}: outbox schema version {version[0]} is newer than this agent's "
                                      f"{SCHEMA_VERSION}; refusing to touch it (upgrade the agent or move the file)")
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA)  # one transaction with the meta rows below
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('seq_floor', 0)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('store_resets', 0)")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            db.close()  # closing rolls back an open transaction
            if _is_corruption(exc):
                raise _Corrupt(str(exc)) from exc
            raise
        except BaseException:
            db.close()
            raise
        self._age_due_ns = None
        return db

    def _reset(self, reason: str) -> None:
        """Move the unusable file aside, start a fresh store that continues the seq numbers, record the event."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        now = self._clock()
        stamp = datetime.fromtimestamp(now / 1e9, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.replace(side, Path(str(aside) + suffix))
        seqs, floor, resets, max_id = _salvage(aside)
        max_id = max(max_id, self._max_id)
        for stream, nxt in self._seq_cache.items():
            key = (self.gateway_id, stream)
            seqs[key] = max(seqs.get(key, 0), nxt)
        # a stream not read back (the table may be partly unreadable) restarts above any seq the old file
        # can have issued: the wall clock in ms, unless the old floor was higher already
        floor = max(floor or 0, now // 1_000_000)
        log.error("outbox %s unusable (%s): moved aside to %s, starting a fresh store (seqs of %s salvaged, "
                  "other streams from %d)", self.path, reason, aside.name, ", ".join(s for _, s in seqs) or "no stream",
                  floor)
        db = self._connect(verify=False)
        with _transaction(db):
            db.execute("UPDATE meta SET value=? WHERE key='seq_floor'", (floor,))
            db.execute("UPDATE meta SET value=? WHERE key='store_resets'", (resets + 1,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_reset', ?)",
                       (dumps({"ns": now, "moved_to": aside.name, "reason": reason[:500]}).decode(),))
            db.executemany("INSERT OR REPLACE INTO seqs VALUES (?, ?, ?)",
                           [(g, s, n) for (g, s), n in seqs.items()])
            if max_id:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)", (max_id,))
        self._db = db

    def _guard(self, fn: Callable, *args):
        """Run one store operation; on corruption found at run time, reset the store and retry once."""
        if self._db is None:
            raise OutboxError("outbox is closed")
        try:
            return fn(*args)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise
            self._reset(f"at run time: {exc}")
            return fn(*args)

    # -- appending --------------------------------------------------------------------------------
    def append(self, stream: str, topic: str, body: dict | Encoded, data_class: str) -> Record:
        """Store one message; body is the message without seq/msg_id (append adds gateway, stream, seq, msg_id).
        An Encoded body's raw JSON is spliced in after the envelope as it is (telemetry blocks)."""
        return self.append_many([(stream, topic, body, data_class)])[0]

    def append_many(self, items: Iterable[tuple[str, str, dict, str]], *,
                    newest_sample_ns: int | None = None, marks: dict[str, int] | None = None) -> list[Record]:
        """Store several messages in one transaction (one fsync with durability="full"). All or none.

        `newest_sample_ns`: the time of the newest sample in them, kept in the same transaction, so that after a
        crash stats()["newest_sample_ns"] is exactly where the stored data ends (what memory held is lost).
        `marks`: other integers kept in the same transaction (`marked(name)` reads them), e.g. the last audit record
        copied for the head-end.
        Raises ValueError/TypeError for a bad item (nothing is stored then). Records returned may already have
        been dropped again by the quota when the batch itself overflows it."""
        items = list(items)
        for stream, topic, body, data_class in items:
            _check_item(stream, topic, body, data_class, self.gateway_id)
        if newest_sample_ns is not None and type(newest_sample_ns) is not int:  # not a bool, not a float
            raise TypeError(f"newest_sample_ns must be an int (ns), got {newest_sample_ns!r}")
        for name, value in (marks or {}).items():
            if not isinstance(name, str) or not name.startswith("mark:") or type(value) is not int:
                raise TypeError(f"marks are 'mark:<name>' -> int, got {name!r}: {value!r}")
        return self._guard(self._append_many, items, newest_sample_ns, marks or {})

    def marked(self, name: str) -> int | None:
        """An integer kept with append_many(marks=...), or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
        return row[0] if row else None

    def _append_many(self, items: list, newest_sample_ns: int | None, marks: dict) -> list[Record]:
        db = self._db
        now = self._clock()
        out: list[Record] = []
        with _transaction(db):
            floor = db.execute("SELECT value FROM meta WHERE key='seq_floor'").fetchone()[0]
            next_seq: dict[str, int] = {}
            for stream, topic, body, data_class in items:
                if stream not in next_seq:
                    row = db.execute("SELECT next_seq FROM seqs WHERE gateway=? AND stream=?",
                                     (self.gateway_id, stream)).fetchone()
                    next_seq[stream] = row[0] if row else floor
                seq = next_seq[stream]
                next_seq[stream] = seq + 1
                msg_id = uuid.uuid4().hex
                head = body.head if isinstance(body, Encoded) else body
                doc = {"schema": head["schema"]} if "schema" in head else {}
                doc.update(gateway=self.gateway_id, stream=stream, seq=seq, msg_id=msg_id)
                for k, v in head.items():
                    doc.setdefault(k, v)
                payload = dumps(doc)
                if isinstance(body, Encoded):  # pre-encoded bulk (telemetry blocks): spliced in, not re-encoded
                    payload = payload[:-1] + b"," + body.raw + b"}"
                    if body.compress is not None:  # the whole message, once (edge/compression.py)
                        payload = body.compress(payload)
                if len(payload) > self.quota_bytes:
                    raise ValueError(f"message of {len(payload)} bytes exceeds the outbox quota of {self.quota_bytes}")
                cls = _CLASS_INDEX[data_class]
                cur = db.execute("INSERT INTO records (stream, seq, msg_id, topic, payload, data_class, created_ns) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (stream, seq, msg_id, topic, payload, cls, now))
                out.append(Record(cur.lastrowid, stream, seq, msg_id, topic, payload, data_class, now))
                if self._age_due_ns is not None:
                    self._age_due_ns = min(self._age_due_ns, now + self._max_age_ns[cls])
            db.executemany("INSERT INTO seqs VALUES (?, ?, ?) ON CONFLICT (gateway, stream) "
                           "DO UPDATE SET next_seq = excluded.next_seq",
                           [(self.gateway_id, s, n) for s, n in next_seq.items()])
            if newest_sample_ns is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('newest_sample_ns', ?)", (newest_sample_ns,))
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(marks.items()))
            self._enforce_quota(db)
            self._enforce_age(db, now)
        self._seq_cache.update(next_seq)
        if out:
            self._max_id = out[-1].id
        return out

    # -- bounds -----------------------------------------------------------------------------------
    def _enforce_quota(self, db: sqlite3.Connection) -> None:
        excess = db.execute("SELECT SUM(bytes) FROM classes").fetchone()[0] - self.quota_bytes
        if excess <= 0:
            return
        for cls in range(len(DATA_CLASSES)):
            last = 0
            while excess > 0:
                rows = db.execute("SELECT id, length(payload) FROM records WHERE data_class=? AND id>? "
                                  "ORDER BY id LIMIT ?", (cls, last, _CHUNK)).fetchall()
                if not rows:
                    break
                n = 0
                for rid, size in rows:
                    n += 1
                    excess -= size
                    last = rid
                    if excess <= 0:
                        break
                db.execute("DELETE FROM records WHERE data_class=? AND id<=?", (cls, last))
                db.execute("UPDATE classes SET dropped_quota = dropped_quota + ? WHERE data_class=?", (n, cls))
            if excess <= 0:
                return

    def _enforce_age(self, db: sqlite3.Connection, now: int) -> None:
        """Drop, per class, records at the head (oldest appended) that are older than the class's max age."""
        if self._age_due_ns is not None and now < self._age_due_ns:
            return
        due = _NEVER
        for cls in range(len(DATA_CLASSES)):
            cutoff = now - self._max_age_ns[cls]
            last = 0
            while True:
                rows = db.execute("SELECT id, created_ns FROM records WHERE data_class=? AND id>? "
                                  "ORDER BY id LIMIT ?", (cls, last, _CHUNK)).fetchall()
                n = 0
                head_ns = None
                for rid, created in rows:
                    if created >= cutoff:
                        head_ns = created
                        break
                    n += 1
                    last = rid
                if n:
                    db.execute("DELETE FROM records WHERE data_class=? AND id<=?", (cls, last))
                    db.execute("UPDATE classes SET dropped_age = dropped_age + ? WHERE data_class=?", (n, cls))
                if head_ns is not None:
                    due = min(due, head_ns + self._max_age_ns[cls])
                if head_ns is not None or len(rows) < _CHUNK:
                    break
        self._age_due_ns = due

    def expire(self) -> None:
        """Apply the age bound now (pending() and append() also do; call it when nothing is appended for long)."""
        self._guard(self._expire)

    def _expire(self) -> None:
        now = self._clock()
        if self._age_due_ns is not None and now < self._age_due_ns:
            return
        with _transaction(self._db):
            self._enforce_age(self._db, now)

    # -- reading and acknowledging ----------------------------------------------------------------
    def pending(self, limit: int = 100, after_id: int = 0, *, upto: int | None = None,
                stream: str | None = None) -> list[Record]:
        """The oldest unacked records with after_id < id (<= upto), at most `limit`, in id (= per-stream seq) order."""
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        self.expire()
        return self._guard(self._pending, limit, after_id, upto, stream)

    def _pending(self, limit: int, after_id: int, upto: int | None, stream: str | None) -> list[Record]:
        sql = "SELECT id, stream, seq, msg_id, topic, payload, data_class, created_ns FROM records WHERE id>?"
        args: list = [after_id]
        if upto is not None:
            sql += " AND id<=?"
            args.append(upto)
        if stream is not None:
            sql += " AND stream=?"
            args.append(stream)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [Record(i, s, q, m, t, bytes(p), DATA_CLASSES[c], ns)
                for i, s, q, m, t, p, c, ns in self._db.execute(sql, args)]

    def ack(self, ids: Iterable[int]) -> int:
        """Remove records after their PUBACK. Unknown ids (already acked or dropped) are ignored. Returns how many."""
        ids = list(ids)
        return self._guard(self._ack, ids) if ids else 0

    def _ack(self, ids: list[int]) -> int:
        removed = 0
        with _transaction(self._db):
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                cur = self._db.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                removed += cur.rowcount
        return removed

    def mark(self) -> int:
        """The highest record id ever issued (0 if none): every record with id <= mark() was appended before now."""
        return self._guard(self._mark)

    def _mark(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        return row[0] if row else 0

    def next_seq(self) -> dict[str, int]:
        """The seq the next message of each stream of this gateway will get."""
        return self._guard(self._next_seq)

    def _next_seq(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT stream, next_seq FROM seqs WHERE gateway=? ORDER BY stream",
                                     (self.gateway_id,)).fetchall())

    def stats(self) -> dict:
        """Figures for the state topic: per class count/bytes/drops, totals, oldest record age, next seq, resets."""
        self.expire()
        return self._guard(self._stats)

    def _stats(self) -> dict:
        db = self._db
        now = self._clock()
        classes = {}
        oldest = None
        for cls, count, nbytes, dq, da in db.execute("SELECT data_class, count, bytes, dropped_quota, dropped_age "
                                                     "FROM classes ORDER BY data_class"):
            classes[DATA_CLASSES[cls]] = {"count": count, "bytes": nbytes, "dropped_quota": dq, "dropped_age": da}
            head = db.execute("SELECT created_ns FROM records WHERE data_class=? ORDER BY id LIMIT 1",
                              (cls,)).fetchone()
            if head is not None:
                oldest = head[0] if oldest is None else min(oldest, head[0])
        meta = dict(db.execute("SELECT key, value FROM meta"))
        last = meta.get("last_reset")
        return {
            "count": sum(c["count"] for c in classes.values()),
            "bytes": sum(c["bytes"] for c in classes.values()),
            "quota_bytes": self.quota_bytes,
            "oldest_age_s": None if oldest is None else max(0.0, (now - oldest) / 1e9),
            "classes": classes,
            "dropped": {name: c["dropped_quota"] + c["dropped_age"] for name, c in classes.items()},
            "next_seq": self._next_seq(),
            "seq_floor": meta.get("seq_floor", 0),  # the first seq of a stream not in next_seq
            "store_resets": meta.get("store_resets", 0),
            "last_reset": json.loads(last) if last else None,
            "newest_sample_ns": meta.get("newest_sample_ns"),  # of the last append that gave one; None: none yet
            "durability": self.durability,
        }

    # -- command idempotency ----------------------------------------------------------------------
    def remember_result(self, cmd_id: str, payload: bytes) -> None:
        """Append one result payload given to cmd_id (kept keep_results commands / keep_results_s seconds)."""
        if not isinstance(cmd_id, str) or not cmd_id:
            raise ValueError("cmd_id must be a non-empty string")
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        self._guard(self._remember, cmd_id, bytes(payload))

    def _remember(self, cmd_id: str, payload: bytes) -> None:
        db = self._db
        now = self._clock()
        with _transaction(db):
            db.execute("INSERT OR IGNORE INTO commands VALUES (?, ?)", (cmd_id, now))
            db.execute("INSERT INTO cmd_results (cmd_id, payload) VALUES (?, ?)", (cmd_id, payload))
            cutoff = now - int(self.keep_results_s * 1e9)
            old = db.execute("SELECT cmd_id FROM commands WHERE first_ns < ? UNION "
                             "SELECT cmd_id FROM (SELECT cmd_id FROM commands ORDER BY first_ns DESC, rowid DESC "
                             "LIMIT -1 OFFSET ?)", (cutoff, self.keep_results)).fetchall()
            for (old_id,) in old:
                db.execute("DELETE FROM commands WHERE cmd_id=?", (old_id,))
                db.execute("DELETE FROM cmd_results WHERE cmd_id=?", (old_id,))

    def results_for(self, cmd_id: str) -> list[bytes] | None:
        """The results already given to cmd_id, oldest first, or None if the command was not seen (or expired)."""
        return self._guard(self._results_for, cmd_id)

    def _results_for(self, cmd_id: str) -> list[bytes] | None:
        row = self._db.execute("SELECT first_ns FROM commands WHERE cmd_id=?", (cmd_id,)).fetchone()
        if row is None or row[0] < self._clock() - int(self.keep_results_s * 1e9):
            return None
        return [bytes(p) for (p,) in self._db.execute("SELECT payload FROM cmd_results WHERE cmd_id=? ORDER BY id",
                                                      (cmd_id,))]

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Replay:
    """One connection's publishing order: live records first, the backlog (ids <= the mark taken when the
    connection came up) oldest first behind them at no more than `backlog_rate` records/s."""

    def __init__(self, outbox: Outbox, *, backlog_rate: float = 20.0, burst: int = 50,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not backlog_rate > 0 or burst < 1:
            raise ValueError("backlog_rate must be > 0 and burst >= 1")
        self.outbox = outbox
        self.mark = outbox.mark()
        self.backlog_rate = float(backlog_rate)
        self.burst = burst
        self._live_after = self.mark
        self._backlog_after = 0
        self._backlog_done = self.mark == 0
        self._bucket = TokenBucket(backlog_rate, burst, clock)

    @property
    def backlog_done(self) -> bool:
        return self._backlog_done

    def take(self, limit: int = 100, *, backlog: bool = True) -> list[tuple[Record, bool]]:
        """Up to `limit` records to publish next, each with True if it is backfill. Each record is handed out
        once per Replay; ack it after its PUBACK. backlog=False holds the backlog back (fleet jitter)."""
        out = [(r, False) for r in self.outbox.pending(limit, after_id=self._live_after)]
        if out:
            self._live_after = out[-1][0].id
        room = min(limit - len(out), int(self._bucket.level()))
        if room > 0 and backlog and not self._backlog_done:
            backlog = self.outbox.pending(room, after_id=self._backlog_after, upto=self.mark)
            if len(backlog) < room:
                self._backlog_done = True
            if backlog:
                self._backlog_after = backlog[-1].id
                self._bucket.spend(len(backlog))
                out.extend((r, True) for r in backlog)
        return out

    def wait_s(self) -> float | None:
        """Seconds until backlog can be sent again (0 now), or None when the backlog is done."""
        return None if self._backlog_done else self._bucket.wait_s()


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception (the write lock is taken up front)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:  # keep the original exception; closing the connection rolls back anyway
                pass


def _check_item(stream, topic, body, data_class, gateway_id) -> None:
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream must be a non-empty string, got {stream!r}")
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    if data_class not in _CLASS_INDEX:
        raise ValueError(f"data_class must be one of {', '.join(DATA_CLASSES)}, got {data_class!r}")
    if isinstance(body, Encoded):
        if not isinstance(body.raw, bytes) or not body.raw.startswith(b'"'):
            raise ValueError("Encoded.raw must be JSON object members as bytes, e.g. b'\"blocks\":[]'")
        body = body.head
    if not isinstance(body, dict):
        raise TypeError(f"body must be a dict or Encoded, got {type(body).__name__}")
    for key in _RESERVED:
        if key in body:
            raise ValueError(f"body must not contain {key!r}: the outbox assigns it")
    if body.get("stream", stream) != stream:
        raise ValueError(f"body stream {body['stream']!r} differs from stream {stream!r}")
    if body.get("gateway", gateway_id) != gateway_id:
        raise ValueError(f"body gateway {body['gateway']!r} differs from the outbox's gateway {gateway_id!r}")


def _salvage(aside: Path) -> tuple[dict[tuple[str, str], int], int | None, int, int]:
    """Best effort: seqs, seq floor, reset count and max record id from a file moved aside (empty when unreadable)."""
    seqs: dict[tuple[str, str], int] = {}
    floor = None
    resets = max_id = 0
    try:
        db = sqlite3.connect(f"{aside.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return seqs, floor, resets, max_id
    try:  # each piece on its own: a broken page loses only what is on it
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            floor = meta.get("seq_floor") if isinstance(meta.get("seq_floor"), int) else None
            resets = meta.get("store_resets") if isinstance(meta.get("store_resets"), int) else 0
        except (sqlite3.Error, ValueError, TypeError):
            pass
        try:
            seqs = {(g, s): n for g, s, n in db.execute("SELECT gateway, stream, next_seq FROM seqs")
                    if isinstance(g, str) and isinstance(s, str) and isinstance(n, int)}
        except sqlite3.Error:
            seqs = {}
        try:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
            max_id = row[0] if row and isinstance(row[0], int) else 0
        except sqlite3.Error:
            pass
    finally:
        db.close()
    return seqs, floor, resets, max_id
