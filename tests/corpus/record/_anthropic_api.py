"""A mock of the Anthropic Messages API, and the Anthropic cases of the OpenLLMetry and OpenLIT recorders.

Like `_openai_api` for OpenAI: `AnthropicApi(httpx2).transport()` (`httpx` for the 0.x SDK OpenLIT pins)
goes to a real `anthropic.Anthropic` client and `record_cases` makes the calls.

Anthropic counts input without the cache: `input_tokens` are the uncached ones, beside
`cache_read_input_tokens` and `cache_creation_input_tokens`. The manifest's usage follows genai-prices
(input counts every input token), so `Reply.usage()` adds them up. A streamed answer carries the input
counts in `message_start` and the final output count in `message_delta`, as the API sends them.
"""

from __future__ import annotations

import json
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import anthropic

from tests.corpus.record._cases import Recording, expect_failure

__all__ = ("OVERLOADED", "RATE_LIMITED", "SERVER_ERROR", "AnthropicApi", "Failure", "Reply", "record_cases")


@dataclass(frozen=True, slots=True)
class Reply:
    response_id: str
    model: str
    input_tokens: int
    """Uncached input tokens, as the API reports them."""
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    text: str = "Your order shipped yesterday and should arrive on Thursday."

    def usage(self) -> dict[str, int]:
        """The manifest's usage, in genai-prices' field names (input includes the cache)."""
        return {
            "input_tokens": self.input_tokens + self.cache_read_tokens + self.cache_write_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": 0,
        }

    def call(
        self,
        *,
        streamed: bool = False,
        provider: str = "anthropic",
        shortfall: dict[str, int] | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        return {
            "outcome": "ok",
            "http_status": 200,
            "streamed": streamed,
            "provider": provider,
            "model": self.model,
            "response_id": self.response_id,
            "usage": self.usage(),
            "shortfall": shortfall or {},
            "note": note,
        }


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    error_type: str
    message: str
    request_id: str

    def call(
        self, model: str, *, provider: str = "anthropic", shortfall: dict[str, int] | None = None, note: str = ""
    ) -> dict[str, Any]:
        return {
            "outcome": "error",
            "http_status": self.status,
            "streamed": False,
            "provider": provider,
            "model": model,
            "response_id": None,
            "usage": dict.fromkeys(
                ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"), 0
            ),
            "shortfall": shortfall or {},
            "note": note,
        }


_Answer = TypeVar("_Answer", Reply, Failure)

SERVER_ERROR = Failure(500, "api_error", "Internal server error", "req_011CVqD4kR7nY2sW9xPzB3mA")
RATE_LIMITED = Failure(
    429,
    "rate_limit_error",
    "This request would exceed the rate limit for your organization of 400,000 input tokens per minute. "
    "For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    "req_011CVqD6tH3uJ8mE1fLw5QcN",
)
OVERLOADED = Failure(529, "overloaded_error", "Overloaded", "req_011CVqD8bG5vX0kT4nRy7ZpS")
QUESTION: list[Any] = [{"role": "user", "content": "Where is my order #4417?"}]


def record_cases(
    recording: Recording,
    client: anthropic.Anthropic,
    api: AnthropicApi,
    *,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """The corpus's Anthropic cases, each a real SDK call through `client` answered by `api`.

    `known` adds to a case's call what this instrumentation is known to get wrong:
    `{case: {"shortfall": {...}, "note": "..."}}`.
    """

    def case(name: str, answer: Reply | Failure, model: str, *, streamed: bool = False) -> None:
        extra = dict((known or {}).get(name, {}))
        if isinstance(answer, Failure):
            recording.case(name, [answer.call(model, **extra)])
        else:
            recording.case(name, [answer.call(streamed=streamed, **extra)])

    with warnings.catch_warnings():  # some SDK releases warn that a model retires soon
        warnings.simplefilter("ignore", DeprecationWarning)
        answer = api.expect(Reply("msg_01XFDUDYJgAACzvnptvVoYEL", "claude-sonnet-4-5-20250929", 412, 3584, 1290, 356))
        client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=QUESTION)
        case("messages_claude-sonnet-4-5", answer, "claude-sonnet-4-5")

        answer = api.expect(Reply("msg_01Rk7qNc2TzP8wYbHs4LmVaE", "claude-haiku-4-5-20251001", 187, 2816, 0, 143))
        client.messages.create(model="claude-haiku-4-5", max_tokens=1024, messages=QUESTION)
        case("messages_claude-haiku-4-5", answer, "claude-haiku-4-5")

        answer = api.expect(Reply("msg_01Bq5xWm9KdT3eRf7JnYcUpH", "claude-sonnet-4-5-20250929", 236, 4096, 768, 421))
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1024, messages=QUESTION) as stream:
            for _ in stream.text_stream:
                pass
        case("messages_stream_claude-sonnet-4-5", answer, "claude-sonnet-4-5", streamed=True)

        create = client.messages.create
        api.expect(SERVER_ERROR)
        expect_failure(
            anthropic.InternalServerError, create, model="claude-sonnet-4-5", max_tokens=1024, messages=QUESTION
        )
        case("error_500", SERVER_ERROR, "claude-sonnet-4-5")

        api.expect(RATE_LIMITED)
        expect_failure(anthropic.RateLimitError, create, model="claude-haiku-4-5", max_tokens=1024, messages=QUESTION)
        case("error_429", RATE_LIMITED, "claude-haiku-4-5")

        api.expect(OVERLOADED)
        expect_failure(anthropic.APIStatusError, create, model="claude-sonnet-4-5", max_tokens=1024, messages=QUESTION)
        case("error_529_overloaded", OVERLOADED, "claude-sonnet-4-5")


class AnthropicApi:
    """Answers each request with the next queued `Reply` or `Failure`, as the Anthropic API would."""

    def __init__(self, httpx: ModuleType) -> None:
        self._httpx = httpx
        self._queue: deque[Reply | Failure] = deque()

    def transport(self) -> Any:
        return self._httpx.MockTransport(self._handle)

    def expect(self, answer: _Answer) -> _Answer:
        self._queue.append(answer)
        return answer

    def _handle(self, request: Any) -> Any:
        answer = self._queue.popleft()
        if isinstance(answer, Failure):
            body = {
                "type": "error",
                "error": {"type": answer.error_type, "message": answer.message},
                "request_id": answer.request_id,
            }
            headers = {"request-id": answer.request_id}
            if answer.status == 429:
                headers["retry-after"] = "7"
            return self._httpx.Response(answer.status, json=body, headers=headers)
        headers = {"request-id": "req_011CVq" + answer.response_id[-16:]}
        if json.loads(request.content or b"{}").get("stream"):
            stream = b"".join(_events(answer))
            return self._httpx.Response(200, content=stream, headers=headers | {"content-type": "text/event-stream"})
        return self._httpx.Response(200, json=_message(answer), headers=headers)


def _usage(answer: Reply, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": answer.input_tokens,
        "cache_creation_input_tokens": answer.cache_write_tokens,
        "cache_read_input_tokens": answer.cache_read_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": answer.cache_write_tokens, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _message(answer: Reply, *, streaming: bool = False) -> dict[str, Any]:
    return {
        "id": answer.response_id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [] if streaming else [{"type": "text", "text": answer.text}],
        "stop_reason": None if streaming else "end_turn",
        "stop_sequence": None,
        "usage": _usage(answer, 1 if streaming else answer.output_tokens),
    }


def _sse(event: str, document: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps({'type': event} | document, separators=(',', ':'))}\n\n".encode()


def _events(answer: Reply) -> list[bytes]:
    words = answer.text.split(" ")
    return [
        _sse("message_start", {"message": _message(answer, streaming=True)}),
        _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _sse("ping", {}),
        *(
            _sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w if i == 0 else " " + w}})
            for i, w in enumerate(words)
        ),
        _sse("content_block_stop", {"index": 0}),
        _sse(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": answer.output_tokens},
            },
        ),
        _sse("message_stop", {}),
    ]
