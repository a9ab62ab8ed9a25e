"""One demo and one Prometheus for every test of tests/deploy that needs them (about a minute)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests._programs import require_program
from tests.deploy._stack import Settled, Stack, iter_exprs_with_values, start_stack, wait_until

SETTLE_S = 120.0
"""How long after the demo started every panel query may take to return data and the expected alerts
to be active. The scenario's events come at about 20-40 s (the outage opens the breaker at 20 s)."""

EXPECTED_ACTIVE = frozenset(
    {
        "OtelPuppyBreakerOpen",  # the self-hosted outage at 20 s
        "OtelPuppyAnomalyFiring",
        "OtelPuppyUnpricedModel",  # acme-kb-7b-instruct has no price
        "OtelPuppyBudgetBurnRateFast",  # openai-hourly: $0.5 an hour, spent in seconds
        "OtelPuppyBudgetExhausted",
    }
)
"""Alerts that must be pending or firing on the demo (`for:` may keep some pending)."""
EXPECTED_QUIET = frozenset(
    {"OtelPuppyDown", "OtelPuppySpansDropped", "OtelPuppyInternalErrors", "OtelPuppyStoreUnavailable"}
)
SCENARIO = {
    "a breaker opened": 'otel_puppy_breaker_transitions_total{to="open"}',
    "openai-hourly degraded a call": 'otel_puppy_decisions_total{action="degrade", policy="openai-hourly"}',
    "a call was denied": 'otel_puppy_decisions_total{action="deny"}',
    "openai-hourly is over its limit": 'max(otel_puppy_budget_utilization_ratio{budget="openai-hourly"}) > 1',
    "an anomaly fired": "otel_puppy_anomalies_total > 0",
    "budget alerts of every severity": 'count(count by (severity) (otel_puppy_alerts_total{kind="budget"})) == 4',
}
"""What the test policies make happen, which the dashboards must show (as PromQL that has data once it did)."""


def missing_now(stack: Stack) -> list[str]:
    queries = iter_exprs_with_values(stack)
    missing = [f"no data: {query}  (ran {expr})" for query, expr in queries if not stack.query(expr)]
    active = stack.active_alerts()
    missing += [f"alert not active: {name}" for name in sorted(EXPECTED_ACTIVE - active.keys())]
    missing += [f"did not happen: {what}" for what, expr in SCENARIO.items() if not stack.query(expr)]
    return missing


@pytest.fixture(scope="package")
def settled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settled]:
    """The demo scraped by Prometheus, once every panel has data and the expected alerts are active
    (or `SETTLE_S` passed: the tests then say what is missing)."""
    prometheus = require_program("prometheus")
    stack = start_stack(tmp_path_factory.mktemp("stack"), prometheus)
    try:
        left = SETTLE_S - (time.monotonic() - stack.started_at)
        missing = wait_until(stack, "every panel to have data", lambda: missing_now(stack), left)
        yield Settled(stack, time.monotonic() - stack.started_at, missing)
    finally:
        stack.close()
