"""The cost ledger on every store: hourly rows of exact spend by token type, written with the spend in
one atomic step, exactly once under retries, bounded per hour, forgotten after their retention.

gpt-4.1 (genai-prices): $2 per million input tokens, $0.50 cached, $8 output (reasoning too). A call of
10,000 input tokens (4,000 of them cached) and 1,000 output (300 of them reasoning) costs $0.022:
6,000 x $2/M = $0.012 input, 4,000 x $0.5/M = $0.002 cached input, 700 x $8/M = $0.0056 output and
300 x $8/M = $0.0024 reasoning.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client.registry import CollectorRegistry

from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.clock import ManualClock
from otel_puppy.engine import PolicyEngine
from otel_puppy.ledger import COUNTS, MAX_LEDGER_ROWS, OTHER_DIMS, LedgerEntry, decode_dims, encode_dims
from otel_puppy.policies import PolicySet
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import CEILING, ApplyResult, SpendRecord, Store
from otel_puppy.testing import make_call

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
GPT = "9:2000,500,2000,8000,8000,0"  # gpt-4.1's unit prices in nano-USD per token: input .. reasoning, fee


def engine_on(store: Store, **settings: Any) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store="memory://", watch_policies_s=None, allow_no_policies=True, **settings),
        policies=PolicySet(),
        store=store,
        clock=ManualClock(T0),
        registry=CollectorRegistry(auto_describe=True),
    )


def call(engine: PolicyEngine, **fields: Any) -> LLMCall:
    made = make_call(end_s=engine.clock.now(), agent="support", input_tokens=10_000, output_tokens=1_000)
    base = {"cache_read_tokens": 4_000, "reasoning_tokens": 300, "team": "payments", "environment": "prod"}
    return dataclasses.replace(made, **{**base, **fields})


def test_a_call_adds_its_tokens_and_cost_by_type_in_its_hour(store: Store) -> None:
    engine = engine_on(store)
    engine.observe(call(engine))
    engine.observe(call(engine, agent=None, team=None, environment=None))
    rows = store.read_ledger(int(T0), int(T0) + 3600)
    assert sorted(rows) == sorted(
        [
            (
                int(T0),
                encode_dims(("openai", "gpt-4.1", None, "support", "payments", "prod", GPT)),
                (1, 6_000, 12_000_000, 4_000, 2_000_000, 0, 0, 700, 5_600_000, 300, 2_400_000, 0),
            ),
            (
                int(T0),
                encode_dims(("openai", "gpt-4.1", None, None, None, None, GPT)),
                (1, 6_000, 12_000_000, 4_000, 2_000_000, 0, 0, 700, 5_600_000, 300, 2_400_000, 0),
            ),
        ]
    )
    assert store.read_ledger(int(T0) + 3600, int(T0) + 7200) == []
    engine.close()


def test_the_types_add_up_to_the_calls_cost_to_the_nano_dollar(store: Store) -> None:
    """Claude Sonnet 4.5: $3/M input, $0.30 cache reads, $3.75 cache writes, $15/M output; 1,234 input
    tokens of which 333 read and 111 written: the parts round to nano-dollars and still add up."""
    engine = engine_on(store)
    made = call(
        engine,
        provider="anthropic",
        request_model="claude-sonnet-4-5",
        response_model="claude-sonnet-4-5",
        input_tokens=1_234,
        cache_read_tokens=333,
        cache_write_tokens=111,
        output_tokens=77,
        reasoning_tokens=0,
    )
    price = engine.pricer.price(made)
    engine.observe(made)
    ((_, dims, counts),) = store.read_ledger(int(T0), int(T0) + 3600)
    assert decode_dims(dims) == (
        "anthropic",
        "claude-sonnet-4-5",
        None,
        "support",
        "payments",
        "prod",
        "9:3000,300,3750,15000,15000,0",
    )
    assert counts == (1, 790, 2_370_000, 333, 99_900, 111, 416_250, 77, 1_155_000, 0, 0, 0)
    assert price.nanos == 4_041_150
    assert sum(counts[i] for i in (2, 4, 6, 8, 10, 11)) == price.nanos
    engine.close()


def test_a_retried_batch_and_a_nested_span_add_nothing(store: Store) -> None:
    engine = engine_on(store)
    made = call(engine)
    engine.observe_many([made])
    engine.observe_many([made])  # the Collector's retry
    engine.observe(dataclasses.replace(made, span_id=made.span_id + 1, parent_span_id=made.span_id))  # nested
    ((_, _, counts),) = store.read_ledger(int(T0), int(T0) + 3600)
    assert counts[0] == 1
    engine.close()


def test_a_failed_call_is_a_call_without_tokens_or_cost(store: Store) -> None:
    engine = engine_on(store)
    engine.observe(make_call(end_s=T0, agent="support", error=ErrorClass.SERVER_ERROR))
    ((_, dims, counts),) = store.read_ledger(int(T0), int(T0) + 3600)
    assert (decode_dims(dims), counts) == (("openai", "gpt-4.1", None, "support", None, None, ""), (1,) + (0,) * 11)
    engine.close()


def test_an_unpriced_call_is_not_in_the_ledger(store: Store) -> None:
    engine = engine_on(store)
    engine.observe(make_call(end_s=T0, provider="openai", model="no-such-model"))
    assert store.read_ledger(int(T0), int(T0) + 3600) == []
    engine.close()


def test_the_setting_turns_the_ledger_off(store: Store) -> None:
    engine = engine_on(store, ledger=False)
    engine.observe(call(engine))
    assert store.read_ledger(int(T0), int(T0) + 3600) == []
    engine.close()


def record(span: str, hour: int, dims: str, counts: tuple[int, ...], until: float = T0 + 86_400) -> SpendRecord:
    return SpendRecord(span, None, (), T0 + 3600, ledger=LedgerEntry(hour, dims, counts, until))


ONE = (1, 10, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def test_rows_per_hour_are_bounded_and_the_rest_folded_into_other(store: Store) -> None:
    hour = int(T0)
    records = [
        record(f"s{i}", hour, encode_dims(("p", f"m{i}", None, None, None, None, "")), ONE)
        for i in range(MAX_LEDGER_ROWS)
    ]
    assert store.apply(records, T0) == [ApplyResult.APPLIED] * MAX_LEDGER_ROWS
    late = [
        record("new-1", hour, encode_dims(("p", "new-1", None, None, None, None, "")), ONE),
        record("new-2", hour, encode_dims(("p", "new-2", None, None, None, None, "")), ONE),
        record("old", hour, encode_dims(("p", "m0", None, None, None, None, "")), ONE),  # a row it has
        record("next-hour", hour + 3600, encode_dims(("p", "new-1", None, None, None, None, "")), ONE),
    ]
    store.apply(late, T0)
    rows = {(h, dims): counts for h, dims, counts in store.read_ledger(hour, hour + 7200)}
    assert len([key for key in rows if key[0] == hour]) == MAX_LEDGER_ROWS + 1
    assert rows[(hour, OTHER_DIMS)] == (2, 20, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert rows[(hour, encode_dims(("p", "m0", None, None, None, None, "")))] == (2, 20, 40) + (0,) * 9
    assert rows[(hour + 3600, encode_dims(("p", "new-1", None, None, None, None, "")))] == ONE
    assert sum(counts[0] for counts in rows.values()) == MAX_LEDGER_ROWS + 4  # every call counted, once


def test_counts_saturate_at_the_ceiling(store: Store) -> None:
    dims = encode_dims(("p", "m", None, None, None, None, ""))
    huge = (1, CEILING, CEILING - 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    store.apply([record("a", int(T0), dims, huge), record("b", int(T0), dims, huge)], T0)
    store.apply([record("c", int(T0), dims, (1, 2**80, 5, -3) + (0,) * 8)], T0)  # clamped where it enters
    ((_, _, counts),) = store.read_ledger(int(T0), int(T0) + 3600)
    assert counts == (3, CEILING, CEILING, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert len(counts) == len(COUNTS)


def test_rows_are_forgotten_after_their_retention(store: Store, tmp_path: Path) -> None:
    dims = encode_dims(("p", "m", None, None, None, None, ""))
    store.apply([record("a", int(T0), dims, ONE, until=T0 + 7200)], T0)
    store.expire(T0 + 3600)
    assert len(store.read_ledger(int(T0), int(T0) + 3600)) == 1
    if type(store).__name__ == "RedisStore":  # Redis forgets by itself (PEXPIRE), by its own clock
        client = store._client  # type: ignore[attr-defined]
        ttl_ms = client.pttl(f"{store.prefix}:lg:{int(T0)}")  # type: ignore[attr-defined]
        assert 7_100_000 < ttl_ms <= 7_200_000
    else:
        store.expire(T0 + 7200)
        assert store.read_ledger(int(T0), int(T0) + 3600) == []


def test_the_memory_store_keeps_at_most_35_days() -> None:
    from otel_puppy.store.memory import MemoryStore

    store = MemoryStore()
    dims = encode_dims(("p", "m", None, None, None, None, ""))
    store.apply([record("a", int(T0), dims, ONE, until=T0 + 400 * 86_400)], T0)
    store.expire(T0 + 35 * 86_400 - 1)
    assert len(store.read_ledger(int(T0), int(T0) + 3600)) == 1
    store.expire(T0 + 35 * 86_400)
    assert store.read_ledger(int(T0), int(T0) + 3600) == []


def test_engine_totals_equal_the_ledgers(store: Store) -> None:
    engine = engine_on(store)
    calls = [call(engine, agent=f"a{i % 3}", input_tokens=5_000 + i, cache_read_tokens=i) for i in range(50)]
    engine.observe_many(calls)
    total = sum(engine.pricer.price(c).nanos or 0 for c in calls)
    rows = store.read_ledger(int(T0), int(T0) + 3600)
    ledger_nanos = sum(sum(counts[i] for i in (2, 4, 6, 8, 10, 11)) for _, _, counts in rows)
    assert ledger_nanos == total
    assert engine.snapshot().spend("day") == Decimal(total).scaleb(-9)
    engine.close()


def test_a_call_is_filed_under_the_time_its_budgets_use(store: Store) -> None:
    """Its end time; a late one (ended past OTEL_PUPPY_MAX_SPAN_LATENESS_S, an hour) at its arrival."""
    engine = engine_on(store)
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    clock.set(T0 + 5 * 3600 + 30)  # 05:00:30
    engine.observe(dataclasses.replace(call(engine), end_ns=int((T0 + 4 * 3600 + 1800) * 1e9)))  # ended 04:30
    engine.observe(dataclasses.replace(call(engine), end_ns=int((T0 + 2 * 3600) * 1e9)))  # ended 02:00: late
    hours = sorted(hour for hour, _, _ in store.read_ledger(int(T0), int(T0) + 86400))
    assert hours == [int(T0) + 4 * 3600, int(T0) + 5 * 3600]
    engine.close()
