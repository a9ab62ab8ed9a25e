"""The attack that once switched enforcement off, replayed against the engine on every store.

A handful of spans with absurd token counts at a (legal) absurd price, and huge estimates
reserved on a *warn* budget, once pushed counters past 2**63: SQLite turned them into REALs or
failed `SUM()` with "integer overflow", Redis's scripts formatted sums past 2**63 into garbage
(negative counters) or failed `HINCRBY`. Every decision then failed, and failing open, allowed
every tenant, and the damage stayed in the store across restarts. Now the counters saturate: the
attacked warn budget is over its limit, a tenant's exhausted deny budget still denies, everyone
else is decided as before, and a restart changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from otel_puppy.decision import Action
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies.loader import parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import CEILING, ApplyResult, Store
from otel_puppy.store.memory import MemoryStore
from otel_puppy.store.redis import RedisStore
from otel_puppy.store.sqlite import SQLiteStore
from otel_puppy.testing import FakeClock, make_call
from tests._service import NANOS

POLICIES = """\
budgets:
  - {name: org-warn, limit_usd: 1000, window: day, action: warn}
  - {name: tenants, match: {agent: "tenant-*"}, per: [agent], limit_usd: 0.05, window: day, action: deny}
prices:
  - {provider: evil, model: pricey, input_mtok: 1000000, output_mtok: 1000000}
"""
ABSURD_TOKENS = 100_000_000  # the largest count a span may carry: 2e17 nano-USD a call at this price
ABSURD_CALL_NANOS = 2 * ABSURD_TOKENS * 10**6 * 10**9 // 10**6


@pytest.fixture(params=["memory", "sqlite", "redis"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens the store again on the same state (the memory store: the same object, no restart)."""
    memory = MemoryStore()

    def opener() -> Store:
        if request.param == "memory":
            return memory
        if request.param == "sqlite":
            return SQLiteStore(tmp_path / "state.db")
        return RedisStore.from_url(request.getfixturevalue("redis_url"))

    return opener


def engine_on(store: Store, clock: FakeClock) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store="memory://", fail_open=True, timezone="UTC"),
        policies=parse_policy_text(POLICIES, Path("policies.yaml")),
        store=store,
        clock=clock,
        registry=CollectorRegistry(auto_describe=True),
    )


def decided(engine: PolicyEngine, agent: str) -> tuple[Action, list[tuple[str, str]]]:
    decision = engine.decide(provider="openai", model="gpt-4.1", agent=agent)
    return decision.action, sorted((hit.policy, hit.action.value) for hit in decision.reasons)


def test_absurd_spend_and_estimates_make_enforcement_stricter_never_off(reopen: Callable[[], Store]) -> None:
    clock = FakeClock()
    store = reopen()
    engine = engine_on(store, clock)
    normal = [make_call(end_s=clock.now(), agent="tenant-a") for _ in range(30)]  # over tenant-a's $0.05
    assert [o.result for o in engine.observe_many(normal)] == [ApplyResult.APPLIED] * 30
    assert decided(engine, "tenant-a") == (Action.DENY, [("org-warn", "allow"), ("tenants", "deny")])

    # The attack: 60 spans at 2e17 nano-USD each (1.2e19 in all, past 2**63), then 120 estimates of
    # $100,000 reserved on the warn budget (1.2e16 nano-USD, past 2**53).
    absurd = [
        make_call(
            end_s=clock.now(),
            provider="evil",
            model="pricey",
            agent="attacker",
            input_tokens=ABSURD_TOKENS,
            output_tokens=ABSURD_TOKENS,
        )
        for _ in range(60)
    ]
    for first in range(0, 60, 20):
        observations = engine.observe_many(absurd[first : first + 20])
        assert [o.price.nanos for o in observations] == [ABSURD_CALL_NANOS] * 20
    for _ in range(120):
        decision = engine.decide(provider="openai", model="gpt-4.1", agent="attacker", estimated_cost_usd="100000")
        assert decision.action is Action.WARN

    def enforced(engine: PolicyEngine) -> None:
        # the exhausted tenant is still denied; a fresh tenant is decided by its own budget (and
        # warned by the saturated org budget); nobody is allowed by a failure
        assert decided(engine, "tenant-a") == (Action.DENY, [("org-warn", "warn"), ("tenants", "deny")])
        assert decided(engine, "tenant-b") == (Action.WARN, [("org-warn", "warn"), ("tenants", "allow")])
        [org] = [hit for hit in engine.snapshot().budgets if hit.policy == "org-warn"]
        assert org.spent_usd == Decimal(CEILING) / 10**9
        assert org.reserved_usd == Decimal(CEILING) / 10**9

    enforced(engine)
    assert store.health().saturated > 0
    assert store.health().unreadable == 0
    # a normal span in the middle of it is counted once, exactly
    engine.observe_many([make_call(end_s=clock.now(), agent="tenant-b")])
    [b] = [hit for hit in engine.snapshot().budgets if hit.policy == "tenants" and hit.scope == "agent=tenant-b"]
    assert b.spent_usd == Decimal(NANOS) / 10**9
    engine.close()

    restarted = engine_on(reopen(), clock)
    enforced(restarted)
    restarted.close()
