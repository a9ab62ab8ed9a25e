"""`PolicyEngine`: prices calls, keeps state, and answers agents before they spend.

Both front doors (the span processor and, in service mode, the OTLP receiver) feed
`observe_many`; the store dedupes and applies atomically, so a span is counted once however
often it arrives and however many instrumentations describe its call. `decide` composes the
policy kinds: routing picks the model, breakers and anomalies may stop it, and budgets reserve
the estimate atomically (reserve, then settle when the call's span arrives).

Everything derived from the policy files lives in one immutable `_Rules` swapped whole on
reload, so a decision never sees half of an old set and half of a new one.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Final, overload

from opentelemetry import context as otel_context
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from otel_puppy._keys import escape
from otel_puppy._logging import RateLimitedLog
from otel_puppy._requests import MAX_AMOUNT, check_request, estimate_nanos, request_from_fields
from otel_puppy.alerts import AlertEvent, Alerts, AlertSink, LogSink, WebhookSink
from otel_puppy.bounds import MAX_CALL_COST_USD
from otel_puppy.calls import LLMCall
from otel_puppy.clock import Clock, SystemClock
from otel_puppy.decision import Action, Decision, DecisionRequest, LazyHits, PolicyHit, Priority, Severity
from otel_puppy.exceptions import PolicyDenied, PolicyErrors, RequestError, StoreError
from otel_puppy.metrics import Metrics
from otel_puppy.model_stats import ModelStat, ModelStats
from otel_puppy.money import nanos_to_float, nanos_to_usd, usd_to_nanos
from otel_puppy.policies import PolicySet, load_policies
from otel_puppy.policies.anomaly import AnomalyEvent, AnomalyStatus, AnomalyWatch
from otel_puppy.policies.base import Degrade
from otel_puppy.policies.breaker import BreakerBoard, BreakerGuard, BreakerStatus
from otel_puppy.policies.budget import BudgetBook, BudgetInstance, budget_hit, budget_hit_dict, budget_utilization
from otel_puppy.policies.routing import Router
from otel_puppy.policies.watch import PolicyWatcher
from otel_puppy.pricing import Price, Pricer, Unpriced
from otel_puppy.processor import DECISION_CONTEXT_KEY, PuppySpanProcessor
from otel_puppy.redundant import RedundancyTracker
from otel_puppy.settings import PuppySettings
from otel_puppy.store import ApplyResult, SpendRecord, Store, open_store
from otel_puppy.store.base import Admission, Admitted, BudgetCheck, CheckState, Counter, Increment
from otel_puppy.store.memory import MemoryStore
from otel_puppy.windows import CalendarWindow, RollingWindow, Window, parse_window

__all__ = ("DecisionGuard", "Observation", "PolicyEngine", "Snapshot", "WindowSpend")

logger = logging.getLogger("otel_puppy")

TOTAL_SCOPE: Final = "total"
_EXPIRE_EVERY_S: Final = 60.0
_SAVE_STATE_EVERY_S: Final = 60.0
"""Anomaly baselines (and every breaker) are saved this often from `observe_many`, and on `close()`."""
_SYNC_BREAKERS_EVERY_S: Final = 1.0
"""How often spans being applied also share breaker state with other replicas (see `_sync_breakers`)."""
_BREAKERS: Final = "breakers"
_ANOMALIES: Final = "anomalies"
_ID_DIMENSIONS: Final = frozenset({"user", "conversation"})
_MAX_ESTIMATE_NANOS: Final = usd_to_nanos(MAX_CALL_COST_USD)
_MAX_PROBLEMS: Final = 100
"""Unreadable budgets remembered for `problems()` (one is enough to be not ready)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What the engine made of one call."""

    call: LLMCall
    price: Price
    result: ApplyResult


@dataclass(frozen=True, slots=True)
class WindowSpend:
    window: str
    spend_usd: Decimal
    tokens: int
    requests: int
    resets_at: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The engine's state now: total spend per window, every budget, breaker, anomaly and model."""

    windows: tuple[WindowSpend, ...]
    budgets: tuple[PolicyHit, ...] = ()
    breakers: tuple[BreakerStatus, ...] = ()
    anomalies: tuple[AnomalyStatus, ...] = ()
    models: tuple[ModelStat, ...] = ()

    def spend(self, window: str) -> Decimal:
        for item in self.windows:
            if item.window == window:
                return item.spend_usd
        raise KeyError(window)

    def budget(self, policy: str, scope: str = "") -> PolicyHit:
        for hit in self.budgets:
            if hit.policy == policy and hit.scope == scope:
                return hit
        raise KeyError((policy, scope))


@dataclass(frozen=True, slots=True)
class _Rules:
    """Everything derived from one policy set; replaced whole on reload."""

    policies: PolicySet
    pricer: Pricer
    book: BudgetBook
    breakers: BreakerBoard
    anomalies: AnomalyWatch
    router: Router
    alerting: tuple[BudgetInstance, ...] = field(default=())
    plans: dict[tuple[object, ...], _Plan] = field(default_factory=dict)
    """`decide()`'s work per request shape, kept until the next reload (see `_Plan`)."""


class PolicyEngine:
    """Prices calls, keeps spend in a store, decides before calls, and exports it all to Prometheus.

    >>> engine = PolicyEngine.from_settings()  # doctest: +SKIP
    >>> logfire.configure(additional_span_processors=[engine.span_processor()])  # doctest: +SKIP
    >>> engine.decide(provider="openai", model="gpt-4.1", agent="support").action  # doctest: +SKIP
    <Action.ALLOW: 'allow'>
    """

    def __init__(
        self,
        settings: PuppySettings | None = None,
        *,
        policies: PolicySet | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        alert_sinks: Sequence[AlertSink] | None = None,
    ) -> None:
        self.settings = settings or PuppySettings.load()
        self.clock: Clock = clock or SystemClock()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.metrics = Metrics(self.registry, max_label_values=self.settings.max_label_values)
        # not `store or ...`: an empty MemoryStore is falsy (it has a length)
        self._store = store if store is not None else open_store(self.settings.store)
        if alert_sinks is None:
            alert_sinks = [LogSink()]
            if self.settings.alert_webhook_url:
                alert_sinks.append(WebhookSink(self.settings.alert_webhook_url))
        self.alerts = Alerts(alert_sinks)
        self._log = RateLimitedLog(logger, clock=self.clock.now)
        """Lines a request or a span can repeat at will (errors, refusals): one per reason per minute."""
        self._problems_lock = threading.Lock()
        self._unreadable_budgets: dict[str, tuple[BudgetInstance, BudgetCheck]] = {}
        """Budgets a decision could not read, by key, until `problems()` reads them again."""
        self.stats = ModelStats(self.clock)
        self.redundancy = RedundancyTracker(self.clock)
        zone = self.settings.zone
        self._total_windows: tuple[Window, ...] = (
            CalendarWindow("hour", zone),
            CalendarWindow("day", zone),
            RollingWindow(3600, "1h"),
            RollingWindow(86400, "24h"),
        )
        self._rules = self._build_rules(policies if policies is not None else PolicySet(), previous=None)
        self._state_lock = threading.Lock()
        self._saved: dict[str, set[str]] = {}
        """Keys of each state namespace in the store as far as we know: a full save deletes the rest."""
        self._saving = True
        self._next_state_save = self.clock.now() + _SAVE_STATE_EVERY_S
        self._next_breaker_sync = self.clock.now() + _SYNC_BREAKERS_EVERY_S
        self._share_breakers = not isinstance(self._store, MemoryStore)
        """Other processes may use the store (SQLite, Redis): sync breakers with them every second."""
        self._restore_state()
        self._decisions: dict[tuple[str, str], int] = {}
        self._decisions_lock = threading.Lock()
        self._processor: PuppySpanProcessor | None = None
        self._processor_lock = threading.Lock()
        self._next_expiry = 0.0
        self._watcher: PolicyWatcher | None = None
        self._closed = False
        self.metrics.add_collector(self._collect)

    @classmethod
    def from_settings(cls, settings: PuppySettings | None = None, **kwargs: object) -> PolicyEngine:
        """An engine from `OTEL_PUPPY_*` settings: loads `policies`, opens `store`.

        Raises:
            SettingsError: a setting is invalid (the message names the variable).
            PolicyErrors: a policy file is invalid (every error, with file:line:column).
        """
        settings = settings or PuppySettings.load()
        policies = load_policies(settings.policies) if Path(settings.policies).exists() else PolicySet()
        engine = cls(settings, policies=policies, **kwargs)  # type: ignore[arg-type]
        if settings.watch_policies_s is not None and Path(settings.policies).exists():
            engine.watch_policies(settings.watch_policies_s)
        return engine

    def watch_policies(self, interval_s: float = 1.0) -> PolicyWatcher:
        """Reload whenever the policy files change (a broken edit keeps the last good set)."""
        if self._watcher is None:
            self._watcher = PolicyWatcher(self.settings.policies, self.reload, interval_s).start()
        return self._watcher

    def _build_rules(self, policies: PolicySet, previous: _Rules | None) -> _Rules:
        book = BudgetBook(policies.budgets, self.settings.zone, self._log)
        if previous is None:
            pricer = Pricer(policies.price_overrides())
            breakers = BreakerBoard(policies.breakers, self.clock, on_transition=self._on_breaker_transition)
            anomalies = AnomalyWatch(policies.anomalies, self.clock, on_anomaly=self._on_anomaly)
            router = Router(policies.routing, self.stats, pricer)
        else:
            book.carry_over(previous.book)
            pricer = previous.pricer.with_overrides(policies.price_overrides())
            breakers = previous.breakers.with_policies(policies.breakers)
            anomalies = previous.anomalies.with_policies(policies.anomalies)
            router = previous.router.with_policies(policies.routing, pricer=pricer)
        return _Rules(policies, pricer, book, breakers, anomalies, router)

    # --- front doors --------------------------------------------------------------------------

    def span_processor(self) -> PuppySpanProcessor:
        """This engine's span processor (one per engine), for `TracerProvider.add_span_processor`."""
        with self._processor_lock:
            if self._processor is None:
                self._processor = PuppySpanProcessor(self, max_queue_size=self.settings.queue_size)
            return self._processor

    def observe(self, call: LLMCall) -> Observation:
        """Price one call and apply it. Returns what became of it."""
        return self.observe_many([call])[0]

    def observe_many(self, calls: Sequence[LLMCall]) -> list[Observation]:
        """Price calls and apply them in one store round trip, each deduped atomically.

        A call carrying a number outside its bound (`LLMCall.rejected`) is not applied: it is counted
        as `spans_total{result="rejected"}` and observed as `ApplyResult.REJECTED`.
        """
        if any(call.rejected is not None for call in calls):
            kept = [call for call in calls if call.rejected is None]
            self.metrics.record_spans("rejected", len(calls) - len(kept))
            applied_kept = iter(self.observe_many(kept) if kept else ())
            return [
                next(applied_kept) if call.rejected is None else Observation(call, _REFUSED, ApplyResult.REJECTED)
                for call in calls
            ]
        now = self.clock.now()
        rules = self._rules
        pricer, ttl = rules.pricer, self.settings.dedupe_ttl_s
        prices = [pricer.price(call) for call in calls]
        touched: dict[str, BudgetInstance] = {}
        records = [self._record(rules, c, p, now, ttl=ttl, touched=touched) for c, p in zip(calls, prices, strict=True)]
        try:
            results = self._store.apply(records, now)
        except StoreError:
            self.metrics.record_store_error("apply")
            raise
        observations = [Observation(c, p, r) for c, p, r in zip(calls, prices, results, strict=True)]
        applied = [(o.call, o.price) for o in observations if o.result is ApplyResult.APPLIED]
        metrics = self.metrics
        metrics.record_calls(applied)
        saved = [
            (call, n) for call, price in applied if call.cache_read_tokens and (n := pricer.cache_savings(call, price))
        ]
        if saved:
            metrics.record_cache_savings(saved)
        if applied:
            observed = [(call, price.nanos) for call, price in applied]
            rules.breakers.observe([call for call, _ in applied])
            rules.anomalies.observe(observed)
            rules.anomalies.tick(now)
            self.stats.observe(observed)
            self.redundancy.observe(observed)
            # The spend is applied: a store failing now delays an alert, it must not fail the batch.
            with self._surviving_store("alerts"):
                self._check_alerts([i for i in touched.values() if i.policy.alerts], now)
        invalid = sum(1 for call, _ in applied if call.problems)
        lateness = self.settings.max_span_lateness_s
        late = [call.end_ns / 1e9 < now for call, _ in applied if _late(call, now, lateness)]
        if late:
            past = sum(late)
            for direction, count in (("past", past), ("future", len(late) - past)):
                if count:
                    metrics.record_late(direction, count)
        for result, count in (
            ("applied", len(applied) - invalid),
            ("invalid", invalid),
            ("duplicate", sum(1 for o in observations if o.result is ApplyResult.DUPLICATE)),
            ("nested", sum(1 for o in observations if o.result is ApplyResult.NESTED)),
        ):
            if count:
                metrics.record_spans(result, count)
        if now >= self._next_expiry:
            self._next_expiry = now + _EXPIRE_EVERY_S
            with self._surviving_store("expire"):
                self._store.expire(now)
        if now >= self._next_state_save:
            self._next_state_save = now + _SAVE_STATE_EVERY_S
            self._save_all_state()
        elif self._share_breakers and now >= self._next_breaker_sync:
            self._next_breaker_sync = now + _SYNC_BREAKERS_EVERY_S
            self._sync_breakers()
        return observations

    def _record(
        self, rules: _Rules, call: LLMCall, price: Price, now: float, *, ttl: float, touched: dict[str, BudgetInstance]
    ) -> SpendRecord:
        # Spend belongs to the window the call ended in, but never to one in the future (skew), and
        # never to one so far back that no budget would see it while the metrics count it.
        late = _late(call, now, self.settings.max_span_lateness_s)
        ts = min(call.end_ns / 1e9, now) if call.end_ns > 0 and not late else now
        nanos = price.nanos or 0
        tokens = call.input_tokens + call.output_tokens
        increments = [Increment(TOTAL_SCOPE, window, ts, nanos, tokens) for window in self._total_windows]
        settle_key = None
        if rules.book.budgets:
            for instance in rules.book.instances(call.scope()):
                increments.append(Increment(instance.key, instance.window, ts, nanos, tokens))
                touched[instance.key] = instance
            settle_key = _settle_key(call.provider, call.request_model or call.model, call.agent, call.user)
        trace = f"{call.trace_id:032x}"
        return SpendRecord(
            span_key=f"{trace}{call.span_id:016x}",
            parent_key=f"{trace}{call.parent_span_id:016x}" if call.parent_span_id else None,
            increments=tuple(increments),
            dedupe_until=now + ttl,
            decision_id=call.decision_id,
            settle_key=settle_key,
        )

    # --- decisions ----------------------------------------------------------------------------

    def decide(self, request: DecisionRequest | None = None, /, **fields: object) -> Decision:
        """May this call go ahead, and with which model?

        Pass a `DecisionRequest` or its fields: `decide(provider="openai", model="gpt-4.1",
        agent="support", priority="normal", estimated_cost_usd=Decimal("0.02"))`. The strictest
        action of every matching policy wins; each is listed in `reasons`. With an estimate, the
        spend is reserved on every matching budget until the call's span settles it.

        Failing open or closed (`fail_open`) is for a store that does not answer. A value of the
        request itself never reaches the fail mode: it is refused with `RequestError`. Any other
        error decides by the fail mode but never looser than the budgets (see `_decide_despite`).

        Raises:
            RequestError: a field's value is refused (the message names it); nothing was reserved.
        """
        req = request if request is not None else request_from_fields(fields)
        check_request(req)
        if self._share_breakers and (now := self.clock.now()) >= self._next_breaker_sync:
            # a replica that only decides still sees the breakers others opened
            self._next_breaker_sync = now + _SYNC_BREAKERS_EVERY_S
            self._sync_breakers()
        try:
            return self._decide(req)
        except RequestError:
            raise
        except StoreError as exc:
            # An outage, not a bug: decided by the fail mode, within the store's timeout.
            self.metrics.record_store_error("decide")
            self._log.warning("decide:store", "otel_puppy could not reach its store to decide: %s", exc)
            return self._failed_decision(req, "the state store is unavailable")
        except Exception:
            self._internal_error("engine.decide")
            return self._decide_despite(req)

    def _decide_despite(self, req: DecisionRequest) -> Decision:
        """After an unexpected error in `_decide`: the fail mode, but never looser than the budgets.

        The rule: each budget the request falls in is read on its own, reserving nothing. One
        without room applies its action as always; one whose state cannot be read counts as
        exhausted (so a deny budget denies) and is reported by `problems()`. The decision is the
        strictest of those and of the fail mode. The fail mode alone decides only when no budget
        could be evaluated: the request falls in none, or the store does not answer.
        """
        failed = self._failed_decision(req, "otel_puppy failed to decide")
        now = self.clock.now()
        try:
            rules = self._rules
            plan = _plan(rules, req)
            try:
                estimate = self._estimate(rules, req)
            except Exception:  # the estimate may be what failed: read the budgets without it
                estimate = (0, 0)
            hits: list[_Hit] = list(failed.reasons)
            for instance, check in zip(plan.instances, plan.checks, strict=True):
                admission = Admission("", (check,), estimate[0], estimate[1], now, None, reserve=False)
                try:
                    state = self._store.admit(admission, now).states[0]
                    if not _readable(state):
                        raise TypeError(f"not a budget state: {state!r}")  # noqa: TRY301 - counted as unreadable below
                except StoreError:
                    raise
                except Exception as exc:
                    self._unreadable(instance, check, exc)
                    hits.append(_unreadable_hit(instance))
                else:
                    hits.append(_PendingBudgetHit(instance, state, now))
        except StoreError as exc:
            self.metrics.record_store_error("decide")
            self._log.warning("decide:store", "otel_puppy could not reach its store to decide: %s", exc)
            return self._failed_decision(req, "the state store is unavailable")
        except Exception:
            self._internal_error("engine.decide", reraise=False)
            return failed
        action = Action.strictest([h.action for h in hits if not h.shadow])
        enforced = [h for h in hits if not h.shadow]
        deciding = [h for h in enforced if h.action is action and action is not Action.ALLOW]
        retry_after = max((h.retry_after_s for h in deciding if h.retry_after_s is not None), default=None)
        model = next((h.model for h in deciding if action is Action.DEGRADE and h.model), None)
        provider, model = Degrade(degrade=model).target(req.provider) if model else (req.provider, req.model)
        key = (action.value, deciding[0].policy if deciding else "otel_puppy")
        with self._decisions_lock:
            self._decisions[key] = self._decisions.get(key, 0) + 1
        return Decision(
            action=action,
            provider=provider,
            model=model,
            reasons=LazyHits(enforced),
            shadow=LazyHits([h for h in hits if h.shadow]),
            retry_after_s=retry_after if action is Action.DENY else None,
            estimated_cost_usd=req.estimated_cost_usd,
        )

    def _unreadable(self, instance: BudgetInstance, check: BudgetCheck, exc: Exception) -> None:
        """Remember a budget whose state could not be read, for `problems()` (bounded)."""
        with self._problems_lock:
            if instance.key in self._unreadable_budgets or len(self._unreadable_budgets) < _MAX_PROBLEMS:
                self._unreadable_budgets[instance.key] = (instance, check)
        self._log.error(
            f"unreadable:{instance.policy.name}",
            "budget %s: its state cannot be read (%s: %s); it counts as exhausted until it can",
            instance.policy.name,
            type(exc).__name__,
            exc,
        )

    def problems(self) -> tuple[str, ...]:
        """Why this engine should not be trusted to decide now; empty when it can be (ready).

        Budgets whose state a decision could not read (each is read again here, so a repaired or
        expired one clears), and the problem the store reports itself (`Store.health().problem`).
        `/readyz` answers 503 with these.

        Raises:
            StoreError: the store does not answer (not ready either).
        """
        now = self.clock.now()
        with self._problems_lock:
            recorded = list(self._unreadable_budgets.items())
        found: list[str] = []
        for key, (instance, check) in recorded:
            try:
                state = self._store.admit(Admission("", (check,), 0, 0, now, None, reserve=False), now).states[0]
                readable = _readable(state)
            except StoreError:
                raise
            except Exception:
                readable = False
            if readable:
                with self._problems_lock:
                    self._unreadable_budgets.pop(key, None)
            else:
                found.append(f"the state of budget {instance.policy.name} cannot be read")
        problem = self._store.health().problem  # what the store found wrong with its own state
        if problem:
            found.append(str(problem))
        return tuple(found)

    def _failed_decision(self, req: DecisionRequest, why: str) -> Decision:
        action = Action.ALLOW if self.settings.fail_open else Action.DENY
        hit = PolicyHit(
            kind="internal",
            policy="otel_puppy",
            action=action,
            message=f"{why}; failing {'open' if self.settings.fail_open else 'closed'}",
            severity=Severity.CRITICAL,
        )
        return Decision(action, req.provider, req.model, reasons=(hit,))

    def _decide(self, req: DecisionRequest) -> Decision:
        now = self.clock.now()
        rules = self._rules
        rules.anomalies.tick(now)
        plan = _plan(rules, req)
        hits: list[_Hit] = []
        request = req
        if plan.routed:
            route = rules.router.route(req, available=lambda p, m: self._available(rules, req.with_model(p, m), now))
            if route is not None:
                hits.append(route.hit)
                if not route.hit.shadow and (route.provider, route.model) != (req.provider, req.model):
                    request = req.with_model(route.provider, route.model)
                    plan = _plan(rules, request)
        decision_id = _decision_id()
        estimate = self._estimate(rules, request)  # before a breaker probe is taken: it may refuse the request
        hits += rules.breakers.check(request.provider, request.model)
        if not rules.anomalies.quiet(now):
            hits += rules.anomalies.check(request.scope())
        admitted = self._admit_plan(plan, estimate, now, decision_id, reserve=not (hits and _denied(hits)))
        if not hits and (admitted is None or plan.fits(admitted.states)):
            # The usual decision: only budgets have a say, and each enforced one has room. The
            # general path below would decide the same; this one builds no hit unless it is read.
            states = admitted.states if admitted is not None else ()
            with self._decisions_lock:
                self._decisions[_ALLOWED] = self._decisions.get(_ALLOWED, 0) + 1
            return Decision(
                action=Action.ALLOW,
                provider=request.provider,
                model=request.model,
                reasons=_BudgetHits(plan.instances, states, plan.enforced, now).lazy() if plan.enforced else _NONE,
                shadow=_BudgetHits(plan.instances, states, plan.shadow, now).lazy() if plan.shadow else _NONE,
                decision_id=decision_id,
                estimated_cost_usd=nanos_to_usd(estimate[0]) if estimate != (0, 0) else request.estimated_cost_usd,
            )
        reserved = admitted is not None and admitted.reserved
        if admitted is not None:
            hits += [_PendingBudgetHit(i, state, now) for i, state in zip(plan.instances, admitted.states, strict=True)]

        action = Action.strictest([h.action for h in hits if not h.shadow])
        if action is Action.DEGRADE:
            target = next(h.model for h in hits if h.action is Action.DEGRADE and not h.shadow and h.model)
            provider, model = Degrade(degrade=target).target(request.provider)
            if (provider, model) != (request.provider, request.model):
                if reserved:
                    self._store.release(decision_id)
                rules.breakers.release(request.provider, request.model)
                request = req.with_model(provider, model)
                # The hits that asked for the degrade stay; the cheaper model is checked afresh.
                kept = [h for h in hits if h.kind not in ("budget", "breaker") or h.action is Action.DEGRADE]
                listed = {(h.kind, h.policy, h.scope) for h in kept}
                again: list[_Hit] = list(rules.breakers.check(provider, model))
                estimate = self._estimate(rules, request)
                more, reserved = self._admit(
                    rules, request, estimate, now, decision_id, reserve=not _denied(kept + again)
                )
                hits = kept + [h for h in again + more if (h.kind, h.policy, h.scope) not in listed]
                action = Action.strictest([h.action for h in hits if not h.shadow])
        if action is Action.DENY:
            if reserved:
                self._store.release(decision_id)
            rules.breakers.release(request.provider, request.model)

        enforced = [h for h in hits if not h.shadow]
        deciding = [h for h in enforced if h.action is action and action is not Action.ALLOW]
        retry_after = max((h.retry_after_s for h in deciding if h.retry_after_s is not None), default=None)
        resets_at = min((h.resets_at for h in deciding if h.resets_at is not None), default=None)
        decision = Decision(
            action=action,
            provider=request.provider,
            model=request.model,
            reasons=LazyHits(enforced),
            shadow=LazyHits([h for h in hits if h.shadow]),
            decision_id=decision_id,
            retry_after_s=retry_after if action is Action.DENY else None,
            resets_at=resets_at,
            estimated_cost_usd=nanos_to_usd(estimate[0]) if estimate != (0, 0) else request.estimated_cost_usd,
        )
        key = (action.value, deciding[0].policy if deciding else "")
        with self._decisions_lock:
            self._decisions[key] = self._decisions.get(key, 0) + 1
        return decision

    def _estimate(self, rules: _Rules, request: DecisionRequest) -> tuple[int, int]:
        """(nano-USD, tokens) to reserve: a priced token estimate is held to the bound a given one has
        (`bounds.MAX_CALL_COST_USD`), and both are far below what every store holds exactly.

        Raises:
            RequestError: the token estimate's price for this model is over that bound.
        """
        tokens = request.estimated_tokens
        field = "estimated_output_tokens" if request.estimated_output_tokens else "estimated_input_tokens"
        if tokens > MAX_AMOUNT:
            raise RequestError(field, f"input and output token estimates must add up to at most {MAX_AMOUNT}")
        if request.estimated_cost_usd is not None:
            return estimate_nanos(request.estimated_cost_usd), tokens
        if tokens:
            # Bounded token counts always price; a pricer that raises is our bug, not the request's
            # (`decide` then rules by the fail mode, never looser than the budgets).
            price = rules.pricer.price_usage(
                request.provider,
                request.model,
                input_tokens=request.estimated_input_tokens or 0,
                output_tokens=request.estimated_output_tokens or 0,
            )
            nanos = price.nanos or 0
            if nanos > _MAX_ESTIMATE_NANOS:
                raise RequestError(field, f"is priced at over {MAX_CALL_COST_USD} USD for {request.model}")
            return nanos, tokens
        return 0, 0

    def _admit(
        self,
        rules: _Rules,
        request: DecisionRequest,
        estimate: tuple[int, int],
        now: float,
        decision_id: str,
        *,
        reserve: bool,
    ) -> tuple[list[_Hit], bool]:
        plan = _plan(rules, request)
        admitted = self._admit_plan(plan, estimate, now, decision_id, reserve=reserve)
        if admitted is None:
            return [], False
        hits: list[_Hit] = [
            _PendingBudgetHit(instance, state, now)
            for instance, state in zip(plan.instances, admitted.states, strict=True)
        ]
        return hits, admitted.reserved

    def _admit_plan(
        self, plan: _Plan, estimate: tuple[int, int], now: float, decision_id: str, *, reserve: bool
    ) -> Admitted | None:
        """The store's admission over the plan's budgets; `None` when the request falls in none."""
        if not plan.checks:
            return None
        expires_at = now + self.settings.reservation_ttl_s
        admission = Admission(decision_id, plan.checks, estimate[0], estimate[1], expires_at, plan.settle_key, reserve)
        return self._store.admit(admission, now)

    def _available(self, rules: _Rules, request: DecisionRequest, now: float) -> bool:
        """For routing: no open breaker and no exhausted deny budget for this model."""
        if not rules.breakers.available(request.provider, request.model):
            return False
        hits, _ = self._admit(rules, request, (0, 0), now, "", reserve=False)
        return not any(h.action is Action.DENY and not h.shadow for h in hits)

    def guard(self, provider: str, model: str, **fields: object) -> DecisionGuard:
        """Decide before a call, as a context manager (`with` or `async with`).

        Raises `PolicyDenied` on deny; otherwise yields the `Decision` (use `decision.model`) and
        marks every span started inside with its `otel_puppy.decision_id`, so the call's span
        settles the reservation.
        """
        return DecisionGuard(self, request_from_fields({"provider": provider, "model": model, **fields}))

    def breaker(self, provider: str, model: str | None = None) -> BreakerGuard:
        """`async with engine.breaker("openai"):` fails fast with `CircuitOpenError` while open.

        Without a span processor the guard reports the call's outcome to the breaker itself; with
        one, the call's span does (so a failure is not counted twice).
        """
        return self._rules.breakers.guard(provider, model, record=self._processor is None)

    # --- alerts -------------------------------------------------------------------------------

    def _check_alerts(self, instances: list[BudgetInstance], now: float) -> None:
        if not instances:
            return
        counters = self._store.totals([(i.key, i.window) for i in instances], now)
        for instance, counter in zip(instances, counters, strict=True):
            policy = instance.policy
            if policy.limit_usd is not None:
                utilization = counter.nanos / usd_to_nanos(policy.limit_usd)
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
                        self._store.unmark(key)  # a rolling window drops below: the next crossing alerts again
                    continue
                if not self._store.mark(key, expires_at):
                    continue
                severity = (
                    Severity.EMERGENCY
                    if threshold >= 1.0
                    else (Severity.INFO, Severity.WARNING, Severity.CRITICAL)[min(index, 2)]
                )
                where = f" for {instance.label}" if instance.label else ""
                self.alerts.emit(
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

    def _on_breaker_transition(self, status: BreakerStatus, previous: str) -> None:
        severity = Severity.CRITICAL if status.state == "open" else Severity.INFO
        self.alerts.emit(
            AlertEvent(
                kind="breaker",
                policy=status.policy,
                scope=status.subject,
                severity=severity,
                message=f"breaker {status.policy} for {status.subject}: {previous} -> {status.state}",
                at=self.clock.now(),
            )
        )
        self._sync_breakers()  # other replicas adopt it at their next sync

    def _on_anomaly(self, event: AnomalyEvent) -> None:
        status = event.status
        self.alerts.emit(
            AlertEvent(
                kind="anomaly",
                policy=status.policy,
                scope=status.subject,
                severity=Severity.WARNING,
                message=event.message,
                at=event.at,
                value=status.current,
                threshold=status.baseline,
            )
        )
        if status.action == "open_breaker" and not status.shadow:
            subject = dict(part.split("=", 1) for part in status.subject.split(",") if "=" in part)
            provider = subject.get("provider")
            if provider:
                self._rules.breakers.trip(provider, subject.get("model"), reason=event.message)
            else:
                message = "anomaly %s wants to open a breaker but is not per provider"
                self._log.warning(f"anomaly:{status.policy}", message, status.policy)

    # --- persisted state ----------------------------------------------------------------------

    def _restore_state(self) -> None:
        """Breaker and anomaly state from the store, as a previous engine on it left them. An
        unreadable store or entry costs that state only: the engine starts regardless."""
        rules = self._rules
        self._sync_breakers(restoring=True)
        for namespace, target in ((_ANOMALIES, rules.anomalies),):
            try:
                items = self._store.load_state(namespace)
                self._saved[namespace] = set(items)
                target.import_state(items)
            except StoreError as exc:
                self.metrics.record_store_error("load_state")
                logger.warning("otel_puppy could not restore %s state from the store: %s", namespace, exc)
            except Exception:
                self._internal_error("engine.restore_state", reraise=False)

    def _save_all_state(self) -> None:
        self._sync_breakers()
        self._save_state(_ANOMALIES, self._rules.anomalies.export_state)

    def _sync_breakers(self, *, restoring: bool = False) -> None:
        """Share breaker state through the store: publish ours and adopt every newer one.

        Each subject's state carries a version that grows with every transition (see
        `_breaker_version`); the store keeps the highest, so a breaker another replica (or a
        previous process) opened is open here too after the next sync, and an older state never
        overwrites a newer one. Never raises: a failed sync is counted and tried again.
        """
        try:
            with self._state_lock:
                if not self._saving:
                    return
                board = self._rules.breakers
                local = {} if restoring else {k: (_breaker_version(b), b) for k, b in board.export_state().items()}
                merged = self._store.merge_state(_BREAKERS, local)
                if restoring:
                    board.import_state({key: blob for key, (_, blob) in merged.items()})
                    return
                names = {breaker.name for breaker in self._rules.policies.breakers}
                newer = {
                    key: blob
                    for key, (version, blob) in merged.items()
                    if version > local.get(key, (-1, b""))[0] and key.partition("|")[0] in names
                }
                if newer:
                    board.import_state(newer)
        except StoreError as exc:
            self.metrics.record_store_error("sync_breakers")
            logger.warning("otel_puppy could not share breaker state through the store: %s", exc)
        except Exception:
            self._internal_error("engine.sync_breakers", reraise=False)

    def _save_state(self, namespace: str, export: Callable[[], dict[str, bytes]]) -> None:
        """Write the exported state of a whole namespace, and delete what it no longer has.

        Never raises: a failed save is counted, and the state is written again at the next one.
        """
        try:
            # export and write under one lock, so an older export never overwrites a newer one
            with self._state_lock:
                if not self._saving:
                    return
                items = export()
                self._store.save_state(namespace, items)
                stale = self._saved.get(namespace, set()) - items.keys()
                if stale:
                    self._store.delete_state(namespace, stale)
                self._saved[namespace] = set(items)
        except StoreError as exc:
            self.metrics.record_store_error("save_state")
            logger.warning("otel_puppy could not save %s state, will retry: %s", namespace, exc)
        except Exception:
            self._internal_error("engine.save_state", reraise=False)

    # --- reading state ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Spend per window, every known budget instance, breaker, anomaly and model, as of now."""
        now = self.clock.now()
        rules = self._rules
        reads = [(TOTAL_SCOPE, w) for w in self._total_windows]
        counters = self._store.totals(reads, now)
        windows = tuple(
            WindowSpend(w.name, nanos_to_usd(c.nanos), c.tokens, c.requests, w.resets_at(now))
            for w, c in zip(self._total_windows, counters, strict=True)
        )
        return Snapshot(
            windows=windows,
            budgets=tuple(self._budget_states(rules, now)),
            breakers=tuple(rules.breakers.statuses()),
            anomalies=tuple(rules.anomalies.statuses()),
            models=tuple(self.stats.all()),
        )

    def _budget_readings(self, rules: _Rules, now: float) -> list[tuple[BudgetInstance, CheckState | None]]:
        """Every known budget instance with its state now, read in one admission that reserves nothing.

        A budget whose state the store cannot read has `None` (and is remembered for `problems()`):
        if the one admission raises, halves are read again until the unreadable ones are found, so
        one poisoned budget costs O(log n) more reads, not every budget's answer.
        """
        instances = rules.book.known_instances()
        readings: list[tuple[BudgetInstance, CheckState | None]] = []

        def read(group: tuple[BudgetInstance, ...]) -> None:
            checks = tuple(i.checks[Priority.CRITICAL] for i in group)
            try:
                admitted = self._store.admit(Admission("", checks, 0, 0, now, None, reserve=False), now)
            except StoreError:
                raise
            except Exception as exc:
                if len(group) == 1:
                    self._unreadable(group[0], checks[0], exc)
                    readings.append((group[0], None))
                    return
                read(group[: len(group) // 2])
                read(group[len(group) // 2 :])
                return
            readings.extend(zip(group, admitted.states, strict=True))

        if instances:
            read(instances)
        return readings

    def _budget_states(self, rules: _Rules, now: float) -> list[PolicyHit]:
        return [
            budget_hit(
                instance,
                spent_nanos=s.spent_nanos,
                spent_tokens=s.spent_tokens,
                reserved_nanos=s.reserved_nanos,
                exceeded=not s.fits,
                now=now,
            )
            if s is not None
            else _unreadable_hit(instance)
            for instance, s in self._budget_readings(rules, now)
        ]

    @property
    def policies(self) -> PolicySet:
        return self._rules.policies

    @property
    def pricer(self) -> Pricer:
        return self._rules.pricer

    @property
    def store(self) -> Store:
        return self._store

    # --- metrics ------------------------------------------------------------------------------

    def _collect(self) -> Iterable[Metric]:
        rules = self._rules
        now = self.clock.now()
        guard = self.metrics.guard
        spend = GaugeMetricFamily(
            "otel_puppy_budget_spend_usd",
            "Spend counted against a budget in its current window.",
            labels=("budget", "scope", "window"),
        )
        limit = GaugeMetricFamily(
            "otel_puppy_budget_limit_usd", "A budget's limit.", labels=("budget", "scope", "window")
        )
        utilization = GaugeMetricFamily(
            "otel_puppy_budget_utilization_ratio",
            "Spent plus reserved over the limit (1 is exhausted).",
            labels=("budget", "scope", "window"),
        )
        reserved = GaugeMetricFamily(
            "otel_puppy_budget_reserved_usd",
            "Estimates reserved by decisions and not yet settled.",
            labels=("budget", "scope", "window"),
        )
        window_seconds = GaugeMetricFamily(
            "otel_puppy_budget_window_seconds",
            "Length of a budget's window (a calendar window's current one); spending its limit over it is burn rate 1.",
            labels=("budget", "scope", "window"),
        )
        lengths: dict[str, float] = {}
        for budget in rules.book.budgets:
            span = parse_window(budget.window, self.settings.zone)
            start, end = span.bounds(now) if isinstance(span, CalendarWindow) else (0.0, float(span.seconds))
            lengths[budget.name] = end - start
        readings: list[tuple[BudgetInstance, CheckState | None]] = []
        with self._surviving_store("scrape"):  # the rest of the scrape still answers
            readings = self._budget_readings(rules, now)
        per_ids = {b.name for b in rules.book.budgets if _ID_DIMENSIONS.intersection(b.per)}
        # One series per (budget, scope), the fullest instance behind it: per-user budgets export only
        # their fullest (`max`: user ids are never labels), and past the cardinality guard scopes fold
        # into `other`, once (the exposition format allows one sample per label set).
        fullest: dict[tuple[str, str], tuple[float, BudgetInstance, CheckState]] = {}
        for instance, state in readings:
            if state is None:
                continue  # cannot be read: no sample rather than a wrong one (and /readyz says why)
            name = instance.policy.name
            scope = "max" if name in per_ids else guard("scope", instance.label)
            ratio = budget_utilization(instance, state.spent_nanos, state.spent_tokens, state.reserved_nanos)
            kept = fullest.get((name, scope))
            if kept is None or ratio > kept[0]:
                fullest[(name, scope)] = (ratio, instance, state)
        for (name, scope), (ratio, instance, state) in fullest.items():
            policy = instance.policy
            labels = (name, scope, policy.window)
            utilization.add_metric(labels, ratio)
            if policy.limit_usd is not None:
                spend.add_metric(labels, nanos_to_float(state.spent_nanos))
                limit.add_metric(labels, float(policy.limit_usd))
                reserved.add_metric(labels, nanos_to_float(state.reserved_nanos))
            if name in lengths:
                window_seconds.add_metric(labels, lengths[name])
        yield from (spend, limit, utilization, reserved, window_seconds)
        with self._decisions_lock:
            decisions = dict(self._decisions)
        family = CounterMetricFamily(
            "otel_puppy_decisions", "Decisions, by action and the policy that decided.", labels=("action", "policy")
        )
        for key, count in decisions.items():
            family.add_metric(key, float(count))
        yield family
        yield from rules.breakers.collect()
        yield from rules.anomalies.collect()
        yield from self.alerts.collect()
        yield from self.redundancy.collect()
        total = GaugeMetricFamily("otel_puppy_spend_usd", "Total spend in each built-in window.", labels=("window",))
        counters: list[Counter] = []
        with self._surviving_store("scrape"):
            counters = self._store.totals([(TOTAL_SCOPE, w) for w in self._total_windows], now)
        for window, counter in zip(self._total_windows, counters, strict=False):
            total.add_metric((window.name,), nanos_to_float(counter.nanos))
        yield total
        health = self._store.health()
        yield CounterMetricFamily(
            "otel_puppy_store_saturated",
            "Counts a store found at its ceiling after a write: spend past it was not added; the budget denies.",
            value=float(health.saturated),
        )
        yield CounterMetricFamily(
            "otel_puppy_store_unreadable_values",
            "Stored values that were not an integer in range (poisoned state), read as the ceiling.",
            value=float(health.unreadable),
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def reload(self) -> PolicySet:
        """Load the policy files again. A broken edit raises and the running set stays in force.

        Window spend is kept: it lives in the store, keyed by budget name and scope.

        Raises:
            PolicyErrors: every error in the new files; nothing changed.
        """
        try:
            policies = load_policies(self.settings.policies)
        except PolicyErrors as exc:
            # The errors are the message (file:line:column each); a traceback would only hide them.
            logger.error("policy reload failed; keeping the last good policy set:\n%s", exc)  # noqa: TRY400
            raise
        return self.use_policies(policies)

    def use_policies(self, policies: PolicySet) -> PolicySet:
        """Put a validated policy set in force, keeping breaker, anomaly and window state."""
        self._rules = self._build_rules(policies, previous=self._rules)
        return policies

    def close(self) -> None:
        """Flush and stop the span processor, then close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
        if self._processor is not None:
            self._processor.shutdown()
        self._save_all_state()
        with self._state_lock:
            self._saving = False
        self.alerts.close()
        self._store.close()

    def __enter__(self) -> PolicyEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internal errors ----------------------------------------------------------------------

    @contextmanager
    def _surviving_store(self, operation: str) -> Iterator[None]:
        """Count and log a store outage in housekeeping that can wait for the next round."""
        try:
            yield
        except StoreError as exc:
            self.metrics.record_store_error(operation)
            self._log.warning(f"store:{operation}", "otel_puppy store unavailable for %s: %s", operation, exc)

    def _internal_error(self, component: str, *, reraise: bool | None = None) -> None:
        """Count and log an error we survived; under pytest re-raise it so tests see bugs.

        Call from an `except` block.
        """
        try:
            self.metrics.record_internal_error(component)
            # a request or a span may cause it again and again: one traceback per component per minute
            self._log.error(f"internal:{component}", "otel_puppy internal error in %s", component, exc_info=True)
        except Exception:  # noqa: S110 - the host application must never see our failures
            pass
        if self.settings.reraise if reraise is None else reraise:
            raise  # noqa: PLE0704 - re-raises the exception being handled by our caller

    def _after_fork(self) -> None:
        """In a forked child: locks held by the parent's threads would never be released here."""
        self.metrics._lock = threading.Lock()
        self._processor_lock = threading.Lock()
        self._decisions_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._problems_lock = threading.Lock()
        self._log._lock = threading.Lock()
        store_lock = getattr(self._store, "_lock", None)
        if store_lock is not None:
            self._store._lock = threading.Lock()  # type: ignore[attr-defined]
        self._rules.pricer._lock = threading.Lock()
        self.stats._lock = threading.Lock()
        self._rules.router._lock = threading.Lock()
        self._rules.breakers._lock = threading.Lock()
        self._rules.anomalies._lock = threading.Lock()


class _PendingBudgetHit:
    """A budget's say in a decision: its action is known at once, its `PolicyHit` built if read."""

    __slots__ = ("_built", "action", "instance", "now", "shadow", "state")
    kind: Final = "budget"

    def __init__(self, instance: BudgetInstance, state: CheckState, now: float) -> None:
        self.instance = instance
        self.state = state
        self.now = now
        self.action = Action.ALLOW if state.fits else instance.on_exceed
        self.shadow = instance.policy.shadow
        self._built: PolicyHit | None = None

    def __call__(self) -> PolicyHit:
        built = self._built
        if built is None:
            state = self.state
            built = self._built = budget_hit(
                self.instance,
                spent_nanos=state.spent_nanos,
                spent_tokens=state.spent_tokens,
                reserved_nanos=state.reserved_nanos,
                exceeded=not state.fits,
                now=self.now,
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
        return self().resets_at


_Hit = PolicyHit | _PendingBudgetHit


class _BudgetHits(Sequence[PolicyHit]):
    """Some of a decision's budget hits (`indexes` into its instances and states), for `LazyHits`:
    an allowed decision keeps one of these instead of a pending hit per budget."""

    __slots__ = ("indexes", "instances", "now", "states")

    def __init__(
        self,
        instances: tuple[BudgetInstance, ...],
        states: tuple[CheckState, ...],
        indexes: tuple[int, ...],
        now: float,
    ) -> None:
        self.instances = instances
        self.states = states
        self.indexes = indexes
        self.now = now

    def lazy(self) -> LazyHits:
        return LazyHits(self, dicts=self.to_dicts)

    def to_dicts(self) -> list[dict[str, Any]]:
        """`[hit.to_dict() for hit in self]`, building no `PolicyHit`."""
        dicts = []
        for index in self.indexes:
            state = self.states[index]
            dicts.append(
                budget_hit_dict(
                    self.instances[index],
                    spent_nanos=state.spent_nanos,
                    spent_tokens=state.spent_tokens,
                    reserved_nanos=state.reserved_nanos,
                    exceeded=not state.fits,
                    now=self.now,
                )
            )
        return dicts

    def _hit(self, index: int) -> PolicyHit:
        state = self.states[index]
        return budget_hit(
            self.instances[index],
            spent_nanos=state.spent_nanos,
            spent_tokens=state.spent_tokens,
            reserved_nanos=state.reserved_nanos,
            exceeded=not state.fits,
            now=self.now,
        )

    @overload
    def __getitem__(self, index: int) -> PolicyHit: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[PolicyHit, ...]: ...
    def __getitem__(self, index: int | slice) -> PolicyHit | tuple[PolicyHit, ...]:
        if isinstance(index, slice):
            return tuple(self._hit(i) for i in self.indexes[index])
        return self._hit(self.indexes[index])

    def __len__(self) -> int:
        return len(self.indexes)

    def __iter__(self) -> Iterator[PolicyHit]:
        return (self._hit(i) for i in self.indexes)


@dataclass(frozen=True, slots=True)
class _Plan:
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

    def fits(self, states: Sequence[CheckState]) -> bool:
        """Whether every enforced budget has room (shadow ones are only reported)."""
        return all(states[index].fits for index in self.enforced)


_PLANS_LIMIT: Final = 20_000
"""Request shapes remembered per policy set (a per-user budget makes one per user); then forgotten."""
_ALLOWED: Final = (Action.ALLOW.value, "")
_NONE: Final = LazyHits(())


def _plan(rules: _Rules, request: DecisionRequest) -> _Plan:
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
    )
    plan = rules.plans.get(key)
    if plan is None:
        scope = request.scope()
        instances = rules.book.instances(scope)
        plan = _Plan(
            routed=bool(rules.policies.routing) and rules.router.applies(scope),
            instances=instances,
            checks=tuple(instance.checks[request.priority] for instance in instances),
            enforced=tuple(i for i, instance in enumerate(instances) if not instance.policy.shadow),
            shadow=tuple(i for i, instance in enumerate(instances) if instance.policy.shadow),
            settle_key=_settle_key(request.provider, request.model, request.agent, request.user),
        )
        if len(rules.plans) >= _PLANS_LIMIT:
            rules.plans.clear()
        rules.plans[key] = plan
    return plan


class DecisionGuard:
    """`with engine.guard(...) as decision:` / `async with ...`: decide, raise on deny, tag spans."""

    def __init__(self, engine: PolicyEngine, request: DecisionRequest) -> None:
        self._engine = engine
        self._request = request
        self._token: object | None = None
        self.decision: Decision | None = None

    def __enter__(self) -> Decision:
        decision = self._engine.decide(self._request)
        self.decision = decision
        if not decision.allowed:
            raise PolicyDenied(decision)
        self._token = otel_context.attach(otel_context.set_value(DECISION_CONTEXT_KEY, decision.decision_id))
        return decision

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    async def __aenter__(self) -> Decision:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _readable(state: CheckState) -> bool:
    """Whether a store's answer is a budget state: non-negative integers (a poisoned one is not)."""
    return all(type(value) is int and value >= 0 for value in state[:4])


def _unreadable_hit(instance: BudgetInstance) -> PolicyHit:
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
    )


_UNREADABLE_OUTCOME: Final = {
    Action.DENY: "; denied",
    Action.WARN: "; warning only",
    Action.DEGRADE: "; degrading",
    Action.ALLOW: "",
}


_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def _decision_id() -> str:
    """Unique across processes and replicas (a random prefix per process) and cheap (a counter)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _reset_decision_ids() -> None:
    global _ID_PREFIX, _ID_COUNTER  # noqa: PLW0603 - a forked child must not repeat its parent's ids
    _ID_PREFIX = uuid.uuid4().hex[:16]
    _ID_COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_reset_decision_ids)


def _denied(hits: Iterable[_Hit]) -> bool:
    return any(h.action is Action.DENY and not h.shadow for h in hits)


_BREAKER_RANK: Final = {"closed": 0, "half_open": 1, "open": 2}


def _breaker_version(blob: bytes) -> int:
    """A breaker state's version: its transitions, and at a tie the more careful state (open) wins."""
    record = json.loads(blob)
    return int(record["transitions"]) * 4 + _BREAKER_RANK[record["state"]]


_REFUSED: Final = Price(nanos=None, unpriced_reason=Unpriced.INVALID_USAGE)


def _late(call: LLMCall, now: float, lateness_s: float) -> bool:
    """Whether the call ended outside the lateness bound (either way): then it is charged at `now`.

    A call without an end time is charged at `now` too, but is not late: nothing was moved.
    """
    return call.end_ns > 0 and abs(call.end_ns / 1e9 - now) > lateness_s


def _settle_key(provider: str, model: str, agent: str | None, user: str | None) -> str:
    """Which reservation a span without a decision id settles: the oldest with the same key.

    Injective (a `|` inside a value is escaped), so agent `a|b` never settles agent `a`, user `b`.
    """
    return "|".join(escape(part or "", "|") for part in (provider, model, agent, user))
