"""A mock provider for the recorders: an `httpx2` transport that answers each request with the next scripted response.

Shared by the recorders of helper P1 (logfire, openai-v2, the Anthropic SDK's own tracing); it needs only
`httpx2`, which the provider SDKs (openai >= 3, anthropic >= 2) bring into every corpus env. Files whose
name starts with `_` are not recorders: `scripts/corpus` skips them.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import httpx2

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Scripted:
    """The mock provider: `respond(...)` queues the answer to the next request; `transport` serves them in order.

    A request with nothing queued is a bug in the recorder, answered with a 599 so it cannot pass unnoticed.
    """

    def __init__(self) -> None:
        self._queue: deque[httpx2.Response | Callable[[httpx2.Request], httpx2.Response]] = deque()
        self.requests: list[httpx2.Request] = []
        self.transport = httpx2.MockTransport(self._handle)  # serves sync and async clients alike

    def respond(self, response: httpx2.Response | Callable[[httpx2.Request], httpx2.Response]) -> None:
        """Queue the next answer: a response, or a function of the request (to stream only when asked to)."""
        self._queue.append(response)

    def json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.respond(httpx2.Response(status, json=body, headers=headers))

    def stream(self, events: Iterable[tuple[str | None, dict[str, Any] | str]], headers: dict[str, str]) -> None:
        self.respond(event_stream(events, headers))

    def assert_drained(self) -> None:
        assert not self._queue, f"{len(self._queue)} scripted responses were never requested"

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if not self._queue:
            return httpx2.Response(599, json={"error": {"message": f"nothing scripted for {request.url}"}})
        answer = self._queue.popleft()
        return answer if isinstance(answer, httpx2.Response) else answer(request)


def event_stream(events: Iterable[tuple[str | None, dict[str, Any] | str]], headers: dict[str, str]) -> httpx2.Response:
    """Server-sent events: `(event name or None, data)`; a `str` data is sent as it is (`[DONE]`)."""
    body = b"".join(_sse(name, data) for name, data in events)
    return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream; charset=utf-8", **headers})


def _sse(name: str | None, data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {name}\n" if name else "").encode() + f"data: {payload}\n\n".encode()


def provider_id(prefix: str, seed: str, length: int, alphabet: str = _ALPHABET) -> str:
    """A realistic, deterministic provider id (`chatcmpl-…`, `msg_01…`, `resp_<hex>`), unique per `seed`.

    Each recording seeds its own (instrumentation and case), so no two recordings share a response id:
    replayed into one engine, two recordings must not look like two spans of one call.
    """
    chars: list[str] = []
    block = 0
    while len(chars) < length:
        digest = int.from_bytes(hashlib.sha256(f"{seed}#{block}".encode()).digest(), "big")
        for _ in range(40):  # 40 digits of base 62 use 239 of the 256 bits
            digest, index = divmod(digest, len(alphabet))
            chars.append(alphabet[index])
        block += 1
    return prefix + "".join(chars[:length])


def usage(
    *, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0, reasoning: int = 0
) -> dict[str, int]:
    """What the mock provider returned, in genai-prices' field names (input counts cached tokens too)."""
    return {
        "input_tokens": input_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "output_tokens": output_tokens,
        "reasoning_tokens": reasoning,
    }


def call(
    *,
    outcome: str,
    http_status: int,
    provider: str,
    model: str,
    response_id: str | None = None,
    usage: dict[str, int] | None = None,
    streamed: bool = False,
    shortfall: dict[str, int] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One call of a case, as the manifest records it (schema: `tests/corpus/_recording.py`)."""
    none = {"input_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0}
    return {
        "outcome": outcome,
        "http_status": http_status,
        "streamed": streamed,
        "provider": provider,
        "model": model,
        "response_id": response_id,
        "usage": usage if usage is not None else {**none, "reasoning_tokens": 0},
        "shortfall": shortfall or {},
        "note": note,
    }
