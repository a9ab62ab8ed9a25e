"""Budget instances and their hits: `budget_hit` and `budget_hit_dict` say the same thing."""

from __future__ import annotations

import sys
from dataclasses import FrozenInstanceError, fields
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from otel_puppy.decision import Action, PolicyHit, Priority, Severity, policy_hit_dict
from otel_puppy.policies import parse_policy_text
from otel_puppy.policies.budget import BudgetBook, BudgetInstance, budget_hit, budget_hit_dict
from otel_puppy.store.base import CEILING, BudgetCheck
from otel_puppy.windows import CalendarWindow

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC).timestamp()
POLICIES = """\
budgets:
  - {name: org, limit_usd: 10, window: day, alerts: [0.5, 0.9]}
  - {name: per-agent, per: [agent], limit_usd: 0.5, window: 1h, action: {degrade: gpt-4.1-mini}}
  - {name: tokens, per: [user], limit_tokens: 1000, window: month, action: warn, shadow: true}
  - {name: vip, limit_usd: 100, window: week, reserve: {critical: 0.1, high: 0.2}}
"""


def instances() -> tuple[BudgetInstance, ...]:
    budgets = parse_policy_text(POLICIES, Path("policies/test.yaml")).budgets
    return BudgetBook(budgets, ZoneInfo("UTC")).instances({"agent": "support", "user": "u1", "provider": "openai"})


EVERY_KIND = (
    POLICIES
    + """\
  - {name: calls, per: [conversation], limit_calls: 3, window: day, action: deny}
  - {name: cheap, per: [agent, user], limit_usd: 0.000000001, window: 24h, action: warn}
  - {name: hourly, limit_usd: 1000000, window: hour, action: deny}
"""
)


@pytest.mark.parametrize(
    ("spent_nanos", "spent_tokens", "reserved_nanos", "exceeded", "more"),
    [
        (0, 0, 0, False, {}),
        (1_234_567_890, 400, 5_600_000, False, {}),
        (10**10, 2000, 10**9, True, {}),
        (7, 999, 3, True, {}),
        (999_999_999, 1, 1, True, {"wait_s": 12.5, "reserved_tokens": 2}),
        (CEILING, CEILING, CEILING, True, {"never": "too large", "reserved_tokens": CEILING}),
        (-1, 0, -(10**9) - 1, False, {}),  # never from a store; printed as the Decimal prints it
    ],
)
def test_budget_hit_dict_is_budget_hit_to_dict(
    spent_nanos: int, spent_tokens: int, reserved_nanos: int, exceeded: bool, more: dict[str, Any]
) -> None:
    budgets = parse_policy_text(EVERY_KIND, Path("policies/test.yaml")).budgets
    scope = {"agent": "support", "user": "u1", "provider": "openai", "conversation": "c-1"}
    every = BudgetBook(budgets, ZoneInfo("UTC")).instances(scope)
    assert len(every) == 7
    for instance in every:
        state: dict[str, Any] = {
            "spent_nanos": spent_nanos,
            "spent_tokens": spent_tokens,
            "reserved_nanos": reserved_nanos,
            "exceeded": exceeded,
            "now": NOW,
            **more,
        }
        assert budget_hit_dict(instance, **state) == budget_hit(instance, **state).to_dict()


def test_a_hit_has_every_field_in_place() -> None:
    org, per_agent, tokens, _ = instances()
    hit = budget_hit(
        per_agent, spent_nanos=600_000_000, spent_tokens=9, reserved_nanos=2_000_000, exceeded=True, now=NOW
    )
    assert hit == PolicyHit(
        kind="budget",
        policy="per-agent",
        action=Action.DEGRADE,
        message="budget per-agent for agent=support: $0.602000000 of $0.5 this 1h (120%); degrading",
        scope="agent=support",
        severity=Severity.EMERGENCY,
        spent_usd=Decimal("0.600000000"),
        limit_usd=Decimal("0.5"),
        spent_tokens=9,
        reserved_usd=Decimal("0.002000000"),
        utilization=1.204,
        window="1h",
        resets_at=None,  # a rolling window never resets; without its sub-buckets read, the longest wait:
        retry_after_s=3660.0,  # until all it counts at 12:30 has aged out (13:31)
        model="gpt-4.1-mini",
    )
    assert budget_hit(
        org, spent_nanos=95 * 10**8, spent_tokens=0, reserved_nanos=0, exceeded=False, now=NOW
    ).severity == (Severity.WARNING)
    assert budget_hit(tokens, spent_nanos=0, spent_tokens=500, reserved_nanos=0, exceeded=False, now=NOW).message == (
        "budget tokens for user=u1: 500 of 1,000 tokens this month (50%)"
    )


def test_policy_hit_dict_keys_are_the_fields_in_order() -> None:
    hit = PolicyHit(kind="budget", policy="p", action=Action.ALLOW, message="m")
    assert tuple(hit.to_dict()) == tuple(f.name for f in fields(PolicyHit))
    values = tuple(getattr(hit, f.name) for f in fields(PolicyHit))
    assert policy_hit_dict(values) == hit.to_dict()


def test_priorities_with_the_same_limit_share_one_check() -> None:
    org, _, _, vip = instances()
    assert len({id(check) for check in org.checks.values()}) == 1
    limits = {priority: check.limit_nanos for priority, check in vip.checks.items()}
    assert limits == {
        Priority.CRITICAL: 100 * 10**9,
        Priority.HIGH: 90 * 10**9,
        Priority.NORMAL: 80 * 10**9,
        Priority.LOW: 80 * 10**9,
        Priority.BULK: 80 * 10**9,
    }
    checks = vip.checks
    assert checks[Priority.NORMAL] is checks[Priority.BULK]
    assert checks[Priority.NORMAL].terms is vip.checks[Priority.LOW].terms  # the budget's, shared


def test_the_instances_of_a_budget_share_its_terms_and_are_four_references_each() -> None:
    """Ten thousand users make ten thousand instances of a per-user budget: each holds its scope and
    when it was last resolved, and refers to its budget's shared part (64 bytes, where the same
    instance holding its window, limits and budget itself took 112)."""
    budgets = parse_policy_text(POLICIES, Path("policies/test.yaml")).budgets
    book = BudgetBook(budgets, ZoneInfo("UTC"))
    one = book.instances({"agent": "support", "user": "u1", "provider": "openai"})
    two = book.instances({"agent": "billing", "user": "u2", "provider": "openai"})
    for a, b in zip(one, two, strict=True):
        assert a.policy is b.policy
        assert a.terms is b.terms
        assert a.shared is b.shared
        assert sys.getsizeof(a) <= 64
    per_user = next(i for i in one if i.policy.per == ("user",))
    assert per_user.scope != two[one.index(per_user)].scope


def test_a_check_is_frozen_and_equal_by_its_six_fields() -> None:
    day = CalendarWindow("day", ZoneInfo("UTC"))
    check = BudgetCheck("s", day, 1000, None, True)
    assert check == BudgetCheck(
        "s", CalendarWindow("day", ZoneInfo("UTC")), 1000, None, blocking=True, limit_calls=None
    )
    assert hash(check) == hash(BudgetCheck("s", day, 1000, None, True))
    assert check != BudgetCheck("s", day, 1000, None, False) != BudgetCheck("t", day, 1000, None, True)
    assert check != BudgetCheck("s", day, 1000, None, True, limit_calls=5)
    assert (check.window, check.limit_nanos, check.limit_tokens, check.blocking, check.limit_calls) == (
        day,
        1000,
        None,
        True,
        None,
    )
    with pytest.raises(FrozenInstanceError):
        check.scope = "t"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del check.terms
    assert repr(check).startswith("BudgetCheck(scope='s', terms=CheckTerms(window=CalendarWindow(")


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kathmandu"])
@pytest.mark.parametrize("unit", ["hour", "day", "week", "month"])
def test_a_calendar_windows_reset_text_is_its_reset_time_in_iso_8601(zone: str, unit: str) -> None:
    """`resets_at_text` is kept with the window's current bucket: the same text as the datetime's,
    in the bucket, past its end, and back at an earlier moment than the bucket kept."""
    window = CalendarWindow(unit, ZoneInfo(zone))
    for now in (NOW, NOW + 1, NOW + 40 * 86400, NOW - 3600):
        expected = window.resets_at_datetime(now).isoformat()
        assert window.resets_at_text(now) == expected
        assert window.resets_at_text(now) == expected  # from the kept bucket
        assert expected.endswith("+00:00")
