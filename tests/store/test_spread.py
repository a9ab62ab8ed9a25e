"""`SpendRecord.spread`: the stores that read it (memory, SQLite) count a record's spread exactly as
the increments it stands for, whatever the batch (the engine sends these stores spreads only)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from otel_puppy.ledger import COUNTS, LedgerEntry
from otel_puppy.store.base import CEILING, ApplyResult, Increment, SpendRecord, Spread
from otel_puppy.store.memory import MemoryStore
from otel_puppy.store.sqlite import SQLiteStore
from otel_puppy.windows import CalendarWindow, RollingWindow, Window

UTC = ZoneInfo("UTC")
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()
WINDOWS: tuple[Window, ...] = (
    CalendarWindow("day", UTC),
    RollingWindow(3600, "1h"),
    RollingWindow(86400, "24h"),
    CalendarWindow("hour", UTC),
)
Factory = Callable[[], MemoryStore | SQLiteStore]


@pytest.fixture(params=["memory", "sqlite"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    made = iter(range(10))
    if request.param == "memory":
        return MemoryStore
    return lambda: SQLiteStore(tmp_path / f"state-{next(made)}.db")


def _records() -> tuple[list[SpendRecord], list[SpendRecord]]:
    """The same 600 spans twice: with their increments, and with their spreads."""
    rng = random.Random(11)
    pool = [
        tuple((f"s{rng.randrange(4)}", window) for window in rng.sample(WINDOWS, rng.randrange(1, len(WINDOWS) + 1)))
        for _ in range(5)
    ]
    pool.append((("s0", WINDOWS[0]), ("s0", WINDOWS[0])))  # one counter twice: added twice
    huge = 2**53 - 1
    plain, spread = [], []
    for _ in range(600):
        ts = T0 - rng.choice((0, 5, 30, 1800, 3599, 3700, 90_000)) + rng.random()
        nanos = rng.choice((0, -3, 1, 2_000_000, huge // 3, huge, 2**70))
        tokens = rng.choice((0, 7, 1500, -1, 2**60))
        targets = rng.choice(pool)
        if rng.random() < 0.2:
            targets = tuple(pair for pair in targets)  # equal targets in a tuple of their own
        span = f"span-{rng.randrange(400)}"  # some come twice: duplicates add nothing
        parent = f"span-{rng.randrange(400)}" if rng.random() < 0.2 else None  # some are nested
        hour = int(ts // 3600) * 3600
        counts = tuple(rng.choice((0, 1, 1500, huge // 2, huge, -1, 2**60)) for _ in COUNTS)
        ledger = LedgerEntry(hour, f"dims-{rng.randrange(3)}", counts, hour + rng.choice((3600, 7200)) + T0)
        increments = tuple(Increment(scope, window, ts, nanos, tokens) for scope, window in targets)
        plain.append(SpendRecord(span, parent, increments, T0 + 86400, ledger=ledger))
        spread.append(
            SpendRecord(span, parent, (), T0 + 86400, ledger=ledger, spread=Spread(targets, ts, nanos, tokens))
        )
    return plain, spread


def test_a_spread_adds_what_its_increments_add(new_store: Factory) -> None:
    """Batches of spread records (targets shared or equal, one counter twice, late and old spend, sums
    past the ceiling, duplicates, nested spans, ledger rows) end every counter and ledger row as their
    increments applied one span at a time; and saturate as often as the same batches of increments."""
    plain, spread = _records()
    assert [record.nanos for record in spread] == [record.nanos for record in plain]
    one_by_one, batched, by_increments = new_store(), new_store(), new_store()
    results = [one_by_one.apply([record], T0)[0] for record in plain]
    assert [r for i in range(0, 600, 100) for r in batched.apply(spread[i : i + 100], T0)] == results
    assert results.count(ApplyResult.APPLIED) > 100
    for i in range(0, 600, 100):
        by_increments.apply(plain[i : i + 100], T0)
    reads = [(f"s{s}", window) for s in range(4) for window in WINDOWS]
    assert batched.totals(reads, T0) == one_by_one.totals(reads, T0)
    assert any(counter.nanos == CEILING for counter in batched.totals(reads, T0))
    rolling = [(scope, window) for scope, window in reads if isinstance(window, RollingWindow)]
    assert batched.read_sub_buckets(rolling, T0) == one_by_one.read_sub_buckets(rolling, T0)
    assert batched.read_ledger(0, 2**40) == one_by_one.read_ledger(0, 2**40)
    assert batched.health().saturated == by_increments.health().saturated > 0
    for store in (one_by_one, batched, by_increments):
        store.close()
