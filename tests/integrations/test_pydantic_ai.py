"""guarded(): a real pydantic-ai agent, denied and degraded by real policies, with spans showing it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import logfire
import openai
import pytest
from genai_prices import Usage, calc_price
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import otel_puppy
from otel_puppy.decision import Action
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PolicyDenied
from otel_puppy.policies import parse_policy_text
from otel_puppy.testing import engine_for_tests

POLICIES = """
budgets:
  - name: support-daily
    match: {agent: support}
    limit_usd: 0.004
    window: day
    action: deny
  - name: big-model
    match: {model: gpt-4.1}
    limit_usd: 0.003
    window: day
    action: {degrade: gpt-4.1-mini}
"""


def completion(request: httpx.Request) -> httpx.Response:
    model = json.loads(request.content)["model"]
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        },
    )


@pytest.fixture
def setup() -> Iterator[tuple[PolicyEngine, InMemorySpanExporter, list[str]]]:
    engine = engine_for_tests(parse_policy_text(POLICIES, Path("policies/test.yaml")))
    exporter = InMemorySpanExporter()
    logfire.configure(
        send_to_logfire=False,
        console=False,
        service_name="tests",
        additional_span_processors=[engine.span_processor(), SimpleSpanProcessor(exporter)],
    )
    logfire.instrument_pydantic_ai()
    seen_models: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_models.append(json.loads(request.content)["model"])
        return completion(request)

    client = openai.AsyncOpenAI(
        api_key="test",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),  # type: ignore[arg-type]  # openai types it as httpx2's; httpx's client works the same
        max_retries=0,
    )
    logfire.instrument_openai(client)
    engine._client = client  # type: ignore[attr-defined]
    yield engine, exporter, seen_models
    engine.close()


def chat_spans(exporter: InMemorySpanExporter) -> list[dict[str, object]]:
    return [dict(s.attributes or {}) for s in exporter.get_finished_spans() if s.name.startswith("chat ")]


def test_guarded_agent_is_allowed_then_degraded_then_denied(
    setup: tuple[PolicyEngine, InMemorySpanExporter, list[str]],
) -> None:
    engine, exporter, seen_models = setup
    model = OpenAIChatModel("gpt-4.1", provider=OpenAIProvider(openai_client=engine._client))  # type: ignore[attr-defined]
    agent = Agent(otel_puppy.guarded(model, engine, agent="support", output_tokens=100), name="support")

    agent.run_sync("hello")  # $0.0028 on gpt-4.1: under both budgets
    engine.span_processor().force_flush()
    agent.run_sync("hello again")  # big-model is at $0.0028 + estimate > $0.003: degraded to gpt-4.1-mini
    engine.span_processor().force_flush()
    with pytest.raises(PolicyDenied) as denied:  # support-daily: $0.0028 + $0.00056 + estimate > $0.004
        agent.run_sync("and again")
    engine.span_processor().force_flush()

    assert seen_models == ["gpt-4.1", "gpt-4.1-mini"]
    first, second, third = chat_spans(exporter)
    assert (first["otel_puppy.decision.action"], first["otel_puppy.decision.model"]) == ("allow", "openai:gpt-4.1")
    assert (second["otel_puppy.decision.action"], second["otel_puppy.decision.model"]) == (
        "degrade",
        "openai:gpt-4.1-mini",
    )
    assert second["otel_puppy.decision.policies"] == "big-model"
    assert second["gen_ai.response.model"] == "gpt-4.1-mini"
    assert (third["otel_puppy.decision.action"], third["otel_puppy.decision.policies"]) == ("deny", "support-daily")

    # the denied request reached no model: it is neither a call nor an error
    requests = {
        (sample.labels["model"], sample.labels["outcome"]): sample.value
        for family in engine.registry.collect()
        if family.name == "otel_puppy_llm_requests"
        for sample in family.samples
    }
    assert requests == {("gpt-4.1", "ok"): 1.0, ("gpt-4.1-mini", "ok"): 1.0}

    decision = denied.value.decision
    assert decision.action is Action.DENY
    assert [h.policy for h in decision.reasons if h.action is Action.DENY] == ["support-daily"]

    mini = calc_price(Usage(input_tokens=1000, output_tokens=100), "gpt-4.1-mini", provider_id="openai").total_price
    assert engine.snapshot().spend("day") == Decimal("0.0028") + mini
    # every reservation was settled by the span carrying its decision id (the SDK span under the chat span)
    assert engine.snapshot().budget("support-daily", "").reserved_usd == 0
    assert engine.snapshot().budget("big-model", "").reserved_usd == 0


def test_guard_context_manager_tags_spans_and_raises_on_deny(
    setup: tuple[PolicyEngine, InMemorySpanExporter, list[str]],
) -> None:
    engine, exporter, _ = setup
    with (
        engine.guard("openai", "gpt-4.1", agent="batch", estimated_cost_usd="0.001") as decision,
        logfire.span("my call"),
    ):
        pass
    assert decision.action is Action.ALLOW
    [span] = [s for s in exporter.get_finished_spans() if s.name == "my call"]
    assert (span.attributes or {})["otel_puppy.decision_id"] == decision.decision_id
    with pytest.raises(PolicyDenied), engine.guard("openai", "gpt-4.1", agent="support", estimated_cost_usd="1"):
        pass
