"""extract_call across conventions, and hostile attributes."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from otel_puppy import calls, semconv
from otel_puppy.calls import ErrorClass, LLMCall, _new_call, call_from_parts, extract_call
from otel_puppy.testing import make_span


def call(attributes: dict[str, object], **kwargs: object) -> LLMCall:
    result = extract_call(make_span(attributes, **kwargs))  # type: ignore[arg-type]
    assert result is not None
    return result


def test_current_genai_conventions() -> None:
    c = call(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "gcp.vertex_ai",
            "gen_ai.request.model": "gemini-2.5-pro",
            "gen_ai.response.model": "gemini-2.5-pro-001",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 400,
            "gen_ai.usage.cache_read.input_tokens": 600,
            "gen_ai.usage.cache_creation.input_tokens": 100,
            "gen_ai.usage.reasoning.output_tokens": 250,
            "gen_ai.agent.name": "research",
            "gen_ai.conversation.id": "conv-9",
            "user.id": "u-1",
            "otel_puppy.team": "growth",
        },
        resource={"service.name": "svc", "deployment.environment.name": "prod"},
        duration_s=2.5,
    )
    assert (c.provider, c.request_model, c.response_model, c.model, c.operation) == (
        "google",
        "gemini-2.5-pro",
        "gemini-2.5-pro-001",
        "gemini-2.5-pro-001",
        "chat",
    )
    assert (c.input_tokens, c.output_tokens, c.cache_read_tokens, c.cache_write_tokens, c.reasoning_tokens) == (
        1000,
        400,
        600,
        100,
        250,
    )
    assert (c.agent, c.conversation, c.user, c.team, c.service, c.environment) == (
        "research",
        "conv-9",
        "u-1",
        "growth",
        "svc",
        "prod",
    )
    assert c.duration_s == 2.5
    assert c.ok
    assert c.problems == ()


def test_legacy_conventions_and_openllmetry() -> None:
    c = call(
        {
            "gen_ai.system": "OpenAI",
            "llm.request.type": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 80,
            "gen_ai.usage.completion_tokens": 15,
            "gen_ai.usage.cache_read_input_tokens": 40,
            "llm.usage.total_tokens": 95,
            "traceloop.span.kind": "llm",
        }
    )
    assert (c.provider, c.model, c.operation) == ("openai", "gpt-4o-mini", "chat")
    assert (c.input_tokens, c.output_tokens, c.cache_read_tokens) == (80, 15, 40)


def test_openinference() -> None:
    c = call(
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "claude-3-5-haiku-20241022",
            "llm.provider": "anthropic",
            "llm.token_count.prompt": 1000,
            "llm.token_count.completion": 500,
            "llm.token_count.prompt_details.cache_read": 700,
            "llm.token_count.prompt_details.cache_write": 100,
            "llm.token_count.completion_details.reasoning": 200,
            "session.id": "sess-456",
            "user.id": "user-123",
            "llm.cost.total": 0.0049,
        }
    )
    assert (c.provider, c.model, c.operation, c.conversation, c.user) == (
        "anthropic",
        "claude-3-5-haiku-20241022",
        "chat",
        "sess-456",
        "user-123",
    )
    assert (c.cache_read_tokens, c.cache_write_tokens, c.reasoning_tokens) == (700, 100, 200)
    assert c.reported_cost_usd == 0.0049


@pytest.mark.parametrize(
    "attributes",
    [
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.aggregated_usage.input_tokens": 10},
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"},
        {"openinference.span.kind": "AGENT", "llm.token_count.prompt": 5, "llm.token_count.completion": 1},
        {"traceloop.span.kind": "workflow", "gen_ai.usage.prompt_tokens": 5},
        {
            "logfire.span_type": "pending_span",
            "gen_ai.usage.input_tokens": 5,
            "gen_ai.request.model": "gpt-4o",
        },
        {"gen_ai.system": "openai"},  # GenAI-looking, but neither usage nor a call operation
        {"http.method": "GET"},
    ],
)
def test_spans_that_are_not_calls(attributes: dict[str, object]) -> None:
    assert extract_call(make_span(attributes)) is None


def test_failed_call_without_usage_is_still_a_call() -> None:
    c = call(
        {"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5"},
        error=True,
        exception_type="anthropic.RateLimitError",
    )
    assert (c.has_usage, c.error_class, c.ok) == (False, ErrorClass.RATE_LIMIT, False)


@pytest.mark.parametrize(
    ("attributes", "exception_type", "expected"),
    [
        ({"http.response.status_code": 429}, None, ErrorClass.RATE_LIMIT),
        ({"http.response.status_code": 503}, None, ErrorClass.SERVER_ERROR),
        ({"http.response.status_code": 401}, None, ErrorClass.CLIENT_ERROR),
        ({"http.response.status_code": 504}, None, ErrorClass.TIMEOUT),
        ({"error.type": "timeout"}, None, ErrorClass.TIMEOUT),
        ({}, "openai.APITimeoutError", ErrorClass.TIMEOUT),
        ({}, "openai.APIConnectionError", ErrorClass.CONNECTION),
        ({}, "httpx.ConnectError", ErrorClass.CONNECTION),
        ({}, "openai.InternalServerError", ErrorClass.SERVER_ERROR),
        ({}, "anthropic.OverloadedError", ErrorClass.SERVER_ERROR),
        ({}, "openai.BadRequestError", ErrorClass.CLIENT_ERROR),
        ({}, "openai.AuthenticationError", ErrorClass.CLIENT_ERROR),
        ({}, "pydantic_ai.exceptions.ModelHTTPError", ErrorClass.OTHER),
        ({}, "ValueError", ErrorClass.OTHER),
    ],
)
def test_error_classes(attributes: dict[str, object], exception_type: str | None, expected: ErrorClass) -> None:
    c = call(
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", **attributes},
        error=True,
        exception_type=exception_type,
    )
    assert c.error_class is expected


BASE = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        (
            {"gen_ai.usage.input_tokens": math.nan, "gen_ai.usage.output_tokens": 1},
            "gen_ai.usage.input_tokens is not a number",
        ),
        (
            {"gen_ai.usage.input_tokens": "twelve", "gen_ai.usage.output_tokens": 1},
            "gen_ai.usage.input_tokens is not a number",
        ),
        (
            {"gen_ai.usage.input_tokens": "1" * 65, "gen_ai.usage.output_tokens": 1},
            "gen_ai.usage.input_tokens is not a number of at most 64 characters",
        ),
        (
            {"gen_ai.usage.input_tokens": True, "gen_ai.usage.output_tokens": 1},
            "gen_ai.usage.input_tokens is not a number",
        ),
        (
            {"gen_ai.usage.input_tokens": 1.5, "gen_ai.usage.output_tokens": 1},
            "gen_ai.usage.input_tokens is not a whole number",
        ),
        (
            {"gen_ai.usage.input_tokens": [1, 2], "gen_ai.usage.output_tokens": 1},
            "gen_ai.usage.input_tokens is not a number",
        ),
        (
            {
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.output_tokens": 1,
                "gen_ai.usage.cache_read.input_tokens": 11,
            },
            "cache tokens exceed input tokens",
        ),
        (
            {"gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 1, "gen_ai.response.model": ""},
            "gen_ai.response.model is not a usable model name",
        ),
        (
            {"gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 1, "gen_ai.response.model": "gpt\udcff"},
            "gen_ai.response.model is not a usable model name",
        ),
        (
            {"gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 1, "gen_ai.response.model": 42},
            "gen_ai.response.model is not a string",
        ),
    ],
)
def test_hostile_attributes_become_problems_not_exceptions(attributes: dict[str, object], problem: str) -> None:
    c = extract_call(make_span({**BASE, **attributes}))
    assert c is not None
    assert problem in c.problems
    assert c.rejected is None


MAX = "(allowed: 0 to 100000000)"


@pytest.mark.parametrize(
    ("value", "rejected"),
    [
        (-5, f"gen_ai.usage.input_tokens is out of range: -5 {MAX}"),
        (-1.0, f"gen_ai.usage.input_tokens is out of range: -1.0 {MAX}"),
        (math.inf, f"gen_ai.usage.input_tokens is out of range: inf {MAX}"),
        (1e308, f"gen_ai.usage.input_tokens is out of range: 1e+308 {MAX}"),
        (100_000_001, f"gen_ai.usage.input_tokens is out of range: 100000001 {MAX}"),
        (10**15, f"gen_ai.usage.input_tokens is out of range: 1000000000000000 {MAX}"),
        pytest.param(
            10**100_000, f"gen_ai.usage.input_tokens is out of range: an integer of 332193 bits {MAX}", id="10**100000"
        ),
        ("1e999990", f"gen_ai.usage.input_tokens is out of range: 1e999990 {MAX}"),
        ("-1e-999999999", f"gen_ai.usage.input_tokens is out of range: -1e-999999999 {MAX}"),
    ],
)
def test_token_counts_out_of_bounds_reject_the_span(value: object, rejected: str) -> None:
    c = call({**BASE, "gen_ai.usage.input_tokens": value, "gen_ai.usage.output_tokens": 1})
    assert (c.rejected, c.problems, c.input_tokens) == (rejected, (), 0)


@pytest.mark.parametrize(
    ("value", "tokens"), [(100_000_000, 100_000_000), (12.0, 12), ("12", 12), (" 1.2e3 ", 1200), ("0e999999999", 0)]
)
def test_token_counts_at_the_bound_or_as_text_are_read(value: object, tokens: int) -> None:
    c = call({**BASE, "gen_ai.usage.input_tokens": value, "gen_ai.usage.output_tokens": 1})
    assert (c.input_tokens, c.rejected, c.problems) == (tokens, None, ())


def test_token_bounds_come_from_the_settings() -> None:
    from otel_puppy.bounds import CallLimits

    limits = CallLimits(max_tokens=1000)
    span = make_span({**BASE, "gen_ai.usage.input_tokens": 1001, "gen_ai.usage.output_tokens": 1})
    c = extract_call(span, limits)
    assert c is not None
    assert c.rejected == "gen_ai.usage.input_tokens is out of range: 1001 (allowed: 0 to 1000)"


@pytest.mark.parametrize(
    ("value", "reported", "rejected"),
    [
        (0.0123, 0.0123, None),
        ("0.5", 0.5, None),
        (100_000, 100_000.0, None),
        ("not a cost", None, None),
        (True, None, None),
        (-0.01, None, "operation.cost is out of range: -0.01 (allowed: 0 to 100000)"),
        (math.inf, None, "operation.cost is out of range: inf (allowed: 0 to 100000)"),
        pytest.param(
            10**400,
            None,
            "operation.cost is out of range: an integer of 1329 bits (allowed: 0 to 100000)",
            id="10**400",
        ),
        ("1e999990", None, "operation.cost is out of range: 1e999990 (allowed: 0 to 100000)"),
    ],
)
def test_reported_costs_are_bounded(value: object, reported: float | None, rejected: str | None) -> None:
    c = call({**BASE, "gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 1, "operation.cost": value})
    assert (c.reported_cost_usd, c.rejected) == (reported, rejected)


def test_names_longer_than_the_bound_are_not_used_as_labels_or_scopes() -> None:
    long = "x" * 257
    c = call(
        {
            **BASE,
            "gen_ai.usage.input_tokens": 1,
            "gen_ai.usage.output_tokens": 1,
            "gen_ai.system": long,
            "gen_ai.agent.name": long,
            "user.id": 10**30,
            "otel_puppy.decision_id": long,
        },
        resource={"service.name": long},
    )
    assert (c.provider, c.agent, c.user, c.service, c.decision_id) == ("unknown", None, None, None, None)
    at_bound = call({**BASE, "gen_ai.usage.input_tokens": 1, "gen_ai.agent.name": "a" * 256, "user.id": 42})
    assert (at_bound.agent, at_bound.user) == ("a" * 256, "42")


def test_prompt_digest_ignores_spacing_and_ids_but_not_content() -> None:
    from otel_puppy.calls import prompt_digest

    one = '[{"role":"user","parts":[{"type":"text","content":"What  is my\\nbalance?"}]}]'
    same = '[{"role": "user", "parts": [{"type": "text", "content": "What is my balance?", "id": "x1"}]}]'
    other = '[{"role":"user","parts":[{"type":"text","content":"What is my bill?"}]}]'
    assert prompt_digest(one) == prompt_digest(same)
    assert prompt_digest(one) != prompt_digest(other)
    assert prompt_digest("") is None
    assert prompt_digest(42) is None
    assert prompt_digest("[not json") == prompt_digest("[not   json")


def test_a_span_our_guard_denied_is_not_a_call() -> None:
    denied = {**BASE, "otel_puppy.decision.action": "deny", "otel_puppy.decision.model": "openai:gpt-4o"}
    assert extract_call(make_span(denied, error=True, exception_type="otel_puppy.exceptions.PolicyDenied")) is None


def test_a_degraded_call_is_booked_to_the_model_the_decision_chose() -> None:
    attributes = {**BASE, "otel_puppy.decision.action": "degrade", "otel_puppy.decision.model": "openai:gpt-4o-mini"}
    c = extract_call(make_span(attributes, error=True, exception_type="openai.InternalServerError"))
    assert c is not None
    assert (c.provider, c.request_model, c.model, c.error_class) == (
        "openai",
        "gpt-4o-mini",
        "gpt-4o-mini",
        ErrorClass.SERVER_ERROR,
    )


def test_new_call_builds_what_the_generated_init_builds() -> None:
    """`_new_call` sets each slot by hand: every field but `dedupe_namespace` with a value of its own."""

    given: dict[str, object] = {
        "trace_id": 1,
        "span_id": 2,
        "parent_span_id": 3,
        "provider": "openai",
        "request_model": "gpt-4.1",
        "response_model": "gpt-4.1-2025-04-14",
        "operation": "chat",
        "start_ns": 4,
        "end_ns": 5,
        "input_tokens": 6,
        "output_tokens": 7,
        "cache_read_tokens": 8,
        "cache_write_tokens": 9,
        "reasoning_tokens": 10,
        "has_usage": True,
        "error_class": ErrorClass.TIMEOUT,
        "agent": "a",
        "service": "s",
        "conversation": "c",
        "user": "u",
        "team": "t",
        "environment": "e",
        "reported_cost_usd": 0.5,
        "decision_id": "d",
        "response_id": "r",
        "instrumentation": "i",
        "prompt_hash": "p",
        "problems": ("x",),
        "rejected": "y",
    }
    names = [f.name for f in dataclasses.fields(LLMCall)]
    assert set(given) == set(names) - {"dedupe_namespace"}  # a new field is added here
    # Positional only, in the fields' order: a parameter out of place would put a value in another slot.
    assert list(inspect.signature(_new_call).parameters) == [name for name in names if name in given]
    built = _new_call(*(given[name] for name in names if name in given))  # type: ignore[arg-type]
    assert built == LLMCall(**given)  # type: ignore[arg-type]
    assert [getattr(built, name) for name in names] == [given.get(name, "") for name in names]


_USAGE: dict[str, object] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.usage.input_tokens": 100,
    "gen_ai.usage.output_tokens": 20,
}


def _read(attributes: Mapping[str, Any], resource: Mapping[str, Any], **more: Any) -> LLMCall | None:
    """`call_from_parts` of a span with fixed ids and times (`error` False unless given)."""
    more.setdefault("error", False)
    return call_from_parts(
        attributes, resource=resource, trace_id=1, span_id=2, parent_span_id=0, start_ns=1, end_ns=2, **more
    )


_MEMO_SPANS: list[tuple[dict[str, object], dict[str, object], str | None]] = [
    (dict(_USAGE, **{"gen_ai.agent.name": "a"}), {"service.name": "s"}, "scope"),
    (dict(_USAGE, **{"gen_ai.agent.name": "a", "gen_ai.usage.input_tokens": 7}), {"service.name": "s"}, "scope"),
    (dict(_USAGE, **{"gen_ai.agent.name": "a"}), {"service.name": "s"}, "other scope"),
    (dict(_USAGE, **{"user.id": 1}), {}, None),  # an int user id is a label: `True` and `1.0` are not
    (dict(_USAGE, **{"user.id": True}), {}, None),
    (dict(_USAGE, **{"user.id": 1.0}), {}, None),
    (dict(_USAGE, **{"gen_ai.response.model": " "}), {}, None),  # a problem, after the numbers' own
    (dict(_USAGE, **{"gen_ai.response.model": " ", "gen_ai.usage.reasoning.output_tokens": 900}), {}, None),
    (dict(_USAGE, **{"gen_ai.provider.name": "anthropic", "gen_ai.usage.cache_read.input_tokens": 900}), {}, None),
    (dict(_USAGE, **{"gen_ai.provider.name": "anthropic", "gen_ai.usage.cache_read.input_tokens": 90}), {}, None),
    (dict(_USAGE, **{"gen_ai.usage.cache_read.input_tokens": 90}), {}, "opentelemetry.instrumentation.bedrock"),
    (dict(_USAGE, **{"otel_puppy.decision.model": "anthropic:claude-haiku-4-5"}), {}, None),
    (dict(_USAGE, **{"otel_puppy.decision_id": "d-1", "gen_ai.response.id": "r-1"}), {}, None),
    (dict(_USAGE, **{"otel_puppy.decision_id": "d-2", "gen_ai.response.id": "r-2"}), {}, None),
    (dict(_USAGE, **{"gen_ai.usage.cost": 0.25}), {}, None),
    (dict(_USAGE, **{"gen_ai.usage.cost": 1e9, "gen_ai.usage.output_tokens": "x"}), {}, None),
    (dict(_USAGE, **{"gen_ai.operation.name": "execute_tool"}), {}, None),  # not a call, remembered so
    (dict(_USAGE, **{"gen_ai.agent.name": "a" * 300}), {}, None),  # too long to key on: read without it
    (dict(_USAGE, **{"gen_ai.agent.name": ("a",)}), {}, None),
]


@pytest.mark.parametrize("error", [False, True])
def test_the_memo_reads_what_reading_each_span_alone_reads(error: bool) -> None:
    """`call_from_parts(memo=...)`: the same call, every field, as without it, in any order and again."""
    names = [f.name for f in dataclasses.fields(LLMCall)]
    memo: dict[tuple[object, ...], object] = {}
    for attributes, resource, instrumentation in [*_MEMO_SPANS, *reversed(_MEMO_SPANS), *_MEMO_SPANS]:
        alone = _read(attributes, resource, error=error, instrumentation=instrumentation)
        memoized = _read(attributes, resource, error=error, instrumentation=instrumentation, memo=memo)
        if alone is None:
            assert memoized is None
        else:
            assert memoized is not None
            assert [getattr(memoized, name) for name in names] == [getattr(alone, name) for name in names]
    assert (len(memo) > 0) is not error  # a failed span is read without it


def test_the_memo_is_bounded() -> None:
    memo: dict[tuple[object, ...], object] = {}
    for n in range(2 * calls.MEMO_ENTRIES):
        attributes = dict(_USAGE, **{"gen_ai.agent.name": f"agent-{n}"})
        found = _read(attributes, {}, memo=memo)
        assert found is not None
        assert found.agent == f"agent-{n}"
    assert len(memo) == calls.MEMO_ENTRIES


class _Reads(dict[str, object]):
    """Attributes that note every key `call_from_parts` looks up (not the walk for aggregated keys)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: object = None) -> object:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> object:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def keys(self) -> _ReadKeys:  # type: ignore[override]
        return _ReadKeys(self)


class _ReadKeys:
    def __init__(self, attributes: _Reads) -> None:
        self.attributes = attributes

    def isdisjoint(self, keys: Iterable[str]) -> bool:
        keys = tuple(keys)
        self.attributes.read.update(keys)
        return dict.keys(self.attributes).isdisjoint(keys)


def test_the_otlp_reader_converts_every_attribute_a_call_is_read_from() -> None:
    """The OTLP reader converts only `semconv.SPAN_KEYS` (and aggregated usage keys): every key
    `call_from_parts` reads, over every recorded span of the corpus, failed or not, is among them."""
    from tests.corpus._replay import load_cases

    read: set[str] = set()
    spans = [span for case in load_cases() for span in case.spans()]
    assert len(spans) > 50
    for span in spans:
        for error in (False, True):
            attributes = _Reads(span.attributes or {})
            scope = span.instrumentation_scope
            _read(
                attributes, span.resource.attributes, error=error, instrumentation=scope and scope.name, name=span.name
            )
            read |= attributes.read
    assert read - semconv.SPAN_KEYS == set()
    assert {semconv.PROVIDER[0], semconv.INPUT_TOKENS[0], semconv.HTTP_STATUS[0], semconv.PROMPT[0]} <= read
