"""`PolicyEngine`: prices calls, keeps state, and answers agents before they spend.

Orchestration only. Both front doors (the span processor and, in service mode, the OTLP receiver)
feed `observe_many`: the store dedupes and applies each call's spend record atomically, then
every policy runtime observes the applied calls. `decide` asks routing for the model (given a
read-only view of headroom), every runtime for its hits, and budget admission to reserve the
estimate (reserve, then settle when the call's span arrives); a degrade is one more pass through
the same path for the cheaper model. What each policy kind does lives in its runtime
(`policies/runtime.py`); admission in `admission.py`; saved and shared state in `state_sync.py`.

Everything derived from the policy files lives in one immutable `_Rules` swapped whole on
reload, so a decision never sees half of an old set and half of a new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from otel_puppy._ids import decision_id as new_decision_id
from otel_puppy._logging import RateLimitedLog
from otel_puppy._requests import check_request
from otel_puppy.admission import (
    TOTAL_SCOPE,
    BudgetAdmission,
    BudgetHits,
    Headroom,
    Hit,
    decide_despite,
    denied,
    late,
)
from otel_puppy.alerts import AlertEvent, Alerts, AlertSink, LogSink, WebhookSink
from otel_puppy.calls import LLMCall
from otel_puppy.clock import Clock, SystemClock
from otel_puppy.decision import Action, Decision, DecisionRequest, LazyHits, PolicyHit, Severity
from otel_puppy.exceptions import PolicyErrors, RequestError, StoreError
from otel_puppy.guard import DecisionGuard
from otel_puppy.health.history import HealthHistory
from otel_puppy.metrics import Metrics
from otel_puppy.model_stats import ModelStats
from otel_puppy.money import nanos_to_float, nanos_to_usd
from otel_puppy.policies import PolicySet, load_policies
from otel_puppy.policies.base import Degrade
from otel_puppy.policies.breaker import BreakerGuard, BreakerRuntime
from otel_puppy.policies.budget import BudgetBook, BudgetRuntime
from otel_puppy.policies.routing import Router
from otel_puppy.policies.runtime import (
    PolicyRuntime,
    RuntimeContext,
    RuntimeEvent,
    StateChanged,
    StoreFailed,
    runtime_sections,
)
from otel_puppy.policies.watch import PolicyWatcher
from otel_puppy.pricing import Price, Pricer, Unpriced
from otel_puppy.processor import PuppySpanProcessor
from otel_puppy.redundant import RedundancyTracker
from otel_puppy.settings import PuppySettings
from otel_puppy.snapshot import Observation, Snapshot, WindowSpend
from otel_puppy.state_sync import StateSync
from otel_puppy.store import ApplyResult, Store, open_store
from otel_puppy.store.base import Counter
from otel_puppy.windows import CalendarWindow, RollingWindow, Window

__all__ = ("TOTAL_SCOPE", "DecisionGuard", "Observation", "PolicyEngine", "Snapshot", "WindowSpend")

logger = logging.getLogger("otel_puppy")

_EXPIRE_EVERY_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class _Rules:
    """Everything derived from one policy set; replaced whole on reload."""

    policies: PolicySet
    pricer: Pricer
    runtimes: tuple[PolicyRuntime, ...]
    """One per policy kind, in the order of the `PolicySet`'s sections."""
    budgets: BudgetRuntime
    breakers: BreakerRuntime
    router: Router
    admission: BudgetAdmission

    @property
    def book(self) -> BudgetBook:
        return self.budgets.book


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
        self.stats = ModelStats(self.clock)
        self.redundancy = RedundancyTracker(self.clock)
        zone = self.settings.zone
        self._total_windows: tuple[Window, ...] = (
            CalendarWindow("hour", zone),
            CalendarWindow("day", zone),
            RollingWindow(3600, "1h"),
            RollingWindow(86400, "24h"),
        )
        self.history = HealthHistory(self._store, self.metrics, CalendarWindow("hour", zone), TOTAL_SCOPE)
        """Hourly cost, errors and latency for health; assessments and scrapes feed it."""
        self._context = RuntimeContext(self.clock, zone, self._store, self._log, self.metrics.guard, self._route)
        self._rules = self._build_rules(policies if policies is not None else PolicySet(), previous=None)
        self._sync = StateSync(self._store, self.metrics, self.internal_error, self.clock.now())
        self._sync.restore(self._rules.runtimes)
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
        if previous is None:
            pricer = Pricer(policies.price_overrides())
            router = Router(policies.routing, self.stats, pricer)
            kept: dict[str, PolicyRuntime] = {}
        else:
            pricer = previous.pricer.with_overrides(policies.price_overrides())
            router = previous.router.with_policies(policies.routing, pricer=pricer)
            kept = {runtime.kind: runtime for runtime in previous.runtimes}
        runtimes: list[PolicyRuntime] = []
        for section, build in runtime_sections(type(policies)):
            entries = getattr(policies, section)
            before = kept.get(section)
            runtimes.append(before.with_policies(entries) if before is not None else build(entries, self._context))
        budgets, breakers = _built(runtimes, BudgetRuntime), _built(runtimes, BreakerRuntime)
        admission = BudgetAdmission(
            budgets,
            pricer,
            self._store,
            routed=bool(policies.routing),
            applies=router.applies,
            reservation_ttl_s=self.settings.reservation_ttl_s,
            total_windows=self._total_windows,
        )
        return _Rules(policies, pricer, tuple(runtimes), budgets, breakers, router, admission)

    def _route(self, event: RuntimeEvent) -> None:
        """Where a runtime's event goes: alerts to the sinks, effects to the runtimes they concern."""
        if isinstance(event, AlertEvent):
            self.alerts.emit(event)
        elif isinstance(event, StoreFailed):
            self.metrics.record_store_error(event.operation)
            self._log.warning(
                f"store:{event.operation}",
                "otel_puppy store unavailable for %s: %s",
                event.operation,
                event.error,
            )
        elif isinstance(event, StateChanged):
            for runtime in self._rules.runtimes:
                if runtime.kind == event.kind and runtime.shared:
                    self._sync.share(runtime)
        else:
            for runtime in self._rules.runtimes:
                runtime.handle(event)

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
        pricer, ttl, lateness = rules.pricer, self.settings.dedupe_ttl_s, self.settings.max_span_lateness_s
        prices = [pricer.price(call) for call in calls]
        record = rules.admission.record
        records = [record(c, p, now, lateness_s=lateness, ttl=ttl) for c, p in zip(calls, prices, strict=True)]
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
            for runtime in rules.runtimes:
                runtime.observe(observed, now)
            self.stats.observe(observed)
            self.redundancy.observe(observed)
        invalid = sum(1 for call, _ in applied if call.problems)
        late_calls = [call.end_ns / 1e9 < now for call, _ in applied if late(call, now, lateness)]
        if late_calls:
            past = sum(late_calls)
            for direction, count in (("past", past), ("future", len(late_calls) - past)):
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
        self._sync.tick(rules.runtimes, now, saving=True)
        return observations

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
        req = request if request is not None else DecisionRequest.from_fields(fields)
        check_request(req)
        # a replica that only decides still sees the breakers others opened
        self._sync.tick(self._rules.runtimes, self.clock.now(), saving=False)
        try:
            return self._decide(req)
        except RequestError:
            raise
        except StoreError as exc:
            # An outage, not a bug: decided by the fail mode, within the store's timeout.
            return self._outage(req, exc)
        except Exception:
            self.internal_error("engine.decide")
            return self._decide_despite(req)

    def _decide(self, req: DecisionRequest) -> Decision:
        now = self.clock.now()
        rules = self._rules
        admission = rules.admission
        hits: list[Hit] = []
        request = req
        if admission.plan(req).routed:
            headroom = Headroom(admission, rules.breakers, req, now)
            route = rules.router.route(req, available=headroom.available)
            if route is not None:
                hits.append(route.hit)
                if not route.hit.shadow and (route.provider, route.model) != (req.provider, req.model):
                    request = req.with_model(route.provider, route.model)
        decision_id = new_decision_id()
        plan = admission.plan(request)
        estimate = admission.estimate(request)  # before a breaker probe is taken: it may refuse the request
        for runtime in rules.runtimes:
            hits += runtime.check(request, now)
        admitted = admission.admit(plan, estimate, now, decision_id, reserve=not (hits and denied(hits)))
        if not hits and (admitted is None or plan.fits(admitted.states)):
            # The usual decision: only budgets have a say, and each enforced one has room. The
            # general path below would decide the same; this one builds no hit unless it is read.
            states = admitted.states if admitted is not None else ()
            self._count(_ALLOWED)
            return Decision(
                action=Action.ALLOW,
                provider=request.provider,
                model=request.model,
                reasons=BudgetHits(plan.instances, states, plan.enforced, now).lazy() if plan.enforced else _NONE,
                shadow=BudgetHits(plan.instances, states, plan.shadow, now).lazy() if plan.shadow else _NONE,
                decision_id=decision_id,
                estimated_cost_usd=nanos_to_usd(estimate[0]) if estimate != (0, 0) else request.estimated_cost_usd,
            )
        reserved = admitted is not None and admitted.reserved
        hits += plan.hits(admitted, now)
        action = _strictest(hits)
        if action is Action.DEGRADE:
            target = next(h.model for h in hits if h.action is Action.DEGRADE and not h.shadow and h.model)
            provider, model = Degrade(degrade=target).target(request.provider)
            if (provider, model) != (request.provider, request.model):
                self._abandon(rules, request, decision_id if reserved else None)
                request = req.with_model(provider, model)
                # One more pass for the cheaper model; the hits that asked for the degrade stay.
                kept = [h for h in hits if h.kind == "routing" or h.action is Action.DEGRADE]
                listed = {(h.kind, h.policy, h.scope) for h in kept}
                again: list[Hit] = []
                estimate = admission.estimate(request)
                for runtime in rules.runtimes:
                    again += runtime.check(request, now)
                plan = admission.plan(request)
                admitted = admission.admit(plan, estimate, now, decision_id, reserve=not denied(kept + again))
                reserved = admitted is not None and admitted.reserved
                again += plan.hits(admitted, now)
                hits = kept + [h for h in again if (h.kind, h.policy, h.scope) not in listed]
                action = _strictest(hits)
        if action is Action.DENY:
            self._abandon(rules, request, decision_id if reserved else None)
        enforced = [h for h in hits if not h.shadow]
        deciding = [h for h in enforced if h.action is action and action is not Action.ALLOW]
        retry_after = max((h.retry_after_s for h in deciding if h.retry_after_s is not None), default=None)
        resets_at = min((h.resets_at for h in deciding if h.resets_at is not None), default=None)
        self._count((action.value, deciding[0].policy if deciding else ""))
        return Decision(
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

    def _abandon(self, rules: _Rules, request: DecisionRequest, reservation: str | None) -> None:
        """The decision will not go ahead with this request: give back what it took."""
        if reservation is not None:
            self._store.release(reservation)
        for runtime in rules.runtimes:
            runtime.release(request)

    def _decide_despite(self, req: DecisionRequest) -> Decision:
        """After an unexpected error in `_decide`: the fail mode, never looser than the budgets
        (`admission.decide_despite`); the fail mode alone when the store does not answer."""
        failed = self._failed_decision(req, "otel_puppy failed to decide")
        try:
            decision, key = decide_despite(self._rules.admission, req, failed, self.clock.now())
        except StoreError as exc:
            return self._outage(req, exc)
        except Exception:
            self.internal_error("engine.decide", reraise=False)
            return failed
        self._count(key)
        return decision

    def _outage(self, req: DecisionRequest, exc: StoreError) -> Decision:
        self.metrics.record_store_error("decide")
        self._log.warning("decide:store", "otel_puppy could not reach its store to decide: %s", exc)
        return self._failed_decision(req, "the state store is unavailable")

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

    def _count(self, key: tuple[str, str]) -> None:
        with self._decisions_lock:
            self._decisions[key] = self._decisions.get(key, 0) + 1

    def problems(self) -> tuple[str, ...]:
        """Why this engine should not be trusted to decide now; empty when it can be (ready).

        Budgets whose state a decision could not read (each is read again here, so a repaired or
        expired one clears), and the problem the store reports itself (`Store.health().problem`).
        `/readyz` answers 503 with these.

        Raises:
            StoreError: the store does not answer (not ready either).
        """
        found = self._rules.budgets.problems(self.clock.now())
        problem = self._store.health().problem  # what the store found wrong with its own state
        if problem:
            found.append(str(problem))
        return tuple(found)

    def guard(self, provider: str, model: str, **fields: object) -> DecisionGuard:
        """Decide before a call, as a context manager (`with` or `async with`).

        Raises `PolicyDenied` on deny; otherwise yields the `Decision` (use `decision.model`) and
        marks every span started inside with its `otel_puppy.decision_id`, so the call's span
        settles the reservation.
        """
        return DecisionGuard(self, DecisionRequest.from_fields({"provider": provider, "model": model, **fields}))

    def breaker(self, provider: str, model: str | None = None) -> BreakerGuard:
        """`async with engine.breaker("openai"):` fails fast with `CircuitOpenError` while open.

        Without a span processor the guard reports the call's outcome to the breaker itself; with
        one, the call's span does (so a failure is not counted twice).
        """
        return self._rules.breakers.board.guard(provider, model, record=self._processor is None)

    # --- reading state ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Spend per window, every known budget instance, breaker, anomaly and model, as of now."""
        now = self.clock.now()
        rules = self._rules
        counters = self._store.totals([(TOTAL_SCOPE, w) for w in self._total_windows], now)
        windows = tuple(
            WindowSpend(w.name, nanos_to_usd(c.nanos), c.tokens, c.requests, w.resets_at(now))
            for w, c in zip(self._total_windows, counters, strict=True)
        )
        kinds = {runtime.kind: tuple(runtime.statuses(now)) for runtime in rules.runtimes}
        return Snapshot(
            windows=windows,
            budgets=kinds["budgets"],
            breakers=kinds["breakers"],
            anomalies=kinds["anomalies"],
            models=tuple(self.stats.all()),
            kinds=kinds,
        )

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
        self.history.sample(now)  # health's hourly trends keep filling while only Prometheus reads
        yield from rules.budgets.collect(now)
        with self._decisions_lock:
            decisions = dict(self._decisions)
        family = CounterMetricFamily(
            "otel_puppy_decisions", "Decisions, by action and the policy that decided.", labels=("action", "policy")
        )
        for key, count in decisions.items():
            family.add_metric(key, float(count))
        yield family
        for runtime in rules.runtimes:
            if runtime is not rules.budgets:
                yield from runtime.collect(now)
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
        self._sync.save_all(self._rules.runtimes)
        self._sync.stop()
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
            self._route(StoreFailed(operation, exc))

    def internal_error(self, component: str, *, reraise: bool | None = None) -> None:
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

    def after_fork(self) -> None:
        """In a forked child: every part repairs what the parent's threads held; this only asks them."""
        self._processor_lock = threading.Lock()
        self._decisions_lock = threading.Lock()
        rules = self._rules
        for part in (self.metrics, self._log, self._store, rules.pricer, self.stats, rules.router, self.history):
            part.after_fork()
        self._sync.after_fork()
        for runtime in self._rules.runtimes:
            runtime.after_fork()


_ALLOWED: Final = (Action.ALLOW.value, "")
_NONE: Final = LazyHits(())
_REFUSED: Final = Price(nanos=None, unpriced_reason=Unpriced.INVALID_USAGE)


_R = TypeVar("_R")


def _built(runtimes: Sequence[PolicyRuntime], kind: type[_R]) -> _R:
    """The runtime of a built-in kind (admission, routing and `breaker()` use theirs directly)."""
    return next(runtime for runtime in runtimes if isinstance(runtime, kind))


def _strictest(hits: Sequence[Hit]) -> Action:
    return Action.strictest([h.action for h in hits if not h.shadow])
