"""A batch is observed as its calls one at a time would be: `observe_many` works per batch what it can
(budget instances, policy matches, spend records), and nothing it counts may differ for it.

Each test observes the same calls twice, on two engines with the same policies and clock: once in
one `observe_many`, once a call at a time, and compares every result, every Prometheus sample, the
window totals, the ledger rows and the model statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Final

import pytest

from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.engine import PolicyEngine
from otel_puppy.ledger import LedgerEntry
from otel_puppy.policies import parse_policy_text
from otel_puppy.store import ApplyResult
from otel_puppy.store.base import Increment, SpendRecord, Spread
from otel_puppy.testing import FakeClock, engine_for_tests, make_call

NOW: Final = 1_767_229_200.0 + 30
"""2026-01-01T01:00:30Z: half a minute into an hour, so calls of one batch fall in two hours."""
POLICIES: Final = """
budgets:
  - {name: org-day, limit_usd: 1000, window: day}
  - {name: per-agent, per: [agent], limit_usd: 100, window: 1h}
  - {name: per-run, per: [trace], limit_usd: 10, window: day}
  - {name: support-team, match: {agent: support}, limit_tokens: 10000000, window: hour}
breakers:
  - {name: providers, match: {provider: openai}}
  - {name: models, per: [provider, model]}
anomalies:
  - {name: cost, signal: cost_rate, per: [provider]}
  - {name: latency, signal: latency_p95, per: [provider, model]}
  - {name: errors, signal: error_rate, match: {agent: support}, per: [agent]}
"""


def _engine() -> PolicyEngine:
    return engine_for_tests(parse_policy_text(POLICIES, Path("policies/test.yaml")), clock=FakeClock(NOW))


def _batch() -> list[LLMCall]:
    first = make_call(end_s=NOW - 10, agent="support", user="u1")
    parent = make_call(end_s=NOW - 5, agent="research")
    child = replace(  # one call, described by the parent span's child: counted once
        make_call(end_s=NOW - 6, agent="research"), trace_id=parent.trace_id, parent_span_id=parent.span_id
    )
    by_id = replace(make_call(end_s=NOW - 8, agent="support"), response_id="resp-1", instrumentation="logfire")
    same_call = replace(  # another instrumentation's span of that call, in another trace
        make_call(end_s=NOW - 8, agent="support"), response_id="resp-1", instrumentation="openai_v2"
    )
    last_hour = make_call(end_s=NOW - 120, agent="support", model="gpt-4.1-mini")  # the hour before
    failed = make_call(end_s=NOW - 3, agent="support", error=ErrorClass.SERVER_ERROR)
    other = make_call(end_s=NOW - 2, provider="anthropic", model="claude-sonnet-4-5", agent="triage", user="u2")
    return [first, parent, child, by_id, same_call, first, last_hour, failed, other, last_hour]


def _samples(engine: PolicyEngine) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and labels (series order is the order they were first seen in: not a value)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in engine.registry.collect()
        for sample in family.samples
    }


def _state(engine: PolicyEngine) -> tuple[object, ...]:
    store = engine.store
    hour = int(NOW // 3600) * 3600
    return (
        _samples(engine),
        engine.snapshot().windows,
        store.read_ledger(hour - 7200, hour + 7200),
        tuple(engine.stats.all()),
    )


def test_a_batch_counts_as_its_calls_one_at_a_time() -> None:
    calls = _batch()
    batched, single = _engine(), _engine()
    try:
        at_once = [o.result for o in batched.observe_many(calls)]
        one_by_one = [single.observe(call).result for call in calls]
        assert at_once == one_by_one
        applied, duplicate, nested = ApplyResult.APPLIED, ApplyResult.DUPLICATE, ApplyResult.NESTED
        # the child and the second span of resp-1 are their calls' other spans; `first` and
        # `last_hour` arrive twice in the batch
        assert at_once == [applied, applied, nested, applied, nested, duplicate, applied, applied, applied, duplicate]
        assert _state(batched) == _state(single)
        hours = {hour for hour, _, _ in batched.store.read_ledger(0, 2**40)}
        assert hours == {int(NOW // 3600) * 3600 - 3600, int(NOW // 3600) * 3600}
    finally:
        batched.close()
        single.close()


def test_observations_of_a_batch_are_the_observations_their_fields_make() -> None:
    """`observe_many` sets `Observation`'s slots in field order, without its `__init__`: a field added
    to `Observation` must be added there too."""
    from otel_puppy.snapshot import Observation

    assert [f.name for f in dataclasses.fields(Observation)] == ["call", "price", "result"]
    calls = _batch()
    engine = _engine()
    try:
        observed = engine.observe_many(calls)
        assert [type(o) for o in observed] == [Observation] * len(calls)
        assert observed == [Observation(o.call, o.price, o.result) for o in observed]
        assert [o.call for o in observed] == calls
    finally:
        engine.close()


@pytest.mark.parametrize("ledger", [True, False])
def test_records_of_a_batch_are_each_calls_record(ledger: bool) -> None:
    engine = engine_for_tests(
        parse_policy_text(POLICIES, Path("policies/test.yaml")), clock=FakeClock(NOW), ledger=ledger
    )
    try:
        admission = engine._rules.admission
        calls = _batch()
        prices = [engine.pricer.price(call) for call in calls]
        batch = admission.records(calls, prices, NOW, lateness_s=3600, ttl=86400)
        each = [admission.record(c, p, NOW, lateness_s=3600, ttl=86400) for c, p in zip(calls, prices, strict=True)]
        assert batch == each
        assert all(type(record) is SpendRecord for record in batch)
        assert min(len(record.increments) for record in batch) > 4  # the totals and the budgets
        assert (batch[0].ledger is not None) is ledger
    finally:
        engine.close()


def test_records_are_built_from_their_fields_in_order() -> None:
    """`admission` builds these named tuples from plain tuples (no keyword `__new__`): their field order
    is what it writes them in."""
    assert SpendRecord._fields == (
        "span_key",
        "parent_key",
        "increments",
        "dedupe_until",
        "decision_id",
        "settle_key",
        "call_keys",
        "calls_until",
        "weak",
        "ledger",
        "spread",
    )
    assert Increment._fields == ("scope", "window", "ts", "nanos", "tokens")
    assert LedgerEntry._fields == ("hour", "dims", "counts", "until")
    assert Spread._fields == ("targets", "ts", "nanos", "tokens")
