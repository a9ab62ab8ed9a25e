"""`LLMCall`: one model call, normalized from whatever instrumentation described it.

`extract_call(span)` reads an SDK `ReadableSpan`; `call_from_parts(...)` reads the same
fields from anything else (the OTLP decoder uses it), so both front doors agree exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

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

__all__ = ("ErrorClass", "LLMCall", "call_from_parts", "extract_call", "is_genai_span", "prompt_digest")

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
    prompt_hash: str | None = None
    """A digest of the normalized prompt when the span captured it; the text is never kept."""
    problems: tuple[str, ...] = ()
    """Attributes that were present but unusable; such a call is counted but never priced."""
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
    if not is_genai_span(attributes):
        return None
    context = span.get_span_context()
    if context is None:
        return None
    error = span.status.status_code is StatusCode.ERROR
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
    )


def call_from_parts(
    attributes: Mapping[str, Any],
    *,
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
) -> LLMCall | None:
    """Build an `LLMCall` from span parts, or `None` when the span is not one model call.

    Numbers are read with `bounds.read_count`/`read_decimal`: one that is not a number makes the
    call `problems` (counted, not priced); one outside `limits` makes it `rejected` (not applied).
    Names longer than `bounds.MAX_NAME_LENGTH` are treated as absent.
    """
    if attributes.get(semconv.LOGFIRE_SPAN_TYPE) == semconv.LOGFIRE_PENDING:
        return None
    if attributes.get(semconv.DECISION_ACTION) == "deny":
        return None  # our guard stopped it: no model was called, nothing was spent, nothing failed
    operation = _text(_first(attributes, semconv.OPERATION))
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

    has_usage = any(key in attributes for key in semconv.USAGE_KEYS)
    if not has_usage:
        # A call without usage is still a call when it says it is one (failed calls carry none).
        if any(key.startswith(semconv.AGGREGATED_PREFIX) for key in attributes):
            return None
        is_call = operation in semconv.CALL_OPERATIONS or oi_kind in semconv.OPENINFERENCE_CALL_KINDS
        if not is_call or _first(attributes, semconv.REQUEST_MODEL + semconv.RESPONSE_MODEL) is None:
            return None

    problems: list[str] = []
    rejections: list[str] = []
    tokens = [
        _tokens(attributes, keys, problems, rejections, limits.max_tokens)
        for keys in (
            semconv.INPUT_TOKENS,
            semconv.OUTPUT_TOKENS,
            semconv.CACHE_READ_TOKENS,
            semconv.CACHE_WRITE_TOKENS,
            semconv.REASONING_TOKENS,
        )
    ]
    input_tokens, output_tokens, cache_read, cache_write, reasoning = tokens
    if cache_read + cache_write > input_tokens:
        problems.append("cache tokens exceed input tokens")
    if reasoning > output_tokens:
        problems.append("reasoning tokens exceed output tokens")

    provider = normalize_provider(_first(attributes, semconv.PROVIDER))
    request_model = _name(attributes, semconv.REQUEST_MODEL, problems)
    decided = attributes.get(semconv.DECISION_MODEL)
    if isinstance(decided, str) and ":" in decided and len(decided) <= 2 * _MAX_NAME and _utf8(decided):
        # A degrade or a route sent the request elsewhere; the instrumentation's span still names
        # the model the agent was built with, so a failed call would be booked to the wrong one.
        decided_provider, _, decided_model = decided.partition(":")
        provider, request_model = normalize_provider(decided_provider), decided_model[:_MAX_NAME] or request_model
    reported_cost = _cost(attributes, rejections, limits.max_cost_usd)
    return LLMCall(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id,
        provider=provider,
        request_model=request_model,
        response_model=_name(attributes, semconv.RESPONSE_MODEL, problems),
        operation=_capped(operation) or ("embeddings" if oi_kind == "EMBEDDING" else "chat"),
        start_ns=start_ns,
        end_ns=end_ns,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        has_usage=has_usage,
        error_class=classify_error(attributes, status_message, exception_events) if error else None,
        agent=_label(attributes, semconv.AGENT),
        service=_capped(_text(resource.get(semconv.RESOURCE_SERVICE))),
        conversation=_label(attributes, semconv.CONVERSATION),
        user=_label(attributes, semconv.USER),
        team=_label(attributes, semconv.TEAM) or _label(resource, semconv.RESOURCE_TEAM),
        environment=_label(attributes, semconv.ENVIRONMENT) or _label(resource, semconv.RESOURCE_ENVIRONMENT),
        reported_cost_usd=reported_cost,
        decision_id=_capped(_text(attributes.get(semconv.DECISION_ID))),
        prompt_hash=prompt_digest(_first(attributes, semconv.PROMPT)),
        problems=tuple(problems),
        rejected="; ".join(rejections) if rejections else None,
    )


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
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_message_text(item) for item in value)
    if isinstance(value, dict):
        parts = [f"{value['role']}:" if isinstance(value.get("role"), str) else ""]
        parts.extend(_message_text(value[key]) for key in ("content", "parts", "text") if key in value)
        return " ".join(p for p in parts if p)
    return ""


def normalize_provider(value: object) -> str:
    """Map the conventions' provider spellings to one name (`gcp.vertex_ai` -> `google`)."""
    text = _text(value)
    if not text or len(text) > _MAX_NAME or not _utf8(text):
        return "unknown"
    lowered = text.strip().lower()
    return semconv.PROVIDER_ALIASES.get(lowered, lowered)


_STATUS_IN_TEXT = re.compile(r"(?:status[_ ]code[:= ]+|Error code: |\b)([45]\d\d)\b")
_NAME_CLASSES: tuple[tuple[re.Pattern[str], ErrorClass], ...] = (
    (re.compile(r"ratelimit|rate_limit|too ?many ?requests|throttl|resourceexhausted", re.I), ErrorClass.RATE_LIMIT),
    (re.compile(r"timeout|timed ?out|deadline", re.I), ErrorClass.TIMEOUT),
    (re.compile(r"connect|network|remoteprotocol|readerror|unreachable", re.I), ErrorClass.CONNECTION),
    (
        re.compile(r"internalserver|serviceunavailable|overloaded|badgateway|servererror|server_error", re.I),
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
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cost(attributes: Mapping[str, Any], rejections: list[str], maximum: Decimal) -> float | None:
    """The cost the span reports (for drift only): a bounded number, else `None`; out of range, a rejection."""
    for key in semconv.REPORTED_COST:
        value = attributes.get(key)
        if value is None:
            continue
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
