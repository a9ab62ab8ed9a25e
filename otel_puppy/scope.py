"""`Scope`: the dimensions of one model call or decision request, the one shape every part reads.

Calls (`LLMCall.scope()`), decision requests (`DecisionRequest.scope()`), policy matching and
budget keys all take a `Scope`, so a dimension is added here once. Ten dimensions: who and what
(`provider`, `model`, `operation`), where from (`agent`, `service`, `user`, `team`, `environment`,
`conversation`), and `trace`, the agent run a call belongs to. `trace` is an id: it is never a
metric label, and policies match and split on every dimension but it (`policies.matching`).

>>> scope = Scope(provider="openai", model="gpt-4.1", agent="support")
>>> scope.get("agent"), scope["team"]
('support', None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ("DIMENSIONS", "Dimension", "Scope")

Dimension = Literal[
    "provider", "model", "agent", "service", "user", "team", "environment", "conversation", "operation", "trace"
]
DIMENSIONS: Final[tuple[Dimension, ...]] = (
    "provider",
    "model",
    "agent",
    "service",
    "user",
    "team",
    "environment",
    "conversation",
    "operation",
    "trace",
)
"""Every dimension, in the order labels and keys list them."""


@dataclass(frozen=True, slots=True)
class Scope:
    """The dimension values of a call or a request; `None`: not known (matches no glob).

    Hashable and compared by value, so it can key a cache. Read a dimension by name with `get`
    (or `scope[name]`), as policies do with the dimensions their YAML names.
    """

    provider: str
    model: str
    agent: str | None = None
    service: str | None = None
    user: str | None = None
    team: str | None = None
    environment: str | None = None
    conversation: str | None = None
    operation: str | None = None
    trace: str | None = None
    """The trace id as 32 lowercase hex digits (a call's); None for a request (not known yet)."""

    def get(self, dimension: str) -> str | None:
        """The value of `dimension`; None for a dimension this scope has no value for (or no such
        dimension: a policy's YAML was validated against `DIMENSIONS` already)."""
        value: str | None = getattr(self, dimension, None) if dimension in _KNOWN else None
        return value

    def __getitem__(self, dimension: str) -> str | None:
        """`scope["agent"]`: as `get`, but an unknown dimension raises `KeyError`."""
        if dimension not in _KNOWN:
            raise KeyError(dimension)
        value: str | None = getattr(self, dimension)
        return value

    def as_dict(self) -> dict[str, str | None]:
        """Every dimension and its value, in `DIMENSIONS` order (for JSON and tests)."""
        return {dimension: getattr(self, dimension) for dimension in DIMENSIONS}


_KNOWN: Final = frozenset(DIMENSIONS)
