# corpus-env: dev
"""pydantic-ai agents through logfire (`instrument_pydantic_ai`), on OpenAI and Anthropic over mocked APIs.

    .venv/bin/python -m tests.corpus.record.logfire_pydantic_ai

Each agent run has an `invoke_agent` span with the run's aggregated usage (not a call), a `running tool`
span, and one `chat` span per model request (the calls). Cases:

- `agent-openai-tool`, `agent-anthropic-tool`: a tool call, then the answer: two calls. On Anthropic the
  SDK's own tracing is on, as it ships, so each call also has the SDK's `anthropic.messages.create`
  span, a child of pydantic-ai's `chat` span.
- `agent-openai-instrumented`: the same with `logfire.instrument_openai` also on the agent's client, so
  logfire's OpenAI span (a child of the `chat` span) describes each call too.
- `agent-openai-stream`: `run_stream`, one streamed call.
- `agent-openai-error-500`, `agent-anthropic-error-429`: the model request fails, and so does the run.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any

import anthropic
import httpx2
import logfire
import openai
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

from tests.corpus._recording import Manifest
from tests.corpus.record import _anthropic_cases as anthropic_api
from tests.corpus.record import _openai_cases as openai_api
from tests.corpus.record._scripted import Scripted, call, event_stream, provider_id, usage

INSTRUMENTATION = "logfire-pydantic-ai"
PACKAGES = ("logfire", "pydantic-ai-slim", "openai", "anthropic")
AGENT = "support"
QUESTION = "Was order 4417 refunded?"
ANSWER = "Yes: order 4417 was charged twice on 2 January and one charge was refunded on 3 January."
TOOL_ARGS = {"order_id": "4417"}


def lookup_order(order_id: str) -> str:
    """Look an order up by its id."""
    return f"order {order_id}: charged twice on 2026-01-02, one charge refunded on 2026-01-03"


def agent(model: Model, *, tools: bool = True) -> Agent[None, str]:
    support = Agent(model, name=AGENT, instructions="You answer questions about customers' orders.")
    if tools:
        support.tool_plain(lookup_order)
    return support


# --- OpenAI ---------------------------------------------------------------------------------------


def openai_model(scripted: Scripted, model: str) -> tuple[OpenAIChatModel, openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        api_key="sk-corpus-no-key", max_retries=0, http_client=httpx2.AsyncClient(transport=scripted.transport)
    )
    return OpenAIChatModel(model, provider=OpenAIProvider(openai_client=client)), client


def openai_turn(
    scripted: Scripted, seed: str, model: str, *, prompt: int, cached: int, completion: int, tool: bool
) -> dict[str, Any]:
    """Script one chat completion (a tool call or the answer) and return the call for the manifest."""
    response_id = provider_id("chatcmpl-", seed, 29)
    body = openai_api.chat_completion(
        response_id,
        model,
        openai_api.chat_usage(prompt=prompt, cached=cached, completion=completion, reasoning=0),
        ANSWER,
    )
    if tool:
        tool_call = {
            "id": provider_id("call_", seed + "/tool", 24),
            "type": "function",
            "function": {"name": "lookup_order", "arguments": json.dumps(TOOL_ARGS)},
        }
        body["choices"][0]["message"] |= {"content": None, "tool_calls": [tool_call]}
        body["choices"][0]["finish_reason"] = "tool_calls"
    scripted.json(200, body, openai_api.headers(seed))
    return ok_call(
        "openai", model, response_id, usage(input_tokens=prompt, output_tokens=completion, cache_read=cached)
    )


def agent_openai_tool(scripted: Scripted, seed: str, *, instrument_openai: bool = False) -> list[dict[str, Any]]:
    model, client = openai_model(scripted, "gpt-4.1")
    if instrument_openai:
        logfire.instrument_openai(client)
    response_model = "gpt-4.1-2025-04-14"
    shift = 7 if instrument_openai else 0  # distinct numbers in each case
    calls = [
        openai_turn(scripted, seed + "/1", response_model, prompt=1874 + shift, cached=1536, completion=23, tool=True),
        openai_turn(scripted, seed + "/2", response_model, prompt=1956 + shift, cached=1792, completion=96, tool=False),
    ]
    agent(model).run_sync(QUESTION)
    return calls


def agent_openai_instrumented(scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    calls = agent_openai_tool(scripted, seed, instrument_openai=True)
    for each in calls:
        each["note"] = "two spans describe this call: pydantic-ai's chat span and logfire's OpenAI span (its child)"
    return calls


def agent_openai_stream(scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    model, _ = openai_model(scripted, "gpt-4.1-mini")
    response_id = provider_id("chatcmpl-", seed, 29)
    response_model = "gpt-4.1-mini-2025-04-14"
    wire = openai_api.chat_usage(prompt=1402, cached=1152, completion=88, reasoning=0)
    chunks = openai_api.chat_chunks(
        response_id, response_model, wire, ["Yes: order 4417 ", "was refunded on 3 January."]
    )
    scripted.stream([*((None, chunk) for chunk in chunks), (None, "[DONE]")], openai_api.headers(seed))

    async def run() -> None:
        async with agent(model, tools=False).run_stream(QUESTION) as result:
            async for _ in result.stream_text():
                pass

    import asyncio

    asyncio.run(run())
    streamed = ok_call(
        "openai", response_model, response_id, usage(input_tokens=1402, output_tokens=88, cache_read=1152)
    )
    return [streamed | {"streamed": True}]


def agent_openai_error_500(scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    model, _ = openai_model(scripted, "gpt-4.1")
    scripted.json(500, openai_api.SERVER_ERROR, openai_api.headers(seed))
    expect_failure(agent(model), 500)
    return [failed_call("openai", "gpt-4.1", 500)]


# --- Anthropic ------------------------------------------------------------------------------------


def anthropic_model(scripted: Scripted, model: str) -> AnthropicModel:
    client = anthropic.AsyncAnthropic(
        api_key="sk-ant-corpus-no-key", max_retries=0, http_client=httpx2.AsyncClient(transport=scripted.transport)
    )
    return AnthropicModel(model, provider=AnthropicProvider(anthropic_client=client))


def anthropic_turn(scripted: Scripted, seed: str, answer: anthropic_api.Answer, *, tool: bool) -> dict[str, Any]:
    response_id = provider_id("msg_01", seed, 22)
    body = anthropic_api.message(response_id, answer)
    if tool:
        tool_use = {"type": "tool_use", "id": provider_id("toolu_01", seed + "/tool", 22), "name": "lookup_order"}
        body["content"] = [tool_use | {"input": TOOL_ARGS}]
        body["stop_reason"] = "tool_use"
    headers = anthropic_api.headers(seed)

    def answer_request(request: httpx2.Request) -> httpx2.Response:
        # pydantic-ai streams behind the scenes when its default `max_tokens` is above what the SDK sends
        # unstreamed; answer as the API would either way.
        if json.loads(request.content).get("stream"):
            events = anthropic_api.stream_events(response_id, answer, body["content"], body["stop_reason"])
            return event_stream(events, headers)
        return httpx2.Response(200, json=body, headers=headers)

    scripted.respond(answer_request)
    return ok_call("anthropic", answer.model, response_id, answer.usage())


def agent_anthropic_tool(scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    model = anthropic_model(scripted, "claude-sonnet-4-5")
    sonnet = "claude-sonnet-4-5-20250929"
    first = anthropic_api.Answer(sonnet, uncached_input=52, cache_read=0, cache_write=2944, output=71)
    second = anthropic_api.Answer(sonnet, uncached_input=118, cache_read=2944, cache_write=188, output=164)
    calls = [
        anthropic_turn(scripted, seed + "/1", first, tool=True),
        anthropic_turn(scripted, seed + "/2", second, tool=False),
    ]
    agent(model).run_sync(QUESTION)
    for each in calls:
        each["streamed"] = True  # pydantic-ai streams behind the scenes (its default max_tokens is large)
        each["note"] = (
            "two spans describe this call: pydantic-ai's chat span and the Anthropic SDK's own "
            "anthropic.messages.create span (its child), on by default; streamed behind the scenes by pydantic-ai"
        )
    return calls


def agent_anthropic_error_429(scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    model = anthropic_model(scripted, "claude-haiku-4-5")
    body = anthropic_api.error_body(
        "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit.", seed
    )
    scripted.json(429, body, anthropic_api.headers(seed) | {"retry-after": "7"})
    expect_failure(agent(model), 429)
    failed = failed_call("anthropic", "claude-haiku-4-5", 429) | {"streamed": True}
    failed["note"] = (
        "two spans describe this call: pydantic-ai's chat span and the Anthropic SDK's own span (its child)"
    )
    return [failed]


# --- the manifest ---------------------------------------------------------------------------------


def ok_call(provider: str, model: str, response_id: str, used: dict[str, int]) -> dict[str, Any]:
    return call(outcome="ok", http_status=200, provider=provider, model=model, response_id=response_id, usage=used) | {
        "agent": AGENT
    }


def failed_call(provider: str, model: str, status: int) -> dict[str, Any]:
    return call(outcome="error", http_status=status, provider=provider, model=model) | {"agent": AGENT}


def expect_failure(support: Agent[None, str], status: int) -> None:
    try:
        support.run_sync(QUESTION)
    except ModelHTTPError as error:
        if error.status_code != status:
            raise
    else:
        raise AssertionError(f"the mock's HTTP {status} did not fail the run")


CASES = {
    "agent-openai-tool": agent_openai_tool,
    "agent-openai-instrumented": agent_openai_instrumented,
    "agent-openai-stream": agent_openai_stream,
    "agent-openai-error-500": agent_openai_error_500,
    "agent-anthropic-tool": agent_anthropic_tool,
    "agent-anthropic-error-429": agent_anthropic_error_429,
}


def main() -> None:
    exporter = InMemorySpanExporter()
    logfire.configure(
        send_to_logfire=False,
        console=False,
        metrics=False,
        service_name=f"corpus-{INSTRUMENTATION}",
        additional_span_processors=[SimpleSpanProcessor(exporter)],
    )
    logfire.instrument_pydantic_ai()
    scripted = Scripted()
    manifest = Manifest(INSTRUMENTATION, {name: version(name) for name in PACKAGES})
    for name, run in CASES.items():
        exporter.clear()
        calls = run(scripted, f"{INSTRUMENTATION}/{name}")
        logfire.force_flush()
        manifest.add(name, exporter.get_finished_spans(), calls)
        scripted.assert_drained()
    print(manifest.write())


if __name__ == "__main__":
    main()
