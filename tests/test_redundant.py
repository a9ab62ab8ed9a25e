"""RedundancyTracker: exact repeat counts and spend, a sliding window, a bounded memory, metrics."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy.calls import ErrorClass, LLMCall, prompt_digest
from otel_puppy.metrics import Metrics
from otel_puppy.redundant import RedundancyTracker, RedundantModel
from otel_puppy.testing import FakeClock, make_call


def call(
    prompt: str | None = "What is the refund policy?",
    *,
    provider: str = "openai",
    model: str = "gpt-4.1",
    error: ErrorClass | None = None,
) -> LLMCall:
    made = make_call(end_s=0, duration_s=0, provider=provider, model=model, error=error)
    return dataclasses.replace(made, prompt_hash=prompt_digest(prompt))


def test_repeats_are_counted_with_their_cost() -> None:
    tracker = RedundancyTracker(FakeClock())
    tracker.observe(
        [
            (call(), 2_800_000),  # first time: a cache would have missed
            (call("What is the  refund\npolicy?"), 2_750_000),  # the same prompt, spaced differently
            (call(), None),  # a repeat that could not be priced: counted, no cost
            (call("Something else"), 1_000),
            (call(model="gpt-4.1-mini"), 500),  # another model: its own cache
            (call(), 3_000_000),
        ]
    )
    assert tracker.summary() == [
        RedundantModel("openai", "gpt-4.1", 3, Decimal("0.00575"), 5),
        RedundantModel("openai", "gpt-4.1-mini", 0, Decimal(0), 1),
    ]
    assert tracker.summary()[0].redundant_ratio == 0.6
    assert len(tracker) == 3


def test_failed_calls_and_calls_without_a_prompt_are_not_counted() -> None:
    tracker = RedundancyTracker(FakeClock())
    tracker.observe(
        [
            (call(error=ErrorClass.RATE_LIMIT), 0),  # a failure has no answer to cache, so it seeds nothing
            (call(), 100),
            (call(error=ErrorClass.SERVER_ERROR), 100),
            (call(None), 100),
            (call(""), 100),
        ]
    )
    assert tracker.summary() == [RedundantModel("openai", "gpt-4.1", 0, Decimal(0), 1)]


def test_the_window_slides_and_expires() -> None:
    clock = FakeClock()
    tracker = RedundancyTracker(clock, window_s=60)
    tracker.observe([(call(), 10)])
    clock.advance(59.9)
    tracker.observe([(call(), 20)])  # within the window: redundant, and the entry is refreshed
    clock.advance(59.9)
    tracker.observe([(call(), 40)])  # 59.9s after the last use: still redundant
    clock.advance(60)
    tracker.observe([(call(), 80)])  # exactly a window after the last use: expired, a miss
    assert tracker.summary() == [RedundantModel("openai", "gpt-4.1", 2, Decimal("6E-8"), 4)]
    clock.advance(60)
    assert len(tracker) == 0


def test_memory_is_bounded_least_recently_used_first() -> None:
    tracker = RedundancyTracker(FakeClock(), max_entries=2)
    tracker.observe([(call("a"), 1), (call("b"), 1)])
    tracker.observe([(call("a"), 10)])  # a hit: `a` becomes the most recently used
    tracker.observe([(call("c"), 1)])  # evicts `b`
    assert len(tracker) == 2
    tracker.observe([(call("b"), 100)])  # forgotten: a miss (and evicts `a`)
    tracker.observe([(call("c"), 1000)])  # remembered: a hit
    assert tracker.summary() == [RedundantModel("openai", "gpt-4.1", 2, Decimal("0.00000101"), 6)]


def test_models_past_the_limit_fold_into_other() -> None:
    tracker = RedundancyTracker(FakeClock(), max_models=2)
    tracker.observe([(call(model=m), 1) for m in ("a", "b", "c", "d", "c")])
    assert [(r.model, r.redundant_requests, r.requests_with_prompt) for r in tracker.summary()] == [
        ("other", 1, 3),
        ("a", 0, 1),
        ("b", 0, 1),
    ]


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        RedundancyTracker(FakeClock(), window_s=0)


def test_metric_samples() -> None:
    registry = CollectorRegistry(auto_describe=True)
    tracker = RedundancyTracker(FakeClock())
    Metrics(registry).add_collector(tracker.collect)
    tracker.observe([(call(), 2_800_000), (call(), 2_800_000), (call(), 1_400_000), (call(provider="anthropic"), 5)])
    openai = {"provider": "openai", "model": "gpt-4.1"}
    assert registry.get_sample_value("otel_puppy_redundant_requests_total", openai) == 2.0
    assert registry.get_sample_value("otel_puppy_redundant_cost_usd_total", openai) == pytest.approx(0.0042, abs=1e-12)
    anthropic = {"provider": "anthropic", "model": "gpt-4.1"}
    assert registry.get_sample_value("otel_puppy_redundant_requests_total", anthropic) == 0.0
    assert registry.get_sample_value("otel_puppy_redundant_cost_usd_total", anthropic) == 0.0
