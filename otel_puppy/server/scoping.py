"""What a scoped token may do: its spans carry its scope, its decisions stay in it, it reads only its own.

A token bound to `{team: search}` (`tokens.TokenScope`):

- ingest: `stamp` sets the scope's values on every call its spans describe, whatever team a span
  claims, and keeps their dedupe keys apart (`TokenScope.namespace`), so a Collector of one team can
  neither spend another team's budgets nor pre-send another team's span or response ids to suppress
  that team's spend;
- decide: `scoped_request` fills the scope's values into the request; a request naming another value
  is refused (`OutOfScope`, answered `403`);
- read: `visible_budgets` and `visible_anomalies` keep the instances that are the scope's alone (a
  budget or detector whose `match` pins the dimension to the scope's value, or that is split `per` the
  dimension and is the scope's instance). Breakers are per provider and model, shared by every team
  and named in every team's decisions: all are shown. The endpoints that cannot be split by scope
  (`SCOPED_READ_FORBIDDEN`) answer `403`.

The gate (`auth.AuthGate`) puts the request's token on it: `principal(request)`, `token_scope(request)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, Protocol

from starlette.requests import Request

from otel_puppy.calls import LLMCall
from otel_puppy.decision import DecisionRequest, PolicyHit
from otel_puppy.exceptions import PuppyError
from otel_puppy.policies.anomaly import AnomalyStatus
from otel_puppy.policies.matching import Match
from otel_puppy.policies.models import PolicySet
from otel_puppy.server.tokens import Token, TokenScope

__all__ = (
    "SCOPED_READ_FORBIDDEN",
    "OutOfScope",
    "principal",
    "scope_changes",
    "scoped_request",
    "stamp",
    "token_scope",
    "visible_anomalies",
    "visible_budgets",
)

SCOPED_READ_FORBIDDEN: Final = frozenset({"/metrics", "/v1/models", "/v1/health", "/v1/policies"})
"""Read endpoints a scoped token gets `403` from: their figures are not split by team (series and model
statistics over every call, health over every budget, every team's policies and limits)."""

_UNSCOPED: Final = TokenScope()


class OutOfScope(PuppyError):
    """A scoped token asked about another scope: the request names `dimension` with another value."""

    def __init__(self, dimension: str, scope: TokenScope) -> None:
        self.dimension = dimension
        self.scope = scope
        super().__init__(
            f"this token is scoped to {scope.text}: a request cannot name another {dimension} "
            f"(leave {dimension} out, or send {scope.get(dimension)!r})"
        )


def principal(request: Request) -> Token | None:
    """The token the request came with (`None` when the service needs none)."""
    state = request.scope.get("state")
    token = state.get("principal") if state is not None else None
    return token if isinstance(token, Token) else None


def token_scope(request: Request) -> TokenScope:
    """The scope of the request's token; empty when it has none (or the service needs no token)."""
    token = principal(request)
    return token.scope if token is not None else _UNSCOPED


def stamp(call: LLMCall, scope: TokenScope) -> LLMCall:
    """`call` as a token with `scope` may report it: the scope's values set, whatever the span claimed,
    and its dedupe keys in the scope's namespace. Unscoped: `call` itself.

    >>> stamp(call, TokenScope.of({"team": "search"})).team  # doctest: +SKIP
    'search'
    """
    if not scope:
        return call
    changes: dict[str, Any] = dict(scope.values)
    changes["dedupe_namespace"] = scope.namespace
    return replace(call, **changes)


def scoped_request(request: DecisionRequest, scope: TokenScope) -> DecisionRequest:
    """`request` with the scope's values filled in.

    Raises:
        OutOfScope: the request names another value of a scoped dimension.
    """
    changes = scope_changes(request, scope)
    return replace(request, **changes) if changes else request


def scope_changes(request: object, scope: TokenScope) -> dict[str, Any]:
    """What `request` (anything with the scope's dimensions as attributes: a `DecisionRequest`, the
    HTTP body) needs set to be in `scope`: the values it leaves out.

    Raises:
        OutOfScope: the request names another value of a scoped dimension.
    """
    changes: dict[str, Any] = {}
    for dimension, value in scope.values:
        asked = getattr(request, dimension)
        if asked is None:
            changes[dimension] = value
        elif asked != value:
            raise OutOfScope(dimension, scope)
    return changes


class _Scoped(Protocol):
    @property
    def match(self) -> Match | None: ...
    @property
    def per(self) -> Sequence[str]: ...


def visible_budgets(hits: Iterable[PolicyHit], policies: PolicySet, scope: TokenScope) -> list[PolicyHit]:
    """The budget instances (`/v1/budgets` hits) that are `scope`'s alone; all of them when unscoped."""
    if not scope:
        return list(hits)
    by_name: Mapping[str, _Scoped] = {policy.name: policy for policy in policies.budgets}
    return [hit for hit in hits if _visible(by_name.get(hit.policy), hit.scope or "", scope)]


def visible_anomalies(statuses: Iterable[AnomalyStatus], policies: PolicySet, scope: TokenScope) -> list[AnomalyStatus]:
    """The anomaly detectors that watch `scope`'s calls alone; all of them when unscoped."""
    if not scope:
        return list(statuses)
    by_name: Mapping[str, _Scoped] = {policy.name: policy for policy in policies.anomalies}
    return [status for status in statuses if _visible(by_name.get(status.policy), status.subject, scope)]


def _visible(policy: _Scoped | None, label: str, scope: TokenScope) -> bool:
    """Whether the instance `label` of `policy` counts only calls in `scope`: each scoped dimension is
    pinned to the scope's value by `match`, or is a `per` dimension whose value in `label` it is."""
    if policy is None:
        return False  # a policy reloaded away since: nobody's
    per = tuple(policy.per)
    values = _label_values(per, label) if per else {}
    for dimension, value in scope.values:
        if dimension in per:
            if values is None or values.get(dimension) != value:
                return False
        elif policy.match is None or getattr(policy.match, dimension, None) != (value,):
            return False
    return True


def _label_values(per: tuple[str, ...], label: str) -> dict[str, str] | None:
    """The values of a `scope_label` (`agent=a,team=b`, `,` and `\\` escaped), or None when `label` is
    not one (the `other` instance past a budget's `max_scopes`, shared by many)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in label:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    if len(parts) != len(per):
        return None
    values: dict[str, str] = {}
    for dimension, part in zip(per, parts, strict=True):
        name, equals, value = part.partition("=")
        if name != dimension or not equals:
            return None
        values[dimension] = value
    return values
