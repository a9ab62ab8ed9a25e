"""Budget admission: the role budgets play in a decision and in the spend it settles.

Per policy set, `BudgetAdmission` works out once per request shape which budget instances a
request counts against (`plan`), prices its estimate (`estimate`), and reserves it on all of them
in one atomic store call (`admit`); the call's span later settles the reservation (`record`
builds its spend record: the decision id, or the settle key of a span without one). A decision
keeps its budget hits lazy (`PendingBudgetHit`, `BudgetHits`): a `PolicyHit` is built only when
read. `decide_despite` (over `check_each`) is the rule after an unexpected error
(`PolicyEngine.decide`): never looser than the budgets. `Headroom` is the read-only view
routing gets: it reserves nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from operator import attrgetter
from typing import Any, Final, TypeVar

from otel_puppy._keys import ESCAPE, escape
from otel_puppy.bounds import MAX_CALL_COST_USD
from otel_puppy.call_identity import CALL_KEYS_TTL_S, call_keys
from otel_puppy.calls import LLMCall
from otel_puppy.decision import Action, Decision, DecisionRequest, LazyHits, PolicyHit
from otel_puppy.exceptions import RequestError, StoreError
from otel_puppy.learned import LearnedEstimates
from otel_puppy.ledger import HOUR, LedgerEntry, encode_dims, hour_of
from otel_puppy.money import nanos_to_usd, usd_to_nanos
from otel_puppy.policies.base import Degrade
from otel_puppy.policies.breaker import BreakerRuntime
from otel_puppy.policies.budget import BudgetInstance, BudgetRuntime, readable, state_hit, state_hit_dict
from otel_puppy.policies.budget import unreadable_hit as _unreadable_hit
from otel_puppy.policies.matching import Scope
from otel_puppy.pricing import Price, Pricer
from otel_puppy.store.base import (
    Admission,
    Admitted,
    BudgetCheck,
    CheckState,
    Increment,
    SpendRecord,
    Spread,
    Store,
)
from otel_puppy.windows import CalendarWindow, Window

__all__ = (
    "LEARNED",
    "NONE",
    "REQUEST",
    "TOTAL_SCOPE",
    "BudgetAdmission",
    "BudgetHits",
    "Headroom",
    "Hit",
    "PendingBudgetHit",
    "Plan",
    "decide_despite",
    "denied",
    "late",
    "settle_key",
)

REQUEST: Final = "request"
"""`Decision.estimate_source`: the request's own estimate was reserved."""
LEARNED: Final = "learned"
"""... a learned one (`learned.py`): the request gave none, or input tokens alone."""
NONE: Final = "none"
"""... none: the request gave none and too few calls were seen to learn one."""
TOTAL_SCOPE: Final = "total"
"""The scope of the built-in windows' total spend (`otel_puppy_spend_usd`)."""
_MAX_ESTIMATE_NANOS: Final = usd_to_nanos(MAX_CALL_COST_USD)
MAX_AMOUNT: Final = 2**53 - 1
"""Largest estimate in nano-USD or tokens (about $9 million): exact in every store, Redis Lua included."""
_FITS: Final = attrgetter("fits")
_increment: Final = partial(tuple.__new__, Increment)
"""`Increment` from a tuple of its fields, without the named tuple's Python-level `__new__` (every
applied span makes one per total window and budget instance)."""
_spend_record: Final = partial(tuple.__new__, SpendRecord)
_ledger_entry: Final = partial(tuple.__new__, LedgerEntry)
"""`SpendRecord` from a tuple of all its fields, in order (tests/test_engine_batch.py holds the order)."""
_spread: Final = partial(tuple.__new__, Spread)
_PLANS_LIMIT: Final = 20_000
"""Request shapes remembered per policy set (a per-user budget makes one per user); then forgotten."""
_DIMS_LIMIT: Final = 1_024
"""Ledger keys remembered (`BudgetAdmission.dims`); then forgotten all at once. Few: with ten thousand
agents a memo of them all held 1.3 MB (each key a second copy of the ledger row's) for what an encoding
(`encode_dims`, under a microsecond) gives."""


class PendingBudgetHit:
    """A budget's say in a decision: its action is known at once, its `PolicyHit` built if read."""

    __slots__ = ("_built", "action", "check", "estimate", "instance", "now", "shadow", "state", "store")
    kind: Final = "budget"

    def __init__(
        self,
        instance: BudgetInstance,
        state: CheckState,
        now: float,
        *,
        check: BudgetCheck | None = None,
        estimate: tuple[int, int] = (0, 0),
        store: Store | None = None,
    ) -> None:
        self.instance = instance
        self.state = state
        self.now = now
        self.check = check
        """The check the request was admitted by (its priority's limit)."""
        self.estimate = estimate
        self.store = store
        """Read only if a rolling budget is over: its sub-buckets say when the request fits."""
        self.action = Action.ALLOW if state.fits else instance.on_exceed
        self.shadow = instance.policy.shadow
        self._built: PolicyHit | None = None

    def __call__(self) -> PolicyHit:
        built = self._built
        if built is None:
            built = self._built = state_hit(
                self.instance, self.state, self.now, check=self.check, estimate=self.estimate, store=self.store
            )
        return built

    @property
    def policy(self) -> str:
        return self.instance.policy.name

    @property
    def scope(self) -> str:
        return self.instance.label

    @property
    def model(self) -> str | None:
        action = self.instance.policy.action
        return action.degrade if isinstance(action, Degrade) else None

    @property
    def retry_after_s(self) -> float | None:
        return self().retry_after_s

    @property
    def resets_at(self) -> datetime | None:
        window = self.instance.window  # no hit built: a rolling window never resets
        return window.resets_at_datetime(self.now) if isinstance(window, CalendarWindow) else None


Hit = PolicyHit | PendingBudgetHit
"""A policy's say in a decision, possibly still lazy."""


_Built = TypeVar("_Built")


class BudgetHits(LazyHits):
    """Some of a decision's budget hits (`indexes` into its instances and states), built on first
    access: an allowed decision keeps one of these as its `reasons` (and one as its `shadow`)
    instead of a pending hit per budget; sent over HTTP, it builds no `PolicyHit` at all."""

    __slots__ = ("checks", "estimate", "indexes", "instances", "now", "states", "store")

    def __init__(  # noqa: PLR0917 - positional: built for nearly every decision
        self,
        instances: tuple[BudgetInstance, ...],
        states: Sequence[CheckState],
        indexes: tuple[int, ...],
        now: float,
        checks: tuple[BudgetCheck, ...] | None = None,
        estimate: tuple[int, int] = (0, 0),
        store: Store | None = None,
    ) -> None:
        self._built = None
        self.instances = instances
        self.states = states
        self.indexes = indexes
        self.now = now
        self.checks = checks
        """The checks the request was admitted by, as `instances` (their priority's limits)."""
        self.estimate = estimate
        self.store = store
        """Read only for a rolling shadow budget that is over (`PendingBudgetHit.store`)."""

    def to_dicts(self) -> list[dict[str, Any]]:
        """`[hit.to_dict() for hit in self]`, building no `PolicyHit` unless they were built."""
        if self._built is not None:
            return [hit.to_dict() for hit in self._built]
        return self._each(state_hit_dict)

    def _hits(self) -> tuple[PolicyHit, ...]:
        built = self._built
        if built is None:
            built = self._built = tuple(self._each(state_hit))
        return built

    def _each(self, build: Callable[..., _Built]) -> list[_Built]:
        """`build` (`state_hit` or `state_hit_dict`) of each of the hits, in order."""
        checks, estimate, store = self.checks, self.estimate, self.store
        return [
            build(
                self.instances[index],
                self.states[index],
                self.now,
                check=checks[index] if checks is not None else None,
                estimate=estimate,
                store=store,
            )
            for index in self.indexes
        ]

    def __len__(self) -> int:
        return len(self.indexes)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the policies say about every request of one shape (its scope and priority), worked
    out once per policy set: whether a routing policy matches, the budget instances it counts
    against with their admission checks, which of those are enforced or shadow, and the key a
    span without a decision id settles its reservation by. Nothing in it depends on spend."""

    routed: bool
    instances: tuple[BudgetInstance, ...]
    checks: tuple[BudgetCheck, ...]
    enforced: tuple[int, ...]
    shadow: tuple[int, ...]
    settle_key: str
    store: Store
    """Where a hit of a rolling budget that is over reads its sub-buckets (`PendingBudgetHit.store`)."""

    def fits(self, states: Sequence[CheckState]) -> bool:
        """Whether every enforced budget has room (shadow ones are only reported)."""
        if not self.shadow:  # `map`, not a generator: `decide()` asks this of every decision
            return all(map(_FITS, states))
        return all(map(_FITS, map(states.__getitem__, self.enforced)))

    def hits(self, admitted: Admitted | None, now: float, estimate: tuple[int, int] = (0, 0)) -> list[Hit]:
        """A pending hit per budget instance, from the store's answer to a request with `estimate`."""
        if admitted is None:
            return []
        store = self.store
        return [
            PendingBudgetHit(instance, state, now, check=check, estimate=estimate, store=store)
            for instance, state, check in zip(self.instances, admitted.states, self.checks, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class BudgetAdmission:
    """The admission role over one policy set's budgets: plan, estimate, reserve, settle."""

    budgets: BudgetRuntime
    pricer: Pricer
    store: Store
    routed: bool
    """Whether any routing policy exists (a plan then asks `applies`)."""
    applies: Callable[[Scope], bool]
    """`Router.applies`: whether a routing policy matches a scope."""
    traced: bool
    """Whether a policy reads the trace id: only then is a request's plan its own per agent run."""
    reservation_ttl_s: float
    total_windows: tuple[Window, ...]
    ledger_retention_s: float | None = None
    """How long the ledger keeps a call's row; `None`: no ledger (`ledger.py`)."""
    learned: LearnedEstimates | None = None
    """Where a request without an estimate gets one (`learned.py`); `None`: it gets none."""
    plans: dict[tuple[object, ...], Plan] = field(default_factory=dict)
    """`decide()`'s work per request shape, kept until the next reload."""
    dims: dict[tuple[str | None, ...], str] = field(default_factory=dict)
    """`ledger.encode_dims` per dimensions seen lately (at most `_DIMS_LIMIT`, then forgotten all at
    once): the ledger row key of the calls of a few busy agents without an encoding each."""

    def plan(self, request: DecisionRequest) -> Plan:
        key = (
            request.provider,
            request.model,
            request.agent,
            request.service,
            request.user,
            request.team,
            request.environment,
            request.conversation,
            request.operation,
            request.priority,
            request.trace_id if self.traced else None,
        )
        plan = self.plans.get(key)
        if plan is None:
            scope = request.scope()
            instances = self.budgets.book.instances(scope)
            plan = Plan(
                routed=self.routed and self.applies(scope),
                instances=instances,
                checks=tuple(instance.checks[request.priority] for instance in instances),
                enforced=tuple(i for i, instance in enumerate(instances) if not instance.policy.shadow),
                shadow=tuple(i for i, instance in enumerate(instances) if instance.policy.shadow),
                settle_key=settle_key(request.provider, request.model, request.agent, request.user),
                store=self.store,
            )
            if len(self.plans) >= _PLANS_LIMIT:
                self.plans.clear()
            self.plans[key] = plan
        return plan

    def estimate(self, request: DecisionRequest, now: float) -> tuple[tuple[int, int], str]:
        """(nano-USD, tokens) to reserve, and where the figure comes from (`REQUEST`, `LEARNED` or
        `NONE`): the request's estimate (a token estimate priced for its model; input tokens alone
        priced with the learned output tokens), else the learned cost of such a call, else none. A
        priced token estimate is held to the bound a given one has (`bounds.MAX_CALL_COST_USD`), and
        every figure is far below what every store holds exactly.

        Raises:
            RequestError: the token estimate's price for this model is over that bound.
            StoreError: the learned figure had to be read and the store did not answer.
        """
        tokens = request.estimated_tokens
        cost = request.estimated_cost_usd
        if cost is not None and not tokens:  # held by the request to `MAX_CALL_COST_USD`: exact everywhere
            return (usd_to_nanos(cost), 0), REQUEST
        name = "estimated_output_tokens" if request.estimated_output_tokens else "estimated_input_tokens"
        if tokens > MAX_AMOUNT:
            raise RequestError(name, f"input and output token estimates must add up to at most {MAX_AMOUNT}")
        if cost is not None:
            return (usd_to_nanos(cost), tokens), REQUEST
        learned = self.learned
        if not tokens:
            found = (
                learned.estimate(request.agent, request.provider, request.model, now) if learned is not None else None
            )
            return ((found.nanos, 0), LEARNED) if found is not None else ((0, 0), NONE)
        output, source = request.estimated_output_tokens, REQUEST
        if output is None and learned is not None:  # input tokens alone: the output is learned
            found = learned.estimate(request.agent, request.provider, request.model, now)
            if found is not None:
                output, source = found.tokens, LEARNED
                tokens += found.tokens
        # Bounded token counts always price; a pricer that raises is our bug, not the request's
        # (`decide` then rules by the fail mode, never looser than the budgets).
        price = self.pricer.price_usage(
            request.provider,
            request.model,
            input_tokens=request.estimated_input_tokens or 0,
            output_tokens=output or 0,
        )
        nanos = price.nanos or 0
        if nanos > _MAX_ESTIMATE_NANOS:
            raise RequestError(name, f"is priced at over {MAX_CALL_COST_USD} USD for {request.model}")
        return (nanos, tokens), source

    def admit(
        self,
        plan: Plan,
        estimate: tuple[int, int],
        now: float,
        decision_id: str,
        *,
        reserve: bool,
        source: str = REQUEST,
    ) -> Admitted | None:
        """The store's admission over the plan's budgets; `None` when the request falls in none.
        `source`: where the estimate came from, kept with the reservation for its outcome."""
        if not plan.checks:
            return None
        expires_at = now + self.reservation_ttl_s
        admission = Admission(
            decision_id, plan.checks, estimate[0], estimate[1], expires_at, plan.settle_key, reserve, source
        )
        return self.store.admit(admission, now)

    def check_each(self, request: DecisionRequest, estimate: tuple[int, int], now: float) -> list[Hit]:
        """Each budget the request falls in checked on its own with the estimate, reserving nothing:
        after an unexpected error, so a decision is never looser than the budgets. One whose state
        cannot be read counts as exhausted (and is reported by `problems()`).

        Raises:
            StoreError: the store does not answer.
        """
        plan = self.plan(request)
        hits: list[Hit] = []
        for instance, check in zip(plan.instances, plan.checks, strict=True):
            try:
                admission = Admission("", (check,), estimate[0], estimate[1], now, None, reserve=False)
                state = self.store.admit(admission, now).states[0]
                if not readable(state):
                    raise TypeError(f"not a budget state: {state!r}")  # noqa: TRY301 - counted as unreadable below
            except StoreError:
                raise
            except Exception as exc:
                self.budgets.remember_unreadable(instance, check, exc)
                hits.append(_unreadable_hit(instance))
            else:
                hits.append(PendingBudgetHit(instance, state, now, check=check, estimate=estimate, store=self.store))
        return hits

    def record(self, call: LLMCall, price: Price, now: float, *, lateness_s: float, ttl: float) -> SpendRecord:
        """The spend record of one call: the built-in totals and every budget instance it counts against."""
        return self.records([call], [price], now, lateness_s=lateness_s, ttl=ttl)[0]

    def records(
        self,
        calls: Sequence[LLMCall],
        prices: Sequence[Price],
        now: float,
        *,
        lateness_s: float,
        ttl: float,
        spread: bool = False,
    ) -> list[SpendRecord]:
        """`record` of each call with its price, in order: what is the same for the whole batch (windows,
        budgets, retention, the dedupe deadlines) looked up once. With `spread`, each record's increments
        are its `SpendRecord.spread` (for a store that reads it), the targets shared by the records of
        the calls that count in the same budget instances."""
        totals = self.total_windows
        total_targets = tuple((TOTAL_SCOPE, window) for window in totals)
        targets_of: dict[int, tuple[tuple[BudgetInstance, ...], tuple[tuple[str, Window], ...]]] = {}
        """Per tuple of instances (`call_instances` answers the same one for calls of one scope, by
        its id, kept here with it), the record's targets."""
        no_instances: tuple[BudgetInstance, ...] = ()
        book = self.budgets.book
        budgets = bool(book.budgets)
        instances_of = book.call_instances
        retention = self.ledger_retention_s
        split_of = self.pricer.split
        known = self.dims
        dedupe_until = now + ttl
        calls_until = now + min(ttl, CALL_KEYS_TTL_S)
        out: list[SpendRecord] = []
        append = out.append
        for call, price in zip(calls, prices, strict=True):
            # Spend belongs to the window the call ended in, but never to one in the future (skew), and
            # never to one so far back that no budget would see it while the metrics count it.
            end_ns = call.end_ns
            ts = now
            if end_ns > 0:
                ended = end_ns / 1e9
                if abs(ended - now) <= lateness_s:  # not `late`
                    ts = min(ended, now)
            nanos = price.nanos or 0
            tokens = call.input_tokens + call.output_tokens
            key = None
            spread_of = None
            if spread:
                instances = instances_of(call) if budgets else no_instances
                found = targets_of.get(id(instances))
                if found is None or found[0] is not instances:
                    targets = total_targets + tuple((instance.key, instance.window) for instance in instances)
                    found = targets_of[id(instances)] = (instances, targets)
                spread_of = _spread((found[1], ts, nanos, tokens))
                increments: list[Increment] = []
            else:
                increments = [_increment((TOTAL_SCOPE, window, ts, nanos, tokens)) for window in totals]
            if budgets:
                if not spread:
                    increments += [
                        _increment((instance.key, instance.window, ts, nanos, tokens))
                        for instance in instances_of(call)
                    ]
                key = settle_key(call.provider, call.request_model or call.model, call.agent, call.user)
            ledger = None
            if retention is not None and price.nanos is not None:
                split = split_of(call, price)
                if split is not None:
                    nanos_by_type, unit_prices = split
                    hour = hour_of(ts)
                    model = price.model or call.model
                    names = (call.provider, model, call.service, call.agent, call.team, call.environment, unit_prices)
                    dims = known.get(names)
                    if dims is None:
                        if len(known) >= _DIMS_LIMIT:
                            known.clear()
                        dims = known[names] = encode_dims(names)
                    cached, written, reasoning = call.cache_read_tokens, call.cache_write_tokens, call.reasoning_tokens
                    counts = (
                        1,
                        call.input_tokens - cached - written,
                        nanos_by_type[0],
                        cached,
                        nanos_by_type[1],
                        written,
                        nanos_by_type[2],
                        call.output_tokens - reasoning,
                        nanos_by_type[3],
                        reasoning,
                        nanos_by_type[4],
                        nanos_by_type[5],
                    )
                    ledger = _ledger_entry((hour, dims, counts, hour + HOUR + retention))
            trace = f"{call.dedupe_namespace}{call.trace_id:032x}"  # a scoped ingest token's namespace first
            append(
                _spend_record(
                    (
                        f"{trace}{call.span_id:016x}",  # span_key
                        # parent_key: a span is never its own parent (the store would find its own key just kept)
                        f"{trace}{call.parent_span_id:016x}"
                        if call.parent_span_id and call.parent_span_id != call.span_id
                        else None,
                        tuple(increments),
                        dedupe_until,
                        call.decision_id,
                        key,  # settle_key
                        call_keys(call),
                        calls_until,
                        call.error_class is None and not call.has_usage,  # is_weak
                        ledger,
                        spread_of,
                    )
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class Headroom:
    """What routing may ask: whether a candidate model could take this request now (no open
    enforced breaker, no exhausted deny budget). Read-only: it reserves and takes nothing."""

    admission: BudgetAdmission
    breakers: BreakerRuntime
    request: DecisionRequest
    now: float

    def available(self, provider: str, model: str) -> bool:
        if not self.breakers.available(provider, model):
            return False
        admission = self.admission
        plan = admission.plan(self.request.with_model(provider, model))
        if not plan.checks:
            return True
        states = admission.store.read_budgets(plan.checks, self.now)
        return not any(
            not state.fits and instance.on_exceed is Action.DENY and not instance.policy.shadow
            for instance, state in zip(plan.instances, states, strict=True)
        )


def decide_despite(
    admission: BudgetAdmission, request: DecisionRequest, failed: Decision, now: float
) -> tuple[Decision, tuple[str, str]]:
    """After an unexpected error in a decision: the fail mode (`failed`), never looser than the
    budgets; with the decision, its (action, policy) for `otel_puppy_decisions_total`.

    The rule: each budget the request falls in is read on its own, reserving nothing. One
    without room applies its action as always; one whose state cannot be read counts as
    exhausted (so a deny budget denies) and is reported by `problems()`. The decision is the
    strictest of those and of the fail mode. The fail mode alone decides only when no budget
    could be evaluated: the request falls in none, or the store does not answer.

    Raises:
        StoreError: the store does not answer.
    """
    try:
        estimate, source = admission.estimate(request, now)
    except Exception:  # the estimate may be what failed: read the budgets without it
        estimate, source = (0, 0), NONE
    hits: list[Hit] = [*failed.reasons, *admission.check_each(request, estimate, now)]
    action = Action.strictest([h.action for h in hits if not h.shadow])
    enforced = [h for h in hits if not h.shadow]
    deciding = [h for h in enforced if h.action is action and action is not Action.ALLOW]
    retry_after = max((h.retry_after_s for h in deciding if h.retry_after_s is not None), default=None)
    model = next((h.model for h in deciding if action is Action.DEGRADE and h.model), None)
    provider, model = Degrade(degrade=model).target(request.provider) if model else (request.provider, request.model)
    decision = Decision(
        action=action,
        provider=provider,
        model=model,
        reasons=LazyHits(enforced),
        shadow=LazyHits([h for h in hits if h.shadow]),
        retry_after_s=retry_after if action is Action.DENY else None,
        estimated_cost_usd=nanos_to_usd(estimate[0]) if estimate != (0, 0) else request.estimated_cost_usd,
        estimate_source=source,
    )
    return decision, (action.value, deciding[0].policy if deciding else "otel_puppy")


def denied(hits: Sequence[Hit]) -> bool:
    """Whether an enforced hit denies."""
    return any(h.action is Action.DENY and not h.shadow for h in hits)


def late(call: LLMCall, now: float, lateness_s: float) -> bool:
    """Whether the call ended outside the lateness bound (either way): then it is charged at `now`.

    A call without an end time is charged at `now` too, but is not late: nothing was moved.
    """
    return call.end_ns > 0 and abs(call.end_ns / 1e9 - now) > lateness_s


def settle_key(provider: str, model: str, agent: str | None, user: str | None) -> str:
    """Which reservation a span without a decision id settles: the oldest with the same key.

    Injective (a `|` inside a value is escaped), so agent `a|b` never settles agent `a`, user `b`.
    """
    joined = f"{provider or ''}|{model or ''}|{agent or ''}|{user or ''}"
    if ESCAPE not in joined and joined.count("|") == 3:  # nothing to escape: `escape` leaves each as is
        return joined
    return "|".join(escape(part or "", "|") for part in (provider, model, agent, user))
