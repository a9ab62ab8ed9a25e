"""Engine and memory store: exactly-once spend, nested instrumentations, windows."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from otel_puppy.calls import LLMCall, extract_call
from otel_puppy.engine import PolicyEngine
from otel_puppy.store import ApplyResult
from otel_puppy.testing import FakeClock, engine_for_tests, make_span
from otel_puppy.windows import CalendarWindow, RollingWindow, parse_window

CALL = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}


def one_call(**kwargs: Any) -> LLMCall:
    c = extract_call(make_span(CALL, **kwargs))
    assert c is not None
    return c


def test_the_same_span_twice_is_counted_once(engine: PolicyEngine) -> None:
    c = one_call()
    first, second = engine.observe_many([c, c])
    assert (first.result, second.result) == (ApplyResult.APPLIED, ApplyResult.DUPLICATE)
    assert engine.observe(c).result is ApplyResult.DUPLICATE
    assert engine.snapshot().spend("day") * 10**9 == 2_800_000


def test_nested_instrumentation_counts_once_whichever_span_arrives_first(engine: PolicyEngine) -> None:
    outer = one_call(trace_id=7, span_id=100)
    inner = one_call(trace_id=7, span_id=101, parent_span_id=100)
    assert [o.result for o in engine.observe_many([inner, outer])] == [ApplyResult.APPLIED, ApplyResult.NESTED]
    outer2 = one_call(trace_id=8, span_id=100)
    inner2 = one_call(trace_id=8, span_id=101, parent_span_id=100)
    assert [o.result for o in engine.observe_many([outer2, inner2])] == [ApplyResult.APPLIED, ApplyResult.NESTED]
    assert engine.snapshot().spend("day") * 10**9 == 2 * 2_800_000


def test_sibling_calls_under_one_agent_run_both_count(engine: PolicyEngine) -> None:
    a = one_call(trace_id=9, span_id=201, parent_span_id=200)
    b = one_call(trace_id=9, span_id=202, parent_span_id=200)
    assert [o.result for o in engine.observe_many([a, b])] == [ApplyResult.APPLIED, ApplyResult.APPLIED]


def test_calendar_day_rolls_over_at_local_midnight() -> None:
    paris = ZoneInfo("Europe/Paris")
    clock = FakeClock(datetime(2026, 3, 14, 23, 30, tzinfo=paris).timestamp())
    engine = engine_for_tests(clock=clock, timezone="Europe/Paris")
    start_ns = int(clock.now() * 1e9)
    engine.observe(one_call(start_ns=start_ns, duration_s=1))
    assert engine.snapshot().spend("day") * 10**9 == 2_800_000
    clock.advance(31 * 60)  # 00:01 local: a new day
    assert engine.snapshot().spend("day") == 0
    assert engine.snapshot().spend("24h") * 10**9 == 2_800_000
    engine.close()


def test_windows_across_a_dst_change() -> None:
    paris = ZoneInfo("Europe/Paris")
    day = CalendarWindow("day", paris)
    # 2026-03-29: clocks go from 02:00 to 03:00, so that day has 23 hours
    start, end = day.bounds(datetime(2026, 3, 29, 12, tzinfo=paris).timestamp())
    assert end - start == 23 * 3600
    start, end = day.bounds(datetime(2026, 10, 25, 12, tzinfo=paris).timestamp())
    assert end - start == 25 * 3600
    hour = CalendarWindow("hour", paris)
    # the repeated 02:00-03:00 hour on 2026-10-25 is two distinct buckets
    first = datetime(2026, 10, 25, 0, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    second = first + 3600
    assert hour.bucket(first).key != hour.bucket(second).key
    month = CalendarWindow("month", paris)
    start, end = month.bounds(datetime(2026, 2, 10, tzinfo=paris).timestamp())
    assert (datetime.fromtimestamp(start, paris).day, datetime.fromtimestamp(end, paris).month) == (1, 3)


def test_rolling_window_forgets_old_sub_buckets() -> None:
    clock = FakeClock()
    engine = engine_for_tests(clock=clock)
    engine.observe(one_call(start_ns=int((clock.now() - 1) * 1e9), duration_s=0.5))
    clock.advance(3599)
    assert engine.snapshot().spend("1h") * 10**9 == 2_800_000
    clock.advance(61)
    assert engine.snapshot().spend("1h") == 0
    engine.close()


def test_parse_window() -> None:
    utc = ZoneInfo("UTC")
    assert parse_window("day", utc) == CalendarWindow("day", utc)
    assert parse_window("15m", utc) == RollingWindow(900, "15m")
    assert parse_window("7d", utc).step == 7 * 86400 / 60  # type: ignore[union-attr]
    for bad in ("fortnight", "0m", "100d", "1y"):
        with pytest.raises(ValueError, match=bad):
            parse_window(bad, utc)


def test_store_expires_old_counters_and_dedupe_keys() -> None:
    clock = FakeClock()
    engine = engine_for_tests(clock=clock, dedupe_ttl_s=600)
    c = one_call(start_ns=int(clock.now() * 1e9) - 10**9, duration_s=0.5)
    engine.observe(c)
    clock.advance(3 * 86400)
    engine.observe(one_call(start_ns=int(clock.now() * 1e9) - 10**9, duration_s=0.5))  # triggers expiry
    assert f"{c.span_id:016x}" not in str(engine._store._seen)  # type: ignore[attr-defined]
    store = engine._store
    # the first call's hour and day buckets are gone; the new call's remain, and one ring per rolling window
    counters = [(unit, start, scope) for (unit, start), (scopes, _) in store._calendar.items() for scope in scopes]  # type: ignore[attr-defined]
    assert sorted(unit for unit, _, _ in counters) == ["day", "hour"]
    assert all(start >= clock.now() - 86400 for _, start, _ in counters)
    rings = sorted((scope, label) for label, scopes in store._rings.items() for scope in scopes)  # type: ignore[attr-defined]
    assert rings == [("total", "1h"), ("total", "24h")]
    engine.close()


def test_a_span_naming_itself_its_parent_is_counted(engine: PolicyEngine) -> None:
    # Its parent key is its own span key, which the store has just remembered: without the guard
    # the span was NESTED under itself and never counted (any sender could spend unbudgeted).
    c = one_call(trace_id=10, span_id=300, parent_span_id=300)
    assert engine.observe(c).result is ApplyResult.APPLIED
    assert engine.observe(c).result is ApplyResult.DUPLICATE
    assert engine.snapshot().spend("day") * 10**9 == 2_800_000
