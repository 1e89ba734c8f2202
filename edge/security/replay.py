"""Replay protection: every cmd_id is remembered, durably, until its signed expiry has passed.

A signed command carries `exp`; the TrustStore refuses it after that (plus the clock skew), so remembering a
cmd_id until then is enough to refuse any second arrival, across restarts. Its own SQLite file, so the outbox's
quota and evictions can never make the gateway forget a command it executed.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from gridedge.core.utc import iso_utc


class ReplayGuard:
    def __init__(self, path: Path, *, skew_s: float = 30.0, durable: bool = True) -> None:
        self.skew_ns = int(skew_s * 1e9)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (cmd_id TEXT PRIMARY KEY, issuer TEXT NOT NULL, "
                        "first_ns INTEGER NOT NULL, forget_ns INTEGER NOT NULL)")
        self._purged_ns = 0

    def admit(self, cmd_id: str, issuer: str, exp_ns: int, now_ns: int) -> str | None:
        """Remember cmd_id and return None if it is new; else the reason to refuse it (a replay)."""
        if now_ns - self._purged_ns > 60 * 10**9:
            self.db.execute("DELETE FROM seen WHERE forget_ns < ?", (now_ns,))
            self._purged_ns = now_ns
        row = self.db.execute("SELECT issuer, first_ns FROM seen WHERE cmd_id = ?", (cmd_id,)).fetchone()
        if row is not None:
            return f"replay: cmd_id was already received at {iso_utc(row[1])} (from {row[0]}); not executed again"
        self.db.execute("INSERT INTO seen VALUES (?, ?, ?, ?)", (cmd_id, issuer, now_ns, exp_ns + self.skew_ns))
        return None

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM seen").fetchone()[0]

    def close(self) -> None:
        self.db.close()
