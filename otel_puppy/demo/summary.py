"""What the demo did: the engine's own counts (`Metrics.totals()` and its counters) and the fleet's."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from otel_puppy.decision import Action
from otel_puppy.demo.fleet import Counts
from otel_puppy.engine import PolicyEngine
from otel_puppy.metrics import CallTally
from otel_puppy.money import nanos_to_usd

__all__ = ("Board", "DemoSummary", "Row", "Totals", "summarize")


@dataclass(slots=True)
class Row:
    """One model's or one agent's calls and spend."""

    calls: int = 0
    errors: int = 0
    unpriced: int = 0
    nanos: int = 0
    priced: bool = False
    """Some call was priced. A row of only unpriced (or failed) calls has no spend, not $0."""

    @classmethod
    def of(cls, tally: CallTally) -> Row:
        priced = tally.spend_nanos is not None
        return cls(tally.requests, tally.errors, tally.unpriced, tally.spend_nanos or 0, priced)


@dataclass(slots=True)
class Totals:
    """What the engine's metrics say: calls from `Metrics.totals()`, the rest read the way Prometheus would."""

    calls: int = 0
    errors: int = 0
    unpriced: int = 0
    nanos: int = 0
    by_model: dict[tuple[str, str], Row] = field(default_factory=dict)
    by_agent: dict[str, Row] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    """`otel_puppy_decisions_total` by action."""
    alerts: dict[str, int] = field(default_factory=dict)
    """`otel_puppy_alerts_total` by kind."""
    breaker_opened: int = 0
    """`otel_puppy_breaker_transitions_total{to="open"}`."""
    anomalies: int = 0
    """`otel_puppy_anomalies_total`."""

    @classmethod
    def read(cls, engine: PolicyEngine) -> Totals:
        counted = engine.metrics.totals()
        totals = cls(
            calls=counted.calls.requests,
            errors=counted.calls.errors,
            unpriced=counted.calls.unpriced,
            nanos=counted.calls.spend_nanos or 0,
            by_model={key: Row.of(tally) for key, tally in counted.by_model.items()},
            by_agent={key: Row.of(tally) for key, tally in counted.by_agent.items()},
        )
        for family in engine.registry.collect():
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name == "otel_puppy_decisions_total":
                    action = labels["action"]
                    totals.decisions[action] = totals.decisions.get(action, 0) + int(value)
                elif name == "otel_puppy_alerts_total":
                    kind = labels["kind"]
                    totals.alerts[kind] = totals.alerts.get(kind, 0) + int(value)
                elif name == "otel_puppy_breaker_transitions_total" and labels["to"] == "open":
                    totals.breaker_opened += int(value)
                elif name == "otel_puppy_anomalies_total":
                    totals.anomalies += int(value)
        return totals


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What the demo did, as the engine's metrics counted it.

    `calls` is counted by the simulated providers themselves (one per model request, failed
    ones included), independently of otel_puppy; spend and unpriced calls come from the metrics.
    """

    runs: int
    failed_runs: int
    calls: int
    spend_usd: Decimal
    spend_by_model: dict[str, Decimal]
    """Keyed `provider:model`, like pydantic-ai model names."""
    spend_by_agent: dict[str, Decimal]
    unpriced_calls: int
    metrics_url: str
    denied_runs: int
    """Runs a decision denied (`PolicyDenied`): stopped before a model call, not failed."""
    degraded_decisions: int
    """Decisions that sent a request to a cheaper model."""
    alerts: dict[str, int]
    """Alert events by kind: `budget`, `breaker`, `anomaly`."""
    breaker_opened: bool
    anomalies_fired: int


@dataclass(slots=True)
class Board:
    """What the display and the summary read besides the engine: the fleet's own counts."""

    counts: Counts = field(default_factory=Counts)
    """The in-process fleet's counts, or the sum of the fleet processes' latest reports."""
    started_at: float = 0.0
    """When the fleet started, on the engine's clock (epoch seconds), to date its alerts."""


def summarize(board: Board, totals: Totals, metrics_url: str) -> DemoSummary:
    """The summary `run` returns, from the board and the engine's totals."""
    return DemoSummary(
        runs=board.counts.runs,
        failed_runs=board.counts.failed_runs,
        calls=board.counts.calls,
        spend_usd=nanos_to_usd(totals.nanos),
        spend_by_model={
            f"{provider}:{model}": nanos_to_usd(row.nanos)
            for (provider, model), row in sorted(totals.by_model.items())
            if row.priced
        },
        spend_by_agent={agent: nanos_to_usd(row.nanos) for agent, row in sorted(totals.by_agent.items()) if row.priced},
        unpriced_calls=totals.unpriced,
        metrics_url=metrics_url,
        denied_runs=board.counts.denied_runs,
        degraded_decisions=totals.decisions.get(Action.DEGRADE.value, 0),
        alerts=dict(sorted(totals.alerts.items())),
        breaker_opened=totals.breaker_opened > 0,
        anomalies_fired=totals.anomalies,
    )
