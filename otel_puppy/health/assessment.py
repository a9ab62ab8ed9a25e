"""`assess(engine)`: the system's health now, from the engine's snapshot, metrics and history."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from otel_puppy.exceptions import StoreError
from otel_puppy.health.advice import Recommendation, recommend
from otel_puppy.health.history import Trend
from otel_puppy.health.indicators import (
    Indicator,
    Status,
    counter_indicators,
    state_indicators,
    store_failed,
    store_read,
    worst,
)

if TYPE_CHECKING:
    from otel_puppy.engine import PolicyEngine, Snapshot

__all__ = ("Health", "assess")


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


def assess(engine: PolicyEngine) -> Health:
    """Judge the engine's state now, and feed its hourly history (`engine.history`).

    Never raises for a failing store: that is the `store` indicator, `unhealthy`, and what the
    store would have told (breakers, anomalies, budgets, recent calls) is left out.
    """
    now = engine.clock.now()
    started = time.perf_counter()
    snapshot: Snapshot | None = None
    try:
        snapshot = engine.snapshot()
    except StoreError as exc:
        indicators = [store_failed(exc)]
    else:
        indicators = [store_read(time.perf_counter() - started), *state_indicators(snapshot)]
    totals = engine.metrics.totals()
    indicators += counter_indicators(totals)

    history = engine.history
    history.record(now, totals)
    trends, model_latency = history.trends(now)
    models = snapshot.models if snapshot is not None else tuple(engine.stats.all())
    recommendations = recommend(engine, snapshot, models, totals, model_latency)
    return Health(
        status=worst(indicators),
        indicators=tuple(indicators),
        recommendations=tuple(recommendations),
        trends=trends,
        at=datetime.fromtimestamp(now, UTC),
    )
