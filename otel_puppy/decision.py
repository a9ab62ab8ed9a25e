"""What an agent asks before a call (`DecisionRequest`) and what it is told (`Decision`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from operator import attrgetter
from typing import Any, Final, overload

from otel_puppy.bounds import (
    MAX_CALL_COST_USD,
    MAX_CALL_TOKENS,
    MAX_CAPABILITIES,
    MAX_NAME_LENGTH,
    InvalidNumber,
    OutOfBounds,
    read_count,
    read_decimal,
)
from otel_puppy.exceptions import RequestError
from otel_puppy.money import format_usd
from otel_puppy.scope import Scope

__all__ = (
    "Action",
    "Decision",
    "DecisionRequest",
    "LazyHits",
    "PolicyHit",
    "Priority",
    "Severity",
    "allowed_decision",
    "policy_hit_dict",
)


class Action(StrEnum):
    """The decision ladder, from permissive to strict. The strictest matching action wins."""

    ALLOW = "allow"
    WARN = "warn"
    DEGRADE = "degrade"
    DENY = "deny"

    @property
    def rank(self) -> int:
        return _ACTION_RANK[self]

    @staticmethod
    def strictest(actions: list[Action]) -> Action:
        return max(actions, key=_ACTION_RANK.__getitem__, default=Action.ALLOW)


_ACTION_RANK = {Action.ALLOW: 0, Action.WARN: 1, Action.DEGRADE: 2, Action.DENY: 3}


class Priority(StrEnum):
    """How much a call matters. Budgets can keep their last fraction for the higher priorities."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    BULK = "bulk"

    @property
    def rank(self) -> int:
        """Higher is more important: bulk 0 ... critical 4."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.BULK: 0, Priority.LOW: 1, Priority.NORMAL: 2, Priority.HIGH: 3, Priority.CRITICAL: 4}


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"
    EMERGENCY = "emergency"


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """May I make this call? Everything a policy can match or group on, plus an estimate.

    Give `estimated_cost_usd`, or token estimates (priced with the `Pricer` for the model that
    will actually be used), so the engine can reserve the spend before it happens.

    Every value is checked when the request is built, against `otel_puppy.bounds`: names of at most
    `MAX_NAME_LENGTH` characters, estimates of at most `MAX_CALL_COST_USD` and `MAX_CALL_TOKENS`,
    at most `MAX_CAPABILITIES` capabilities; required names not empty, and every name text that
    every store can encode. A value outside raises `bounds.InvalidNumber` for a number, else
    `RequestError` (both `ValueError`s naming the field): the caller's own error, never a decision
    that fails open.
    `estimated_cost_usd` may be given as an int, float or decimal text; it is kept as a `Decimal`.
    """

    provider: str
    model: str
    agent: str | None = None
    service: str | None = None
    user: str | None = None
    team: str | None = None
    environment: str | None = None
    conversation: str | None = None
    operation: str = "chat"
    priority: Priority = Priority.NORMAL
    estimated_cost_usd: Decimal | None = None
    estimated_input_tokens: int | None = None
    estimated_output_tokens: int | None = None
    capabilities: tuple[str, ...] = ()
    """Capabilities the call needs (e.g. `tools`, `vision`); routing only picks models that have them."""
    context_tokens: int | None = None
    """Prompt size; routing only picks models whose context window holds it."""
    trace_id: str | None = None
    """The agent run the call belongs to: its trace id, 32 hex digits (W3C Trace Context), as the
    call's span will carry it. `per: [trace]` budgets one run; an id, never a metric label."""

    def __post_init__(self) -> None:
        # The usual request (short ASCII names, counts as ints, a `Decimal` or no estimate, a
        # `Priority`) costs one cheap test per field; anything else takes the checks that name the
        # field. The fix-ups replace a value only when it came in another type (the dataclass is frozen).
        for value in (self.provider, self.model, self.operation):
            if type(value) is not str or not 0 < len(value) <= MAX_NAME_LENGTH or not value.isascii():
                self._check_names()
                break
        else:
            for label in (self.agent, self.service, self.user, self.team, self.environment, self.conversation):
                if label is not None and (
                    type(label) is not str or len(label) > MAX_NAME_LENGTH or not label.isascii()
                ):
                    self._check_names()
                    break
        priority = self.priority
        if type(priority) is not Priority:
            known = _PRIORITY_BY_NAME.get(priority) if isinstance(priority, str) else None
            if known is None:
                raise RequestError("priority", f"must be one of {', '.join(_PRIORITIES)}")
            object.__setattr__(self, "priority", known)
        cost = self.estimated_cost_usd
        if cost is not None:
            bounded = read_decimal(cost, name="estimated_cost_usd", maximum=MAX_CALL_COST_USD)
            if bounded is not cost:
                object.__setattr__(self, "estimated_cost_usd", bounded)
        if (self.estimated_input_tokens, self.estimated_output_tokens, self.context_tokens) != (None, None, None):
            self._check_counts()
        trace_id = self.trace_id
        if trace_id is not None and (type(trace_id) is not str or _TRACE_ID.fullmatch(trace_id) is None):
            object.__setattr__(self, "trace_id", _trace_id(trace_id))
        capabilities = self.capabilities
        if capabilities:
            if not isinstance(capabilities, tuple | list):  # a bare string would be a tuple of letters
                raise RequestError("capabilities", f"must be a list of at most {MAX_CAPABILITIES} names")
            if len(capabilities) > MAX_CAPABILITIES:
                reason = f"lists {len(capabilities)} items (allowed: at most {MAX_CAPABILITIES})"
                raise OutOfBounds("capabilities", reason)
            for capability in capabilities:
                _check_name("capabilities", capability, optional=False)
            if type(capabilities) is not tuple:
                object.__setattr__(self, "capabilities", tuple(capabilities))

    def _check_counts(self) -> None:
        for name in ("estimated_input_tokens", "estimated_output_tokens", "context_tokens"):
            count: object = getattr(self, name)
            if count is not None and (type(count) is not int or not 0 <= count <= MAX_CALL_TOKENS):
                object.__setattr__(self, name, read_count(count, name=name, maximum=MAX_CALL_TOKENS))

    def _check_names(self) -> None:
        for name in _NAMES:
            _check_name(name, getattr(self, name), optional=name not in _REQUIRED_NAMES)

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> DecisionRequest:
        """The request `decide(**fields)` describes: the one way keywords become a request (the
        engine, the decision client). A priority may be its name, an estimate a number or decimal
        text (read by `bounds.read_decimal`, never converted unbounded).

        >>> DecisionRequest.from_fields({"provider": "openai", "model": "gpt-4.1", "priority": "high"}).priority
        <Priority.HIGH: 'high'>

        Raises:
            RequestError: naming the field: an unknown one, a required one missing, or a value the
                request refuses (out of `otel_puppy.bounds`, or of the wrong type).
        """
        if not _FIELD_SET.issuperset(fields):
            unknown = sorted(set(fields).difference(_FIELDS))
            raise RequestError(unknown[0], "not a field of a decision request")
        try:
            if cls is DecisionRequest and "provider" in fields and "model" in fields:
                return _assembled(fields)
            return cls(**fields)  # type: ignore[arg-type]
        except InvalidNumber as exc:  # out of bounds, or not a number
            raise RequestError(exc.name, exc.reason) from None
        except TypeError:  # a required field missing (every value's own type is checked by the request)
            missing = next((name for name in _GIVEN_NAMES if name not in fields), None)
            if missing is None:
                raise
            raise RequestError(missing, "is required") from None

    def scope(self) -> Scope:
        """The dimensions policies match and group on (as `LLMCall.scope()`)."""
        return Scope(
            self.provider,
            self.model,
            self.agent,
            self.service,
            self.user,
            self.team,
            self.environment,
            self.conversation,
            self.operation,
            self.trace_id,
        )

    def with_model(self, provider: str, model: str) -> DecisionRequest:
        return replace(self, provider=provider, model=model)

    @property
    def estimated_tokens(self) -> int:
        return (self.estimated_input_tokens or 0) + (self.estimated_output_tokens or 0)


_NAMES: Final = ("provider", "model", "agent", "service", "user", "team", "environment", "conversation", "operation")
_REQUIRED_NAMES: Final = frozenset({"provider", "model", "operation"})
_GIVEN_NAMES: Final = ("provider", "model")
"""The fields `from_fields` requires (the others have defaults)."""
_FIELDS: Final = tuple(DecisionRequest.__dataclass_fields__)
_FIELD_SET: Final = frozenset(_FIELDS)
_REQUEST_SETTERS: Final = tuple(getattr(DecisionRequest, f.name).__set__ for f in fields(DecisionRequest))
"""Each field's slot setter, in field order, for `_assembled` (tests/test_decide.py holds the two together)."""
(
    _put_provider,
    _put_model,
    _put_agent,
    _put_service,
    _put_user,
    _put_team,
    _put_environment,
    _put_conversation,
    _put_operation,
    _put_priority,
    _put_estimated_cost_usd,
    _put_estimated_input_tokens,
    _put_estimated_output_tokens,
    _put_capabilities,
    _put_context_tokens,
    _put_trace_id,
) = _REQUEST_SETTERS
_DEFAULTS: Final = {f.name: f.default for f in fields(DecisionRequest)}
_OPERATION, _PRIORITY, _CAPABILITIES = _DEFAULTS["operation"], _DEFAULTS["priority"], _DEFAULTS["capabilities"]
"""The fields' defaults that are not `None`, as the dataclass declares them (for `_assembled`)."""
_new_object: Final = object.__new__
_PRIORITIES: Final = tuple(p.value for p in Priority)
_PRIORITY_BY_NAME: Final[dict[str, Priority]] = {p.value: p for p in Priority}


def _assembled(fields: Mapping[str, object]) -> DecisionRequest:
    """`DecisionRequest(**fields)`, as the generated `__init__` builds it but without its keyword
    parsing and a frozen `__setattr__` lookup per field: `decide(**fields)` builds one per decision."""
    request: DecisionRequest = _new_object(DecisionRequest)
    get = fields.get
    # Each slot set by its own descriptor, unrolled, with the field's declared default (`provider`
    # and `model` are present: `from_fields` checked; the other defaults are `None`).
    _put_provider(request, fields["provider"])
    _put_model(request, fields["model"])
    _put_agent(request, get("agent"))
    _put_service(request, get("service"))
    _put_user(request, get("user"))
    _put_team(request, get("team"))
    _put_environment(request, get("environment"))
    _put_conversation(request, get("conversation"))
    _put_operation(request, get("operation", _OPERATION))
    _put_priority(request, get("priority", _PRIORITY))
    _put_estimated_cost_usd(request, get("estimated_cost_usd"))
    _put_estimated_input_tokens(request, get("estimated_input_tokens"))
    _put_estimated_output_tokens(request, get("estimated_output_tokens"))
    _put_capabilities(request, get("capabilities", _CAPABILITIES))
    _put_context_tokens(request, get("context_tokens"))
    _put_trace_id(request, get("trace_id"))
    request.__post_init__()
    return request


_TRACE_ID: Final = re.compile(r"(?!0{32})[0-9a-f]{32}")
"""A valid trace id as `LLMCall.scope()` writes it: 32 lowercase hex digits, not all zero."""


def _trace_id(value: object) -> str | None:
    """A trace id in the form spans carry it (lowercase), or None for an empty one.

    Raises:
        RequestError: not 32 hex digits, or all zero (W3C Trace Context's invalid id).
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestError("trace_id", f"must be a string of 32 hex digits, not {type(value).__name__}")
    if len(value) != 32:
        raise RequestError("trace_id", f"must be 32 hex digits (W3C Trace Context), not {len(value)} characters")
    lowered = value.lower()
    if _TRACE_ID.fullmatch(lowered) is None:
        raise RequestError("trace_id", "must be 32 hex digits, not all zero (W3C Trace Context)")
    return lowered


def _check_name(field: str, value: object, *, optional: bool) -> None:
    """A name every store can hold: a string of 1 to `MAX_NAME_LENGTH` characters that encodes as
    UTF-8 (no lone surrogates), or absent (`None`, or empty) when `optional`.

    Raises:
        RequestError: naming `field`.
    """
    if type(value) is str and value.isascii() and 0 < len(value) <= MAX_NAME_LENGTH:
        return
    if optional and (value is None or value == ""):
        return
    if not isinstance(value, str):
        raise RequestError(field, f"must be a string{' or null' if optional else ''}, not {type(value).__name__}")
    if not value:
        raise RequestError(field, "must be a non-empty string" + (" or null" if optional else ""))
    if len(value) > MAX_NAME_LENGTH:
        raise RequestError(field, f"is {len(value)} characters long (allowed: at most {MAX_NAME_LENGTH})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(field, "must be valid Unicode text (no lone surrogates)") from None


@dataclass(frozen=True, slots=True)
class PolicyHit:
    """One policy's say in a decision: what it would do and why."""

    kind: str
    """`budget`, `breaker`, `anomaly` or `routing`."""
    policy: str
    action: Action
    message: str
    scope: str = ""
    """Which instance of the policy: `agent=support` for a `per: [agent]` budget, a provider for a breaker."""
    severity: Severity = Severity.INFO
    shadow: bool = False
    spent_usd: Decimal | None = None
    limit_usd: Decimal | None = None
    spent_tokens: int | None = None
    limit_tokens: int | None = None
    reserved_usd: Decimal | None = None
    utilization: float | None = None
    window: str | None = None
    resets_at: datetime | None = None
    retry_after_s: float | None = None
    model: str | None = None
    """For `degrade`: the model to use instead (`provider:model` or a bare model)."""
    spent_calls: int | None = None
    """A call budget's: calls made in its window plus calls admitted and not yet settled."""
    limit_calls: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings, datetimes as ISO 8601, enums as their values."""
        return policy_hit_dict(_hit_values(self))


_hit_values = attrgetter(*(f.name for f in fields(PolicyHit)))
"""A hit's field values, in field order."""


def policy_hit_dict(values: Sequence[Any]) -> dict[str, Any]:
    """`PolicyHit(*values).to_dict()` (values in `PolicyHit`'s field order), with no `PolicyHit` built.

    Each field converted by its type: a decision over HTTP is mostly this (`asdict`, or
    `_jsonable` over every field, costs several times as much).
    """
    (
        kind,
        policy,
        action,
        message,
        scope,
        severity,
        shadow,
        spent_usd,
        limit_usd,
        spent_tokens,
        limit_tokens,
        reserved_usd,
        utilization,
        window,
        resets_at,
        retry_after_s,
        model,
        spent_calls,
        limit_calls,
    ) = values
    return {
        "kind": kind,
        "policy": policy,
        "action": _text(action),
        "message": message,
        "scope": scope,
        "severity": _text(severity),
        "shadow": shadow,
        "spent_usd": _money(spent_usd),
        "limit_usd": _money(limit_usd),
        "spent_tokens": spent_tokens,
        "limit_tokens": limit_tokens,
        "reserved_usd": _money(reserved_usd),
        "utilization": utilization,
        "window": window,
        "resets_at": _when(resets_at),
        "retry_after_s": retry_after_s,
        "model": model,
        "spent_calls": spent_calls,
        "limit_calls": limit_calls,
    }


class LazyHits(Sequence[PolicyHit]):
    """Policy hits built on first access.

    Most decisions are `allow` and nobody reads their reasons; building a `PolicyHit` (amounts,
    messages, reset times) for every matching budget would dominate `decide()`. Items are hits
    or zero-argument callables that build one. `dicts`, if given, returns what `to_dicts()`
    would, without building the hits (a decision sent over HTTP needs only those).
    """

    __slots__ = ("_built", "_dicts", "_items")

    def __init__(
        self,
        items: Sequence[PolicyHit | Callable[[], PolicyHit]] = (),
        dicts: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._items = items
        self._dicts = dicts
        self._built: tuple[PolicyHit, ...] | None = None

    def to_dicts(self) -> list[dict[str, Any]]:
        """`[hit.to_dict() for hit in self]`."""
        if self._built is None and self._dicts is not None:
            return self._dicts()
        return [hit.to_dict() for hit in self._hits()]

    def _hits(self) -> tuple[PolicyHit, ...]:
        built = self._built
        if built is None:
            built = self._built = tuple(item if isinstance(item, PolicyHit) else item() for item in self._items)
        return built

    @overload
    def __getitem__(self, index: int) -> PolicyHit: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[PolicyHit, ...]: ...
    def __getitem__(self, index: int | slice) -> PolicyHit | tuple[PolicyHit, ...]:
        return self._hits()[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[PolicyHit]:
        return iter(self._hits())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return self._hits() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._hits())

    def __repr__(self) -> str:
        return repr(self._hits())


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer: go ahead, go ahead but know this, use a cheaper model, or stop.

    `provider` and `model` are what to call (changed on `degrade` or by routing). `reasons` lists
    every enforced policy that matched; `shadow` what shadow policies would have done.
    """

    action: Action
    provider: str
    model: str
    reasons: Sequence[PolicyHit] = ()
    shadow: Sequence[PolicyHit] = ()
    decision_id: str | None = None
    """Set when spend was reserved; put it on the call's span (`otel_puppy.decision_id`) to settle."""
    retry_after_s: float | None = None
    resets_at: datetime | None = None
    estimated_cost_usd: Decimal | None = None
    reserved_usd: Decimal | None = None
    """What this decision holds on each budget it counts against (listed in `reasons` and `shadow`)
    until the call's span settles it; `None` when it holds nothing: asked with `reserve=False`, denied,
    no estimate, or no budget matched."""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    estimate_source: str = "none"
    """Where `estimated_cost_usd` comes from: `request` (the request's estimate), `learned` (what such
    calls usually cost: the request gave none, or input tokens alone; see `otel_puppy.learned`) or
    `none` (no estimate: too few calls seen to learn one, or learning is off)."""

    @property
    def allowed(self) -> bool:
        """Whether the call may go ahead (every action but `deny`)."""
        return self.action is not Action.DENY

    @property
    def model_ref(self) -> str:
        """`provider:model`, the form pydantic-ai takes."""
        return f"{self.provider}:{self.model}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings, datetimes as ISO 8601."""
        data: dict[str, Any] = {name: _jsonable(getattr(self, name)) for name in _DECISION_SCALARS}
        data["reasons"] = _hit_dicts(self.reasons)
        data["shadow"] = _hit_dicts(self.shadow)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """The inverse of `to_dict`, for decisions that came over HTTP."""
        hits = [tuple(_hit(h) for h in data.get(key, ())) for key in ("reasons", "shadow")]
        return cls(
            action=Action(data["action"]),
            provider=data["provider"],
            model=data["model"],
            reasons=hits[0],
            shadow=hits[1],
            decision_id=data.get("decision_id"),
            retry_after_s=data.get("retry_after_s"),
            resets_at=_datetime(data.get("resets_at")),
            estimated_cost_usd=_decimal(data.get("estimated_cost_usd")),
            reserved_usd=_decimal(data.get("reserved_usd")),
            created_at=_datetime(data.get("created_at")) or datetime.now(UTC),
            estimate_source=data.get("estimate_source", "none"),
        )


_DECISION_SCALARS = tuple(f.name for f in fields(Decision) if f.name not in ("reasons", "shadow"))


def _hit(data: dict[str, Any]) -> PolicyHit:
    return PolicyHit(
        kind=data["kind"],
        policy=data["policy"],
        action=Action(data["action"]),
        message=data["message"],
        scope=data.get("scope", ""),
        severity=Severity(data.get("severity", "info")),
        shadow=bool(data.get("shadow", False)),
        spent_usd=_decimal(data.get("spent_usd")),
        limit_usd=_decimal(data.get("limit_usd")),
        spent_tokens=data.get("spent_tokens"),
        limit_tokens=data.get("limit_tokens"),
        reserved_usd=_decimal(data.get("reserved_usd")),
        utilization=data.get("utilization"),
        window=data.get("window"),
        resets_at=_datetime(data.get("resets_at")),
        retry_after_s=data.get("retry_after_s"),
        model=data.get("model"),
        spent_calls=data.get("spent_calls"),
        limit_calls=data.get("limit_calls"),
    )


def _decimal(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _datetime(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _hit_dicts(hits: Sequence[PolicyHit]) -> list[dict[str, Any]]:
    return hits.to_dicts() if isinstance(hits, LazyHits) else [hit.to_dict() for hit in hits]


def _text(value: str) -> str:
    return str.__str__(value)  # an enum member's value (they are `StrEnum`s): a plain `str` either way


def _money(value: Decimal | None) -> str | None:
    return format_usd(value) if isinstance(value, Decimal) else _jsonable(value)


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else _jsonable(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")  # fixed-point: 0.000000000, never 0E-9
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    return value


_DECISION_SETTERS: Final = tuple(getattr(Decision, f.name).__set__ for f in fields(Decision))
(
    _set_action,
    _set_provider,
    _set_model,
    _set_reasons,
    _set_shadow,
    _set_decision_id,
    _set_retry_after_s,
    _set_resets_at,
    _set_estimated_cost_usd,
    _set_reserved_usd,
    _set_created_at,
    _set_estimate_source,
) = _DECISION_SETTERS
_ALLOW: Final = Action.ALLOW


def allowed_decision(  # noqa: PLR0917 - positional: built for nearly every decision
    provider: str,
    model: str,
    reasons: Sequence[PolicyHit],
    shadow: Sequence[PolicyHit],
    decision_id: str | None,
    estimated_cost_usd: Decimal | None,
    reserved_usd: Decimal | None,
    estimate_source: str,
) -> Decision:
    """`Decision(Action.ALLOW, ...)` as the generated `__init__` builds it, without a frozen
    `__setattr__` lookup per field: `decide()` answers most requests with one. Each slot is set by
    its own descriptor, unrolled (a loop over them cost a tenth of a decision);
    tests/test_decide.py holds it to the generated `__init__`."""
    decision: Decision = _new_object(Decision)
    _set_action(decision, _ALLOW)
    _set_provider(decision, provider)
    _set_model(decision, model)
    _set_reasons(decision, reasons)
    _set_shadow(decision, shadow)
    _set_decision_id(decision, decision_id)
    _set_retry_after_s(decision, None)
    _set_resets_at(decision, None)
    _set_estimated_cost_usd(decision, estimated_cost_usd)
    _set_reserved_usd(decision, reserved_usd)
    _set_created_at(decision, datetime.now(UTC))
    _set_estimate_source(decision, estimate_source)
    return decision
