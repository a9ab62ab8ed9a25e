"""`LLMCall`: one model call, normalized from whatever instrumentation described it.

`extract_call(span)` reads an SDK `ReadableSpan`; `call_from_parts(...)` reads the same
fields from anything else (the OTLP decoder uses it), so both front doors agree exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from operator import attrgetter
from typing import Any, Final

from genai_prices.data_snapshot import find_provider_by_id, get_snapshot
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_puppy import semconv
from otel_puppy.bounds import (
    DEFAULT_LIMITS,
    MAX_NAME_LENGTH,
    CallLimits,
    InvalidNumber,
    OutOfBounds,
    read_count,
    read_decimal,
)
from otel_puppy.scope import Scope

__all__ = (
    "ErrorClass",
    "LLMCall",
    "call_from_parts",
    "extract_call",
    "is_genai_span",
    "normalize_provider",
    "prompt_digest",
)

_MAX_NAME = MAX_NAME_LENGTH
_MAX_INT_LABEL = 10**18
"""An integer attribute used as a label (a numeric user id) is formatted only below this."""


class ErrorClass(StrEnum):
    """Why a call failed. Breakers count all but `client_error` as provider failures."""

    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    RATE_LIMIT = "rate_limit"
    CONNECTION = "connection"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class LLMCall:
    """One model call: who made it, what it used, how it ended.

    Token counts follow the GenAI conventions: `input_tokens` includes cache reads and writes,
    `output_tokens` includes reasoning tokens.
    """

    trace_id: int
    span_id: int
    parent_span_id: int
    provider: str
    request_model: str | None
    response_model: str | None
    operation: str
    start_ns: int
    end_ns: int
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    has_usage: bool = False
    error_class: ErrorClass | None = None
    agent: str | None = None
    service: str | None = None
    conversation: str | None = None
    user: str | None = None
    team: str | None = None
    environment: str | None = None
    reported_cost_usd: float | None = None
    decision_id: str | None = None
    response_id: str | None = None
    """The provider's id of the response (`gen_ai.response.id` and its equivalents): every span carrying
    it describes this one call, whichever instrumentation wrote it and in whichever trace."""
    instrumentation: str | None = field(default=None, compare=False)
    """The name of the instrumentation scope that wrote the span (`opentelemetry.instrumentation.openai_v2`).
    Not compared: it says who described the call, not what the call was."""
    prompt_hash: str | None = None
    """A digest of the normalized prompt when the span captured it; the text is never kept."""
    problems: tuple[str, ...] = ()
    """Attributes that were present but unusable; such a call is counted but never priced."""
    dedupe_namespace: str = ""
    """Set by `server.scoping.stamp` on a span sent with a scoped ingest token (`TokenScope.namespace`):
    its dedupe keys (span, parent, call keys) are kept apart from every other scope's."""
    rejected: str | None = None
    """Why the span is refused: a number outside its bound (`bounds.CallLimits`). A rejected call is
    never applied: the OTLP receiver answers it in `partial_success`, the engine counts it."""

    @property
    def model(self) -> str:
        """The model that answered, else the one asked for, else `unknown`."""
        return self.response_model or self.request_model or "unknown"

    @property
    def ok(self) -> bool:
        return self.error_class is None

    @property
    def duration_s(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e9

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def scope(self) -> Scope:
        """The dimensions policies match and group on; `trace` is the trace id in 32 lowercase hex."""
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
            f"{self.trace_id:032x}",
        )


_Unfrozen: Final[Any] = type("_Unfrozen", (), {"__slots__": LLMCall.__slots__})
"""`LLMCall`'s slots, in its layout, without its frozen `__setattr__`: `_new_call` fills one and then
makes it the `LLMCall` it is (assigning `__class__` is allowed between classes of the same slots)."""
_new_object: Final = object.__new__


def _new_call(  # noqa: PLR0917 - positional: keywords cost as much as the rest of it
    trace_id: int,
    span_id: int,
    parent_span_id: int,
    provider: str,
    request_model: str | None,
    response_model: str | None,
    operation: str,
    start_ns: int,
    end_ns: int,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    reasoning_tokens: int,
    has_usage: bool,
    error_class: ErrorClass | None,
    agent: str | None,
    service: str | None,
    conversation: str | None,
    user: str | None,
    team: str | None,
    environment: str | None,
    reported_cost_usd: float | None,
    decision_id: str | None,
    response_id: str | None,
    instrumentation: str | None,
    prompt_hash: str | None,
    problems: tuple[str, ...],
    rejected: str | None,
    /,
) -> LLMCall:
    """`LLMCall(...)` of every field but `dedupe_namespace` (empty), as the generated `__init__` builds
    it but without a frozen `__setattr__` per field; positional only (thirty keyword arguments took
    1.3 us a call to match, as long as the rest of it) (a third of reading a small span, and still most of
    making a call with one slot setter per field): each slot is stored as in a plain class."""
    call = _new_object(_Unfrozen)
    call.trace_id = trace_id
    call.span_id = span_id
    call.parent_span_id = parent_span_id
    call.provider = provider
    call.request_model = request_model
    call.response_model = response_model
    call.operation = operation
    call.start_ns = start_ns
    call.end_ns = end_ns
    call.input_tokens = input_tokens
    call.output_tokens = output_tokens
    call.cache_read_tokens = cache_read_tokens
    call.cache_write_tokens = cache_write_tokens
    call.reasoning_tokens = reasoning_tokens
    call.has_usage = has_usage
    call.error_class = error_class
    call.agent = agent
    call.service = service
    call.conversation = conversation
    call.user = user
    call.team = team
    call.environment = environment
    call.reported_cost_usd = reported_cost_usd
    call.decision_id = decision_id
    call.response_id = response_id
    call.instrumentation = instrumentation
    call.prompt_hash = prompt_hash
    call.problems = problems
    call.dedupe_namespace = ""
    call.rejected = rejected
    call.__class__ = LLMCall
    built: LLMCall = call
    return built


_CARRIED: Final = tuple(name for name in LLMCall.__slots__ if name != "dedupe_namespace")
"""The fields `_new_call` takes, in its order."""
call_fields: Final[Callable[[LLMCall], tuple[Any, ...]]] = attrgetter(*_CARRIED)
"""A call read from a span as a tuple of its fields, for another process (`server/decoder.py`):
`call_from_fields` builds it back. A plain tuple crosses a pipe at a fifth of the cost of the call
(pickled by its fields' names). `dedupe_namespace` is not carried: a span read is never scoped yet."""


def call_from_fields(fields: tuple[Any, ...]) -> LLMCall:
    """The call `call_fields` gave `fields` of."""
    return _new_call(*fields)


def is_genai_span(attributes: Mapping[str, Any]) -> bool:
    """The cheap test: does this span carry any GenAI attribute at all?"""
    return not semconv.MARKERS.isdisjoint(attributes)


def extract_call(span: ReadableSpan, limits: CallLimits = DEFAULT_LIMITS) -> LLMCall | None:
    """Normalize an SDK span into an `LLMCall`, or `None` when it is not one model call.

    Not calls: spans without GenAI attributes, agent runs carrying aggregated usage,
    tool executions, and logfire pending spans.

    >>> extract_call(some_span_without_genai_attributes) is None  # doctest: +SKIP
    True
    """
    attributes = span.attributes or {}
    error = span.status.status_code is StatusCode.ERROR
    if not is_genai_span(attributes) and (attributes or not error):
        return None
    context = span.get_span_context()
    if context is None:
        return None
    return call_from_parts(
        attributes,
        resource=span.resource.attributes,
        trace_id=context.trace_id,
        span_id=context.span_id,
        parent_span_id=span.parent.span_id if span.parent is not None else 0,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or 0,
        error=error,
        status_message=span.status.description,
        exception_events=(event.attributes or {} for event in span.events if event.name == semconv.EXCEPTION_EVENT)
        if error
        else (),
        limits=limits,
        instrumentation=span.instrumentation_scope.name if span.instrumentation_scope is not None else None,
        name=span.name,
    )


def call_from_parts(  # noqa: PLR0917 - positional too: the OTLP decoder calls it for every span
    attributes: Mapping[str, Any],
    resource: Mapping[str, Any],
    trace_id: int,
    span_id: int,
    parent_span_id: int,
    start_ns: int,
    end_ns: int,
    error: bool,
    status_message: str | None = None,
    exception_events: Iterable[Mapping[str, Any]] = (),
    limits: CallLimits = DEFAULT_LIMITS,
    instrumentation: str | None = None,
    name: str | None = None,
    memo: dict[tuple[object, ...], Any] | None = None,
) -> LLMCall | None:
    """Build an `LLMCall` from span parts, or `None` when the span is not one model call.

    `instrumentation` is the name of the span's instrumentation scope: spans of one call that two
    instrumentations wrote are told apart from two calls by it (`call_identity`). `name` (the span's)
    is read only for a failed span without attributes (`_bare_failure`).

    Numbers are read with `bounds.read_count`/`read_decimal`: one that is not a number makes the
    call `problems` (counted, not priced); one outside `limits` makes it `rejected` (not applied).
    Names longer than `bounds.MAX_NAME_LENGTH` are treated as absent.

    `memo` (a dict, kept by the caller for spans of one `resource`) remembers what the attributes
    other than the numbers and ids say (`_Labels`), for spans with usage that did not fail: at most
    `MEMO_ENTRIES`, each keyed by short values only (`_memo_key`). The call is the same without it.

    Every parameter may be passed by position, in this order: the OTLP decoder does, for every span
    (fourteen keyword arguments cost more to match than most of what they pass).
    """
    if not attributes:
        if not error:
            return None
        attributes = _bare_failure(name, instrumentation)
    plan = _plan_of(attributes)
    if memo is not None and not error and plan.has_usage:
        key = _memo_key(attributes, plan, instrumentation)
        if key is None:
            labels = _labels(attributes, plan, resource, instrumentation, error)
        else:
            labels = memo.get(key, _UNKNOWN)
            if labels is _UNKNOWN:
                labels = _labels(attributes, plan, resource, instrumentation, error)
                if len(memo) < MEMO_ENTRIES:
                    memo[key] = labels
    else:
        labels = _labels(attributes, plan, resource, instrumentation, error)
    if labels is None:
        return None

    problems: list[str] = []
    rejections: list[str] = []
    tokens = [_tokens(attributes, keys, problems, rejections, limits.max_tokens) if keys else 0 for keys in plan.tokens]
    input_tokens, output_tokens, cache_read, cache_write, reasoning = tokens
    if not reasoning and semconv.RAW_USAGE in attributes:
        reasoning = _raw_reasoning(attributes[semconv.RAW_USAGE], limits.max_tokens)
    if cache_read + cache_write and (
        labels.cache_scope or (labels.cache_provider and cache_read + cache_write > input_tokens)
    ):
        # The provider's own input count leaves the cache out (Anthropic's, Bedrock's), and this
        # instrumentation passed it through; the GenAI conventions (and genai-prices) count it in.
        input_tokens += cache_read + cache_write
    if cache_read + cache_write > input_tokens:
        problems.append("cache tokens exceed input tokens")
    if reasoning > output_tokens:
        problems.append("reasoning tokens exceed output tokens")
    reported_cost = _cost(attributes, rejections, limits.max_cost_usd, plan.reported_cost)
    if reported_cost == 0 and (input_tokens or output_tokens):
        # Tokens were used and the provider bills them: an instrumentation writing 0 is telling us
        # it could not price the model (OpenLIT does so for every model it does not know), not that
        # the call was free. Only a real report feeds the drift.
        reported_cost = None
    return _new_call(
        trace_id,
        span_id,
        parent_span_id,
        labels.provider,  # provider
        labels.request_model,  # request_model
        labels.response_model,  # response_model
        labels.operation,  # operation
        start_ns,
        end_ns,
        input_tokens,
        output_tokens,
        cache_read,  # cache_read_tokens
        cache_write,  # cache_write_tokens
        reasoning,  # reasoning_tokens
        plan.has_usage,  # has_usage
        classify_error(attributes, status_message, exception_events) if error else None,  # error_class
        labels.agent,  # agent
        labels.service,  # service
        labels.conversation,  # conversation
        labels.user,  # user
        labels.team,  # team
        labels.environment,  # environment
        reported_cost,  # reported_cost_usd
        _capped(_text(attributes.get(semconv.DECISION_ID))),  # decision_id
        _response_id(attributes, plan.response_id),  # response_id
        labels.instrumentation,  # instrumentation
        prompt_digest(_first(attributes, plan.prompt)),  # prompt_hash
        (*problems, *labels.problems) if labels.problems else tuple(problems),  # problems
        "; ".join(rejections) if rejections else None,  # rejected
    )


MEMO_ENTRIES: Final = 256
"""Label sets a `call_from_parts` memo keeps (the OTLP decoder keeps one per resource of a request)."""
_MEMO_TEXT: Final = 256
"""A span with a longer value (or more attributes than `_MEMO_KEYS`) is read without the memo."""
_MEMO_KEYS: Final = 32
_VARYING: Final = frozenset(
    semconv.INPUT_TOKENS
    + semconv.OUTPUT_TOKENS
    + semconv.CACHE_READ_TOKENS
    + semconv.CACHE_WRITE_TOKENS
    + semconv.REASONING_TOKENS
    + (semconv.RAW_USAGE, semconv.DECISION_ID)
    + semconv.REPORTED_COST
    + semconv.RESPONSE_ID
    + semconv.PROMPT
)
"""Keys whose values differ from call to call: read for each span, never part of a memo's key."""
_UNKNOWN: Final = object()


def _memo_key(attributes: Mapping[str, Any], plan: _Plan, instrumentation: str | None) -> tuple[object, ...] | None:
    """What `_labels` reads of a span with usage that did not fail: its plan (which names its other
    attributes' keys, `_Plan.fixed`), their values (a value not a string after its type, as
    `True == 1 == 1.0`; a type is never a string, so the parts read one way) and its instrumentation.
    `None` (no memo) for a value that is not a short string, bytes or number, or too many keys."""
    names = plan.fixed
    if names is None or (instrumentation is not None and len(instrumentation) > _MEMO_TEXT):
        return None
    parts: list[object] = [plan, instrumentation]
    append = parts.append
    for name in names:
        value = attributes[name]
        kind = type(value)
        if kind is str:
            if len(value) > _MEMO_TEXT:
                return None
        elif kind is int or kind is float or kind is bool or kind is bytes:
            if kind is bytes and len(value) > _MEMO_TEXT:
                return None
            append(kind)
        else:
            return None
        append(value)
    return tuple(parts)


class _Labels:
    """What a call's attributes, resource and instrumentation say besides its numbers: who made it,
    with which model; the same for every span of a kind, so the OTLP decoder reads it once per batch."""

    __slots__ = (
        "agent",
        "cache_provider",
        "cache_scope",
        "conversation",
        "environment",
        "instrumentation",
        "operation",
        "problems",
        "provider",
        "request_model",
        "response_model",
        "service",
        "team",
        "user",
    )

    def __init__(
        self,
        attributes: Mapping[str, Any],
        plan: _Plan,
        *,
        resource: Mapping[str, Any],
        instrumentation: str | None,
        operation: str | None,
        oi_kind: str | None,
    ) -> None:
        problems: list[str] = []
        provider = normalize_provider(_first(attributes, plan.provider))
        self.cache_scope = instrumentation in semconv.INPUT_WITHOUT_CACHE_SCOPES
        self.cache_provider = provider in semconv.INPUT_WITHOUT_CACHE_PROVIDERS
        request_model = _name(attributes, plan.request_model, problems) or _invoked_model(attributes)
        decided = attributes.get(semconv.DECISION_MODEL)
        if isinstance(decided, str) and ":" in decided and len(decided) <= 2 * _MAX_NAME and _utf8(decided):
            # A degrade or a route sent the request elsewhere; the instrumentation's span still names
            # the model the agent was built with, so a failed call would be booked to the wrong one.
            decided_provider, _, decided_model = decided.partition(":")
            provider, request_model = normalize_provider(decided_provider), decided_model[:_MAX_NAME] or request_model
        self.provider = provider
        self.request_model = request_model
        self.response_model = _name(attributes, plan.response_model, problems)
        self.problems = tuple(problems)
        self.operation = _capped(operation) or ("embeddings" if oi_kind == "EMBEDDING" else "chat")
        self.agent = _label(attributes, plan.agent)
        self.service = _capped(_text(resource.get(semconv.RESOURCE_SERVICE)))
        self.conversation = _label(attributes, plan.conversation)
        self.user = _label(attributes, plan.user)
        self.team = _label(attributes, plan.team) or _label(resource, semconv.RESOURCE_TEAM)
        self.environment = _label(attributes, plan.environment) or _label(resource, semconv.RESOURCE_ENVIRONMENT)
        self.instrumentation = _capped(instrumentation) if instrumentation else None


def _labels(
    attributes: Mapping[str, Any],
    plan: _Plan,
    resource: Mapping[str, Any],
    instrumentation: str | None,
    error: bool,
) -> _Labels | None:
    """The call's `_Labels`, or `None` when the span is not one model call."""
    if attributes.get(semconv.LOGFIRE_SPAN_TYPE) == semconv.LOGFIRE_PENDING:
        return None
    if attributes.get(semconv.DECISION_ACTION) == "deny":
        return None  # our guard stopped it: no model was called, nothing was spent, nothing failed
    operation = _text(_first(attributes, plan.operation))
    if operation in semconv.NOT_CALL_OPERATIONS:
        return None
    # A kind that is not a string (the SDK keeps maps and lists) names no kind: it is ignored.
    oi_kind = attributes.get(semconv.OPENINFERENCE_KIND)
    if not isinstance(oi_kind, str):
        oi_kind = None
    elif oi_kind not in semconv.OPENINFERENCE_CALL_KINDS:
        return None
    tl_kind = attributes.get(semconv.TRACELOOP_KIND)
    if isinstance(tl_kind, str) and tl_kind not in {"llm", "embedding"}:
        return None

    if not plan.has_usage:
        if plan.aggregated:
            return None
        if error:
            # A failed call carries no usage, and many instrumentations write no operation name on
            # it: a model or provider in any convention (or an OpenInference LLM kind) names it.
            if operation not in semconv.CALL_OPERATIONS and oi_kind is None and not _names_call(attributes):
                return None
        elif _response_id(attributes, plan.response_id) is None:
            # Success without usage and without the provider's response id is half a call whose
            # usage another span reports (logfire's request span of a stream, which reports it on a
            # log), or a stream given up before the provider answered: counting it would count the
            # request twice. With an id, the provider answered: a call of unknown spend (`weak`).
            return None
        elif operation not in semconv.CALL_OPERATIONS and oi_kind is None:
            return None  # a call without usage is still a call when it says it is one (cancelled streams)
        elif _first(attributes, semconv.REQUEST_MODEL + semconv.RESPONSE_MODEL) is None and not _invoked_model(
            attributes
        ):
            return None
    return _Labels(
        attributes, plan, resource=resource, instrumentation=instrumentation, operation=operation, oi_kind=oi_kind
    )


class _Plan:
    """Which keys of each convention a span's attributes hold, in the order they are tried: what
    `call_from_parts` reads, worked out once per set of keys (spans of one instrumentation share it).
    Every reader takes the first of its keys that the attributes hold (or the first not `None`):
    trying only those held reads what trying them all would."""

    __slots__ = (
        "agent",
        "aggregated",
        "conversation",
        "environment",
        "fixed",
        "has_usage",
        "operation",
        "prompt",
        "provider",
        "reported_cost",
        "request_model",
        "response_id",
        "response_model",
        "team",
        "tokens",
        "user",
    )

    def __init__(self, keys: tuple[str, ...]) -> None:
        held = frozenset(keys)

        def present(names: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(name for name in names if name in held)

        self.operation = present(semconv.OPERATION)
        self.has_usage = not held.isdisjoint(semconv.USAGE_KEYS)
        self.aggregated = any(key.startswith(semconv.AGGREGATED_PREFIX) for key in keys)
        self.response_id = present(semconv.RESPONSE_ID)
        self.tokens = tuple(
            present(names)
            for names in (
                semconv.INPUT_TOKENS,
                semconv.OUTPUT_TOKENS,
                semconv.CACHE_READ_TOKENS,
                semconv.CACHE_WRITE_TOKENS,
                semconv.REASONING_TOKENS,
            )
        )
        self.provider = present(semconv.PROVIDER)
        self.request_model = present(semconv.REQUEST_MODEL)
        self.response_model = present(semconv.RESPONSE_MODEL)
        self.reported_cost = present(semconv.REPORTED_COST)
        self.agent = present(semconv.AGENT)
        self.conversation = present(semconv.CONVERSATION)
        self.user = present(semconv.USER)
        self.team = present(semconv.TEAM)
        self.environment = present(semconv.ENVIRONMENT)
        self.prompt = present(semconv.PROMPT)
        fixed = tuple(key for key in keys if key not in _VARYING)
        self.fixed = fixed if len(keys) <= _MEMO_KEYS and all(len(key) <= _MEMO_TEXT for key in fixed) else None
        """The keys whose values `_memo_key` keys a memo by (those of `_labels`), `None` for no memo."""


_PLANS: Final[dict[tuple[str, ...], _Plan]] = {}
_PLANS_LIMIT: Final = 4096
"""Key sets remembered (one per instrumentation and span shape in use); then forgotten all at once."""


def _plan_of(attributes: Mapping[str, Any]) -> _Plan:
    keys = tuple(attributes)
    plan = _PLANS.get(keys)
    if plan is None:
        if len(_PLANS) >= _PLANS_LIMIT:
            _PLANS.clear()
        plan = _PLANS[keys] = _Plan(keys)
    return plan


def prompt_digest(prompt: object) -> str | None:
    """A stable digest of a prompt: the same conversation, however it is spaced, gives the same digest.

    Messages in the GenAI JSON form are reduced to their roles and texts first, so ids and
    timestamps in the payload do not make identical prompts look different.
    """
    if not isinstance(prompt, str) or not prompt:
        return None
    text = prompt
    if prompt[:1] in "[{":
        try:
            text = _message_text(json.loads(prompt))
        except (ValueError, RecursionError):
            text = prompt
    normalized = " ".join(text.split())
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _message_text(value: object) -> str:
    """The roles and texts of `json.loads` output (exact `str`, `list` and `dict`: compared by type, a
    little faster than `isinstance` on the prompt of every call)."""
    if type(value) is str:
        return value
    if type(value) is list:
        return "\n".join([_message_text(item) for item in value])
    if type(value) is dict:
        role = value.get("role")
        parts = [f"{role}:"] if type(role) is str else []
        for key in _MESSAGE_KEYS:  # a loop: a comprehension's frame costs half as much again here
            if key in value and (text := _message_text(value[key])):
                parts.append(text)  # noqa: PERF401
        return " ".join(parts)
    return ""


_MESSAGE_KEYS: Final = ("content", "parts", "text")


def normalize_provider(value: object) -> str:
    """The genai-prices provider id a user writes in `match: {provider: ...}`, from any convention's spelling.

    Exact spellings first (`gcp.vertex_ai` -> `google`, `az.ai.openai` -> `azure`), then the
    `<provider>.<api>` form by its longest known prefix (`openai.chat` -> `openai`,
    `google.vertex.chat` -> `google`), then genai-prices' own provider matching (`Amazon` -> `aws`).
    A name none of them knows is kept, lowercased.
    """
    text = _text(value)
    if not text or len(text) > _MAX_NAME or not _utf8(text):
        return "unknown"
    lowered = text.strip().lower()
    found = semconv.PROVIDER_ALIASES.get(lowered)
    return found if found is not None else _provider_id(lowered)


@lru_cache(maxsize=4096)
def _provider_id(lowered: str) -> str:
    aliases = semconv.PROVIDER_ALIASES
    parts = lowered.split(".")
    for end in range(len(parts) - 1, 0, -1):
        found = aliases.get(".".join(parts[:end]))
        if found is not None:
            return found
    provider = find_provider_by_id(_PROVIDERS, lowered)
    return provider.id if provider is not None else lowered


_PROVIDERS: Final = get_snapshot().providers
_PROVIDER_IDS: Final = frozenset(provider.id for provider in _PROVIDERS)


def _bare_failure(name: str | None, instrumentation: str | None) -> Mapping[str, Any]:
    """A failed span with no attributes at all (OpenLIT ends a failed Anthropic call's span so): a call
    when the GenAI conventions' span name (`chat claude-sonnet-4-5`) names its operation and model
    and its instrumentation scope is named after its provider (`openlit.instrumentation.anthropic`).
    Its attributes as they would have read; empty (not a call) otherwise."""
    if not name or not instrumentation or len(name) > 2 * _MAX_NAME or len(instrumentation) > _MAX_NAME:
        return {}
    operation, _, model = name.partition(" ")
    if operation not in semconv.CALL_OPERATIONS or not model or " " in model:
        return {}
    provider = instrumentation.rpartition(".")[2].lower()
    if semconv.PROVIDER_ALIASES.get(provider) is None and provider not in _PROVIDER_IDS:
        return {}
    return {
        semconv.OPERATION[0]: operation,
        semconv.REQUEST_MODEL[0]: model,
        semconv.PROVIDER[0]: provider,
    }


def _names_call(attributes: Mapping[str, Any]) -> bool:
    """Whether a model or provider key of any convention is on the span (a failed call's only sign)."""
    return any(attributes.get(key) is not None for key in semconv.CALL_NAMES)


_MAX_PARAMETERS: Final = 64 * 1024
"""`llm.invocation_parameters` longer than this is not parsed (it is read only for its model)."""


def _invoked_model(attributes: Mapping[str, Any]) -> str | None:
    """The `model` in OpenInference's `llm.invocation_parameters` JSON, for spans that name it nowhere else."""
    text = attributes.get(semconv.INVOCATION_PARAMETERS)
    if not isinstance(text, str) or not text.startswith("{") or len(text) > _MAX_PARAMETERS:
        return None
    try:
        parameters = json.loads(text)
    except (ValueError, RecursionError):
        return None
    model = parameters.get("model") if isinstance(parameters, dict) else None
    if not isinstance(model, str):
        return None
    model = model.strip()
    return model if model and len(model) <= _MAX_NAME and model.isprintable() and _utf8(model) else None


_RAW_REASONING: Final = (
    ("completion_tokens_details", "reasoning_tokens"),  # OpenAI chat completions
    ("output_tokens_details", "reasoning_tokens"),  # OpenAI responses
    ("output_tokens_details", "thinking_tokens"),  # Anthropic
    ("thoughtsTokenCount",),  # Gemini
    ("thoughts_token_count",),
)
_MAX_RAW_USAGE: Final = 16 * 1024


def _raw_reasoning(raw: object, maximum: int) -> int:
    """Reasoning tokens from the provider's own usage object, as logfire records it (`gen_ai.usage.raw`),
    for spans that name them nowhere else. Anything unreadable is 0: the tokens stay in the output."""
    if isinstance(raw, str) and raw.startswith("{") and len(raw) <= _MAX_RAW_USAGE:
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return 0
    if not isinstance(raw, dict):
        return 0
    for path in _RAW_REASONING:
        value: object = raw
        for name in path:
            value = value.get(name) if isinstance(value, dict) else None
        if type(value) is int and 0 < value <= maximum:
            return value
    return 0


def _response_id(attributes: Mapping[str, Any], keys: tuple[str, ...] = semconv.RESPONSE_ID) -> str | None:
    """The provider's response id: a printable string of at most `MAX_NAME_LENGTH` characters, else none."""
    value = _first(attributes, keys)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and len(value) <= _MAX_NAME and value.isprintable() and _utf8(value) else None


_STATUS_IN_TEXT = re.compile(r"(?:status[_ ]code[:= ]+|Error code: |\b)([45]\d\d)\b")
_NAME_CLASSES: tuple[tuple[re.Pattern[str], ErrorClass], ...] = (
    (
        re.compile(r"rate[ _-]?limit|too ?many ?requests|throttl|resource_?exhausted", re.I),
        ErrorClass.RATE_LIMIT,
    ),
    (re.compile(r"timeout|timed ?out|deadline", re.I), ErrorClass.TIMEOUT),
    (re.compile(r"connect|network|remoteprotocol|readerror|unreachable", re.I), ErrorClass.CONNECTION),
    (
        re.compile(
            r"internal ?server|service ?unavailable|overloaded|bad ?gateway|server ?error|server_error"
            r"|server had an error",
            re.I,
        ),
        ErrorClass.SERVER_ERROR,
    ),
    (
        re.compile(
            r"badrequest|authentication|permissiondenied|notfound|unprocessable|conflict|invalidrequest"
            r"|invalid_request|contentfilter|usererror|validation",
            re.I,
        ),
        ErrorClass.CLIENT_ERROR,
    ),
)


def classify_error(
    attributes: Mapping[str, Any], status_message: str | None, exception_events: Iterable[Mapping[str, Any]]
) -> ErrorClass:
    """Why a failed call failed: from the HTTP status, `error.type`, or the exception recorded."""
    status = _first(attributes, semconv.HTTP_STATUS)
    if isinstance(status, int) and not isinstance(status, bool):
        return _class_of_status(status) or ErrorClass.OTHER
    texts: list[str] = []
    error_type = attributes.get(semconv.ERROR_TYPE)
    if isinstance(error_type, str):
        texts.append(error_type)
    for event in exception_events:
        for key in (semconv.EXCEPTION_TYPE, semconv.EXCEPTION_MESSAGE):
            value = event.get(key)
            if isinstance(value, str):
                texts.append(value[:500])
    if status_message:
        texts.append(status_message[:500])
    for text in texts:
        for pattern, error_class in _NAME_CLASSES:
            if pattern.search(text):
                return error_class
    for text in texts:
        match = _STATUS_IN_TEXT.search(text)
        if match and (found := _class_of_status(int(match.group(1)))):
            return found
    return ErrorClass.OTHER


def _class_of_status(status: int) -> ErrorClass | None:
    if status == 429:
        return ErrorClass.RATE_LIMIT
    if status in (408, 504):
        return ErrorClass.TIMEOUT
    if 500 <= status <= 599:
        return ErrorClass.SERVER_ERROR
    if 400 <= status <= 499:
        return ErrorClass.CLIENT_ERROR
    return None


def _first(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return value
    return None


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    return None


def _capped(text: str | None) -> str | None:
    # A lone surrogate (an SDK attribute may carry one) cannot be stored in SQLite or Redis.
    return text if text is None or (len(text) <= _MAX_NAME and _utf8(text)) else None


def _tokens(
    attributes: Mapping[str, Any], keys: tuple[str, ...], problems: list[str], rejections: list[str], maximum: int
) -> int:
    for key in keys:
        if key not in attributes:
            continue
        value = attributes[key]
        try:
            return read_count(value, name=key, maximum=maximum)
        except OutOfBounds as exc:
            rejections.append(str(exc))
        except InvalidNumber as exc:
            problems.append(str(exc))
        return 0
    return 0


def _name(attributes: Mapping[str, Any], keys: tuple[str, ...], problems: list[str]) -> str | None:
    for key in keys:
        if key not in attributes:
            continue
        value = attributes[key]
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"{key} is not UTF-8")
                return None
        if not isinstance(value, str):
            problems.append(f"{key} is not a string")
            return None
        cleaned = value.strip()
        if not cleaned or len(cleaned) > _MAX_NAME or not cleaned.isprintable() or not _utf8(cleaned):
            problems.append(f"{key} is not a usable model name")
            return None
        return cleaned
    return None


def _label(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    value = _first(attributes, keys)
    if isinstance(value, str) and value and len(value) <= _MAX_NAME and _utf8(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and -_MAX_INT_LABEL < value < _MAX_INT_LABEL:
        return str(value)
    return None


def _utf8(text: str) -> bool:
    if text.isascii():  # the usual name, and no copy to tell (a lone surrogate is never ASCII)
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cost(
    attributes: Mapping[str, Any],
    rejections: list[str],
    maximum: Decimal,
    keys: tuple[str, ...] = semconv.REPORTED_COST,
) -> float | None:
    """The cost the span reports (for drift only): a bounded number, else `None`; out of range, a rejection."""
    for key in keys:
        value = attributes.get(key)
        if value is None:
            continue
        if type(value) is float and _SMALLEST_PLAIN_COST <= value <= _largest_plain_cost(maximum):
            return value  # what `read_decimal` would read, converted back (see `_largest_plain_cost`)
        if not isinstance(value, int | float | str):
            return None  # a list or bytes is no cost; it is not ours to refuse the span for
        try:
            return float(read_decimal(value, name=key, maximum=maximum))
        except OutOfBounds as exc:
            rejections.append(str(exc))
        except InvalidNumber:
            pass
        return None
    return None


_SMALLEST_PLAIN_COST: Final = 1e-13
"""From here up a float's shortest text has at most 30 decimal places: `read_decimal` reads it unrounded."""


@lru_cache(maxsize=8)
def _largest_plain_cost(maximum: Decimal) -> float:
    """The largest float whose value and shortest text are both at most `maximum`.

    A float `v` from `_SMALLEST_PLAIN_COST` to this is in range for `read_decimal`, which reads it as
    `Decimal(repr(v))` without rounding; `float()` of that is `v` again (the text round-trips), so
    `_cost` returns `v` itself, without the `Decimal` work. The text's order is the floats' order.
    """
    bound = float(maximum)
    while bound > 0 and (Decimal(bound) > maximum or Decimal(repr(bound)) > maximum):
        bound = math.nextafter(bound, 0.0)
    return bound
