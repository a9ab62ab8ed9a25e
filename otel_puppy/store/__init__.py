"""State stores: where windows' spend, dedupe keys and (later) reservations live."""

from __future__ import annotations

from otel_puppy.store.base import CEILING, ApplyResult, Counter, SpendRecord, Store, StoreHealth, open_store
from otel_puppy.store.memory import MemoryStore
from otel_puppy.store.sqlite import SQLiteStore

__all__ = (
    "CEILING",
    "ApplyResult",
    "Counter",
    "MemoryStore",
    "SQLiteStore",
    "SpendRecord",
    "Store",
    "StoreHealth",
    "open_store",
)
