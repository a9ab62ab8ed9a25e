"""`RedundancyTracker`: what a response cache would save, from prompts already on the spans.

Where instrumentation captures prompts, `LLMCall.prompt_hash` is a digest of the normalized
prompt (the text is never kept). A successful call whose (provider, model, prompt) was already
answered within `window_s` could have come from a cache: it is counted as redundant, with its
cost. `otel_puppy_redundant_requests_total` and `otel_puppy_redundant_cost_usd_total` show the
saving per model; `summary()` gives the same as a table.

The window slides: every repeat refreshes its entry, like a cache whose entries live
`window_s` past their last use. Entries are kept in LRU order and bounded by `max_entries`, so
a flood of unique prompts costs memory once, not forever.

>>> tracker = RedundancyTracker(SystemClock(), window_s=3600)  # doctest: +SKIP
>>> tracker.observe([(call, price.nanos) for call, price in applied])  # doctest: +SKIP
>>> tracker.summary()[0].redundant_cost_usd  # doctest: +SKIP
Decimal('1.234000000')
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from prometheus_client.core import CounterMetricFamily, Metric

from otel_puppy.calls import LLMCall
from otel_puppy.clock import Clock
from otel_puppy.metrics import OVERFLOW
from otel_puppy.money import nanos_to_float, nanos_to_usd

__all__ = ("RedundancyTracker", "RedundantModel")

_LABELS: Final = ("provider", "model")


@dataclass(frozen=True, slots=True)
class RedundantModel:
    """One model's repeats: how many calls a cache could have answered, and what they cost."""

    provider: str
    model: str
    redundant_requests: int
    redundant_cost_usd: Decimal
    """The priced part only: repeats of unpriced calls are counted but add nothing here."""
    requests_with_prompt: int
    """Successful calls whose prompt was captured: the base the repeats are a share of."""

    @property
    def redundant_ratio(self) -> float:
        return self.redundant_requests / self.requests_with_prompt if self.requests_with_prompt else 0.0


class _Totals:
    __slots__ = ("nanos", "prompts", "redundant")

    def __init__(self) -> None:
        self.prompts = 0
        self.redundant = 0
        self.nanos = 0


class RedundancyTracker:
    """Counts repeated prompts per (provider, model) and the spend a response cache would save.

    Thread-safe: the engine's worker calls `observe`, a scrape calls `collect`.
    """

    def __init__(
        self, clock: Clock, window_s: float = 3600.0, max_entries: int = 100_000, *, max_models: int = 1000
    ) -> None:
        if window_s <= 0 or max_entries <= 0 or max_models <= 0:
            raise ValueError("window_s, max_entries and max_models must be positive")
        self.clock = clock
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_models = max_models
        """Past this many (provider, model) pairs, new ones are counted under `other`."""
        self._lock = threading.Lock()
        self._last_seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._totals: dict[tuple[str, str], _Totals] = {}

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def observe(self, observed: Sequence[tuple[LLMCall, int | None]]) -> None:
        """Account applied calls, each with its cost in nano-USD (`None` when unpriced).

        Only successful calls with a captured prompt count: a failed call has no answer to cache.
        """
        now = self.clock.now()
        horizon = now - self.window_s
        with self._lock:
            last_seen = self._last_seen
            self._expire(horizon)
            for call, nanos in observed:
                digest = call.prompt_hash
                if digest is None or call.error_class is not None:
                    continue
                model = call.model
                totals = self._totals_for(call.provider, model)
                totals.prompts += 1
                key = (call.provider, model, digest)
                seen = last_seen.get(key)
                if seen is not None:
                    if seen > horizon:
                        totals.redundant += 1
                        if nanos is not None:
                            totals.nanos += nanos
                    last_seen.move_to_end(key)
                last_seen[key] = now
                if len(last_seen) > self.max_entries:
                    last_seen.popitem(last=False)

    def _expire(self, horizon: float) -> None:
        # Oldest first (every touch moves an entry to the end), so expiry stops at the first live one.
        last_seen = self._last_seen
        while last_seen:
            key, seen = next(iter(last_seen.items()))
            if seen > horizon:
                return
            del last_seen[key]

    def _totals_for(self, provider: str, model: str) -> _Totals:
        key = (provider, model)
        totals = self._totals.get(key)
        if totals is None:
            if len(self._totals) >= self.max_models:
                key = (OVERFLOW, OVERFLOW)
                totals = self._totals.get(key)
            if totals is None:
                totals = self._totals[key] = _Totals()
        return totals

    def __len__(self) -> int:
        """Prompts remembered now (after expiring the old ones)."""
        with self._lock:
            self._expire(self.clock.now() - self.window_s)
            return len(self._last_seen)

    def summary(self) -> list[RedundantModel]:
        """Every model with captured prompts, the most redundant spend first."""
        with self._lock:
            rows = [
                RedundantModel(provider, model, t.redundant, nanos_to_usd(t.nanos), t.prompts)
                for (provider, model), t in self._totals.items()
            ]
        rows.sort(key=lambda r: (-r.redundant_cost_usd, -r.redundant_requests, r.provider, r.model))
        return rows

    def collect(self) -> Iterable[Metric]:
        """`otel_puppy_redundant_requests_total` and `otel_puppy_redundant_cost_usd_total`, by provider and model."""
        return self._families()

    def _families(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = [(key, t.redundant, t.nanos) for key, t in self._totals.items()]
        requests = CounterMetricFamily(
            "otel_puppy_redundant_requests",
            "Successful calls repeating a prompt the same model answered within the window: a cache could serve them.",
            labels=_LABELS,
        )
        cost = CounterMetricFamily(
            "otel_puppy_redundant_cost_usd",
            "Spend on redundant calls (priced ones), in USD: what a response cache would save.",
            labels=_LABELS,
        )
        for key, redundant, nanos in snapshot:
            requests.add_metric(key, float(redundant))
            cost.add_metric(key, nanos_to_float(nanos))
        yield requests
        yield cost
