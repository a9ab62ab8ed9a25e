"""Rolling per-model statistics: requests, success rate, latency percentiles, tokens and cost.

The engine feeds every applied call to `ModelStats.observe`; routing (`fastest`, `most_reliable`,
`balanced`, `max_latency_s`) and `GET /v1/models` read it. A model is `(call.provider, call.model)`.

Memory is bounded. Per model: a ring of `SUB_BUCKETS` time buckets spanning `window_s`, each
holding counts, token and cost sums and its latencies, plus running totals over the live buckets,
so observing a call is O(1) and reading a model is O(`SUB_BUCKETS`) plus the percentile.
At most `max_models` models are kept; a new one evicts the model observed least recently.

Latency percentiles are nearest-rank (the smallest observed latency with at least p% of the
samples at or below it). They are exact while no bucket in the window has seen more than
`EXACT_SAMPLES` calls, which covers light traffic and tests. A busier bucket switches to a
log-scale histogram (`BINS_PER_DOUBLING` bins per doubling, 1 ms to about 70 minutes); a
percentile read from it is within `LATENCY_RELATIVE_ERROR` (2.2%) of the true nearest-rank value
for latencies in that range, and never outside the window's observed minimum and maximum.
Worst case about 24 KB per busy model (15 histograms of 352 32-bit counts plus the window's).
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

from otel_puppy.calls import LLMCall
from otel_puppy.clock import Clock
from otel_puppy.money import format_usd

__all__ = (
    "BINS_PER_DOUBLING",
    "EXACT_SAMPLES",
    "LATENCY_RELATIVE_ERROR",
    "SUB_BUCKETS",
    "ModelStat",
    "ModelStats",
)

SUB_BUCKETS: Final = 15
"""Time buckets per window: data leaves the window one bucket (`window_s / 15`) at a time."""
EXACT_SAMPLES: Final = 32
"""Latencies a bucket keeps verbatim before it falls back to its histogram."""
BINS_PER_DOUBLING: Final = 16
_MIN_LATENCY_S: Final = 0.001
_DOUBLINGS: Final = 22
_BINS: Final = BINS_PER_DOUBLING * _DOUBLINGS
LATENCY_RELATIVE_ERROR: Final = 2 ** (1 / (2 * BINS_PER_DOUBLING)) - 1
"""Largest relative error of a histogram percentile (half a bin, geometrically): about 0.0219."""
_PERCENTILES: Final = (50, 95, 99)


@dataclass(frozen=True, slots=True)
class ModelStat:
    """One model over the last window: how often it was called, how it did, what it cost."""

    provider: str
    model: str
    requests: int
    errors: int
    success_rate: float
    """Share of requests that did not fail, in [0, 1]."""
    latency_p50_s: float
    """Latency percentiles over every request, failed ones included (a timeout is slow)."""
    latency_p95_s: float
    latency_p99_s: float
    tokens_per_request: float
    """Input plus output tokens, averaged over every request."""
    cost_per_request_usd: Decimal | None
    """Spend averaged over the priced requests; `None` when no request was priced."""
    cost_per_1k_tokens_usd: Decimal | None
    """Spend of the priced requests per 1,000 of their tokens; `None` when they had no tokens."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: money as decimal strings."""
        return {
            "provider": self.provider,
            "model": self.model,
            "requests": self.requests,
            "errors": self.errors,
            "success_rate": self.success_rate,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "latency_p99_s": self.latency_p99_s,
            "tokens_per_request": self.tokens_per_request,
            "cost_per_request_usd": _usd_text(self.cost_per_request_usd),
            "cost_per_1k_tokens_usd": _usd_text(self.cost_per_1k_tokens_usd),
        }


def _usd_text(value: Decimal | None) -> str | None:
    return None if value is None else format_usd(value, trim=True)


def _bin(latency_s: float) -> int:
    if latency_s <= _MIN_LATENCY_S:
        return 0
    return min(int(math.log2(latency_s / _MIN_LATENCY_S) * BINS_PER_DOUBLING), _BINS - 1)


def _bin_value(index: int) -> float:
    """The geometric middle of a bin."""
    return float(_MIN_LATENCY_S * 2 ** ((index + 0.5) / BINS_PER_DOUBLING))


class _Bucket:
    """One slice of time for one model."""

    __slots__ = (
        "cost_nanos",
        "epoch",
        "errors",
        "high",
        "hist",
        "low",
        "priced",
        "priced_tokens",
        "requests",
        "samples",
        "tokens",
    )

    epoch: int
    requests: int
    errors: int
    tokens: int
    priced: int
    priced_tokens: int
    cost_nanos: int
    samples: list[float] | None
    """Latencies verbatim, until there are more than `EXACT_SAMPLES`; then `hist` holds them."""
    hist: array[int] | None
    low: float
    high: float

    def __init__(self) -> None:
        self.reset(-1)

    def reset(self, epoch: int) -> None:
        self.epoch = epoch
        self.requests = 0
        self.errors = 0
        self.tokens = 0
        self.priced = 0
        self.priced_tokens = 0
        self.cost_nanos = 0
        self.samples = []
        self.hist = None
        self.low = math.inf
        self.high = -math.inf


class _Series:
    """One model: its ring of buckets and running totals over the buckets still in the window."""

    __slots__ = ("cost_nanos", "errors", "hist", "overflowed", "priced", "priced_tokens", "requests", "ring", "tokens")

    def __init__(self) -> None:
        self.ring = [_Bucket() for _ in range(SUB_BUCKETS)]
        self.requests = 0
        self.errors = 0
        self.tokens = 0
        self.priced = 0
        self.priced_tokens = 0
        self.cost_nanos = 0
        self.hist = array("Q", [0]) * _BINS
        self.overflowed = 0
        """Live buckets that keep histograms instead of samples: percentiles are exact when 0."""

    def add(self, epoch: int, latency_s: float, failed: bool, tokens: int, nanos: int | None) -> None:
        bucket = self.ring[epoch % SUB_BUCKETS]
        if bucket.epoch != epoch:
            if bucket.epoch > epoch:  # the clock went back: this slot already holds later data
                return
            self._drop(bucket)
            bucket.reset(epoch)
        bucket.requests += 1
        self.requests += 1
        if failed:
            bucket.errors += 1
            self.errors += 1
        bucket.tokens += tokens
        self.tokens += tokens
        if nanos is not None:
            bucket.priced += 1
            bucket.priced_tokens += tokens
            bucket.cost_nanos += nanos
            self.priced += 1
            self.priced_tokens += tokens
            self.cost_nanos += nanos
        bucket.low = min(bucket.low, latency_s)
        bucket.high = max(bucket.high, latency_s)
        index = _bin(latency_s)
        self.hist[index] += 1
        samples = bucket.samples
        if samples is None:
            assert bucket.hist is not None
            bucket.hist[index] += 1
        elif len(samples) < EXACT_SAMPLES:
            samples.append(latency_s)
        else:  # once per bucket, so still O(1) per call overall
            hist = array("I", [0]) * _BINS
            for sample in samples:
                hist[_bin(sample)] += 1
            hist[index] += 1
            bucket.hist, bucket.samples = hist, None
            self.overflowed += 1

    def expire(self, oldest_live: int) -> None:
        for bucket in self.ring:
            if bucket.epoch != -1 and bucket.epoch < oldest_live:
                self._drop(bucket)
                bucket.reset(-1)

    def _drop(self, bucket: _Bucket) -> None:
        """Take a bucket's data out of the running totals."""
        if bucket.requests == 0:
            return
        self.requests -= bucket.requests
        self.errors -= bucket.errors
        self.tokens -= bucket.tokens
        self.priced -= bucket.priced
        self.priced_tokens -= bucket.priced_tokens
        self.cost_nanos -= bucket.cost_nanos
        if bucket.samples is not None:
            for sample in bucket.samples:
                self.hist[_bin(sample)] -= 1
        else:
            assert bucket.hist is not None
            for index, count in enumerate(bucket.hist):
                if count:
                    self.hist[index] -= count
            self.overflowed -= 1

    def raw(self, provider: str, model: str) -> _Raw:
        """What a `ModelStat` needs, copied so it can be computed outside the lock."""
        live = [bucket for bucket in self.ring if bucket.requests]
        exact = self.overflowed == 0
        return _Raw(
            provider=provider,
            model=model,
            requests=self.requests,
            errors=self.errors,
            tokens=self.tokens,
            priced=self.priced,
            priced_tokens=self.priced_tokens,
            cost_nanos=self.cost_nanos,
            samples=[s for bucket in live for s in bucket.samples or ()] if exact else None,
            hist=None if exact else array("Q", self.hist),
            low=min(bucket.low for bucket in live),
            high=max(bucket.high for bucket in live),
        )


@dataclass(frozen=True, slots=True)
class _Raw:
    provider: str
    model: str
    requests: int
    errors: int
    tokens: int
    priced: int
    priced_tokens: int
    cost_nanos: int
    samples: list[float] | None
    hist: array[int] | None
    low: float
    high: float

    def stat(self) -> ModelStat:
        if self.samples is not None:
            ordered = sorted(self.samples)
            p50, p95, p99 = (ordered[_rank(len(ordered), p) - 1] for p in _PERCENTILES)
        else:
            assert self.hist is not None
            p50, p95, p99 = (self._from_hist(p) for p in _PERCENTILES)
        return ModelStat(
            provider=self.provider,
            model=self.model,
            requests=self.requests,
            errors=self.errors,
            success_rate=(self.requests - self.errors) / self.requests,
            latency_p50_s=p50,
            latency_p95_s=p95,
            latency_p99_s=p99,
            tokens_per_request=self.tokens / self.requests,
            cost_per_request_usd=(Decimal(self.cost_nanos) / self.priced).scaleb(-9) if self.priced else None,
            cost_per_1k_tokens_usd=(Decimal(self.cost_nanos * 1000) / self.priced_tokens).scaleb(-9)
            if self.priced_tokens
            else None,
        )

    def _from_hist(self, percent: int) -> float:
        assert self.hist is not None
        rank = _rank(self.requests, percent)
        seen = 0
        for index, count in enumerate(self.hist):
            seen += count
            if seen >= rank:
                return min(max(_bin_value(index), self.low), self.high)
        return self.high


def _rank(count: int, percent: int) -> int:
    """Nearest rank, in integers so that 95% of 20 is exactly the 19th."""
    return max(-(-count * percent // 100), 1)


class ModelStats:
    """Rolling statistics per model over the last `window_s` seconds (to within one sub-bucket).

    Thread-safe: one lock, held only to update or copy counters; percentiles are computed outside it.

    >>> stats = ModelStats(SystemClock())  # doctest: +SKIP
    >>> stats.observe([(call, price.nanos)])  # doctest: +SKIP
    >>> stats.get("openai", "gpt-4.1").latency_p95_s  # doctest: +SKIP
    1.8
    """

    def __init__(self, clock: Clock, window_s: float = 900.0, max_models: int = 500) -> None:
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models!r}")
        self.window_s = window_s
        self.max_models = max_models
        self._clock = clock
        self._width = window_s / SUB_BUCKETS
        self._series: OrderedDict[tuple[str, str], _Series] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        """Models dropped to make room for new ones (`max_models` reached)."""
        self.dropped = 0
        """Calls that ended before the window (late arrivals, replays): not counted."""

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def observe(self, observed: Sequence[tuple[LLMCall, int | None]]) -> None:
        """Count applied calls, each with its cost in nano-USD (`None` when unpriced).

        A call counts at the time it ended, or now if it claims to end in the future.
        """
        if not observed:
            return
        now = self._clock.now()
        width = self._width
        oldest_live = math.floor(now / width) - SUB_BUCKETS + 1
        with self._lock:
            series_by_key = self._series
            last_key: tuple[str, str] | None = None
            series = None
            for call, nanos in observed:
                end_ns = call.end_ns
                ended = min(end_ns / 1e9, now) if end_ns > 0 else now
                epoch = math.floor(ended / width)
                if epoch < oldest_live:
                    self.dropped += 1
                    continue
                key = (call.provider, call.model)
                if series is None or key != last_key:
                    # The same model as the call before (most of a batch) is already the newest.
                    series = series_by_key.get(key)
                    if series is None:
                        if len(series_by_key) >= self.max_models:
                            series_by_key.popitem(last=False)
                            self.evicted += 1
                        series = series_by_key[key] = _Series()
                    else:
                        series_by_key.move_to_end(key)
                    last_key = key
                series.add(
                    epoch,
                    max(end_ns - call.start_ns, 0) / 1e9,  # duration_s
                    call.error_class is not None,
                    call.input_tokens + call.output_tokens,
                    nanos,
                )

    def get(self, provider: str, model: str) -> ModelStat | None:
        """The model's statistics over the window, or `None` when it had no calls in it."""
        oldest_live = self._oldest_live()
        with self._lock:
            series = self._series.get((provider, model))
            if series is None:
                return None
            series.expire(oldest_live)
            if series.requests == 0:
                del self._series[(provider, model)]
                return None
            raw = series.raw(provider, model)
        return raw.stat()

    def all(self) -> list[ModelStat]:
        """Every model with calls in the window, by provider and model."""
        oldest_live = self._oldest_live()
        raws = []
        with self._lock:
            for key, series in list(self._series.items()):
                series.expire(oldest_live)
                if series.requests == 0:
                    del self._series[key]
                else:
                    raws.append(series.raw(*key))
        raws.sort(key=lambda raw: (raw.provider, raw.model))
        return [raw.stat() for raw in raws]

    def ranking(self, by: Literal["speed", "cost", "reliability"]) -> list[ModelStat]:
        """Models best first. `speed`: lowest p95 latency; `cost`: lowest cost per 1k tokens, unpriced
        last; `reliability`: highest success rate, then more requests. Other ties: provider, model."""
        stats = self.all()
        if by == "speed":
            stats.sort(key=lambda s: s.latency_p95_s)
        elif by == "cost":
            stats.sort(key=lambda s: (s.cost_per_1k_tokens_usd is None, s.cost_per_1k_tokens_usd or 0))
        elif by == "reliability":
            stats.sort(key=lambda s: (-s.success_rate, -s.requests))
        else:
            raise ValueError(f"rank by speed, cost or reliability, not {by!r}")
        return stats

    def _oldest_live(self) -> int:
        return math.floor(self._clock.now() / self._width) - SUB_BUCKETS + 1
