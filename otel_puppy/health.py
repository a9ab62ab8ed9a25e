"""The system's health as data: indicators, recommendations and hourly trends (`GET /v1/health`).

`assess(engine)` reads what the engine already keeps and judges it:

- **Indicators**, each with its value, threshold, status and a message: the store (it answers, and
  how fast), the error rate over the model statistics' window (15 minutes), budget utilization
  (the fullest enforced instance), open breakers, firing anomalies, the share of calls that could
  not be priced, dropped spans and internal errors. The overall status is the worst indicator's.
- **Recommendations** naming what to look at: the provider and model behind a spend spike, a
  faster model for a slow one, a fallback for an open breaker, a budget about to run out and
  when it resets, a `prices:` entry for a model genai-prices does not know.
- **Trends** of cost, errors and latency per calendar hour (in the engine's timezone) over the
  last `HISTORY_HOURS` hours: up, down or stable.

The engine keeps no hourly history of its own, so this module keeps a small, bounded one per
engine (`HealthHistory`, attached on the first `assess`). Cost per hour is read from the store's
calendar `hour` counters of the `total` scope while the store still keeps them (the hour in
progress and the two before it) and remembered afterwards. Errors and latency come from the
engine's Prometheus counters (`otel_puppy_llm_requests_total` by outcome, the
`otel_puppy_llm_request_duration_seconds` sum and count), sampled at most once every
`SAMPLE_EVERY_S` whenever health is assessed or Prometheus scrapes the engine; the growth between
two samples is spread evenly over the time between them, hour by hour. Nothing runs in the
background, and the history begins with the first assessment: until then there is no trend.

Time comes from `engine.clock`, so tests move a fake clock instead of sleeping.

>>> health = assess(engine)  # doctest: +SKIP
>>> health.status, [t.direction for t in health.trends]  # doctest: +SKIP
('degraded', ['up', 'stable', 'stable'])
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

from otel_puppy.decision import Action, PolicyHit
from otel_puppy.engine import TOTAL_SCOPE, PolicyEngine, Snapshot
from otel_puppy.exceptions import StoreError
from otel_puppy.metrics import OVERFLOW
from otel_puppy.model_stats import ModelStat
from otel_puppy.money import nanos_to_float
from otel_puppy.pricing import Unpriced
from otel_puppy.windows import CalendarWindow

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from otel_puppy.policies.anomaly import AnomalyStatus
    from otel_puppy.policies.breaker import BreakerStatus

__all__ = (
    "BUDGET_THRESHOLD",
    "ERROR_RATE_THRESHOLD",
    "HISTORY_HOURS",
    "LATENCY_SLOW_S",
    "MAX_PER_KIND",
    "SAMPLE_EVERY_S",
    "STORE_LATENCY_THRESHOLD_S",
    "TREND_DOWN_PCT",
    "TREND_UP_PCT",
    "UNPRICED_THRESHOLD",
    "Health",
    "HealthHistory",
    "HourPoint",
    "Indicator",
    "Recommendation",
    "Status",
    "Trend",
    "assess",
    "history_of",
)

logger = logging.getLogger("otel_puppy")

Status = Literal["healthy", "degraded", "unhealthy"]
"""Worst last; the overall status is the worst of the indicators'."""

STORE_LATENCY_THRESHOLD_S: Final = 0.1
"""Reading the engine's state slower than this is `degraded`."""
ERROR_RATE_THRESHOLD: Final = 0.1
"""A share of failed calls over the model statistics' window above this is `degraded`."""
BUDGET_THRESHOLD: Final = 0.9
"""An enforced budget at or past this utilization is `degraded`; an exhausted `deny` budget is `unhealthy`."""
UNPRICED_THRESHOLD: Final = 0.05
"""A share of calls that could not be priced above this is `degraded` (their spend is unknown)."""
LATENCY_SLOW_S: Final = 10.0
"""A model whose recent p95 latency is above this gets a faster candidate recommended."""
TREND_UP_PCT: Final = 20.0
"""A trend is `up` when the last complete hour is more than this percentage above the earlier hours' mean."""
TREND_DOWN_PCT: Final = -20.0
"""A trend is `down` when the last complete hour is more than 20% below the earlier hours' mean."""
HISTORY_HOURS: Final = 24
"""Complete hours kept (and shown) besides the hour in progress."""
SAMPLE_EVERY_S: Final = 60.0
"""The engine's counters are sampled at most this often."""
MAX_PER_KIND: Final = 5
"""Recommendations of one kind, most pressing first (a per-user budget can have thousands of instances)."""

_RANK: Final[dict[Status, int]] = {"healthy": 0, "degraded": 1, "unhealthy": 2}
_ZERO_BASELINE_PCT: Final = 100.0
_MAX_MODELS: Final = 200
"""Models whose hourly latency is kept (the metrics' label guard bounds them too)."""
_REQUESTS: Final = "otel_puppy_llm_requests"
_UNPRICED: Final = "otel_puppy_llm_unpriced_requests"
_DURATION: Final = "otel_puppy_llm_request_duration_seconds"
_SPANS: Final = "otel_puppy_spans"
_INTERNAL_ERRORS: Final = "otel_puppy_internal_errors"
_FAMILIES: Final = frozenset({_REQUESTS, _UNPRICED, _DURATION, _SPANS, _INTERNAL_ERRORS})
_SIGNAL_NOUNS: Final = {"cost_rate": "spend", "token_rate": "token use"}

_ModelKey = tuple[str, str]


# --- the result -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Indicator:
    """One measured aspect of the system against its threshold."""

    name: str
    value: float | None
    """The measured value; `None` when it could not be measured (the store failed)."""
    threshold: float
    """Past this value the indicator is no longer healthy."""
    status: Status
    message: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "status": self.status,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class HourPoint:
    """One calendar hour: it starts at `hour` (UTC)."""

    hour: datetime
    value: float

    def to_dict(self) -> dict[str, object]:
        return {"hour": self.hour.isoformat(), "value": self.value}


@dataclass(frozen=True, slots=True)
class Trend:
    """Where a figure is heading, hour by hour.

    `hourly` is oldest first and its last point may be the hour in progress (partial). The
    direction compares the last *complete* hour with the mean of the complete hours before it:
    `up` above `TREND_UP_PCT`, `down` below `TREND_DOWN_PCT`, else `stable`; with fewer than two
    complete hours it is `stable` with a change of 0. Against a zero mean, any rise is `up` by 100%.

    - `cost`: spend in USD per hour.
    - `errors`: the share of calls that failed in the hour (hours without calls have no point).
    - `latency`: the mean call duration in seconds in the hour (hours without calls have no point).
    """

    name: Literal["cost", "errors", "latency"]
    direction: Literal["up", "down", "stable"]
    change_pct: float
    hourly: tuple[HourPoint, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "direction": self.direction,
            "change_pct": self.change_pct,
            "hourly": [point.to_dict() for point in self.hourly],
        }


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Something to do, naming what it is about.

    `kind` is `budget`, `breaker`, `anomaly`, `latency` or `pricing`; `alternative` is a
    `provider:model` to use instead, when there is one.
    """

    kind: str
    message: str
    provider: str | None = None
    model: str | None = None
    alternative: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "message": self.message,
            "provider": self.provider,
            "model": self.model,
            "alternative": self.alternative,
        }


@dataclass(frozen=True, slots=True)
class Health:
    """The system's health at `at`: the worst indicator's status, and what to do about it."""

    status: Status
    indicators: tuple[Indicator, ...]
    recommendations: tuple[Recommendation, ...]
    trends: tuple[Trend, ...]
    at: datetime

    def indicator(self, name: str) -> Indicator:
        for item in self.indicators:
            if item.name == name:
                return item
        raise KeyError(name)

    def trend(self, name: str) -> Trend:
        for item in self.trends:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: datetimes as ISO 8601, numbers as floats."""
        return {
            "status": self.status,
            "at": self.at.isoformat(),
            "indicators": [item.to_dict() for item in self.indicators],
            "recommendations": [item.to_dict() for item in self.recommendations],
            "trends": [item.to_dict() for item in self.trends],
        }


# --- assessing --------------------------------------------------------------------------------


def assess(engine: PolicyEngine) -> Health:
    """Judge the engine's state now, and feed its hourly history.

    Never raises for a failing store: that is the `store` indicator, `unhealthy`.
    """
    now = engine.clock.now()
    indicators: list[Indicator] = []
    started = time.perf_counter()
    snapshot: Snapshot | None = None
    try:
        snapshot = engine.snapshot()
    except StoreError as exc:
        indicators.append(Indicator("store", None, STORE_LATENCY_THRESHOLD_S, "unhealthy", f"store failed: {exc}"))
    else:
        elapsed = time.perf_counter() - started
        slow = elapsed > STORE_LATENCY_THRESHOLD_S
        message = f"state read in {elapsed * 1000:.1f} ms" + (" (slow)" if slow else "")
        indicators.append(
            Indicator("store", elapsed, STORE_LATENCY_THRESHOLD_S, "degraded" if slow else "healthy", message)
        )
    counters = _read_counters(engine)
    if snapshot is not None:
        indicators += _state_indicators(snapshot)
    indicators += _counter_indicators(counters)

    history = history_of(engine)
    history.record(engine, now, counters)
    trends, model_latency = history.trends(now)
    models = snapshot.models if snapshot is not None else tuple(engine.stats.all())
    recommendations = _recommend(engine, snapshot, models, counters, model_latency)
    status: Status = "healthy"
    for indicator in indicators:
        if _RANK[indicator.status] > _RANK[status]:
            status = indicator.status
    return Health(
        status=status,
        indicators=tuple(indicators),
        recommendations=tuple(recommendations),
        trends=trends,
        at=datetime.fromtimestamp(now, UTC),
    )


def _state_indicators(snapshot: Snapshot) -> list[Indicator]:
    indicators = []
    enforced = [b for b in snapshot.breakers if not b.shadow]
    open_ = [b for b in enforced if b.state == "open"]
    half_open = [b for b in enforced if b.state == "half_open"]
    if open_ or half_open:
        listed = [f"{b.policy} for {b.subject} is {b.state.replace('_', '-')}" for b in open_ + half_open]
        message = f"calls are refused or probed: {'; '.join(listed)}"
    else:
        message = "no breaker open"
    status: Status = "degraded" if open_ or half_open else "healthy"
    indicators.append(Indicator("open_breakers", float(len(open_)), 0.0, status, message))

    firing = [a for a in snapshot.anomalies if a.firing and not a.shadow]
    if firing:
        listed = [f"{a.policy} ({a.signal}) for {a.subject or 'all'}" for a in firing]
        message = f"firing: {'; '.join(listed)}"
    else:
        message = "no anomaly firing"
    indicators.append(Indicator("anomalies", float(len(firing)), 0.0, "degraded" if firing else "healthy", message))

    budgets = [b for b in snapshot.budgets if not b.shadow and b.utilization is not None]
    if budgets:
        fullest = max(budgets, key=lambda b: b.utilization or 0.0)
        utilization = fullest.utilization or 0.0
        over = [b for b in budgets if (b.utilization or 0.0) >= BUDGET_THRESHOLD]
        # A budget's action is its `on_exceed` only once it is exhausted: these refuse calls now.
        denying = [b for b in over if b.action is Action.DENY]
        status = "unhealthy" if denying else "degraded" if over else "healthy"
        where = f" for {fullest.scope}" if fullest.scope else ""
        message = f"fullest: {fullest.policy}{where} at {utilization:.0%} of its {fullest.window} limit"
        if over:
            message += f"; {len(over)} over {BUDGET_THRESHOLD:.0%}"
        if denying:
            message += f", {len(denying)} denying calls"
        indicators.append(Indicator("budget_utilization", utilization, BUDGET_THRESHOLD, status, message))
    else:
        indicators.append(Indicator("budget_utilization", 0.0, BUDGET_THRESHOLD, "healthy", "no budget in use"))

    requests = sum(m.requests for m in snapshot.models)
    errors = sum(m.errors for m in snapshot.models)
    rate = errors / requests if requests else 0.0
    status = "degraded" if rate > ERROR_RATE_THRESHOLD else "healthy"
    message = f"{errors} of {requests} recent model calls failed ({rate:.1%})" if requests else "no recent model calls"
    indicators.append(Indicator("error_rate", rate, ERROR_RATE_THRESHOLD, status, message))
    return indicators


def _counter_indicators(counters: _Counters) -> list[Indicator]:
    requests, unpriced = counters.requests, counters.unpriced
    share = unpriced / requests if requests else 0.0
    status: Status = "degraded" if share > UNPRICED_THRESHOLD else "healthy"
    message = (
        f"{unpriced:.0f} of {requests:.0f} calls since start could not be priced ({share:.1%}); "
        "add their models under prices: in the policy files"
        if unpriced
        else "every call was priced"
    )
    indicators = [Indicator("unpriced_share", share, UNPRICED_THRESHOLD, status, message)]

    dropped = counters.dropped
    message = (
        f"{dropped:.0f} spans dropped since start: the span processor's queue was full (raise queue_size)"
        if dropped
        else "no span dropped"
    )
    indicators.append(Indicator("dropped_spans", dropped, 0.0, "degraded" if dropped else "healthy", message))

    errors = counters.internal_errors
    message = f"{errors:.0f} internal errors since start; see the service log" if errors else "no internal error"
    indicators.append(Indicator("internal_errors", errors, 0.0, "degraded" if errors else "healthy", message))
    return indicators


# --- recommendations --------------------------------------------------------------------------


def _recommend(
    engine: PolicyEngine,
    snapshot: Snapshot | None,
    models: Sequence[ModelStat],
    counters: _Counters,
    model_latency: dict[_ModelKey, Trend],
) -> list[Recommendation]:
    """Most pressing first: budgets, breakers, anomalies, latency, pricing; `MAX_PER_KIND` of each."""
    open_breakers: list[BreakerStatus] = []
    found: list[list[Recommendation]] = []
    if snapshot is not None:
        open_breakers = [b for b in snapshot.breakers if b.state == "open" and not b.shadow]
        found.append(_budget_advice(snapshot.budgets))
        found.append([_breaker_advice(engine, b, models, open_breakers) for b in open_breakers])
        found.append(_anomaly_advice(snapshot.anomalies, models))
    found.append(_latency_advice(models, model_latency, open_breakers))
    found.append(_pricing_advice(engine, counters))
    return [item for group in found for item in group[:MAX_PER_KIND]]


def _budget_advice(budgets: Sequence[PolicyHit]) -> list[Recommendation]:
    full = [b for b in budgets if not b.shadow and (b.utilization or 0.0) >= BUDGET_THRESHOLD]
    full.sort(key=lambda b: -(b.utilization or 0.0))
    advice = []
    for hit in full:
        where = f" for {hit.scope}" if hit.scope else ""
        resets = hit.resets_at.isoformat() if hit.resets_at is not None else "the end of its window"
        head = f"budget {hit.policy}{where} is at {hit.utilization or 0.0:.0%} of its {hit.window} limit"
        if hit.action is Action.DENY:
            tail = f"calls are denied until it resets at {resets}; raise its limit or shed low-priority work"
        elif hit.action is Action.DEGRADE:
            tail = f"calls are degraded to {hit.model} until it resets at {resets}"
        elif hit.action is Action.WARN:
            tail = f"it is over (warning only) until it resets at {resets}"
        else:
            tail = f"it resets at {resets}; slow down or raise its limit before it runs out"
        labels = _labels(hit.scope)
        advice.append(
            Recommendation("budget", f"{head}: {tail}", provider=labels.get("provider"), model=labels.get("model"))
        )
    return advice


def _breaker_advice(
    engine: PolicyEngine, breaker: BreakerStatus, models: Sequence[ModelStat], open_breakers: Sequence[BreakerStatus]
) -> Recommendation:
    def broken(provider: str, model: str) -> bool:
        return any(b.provider == provider and b.model in (None, model) for b in open_breakers)

    # Routing candidates first (policy order), then models seen recently; the most reliable first.
    options: dict[str, str | None] = {}
    for policy in engine.policies.routing:
        if policy.shadow:
            continue
        refs = [candidate.provider_model for candidate in policy.candidates]
        serves = any(p == breaker.provider and breaker.model in (None, m) for p, m in refs)
        for provider, model in refs:
            if not broken(provider, model):
                options.setdefault(f"{provider}:{model}", policy.name if serves else None)
    reliability = {f"{m.provider}:{m.model}": m.success_rate for m in models}
    for stat in sorted(models, key=lambda m: (-m.success_rate, -m.requests)):
        if not broken(stat.provider, stat.model):
            options.setdefault(f"{stat.provider}:{stat.model}", None)
    ranked = sorted(options.items(), key=lambda item: (item[1] is None, -reliability.get(item[0], 0.0)))
    retry = (
        f" until {datetime.fromtimestamp(breaker.retry_at, UTC).isoformat()}" if breaker.retry_at is not None else ""
    )
    head = f"breaker {breaker.policy} for {breaker.subject} is open{retry}"
    if not ranked:
        message = f"{head}: add a routing policy with a candidate on another provider to fall back to"
        return Recommendation("breaker", message, provider=breaker.provider, model=breaker.model)
    alternative, routing = ranked[0]
    if routing is not None:
        message = f"{head}: routing {routing} falls back to {alternative} meanwhile"
    else:
        message = f"{head}: fall back to {alternative} (add it as a routing candidate beside {breaker.subject})"
    return Recommendation("breaker", message, provider=breaker.provider, model=breaker.model, alternative=alternative)


def _anomaly_advice(anomalies: Sequence[AnomalyStatus], models: Sequence[ModelStat]) -> list[Recommendation]:
    advice = []
    firing = [a for a in anomalies if a.firing and not a.shadow and a.signal in _SIGNAL_NOUNS]
    firing.sort(key=lambda a: -a.deviation_pct)
    for anomaly in firing:
        labels = _labels(anomaly.subject)
        provider, model = labels.get("provider"), labels.get("model")
        if model is None:
            # The subject names no model: the one that spent (or used tokens) most recently.
            pool = [m for m in models if provider is None or m.provider == provider]
            if anomaly.signal == "cost_rate":
                pool = [m for m in pool if m.cost_per_request_usd is not None]
                top = max(pool, key=lambda m: (m.cost_per_request_usd or 0) * m.requests, default=None)
            else:
                top = max(pool, key=lambda m: m.tokens_per_request * m.requests, default=None)
            if top is not None:
                provider, model = top.provider, top.model
        subject = labels.get("provider") if set(labels) == {"provider"} else anomaly.subject or "all models"
        noun = _SIGNAL_NOUNS[anomaly.signal]
        if anomaly.deviation_pct == float("inf"):
            head = f"{noun} on {subject} rose from a zero baseline"
        else:
            head = f"{noun} on {subject} is {anomaly.deviation_pct:.0f}% above its baseline"
        message = f"{head}: check {model} callers" if model is not None else f"{head}: check who is calling"
        advice.append(Recommendation("anomaly", message, provider=provider, model=model))
    return advice


def _latency_advice(
    models: Sequence[ModelStat], trends: dict[_ModelKey, Trend], open_breakers: Sequence[BreakerStatus]
) -> list[Recommendation]:
    by_speed = sorted(models, key=lambda m: m.latency_p95_s)
    slow = []
    for stat in models:
        trend = trends.get((stat.provider, stat.model))
        rising = trend is not None and trend.direction == "up"
        if stat.latency_p95_s > LATENCY_SLOW_S or rising:
            slow.append((stat, trend if rising else None))
    slow.sort(key=lambda item: -item[0].latency_p95_s)
    advice = []
    for stat, trend in slow:
        if trend is not None and stat.latency_p95_s <= LATENCY_SLOW_S:
            change = f"{trend.change_pct:.0f}%"
            head = f"{stat.model} latency is up {change} on the hours before (p95 {stat.latency_p95_s:.1f} s)"
        else:
            head = f"{stat.model} p95 {stat.latency_p95_s:.1f} s"
        faster = [
            m
            for m in by_speed
            if m.latency_p95_s < stat.latency_p95_s
            and (m.provider, m.model) != (stat.provider, stat.model)
            and not any(b.provider == m.provider and b.model in (None, m.model) for b in open_breakers)
        ]
        pick = next((m for m in faster if m.provider == stat.provider), faster[0] if faster else None)
        if pick is None:
            message = f"{head}: no faster model seen recently; add one as a routing candidate"
            advice.append(Recommendation("latency", message, provider=stat.provider, model=stat.model))
            continue
        name = pick.model if pick.provider == stat.provider else f"{pick.provider}:{pick.model}"
        message = f"{head}: {name} answers in {pick.latency_p95_s:.1f} s at p95"
        advice.append(
            Recommendation(
                "latency",
                message,
                provider=stat.provider,
                model=stat.model,
                alternative=f"{pick.provider}:{pick.model}",
            )
        )
    return advice


def _pricing_advice(engine: PolicyEngine, counters: _Counters) -> list[Recommendation]:
    advice = []
    pricer = engine.pricer
    now = engine.clock.now()
    for (provider, model), count in sorted(counters.unknown_models.items(), key=lambda item: -item[1]):
        if OVERFLOW in (provider, model):
            continue  # folded by the label guard: no name to give
        # The counters are since start: skip a model that a `prices:` entry has covered since.
        price = pricer.price_usage(provider, model, input_tokens=1, output_tokens=1, at=now)
        if price.unpriced_reason != Unpriced.UNKNOWN_MODEL:
            continue
        calls = f"{count:.0f} call{'' if count == 1 else 's'}"
        message = (
            f"{calls} to {provider}:{model} could not be priced (unknown model): add a prices: entry "
            f"{{provider: {provider}, model: {model}, input_mtok: ..., output_mtok: ...}} to the policy files"
        )
        advice.append(Recommendation("pricing", message, provider=provider, model=model))
    return advice


def _labels(scope: str) -> dict[str, str]:
    """`provider=openai,model=gpt-4.1` -> {"provider": "openai", "model": "gpt-4.1"}."""
    pairs = (part.split("=", 1) for part in scope.split(",") if "=" in part)
    return {key: value for key, value in pairs if value}


# --- the engine's counters --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Counters:
    """The engine's counters since it started, as health reads them."""

    requests: float = 0.0
    errors: float = 0.0
    unpriced: float = 0.0
    unknown_models: dict[_ModelKey, float] = field(default_factory=dict)
    """Calls unpriced because genai-prices (and `prices:`) do not know the model."""
    dropped: float = 0.0
    internal_errors: float = 0.0
    latency: dict[_ModelKey, tuple[float, float]] = field(default_factory=dict)
    """Per model: the duration histogram's sum and count."""


_sampling = threading.local()


def _read_counters(engine: PolicyEngine) -> _Counters:
    """One pass over the engine's own families; it stops before the collectors that read the store."""
    requests = errors = unpriced = dropped = internal = 0.0
    unknown: dict[_ModelKey, float] = {}
    latency: dict[_ModelKey, tuple[float, float]] = {}
    seen: set[str] = set()
    outer = getattr(_sampling, "active", False)
    _sampling.active = True  # the scrape sampler is among the collectors `collect()` ends with
    try:
        families: Iterable[Metric] = engine.metrics.collect()
        for family in families:
            name = family.name
            if name not in _FAMILIES:
                continue
            seen.add(name)
            for sample in family.samples:
                labels, value = sample.labels, sample.value
                if name == _DURATION:
                    if sample.name.endswith(("_sum", "_count")):
                        key = (labels.get("provider", ""), labels.get("model", ""))
                        total, count = latency.get(key, (0.0, 0.0))
                        latency[key] = (
                            (total + value, count) if sample.name.endswith("_sum") else (total, count + value)
                        )
                elif not sample.name.endswith("_total"):
                    continue
                elif name == _REQUESTS:
                    requests += value
                    if labels.get("outcome") == "error":
                        errors += value
                elif name == _UNPRICED:
                    unpriced += value
                    if labels.get("reason") == Unpriced.UNKNOWN_MODEL:
                        key = (labels.get("provider", ""), labels.get("model", ""))
                        unknown[key] = unknown.get(key, 0.0) + value
                elif name == _SPANS:
                    if labels.get("result") == "dropped":
                        dropped += value
                else:
                    internal += value
            if seen == _FAMILIES:
                break
    finally:
        _sampling.active = outer
    return _Counters(requests, errors, unpriced, unknown, dropped, internal, latency)


# --- hourly history ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Hour:
    """What is known of one calendar hour."""

    cost_nanos: int | None = None
    """Spend from the store's `hour` counter; `None` when it was never read while the store kept it."""
    requests: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0
    models: dict[_ModelKey, list[float]] = field(default_factory=dict)
    """Per model: [duration sum, count] in this hour."""


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    requests: float
    errors: float
    latency: dict[_ModelKey, tuple[float, float]]


class HealthHistory:
    """A bounded hourly history of one engine's cost, errors and latency (see the module docstring).

    Holds at most `HISTORY_HOURS + 1` hours (and per hour at most 200 models' latency sums) and
    the last counter sample. Thread-safe. `history_of(engine)` gives the engine's own.
    """

    def __init__(self, window: CalendarWindow) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._hours: dict[float, _Hour] = {}
        self._first_hour: float | None = None
        self._last: _Sample | None = None

    def due(self, now: float) -> bool:
        """Whether the counters would be sampled at `now` (`SAMPLE_EVERY_S` since the last sample)."""
        last = self._last
        return last is None or now - last.at >= SAMPLE_EVERY_S or now < last.at

    def record(self, engine: PolicyEngine, now: float, counters: _Counters | None = None) -> None:
        """Read the store's hour counters still kept, and sample the counters when due.

        A failing store leaves the cost history as it was.
        """
        window = self._window
        current = window.bounds(now)[0]
        with self._lock:
            if self._first_hour is None:
                self._first_hour = current
            first = self._first_hour
        # The store keeps an hour's counter `retention()` after the hour ends; `expire` may drop
        # it any time after that, when a read of zero would no longer mean "no spend".
        starts = []
        start = current
        while start >= first and window.bounds(start)[1] + window.retention() > now:
            starts.append(start)
            start = window.bounds(start - 1)[0]
        totals: list[int] | None
        try:
            # `totals` reads the bucket current at the time it is given: one read per hour.
            totals = [engine.store.totals([(TOTAL_SCOPE, window)], start)[0].nanos for start in starts]
        except StoreError:
            totals = None
        with self._lock:
            if totals is not None:
                for start, nanos in zip(starts, totals, strict=True):
                    self._hour(start).cost_nanos = nanos
            if self.due(now):
                if counters is None:
                    counters = _read_counters(engine)
                self._sample(now, counters)
            self._prune(current)

    def _hour(self, start: float) -> _Hour:
        hour = self._hours.get(start)
        if hour is None:
            hour = self._hours[start] = _Hour()
        return hour

    def _sample(self, now: float, counters: _Counters) -> None:
        sample = _Sample(now, counters.requests, counters.errors, counters.latency)
        last, self._last = self._last, sample
        if last is None or now <= last.at:
            return  # the first sample (or time went back) is only the base of the next one
        requests = max(sample.requests - last.requests, 0.0)
        errors = max(sample.errors - last.errors, 0.0)
        latency: dict[_ModelKey, tuple[float, float]] = {}
        for key, (total, count) in sample.latency.items():
            before_total, before_count = last.latency.get(key, (0.0, 0.0))
            if count > before_count:
                latency[key] = (max(total - before_total, 0.0), count - before_count)
        if not requests and not latency:
            return
        # Spread the growth evenly over the time between the samples, hour by hour, newest first.
        span = now - last.at
        oldest = self._oldest(now)
        start, end = self._window.bounds(now)[0], now
        while end > last.at and start >= oldest:
            share = (end - max(start, last.at)) / span
            hour = self._hour(start)
            hour.requests += requests * share
            hour.errors += errors * share
            for key, (total, count) in latency.items():
                hour.latency_sum += total * share
                hour.latency_count += count * share
                sums = hour.models.get(key)
                if sums is None:
                    if len(hour.models) >= _MAX_MODELS:
                        continue
                    sums = hour.models[key] = [0.0, 0.0]
                sums[0] += total * share
                sums[1] += count * share
            end = start
            start = self._window.bounds(start - 1)[0]

    def _oldest(self, now: float) -> float:
        return self._window.bounds(now)[0] - HISTORY_HOURS * 3600

    def _prune(self, current: float) -> None:
        oldest = current - HISTORY_HOURS * 3600
        for start in [s for s in self._hours if s < oldest]:
            del self._hours[start]

    def trends(self, now: float) -> tuple[tuple[Trend, ...], dict[_ModelKey, Trend]]:
        """The cost, errors and latency trends, and each model's latency trend."""
        current = self._window.bounds(now)[0]
        oldest = current - HISTORY_HOURS * 3600
        with self._lock:
            hours = sorted(((s, h) for s, h in self._hours.items() if oldest <= s <= current), key=lambda item: item[0])
            cost = [(s, nanos_to_float(h.cost_nanos)) for s, h in hours if h.cost_nanos is not None]
            cost_nanos = [(s, float(h.cost_nanos)) for s, h in hours if h.cost_nanos is not None]
            errors = [(s, h.errors / h.requests) for s, h in hours if h.requests > 0]
            latency = [(s, h.latency_sum / h.latency_count) for s, h in hours if h.latency_count > 0]
            per_model: dict[_ModelKey, list[tuple[float, float]]] = {}
            for s, h in hours:
                for key, (total, count) in h.models.items():
                    if count > 0:
                        per_model.setdefault(key, []).append((s, total / count))
        # Cost is judged in nano-USD, so its change is exact.
        cost_direction, cost_change = _direction(cost_nanos, current)
        trends = (
            Trend("cost", cost_direction, cost_change, _points(cost)),
            _trend("errors", errors, current),
            _trend("latency", latency, current),
        )
        return trends, {key: _trend("latency", points, current) for key, points in per_model.items()}


def _points(values: Sequence[tuple[float, float]]) -> tuple[HourPoint, ...]:
    return tuple(HourPoint(datetime.fromtimestamp(start, UTC), value) for start, value in values)


def _direction(values: Sequence[tuple[float, float]], current: float) -> tuple[Literal["up", "down", "stable"], float]:
    complete = [value for start, value in values if start < current]
    if len(complete) < 2:
        return "stable", 0.0
    last, earlier = complete[-1], complete[:-1]
    mean = sum(earlier) / len(earlier)
    if mean == 0:
        return ("up", _ZERO_BASELINE_PCT) if last > 0 else ("stable", 0.0)
    change = round((last - mean) / mean * 100, 2)
    if change > TREND_UP_PCT:
        return "up", change
    if change < TREND_DOWN_PCT:
        return "down", change
    return "stable", change


def _trend(name: Literal["cost", "errors", "latency"], values: Sequence[tuple[float, float]], current: float) -> Trend:
    direction, change = _direction(values, current)
    return Trend(name, direction, change, _points(values))


_histories: weakref.WeakKeyDictionary[PolicyEngine, HealthHistory] = weakref.WeakKeyDictionary()
_histories_lock = threading.Lock()


def history_of(engine: PolicyEngine) -> HealthHistory:
    """The engine's hourly history, created on first use.

    From then on every Prometheus scrape of the engine also samples it (at most once every
    `SAMPLE_EVERY_S`), so trends keep filling while only Prometheus is reading.
    """
    with _histories_lock:
        history = _histories.get(engine)
        if history is None:
            history = _histories[engine] = HealthHistory(CalendarWindow("hour", engine.settings.zone))
            engine.metrics.add_collector(_scrape_sampler(weakref.ref(engine), history))
        return history


def _scrape_sampler(ref: weakref.ref[PolicyEngine], history: HealthHistory) -> Callable[[], Iterable[Metric]]:
    # Holds the engine weakly: the engine holds this function, and the history must not keep it alive.
    def sample() -> Iterable[Metric]:
        engine = ref()
        if engine is None or getattr(_sampling, "active", False):
            return ()
        now = engine.clock.now()
        if history.due(now):
            try:
                history.record(engine, now)
            except Exception:
                engine.metrics.record_internal_error("health")
                logger.exception("otel_puppy internal error sampling health history")
                if engine.settings.reraise:
                    raise
        return ()

    return sample
