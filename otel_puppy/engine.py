"""`PolicyEngine`: prices calls, keeps state, and answers agents before they spend.

Orchestration only. Both front doors (the span processor and the OTLP receiver) feed `observe_many`:
the store dedupes and applies each call's spend atomically, then every policy runtime observes the
applied calls. `decide` asks routing for the model (with a read-only view of headroom), every runtime
for its hits, and budget admission to reserve the estimate until the call's span settles it; a
degrade is one more pass. Each policy kind lives in its runtime (`policies/runtime.py`); admission in
`admission.py`; decisions in `decisions.py`; span results in `span_results.py`; total spend in
`store_figures.py`; state in `state_sync.py`. The policy files compile to one `Rules` (`rules.py`).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Final

from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client.core import Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from otel_puppy._fork import repair_in_child
from otel_puppy._ids import decision_id as new_decision_id
from otel_puppy._logging import RateLimitedLog
from otel_puppy.admission import TOTAL_SCOPE, Headroom, Hit, Plan, denied
from otel_puppy.alerts import AlertEvent, Alerts, AlertSink, LogSink, WebhookSink
from otel_puppy.calls import LLMCall
from otel_puppy.chargeback import MonthToDate
from otel_puppy.clock import Clock, SystemClock
from otel_puppy.decision import Action, Decision, DecisionRequest
from otel_puppy.decisions import Decisions, strictest
from otel_puppy.exceptions import PolicyErrors, RegistryInUse, RequestError, StoreError
from otel_puppy.forward.exporter import EnrichingSpanExporter
from otel_puppy.guard import DecisionGuard, current_trace_id
from otel_puppy.health.history import HealthHistory
from otel_puppy.learned import LearnedEstimates
from otel_puppy.metrics import Metrics, ensure_free
from otel_puppy.metrics_server import MetricsServer, start_metrics_server
from otel_puppy.model_stats import ModelStats
from otel_puppy.policies import PolicySet, load_policies
from otel_puppy.policies.base import Degrade
from otel_puppy.policies.breaker import BreakerGuard
from otel_puppy.policies.presence import ALLOW_HINT, NoPoliciesWarning, missing_policies
from otel_puppy.policies.runtime import RuntimeContext, RuntimeEvent, StateChanged, StoreFailed
from otel_puppy.policies.watch import PolicyWatcher
from otel_puppy.pricing import Price, Pricer, Unpriced
from otel_puppy.processor import PuppySpanProcessor
from otel_puppy.redundant import RedundancyTracker
from otel_puppy.reservations import ReservationOutcomes
from otel_puppy.rules import Rules, build_rules
from otel_puppy.settings import PuppySettings
from otel_puppy.snapshot import Observation, Snapshot, WindowSpend
from otel_puppy.span_results import count_results
from otel_puppy.state_sync import StateSync
from otel_puppy.store import ApplyResult, Store, open_store
from otel_puppy.store.base import Admitted
from otel_puppy.store_figures import StoreFigures, total_windows
from otel_puppy.windows import CalendarWindow

__all__ = ("TOTAL_SCOPE", "DecisionGuard", "Observation", "PolicyEngine", "Snapshot", "WindowSpend")

logger = logging.getLogger("otel_puppy")

_EXPIRE_EVERY_S: Final = 60.0


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
        # prometheus_client's convention: the default registry unless one is given; one live engine each
        self.registry: CollectorRegistry = registry if registry is not None else REGISTRY
        ensure_free(self.registry)  # before opening anything; claimed last, by `register` below
        self.metrics = Metrics(max_label_values=self.settings.max_label_values)
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
        self.learned = LearnedEstimates(self._store, self.settings)
        """What calls usually cost, for decisions without an estimate (`learned.py`)."""
        self.month_to_date = (
            MonthToDate(
                self._store,
                lateness_s=self.settings.max_span_lateness_s,
                guard=self.metrics.guard.quiet,
            )
            if self.settings.ledger
            else None
        )
        """This month's cost by team and agent from the ledger, for the chargeback panel (`chargeback.py`)."""
        self.reservations = ReservationOutcomes(self._store)
        """What became of reservations, by estimate source (`reservations.py`)."""
        zone = self.settings.zone
        self._figures = StoreFigures(self._store, total_windows(zone), self._route)
        self.history = HealthHistory(self._store, self.metrics, CalendarWindow("hour", zone), TOTAL_SCOPE)
        """Hourly cost, errors and latency for health; assessments and scrapes feed it."""
        self._context = RuntimeContext(self.clock, zone, self._store, self._log, self.metrics.guard, self._route)
        self._rules = self._build_rules(policies if policies is not None else PolicySet(), previous=None)
        self._sync = StateSync(self._store, self.metrics, self.internal_error, self.clock.now())
        self._sync.restore(self._rules.runtimes)
        self._decisions = Decisions(fail_open=self.settings.fail_open)
        self._processor: PuppySpanProcessor | None = None
        self._processor_lock = threading.Lock()
        self._next_expiry = 0.0
        self._watcher: PolicyWatcher | None = None
        self._closed = False
        self._metrics_servers: list[MetricsServer] = []
        self.metrics.add_collector(self._collect)
        # Registered before the span processor's: every part is repaired before its worker restarts.
        repair_in_child(self, PolicyEngine.after_fork)
        try:  # last: an engine that failed to start holds no registry
            self.metrics.register(self.registry)
        except RegistryInUse:  # another engine claimed it since `ensure_free`
            self.close()
            raise

    @classmethod
    def from_settings(cls, settings: PuppySettings | None = None, **kwargs: object) -> PolicyEngine:
        """An engine from `OTEL_PUPPY_*` settings: loads `policies`, opens `store`. No policy file
        there warns (`NoPoliciesWarning`, naming the path) unless `OTEL_PUPPY_ALLOW_NO_POLICIES=true`.

        Raises:
            SettingsError: a setting is invalid (the message names the variable).
            PolicyErrors: a policy file is invalid (every error, with file:line:column).
        """
        settings = settings or PuppySettings.load()
        if not settings.allow_no_policies and (missing := missing_policies(Path(settings.policies))):
            # A warning, as libraries say "this is probably not what you meant": shown once, at the
            # caller's line, filterable; a service refuses to start instead (`otel-puppy serve`).
            warnings.warn(f"{missing}; {ALLOW_HINT}", NoPoliciesWarning, stacklevel=2)
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

    def _build_rules(self, policies: PolicySet, previous: Rules | None) -> Rules:
        windows, ttl = self._figures.windows, self.settings.reservation_ttl_s
        return build_rules(
            policies,
            previous,
            self._context,
            self.stats,
            reservation_ttl_s=ttl,
            total_windows=windows,
            learned=self.learned,
            ledger_retention_s=self.settings.ledger_retention_days * 86400.0 if self.settings.ledger else None,
        )

    def _route(self, event: RuntimeEvent) -> None:
        """Where a runtime's event goes: alerts to the sinks, effects to the runtimes they concern."""
        if isinstance(event, AlertEvent):
            self.alerts.emit(event)
        elif isinstance(event, StoreFailed):
            self.metrics.record_store_error(event.operation)
            message = "otel_puppy store unavailable for %s: %s"
            self._log.warning(f"store:{event.operation}", message, event.operation, event.error)
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

    def enriching_exporter(self, exporter: SpanExporter, *, operation_cost: bool = False) -> EnrichingSpanExporter:
        """`exporter`, writing each model call's cost and each agent run's onto the spans it exports."""
        return EnrichingSpanExporter(exporter, self, operation_cost=operation_cost)

    def observe(self, call: LLMCall) -> Observation:
        """Price one call and apply it. Returns what became of it."""
        return self.observe_many([call])[0]

    def observe_many(self, calls: Sequence[LLMCall]) -> list[Observation]:
        """Price calls and apply them in one store round trip, each deduped atomically. A call with a
        number out of bounds (`LLMCall.rejected`) is counted as `spans_total{result="rejected"}` and
        observed as `ApplyResult.REJECTED`, never applied."""
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
        records = rules.admission.records(
            calls, prices, now, lateness_s=lateness, ttl=ttl, spread=getattr(self._store, "reads_spread", False) is True
        )
        try:
            results = self._store.apply(records, now)
        except StoreError:
            self.metrics.record_store_error("apply")
            raise
        observations: list[Observation] = []
        applied: list[tuple[LLMCall, Price]] = []
        put_call, put_price, put_result = _OBSERVATION_SETTERS
        for call, price, result in zip(calls, prices, results, strict=True):
            observation = _new_object(Observation)  # `Observation(call, price, result)`, see the setters
            put_call(observation, call)
            put_price(observation, price)
            put_result(observation, result)
            observations.append(observation)
            if result is _APPLIED:
                applied.append((call, price))
        self.metrics.record_calls(applied)
        saved = [
            (call, n) for call, price in applied if call.cache_read_tokens and (n := pricer.cache_savings(call, price))
        ]
        if saved:
            self.metrics.record_cache_savings(saved)
        if applied:
            observed = [(call, price.nanos) for call, price in applied]
            for runtime in rules.runtimes:
                runtime.observe(observed, now)
            self.stats.observe(observed)
            self.redundancy.observe(observed)
            try:
                self.learned.observe(observed, now)
            except StoreError as exc:  # kept for the next write; the spend is applied
                self._route(StoreFailed("add samples", exc))
        count_results(self.metrics, observations, applied, now, lateness)
        if now >= self._next_expiry:
            self._next_expiry = now + _EXPIRE_EVERY_S
            try:
                self._store.expire(now)
            except StoreError as exc:  # housekeeping: the next round will do
                self._route(StoreFailed("expire", exc))
        self._sync.tick(rules.runtimes, now, saving=True)
        return observations

    # --- decisions ----------------------------------------------------------------------------

    def decide(self, request: DecisionRequest | None = None, /, *, reserve: bool = True, **fields: object) -> Decision:
        """May this call go ahead, and with which model?

        Pass a `DecisionRequest` or its fields (`decide(provider="openai", model="gpt-4.1",
        estimated_cost_usd=Decimal("0.02"))`). The strictest action of every matching policy wins;
        each is in `reasons`. An estimate is reserved on every matching budget until the call's span
        settles it (`reserved_usd`). `reserve=False` only asks: the same answer, nothing held (no
        reservation of any kind, no breaker probe; `decision_id` and `reserved_usd` are `None`).

        A store that does not answer decides by `fail_open`; a bad request value is refused, never
        failed open; any other error decides by the fail mode, never looser than the budgets.

        Raises:
            RequestError: a field's value is refused (the message names it); nothing was reserved.
        """
        if reserve is not True and reserve is not False:  # `"false"` would be truthy: refused, not read
            raise RequestError("reserve", "must be true or false")
        req = request if request is not None else DecisionRequest.from_fields(fields)
        if self._sync.shares:  # a replica that only decides still sees the breakers others opened
            self._sync.tick(self._rules.runtimes, self.clock.now(), saving=False)
        try:
            return self._decide(req, reserve)
        except RequestError:
            raise
        except StoreError as exc:
            # An outage, not a bug: decided by the fail mode, within the store's timeout.
            return self._outage(req, exc)
        except Exception:
            self.internal_error("engine.decide")
            return self._decide_despite(req)

    def _decide(self, req: DecisionRequest, reserve: bool = True) -> Decision:
        now = self.clock.now()
        rules = self._rules
        admission = rules.admission
        hits: list[Hit] = []
        request, plan = req, admission.plan(req)
        if plan.routed:
            headroom = Headroom(admission, rules.breakers, req, now)
            route = rules.router.route(req, available=headroom.available)
            if route is not None:
                hits.append(route.hit)
                if not route.hit.shadow and (route.provider, route.model) != (req.provider, req.model):
                    request = req.with_model(route.provider, route.model)
                    plan = admission.plan(request)
        decision_id = new_decision_id() if reserve else ""  # an ask holds nothing: nothing settles by an id
        estimate, source, admitted = self._pass(
            rules, request, plan, hits, decision_id=decision_id, now=now, reserve=reserve
        )
        if not hits and (admitted is None or plan.fits(admitted.states)):
            # The usual decision: the general path below would decide the same, building more.
            states = admitted.states if admitted is not None else ()
            reserved = admitted is not None and admitted.reserved
            return self._decisions.allowed(request, plan, states, estimate, source, decision_id or None, now, reserved)
        reserved = admitted is not None and admitted.reserved
        hits += plan.hits(admitted, now, estimate)
        action = strictest(hits)
        if action is Action.DEGRADE:
            target = next(h.model for h in hits if h.action is Action.DEGRADE and not h.shadow and h.model)
            provider, model = Degrade(degrade=target).target(request.provider)
            if (provider, model) != (request.provider, request.model):
                self._abandon(rules, request, decision_id if reserved else None)
                request = req.with_model(provider, model)
                # One more pass for the cheaper model; the hits that asked for the degrade stay.
                kept = [h for h in hits if h.kind == "routing" or h.action is Action.DEGRADE]
                listed = {(h.kind, h.policy, h.scope) for h in kept}
                again = list(kept)  # they count for admission's reserve; listed once below
                plan = admission.plan(request)
                estimate, source, admitted = self._pass(
                    rules, request, plan, again, decision_id=decision_id, now=now, reserve=reserve
                )
                reserved = admitted is not None and admitted.reserved
                again += plan.hits(admitted, now, estimate)
                hits = kept + [h for h in again if (h.kind, h.policy, h.scope) not in listed]
                action = strictest(hits)
        if action is Action.DENY or not reserve:  # an ask also gives back what a check took (a breaker probe)
            self._abandon(rules, request, decision_id if reserved else None)
            reserved = False
        return self._decisions.ruled(request, hits, estimate, source, decision_id or None, reserved=reserved)

    def _pass(
        self,
        rules: Rules,
        request: DecisionRequest,
        plan: Plan,
        hits: list[Hit],
        *,
        decision_id: str,
        now: float,
        reserve: bool,
    ) -> tuple[tuple[int, int], str, Admitted | None]:
        """A decision's path (and its degrade's): every runtime's hits are added to `hits`, then admission
        reserves the estimate on `plan` (the request's) unless a hit denies or `reserve` is off. Returns
        the estimate, where it came from, and the store's answer."""
        admission = rules.admission
        estimate, source = admission.estimate(request, now)  # before a breaker probe: it may refuse the request
        for runtime in rules.runtimes:
            hits += runtime.check(request, now)
        reserve = reserve and not (hits and denied(hits))
        return estimate, source, admission.admit(plan, estimate, now, decision_id, reserve=reserve, source=source)

    def _abandon(self, rules: Rules, request: DecisionRequest, reservation: str | None) -> None:
        """The decision will not go ahead with this request: give back what it took."""
        if reservation is not None:
            self._store.release(reservation)
        for runtime in rules.runtimes:
            runtime.release(request)

    def _decide_despite(self, req: DecisionRequest) -> Decision:
        """After an unexpected error in `_decide`: the fail mode, never looser than the budgets
        (`admission.decide_despite`); the fail mode alone when the store does not answer."""
        try:
            return self._decisions.despite(self._rules.admission, req, self.clock.now())
        except StoreError as exc:
            return self._outage(req, exc)
        except Exception:
            self.internal_error("engine.decide", reraise=False)
            return self._decisions.failed(req, "otel_puppy failed to decide")

    def _outage(self, req: DecisionRequest, exc: StoreError) -> Decision:
        self.metrics.record_store_error("decide")
        self._log.warning("decide:store", "otel_puppy could not reach its store to decide: %s", exc)
        return self._decisions.failed(req, "the state store is unavailable")

    def problems(self) -> tuple[str, ...]:
        """Why this engine should not be trusted to decide now (`/readyz` answers 503 with these):
        budgets whose state cannot be read (read again here, so a repaired one clears) and the
        problem the store reports itself. Empty when ready.

        Raises:
            StoreError: the store does not answer (not ready either).
        """
        found = self._rules.budgets.problems(self.clock.now())
        if problem := self._store.health().problem:  # what the store found wrong with its own state
            found.append(str(problem))
        return tuple(found)

    def guard(self, provider: str, model: str, **fields: object) -> DecisionGuard:
        """Decide before a call, as a context manager (`with` or `async with`): raises `PolicyDenied`
        on deny, else yields the `Decision` and marks the spans started inside with its
        `otel_puppy.decision_id`, so the call's span settles the reservation."""
        fields.setdefault("trace_id", current_trace_id())  # the agent run, for `per: [trace]` budgets
        return DecisionGuard(self, DecisionRequest.from_fields({"provider": provider, "model": model, **fields}))

    def breaker(self, provider: str, model: str | None = None) -> BreakerGuard:
        """`async with engine.breaker("openai"):` fails fast with `CircuitOpenError` while open. The
        call's outcome reaches the breaker from its span, or from the guard without a span processor."""
        return self._rules.breakers.board.guard(provider, model, record=self._processor is None)

    # --- reading state and metrics ----------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Spend per window, every known budget instance, breaker, anomaly and model, as of now."""
        now = self.clock.now()
        windows = self._figures.spend(now)
        kinds = {runtime.kind: tuple(runtime.statuses(now)) for runtime in self._rules.runtimes}
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

    def start_metrics_server(self, port: int, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve this engine's registry on `http://addr:port/metrics`; the engine's `close()` stops it.

        Raises:
            ValueError: `port` is not in 0..65535 or `addr` is not a plausible host (see `metrics_server`).
            OSError: the address cannot be bound.
        """
        server = start_metrics_server(self.registry, port, addr)
        self._metrics_servers.append(server)
        return server

    def _collect(self) -> Iterable[Metric]:
        rules = self._rules
        now = self.clock.now()
        self.history.sample(now)  # health's hourly trends keep filling while only Prometheus reads
        yield from rules.budgets.collect(now)
        yield from self._decisions.collect()
        for runtime in rules.runtimes:
            if runtime is not rules.budgets:
                yield from runtime.collect(now)
        yield from self.alerts.collect()
        yield from self.redundancy.collect()
        yield from self._figures.collect(now)
        try:
            yield from self.reservations.collect()
        except StoreError as exc:  # counted at the next scrape the store answers
            self._route(StoreFailed("take outcomes", exc))
        if self.month_to_date is not None:
            try:
                yield from self.month_to_date.collect(now)
            except StoreError as exc:  # shown again at the next scrape the store answers
                self._route(StoreFailed("read ledger", exc))

    # --- lifecycle and internal errors ---------------------------------------------------------

    def reload(self) -> PolicySet:
        """Load the policy files again; window spend is kept (in the store, by budget and scope).

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
        """Flush and stop the span processor, close the store, stop the metrics servers started by
        `start_metrics_server` and unregister from the Prometheus registry. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for server in self._metrics_servers:
            server.close()
        if self._watcher is not None:
            self._watcher.stop()
        if self._processor is not None:
            self._processor.shutdown()
        self._sync.save_all(self._rules.runtimes)
        self._sync.stop()
        try:
            self.learned.flush(self.clock.now())
        except StoreError as exc:  # the store is going away: the last second's samples are lost
            self._route(StoreFailed("add samples", exc))
        self.alerts.close()
        self._store.close()
        self.metrics.unregister()  # frees the registry for another engine

    def __enter__(self) -> PolicyEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def internal_error(self, component: str, *, reraise: bool | None = None) -> None:
        """Count and log an error we survived (from an `except` block); under pytest re-raise it."""
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
        rules = self._rules
        parts = (self.metrics, self._decisions, self._log, self._store, rules.pricer, self.stats, rules.router)
        for part in (*parts, self.history, self._sync, self.alerts, self.redundancy, self.learned, self.reservations):
            part.after_fork()
        if self.month_to_date is not None:
            self.month_to_date.after_fork()
        for runtime in rules.runtimes:
            runtime.after_fork()


_REFUSED: Final = Price(nanos=None, unpriced_reason=Unpriced.INVALID_USAGE)
_APPLIED: Final = ApplyResult.APPLIED
_OBSERVATION_SETTERS: Final = tuple(getattr(Observation, f.name).__set__ for f in fields(Observation))
"""`Observation`'s slot setters in field order: `observe_many` builds one per span without the frozen
dataclass's `__setattr__` per field (tests/test_engine_batch.py holds the two together)."""
_new_object: Final = object.__new__
