"""Which calls a policy applies to (`match`) and how it splits them (`per`), read from a `Scope`.

`match` takes a glob or a list of globs per dimension; a call matches when every given dimension
matches one of its globs. `per: [agent]` gives the policy one instance per distinct agent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import translate
from functools import cached_property
from operator import attrgetter
from typing import Annotated, Final, Literal, get_args

from pydantic import BeforeValidator, StringConstraints, field_validator

from otel_puppy._keys import escape
from otel_puppy.calls import LLMCall
from otel_puppy.policies.base import PolicyModel
from otel_puppy.scope import Scope

__all__ = ("DIMENSIONS", "Dimension", "Match", "Scope", "ScopeLike", "call_scope_key", "scope_label")

Dimension = Literal[
    "provider", "model", "agent", "service", "user", "team", "environment", "conversation", "operation", "trace"
]
"""A dimension a policy matches (`match`) and splits on (`per`): every `Scope` dimension. `trace`
(the agent run: a call's trace id, a decision's current span context or `traceparent`) is an id
like `user`: a budget `per: [trace]` exports only its fullest instance, never one series per run."""
DIMENSIONS: Final[tuple[Dimension, ...]] = get_args(Dimension)
_LABEL_DIMENSIONS: Final = tuple(d for d in DIMENSIONS if d != "trace")
_CALL_LABELS: Final = attrgetter(*_LABEL_DIMENSIONS)
ScopeLike = Scope | Mapping[str, str | None]
"""What `Match.matches` and `scope_label` read: a `Scope`, or a mapping of dimension -> value."""

Glob = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]


def _one_or_many(value: object) -> object:
    return (value,) if isinstance(value, str) else value


Globs = Annotated[tuple[Glob, ...], BeforeValidator(_one_or_many)]


class Match(PolicyModel):
    """Globs per dimension, e.g. `{provider: openai, model: [gpt-4.1*, o3*]}`."""

    provider: Globs | None = None
    model: Globs | None = None
    agent: Globs | None = None
    service: Globs | None = None
    user: Globs | None = None
    team: Globs | None = None
    environment: Globs | None = None
    conversation: Globs | None = None
    operation: Globs | None = None
    trace: Globs | None = None

    @field_validator(*DIMENSIONS)
    @classmethod
    def _valid_globs(cls, globs: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for glob in globs or ():
            if glob.count("[") != glob.count("]"):
                raise ValueError(f"bad glob {glob!r}: unbalanced '[' or ']'")
            if "[]" in glob:
                raise ValueError(f"bad glob {glob!r}: empty character class '[]'")
        if globs is not None and not globs:
            raise ValueError("an empty list matches nothing; leave the key out to match everything")
        return globs

    @cached_property
    def _compiled(self) -> tuple[tuple[Dimension, frozenset[str], re.Pattern[str] | None], ...]:
        compiled = []
        for dimension in DIMENSIONS:
            globs: tuple[str, ...] | None = getattr(self, dimension)
            if globs is None:
                continue
            exact = frozenset(g for g in globs if not _is_glob(g))
            patterns = [translate(g) for g in globs if _is_glob(g)]
            regex = re.compile("|".join(patterns)) if patterns else None
            compiled.append((dimension, exact, regex))
        return tuple(compiled)

    @property
    def dimensions(self) -> tuple[Dimension, ...]:
        """The dimensions it reads (those it gives globs for), in `DIMENSIONS` order."""
        return tuple(d for d, _, _ in self._compiled)

    def matches(self, scope: ScopeLike) -> bool:
        """Whether every dimension given here matches the scope's value (a missing value never does)."""
        for dimension, exact, regex in self._compiled:
            value = scope.get(dimension)
            if value is None:
                return False
            if value in exact:
                continue
            if regex is None or not regex.match(value):
                return False
        return True

    def describe(self) -> str:
        parts = [f"{d}={'|'.join(getattr(self, d))}" for d in DIMENSIONS if getattr(self, d) is not None]
        return " ".join(parts)


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def scope_label(per: tuple[str, ...], scope: ScopeLike) -> str:
    """`agent=support,user=u1` for a `per: [agent, user]` instance; empty for a policy without `per`.

    Injective: a `,` (or `\\`) inside a value is escaped, so `agent="x,user=y"` never shares the
    instance of agent `x` and user `y`; a value without them keeps the label it always had.
    """
    return ",".join(f"{dimension}={escape(scope.get(dimension) or '', ',')}" for dimension in per)


def call_scope_key(call: LLMCall, trace: bool) -> tuple[object, ...]:
    """What tells two calls' scopes apart for matching and splitting, without building them: the values
    `call.scope()` would have, the trace id only with `trace` (a policy reads it). Calls with equal keys
    match and split alike, so a batch works a key's matches out once."""
    labels: tuple[object, ...] = _CALL_LABELS(call)
    return (*labels, call.trace_id) if trace else labels
