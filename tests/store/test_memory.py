"""`MemoryStore.admit` and `read_budgets` inline `check_state` for speed: they must answer exactly as
the rule does."""

from __future__ import annotations

import itertools
import random
from collections import deque
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from otel_puppy.ledger import COUNTS, LedgerEntry
from otel_puppy.store.base import (
    CEILING,
    MAX_SAMPLE_KEYS,
    MAX_SAMPLES,
    Admission,
    ApplyResult,
    BudgetCheck,
    CheckState,
    Counter,
    Increment,
    Sample,
    SpendRecord,
    SubBucket,
    check_state,
    fullest_states,
)
from otel_puppy.store.memory import _FLOATS, _FLOATS_LIMIT, MemoryStore, _Ring, _shared
from otel_puppy.windows import CalendarWindow, RollingWindow, Window

UTC = ZoneInfo("UTC")
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()
WINDOWS: tuple[Window, ...] = (CalendarWindow("day", UTC), RollingWindow(3600, "1h"))


def test_admit_gives_the_states_check_state_gives_for_every_case() -> None:
    # Budgets at, below and over their limits in nanos and tokens, with and without reservations
    # and estimates: every branch of the rule, through the store's own counters.
    limits = (None, 0, 999, 1000, 1001, 5000)
    spends = ((0, 0), (1000, 40), (1000, 50))
    reserved = ((0, 0), (0, 10))
    estimates = ((0, 0), (1, 0), (0, 1), (1000, 10))
    case = itertools.count()
    for window, limit_nanos, limit_tokens, (spent_nanos, spent_tokens), held, (nanos, tokens) in itertools.product(
        WINDOWS, limits, (None, 50, 60), spends, reserved, estimates
    ):
        if limit_nanos is None and limit_tokens is None:
            continue
        store = MemoryStore()
        scope = f"budget:{next(case)}"
        check = BudgetCheck(scope, window, limit_nanos, limit_tokens, blocking=False)
        if spent_nanos or spent_tokens:
            increment = Increment(scope, window, T0, spent_nanos, spent_tokens)
            store.apply([SpendRecord("span", None, (increment,), T0 + 86400)], T0)
        if held != (0, 0):
            store.admit(Admission("earlier", (check,), held[0], held[1], T0 + 60, None), T0)
        admitted = store.admit(Admission("now", (check,), nanos, tokens, T0 + 60, None, reserve=False), T0)
        expected = check_state(check, (spent_nanos, spent_tokens), held, nanos, tokens)
        assert admitted.states == (expected,)
        assert type(admitted.states[0]) is CheckState
        if nanos == tokens == 0:
            read = store.read_budgets([check], T0)
            assert read == [expected]
            assert type(read[0]) is CheckState


def test_samples_are_the_newest_kept_as_a_deque_of_them_would_be() -> None:
    # The samples' ring of arrays, against a deque of tuples through wraps and changes of `keep`.
    rng = random.Random(18)
    store, model = MemoryStore(), deque[tuple[float, int, int]](maxlen=1)
    for step in range(400):
        keep = rng.choice((1, 3, 5, 100)) if step % 37 == 0 else model.maxlen or 1
        if keep != model.maxlen:
            model = deque(model, maxlen=keep)
        batch = [
            Sample("k", T0 + step + i / 10, rng.randrange(1000), rng.randrange(50)) for i in range(rng.randrange(4))
        ]
        store.add_samples(batch, keep=keep, ttl_s=600, now=T0 + step)
        model.extend((at, nanos, tokens) for _, at, nanos, tokens in batch)
        since = T0 + step - rng.randrange(20)
        assert store.read_samples(["k", "other"], since) == [
            [(nanos, tokens) for at, nanos, tokens in reversed(model) if at >= since],
            [],
        ]


def test_a_batch_of_samples_writes_what_writing_them_one_at_a_time_writes() -> None:
    # A batch is written per key (keys in the order of their last sample); with a key let go for room
    # during it, sample by sample. Against a store fed the same samples one call each: the same
    # samples, the same keys kept (which were let go depends on the order), the same expiry.
    rng = random.Random(7)
    for few_keys in (True, False):
        batched, single = MemoryStore(), MemoryStore()
        names = [f"k{i}" for i in range(40 if few_keys else MAX_SAMPLE_KEYS + 300)]
        if not few_keys:  # near the bound: every batch lets keys go
            seed = [Sample(name, T0, i, 0) for i, name in enumerate(names[: MAX_SAMPLE_KEYS - 5])]
            for store in (batched, single):
                store.add_samples(seed, keep=3, ttl_s=600, now=T0)
            # The oldest key written again before a new key takes the room of the next oldest: by keys
            # in order of their last sample, "new" would take k0's and k0 would come back emptied.
            edge = [Sample("k0", T0, 1, 1)] + [Sample(f"new{i}", T0, 2, 2) for i in range(6)] + [Sample("k0", T0, 3, 3)]
            batched.add_samples(edge, keep=3, ttl_s=600, now=T0)
            for sample in edge:
                single.add_samples([sample], keep=3, ttl_s=600, now=T0)
            assert batched.read_samples(["k0", "k1"], T0) == [[(3, 3), (1, 1), (0, 0)], []]
        for step in range(60):
            now = T0 + step
            keep = rng.choice((2, 3, 5)) if step % 7 == 0 else 3
            batch = [
                Sample(rng.choice(names[:12] if rng.random() < 0.7 else names), now, rng.randrange(-5, 10**6), 7)
                for _ in range(rng.randrange(1, 60))
            ]
            batched.add_samples(batch, keep=keep, ttl_s=600 + step, now=now)
            for sample in batch:
                single.add_samples([sample], keep=keep, ttl_s=600 + step, now=now)
            assert list(batched._samples) == list(single._samples)  # kept keys, least recently written first
            assert batched._samples == single._samples  # each series' header and ring, byte for byte
        assert batched.expire(T0 + 690) == single.expire(T0 + 690)
        assert list(batched._samples) == list(single._samples)
        assert batched.expire(T0 + 2000) == single.expire(T0 + 2000) > 0


def test_a_series_lasts_until_its_latest_write_and_keeps_its_newest_through_any_keep() -> None:
    # A series holds its `until`, `keep` and `head` in its own header: every write sets `until` (one
    # into a full ring, one that changes `keep`), `expire` reads it, and a change of `keep` moves the
    # key to the newest end like any write.
    store = MemoryStore()
    store.add_samples([Sample("k", T0, 1, 1), Sample("full", T0, 1, 1)], keep=1, ttl_s=60, now=T0)
    store.add_samples([Sample("full", T0 + 1, 2, 2)], keep=1, ttl_s=60, now=T0 + 30)  # into its full ring
    store.add_samples([Sample("k", T0 + 1, 2, 2)], keep=3, ttl_s=60, now=T0 + 30)  # resized
    assert store.expire(T0 + 60) == 0
    assert store.read_samples(["k", "full"], T0) == [[(2, 2), (1, 1)], [(2, 2)]]
    assert store.expire(T0 + 90) == 2
    assert store.read_samples(["k", "full"], T0) == [[], []]
    # The largest ring, wrapped twice, at the ceiling; then kept smaller: its newest.
    samples = [Sample("big", T0 + i, CEILING - i % 2, CEILING) for i in range(2 * MAX_SAMPLES + 7)]
    store.add_samples(samples, keep=MAX_SAMPLES, ttl_s=60, now=T0)
    newest = [(nanos, tokens) for _, _, nanos, tokens in reversed(samples)]
    assert store.read_samples(["big"], T0) == [newest[:MAX_SAMPLES]]
    store.add_samples([Sample("big", T0 + 9999, 5, 6)], keep=2, ttl_s=60, now=T0)
    assert store.read_samples(["big"], T0) == [[(5, 6), newest[0]]]
    # Least recently written first out: "k0" was resized after the rest were written.
    keys = [Sample(f"k{i}", T0, i, 0) for i in range(MAX_SAMPLE_KEYS)]
    store.add_samples(keys, keep=2, ttl_s=600, now=T0)
    store.add_samples([Sample("k0", T0, 9, 0)], keep=4, ttl_s=600, now=T0)
    store.add_samples([Sample("new", T0, 7, 0)], keep=2, ttl_s=600, now=T0)
    assert store.read_samples(["k0", "k1", "k2", "new"], T0) == [[(9, 0), (0, 0)], [], [(2, 0)], [(7, 0)]]


def test_a_ring_counts_the_61_sub_buckets_up_to_its_newest_as_a_sum_over_them_would() -> None:
    # The ring keeps counts only from its oldest written sub-bucket that still counts to its newest
    # written one: against a dict of every sub-bucket, through gaps, late spend and long idle times.
    rng = random.Random(61)
    ring, model = _Ring(60.0), dict[int, list[int]]()
    last = -1
    now = T0
    for _ in range(3000):
        now += rng.choice((0.0, 1.0, 59.0, 60.0, 600.0, 3000.0, 4000.0))
        if rng.random() < 0.7:
            ts = now - rng.choice((0.0, 30.0, 120.0, 1800.0, 3600.0, 3660.0, 7200.0))
            nanos, tokens = rng.randrange(1000), rng.randrange(100)
            assert ring.add(ts, nanos, tokens) == 0
            i = int(ts // 60.0)
            last = max(last, i)
            if i > last - 61:
                counts = model.setdefault(i, [0, 0, 0])
                counts[0], counts[1], counts[2] = counts[0] + nanos, counts[1] + tokens, counts[2] + 1
        last = max(last, int(now // 60.0))
        counting = {i: counts for i, counts in model.items() if last - 61 < i <= last}
        expected = [sum(counts[field] for counts in counting.values()) for field in range(3)]
        assert list(ring.read_raw(now)) == expected
        assert ring.sub_buckets(now) == tuple(
            SubBucket(i, *counts) for i, counts in sorted(counting.items()) if any(counts)
        )
        assert len(ring) <= 5 + 3 * 61  # the running total, first and last, then at most 61 sub-buckets


def test_a_ring_of_61_sub_buckets_at_the_ceiling_reads_it_and_lets_each_go_in_turn() -> None:
    # The running total is the exact sum (61 times the ceiling fits its int64) and reads as the
    # ceiling; the ring holds the numbers of its first and newest sub-buckets in its own array after it.
    step = 60.0
    ring, first = _Ring(step, T0), int(T0 // step)
    for i in range(61):
        assert ring.add(T0 + i * step, CEILING, CEILING, CEILING) == 3
    assert ring.add(T0, 1, 1, 1) == 3  # saturated: stays at the ceiling
    now = T0 + 60 * step
    assert list(ring.read_raw(now)) == [CEILING] * 3
    assert ring[:5].tolist() == [61 * CEILING] * 3 + [first, first + 60]
    assert ring.sub_buckets(now) == tuple(SubBucket(first + i, CEILING, CEILING, CEILING) for i in range(61))
    assert len(ring) == 5 + 3 * 61
    for gone in range(1, 62):  # each sub-bucket forward lets the oldest go, exactly
        now += step
        assert list(ring.read_raw(now)) == [CEILING if gone < 61 else 0] * 3
        assert ring[:5].tolist() == [(61 - gone) * CEILING] * 3 + [first + gone, first + 60 + gone]
        assert len(ring.sub_buckets(now)) == 61 - gone
    assert ring.add(now, 7, 8) == 0
    assert ring.tolist() == [7, 8, 1, first + 121, first + 121, 7, 8, 1]


def test_rings_of_a_window_share_their_step_and_until_objects_and_the_floats_kept_are_bounded() -> None:
    # Equal floats as one object (`_shared`): 32 bytes a ring each, else. The memo forgets past its bound.
    window = RollingWindow(3600, "1h")
    one, other = _Ring(window.step, T0), _Ring(window.step, T0 + 1)
    assert window.step is not window.step  # a new float each time: the ring keeps a shared one
    assert one.step is other.step
    one.add(T0, 1, 1)
    other.add(T0 + 1, 1, 1)
    assert one.until == other.until
    assert one.until is other.until
    for i in range(2 * _FLOATS_LIMIT):
        assert _shared(i + 0.5) == i + 0.5
        assert len(_FLOATS) <= _FLOATS_LIMIT


def test_a_calendar_buckets_counters_in_one_array_read_as_a_counter_each_would() -> None:
    # Three hundred scopes share the day's array (where most start past 256); some never written
    # read the zeros it starts with, and the next day has no bucket yet. Every read (totals, admit,
    # read_budgets, read_fullest) against a dict of saturating counters, through sums past the ceiling.
    rng = random.Random(3)
    day = CalendarWindow("day", UTC)
    scopes = [f"s{i}" for i in range(320)]
    model = {scope: [0, 0, 0] for scope in scopes}
    store = MemoryStore()
    for n in range(1500):
        scope = rng.choice(scopes[:300])  # s300 to s319: never written
        nanos, tokens = rng.choice((0, 5, CEILING // 2, CEILING)), rng.choice((0, 7, CEILING))
        store.apply([SpendRecord(f"span-{n}", None, (Increment(scope, day, T0, nanos, tokens),), T0 + 86400)], T0)
        counts = model[scope]
        counts[:] = [min(count + added, CEILING) for count, added in zip(counts, (nanos, tokens, 1), strict=True)]
    written = sum(1 for counts in model.values() if counts[2])
    assert 290 < written < 300
    assert len(store) == written + 1500  # counters and span keys
    for now in (T0, T0 + 86400):  # that day's bucket, then a day with none
        spent = model if now == T0 else {scope: [0, 0, 0] for scope in scopes}
        assert store.totals([(scope, day) for scope in scopes], now) == [Counter(*spent[s]) for s in scopes]
        checks = [
            BudgetCheck(scope, day, nanos, tokens, False, calls)
            for scope in scopes
            for nanos, tokens, calls in ((CEILING, None, None), (None, 10**9, None), (None, None, 4))
        ]
        expected = [check_state(check, spent[check.scope], (0, 0), 0, 0) for check in checks]
        assert store.read_budgets(checks, now) == expected
        admitted = store.admit(Admission("d", tuple(checks), 0, 0, now + 60, None, reserve=False), now)
        assert list(admitted.states) == expected
        groups = [checks[kind::3][first : first + size] for kind in range(3) for first, size in ((0, 320), (290, 30))]
        flat = [c for group in groups for c in group]
        assert store.read_fullest(groups, now) == fullest_states(groups, store.read_budgets(flat, now))
    assert store.expire(T0 + 10 * 86400) == written + 1500


def test_a_span_kept_for_ever_is_applied_once() -> None:
    # `dedupe_ttl_s=inf` (the settings allow it) gives every record `dedupe_until=inf`: the span is
    # applied, its retry a duplicate, its child nested, and no expire forgets it.
    store = MemoryStore()
    forever = float("inf")
    assert store.apply([SpendRecord("t1s1", None, (), forever)], 0.0) == [ApplyResult.APPLIED]
    assert store.apply([SpendRecord("t1s2", "t1s1", (), forever)], 0.0) == [ApplyResult.NESTED]
    store.expire(1e15)
    assert store.apply([SpendRecord("t1s1", None, (), forever)], 1e15) == [ApplyResult.DUPLICATE]


def test_a_batch_adds_up_per_counter_what_one_span_at_a_time_adds() -> None:
    """`apply` sums a batch's increments per counter before writing each once: every counter ends as
    when the spans come one by one (late spend, spend older than the window, sums past the ceiling,
    negative amounts, duplicates and nested spans that add nothing)."""
    rng = random.Random(7)
    windows: tuple[Window, ...] = (*WINDOWS, RollingWindow(86400, "24h"), CalendarWindow("hour", UTC))
    huge = 2**53 - 1
    records = []
    for _ in range(400):
        ts = T0 - rng.choice((0, 5, 30, 1800, 3599, 3700, 90_000)) + rng.random()
        nanos = rng.choice((0, -3, 1, 2_000_000, huge // 3, huge, 2**70))
        increments = tuple(
            Increment(f"s{rng.randrange(4)}", window, ts, nanos, rng.choice((0, 7, 1500, -1)))
            for window in rng.sample(windows, rng.randrange(1, len(windows) + 1))
        )
        span = f"span-{rng.randrange(300)}"  # some spans come twice: duplicates add nothing
        parent = f"span-{rng.randrange(300)}" if rng.random() < 0.2 else None  # some are nested
        records.append(SpendRecord(span, parent, increments, T0 + 86400))
    one_by_one, batched = MemoryStore(), MemoryStore()
    results = [one_by_one.apply([record], T0)[0] for record in records]
    assert batched.apply(records, T0) == results
    assert results.count(ApplyResult.APPLIED) > 100
    reads = [(f"s{s}", window) for s in range(4) for window in windows]
    assert batched.totals(reads, T0) == one_by_one.totals(reads, T0)
    rolling = [(scope, window) for scope, window in reads if isinstance(window, RollingWindow)]
    assert batched.read_sub_buckets(rolling, T0) == one_by_one.read_sub_buckets(rolling, T0)
    assert batched.health().saturated > 0
    assert len(batched) == len(one_by_one)


def test_a_ledger_entry_of_another_width_is_refused_before_anything_is_applied() -> None:
    # An hour's rows share one array of counts: an entry of 11 counts would shift every row after it.
    store = MemoryStore()
    hour = int(T0 // 3600 * 3600)
    good = SpendRecord("t1s1", None, (), T0 + 60, ledger=LedgerEntry(hour, "a", (1,) * len(COUNTS), T0 + 3600))
    bad = SpendRecord("t1s2", None, (), T0 + 60, ledger=LedgerEntry(hour, "b", (1,) * 11, T0 + 3600))
    with pytest.raises(ValueError, match="ledger entry"):
        store.apply([good, bad], T0)
    assert store.read_ledger(hour, hour + 3600) == []
    assert store.apply([good], T0) == [ApplyResult.APPLIED]  # not seen before: the batch did nothing
    assert store.read_ledger(hour, hour + 3600) == [(hour, "a", (1,) * len(COUNTS))]
