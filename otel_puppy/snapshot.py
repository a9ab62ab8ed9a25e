"""What the engine tells about itself: an `Observation` per call, a `Snapshot` of its state."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from otel_puppy.calls import LLMCall
from otel_puppy.decision import PolicyHit
from otel_puppy.model_stats import ModelStat
from otel_puppy.policies.anomaly import AnomalyStatus
from otel_puppy.policies.breaker import BreakerStatus
from otel_puppy.pricing import Price
from otel_puppy.store import ApplyResult

__all__ = ("Observation", "Snapshot", "WindowSpend")


@dataclass(frozen=True, slots=True)
class Observation:
    """What the engine made of one call."""

    call: LLMCall
    price: Price
    result: ApplyResult


@dataclass(frozen=True, slots=True)
class WindowSpend:
    window: str
    spend_usd: Decimal
    tokens: int
    requests: int
    resets_at: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The engine's state now: total spend per window, every budget, breaker, anomaly and model,
    and the statuses of every policy kind by section (`kinds`: the built-in ones too)."""

    windows: tuple[WindowSpend, ...]
    budgets: tuple[PolicyHit, ...] = ()
    breakers: tuple[BreakerStatus, ...] = ()
    anomalies: tuple[AnomalyStatus, ...] = ()
    models: tuple[ModelStat, ...] = ()
    kinds: dict[str, tuple[Any, ...]] | None = None

    def spend(self, window: str) -> Decimal:
        for item in self.windows:
            if item.window == window:
                return item.spend_usd
        raise KeyError(window)

    def budget(self, policy: str, scope: str = "") -> PolicyHit:
        for hit in self.budgets:
            if hit.policy == policy and hit.scope == scope:
                return hit
        raise KeyError((policy, scope))
