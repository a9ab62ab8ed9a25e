"""In-memory store: one lock, dicts of integers. The library default."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from otel_puppy.store.base import ApplyResult, Counter, SpendRecord

__all__ = ("MemoryStore",)


class MemoryStore:
    """Holds everything in this process; nothing survives a restart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, list[int]] = {}
        self._expiry: dict[str, float] = {}
        self._seen: dict[str, float] = {}
        self._covered: dict[str, float] = {}

    def apply(self, records: Sequence[SpendRecord], now: float) -> list[ApplyResult]:
        with self._lock:
            return [self._apply_one(record) for record in records]

    def _apply_one(self, record: SpendRecord) -> ApplyResult:
        seen = self._seen
        if record.span_key in seen:
            return ApplyResult.DUPLICATE
        seen[record.span_key] = record.dedupe_until
        if record.span_key in self._covered or (record.parent_key is not None and record.parent_key in seen):
            return ApplyResult.NESTED
        if record.parent_key is not None:
            self._covered[record.parent_key] = record.dedupe_until
        counters, expiry = self._counters, self._expiry
        for inc in record.increments:
            counter = counters.get(inc.key)
            if counter is None:
                counters[inc.key] = [inc.nanos, inc.tokens, 1]
            else:
                counter[0] += inc.nanos
                counter[1] += inc.tokens
                counter[2] += 1
            if expiry.get(inc.key, 0.0) < inc.expires_at:
                expiry[inc.key] = inc.expires_at
        return ApplyResult.APPLIED

    def read(self, keys: Sequence[str]) -> list[Counter]:
        with self._lock:
            return [Counter(*c) if (c := self._counters.get(key)) else Counter() for key in keys]

    def expire(self, now: float) -> int:
        with self._lock:
            dropped = 0
            for table in (self._seen, self._covered, self._expiry):
                stale = [key for key, until in table.items() if until <= now]
                for key in stale:
                    del table[key]
                    if table is self._expiry:
                        del self._counters[key]
                dropped += len(stale)
            return dropped

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._counters) + len(self._seen)
