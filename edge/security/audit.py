"""The local audit trail: hash-chained JSON lines, written durably, rotated with the chain carried across files.

Each record holds `seq` (+1 per record, never reset), `prev` (the previous record's hash) and `hash` =
SHA-256 over `prev` and the record's canonical JSON without `hash`. Changing, removing or re-ordering a record
breaks the chain at that place, and `verify()` (`gridedge audit verify`) says where. What a chain alone cannot
show is the newest records cut off together with everything after them: for that the agent also sends every
record to the head-end (the outbox's `audit` stream), and `verify(anchor=(seq, hash))` checks a record the
head-end holds. An attacker with root on the gateway can rewrite the whole local chain; the head-end's copy is
what defeats that (docs/security.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from gridedge.core.utc import iso_utc

log = logging.getLogger("gridedge.audit")

GENESIS = "0" * 64
FILE_RE = re.compile(r"audit-(\d{6})\.jsonl")
MAX_LINE_BYTES = 64 * 1024


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def record_hash(record: dict) -> str:
    """The hash of a record (its `hash` field left out): SHA-256 of the canonical JSON, which holds `prev`."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


class AuditLog:
    """Append-only, hash-chained, fsync'd audit records in `directory`/audit-NNNNNN.jsonl.

    A new file starts when the current one passes `max_file_bytes`; at most `keep_files` files are kept (the
    oldest go first; the chain of what is kept still verifies, from its first record on)."""

    def __init__(self, directory: Path, *, max_file_bytes: int = 1 << 20, keep_files: int = 16,
                 fsync: bool = True, clock: Callable[[], int] | None = None) -> None:
        import time

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_file_bytes, self.keep_files, self.fsync = max_file_bytes, keep_files, fsync
        self.clock = clock or time.time_ns
        self.seq, self.head = 0, GENESIS
        self.listeners: list[Callable[[dict], None]] = []  # e.g. the agent: each record into the outbox
        self._file = None
        self._recover()
        # fsync off the caller's thread (group commit): a record is written and flushed at once, made durable
        # within milliseconds, and a command's way to its device never waits for the disk (docs/security.md)
        self._dirty = threading.Event()
        self._stop = False
        self._syncer = threading.Thread(target=self._sync_loop, name="audit-fsync", daemon=True) if fsync else None
        if self._syncer is not None:
            self._syncer.start()

    # -- writing ---------------------------------------------------------------------------------
    def append(self, event: str, **fields) -> dict:
        """Write one record durably and return it. fields must be JSON values (strings from outside included:
        JSON escapes every control character, so a record is always one line)."""
        rec = {"seq": self.seq + 1, "ts": iso_utc(self.clock()), "event": event, **fields, "prev": self.head}
        rec["hash"] = record_hash(rec)
        line = _canonical(rec) + b"\n"
        if self._file is None or self._file.tell() + len(line) > self.max_file_bytes and self._file.tell() > 0:
            self._rotate()
        self._file.write(line)
        self._file.flush()
        if self._syncer is not None:
            self._dirty.set()
        self.seq, self.head = rec["seq"], rec["hash"]
        for fn in self.listeners:
            try:
                fn(rec)
            except Exception:  # a listener (the uplink) must never lose the local record
                log.exception("audit listener failed")
        return rec

    def sync(self) -> None:
        """Durable now: what was appended is on disk when this returns."""
        if self._file is not None and self.fsync:
            os.fsync(self._file.fileno())

    def _sync_loop(self) -> None:
        while not self._stop:
            self._dirty.wait()
            self._dirty.clear()
            try:
                f = self._file
                if f is not None:
                    os.fsync(f.fileno())
            except (OSError, ValueError) as exc:  # closed under us, or the disk: said, and tried again next time
                log.debug("audit fsync: %s", exc)

    def close(self) -> None:
        if self._syncer is not None:
            self._stop = True
            self._dirty.set()
            self._syncer.join(5)
        self.sync()
        if self._file is not None:
            self._file.close()
            self._file = None

    def records_after(self, seq: int, limit: int = 100_000):
        """The local records with a seq above `seq`, oldest first (at most `limit`): what to copy again."""
        n = 0
        for _name, _line, raw in _records(self.dir):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int) and rec["seq"] > seq:
                yield rec
                n += 1
                if n >= limit:
                    return

    def _files(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if FILE_RE.fullmatch(p.name))

    def _rotate(self) -> None:
        files = self._files()
        n = int(FILE_RE.fullmatch(files[-1].name).group(1)) + 1 if files else 1
        if self._file is not None:
            self.sync()   # the file being left is complete on disk before the next one starts
            self._file.close()
        path = self.dir / f"audit-{n:06d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "ab")
        if self.fsync:
            _fsync_dir(self.dir)
        for old in self._files()[:-self.keep_files]:
            old.unlink()

    def _recover(self) -> None:
        """Continue the chain of the newest file. A torn last line (power lost mid-write) is cut off and said."""
        files = self._files()
        if not files:
            return
        last = files[-1]
        data = last.read_bytes()
        cut = len(data)
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            log.warning("audit: %s ended in a torn record (%d bytes); cut off", last.name, len(data) - cut)
        lines = data[:cut].splitlines()
        if lines:
            try:
                rec = json.loads(lines[-1])
                self.seq, self.head = int(rec["seq"]), str(rec["hash"])
            except (ValueError, KeyError, TypeError):
                log.error("audit: last record of %s unreadable; the chain goes on from GENESIS (verify will say)",
                          last.name)
        fd = os.open(last, os.O_WRONLY | os.O_APPEND)
        self._file = os.fdopen(fd, "ab")
        if cut != len(data):
            self._file.truncate(cut)

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- verification ------------------------------------------------------------------------------

@dataclass
class Verdict:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _records(directory: Path) -> Iterator[tuple[str, int, bytes]]:
    for path in sorted(p for p in Path(directory).iterdir() if FILE_RE.fullmatch(p.name)):
        with open(path, "rb") as f:
            for i, line in enumerate(f, 1):
                yield path.name, i, line


def verify(directory: Path, *, anchor: tuple[int, str] | None = None) -> Verdict:
    """Walk every file in order and check each record's hash, its link to the one before and its seq.

    The oldest kept file may start anywhere (older files rotate away); from there on nothing may be missing.
    `anchor` = (seq, hash) of a record the head-end received: it must be there, unchanged."""
    v = Verdict()
    prev_hash: str | None = None
    prev_seq: int | None = None
    anchored = anchor is None
    for name, lineno, line in _records(directory):
        where = f"{name}:{lineno}"
        if len(line) > MAX_LINE_BYTES or not line.endswith(b"\n"):
            v.problems.append(f"{where}: torn or oversized record")
            continue
        try:
            rec = json.loads(line)
            seq, h, prev = rec["seq"], rec["hash"], rec["prev"]
            if not isinstance(seq, int) or not isinstance(h, str) or not isinstance(prev, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            v.problems.append(f"{where}: not an audit record")
            prev_hash = prev_seq = None
            continue
        if record_hash(rec) != h:
            v.problems.append(f"{where}: record {seq} was changed (its hash does not match its content)")
        if prev_seq is not None and seq != prev_seq + 1:
            what = "removed" if seq > prev_seq + 1 else "re-ordered or repeated"
            v.problems.append(f"{where}: record {seq} follows {prev_seq}: records {what}")
        if prev_hash is not None and prev != prev_hash:
            v.problems.append(f"{where}: record {seq} does not link to the record before it (chain broken)")
        elif prev_hash is None and v.records == 0 and seq == 1 and prev != GENESIS:
            v.problems.append(f"{where}: the first record does not start the chain")
        if anchor is not None and seq == anchor[0]:
            anchored = h == anchor[1]
            if not anchored:
                v.problems.append(f"{where}: record {seq} differs from the head-end's copy (anchor)")
        v.first_seq = seq if v.first_seq is None else v.first_seq
        v.last_seq, v.head = seq, h
        v.records += 1
        prev_hash, prev_seq = h, seq
    if anchor is not None and not anchored and not any("anchor" in p for p in v.problems):
        v.problems.append(f"record {anchor[0]} (the anchor) is missing: records were removed"
                          if v.last_seq is None or anchor[0] > v.last_seq or anchor[0] < (v.first_seq or 0)
                          else f"record {anchor[0]} (the anchor) not found")
    return v
