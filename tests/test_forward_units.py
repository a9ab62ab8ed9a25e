"""The parts of forwarding that need no service: the attributes, run sums and their bounds, Retry-After."""

from __future__ import annotations

import time
from decimal import Decimal
from email.utils import formatdate

import pytest

from otel_puppy.forward.enrich import RunCosts, call_attributes, is_run, price_version
from otel_puppy.forward.sender import MAX_BACKOFF_S, lease_for, retry_after_s
from otel_puppy.pricing import Price


def test_a_priced_call_gains_the_cost_attributes_and_nothing_it_has() -> None:
    price = Price(nanos=2_800_000, scaled=28, scale=4)
    assert call_attributes(price, set()) == [
        ("gen_ai.usage.cost.amount", 0.0028),
        ("gen_ai.usage.cost.currency", "USD"),
        ("gen_ai.usage.cost.source", "local"),
        ("otel_puppy.price.version", price_version(price)),
    ]
    assert call_attributes(price, {"gen_ai.usage.cost.amount", "otel_puppy.price.version"}) == [
        ("otel_puppy.cost.amount", 0.0028)
    ]
    assert (
        call_attributes(price, {"gen_ai.usage.cost.amount", "otel_puppy.cost.amount", "otel_puppy.price.version"}) == []
    )
    assert price_version(Price(nanos=1, source="override")) == "override"


def test_an_unpriced_call_gains_its_reason_only() -> None:
    assert call_attributes(Price(nanos=None, unpriced_reason="unknown_model"), set()) == [
        ("otel_puppy.price.unpriced_reason", "unknown_model")
    ]


def test_the_cost_is_the_exact_price_not_the_rounded_nanos() -> None:
    price = Price(nanos=1, scaled=12345, scale=13)  # $0.0000000012345, counted as 1 nano
    assert call_attributes(price, set())[0] == ("gen_ai.usage.cost.amount", float(Decimal("0.0000000012345")))


@pytest.mark.parametrize(
    ("attributes", "run"),
    [
        ({"gen_ai.operation.name": "invoke_agent"}, True),
        ({"gen_ai.operation.name": "invoke_workflow"}, True),
        ({"openinference.span.kind": "AGENT"}, True),
        ({"traceloop.span.kind": "workflow"}, True),
        ({"gen_ai.operation.name": "chat"}, False),
        ({"openinference.span.kind": "CHAIN"}, False),
        ({}, False),
    ],
)
def test_runs_in_every_convention(attributes: dict[str, object], run: bool) -> None:
    assert is_run(attributes) is run


def test_a_run_sums_the_calls_beneath_it_once_each() -> None:
    runs = RunCosts()
    # run 1 > tool 2 > call 3 > nested call 4; run 1 > call 5; call 6 elsewhere in the trace
    runs.link([(9, 2, 1), (9, 3, 2), (9, 4, 3), (9, 5, 1), (9, 6, 7)])
    for span, nanos in ((3, 100), (4, 100), (5, 40), (6, 1000)):
        runs.count(9, span, nanos)
    assert runs.run_attributes(9, 1, set()) == [("otel_puppy.run.cost.amount", 140 / 1e9), ("otel_puppy.run.calls", 2)]
    assert runs.run(8, 1).calls == 0  # another trace
    assert runs.run_attributes(9, 1, {"otel_puppy.run.cost.amount", "otel_puppy.run.calls"}) == []


def test_run_costs_stay_within_their_bounds_and_forget_the_oldest() -> None:
    runs = RunCosts(max_spans=100, max_calls=50, max_depth=8)
    for trace in range(1000):
        runs.link([(trace, 2, 1)])
        runs.count(trace, 2, 7)
    assert len(runs._parents) == 100
    assert runs._call_count == 50
    assert runs.run(999, 1).nanos == 7
    assert runs.run(0, 1).nanos == 0  # forgotten: a run longer than the bounds hold is incomplete
    chain = RunCosts(max_depth=8)
    chain.link([(1, n + 1, n) for n in range(1, 20)])  # 20 spans deep
    chain.count(1, 20, 5)
    assert chain.run(1, 15).nanos == 5
    assert chain.run(1, 1).nanos == 0  # deeper than max_depth: not walked


def test_a_cycle_of_parents_ends() -> None:
    runs = RunCosts()
    runs.link([(1, 2, 3), (1, 3, 2)])
    runs.count(1, 2, 5)
    assert runs.run(1, 99).nanos == 0


def test_retry_after_in_seconds_or_a_date_else_none() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s(" 12 ") == 12.0
    when = retry_after_s(formatdate(time.time() + 20, usegmt=True))
    assert when is not None
    assert 18 <= when <= 21
    assert retry_after_s(formatdate(time.time() - 100, usegmt=True)) == 0.0
    for bad in (None, "", "soon", "-5", "1.5e999", "9" * 200):
        value = retry_after_s(bad)
        assert value is None or min(MAX_BACKOFF_S, value) == MAX_BACKOFF_S, bad


def test_a_claim_outlives_two_attempts() -> None:
    assert lease_for(10.0) == 22.0
    assert lease_for(1.0) == 4.0
