"""The policy-file grammar (`PolicyFile`) and `PolicySet`, what loading the files produces.

Each top-level section of a policy file is a field of `PolicyFile` holding a tuple of one
`SectionEntry` model (each kind in its own module), plus a field of the same name on `PolicySet`.
The loader knows sections only through `PolicyFile.model_fields`, so a new section is its entry
model and those two fields; nothing in the loader changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import field_validator

from otel_puppy.policies.anomaly import AnomalyPolicy
from otel_puppy.policies.base import PolicyModel, PriceEntry, SectionEntry
from otel_puppy.policies.breaker import BreakerPolicy
from otel_puppy.policies.budget import BudgetPolicy
from otel_puppy.policies.routing import RoutingPolicy
from otel_puppy.pricing import PriceOverride

__all__ = ("PolicyFile", "PolicySet", "SectionEntry")


class PolicyFile(PolicyModel):
    """The content of one policy file. Every field is a section: a tuple of one `SectionEntry` kind."""

    budgets: tuple[BudgetPolicy, ...] = ()
    """Spend and token limits per window, with the action to take when over."""
    anomalies: tuple[AnomalyPolicy, ...] = ()
    """Detectors of unusual cost, tokens, requests, errors or latency against their own baseline."""
    breakers: tuple[BreakerPolicy, ...] = ()
    """Circuit breakers per provider (or provider and model)."""
    routing: tuple[RoutingPolicy, ...] = ()
    """How to choose a model among candidates."""
    prices: tuple[PriceEntry, ...] = ()
    """Prices that override or extend genai-prices."""

    @field_validator("*", mode="before")
    @classmethod
    def _null_section_is_empty(cls, value: object) -> object:
        # `prices:` with every entry commented out parses as null; it means "no entries".
        return () if value is None else value


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every policy in force, merged from all policy files; replaced whole on reload.

    `PolicySet()` is the valid empty set: no policies, genai-prices prices only.
    """

    budgets: tuple[BudgetPolicy, ...] = ()
    anomalies: tuple[AnomalyPolicy, ...] = ()
    breakers: tuple[BreakerPolicy, ...] = ()
    routing: tuple[RoutingPolicy, ...] = ()
    prices: tuple[PriceEntry, ...] = ()
    sources: tuple[Path, ...] = ()
    """The files this set was loaded from, in load order."""

    def price_overrides(self) -> tuple[PriceOverride, ...]:
        """The `prices:` entries in the form `Pricer` takes."""
        return tuple(entry.to_override() for entry in self.prices)

    def summary(self) -> list[str]:
        """What this set will do, one line per entry, section by section.

        >>> PolicySet().summary()
        []
        """
        entries: list[SectionEntry] = []
        for section in PolicyFile.model_fields:
            entries.extend(getattr(self, section))
        return [entry.describe() for entry in entries]
