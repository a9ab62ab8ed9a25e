"""Call budgets (`limit_calls`): a cap on model calls per window, enforced by reserve-then-settle on
every store. Each admitted decision holds one call until the call's span settles it (a failed call
counts: it was an iteration) or the reservation expires unused.

The clock starts at 2026-01-01T00:00:00Z (`ManualClock`'s default), a boundary of every sub-bucket;
a 1h rolling window's sub-buckets are 60 s long and a call counted in the sub-bucket of `t` stops
counting at the start of the 61st sub-bucket after it.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy.calls import ErrorClass
from otel_puppy.clock import ManualClock
from otel_puppy.decision import Action, Decision, PolicyHit, Priority
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PuppyError
from otel_puppy.policies import parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import Store
from otel_puppy.testing import make_call

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PRICES = "prices:\n  - {provider: self-hosted, model: m, input_mtok: 1, output_mtok: 1}\n"


def engine_on(store: Store, budgets: str, **settings: Any) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store="memory://", watch_policies_s=None, **settings),
        policies=parse_policy_text(PRICES + "budgets:\n" + budgets, Path("policies/test.yaml")),
        store=store,
        clock=ManualClock(T0),
        registry=CollectorRegistry(auto_describe=True),
    )


def ask(engine: PolicyEngine, **fields: Any) -> Decision:
    return engine.decide(provider="self-hosted", model="m", **fields)


def made(
    engine: PolicyEngine,
    decision: Decision | None = None,
    *,
    at: float = T0,
    error: ErrorClass | None = None,
    **fields: Any,
) -> None:
    """The call's span: 1,000 input tokens ($0.001), settling `decision`'s reservation."""
    call = make_call(
        end_s=at,
        provider="self-hosted",
        model="m",
        input_tokens=1000,
        output_tokens=0,
        error=error,
        decision_id=decision.decision_id if decision else None,
    )
    engine.observe(dataclasses.replace(call, **fields) if fields else call)


def budget_hit(decision: Decision, name: str = "calls") -> PolicyHit:
    return next(hit for hit in [*decision.reasons, *decision.shadow] if hit.policy == name)


def test_three_calls_admit_exactly_three_of_sixteen_concurrent_decisions(store: Store) -> None:
    engine = engine_on(store, "  - {name: calls, limit_calls: 3, window: day, action: deny}\n")
    start = threading.Barrier(16)
    decisions: list[Decision] = []
    lock = threading.Lock()

    def agent() -> None:
        start.wait()
        decision = ask(engine)  # no estimate: a call budget reserves one call all the same
        with lock:
            decisions.append(decision)

    threads = [threading.Thread(target=agent) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 3
    assert all(d.decision_id for d in allowed)
    denied = [d for d in decisions if not d.allowed]
    assert len(denied) == 13
    hit = budget_hit(denied[0])
    assert hit.action is Action.DENY
    assert hit.message == "budget calls: 3 of 3 model calls (3 in flight) this day (100%); denied"
    assert (hit.spent_calls, hit.limit_calls, hit.spent_tokens, hit.utilization) == (3, 3, None, 1.0)
    assert denied[0].retry_after_s == 86_400.0  # until the calendar day resets
    engine.close()


def test_spans_settle_calls_and_an_unused_reservation_expires(store: Store) -> None:
    engine = engine_on(store, "  - {name: calls, limit_calls: 3, window: day, action: deny}\n")
    first, second, third = ask(engine), ask(engine), ask(engine)
    assert [first.allowed, second.allowed, third.allowed] == [True, True, True]
    made(engine, first)
    made(engine, second, error=ErrorClass.TIMEOUT)  # a failed call counts: it was an iteration
    denied = ask(engine)
    assert not denied.allowed
    assert budget_hit(denied).message == "budget calls: 3 of 3 model calls (1 in flight) this day (100%); denied"

    clock = engine.clock
    assert isinstance(clock, ManualClock)
    clock.set(T0 + 301)  # the third reservation (300 s) expired: its call never happened
    again = ask(engine)
    assert again.allowed
    hit = budget_hit(again)
    assert hit.message == "budget calls: 2 of 3 model calls this day (67%)"
    assert (hit.spent_calls, hit.limit_calls) == (2, 3)  # as it was before this decision held one
    made(engine, again, at=T0 + 302)
    assert budget_hit(ask(engine, reserve=False)).spent_calls == 3
    engine.close()


def test_a_span_without_a_decision_id_settles_the_oldest_reservation_of_its_key(store: Store) -> None:
    engine = engine_on(store, "  - {name: calls, limit_calls: 2, window: day, action: deny}\n")
    assert ask(engine, agent="a").allowed
    made(engine, agent="a")  # no decision id: settles by provider, model, agent and user
    hit = budget_hit(ask(engine, agent="a", reserve=False))
    assert hit.message == "budget calls: 1 of 2 model calls this day (50%)"
    engine.close()


def test_per_conversation_caps_each_conversation_on_its_own(store: Store) -> None:
    engine = engine_on(store, "  - {name: calls, limit_calls: 2, window: day, per: [conversation], action: deny}\n")
    outcomes = [ask(engine, conversation=c).allowed for c in ("a", "a", "a", "b", "b", "b")]
    assert outcomes == [True, True, False, True, True, False]
    denied = ask(engine, conversation="a")
    assert budget_hit(denied).scope == "conversation=a"
    engine.close()


def test_a_reserve_for_a_higher_priority_shrinks_what_normal_calls_may_make(store: Store) -> None:
    # 10 calls, the last 30% kept for critical: normal calls may make 7 (int(10 * 0.7)).
    engine = engine_on(
        store, "  - {name: calls, limit_calls: 10, window: day, action: deny, reserve: {critical: 0.3}}\n"
    )
    normal = [ask(engine).allowed for _ in range(8)]
    assert normal == [True] * 7 + [False]
    critical = [ask(engine, priority=Priority.CRITICAL).allowed for _ in range(4)]
    assert critical == [True, True, True, False]
    engine.close()


def test_a_shadow_call_budget_reports_and_never_denies(store: Store) -> None:
    engine = engine_on(store, "  - {name: calls, limit_calls: 1, window: day, action: deny, shadow: true}\n")
    decisions = [ask(engine) for _ in range(3)]
    assert all(d.allowed for d in decisions)
    hit = budget_hit(decisions[2])
    assert hit.shadow
    assert hit.action is Action.DENY
    # A shadow budget never blocks, so every admitted decision holds its call there too.
    assert hit.message == "budget calls: 2 of 1 model calls (2 in flight) this day (200%); denied"
    engine.close()


def test_a_rolling_call_budget_says_when_the_oldest_call_ages_out(store: Store) -> None:
    engine = engine_on(store, "  - {name: calls, limit_calls: 2, window: 1h, action: deny}\n")
    made(engine, at=T0)
    made(engine, at=T0 + 20 * 60)
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    clock.set(T0 + 30 * 60)
    denied = ask(engine)
    assert not denied.allowed
    # The call at T0 stops counting at the start of sub-bucket 61: T0 + 61 min, 31 min from now.
    assert denied.retry_after_s == 31 * 60.0
    assert budget_hit(denied).resets_at is None
    clock.set(T0 + 61 * 60)
    assert ask(engine).allowed
    engine.close()


def test_a_call_budget_and_a_usd_budget_admit_together_or_not_at_all(store: Store) -> None:
    engine = engine_on(
        store,
        "  - {name: calls, limit_calls: 5, window: day, action: deny}\n"
        "  - {name: usd, limit_usd: 0.002, window: day, action: deny}\n",
    )
    # $0.001 each: the dollar budget holds two, so the third is denied and reserves no call.
    decisions = [ask(engine, estimated_cost_usd="0.001") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert budget_hit(decisions[2], "usd").action is Action.DENY
    assert budget_hit(decisions[2], "calls").message == "budget calls: 2 of 5 model calls (2 in flight) this day (40%)"
    assert budget_hit(ask(engine, reserve=False), "calls").spent_calls == 2
    engine.close()


def test_the_gauge_counts_calls_made_and_held(store: Store) -> None:
    engine = engine_on(store, "  - {name: calls, limit_calls: 4, window: day, action: deny}\n")
    made(engine, ask(engine))
    ask(engine)
    value = engine.registry.get_sample_value(
        "otel_puppy_budget_utilization_ratio", {"budget": "calls", "scope": "", "window": "day"}
    )
    assert value == 0.5  # one call made, one held, of four
    engine.close()


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (
            "{name: b, limit_calls: 3, limit_usd: 1, window: day}",
            "give exactly one of limit_usd, limit_tokens or limit_calls",
        ),
        ("{name: b, limit_calls: 0, window: day}", "budgets[0].limit_calls: expected a number > 0, got 0"),
        (
            "{name: b, limit_calls: 1000000000000001, window: day}",
            "budgets[0].limit_calls: expected a number <= 1000000000000000, got 1000000000000001",
        ),
        ("{name: b, limit_calls: 2.5, window: day}", "budgets[0].limit_calls: expected an integer, got 2.5"),
    ],
)
def test_a_bad_call_limit_names_the_file_and_line(entry: str, error: str) -> None:
    with pytest.raises(PuppyError) as raised:
        parse_policy_text(f"budgets:\n  - {entry}\n", Path("policies/b.yaml"))
    assert "policies/b.yaml:2" in str(raised.value)
    assert error in str(raised.value)


def test_describe_says_model_calls() -> None:
    policies = parse_policy_text(
        "budgets:\n  - {name: runs, limit_calls: 50, window: day, per: [conversation]}\n", Path("p.yaml")
    )
    assert policies.budgets[0].describe() == "budget runs: 50 model calls per day, one per conversation, deny when over"
