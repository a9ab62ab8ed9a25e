"""The counting rules, through both front doors: which spans are calls, and which spans are one call.

Each test emits spans with a real `TracerProvider` that feeds the engine's span processor, in the
order the spans end (so the order they arrive in), and then posts the same spans, one request each in
that order, to a real `POST /v1/traces`: both doors must count the same calls with the same results.
Instrumentations are told apart by their instrumentation scope, as in life.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Final

import pytest
from genai_prices import Usage, calc_price
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

import otel_puppy.calls as calls_module
from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.money import usd_to_nanos
from otel_puppy.pricing import Unpriced
from otel_puppy.store import ApplyResult
from otel_puppy.testing import engine_for_tests
from tests.corpus._recording import otlp_json_line
from tests.corpus._replay import Receiver, Replayed, observed, receiver, replayed

SERVICE: Final = "support-bot"
T0: Final = 1_767_225_600_000_000_000
"""The fake clock's start (2026-01-01T00:00:00Z), in ns."""
S: Final = 1_000_000_000
OPENAI_V2: Final = "opentelemetry.instrumentation.openai_v2"
LOGFIRE: Final = "logfire.openai"
OI_OPENAI: Final = "openinference.instrumentation.openai"
OI_LANGCHAIN: Final = "openinference.instrumentation.langchain"
CHAT: Final[Mapping[str, Any]] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.response.model": "gpt-4.1-2025-04-14",
    "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 300,
    "gen_ai.usage.cache_read.input_tokens": 1024,
}
FAILED: Final[Mapping[str, Any]] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
}


def nanos(model: str = "gpt-4.1-2025-04-14", provider: str = "openai", **usage: int) -> int:
    counts = {"input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 1024, **usage}
    price = calc_price(Usage(**{k: v for k, v in counts.items() if v}), model, provider_id=provider)
    return usd_to_nanos(price.total_price)


# --- both front doors ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def otlp() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


Emit = Callable[["Emitter"], None]


class Emitter:
    """Spans of one `TracerProvider`, each from the instrumentation scope given, ended when told."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider

    def start(
        self,
        scope: str,
        attributes: Mapping[str, Any],
        *,
        name: str = "chat gpt-4.1",
        parent: SdkSpan | None = None,
        start_ns: int = T0,
    ) -> SdkSpan:
        """A span started at `start_ns`: a root of a trace of its own unless it has a `parent`."""
        context = trace.set_span_in_context(parent) if parent is not None else Context()
        span = self.provider.get_tracer(scope).start_span(
            name, context=context, attributes=attributes, start_time=start_ns
        )
        assert isinstance(span, SdkSpan)
        return span

    def end(self, span: SdkSpan, end_ns: int = T0 + S, *, error: str | None = None) -> None:
        if error is not None:
            span.record_exception(RuntimeError("failed"), attributes={"exception.type": error})
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)

    def span(
        self,
        scope: str,
        attributes: Mapping[str, Any],
        *,
        start_ns: int = T0,
        end_ns: int = T0 + S,
        error: str | None = None,
        name: str = "chat gpt-4.1",
    ) -> None:
        """A root span, started and ended."""
        self.end(self.start(scope, attributes, name=name, start_ns=start_ns), end_ns, error=error)


def both_doors(otlp: Receiver, emit: Emit) -> Replayed:
    """`emit`'s spans through the span processor (as they end) and through `POST /v1/traces` (one
    request per span, in the same order); asserts the two doors observed the same, returns it."""
    engine = engine_for_tests(allow_no_policies=True)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(engine.span_processor())
    try:
        with observed(engine) as seen:
            emit(Emitter(provider))
            assert engine.span_processor().force_flush()
        processed = replayed(engine, seen)
    finally:
        engine.close()
    posted = otlp.post_bodies([otlp_json_line([span]) for span in exporter.get_finished_spans()])
    assert [(o.call, o.price, o.result) for o in posted.observations] == [
        (o.call, o.price, o.result) for o in processed.observations
    ]
    assert (posted.requests, posted.spend_usd, posted.store_requests) == (
        processed.requests,
        processed.spend_usd,
        processed.store_requests,
    )
    return processed


def results(replayed: Replayed) -> list[ApplyResult]:
    return [o.result for o in replayed.observations]


def only_call(replayed: Replayed) -> LLMCall:
    assert len(replayed.applied) == 1, replayed.applied
    return replayed.applied[0].call


# --- a failed call is a call, in any convention --------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "labels"),
    [
        ({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4.1"}, ("openai", "gpt-4.1")),
        ({"gen_ai.provider.name": "anthropic"}, ("anthropic", "unknown")),
        ({"llm.provider": "openai", "llm.model_name": "gpt-4.1-mini"}, ("openai", "gpt-4.1-mini")),
        ({"llm.request.model": "gpt-4o", "llm.system": "OpenAI"}, ("openai", "gpt-4o")),
        (
            {"openinference.span.kind": "LLM", "llm.invocation_parameters": '{"model": "gpt-4.1", "stream": false}'},
            ("unknown", "gpt-4.1"),
        ),
        ({"openinference.span.kind": "LLM", "llm.provider": "openai"}, ("openai", "unknown")),
        ({"llm.invocation_parameters": '{"model": "o4-mini"}', "llm.system": "openai"}, ("openai", "o4-mini")),
    ],
)
def test_a_failed_span_naming_a_model_call_in_any_convention_is_one_error(
    otlp: Receiver, attributes: dict[str, Any], labels: tuple[str, str]
) -> None:
    """No usage and no operation name (failed calls carry neither): the model or provider names the call."""
    found = both_doors(otlp, lambda e: e.span(OI_OPENAI, attributes, error="openai.RateLimitError"))
    call = only_call(found)
    assert (call.provider, call.model, call.error_class) == (*labels, ErrorClass.RATE_LIMIT)
    assert found.applied[0].price.nanos == 0
    assert found.requests == {(*labels, "error", "rate_limit"): 1}
    assert (found.store_requests, found.spend_usd) == (1, Decimal(0))


def test_a_failed_span_with_no_attributes_is_read_from_its_name_and_instrumentation(otlp: Receiver) -> None:
    """OpenLIT ends a failed Anthropic call's span with no attributes: `chat <model>`, by its scope."""
    found = both_doors(
        otlp,
        lambda e: e.span("openlit.instrumentation.anthropic", {}, name="chat claude-sonnet-4-5", error="APIError"),
    )
    call = only_call(found)
    assert (call.provider, call.model, call.operation, call.error_class) == (
        "anthropic",
        "claude-sonnet-4-5",
        "chat",
        ErrorClass.OTHER,
    )


@pytest.mark.parametrize(
    ("scope", "name", "error"),
    [
        ("openlit.instrumentation.anthropic", "chat claude-sonnet-4-5", None),  # not failed
        ("myshop.handlers", "chat claude-sonnet-4-5", "ValueError"),  # a scope that names no provider
        ("openlit.instrumentation.anthropic", "GET /orders", "ValueError"),  # not a GenAI span name
        ("openlit.instrumentation.anthropic", "chat", "ValueError"),  # no model
    ],
)
def test_a_span_with_no_attributes_is_a_call_only_by_both_its_name_and_scope(
    otlp: Receiver, scope: str, name: str, error: str | None
) -> None:
    found = both_doors(otlp, lambda e: e.span(scope, {}, name=name, error=error))
    assert found.observations == []


@pytest.mark.parametrize(
    "attributes",
    [
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4.1", "gen_ai.agent.name": "support"},
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup", "gen_ai.provider.name": "openai"},
        {"openinference.span.kind": "AGENT", "llm.model_name": "gpt-4.1"},
        {"openinference.span.kind": "TOOL", "llm.provider": "openai"},
        {"openinference.span.kind": "CHAIN", "llm.invocation_parameters": '{"model": "gpt-4.1"}'},
        {"traceloop.span.kind": "workflow", "gen_ai.system": "openai"},
        {"gen_ai.provider.name": "openai", "gen_ai.aggregated_usage.input_tokens": 10},
    ],
)
def test_failed_agent_runs_tools_and_workflows_are_not_calls(otlp: Receiver, attributes: dict[str, Any]) -> None:
    found = both_doors(otlp, lambda e: e.span(OPENAI_V2, attributes, error="RuntimeError"))
    assert found.observations == []


# --- one call, two spans: the response id -------------------------------------------------------


@pytest.mark.parametrize("first", [OPENAI_V2, LOGFIRE])
def test_two_instrumentations_with_one_response_id_are_one_call_whichever_arrives_first(
    otlp: Receiver, first: str
) -> None:
    """Each starts a root span of its own (two traces); they disagree on the output tokens: the one that
    arrives first is counted, the other is `nested`."""
    second = LOGFIRE if first == OPENAI_V2 else OPENAI_V2
    usage = {OPENAI_V2: 300, LOGFIRE: 301}

    def emit(e: Emitter) -> None:
        for scope in (first, second):
            attributes = {**CHAT, "gen_ai.response.id": "chatcmpl-Cj1", "gen_ai.usage.output_tokens": usage[scope]}
            e.span(scope, attributes, start_ns=T0 + (S if scope == second else 0), end_ns=T0 + 3 * S)

    found = both_doors(otlp, emit)
    assert results(found) == [ApplyResult.APPLIED, ApplyResult.NESTED]
    call = only_call(found)
    assert (call.instrumentation, call.output_tokens) == (first, usage[first])
    assert found.applied[0].price.nanos == nanos(output_tokens=usage[first])
    assert found.store_requests == 1


def test_a_response_id_identifies_a_call_at_any_time(otlp: Receiver) -> None:
    """logfire writes a stream's usage on a log emitted after the SDK's span ended: no overlap needed."""

    def emit(e: Emitter) -> None:
        e.span("com.anthropic.sdk.python", {**CHAT, "gen_ai.response.id": "msg_01"}, end_ns=T0 + S)
        e.span(LOGFIRE, {**CHAT, "gen_ai.response.id": "msg_01"}, start_ns=T0 + 2 * S, end_ns=T0 + 2 * S)

    assert results(both_doors(otlp, emit)) == [ApplyResult.APPLIED, ApplyResult.NESTED]


@pytest.mark.parametrize("at_once", [False, True])
def test_one_instrumentation_repeating_a_response_id_is_as_many_calls(otlp: Receiver, at_once: bool) -> None:
    """A server that answers every call with the same id (mocks do): an instrumentation describes a call
    once, so its spans are never taken for one call, one after the other or at once."""

    def emit(e: Emitter) -> None:
        for i in range(3):
            start = T0 if at_once else T0 + 2 * i * S
            e.span(OPENAI_V2, {**CHAT, "gen_ai.response.id": "chatcmpl-1"}, start_ns=start, end_ns=start + S)

    found = both_doors(otlp, emit)
    assert results(found) == [ApplyResult.APPLIED] * 3
    assert found.spend_usd * 10**9 == 3 * nanos()


@pytest.mark.parametrize("response_id", ["r" * 257, "chatcmpl-\x00", "chatcmpl-\udcff", "   "])
def test_a_response_id_is_bounded_and_clean_like_every_name(otlp: Receiver, response_id: str) -> None:
    """An id longer than `MAX_NAME_LENGTH`, or not printable UTF-8, is no id: two spans stay two calls."""

    def emit(e: Emitter) -> None:
        e.span(OPENAI_V2, {**CHAT, "gen_ai.response.id": response_id})
        e.span(LOGFIRE, {**CHAT, "gen_ai.response.id": response_id, "gen_ai.usage.output_tokens": 301})

    found = both_doors(otlp, emit)
    assert [o.call.response_id for o in found.observations] == [None, None]
    assert results(found) == [ApplyResult.APPLIED, ApplyResult.APPLIED]


def test_two_response_ids_are_two_calls_even_alike_and_at_once(otlp: Receiver) -> None:
    def emit(e: Emitter) -> None:
        e.span(OPENAI_V2, {**CHAT, "gen_ai.response.id": "chatcmpl-A"})
        e.span(LOGFIRE, {**CHAT, "gen_ai.response.id": "chatcmpl-B"})

    assert results(both_doors(otlp, emit)) == [ApplyResult.APPLIED, ApplyResult.APPLIED]


# --- one call, two spans, no response id ----------------------------------------------------------


@pytest.mark.parametrize("first", [OI_LANGCHAIN, OI_OPENAI])
@pytest.mark.parametrize("with_id", [False, True])
def test_two_instrumentations_agreeing_on_usage_at_once_are_one_call(otlp: Receiver, first: str, with_id: bool) -> None:
    """OpenInference's LangChain span and its OpenAI span, each the root of its own trace, no id
    attribute (or only one of them with one): same service, provider and token counts, overlapping."""
    second = OI_OPENAI if first == OI_LANGCHAIN else OI_LANGCHAIN

    def emit(e: Emitter) -> None:
        outer = e.start(OI_LANGCHAIN, CHAT, start_ns=T0)
        inner_attributes = {**CHAT, "gen_ai.response.id": "chatcmpl-X"} if with_id else CHAT
        inner = e.start(OI_OPENAI, inner_attributes, start_ns=T0 + S // 10)
        spans = {OI_LANGCHAIN: (outer, T0 + 2 * S), OI_OPENAI: (inner, T0 + S)}
        for scope in (first, second):
            span, end = spans[scope]
            e.end(span, end)

    found = both_doors(otlp, emit)
    assert results(found) == [ApplyResult.APPLIED, ApplyResult.NESTED]
    assert only_call(found).instrumentation == first
    assert found.spend_usd * 10**9 == nanos()


@pytest.mark.parametrize(
    ("second", "start", "scope"),
    [
        ({"gen_ai.usage.output_tokens": 299}, T0, OI_LANGCHAIN),  # other usage
        ({}, T0 + 2 * S, OI_LANGCHAIN),  # after the first ended
        ({}, T0, OI_OPENAI),  # the same instrumentation: a fan-out of alike calls
        ({"gen_ai.provider.name": "azure.ai.openai"}, T0, OI_LANGCHAIN),  # another provider
    ],
)
def test_spans_without_a_response_id_are_one_call_only_when_they_agree_at_once(
    otlp: Receiver, second: dict[str, Any], start: int, scope: str
) -> None:
    def emit(e: Emitter) -> None:
        e.span(OI_OPENAI, CHAT, start_ns=T0, end_ns=T0 + S)
        e.span(scope, {**CHAT, **second}, start_ns=start, end_ns=start + S)

    assert results(both_doors(otlp, emit)) == [ApplyResult.APPLIED, ApplyResult.APPLIED]


# --- one failed call, two spans (a failed call has no response id) -----------------------------------


@pytest.mark.parametrize("first", [OI_LANGCHAIN, OI_OPENAI])
def test_two_instrumentations_failing_one_call_are_one_error(otlp: Receiver, first: str) -> None:
    """Same service, provider and model, overlapping in time, from two instrumentations, in two traces."""
    second = OI_OPENAI if first == OI_LANGCHAIN else OI_LANGCHAIN

    def emit(e: Emitter) -> None:
        spans = {OI_LANGCHAIN: e.start(OI_LANGCHAIN, FAILED, start_ns=T0), OI_OPENAI: e.start(OI_OPENAI, FAILED)}
        e.end(spans[first], T0 + S, error="openai.InternalServerError")
        e.end(spans[second], T0 + S + S // 10, error="openai.InternalServerError")

    found = both_doors(otlp, emit)
    assert results(found) == [ApplyResult.APPLIED, ApplyResult.NESTED]
    assert found.requests == {("openai", "gpt-4.1", "error", "server_error"): 1}


@pytest.mark.parametrize(
    ("second", "start", "scope"),
    [
        ({}, T0 + 2 * S, OI_LANGCHAIN),  # a retry, after the first failed
        ({}, T0, OI_OPENAI),  # a burst of concurrent failures traced by one instrumentation
        ({"gen_ai.request.model": "gpt-4.1-mini"}, T0, OI_LANGCHAIN),  # another model
    ],
)
def test_failed_spans_are_one_error_only_when_two_instrumentations_agree_at_once(
    otlp: Receiver, second: dict[str, Any], start: int, scope: str
) -> None:
    def emit(e: Emitter) -> None:
        e.span(OI_OPENAI, FAILED, start_ns=T0, end_ns=T0 + S, error="openai.RateLimitError")
        e.span(scope, {**FAILED, **second}, start_ns=start, end_ns=start + S, error="openai.RateLimitError")

    found = both_doors(otlp, emit)
    assert results(found) == [ApplyResult.APPLIED, ApplyResult.APPLIED]
    assert found.store_requests == 2


# --- success without usage ---------------------------------------------------------------------------


def test_a_success_without_usage_or_response_id_is_not_a_call(otlp: Receiver) -> None:
    """logfire's request span of a stream (its usage comes on a log): counting it would count twice."""
    found = both_doors(otlp, lambda e: e.span(LOGFIRE, FAILED))
    assert found.observations == []


def test_a_success_without_usage_with_a_response_id_is_a_call_of_unknown_spend(otlp: Receiver) -> None:
    found = both_doors(otlp, lambda e: e.span(OPENAI_V2, {**FAILED, "gen_ai.response.id": "chatcmpl-S"}))
    assert only_call(found).has_usage is False
    assert found.applied[0].price.unpriced_reason == Unpriced.NO_USAGE
    assert (found.store_requests, found.spend_usd) == (1, Decimal(0))


@pytest.mark.parametrize("weak_first", [False, True])
@pytest.mark.parametrize("nested", [False, True])
def test_a_span_without_usage_never_hides_its_calls_spend(otlp: Receiver, weak_first: bool, nested: bool) -> None:
    """A span without usage (but with the id) over, or beside, the span with the usage: the spend is
    counted exactly in either order. Arriving first, the span without usage counts as a request too."""

    def emit(e: Emitter) -> None:
        weak = e.start(LOGFIRE, {**FAILED, "gen_ai.response.id": "chatcmpl-W"}, start_ns=T0)
        full = e.start(OPENAI_V2, {**CHAT, "gen_ai.response.id": "chatcmpl-W"}, parent=weak if nested else None)
        if weak_first:
            e.end(weak, T0 + S)
            e.end(full, T0 + 2 * S)
        else:
            e.end(full, T0 + S)
            e.end(weak, T0 + 2 * S)

    found = both_doors(otlp, emit)
    assert found.spend_usd * 10**9 == nanos()
    priced = [o for o in found.applied if o.call.has_usage]
    assert [o.call.instrumentation for o in priced] == [OPENAI_V2]
    if weak_first:
        assert results(found) == [ApplyResult.APPLIED, ApplyResult.APPLIED]
    else:
        assert results(found) == [ApplyResult.APPLIED, ApplyResult.NESTED]


# --- what a span says, read in every spelling --------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "provider"),
    [
        ("openai", "openai"),
        ("OpenAI", "openai"),
        ("Anthropic", "anthropic"),
        ("openai.chat", "openai"),
        ("openai.responses", "openai"),
        ("anthropic.messages", "anthropic"),
        ("az.ai.openai", "azure"),
        ("azure.ai.openai", "azure"),
        ("azure-openai.chat", "azure"),
        ("aws.bedrock", "aws"),
        ("amazon-bedrock", "aws"),
        ("gcp.gemini", "google"),
        ("gcp.vertex_ai", "google"),
        ("google.vertex.chat", "google"),
        ("google.generative-ai", "google"),
        ("mistral.chat", "mistral"),
        ("x_ai", "x-ai"),
        ("some-gateway", "some-gateway"),
    ],
)
def test_provider_names_become_the_label_users_write_in_match(otlp: Receiver, spelling: str, provider: str) -> None:
    found = both_doors(otlp, lambda e: e.span(OPENAI_V2, {**CHAT, "gen_ai.provider.name": spelling}))
    assert only_call(found).provider == provider


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("gen_ai.usage.cache_read.input_tokens", "cache_read_tokens"),
        ("gen_ai.usage.cache_read_input_tokens", "cache_read_tokens"),
        ("llm.token_count.prompt_details.cache_read", "cache_read_tokens"),
        ("ai.usage.inputTokenDetails.cacheReadTokens", "cache_read_tokens"),
        ("ai.usage.cachedInputTokens", "cache_read_tokens"),
        ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
        ("gen_ai.usage.cache_write.input_tokens", "cache_write_tokens"),
        ("gen_ai.usage.cache_creation_input_tokens", "cache_write_tokens"),
        ("llm.token_count.prompt_details.cache_write", "cache_write_tokens"),
        ("ai.usage.inputTokenDetails.cacheWriteTokens", "cache_write_tokens"),
        ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
        ("gen_ai.usage.reasoning_tokens", "reasoning_tokens"),
        ("llm.token_count.completion_details.reasoning", "reasoning_tokens"),
        ("ai.usage.outputTokenDetails.reasoningTokens", "reasoning_tokens"),
        ("ai.usage.reasoningTokens", "reasoning_tokens"),
    ],
)
def test_every_cache_and_reasoning_spelling_is_read(otlp: Receiver, key: str, field: str) -> None:
    usage = {"gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 500}
    attributes = {**FAILED, "gen_ai.provider.name": "anthropic", **usage, key: 128}
    call = only_call(both_doors(otlp, lambda e: e.span(OPENAI_V2, attributes)))
    tokens = {name: getattr(call, name) for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")}
    assert tokens == {name: 128 if name == field else 0 for name in tokens}


@pytest.mark.parametrize(
    ("raw", "reasoning"),
    [
        ({"completion_tokens": 500, "completion_tokens_details": {"reasoning_tokens": 320}}, 320),
        ({"output_tokens": 500, "output_tokens_details": {"reasoning_tokens": 64}}, 64),
        ({"output_tokens": 500, "output_tokens_details": {"thinking_tokens": 256}}, 256),
        ({"candidatesTokenCount": 180, "thoughtsTokenCount": 320}, 320),
        ({"output_tokens": 500, "output_tokens_details": {"reasoning_tokens": "64"}}, 0),
    ],
)
def test_reasoning_tokens_only_in_the_raw_usage_are_read(otlp: Receiver, raw: dict[str, Any], reasoning: int) -> None:
    """logfire writes them only inside the provider's usage object, `gen_ai.usage.raw`."""
    attributes = {**CHAT, "gen_ai.usage.output_tokens": 500, "gen_ai.usage.raw": json.dumps(raw)}
    call = only_call(both_doors(otlp, lambda e: e.span(LOGFIRE, attributes)))
    assert call.reasoning_tokens == reasoning


ANTHROPIC_RAW: Final = {  # Anthropic's own counts: input_tokens leaves the cache out
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "anthropic",
    "gen_ai.request.model": "claude-sonnet-4-5",
    "gen_ai.response.model": "claude-sonnet-4-5-20250929",
    "gen_ai.usage.input_tokens": 412,
    "gen_ai.usage.output_tokens": 356,
    "gen_ai.usage.cache_read.input_tokens": 3584,
    "gen_ai.usage.cache_creation.input_tokens": 1290,
}


def test_a_providers_own_input_count_without_the_cache_gets_the_cache_added(otlp: Receiver) -> None:
    call = only_call(both_doors(otlp, lambda e: e.span("openlit.instrumentation.anthropic", ANTHROPIC_RAW)))
    assert (call.input_tokens, call.cache_read_tokens, call.cache_write_tokens) == (412 + 3584 + 1290, 3584, 1290)
    assert call.problems == ()


def test_an_instrumentation_known_to_pass_the_providers_input_through_always_gets_the_cache_added(
    otlp: Receiver,
) -> None:
    """OpenLLMetry's Bedrock instrumentation: even when the cache is smaller than the uncached input."""
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "aws.bedrock",
        "gen_ai.request.model": "nova-pro-v1:0",
        "gen_ai.usage.input_tokens": 2811,
        "gen_ai.usage.output_tokens": 287,
        "gen_ai.usage.cache_read.input_tokens": 1024,
    }
    found = both_doors(otlp, lambda e: e.span("opentelemetry.instrumentation.bedrock", attributes))
    call = only_call(found)
    assert (call.provider, call.input_tokens, call.cache_read_tokens) == ("aws", 3835, 1024)
    # and the model, stripped of its `amazon.` prefix by the instrumentation, is priced as genai-prices' own
    expected = nanos("amazon.nova-pro-v1:0", "aws", input_tokens=3835, output_tokens=287, cache_read_tokens=1024)
    assert found.applied[0].price.nanos == expected


def test_cache_above_the_input_of_a_provider_that_counts_it_in_is_a_problem(otlp: Receiver) -> None:
    attributes = {**ANTHROPIC_RAW, "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4.1"}
    del attributes["gen_ai.response.model"]
    found = both_doors(otlp, lambda e: e.span(OPENAI_V2, attributes))
    assert only_call(found).problems == ("cache tokens exceed input tokens",)
    assert found.applied[0].price.unpriced_reason == Unpriced.INVALID_USAGE


# --- pricing: the response model first ----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_model", "response_model", "priced_as"),
    [
        ("prod-gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),  # Azure: the request names a deployment
        ("gpt-4o", "acme-finetune-7", "gpt-4o"),  # a response model genai-prices does not know
        ("gpt-4.1", None, "gpt-4.1"),  # no response model (streams, some instrumentations)
    ],
)
def test_pricing_prefers_the_response_model_and_falls_back_to_the_request(
    otlp: Receiver, request_model: str, response_model: str | None, priced_as: str
) -> None:
    attributes = {**CHAT, "gen_ai.provider.name": "azure.ai.openai", "gen_ai.request.model": request_model}
    attributes.pop("gen_ai.response.model")
    if response_model is not None:
        attributes["gen_ai.response.model"] = response_model
    found = both_doors(otlp, lambda e: e.span(OPENAI_V2, attributes))
    assert found.applied[0].price.nanos == nanos(priced_as, "azure")


# --- reported costs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "read"),
    [
        ("gen_ai.usage.cost", 0, None),  # OpenLIT, for every model it cannot price: not a report
        ("gen_ai.usage.cost", 0.0125, 0.0125),
        ("operation.cost", 0.0042, 0.0042),  # logfire
        ("llm.cost.total", 0.0049, 0.0049),  # OpenInference
    ],
)
def test_a_reported_cost_feeds_drift_only_when_it_is_a_real_report(
    otlp: Receiver, key: str, value: float, read: float | None
) -> None:
    found = both_doors(otlp, lambda e: e.span(OPENAI_V2, {**CHAT, key: value}))
    assert only_call(found).reported_cost_usd == read


# --- the JSON attributes read for one field are bounded ------------------------------------------


def _padded(head: str, size: int) -> str:
    """`head` + `}` padded with spaces inside the object to exactly `size` characters."""
    return head + " " * (size - len(head) - 1) + "}"


@pytest.mark.parametrize(
    ("parameters", "model"),
    [
        (_padded('{"model": "o4-mini"', calls_module._MAX_PARAMETERS), "o4-mini"),
        (_padded('{"model": "o4-mini"', calls_module._MAX_PARAMETERS + 1), "unknown"),
        ('{"model": "o4-mini", "a": ' + "[" * 30_000 + "]" * 30_000 + "}", "unknown"),  # nested past the parser
    ],
    ids=["at-the-bound", "one-over", "nested-deep"],
)
def test_invocation_parameters_are_parsed_only_up_to_their_bound(otlp: Receiver, parameters: str, model: str) -> None:
    attributes = {"llm.system": "openai", "llm.invocation_parameters": parameters}
    found = both_doors(otlp, lambda e: e.span(OI_OPENAI, attributes, error="openai.RateLimitError"))
    assert (only_call(found).provider, only_call(found).model) == ("openai", model)


@pytest.mark.parametrize(
    ("raw", "reasoning"),
    [
        (_padded('{"output_tokens_details": {"reasoning_tokens": 64}', calls_module._MAX_RAW_USAGE), 64),
        (_padded('{"output_tokens_details": {"reasoning_tokens": 64}', calls_module._MAX_RAW_USAGE + 1), 0),
        ('{"a": ' + "[" * 8000 + "]" * 8000 + "}", 0),  # under the bound, nested past the parser's limit
    ],
    ids=["at-the-bound", "one-over", "nested-deep"],
)
def test_the_raw_usage_is_parsed_only_up_to_its_bound(otlp: Receiver, raw: str, reasoning: int) -> None:
    attributes = {**CHAT, "gen_ai.usage.output_tokens": 500, "gen_ai.usage.raw": raw}
    assert only_call(both_doors(otlp, lambda e: e.span(LOGFIRE, attributes))).reasoning_tokens == reasoning
