"""Bounded on-disk FIFO of opaque records (rendered messages), for sinks whose destination is down.

Backed by one SQLite database (stdlib ``sqlite3``) in a directory the sink owns: rows are
``(seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB)``, so order is insertion order and survives
process restarts (re-open the directory → pending records come back, oldest first).

Durability: WAL journal with ``synchronous=NORMAL`` — a committed record survives a crash of the
process; the last transactions may be lost on power failure (the price of not fsyncing per alert).

Bounds: ``max_records`` and ``max_bytes``. On overflow the policy is ``"drop_oldest"`` (default:
a SOC wants the current picture after a long outage; the oldest pending alerts go) or
``"drop_newest"`` (incoming records are refused). Either way every dropped record is counted in
:attr:`dropped`. Records handed out by :meth:`peek` and not yet acknowledged (in flight) are never
dropped and do not count against the bounds (they are leaving), so the spool may exceed its
bounds by at most one batch.

Thread-safe: one connection guarded by a lock; every call is short local I/O, never network.

Example::

    sp = Spool("/var/spool/radsensor/siem", max_records=10_000)
    sp.put_many([b"a", b"b"])          # -> 0 dropped
    batch = sp.peek(100)               # [(seq, data), ...] oldest first
    sp.ack(batch[-1][0])               # delivered
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

DB_NAME = "spool.sqlite3"
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest")


class Spool:
    def __init__(
        self,
        directory: str | Path,
        *,
        max_records: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        overflow: str = "drop_oldest",
    ) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {overflow!r}")
        if max_records < 1 or max_bytes < 1:
            raise ValueError("max_records and max_bytes must be >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_records, self.max_bytes, self.overflow = max_records, max_bytes, overflow
        self.dropped = 0  # records lost to overflow since this object was opened
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.directory / DB_NAME, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS q (seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL)"
        )
        n, b = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM q").fetchone()
        self._count, self._bytes = int(n), int(b)
        # The batch handed out by peek() and not yet acked/released: highest seq, records, bytes.
        self._inflight, self._inflight_n, self._inflight_b = 0, 0, 0

    # -- queries
    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._bytes

    # -- operations
    def put_many(self, items: Sequence[bytes]) -> int:
        """Append records in order, in one transaction; return how many records were dropped."""
        if not items:
            return 0
        with self._lock:
            before = self.dropped
            rows = []
            for it in items:
                if len(it) > self.max_bytes:  # can never fit: refuse it whatever the policy
                    self.dropped += 1
                    continue
                rows.append((bytes(it),))
            if self.overflow == "drop_newest":
                room_n = self.max_records - (self._count - self._inflight_n)
                room_b = self.max_bytes - (self._bytes - self._inflight_b)
                kept = []
                for (data,) in rows:
                    if room_n >= 1 and len(data) <= room_b:
                        kept.append((data,))
                        room_n -= 1
                        room_b -= len(data)
                    else:
                        self.dropped += 1
                rows = kept
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    self._db.executemany("INSERT INTO q (data) VALUES (?)", rows)
                    self._count += len(rows)
                    self._bytes += sum(len(r[0]) for r in rows)
                if self.overflow == "drop_oldest":
                    self._trim_oldest()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount()
                raise
            return self.dropped - before

    def _over(self) -> tuple[int, int]:
        # Records/bytes beyond the bounds, not counting the in-flight batch (it is leaving).
        return (
            max(0, self._count - self._inflight_n - self.max_records),
            max(0, self._bytes - self._inflight_b - self.max_bytes),
        )

    def _trim_oldest(self) -> None:
        # Delete the oldest records after the in-flight batch until both bounds hold.
        need_n, need_b = self._over()
        while need_n or need_b:
            cand = self._db.execute(
                "SELECT seq, LENGTH(data) FROM q WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._inflight, max(need_n, 64)),
            ).fetchall()
            if not cand:
                return
            upto, freed_n, freed_b = 0, 0, 0
            for seq, ln in cand:
                if freed_n >= need_n and freed_b >= need_b:
                    break
                upto, freed_n, freed_b = seq, freed_n + 1, freed_b + ln
            self._db.execute("DELETE FROM q WHERE seq > ? AND seq <= ?", (self._inflight, upto))
            self._count -= freed_n
            self._bytes -= freed_b
            self.dropped += freed_n
            need_n, need_b = self._over()

    def peek(self, n: int) -> list[tuple[int, bytes]]:
        """The oldest ``n`` records as ``(seq, data)``, marked in flight until :meth:`ack`/:meth:`release`."""
        with self._lock:
            rows = self._db.execute("SELECT seq, data FROM q ORDER BY seq LIMIT ?", (n,)).fetchall()
            if rows and rows[-1][0] > self._inflight:
                self._inflight = rows[-1][0]
                self._inflight_n = len(rows)
                self._inflight_b = sum(len(d) for _, d in rows)
            return [(int(s), bytes(d)) for s, d in rows]

    def ack(self, upto_seq: int) -> None:
        """Delivered: remove every record with ``seq <= upto_seq``."""
        with self._lock:
            n, b = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM q WHERE seq <= ?", (upto_seq,)
            ).fetchone()
            self._db.execute("DELETE FROM q WHERE seq <= ?", (upto_seq,))
            self._count -= int(n)
            self._bytes -= int(b)
            self._inflight, self._inflight_n, self._inflight_b = 0, 0, 0

    def release(self) -> None:
        """Delivery failed: records handed out by :meth:`peek` become ordinary pending records again."""
        with self._lock:
            self._inflight, self._inflight_n, self._inflight_b = 0, 0, 0
            if self.overflow == "drop_oldest" and any(self._over()):
                self._db.execute("BEGIN IMMEDIATE")
                self._trim_oldest()  # rows kept only because they were in flight
                self._db.execute("COMMIT")

    def _recount(self) -> None:
        n, b = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM q").fetchone()
        self._count, self._bytes = int(n), int(b)

    def close(self) -> None:
        with self._lock:
            self._db.close()
