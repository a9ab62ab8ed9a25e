"""State stores: where windows' spend, dedupe keys and (later) reservations live."""

from __future__ import annotations

from otel_puppy.store.base import ApplyResult, Counter, SpendRecord, Store, open_store
from otel_puppy.store.memory import MemoryStore
from otel_puppy.store.sqlite import SQLiteStore

__all__ = ("ApplyResult", "Counter", "MemoryStore", "SQLiteStore", "SpendRecord", "Store", "open_store")
