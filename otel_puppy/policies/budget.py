"""Budgets: spend or token limits per window, scoped by `match` and split by `per`.

The model is the grammar; `BudgetBook` resolves which budget instances a call or a request falls
in (memoized per scope), and `budget_hit` turns an instance's state into a `PolicyHit`. The store
does the counting and the atomic admission; the engine composes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Final, Self
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from otel_puppy._logging import RateLimitedLog
from otel_puppy.bounds import MAX_ALERTS, MAX_LIMIT_TOKENS, MAX_LIMIT_USD
from otel_puppy.decision import Action, PolicyHit, Priority, Severity, policy_hit_dict
from otel_puppy.money import usd_to_nanos
from otel_puppy.policies.base import Degrade, LimitAction, NamedEntry
from otel_puppy.policies.matching import DIMENSIONS, Dimension, Match, Scope, scope_label
from otel_puppy.store.base import BudgetCheck
from otel_puppy.windows import Window, parse_window

__all__ = ("BudgetBook", "BudgetInstance", "BudgetPolicy", "budget_hit", "budget_hit_dict", "budget_utilization")

logger = logging.getLogger("otel_puppy")

OVERFLOW_SCOPE: Final = "other"
_CACHE_LIMIT: Final = 50_000

Fraction = Annotated[float, Field(gt=0, lt=1)]


class BudgetPolicy(NamedEntry):
    """A limit on spend (`limit_usd`) or tokens (`limit_tokens`) per window.

    >>> BudgetPolicy(name="org-daily", limit_usd=100, window="day", action="deny").describe()
    'budget org-daily: $100 per day, deny when over'
    """

    match: Match | None = None
    """Which calls count; every call when absent."""
    per: tuple[Dimension, ...] = ()
    """One budget per distinct value of these dimensions (bounded by `max_scopes`)."""
    # at least one nano-dollar: the smallest amount spend is counted in
    limit_usd: Annotated[Decimal, Field(ge=Decimal("0.000000001"), le=MAX_LIMIT_USD, allow_inf_nan=False)] | None = None
    limit_tokens: Annotated[int, Field(gt=0, le=MAX_LIMIT_TOKENS)] | None = None
    window: str
    """`hour`, `day`, `week`, `month` (calendar, in the configured timezone) or `15m`, `1h`, `24h`, `7d`, `30d`."""
    action: LimitAction = "deny"
    alerts: Annotated[tuple[Annotated[float, Field(gt=0, le=1)], ...], Field(max_length=MAX_ALERTS)] = ()
    """Utilization thresholds that emit an alert once per crossing: info, warning, critical; 1.0 is emergency."""
    reserve: dict[Priority, Fraction] = Field(default_factory=dict)
    """The last fraction of the limit kept for this priority and higher (`{critical: 0.1}`)."""
    shadow: bool = False
    """Evaluated and reported, never enforced."""
    max_scopes: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """With `per`: distinct instances kept; later ones share one `other` instance."""

    @field_validator("window")
    @classmethod
    def _known_window(cls, value: str) -> str:
        parse_window(value, ZoneInfo("UTC"))
        return value

    @field_validator("per")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("each dimension may appear once in per")
        return value

    @field_validator("alerts")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if list(value) != sorted(set(value)):
            raise ValueError("alert thresholds must be distinct and increasing, e.g. [0.5, 0.75, 0.9]")
        return value

    @field_validator("reserve")
    @classmethod
    def _no_bulk_reserve(cls, value: dict[Priority, float]) -> dict[Priority, float]:
        if Priority.BULK in value:
            raise ValueError("bulk is the lowest priority: a reserve for bulk and above is the whole budget")
        return value

    @model_validator(mode="after")
    def _one_limit(self) -> Self:
        if (self.limit_usd is None) == (self.limit_tokens is None):
            raise ValueError("give exactly one of limit_usd or limit_tokens")
        return self

    def describe(self) -> str:
        limit = f"${self.limit_usd:f}" if self.limit_usd is not None else f"{self.limit_tokens:,} tokens"
        scope = f" for {self.match.describe()}" if self.match else ""
        per = f", one per {'/'.join(self.per)}" if self.per else ""
        action = f"degrade to {self.action.degrade}" if isinstance(self.action, Degrade) else self.action
        extras = ""
        if self.reserve:
            extras += ", reserving " + ", ".join(f"{f:.0%} for {p.value}" for p, f in self.reserve.items())
        if self.alerts:
            extras += ", alerts at " + ", ".join(f"{t:.0%}" for t in self.alerts)
        shadow = " (shadow)" if self.shadow else ""
        return f"budget {self.name}: {limit} per {self.window}{scope}{per}, {action} when over{extras}{shadow}"

    @property
    def on_exceed(self) -> Action:
        if isinstance(self.action, Degrade):
            return Action.DEGRADE
        return Action(self.action)

    def usable_fraction(self, priority: Priority) -> float:
        """Share of the limit this priority may use: what higher priorities' reserves leave."""
        held_back = [fraction for p, fraction in self.reserve.items() if p.rank > priority.rank]
        return 1.0 - max(held_back, default=0.0)

    def severity(self, utilization: float) -> Severity:
        if utilization >= 1.0:
            return Severity.EMERGENCY
        if not self.alerts:
            return Severity.INFO
        crossed = [i for i, t in enumerate(self.alerts) if utilization >= t]
        if not crossed:
            return Severity.INFO
        return (Severity.INFO, Severity.WARNING, Severity.CRITICAL)[min(crossed[-1], 2)]


@dataclass(frozen=True, slots=True)
class BudgetInstance:
    """One budget for one scope: `per-agent` for `agent=support`, with what decide() needs precomputed."""

    policy: BudgetPolicy
    window: Window
    label: str
    key: str
    limit_nanos: int | None
    limit_text: str
    on_exceed: Action
    checks: dict[Priority, BudgetCheck]
    """The admission check for each priority (the usable limit shrinks with higher priorities' reserves)."""
    head: str
    """The start of its hits' messages: `budget per-agent for agent=support: `."""
    degrade: str | None
    """The model its `degrade` action names, if that is its action."""

    @classmethod
    def of(cls, policy: BudgetPolicy, window: Window, label: str) -> BudgetInstance:
        key = f"budget:{policy.name}|{label}"
        limit_nanos = usd_to_nanos(policy.limit_usd) if policy.limit_usd is not None else None
        blocking = not policy.shadow and policy.on_exceed is Action.DENY
        checks: dict[Priority, BudgetCheck] = {}
        by_fraction: dict[float, BudgetCheck] = {}  # one check for the priorities with the same limit
        for priority in Priority:
            fraction = policy.usable_fraction(priority)
            check = by_fraction.get(fraction)
            if check is None:
                check = by_fraction[fraction] = BudgetCheck(
                    scope=key,
                    window=window,
                    limit_nanos=int(limit_nanos * fraction) if limit_nanos is not None else None,
                    limit_tokens=int(policy.limit_tokens * fraction) if policy.limit_tokens is not None else None,
                    blocking=blocking,
                )
            checks[priority] = check
        limit_text = f"{policy.limit_usd:f}" if policy.limit_usd is not None else ""
        head = f"budget {policy.name}{f' for {label}' if label else ''}: "
        degrade = policy.action.degrade if isinstance(policy.action, Degrade) else None
        return cls(policy, window, label, key, limit_nanos, limit_text, policy.on_exceed, checks, head, degrade)


class BudgetBook:
    """The budgets of a policy set, compiled for fast lookup by scope."""

    def __init__(self, budgets: tuple[BudgetPolicy, ...], zone: ZoneInfo, log: RateLimitedLog | None = None) -> None:
        self.budgets = budgets
        self._log = log or RateLimitedLog(logger)
        """Folds are chosen by whoever sends spans or requests: one line per budget per minute."""
        # One window object per window text: a calendar window caches its current bucket, so
        # budgets sharing a window share that work.
        shared: dict[str, Window] = {}
        self._windows = {b.name: shared.setdefault(b.window, parse_window(b.window, zone)) for b in budgets}
        self._cache: dict[tuple[str | None, ...], tuple[BudgetInstance, ...]] = {}
        self._labels: dict[str, set[str]] = {b.name: set() for b in budgets}
        self._interned: dict[tuple[str, str], BudgetInstance] = {}
        """One `BudgetInstance` per (budget, label), shared by every cached scope that falls in it:
        the scope cache then holds references, not copies (bounded by `max_scopes` per budget)."""
        self.folded = 0
        """Scopes sent to the shared `other` instance because a budget had `max_scopes` already."""

    def instances(self, scope: Scope) -> tuple[BudgetInstance, ...]:
        """Every budget instance this scope counts against."""
        key = tuple(scope.get(d) for d in DIMENSIONS)
        found = self._cache.get(key)
        if found is None:
            found = tuple(self._resolve(budget, scope) for budget in self.budgets if self._applies(budget, scope))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found

    def known_instances(self) -> tuple[BudgetInstance, ...]:
        """Every instance seen so far (a budget without `per` always has its one instance)."""
        found: list[BudgetInstance] = []
        for budget in self.budgets:
            labels = self._labels[budget.name] or ({""} if not budget.per else set())
            found.extend(self._instance(budget, label) for label in sorted(labels))
        return tuple(found)

    def carry_over(self, previous: BudgetBook) -> None:
        """After a reload: remember the scopes seen by budgets whose name and `per` did not change."""
        old = {b.name: b for b in previous.budgets}
        for budget in self.budgets:
            before = old.get(budget.name)
            if before is not None and before.per == budget.per:
                self._labels[budget.name] = set(previous._labels[budget.name])

    @staticmethod
    def _applies(budget: BudgetPolicy, scope: Scope) -> bool:
        return budget.match is None or budget.match.matches(scope)

    def _resolve(self, budget: BudgetPolicy, scope: Scope) -> BudgetInstance:
        label = scope_label(budget.per, scope)
        labels = self._labels[budget.name]
        if label not in labels:
            if len(labels) >= budget.max_scopes:
                self.folded += 1
                self._log.warning(
                    f"fold:{budget.name}",
                    "budget %s has %d scopes already; %r counts as %r",
                    budget.name,
                    budget.max_scopes,
                    label,
                    OVERFLOW_SCOPE,
                )
                label = OVERFLOW_SCOPE
            labels.add(label)
        return self._instance(budget, label)

    def _instance(self, budget: BudgetPolicy, label: str) -> BudgetInstance:
        key = (budget.name, label)
        found = self._interned.get(key)
        if found is None:
            found = self._interned[key] = BudgetInstance.of(budget, self._windows[budget.name], label)
        return found


def budget_hit(
    instance: BudgetInstance,
    *,
    spent_nanos: int,
    spent_tokens: int,
    reserved_nanos: int,
    exceeded: bool,
    now: float,
) -> PolicyHit:
    """What this budget instance says about a request, given its state in the store."""
    return PolicyHit(*_hit_fields(instance, spent_nanos, spent_tokens, reserved_nanos, exceeded=exceeded, now=now))


def budget_hit_dict(
    instance: BudgetInstance,
    *,
    spent_nanos: int,
    spent_tokens: int,
    reserved_nanos: int,
    exceeded: bool,
    now: float,
) -> dict[str, Any]:
    """`budget_hit(...).to_dict()` without the `PolicyHit` in between: what a decision over HTTP sends."""
    return policy_hit_dict(_hit_fields(instance, spent_nanos, spent_tokens, reserved_nanos, exceeded=exceeded, now=now))


def budget_utilization(instance: BudgetInstance, spent_nanos: int, spent_tokens: int, reserved_nanos: int) -> float:
    """Spent plus reserved over the limit (1 is exhausted); a token budget: tokens spent over its limit."""
    if instance.limit_nanos is not None:
        return (spent_nanos + reserved_nanos) / instance.limit_nanos
    return spent_tokens / (instance.policy.limit_tokens or 1)


def _hit_fields(
    instance: BudgetInstance, spent_nanos: int, spent_tokens: int, reserved_nanos: int, *, exceeded: bool, now: float
) -> tuple[Any, ...]:
    """A budget hit's fields, in `PolicyHit`'s order (tests/policies/test_budget.py holds it to that)."""
    policy = instance.policy
    used = spent_nanos + reserved_nanos
    utilization = budget_utilization(instance, spent_nanos, spent_tokens, reserved_nanos)
    if instance.limit_nanos is not None:
        amount = f"${_usd(used)} of ${instance.limit_text}"
    else:
        amount = f"{spent_tokens:,} of {policy.limit_tokens or 1:,} tokens"
    action = instance.on_exceed if exceeded else Action.ALLOW
    message = f"{instance.head}{amount} this {policy.window} ({utilization:.0%})"
    if exceeded:
        message += _OUTCOME[action]
    resets_at = instance.window.resets_at_datetime(now)
    return (
        "budget",  # kind
        policy.name,  # policy
        action,  # action
        message,  # message
        instance.label,  # scope
        policy.severity(utilization),  # severity
        policy.shadow,  # shadow
        Decimal(spent_nanos).scaleb(-9),  # spent_usd
        policy.limit_usd,  # limit_usd
        spent_tokens,  # spent_tokens
        policy.limit_tokens,  # limit_tokens
        Decimal(reserved_nanos).scaleb(-9),  # reserved_usd
        utilization,  # utilization
        policy.window,  # window
        resets_at,  # resets_at
        max(resets_at.timestamp() - now, 0.0) if exceeded and action is Action.DENY else None,  # retry_after_s
        instance.degrade,  # model
    )


_OUTCOME: Final = {Action.DENY: "; denied", Action.WARN: "; over, warning only", Action.DEGRADE: "; degrading"}


def _usd(nanos: int) -> str:
    """Exact USD text for nano-USD, like `Decimal` would print it: 5600000 -> `0.005600000`."""
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"
