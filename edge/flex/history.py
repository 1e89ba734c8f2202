"""Local, bounded history of ISP energies, activations, settled ISPs and nominations, so baselines run on
the gateway and survive restarts.

One SQLite file (WAL) in the storage dir, next to the outbox but separate from it: the outbox holds what must
reach the head-end, this holds what the gateway needs to compute. Bounded by age (``days``): rows older than
that are pruned, so its size is about days x ISPs per day x resources rows (45 days of 15-min ISPs for ten
resources: 43,200 rows, a few MB). Losing the last commit on power loss costs at most the last ISP
(synchronous=NORMAL). A file that is not a usable database is moved aside (``<name>.corrupt-<UTC>``) and a
fresh one started: the agent keeps running, baselines lack history until it refills.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..core.isp import DAY_NS, IspGrid
from .metering import IntervalEnergy

log = logging.getLogger("gridedge.flex.history")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS intervals (resource TEXT NOT NULL, isp_s INTEGER NOT NULL, start_ns INTEGER NOT NULL,
    wh REAL, quality TEXT NOT NULL, completeness REAL NOT NULL, source TEXT NOT NULL, flags TEXT NOT NULL,
    PRIMARY KEY (resource, isp_s, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS activations (activation_id TEXT PRIMARY KEY, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, resources TEXT NOT NULL, window TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS settled (activation_id TEXT NOT NULL, start_ns INTEGER NOT NULL,
    PRIMARY KEY (activation_id, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nominations (resource TEXT NOT NULL, isp_s INTEGER NOT NULL, start_ns INTEGER NOT NULL,
    w REAL NOT NULL, nomination_id TEXT NOT NULL, received_ns INTEGER NOT NULL,
    PRIMARY KEY (resource, isp_s, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nomination_ids (nomination_id TEXT PRIMARY KEY, received_ns INTEGER NOT NULL) WITHOUT ROWID;
"""


class History:
    """The flex store. path=None keeps it in memory (tests, the CLI on generated profiles)."""

    def __init__(self, path: Path | str | None, *, days: int = 45) -> None:
        if days < 1:
            raise ValueError("days must be >= 1")
        self.days = days
        self.path = Path(path) if path is not None else None
        self.store_resets = 0
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            db.executescript(_SCHEMA)
            return db
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
            log.error("flex history %s is not usable (%s): moved aside to %s, starting empty", self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, Path(f"{aside}{suffix}"))
            self.store_resets += 1
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)  # one thread at a time
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute("SELECT count(*) FROM intervals").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ intervals

    def add(self, intervals: Iterable[IntervalEnergy]) -> int:
        rows = [(iv.resource, iv.isp_s, iv.start_ns, iv.wh, iv.quality, iv.completeness, iv.source, ",".join(iv.flags))
                for iv in intervals]
        if rows:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO intervals VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def matrix(self, resources: Sequence[str], first_day_ns: int, ndays: int, grid: IspGrid) -> np.ndarray:
        """(len(resources), ndays, ISPs per day) of Wh, NaN where missing, for the UTC days from first_day_ns."""
        out = np.full((len(resources), ndays, grid.per_day), np.nan)
        index = {r: i for i, r in enumerate(resources)}
        end = first_day_ns + ndays * DAY_NS
        for chunk in _chunks(list(resources), 500):
            marks = ",".join("?" * len(chunk))
            for res, start, wh in self.db.execute(
                    f"SELECT resource, start_ns, wh FROM intervals WHERE isp_s=? AND resource IN ({marks}) "
                    "AND start_ns>=? AND start_ns<? AND wh IS NOT NULL", (grid.seconds, *chunk, first_day_ns, end)):
                k = (start - first_day_ns) // grid.ns
                out[index[res], k // grid.per_day, k % grid.per_day] = wh
        return out

    def intervals(self, resource: str, from_ns: int, to_ns: int, grid: IspGrid) -> list[IntervalEnergy]:
        return [IntervalEnergy(resource, start, grid.seconds, wh, q, c, src, tuple(f for f in flags.split(",") if f))
                for start, wh, q, c, src, flags in self.db.execute(
                    "SELECT start_ns, wh, quality, completeness, source, flags FROM intervals WHERE resource=? "
                    "AND isp_s=? AND start_ns>=? AND start_ns<? ORDER BY start_ns",
                    (resource, grid.seconds, from_ns, to_ns))]

    def resources(self, grid: IspGrid) -> list[str]:
        return [r for (r,) in self.db.execute("SELECT DISTINCT resource FROM intervals WHERE isp_s=? ORDER BY resource",
                                              (grid.seconds,))]

    def span(self, grid: IspGrid) -> tuple[int, int] | None:
        """(first, last) ISP start stored for this grid, or None."""
        row = self.db.execute("SELECT min(start_ns), max(start_ns) FROM intervals WHERE isp_s=?", (grid.seconds,)).fetchone()
        return None if row[0] is None else (row[0], row[1])

    # ------------------------------------------------------------------ activations (event days)

    def save_activation(self, activation_id: str, start_ns: int, end_ns: int, resources: Sequence[str],
                        window: dict, done: bool = False) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO activations VALUES (?, ?, ?, ?, ?, ?)",
                            (activation_id, start_ns, end_ns, json.dumps(list(resources)), json.dumps(window), int(done)))

    def open_activations(self) -> list[dict]:
        return [json.loads(w) for (w,) in self.db.execute("SELECT window FROM activations WHERE done=0 ORDER BY start_ns")]

    def event_days(self, resources: Sequence[str], first_day_ns: int, ndays: int) -> np.ndarray:
        """(len(resources), ndays) bool: the resource had an activation on that UTC day (excluded from baselines)."""
        out = np.zeros((len(resources), ndays), dtype=bool)
        index = {r: i for i, r in enumerate(resources)}
        end = first_day_ns + ndays * DAY_NS
        for start, stop, res in self.db.execute("SELECT start_ns, end_ns, resources FROM activations "
                                                "WHERE end_ns>? AND start_ns<?", (first_day_ns, end)):
            d0 = max(0, (start - first_day_ns) // DAY_NS)
            d1 = min(ndays, (max(stop - 1, start) - first_day_ns) // DAY_NS + 1)
            for r in json.loads(res):
                if r in index:
                    out[index[r], d0:d1] = True
        return out

    def mark_settled(self, activation_id: str, starts: Iterable[int]) -> None:
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO settled VALUES (?, ?)", [(activation_id, s) for s in starts])

    def activations_between(self, from_ns: int, to_ns: int) -> list[dict]:
        """The windows of every activation (open or done) that overlaps [from_ns, to_ns)."""
        return [json.loads(w) for (w,) in self.db.execute(
            "SELECT window FROM activations WHERE end_ns>? AND start_ns<? ORDER BY start_ns", (from_ns, to_ns))]

    def unmark_settled(self, activation_id: str, starts: Iterable[int]) -> None:
        """Settle these ISPs again (their energy was completed later, from the meter's load profile)."""
        with self.db:
            self.db.executemany("DELETE FROM settled WHERE activation_id=? AND start_ns=?",
                                [(activation_id, s) for s in starts])

    def settled(self, activation_id: str) -> set[int]:
        return {s for (s,) in self.db.execute("SELECT start_ns FROM settled WHERE activation_id=?", (activation_id,))}

    # ------------------------------------------------------------------ nominations

    def add_nomination(self, resource: str, grid: IspGrid, start_ns: int, values_w: Sequence[float],
                       nomination_id: str, received_ns: int) -> None:
        """Store a nominated schedule per ISP; a later nomination replaces earlier values for the same ISPs."""
        rows = [(resource, grid.seconds, start_ns + k * grid.ns, float(w), nomination_id, received_ns)
                for k, w in enumerate(values_w)]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO nominations VALUES (?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("INSERT OR IGNORE INTO nomination_ids VALUES (?, ?)", (nomination_id, received_ns))

    def nomination_seen(self, nomination_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM nomination_ids WHERE nomination_id=?", (nomination_id,)).fetchone() is not None

    def nominations(self, resources: Sequence[str], day_ns: int, grid: IspGrid) -> tuple[np.ndarray, list[list[str]]]:
        """(len(resources), ISPs per day) nominated Wh for one UTC day (NaN where none) and the ids used per resource."""
        out = np.full((len(resources), grid.per_day), np.nan)
        ids: list[set] = [set() for _ in resources]
        index = {r: i for i, r in enumerate(resources)}
        for res, start, w, nid in self.db.execute(
                "SELECT resource, start_ns, w, nomination_id FROM nominations WHERE isp_s=? AND start_ns>=? AND start_ns<?",
                (grid.seconds, day_ns, day_ns + DAY_NS)):
            if res in index:
                out[index[res], (start - day_ns) // grid.ns] = w * grid.hours
                ids[index[res]].add(nid)
        return out, [sorted(s) for s in ids]

    # ------------------------------------------------------------------ meta and bounds

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except ValueError:
            return default

    def set_meta(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def prune(self, now_ns: int) -> int:
        """Drop what is older than `days`; returns the number of interval rows removed."""
        cutoff = now_ns - self.days * DAY_NS
        with self.db:
            n = self.db.execute("DELETE FROM intervals WHERE start_ns<?", (cutoff,)).rowcount
            self.db.execute("DELETE FROM nominations WHERE start_ns<?", (cutoff,))
            self.db.execute("DELETE FROM nomination_ids WHERE received_ns<?", (cutoff,))
            self.db.execute("DELETE FROM settled WHERE activation_id IN "
                            "(SELECT activation_id FROM activations WHERE end_ns<?)", (cutoff,))
            self.db.execute("DELETE FROM activations WHERE end_ns<?", (cutoff,))
        return n


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]
