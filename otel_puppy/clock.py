"""Time, injected: the engine asks a `Clock`, so tests move time instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ("Clock", "ManualClock", "SystemClock")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """Time that moves only when told to: for tests, and for replaying recorded spans."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.value = start

    def now(self) -> float:
        return self.value

    def advance(self, seconds: float) -> float:
        self.value += seconds
        return self.value

    def set(self, value: float) -> None:
        self.value = value
