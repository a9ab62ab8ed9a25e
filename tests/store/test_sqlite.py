"""SQLite store: what only a file can do (restart, failures, crashes, other connections)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Final

import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy.calls import LLMCall
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import StoreCorruptError, StoreError
from otel_puppy.policies import parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.store import sqlite as sqlite_store
from otel_puppy.store.base import (
    CEILING,
    Admission,
    Admitted,
    ApplyResult,
    CheckState,
    Counter,
    Sample,
    SpendRecord,
    StoreHealth,
    open_store,
)
from otel_puppy.store.memory import MemoryStore
from otel_puppy.store.sqlite import SCHEMA_VERSION, SQLiteStore
from otel_puppy.testing import FakeClock, make_call
from otel_puppy.windows import Window
from tests.store.test_conformance import DAY, H1, T0, admit, check, read, rec, reserved

APPLIED, DUPLICATE, NESTED = ApplyResult.APPLIED, ApplyResult.DUPLICATE, ApplyResult.NESTED


def store_at(path: Path) -> str:
    """The start of every error message about the store at `path`, as a pattern."""
    return re.escape(f"sqlite store {path}")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def checkpointed_by_hand(path: Path) -> tuple[SQLiteStore, sqlite_store._Checkpointer]:
    """A store on `path` with its checkpointing thread stopped, and that checkpointer: the test plays
    its thread (`rewinding`, `rewinds`) or checkpoints by hand."""
    store = SQLiteStore(path)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.stop()
    return store, checkpointer


# --- opening ----------------------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == str(tmp_path / "a.db")
    absolute.close()
    assert (tmp_path / "a.db").exists()
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///relative.db")
    relative.close()
    assert (tmp_path / "relative.db").exists()
    in_memory = open_store("sqlite://")
    assert isinstance(in_memory, SQLiteStore)
    assert in_memory.path == ":memory:"
    assert in_memory.apply([rec("a")], T0) == [APPLIED]
    assert read(in_memory) == Counter(100, 10, 1)
    in_memory.close()
    assert isinstance(open_store("memory://"), MemoryStore)
    with pytest.raises(StoreError, match=re.escape("sqlite:///relative/path.db")):
        open_store("sqlite:state.db")
    with pytest.raises(
        StoreError,
        match=re.escape(
            "store URL scheme 'etcd' is not supported: use memory://, sqlite:///path, "
            "redis://host:port/db or redis+cluster://host:port"
        ),
    ):
        open_store("etcd://user:secret@localhost")


def test_the_file_is_in_wal_mode_with_normal_sync(path: Path) -> None:
    store = SQLiteStore(path)
    db = store._db
    assert db is not None
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert db.execute("PRAGMA foreign_keys").fetchone() == (0,)
    assert db.execute("PRAGMA page_size").fetchone() == (2048,)
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone() == (81_920,)  # 160 MiB, the checkpointer's fallback
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as other:
        assert other.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_file_made_with_another_page_size_keeps_it_and_the_same_log_bounds(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:  # as SQLite's default made it
        db.execute("PRAGMA page_size = 4096")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE other (x)")
    store = SQLiteStore(path)
    opened = store._db
    assert opened is not None
    assert opened.execute("PRAGMA page_size").fetchone() == (4096,)
    assert opened.execute("PRAGMA wal_autocheckpoint").fetchone() == (40_960,)  # 160 MiB in its pages
    assert store._checkpointer is not None
    assert store._checkpointer._page_size == 4096  # it rewinds at 64 MiB of its pages
    assert store.apply([rec("a")], T0) == [APPLIED]
    store.close()


def test_a_file_from_a_newer_version_is_refused(path: Path) -> None:
    SQLiteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as other, other:
        other.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(
        StoreError, match=store_at(path) + rf": schema version {SCHEMA_VERSION + 1} was written by a newer"
    ):
        SQLiteStore(path)


def test_a_file_that_is_not_a_database_is_refused(path: Path) -> None:
    path.write_bytes(b"not a database, just some bytes " * 100)
    with pytest.raises(StoreError, match=store_at(path) + r": cannot open: file is not a database"):
        SQLiteStore(path)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "state.db"
    with pytest.raises(StoreError, match=store_at(missing) + r": cannot open: unable to open database file"):
        SQLiteStore(missing)


def test_a_closed_store_says_so(path: Path) -> None:
    store = SQLiteStore(path)
    store.close()
    store.close()
    with pytest.raises(StoreError, match=store_at(path) + r" is closed"):
        store.apply([rec("a")], T0)


# --- restart ----------------------------------------------------------------------------------


def test_a_restart_restores_everything(path: Path) -> None:
    store = SQLiteStore(path)
    assert store.apply([rec("a"), rec("c", parent="p", nanos=50)], T0) == [APPLIED, APPLIED]
    admit(store, "d1", nanos=500, settle_key="k")
    admit(store, "d2", nanos=300, settle_key="k")
    admit(store, "d3", check(limit_nanos=None), nanos=70, expires_at=T0 + 60)
    assert store.mark("m", T0 + 3600) is True
    store.close()

    store = SQLiteStore(path)
    assert store.totals([("s", DAY), ("s", H1)], T0) == [Counter(150, 20, 2), Counter(150, 20, 2)]
    assert store.apply([rec("a"), rec("p")], T0) == [DUPLICATE, NESTED]  # dedupe and covered keys
    assert reserved(store) == (870, 0)
    assert store.mark("m", T0 + 3600) is False
    store.apply([rec("b", settle_key="k")], T0)  # settles the oldest: admission order survives
    assert reserved(store) == (370, 0)
    assert reserved(store, now=T0 + 60) == (300, 0)  # and expiry times
    assert (store.release("d1"), store.release("d2")) == (False, True)
    store.close()


# --- failures ---------------------------------------------------------------------------------


def test_a_locked_database_fails_the_whole_batch_and_a_retry_applies_it_once(path: Path) -> None:
    store = SQLiteStore(path, busy_timeout_s=0.05)
    batch = [rec("a"), rec("b", nanos=5), rec("a")]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreError, match=store_at(path) + r": apply failed, nothing was written: database is"):
            store.apply(batch, T0)
        with pytest.raises(StoreError, match=r"admit failed.*\(SQLITE_BUSY\)"):
            admit(store, "d1", nanos=1)
        assert read(store) == Counter(0, 0, 0)  # readers are not blocked by a writer in WAL mode
        other.execute("ROLLBACK")
    assert store.apply(batch, T0) == [APPLIED, APPLIED, DUPLICATE]
    assert store.apply(batch, T0) == [DUPLICATE, DUPLICATE, DUPLICATE]
    assert read(store) == Counter(105, 20, 2)
    store.close()


def test_a_full_disk_half_way_through_a_batch_applies_none_of_it(path: Path) -> None:
    store = SQLiteStore(path)
    assert store.apply([rec("first")], T0) == [APPLIED]
    admit(store, "d1", nanos=500, settle_key="k")
    db = store._db
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: no page may be added
    batch = [rec(f"span-{i}", scope=f"scope-{i % 50}", settle_key="k") for i in range(2000)]
    with pytest.raises(StoreError, match=store_at(path) + r": apply failed.*full"):
        store.apply(batch, T0)
    assert read(store) == Counter(100, 10, 1)
    assert reserved(store) == (500, 0)  # the first record's settlement was rolled back too
    db.execute("PRAGMA max_page_count = 1000000000")
    assert store.apply(batch, T0) == [APPLIED] * 2000
    assert store.apply(batch, T0) == [DUPLICATE] * 2000
    assert read(store, scope="scope-7") == Counter(40 * 100, 40 * 10, 40)
    assert reserved(store) == (0, 0)
    store.close()


_WRITER = """
import sys
from zoneinfo import ZoneInfo
from otel_puppy.store.base import Increment, SpendRecord
from otel_puppy.store.sqlite import SQLiteStore
from otel_puppy.windows import CalendarWindow

day = CalendarWindow("day", ZoneInfo("UTC"))
store = SQLiteStore(sys.argv[1])
batch = 0
while True:
    batch += 1
    increments = (Increment("s", day, {t0}, batch, 1),)
    records = [SpendRecord(f"{{batch}}-{{i}}", None, increments, {t0} + 86400) for i in range({size})]
    print("applying", batch, flush=True)
    store.apply(records, {t0})
    print(batch, flush=True)
"""


def test_kill_9_loses_no_committed_batch_and_leaves_no_half_batch(path: Path) -> None:
    size, target = 500, 25
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(t0=T0, size=size), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    with writer.stdout:
        printed, applying, began, spent = 0, 0, 0.0, 0.0
        while applying <= target:
            line = writer.stdout.readline()
            assert line, f"the writer died: exit code {writer.poll()}"
            if line.startswith("applying"):
                applying, began = int(line.split()[1]), time.perf_counter()
            else:
                printed, spent = int(line), spent + time.perf_counter() - began
        # Batch `target + 1` is being applied: kill it at a random moment of a typical apply (a
        # random point in the transaction, not a wait for time to pass).
        time.sleep(random.uniform(0, spent / printed))
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=10) == -signal.SIGKILL
        rest = writer.stdout.read().splitlines()
        printed = max([printed, *(int(line) for line in rest if not line.startswith("applying"))])

    def batch(n: int) -> list[SpendRecord]:  # the writer's spans, without their increments
        return [rec(f"{n}-{i}", windows=()) for i in range(size)]

    def nanos(batches: int) -> int:  # every span of batch n adds n nano-USD
        return size * batches * (batches + 1) // 2

    store = SQLiteStore(path)
    counter = read(store)
    in_flight = store.apply(batch(printed + 1), T0)
    assert set(in_flight) in ({APPLIED}, {DUPLICATE})  # the batch in flight is all there or not at all
    committed = printed + (in_flight[0] is DUPLICATE)
    assert counter == Counter(nanos(committed), size * committed, size * committed)
    assert store.apply(batch(printed), T0) == [DUPLICATE] * size
    assert store.apply(batch(printed + 2), T0) == [APPLIED] * size
    store.close()


# --- concurrency ------------------------------------------------------------------------------


def test_two_connections_racing_never_reserve_more_than_the_budget(path: Path) -> None:
    # Two stores on one file are two processes as far as SQLite can tell.
    stores = [SQLiteStore(path), SQLiteStore(path)]
    admitted: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def agent(worker: int) -> None:
        store = stores[worker % 2]
        start.wait()
        for attempt in range(40):
            decision_id = f"{worker}-{attempt}"
            if admit(store, decision_id, check(limit_nanos=1000), nanos=10, expires_at=T0 + 3600).reserved:
                with lock:
                    admitted.append(decision_id)

    threads = [threading.Thread(target=agent, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 100  # exactly 1000 / 10, out of 320 attempts
    assert reserved(stores[0]) == reserved(stores[1]) == (1000, 0)
    for store in stores:
        store.close()


_RACER = """
import sys, threading
from otel_puppy.store.base import Admission, BudgetCheck
from otel_puppy.store.sqlite import SQLiteStore
from datetime import UTC
from otel_puppy.windows import CalendarWindow
path, name = sys.argv[1], sys.argv[2]
store = SQLiteStore(path)
day = CalendarWindow("day", UTC)
checks = (BudgetCheck("s", day, 1000, None, True), BudgetCheck("t", day, None, None, True))
admitted = []
def agent(worker):
    for attempt in range(40):
        admission = Admission(f"{name}-{worker}-{attempt}", checks, 10, 0, 1e10, None, reserve=True)
        result = None
        if worker % 2:  # as the service decides: at once when no one is writing, else waiting in a thread
            with store.uncontended() as at_once:
                if at_once:
                    result = store.admit(admission, 1.7e9)
        if result is None:
            result = store.admit(admission, 1.7e9)
        if result.reserved:
            admitted.append(admission.decision_id)
threads = [threading.Thread(target=agent, args=(worker,)) for worker in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
store.close()
print(len(admitted))
"""


def test_processes_deciding_at_once_or_waiting_never_reserve_more_than_the_budget(path: Path) -> None:
    SQLiteStore(path).close()
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(path), f"p{n}"], stdout=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    counts = [int(racer.communicate(timeout=120)[0]) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0]
    assert sum(counts) == 100  # exactly 1000 / 10, out of 480 attempts from 3 processes
    store = SQLiteStore(path)
    assert reserved(store, now=1.7e9) == (1000, 0)
    assert reserved(store, "t", now=1.7e9) == (1000, 0)
    store.close()


def test_uncontended_continues_its_transaction_in_the_first_store_call(path: Path) -> None:
    store, other = SQLiteStore(path), SQLiteStore(path)
    with store.uncontended() as at_once:
        assert at_once is True
        assert admit(store, "d1", nanos=10).reserved
        assert admit(store, "d2", nanos=20).reserved  # the next call is a transaction of its own
    assert reserved(other) == (30, 0)
    with store.uncontended() as at_once:  # no store call: nothing written, nothing left open
        assert at_once is True
    assert store._db is not None
    assert not store._db.in_transaction
    with pytest.raises(RuntimeError), store.uncontended():
        raise RuntimeError("the block failed")
    assert store._db is not None
    assert not store._db.in_transaction
    assert admit(other, "d3", nanos=5).reserved  # neither lock was kept
    assert reserved(store) == (35, 0)
    store.close()
    other.close()


def test_uncontended_never_waits_for_another_connection(path: Path) -> None:
    store = SQLiteStore(path, busy_timeout_s=5)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")  # another process writing
        began = time.monotonic()
        with store.uncontended() as at_once:
            assert at_once is False
        assert time.monotonic() - began < 1
        db.execute("ROLLBACK")
    assert store._db is not None
    assert not store._db.in_transaction
    with store.uncontended() as at_once:  # the write lock is free again: begun at once
        assert at_once is True
    # After it, a transaction that may wait waits for another writer, up to the store's busy timeout
    # (with the block's timeout of 0 it would fail at once: "database is locked").
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as db:
        db.execute("BEGIN IMMEDIATE")
        releasing = threading.Timer(0.3, db.execute, ("ROLLBACK",))
        releasing.start()
        began = time.monotonic()
        with store._transaction("probe"):
            waited = time.monotonic() - began
        releasing.join()
    assert 0.25 <= waited < 5
    store.close()


def test_uncontended_waits_briefly_for_another_thread_then_not_for_a_while(path: Path) -> None:
    store = SQLiteStore(path)
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:  # a long transaction of another thread (a large batch of spans)
        with store._transaction("apply"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    holding.wait(10)
    began = time.monotonic()
    with store.uncontended() as at_once:
        assert at_once is False
    waited = time.monotonic() - began
    assert sqlite_store._UNCONTENDED_WAIT_S <= waited < 1
    began = time.monotonic()
    with store.uncontended() as at_once:  # within the pause: not waiting at all
        assert at_once is False
    assert time.monotonic() - began < sqlite_store._UNCONTENDED_WAIT_S
    release.set()
    thread.join()
    store._not_waiting_until = 0.0
    with store.uncontended() as at_once:
        assert at_once is True
    store.close()


def test_uncontended_waits_for_a_rewind_that_said_so_only_after_taking_the_lock(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointing thread takes the store's lock, then needs the interpreter to set `rewinding`:
    a decision finding the lock taken before that waits for the rewind all the same (it used to give
    up after `_UNCONTENDED_WAIT_S`, and the decisions of the next `_UNCONTENDED_PAUSE_S` went to threads)."""
    store, checkpointer = checkpointed_by_hand(path)
    monkeypatch.setattr(sqlite_store, "_UNCONTENDED_WAIT_S", 0.2)
    monkeypatch.setattr(sqlite_store, "_REWIND_WAIT_S", 5.0)
    holding = threading.Event()

    def rewind() -> None:
        with store._lock:
            holding.set()
            time.sleep(0.05)  # waiting for the interpreter, as it were
            checkpointer.rewinding = True
            time.sleep(0.35)  # the held pass
            checkpointer.rewinding = False
            checkpointer.rewinds += 1

    thread = threading.Thread(target=rewind)
    thread.start()
    holding.wait(10)
    began = time.monotonic()
    with store.uncontended() as at_once:
        waited = time.monotonic() - began
        assert at_once is True
    thread.join()
    assert 0.3 <= waited < 5
    assert store._not_waiting_until == 0.0  # no pause: the next decisions wait as usual
    store.close()


def test_uncontended_takes_the_lock_of_a_rewind_that_ended_as_its_wait_did(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewind that held the lock, unannounced, for exactly the short wait: gone when the wait gives
    up, and counted (`rewinds`), so the decision takes the lock now instead of pausing."""
    store, checkpointer = checkpointed_by_hand(path)
    ended = threading.Event()

    class Deadline:  # the short wait: it fails, and the rewind ends, just then
        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            if not blocking:  # taken by the rewind until it ended
                return ended.is_set() and store_lock.acquire(blocking=False)
            if timeout == sqlite_store._UNCONTENDED_WAIT_S:
                checkpointer.rewinds += 1  # the rewind's last act before letting go
                ended.set()
                return False
            return store_lock.acquire(blocking, timeout)

        def release(self) -> None:
            store_lock.release()

    store_lock = store._lock
    monkeypatch.setattr(store, "_lock", Deadline())
    with store.uncontended() as at_once:
        assert at_once is True
    assert ended.is_set()
    assert store._not_waiting_until == 0.0
    monkeypatch.undo()
    store.close()


def test_uncontended_never_blocks_the_event_loop_longer_than_the_rewind_wait(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`uncontended` runs on the event loop: `_REWIND_WAIT_S` is the longest it waits, the short wait
    included, for a rewind that announces itself (`rewinding`) only during the short wait (the waits
    scaled up here so the timing is unambiguous on a loaded machine)."""
    store, checkpointer = checkpointed_by_hand(path)
    monkeypatch.setattr(sqlite_store, "_UNCONTENDED_WAIT_S", 0.2)
    monkeypatch.setattr(sqlite_store, "_REWIND_WAIT_S", 0.3)
    holding, done = threading.Event(), threading.Event()

    def rewind() -> None:  # takes the lock, then says so; holds it longer than any wait
        with store._lock:
            holding.set()
            time.sleep(0.05)
            checkpointer.rewinding = True
            done.wait(5)
            checkpointer.rewinding = False
            checkpointer.rewinds += 1

    thread = threading.Thread(target=rewind)
    thread.start()
    holding.wait(10)
    try:
        began = time.monotonic()
        with store.uncontended() as at_once:
            waited = time.monotonic() - began
            assert at_once is False
    finally:
        done.set()
        thread.join()
        store.close()
    assert waited < sqlite_store._REWIND_WAIT_S + 0.05, f"the event loop waited {waited:.3f}s"


def test_uncontended_does_not_wait_the_rewind_wait_behind_a_long_transaction_after_a_rewind(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewind that ended as the short wait did, its lock taken by a long transaction of another thread
    (a large batch of spans queued on it): the decision takes the lock only if it is free at once, and
    otherwise gives up and pauses waiting (`_UNCONTENDED_PAUSE_S`) as behind any long transaction,
    never holding the event loop for the rewind's wait."""
    store, checkpointer = checkpointed_by_hand(path)
    store_lock = store._lock
    taken, release = threading.Event(), threading.Event()

    def batch() -> None:  # the worker thread that gets the lock as the rewind lets it go
        with store_lock:  # as its `_transaction("apply")` holds it
            taken.set()
            release.wait(5)

    worker = threading.Thread(target=batch)

    class Handover:  # the short wait fails as the rewind ends, and the lock goes to the worker
        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            if not blocking:
                return False
            if timeout == sqlite_store._UNCONTENDED_WAIT_S:
                checkpointer.rewinds += 1  # the rewind's last act
                worker.start()
                taken.wait(5)
                return False
            return store_lock.acquire(blocking, timeout)

        def release(self) -> None:
            store_lock.release()

    monkeypatch.setattr(store, "_lock", Handover())
    try:
        began = time.monotonic()
        with store.uncontended() as at_once:
            waited = time.monotonic() - began
            assert at_once is False
        paused = store._not_waiting_until > 0.0
    finally:
        release.set()
        if worker.is_alive():
            worker.join()
        monkeypatch.undo()
        store.close()
    assert waited < sqlite_store._REWIND_WAIT_S / 2, f"the event loop waited {waited:.3f}s behind a batch"
    assert paused


def test_a_long_log_is_caught_up_with_the_store_held_so_the_next_commit_rewinds_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, checkpointer = checkpointed_by_hand(path)
    monkeypatch.setattr(sqlite_store, "_REWIND_BYTES", 1)
    seen_rewinding: list[bool] = []
    lock_held: list[bool] = []
    passive = sqlite_store._passive

    def watched(db: sqlite3.Connection) -> tuple[int, int, int]:
        seen_rewinding.append(checkpointer.rewinding)
        if checkpointer.rewinding:  # the store's lock is the checkpointing thread's: no one else's
            other = threading.Thread(target=lambda: lock_held.append(store._lock.acquire(blocking=False)))
            other.start()
            other.join()
        return passive(db)

    monkeypatch.setattr(sqlite_store, "_passive", watched)
    for n in range(20):
        store.apply([rec(f"span-{n}")], T0)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        frames = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        checkpointer._checkpoint(db)
        assert seen_rewinding == [False, False, True]
        assert lock_held == [False]
        assert checkpointer.rewinding is False
        store.apply([rec("after")], T0)  # the log is caught up: this commit rewinds it
        assert db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] < frames
    store.close()


# --- through the engine -----------------------------------------------------------------------


def test_an_engine_on_sqlite_keeps_spend_and_reservations_across_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    policies = parse_policy_text("budgets:\n  - {name: b, limit_usd: 1, window: day}\n", Path("policies/test.yaml"))
    clock = FakeClock()

    def engine() -> PolicyEngine:
        settings = PuppySettings.load(store=url, watch_policies_s=None)
        return PolicyEngine(settings, policies=policies, clock=clock, registry=CollectorRegistry(auto_describe=True))

    def call(span_id: int, agent: str, decision_id: str | None = None) -> LLMCall:
        made = make_call(end_s=clock.now(), agent=agent, decision_id=decision_id, duration_s=1.0)
        return dataclasses.replace(made, trace_id=1, span_id=span_id)  # the same ids: the same span

    first = engine()
    assert isinstance(first.store, SQLiteStore)
    decision = first.decide(provider="openai", model="gpt-4.1", agent="support", estimated_cost_usd="0.5")
    assert decision.allowed
    assert first.observe(call(10, agent="other")).result is APPLIED  # another agent: settles nothing
    first.close()

    clock.advance(30)
    second = engine()
    state = second.snapshot().budget("b")
    assert (state.spent_usd, state.reserved_usd) == (Decimal("0.002800000"), Decimal("0.500000000"))
    assert second.observe(call(10, agent="other")).result is DUPLICATE
    assert second.observe(call(11, agent="support", decision_id=decision.decision_id)).result is APPLIED
    state = second.snapshot().budget("b")
    assert (state.spent_usd, state.reserved_usd) == (Decimal("0.005600000"), Decimal("0E-9"))
    assert second.snapshot().spend("day") == Decimal("0.005600000")
    second.close()


def test_store_errors_name_the_file_and_never_leak_sqlite3_exceptions(path: Path) -> None:
    store = SQLiteStore(path, busy_timeout_s=0.01)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        for operation in (
            lambda: store.release("d"),
            lambda: store.mark("m", T0),
            lambda: store.unmark("m"),
            lambda: store.expire(T0),
        ):
            with pytest.raises(StoreError, match=re.escape(str(path))) as raised:
                operation()
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
    store.close()
    assert not os.path.exists(f"{path}-wal")  # the last connection checkpoints and removes its log


# --- reserved totals and checkpoints ------------------------------------------------------------


def test_reserved_totals_follow_every_change_and_every_other_writer(path: Path) -> None:
    # The totals are kept in memory (summed from the file once): what this store changes, what
    # another connection on the file commits, and what a failed transaction did not do.
    store, other = SQLiteStore(path), SQLiteStore(path)
    admit(store, "d1", check("s"), check("t"), nanos=100, tokens=1)
    admit(store, "d2", check("s"), nanos=50)
    admit(store, "d3", check("t"), nanos=7, expires_at=T0 + 10)
    assert (reserved(store, "s"), reserved(store, "t")) == ((150, 1), (107, 1))
    assert (reserved(other, "s"), reserved(other, "t")) == ((150, 1), (107, 1))
    assert other.release("d1") is True
    assert store.apply([rec("span", decision_id="d2")], T0) == [APPLIED]  # settles d2
    assert (reserved(store, "s"), reserved(store, "t")) == ((0, 0), (7, 0))
    assert other.expire(T0 + 10) >= 1  # d3
    assert (reserved(store, "s"), reserved(store, "t")) == ((0, 0), (0, 0))
    admit(other, "d4", check("s"), nanos=5)
    slow = SQLiteStore(path, busy_timeout_s=0.01)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")  # the file's write lock, held past the busy timeout
        with pytest.raises(StoreError):
            admit(slow, "d5", check("s"), nanos=1)
        db.execute("ROLLBACK")
    assert reserved(slow, "s") == (5, 0)
    for each in (store, other, slow):
        each.close()
    reopened = SQLiteStore(path)
    assert reserved(reopened, "s") == (5, 0)
    reopened.close()


def test_counters_decisions_keep_follow_every_writer(path: Path) -> None:
    # A decision keeps the counters it read while the file is unchanged (`_Spent`): what this store
    # applies, what another connection commits, a new day and a rolling window moving on all show.
    store, other = SQLiteStore(path), SQLiteStore(path)

    def spent(window: Window = DAY, now: float = T0) -> int:
        return admit(store, "", check("s", window), reserve=False, now=now).states[0].spent_nanos

    statements: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(statements.append)
    assert (spent(), spent(H1)) == (0, 0)
    assert any("FROM calendar" in s for s in statements)
    statements.clear()
    assert (spent(), spent(H1)) == (0, 0)
    assert not any("FROM calendar" in s or "FROM rolling" in s for s in statements)  # kept
    assert store.apply([rec("a")], T0) == [APPLIED]
    assert (spent(), spent(H1)) == (100, 100)  # this store's own write
    assert other.apply([rec("b", nanos=7)], T0) == [APPLIED]
    assert (spent(), spent(H1)) == (107, 107)  # another connection's commit
    for n in range(3):  # another connection committing between decisions: read anew every time
        assert other.apply([rec(f"c{n}", nanos=1)], T0) == [APPLIED]
        assert (spent(), spent(H1)) == (108 + n, 108 + n)
    assert other.release("none") is False  # a write transaction that changes nothing
    assert (spent(now=T0 + 86400), spent(H1, now=T0 + 7200)) == (0, 0)  # a new day; the hour moved on
    assert (spent(), spent(H1)) == (110, 110)
    store.close()
    other.close()


def test_counters_decisions_keep_are_bounded(path: Path) -> None:
    store = SQLiteStore(path)
    limit = sqlite_store._SPENT_KEPT
    states = store.read_budgets([check(f"scope-{n}") for n in range(limit + 10)], T0)
    assert len(states) == limit + 10
    assert all(state.spent_nanos == 0 for state in states)
    assert len(store._spent.counts) <= limit
    assert store.apply([rec("a", scope=f"scope-{limit + 9}")], T0) == [APPLIED]
    states = store.read_budgets([check(f"scope-{n}") for n in range(limit + 10)], T0)  # from memory, or not
    assert [state.spent_nanos for state in states] == [0] * (limit + 9) + [100]
    assert len(store._spent.counts) <= limit
    store.close()


def test_checkpoints_run_off_the_callers_thread_and_stop_with_the_store(path: Path) -> None:
    def checkpointers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "otel-puppy-sqlite-checkpoint"]

    before = len(checkpointers())
    store = SQLiteStore(path)
    assert len(checkpointers()) == before + 1
    memory = SQLiteStore(":memory:")  # no log, no checkpointer
    assert len(checkpointers()) == before + 1
    for n in range(20):
        store.apply([rec(f"span-{n}")], T0)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert store._checkpointer is not None
        store._checkpointer._checkpoint(db)  # what the thread does ten times a second
        busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, frames) == (0, copied)  # everything is in the database file
        store.apply([rec("after")], T0)  # and the next commit rewinds the log
        assert db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] < frames
    store.close()
    memory.close()
    assert len(checkpointers()) == before
    reopened = SQLiteStore(path)
    assert read(reopened) == Counter(2100, 210, 21)
    reopened.close()


# --- poisoned values and damaged files -----------------------------------------------------------


@pytest.mark.parametrize(
    "poison",
    [1.5, "garbage", -5, 2**62, None, b"\x00"],
    ids=["real", "text", "negative", "past the ceiling", "null", "blob"],
)
def test_an_unreadable_count_reads_as_exhausted_and_is_reported(path: Path, poison: object) -> None:
    store = SQLiteStore(path)
    store.apply([rec("a", windows=(DAY, H1))], T0)
    admit(store, "held", check("r", limit_nanos=None), nanos=5, tokens=1)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        # another tool (or an older version) wrote values no count can be; NOT NULL aside
        db.execute("PRAGMA ignore_check_constraints = ON")
        db.execute("CREATE TABLE t AS SELECT 1")  # bump data_version so reserved totals are summed again
        value = 0 if poison is None else poison
        db.execute("UPDATE calendar SET nanos = ?", (value,))
        db.execute("UPDATE rolling SET tokens = ?", (value,))
        # a reservation's items are JSON: a count that is not one (a blob cannot be in JSON: an object)
        item = '{"blob": "00"}' if isinstance(value, bytes) else json.dumps(value)
        db.execute("UPDATE reservations SET items = json_replace(items, '$[0][1]', json(?))", (item,))
    assert store.health() == StoreHealth()
    tokens = check("s", window=H1, limit_nanos=None, limit_tokens=1000)
    states = admit(store, "d1", check("s"), tokens, check("r"), nanos=1, tokens=1)
    if poison is None:  # 0 is a count: nothing is wrong
        assert states.reserved is True
        return
    assert states == Admitted(
        False,
        (
            CheckState(CEILING, 10, 0, 0, False),
            CheckState(100, CEILING, 0, 0, False),
            CheckState(0, 0, CEILING, CEILING, False),  # an unreadable reservation: its scope is exhausted
        ),
    )
    health = store.health()
    assert (health.saturated, health.unreadable) == (0, 3)
    assert health.problem == f"sqlite store {path}: stored values could not be read within the last minute"
    # writing on top of it never fails and never brings it back under a limit
    assert store.apply([rec("b", nanos=1, windows=(DAY, H1))], T0) == [APPLIED]
    assert store.totals([("s", DAY), ("s", H1)], T0) == [Counter(CEILING, 20, 2), Counter(101, CEILING, 2)]
    assert store.release("held") is True
    assert reserved(store, "r") == (0, 0)
    store.close()


def test_a_count_that_overflowed_before_is_read_as_exhausted(path: Path) -> None:
    # What an older version could leave behind: SQLite's `+` past 2**63 makes a REAL, SUM raises.
    store = SQLiteStore(path)
    store.apply([rec("a")], T0)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE calendar SET nanos = ?", (2**63 - 1,))
        db.execute("UPDATE calendar SET nanos = nanos + 1")
        assert db.execute("SELECT typeof(nanos) FROM calendar").fetchone() == ("real",)
        db.execute("UPDATE rolling SET nanos = ?", (2**63 - 1,))
        db.execute("INSERT INTO rolling SELECT scope, label, idx - 1, nanos, tokens, requests, expires_at FROM rolling")
    assert admit(store, "d", check(limit_nanos=2**63 - 1), check(window=H1, limit_nanos=2**63 - 1)).states == (
        CheckState(CEILING, 10, 0, 0, False),
        CheckState(CEILING, 20, 0, 0, False),
    )
    store.close()


def test_many_huge_reservations_never_overflow_a_sum(path: Path) -> None:
    # 2**11 reservations of 2**53 - 1 each: a plain SUM() of them would pass 2**63.
    store = SQLiteStore(path)
    warn = check("w", limit_nanos=1, blocking=False)
    for i in range(2**11):
        admit(store, f"d{i}", warn, nanos=2**63 - 1)
    admit(store, "small", warn, nanos=3)
    store.close()
    store = SQLiteStore(path)  # the totals are summed from the file again
    assert reserved(store, "w") == (CEILING, 0)
    for i in range(2**11):
        assert store.release(f"d{i}") is True
    assert reserved(store, "w") == (3, 0)
    admit(store, "expiring", warn, nanos=2**63 - 1, expires_at=T0 + 10)
    assert store.expire(T0 + 10) == 1
    assert reserved(store, "w") == (3, 0)
    store.close()


_NOT_UTF8: Final = object()
"""Stands for a text value whose bytes are not UTF-8 (only SQL can write one)."""
_V5_ITEMS = """CREATE TABLE reservation_items (
    seq INTEGER NOT NULL, item INTEGER NOT NULL, scope TEXT NOT NULL, nanos INTEGER NOT NULL, tokens INTEGER NOT NULL,
    PRIMARY KEY (seq, item)
) WITHOUT ROWID"""
"""Version 5's table of reservation items, as it created it."""


def _as_version_5(path: Path, *damage: str) -> None:
    """The store's file at `path` as version 5 would have left it (its reservations' items as rows of
    their own), after the `damage` statements run on those rows."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(_V5_ITEMS)
        db.executemany(
            "INSERT INTO reservation_items VALUES (?, ?, ?, ?, ?)",
            [
                (seq, item, scope, nanos, tokens)
                for seq, items in db.execute("SELECT seq, items FROM reservations").fetchall()
                for item, (scope, nanos, tokens) in enumerate(json.loads(items))
            ],
        )
        for statement in damage:
            db.execute(statement)
        db.execute("ALTER TABLE reservations DROP COLUMN items")
        db.execute("UPDATE schema_version SET version = 5")


def test_a_version_5_file_has_its_reservation_items_moved_into_their_reservations(path: Path) -> None:
    store = SQLiteStore(path)
    admit(store, "d1", check("a"), check("b"), nanos=5, tokens=1)
    admit(store, "d2", check("a"), nanos=7, tokens=2)
    admit(store, "d3", check("c"), nanos=3)
    odd = "user=a\x00b\u00e9"  # a request's name may hold any character
    admit(store, "d4", check(odd), nanos=4, tokens=4)
    store.close()
    _as_version_5(path, "UPDATE reservation_items SET nanos = 'garbage' WHERE scope = 'c'")  # unreadable in 5 too
    store = SQLiteStore(path)
    opened = store._db
    assert opened is not None
    assert opened.execute("SELECT name FROM sqlite_master WHERE name LIKE 'reservation_items%'").fetchall() == []
    assert opened.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert opened.execute("SELECT decision_id, items FROM reservations ORDER BY seq").fetchall() == [
        ("d1", '[["a",5,1],["b",5,1]]'),
        ("d2", '[["a",7,2]]'),
        ("d3", '[["c",null,0]]'),
        ("d4", '[["user=a\\u0000b\\u00e9",4,4]]'),
    ]
    assert (reserved(store, "a"), reserved(store, "b"), reserved(store, odd)) == ((12, 3), (5, 1), (4, 4))
    assert reserved(store, "c") == (CEILING, CEILING)  # unreadable, as version 5 read it
    assert store.release("d1") is True
    assert store.release("d3") is True
    assert (reserved(store, "a"), reserved(store, "b"), reserved(store, "c")) == ((7, 2), (0, 0), (0, 0))
    store.close()
    store = SQLiteStore(path)  # summed again from the file
    assert (reserved(store, "a"), reserved(store, odd)) == ((7, 2), (4, 4))
    assert store.release("d4") is True
    assert reserved(store, odd) == (0, 0)
    store.close()


def test_a_version_5_item_of_no_readable_scope_exhausts_every_budget_and_orphans_are_reported(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(path)
    admit(store, "d1", check("a"), nanos=5, tokens=1, expires_at=T0 + 10)
    admit(store, "d2", check("b"), nanos=7, expires_at=T0 + 600)
    store.close()
    _as_version_5(
        path,
        "UPDATE reservation_items SET scope = CAST(x'ff61' AS TEXT) WHERE scope = 'a'",  # text, not UTF-8
        "INSERT INTO reservation_items VALUES (99, 0, 'zz', 50, 5)",  # of no reservation
    )
    with caplog.at_level(logging.WARNING, logger="otel_puppy"):
        store = SQLiteStore(path)
    assert [record.getMessage() for record in caplog.records] == [
        f"sqlite store {path}: 1 reserved items of no reservation (a damaged or hand-edited file) were dropped "
        "moving reservations to schema version 6"
    ]
    assert (reserved(store, "b"), reserved(store, "zz")) == ((CEILING, CEILING), (CEILING, CEILING))
    assert store.expire(T0 + 10) == 1
    assert (reserved(store, "b", T0 + 10), reserved(store, "zz", T0 + 10)) == ((7, 0), (0, 0))
    store.close()


def test_a_reservation_amount_is_stored_as_the_whole_number_another_connection_reads(path: Path) -> None:
    store, other = SQLiteStore(path), SQLiteStore(path)
    store.admit(Admission("d1", (check("a"),), 5.0, True, T0 + 300, None), T0)  # type: ignore[arg-type]
    assert reserved(store, "a") == reserved(other, "a") == (5, 1)
    with pytest.raises(TypeError, match=re.escape("an amount must be a whole number, not 5.5")):
        store.admit(Admission("d2", (check("a"),), 5.5, 0, T0 + 300, None), T0)  # type: ignore[arg-type]
    assert store.release("d1") is True
    assert reserved(store, "a") == reserved(other, "a") == (0, 0)
    store.close()
    other.close()


@pytest.mark.parametrize(
    "items",
    [
        b"[]",
        "not json",
        '{"a": 1}',
        "[5]",
        "[[7, 1, 1]]",
        '["a", 1, 1]',
        '[["a", 1]]',
        "null",
        "[" * 1_100 + "]" * 1_100,
        _NOT_UTF8,
    ],
    ids=[
        "blob",
        "not JSON",
        "an object",
        "an item not an array",
        "a scope not text",
        "flat",
        "short",
        "null",
        "nested past the parser",
        "text not UTF-8",
    ],
)
def test_a_reservation_whose_items_name_no_scope_exhausts_every_budget_until_it_is_gone(
    path: Path, items: object
) -> None:
    store = SQLiteStore(path)
    admit(store, "good", check("b"), nanos=3, expires_at=T0 + 600)

    def damage(decision_id: str) -> None:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            if items is _NOT_UTF8:
                db.execute(
                    "UPDATE reservations SET items = CAST(x'ff5b5d' AS TEXT) WHERE decision_id = ?", (decision_id,)
                )
            else:
                db.execute("UPDATE reservations SET items = ? WHERE decision_id = ?", (items, decision_id))

    admit(store, "bad", check("a"), nanos=5, tokens=1)
    damage("bad")
    exhausted = CheckState(0, 0, CEILING, CEILING, False)
    assert admit(store, "d1", check("a"), check("z"), nanos=1) == Admitted(False, (exhausted, exhausted))
    assert store.health().unreadable == 2
    # a span settles it: its items cannot be taken back one by one, so the file is summed again
    assert store.apply([rec("settling", decision_id="bad", scope="other")], T0) == [APPLIED]
    assert (reserved(store, "a"), reserved(store, "b"), reserved(store, "z")) == ((0, 0), (3, 0), (0, 0))
    admit(store, "expiring", check("a"), nanos=5, expires_at=T0 + 10)
    damage("expiring")
    assert reserved(store, "z") == (CEILING, CEILING)
    assert store.expire(T0 + 10) == 1
    assert (reserved(store, "b", T0 + 10), reserved(store, "z", T0 + 10)) == ((3, 0), (0, 0))
    store.close()


def test_a_reservation_on_thousands_of_budgets_is_held_and_taken_back_whole(path: Path) -> None:
    # A decision matching every budget of a large policy set, with long scope names: one row of
    # items (about 500 KB), summed again from the file by a store opening it.
    checks = [check(f"{i:04d}" + "s" * 250, limit_nanos=None) for i in range(2_000)]
    store = SQLiteStore(path)
    assert admit(store, "wide", *checks, nanos=CEILING, tokens=1).reserved is True
    store.close()
    store = SQLiteStore(path)
    assert {reserved(store, c.scope) for c in checks[::97]} == {(CEILING, 1)}
    assert store.release("wide") is True
    assert {reserved(store, c.scope) for c in checks[::97]} == {(0, 0)}
    store.close()


def _damage(path: Path) -> None:
    """Overwrite pages in the middle of a real database file with garbage (as a failing disk would)."""
    with contextlib.closing(sqlite3.connect(path)) as db:  # the schema's pages spared: its tables' are damaged
        page = db.execute("PRAGMA page_size").fetchone()[0]
        schema = {number for (number,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'sqlite_schema'")}
    size = path.stat().st_size
    rng = random.Random(12)
    with path.open("r+b") as file:
        for number in range(2, size // page - 1, 3):
            if number + 1 in schema:  # (dbstat counts pages from 1)
                continue
            file.seek(number * page)
            file.write(rng.randbytes(page))


def _filled(path: Path, spans: int = 3000) -> None:
    store = SQLiteStore(path)
    for first in range(0, spans, 500):
        store.apply([rec(f"span-{n}", scope=f"s{n % 97}") for n in range(first, first + 500)], T0)
    store.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file


def test_a_damaged_file_is_refused_at_start_with_what_to_do(path: Path) -> None:
    _filled(path)
    _damage(path)
    with pytest.raises(StoreCorruptError) as caught:
        SQLiteStore(path)
    message = str(caught.value)
    assert message.startswith(f"sqlite store {path}: integrity check at start: ")
    assert message.endswith(
        f"; the file is damaged or is not an otel_puppy state file: stop otel-puppy, then restore {path} from a "
        f"backup, or move {path} (with {path}-wal and {path}-shm) aside to start again with empty state"
    )
    assert caught.value.path == str(path)
    assert isinstance(caught.value, StoreError)


def test_damage_found_at_run_time_is_a_corrupt_error_and_the_store_says_so(path: Path) -> None:
    _filled(path)
    store = SQLiteStore(path, check_integrity=False)  # (the check would bring every page into the cache)
    assert store.health().problem is None
    _damage(path)  # under the running store, as a failing disk would

    def use() -> None:
        for n in range(200):  # until a read reaches a damaged page the page cache does not hold
            store.apply([rec(f"late-{n}", scope=f"s{n}")], T0)
            store.totals([(f"s{n % 97}", DAY) for n in range(97)], T0)

    with pytest.raises(StoreCorruptError, match=store_at(path) + r": (apply|totals) failed.*malformed") as caught:
        use()
    assert "move" in str(caught.value)
    assert store.health().problem == str(caught.value)
    store.close()


def test_a_file_that_is_not_a_database_is_a_corrupt_error(path: Path) -> None:
    path.write_bytes(b"not a database, just some bytes " * 100)
    with pytest.raises(StoreCorruptError, match=store_at(path) + r": cannot open: file is not a database"):
        SQLiteStore(path)


def test_samples_past_keep_in_one_write_are_kept_as_the_memory_store_keeps_them(path: Path) -> None:
    """Only a series' newest `keep` samples of a write are written (the trim would drop the others): the
    series read as the memory store's (interleaved series, batches past `keep`, `keep` changing)."""
    rng = random.Random(5)
    store, reference = SQLiteStore(path), MemoryStore()
    t0 = 1_780_000_000.0
    for step in range(60):
        keep = rng.choice((1, 3, 10))
        batch = [
            Sample(f"k{rng.randrange(3)}", t0 + step + i / 100, rng.randrange(1000), rng.randrange(50))
            for i in range(rng.randrange(40))
        ]
        for target in (store, reference):
            target.add_samples(batch, keep=keep, ttl_s=600, now=t0 + step)
        keys = ["k0", "k1", "k2", "absent"]
        since = t0 + step - rng.randrange(5)
        assert store.read_samples(keys, since) == reference.read_samples(keys, since)
    store.close()
