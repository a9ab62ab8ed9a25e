"""Learned estimates: what a call usually costs, reserved when a decision brings no estimate.

Reserve-then-settle protects a budget only when the caller says what a call will cost, and agents
rarely know. So every applied, priced call that did not fail is kept as a sample (its cost and its
output tokens) under two series: its agent, provider and model (the model asked for, as decisions
name it), and its provider and model alone. A decision without an estimate then reserves the
learned cost of its agent's series, or of the provider and model's when the agent's has too few
calls (`learned_min_calls`, 20 by default); with too few in both, nothing, as before. A decision
that gives input tokens only is priced with the learned output tokens.

The learned figure is exact, so tests can state it to the nano-dollar: the nearest-rank quantile
(`learned_quantile`, 0.95) of the newest `learned_samples` (100) calls of the series that are at most
`learned_max_age_s` (7 days) old: with `n` such calls sorted by cost, the `ceil(q * n)`-th (tokens
likewise, sorted on their own). It decays by count and by age: when a model got cheaper, the
estimate follows the new price once at most `n - ceil(q * n)` of the kept calls are at the old one
(with 100 kept and p95: after 95 calls at the new price), and at the latest after the age limit.

The samples live in the store (`Store.add_samples`): they survive restarts and replicas share them.
Each process caches the figures it computed and reads them again every `learned_refresh_s`; its own
calls count at once (a memory store), or within a second (a store with I/O, whose samples are
written in batches a second apart, so ingest pays one write per second, not one per batch). Waiting,
a series keeps only its newest `learned_samples`, all the store would keep of them: a second of
ingest writes at most that many rows per series, however many calls it saw.
Every figure is bounded: a cost by `bounds.MAX_CALL_COST_USD`, tokens by `bounds.MAX_CALL_TOKENS`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache, partial
from typing import Any, Final, NamedTuple

from otel_puppy._keys import escape
from otel_puppy.bounds import MAX_CALL_COST_USD, MAX_CALL_TOKENS
from otel_puppy.calls import LLMCall
from otel_puppy.money import usd_to_nanos
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import Sample, Store, newest_samples

__all__ = ("MAX_ESTIMATE_NANOS", "Learned", "LearnedEstimates", "nearest_rank", "series_key")

MAX_ESTIMATE_NANOS: Final = usd_to_nanos(MAX_CALL_COST_USD)
_FLUSH_EVERY_S: Final = 1.0
"""A store with I/O gets this process's samples in batches this far apart."""
_COMPACT_AT: Final = 4096
"""Waiting samples past this many are cut to each series' newest `learned_samples` (what writing them
would leave); written at once if still past half of it (many series)."""
_MAX_PENDING: Final = 10_000
"""Samples kept while the store does not answer; the oldest are dropped past this."""
_CACHE_LIMIT: Final = 20_000
_sample: Final = partial(tuple.__new__, Sample)
"""`Sample` from a tuple of its fields, without the named tuple's Python-level `__new__` (two or three per call)."""
"""Figures cached per process (one per agent, provider and model asked about); then forgotten."""


class Learned(NamedTuple):
    """What a call of a series usually costs: the quantile of its cost and of its output tokens."""

    nanos: int
    tokens: int
    calls: int
    """The calls it was learned from."""


def series_key(agent: str | None, provider: str, model: str) -> str:
    """The store key of a series: injective (`|` escaped); no agent is the provider and model's."""
    return "|".join(escape(part, "|") for part in (agent or "", provider, model))


def _keys(agent: str | None, provider: str, model: str) -> tuple[str, ...]:
    """The series a call adds to, and a decision reads in this order: its agent's (with one), then its
    provider and model's."""
    fallback = _fallback_key(provider, model)
    return (series_key(agent, provider, model), fallback) if agent else (fallback,)


@lru_cache(maxsize=1024)
def _fallback_key(provider: str, model: str) -> str:
    """`series_key(None, provider, model)`, one string shared by the cached series of every agent
    calling that model (ten thousand agents kept ten thousand copies of it)."""
    return series_key(None, provider, model)


def nearest_rank(values: Sequence[int], quantile: Fraction) -> int:
    """The nearest-rank quantile: sorted ascending, the `ceil(quantile * n)`-th value (at least the first).

    >>> nearest_rank([5, 1, 4, 2, 3], Fraction(95, 100)), nearest_rank(list(range(1, 21)), Fraction(95, 100))
    (5, 19)
    """
    rank = max(1, math.ceil(quantile * len(values)))
    return sorted(values)[rank - 1]


class LearnedEstimates:
    """The learned estimates of one engine, over its store (see the module)."""

    def __init__(self, store: Store, settings: PuppySettings) -> None:
        self._store = store
        self.enabled = settings.learned_estimates
        self._quantile = Fraction(str(settings.learned_quantile))
        self._min_calls = settings.learned_min_calls
        self._keep = settings.learned_samples
        self._max_age_s = settings.learned_max_age_s
        self._refresh_s = settings.learned_refresh_s
        self._batched = store.does_io
        self._lock = threading.Lock()
        self._pending: list[Sample] = []
        self._flushed_at = -math.inf
        self._cache: dict[tuple[str | None, str, str], list[Any]] = {}
        """Per (agent, provider, model) asked about: [its figure, until when it holds, when it was
        computed]; `decide()` reads it with one lookup."""
        self._keys: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        """The series keys a call adds to (`observe`), computed once: per provider and model, their
        series' and each agent's (a dict by agent per model rather than a tuple of three names and
        one of two keys per agent: ten thousand agents kept 2 MB of them)."""
        self._kept = 0
        """Agents' series keys in `_keys`: all are forgotten past `_CACHE_LIMIT`."""
        self._asked: dict[tuple[str, str], set[tuple[str | None, str, str]]] = {}
        """The cached keys per provider and model: new calls of it shorten their figures' hold (see
        `observe`)."""

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def observe(self, calls: Sequence[tuple[LLMCall, int | None]], now: float) -> None:
        """Keep each applied call (with its cost in nano-USD, `None` when unpriced) that was priced and
        did not fail, under its agent's series and its provider and model's.

        Raises:
            StoreError: the store did not take the samples (they are kept for the next try).
        """
        if not self.enabled:
            return
        samples: list[Sample] = []
        append = samples.append
        batch: dict[tuple[str | None, str, str], tuple[str, ...]] = {}
        """The series of each (agent, provider, model) of the batch."""
        for call, nanos in calls:
            if nanos is None or call.error_class is not None:
                continue
            names = (call.agent or None, call.provider, call.request_model or call.model)
            series = batch.get(names)
            if series is None:
                series = batch[names] = self._series(*names)
            cost, tokens = min(nanos, MAX_ESTIMATE_NANOS), min(call.output_tokens, MAX_CALL_TOKENS)
            for key in series:
                append(_sample((key, now, cost, tokens)))
        if not samples:
            return
        changed = {(provider, model) for _, provider, model in batch}
        with self._lock:
            pending = self._pending
            pending += samples
            crowded = False
            if len(pending) > _COMPACT_AT:
                pending[:] = newest_samples(pending, self._keep)
                crowded = len(pending) > _COMPACT_AT // 2
                if len(pending) > _MAX_PENDING:  # the store did not take them: the oldest go
                    del pending[: len(pending) - _MAX_PENDING]
            # This process's new calls count at once (a memory store) or a second after the figure was
            # computed (a store with I/O: one read per second and figure, not one per decision).
            cache, batched = self._cache, self._batched
            for pair in changed:
                for asked in self._asked.get(pair, ()):
                    entry = cache.get(asked)
                    if entry is not None:
                        entry[1] = min(entry[1], entry[2] + _FLUSH_EVERY_S) if batched else -math.inf
            due = not self._batched or crowded or now - self._flushed_at >= _FLUSH_EVERY_S
        if due:
            self.flush(now)

    def _series(self, agent: str | None, provider: str, model: str) -> tuple[str, ...]:
        """`_keys(agent, provider, model)`, each key computed once (kept in `_keys`)."""
        known = self._keys
        models = known.get((provider, model))
        if models is None:
            if len(known) >= _CACHE_LIMIT:
                known.clear()
                self._kept = 0
            models = known[(provider, model)] = (_fallback_key(provider, model), {})
        fallback, agents = models
        if not agent:
            return (fallback,)
        key = agents.get(agent)
        if key is None:
            if self._kept >= _CACHE_LIMIT:
                for _, kept in known.values():
                    kept.clear()
                self._kept = 0
            key = agents[agent] = series_key(agent, provider, model)
            self._kept += 1
        return key, fallback

    def flush(self, now: float) -> None:
        """Write the waiting samples to the store.

        Raises:
            StoreError: the store did not take them (they are kept for the next try).
        """
        with self._lock:
            samples, self._pending = self._pending, []
            self._flushed_at = now
        if not samples:
            return
        try:
            self._store.add_samples(samples, keep=self._keep, ttl_s=self._max_age_s, now=now)
        except BaseException:
            with self._lock:
                self._pending[:0] = samples[-_MAX_PENDING:]
                del self._pending[_MAX_PENDING:]
            raise

    def estimate(self, agent: str | None, provider: str, model: str, now: float) -> Learned | None:
        """The learned figure for a call of `agent` to `provider`/`model`: the agent's series, else the
        provider and model's; `None` when neither has `learned_min_calls` calls (or learning is off).

        Raises:
            StoreError: the store did not answer.
        """
        if not self.enabled:
            return None
        key = (agent, provider, model)
        entry = self._cache.get(key)
        if entry is not None and now < entry[1]:
            return entry[0]  # type: ignore[no-any-return]
        learned = self._learn(key, now)
        with self._lock:
            cache = self._cache
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
                self._asked.clear()
            cache[key] = [learned, now + self._refresh_s, now]
            self._asked.setdefault((provider, model), set()).add(key)
        return learned

    def _learn(self, key: tuple[str | None, str, str], now: float) -> Learned | None:
        agent, provider, model = key
        if self._pending:
            self.flush(now)  # this process's own calls count at once
        for series in self._store.read_samples(_keys(agent, provider, model), now - self._max_age_s):
            if len(series) >= self._min_calls:
                kept = series[: self._keep]
                return Learned(
                    min(nearest_rank([nanos for nanos, _ in kept], self._quantile), MAX_ESTIMATE_NANOS),
                    min(nearest_rank([tokens for _, tokens in kept], self._quantile), MAX_CALL_TOKENS),
                    len(kept),
                )
        return None
