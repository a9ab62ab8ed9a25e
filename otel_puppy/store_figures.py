"""What the store says of all spend together: total spend per built-in window, and its health.

Shown twice: in `Snapshot.windows` and on /metrics (`otel_puppy_spend_usd{window}`,
`otel_puppy_store_saturated_total`, `otel_puppy_store_unreadable_values_total`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from zoneinfo import ZoneInfo

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from otel_puppy.admission import TOTAL_SCOPE
from otel_puppy.exceptions import StoreError
from otel_puppy.money import nanos_to_float, nanos_to_usd
from otel_puppy.policies.runtime import StoreFailed
from otel_puppy.snapshot import WindowSpend
from otel_puppy.store.base import Counter, Store
from otel_puppy.windows import CalendarWindow, RollingWindow, Window

__all__ = ("StoreFigures", "total_windows")


def total_windows(zone: ZoneInfo) -> tuple[Window, ...]:
    """The built-in windows every call's spend is added to, whatever the budgets."""
    return (
        CalendarWindow("hour", zone),
        CalendarWindow("day", zone),
        RollingWindow(3600, "1h"),
        RollingWindow(86400, "24h"),
    )


class StoreFigures:
    """Total spend and store health, read from the store when asked; `failed` is told of a store
    that does not answer a scrape (the scrape goes on without the totals)."""

    def __init__(self, store: Store, windows: tuple[Window, ...], failed: Callable[[StoreFailed], None]) -> None:
        self.store = store
        self.windows = windows
        self._failed = failed

    def totals(self, now: float) -> list[Counter]:
        """The total counter of each built-in window.

        Raises:
            StoreError: the store does not answer.
        """
        return self.store.totals([(TOTAL_SCOPE, w) for w in self.windows], now)

    def spend(self, now: float) -> tuple[WindowSpend, ...]:
        """Spend per built-in window, for the snapshot.

        Raises:
            StoreError: the store does not answer.
        """
        return tuple(
            WindowSpend(w.name, nanos_to_usd(c.nanos), c.tokens, c.requests, w.resets_at(now))
            for w, c in zip(self.windows, self.totals(now), strict=True)
        )

    def collect(self, now: float) -> Iterator[Metric]:
        """The families, at scrape time; a store that does not answer leaves the spend gauge empty."""
        total = GaugeMetricFamily("otel_puppy_spend_usd", "Total spend in each built-in window.", labels=("window",))
        counters: list[Counter] = []
        try:
            counters = self.totals(now)
        except StoreError as exc:
            self._failed(StoreFailed("scrape", exc))
        for window, counter in zip(self.windows, counters, strict=False):
            total.add_metric((window.name,), nanos_to_float(counter.nanos))
        yield total
        health = self.store.health()
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
