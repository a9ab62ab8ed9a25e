"""Cost of spans produced by real instrumentations equals genai-prices' own figure, to the nano-dollar."""

from __future__ import annotations

import warnings
from decimal import Decimal

import anthropic
import httpx
import httpx2
import logfire
import openai
import pytest
from genai_prices import Usage, calc_price
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import RequestUsage

from otel_puppy.engine import PolicyEngine
from otel_puppy.money import nanos_to_usd, usd_to_nanos

OPENAI_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "completion_tokens_details": {"reasoning_tokens": 100},
}


def openai_response(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/chat/completions"):
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": OPENAI_USAGE,
            },
        )
    return httpx.Response(503, json={"error": {"message": "overloaded", "type": "server_error"}})


def anthropic_response(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(
        200,
        json={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 100,
                "output_tokens": 50,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 500,
            },
        },
    )


def cost_metric(engine: PolicyEngine, **labels: str) -> float | None:
    return engine.registry.get_sample_value("otel_puppy_llm_cost_usd_total", labels)


def requests_metric(engine: PolicyEngine, **labels: str) -> float | None:
    return engine.registry.get_sample_value("otel_puppy_llm_requests_total", labels)


def test_logfire_openai_sdk_call_costs_what_genai_prices_says(logfire_engine: PolicyEngine) -> None:
    client = openai.OpenAI(
        api_key="test",
        http_client=httpx.Client(transport=httpx.MockTransport(openai_response)),  # type: ignore[arg-type]  # openai types it as httpx2's; httpx's client works the same
        max_retries=0,
    )
    logfire.instrument_openai(client)

    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])
    logfire_engine.span_processor().force_flush()

    expected = calc_price(
        Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=1024),
        "gpt-4o-2024-08-06",
        provider_id="openai",
    ).total_price
    assert expected == Decimal("0.00472")
    assert logfire_engine.snapshot().spend("day") == nanos_to_usd(usd_to_nanos(expected))
    labels = {"provider": "openai", "model": "gpt-4o-2024-08-06", "agent": "", "service": "tests"}
    assert cost_metric(logfire_engine, **labels) == usd_to_nanos(expected) / 1e9
    assert requests_metric(logfire_engine, **labels, outcome="ok", error_class="") == 1.0
    tokens = {
        t: logfire_engine.registry.get_sample_value("otel_puppy_llm_tokens_total", {**labels, "type": t})
        for t in ("input", "output", "cache_read")
    }
    assert tokens == {"input": 1200.0, "output": 300.0, "cache_read": 1024.0}
    # the 1,024 cached tokens at the input price, less what they cost at the cache-read price
    uncached = calc_price(Usage(input_tokens=1200, output_tokens=300), "gpt-4o-2024-08-06", provider_id="openai")
    assert uncached.total_price - expected == Decimal("0.00128")
    assert logfire_engine.registry.get_sample_value("otel_puppy_llm_cache_savings_usd_total", labels) == 0.00128
    # logfire reports its own cost for the span: ours agrees, so no drift.
    assert (
        logfire_engine.registry.get_sample_value(
            "otel_puppy_llm_cost_drift_usd_total",
            {"provider": "openai", "model": "gpt-4o-2024-08-06", "direction": "over"},
        )
        is None
    )


def test_failed_openai_call_counts_as_a_server_error(logfire_engine: PolicyEngine) -> None:
    client = openai.OpenAI(
        api_key="test",
        http_client=httpx.Client(transport=httpx.MockTransport(openai_response)),  # type: ignore[arg-type]  # openai types it as httpx2's; httpx's client works the same
        max_retries=0,
    )
    logfire.instrument_openai(client)

    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    logfire_engine.span_processor().force_flush()

    labels = {"provider": "openai", "model": "text-embedding-3-small", "agent": "", "service": "tests"}
    assert requests_metric(logfire_engine, **labels, outcome="error", error_class="server_error") == 1.0
    assert cost_metric(logfire_engine, **labels) is None  # no usage, no bill, no $0 series
    assert logfire_engine.snapshot().spend("day") == 0


def test_logfire_anthropic_sdk_call_with_cache_reads_and_writes(logfire_engine: PolicyEngine) -> None:
    client = anthropic.Anthropic(
        api_key="test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(anthropic_response)),
        max_retries=0,
    )
    logfire.instrument_anthropic(client)

    with warnings.catch_warnings():  # some SDK releases warn that this model retires soon, others do not
        warnings.simplefilter("ignore", DeprecationWarning)
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hello"}]
        )
    logfire_engine.span_processor().force_flush()

    # Anthropic reports input excluding the cache; the conventions (and genai-prices) include it.
    expected = calc_price(
        Usage(input_tokens=2600, output_tokens=50, cache_read_tokens=2000, cache_write_tokens=500),
        "claude-sonnet-4-5-20250929",
        provider_id="anthropic",
    ).total_price
    assert expected == Decimal("0.003525")
    assert logfire_engine.snapshot().spend("day") == expected
    labels = {"provider": "anthropic", "model": "claude-sonnet-4-5-20250929", "agent": "", "service": "tests"}
    assert cost_metric(logfire_engine, **labels) == 0.003525
    assert (
        logfire_engine.registry.get_sample_value("otel_puppy_llm_tokens_total", {**labels, "type": "cache_write"})
        == 500.0
    )


def tool_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(
            parts=[ToolCallPart("lookup", {"q": "order 42"})],
            usage=RequestUsage(input_tokens=500, output_tokens=20, cache_read_tokens=100),
            model_name="gpt-4.1",
        )
    return ModelResponse(
        parts=[TextPart("done")], usage=RequestUsage(input_tokens=700, output_tokens=50), model_name="gpt-4.1"
    )


def test_pydantic_ai_agent_counts_each_chat_span_not_the_agent_run(logfire_engine: PolicyEngine) -> None:
    logfire.instrument_pydantic_ai()
    agent = Agent(FunctionModel(tool_then_answer, model_name="gpt-4.1"), name="support")

    @agent.tool_plain
    def lookup(q: str) -> str:
        return f"found {q}"

    result = agent.run_sync("where is my order?")
    logfire_engine.span_processor().force_flush()

    first = calc_price(Usage(input_tokens=500, output_tokens=20, cache_read_tokens=100), "gpt-4.1").total_price
    second = calc_price(Usage(input_tokens=700, output_tokens=50), "gpt-4.1").total_price
    assert result.usage.cost == first + second  # pydantic-ai's own figure, also from genai-prices
    assert logfire_engine.snapshot().spend("day") == first + second
    labels = {"provider": "function", "model": "gpt-4.1", "agent": "support", "service": "tests"}
    assert requests_metric(logfire_engine, **labels, outcome="ok", error_class="") == 2.0
    assert cost_metric(logfire_engine, **labels) == usd_to_nanos(first + second) / 1e9
    spans = {
        s.labels["result"]: s.value
        for m in logfire_engine.registry.collect()
        if m.name == "otel_puppy_spans"
        for s in m.samples
    }
    # two chat spans counted; the invoke_agent (aggregated usage) and execute_tool spans are not calls
    assert spans == {"applied": 2.0, "ignored": 2.0}


def test_nested_pydantic_ai_and_sdk_spans_count_the_call_once(logfire_engine: PolicyEngine) -> None:
    logfire.instrument_pydantic_ai()
    client = openai.AsyncOpenAI(
        api_key="test",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(openai_response)),  # type: ignore[arg-type]  # openai types it as httpx2's; httpx's client works the same
        max_retries=0,
    )
    logfire.instrument_openai(client)
    agent = Agent(OpenAIChatModel("gpt-4o", provider=OpenAIProvider(openai_client=client)), name="nested")

    agent.run_sync("hi")
    logfire_engine.span_processor().force_flush()

    expected = calc_price(
        Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=1024), "gpt-4o-2024-08-06"
    ).total_price
    assert logfire_engine.snapshot().spend("day") == expected
    labels = {"provider": "openai", "model": "gpt-4o-2024-08-06", "agent": "nested", "service": "tests"}
    assert requests_metric(logfire_engine, **labels, outcome="ok", error_class="") == 1.0
    assert logfire_engine.registry.get_sample_value("otel_puppy_spans_total", {"result": "nested"}) == 1.0
    assert logfire_engine.registry.get_sample_value("otel_puppy_spans_total", {"result": "applied"}) == 1.0
