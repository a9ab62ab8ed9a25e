"""Reservation quality: what became of each reservation, and how honest its estimate was.

Every reservation ends one way: `settled` by its call's span, `expired` unused after the
reservation TTL, or `released` (the decision was denied after all, or replaced). The store reports
each once, to whichever process takes it (`Store.take_outcomes`), with the estimate it held and,
settled, what the call cost; a scrape takes them and counts:

- `otel_puppy_reservations_total{source, outcome}`: `source` is where the estimate came from
  (`request`, `learned`, or `none`: a call budget's reservation holds one call and no money);
- `otel_puppy_reservation_settled_ratio{source}`: a histogram of settled cost over reserved estimate,
  for settled reservations that held an estimate. Below 1 the estimate was generous (budget room
  held in vain until the span came); above 1 the call overshot it (what concurrent callers can
  overshoot a budget by). A team sees whether its estimates, or the learned ones, are honest.

Every label value is bounded: a source or outcome the store should not hold (another tool's
writes) is counted as `unknown`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from otel_puppy.store.base import EXPIRED, RELEASED, SETTLED, Store

__all__ = ("OUTCOMES", "RATIO_BUCKETS", "SOURCES", "ReservationOutcomes")

SOURCES: Final = ("request", "learned", "none")
OUTCOMES: Final = (SETTLED, EXPIRED, RELEASED)
RATIO_BUCKETS: Final = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 10.0)
"""Settled cost over estimate; 1.0 is an exact estimate."""
_UNKNOWN: Final = "unknown"
_LE: Final = (*(format(bound, "g") for bound in RATIO_BUCKETS), "+Inf")


class ReservationOutcomes:
    """Counts the outcomes a store reports (see the module); `collect` takes them, then yields the metrics."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._counts = {(source, outcome): 0 for source in SOURCES for outcome in OUTCOMES}
        """Every pair from the start: the series exist (at 0) on the first scrape."""
        self._ratios: dict[str, tuple[list[int], list[float]]] = {
            source: ([0] * (len(RATIO_BUCKETS) + 1), [0.0]) for source in SOURCES[:2]
        }
        """Per source with an estimate: the count in each bucket, and the sum of the ratios."""

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def take(self) -> None:
        """Count the outcomes the store holds now (and make it forget them).

        Raises:
            StoreError: the store did not answer (the outcomes stay there for the next take).
        """
        outcomes = self._store.take_outcomes()
        if not outcomes:
            return
        with self._lock:
            counts, ratios = self._counts, self._ratios
            for source, outcome, estimate, cost in outcomes:
                if source not in SOURCES:
                    source = _UNKNOWN  # noqa: PLW2901 - bounded where it enters
                if outcome not in OUTCOMES:
                    outcome = _UNKNOWN  # noqa: PLW2901
                counts[source, outcome] = counts.get((source, outcome), 0) + 1
                if outcome == SETTLED and estimate > 0 and source in ratios:
                    ratio = cost / estimate
                    buckets, total = ratios[source]
                    buckets[bisect_left(RATIO_BUCKETS, ratio)] += 1
                    total[0] += ratio

    def counts(self) -> dict[tuple[str, str], int]:
        """Reservations counted so far by (source, outcome)."""
        with self._lock:
            return dict(self._counts)

    def collect(self) -> Iterator[Metric]:
        """`otel_puppy_reservations_total` and `otel_puppy_reservation_settled_ratio`, after a `take`
        (a store that does not answer raises `StoreError` before anything is yielded)."""
        self.take()
        with self._lock:
            counts = dict(self._counts)
            ratios = {source: (list(buckets), total[0]) for source, (buckets, total) in self._ratios.items()}
        family = CounterMetricFamily(
            "otel_puppy_reservations",
            "Reservations by where their estimate came from and what became of them (settled by the call's "
            "span, expired unused, or released).",
            labels=("source", "outcome"),
        )
        for key, count in counts.items():
            family.add_metric(key, float(count))
        yield family
        histogram = HistogramMetricFamily(
            "otel_puppy_reservation_settled_ratio",
            "Settled cost over the estimate reserved, per settled reservation that held an estimate, by "
            "where the estimate came from: above 1 the call cost more than was held.",
            labels=("source",),
        )
        for source, (buckets, total) in ratios.items():
            running = 0
            for le, count in zip(_LE, buckets, strict=True):
                running += count
                histogram.samples.append(
                    Sample("otel_puppy_reservation_settled_ratio_bucket", {"source": source, "le": le}, running)
                )
            histogram.samples.append(Sample("otel_puppy_reservation_settled_ratio_count", {"source": source}, running))
            histogram.samples.append(Sample("otel_puppy_reservation_settled_ratio_sum", {"source": source}, total))
        yield histogram
