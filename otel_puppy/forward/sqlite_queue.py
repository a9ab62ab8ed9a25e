"""The forward queue in the SQLite store's file: batches survive a crash of the process.

Its own connection to the file (WAL, like the store's), its own two tables: the batches, and one
row holding their total size, so `put` checks the bound and appends in one `BEGIN IMMEDIATE`
transaction whoever else writes the file. A committed `put` survives `kill -9` (WAL with
`synchronous = NORMAL` loses a transaction only to a power cut).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from otel_puppy.exceptions import StoreError
from otel_puppy.forward.queue import LEASE_S, Claimed, QueueFull

__all__ = ("SQLiteQueue",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forward_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    spans INTEGER NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS forward_queue_size (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO forward_queue_size (one, bytes)
    SELECT 1, COALESCE(SUM(LENGTH(body)), 0) FROM forward_queue;
"""


class SQLiteQueue:
    """`ForwardQueue` in a SQLite file (`SQLiteStore.forward_queue`)."""

    durable = True

    def __init__(self, path: str, max_bytes: int, *, busy_timeout_s: float = 5.0, lease_s: float = LEASE_S) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.lease_s = lease_s
        self._lock = threading.Lock()
        with self._failing("open"):
            self._db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
        self._bytes = self._size()

    @contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite forward queue {self.path}: {doing}: {exc}") from exc

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._failing(doing):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # a failed COMMIT (a full disk) leaves it open too
                    db.execute("ROLLBACK")
                raise

    def _size(self) -> int:
        with self._lock, self._failing("read"):
            row = self._db.execute("SELECT bytes FROM forward_queue_size").fetchone()
        return int(row[0]) if row else 0

    def room(self, size: int) -> bool:
        if self._bytes + size <= self.max_bytes:
            return True
        self._bytes = self._size()  # the cached size may be another process's drain behind
        return self._bytes + size <= self.max_bytes

    def put(self, body: bytes, spans: int) -> None:
        with self._transaction("put") as db:
            (queued,) = db.execute("SELECT bytes FROM forward_queue_size").fetchone()
            if queued + len(body) > self.max_bytes:
                self._bytes = queued
                raise QueueFull(f"forward queue full: {queued} of {self.max_bytes} bytes")
            db.execute("INSERT INTO forward_queue (body, spans) VALUES (?, ?)", (body, spans))
            db.execute("UPDATE forward_queue_size SET bytes = bytes + ?", (len(body),))
            self._bytes = queued + len(body)

    def claim(self, now: float) -> Claimed | None:
        with self._transaction("claim") as db:
            row = db.execute(
                "SELECT id, body, spans FROM forward_queue WHERE claimed_until <= ? ORDER BY id LIMIT 1", (now,)
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE forward_queue SET claimed_until = ? WHERE id = ?", (now + self.lease_s, row[0]))
        return Claimed(str(row[0]), bytes(row[1]), int(row[2]))

    def hold(self, claimed: Claimed, now: float) -> None:
        with self._transaction("hold") as db:
            db.execute("UPDATE forward_queue SET claimed_until = ? WHERE id = ?", (now + self.lease_s, int(claimed.id)))

    def done(self, claimed: Claimed) -> None:
        with self._transaction("done") as db:
            gone = db.execute("DELETE FROM forward_queue WHERE id = ?", (int(claimed.id),)).rowcount
            if gone:
                db.execute("UPDATE forward_queue_size SET bytes = MAX(0, bytes - ?)", (len(claimed.body),))
            (self._bytes,) = db.execute("SELECT bytes FROM forward_queue_size").fetchone()

    def depth(self) -> tuple[int, int]:
        with self._lock, self._failing("read"):
            (count,) = self._db.execute("SELECT COUNT(*) FROM forward_queue").fetchone()
            (size,) = self._db.execute("SELECT bytes FROM forward_queue_size").fetchone()
        self._bytes = int(size)
        return int(count), int(size)

    def after_fork(self) -> None:
        """In a forked child: a connection must not cross a fork; open one of its own."""
        self._lock = threading.Lock()
        with self._failing("open"):
            self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)

    def close(self) -> None:
        with self._lock:
            self._db.close()
