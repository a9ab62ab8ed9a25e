"""SQLite store: the service's embedded state, one file that survives restarts.

Every method is one transaction on one connection, shared by threads under a lock. Writes
start with `BEGIN IMMEDIATE`, which takes the file's write lock before reading anything, so
`admit`'s read-then-reserve is atomic across processes on the same file as well as threads,
and `apply` dedupes and applies a whole batch or nothing: a caller may acknowledge a batch
once `apply` returns, and retry the whole of it when `apply` raises.

The semantics are `MemoryStore`'s (it is the reference; tests/store/test_conformance.py runs
one suite on both). Two differences, both invisible while `now` does not go backwards:

- A rolling window is one row per sub-bucket index, and its total is the sum over the current
  index (the later of `now`'s and the newest written) and the 60 before it. `MemoryStore`'s
  ring also moves forward when it is read; here a read never writes, so reads stay cheap and
  never wait for the write lock.
- `expire` forgets a rolling window (and counts it) two steps after its last sub-bucket stopped
  counting, where `MemoryStore` does so as soon as it is idle: a row is never deleted while a
  read could still count it.

One part of the state is not in the file: the call keys by which spans of one call that are not
parent and child are recognised (`SpendRecord.call_keys`) are kept in this process's memory, as
`MemoryStore` keeps them, and joined within the same lock and transaction. Another process on the
file, or this one after a restart, does not see them.

SQLite integers are 64-bit: `+` past 2**63 turns a value into a REAL and `SUM()` past it raises
"integer overflow". Neither can happen here: every count written is in `[0, CEILING]` (2**53 - 1)
and saturates there in SQL; sums over rows add at most 61 counters (rolling windows) or split each
value into a high and a low half (reserved totals), so no SQL sum passes 2**63. A stored value that
is not an integer in range (written by another tool, or by an older version) reads as `CEILING`
and is reported (`health()`); an update turns it into `CEILING`, never back into a small number.

A damaged file is recognised: `PRAGMA quick_check` when the store opens, and SQLite's corruption
errors at run time, raise `StoreCorruptError` (which says what to do) and set `health().problem`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from hashlib import blake2b
from operator import add, itemgetter
from pathlib import Path
from typing import Any, Final, TypeVar

from otel_puppy.exceptions import StoreCorruptError, StoreError
from otel_puppy.forward.queue import ForwardQueue, MemoryQueue
from otel_puppy.forward.sqlite_queue import SQLiteQueue
from otel_puppy.ledger import COUNTS, MAX_LEDGER_ROWS, OTHER_DIMS
from otel_puppy.store._call_index import CallIndex
from otel_puppy.store.base import (
    CEILING,
    EXPIRED,
    MAX_OUTCOMES,
    MAX_SAMPLE_KEYS,
    MAX_SAMPLES,
    RELEASED,
    SETTLED,
    Admission,
    Admitted,
    ApplyResult,
    BudgetCheck,
    CheckState,
    Counter,
    Outcome,
    Sample,
    SpendRecord,
    SpreadSums,
    StateReport,
    StoreHealth,
    SubBucket,
    check_state,
    clamp,
    fullest_states,
    newest_samples,
)
from otel_puppy.windows import SUB_BUCKETS, RollingWindow, Window

__all__ = ("SCHEMA_VERSION", "SQLiteStore")

logger = logging.getLogger("otel_puppy")

SCHEMA_VERSION: Final = 6
"""Bumped on every schema change; a file with a newer version is refused, an older one migrated.

1 -> 2: the `state` table (breaker and anomaly state). Every table is created `IF NOT EXISTS`,
so opening a version-1 file adds it; the version is then raised in the same transaction.
2 -> 3: no `reservation_items_scope` index (each scope's reserved total is kept in memory, see `_Held`).
3 -> 4: the `versioned_state` table (breaker state shared by processes on one file).
4 -> 5: the `samples` and `sample_keys` tables (learned estimates), the `ledger` table; `reservations.source` and
`.estimate` (for `take_outcomes`), added to an older file's table by `ALTER TABLE`.
5 -> 6: a reservation's items are a JSON array in its row (`reservations.items`), no longer rows of a
`reservation_items` table: a decision writes two pages fewer (about 30% less log). An older file's items
are moved into their reservations' rows, and the table dropped, when it is opened."""

_PAGE_SIZE: Final = 2048
"""A new file's page size (a file made before keeps its own). The log grows by whole pages: a decision
writes about five (its reservation's row and its three index entries, each on a page of its own), a
span batch about one per dedupe key it inserts. At 2 KiB a decision writes 11 KB of log where SQLite's
default 4 KiB wrote 19, and a span batch half as much, so the log is rewound (`_Checkpointer`) about
1.7 times less often; CPU per decision and per span, the FOCUS export and the bytes a dedupe key takes
measured the same. A row of a table WITHOUT ROWID keeps up to 488 bytes in its page at 2 KiB (the
largest the bench's fifty policies write, a detector's state, is about 290), where at 1 KiB (231) it
would spill onto an overflow page."""
_CACHE_KIB: Final = 32 * 1024
_CHECKPOINT_BYTES: Final = 40 << 20
_CHECKPOINT_EVERY_S: Final = 0.1
_REWIND_BYTES: Final = 64 << 20
"""A log this long (64 MiB) is caught up with the store's writers held off, so it rewinds."""
_FALLBACK_CHECKPOINT_BYTES: Final = 4 * _CHECKPOINT_BYTES

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    # Calendar windows: one counter per (scope, unit, bucket start), kept until end + retention.
    """CREATE TABLE IF NOT EXISTS calendar (
        scope TEXT NOT NULL,
        unit TEXT NOT NULL,
        start REAL NOT NULL,
        nanos INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (scope, unit, start)
    ) WITHOUT ROWID""",
    # Rolling windows: one row per sub-bucket index (ts // step); the primary key serves both the
    # newest-index lookup and the range sum of a read.
    """CREATE TABLE IF NOT EXISTS rolling (
        scope TEXT NOT NULL,
        label TEXT NOT NULL,
        idx INTEGER NOT NULL,
        nanos INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (scope, label, idx)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS rolling_expiry ON rolling (expires_at)",
    # Dedupe keys are 16-byte digests of span keys (see `_digest`): a day of spans is most of the
    # file, and every key is stored twice (the table and its expiry index).
    "CREATE TABLE IF NOT EXISTS seen (span_key BLOB PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS seen_expiry ON seen (until)",
    "CREATE TABLE IF NOT EXISTS covered (parent_key BLOB PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS covered_expiry ON covered (until)",
    # `seq` is an INTEGER PRIMARY KEY (the rowid itself), so it keeps admission order even through
    # VACUUM, which may renumber an implicit rowid: settling by key takes the lowest `seq`.
    """CREATE TABLE IF NOT EXISTS reservations (
        seq INTEGER PRIMARY KEY,
        decision_id TEXT NOT NULL UNIQUE,
        settle_key TEXT,
        expires_at REAL NOT NULL,
        source TEXT NOT NULL DEFAULT 'request',
        estimate INTEGER NOT NULL DEFAULT 0,
        items TEXT NOT NULL DEFAULT '[]'
    )""",
    "CREATE INDEX IF NOT EXISTS reservations_settle ON reservations (settle_key) WHERE settle_key IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS reservations_expiry ON reservations (expires_at)",
    "CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID",
    # Since version 2: opaque blobs (breaker and anomaly state) by namespace and key.
    """CREATE TABLE IF NOT EXISTS state (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID""",
    # Since version 4: blobs with a version; `merge_state` keeps the highest.
    """CREATE TABLE IF NOT EXISTS versioned_state (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID""",
    # Since version 5: settled calls' costs per key, for learned estimates (`add_samples`).
    """CREATE TABLE IF NOT EXISTS samples (
        seq INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        at REAL NOT NULL,
        nanos INTEGER NOT NULL,
        tokens INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS samples_key ON samples (key, seq)",
    "CREATE TABLE IF NOT EXISTS sample_keys (key TEXT PRIMARY KEY, until REAL NOT NULL, written INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sample_keys_written ON sample_keys (written)",
    "CREATE INDEX IF NOT EXISTS sample_keys_until ON sample_keys (until)",
    # Since version 5: the cost ledger, one row per hour and dimensions (`ledger.py`).
    f"""CREATE TABLE IF NOT EXISTS ledger (
        hour INTEGER NOT NULL,
        dims TEXT NOT NULL,
        until REAL NOT NULL,
        {", ".join(f"{column} INTEGER NOT NULL" for column in COUNTS)},
        PRIMARY KEY (hour, dims)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS ledger_expiry ON ledger (until)",
)


_ESTIMATE_COLUMN: Final = "INTEGER NOT NULL DEFAULT 0"
_ITEMS_COLUMN: Final = "TEXT NOT NULL DEFAULT '[]'"


def _valid(column: str) -> str:
    """SQL: `column` holds a count this store wrote (an integer in `[0, CEILING]`)."""
    return f"(typeof({column}) = 'integer' AND {column} BETWEEN 0 AND {CEILING})"


def _saturating(column: str) -> str:
    """SQL: `column` plus the excluded row's, saturated at the ceiling; an unreadable value becomes the ceiling."""
    return f"{column} = CASE WHEN {_valid(column)} THEN min({column} + excluded.{column}, {CEILING}) ELSE {CEILING} END"


_ADD_SET: Final = ", ".join(_saturating(column) for column in ("nanos", "tokens", "requests"))
_LEDGER_ADD: Final = f"""
INSERT INTO ledger (hour, dims, until, {", ".join(COUNTS)}) VALUES (?, ?, ?, {", ".join("?" * len(COUNTS))})
ON CONFLICT (hour, dims) DO UPDATE SET until = max(until, excluded.until), {", ".join(_saturating(c) for c in COUNTS)}
"""  # noqa: S608 - constants only
_LEDGER_READ: Final = f"SELECT hour, dims, {', '.join(COUNTS)} FROM ledger WHERE hour >= ? AND hour < ? ORDER BY hour"  # noqa: S608
# RETURNING: how many of the three counts are at the ceiling now (saturations, reported).
_AT_CEILING: Final = f"RETURNING (nanos = {CEILING}) + (tokens = {CEILING}) + (requests = {CEILING})"
_CALENDAR_ADD: Final = f"""
INSERT INTO calendar (scope, unit, start, nanos, tokens, requests, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (scope, unit, start) DO UPDATE SET {_ADD_SET} {_AT_CEILING}
"""  # noqa: S608 - constants only
_ROLLING_ADD: Final = f"""
INSERT INTO rolling (scope, label, idx, nanos, tokens, requests, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (scope, label, idx) DO UPDATE SET {_ADD_SET} {_AT_CEILING}
"""  # noqa: S608 - constants only
_CALENDAR_TOTAL: Final = "SELECT nanos, tokens, requests FROM calendar WHERE scope = ? AND unit = ? AND start = ?"
# The current index is the later of now's and the newest written; every row is at or below it. At
# most 61 rows of at most CEILING each: no sum passes 2**59. Unreadable values are counted apart.
_ROLLING_TOTAL: Final = f"""
SELECT
    COALESCE(SUM(CASE WHEN {_valid("nanos")} THEN nanos END), 0),
    COALESCE(SUM(CASE WHEN {_valid("tokens")} THEN tokens END), 0),
    COALESCE(SUM(CASE WHEN {_valid("requests")} THEN requests END), 0),
    COALESCE(SUM(NOT {_valid("nanos")}), 0),
    COALESCE(SUM(NOT {_valid("tokens")}), 0),
    COALESCE(SUM(NOT {_valid("requests")}), 0)
FROM rolling
WHERE scope = ?1 AND label = ?2 AND idx >= (
    SELECT max(COALESCE(MAX(idx), ?3), ?3) FROM rolling WHERE scope = ?1 AND label = ?2
) - ?4
"""  # noqa: S608 - constants only
# The sub-buckets `_ROLLING_TOTAL` sums, one row each, oldest first.
_ROLLING_BUCKETS: Final = """
SELECT idx, nanos, tokens, requests FROM rolling
WHERE scope = ?1 AND label = ?2 AND idx >= (
    SELECT max(COALESCE(MAX(idx), ?3), ?3) FROM rolling WHERE scope = ?1 AND label = ?2
) - ?4
ORDER BY idx
"""
# CAST: a row written as text by hand (or another tool) still comes back as bytes.
_STATE_LOAD: Final = "SELECT key, CAST(data AS BLOB) FROM state WHERE namespace = ?"
_NOTHING_HELD: Final = (0, 0, 0)
_SATURATED_HELD: Final = (CEILING, CEILING, 0)
_COVERED_ADD: Final = """
INSERT INTO covered (parent_key, until) VALUES (?, ?) ON CONFLICT (parent_key) DO UPDATE SET until = excluded.until
"""
_RINGS_GONE: Final = """
SELECT COUNT(*) FROM (SELECT scope, label FROM rolling WHERE expires_at <= ?1 GROUP BY scope, label) AS old
WHERE NOT EXISTS (
    SELECT 1 FROM rolling AS r WHERE r.scope = old.scope AND r.label = old.label AND r.expires_at > ?1
)
"""

# Key lookups bind a fixed number of parameters (padded with NULLs, which match nothing), so a
# handful of statements cover every batch size and stay in sqlite3's statement cache. Sizes double:
# padding costs as keys do (a 100-span batch's 100 covered keys padded to 512 took twice as long as
# to 128).
_LOOKUP_SIZES: Final = (8, 16, 32, 64, 128, 256, 512)
_SETTLE_KEY_LOOKUP: Final = {
    n: f"SELECT DISTINCT settle_key FROM reservations WHERE settle_key IN ({', '.join('?' * n)})"  # noqa: S608 - placeholders only
    for n in _LOOKUP_SIZES
}
_SEEN_LOOKUP: Final = {
    n: f"SELECT span_key FROM seen WHERE span_key IN ({', '.join('?' * n)})"  # noqa: S608 - placeholders only
    for n in _LOOKUP_SIZES
}
_COVERED_LOOKUP: Final = {
    n: f"SELECT parent_key FROM covered WHERE parent_key IN ({', '.join('?' * n)})"  # noqa: S608 - placeholders only
    for n in _LOOKUP_SIZES
}
_LEDGER_LOOKUP: Final = {
    n: f"SELECT dims FROM ledger WHERE hour = ? AND dims IN ({', '.join('?' * n)})"  # noqa: S608 - placeholders only
    for n in _LOOKUP_SIZES
}
_K = TypeVar("_K")


class SQLiteStore:
    """State in one SQLite file (WAL mode), shared safely by threads and by processes on one host.

    >>> store = SQLiteStore("/var/lib/otel-puppy/state.db")  # doctest: +SKIP
    >>> store = SQLiteStore(":memory:")  # doctest: +SKIP  (nothing survives close(): for tests)

    `check_integrity`: run `PRAGMA quick_check` on open, so a damaged file is refused at start
    rather than found by a request. It reads every page once: measured 0.4-0.7 s for a 104 MB file
    (1.8 million spans' dedupe keys) from the page cache, where `integrity_check` took 1.6-10 s.

    Raises:
        StoreCorruptError: the file is damaged or not a database (the message says what to do).
        StoreError: the file cannot be opened or written, or was written by a newer otel_puppy
            (its schema version is higher than `SCHEMA_VERSION`).
    """

    shares_state = True
    """Every process that opens the same file sees the same state (for `sqlite://`, in memory,
    sharing is harmless: there is no one to share with)."""
    does_io = True
    """Every call is a transaction on the file: it may wait on the disk or on another writer."""
    reads_spread = True
    """`apply` reads a record's `SpendRecord.spread` (the engine sends one in place of its increments)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0, check_integrity: bool = True) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        """Held by a thread for each transaction, and by `uncontended` for its whole block (hence reentrant)."""
        self._begun = False
        """A write transaction `uncontended` began, for the next transaction of its block to continue."""
        self._not_waiting_until = 0.0
        """`uncontended` does not wait for the lock before this (`time.monotonic()`)."""
        self._db: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._report = StateReport(f"sqlite store {self.path}")
        self._busy_timeout_s = busy_timeout_s
        self._reopen = False
        """Set in a forked child: the parent's connection is not this process's; open one on first use."""
        self._calls = CallIndex()
        """The call keys of the spans this process applied (`SpendRecord.call_keys`): in memory, not in
        the file. Spans of one call arrive close together, in one process; writing two more rows per
        span would cost a third of `apply`. Another process on the file, or this one after a
        restart, does not see them (a call described by two spans may then count twice)."""
        self._undo: list[Any] = []
        """How to take back what the open transaction added to `_calls`, should it not commit."""
        self._open(busy_timeout_s, check_integrity)
        _OPEN.add(self)

    def _open(self, busy_timeout_s: float, check_integrity: bool) -> None:
        try:
            # isolation_level=None: no implicit transactions; each method issues its own BEGIN.
            db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False, cached_statements=128
            )
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # before the file has a table; else ignored
            db.execute("PRAGMA journal_mode = WAL")
            # In WAL mode, NORMAL syncs the log at checkpoints rather than at every commit. A
            # commit is in the WAL file (the OS's page cache) when COMMIT returns, so a crash of
            # this process, kill -9 included, never loses a committed transaction; only an OS
            # crash or power loss can lose the last few, and never corrupts the file. In exchange
            # a commit costs no fsync, which is what lets `apply` keep up with span batches.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = OFF")
            # Dedupe keys land on random pages, so a batch dirties hundreds of them: a larger page
            # cache and checkpoints every ~40 MB of log instead of 4 MB let repeated writes to the
            # same pages coalesce (measured: about a third off the cost of a span).
            db.execute(f"PRAGMA cache_size = {-_CACHE_KIB}")
            page = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_BYTES // page}")
            if check_integrity and self.path != ":memory:":
                self._quick_check(db)
            self._create_schema(db)
            wal = db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        except sqlite3.Error as exc:
            db.close()
            raise self._error("cannot open", exc) from exc
        except StoreError:
            db.close()
            raise
        self._db = db
        self._waits = True
        """Whether the connection's busy timeout is the store's (else 0: `_begin_at_once` left it so)."""
        self._held = _Held()
        self._spent = _Spent()
        self._outcomes: deque[Outcome] = deque(maxlen=MAX_OUTCOMES)
        if wal:
            # The checkpoints are the checkpointer's; the commits' own only bound the log should it fall behind.
            db.execute(f"PRAGMA wal_autocheckpoint = {_FALLBACK_CHECKPOINT_BYTES // page}")
            self._checkpointer = _Checkpointer(self.path, busy_timeout_s, self._lock, page)

    def _create_schema(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = self._schema_version(db)
            for statement in _SCHEMA:
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(reservations)")}
            for column, declared in (
                ("source", "TEXT NOT NULL DEFAULT 'request'"),  # a file from before version 5
                ("estimate", _ESTIMATE_COLUMN),
                ("items", _ITEMS_COLUMN),  # before version 6
            ):
                if column not in columns:
                    db.execute(f"ALTER TABLE reservations ADD COLUMN {column} {declared}")
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reservation_items'").fetchone():
                orphans = _move_items(db)
                if orphans:
                    logger.warning(
                        "sqlite store %s: %d reserved items of no reservation (a damaged or hand-edited file) "
                        "were dropped moving reservations to schema version %d",
                        self.path,
                        orphans,
                        SCHEMA_VERSION,
                    )
                db.execute("DROP TABLE reservation_items")
            if version is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _quick_check(self, db: sqlite3.Connection) -> None:
        """Refuse a damaged file: `quick_check` reads every page once (no index cross-check, which
        `integrity_check` adds at several times the cost) and stops at the first problem."""
        found = db.execute("PRAGMA quick_check(1)").fetchone()
        if found is None or found[0] != "ok":
            raise self._corrupt("integrity check at start", str(found[0] if found else "no answer"))

    def _schema_version(self, db: sqlite3.Connection) -> int | None:
        """The file's schema version (None for a new file); refuses one from a newer otel_puppy."""
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone():
            return None
        version: int | None = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"sqlite store {self.path}: schema version {version} was written by a newer otel_puppy "
                f"(this one reads up to {SCHEMA_VERSION}); upgrade otel_puppy or use another file"
            )
        return version

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """`sqlite:///relative/state.db`, `sqlite:////absolute/state.db`, or `sqlite://` (in memory).

        Raises:
            StoreError: not a `sqlite://` URL of that shape, or the file cannot be opened.
        """
        if url in ("sqlite://", "sqlite:///"):
            return cls(":memory:")
        if not url.startswith("sqlite:///"):
            raise StoreError(
                f"store {url!r}: use sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite:// (in memory)"
            )
        return cls(url.removeprefix("sqlite:///"))

    def after_fork(self) -> None:
        """In a forked child (idempotent; run by an `os.register_at_fork` hook, so also in a child of
        an application that never calls it): new locks, and for a file, a connection of the child's
        own, opened on first use. A connection must not cross a fork (SQLite's file locks belong to
        the process that took them), so the parent's is left unused and never closed here, where
        closing it could take the file's log away from the parent. The hook's `before` half keeps
        every thread of the parent out of SQLite while it forks, so nothing is mid-transaction."""
        self._lock = threading.RLock()
        self._begun = False
        self._report.after_fork()
        self._checkpointer = None  # its thread stayed in the parent
        db = self._db
        if db is not None and self.path != ":memory:":
            _INHERITED.append(db)
            self._db = None
            self._reopen = True
        else:
            self._held.discard()
            self._spent.discard()

    # --- transactions --------------------------------------------------------------------------

    def _error(self, doing: str, exc: sqlite3.Error) -> StoreError:
        name = getattr(exc, "sqlite_errorname", None)
        cause = f"{exc} ({name})" if name else str(exc)
        if _is_corrupt(exc):
            return self._corrupt(doing, cause)
        return StoreError(f"sqlite store {self.path}: {doing}: {cause}")

    def _corrupt(self, doing: str, cause: str) -> StoreCorruptError:
        """The file is damaged: reported by `health()` from now on, and an error that says what to do."""
        path = self.path
        error = StoreCorruptError(
            f"sqlite store {path}: {doing}: {cause}; the file is damaged or is not an otel_puppy state file: "
            f"stop otel-puppy, then restore {path} from a backup, or move {path} (with {path}-wal and "
            f"{path}-shm) aside to start again with empty state",
            path=path,
        )
        self._report.corrupt(str(error))
        return error

    def _connection(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            if not self._reopen:
                raise StoreError(f"sqlite store {self.path} is closed")
            self._open(self._busy_timeout_s, check_integrity=False)
            self._reopen = False
            db = self._connection()
        return db

    @contextmanager
    def _transaction(self, doing: str, *, write: bool = True, counters: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock: committed if the block returns, rolled back if it raises.

        A write transaction takes the write lock at BEGIN (waiting up to the busy timeout), so it
        never fails half-way for want of it. One that may write budget counters (`counters`, all but
        `admit`'s and `read_budgets`') forgets the counters `admit` keeps (`_Spent`) before it begins.
        """
        with self._lock:
            db = self._connection()
            held = self._held
            if write and counters:
                self._spent.discard()
            try:
                if self._begun:  # in `uncontended`'s block: its write transaction is this one
                    self._begun = False
                else:
                    if not self._waits:
                        db.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout_s * 1000)}")
                        self._waits = True
                    db.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
                try:
                    yield db
                    db.execute("COMMIT")
                    if held.outcomes:
                        self._outcomes.extend(held.outcomes)
                except BaseException:
                    held.discard()
                    self._spent.discard()
                    self._calls.restore(self._undo)
                    _rollback(db)
                    raise
                finally:
                    self._undo.clear()
                    held.outcomes.clear()
            except sqlite3.Error as exc:
                raise self._error(f"{doing} failed" + (", nothing was written" if write else ""), exc) from exc

    @contextmanager
    def uncontended(self) -> Iterator[bool]:
        """Whether this thread can write at once; if so (True), the store is its own for the block.

        True: no other thread of this process was in the store, and the file's write lock was free
        (no other connection writing); the block's store calls then never wait: the store's lock
        stays with this thread for the block, and the write transaction begun here is continued by
        the block's first store call (and rolled back, having written nothing, if there is none).
        False: someone is writing; nothing is held, and the block should hand its work to a thread
        that may wait. This is how the service decides on its event loop without ever waiting there
        for a lock (`server/app.py`).
        """
        lock = self._lock
        if not lock.acquire(blocking=False):
            # Another thread's transaction: most (a decision that went to a worker thread, a
            # checkpoint's last pass) end within a millisecond or two, and end sooner for this
            # thread's waiting without the interpreter lock. A longer one (a large batch of spans)
            # makes the next ones not wait for a while.
            now = time.monotonic()
            checkpointer = self._checkpointer
            waited = False
            if checkpointer is not None and checkpointer.rewinding:
                waited = lock.acquire(timeout=_REWIND_WAIT_S)  # a few milliseconds, never more often than every second
            elif now >= self._not_waiting_until:
                rewinds = checkpointer.rewinds if checkpointer is not None else 0
                waited = lock.acquire(timeout=_UNCONTENDED_WAIT_S)
                if not waited and checkpointer is not None:
                    if checkpointer.rewinding:  # it took the lock before saying so (it had yet to get the interpreter)
                        waited = lock.acquire(timeout=_REWIND_WAIT_S - _UNCONTENDED_WAIT_S)
                    elif checkpointer.rewinds != rewinds:  # it ended as the wait did: taken now, or by another
                        waited = lock.acquire(blocking=False)
            if not waited:
                if now >= self._not_waiting_until and not (checkpointer is not None and checkpointer.rewinding):
                    self._not_waiting_until = now + _UNCONTENDED_PAUSE_S
                yield False
                return
        try:
            began = self._begin_at_once()
            if began:
                self._begun = True
            try:
                yield began
            finally:
                if self._begun:  # the block made no store call: nothing was written
                    self._begun = False
                    _rollback(self._connection())
        finally:
            self._lock.release()

    def _begin_at_once(self) -> bool:
        """`BEGIN IMMEDIATE` without waiting (the busy timeout is 0 for it); whether it began.

        With a write-ahead log the timeout stays 0 for the transaction and after it, until the next
        transaction that may wait sets it back (`_transaction`): the writer of a WAL file, holding its
        write lock, waits for no one (its commit's checkpoint is a passive one, which never waits),
        and the two statements that set the timeout and set it back cost a decision 13-17 us of its
        170-200 (in-process, as `serve` decides). A rollback journal's commit waits for readers: the
        timeout is set back at once.
        """
        db = self._db
        if db is None:  # closed, or a forked child's first use: the ordinary path opens or raises
            return False
        try:
            if self._waits:
                db.execute("PRAGMA busy_timeout = 0")
                self._waits = False
            try:
                db.execute("BEGIN IMMEDIATE")
            finally:
                if self._checkpointer is None:  # started exactly when the file has a write-ahead log
                    db.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout_s * 1000)}")
                    self._waits = True
        except sqlite3.Error:
            _rollback(db)
            return False
        return True

    # --- spans ---------------------------------------------------------------------------------

    def apply(self, records: Sequence[SpendRecord], now: float) -> list[ApplyResult]:
        """Dedupe and apply every record, in order, in one transaction: all of them or none.

        Raises:
            StoreError: the transaction failed (locked past the busy timeout, disk full, read-only
                file); nothing of the batch was applied, so the whole batch can be retried.
        """
        if not records:
            return []
        with self._transaction("apply") as db:
            return self._apply(db, records)

    def _apply(self, db: sqlite3.Connection, records: Sequence[SpendRecord]) -> list[ApplyResult]:
        # The write lock is held: read which keys exist once, decide each record in Python exactly
        # as MemoryStore._apply_one does, then write the batch with a few executemany calls.
        # Counters are summed per row first; no decision depends on them, so order is kept.
        keys = [(_digest(r.seen_key), None if r.parent_key is None else _digest(r.parent_key)) for r in records]
        span_keys = [key for key, _ in keys]
        seen_before = _lookup(db, _SEEN_LOOKUP, span_keys + [parent for _, parent in keys if parent is not None])
        # A record is covered by its span key (a weak one's seen key differs only by its suffix).
        covered_keys = (
            [_digest(r.span_key) if r.weak else key for r, (key, _) in zip(records, keys, strict=True)]
            if any(r.weak for r in records)
            else span_keys
        )
        covered_before = _lookup(db, _COVERED_LOOKUP, covered_keys)
        calls, undo = self._calls, self._undo  # taken back if the transaction does not commit
        settling = db.execute("SELECT EXISTS (SELECT 1 FROM reservations)").fetchone()[0] == 1
        # The settle keys that have a reservation, read once: a record of any other key settles nothing,
        # and no reservation is added while the batch is applied (the keys only go).
        settle_keys = (
            _lookup(db, _SETTLE_KEY_LOOKUP, list({r.settle_key for r in records if r.settle_key}))
            if settling
            else set()
        )
        seen: dict[bytes, float] = {}
        covered: dict[bytes, float] = {}
        calendar: dict[tuple[str, str, float], list[float]] = {}
        rolling: dict[tuple[str, str, int], list[float]] = {}
        ledger: dict[tuple[int, str], list[float]] = {}
        spreads = SpreadSums()
        results: list[ApplyResult] = []
        append = results.append
        for record, (key, parent), covered_key in zip(records, keys, covered_keys, strict=True):
            if key in seen or key in seen_before:
                append(ApplyResult.DUPLICATE)
                continue
            seen[key] = record.dedupe_until
            call_keys = record.call_keys
            if (
                covered_key in covered
                or covered_key in covered_before
                or (parent is not None and (parent in seen or parent in seen_before))
                or (call_keys and calls.recognises(call_keys, record.keys_until, keep=not record.weak, undo=undo))
            ):
                if settling and record.decision_id is not None:
                    _release(db, self._held, record.decision_id, SETTLED, record.nanos)
                append(ApplyResult.NESTED)
                continue
            if not record.weak and parent is not None:
                covered[parent] = record.dedupe_until
            if record.spread is not None:
                spreads.add(record.spread)
            for inc in record.increments:
                window = inc.window
                nanos, tokens = clamp(inc.nanos), clamp(inc.tokens)
                row: list[float] | None
                if isinstance(window, RollingWindow):
                    step = window.step
                    index = int(inc.ts // step)
                    rolling_key = (inc.scope, window.label, index)
                    row = rolling.get(rolling_key)
                    if row is None:
                        # Kept two steps past the moment it stops counting (index + 61 steps).
                        rolling[rolling_key] = [nanos, tokens, 1, (index + 1) * step + window.retention()]
                        continue
                else:
                    start, end = window.bounds(inc.ts)
                    calendar_key = (inc.scope, window.unit, start)
                    row = calendar.get(calendar_key)
                    if row is None:
                        calendar[calendar_key] = [nanos, tokens, 1, end + window.retention()]
                        continue
                row[0] = min(row[0] + nanos, CEILING)
                row[1] = min(row[1] + tokens, CEILING)
                row[2] += 1
            entry = record.ledger
            if entry is not None:
                # Each count clamped, then summed exactly and capped once below: for amounts of at
                # least 0 that is where adding them one by one would have saturated.
                counts = entry.counts
                if min(counts) < 0 or max(counts) > CEILING:  # never from the engine
                    counts = tuple(map(clamp, counts))
                kept = ledger.get((entry.hour, entry.dims))
                if kept is None:
                    ledger[(entry.hour, entry.dims)] = [entry.until, *counts]
                else:
                    kept[0] = max(kept[0], entry.until)
                    kept[1:] = map(add, kept[1:], counts)
            if (
                settling
                and not (
                    record.decision_id is not None
                    and _release(db, self._held, record.decision_id, SETTLED, record.nanos)
                )
                and record.settle_key in settle_keys
                and not _settle_oldest(db, self._held, record.settle_key, record.nanos)
            ):
                settle_keys.discard(record.settle_key)  # none left: its next records settle nothing
            append(ApplyResult.APPLIED)
        # The spreads' counters, as their increments would have been added above.
        for scope, window, ts, nanos, tokens, count in spreads.counters():
            rows: dict[Any, list[float]]
            counter: Any  # (scope, label, index) or (scope, unit, start): the key of `rows`
            if isinstance(window, RollingWindow):
                index = int(ts // window.step)
                rows, counter, ends = rolling, (scope, window.label, index), (index + 1) * window.step
            else:
                start, ends = window.bounds(ts)
                rows, counter = calendar, (scope, window.unit, start)
            row = rows.get(counter)
            if row is None:  # kept past the moment it stops counting (the window's retention)
                rows[counter] = [min(nanos, CEILING), min(tokens, CEILING), count, ends + window.retention()]
                continue
            row[0] = min(row[0] + nanos, CEILING)
            row[1] = min(row[1] + tokens, CEILING)
            row[2] += count
        for kept in ledger.values():
            kept[1:] = [count if count <= CEILING else CEILING for count in kept[1:]]
        db.executemany("INSERT INTO seen (span_key, until) VALUES (?, ?)", seen.items())
        if covered:
            db.executemany(_COVERED_ADD, covered.items())
        # One statement per counter (not executemany): RETURNING says which reached the ceiling.
        saturated = 0
        for statement, rows in ((_CALENDAR_ADD, calendar), (_ROLLING_ADD, rolling)):
            for k, v in rows.items():
                saturated += db.execute(statement, (*k, *v)).fetchone()[0]
        self._report.saturated(saturated, "apply")
        if ledger:
            _add_ledger(db, ledger)
        return results

    # --- reading -------------------------------------------------------------------------------

    def totals(self, reads: Sequence[tuple[str, Window]], now: float) -> list[Counter]:
        """Spend of each (scope, window) in the window current at `now`, read in one snapshot."""
        if not reads:
            return []
        with self._transaction("totals", write=False) as db:
            counters = [_total(db, scope, window, now) for scope, window in reads]
        self._report.unreadable(sum(c[3] for c in counters), "totals")
        return [Counter(c[0], c[1], c[2]) for c in counters]

    # --- admission -----------------------------------------------------------------------------

    def admit(self, admission: Admission, now: float) -> Admitted:
        """Check every budget and reserve on all of them iff every blocking one fits, atomically.

        Raises:
            StoreError: the transaction failed; nothing was reserved.
        """
        nanos, tokens = clamp(admission.nanos), clamp(admission.tokens)
        checks = admission.checks
        calls = any(check.limit_calls is not None for check in checks)
        may_reserve = admission.reserve and bool(nanos or tokens or calls) and bool(checks)
        with self._transaction("admit", counters=False) as db:
            states, unreadable, previous = self._check(
                db, checks, nanos, tokens, now, admission.decision_id if may_reserve else None
            )
            reserve = may_reserve and all(
                state.fits for check, state in zip(checks, states, strict=True) if check.blocking
            )
            if reserve:
                # A decision id is admitted once; should it come again, the new reservation replaces
                # the old one rather than adding to it.
                if previous is not None:
                    _drop_reservation(db, self._held, previous, RELEASED, 0)
                held = [check.amounts(nanos, tokens) for check in checks]  # one call on a call budget
                # nanos and tokens are clamped: every item is a count in range
                items = _ITEMS_JSON([(check.scope, *held[item]) for item, check in enumerate(checks)])
                db.execute(
                    "INSERT INTO reservations (decision_id, settle_key, expires_at, source, estimate, items) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        admission.decision_id,
                        admission.settle_key or None,
                        admission.expires_at,
                        admission.source,
                        nanos,
                        items,
                    ),
                )
                change = self._held.change
                for check, (held_nanos, held_tokens) in zip(checks, held, strict=True):
                    change(check.scope, held_nanos, held_tokens)
        self._report.unreadable(unreadable, "admit")
        return Admitted(reserve, tuple(states))

    def read_budgets(self, checks: Sequence[BudgetCheck], now: float) -> list[CheckState]:
        """The state of each check's budget, reserving nothing (expired reservations are dropped).

        Raises:
            StoreError: the transaction failed.
        """
        if not checks:
            return []
        with self._transaction("read budgets", counters=False) as db:
            states, unreadable, _ = self._check(db, checks, 0, 0, now)
        self._report.unreadable(unreadable, "read budgets")
        return states

    def read_fullest(self, groups: Sequence[Sequence[BudgetCheck]], now: float) -> list[CheckState]:
        """Each group's fullest check's state (see `Store.read_fullest`):
        one read of every check (one transaction), the fullest picked here."""
        return fullest_states(groups, self.read_budgets([check for group in groups for check in group], now))

    def _check(  # noqa: PLR0917 - private, one caller per argument shape
        self,
        db: sqlite3.Connection,
        checks: Sequence[BudgetCheck],
        nanos: int,
        tokens: int,
        now: float,
        decision_id: str | None = None,
    ) -> tuple[list[CheckState], int, tuple[int, object, object] | None]:
        """Each check's state with `nanos` and `tokens` more (clamped), how many stored values could
        not be read, and the open reservation of `decision_id` (when given); in a write transaction
        (expired reservations are dropped first).

        Everything is read by one statement per `_READ_CHUNK` checks (`_reads`): a decision's nine
        budgets were once fourteen statements, each a round trip through the sqlite3 module."""
        version, expired, previous, spent = self._spent.read(db, checks, now, decision_id)
        held_by = self._held
        if expired:
            _expire_reservations(db, held_by, now)
            if previous is not None:  # it may have been one of them
                previous = _reservation(db, decision_id)
        totals = held_by.totals(db, version)
        scopeless = held_by.scopeless
        states: list[CheckState] = []
        unreadable = 0
        for check, counts in zip(checks, spent, strict=True):
            held = totals.get(check.scope) or _NOTHING_HELD
            if held[2] or scopeless:  # an unreadable reservation: the scope (any, if it names none) is exhausted
                unreadable += 1
                held = _SATURATED_HELD
            elif held[0] > CEILING or held[1] > CEILING:
                held = (min(held[0], CEILING), min(held[1], CEILING), 0)
            unreadable += counts[3]
            states.append(check_state(check, counts, held, nanos, tokens))
        return states, unreadable, previous

    def read_sub_buckets(self, reads: Sequence[tuple[str, RollingWindow]], now: float) -> list[tuple[SubBucket, ...]]:
        """Each rolling window's sub-buckets that count at `now` and hold spend, in one snapshot.

        Raises:
            StoreError: the transaction failed.
        """
        if not reads:
            return []
        found: list[tuple[SubBucket, ...]] = []
        unreadable = 0
        with self._transaction("read sub-buckets", write=False) as db:
            for scope, window in reads:
                rows = db.execute(_ROLLING_BUCKETS, (scope, window.label, int(now // window.step), SUB_BUCKETS))
                buckets = []
                for stored_index, stored_nanos, stored_tokens, stored_requests in rows:
                    index, nanos, tokens = stored_index, _count(stored_nanos), _count(stored_tokens)
                    requests = _count(stored_requests)
                    if type(index) is not int:  # not written by this store: counts as the newest, full
                        index, nanos, tokens, requests = int(now // window.step), None, None, None
                    unreadable += (nanos is None) + (tokens is None) + (requests is None)
                    if nanos or tokens or requests or None in (nanos, tokens, requests):
                        buckets.append(
                            SubBucket(
                                index,
                                CEILING if nanos is None else nanos,
                                CEILING if tokens is None else tokens,
                                CEILING if requests is None else requests,
                            )
                        )
                found.append(tuple(buckets))
        self._report.unreadable(unreadable, "read sub-buckets")
        return found

    def release(self, decision_id: str) -> bool:
        """Drop a reservation (the call will not happen); False if it was not open."""
        with self._transaction("release") as db:
            return _release(db, self._held, decision_id)

    # --- marks ---------------------------------------------------------------------------------

    def mark(self, key: str, expires_at: float) -> bool:
        """Set `key` if absent (True) or report it was set already (False)."""
        with self._transaction("mark") as db:
            cursor = db.execute("INSERT OR IGNORE INTO marks (key, expires_at) VALUES (?, ?)", (key, expires_at))
            return cursor.rowcount == 1

    def unmark(self, key: str) -> None:
        with self._transaction("unmark") as db:
            db.execute("DELETE FROM marks WHERE key = ?", (key,))

    # --- state blobs ---------------------------------------------------------------------------

    def save_state(self, namespace: str, items: Mapping[str, bytes]) -> None:
        """Insert or replace each key's blob, all in one transaction.

        Raises:
            StoreError: the transaction failed; nothing was written.
        """
        if not items:
            return
        with self._transaction("save state") as db:
            db.executemany(
                "INSERT INTO state (namespace, key, data) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET data = excluded.data",
                [(namespace, key, data) for key, data in items.items()],
            )

    def load_state(self, namespace: str) -> dict[str, bytes]:
        """Every key's blob in `namespace`.

        Raises:
            StoreError: the read failed.
        """
        with self._transaction("load state", write=False) as db:
            return {key: bytes(data) for key, data in db.execute(_STATE_LOAD, (namespace,))}

    def delete_state(self, namespace: str, keys: Iterable[str]) -> None:
        """Forget these keys of `namespace`, in one transaction.

        Raises:
            StoreError: the transaction failed; nothing was deleted.
        """
        rows = [(namespace, key) for key in keys]
        if not rows:
            return
        with self._transaction("delete state") as db:
            db.executemany("DELETE FROM state WHERE namespace = ? AND key = ?", rows)

    def merge_state(self, namespace: str, items: Mapping[str, tuple[int, bytes]]) -> dict[str, tuple[int, bytes]]:
        """Keep each key's blob where its version is higher, then read the namespace: one transaction.

        Raises:
            StoreError: the transaction failed; nothing was written.
        """
        with self._transaction("merge state") as db:
            if items:
                db.executemany(
                    "INSERT INTO versioned_state (namespace, key, version, data) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET version = excluded.version, data = excluded.data "
                    "WHERE excluded.version > versioned_state.version",
                    [(namespace, key, version, data) for key, (version, data) in items.items()],
                )
            rows = db.execute(
                "SELECT key, version, CAST(data AS BLOB) FROM versioned_state WHERE namespace = ?", (namespace,)
            )
            return {key: (version, bytes(data)) for key, version, data in rows}

    def read_ledger(self, start: int, end: int) -> list[tuple[int, str, tuple[int, ...]]]:
        """The ledger rows of the hours in `[start, end)`, in one read.

        Raises:
            StoreError: the read failed.
        """
        with self._transaction("read ledger", write=False) as db:
            rows = db.execute(_LEDGER_READ, (start, end)).fetchall()
        found = []
        unreadable = 0
        for hour, dims, *counts in rows:
            values = [_count(count) for count in counts]
            if type(hour) is not int or not isinstance(dims, str):
                unreadable += 1
                continue
            unreadable += values.count(None)
            found.append((hour, dims, tuple(CEILING if value is None else value for value in values)))
        if unreadable:
            self._report.unreadable(unreadable, "ledger")
        return found

    def take_outcomes(self) -> list[Outcome]:
        """The outcomes of reservations this process dropped (each reservation is dropped by one
        transaction of one process, so across processes each is reported once)."""
        with self._lock:
            taken = list(self._outcomes)
            self._outcomes.clear()
            return taken

    # --- samples -------------------------------------------------------------------------------

    def add_samples(self, samples: Sequence[Sample], *, keep: int, ttl_s: float, now: float) -> None:
        """Append the samples and trim each written series to its newest `keep`, in one transaction.

        Raises:
            StoreError: the transaction failed; nothing was written.
        """
        if not samples:
            return
        keep = max(1, min(keep, MAX_SAMPLES))
        until = now + ttl_s
        if len(samples) > keep:
            samples = newest_samples(samples, keep)
        with self._transaction("add samples") as db:
            db.executemany(
                "INSERT INTO samples (key, at, nanos, tokens) VALUES (?, ?, ?, ?)",
                [(key, at, clamp(nanos), clamp(tokens)) for key, at, nanos, tokens in samples],
            )
            # `written` orders series by their last write (the newest sample's seq), for the bound on keys.
            keys = {sample.key for sample in samples}
            db.executemany(
                "INSERT INTO sample_keys (key, until, written) VALUES (?1, ?2, (SELECT max(seq) FROM samples "
                "WHERE key = ?1)) ON CONFLICT (key) DO UPDATE SET until = excluded.until, written = excluded.written",
                [(key, until) for key in keys],
            )
            db.executemany(
                "DELETE FROM samples WHERE key = ?1 AND seq <= "
                "(SELECT seq FROM samples WHERE key = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                [(key, keep) for key in keys],
            )
            excess = int(db.execute("SELECT count(*) FROM sample_keys").fetchone()[0]) - MAX_SAMPLE_KEYS
            if excess > 0:
                _forget_samples(db, "SELECT key FROM sample_keys ORDER BY written LIMIT ?", (excess,))

    def read_samples(self, keys: Sequence[str], since: float) -> list[list[tuple[int, int]]]:
        """Each key's samples at `since` or later, newest first.

        Raises:
            StoreError: the read failed.
        """
        with self._transaction("read samples", write=False) as db:
            found: list[list[tuple[int, int]]] = []
            unreadable = 0
            for key in keys:
                rows = db.execute(
                    "SELECT nanos, tokens FROM samples WHERE key = ? AND at >= ? ORDER BY seq DESC", (key, since)
                ).fetchall()
                series = []
                for nanos, tokens in rows:
                    n, t = _count(nanos), _count(tokens)
                    unreadable += (n is None) + (t is None)
                    series.append((CEILING if n is None else n, CEILING if t is None else t))
                found.append(series)
        if unreadable:
            self._report.unreadable(unreadable, "samples")
        return found

    # --- housekeeping --------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Forget what is past its expiry; returns how many keys, counters, windows and reservations."""
        with self._transaction("expire") as db:
            dropped = 0
            for statement in (
                "DELETE FROM seen WHERE until <= ?",
                "DELETE FROM covered WHERE until <= ?",
                "DELETE FROM marks WHERE expires_at <= ?",
                "DELETE FROM calendar WHERE expires_at <= ?",
            ):
                dropped += db.execute(statement, (now,)).rowcount
            dropped += self._calls.expire(now)
            # Counted per rolling window whose every sub-bucket is gone, as MemoryStore counts rings.
            dropped += int(db.execute(_RINGS_GONE, (now,)).fetchone()[0])
            db.execute("DELETE FROM rolling WHERE expires_at <= ?", (now,))
            dropped += _forget_samples(db, "SELECT key FROM sample_keys WHERE until <= ?", (now,))
            dropped += db.execute("DELETE FROM ledger WHERE until <= ?", (now,)).rowcount
            return dropped + _expire_reservations(db, self._held, now)

    def health(self) -> StoreHealth:
        return self._report.health()

    def forward_queue(self, max_bytes: int) -> ForwardQueue:
        """In the store's file (its own tables and connection); in memory for `sqlite://`."""

        if self.path == ":memory:":
            return MemoryQueue(max_bytes)
        return SQLiteQueue(self.path, max_bytes)

    def close(self) -> None:
        """Close the connection (idempotent); the file keeps everything for the next open."""
        _OPEN.discard(self)
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._reopen = False
            db, self._db = self._db, None
            if db is not None:
                db.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"


class _Held:
    """Each scope's reserved total, as the file's open reservations sum to, kept in memory.

    `admit` reads one per matching budget on every decision: summing the open reservations' items
    each time made every decision slower than the last, and a table of totals cost half the pages
    each decision writes (so half the log that checkpoints must sync). The totals are summed
    from the file once, then follow every change this connection makes. `PRAGMA data_version`
    says when another connection (another process on the file) has committed since: then they
    are summed again, in the transaction that reads them. After a rollback they are summed again
    too. Used under the store's lock only.
    """

    __slots__ = ("_sums", "_version", "outcomes", "scopeless")

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        """Reservations this transaction dropped: the store's `take_outcomes` once it commits."""
        self._sums: dict[str, list[int]] = {}
        self.scopeless = 0
        """Items whose scope could not be read (`_items`): while there are any, every scope reads as exhausted."""
        self._version: int | None = None
        """`PRAGMA data_version` when `_sums` were right; None: sum the file again."""

    def totals(self, db: sqlite3.Connection, version: int) -> dict[str, list[int]]:
        """[nanos, tokens, unreadable items] by scope in this transaction (exact: the totals may
        pass `CEILING`; scopes with nothing reserved are absent), and `scopeless` set. `version`:
        `PRAGMA data_version`, read in this transaction."""
        if version != self._version:
            sums: dict[str, list[int]] = {}
            scopeless = 0
            for (raw,) in db.execute(f"SELECT {_ITEMS_READ} FROM reservations"):  # noqa: S608 - constants only
                for scope, nanos, tokens in _items(raw):
                    if scope is None:
                        scopeless += 1
                        continue
                    total = sums.get(scope)
                    if total is None:
                        total = sums[scope] = [0, 0, 0]
                    if nanos is None or tokens is None:
                        total[2] += 1
                    else:
                        total[0] += nanos
                        total[1] += tokens
            self._sums = {scope: total for scope, total in sums.items() if total != [0, 0, 0]}
            self.scopeless = scopeless
            self._version = version
        return self._sums

    def change(self, scope: str, nanos: int, tokens: int) -> None:
        """This transaction reserved (or, negative, dropped) `nanos` and `tokens` on `scope`."""
        total = self._sums.get(scope)
        if total is None:
            self._sums[scope] = [nanos, tokens, 0]
            return
        total[0] += nanos
        total[1] += tokens
        if total == [0, 0, 0]:
            del self._sums[scope]

    def discard(self) -> None:
        """The transaction rolled back: what it changed here did not happen."""
        self._version = None


class _Checkpointer:
    """Copies the write-ahead log into the database file ten times a second, from its own thread and
    connection, so that the store's callers do not.

    A commit that crosses `wal_autocheckpoint` checkpoints before it returns: tens of milliseconds
    for 40 MB of log, during which that caller and every request queued behind it wait (`admit`
    commits on every decision: at a thousand a second, that was once a second). Here PASSIVE
    checkpoints wait for no reader or writer; each copies the frames committed when it began.

    The log is rewound (written again from its start) only by a commit that finds every frame
    copied. Under steady decisions that never happened: a pass ends while the next decision is in
    its transaction, so the log grew to the commits' own bound (160 MB), every page read searched
    an ever longer log index, and then a commit checkpointed it all. So once the log is
    `_REWIND_BYTES` long (64 MiB: every few seconds at a thousand decisions a second), one more
    pass runs with the store's lock held: no transaction of this process is open, the pass copies
    the frames since the last one and syncs (1 to 5 ms measured on a busy 2-core machine), and the
    next commit rewinds the log. Meanwhile `SQLiteStore.uncontended` waits (`rewinding`). (The
    thread runs at the process's priority: at the lowest, it could be preempted holding the lock.)
    Another process on the file may still keep it from rewinding; the commits' own checkpoints
    stay as the bound then, and should this thread fall behind or not run (a forked child).
    Durability is unchanged: a checkpoint syncs as the commits' own did.
    """

    def __init__(self, path: str, busy_timeout_s: float, store_lock: threading.RLock, page_size: int) -> None:
        self._path = path
        self._page_size = page_size
        self._timeout = busy_timeout_s
        self._store_lock = store_lock
        self.rewinding = False
        """True while the last pass of a rewind holds the store's lock (`SQLiteStore.uncontended` waits for it)."""
        self.rewinds = 0
        """Rewinds done, counted before the store's lock is let go."""
        self._stopped = threading.Event()
        self.busy = threading.Lock()
        """Held while the thread is inside SQLite (opening and closing its connection included): a
        fork waits for it (`_before_fork`), for as long as the thread lives, its store closed or not.
        Taken after the store's lock, never before it, as `_before_fork` takes them."""
        _CHECKPOINTERS.add(self)
        self._thread = threading.Thread(target=self._run, name="otel-puppy-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:
                with self.busy:
                    db = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
            except sqlite3.Error:
                logger.warning("sqlite store %s: no background checkpoints (cannot open)", self._path, exc_info=True)
                return
            try:
                while not self._stopped.wait(_CHECKPOINT_EVERY_S):
                    try:
                        self._checkpoint(db)
                    except sqlite3.Error as exc:  # the next one, or the commits' own, will do
                        logger.debug("sqlite store %s: background checkpoint failed: %s", self._path, exc)
            finally:
                with self.busy:
                    db.close()
        finally:
            _CHECKPOINTERS.discard(self)

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        with self.busy:
            _busy, frames, _copied = _passive(db)
        if frames * self._page_size < _REWIND_BYTES:
            return
        with self.busy:  # the frames committed during the long pass: the held pass copies fewer
            _passive(db)
        with self._store_lock, self.busy:
            self.rewinding = True
            try:
                _passive(db)
            finally:
                self.rewinding = False
                self.rewinds += 1

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self._timeout + 5)


_OPEN: Final[weakref.WeakSet[SQLiteStore]] = weakref.WeakSet()
"""Every open store of this process, for the fork hooks."""
_INHERITED: Final[list[sqlite3.Connection]] = []
"""Connections a forked child got from its parent: kept, never used or closed, in the child."""
_FORKING: list[SQLiteStore] = []
"""The stores `_before_fork` stopped, for the other half of the hook."""
_CHECKPOINTERS: Final[set[_Checkpointer]] = set()
"""Every checkpoint thread alive in this process (its store may be closed already), for the fork hooks."""
_FORKING_CHECKPOINTERS: list[_Checkpointer] = []


def _before_fork() -> None:
    """Wait until no thread is inside SQLite for any open store, and keep them out until the fork is
    done: a thread in SQLite at a fork can leave a lock (the store's, or one of SQLite's own) held
    forever in the child, and the connection mid-transaction. No thread holds two of these locks
    at once, so taking them one by one cannot deadlock."""
    stores = list(_OPEN)
    for store in stores:
        store._lock.acquire()
    # Every checkpoint thread, its store's or a closed store's still closing its connection: one in
    # `sqlite3.connect` or `close` at the fork would leave SQLite's own file locks held in the child.
    checkpointers = list(_CHECKPOINTERS)
    for checkpointer in checkpointers:
        checkpointer.busy.acquire()
    _FORKING[:] = stores
    _FORKING_CHECKPOINTERS[:] = checkpointers


def _after_fork_in_parent() -> None:
    for checkpointer in _FORKING_CHECKPOINTERS:
        checkpointer.busy.release()
    for store in _FORKING:
        store._lock.release()
    _FORKING.clear()
    _FORKING_CHECKPOINTERS.clear()


def _after_fork_in_child() -> None:
    for store in _FORKING:
        store.after_fork()
    _FORKING.clear()
    # Their threads stayed in the parent, and their locks stay taken here: a fork of this child must not wait on them.
    _FORKING_CHECKPOINTERS.clear()
    _CHECKPOINTERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def _passive(db: sqlite3.Connection) -> tuple[int, int, int]:
    """A PASSIVE checkpoint: (1 if a reader or writer kept it from copying every frame, frames in
    the log, frames copied)."""
    busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(busy), int(frames), int(copied)


def _rollback(db: sqlite3.Connection) -> None:
    # Some errors (a full disk, an I/O error) roll the transaction back themselves; and a failing
    # ROLLBACK must not hide the error that caused it.
    if db.in_transaction:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _digest(key: str) -> bytes:
    """A span key's 128-bit digest: 16 bytes whatever the key looks like; a collision (which
    would count a span as a duplicate) is out of reach below 2**64 keys."""
    return blake2b(key.encode(), digest_size=16).digest()


def _lookup(
    db: sqlite3.Connection, statements: dict[int, str], keys: Sequence[_K], first: tuple[object, ...] = ()
) -> set[_K]:
    """Which of `keys` the table holds (with the parameters `first` before them, when the statement
    takes any)."""
    found: set[_K] = set()
    largest = _LOOKUP_SIZES[-1]
    for start in range(0, len(keys), largest):
        chunk: list[object] = [*first, *keys[start : start + largest]]
        size = next(n for n in _LOOKUP_SIZES if n >= len(chunk) - len(first))
        chunk += [None] * (size + len(first) - len(chunk))
        found.update(row[0] for row in db.execute(statements[size], chunk))
    return found


def _add_ledger(db: sqlite3.Connection, rows: Mapping[tuple[int, str], Sequence[float]]) -> None:
    """Add a batch's ledger rows: a row an hour does not have yet, past `MAX_LEDGER_ROWS` of them, is
    added to the hour's `OTHER_DIMS` row instead. The rows it has are read at once per hour, and
    the batch is written with one `executemany`, in order: as row by row."""
    wanted: dict[int, list[str]] = {}
    for hour, dims in rows:
        wanted.setdefault(hour, []).append(dims)
    present: set[tuple[int, str]] = set()
    for hour, names in wanted.items():
        for found in _lookup(db, _LEDGER_LOOKUP, names, (hour,)):
            present.add((hour, found))
    room: dict[int, int] = {}
    added: list[tuple[object, ...]] = []
    for (hour, dims), values in rows.items():
        if (hour, dims) not in present:
            left = room.get(hour)
            if left is None:
                used = db.execute("SELECT count(*) FROM ledger WHERE hour = ?", (hour,)).fetchone()[0]
                left = MAX_LEDGER_ROWS - int(used)
            if left <= 0:
                dims = OTHER_DIMS  # noqa: PLW2901 - folded
            else:
                left -= 1
            room[hour] = left
            present.add((hour, dims))  # written below: a later row of the batch finds it
        added.append((hour, dims, *values))
    db.executemany(_LEDGER_ADD, added)


def _forget_samples(db: sqlite3.Connection, select_keys: str, args: tuple[object, ...]) -> int:
    """Forget the sample series `select_keys` names (one column, `key`); returns how many."""
    keys = db.execute(select_keys, args).fetchall()
    db.executemany("DELETE FROM samples WHERE key = ?", keys)
    db.executemany("DELETE FROM sample_keys WHERE key = ?", keys)
    return len(keys)


def _count(value: object) -> int | None:
    """A stored count, or None when it is not an integer in `[0, CEILING]` (unreadable)."""
    return value if type(value) is int and 0 <= value <= CEILING else None


def _total(db: sqlite3.Connection, scope: str, window: Window, now: float) -> tuple[int, int, int, int]:
    """(nanos, tokens, requests, unreadable values) of a counter: each count at most `CEILING`, and
    `CEILING` where a value could not be read."""
    if isinstance(window, RollingWindow):
        row = db.execute(_ROLLING_TOTAL, (scope, window.label, int(now // window.step), SUB_BUCKETS)).fetchone()
        counts = [CEILING if bad else min(total, CEILING) for total, bad in zip(row[:3], row[3:], strict=True)]
        return counts[0], counts[1], counts[2], row[3] + row[4] + row[5]
    row = db.execute(_CALENDAR_TOTAL, (scope, window.unit, window.bounds(now)[0])).fetchone()
    if row is None:
        return 0, 0, 0, 0
    nanos, tokens, requests = _count(row[0]), _count(row[1]), _count(row[2])
    if nanos is not None and tokens is not None and requests is not None:
        return nanos, tokens, requests, 0
    return (
        CEILING if nanos is None else nanos,
        CEILING if tokens is None else tokens,
        CEILING if requests is None else requests,
        (nanos is None) + (tokens is None) + (requests is None),
    )


_RESERVATION: Final = "seq, source, estimate"
"""The columns `_drop_reservation` takes of a reservation's row."""
_UNCONTENDED_WAIT_S: Final = 0.002
"""How long `uncontended` waits for another thread's transaction; `_UNCONTENDED_PAUSE_S`: then how long it does not."""
_UNCONTENDED_PAUSE_S: Final = 0.05
_REWIND_WAIT_S: Final = 0.05
_READ_CHUNK: Final = 100
"""Checks read by one statement (`_read`): at most 3 parameters and one compound term each, far
below SQLite's limits (32,766 parameters, 500 terms)."""
_READS_KEPT: Final = 256
_READS: dict[tuple[bool, bool, tuple[bool, ...]], str] = {}
"""`_read`'s statements by shape: whether it asks the version and expiry (first chunk), whether it
looks a decision id up, and which checks are rolling windows. A few shapes in practice."""
# Tagged rows, one per term: -1 data_version, -2 whether a reservation expired, -3 the decision
# id's open reservation (`_RESERVATION` columns), then each check's counter by its index: a calendar
# window's raw row (none when it has no spend yet), a rolling window's sums as `_ROLLING_TOTAL`'s.
_VERSION_TERM: Final = "SELECT -1, data_version, 0, 0, 0, 0, 0 FROM pragma_data_version"
_EXPIRED_TERM: Final = "SELECT -2, EXISTS (SELECT 1 FROM reservations WHERE expires_at <= ?1), 0, 0, 0, 0, 0"
_PREVIOUS_TERM: Final = f"SELECT -3, {_RESERVATION}, 0, 0, 0 FROM reservations WHERE decision_id = ?2"  # noqa: S608
_CALENDAR_TERM: Final = (
    "SELECT {i}, nanos, tokens, requests, 0, 0, 0 FROM calendar WHERE scope = ?{a} AND unit = ?{b} AND start = ?{c}"
)
_ROLLING_TERM: Final = f"""SELECT {{i}},
    COALESCE(SUM(CASE WHEN {_valid("nanos")} THEN nanos END), 0),
    COALESCE(SUM(CASE WHEN {_valid("tokens")} THEN tokens END), 0),
    COALESCE(SUM(CASE WHEN {_valid("requests")} THEN requests END), 0),
    COALESCE(SUM(NOT {_valid("nanos")}), 0),
    COALESCE(SUM(NOT {_valid("tokens")}), 0),
    COALESCE(SUM(NOT {_valid("requests")}), 0)
FROM rolling WHERE scope = ?{{a}} AND label = ?{{b}} AND idx >= (
    SELECT max(COALESCE(MAX(idx), ?{{c}}), ?{{c}}) FROM rolling WHERE scope = ?{{a}} AND label = ?{{b}}
) - {SUB_BUCKETS}"""  # noqa: S608 - constants only


def _read_statement(first: bool, lookup: bool, rolling: tuple[bool, ...]) -> str:
    key = (first, lookup, rolling)
    statement = _READS.get(key)
    if statement is None:
        terms = [_VERSION_TERM, _EXPIRED_TERM] if first else []
        if lookup:
            terms.append(_PREVIOUS_TERM)
        for i, is_rolling in enumerate(rolling):
            a = 3 + 3 * i
            terms.append((_ROLLING_TERM if is_rolling else _CALENDAR_TERM).format(i=i, a=a, b=a + 1, c=a + 2))
        statement = " UNION ALL ".join(terms)
        if len(_READS) >= _READS_KEPT:
            _READS.clear()
        _READS[key] = statement
    return statement


def _read(
    db: sqlite3.Connection, keys: Sequence[_CounterKey], now: float, decision_id: str | None, *, head: bool = True
) -> tuple[int, bool, tuple[int, object, object] | None, list[tuple[int, int, int, int]]]:
    """In one statement per `_READ_CHUNK` counters (`_counter_key`s): with `head`, `PRAGMA data_version`,
    whether any reservation has expired at `now` and `decision_id`'s open reservation (None if none, or
    not asked); and each counter as `_total` reads it."""
    version = 0
    expired = False
    previous: tuple[int, object, object] | None = None
    spent: list[tuple[int, int, int, int]] = []
    first = head
    for start in range(0, max(len(keys), 1 if head else 0), _READ_CHUNK):
        chunk = keys[start : start + _READ_CHUNK]
        lookup = first and decision_id is not None
        params: list[object] = [now, decision_id if lookup else None]
        rolling = []
        for key in chunk:
            rolling.append(key[0])
            params += key[1:]
        if not chunk and not lookup:  # the statement's parameters are numbered up to the highest used
            del params[1:]
        found = [_NO_SPEND] * len(chunk)
        for row in db.execute(_read_statement(first, lookup, tuple(rolling)), params):
            tag = row[0]
            if tag >= 0:
                found[tag] = _rolling_counts(row) if rolling[tag] else _calendar_counts(row)
            elif tag == -1:
                version = row[1]
            elif tag == -2:
                expired = row[1] == 1
            else:
                previous = (row[1], row[2], row[3])
        spent += found
        first = False
    return version, expired, previous, spent


_CounterKey = tuple[bool, str, str, float]
"""A counter as `_read` reads it: whether it is a rolling window's, its scope, and the window's label
and current sub-bucket index (rolling) or its unit and current start (calendar)."""


def _counter_key(check: BudgetCheck, now: float) -> _CounterKey:
    window = check.window
    if isinstance(window, RollingWindow):
        return (True, check.scope, window.label, int(now // window.step))
    return (False, check.scope, window.unit, window.bounds(now)[0])


_SPENT_KEPT: Final = 65_536
"""Counters `_Spent` keeps at most (all are forgotten past it, as a scrape of more budgets reads)."""


class _Spent:
    """The budget counters `admit` read, as the file held them, kept in memory while it holds them still.

    A decision reads every matching budget's counter (nine for the bench's fifty policies), which was
    the largest part of its statement; between two span batches the counters do not change. So the
    counters read are kept, by `_counter_key` (a new window start or sub-bucket is a new key), with
    `PRAGMA data_version` as it was when they were read: another connection's commit changes it, and
    then they are read again. This connection's own writes do not change it, so every transaction that
    may write a counter (`_transaction(counters=True)`, and any rollback) forgets them first.

    While the file changes on every decision (another process deciding on it), keeping them would cost a
    second statement each time for nothing: after a decision found the version changed, the next reads
    everything in one statement, as without the cache (`stale`), until one finds it unchanged. Used under
    the store's lock only.
    """

    __slots__ = ("counts", "stale", "version")

    def __init__(self) -> None:
        self.counts: dict[_CounterKey, tuple[int, int, int, int]] = {}
        self.version: int | None = None
        """`PRAGMA data_version` when `counts` were read; None: nothing is kept."""
        self.stale = False
        """The version changed at the last read: read everything in one statement next time."""

    def discard(self) -> None:
        self.counts = {}
        self.version = None

    def read(
        self, db: sqlite3.Connection, checks: Sequence[BudgetCheck], now: float, decision_id: str | None
    ) -> tuple[int, bool, tuple[int, object, object] | None, list[tuple[int, int, int, int]]]:
        """`_read` of `checks`' counters, those kept answered from memory while the file is unchanged."""
        keys = [_counter_key(check, now) for check in checks]
        if self.version is None or self.stale:
            version, expired, previous, spent = _read(db, keys, now, decision_id)
            self.stale = self.version is not None and version != self.version
            if version != self.version:
                self.counts = {}
            self.version = version
            self._keep(keys, spent)
            return version, expired, previous, spent
        version, expired, previous, _ = _read(db, (), now, decision_id)
        if version != self.version:
            self.counts = {}
            self.version = version
            self.stale = True
        found = {key: self.counts[key] for key in keys if key in self.counts}
        missing = [key for key in keys if key not in found]
        if missing:
            read = _read(db, missing, now, None, head=False)[3]
            found.update(zip(missing, read, strict=True))
            self._keep(missing, read)
        return version, expired, previous, [found[key] for key in keys]

    def _keep(self, keys: Sequence[_CounterKey], spent: Sequence[tuple[int, int, int, int]]) -> None:
        """Keep the counters just read, all of them forgotten first should they not fit with those kept."""
        if len(self.counts) + len(keys) > _SPENT_KEPT:
            self.counts = {}
        if len(keys) <= _SPENT_KEPT:
            self.counts.update(zip(keys, spent, strict=True))


_NO_SPEND: Final = (0, 0, 0, 0)


def _rolling_counts(row: Sequence[Any]) -> tuple[int, int, int, int]:
    """(nanos, tokens, requests, unreadable values) from a `_ROLLING_TERM` row."""
    return (
        CEILING if row[4] else min(row[1], CEILING),
        CEILING if row[5] else min(row[2], CEILING),
        CEILING if row[6] else min(row[3], CEILING),
        row[4] + row[5] + row[6],
    )


def _calendar_counts(row: Sequence[Any]) -> tuple[int, int, int, int]:
    """(nanos, tokens, requests, unreadable values) from a `_CALENDAR_TERM` row (raw stored values)."""
    nanos, tokens, requests = _count(row[1]), _count(row[2]), _count(row[3])
    if nanos is not None and tokens is not None and requests is not None:
        return nanos, tokens, requests, 0
    return (
        CEILING if nanos is None else nanos,
        CEILING if tokens is None else tokens,
        CEILING if requests is None else requests,
        (nanos is None) + (tokens is None) + (requests is None),
    )


_ITEMS_JSON: Final = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode
"""A reservation's items, `[[scope, nanos, tokens], ...]`, as `reservations.items` holds them."""


def _move_items(db: sqlite3.Connection) -> int:
    """Version 6: a file's `reservation_items` rows into their reservations' `items`, a thousand
    reservations a statement; how many rows belonged to no reservation (left behind: no version could
    release them). A value no item can hold becomes `null` (a scope that is not UTF-8 text, a count
    that is not an integer): read as unreadable, as it was."""
    rows = db.execute(
        "SELECT seq, CASE WHEN typeof(scope) = 'text' THEN CAST(scope AS BLOB) END, nanos, tokens "
        "FROM reservation_items ORDER BY seq, item"
    )
    reservations = (
        (seq, [_moved_item(scope, nanos, tokens) for _, scope, nanos, tokens in items])
        for seq, items in itertools.groupby(rows, key=itemgetter(0))
    )
    while chunk := list(itertools.islice(reservations, 1000)):
        db.executemany("UPDATE reservations SET items = ? WHERE seq = ?", [(_ITEMS_JSON(i), seq) for seq, i in chunk])
    orphans = db.execute("SELECT COUNT(*) FROM reservation_items WHERE seq NOT IN (SELECT seq FROM reservations)")
    return int(orphans.fetchone()[0])


def _moved_item(scope: bytes | None, nanos: object, tokens: object) -> list[object]:
    """One `reservation_items` row as an item (its scope as text's bytes: see `_ITEMS_READ`)."""
    try:
        name = scope.decode() if scope is not None else None
    except UnicodeDecodeError:
        name = None
    return [name, nanos if type(nanos) is int else None, tokens if type(tokens) is int else None]


_ITEMS_READ: Final = "CASE WHEN typeof(items) = 'text' THEN CAST(items AS BLOB) END"
"""A reservation's `items` as `_items` reads them: the text's bytes (text that is not UTF-8 would fail
the statement that read it), or NULL for a value that is not text."""


def _items(raw: object) -> list[tuple[str | None, int | None, int | None]]:
    """A reservation's `items` column (`_ITEMS_READ`), read: `(scope, nanos, tokens)` of each item, None
    for what is not a scope (text) or a count this store writes. A column that is not a JSON array in
    UTF-8 reads as one item naming no scope (whichever it held, every scope must read as exhausted)."""
    try:
        items = json.loads(raw.decode()) if isinstance(raw, bytes) else None
    except (ValueError, RecursionError):  # not UTF-8 or not JSON (UnicodeDecodeError is a ValueError), nested too deep
        items = None
    if type(items) is not list:
        return [(None, None, None)]
    out: list[tuple[str | None, int | None, int | None]] = []
    for item in items:
        if type(item) is not list or len(item) != 3 or type(item[0]) is not str:
            out.append((None, None, None))
            continue
        scope, nanos, tokens = item
        out.append((scope, _count(nanos), _count(tokens)))
    return out


_CORRUPT_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _CORRUPT_CODES:
        return True
    text = str(exc)
    return "malformed" in text or "file is not a database" in text


def _reservation(db: sqlite3.Connection, decision_id: str | None) -> tuple[int, object, object] | None:
    """The open reservation of `decision_id` (`_RESERVATION` columns), or None."""
    row = db.execute(f"SELECT {_RESERVATION} FROM reservations WHERE decision_id = ?", (decision_id,)).fetchone()  # noqa: S608 - constants only
    return None if row is None else (row[0], row[1], row[2])


def _release(db: sqlite3.Connection, held: _Held, decision_id: str, outcome: str = RELEASED, cost: int = 0) -> bool:
    row = _reservation(db, decision_id)
    if row is None:
        return False
    _drop_reservation(db, held, row, outcome, cost)
    return True


def _settle_oldest(db: sqlite3.Connection, held: _Held, settle_key: str, cost: int) -> bool:
    """Settle the oldest reservation of `settle_key` at `cost`; whether there was one."""
    row = db.execute(
        f"SELECT {_RESERVATION} FROM reservations WHERE settle_key = ? ORDER BY seq LIMIT 1",  # noqa: S608 - constants only
        (settle_key,),
    ).fetchone()
    if row is None:
        return False
    _drop_reservation(db, held, row, SETTLED, cost)
    return True


def _outcome(source: object, outcome: str, estimate: object, cost: int = 0) -> Outcome:
    """A dropped reservation's outcome, from its stored source and estimate (unreadable ones as `none`, 0)."""
    return Outcome(source if isinstance(source, str) else "none", outcome, _count(estimate) or 0, cost)


def _drop_reservation(
    db: sqlite3.Connection, held: _Held, row: tuple[int, object, object], outcome: str, cost: int
) -> None:
    held.outcomes.append(_outcome(row[1], outcome, row[2], cost))
    gone = db.execute(f"DELETE FROM reservations WHERE seq = ? RETURNING {_ITEMS_READ}", (row[0],)).fetchall()  # noqa: S608 - constants only
    if gone:
        _take_back(held, gone[0][0])


def _take_back(held: _Held, items: object) -> None:
    """What a dropped reservation's `items` held is no longer held."""
    change = held.change
    for scope, nanos, tokens in _items(items):
        if scope is None or nanos is None or tokens is None:
            held.discard()  # an unreadable item: sum the file again, after this transaction's changes
            return
        change(scope, -nanos, -tokens)


def _expire_reservations(db: sqlite3.Connection, held: _Held, now: float) -> int:
    expired = db.execute(
        f"DELETE FROM reservations WHERE expires_at <= ? RETURNING source, estimate, {_ITEMS_READ}",  # noqa: S608 - constants only
        (now,),
    ).fetchall()
    for source, estimate, items in expired:
        held.outcomes.append(_outcome(source, EXPIRED, estimate))
        _take_back(held, items)
    return len(expired)
