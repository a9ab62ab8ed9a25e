"""The OpenAI API as the mock provider answers it, and the calls every OpenAI recorder of helper P1 makes.

The bodies follow what the API returns (chat completions, their stream chunks with
`stream_options={"include_usage": True}`, Responses API objects, error envelopes), with distinct usage
per call so that a token type read as another shows in the cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.corpus.record._scripted import Scripted, call, provider_id, usage

CREATED = 1767225600  # 2026-01-01T00:00:00Z: fixed, so the bodies do not change between recordings
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Summarise the attached support ticket in two sentences."}
]


def headers(seed: str) -> dict[str, str]:
    return {
        "x-request-id": provider_id("req_", seed + "/request", 32, "0123456789abcdef"),
        "openai-processing-ms": "412",
        "openai-version": "2020-10-01",
        "openai-organization": "corpus-org",
    }


def chat_usage(*, prompt: int, cached: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(response_id: str, model: str, wire_usage: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": wire_usage,
        "service_tier": "default",
        "system_fingerprint": "fp_51e1070cf2",
    }


def chat_chunks(response_id: str, model: str, wire_usage: dict[str, Any], parts: list[str]) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion; the last has no choices and the usage (`include_usage`)."""
    base = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_51e1070cf2",
    }
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": "", "refusal": None}]
    deltas += [{"content": part} for part in parts]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}], "usage": None}
        for delta in deltas
    ]
    chunks.append(
        {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], "usage": None}
    )
    chunks.append({**base, "choices": [], "usage": wire_usage})
    return chunks


def response_object(
    response_id: str, model: str, *, input_tokens: int, cached: int, output_tokens: int, reasoning: int, text: str
) -> dict[str, Any]:
    """A completed Responses API object with a reasoning item and a message."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [
            {"id": "rs_" + response_id[5:], "type": "reasoning", "summary": []},
            {
                "id": "msg_" + response_id[5:],
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
            },
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium", "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
        "metadata": {},
    }


SERVER_ERROR = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}


def rate_limit_error(model: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"Rate limit reached for {model} in organization corpus-org on requests per min (RPM): "
            "Limit 500, Used 500, Requested 1. Please try again in 120ms.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


RATE_LIMIT_HEADERS = {
    "retry-after-ms": "120",
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "120ms",
}


@dataclass(frozen=True)
class Case:
    """One case: `run(client, scripted, seed)` scripts the mock, makes the calls and returns them for the manifest."""

    name: str
    run: Callable[[openai.OpenAI, Scripted, str], list[dict[str, Any]]]
    api: str = "chat"  # chat | responses


def _chat(
    client: openai.OpenAI,
    scripted: Scripted,
    seed: str,
    *,
    request_model: str,
    response_model: str,
    prompt: int,
    cached: int,
    completion: int,
    reasoning: int,
) -> list[dict[str, Any]]:
    response_id = provider_id("chatcmpl-", seed, 29)
    wire = chat_usage(prompt=prompt, cached=cached, completion=completion, reasoning=reasoning)
    text = "The customer was double-charged for order 4417. A refund was issued and confirmed by email."
    scripted.json(200, chat_completion(response_id, response_model, wire, text), headers(seed))
    client.chat.completions.create(model=request_model, messages=PROMPT)
    return [
        call(
            outcome="ok",
            http_status=200,
            provider="openai",
            model=response_model,
            response_id=response_id,
            usage=usage(input_tokens=prompt, output_tokens=completion, cache_read=cached, reasoning=reasoning),
        )
    ]


def chat_gpt_4_1(client: openai.OpenAI, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    return _chat(
        client,
        scripted,
        seed,
        request_model="gpt-4.1",
        response_model="gpt-4.1-2025-04-14",
        prompt=2342,
        cached=1920,
        completion=187,
        reasoning=0,
    )


def chat_o4_mini(client: openai.OpenAI, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    return _chat(
        client,
        scripted,
        seed,
        request_model="o4-mini",
        response_model="o4-mini-2025-04-16",
        prompt=3105,
        cached=2048,
        completion=912,
        reasoning=640,
    )


def chat_stream(client: openai.OpenAI, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    response_id = provider_id("chatcmpl-", seed, 29)
    model = "gpt-4.1-mini-2025-04-14"
    wire = chat_usage(prompt=1533, cached=1280, completion=241, reasoning=0)
    chunks = chat_chunks(response_id, model, wire, ["The customer ", "was double-charged; ", "a refund was issued."])
    scripted.stream([*((None, chunk) for chunk in chunks), (None, "[DONE]")], headers(seed))
    stream = client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    for _ in stream:
        pass
    return [
        call(
            outcome="ok",
            http_status=200,
            streamed=True,
            provider="openai",
            model=model,
            response_id=response_id,
            usage=usage(input_tokens=1533, output_tokens=241, cache_read=1280),
        )
    ]


def responses_gpt_5_mini(client: openai.OpenAI, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    response_id = provider_id("resp_", seed, 48, "0123456789abcdef")
    model = "gpt-5-mini-2025-08-07"
    body = response_object(
        response_id,
        model,
        input_tokens=4210,
        cached=3584,
        output_tokens=1375,
        reasoning=1024,
        text="Refund issued for the double charge on order 4417.",
    )
    scripted.json(200, body, headers(seed))
    client.responses.create(model="gpt-5-mini", input="Summarise the attached support ticket in one sentence.")
    return [
        call(
            outcome="ok",
            http_status=200,
            provider="openai",
            model=model,
            response_id=response_id,
            usage=usage(input_tokens=4210, output_tokens=1375, cache_read=3584, reasoning=1024),
        )
    ]


def _failed(
    client: openai.OpenAI, scripted: Scripted, seed: str, *, status: int, model: str, expected: type[Exception]
) -> list[dict[str, Any]]:
    if status == 429:
        scripted.json(429, rate_limit_error(model), {**headers(seed), **RATE_LIMIT_HEADERS})
    else:
        scripted.json(status, SERVER_ERROR, headers(seed))
    try:
        client.chat.completions.create(model=model, messages=PROMPT)
    except expected:
        pass
    else:
        raise AssertionError(f"the mock's HTTP {status} did not fail the call")
    return [call(outcome="error", http_status=status, provider="openai", model=model)]


def error_500(client: openai.OpenAI, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    return _failed(client, scripted, seed, status=500, model="gpt-4.1", expected=openai.InternalServerError)


def error_429(client: openai.OpenAI, scripted: Scripted, seed: str) -> list[dict[str, Any]]:
    return _failed(client, scripted, seed, status=429, model="gpt-4.1-mini", expected=openai.RateLimitError)


CASES = (
    Case("chat-gpt-4.1-cached", chat_gpt_4_1),
    Case("chat-o4-mini-reasoning", chat_o4_mini),
    Case("chat-stream-gpt-4.1-mini", chat_stream),
    Case("responses-gpt-5-mini-reasoning", responses_gpt_5_mini, api="responses"),
    Case("error-500", error_500),
    Case("error-429", error_429),
)
"""Every OpenAI case; a recorder drops those whose API its instrumentation does not cover."""


def client(scripted: Scripted) -> openai.OpenAI:
    """A real client on the mock provider, retries off (a failed call is one request, one span)."""
    import httpx2

    return openai.OpenAI(
        api_key="sk-corpus-no-key", max_retries=0, http_client=httpx2.Client(transport=scripted.transport)
    )
