"""Advice: what to look at, naming it, most pressing first.

The provider and model behind a spend spike, a faster model for a slow one (or one whose latency
is rising), a fallback for an open breaker, a budget about to run out and when it has room again (a
calendar window's reset; for a rolling window, when enough of its spend has aged out), a
`prices:` entry for a model genai-prices does not know. `MAX_PER_KIND` of each kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from otel_puppy.decision import Action, PolicyHit
from otel_puppy.health.indicators import BUDGET_THRESHOLD
from otel_puppy.metrics import OVERFLOW
from otel_puppy.pricing import Unpriced
from otel_puppy.windows import CALENDAR_UNITS

if TYPE_CHECKING:
    from otel_puppy.engine import PolicyEngine, Snapshot
    from otel_puppy.health.history import Trend
    from otel_puppy.metrics import MetricTotals, ModelKey
    from otel_puppy.model_stats import ModelStat
    from otel_puppy.policies.anomaly import AnomalyStatus
    from otel_puppy.policies.breaker import BreakerStatus

__all__ = ("LATENCY_SLOW_S", "MAX_PER_KIND", "Recommendation", "recommend")

LATENCY_SLOW_S: Final = 10.0
"""A model whose recent p95 latency is above this gets a faster candidate recommended."""
MAX_PER_KIND: Final = 5
"""Recommendations of one kind, most pressing first (a per-user budget can have thousands of instances)."""

_SIGNAL_NOUNS: Final = {"cost_rate": "spend", "token_rate": "token use"}


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


def recommend(
    engine: PolicyEngine,
    snapshot: Snapshot | None,
    models: Sequence[ModelStat],
    totals: MetricTotals,
    model_latency: Mapping[ModelKey, Trend],
) -> list[Recommendation]:
    """Most pressing first: budgets, breakers, anomalies, latency, pricing; `MAX_PER_KIND` of each.

    Without a `snapshot` (the store failed) only latency and pricing advice is given.
    """
    open_breakers: list[BreakerStatus] = []
    found: list[list[Recommendation]] = []
    if snapshot is not None:
        open_breakers = [b for b in snapshot.breakers if b.state == "open" and not b.shadow]
        found.append(_budget_advice(snapshot.budgets, engine.clock.now()))
        found.append([_breaker_advice(engine, b, models, open_breakers) for b in open_breakers])
        found.append(_anomaly_advice(snapshot.anomalies, models))
    found.append(_latency_advice(models, model_latency, open_breakers))
    found.append(_pricing_advice(engine, totals))
    return [item for group in found for item in group[:MAX_PER_KIND]]


def _budget_advice(budgets: Sequence[PolicyHit], now: float) -> list[Recommendation]:
    full = [b for b in budgets if not b.shadow and (b.utilization or 0.0) >= BUDGET_THRESHOLD]
    full.sort(key=lambda b: -(b.utilization or 0.0))
    advice = []
    for hit in full:
        where = f" for {hit.scope}" if hit.scope else ""
        until = _until(hit, now)
        head = f"budget {hit.policy}{where} is at {hit.utilization or 0.0:.0%} of its {hit.window} limit"
        if hit.action is Action.DENY:
            tail = f"calls are denied {until}; raise its limit or shed low-priority work"
        elif hit.action is Action.DEGRADE:
            tail = f"calls are degraded to {hit.model} {until}"
        elif hit.action is Action.WARN:
            tail = f"it is over (warning only) {until}"
        elif hit.resets_at is None and hit.window is not None and hit.window not in CALENDAR_UNITS:
            tail = f"its spend ages out over the trailing {hit.window}; slow down or raise its limit before it runs out"
        else:
            resets = hit.resets_at.isoformat() if hit.resets_at is not None else "the end of its window"
            tail = f"it resets at {resets}; slow down or raise its limit before it runs out"
        labels = _labels(hit.scope)
        advice.append(
            Recommendation("budget", f"{head}: {tail}", provider=labels.get("provider"), model=labels.get("model"))
        )
    return advice


def _until(hit: PolicyHit, now: float) -> str:
    """Until when a budget over its limit stays so: a calendar window's reset; a rolling window
    never resets, so the moment enough of its spend has aged out (the hit's `retry_after_s`)."""
    if hit.resets_at is not None:
        return f"until it resets at {hit.resets_at.isoformat()}"
    if hit.window is not None and hit.window not in CALENDAR_UNITS:
        if hit.retry_after_s is None:
            return "until enough of its spend ages out"
        return (
            f"until enough of its spend ages out, at {datetime.fromtimestamp(now + hit.retry_after_s, UTC).isoformat()}"
        )
    return "until it resets at the end of its window"


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
    models: Sequence[ModelStat], trends: Mapping[ModelKey, Trend], open_breakers: Sequence[BreakerStatus]
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


def _pricing_advice(engine: PolicyEngine, totals: MetricTotals) -> list[Recommendation]:
    advice = []
    pricer = engine.pricer
    now = engine.clock.now()
    unknown = [(key, tally.unknown_model) for key, tally in totals.by_model.items() if tally.unknown_model]
    for (provider, model), count in sorted(unknown, key=lambda item: -item[1]):
        if OVERFLOW in (provider, model):
            continue  # folded by the label guard: no name to give
        # The counters are since start: skip a model that a `prices:` entry has covered since.
        price = pricer.price_usage(provider, model, input_tokens=1, output_tokens=1, at=now)
        if price.unpriced_reason != Unpriced.UNKNOWN_MODEL:
            continue
        calls = f"{count} call{'' if count == 1 else 's'}"
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
