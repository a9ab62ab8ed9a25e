"""Prometheus metrics, built at scrape time from the engine's own accumulators.

The worker adds to plain dicts under one short lock per batch; a scrape copies them under the
same lock and builds metric families, like prometheus_client's custom collectors. Label values
pass a cardinality guard: past `max_label_values` distinct values per label, new values become
`other` and `otel_puppy_label_overflow_total{label}` counts each fold. User, session and
conversation ids are never labels: they live in budgets.

An engine registers on `prometheus_client.REGISTRY` unless it is given a registry (prometheus_client's
convention), so `generate_latest()` and `start_http_server` show its series. One live engine per
registry: a second one gets `RegistryInUse`, not two copies of every series; `unregister()` (the
engine's `close()`) frees the registry.

The same accumulators have a typed read side, `Metrics.totals()`: what health and the demo need
(requests, errors, unpriced calls, spend, latency per model and per agent, spans by result,
internal errors) as plain numbers, so nothing parses our own Prometheus families back by name.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.samples import Sample

from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.exceptions import RegistryInUse
from otel_puppy.money import nanos_to_float
from otel_puppy.pricing import Price, Unpriced

__all__ = (
    "DURATION_BUCKETS",
    "OVERFLOW",
    "CallTally",
    "LabelGuard",
    "MetricTotals",
    "Metrics",
    "ModelKey",
    "claimant",
    "ensure_free",
)

OVERFLOW: Final = "other"
DURATION_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
CALL_LABELS: Final = ("provider", "model", "agent", "service")
TOKEN_TYPES: Final = ("input", "output", "cache_read", "cache_write", "reasoning")

ModelKey = tuple[str, str]
"""(provider, model), as labelled: past the cardinality guard either may be `other`."""


class LabelGuard:
    """Keeps each label to a bounded set of values; later values fold into `other`."""

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self._seen: dict[str, set[str]] = {}
        self.overflow: dict[str, int] = {}

    def __call__(self, label: str, value: str | None) -> str:
        admitted = self._admit(label, value)
        if admitted is None:
            self.overflow[label] = self.overflow.get(label, 0) + 1
            return OVERFLOW
        return admitted

    def quiet(self, label: str, value: str | None) -> str:
        """As calling the guard, but a fold is not counted in `overflow`: for a family that labels, at
        every scrape, values the calls already brought (and counted)."""
        admitted = self._admit(label, value)
        return OVERFLOW if admitted is None else admitted

    def _admit(self, label: str, value: str | None) -> str | None:
        """The value as labelled (`""` for none) if it is, or still can be, one of the label's values; else None."""
        text = value or ""
        seen = self._seen.setdefault(label, set())
        if text in seen:
            return text
        if len(seen) < self.max_values:
            seen.add(text)
            return text
        return None


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(DURATION_BUCKETS, value)] += 1
        self.count += 1
        self.sum += value


@dataclass(frozen=True, slots=True)
class CallTally:
    """Model calls counted since the engine started, under one key (a model, an agent, or all)."""

    requests: int = 0
    errors: int = 0
    """Calls that failed (any error class)."""
    unpriced: int = 0
    """Calls that could not be priced: their spend is unknown, never $0."""
    unknown_model: int = 0
    """Of `unpriced`: calls to a model genai-prices (and `prices:`) does not know."""
    spend_nanos: int | None = None
    """Spend of the priced calls in nano-USD; `None` when no call with usage was priced."""
    duration_s: float = 0.0
    """The calls' durations added up (every call has one)."""

    @property
    def mean_duration_s(self) -> float | None:
        """The mean call duration; `None` without calls."""
        return self.duration_s / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class MetricTotals:
    """What `Metrics` counted since the engine started, as plain numbers (`Metrics.totals()`).

    Keys are label values after the cardinality guard, like the series: a model or agent past it
    is counted under `other`, and a call without an agent under `""`.
    """

    calls: CallTally = field(default_factory=CallTally)
    by_model: Mapping[ModelKey, CallTally] = field(default_factory=dict)
    by_agent: Mapping[str, CallTally] = field(default_factory=dict)
    spans: Mapping[str, int] = field(default_factory=dict)
    """Spans by what became of them (`applied`, `duplicate`, `dropped`, ...)."""
    internal_errors: int = 0
    store_errors: int = 0
    store_errors_by_operation: Mapping[str, int] = field(default_factory=dict)
    """`store_errors` by the operation that failed (`apply`, `decide`, `save_state`, ...)."""

    @property
    def dropped_spans(self) -> int:
        """Spans lost because the span processor's queue was full."""
        return self.spans.get("dropped", 0)


class _Tally:
    """A `CallTally` while it is being added up."""

    __slots__ = ("duration_s", "errors", "requests", "spend_nanos", "unknown_model", "unpriced")

    def __init__(self) -> None:
        self.requests = self.errors = self.unpriced = self.unknown_model = 0
        self.spend_nanos: int | None = None
        self.duration_s = 0.0

    def freeze(self) -> CallTally:
        return CallTally(
            self.requests, self.errors, self.unpriced, self.unknown_model, self.spend_nanos, self.duration_s
        )


class Metrics:
    """All of otel_puppy's series for one engine, and their totals.

    Registered on `registry` when one is given (else by `register()` later); at most one `Metrics`
    per registry at a time (`RegistryInUse`).
    """

    def __init__(self, registry: CollectorRegistry | None = None, max_label_values: int = 200) -> None:
        self._lock = threading.Lock()
        self.guard = LabelGuard(max_label_values)
        self._requests: dict[tuple[str, ...], int] = {}
        self._tokens: dict[tuple[str, ...], int] = {}
        self._cost: dict[tuple[str, ...], int] = {}
        self._unpriced: dict[tuple[str, ...], int] = {}
        self._drift: dict[tuple[str, ...], int] = {}
        self._cache_savings: dict[tuple[str, ...], int] = {}
        self._durations: dict[tuple[str, ...], _Histogram] = {}
        self._spans: dict[str, int] = {}
        self._late: dict[str, int] = {}
        self._internal_errors: dict[str, int] = {}
        self._store_errors: dict[str, int] = {}
        self.buffered = 0
        """Spans the span processor holds for a store that does not answer (set by the processor)."""
        self._extra: list[Callable[[], Iterable[Metric]]] = []
        self._collector = _Collector(self)
        self._registry: CollectorRegistry | None = None
        if registry is not None:
            self.register(registry)

    def register(self, registry: CollectorRegistry) -> None:
        """Export these series on `registry` (claiming it: see `ensure_free`).

        Raises:
            RegistryInUse: another live `Metrics` (engine) exports on `registry`.
            ValueError: these series are already registered on another registry.
        """
        with _claims_lock():
            owner = _CLAIMS.get(registry)
            if owner is self:
                return
            if owner is not None:
                raise RegistryInUse(describe_registry(registry))
            if self._registry is not None:
                raise ValueError(f"these metrics are already registered on {describe_registry(self._registry)}")
            registry.register(self._collector)
            _CLAIMS[registry] = self
            self._registry = registry

    def unregister(self) -> None:
        """Stop exporting on the registry and free it for another engine. Idempotent."""
        with _claims_lock():
            registry, self._registry = self._registry, None
            if registry is None:
                return
            if _CLAIMS.get(registry) is self:
                del _CLAIMS[registry]
            with contextlib.suppress(KeyError):  # someone unregistered our collector directly: already done
                registry.unregister(self._collector)

    def add_collector(self, produce: Callable[[], Iterable[Metric]]) -> None:
        """Other parts (budgets, breakers, queues) add families built at scrape time."""
        self._extra.append(produce)

    def record_calls(self, observed: Iterable[tuple[LLMCall, Price]]) -> None:
        """Count applied calls: requests, tokens, cost or unpriced, drift, duration.

        A batch is added up per series first (calls of one model, agent and outcome are most of it),
        then each series is added to once."""
        with self._lock:
            guard = self.guard
            series: dict[tuple[str, str, str | None, str | None, ErrorClass | None], tuple[Any, ...]] = {}
            # per (provider, model, agent, service, error class) of the calls: their labels as guarded,
            # the sums below and the duration histogram
            sums: dict[tuple[tuple[str, str, str, str], str], list[int]] = {}
            # per (labels, error class): [requests, then the five token counts]
            priced: dict[tuple[str, str, str, str], int] = {}
            durations = self._durations
            for call, price in observed:
                failure = call.error_class
                names = (call.provider, call.model, call.agent, call.service, failure)
                found = series.get(names)
                if found is None:
                    base = _guarded(guard, names[0], names[1], names[2], names[3])
                    group = (base, failure.value if failure else "")
                    summed = sums.get(group)
                    if summed is None:
                        summed = sums[group] = [0, 0, 0, 0, 0, 0]
                    histogram = durations.get(base)
                    if histogram is None:
                        histogram = durations[base] = _Histogram()
                    found = (base, summed, histogram)
                    if OVERFLOW not in base:  # a fold is counted per call: a folded call asks the guard again
                        series[names] = found
                base, summed, histogram = found
                summed[0] += 1
                summed[1] += call.input_tokens
                summed[2] += call.output_tokens
                summed[3] += call.cache_read_tokens
                summed[4] += call.cache_write_tokens
                summed[5] += call.reasoning_tokens
                nanos = price.nanos
                if nanos is not None:
                    if call.has_usage:  # a failed call without usage adds no $0 series
                        priced[base] = priced.get(base, 0) + nanos
                    if call.reported_cost_usd is not None:
                        # reported costs are floats: nano-USD is finer than their useful precision
                        drift = round(call.reported_cost_usd * 1e9) - nanos
                        if drift:
                            drift_key = (base[0], base[1], "over" if drift > 0 else "under")
                            self._drift[drift_key] = self._drift.get(drift_key, 0) + abs(drift)
                else:
                    unpriced_key = (*base, price.unpriced_reason or "")
                    self._unpriced[unpriced_key] = self._unpriced.get(unpriced_key, 0) + 1
                elapsed = call.end_ns - call.start_ns
                duration_s = elapsed / 1e9 if elapsed > 0 else 0.0  # `call.duration_s`
                histogram.buckets[bisect_left(DURATION_BUCKETS, duration_s)] += 1  # `histogram.observe`
                histogram.count += 1
                histogram.sum += duration_s
            requests, tokens, cost = self._requests, self._tokens, self._cost
            for (base, error_class), summed in sums.items():
                key = (*base, "error" if error_class else "ok", error_class)
                requests[key] = requests.get(key, 0) + summed[0]
                for token_type, count in zip(TOKEN_TYPES, summed[1:], strict=True):
                    if count:
                        token_key = (*base, token_type)
                        tokens[token_key] = tokens.get(token_key, 0) + count
            for base, nanos in priced.items():
                cost[base] = cost.get(base, 0) + nanos

    def record_cache_savings(self, saved: Iterable[tuple[LLMCall, int]]) -> None:
        """Add what the prompt cache saved on each call (nano-USD)."""
        with self._lock:
            guard, savings = self.guard, self._cache_savings
            keys: dict[tuple[str, str, str | None, str | None], tuple[str, str, str, str]] = {}
            for call, nanos in saved:
                labels = (call.provider, call.model, call.agent, call.service)
                key = keys.get(labels)
                if key is None:
                    key = _guarded(guard, *labels)
                    if OVERFLOW not in key:  # a fold is counted per call: a folded call asks the guard again
                        keys[labels] = key
                savings[key] = savings.get(key, 0) + nanos

    def record_spans(self, result: str, count: int = 1) -> None:
        """Count spans by what became of them (applied, duplicate, nested, invalid, dropped, ...)."""
        with self._lock:
            self._spans[result] = self._spans.get(result, 0) + count

    def record_late(self, direction: str, count: int = 1) -> None:
        """Count applied spans charged at their arrival: they ended too long before it (`past`) or after (`future`)."""
        with self._lock:
            self._late[direction] = self._late.get(direction, 0) + count

    def record_internal_error(self, component: str) -> None:
        with self._lock:
            self._internal_errors[component] = self._internal_errors.get(component, 0) + 1

    def record_store_error(self, operation: str) -> None:
        """The store did not answer (an outage, not a bug): counted apart from internal errors."""
        with self._lock:
            self._store_errors[operation] = self._store_errors.get(operation, 0) + 1

    def internal_errors(self) -> int:
        with self._lock:
            return sum(self._internal_errors.values())

    def totals(self) -> MetricTotals:
        """Everything counted since start, added up per model and per agent (one pass, one lock).

        Costs as much as the number of series, not of calls; reads no other collector.
        """
        everything = _Tally()
        models: dict[ModelKey, _Tally] = {}
        agents: dict[str, _Tally] = {}

        def tallies(base: tuple[str, ...]) -> tuple[_Tally, _Tally, _Tally]:
            # `base` starts (provider, model, agent, ...): every series counts for all three
            model = models.get((base[0], base[1]))
            if model is None:
                model = models[(base[0], base[1])] = _Tally()
            agent = agents.get(base[2])
            if agent is None:
                agent = agents[base[2]] = _Tally()
            return everything, model, agent

        with self._lock:
            for key, count in self._requests.items():
                failed = count if key[4] == "error" else 0
                for tally in tallies(key):
                    tally.requests += count
                    tally.errors += failed
            for key, count in self._unpriced.items():
                unknown = count if key[4] == Unpriced.UNKNOWN_MODEL else 0
                for tally in tallies(key):
                    tally.unpriced += count
                    tally.unknown_model += unknown
            for key, nanos in self._cost.items():
                for tally in tallies(key):
                    tally.spend_nanos = (tally.spend_nanos or 0) + nanos
            for key, histogram in self._durations.items():
                for tally in tallies(key):
                    tally.duration_s += histogram.sum
            spans = dict(self._spans)
            internal_errors = sum(self._internal_errors.values())
            by_operation = dict(self._store_errors)
        return MetricTotals(
            calls=everything.freeze(),
            by_model={key: tally.freeze() for key, tally in models.items()},
            by_agent={key: tally.freeze() for key, tally in agents.items()},
            spans=spans,
            internal_errors=internal_errors,
            store_errors=sum(by_operation.values()),
            store_errors_by_operation=by_operation,
        )

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock, and never release it here."""
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = dict(self._requests)
            tokens = dict(self._tokens)
            cost = dict(self._cost)
            unpriced = dict(self._unpriced)
            drift = dict(self._drift)
            savings = dict(self._cache_savings)
            durations = {k: (list(h.buckets), h.count, h.sum) for k, h in self._durations.items()}
            spans = dict(self._spans)
            late = dict(self._late)
            errors = dict(self._internal_errors)
            store_errors = dict(self._store_errors)
            buffered = self.buffered
            overflow = dict(self.guard.overflow)

        family = CounterMetricFamily(
            "otel_puppy_llm_requests",
            "Model calls, by outcome and error class.",
            labels=(*CALL_LABELS, "outcome", "error_class"),
        )
        for key, value in requests.items():
            family.add_metric(key, float(value))
        yield family

        family = CounterMetricFamily(
            "otel_puppy_llm_tokens",
            "Tokens used, by type (input includes cache reads and writes).",
            labels=(*CALL_LABELS, "type"),
        )
        for key, value in tokens.items():
            family.add_metric(key, float(value))
        yield family

        family = CounterMetricFamily(
            "otel_puppy_llm_cost_usd", "Spend in USD, priced with genai-prices.", labels=CALL_LABELS
        )
        for key, nanos in cost.items():
            family.add_metric(key, nanos_to_float(nanos))
        yield family

        family = CounterMetricFamily(
            "otel_puppy_llm_unpriced_requests",
            "Calls that could not be priced (unknown model, invalid usage); never counted as $0.",
            labels=(*CALL_LABELS, "reason"),
        )
        for key, value in unpriced.items():
            family.add_metric(key, float(value))
        yield family

        family = CounterMetricFamily(
            "otel_puppy_llm_cost_drift_usd",
            "Absolute difference between the cost a span reported and ours; over: it reported more.",
            labels=("provider", "model", "direction"),
        )
        for key, nanos in drift.items():
            family.add_metric(key, nanos_to_float(nanos))
        yield family

        family = CounterMetricFamily(
            "otel_puppy_llm_cache_savings_usd",
            "What prompt-cache reads saved: their cost as plain input tokens, less what they cost.",
            labels=CALL_LABELS,
        )
        for key, nanos in savings.items():
            family.add_metric(key, nanos_to_float(nanos))
        yield family

        histogram = HistogramMetricFamily(
            "otel_puppy_llm_request_duration_seconds", "Model call duration.", labels=CALL_LABELS
        )
        # The samples `histogram.add_metric` would append (buckets, `_count`, `_sum`), built directly:
        # a scrape writes one histogram per model, and its per-bucket checks cost more than the rest.
        samples, bucket, count_name, sum_name = histogram.samples, *_HISTOGRAM_NAMES
        for key, (buckets, _count, total) in durations.items():
            labels, running = dict(zip(CALL_LABELS, key, strict=True)), 0
            for le, count in zip(_BUCKET_LABELS, buckets, strict=True):
                running += count
                samples.append(Sample(bucket, {**labels, "le": le}, running))
            samples.append(Sample(count_name, labels, running))
            samples.append(Sample(sum_name, dict(labels), total))
        yield histogram

        family = CounterMetricFamily(
            "otel_puppy_spans", "Spans handed to otel_puppy, by what became of them.", labels=("result",)
        )
        for result, value in spans.items():
            family.add_metric((result,), float(value))
        yield family

        family = CounterMetricFamily(
            "otel_puppy_late_spans",
            "Applied spans that ended outside the lateness bound, so were charged at their arrival time.",
            labels=("direction",),
        )
        for direction, value in late.items():
            family.add_metric((direction,), float(value))
        yield family

        family = CounterMetricFamily(
            "otel_puppy_internal_errors", "Errors inside otel_puppy, counted and survived.", labels=("component",)
        )
        for component, value in errors.items():
            family.add_metric((component,), float(value))
        yield family

        family = CounterMetricFamily(
            "otel_puppy_store_errors",
            "Store operations that failed because the store did not answer (outages).",
            labels=("operation",),
        )
        for operation, value in store_errors.items():
            family.add_metric((operation,), float(value))
        yield family

        yield GaugeMetricFamily(
            "otel_puppy_spans_buffered", "Spans held by the span processor until the store answers again.", buffered
        )

        family = CounterMetricFamily(
            "otel_puppy_label_overflow",
            "Label values folded into 'other' by the cardinality guard.",
            labels=("label",),
        )
        for label, value in overflow.items():
            family.add_metric((label,), float(value))
        yield family

        for produce in self._extra:
            yield from produce()


_CLAIMS: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
"""Which live `Metrics` exports on each registry (weak: a dropped private registry is forgotten)."""
_CLAIMS_LOCK = [threading.Lock()]
"""In a list so a forked child can replace it: a parent thread may have held it at the fork."""


def _claims_lock() -> threading.Lock:
    return _CLAIMS_LOCK[0]


def _after_fork_in_child() -> None:
    _CLAIMS_LOCK[0] = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def describe_registry(registry: CollectorRegistry) -> str:
    """How errors name a registry: the default one by its import path."""
    if registry is REGISTRY:
        return "the default Prometheus registry (prometheus_client.REGISTRY)"
    return f"the Prometheus registry {type(registry).__name__} at {id(registry):#x}"


def claimant(registry: CollectorRegistry) -> Metrics | None:
    """The live `Metrics` exporting on `registry`, if any."""
    with _claims_lock():
        return _CLAIMS.get(registry)


def ensure_free(registry: CollectorRegistry) -> None:
    """Raise `RegistryInUse` if a live engine exports on `registry` (checked before opening anything)."""
    if claimant(registry) is not None:
        raise RegistryInUse(describe_registry(registry))


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


_BUCKET_LABELS: Final = tuple(_bucket_label(bound) for bound in (*DURATION_BUCKETS, float("inf")))
_HISTOGRAM_NAMES: Final = tuple(
    f"otel_puppy_llm_request_duration_seconds{suffix}" for suffix in ("_bucket", "_count", "_sum")
)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()

    def describe(self) -> Iterable[Metric]:
        return ()


def gauge(
    name: str, documentation: str, labels: tuple[str, ...], samples: Iterable[tuple[tuple[str, ...], float]]
) -> GaugeMetricFamily:
    """A gauge family from (labels, value) pairs, for collectors other modules add."""
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in samples:
        family.add_metric(key, float(value))
    return family


def _guarded(
    guard: LabelGuard, provider: str, model: str, agent: str | None, service: str | None
) -> tuple[str, str, str, str]:
    """A call's provider, model, agent and service labels, each through the cardinality guard."""
    return guard("provider", provider), guard("model", model), guard("agent", agent), guard("service", service)
