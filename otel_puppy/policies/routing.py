"""Routing policies: which model to use among candidates, by strategy and under constraints."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from otel_puppy.policies.base import Duration, Name, PolicyModel, SectionEntry
from otel_puppy.policies.matching import Match

__all__ = ("Candidate", "RoutingPolicy", "Strategy", "Weights")

Strategy = Literal["cheapest", "fastest", "most_reliable", "balanced", "round_robin"]


def _candidate(value: object) -> object:
    return {"model": value} if isinstance(value, str) else value


class Candidate(PolicyModel):
    """A model routing may choose: `openai:gpt-4.1`, or with what it can do."""

    model: Annotated[str, Field(pattern=r"^[^:\s]+:\S+$", max_length=256)]
    """`provider:model`."""
    capabilities: tuple[str, ...] = ()
    """What the model can do (`tools`, `vision`, `json`), matched against the request's needs."""
    context_window: Annotated[int, Field(gt=0)] | None = None
    """Largest prompt in tokens; genai-prices' figure when absent."""

    @property
    def provider_model(self) -> tuple[str, str]:
        provider, _, model = self.model.partition(":")
        return provider, model


class Weights(PolicyModel):
    """How `balanced` weighs each ranking; they need not sum to 1."""

    cost: Annotated[float, Field(ge=0)] = 0.25
    speed: Annotated[float, Field(ge=0)] = 0.25
    reliability: Annotated[float, Field(ge=0)] = 0.25
    capability: Annotated[float, Field(ge=0)] = 0.25


class RoutingPolicy(SectionEntry):
    """Choose the model for requests matching `match` among `candidates`.

    >>> RoutingPolicy(name="default", candidates=["openai:gpt-4.1", "openai:gpt-4.1-mini"]).describe()
    'routing default: balanced among openai:gpt-4.1, openai:gpt-4.1-mini'
    """

    name: Name
    match: Match | None = None
    strategy: Strategy = "balanced"
    weights: Weights = Weights()
    candidates: Annotated[tuple[Annotated[Candidate, BeforeValidator(_candidate)], ...], Field(min_length=1)]
    max_latency_s: Duration | None = None
    """Skip candidates whose recent p95 latency is above this."""
    max_cost_usd: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)] | None = None
    """Skip candidates whose estimated cost for the request is above this."""
    require: tuple[str, ...] = ()
    """Capabilities every chosen model must have, on top of those the request asks for."""
    min_context: Annotated[int, Field(gt=0)] | None = None
    shadow: bool = False

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, value: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
        models = [c.model for c in value]
        if len(set(models)) != len(models):
            raise ValueError("each candidate may appear once")
        return value

    def identity(self) -> str:
        return self.name

    def describe(self) -> str:
        scope = f" for {self.match.describe()}" if self.match else ""
        shadow = " (shadow)" if self.shadow else ""
        models = ", ".join(c.model for c in self.candidates)
        return f"routing {self.name}: {self.strategy} among {models}{scope}{shadow}"
