"""When things go wrong, in seconds since the demo started: the outages and the spend spike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ("OUTAGE_SHARE", "Outage", "Scenario")

OUTAGE_SHARE: Final = 1.0
"""Share of calls the first outage fails: the server is down, so the breaker sees failures in a row."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """When things go wrong, in seconds since the demo started."""

    outage_at: float
    outage_for: float
    outage_every: float
    """Mean seconds between the milder outages after the first (`math.inf`: none)."""
    spike_at: float
    spike_for: float

    def spiking(self, elapsed: float) -> bool:
        return self.spike_at <= elapsed < self.spike_at + self.spike_for


@dataclass(frozen=True, slots=True)
class Outage:
    """One provider failing a `share` of its calls until `until` (monotonic seconds)."""

    provider: str
    until: float
    share: float

    def fails(self, provider: str, now: float, draw: float) -> bool:
        return provider == self.provider and now < self.until and draw < self.share
