"""A mock of the OpenAI HTTP API, and the OpenAI cases of the OpenLLMetry, OpenInference and OpenLIT recorders.

The recorders hand `OpenAIApi(httpx2).transport()` (or `httpx`: the OpenAI SDK moved to httpx2 in 3.x,
OpenLIT pins a 2.x that still uses httpx) to a real `openai.OpenAI` client, and `record_cases` makes the
calls, queueing each answer before its call: the usage in the manifest is the one this mock sent, never
what an instrumentation read back.

OpenAI counts input with the cache: `prompt_tokens` (`input_tokens` in the Responses API) include
`cached_tokens`, and `completion_tokens` include `reasoning_tokens`, as genai-prices counts them, so
`Reply.usage()` is the wire usage renamed. Chat completions, the Responses API and their streamed forms
(server-sent events, usage in the last chunk when the request asks for it) are answered as the API
answers them today.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import openai

from tests.corpus.record._cases import Recording, expect_failure, with_labels

__all__ = ("RATE_LIMITED", "SERVER_ERROR", "Failure", "OpenAIApi", "Reply", "record_cases")

_CREATED = 1_764_921_600


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer: OpenAI counts cached tokens inside `input_tokens`, reasoning inside `output_tokens`."""

    response_id: str
    model: str
    """The dated model the API answers with (`gpt-4.1` is answered by `gpt-4.1-2025-04-14`)."""
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int = 0
    text: str = "Your order shipped yesterday and should arrive on Thursday."

    def usage(self) -> dict[str, int]:
        """The manifest's usage, in genai-prices' field names."""
        return {
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cached_tokens,
            "cache_write_tokens": 0,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    def call(
        self,
        *,
        streamed: bool = False,
        provider: str = "openai",
        shortfall: dict[str, int] | None = None,
        note: str = "",
        span_labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return with_labels(
            {
                "outcome": "ok",
                "http_status": 200,
                "streamed": streamed,
                "provider": provider,
                "model": self.model,
                "response_id": self.response_id,
                "usage": self.usage(),
                "shortfall": shortfall or {},
                "note": note,
            },
            span_labels,
        )


@dataclass(frozen=True, slots=True)
class Failure:
    """An error answer; it carries no usage and no response id, only the request id in a header."""

    status: int
    body: dict[str, Any]
    request_id: str

    def call(
        self,
        model: str,
        *,
        provider: str = "openai",
        shortfall: dict[str, int] | None = None,
        note: str = "",
        span_labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return with_labels(
            {
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
            },
            span_labels,
        )


_Answer = TypeVar("_Answer", Reply, Failure)

SERVER_ERROR = Failure(
    500,
    {
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    },
    "req_5f0c2b7e9a1d4c3e8b6a7f2d1e0c9b8a",
)
RATE_LIMITED = Failure(
    429,
    {
        "error": {
            "message": "Rate limit reached for gpt-4.1-mini in organization org-corpus on tokens per min (TPM): "
            "Limit 200000, Used 199120, Requested 1840. Please try again in 288ms.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    },
    "req_9d3a6e1f4b2c4a7d9e8f0a1b2c3d4e5f",
)
QUESTION: list[Any] = [{"role": "user", "content": "Where is my order #4417?"}]


def record_cases(
    recording: Recording,
    client: openai.OpenAI,
    api: OpenAIApi,
    *,
    responses_api: bool = True,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """The corpus's OpenAI cases, each a real SDK call through `client` answered by `api`.

    `known` adds to a case's call what this instrumentation is known to get wrong:
    `{case: {"shortfall": {...}, "note": "..."}}`.
    """

    def case(name: str, answer: Reply | Failure, model: str, *, streamed: bool = False) -> None:
        extra = dict((known or {}).get(name, {}))
        if isinstance(answer, Failure):
            recording.case(name, [answer.call(model, **extra)])
        else:
            recording.case(name, [answer.call(streamed=streamed, **extra)])

    answer = api.expect(Reply("chatcmpl-CJq4nTq0oN5pD2x9VwYk7rLm3sAZe", "gpt-4.1-2025-04-14", 2315, 1792, 187))
    client.chat.completions.create(model="gpt-4.1", messages=QUESTION)
    case("chat_gpt-4.1", answer, "gpt-4.1")

    answer = api.expect(Reply("chatcmpl-CJq4pXw2Lr8sKf1GmYd6TzNb0HcQv", "o4-mini-2025-04-16", 3840, 3072, 912, 640))
    client.chat.completions.create(model="o4-mini", messages=QUESTION, reasoning_effort="medium")
    case("chat_o4-mini_reasoning", answer, "o4-mini")

    answer = api.expect(Reply("chatcmpl-CJq4rB7eYt3uWq9PzXc1VnMk5LsDf", "gpt-4.1-mini-2025-04-14", 1456, 1024, 233))
    stream = client.chat.completions.create(
        model="gpt-4.1-mini", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    for _ in stream:
        pass
    case("chat_stream_gpt-4.1-mini", answer, "gpt-4.1-mini", streamed=True)

    if responses_api:
        answer = api.expect(
            Reply(
                "resp_68e3b1c4d2f0819a9e7c5b3a1f0d2e4c06b8a7f5e3d1c9b2", "gpt-5-mini-2025-08-07", 2890, 2048, 1410, 1024
            )
        )
        client.responses.create(model="gpt-5-mini", input="Where is my order #4417?")
        case("responses_gpt-5-mini_reasoning", answer, "gpt-5-mini")

    api.expect(SERVER_ERROR)
    expect_failure(openai.InternalServerError, client.chat.completions.create, model="gpt-4.1", messages=QUESTION)
    case("error_500", SERVER_ERROR, "gpt-4.1")

    api.expect(RATE_LIMITED)
    expect_failure(openai.RateLimitError, client.chat.completions.create, model="gpt-4.1-mini", messages=QUESTION)
    case("error_429", RATE_LIMITED, "gpt-4.1-mini")


class OpenAIApi:
    """Answers each request with the next queued `Reply` or `Failure`, as the OpenAI API would."""

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
        body = json.loads(request.content or b"{}")
        if isinstance(answer, Failure):
            headers = {"x-request-id": answer.request_id, "content-type": "application/json"}
            if answer.status == 429:
                headers |= {"retry-after-ms": "288", "x-ratelimit-remaining-tokens": "880"}
            return self._httpx.Response(answer.status, json=answer.body, headers=headers)
        headers = {"x-request-id": "req_" + answer.response_id[-32:].lower().rjust(32, "0")}
        responses_api = request.url.path.endswith("/responses")
        if body.get("stream"):
            usage = bool(body.get("stream_options", {}).get("include_usage")) or responses_api
            events = _response_events(answer) if responses_api else _chat_chunks(answer, usage=usage)
            stream = b"".join(events)
            return self._httpx.Response(200, content=stream, headers=headers | {"content-type": "text/event-stream"})
        document = _response(answer) if responses_api else _chat_completion(answer)
        return self._httpx.Response(200, json=document, headers=headers)


def _chat_usage(answer: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": answer.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": answer.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_completion(answer: Reply) -> dict[str, Any]:
    return {
        "id": answer.response_id,
        "object": "chat.completion",
        "created": _CREATED,
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _chat_usage(answer),
        "service_tier": "default",
        "system_fingerprint": "fp_b3f1157249",
    }


def _sse(document: dict[str, Any], event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(document, separators=(',', ':'))}\n\n".encode()


def _chat_chunks(answer: Reply, *, usage: bool) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": answer.response_id,
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": answer.model,
            "service_tier": "default",
            "system_fingerprint": "fp_b3f1157249",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage:
            document["usage"] = None
        return document

    words = answer.text.split(" ")
    chunks = [_sse(chunk({"role": "assistant", "content": "", "refusal": None}))]
    chunks += [_sse(chunk({"content": word if i == 0 else " " + word})) for i, word in enumerate(words)]
    chunks.append(_sse(chunk({}, "stop")))
    if usage:
        chunks.append(_sse(chunk({}) | {"choices": [], "usage": _chat_usage(answer)}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def _response(answer: Reply, *, status: str = "completed") -> dict[str, Any]:
    suffix = answer.response_id.removeprefix("resp_")
    output: list[dict[str, Any]] = []
    if answer.reasoning_tokens:
        output.append({"id": "rs_" + suffix, "type": "reasoning", "summary": []})
    output.append(
        {
            "id": "msg_" + suffix,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}],
        }
    )
    completed = status == "completed"
    return {
        "id": answer.response_id,
        "object": "response",
        "created_at": _CREATED,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": answer.model,
        "output": output if completed else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium" if answer.reasoning_tokens else None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": answer.input_tokens,
            "input_tokens_details": {"cached_tokens": answer.cached_tokens},
            "output_tokens": answer.output_tokens,
            "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
            "total_tokens": answer.input_tokens + answer.output_tokens,
        }
        if completed
        else None,
        "user": None,
        "metadata": {},
    }


def _response_events(answer: Reply) -> list[bytes]:
    pending = _response(answer, status="in_progress")
    done = _response(answer)
    message = done["output"][-1]
    text = {"item_id": message["id"], "output_index": 0, "content_index": 0, "logprobs": []}
    events = [
        ("response.created", {"response": pending}),
        ("response.in_progress", {"response": pending}),
        ("response.output_item.added", {"output_index": 0, "item": message | {"status": "in_progress", "content": []}}),
        ("response.output_text.delta", text | {"delta": answer.text}),
        ("response.output_text.done", text | {"text": answer.text}),
        ("response.output_item.done", {"output_index": 0, "item": message}),
        ("response.completed", {"response": done}),
    ]
    return [_sse({"type": name, "sequence_number": n} | fields, event=name) for n, (name, fields) in enumerate(events)]
