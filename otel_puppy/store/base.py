"""The `Store` protocol: every backend does the same few things atomically, on integers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from otel_puppy.exceptions import StoreError

__all__ = ("ApplyResult", "Counter", "Increment", "SpendRecord", "Store", "open_store")


class ApplyResult(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    """The same span was applied before (an OTLP retry, or the same batch twice)."""
    NESTED = "nested"
    """Another span of the same call was applied: a wrapper over an SDK span, or the reverse."""


@dataclass(frozen=True, slots=True)
class Increment:
    key: str
    nanos: int
    tokens: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """One span's effect on the store, applied all-or-nothing with its dedupe check.

    `span_key` identifies the span (trace id and span id); `parent_key` its parent in the same
    trace. When two instrumentations describe one call, one span is the other's parent: the
    store counts whichever arrives first and reports the other as `NESTED`.
    """

    span_key: str
    parent_key: str | None
    increments: tuple[Increment, ...]
    dedupe_until: float


@dataclass(frozen=True, slots=True)
class Counter:
    nanos: int = 0
    tokens: int = 0
    requests: int = 0


class Store(Protocol):
    def apply(self, records: Sequence[SpendRecord], now: float) -> list[ApplyResult]:
        """Dedupe and apply each record atomically; the results are in the records' order."""
        ...

    def read(self, keys: Sequence[str]) -> list[Counter]:
        """Current counters for these keys (zero for unknown keys)."""
        ...

    def expire(self, now: float) -> int:
        """Forget counters and dedupe keys past their expiry; returns how many were dropped."""
        ...

    def close(self) -> None: ...


def open_store(url: str) -> Store:
    """A store for a settings URL: `memory://` (SQLite and Redis arrive with service mode)."""
    from otel_puppy.store.memory import MemoryStore

    if url.startswith("memory://"):
        return MemoryStore()
    raise StoreError(f"store {url!r} is not available in this version; use memory://")
