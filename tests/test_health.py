"""Health: exact indicators for constructed states, recommendations, and trends over simulated hours."""

from __future__ import annotations

import gc
import json
import weakref
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.engine import TOTAL_SCOPE, PolicyEngine
from otel_puppy.exceptions import StoreError
from otel_puppy.health import (
    HISTORY_HOURS,
    Health,
    HourPoint,
    Indicator,
    Recommendation,
    Trend,
    assess,
    history_of,
)
from otel_puppy.policies import parse_policy_text
from otel_puppy.server.schemas import HealthResponse
from otel_puppy.testing import FakeClock, engine_for_tests, make_call
from otel_puppy.windows import CalendarWindow

T0 = 1_767_225_600.0
"""FakeClock's start: 2026-01-01T00:00:00Z, an hour boundary."""
HOUR = 3600.0
MINUTE = 60.0

PRICES = """
prices:
  - {provider: acme, model: small-1, input_mtok: 1, output_mtok: 0}
  - {provider: acme, model: big-1, input_mtok: 10, output_mtok: 0}
  - {provider: zoomco, model: zoom-1, input_mtok: 1, output_mtok: 0}
  - {provider: slowco, model: slow-2, input_mtok: 1, output_mtok: 0}
"""
"""With 1,000 input tokens: small-1 costs $0.001 a call, big-1 $0.01."""


def make_engine(policies: str = "", **settings: object) -> tuple[PolicyEngine, FakeClock]:
    clock = FakeClock()
    engine = engine_for_tests(parse_policy_text(PRICES + policies, Path("policies/test.yaml")), clock=clock, **settings)
    return engine, clock


def llm_call(
    engine: PolicyEngine,
    provider: str = "acme",
    model: str = "small-1",
    *,
    duration_s: float = 1.0,
    error: ErrorClass | None = None,
    agent: str = "support",
) -> LLMCall:
    """A call that ends now, with 1,000 input tokens (no usage when it failed)."""
    return make_call(
        end_s=engine.clock.now(),
        provider=provider,
        model=model,
        agent=agent,
        output_tokens=0,
        error=error,
        duration_s=duration_s,
    )


def observe(engine: PolicyEngine, count: int, **fields: object) -> None:
    engine.observe_many([llm_call(engine, **fields) for _ in range(count)])  # type: ignore[arg-type]


def indicators(health: Health) -> dict[str, Indicator]:
    return {i.name: i for i in health.indicators}


def at(hours: float) -> datetime:
    return datetime.fromtimestamp(T0 + hours * HOUR, UTC)


# --- indicators -------------------------------------------------------------------------------


def test_a_quiet_engine_is_healthy_with_exact_indicators() -> None:
    engine, _ = make_engine()
    observe(engine, 1)
    health = assess(engine)
    assert health.status == "healthy"
    assert health.at == at(0)
    found = indicators(health)
    assert list(found) == [
        "store",
        "open_breakers",
        "anomalies",
        "budget_utilization",
        "error_rate",
        "unpriced_share",
        "dropped_spans",
        "internal_errors",
    ]
    store = found["store"]
    assert (store.threshold, store.status) == (0.1, "healthy")
    assert store.value is not None
    assert store.message.startswith("state read in ")
    assert found["open_breakers"] == Indicator("open_breakers", 0.0, 0.0, "healthy", "no breaker open")
    assert found["anomalies"] == Indicator("anomalies", 0.0, 0.0, "healthy", "no anomaly firing")
    assert found["budget_utilization"] == Indicator("budget_utilization", 0.0, 0.9, "healthy", "no budget in use")
    assert found["error_rate"] == Indicator(
        "error_rate", 0.0, 0.1, "healthy", "0 of 1 recent model calls failed (0.0%)"
    )
    assert found["unpriced_share"] == Indicator("unpriced_share", 0.0, 0.05, "healthy", "every call was priced")
    assert found["dropped_spans"] == Indicator("dropped_spans", 0.0, 0.0, "healthy", "no span dropped")
    assert found["internal_errors"] == Indicator("internal_errors", 0.0, 0.0, "healthy", "no internal error")
    assert health.recommendations == ()
    assert health.trends == (
        Trend("cost", "stable", 0.0, (HourPoint(at(0), 0.001),)),
        Trend("errors", "stable", 0.0, ()),  # the first sample is only the base of the next one
        Trend("latency", "stable", 0.0, ()),
    )


def test_errors_dropped_spans_and_internal_errors_degrade() -> None:
    engine, _ = make_engine()
    observe(engine, 3)
    observe(engine, 2, error=ErrorClass.SERVER_ERROR)
    engine.metrics.record_spans("dropped", 3)
    engine.metrics.record_internal_error("test")
    health = assess(engine)
    assert health.status == "degraded"
    found = indicators(health)
    assert found["error_rate"] == Indicator(
        "error_rate", 0.4, 0.1, "degraded", "2 of 5 recent model calls failed (40.0%)"
    )
    assert found["dropped_spans"] == Indicator(
        "dropped_spans",
        3.0,
        0.0,
        "degraded",
        "3 spans dropped since start: the span processor's queue was full (raise queue_size)",
    )
    assert found["internal_errors"] == Indicator(
        "internal_errors", 1.0, 0.0, "degraded", "1 internal errors since start; see the service log"
    )
    assert found["unpriced_share"].status == "healthy"  # failed calls without usage cost nothing: priced


def test_a_failing_store_is_unhealthy_and_the_rest_is_still_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = make_engine()
    observe(engine, 1)

    def broken(*args: object) -> object:
        raise StoreError("database is locked")

    monkeypatch.setattr(engine.store, "totals", broken)
    health = assess(engine)
    assert health.status == "unhealthy"
    assert health.indicators[0] == Indicator("store", None, 0.1, "unhealthy", "store failed: database is locked")
    assert [i.name for i in health.indicators[1:]] == ["unpriced_share", "dropped_spans", "internal_errors"]
    assert health.trend("cost") == Trend("cost", "stable", 0.0, ())
    assert json.loads(json.dumps(health.to_dict()))["indicators"][0]["value"] is None


BUDGET = """
budgets:
  - name: org-daily
    limit_usd: 0.01
    window: day
    action: deny
  - name: per-agent
    per: [agent]
    limit_usd: 0.004
    window: day
    action: {degrade: small-1}
  - name: shadowed
    limit_usd: 0.001
    window: day
    action: deny
    shadow: true
"""


def test_budget_at_90_percent_degrades_and_exhausted_deny_budget_is_unhealthy() -> None:
    engine, _ = make_engine(BUDGET)
    for agent in ("a", "b", "c"):
        observe(engine, 3, agent=agent)  # $0.003 each agent, $0.009 in all: 90% of org-daily
    health = assess(engine)
    assert health.status == "degraded"
    assert indicators(health)["budget_utilization"] == Indicator(
        "budget_utilization", 0.9, 0.9, "degraded", "fullest: org-daily at 90% of its day limit; 1 over 90%"
    )
    assert health.recommendations == (
        Recommendation(
            "budget",
            "budget org-daily is at 90% of its day limit: it resets at 2026-01-02T00:00:00+00:00; "
            "slow down or raise its limit before it runs out",
        ),
    )

    observe(engine, 2, agent="a")  # $0.011 of $0.01: exhausted; agent a at $0.005 of $0.004: degrading
    health = assess(engine)
    assert health.status == "unhealthy"
    assert indicators(health)["budget_utilization"] == Indicator(
        "budget_utilization",
        1.25,
        0.9,
        "unhealthy",
        "fullest: per-agent for agent=a at 125% of its day limit; 2 over 90%, 1 denying calls",
    )
    assert [r.message for r in health.recommendations] == [
        "budget per-agent for agent=a is at 125% of its day limit: "
        "calls are degraded to small-1 until it resets at 2026-01-02T00:00:00+00:00",
        "budget org-daily is at 110% of its day limit: calls are denied until it resets at "
        "2026-01-02T00:00:00+00:00; raise its limit or shed low-priority work",
    ]


BREAKERS = """
breakers:
  - name: providers
    per: [provider]
    failure_threshold: 2
    recovery_timeout: 30s
    success_threshold: 1
    half_open_max_calls: 1
"""
ROUTING = """
routing:
  - name: default
    strategy: cheapest
    candidates: [slowco:slow-2, acme:small-1]
"""


def test_open_breaker_names_the_routing_fallback() -> None:
    engine, _ = make_engine(BREAKERS + ROUTING)
    observe(engine, 1, provider="acme")
    observe(engine, 2, provider="slowco", model="slow-2", error=ErrorClass.TIMEOUT)
    health = assess(engine)
    assert health.status == "degraded"
    assert indicators(health)["open_breakers"] == Indicator(
        "open_breakers", 1.0, 0.0, "degraded", "calls are refused or probed: providers for slowco is open"
    )
    (advice,) = [r for r in health.recommendations if r.kind == "breaker"]
    assert advice == Recommendation(
        "breaker",
        "breaker providers for slowco is open until 2026-01-01T00:00:30+00:00: "
        "routing default falls back to acme:small-1 meanwhile",
        provider="slowco",
        alternative="acme:small-1",
    )


def test_open_breaker_without_routing_names_a_reliable_model_seen_recently() -> None:
    engine, _ = make_engine(BREAKERS)
    observe(engine, 2, provider="slowco", model="slow-2", error=ErrorClass.TIMEOUT)
    (advice,) = assess(engine).recommendations
    assert advice.message == (
        "breaker providers for slowco is open until 2026-01-01T00:00:30+00:00: "
        "add a routing policy with a candidate on another provider to fall back to"
    )
    observe(engine, 1, provider="zoomco", model="zoom-1")
    (advice,) = assess(engine).recommendations
    assert advice == Recommendation(
        "breaker",
        "breaker providers for slowco is open until 2026-01-01T00:00:30+00:00: "
        "fall back to zoomco:zoom-1 (add it as a routing candidate beside slowco)",
        provider="slowco",
        alternative="zoomco:zoom-1",
    )


ANOMALY = """
anomalies:
  - name: spend-spike
    signal: cost_rate
    per: [provider]
    interval: 1m
    baseline: 10m
    min_samples: 5
    cooldown: 5m
    threshold: {zscore: 4}
    action: warn
"""


def test_firing_cost_anomaly_names_the_provider_and_its_top_spending_model() -> None:
    engine, clock = make_engine(ANOMALY)
    for _ in range(5):  # $0.011 a minute: one big-1 and one small-1 call
        observe(engine, 1, model="big-1")
        observe(engine, 1, model="small-1")
        clock.advance(MINUTE)
    observe(engine, 6, model="big-1")  # $0.061 in the sixth minute
    observe(engine, 1, model="small-1")
    clock.advance(MINUTE)
    engine.decide(provider="acme", model="small-1")  # closes the interval
    (anomaly,) = engine.snapshot().anomalies
    assert anomaly.firing
    assert anomaly.deviation_pct == pytest.approx(454.5454545)
    health = assess(engine)
    assert indicators(health)["anomalies"] == Indicator(
        "anomalies", 1.0, 0.0, "degraded", "firing: spend-spike (cost_rate) for provider=acme"
    )
    assert health.recommendations == (
        Recommendation(
            "anomaly",
            "spend on acme is 455% above its baseline: check big-1 callers",
            provider="acme",
            model="big-1",
        ),
    )


def test_slow_models_get_a_faster_candidate_same_provider_first() -> None:
    engine, _ = make_engine()
    observe(engine, 3, model="big-1", duration_s=12.3)
    observe(engine, 3, model="small-1", duration_s=1.2)
    observe(engine, 3, provider="zoomco", model="zoom-1", duration_s=0.5)
    observe(engine, 3, provider="slowco", model="slow-2", duration_s=15.0)
    health = assess(engine)
    assert health.status == "healthy"  # slowness is advice, not an indicator
    assert health.recommendations == (
        Recommendation(
            "latency",
            "slow-2 p95 15.0 s: zoomco:zoom-1 answers in 0.5 s at p95",
            provider="slowco",
            model="slow-2",
            alternative="zoomco:zoom-1",
        ),
        Recommendation(
            "latency",
            "big-1 p95 12.3 s: small-1 answers in 1.2 s at p95",
            provider="acme",
            model="big-1",
            alternative="acme:small-1",
        ),
    )


def test_slow_model_without_a_faster_one() -> None:
    engine, _ = make_engine()
    observe(engine, 2, model="big-1", duration_s=11.0)
    assert assess(engine).recommendations == (
        Recommendation(
            "latency",
            "big-1 p95 11.0 s: no faster model seen recently; add one as a routing candidate",
            provider="acme",
            model="big-1",
        ),
    )


def test_rising_latency_gets_a_faster_candidate() -> None:
    engine, clock = make_engine()
    assess(engine)
    for duration in (2.0, 2.0, 4.0):  # hours 0, 1, 2: big-1 twice as slow in the third
        clock.advance(50 * MINUTE)
        observe(engine, 2, model="big-1", duration_s=duration)
        observe(engine, 2, model="small-1", duration_s=0.5)
        clock.advance(10 * MINUTE)
        health = assess(engine)
    assert health.trend("latency") == Trend(
        "latency",
        "up",
        80.0,  # the mean over both models: 1.25 s, 1.25 s, then 2.25 s
        (HourPoint(at(0), 1.25), HourPoint(at(1), 1.25), HourPoint(at(2), 2.25)),
    )
    assert health.recommendations == (
        Recommendation(
            "latency",
            "big-1 latency is up 100% on the hours before (p95 4.0 s): small-1 answers in 0.5 s at p95",
            provider="acme",
            model="big-1",
            alternative="acme:small-1",
        ),
    )


def test_unpriced_model_gets_a_prices_entry_until_it_has_one() -> None:
    engine, _ = make_engine()
    observe(engine, 3)
    observe(engine, 1, model="mystery-9")
    health = assess(engine)
    found = indicators(health)["unpriced_share"]
    assert (found.value, found.status) == (0.25, "degraded")
    assert health.recommendations == (
        Recommendation(
            "pricing",
            "1 call to acme:mystery-9 could not be priced (unknown model): add a prices: entry "
            "{provider: acme, model: mystery-9, input_mtok: ..., output_mtok: ...} to the policy files",
            provider="acme",
            model="mystery-9",
        ),
    )
    priced = PRICES + "  - {provider: acme, model: mystery-9, input_mtok: 1, output_mtok: 1}\n"
    engine.use_policies(parse_policy_text(priced, Path("policies/test.yaml")))
    health = assess(engine)
    assert health.recommendations == ()
    assert indicators(health)["unpriced_share"].value == 0.25  # counted since start


# --- trends -----------------------------------------------------------------------------------


def run_hours(engine: PolicyEngine, clock: FakeClock, calls_per_hour: list[int]) -> Health:
    """Assess at the start of every hour; the hour's calls come at half past."""
    assess(engine)
    for count in calls_per_hour:
        clock.advance(30 * MINUTE)
        if count:
            observe(engine, count)
        clock.advance(30 * MINUTE)
        health = assess(engine)
    return health


def test_cost_trend_up_after_a_costlier_hour_with_the_hourly_breakdown() -> None:
    engine, clock = make_engine()
    run_hours(engine, clock, [2, 2, 6])  # $0.002, $0.002, then $0.006
    clock.advance(30 * MINUTE)
    observe(engine, 1)  # 03:30: the store expires hour 0's counter (kept until 03:00)
    assert engine.store.totals([(TOTAL_SCOPE, CalendarWindow("hour", engine.settings.zone))], T0)[0].nanos == 0
    health = assess(engine)
    assert health.trend("cost") == Trend(
        "cost",
        "up",
        200.0,
        (HourPoint(at(0), 0.002), HourPoint(at(1), 0.002), HourPoint(at(2), 0.006), HourPoint(at(3), 0.001)),
    )
    # every call took 1 s and none failed: hourly values, stable
    assert health.trend("errors") == Trend("errors", "stable", 0.0, tuple(HourPoint(at(h), 0.0) for h in range(4)))
    assert health.trend("latency") == Trend("latency", "stable", 0.0, tuple(HourPoint(at(h), 1.0) for h in range(4)))


@pytest.mark.parametrize(
    ("calls", "direction", "change_pct"),
    [
        ([4, 4, 2], "down", -50.0),
        ([10, 10, 11], "stable", 10.0),
        ([10, 10, 13], "up", 30.0),
        ([10, 10, 12], "stable", 20.0),  # up means more than +20%
        ([5, 15, 13], "up", 30.0),  # against the mean of every hour before
        ([0, 0, 0], "stable", 0.0),
        ([0, 0, 2], "up", 100.0),  # against nothing: up by 100%
    ],
)
def test_cost_direction_compares_the_last_complete_hour_with_the_mean_before(
    calls: list[int], direction: str, change_pct: float
) -> None:
    engine, clock = make_engine()
    trend = run_hours(engine, clock, calls).trend("cost")
    assert (trend.direction, trend.change_pct) == (direction, change_pct)
    assert [p.value for p in trend.hourly] == [n / 1000 for n in calls] + [0.0]  # and the hour in progress


def test_little_data_is_stable() -> None:
    engine, clock = make_engine()
    health = run_hours(engine, clock, [1])  # one complete hour
    assert [(t.name, t.direction, t.change_pct) for t in health.trends] == [
        ("cost", "stable", 0.0),
        ("errors", "stable", 0.0),
        ("latency", "stable", 0.0),
    ]
    assert health.trend("cost").hourly == (HourPoint(at(0), 0.001), HourPoint(at(1), 0.0))


def test_error_trend_is_the_share_of_failed_calls_per_hour() -> None:
    engine, clock = make_engine()
    assess(engine)
    for failed in (1, 1, 3):
        clock.advance(30 * MINUTE)
        observe(engine, 4 - failed)
        observe(engine, failed, error=ErrorClass.SERVER_ERROR)
        clock.advance(30 * MINUTE)
        health = assess(engine)
    assert health.trend("errors") == Trend(
        "errors", "up", 200.0, (HourPoint(at(0), 0.25), HourPoint(at(1), 0.25), HourPoint(at(2), 0.75))
    )


def test_growth_between_distant_samples_is_spread_over_the_hours() -> None:
    engine, clock = make_engine()
    assess(engine)
    clock.advance(30 * MINUTE)
    observe(engine, 2, error=ErrorClass.SERVER_ERROR)
    observe(engine, 2)
    clock.advance(90 * MINUTE)  # one sample two hours after the first: half of it in each hour
    history = engine.history
    history.record(clock.now())
    trends, _ = history.trends(clock.now())
    errors = next(t for t in trends if t.name == "errors")
    assert errors.hourly == (HourPoint(at(0), 0.5), HourPoint(at(1), 0.5))


def test_prometheus_scrapes_feed_the_history_between_assessments() -> None:
    engine, clock = make_engine()
    assess(engine)  # begins the history; from now on scrapes sample it
    for hour in range(3):
        clock.advance(30 * MINUTE)
        observe(engine, 1, duration_s=float(hour + 1))
        clock.advance(30 * MINUTE)
        engine.registry.get_sample_value("otel_puppy_llm_requests_total")  # a scrape
    health = assess(engine)
    assert health.trend("latency").hourly == (HourPoint(at(0), 1.0), HourPoint(at(1), 2.0), HourPoint(at(2), 3.0))
    assert health.trend("latency").direction == "up"
    assert [p.value for p in health.trend("cost").hourly] == [0.001, 0.001, 0.001, 0.0]


def test_history_is_bounded_per_engine_and_dies_with_it() -> None:
    engine, clock = make_engine()
    clock.advance(30 * MINUTE)
    for _ in range(HISTORY_HOURS + 10):  # a call and an assessment at half past every hour
        observe(engine, 1)
        assess(engine)
        clock.advance(HOUR)
    observe(engine, 1)
    health = assess(engine)
    for trend in health.trends:
        assert len(trend.hourly) == HISTORY_HOURS + 1
        assert trend.hourly[-1].hour == at(HISTORY_HOURS + 10)
    assert history_of(engine) is history_of(engine)
    other, _ = make_engine()
    assert history_of(other) is not history_of(engine)

    ref = weakref.ref(engine)
    engine.close()
    del engine, health
    gc.collect()
    assert ref() is None


# --- JSON -------------------------------------------------------------------------------------


def _walk(value: object) -> list[object]:
    if isinstance(value, dict):
        return [item for v in value.values() for item in _walk(v)]
    if isinstance(value, list):
        return [item for v in value for item in _walk(v)]
    return [value]


def test_to_dict_is_json_ready() -> None:
    engine, clock = make_engine(BUDGET + BREAKERS)
    run_hours(engine, clock, [1, 3])
    observe(engine, 2, provider="slowco", model="slow-2", error=ErrorClass.TIMEOUT)
    observe(engine, 1, model="mystery-9", duration_s=12.0)
    data = assess(engine).to_dict()
    assert all(isinstance(v, str | int | float | bool | None) for v in _walk(data))
    assert not any(isinstance(v, Decimal) for v in _walk(data))
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    HealthResponse.model_validate(data)
    assert set(data) == {"status", "at", "indicators", "recommendations", "trends"}
    assert data["at"] == "2026-01-01T02:00:00+00:00"
    recommendations = data["recommendations"]
    trends = data["trends"]
    assert isinstance(recommendations, list)
    assert isinstance(trends, list)
    assert {r["kind"] for r in recommendations} == {"budget", "breaker", "latency", "pricing"}
    cost = trends[0]
    assert cost == {
        "name": "cost",
        "direction": "up",
        "change_pct": 200.0,
        "hourly": [
            {"hour": "2026-01-01T00:00:00+00:00", "value": 0.001},
            {"hour": "2026-01-01T01:00:00+00:00", "value": 0.003},
            {"hour": "2026-01-01T02:00:00+00:00", "value": 0.0},
        ],
    }


def test_scrapes_before_the_first_assessment_sample_nothing() -> None:
    engine, clock = make_engine()
    observe(engine, 1)
    clock.advance(HOUR)
    engine.registry.get_sample_value("otel_puppy_llm_requests_total")  # a scrape
    health = assess(engine)  # the history begins here: its first sample is only a base
    assert health.trend("errors").hourly == ()
    assert health.trend("cost").hourly == (HourPoint(at(1), 0.0),)
    assert history_of(engine) is engine.history
