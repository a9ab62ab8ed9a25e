"""Hourly history: cost, errors and latency per calendar hour, and where each is heading.

The engine keeps no hourly history of its own, so it owns one `HealthHistory` for health to read
(`engine.history`). Cost per hour is read from the store's calendar `hour` counters of the total
scope while the store still keeps them (the hour in progress and the two before it) and remembered
afterwards. Errors and latency come from `Metrics.totals()` (calls by outcome, call durations per
model), sampled at most once every `SAMPLE_EVERY_S` whenever health is assessed or Prometheus
scrapes the engine; the growth between two samples is spread evenly over the time between them,
hour by hour. Nothing runs in the background, and the history begins with the first assessment:
until then there is no trend, and scrapes sample nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

from otel_puppy.exceptions import StoreError
from otel_puppy.money import nanos_to_float

if TYPE_CHECKING:
    from otel_puppy.metrics import Metrics, MetricTotals, ModelKey
    from otel_puppy.store.base import Store
    from otel_puppy.windows import CalendarWindow

__all__ = (
    "HISTORY_HOURS",
    "SAMPLE_EVERY_S",
    "TREND_DOWN_PCT",
    "TREND_UP_PCT",
    "HealthHistory",
    "HourPoint",
    "Trend",
)

TREND_UP_PCT: Final = 20.0
"""A trend is `up` when the last complete hour is more than this percentage above the earlier hours' mean."""
TREND_DOWN_PCT: Final = -20.0
"""A trend is `down` when the last complete hour is more than 20% below the earlier hours' mean."""
HISTORY_HOURS: Final = 24
"""Complete hours kept (and shown) besides the hour in progress."""
SAMPLE_EVERY_S: Final = 60.0
"""The engine's counters are sampled at most this often."""

_ZERO_BASELINE_PCT: Final = 100.0
_MAX_MODELS: Final = 200
"""Models whose hourly latency is kept (the metrics' label guard bounds them too)."""

Direction = Literal["up", "down", "stable"]


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
    direction: Direction
    change_pct: float
    hourly: tuple[HourPoint, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "direction": self.direction,
            "change_pct": self.change_pct,
            "hourly": [point.to_dict() for point in self.hourly],
        }


@dataclass(slots=True)
class _Hour:
    """What is known of one calendar hour."""

    cost_nanos: int | None = None
    """Spend from the store's `hour` counter; `None` when it was never read while the store kept it."""
    requests: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0
    models: dict[ModelKey, list[float]] = field(default_factory=dict)
    """Per model: [duration sum, count] in this hour."""


@dataclass(frozen=True, slots=True)
class _Sample:
    """The counters since start at `at`: calls, failed calls, and per model (duration sum, calls)."""

    at: float
    requests: int
    errors: int
    latency: dict[ModelKey, tuple[float, int]]

    @classmethod
    def of(cls, at: float, totals: MetricTotals) -> _Sample:
        latency = {key: (tally.duration_s, tally.requests) for key, tally in totals.by_model.items()}
        return cls(at, totals.calls.requests, totals.calls.errors, latency)


class HealthHistory:
    """A bounded hourly history of one engine's cost, errors and latency (see the module docstring).

    `store` holds the spend counters of `scope` (the engine's total), `metrics` the call counters;
    `window` is the engine's calendar hour (its timezone). Holds at most `HISTORY_HOURS + 1` hours
    (and per hour at most 200 models' latency sums) and the last counter sample. Thread-safe.
    """

    def __init__(self, store: Store, metrics: Metrics, window: CalendarWindow, scope: str) -> None:
        self._store = store
        self._metrics = metrics
        self._window = window
        self._scope = scope
        self._lock = threading.Lock()
        self._hours: dict[float, _Hour] = {}
        self._first_hour: float | None = None
        self._last: _Sample | None = None

    def due(self, now: float) -> bool:
        """Whether the counters would be sampled at `now` (`SAMPLE_EVERY_S` since the last sample)."""
        last = self._last
        return last is None or now - last.at >= SAMPLE_EVERY_S or now < last.at

    def sample(self, now: float) -> None:
        """At a scrape: `record` when due, once the history has begun (the first assessment)."""
        if self._last is not None and self.due(now):
            self.record(now)

    def record(self, now: float, totals: MetricTotals | None = None) -> None:
        """Read the store's hour counters still kept, and sample the counters when due.

        `totals` is what the caller already read from the metrics (read here when needed and not
        given). A failing store leaves the cost history as it was.
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
        totals_read: list[int] | None
        try:
            # `totals` reads the bucket current at the time it is given: one read per hour.
            totals_read = [self._store.totals([(self._scope, window)], start)[0].nanos for start in starts]
        except StoreError:
            totals_read = None
        with self._lock:
            if totals_read is not None:
                for start, nanos in zip(starts, totals_read, strict=True):
                    self._hour(start).cost_nanos = nanos
            if self.due(now):
                self._sample(_Sample.of(now, totals if totals is not None else self._metrics.totals()))
            self._prune(current)

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock, and never release it here."""
        self._lock = threading.Lock()

    def _hour(self, start: float) -> _Hour:
        hour = self._hours.get(start)
        if hour is None:
            hour = self._hours[start] = _Hour()
        return hour

    def _sample(self, sample: _Sample) -> None:
        now = sample.at
        last, self._last = self._last, sample
        if last is None or now <= last.at:
            return  # the first sample (or time went back) is only the base of the next one
        requests = max(sample.requests - last.requests, 0)
        errors = max(sample.errors - last.errors, 0)
        latency: dict[ModelKey, tuple[float, int]] = {}
        for key, (total, count) in sample.latency.items():
            before_total, before_count = last.latency.get(key, (0.0, 0))
            if count > before_count:
                latency[key] = (max(total - before_total, 0.0), count - before_count)
        if not requests and not latency:
            return
        # Spread the growth evenly over the time between the samples, hour by hour, newest first.
        span = now - last.at
        oldest = self._window.bounds(now)[0] - HISTORY_HOURS * 3600
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

    def _prune(self, current: float) -> None:
        oldest = current - HISTORY_HOURS * 3600
        for start in [s for s in self._hours if s < oldest]:
            del self._hours[start]

    def trends(self, now: float) -> tuple[tuple[Trend, ...], dict[ModelKey, Trend]]:
        """The cost, errors and latency trends, and each model's latency trend."""
        current = self._window.bounds(now)[0]
        oldest = current - HISTORY_HOURS * 3600
        with self._lock:
            hours = sorted(((s, h) for s, h in self._hours.items() if oldest <= s <= current), key=lambda item: item[0])
            cost = [(s, nanos_to_float(h.cost_nanos)) for s, h in hours if h.cost_nanos is not None]
            cost_nanos = [(s, float(h.cost_nanos)) for s, h in hours if h.cost_nanos is not None]
            errors = [(s, h.errors / h.requests) for s, h in hours if h.requests > 0]
            latency = [(s, h.latency_sum / h.latency_count) for s, h in hours if h.latency_count > 0]
            per_model: dict[ModelKey, list[tuple[float, float]]] = {}
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


def _direction(values: Sequence[tuple[float, float]], current: float) -> tuple[Direction, float]:
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
