"""In-process with a shared Redis store: the store goes away and comes back under a real TracerProvider.

The span processor keeps what the store could not take (bounded, the oldest dropped and
counted), `decide()` answers by the fail mode, and once Redis is back every held span is
applied exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry

from otel_puppy.calls import ErrorClass
from otel_puppy.decision import Action
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import StoreError
from otel_puppy.policies.loader import parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import ApplyResult
from otel_puppy.store.redis import RedisStore
from otel_puppy.testing import FakeClock, make_call
from tests._redis import RedisServer
from tests._service import NANOS

POLICIES = "budgets:\n  - {name: openai-daily, match: {provider: openai}, limit_usd: 100, window: day, action: deny}\n"
ATTRIBUTES: dict[str, AttributeValue] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=True).start()
    yield server
    server.stop()


def engine_on(redis: RedisServer, *, fail_open: bool, queue_size: int = 20_000) -> PolicyEngine:
    settings = PuppySettings.load(store=redis.url, fail_open=fail_open, queue_size=queue_size, timezone="UTC")
    return PolicyEngine(
        settings,
        policies=parse_policy_text(POLICIES, Path("policies.yaml")),
        store=RedisStore.from_url(redis.url),
        registry=CollectorRegistry(auto_describe=True),
    )


def calls(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("app")
    for _ in range(count):
        with tracer.start_as_current_span("chat gpt-4.1", kind=SpanKind.CLIENT, attributes=ATTRIBUTES):
            pass


def spent(engine: PolicyEngine) -> int:
    [hit] = engine.snapshot().budgets
    assert hit.spent_usd is not None
    return int(hit.spent_usd * 10**9)


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail open", "fail closed"])
def test_spans_wait_for_redis_and_count_once_when_it_is_back(redis: RedisServer, fail_open: bool) -> None:
    engine = engine_on(redis, fail_open=fail_open)
    provider = TracerProvider()
    provider.add_span_processor(engine.span_processor())
    registry = engine.registry
    calls(provider, 10)
    assert engine.span_processor().force_flush() is True
    assert spent(engine) == 10 * NANOS

    redis.stop()
    calls(provider, 25)
    assert engine.span_processor().force_flush(timeout_millis=5_000) is False  # held, not applied
    assert registry.get_sample_value("otel_puppy_spans_buffered") == 25.0
    began = time.monotonic()
    decision = engine.decide(provider="openai", model="gpt-4.1")
    assert time.monotonic() - began < 1.0  # the store's timeout, or at once within its back-off
    assert decision.action is (Action.ALLOW if fail_open else Action.DENY)
    [reason] = decision.reasons
    assert (reason.kind, reason.message) == (
        "internal",
        f"the state store is unavailable; failing {'open' if fail_open else 'closed'}",
    )
    assert registry.get_sample_value("otel_puppy_store_errors_total", {"operation": "decide"}) == 1.0
    assert registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "engine.decide"}) is None

    redis.start()  # the append-only file brings back what Redis acknowledged
    deadline = time.monotonic() + 10
    while not engine.span_processor().force_flush(timeout_millis=5_000):
        assert time.monotonic() < deadline, "held spans were not applied after Redis came back"
    assert registry.get_sample_value("otel_puppy_spans_buffered") == 0.0
    assert spent(engine) == 35 * NANOS
    assert registry.get_sample_value("otel_puppy_spans_total", {"result": "applied"}) == 35.0
    assert engine.decide(provider="openai", model="gpt-4.1").action is Action.ALLOW
    provider.shutdown()
    engine.close()


def test_what_is_held_is_bounded_by_the_queue_size_and_the_overflow_is_counted(redis: RedisServer) -> None:
    engine = engine_on(redis, fail_open=True, queue_size=8)
    provider = TracerProvider()
    provider.add_span_processor(engine.span_processor())
    redis.stop()
    for _ in range(4):  # 4 x 5 spans, each batch flushed: 8 held, 12 dropped oldest first
        calls(provider, 5)
        engine.span_processor().force_flush(timeout_millis=5_000)
    registry = engine.registry
    assert registry.get_sample_value("otel_puppy_spans_buffered") == 8.0
    assert registry.get_sample_value("otel_puppy_spans_total", {"result": "dropped"}) == 12.0
    redis.start()
    deadline = time.monotonic() + 10
    while not engine.span_processor().force_flush(timeout_millis=5_000):
        assert time.monotonic() < deadline
    assert spent(engine) == 8 * NANOS
    provider.shutdown()
    engine.close()


BREAKERS = (
    "breakers:\n  - {name: providers, failure_threshold: 3, recovery_timeout: 30s, success_threshold: 1,"
    " half_open_max_calls: 1}\n"
)


def replica(redis: RedisServer, clock: FakeClock) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store=redis.url, timezone="UTC"),
        policies=parse_policy_text(BREAKERS, Path("policies.yaml")),
        store=RedisStore.from_url(redis.url),
        clock=clock,
        registry=CollectorRegistry(auto_describe=True),
    )


def test_a_breaker_one_replica_opens_is_open_on_the_other_after_a_sync(redis: RedisServer) -> None:
    clock = FakeClock()
    a, b = replica(redis, clock), replica(redis, clock)
    a.observe_many([make_call(end_s=clock.now(), error=ErrorClass.SERVER_ERROR) for _ in range(3)])
    assert a.decide(provider="openai", model="gpt-4.1").action is Action.DENY
    assert b.decide(provider="openai", model="gpt-4.1").action is Action.ALLOW  # not synced yet
    clock.advance(1)
    decision = b.decide(provider="openai", model="gpt-4.1")
    assert decision.action is Action.DENY
    [reason] = decision.reasons
    assert (reason.kind, reason.policy, reason.message) == (
        "breaker",
        "providers",
        "breaker providers: openai is open after 3 failures; retry in 29.0s",
    )
    # b's successful probe closes it (a newer state): a adopts the closed breaker at its next sync
    clock.advance(30)
    assert b.decide(provider="openai", model="gpt-4.1").action is Action.ALLOW
    b.observe_many([make_call(end_s=clock.now())])
    assert [s.state for s in b.snapshot().breakers] == ["closed"]
    clock.advance(1)
    a.observe_many([make_call(end_s=clock.now(), provider="anthropic")])
    assert [(s.provider, s.state) for s in a.snapshot().breakers] == [("openai", "closed"), ("anthropic", "closed")]
    a.close()
    b.close()


def test_a_slow_redis_is_decided_by_the_fail_mode_and_a_late_apply_counts_once(redis: RedisServer) -> None:
    engine = engine_on(redis, fail_open=False)
    calls = [make_call(end_s=time.time()) for _ in range(5)]
    admin = redis.client()
    admin.client_pause(1500, all=True)  # Redis answers nobody for 1.5 s
    began = time.monotonic()
    decision = engine.decide(provider="openai", model="gpt-4.1")
    assert time.monotonic() - began < 1.0  # the 0.5 s socket timeout, not the pause
    assert decision.action is Action.DENY
    assert decision.reasons[0].message == "the state store is unavailable; failing closed"
    # Sent while paused: it times out here, yet Redis runs it once the pause ends (the reply is lost).
    with pytest.raises(StoreError, match="Timeout"):
        engine.observe_many(calls)
    deadline = time.monotonic() + 10
    while True:  # as the span processor retries: the same spans, until the store answers
        try:
            observations = engine.observe_many(calls)
            break
        except StoreError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    # counted once, and reported as applied (not as duplicates of the lost call)
    assert [o.result for o in observations] == [ApplyResult.APPLIED] * 5
    assert spent(engine) == 5 * NANOS
    assert engine.registry.get_sample_value("otel_puppy_spans_total", {"result": "applied"}) == 5.0
    assert (engine.registry.get_sample_value("otel_puppy_store_errors_total", {"operation": "apply"}) or 0.0) >= 1.0
    admin.close()
    engine.close()
