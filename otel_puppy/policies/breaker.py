"""Circuit breakers per provider (or provider and model), fed by spans, consulted by `decide()`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from otel_puppy.calls import ErrorClass
from otel_puppy.policies.base import Duration, Name, SectionEntry
from otel_puppy.policies.matching import Match

__all__ = ("BreakerPolicy",)

DEFAULT_FAILURES = (
    ErrorClass.SERVER_ERROR,
    ErrorClass.TIMEOUT,
    ErrorClass.RATE_LIMIT,
    ErrorClass.CONNECTION,
    ErrorClass.OTHER,
)


class BreakerPolicy(SectionEntry):
    """closed -> open after `failure_threshold` consecutive failures -> half-open after
    `recovery_timeout`, letting `half_open_max_calls` probes through -> closed after
    `success_threshold` successes (or open again on a failure).

    >>> BreakerPolicy(name="providers").describe()
    'breaker providers: per provider, open after 5 failures, probe after 30s'
    """

    name: Name
    match: Match | None = None
    per: tuple[Literal["provider", "model"], ...] = ("provider",)
    failure_threshold: Annotated[int, Field(ge=1, le=10_000)] = 5
    recovery_timeout: Duration = 30.0
    success_threshold: Annotated[int, Field(ge=1, le=10_000)] = 2
    half_open_max_calls: Annotated[int, Field(ge=1, le=10_000)] = 3
    failures: tuple[ErrorClass, ...] = DEFAULT_FAILURES
    """Error classes that count as provider failures; client errors (400, 401) do not by default."""
    shadow: bool = False

    @field_validator("per")
    @classmethod
    def _provider_first(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value not in (("provider",), ("provider", "model")):
            raise ValueError("per must be [provider] or [provider, model]")
        return value

    def identity(self) -> str:
        return self.name

    def describe(self) -> str:
        scope = f" for {self.match.describe()}" if self.match else ""
        shadow = " (shadow)" if self.shadow else ""
        return (
            f"breaker {self.name}: per {'+'.join(self.per)}{scope}, open after {self.failure_threshold} failures, "
            f"probe after {self.recovery_timeout:g}s{shadow}"
        )
