"""Budgets: spend, token or call limits per window, scoped by `match` and split by `per`.

The model is the grammar; `BudgetBook` resolves which budget instances a call or a request falls
in (memoized per scope), and `budget_hit` turns an instance's state into a `PolicyHit`. The store
does the counting and the atomic admission; the engine composes them.

When a budget over its limit has room again: a calendar window resets (`resets_at`; a denying hit's
`retry_after_s` runs until then). A rolling window never resets (`resets_at` is null): its hit's
`retry_after_s` is when enough of its spend has aged out, sub-bucket by sub-bucket, for the request
to fit (`room_after`, read from the store only for a budget that is over). A request larger than
the limit by itself never fits: no `retry_after_s`, and its message says so.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Annotated, Any, Final, Self
from zoneinfo import ZoneInfo

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.samples import Sample
from pydantic import Field, field_validator, model_validator

from otel_puppy._logging import RateLimitedLog
from otel_puppy.alerts import AlertEvent
from otel_puppy.bounds import MAX_ALERTS, MAX_LIMIT_CALLS, MAX_LIMIT_TOKENS, MAX_LIMIT_USD
from otel_puppy.calls import LLMCall
from otel_puppy.decision import Action, DecisionRequest, PolicyHit, Priority, Severity
from otel_puppy.exceptions import StoreError
from otel_puppy.money import format_nanos, format_usd, nanos_to_float, nanos_to_usd, usd_to_nanos
from otel_puppy.policies.base import Degrade, LimitAction, NamedEntry
from otel_puppy.policies.matching import DIMENSIONS, Dimension, Match, ScopeLike, scope_label
from otel_puppy.policies.runtime import RuntimeContext, RuntimeEvent, StoreFailed
from otel_puppy.store.base import CEILING, BudgetCheck, CheckState, CheckTerms, Store, SubBucket, fullest_states
from otel_puppy.windows import CalendarWindow, RollingWindow, Window, parse_window

__all__ = (
    "SUB_BUCKET_READS",
    "BudgetBook",
    "BudgetInstance",
    "BudgetPolicy",
    "BudgetRuntime",
    "budget_hit",
    "budget_hit_dict",
    "budget_utilization",
    "read_sub_buckets",
    "readable",
    "room_after",
    "state_hit",
    "state_hit_dict",
    "too_large",
    "unreadable_hit",
)

logger = logging.getLogger("otel_puppy")

OVERFLOW_SCOPE: Final = "other"
_CACHE_LIMIT: Final = 50_000

Fraction = Annotated[float, Field(gt=0, lt=1)]


class BudgetPolicy(NamedEntry):
    """A limit on spend (`limit_usd`), tokens (`limit_tokens`) or model calls (`limit_calls`) per window.

    A call budget caps iterations: each admitted decision holds one call until the call's span
    settles it (a failed call counts: it was an iteration), or it expires unused.

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
    limit_calls: Annotated[int, Field(gt=0, le=MAX_LIMIT_CALLS)] | None = None
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
    """With `per`: distinct instances kept; later ones share one `other` instance, unless instances
    have gone idle (`idle_timeout`), which are forgotten to make room."""
    idle_timeout: str | None = None
    """With `per`: an instance not newly resolved for this long (`15m`, `1h`, ...) is forgotten when
    room is needed; by default once its window has no spend of it left (a rolling window's length, a
    calendar window's start). Its spend stays in the store under its key: a run that comes back
    counts against what it spent. For `per: [trace]`, where runs come and go by the thousand."""

    @field_validator("window")
    @classmethod
    def _known_window(cls, value: str) -> str:
        parse_window(value, ZoneInfo("UTC"))
        return value

    @field_validator("idle_timeout")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and not isinstance(parse_window(value, ZoneInfo("UTC")), RollingWindow):
            raise ValueError(f"idle_timeout {value!r} must be a duration like 15m, 1h, 24h")
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
        if [self.limit_usd, self.limit_tokens, self.limit_calls].count(None) != 2:
            raise ValueError("give exactly one of limit_usd, limit_tokens or limit_calls")
        return self

    @staticmethod
    def runtime(policies: tuple[BudgetPolicy, ...], context: RuntimeContext) -> BudgetRuntime:
        """The live state of a `budgets:` section (see `policies/runtime.py`)."""
        return BudgetRuntime.build(policies, context)

    def describe(self) -> str:
        if self.limit_usd is not None:
            limit = format_usd(self.limit_usd, dollar=True)
        elif self.limit_calls is not None:
            limit = f"{self.limit_calls:,} model calls"
        else:
            limit = f"{self.limit_tokens:,} tokens"
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
class _PolicyParts:
    """What every instance of one budget shares (computed once per budget, not per instance: a
    per-user budget has tens of thousands of instances)."""

    limit_nanos: int | None
    limit_text: str
    limit_usd_text: str | None
    """The limit as a hit's `limit_usd` has it in JSON (`format_usd` of the budget's own `limit_usd`)."""
    on_exceed: Action
    degrade: str | None
    fractions: tuple[float, ...]
    """The distinct usable fractions of the limit, one admission check each."""
    index: Mapping[Priority, int]
    """Each priority's check among them."""
    limits: tuple[tuple[int | None, int | None, int | None], ...]
    """Per fraction, its check's limits (nano-USD, tokens, calls): computed once, so the budget's
    instances share these ints rather than each holding its own (32 bytes apiece)."""
    blocking: bool
    """Whether its checks stop a reservation when over: an enforced `deny` budget."""

    @classmethod
    def of(cls, policy: BudgetPolicy) -> _PolicyParts:
        fractions: list[float] = []
        index: dict[Priority, int] = {}
        for priority in Priority:  # one check for the priorities with the same limit
            fraction = policy.usable_fraction(priority)
            if fraction not in fractions:
                fractions.append(fraction)
            index[priority] = fractions.index(fraction)
        limit_nanos = usd_to_nanos(policy.limit_usd) if policy.limit_usd is not None else None
        limits = tuple(
            (
                int(limit_nanos * fraction) if limit_nanos is not None else None,
                int(policy.limit_tokens * fraction) if policy.limit_tokens is not None else None,
                int(policy.limit_calls * fraction) if policy.limit_calls is not None else None,
            )
            for fraction in fractions
        )
        return cls(
            limit_nanos=limit_nanos,
            limit_text=format_usd(policy.limit_usd, dollar=True) if policy.limit_usd is not None else "",
            limit_usd_text=format_usd(policy.limit_usd) if policy.limit_usd is not None else None,
            on_exceed=policy.on_exceed,
            degrade=policy.action.degrade if isinstance(policy.action, Degrade) else None,
            fractions=tuple(fractions),
            index=index,
            limits=limits,
            blocking=not policy.shadow and policy.on_exceed is Action.DENY,
        )


class _PriorityChecks(Mapping[Priority, BudgetCheck]):
    """An instance's admission check per priority: its distinct checks (most often one) and the
    budget's shared index of them, rather than a dict per instance."""

    __slots__ = ("_checks", "_index")

    def __init__(self, checks: tuple[BudgetCheck, ...], index: Mapping[Priority, int]) -> None:
        self._checks = checks
        self._index = index

    def __getitem__(self, priority: Priority) -> BudgetCheck:
        return self._checks[self._index[priority]]

    def __iter__(self) -> Iterator[Priority]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class _OneCheck(Mapping[Priority, BudgetCheck]):
    """`_PriorityChecks` of an instance whose priorities share one check (most budgets: no reserve
    for higher priorities), without a tuple of one per instance."""

    __slots__ = ("_check", "_index")

    def __init__(self, check: BudgetCheck, index: Mapping[Priority, int]) -> None:
        self._check = check
        self._index = index

    def __getitem__(self, priority: Priority) -> BudgetCheck:
        if priority not in self._index:  # as `_PriorityChecks`: no check for what is no priority
            raise KeyError(priority)
        return self._check

    def __iter__(self) -> Iterator[Priority]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every instance of one budget shares: its policy, its parts, and the terms of its checks
    (`_PolicyParts.limits` in its window, the whole limit first): one object per budget."""

    policy: BudgetPolicy
    parts: _PolicyParts
    terms: tuple[CheckTerms, ...]

    @classmethod
    def of(cls, policy: BudgetPolicy, window: Window, parts: _PolicyParts) -> _Shared:
        terms = tuple(CheckTerms(window, nanos, tokens, parts.blocking, calls) for nanos, tokens, calls in parts.limits)
        return cls(policy, parts, terms)


class BudgetInstance(BudgetCheck):
    """One budget for one scope: `per-agent` for `agent=support`, with what decide() needs precomputed.

    An instance is its own admission check at its budget's whole limit (the one `critical` requests
    have, and every priority of a budget without reserves): one object per instance rather than an
    instance, a check and a mapping of priorities to it (a per-user budget has tens of thousands). Its
    `scope`, the store's, is its `key`; the rest is its budget's, shared (`_Shared`, its `terms` among
    them): four references, 64 bytes an instance."""

    __slots__ = ("seen", "shared")

    shared: _Shared
    seen: float
    """When its `BudgetBook` last resolved it: one idle long enough is forgotten to make room."""

    def __init__(self, key: str, shared: _Shared, seen: float = -math.inf) -> None:
        # The check's `__setattr__` refuses (it is frozen), so the fields are set as `object` sets them.
        set_field = object.__setattr__
        set_field(self, "scope", key)
        set_field(self, "terms", shared.terms[0])
        set_field(self, "shared", shared)
        set_field(self, "seen", seen)

    @property
    def policy(self) -> BudgetPolicy:
        return self.shared.policy

    @property
    def parts(self) -> _PolicyParts:
        return self.shared.parts

    @property
    def key(self) -> str:
        """`budget:{policy name}|{label}`: the store's scope of its counters (its check's `scope`)."""
        return self.scope

    @property
    def more(self) -> tuple[BudgetCheck, ...]:
        """The checks of the priorities its budget's reserves leave less (`_PolicyParts.fractions` after
        the first), in that order; none for most budgets. Built when asked, on the budget's terms."""
        return tuple(BudgetCheck.sharing(self.scope, terms) for terms in self.shared.terms[1:])

    @property
    def checks(self) -> Mapping[Priority, BudgetCheck]:
        """The admission check for each priority (the usable limit shrinks with higher priorities'
        reserves); built when asked (a plan's first request, a scrape's new groups), not kept."""
        shared = self.shared
        if len(shared.terms) == 1:
            return _OneCheck(self, shared.parts.index)
        return _PriorityChecks((self, *self.more), shared.parts.index)

    @property
    def label(self) -> str:
        """Its scope, `agent=support` (empty for a budget without `per`): the end of its `key`, cut
        when asked (hits and a scrape's new groups) rather than kept beside it for every instance."""
        return self.scope[len(self.policy.name) + 8 :]

    @property
    def limit_text(self) -> str:
        return self.parts.limit_text

    @property
    def on_exceed(self) -> Action:
        return self.parts.on_exceed

    @property
    def degrade(self) -> str | None:
        """The model its `degrade` action names, if that is its action."""
        return self.parts.degrade

    @property
    def head(self) -> str:
        """The start of its hits' messages: `budget per-agent for agent=support: ` (built when a hit is)."""
        label = self.label
        return f"budget {self.policy.name} for {label}: " if label else f"budget {self.policy.name}: "

    @classmethod
    def of(cls, policy: BudgetPolicy, window: Window, label: str, parts: _PolicyParts | None = None) -> BudgetInstance:
        """`parts`: `_PolicyParts.of(policy)`, when the caller keeps it for the budget's instances."""
        return cls.keyed(policy, window, _instance_key(policy.name, label), parts or _PolicyParts.of(policy))

    @classmethod
    def keyed(cls, policy: BudgetPolicy, window: Window, key: str, parts: _PolicyParts) -> BudgetInstance:
        """`of` by the instance's `key` (`_instance_key`), which it keeps (not a copy)."""
        return cls(key, _Shared.of(policy, window, parts))


def _instance_key(name: str, label: str) -> str:
    """The `key` of budget `name`'s instance for scope `label`."""
    return f"budget:{name}|{label}"


class BudgetBook:
    """The budgets of a policy set, compiled for fast lookup by scope."""

    def __init__(
        self,
        budgets: tuple[BudgetPolicy, ...],
        zone: ZoneInfo,
        log: RateLimitedLog | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.budgets = budgets
        self._now = clock
        """When instances were last resolved, so idle ones can be forgotten to make room (none: never)."""
        self.reads_trace = any(_names_trace(b) for b in budgets)
        """Whether a budget reads the trace id (`per: [trace]` or a `match` on it)."""
        read = {d for b in budgets for d in (*b.per, *(b.match.dimensions if b.match is not None else ()))}
        self._dimensions = tuple(d for d in _LABEL_DIMENSIONS if d in read)
        """What the scope cache is keyed by: the dimensions some budget reads (two scopes alike in
        those count against the same instances), one value alone if only one is read, else a tuple;
        and with the trace id (`(values, trace)`) only when a budget reads it (every call has its
        own, so a key with it would make the cache miss on every run). The fewer, the less the cache
        keeps per scope: a per-user budget's a user id, not a tuple of nine values."""
        self._call_key = attrgetter(*self._dimensions) if self._dimensions else _no_dimensions
        """The scope cache's key of a call's scope, without the trace id: read from its fields."""
        self._idle = {
            b.name: float(parse_window(b.idle_timeout, zone).seconds) if b.idle_timeout else None  # type: ignore[union-attr]
            for b in budgets
        }
        self._log = log or RateLimitedLog(logger)
        """Folds are chosen by whoever sends spans or requests: one line per budget per minute."""
        # One window object per window text: a calendar window caches its current bucket, so
        # budgets sharing a window share that work.
        shared: dict[str, Window] = {}
        self._windows = {b.name: shared.setdefault(b.window, parse_window(b.window, zone)) for b in budgets}
        self._cache: dict[object, tuple[BudgetInstance, ...]] = {}
        self._shared = {b.name: _Shared.of(b, self._windows[b.name], _PolicyParts.of(b)) for b in budgets}
        """Per budget, what its instances share (one object, referenced by each)."""
        self._instances: dict[str, dict[str, BudgetInstance]] = {
            b.name: {} if b.per else self._unscoped(b) for b in budgets
        }
        """Per budget, its instances seen by key (the instance's own string), the least recently resolved
        first (`BudgetInstance.seen`): one per (budget, label), shared by every cached scope that falls
        in it, so the scope cache holds references, not copies (bounded by `max_scopes` per budget). A
        budget without `per` has its one instance from the start."""
        self.folded = 0
        """Scopes sent to the shared `other` instance because a budget had `max_scopes` already."""
        self.forgotten = 0
        """Idle instances forgotten to make room for new ones (`_forget_idle`)."""
        self.generation = 0
        """Changes whenever an instance is first seen: what is derived from the known instances is
        computed again only then (a scrape reads tens of thousands of them)."""
        self._known: tuple[int, tuple[BudgetInstance, ...]] = (-1, ())

    def instances(self, scope: ScopeLike) -> tuple[BudgetInstance, ...]:
        """Every budget instance this scope counts against."""
        dimensions = self._dimensions
        key: object = scope.get(dimensions[0]) if len(dimensions) == 1 else tuple(map(scope.get, dimensions))
        if self.reads_trace:
            key = (key, scope.get("trace"))
        found = self._cache.get(key)
        if found is None:
            found = self._miss(key, scope)
        return found

    def call_instances(self, call: LLMCall) -> tuple[BudgetInstance, ...]:
        """`instances(call.scope())`, without building the scope when the cache has it: what every
        applied span asks (the cache key read straight from the call's fields)."""
        key = self._call_key(call)
        if self.reads_trace:  # as `scope.get("trace")` has it: the key is shared with `instances`
            key = (key, f"{call.trace_id:032x}")
        found = self._cache.get(key)
        if found is None:
            found = self._miss(key, call.scope())
        return found

    def _miss(self, key: object, scope: ScopeLike) -> tuple[BudgetInstance, ...]:
        # One time for every budget the scope falls in: their labels share the float (32 bytes each).
        now = self._now() if self._now is not None else 0.0
        found = tuple(self._resolve(budget, scope, now) for budget in self.budgets if self._applies(budget, scope))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = found
        return found

    def window(self, name: str) -> Window:
        """The window of the budget called `name` (shared by every budget with the same window text)."""
        return self._windows[name]

    def known_instances(self) -> tuple[BudgetInstance, ...]:
        """Every instance seen so far (a budget without `per` always has its one instance), by
        budget then label."""
        generation = self.generation
        cached = self._known
        if cached[0] == generation:
            return cached[1]
        found: list[BudgetInstance] = []
        for budget in self.budgets:
            instances = self._instances[budget.name]
            found.extend(instances[key] for key in sorted(instances))  # by label: one prefix
        known = tuple(found)
        self._known = (generation, known)
        return known

    def carry_over(self, previous: BudgetBook) -> None:
        """After a reload: remember the scopes seen by budgets whose name and `per` did not change."""
        old = {b.name: b for b in previous.budgets}
        for budget in self.budgets:
            before = old.get(budget.name)
            if before is not None and before.per == budget.per:
                # This book's instances (its budget may have changed), in the same order, seen when they were.
                self._instances[budget.name] = {
                    key: self._new_instance(budget, key, instance.seen)
                    for key, instance in previous._instances[budget.name].items()
                }
        self.generation += 1

    @staticmethod
    def _applies(budget: BudgetPolicy, scope: ScopeLike) -> bool:
        if "trace" in budget.per and not scope.get("trace"):
            return False  # no run to budget: a decision that names no trace
        return budget.match is None or budget.match.matches(scope)

    def _resolve(self, budget: BudgetPolicy, scope: ScopeLike, now: float) -> BudgetInstance:
        label = scope_label(budget.per, scope)
        key = _instance_key(budget.name, label)
        instances = self._instances[budget.name]
        instance = instances.pop(key, None)  # to the end: the newest resolved
        if instance is None:
            if len(instances) >= budget.max_scopes and self._now is not None:
                self._forget_idle(budget, instances, now)
            if len(instances) >= budget.max_scopes:
                self.folded += 1
                self._log.warning(
                    f"fold:{budget.name}",
                    "budget %s has %d scopes already; %r counts as %r",
                    budget.name,
                    budget.max_scopes,
                    label,
                    OVERFLOW_SCOPE,
                )
                key = _instance_key(budget.name, OVERFLOW_SCOPE)
                instance = instances.get(key)  # where it was: not moved (nor the `other` it counts as)
            self.generation += 1
            if instance is None:
                instance = instances[key] = self._new_instance(budget, key)
        else:
            instances[instance.key] = instance  # the instance's own string, not this call's equal copy
        object.__setattr__(instance, "seen", now)  # as `BudgetInstance.__init__` sets it
        return instance

    def _forget_idle(self, budget: BudgetPolicy, instances: dict[str, BudgetInstance], now: float) -> None:
        """Forget the instances of `budget` not resolved since its idle cutoff, oldest first (so the
        scan stops at the first one still in use)."""
        idle = self._idle[budget.name]
        window = self._windows[budget.name]
        if idle is not None:
            cutoff = now - idle
        elif isinstance(window, RollingWindow):
            cutoff = now - window.seconds
        else:
            cutoff = window.bounds(now)[0]
        forgotten = []
        for key, instance in instances.items():
            if instance.seen >= cutoff:
                break
            forgotten.append(key)
        if not forgotten:
            return
        for key in forgotten:
            del instances[key]
        self._cache.clear()  # it may hold forgotten instances
        self.forgotten += len(forgotten)
        self.generation += 1

    def _new_instance(self, budget: BudgetPolicy, key: str, seen: float = -math.inf) -> BudgetInstance:
        return BudgetInstance(key, self._shared[budget.name], seen)

    def _unscoped(self, budget: BudgetPolicy) -> dict[str, BudgetInstance]:
        """The instances of a budget without `per` from the start: its one (never resolved yet)."""
        instance = self._new_instance(budget, _instance_key(budget.name, ""))
        return {instance.key: instance}


def budget_hit(
    instance: BudgetInstance,
    *,
    spent_nanos: int,
    spent_tokens: int,
    reserved_nanos: int,
    exceeded: bool,
    now: float,
    wait_s: float | None = None,
    never: str | None = None,
    reserved_tokens: int = 0,
) -> PolicyHit:
    """What this budget instance says about a request, given its state in the store.

    For an exceeded hit: `never` is why the request can never fit (`too_large`); else `wait_s` is
    when a rolling window has room for it (`room_after`), the whole window when not given (by then
    everything counted now has aged out). A call budget's `spent_tokens` and `reserved_tokens` are
    calls, as its `CheckState` holds them.
    """
    return PolicyHit(
        *_hit_fields(
            instance,
            spent_nanos,
            spent_tokens,
            reserved_nanos,
            exceeded=exceeded,
            now=now,
            wait_s=wait_s,
            never=never,
            reserved_tokens=reserved_tokens,
        )
    )


def budget_hit_dict(
    instance: BudgetInstance,
    *,
    spent_nanos: int,
    spent_tokens: int,
    reserved_nanos: int,
    exceeded: bool,
    now: float,
    wait_s: float | None = None,
    never: str | None = None,
    reserved_tokens: int = 0,
) -> dict[str, Any]:
    """`budget_hit(...).to_dict()` without the `PolicyHit` in between: what a decision over HTTP sends,
    each value built in its JSON form (money printed from its nano-dollars, not through a `Decimal`)."""
    values = _hit_fields(
        instance,
        spent_nanos,
        spent_tokens,
        reserved_nanos,
        exceeded=exceeded,
        now=now,
        wait_s=wait_s,
        never=never,
        reserved_tokens=reserved_tokens,
        text=True,
    )
    return dict(zip(_HIT_KEYS, values, strict=True))


_HIT_KEYS: Final = tuple(PolicyHit.__dataclass_fields__)
"""`PolicyHit.to_dict()`'s keys: its fields, in order."""


def budget_utilization(
    instance: BudgetInstance, spent_nanos: int, spent_tokens: int, reserved_nanos: int, reserved_tokens: int = 0
) -> float:
    """Spent plus reserved over the limit (1 is exhausted); a token budget: tokens spent over its
    limit; a call budget: calls made plus calls held over its limit (its state's token fields)."""
    if instance.limit_nanos is not None:
        return (spent_nanos + reserved_nanos) / instance.limit_nanos
    if (calls := instance.policy.limit_calls) is not None:
        return (spent_tokens + reserved_tokens) / calls
    return spent_tokens / (instance.policy.limit_tokens or 1)


def too_large(instance: BudgetInstance, check: BudgetCheck, nanos: int, tokens: int) -> str | None:
    """Why a request never fits this budget, or None: its estimate alone is over the limit its
    priority may use (the policy's limit less what higher priorities keep), so no wait makes room.
    The text follows the hit's outcome: `...; denied: this request alone ($2) is larger than the
    budget's limit ($1), so it never fits`.
    """
    if check.limit_nanos is not None and nanos > (usable := min(check.limit_nanos, CEILING)):
        amount = format_usd(nanos_to_usd(nanos), trim=True, dollar=True)
        limit = format_usd(nanos_to_usd(usable), trim=True, dollar=True)
        whole = usable == instance.limit_nanos
        full = instance.limit_text
    elif check.limit_calls is not None:
        return None if check.limit_calls > 0 else _NOTHING_USABLE
    elif check.limit_tokens is not None and tokens > (usable := min(check.limit_tokens, CEILING)):
        amount, limit = f"{tokens:,} tokens", f"{usable:,} tokens"
        whole = usable == instance.policy.limit_tokens
        full = f"{instance.policy.limit_tokens or 0:,} tokens"
    else:
        return None
    where = "" if whole else " for its priority"
    limit = limit if whole else f"{limit} of {full}"
    return f"this request alone ({amount}) is larger than the budget's limit{where} ({limit}), so it never fits"


def room_after(
    instance: BudgetInstance,
    check: BudgetCheck,
    state: CheckState,
    *,
    nanos: int,
    tokens: int,
    buckets: Sequence[SubBucket],
    now: float,
) -> float | None:
    """Seconds from `now` until enough of a rolling budget's spend (`buckets`, as the store read
    them) has aged out that spent + reserved + this request's estimate fits the limit its priority
    may use; None when it never does (`too_large`). Reservations in flight are counted as spend
    made now (`RollingWindow.room_at`): most settle within seconds as spend that then counts for a
    whole window, and one that expires unsettled only frees room sooner.
    """
    window = instance.window
    if not isinstance(window, RollingWindow):
        raise TypeError(f"budget {instance.policy.name} has a calendar window: it resets at its end")
    if check.limit_nanos is not None:
        amounts, held, need, limit = (
            [(b.number, b.nanos) for b in buckets],
            state.reserved_nanos,
            nanos,
            check.limit_nanos,
        )
    elif check.limit_calls is not None:  # one call more; calls held are in the token slot
        amounts, held, need = [(b.number, b.requests) for b in buckets], state.reserved_tokens, 1
        limit = check.limit_calls
    elif check.limit_tokens is not None:
        amounts, held, need = [(b.number, b.tokens) for b in buckets], state.reserved_tokens, tokens
        limit = check.limit_tokens
    else:
        return 0.0
    at = window.room_at(amounts, held, need, min(limit, CEILING), now)
    return None if at is None else at - now


def read_sub_buckets(
    store: Store, instances: Sequence[BudgetInstance], now: float
) -> list[tuple[SubBucket, ...] | None]:
    """Each rolling instance's sub-buckets (None for a calendar one), `SUB_BUCKET_READS` windows a
    store call, so thousands of per-user budgets over their limit never make one long call (a Redis
    script blocks the server while it runs). None for a chunk the store cannot answer: its hits then
    say the longest wait (everything counted now has aged out), never a failure."""
    rolling = [(i.key, i.window) for i in instances if isinstance(i.window, RollingWindow)]
    read: list[tuple[SubBucket, ...] | None] = []
    for first in range(0, len(rolling), SUB_BUCKET_READS):
        chunk = rolling[first : first + SUB_BUCKET_READS]
        try:
            read.extend(store.read_sub_buckets(chunk, now))
        except Exception:  # a retry hint is advice: the decision stands without it
            logger.debug("budget sub-buckets could not be read; retry hints are the longest wait", exc_info=True)
            read.extend([None] * len(chunk))
    found = iter(read)
    return [next(found) if isinstance(i.window, RollingWindow) else None for i in instances]


SUB_BUCKET_READS: Final = 256
"""Rolling windows per `Store.read_sub_buckets` call (each up to 61 sub-buckets)."""


def _room(
    instance: BudgetInstance,
    state: CheckState,
    *,
    check: BudgetCheck | None,
    estimate: tuple[int, int],
    store: Store | None,
    buckets: Sequence[SubBucket] | None,
    now: float,
) -> tuple[float | None, str | None]:
    """(wait_s, never) of a hit (`budget_hit`): worked out only for a budget that is over."""
    if state.fits:
        return None, None
    check = check or instance.checks[Priority.CRITICAL]
    never = too_large(instance, check, *estimate)
    if never is not None or not isinstance(instance.window, RollingWindow):
        return None, never
    if buckets is None and store is not None:
        buckets = read_sub_buckets(store, (instance,), now)[0]
    if buckets is None:
        return None, None
    wait = room_after(instance, check, state, nanos=estimate[0], tokens=estimate[1], buckets=buckets, now=now)
    return wait, None if wait is not None else _NOTHING_USABLE


_NOTHING_USABLE: Final = "the budget's limit leaves nothing for its priority, so it never fits"


def _longest_wait(window: RollingWindow, now: float) -> float:
    """Until everything counted at `now` has aged out (reservations as spend made now)."""
    return window.drops_at(int(now // window.step)) - now


def _hit_fields(
    instance: BudgetInstance,
    spent_nanos: int,
    spent_tokens: int,
    reserved_nanos: int,
    *,
    exceeded: bool,
    now: float,
    wait_s: float | None,
    never: str | None,
    reserved_tokens: int = 0,
    text: bool = False,
) -> tuple[Any, ...]:
    """A budget hit's fields, in `PolicyHit`'s order (tests/policies/test_budget.py holds it to that);
    with `text`, as `PolicyHit.to_dict()` has them (money and times as text, enums as their values)."""
    # A decision over HTTP builds one per matching budget: the instance's parts are read once each.
    policy, parts, terms = instance.policy, instance.parts, instance.terms
    label = instance.label
    used = spent_nanos + reserved_nanos
    utilization = budget_utilization(instance, spent_nanos, spent_tokens, reserved_nanos, reserved_tokens)
    calls = policy.limit_calls
    if terms.limit_nanos is not None:
        amount = f"{format_nanos(used, dollar=True)} of {parts.limit_text}"
    elif calls is not None:
        held = f" ({reserved_tokens:,} in flight)" if reserved_tokens else ""
        amount = f"{spent_tokens + reserved_tokens:,} of {calls:,} model calls{held}"
    else:
        amount = f"{spent_tokens:,} of {policy.limit_tokens or 1:,} tokens"
    action = parts.on_exceed if exceeded else Action.ALLOW
    message = f"{instance.head}{amount} this {policy.window} ({utilization:.0%})"
    window = terms.window
    resets_at = None
    retry_after_s = None
    if isinstance(window, CalendarWindow):
        resets_at = window.resets_at_datetime(now)
        if exceeded and action is Action.DENY and never is None:
            retry_after_s = max(resets_at.timestamp() - now, 0.0)
    elif exceeded and never is None:
        # Nothing resets: the hit says when enough spend has aged out, whatever its action (a
        # degrade or a warning lasts until then too).
        retry_after_s = wait_s if wait_s is not None else _longest_wait(window, now)
    if exceeded:
        message += _OUTCOME[action]
        if never is not None:
            message += f": {never}"
    severity = policy.severity(utilization)
    spent_usd: Decimal | str
    limit_usd: Decimal | str | None
    reserved_usd: Decimal | str
    when: datetime | str | None
    if text:  # money printed from its nano-dollars, not through a `Decimal`
        spent_usd, reserved_usd = format_nanos(spent_nanos), format_nanos(reserved_nanos)
        limit_usd = parts.limit_usd_text
        action_value, severity_value = str.__str__(action), str.__str__(severity)  # as `policy_hit_dict`'s
        when = window.resets_at_text(now) if isinstance(window, CalendarWindow) else None
    else:
        spent_usd, reserved_usd = nanos_to_usd(spent_nanos), nanos_to_usd(reserved_nanos)
        limit_usd = policy.limit_usd
        action_value, severity_value, when = action, severity, resets_at
    return (
        "budget",  # kind
        policy.name,  # policy
        action_value,  # action
        message,  # message
        label,  # scope
        severity_value,  # severity
        policy.shadow,  # shadow
        spent_usd,  # spent_usd
        limit_usd,  # limit_usd
        spent_tokens if calls is None else None,  # spent_tokens
        policy.limit_tokens,  # limit_tokens
        reserved_usd,  # reserved_usd
        utilization,  # utilization
        policy.window,  # window
        when,  # resets_at
        retry_after_s,  # retry_after_s
        parts.degrade,  # model
        spent_tokens + reserved_tokens if calls is not None else None,  # spent_calls
        calls,  # limit_calls
    )


_OUTCOME: Final = {Action.DENY: "; denied", Action.WARN: "; over, warning only", Action.DEGRADE: "; degrading"}
_ID_DIMENSIONS: Final = frozenset({"user", "conversation", "trace"})
_SPEND: Final = "otel_puppy_budget_spend_usd"
_LIMIT: Final = "otel_puppy_budget_limit_usd"
_UTILIZATION: Final = "otel_puppy_budget_utilization_ratio"
_RESERVED: Final = "otel_puppy_budget_reserved_usd"
_WINDOW: Final = "otel_puppy_budget_window_seconds"
_LABEL_DIMENSIONS: Final = tuple(d for d in DIMENSIONS if d != "trace")


def _no_dimensions(call: LLMCall) -> tuple[()]:
    """The scope cache's key of every call when no budget reads a dimension."""
    return ()


def _names_trace(budget: BudgetPolicy) -> bool:
    """Whether a budget reads the trace id (`per: [trace]`, or a `match` on it)."""
    return "trace" in budget.per or (budget.match is not None and budget.match.trace is not None)


_MAX_PROBLEMS: Final = 100
"""Unreadable budgets remembered for `problems()` (one is enough to be not ready)."""
_UNREADABLE_OUTCOME: Final = {
    Action.DENY: "; denied",
    Action.WARN: "; warning only",
    Action.DEGRADE: "; degrading",
    Action.ALLOW: "",
}


def readable(state: CheckState) -> bool:
    """Whether a store's answer is a budget state: non-negative integers (a poisoned one is not)."""
    return all(type(value) is int and value >= 0 for value in state[:4])


def unreadable_hit(instance: BudgetInstance) -> PolicyHit:
    """A budget whose state cannot be read: it counts as exhausted, so its action applies."""
    policy = instance.policy
    action = instance.on_exceed
    return PolicyHit(
        kind="budget",
        policy=policy.name,
        action=action,
        message=f"{instance.head}its state cannot be read; counted as exhausted{_UNREADABLE_OUTCOME[action]}",
        scope=instance.label,
        severity=Severity.EMERGENCY,
        shadow=policy.shadow,
        limit_usd=policy.limit_usd,
        limit_tokens=policy.limit_tokens,
        window=policy.window,
        model=instance.degrade,
        limit_calls=policy.limit_calls,
    )


def state_hit(
    instance: BudgetInstance,
    state: CheckState,
    now: float,
    *,
    check: BudgetCheck | None = None,
    estimate: tuple[int, int] = (0, 0),
    store: Store | None = None,
    buckets: Sequence[SubBucket] | None = None,
) -> PolicyHit:
    """`budget_hit` for a state the store answered about a request with `estimate` (nano-USD, tokens)
    at the limit of `check` (its priority's; the whole limit when not given). A rolling budget that
    is over reads its sub-buckets (`buckets`, or from `store`) to say when the request fits."""
    wait_s, never = _room(instance, state, check=check, estimate=estimate, store=store, buckets=buckets, now=now)
    return budget_hit(
        instance,
        spent_nanos=state.spent_nanos,
        spent_tokens=state.spent_tokens,
        reserved_nanos=state.reserved_nanos,
        exceeded=not state.fits,
        now=now,
        wait_s=wait_s,
        never=never,
        reserved_tokens=state.reserved_tokens,
    )


def state_hit_dict(
    instance: BudgetInstance,
    state: CheckState,
    now: float,
    *,
    check: BudgetCheck | None = None,
    estimate: tuple[int, int] = (0, 0),
    store: Store | None = None,
) -> dict[str, Any]:
    """`state_hit(...).to_dict()` without the `PolicyHit` in between."""
    wait_s, never = _room(instance, state, check=check, estimate=estimate, store=store, buckets=None, now=now)
    return budget_hit_dict(
        instance,
        spent_nanos=state.spent_nanos,
        spent_tokens=state.spent_tokens,
        reserved_nanos=state.reserved_nanos,
        exceeded=not state.fits,
        now=now,
        wait_s=wait_s,
        never=never,
        reserved_tokens=state.reserved_tokens,
    )


class _Unreadable:
    """Budgets whose state could not be read, by key, until `BudgetRuntime.problems` reads them again.
    One per engine: a reload keeps it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.found: dict[str, tuple[BudgetInstance, BudgetCheck]] = {}


@dataclass(frozen=True, slots=True)
class _Series:
    """What a scrape exports, grouped: one series per (budget, scope) over the instances behind it."""

    generation: int
    """The book's generation these were computed at."""
    heads: tuple[tuple[str, BudgetInstance], ...]
    """Per series: its `scope` label and its first instance (the budget's policy, limit and window)."""
    labels: tuple[dict[str, str], ...]
    """Per series: its label dict, shared by its samples in every family (never changed)."""
    groups: tuple[tuple[BudgetCheck, ...], ...]
    """Per series: the checks of the instances it is the fullest of, in label order."""
    folded: int
    """How many scopes the guard folded into `other` computing these."""


class BudgetRuntime:
    """The budgets' `PolicyRuntime`: alerts on crossings, statuses and gauges read from the store.

    Budgets have no say in `check`: their say is the admission role (`admission.py`: reserve on
    every matching budget atomically, settle when the span arrives), over this runtime's `book`.
    Their state lives in the store, so there is nothing to export.
    """

    kind: Final = "budgets"
    persists: Final = False
    shared: Final = False

    def __init__(self, book: BudgetBook, context: RuntimeContext, unreadable: _Unreadable | None = None) -> None:
        self.book = book
        self._context = context
        self._unreadable = unreadable or _Unreadable()
        self._alerting = any(budget.alerts for budget in book.budgets)
        self._cached_series: _Series | None = None

    @classmethod
    def build(cls, policies: tuple[BudgetPolicy, ...], context: RuntimeContext) -> BudgetRuntime:
        return cls(BudgetBook(policies, context.zone, context.log, context.clock.now), context)

    def observe(self, observed: Sequence[tuple[LLMCall, int | None]], now: float) -> None:
        """Alert on the thresholds the instances these calls count against crossed."""
        if not self._alerting:
            return
        touched: dict[str, BudgetInstance] = {}
        for call, _ in observed:
            for instance in self.book.instances(call.scope()):
                if instance.policy.alerts:
                    touched[instance.key] = instance
        if not touched:
            return
        # The spend is applied: a store failing now delays an alert, it must not fail the batch.
        try:
            self._check_alerts(list(touched.values()), now)
        except StoreError as exc:
            self._context.emit(StoreFailed("alerts", exc))

    def check(self, request: DecisionRequest, now: float) -> Sequence[PolicyHit]:
        return ()

    def release(self, request: DecisionRequest) -> None:
        """Nothing here: admission releases the reservation."""

    def statuses(self, now: float) -> list[PolicyHit]:
        """Every known instance's hit now; one whose state cannot be read counts as exhausted.

        Raises:
            StoreError: the store does not answer.
        """
        readings = self.readings(now)
        # Rolling budgets that are over say when they have room: their sub-buckets, in one read.
        over = [
            i for i, state in readings if state is not None and not state.fits and isinstance(i.window, RollingWindow)
        ]
        buckets = dict(zip((i.key for i in over), read_sub_buckets(self._context.store, over, now), strict=True))
        return [
            state_hit(instance, state, now, buckets=buckets.get(instance.key))
            if state is not None
            else unreadable_hit(instance)
            for instance, state in readings
        ]

    def readings(self, now: float) -> list[tuple[BudgetInstance, CheckState | None]]:
        """Every known budget instance with its state now, read in one call that reserves nothing.

        A budget whose state the store cannot read has `None` (and is remembered for `problems()`):
        if the one read raises, halves are read again until the unreadable ones are found, so one
        poisoned budget costs O(log n) more reads, not every budget's answer.

        Raises:
            StoreError: the store does not answer.
        """
        instances = self.book.known_instances()
        readings: list[tuple[BudgetInstance, CheckState | None]] = []
        store = self._context.store

        def read(group: tuple[BudgetInstance, ...]) -> None:
            checks = [i.checks[Priority.CRITICAL] for i in group]
            try:
                states = store.read_budgets(checks, now)
            except StoreError:
                raise
            except Exception as exc:
                if len(group) == 1:
                    self.remember_unreadable(group[0], checks[0], exc)
                    readings.append((group[0], None))
                    return
                read(group[: len(group) // 2])
                read(group[len(group) // 2 :])
                return
            readings.extend(zip(group, states, strict=True))

        if instances:
            read(instances)
        return readings

    def collect(self, now: float) -> Iterable[Metric]:
        """Spend, limit, utilization, reserved and window length per (budget, scope): one series each,
        the fullest instance behind it. Per-user budgets export only their fullest (`max`: ids are
        never labels), and past the cardinality guard scopes fold into `other`, once."""
        labels = ("budget", "scope", "window")
        spend = GaugeMetricFamily(_SPEND, "Spend counted against a budget in its current window.", labels=labels)
        limit = GaugeMetricFamily(_LIMIT, "A budget's limit.", labels=labels)
        utilization = GaugeMetricFamily(
            _UTILIZATION, "Spent plus reserved over the limit (1 is exhausted).", labels=labels
        )
        reserved = GaugeMetricFamily(_RESERVED, "Estimates reserved by decisions and not yet settled.", labels=labels)
        window_seconds = GaugeMetricFamily(
            _WINDOW,
            "Length of a budget's window (a calendar window's current one); spending its limit over it is burn rate 1.",
            labels=labels,
        )
        families = (spend, limit, utilization, reserved, window_seconds)
        budgets = self.book.budgets
        if not budgets:
            return families
        lengths: dict[str, float] = {}
        for budget in budgets:
            span = self.book.window(budget.name)
            start, end = span.bounds(now) if isinstance(span, CalendarWindow) else (0.0, float(span.seconds))
            lengths[budget.name] = end - start
        series, fresh = self._series()
        states: Sequence[CheckState | None] = ()
        try:
            states = self._context.store.read_fullest(series.groups, now)
        except StoreError as exc:  # the rest of the scrape still answers
            self._context.emit(StoreFailed("scrape", exc))
        except Exception:
            # A state the store cannot read: instance by instance, so one poisoned budget loses
            # only its own sample (and /readyz says why).
            states = self._fullest_readable(series, now)
        if series.folded and not fresh:
            # The guard counts each time a folded scope is asked for; cached series ask it nothing,
            # so count what asking for each again would have (`otel_puppy_label_overflow_total`).
            overflow = self._context.guard.overflow
            overflow["scope"] = overflow.get("scope", 0) + series.folded
        # Samples appended whole, each series' label dict built once per instance set (`_series`):
        # `add_metric` zips a new dict per sample, a third of what a scrape of many budgets costs.
        utilization_samples, spend_samples = utilization.samples, spend.samples
        limit_samples, reserved_samples, window_samples = limit.samples, reserved.samples, window_seconds.samples
        for (_, instance), names, state in zip(series.heads, series.labels, states, strict=False):
            if state is None:
                continue  # cannot be read: no sample rather than a wrong one (and /readyz says why)
            policy = instance.policy
            used = budget_utilization(
                instance, state.spent_nanos, state.spent_tokens, state.reserved_nanos, state.reserved_tokens
            )
            utilization_samples.append(Sample(_UTILIZATION, names, used))
            if policy.limit_usd is not None:
                spend_samples.append(Sample(_SPEND, names, nanos_to_float(state.spent_nanos)))
                limit_samples.append(Sample(_LIMIT, names, float(policy.limit_usd)))
                reserved_samples.append(Sample(_RESERVED, names, nanos_to_float(state.reserved_nanos)))
            window_samples.append(Sample(_WINDOW, names, lengths[policy.name]))
        return families

    def _series(self) -> tuple[_Series, bool]:
        """The scrape's groups for the book's instances now, and whether they were computed just
        now: only when an instance was first seen since (then the guard is asked for every scope,
        in the order a scrape always asked)."""
        generation = self.book.generation
        cached = self._cached_series
        if cached is not None and cached.generation == generation:
            return cached, False
        per_ids = {b.name for b in self.book.budgets if _ID_DIMENSIONS.intersection(b.per)}
        guard = self._context.guard
        groups: dict[tuple[str, str], tuple[BudgetInstance, list[BudgetCheck]]] = {}
        overflow = guard.overflow
        folded = overflow.get("scope", 0)
        for instance in self.book.known_instances():
            name = instance.policy.name
            scope = "max" if name in per_ids else guard("scope", instance.label)
            group = groups.get((name, scope))
            if group is None:
                groups[(name, scope)] = (instance, [instance.checks[Priority.CRITICAL]])
            else:
                group[1].append(instance.checks[Priority.CRITICAL])
        heads = tuple((scope, instance) for (_, scope), (instance, _) in groups.items())
        series = _Series(
            generation,
            heads,
            tuple(
                {"budget": instance.policy.name, "scope": scope, "window": instance.policy.window}
                for scope, instance in heads
            ),
            tuple(tuple(checks) for _, checks in groups.values()),
            overflow.get("scope", 0) - folded,  # the scopes the guard folded (and counted) just now
        )
        self._cached_series = series
        return series, True

    def _fullest_readable(self, series: _Series, now: float) -> list[CheckState | None]:
        """Each group's fullest readable instance's state, instances read one by one (`readings`);
        None for a group none of which can be read."""
        by_key = {instance.key: state for instance, state in self.readings(now)}
        found: list[CheckState | None] = []
        for group in series.groups:
            states = [state for check in group if (state := by_key.get(check.scope)) is not None]
            found.append(fullest_states(((group[0],) * len(states),), states)[0] if states else None)
        return found

    def export_state(self) -> dict[str, bytes]:
        return {}  # the store holds every budget's state

    def import_state(self, items: Mapping[str, bytes]) -> None:
        """Nothing to import: the store holds every budget's state."""

    def version(self, key: str, blob: bytes) -> int | None:
        return 0  # not shared

    def with_policies(self, policies: tuple[BudgetPolicy, ...]) -> BudgetRuntime:
        """Window spend is kept by the store (keyed by name and scope); the scopes seen carry over."""
        book = BudgetBook(policies, self._context.zone, self._context.log, self._context.clock.now)
        book.carry_over(self.book)
        return BudgetRuntime(book, self._context, self._unreadable)

    def handle(self, event: RuntimeEvent) -> None:
        """Nothing another kind does concerns budgets."""

    def after_fork(self) -> None:
        self._unreadable.lock = threading.Lock()

    # --- unreadable state -----------------------------------------------------------------------

    def remember_unreadable(self, instance: BudgetInstance, check: BudgetCheck, exc: Exception) -> None:
        """Remember a budget whose state could not be read, for `problems()` (bounded)."""
        unreadable = self._unreadable
        with unreadable.lock:
            if instance.key in unreadable.found or len(unreadable.found) < _MAX_PROBLEMS:
                unreadable.found[instance.key] = (instance, check)
        self._context.log.error(
            f"unreadable:{instance.policy.name}",
            "budget %s: its state cannot be read (%s: %s); it counts as exhausted until it can",
            instance.policy.name,
            type(exc).__name__,
            exc,
        )

    def problems(self, now: float) -> list[str]:
        """Budgets a read found unreadable, each read again now (a repaired or expired one clears).

        Raises:
            StoreError: the store does not answer.
        """
        unreadable = self._unreadable
        with unreadable.lock:
            recorded = list(unreadable.found.items())
        found: list[str] = []
        for key, (instance, check) in recorded:
            try:
                ok = readable(self._context.store.read_budgets([check], now)[0])
            except StoreError:
                raise
            except Exception:
                ok = False
            if ok:
                with unreadable.lock:
                    unreadable.found.pop(key, None)
            else:
                found.append(f"the state of budget {instance.policy.name} cannot be read")
        return found

    def _check_alerts(self, instances: list[BudgetInstance], now: float) -> None:
        store = self._context.store
        counters = store.totals([(i.key, i.window) for i in instances], now)
        for instance, counter in zip(instances, counters, strict=True):
            policy = instance.policy
            if instance.limit_nanos is not None:
                utilization = counter.nanos / instance.limit_nanos
            elif policy.limit_calls is not None:
                utilization = counter.requests / policy.limit_calls
            else:
                utilization = counter.tokens / (policy.limit_tokens or 1)
            thresholds = (*policy.alerts, 1.0) if policy.alerts[-1] < 1.0 else policy.alerts
            window = instance.window
            if isinstance(window, CalendarWindow):
                start, end = window.bounds(now)
                suffix, expires_at = f"|{start:.0f}", end
            else:
                suffix, expires_at = "", now + window.seconds
            for index, threshold in enumerate(thresholds):
                key = f"alert|{instance.key}|{threshold}{suffix}"
                if utilization < threshold:
                    if not suffix:
                        store.unmark(key)  # a rolling window drops below: the next crossing alerts again
                    continue
                if not store.mark(key, expires_at):
                    continue
                severity = (
                    Severity.EMERGENCY
                    if threshold >= 1.0
                    else (Severity.INFO, Severity.WARNING, Severity.CRITICAL)[min(index, 2)]
                )
                where = f" for {instance.label}" if instance.label else ""
                self._context.emit(
                    AlertEvent(
                        kind="budget",
                        policy=policy.name,
                        scope=instance.label,
                        severity=severity,
                        message=f"budget {policy.name}{where} crossed {threshold:.0%} of its {policy.window} limit "
                        f"({utilization:.1%} used)",
                        at=now,
                        value=utilization,
                        threshold=threshold,
                    )
                )
