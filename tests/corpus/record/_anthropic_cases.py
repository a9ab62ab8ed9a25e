"""The Anthropic Messages API as the mock provider answers it, and the calls P1's Anthropic recorders make.

Anthropic counts input without the cache: `input_tokens` are the uncached ones, beside
`cache_read_input_tokens` and `cache_creation_input_tokens`; the manifest's usage follows genai-prices
(input counts every input token). `output_tokens_details.thinking_tokens` (part of `output_tokens`) are
the reasoning tokens. A stream carries the input counts in `message_start` and the final, cumulative
usage in `message_delta`, as the API sends them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2

from tests.corpus.record._scripted import Scripted, call, provider_id, usage

PROMPT: list[Any] = [{"role": "user", "content": "Summarise the attached support ticket in two sentences."}]
TEXT = "The customer was double-charged for order 4417. A refund was issued and confirmed by email."


def headers(seed: str) -> dict[str, str]:
    return {"request-id": provider_id("req_011C", seed + "/request", 20), "anthropic-organization-id": "corpus-org"}


@dataclass(frozen=True)
class Answer:
    """What the mock answers: the API's own usage figures (input without the cache)."""

    model: str
    uncached_input: int
    cache_read: int
    cache_write: int
    output: int
    thinking: int = 0

    def wire_usage(self, *, output: int | None = None) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "input_tokens": self.uncached_input,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": self.cache_write, "ephemeral_1h_input_tokens": 0},
            "output_tokens": self.output if output is None else output,
            "service_tier": "standard",
        }
        if self.thinking and output is None:
            wire["output_tokens_details"] = {"thinking_tokens": self.thinking}
        return wire

    def usage(self) -> dict[str, int]:
        return usage(
            input_tokens=self.uncached_input + self.cache_read + self.cache_write,
            output_tokens=self.output,
            cache_read=self.cache_read,
            cache_write=self.cache_write,
            reasoning=self.thinking,
        )

    def content(self) -> list[dict[str, Any]]:
        text = {"type": "text", "text": TEXT}
        if not self.thinking:
            return [text]
        thinking = "The ticket shows two charges for one order; the refund confirmation is attached."
        return [{"type": "thinking", "thinking": thinking, "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxp"}, text]


def message(response_id: str, answer: Answer) -> dict[str, Any]:
    return {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": answer.content(),
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": answer.wire_usage(),
    }


def stream_events(
    response_id: str, answer: Answer, content: list[dict[str, Any]] | None = None, stop_reason: str = "end_turn"
) -> list[tuple[str | None, dict[str, Any] | str]]:
    """The events of a streamed message whose final content is `content` (text, thinking and tool_use blocks)."""
    start: dict[str, Any] = {
        "id": response_id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": answer.wire_usage(output=1),
    }
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(content if content is not None else answer.content()):
        events += _block_events(index, block)
    final_usage = {key: value for key, value in answer.wire_usage().items() if key != "cache_creation"}
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": final_usage,
    }
    return [*events, ("message_delta", delta), ("message_stop", {"type": "message_stop"})]


def _block_events(index: int, block: dict[str, Any]) -> list[tuple[str | None, dict[str, Any] | str]]:
    def delta(body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | str]:
        return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body})

    if block["type"] == "text":
        words = block["text"].split(" ")
        first: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [delta({"type": "text_delta", "text": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    elif block["type"] == "thinking":
        first = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [
            delta({"type": "thinking_delta", "thinking": block["thinking"]}),
            delta({"type": "signature_delta", "signature": block["signature"]}),
        ]
    else:  # tool_use
        first = {**block, "input": {}}
        deltas = [delta({"type": "input_json_delta", "partial_json": json.dumps(block["input"])})]
    start = ("content_block_start", {"type": "content_block_start", "index": index, "content_block": first})
    return [start, *deltas, ("content_block_stop", {"type": "content_block_stop", "index": index})]


def error_body(error_type: str, message: str, seed: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": headers(seed)["request-id"],
    }


@dataclass(frozen=True)
class Case:
    """One case: `run(client, scripted, seed)` scripts the mock, makes the calls and returns them for the manifest."""

    name: str
    run: Callable[[anthropic.Anthropic, Scripted, str], list[dict[str, Any]]]


def _create(client: anthropic.Anthropic, **arguments: Any) -> Any:
    with warnings.catch_warnings():  # some SDK releases warn that a model retires soon
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.messages.create(max_tokens=4096, messages=PROMPT, **arguments)


def _ok(response_id: str, answer: Answer, *, streamed: bool = False) -> list[dict[str, Any]]:
    return [
        call(
            outcome="ok",
            http_status=200,
            streamed=streamed,
            provider="anthropic",
            model=answer.model,
            response_id=response_id,
            usage=answer.usage(),
        )
    ]


SONNET = Answer(
    "claude-sonnet-4-5-20250929", uncached_input=412, cache_read=6144, cache_write=1536, output=1290, thinking=874
)
HAIKU = Answer("claude-haiku-4-5-20251001", uncached_input=187, cache_read=3072, cache_write=2048, output=133)
SONNET_STREAMED = Answer("claude-sonnet-4-5-20250929", uncached_input=95, cache_read=4096, cache_write=512, output=356)


def sonnet_thinking(client: anthropic.Anthropic, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    response_id = provider_id("msg_01", seed, 22)
    scripted.json(200, message(response_id, SONNET), headers(seed))
    _create(client, model="claude-sonnet-4-5", thinking={"type": "enabled", "budget_tokens": 2048})
    return _ok(response_id, SONNET)


def haiku(client: anthropic.Anthropic, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    response_id = provider_id("msg_01", seed, 22)
    scripted.json(200, message(response_id, HAIKU), headers(seed))
    _create(client, model="claude-haiku-4-5")
    return _ok(response_id, HAIKU)


def stream(client: anthropic.Anthropic, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    response_id = provider_id("msg_01", seed, 22)
    scripted.stream(stream_events(response_id, SONNET_STREAMED), headers(seed))
    for _ in _create(client, model="claude-sonnet-4-5", stream=True):
        pass
    return _ok(response_id, SONNET_STREAMED, streamed=True)


def _failed(
    client: anthropic.Anthropic,
    scripted: Scripted,
    seed: str,
    *,
    status: int,
    model: str,
    error_type: str,
    message: str,
    expected: type[Exception],
) -> list[dict[str, Any]]:
    extra = {"retry-after": "7"} if status == 429 else {}
    scripted.json(status, error_body(error_type, message, seed), {**headers(seed), **extra})
    try:
        _create(client, model=model)
    except expected:
        pass
    else:
        raise AssertionError(f"the mock's HTTP {status} did not fail the call")
    return [call(outcome="error", http_status=status, provider="anthropic", model=model)]


def error_500(client: anthropic.Anthropic, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    return _failed(
        client,
        scripted,
        seed,
        status=500,
        model="claude-sonnet-4-5",
        error_type="api_error",
        message="Internal server error",
        expected=anthropic.InternalServerError,
    )


def error_429(client: anthropic.Anthropic, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    return _failed(
        client,
        scripted,
        seed,
        status=429,
        model="claude-haiku-4-5",
        error_type="rate_limit_error",
        message="This request would exceed the rate limit for your organization of 400,000 input tokens per minute.",
        expected=anthropic.RateLimitError,
    )


def error_529(client: anthropic.Anthropic, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    return _failed(
        client,
        scripted,
        seed,
        status=529,
        model="claude-sonnet-4-5",
        error_type="overloaded_error",
        message="Overloaded",
        expected=anthropic.APIStatusError,
    )


CASES = (
    Case("messages-sonnet-4.5-cache-thinking", sonnet_thinking),
    Case("messages-haiku-4.5-cache", haiku),
    Case("messages-stream-sonnet-4.5", stream),
    Case("error-500", error_500),
    Case("error-429", error_429),
    Case("error-529-overloaded", error_529),
)


def client(scripted: Scripted, open_telemetry: Any = None) -> anthropic.Anthropic:
    """A real client on the mock provider, retries off; `open_telemetry` is the SDK's own tracing option."""
    return anthropic.Anthropic(
        api_key="sk-ant-corpus-no-key",
        max_retries=0,
        http_client=httpx2.Client(transport=scripted.transport),
        open_telemetry=open_telemetry,
    )
