"""Metric names, labels and exact values; the cardinality guard."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from otel_puppy.calls import ErrorClass, extract_call
from otel_puppy.engine import PolicyEngine
from otel_puppy.metrics import CallTally
from otel_puppy.money import nanos_to_float
from otel_puppy.policies.loader import parse_policy_text
from otel_puppy.testing import FakeClock, engine_for_tests, make_call, make_span


def observe(engine: PolicyEngine, **attributes: object) -> None:
    base = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4.1",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 100,
    }
    c = extract_call(make_span({**base, **attributes}, duration_s=0.3))
    assert c is not None
    engine.observe(c)


def test_exposition_names_and_values(engine: PolicyEngine) -> None:
    observe(engine, **{"gen_ai.agent.name": "support", "operation.cost": 0.0030})
    observe(engine, **{"gen_ai.request.model": "mystery-model-9000"})
    text = generate_latest(engine.registry).decode()
    labels = 'agent="support",model="gpt-4.1",provider="openai",service="test-service"'
    assert f"otel_puppy_llm_cost_usd_total{{{labels}}} 0.0028\n" in text
    assert (
        'otel_puppy_llm_requests_total{agent="support",error_class="",model="gpt-4.1",outcome="ok",'
        'provider="openai",service="test-service"} 1.0\n'
    ) in text
    assert f'otel_puppy_llm_tokens_total{{{labels},type="input"}} 1000.0\n' in text
    hist = 'otel_puppy_llm_request_duration_seconds_bucket{agent="support",le="%s",model="gpt-4.1",provider="openai"'
    assert hist % "0.25" + ',service="test-service"} 0.0\n' in text
    assert hist % "0.5" + ',service="test-service"} 1.0\n' in text
    assert (
        'otel_puppy_llm_unpriced_requests_total{agent="",model="mystery-model-9000",provider="openai",'
        'reason="unknown_model",service="test-service"} 1.0\n'
    ) in text
    drift = engine.registry.get_sample_value(
        "otel_puppy_llm_cost_drift_usd_total", {"provider": "openai", "model": "gpt-4.1", "direction": "over"}
    )
    assert drift == 0.0002
    assert "# TYPE otel_puppy_llm_cost_usd_total counter" in text
    assert 'otel_puppy_spans_total{result="applied"} 2.0' in text


def test_cardinality_guard_folds_into_other() -> None:
    engine = engine_for_tests(max_label_values=3)
    for i in range(5):
        observe(engine, **{"gen_ai.agent.name": f"agent-{i}"})
    values = {
        s.labels["agent"] for m in engine.registry.collect() if m.name == "otel_puppy_llm_requests" for s in m.samples
    }
    assert values == {"agent-0", "agent-1", "agent-2", "other"}
    assert engine.registry.get_sample_value("otel_puppy_label_overflow_total", {"label": "agent"}) == 2.0
    engine.close()


def test_user_and_conversation_are_never_labels(engine: PolicyEngine) -> None:
    observe(engine, **{"user.id": "alice", "gen_ai.conversation.id": "c-1"})
    text = generate_latest(engine.registry).decode()
    assert "alice" not in text
    assert "c-1" not in text


def test_budget_scopes_past_the_guard_are_one_other_series_the_fullest() -> None:
    policies = parse_policy_text(
        "budgets:\n  - {name: per-agent, per: [agent], limit_usd: 1, window: day}\n", Path("budgets.yaml")
    )
    clock = FakeClock()
    engine = engine_for_tests(policies, clock=clock, max_label_values=2)
    # agent-3 spends the most: 4 calls; the others 1, 2 and 3 calls of gpt-4.1 (1,000 in, 100 out)
    engine.observe_many([make_call(end_s=clock.now(), agent=f"agent-{n}") for n in range(4) for _ in range(n + 1)])
    samples = [
        (sample.labels["scope"], sample.value)
        for family in text_string_to_metric_families(generate_latest(engine.registry).decode())
        if family.name == "otel_puppy_budget_spend_usd"
        for sample in family.samples
    ]
    assert sorted(samples) == [("agent=agent-0", 0.0028), ("agent=agent-1", 0.0056), ("other", 0.0112)]
    engine.close()


def test_budget_series_follow_new_scopes_and_count_each_fold_per_scrape_as_asked() -> None:
    policies = parse_policy_text(
        "budgets:\n  - {name: per-agent, per: [agent], limit_usd: 1, window: day}\n", Path("budgets.yaml")
    )
    clock = FakeClock()
    engine = engine_for_tests(policies, clock=clock, max_label_values=2)

    def spend_samples() -> list[tuple[str, float]]:
        return sorted(
            (sample.labels["scope"], sample.value)
            for family in text_string_to_metric_families(generate_latest(engine.registry).decode())
            if family.name == "otel_puppy_budget_spend_usd"
            for sample in family.samples
        )

    engine.observe_many([make_call(end_s=clock.now(), agent=f"agent-{n}") for n in range(4) for _ in range(n + 1)])
    guard = engine.metrics.guard
    assert spend_samples() == [("agent=agent-0", 0.0028), ("agent=agent-1", 0.0056), ("other", 0.0112)]
    assert guard.overflow["scope"] == 2  # agent-2 and agent-3, once per scrape
    assert spend_samples() == [("agent=agent-0", 0.0028), ("agent=agent-1", 0.0056), ("other", 0.0112)]
    assert guard.overflow["scope"] == 4
    # a scope first seen after a scrape is in the next one: agent-4 is now the fullest behind `other`
    engine.observe_many([make_call(end_s=clock.now(), agent="agent-4") for _ in range(6)])
    engine.observe_many([make_call(end_s=clock.now(), agent="agent-0")])
    assert spend_samples() == [("agent=agent-0", 0.0056), ("agent=agent-1", 0.0056), ("other", 0.0168)]
    assert guard.overflow["scope"] == 7
    engine.close()


def test_totals_add_up_the_series_per_model_and_per_agent() -> None:
    clock = FakeClock()
    engine = engine_for_tests(clock=clock, max_label_values=3)
    now = clock.now()
    engine.observe_many(
        [
            make_call(end_s=now, agent="support", duration_s=0.5),  # $0.0028: 1,000 in, 100 out
            make_call(end_s=now, agent="support", duration_s=1.5),
            make_call(end_s=now, agent="triage", error=ErrorClass.TIMEOUT, duration_s=3.0),
            make_call(end_s=now, model="mystery-model-9000", duration_s=2.0),
        ]
    )
    engine.metrics.record_spans("dropped", 2)
    engine.metrics.record_internal_error("test")
    engine.metrics.record_store_error("apply")
    totals = engine.metrics.totals()
    assert totals.calls == CallTally(
        requests=4, errors=1, unpriced=1, unknown_model=1, spend_nanos=5_600_000, duration_s=7.0
    )
    assert dict(totals.by_model) == {
        ("openai", "gpt-4.1"): CallTally(requests=3, errors=1, spend_nanos=5_600_000, duration_s=5.0),
        ("openai", "mystery-model-9000"): CallTally(requests=1, unpriced=1, unknown_model=1, duration_s=2.0),
    }
    assert dict(totals.by_agent) == {
        "support": CallTally(requests=2, spend_nanos=5_600_000, duration_s=2.0),
        "triage": CallTally(requests=1, errors=1, duration_s=3.0),  # failed without usage: no spend, not $0
        "": CallTally(requests=1, unpriced=1, unknown_model=1, duration_s=2.0),
    }
    assert totals.by_model[("openai", "gpt-4.1")].mean_duration_s == 5.0 / 3
    assert CallTally().mean_duration_s is None
    assert (totals.spans["applied"], totals.dropped_spans) == (4, 2)
    assert (totals.internal_errors, totals.store_errors) == (1, 1)
    # the same numbers the series say
    assert engine.registry.get_sample_value(
        "otel_puppy_llm_cost_usd_total",
        {"provider": "openai", "model": "gpt-4.1", "agent": "support", "service": ""},
    ) == nanos_to_float(5_600_000)
    engine.close()


def test_totals_count_folded_labels_under_other() -> None:
    clock = FakeClock()
    engine = engine_for_tests(clock=clock, max_label_values=2)
    engine.observe_many([make_call(end_s=clock.now(), agent=f"agent-{n}") for n in range(4)])
    totals = engine.metrics.totals()
    assert {agent: tally.requests for agent, tally in totals.by_agent.items()} == {
        "agent-0": 1,
        "agent-1": 1,
        "other": 2,
    }
    assert totals.calls.requests == 4
    engine.close()


def test_totals_read_no_collector_so_a_collector_may_read_them() -> None:
    clock = FakeClock()
    engine = engine_for_tests(clock=clock)
    seen: list[int] = []

    def reads_totals() -> list[Metric]:
        seen.append(engine.metrics.totals().calls.requests)  # no re-entry guard needed
        return []

    engine.metrics.add_collector(reads_totals)
    engine.observe(make_call(end_s=clock.now()))
    generate_latest(engine.registry)
    assert seen == [1]
    engine.close()
