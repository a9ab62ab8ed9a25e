from __future__ import annotations

import dataclasses
import threading
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.model_stats import EXACT_SAMPLES, LATENCY_RELATIVE_ERROR, ModelStat, ModelStats
from otel_puppy.testing import FakeClock, make_call


def call(
    clock: FakeClock,
    model: str = "gpt-4.1",
    *,
    provider: str = "openai",
    latency_ms: int = 1000,
    input_tokens: int = 100,
    output_tokens: int = 50,
    error: ErrorClass | None = None,
    ended_ago_s: float = 0.0,
) -> LLMCall:
    return make_call(
        end_s=clock.now() - ended_ago_s,
        provider=provider,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        error=error,
        duration_s=latency_ms / 1000,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stats(clock: FakeClock) -> ModelStats:
    return ModelStats(clock)


def test_unknown_model_has_no_stats(stats: ModelStats) -> None:
    assert stats.get("openai", "gpt-4.1") is None
    assert stats.all() == []


def test_exact_percentiles_are_nearest_rank(clock: FakeClock, stats: ModelStats) -> None:
    # 100 ms .. 2000 ms, observed out of order
    latencies = [100 * i for i in (7, 3, 20, 1, 12, 5, 18, 9, 2, 14, 16, 4, 11, 6, 19, 8, 13, 10, 17, 15)]
    stats.observe([(call(clock, latency_ms=ms), None) for ms in latencies])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.latency_p50_s, stat.latency_p95_s, stat.latency_p99_s) == (1.0, 1.9, 2.0)


def test_percentiles_of_one_and_three_samples(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock, "a", latency_ms=250), None)])
    stats.observe([(call(clock, "b", latency_ms=ms), None) for ms in (300, 100, 200)])
    a, b = stats.get("openai", "a"), stats.get("openai", "b")
    assert a is not None
    assert b is not None
    assert (a.latency_p50_s, a.latency_p95_s, a.latency_p99_s) == (0.25, 0.25, 0.25)
    assert (b.latency_p50_s, b.latency_p95_s, b.latency_p99_s) == (0.2, 0.3, 0.3)


def test_exact_percentiles_across_buckets(clock: FakeClock, stats: ModelStats) -> None:
    # Each minute (one sub-bucket of 900 s / 15) keeps its samples; the window merges them.
    for ms in (400, 100, 300, 200):
        stats.observe([(call(clock, latency_ms=ms), None)])
        clock.advance(60)
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.requests, stat.latency_p50_s, stat.latency_p95_s) == (4, 0.2, 0.4)


def test_busy_bucket_uses_histogram_within_documented_precision(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock, latency_ms=10 * i), None) for i in range(1, 101)])  # 10 ms .. 1000 ms
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert stat.requests == 100
    for got, exact in ((stat.latency_p50_s, 0.5), (stat.latency_p95_s, 0.95), (stat.latency_p99_s, 0.99)):
        assert abs(got - exact) <= exact * LATENCY_RELATIVE_ERROR
    assert 0.0218 < LATENCY_RELATIVE_ERROR < 0.0220


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4_000_000), min_size=EXACT_SAMPLES + 1, max_size=300))
def test_histogram_percentiles_match_nearest_rank_within_precision(latencies_ms: list[int]) -> None:
    clock = FakeClock()
    stats = ModelStats(clock)
    stats.observe([(call(clock, latency_ms=ms), None) for ms in latencies_ms])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    ordered = sorted(ms / 1000 for ms in latencies_ms)
    for got, percent in ((stat.latency_p50_s, 50), (stat.latency_p95_s, 95), (stat.latency_p99_s, 99)):
        exact = ordered[-(-len(ordered) * percent // 100) - 1]
        assert abs(got - exact) <= exact * LATENCY_RELATIVE_ERROR * (1 + 1e-9)


def test_histogram_percentiles_stay_within_observed_range(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock, latency_ms=500), None) for _ in range(EXACT_SAMPLES * 3)])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.latency_p50_s, stat.latency_p95_s, stat.latency_p99_s) == (0.5, 0.5, 0.5)


def test_percentiles_exact_again_once_busy_bucket_leaves_window(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock, latency_ms=10 * i), None) for i in range(1, 101)])
    clock.advance(840)  # the busy bucket is the oldest live one
    stats.observe([(call(clock, latency_ms=ms), None) for ms in (1230, 1170)])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert stat.requests == 102
    assert stat.latency_p99_s == pytest.approx(1.17, rel=LATENCY_RELATIVE_ERROR)
    clock.advance(60)
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.requests, stat.latency_p50_s, stat.latency_p95_s, stat.latency_p99_s) == (2, 1.17, 1.23, 1.23)


def test_success_rate_counts_every_error_class(clock: FakeClock, stats: ModelStats) -> None:
    errors = [ErrorClass.RATE_LIMIT, ErrorClass.CLIENT_ERROR, ErrorClass.TIMEOUT]
    stats.observe([(call(clock, error=e), 0) for e in errors] + [(call(clock), 1000) for _ in range(5)])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.requests, stat.errors, stat.success_rate) == (8, 3, 0.625)


def test_costs_average_over_priced_calls_only(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe(
        [
            (call(clock, input_tokens=1000, output_tokens=500), 1_000_000),
            (call(clock, input_tokens=300, output_tokens=200), 3_000_000),
            (call(clock, input_tokens=4000, output_tokens=0), None),  # unpriced: not $0
        ]
    )
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert stat.tokens_per_request == 2000.0  # 6000 tokens over 3 requests
    assert stat.cost_per_request_usd == Decimal("0.002")  # $0.004 over 2 priced requests
    assert stat.cost_per_1k_tokens_usd == Decimal("0.002")  # $0.004 over 2000 priced tokens
    assert stat.to_dict() == {
        "provider": "openai",
        "model": "gpt-4.1",
        "requests": 3,
        "errors": 0,
        "success_rate": 1.0,
        "latency_p50_s": 1.0,
        "latency_p95_s": 1.0,
        "latency_p99_s": 1.0,
        "tokens_per_request": 2000.0,
        "cost_per_request_usd": "0.002",
        "cost_per_1k_tokens_usd": "0.002",
    }


def test_costs_none_without_priced_calls(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock), None), (call(clock), None)])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.cost_per_request_usd, stat.cost_per_1k_tokens_usd) == (None, None)
    assert stat.to_dict()["cost_per_request_usd"] is None


def test_priced_calls_without_tokens_have_cost_per_request_only(clock: FakeClock, stats: ModelStats) -> None:
    failed = call(clock, input_tokens=0, output_tokens=0, error=ErrorClass.SERVER_ERROR)
    stats.observe([(failed, 0)])  # providers do not bill failed calls: priced at $0
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.cost_per_request_usd, stat.cost_per_1k_tokens_usd) == (Decimal(0), None)


def test_uneven_cost_division_is_exact_decimal(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock), 1), (call(clock), 0), (call(clock), 0)])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert stat.cost_per_request_usd == Decimal(1) / 3 * Decimal("1e-9")


def test_rolling_expiry_after_window(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock, latency_ms=900), 100)])
    clock.advance(600)
    stats.observe([(call(clock, latency_ms=300), 300)])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.requests, stat.latency_p99_s, stat.cost_per_request_usd) == (2, 0.9, Decimal("2E-7"))
    clock.advance(299)  # 899 s after the first call: still inside the window
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert stat.requests == 2
    clock.advance(1)  # 900 s: the first call's bucket has left
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.requests, stat.latency_p99_s, stat.cost_per_request_usd) == (1, 0.3, Decimal("3E-7"))
    clock.advance(600)
    assert stats.get("openai", "gpt-4.1") is None
    assert stats.all() == []


def test_bucket_slot_reused_after_a_full_turn_of_the_ring(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock, latency_ms=100), 10)])
    clock.advance(900)  # same ring slot, next turn: old data is dropped before new data lands
    stats.observe([(call(clock, latency_ms=200), 20)])
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.requests, stat.latency_p50_s, stat.cost_per_request_usd) == (1, 0.2, Decimal("2E-8"))


def test_calls_count_when_they_ended(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock, ended_ago_s=1000), 1)])  # before the window: dropped
    stats.observe([(call(clock, ended_ago_s=-30), 1)])  # in the future (skew): counted now
    stats.observe([(call(clock, ended_ago_s=830), 1)])  # in the oldest live bucket
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.requests, stats.dropped) == (2, 1)
    clock.advance(60)
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert stat.requests == 1


def test_models_are_keyed_by_provider_and_response_model(clock: FakeClock, stats: ModelStats) -> None:
    answered = dataclasses.replace(make_call(end_s=clock.now(), duration_s=1.0), response_model="gpt-4.1-2025-04-14")
    stats.observe([(answered, None), (call(clock, "gpt-4.1", provider="azure"), None)])
    assert [(s.provider, s.model) for s in stats.all()] == [("azure", "gpt-4.1"), ("openai", "gpt-4.1-2025-04-14")]
    assert stats.get("openai", "gpt-4.1") is None


def test_rankings(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe(
        [
            # fast, expensive, flaky
            (call(clock, "fast", latency_ms=200, input_tokens=1000, output_tokens=0), 5000),
            (call(clock, "fast", latency_ms=300, error=ErrorClass.SERVER_ERROR, input_tokens=0, output_tokens=0), 0),
            # slow, cheap, reliable with more requests
            *[(call(clock, "cheap", latency_ms=3000, input_tokens=1000, output_tokens=0), 1000) for _ in range(4)],
            # middling, unpriced, reliable
            (call(clock, "unpriced", latency_ms=1000), None),
        ]
    )

    def names(ranked: list[ModelStat]) -> list[str]:
        return [s.model for s in ranked]

    assert names(stats.ranking("speed")) == ["fast", "unpriced", "cheap"]
    assert names(stats.ranking("cost")) == ["cheap", "fast", "unpriced"]
    assert names(stats.ranking("reliability")) == ["cheap", "unpriced", "fast"]
    assert [s.cost_per_1k_tokens_usd for s in stats.ranking("cost")] == [Decimal("0.000001"), Decimal("0.000005"), None]
    with pytest.raises(ValueError, match="rank by"):
        stats.ranking("size")  # type: ignore[arg-type]


def test_ranking_ties_break_by_provider_and_model(clock: FakeClock, stats: ModelStats) -> None:
    stats.observe([(call(clock, m, provider=p), 1) for p, m in (("b", "x"), ("a", "y"), ("a", "x"))])
    assert [(s.provider, s.model) for s in stats.ranking("speed")] == [("a", "x"), ("a", "y"), ("b", "x")]


def test_least_recently_observed_model_is_evicted(clock: FakeClock) -> None:
    stats = ModelStats(clock, max_models=2)
    stats.observe([(call(clock, "a"), 1), (call(clock, "b"), 1)])
    stats.observe([(call(clock, "a"), 1)])  # a is now the most recent
    stats.observe([(call(clock, "c"), 1)])
    assert [s.model for s in stats.all()] == ["a", "c"]
    assert stats.evicted == 1


def test_custom_window(clock: FakeClock) -> None:
    stats = ModelStats(clock, window_s=60.0)  # 4 s sub-buckets
    stats.observe([(call(clock), 1)])
    clock.advance(59)
    assert stats.get("openai", "gpt-4.1") is not None
    clock.advance(1)
    assert stats.get("openai", "gpt-4.1") is None


@pytest.mark.parametrize(("window_s", "max_models"), [(0.0, 10), (-1.0, 10), (float("inf"), 10), (60.0, 0)])
def test_invalid_settings(clock: FakeClock, window_s: float, max_models: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        ModelStats(clock, window_s=window_s, max_models=max_models)


def test_concurrent_observers_lose_nothing(clock: FakeClock, stats: ModelStats) -> None:
    batches = [[(call(clock, latency_ms=100 + i), 7) for i in range(50)] for _ in range(8)]

    def feed(batch: list[tuple[LLMCall, int | None]]) -> None:
        for item in batch:
            stats.observe([item])
            stats.get("openai", "gpt-4.1")

    threads = [threading.Thread(target=feed, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stat = stats.get("openai", "gpt-4.1")
    assert stat is not None
    assert (stat.requests, stat.cost_per_request_usd) == (400, Decimal("7E-9"))
    assert stat.latency_p99_s == pytest.approx(0.149, rel=LATENCY_RELATIVE_ERROR)
