"""One suite, every store: `MemoryStore` is the reference and each backend must answer exactly as it does."""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import sqlite3
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_puppy.exceptions import StoreError
from otel_puppy.store.base import (
    CEILING,
    MAX_CALL_SPANS,
    Admission,
    Admitted,
    ApplyResult,
    BudgetCheck,
    CallKey,
    CheckState,
    Counter,
    Increment,
    SpendRecord,
    Store,
    clamp,
    fullest_states,
)
from otel_puppy.store.sqlite import SQLiteStore
from otel_puppy.windows import CalendarWindow, RollingWindow, Window

UTC = ZoneInfo("UTC")
DAY = CalendarWindow("day", UTC)
HOUR = CalendarWindow("hour", UTC)
H1 = RollingWindow(3600, "1h")  # 60 sub-buckets of 60 s
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()  # noon, on a sub-bucket boundary of 1h
STEP = 60.0

APPLIED, DUPLICATE, NESTED = ApplyResult.APPLIED, ApplyResult.DUPLICATE, ApplyResult.NESTED


def rec(
    key: str,
    *,
    parent: str | None = None,
    nanos: int = 100,
    tokens: int = 10,
    ts: float = T0,
    scope: str = "s",
    windows: tuple[Window, ...] = (DAY, H1),
    decision_id: str | None = None,
    settle_key: str | None = None,
    until: float = T0 + 86400,
) -> SpendRecord:
    increments = tuple(Increment(scope, window, ts, nanos, tokens) for window in windows)
    return SpendRecord(key, parent, increments, until, decision_id=decision_id, settle_key=settle_key)


def check(
    scope: str = "s",
    window: Window = DAY,
    *,
    limit_nanos: int | None = 1000,
    limit_tokens: int | None = None,
    blocking: bool = True,
) -> BudgetCheck:
    return BudgetCheck(scope, window, limit_nanos, limit_tokens, blocking)


def admit(
    store: Store,
    decision_id: str,
    *checks: BudgetCheck,
    nanos: int = 0,
    tokens: int = 0,
    settle_key: str | None = None,
    expires_at: float = T0 + 300,
    reserve: bool = True,
    now: float = T0,
) -> Admitted:
    admission = Admission(decision_id, checks or (check(),), nanos, tokens, expires_at, settle_key, reserve=reserve)
    return store.admit(admission, now)


def read(store: Store, window: Window = DAY, scope: str = "s", now: float = T0) -> Counter:
    return store.totals([(scope, window)], now)[0]


def reserved(store: Store, scope: str = "s", now: float = T0) -> tuple[int, int]:
    state = store.admit(Admission("", (check(scope),), 0, 0, now, None, reserve=False), now).states[0]
    return state.reserved_nanos, state.reserved_tokens


# --- apply: exactly once ----------------------------------------------------------------------


def test_a_span_is_applied_once_and_a_retry_is_a_duplicate(store: Store) -> None:
    assert store.apply([rec("a")], T0) == [APPLIED]
    assert store.apply([rec("a")], T0 + 5) == [DUPLICATE]
    assert store.totals([("s", DAY), ("s", H1)], T0) == [Counter(100, 10, 1), Counter(100, 10, 1)]


def test_the_same_span_twice_in_one_batch_counts_once(store: Store) -> None:
    assert store.apply([rec("a"), rec("a")], T0) == [APPLIED, DUPLICATE]
    assert read(store) == Counter(100, 10, 1)


def test_a_retried_batch_is_all_duplicate(store: Store) -> None:
    batch = [rec("a"), rec("b", nanos=200), rec("c", parent="a")]
    assert store.apply(batch, T0) == [APPLIED, APPLIED, NESTED]
    assert store.apply(batch, T0) == [DUPLICATE, DUPLICATE, DUPLICATE]
    assert read(store) == Counter(300, 20, 2)


def test_an_empty_batch(store: Store) -> None:
    assert store.apply([], T0) == []


@pytest.mark.parametrize("one_batch", [True, False], ids=["one batch", "two batches"])
@pytest.mark.parametrize("child_first", [True, False], ids=["child first", "parent first"])
def test_nested_spans_of_one_call_count_once_whichever_arrives_first(
    store: Store, child_first: bool, one_batch: bool
) -> None:
    parent, child = rec("p", nanos=100), rec("c", parent="p", nanos=70)
    first, second = (child, parent) if child_first else (parent, child)
    if one_batch:
        assert store.apply([first, second], T0) == [APPLIED, NESTED]
    else:
        assert (store.apply([first], T0), store.apply([second], T0)) == ([APPLIED], [NESTED])
    assert read(store) == (Counter(70, 10, 1) if child_first else Counter(100, 10, 1))
    assert store.apply([parent, child], T0) == [DUPLICATE, DUPLICATE]


def test_sibling_calls_both_count_and_their_parent_is_then_nested(store: Store) -> None:
    assert store.apply([rec("a", parent="run"), rec("b", parent="run")], T0) == [APPLIED, APPLIED]
    assert store.apply([rec("run")], T0) == [NESTED]
    assert store.apply([rec("grandchild", parent="a"), rec("x", parent="run")], T0) == [NESTED, NESTED]
    assert read(store) == Counter(200, 20, 2)


# --- apply: spans of one call that are not parent and child (call keys) ----------------------------

ANY_TIME = (0, CEILING)


def keyed(key: str, *keys: CallKey, weak: bool = False, parent: str | None = None, nanos: int = 100) -> SpendRecord:
    return rec(key, parent=parent, nanos=nanos)._replace(call_keys=keys, weak=weak)


def response(source: str, response_id: str = "r1") -> CallKey:
    return CallKey(f"response-{response_id}", *ANY_TIME, source)


@pytest.mark.parametrize("one_batch", [True, False], ids=["one batch", "two batches"])
@pytest.mark.parametrize("a_first", [True, False], ids=["a first", "b first"])
def test_spans_with_one_response_id_count_once_whichever_arrives_first(
    store: Store, a_first: bool, one_batch: bool
) -> None:
    """Two instrumentations' spans of one call, in two traces: the first counts, with its own spend."""
    a, b = keyed("t1a", response("A"), nanos=100), keyed("t2b", response("B"), nanos=70)
    first, second = (a, b) if a_first else (b, a)
    if one_batch:
        assert store.apply([first, second], T0) == [APPLIED, NESTED]
    else:
        assert (store.apply([first], T0), store.apply([second], T0)) == ([APPLIED], [NESTED])
    assert read(store) == (Counter(100, 10, 1) if a_first else Counter(70, 10, 1))
    assert store.apply([a, b], T0) == [DUPLICATE, DUPLICATE]


@pytest.mark.parametrize(
    ("second", "result"),
    [
        (CallKey("k", 150, 300, "B"), NESTED),  # overlapping, another instrumentation
        (CallKey("k", 200, 200, "B"), NESTED),  # touching: closed intervals
        (CallKey("k", 50, 120, "B", identified=True), NESTED),  # one of the two carries a response id
        (CallKey("k", 0, CEILING, ""), NESTED),  # no instrumentation named: any
        (CallKey("k", 150, 300, "A"), APPLIED),  # the same instrumentation: a second call
        (CallKey("k", 201, 300, "B"), APPLIED),  # after the first ended
        (CallKey("k", 10, 99, "B"), APPLIED),  # before it started
        (CallKey("other", 150, 300, "B"), APPLIED),  # another key
    ],
)
def test_a_call_key_joins_overlapping_spans_of_another_instrumentation(
    store: Store, second: CallKey, result: ApplyResult
) -> None:
    assert store.apply([keyed("a", CallKey("k", 100, 200, "A"))], T0) == [APPLIED]
    assert store.apply([keyed("b", second)], T0) == [result]


def test_two_spans_both_with_a_response_id_are_never_joined_by_another_key(store: Store) -> None:
    """Two different response ids are two calls, however alike their usage and times."""
    first = keyed("a", response("A", "r1"), CallKey("k", 100, 200, "A", identified=True))
    second = keyed("b", response("B", "r2"), CallKey("k", 100, 200, "B", identified=True))
    assert store.apply([first, second], T0) == [APPLIED, APPLIED]


def test_any_of_a_records_call_keys_makes_it_nested(store: Store) -> None:
    assert store.apply([keyed("a", CallKey("k1", 100, 200, "A"))], T0) == [APPLIED]
    assert store.apply([keyed("b", response("B"), CallKey("k1", 100, 200, "B"))], T0) == [NESTED]
    # b was nested: it keeps none of its keys, so its response id joins nothing
    assert store.apply([keyed("c", response("C"))], T0) == [APPLIED]


def test_a_weak_record_can_be_nested_but_never_hides_another(store: Store) -> None:
    """A span without usage: counted when it arrives first, yet nobody's parent and no key's holder."""
    assert store.apply([keyed("w", response("A"), weak=True)], T0) == [APPLIED]
    assert store.apply([keyed("full", response("B"), nanos=70)], T0) == [APPLIED]  # same id: still counted
    assert store.apply([keyed("child", parent="w", nanos=30)], T0) == [APPLIED]  # the weak span is no parent
    assert store.apply([keyed("w", response("A"), weak=True)], T0) == [DUPLICATE]
    assert store.apply([keyed("w2", response("C"), weak=True)], T0) == [NESTED]  # "full" holds the id
    assert store.apply([keyed("w3", weak=True, parent="full")], T0) == [NESTED]
    assert store.apply([keyed("p", weak=True), keyed("c", parent="p")], T0) == [APPLIED, APPLIED]
    assert read(store) == Counter(100 + 70 + 30 + 100 + 100, 50, 5)


def test_a_call_key_keeps_the_spans_that_end_last(store: Store) -> None:
    records = [keyed(f"a{i}", CallKey("k", 1000 * i, 1000 * i + 10, "A")) for i in range(MAX_CALL_SPANS + 1)]
    assert store.apply(records, T0) == [APPLIED] * (MAX_CALL_SPANS + 1)
    assert store.apply([keyed("b0", CallKey("k", 0, 5, "B"))], T0) == [APPLIED]  # the oldest was let go
    assert store.apply([keyed("b1", CallKey("k", 1005, 1005, "B"))], T0) == [NESTED]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
@pytest.mark.parametrize("kept_before", [1, 2, MAX_CALL_SPANS])
def test_call_keys_of_a_batch_that_did_not_commit_are_taken_back(
    store: Store, monkeypatch: pytest.MonkeyPatch, kept_before: int
) -> None:
    """SQLite keeps call keys in memory: a transaction that fails after deciding takes its keys back
    (under a key with one span, with several, and with as many as are kept: b lets the oldest go)."""
    first = [keyed(f"a{i}", CallKey("k", 100 - i, 200 - i, "A")) for i in range(kept_before)]
    assert store.apply(first, T0) == [APPLIED] * kept_before
    applied = SQLiteStore._apply

    def fails(self: SQLiteStore, db: sqlite3.Connection, records: Any) -> Any:
        applied(self, db, records)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SQLiteStore, "_apply", fails)
    with pytest.raises(StoreError):
        store.apply([keyed("b", CallKey("k", 300, 400, "B")), keyed("c", CallKey("new", 0, 10, "B"))], T0)
    monkeypatch.undo()
    oldest = 100 - kept_before + 1
    assert store.apply([keyed("g", CallKey("k", oldest, oldest, "C"))], T0) == [NESTED]  # the oldest is kept
    assert store.apply([keyed("f", CallKey("k", 199, 199, "C"))], T0) == [NESTED]  # and a0's
    # neither b's span under k nor the key c brought is kept: another instrumentation's spans count
    later = [keyed("d", CallKey("k", 350, 360, "C")), keyed("e", CallKey("new", 5, 6, "C"))]
    assert store.apply(later, T0) == [APPLIED, APPLIED]


# Redis forgets call keys itself (PEXPIRE, as every dedupe key).
@pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)
def test_expire_forgets_call_keys_with_their_last_span(store: Store) -> None:
    store.apply(
        [
            keyed("a", CallKey("k", 100, 200, "A"))._replace(dedupe_until=T0 + 600),
            keyed("b", CallKey("k", 300, 400, "A"))._replace(dedupe_until=T0 + 900),
        ],
        T0,
    )
    assert store.expire(T0 + 600) == 1  # a's dedupe key; k is kept while its latest span is
    assert store.apply([keyed("c", CallKey("k", 150, 160, "B"))], T0) == [NESTED]
    assert store.expire(T0 + 900) == 3  # b's dedupe key, and both spans kept under k
    assert store.apply([keyed("d", CallKey("k", 150, 160, "B"))], T0) == [APPLIED]


# --- windows ----------------------------------------------------------------------------------


def test_calendar_spend_counts_in_the_bucket_of_its_time(store: Store) -> None:
    windows = (DAY, HOUR)
    # Each batch is applied at a time it could arrive: the hour before midnight written at noon is
    # already past its 2 h retention, which Redis (expiring keys relative to `now`) would forget at
    # once, so the read of it below would depend on the server being faster than a millisecond.
    late_evening = T0 - 12 * 3600 - 1  # 23:59:59 the day before
    store.apply([rec("yesterday", ts=late_evening, nanos=7, windows=windows)], late_evening + 0.5)
    store.apply(
        [rec("noon", ts=T0, windows=windows), rec("end of hour", ts=T0 + 3599.5, nanos=20, windows=windows)], T0
    )
    assert store.totals([("s", DAY), ("s", HOUR), ("t", DAY)], T0) == [
        Counter(120, 20, 2),
        Counter(120, 20, 2),
        Counter(0, 0, 0),
    ]
    assert store.totals([("s", DAY), ("s", HOUR)], T0 + 3600) == [Counter(120, 20, 2), Counter(0, 0, 0)]
    assert read(store, DAY, now=T0 + 12 * 3600) == Counter(0, 0, 0)  # midnight: a new day
    assert read(store, DAY, now=T0 - 12 * 3600 - 0.5) == Counter(7, 10, 1)
    assert read(store, HOUR, now=T0 - 12 * 3600 - 0.5) == Counter(7, 10, 1)


def test_rolling_spend_counts_in_its_sub_bucket_and_the_sixty_after(store: Store) -> None:
    # Spend at the start of a sub-bucket counts for 61 steps, at its end for just over 60.
    store.apply([rec("start", ts=T0, nanos=1), rec("end", ts=T0 + STEP - 0.001, nanos=2)], T0 + STEP)
    assert read(store, H1, now=T0 + 61 * STEP - 0.001) == Counter(3, 20, 2)
    assert read(store, H1, now=T0 + 61 * STEP) == Counter(0, 0, 0)


def test_rolling_total_drops_sub_buckets_one_by_one(store: Store) -> None:
    store.apply(
        [
            rec("a", ts=T0, nanos=1),
            rec("b", ts=T0 + 30 * STEP, nanos=2),
            rec("c", ts=T0 + 60 * STEP, nanos=4),
            rec("d", ts=T0 + 60 * STEP + 59, nanos=8),
        ],
        T0 + 60 * STEP + 59,
    )
    assert read(store, H1, now=T0 + 60 * STEP + 59) == Counter(15, 40, 4)
    assert read(store, H1, now=T0 + 61 * STEP) == Counter(14, 30, 3)
    assert read(store, H1, now=T0 + 90 * STEP + 59) == Counter(14, 30, 3)
    assert read(store, H1, now=T0 + 91 * STEP) == Counter(12, 20, 2)
    assert read(store, H1, now=T0 + 121 * STEP - 1) == Counter(12, 20, 2)
    assert read(store, H1, now=T0 + 121 * STEP) == Counter(0, 0, 0)


def test_spend_older_than_a_rolling_window_does_not_count(store: Store) -> None:
    store.apply([rec("new", ts=T0 + 60 * STEP, nanos=1)], T0 + 60 * STEP)
    store.apply([rec("late", ts=T0 - 1, nanos=2), rec("in time", ts=T0, nanos=4)], T0 + 60 * STEP)
    assert read(store, H1, now=T0 + 60 * STEP) == Counter(5, 20, 2)
    assert read(store, DAY, now=T0 + 60 * STEP) == Counter(7, 30, 3)


def test_totals_answer_each_read_in_order(store: Store) -> None:
    store.apply([rec("a", scope="s"), rec("b", scope="t", nanos=5, tokens=1)], T0)
    reads: list[tuple[str, Window]] = [("t", H1), ("s", DAY), ("unknown", HOUR), ("t", DAY), ("unknown", H1)]
    assert store.totals(reads, T0) == [
        Counter(5, 1, 1),
        Counter(100, 10, 1),
        Counter(0, 0, 0),
        Counter(5, 1, 1),
        Counter(0, 0, 0),
    ]
    assert store.totals([], T0) == []


# --- admission --------------------------------------------------------------------------------


def test_admission_reserves_while_the_budget_fits(store: Store) -> None:
    store.apply([rec("a", nanos=100, tokens=10)], T0)
    assert admit(store, "d1", nanos=500) == Admitted(True, (CheckState(100, 10, 0, 0, True),))
    assert admit(store, "d2", nanos=400, tokens=3) == Admitted(True, (CheckState(100, 10, 500, 0, True),))
    assert admit(store, "d3", nanos=1) == Admitted(False, (CheckState(100, 10, 900, 3, False),))
    assert reserved(store) == (900, 3)


def test_a_blocking_check_that_does_not_fit_reserves_nothing_anywhere(store: Store) -> None:
    checks = (check("s", limit_nanos=1000), check("t", limit_nanos=100))
    assert admit(store, "d1", *checks, nanos=200) == Admitted(
        False, (CheckState(0, 0, 0, 0, True), CheckState(0, 0, 0, 0, False))
    )
    assert (reserved(store, "s"), reserved(store, "t")) == ((0, 0), (0, 0))
    assert store.release("d1") is False


def test_a_non_blocking_check_that_does_not_fit_still_reserves_on_every_check(store: Store) -> None:
    checks = (check("s", limit_nanos=1000), check("t", limit_nanos=100, blocking=False))
    assert admit(store, "d1", *checks, nanos=200, tokens=2) == Admitted(
        True, (CheckState(0, 0, 0, 0, True), CheckState(0, 0, 0, 0, False))
    )
    assert (reserved(store, "s"), reserved(store, "t")) == ((200, 2), (200, 2))


def test_an_amount_of_zero_fits_while_the_budget_is_not_used_up(store: Store) -> None:
    store.apply([rec("a", nanos=999, tokens=0)], T0)
    assert admit(store, "d1") == Admitted(False, (CheckState(999, 0, 0, 0, True),))  # nothing to reserve
    store.apply([rec("b", nanos=1, tokens=0)], T0)
    assert admit(store, "d2") == Admitted(False, (CheckState(1000, 0, 0, 0, False),))
    assert admit(store, "d3", check(limit_nanos=None)) == Admitted(False, (CheckState(1000, 0, 0, 0, True),))
    assert reserved(store) == (0, 0)


def test_reserve_false_only_reads(store: Store) -> None:
    assert admit(store, "d1", nanos=500, reserve=False) == Admitted(False, (CheckState(0, 0, 0, 0, True),))
    assert reserved(store) == (0, 0)
    assert store.release("d1") is False


def test_an_admission_without_checks_reserves_nothing(store: Store) -> None:
    assert store.admit(Admission("d1", (), 500, 5, T0 + 300, "k"), T0) == Admitted(False, ())
    assert store.release("d1") is False


def test_read_budgets_reads_what_admit_without_reserving_reads_and_reserves_nothing(store: Store) -> None:
    over = check("s", limit_nanos=100)
    tokens = check("s", H1, limit_nanos=None, limit_tokens=26)
    fresh = check("t", limit_nanos=1000)
    saturated = check("u", limit_nanos=None, limit_tokens=10, blocking=False)
    checks = (check("s"), over, tokens, fresh, saturated)
    store.apply([rec("a", nanos=120, tokens=20), rec("b", scope="u", tokens=CEILING)], T0)
    admit(store, "d1", check("s"), fresh, nanos=300, tokens=5, expires_at=T0 + 60)
    admit(store, "d2", fresh, nanos=700, expires_at=T0 + 120)
    assert store.read_budgets(checks, T0) == [
        CheckState(120, 20, 300, 5, True),
        CheckState(120, 20, 300, 5, False),
        CheckState(120, 20, 300, 5, True),
        CheckState(0, 0, 1000, 5, False),
        CheckState(100, CEILING, 0, 0, False),
    ]
    for now in (T0, T0 + 59, T0 + 60):
        read = store.read_budgets(checks, now)
        assert read == list(admit(store, "", *checks, reserve=False, now=now).states), now
        assert store.read_budgets(checks, now) == read  # reading twice reserves nothing
    assert store.read_budgets(checks, T0 + 60) == [  # d1 expired
        CheckState(120, 20, 0, 0, True),
        CheckState(120, 20, 0, 0, False),
        CheckState(120, 20, 0, 0, True),
        CheckState(0, 0, 700, 0, True),
        CheckState(100, CEILING, 0, 0, False),
    ]
    assert store.read_budgets([], T0) == []
    assert (store.release("d1"), store.release("d2")) == (False, True)


def test_read_fullest_reads_each_groups_fullest_budget_as_read_budgets_reads_it(store: Store) -> None:
    store.apply([rec("a", nanos=120, tokens=20), rec("b", scope="t", nanos=50, tokens=90)], T0)
    store.apply([rec("c", scope="u", nanos=200, tokens=5, windows=(DAY,))], T0)
    admit(store, "d1", check("t"), nanos=100, expires_at=T0 + 60)
    groups = (
        (check("s"), check("t"), check("u"), check("v")),  # spend: u's 200 is the most
        (check("s"), check("t")),  # spend plus reserved: t's 50 + 100 beats s's 120 until d1 expires
        (check("s", H1, limit_nanos=None, limit_tokens=26), check("t", H1, limit_nanos=None, limit_tokens=26)),
        (check("v"), check("w")),  # equals: the first
        (check("u", limit_nanos=None, limit_tokens=100),),
    )
    assert store.read_fullest(groups, T0) == [
        CheckState(200, 5, 0, 0, True),
        CheckState(50, 90, 100, 0, True),
        CheckState(50, 90, 100, 0, False),
        CheckState(0, 0, 0, 0, True),
        CheckState(200, 5, 0, 0, True),
    ]
    for now in (T0, T0 + 59, T0 + 60, T0 + 3600, T0 + 86400):  # the same groups again, then the next day
        flat = store.read_budgets([c for group in groups for c in group], now)
        assert store.read_fullest(groups, now) == fullest_states(groups, flat), now
    assert store.read_fullest(groups, T0 + 60)[1] == CheckState(120, 20, 0, 0, True)  # d1 expired
    assert store.read_fullest(groups, T0 + 86400)[0] == CheckState(0, 0, 0, 0, True)
    store.apply([rec("e", scope="w", nanos=5000, ts=T0 + 86400, until=T0 + 2 * 86400)], T0 + 86400)
    assert store.read_fullest(groups, T0 + 86400)[3] == CheckState(5000, 10, 0, 0, False)  # a counter new since
    assert store.read_fullest((), T0) == []
    assert store.release("d1") is False  # expired, and reading reserved nothing


@pytest.mark.parametrize(
    ("store", "shares_state", "does_io"),
    [("memory", False, False), ("sqlite", True, True), ("redis", True, True), ("redis-cluster", True, True)],
    indirect=["store"],
)
def test_each_store_states_its_capabilities(store: Store, shares_state: bool, does_io: bool) -> None:
    assert (store.shares_state, store.does_io) == (shares_state, does_io)


def test_token_limits(store: Store) -> None:
    tokens_only = check(limit_nanos=None, limit_tokens=100)
    store.apply([rec("a", nanos=100, tokens=10)], T0)
    assert admit(store, "d1", tokens_only, tokens=90) == Admitted(True, (CheckState(100, 10, 0, 0, True),))
    assert admit(store, "d2", tokens_only, tokens=1) == Admitted(False, (CheckState(100, 10, 0, 90, False),))
    # no tokens asked: fits while tokens used < limit, and 10 + 90 is the limit
    assert admit(store, "d3", tokens_only, nanos=5) == Admitted(False, (CheckState(100, 10, 0, 90, False),))
    both = check(limit_nanos=1000, limit_tokens=1000)
    assert admit(store, "d4", both, nanos=901, tokens=1) == Admitted(False, (CheckState(100, 10, 0, 90, False),))
    assert admit(store, "d5", both, nanos=900, tokens=900) == Admitted(True, (CheckState(100, 10, 0, 90, True),))
    assert reserved(store) == (900, 990)


def test_a_rolling_budget_admits_on_the_spend_of_its_trailing_window(store: Store) -> None:
    rolling = check(window=H1, limit_nanos=150)
    store.apply([rec("a", nanos=100)], T0)
    later = T0 + 61 * STEP
    assert admit(store, "d1", rolling, nanos=100, now=later - 1, expires_at=later) == Admitted(
        False, (CheckState(100, 10, 0, 0, False),)
    )
    assert admit(store, "d2", rolling, nanos=100, now=later, expires_at=later + 300) == Admitted(
        True, (CheckState(0, 0, 0, 0, True),)
    )


# --- settlement -------------------------------------------------------------------------------


def test_a_span_with_a_decision_id_settles_that_reservation(store: Store) -> None:
    admit(store, "d1", nanos=500, settle_key="k")
    admit(store, "d2", nanos=300, settle_key="k")
    assert store.apply([rec("a", decision_id="d2", settle_key="k")], T0) == [APPLIED]
    assert reserved(store) == (500, 0)
    assert (store.release("d2"), store.release("d1")) == (False, True)


def test_a_span_without_a_decision_id_settles_the_oldest_reservation_with_its_key(store: Store) -> None:
    admit(store, "d1", nanos=500, settle_key="k")
    admit(store, "d2", nanos=300, settle_key="k")
    admit(store, "d3", nanos=70, settle_key="other")
    admit(store, "d4", nanos=9)
    store.apply([rec("a", settle_key="k")], T0)
    assert reserved(store) == (379, 0)
    store.apply([rec("b", settle_key="k")], T0)
    assert reserved(store) == (79, 0)
    store.apply([rec("c", settle_key="k"), rec("d")], T0)  # nothing open for k; no key: settles nothing
    assert reserved(store) == (79, 0)
    assert (store.release("d1"), store.release("d2"), store.release("d3"), store.release("d4")) == (
        False,
        False,
        True,
        True,
    )


def test_a_decision_id_no_longer_open_falls_back_to_the_settle_key(store: Store) -> None:
    admit(store, "d1", nanos=500, settle_key="k")
    admit(store, "d2", nanos=300, settle_key="k")
    admit(store, "d3", nanos=70, settle_key="k")
    # In one batch, in order: "a" settles d1 (the oldest); "b" names d1, gone by then, so settles d2.
    assert store.apply([rec("a", settle_key="k"), rec("b", decision_id="d1", settle_key="k")], T0) == [
        APPLIED,
        APPLIED,
    ]
    assert reserved(store) == (70, 0)
    assert store.apply([rec("c", decision_id="unknown")], T0) == [APPLIED]
    assert reserved(store) == (70, 0)


def test_in_one_batch_each_span_settles_what_is_left_of_its_key(store: Store) -> None:
    # (SQLite reads once which of the batch's keys have a reservation: a key only loses them.)
    admit(store, "d1", nanos=500, settle_key="k")
    admit(store, "d2", nanos=300, settle_key="k")
    admit(store, "d3", nanos=70, settle_key="j")
    admit(store, "d4", nanos=9, settle_key="j")
    batch = [
        rec("a", decision_id="d2", settle_key="k"),  # d2, by its id
        rec("b", settle_key="k"),  # the oldest left of k: d1
        rec("c", settle_key="k"),  # none left of k
        rec("d", decision_id="d3", settle_key="k"),  # d3 by its id, though of j
        rec("e", settle_key="j"),  # what is left of j: d4
        rec("f", settle_key="j"),  # none left
        rec("g", settle_key="never"),  # a key with no reservation
    ]
    assert store.apply(batch, T0) == [APPLIED] * 7
    assert reserved(store) == (0, 0)
    assert [store.release(d) for d in ("d1", "d2", "d3", "d4")] == [False] * 4
    admit(store, "d5", nanos=40, settle_key="k")  # a later batch sees the key's new reservation
    assert store.apply([rec("h", settle_key="k")], T0) == [APPLIED]
    assert reserved(store) == (0, 0)


def test_a_nested_span_releases_the_reservation_its_decision_id_names(store: Store) -> None:
    store.apply([rec("call")], T0)
    admit(store, "d1", nanos=500, settle_key="k")
    admit(store, "d2", nanos=300, settle_key="k")
    assert store.apply([rec("sdk", parent="call", decision_id="d1", settle_key="k")], T0) == [NESTED]
    assert reserved(store) == (300, 0)
    # Without a decision id, a nested span settles nothing (the span it nests in did or will)...
    assert store.apply([rec("sdk2", parent="call", settle_key="k")], T0) == [NESTED]
    # ...nor does a duplicate, whatever it carries.
    assert store.apply([rec("call", decision_id="d2", settle_key="k")], T0) == [DUPLICATE]
    assert reserved(store) == (300, 0)
    assert read(store) == Counter(100, 10, 1)


def test_release(store: Store) -> None:
    admit(store, "d1", nanos=500, tokens=5, settle_key="k")
    assert reserved(store) == (500, 5)
    assert store.release("d1") is True
    assert reserved(store) == (0, 0)
    assert store.release("d1") is False
    assert store.release("never admitted") is False
    store.apply([rec("a", settle_key="k")], T0)  # a released reservation is not settled again
    assert reserved(store) == (0, 0)


def test_a_reservation_holding_nothing_on_a_budget_is_released_after_others_there(store: Store) -> None:
    # A request with no estimate on a call budget and a spend budget holds one call on the first and
    # nothing on the second. Released after another decision's hold on the spend budget, the memory
    # store looked up the spend budget's totals (dropped at zero by then) and raised KeyError.
    calls, spend = BudgetCheck("c", DAY, None, None, True, limit_calls=10), check("s")
    assert admit(store, "nothing", calls, spend).reserved is True
    assert admit(store, "something", spend, nanos=500).reserved is True
    assert store.release("something") is True
    assert store.release("nothing") is True
    assert reserved(store, "s") == (0, 0)
    assert store.read_budgets([calls], T0)[0] == CheckState(0, 0, 0, 0, True)
    store.expire(T0)  # zero totals are dropped, and what admit kept of them with them
    assert admit(store, "again", calls, spend, nanos=7).states[1] == CheckState(0, 0, 0, 0, True)
    assert reserved(store, "s") == (7, 0)


def test_reservations_expire_at_their_time(store: Store) -> None:
    admit(store, "d1", nanos=500, expires_at=T0 + 300)
    assert reserved(store, now=T0 + 299.999) == (500, 0)
    assert reserved(store, now=T0 + 300) == (0, 0)
    assert store.release("d1") is False


def test_expire_drops_expired_reservations(store: Store) -> None:
    admit(store, "d1", nanos=500, expires_at=T0 + 300)
    admit(store, "d2", nanos=20, expires_at=T0 + 400)
    assert store.expire(T0 + 299) == 0
    assert store.expire(T0 + 300) == 1
    assert (store.release("d1"), store.release("d2")) == (False, True)


# --- marks and expiry -------------------------------------------------------------------------


def test_marks_are_set_once_until_unmarked_or_expired(store: Store) -> None:
    assert store.mark("m", T0 + 10) is True
    assert store.mark("m", T0 + 20) is False
    store.unmark("m")
    store.unmark("never set")
    assert store.mark("m", T0 + 10) is True
    assert store.expire(T0 + 9) == 0
    assert store.expire(T0 + 10) == 1
    assert store.mark("m", T0 + 20) is True


# Redis forgets counters and dedupe keys itself: tests/store/test_redis.py checks their PEXPIRE instead.
@pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)
def test_expire_forgets_each_kind_at_its_time_and_counts_it(store: Store) -> None:
    store.apply(
        [
            rec("a", until=T0 + 600, windows=(DAY, HOUR, H1)),
            rec("c", parent="p", until=T0 + 900, windows=(HOUR,)),
        ],
        T0,
    )
    store.mark("m", T0 + 100)
    admit(store, "d1", nanos=10, expires_at=T0 + 200)
    assert store.expire(T0 + 99) == 0
    assert store.expire(T0 + 100) == 1  # the mark
    assert store.expire(T0 + 200) == 1  # the reservation
    assert store.expire(T0 + 600) == 1  # a's dedupe key
    assert store.expire(T0 + 900) == 2  # c's dedupe key and p, covered by c
    assert store.expire(T0 + 3 * 3600) == 2  # the noon hour (kept 2 h after it ends) and the 1h window
    assert store.totals([("s", HOUR), ("s", DAY)], T0) == [Counter(0, 0, 0), Counter(100, 10, 1)]
    assert store.expire(T0 + 60 * 3600) == 1  # the day, 2 days after it ends
    assert store.expire(T0 + 100 * 86400) == 0
    assert store.totals([("s", DAY), ("s", H1)], T0) == [Counter(0, 0, 0), Counter(0, 0, 0)]
    # forgotten keys: the same spans now count again
    assert store.apply([rec("a", windows=()), rec("p", windows=())], T0) == [APPLIED, APPLIED]


# --- state blobs ----------------------------------------------------------------------------------


def test_state_is_upserted_loaded_and_deleted_per_namespace(store: Store) -> None:
    assert store.load_state("breakers") == {}
    store.save_state("breakers", {"p|openai": b'{"a":1}', "p|anthropic": b"\x00\xff"})
    store.save_state("anomalies", {"p|openai": b"other namespace"})
    store.save_state("breakers", {"p|openai": b'{"a":2}'})  # replaces, keeps the rest
    store.save_state("breakers", {})
    assert store.load_state("breakers") == {"p|openai": b'{"a":2}', "p|anthropic": b"\x00\xff"}
    store.delete_state("breakers", ["p|anthropic", "never saved"])
    store.delete_state("breakers", [])
    assert store.load_state("breakers") == {"p|openai": b'{"a":2}'}
    assert store.load_state("anomalies") == {"p|openai": b"other namespace"}
    assert store.expire(T0 + 100 * 86400) == 0  # state never expires
    assert store.load_state("breakers") == {"p|openai": b'{"a":2}'}


def test_loaded_state_is_a_copy(store: Store) -> None:
    store.save_state("n", {"k": b"v"})
    loaded = store.load_state("n")
    loaded["k"] = b"changed"
    loaded["new"] = b"x"
    assert store.load_state("n") == {"k": b"v"}


def test_merged_state_keeps_the_highest_version_of_each_key(store: Store) -> None:
    assert store.merge_state("breakers", {}) == {}
    assert store.merge_state("breakers", {"a": (3, b"a3"), "b": (1, b"b1")}) == {"a": (3, b"a3"), "b": (1, b"b1")}
    # another process: an older a is ignored, a newer b wins, c is new
    merged = store.merge_state("breakers", {"a": (2, b"a2"), "b": (2, b"b2"), "c": (0, b"\x00\xff")})
    assert merged == {"a": (3, b"a3"), "b": (2, b"b2"), "c": (0, b"\x00\xff")}
    assert store.merge_state("breakers", {"b": (2, b"same version")}) == merged  # ties keep the first
    assert store.merge_state("other", {}) == {}
    assert store.load_state("breakers") == {}  # apart from the unversioned blobs


# --- counts that cannot overflow ----------------------------------------------------------------
# Every count saturates at CEILING (2**53 - 1) on every store; amounts are clamped where they
# enter; a saturated counter is over every limit. The sums around 2**53 are where a Lua double
# would first round: 2**53 + 1 is not a double.

INT64_MAX = 2**63 - 1


def test_the_ceiling_is_the_largest_integer_a_double_holds_exactly() -> None:
    assert CEILING == 2**53 - 1
    assert float(CEILING) == CEILING
    assert float(CEILING + 2) != CEILING + 2  # 2**53 + 1 is not a double
    assert (clamp(-1), clamp(0), clamp(5), clamp(CEILING), clamp(CEILING + 1), clamp(INT64_MAX)) == (
        0,
        0,
        5,
        CEILING,
        CEILING,
        CEILING,
    )

    assert (clamp(5.0), clamp(True), clamp(-2.0), clamp(2.0**60)) == (5, 1, 0, CEILING)  # type: ignore[arg-type]
    assert {type(clamp(amount)) for amount in (5.0, True, -2.0, 2.0**60)} == {int}  # type: ignore[arg-type]
    for amount in (5.5, math.nan, math.inf, "5", None):
        with pytest.raises(TypeError, match=re.escape(f"an amount must be a whole number, not {amount!r}")):
            clamp(amount)  # type: ignore[arg-type]


def test_a_whole_number_amount_of_another_type_is_reserved_as_its_integer(store: Store) -> None:
    states = store.admit(Admission("d1", (check(limit_nanos=None),), 5.0, True, T0 + 300, None), T0)  # type: ignore[arg-type]
    assert states.reserved is True
    held = reserved(store)
    assert held == (5, 1)
    assert {type(amount) for amount in held} == {int}
    with pytest.raises(TypeError, match=re.escape("an amount must be a whole number, not 5.5")):
        store.admit(Admission("d2", (check(),), 5.5, 0, T0 + 300, None), T0)  # type: ignore[arg-type]
    assert reserved(store) == (5, 1)


@pytest.mark.parametrize(
    ("first", "second", "total"),
    [
        (CEILING - 2, 1, CEILING - 1),  # just under: exact
        (CEILING - 1, 1, CEILING),  # 2**53 - 1: exactly the ceiling
        (CEILING - 1, 2, CEILING),  # 2**53: saturates
        (CEILING, 1, CEILING),  # 2**53 + 1: saturates
        (CEILING, CEILING, CEILING),
        (INT64_MAX, INT64_MAX, CEILING),  # int64 max twice: no overflow, no wrap, no float
        (2**64 + 7, 3, CEILING),
        (-5, 3, 3),  # a negative amount adds nothing
    ],
)
def test_sums_around_two_to_the_53_are_exact_or_saturate(store: Store, first: int, second: int, total: int) -> None:
    windows = (DAY, HOUR, H1)
    assert store.apply([rec("a", nanos=first, tokens=first, windows=windows)], T0) == [APPLIED]
    assert store.apply([rec("b", nanos=second, tokens=second, windows=windows)], T0) == [APPLIED]
    assert store.totals([("s", DAY), ("s", HOUR), ("s", H1)], T0) == [Counter(total, total, 2)] * 3
    saturated = store.health().saturated
    assert saturated == (12 if total == CEILING and clamp(first) == CEILING else 6 if total == CEILING else 0)
    assert store.health().unreadable == 0


def test_spend_in_one_batch_saturates_as_in_two(store: Store) -> None:
    batch = [rec(f"s{i}", nanos=INT64_MAX // 3, tokens=1) for i in range(5)]
    assert store.apply(batch, T0) == [APPLIED] * 5
    assert store.totals([("s", DAY), ("s", H1)], T0) == [Counter(CEILING, 5, 5)] * 2
    assert store.health().saturated > 0


def test_a_saturated_budget_denies_whatever_its_limit(store: Store) -> None:
    store.apply([rec("huge", nanos=INT64_MAX, tokens=0)], T0)
    for limit in (1000, CEILING - 1, CEILING, CEILING + 1, INT64_MAX, 2**80):
        assert admit(store, f"d{limit}", check(limit_nanos=limit)) == Admitted(
            False, (CheckState(CEILING, 0, 0, 0, False),)
        )
        assert admit(store, f"e{limit}", check(limit_nanos=limit), nanos=1) == Admitted(
            False, (CheckState(CEILING, 0, 0, 0, False),)
        )
    # a budget without a limit on nanos is not concerned; the rolling window saturated too
    assert admit(store, "tokens", check(limit_nanos=None, limit_tokens=10), tokens=1).reserved is True
    assert admit(store, "rolling", check(window=H1, limit_nanos=INT64_MAX), reserve=False).states[0].fits is False


def test_a_limit_past_the_ceiling_is_the_ceiling(store: Store) -> None:
    store.apply([rec("a", nanos=CEILING - 2, tokens=0)], T0)
    huge = check(limit_nanos=INT64_MAX)
    assert admit(store, "d1", huge, reserve=False) == Admitted(False, (CheckState(CEILING - 2, 0, 0, 0, True),))
    assert admit(store, "d2", huge, nanos=3) == Admitted(False, (CheckState(CEILING - 2, 0, 0, 0, False),))
    assert admit(store, "d3", huge, nanos=2) == Admitted(True, (CheckState(CEILING - 2, 0, 0, 0, True),))
    assert admit(store, "d4", huge) == Admitted(False, (CheckState(CEILING - 2, 0, 2, 0, False),))


def test_an_estimate_past_the_ceiling_is_clamped_and_never_fits_a_limit(store: Store) -> None:
    assert admit(store, "d1", nanos=INT64_MAX, tokens=INT64_MAX) == Admitted(False, (CheckState(0, 0, 0, 0, False),))
    assert reserved(store) == (0, 0)
    warn = check(limit_nanos=1000, blocking=False)
    assert admit(store, "d2", warn, nanos=2**70, tokens=-3) == Admitted(True, (CheckState(0, 0, 0, 0, False),))
    assert reserved(store) == (CEILING, 0)


def test_reserved_totals_are_exact_past_the_ceiling_and_never_negative(store: Store) -> None:
    # Huge estimates on a warn (non-blocking) budget: the attack that once overflowed the totals.
    warn = check(limit_nanos=1000, blocking=False)
    for i in range(5):
        assert admit(store, f"big{i}", warn, nanos=INT64_MAX, tokens=CEILING).reserved is True
    assert admit(store, "small", warn, nanos=7, tokens=3).reserved is True
    assert reserved(store) == (CEILING, CEILING)
    # ...and a deny budget on the same scope refuses everything meanwhile
    assert admit(store, "blocked", check(limit_nanos=10**15)).states[0] == CheckState(0, 0, CEILING, CEILING, False)
    for i in range(5):
        assert store.release(f"big{i}") is True
    assert reserved(store) == (7, 3)  # exactly what is still held: not saturated, not negative
    assert (store.release("small"), store.release("small"), store.release("big0")) == (True, False, False)
    assert reserved(store) == (0, 0)
    assert admit(store, "after", check(limit_nanos=10), nanos=10).reserved is True


def test_hostile_amounts_settle_and_expire_to_exactly_zero(store: Store) -> None:
    warn = check(limit_nanos=1000, blocking=False)
    admit(store, "d1", warn, nanos=INT64_MAX, settle_key="k", expires_at=T0 + 300)
    admit(store, "d2", warn, nanos=CEILING, expires_at=T0 + 100)
    store.apply([rec("a", nanos=INT64_MAX, settle_key="k")], T0)
    assert reserved(store) == (CEILING, 0)
    assert reserved(store, now=T0 + 100) == (0, 0)
    assert read(store) == Counter(CEILING, 10, 1)


def test_read_sub_buckets_reads_each_rolling_window_sub_bucket_by_sub_bucket(store: Store) -> None:
    """What `totals` sums, one sub-bucket each, oldest first, with its calls (what a call budget
    counts: a call with no spend is one); an empty one is left out; a sub-bucket drops out once now
    is 61 sub-buckets past it (`RollingWindow.drops_at`)."""
    m15 = RollingWindow(900, "15m")  # 60 sub-buckets of 15 s
    store.apply(
        [
            rec("a", nanos=600, tokens=6, windows=(H1, m15)),
            rec("b", nanos=300, tokens=3, ts=T0 + 20 * STEP, windows=(H1, m15)),
            rec("c", nanos=40, tokens=0, ts=T0 + 20 * STEP + 5, windows=(H1,)),
            rec("d", nanos=0, tokens=0, ts=T0 + 25 * STEP, windows=(H1,)),  # a request, no spend
            rec("e", scope="t", nanos=7, tokens=1, ts=T0 + 30 * STEP, windows=(H1,)),
        ],
        T0 + 30 * STEP,
    )
    first, twentieth = int(T0 // STEP), int(T0 // STEP) + 20
    request = (first + 25, 0, 0, 1)  # "d": a call, no spend
    assert store.read_sub_buckets([("s", H1), ("s", m15), ("t", H1), ("none", H1)], T0 + 30 * STEP) == [
        ((first, 600, 6, 1), (twentieth, 340, 3, 2), request),
        ((int((T0 + 20 * STEP) // 15), 300, 3, 1),),  # 15m: T0's spend is older than its window by now
        ((first + 30, 7, 1, 1),),
        (),
    ]
    assert H1.drops_at(first) == T0 + 61 * STEP
    assert store.read_sub_buckets([("s", H1)], T0 + 61 * STEP - 0.001) == [
        ((first, 600, 6, 1), (twentieth, 340, 3, 2), request)
    ]
    assert store.read_sub_buckets([("s", H1)], T0 + 61 * STEP) == [((twentieth, 340, 3, 2), request)]
    assert store.totals([("s", H1)], T0 + 61 * STEP) == [Counter(340, 3, 3)]
    assert store.read_sub_buckets([("s", H1)], T0 + 81 * STEP) == [(request,)]
    assert store.read_sub_buckets([("s", H1)], T0 + 86 * STEP) == [()]
    assert store.read_sub_buckets([], T0) == []


def test_read_sub_buckets_reads_saturated_sub_buckets_at_the_ceiling(store: Store) -> None:
    store.apply([rec("a", nanos=INT64_MAX, tokens=5, windows=(H1,))], T0)
    store.apply([rec("b", nanos=1, tokens=5, windows=(H1,))], T0)
    assert store.read_sub_buckets([("s", H1)], T0) == [((int(T0 // STEP), CEILING, 10, 2),)]


amounts = st.integers(min_value=-(2**64), max_value=2**64) | st.sampled_from(
    [0, 1, CEILING - 1, CEILING, CEILING + 1, 2**53, INT64_MAX, 10**12, 2 * 10**15]
)
_example = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(spend=st.lists(amounts, max_size=6), holds=st.lists(amounts, max_size=6), drop=st.sets(st.integers(0, 5)))
def test_any_amounts_saturate_exactly_as_the_model_says(
    store: Store, spend: list[int], holds: list[int], drop: set[int]
) -> None:
    scope = f"h{next(_example)}"  # one store for every example: each its own scope
    records = [rec(f"{scope}-{i}", scope=scope, nanos=a, tokens=a // 7) for i, a in enumerate(spend)]
    store.apply(records, T0)
    expected_nanos = min(sum(clamp(a) for a in spend), CEILING)
    expected_tokens = min(sum(clamp(a // 7) for a in spend), CEILING)
    want = Counter(expected_nanos, expected_tokens, len(spend))
    assert store.totals([(scope, DAY), (scope, H1)], T0) == [want, want]
    warn = check(scope, limit_nanos=1000, blocking=False)
    for i, amount in enumerate(holds):
        admit(store, f"{scope}-d{i}", warn, nanos=amount, tokens=1)
    for i in drop:
        store.release(f"{scope}-d{i}")
    kept = [(clamp(a), 1) for i, a in enumerate(holds) if i not in drop and (clamp(a) or 1)]
    want_held = (min(sum(n for n, _ in kept), CEILING), min(sum(t for _, t in kept), CEILING))
    assert reserved(store, scope) == want_held
    fits = want.nanos + want_held[0] < 1000
    assert admit(store, f"{scope}-probe", check(scope, limit_nanos=1000), reserve=False).states[0].fits is fits


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_uses_the_store_after_after_fork(store: Store) -> None:
    """The child repairs the store and writes; the parent sees the write iff the store shares state."""
    store.apply([rec("parent")], T0)
    admit(store, "held", nanos=5)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports by its exit code
        code = 1
        try:
            signal.alarm(30)  # a child that hangs dies, and the test fails rather than waits
            store.after_fork()
            ok = store.apply([rec("child")], T0) == [APPLIED] and read(store) == Counter(200, 20, 2)
            ok = ok and store.read_budgets([check()], T0) == [CheckState(200, 20, 5, 0, True)]
            code = 0 if ok else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert read(store) == (Counter(200, 20, 2) if store.shares_state else Counter(100, 10, 1))
