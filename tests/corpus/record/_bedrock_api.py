"""A mock of Amazon Bedrock's runtime API (`bedrock-runtime`) on 127.0.0.1, for boto3 pointed at it.

boto3 talks to it over real HTTP (`endpoint_url=api.url`, dummy credentials, SigV4-signed requests
the mock does not check), so the SDK's own parsing runs: JSON for `InvokeModel` and `Converse`, the
binary `application/vnd.amazon.eventstream` framing for `ConverseStream`, and the `x-amzn-ErrorType`
header for errors.

Usage as Bedrock reports it: Converse's `inputTokens` and Anthropic's `input_tokens` exclude the
cache, which is reported beside them (`cacheReadInputTokens`/`cacheWriteInputTokens`, or Anthropic's
own names and the `x-amzn-bedrock-cache-*-input-token-count` headers); `Reply.usage()` adds them up
for the manifest, in genai-prices' convention.
"""

from __future__ import annotations

import binascii
import json
import struct
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote

from tests.corpus.record._cases import with_labels

__all__ = ("RATE_LIMITED", "SERVER_ERROR", "BedrockApi", "Failure", "Reply")


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: str
    """`x-amzn-RequestId`: the only id a Converse answer has."""
    model: str
    """The model label for the manifest: the answer's model where it names one, else the request's model id."""
    input_tokens: int
    """Uncached input tokens, as Bedrock reports them."""
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    message_id: str | None = None
    """The Anthropic message id (`msg_bdrk_...`) of an `InvokeModel` answer; Converse answers have none."""
    text: str = "Your order shipped yesterday and should arrive on Thursday."

    def usage(self) -> dict[str, int]:
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
        shortfall: dict[str, int] | None = None,
        note: str = "",
        span_labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return with_labels(
            {
                "outcome": "ok",
                "http_status": 200,
                "streamed": streamed,
                "provider": "aws",
                "model": self.model,
                "response_id": self.message_id,
                "usage": self.usage(),
                "shortfall": shortfall or {},
                "note": note,
            },
            span_labels,
        )


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    error_type: str
    message: str
    request_id: str

    def call(self, model: str, *, note: str = "", span_labels: dict[str, str] | None = None) -> dict[str, Any]:
        return with_labels(
            {
                "outcome": "error",
                "http_status": self.status,
                "streamed": False,
                "provider": "aws",
                "model": model,
                "response_id": None,
                "usage": dict.fromkeys(
                    ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"), 0
                ),
                "shortfall": {},
                "note": note,
            },
            span_labels,
        )


_Answer = TypeVar("_Answer", Reply, Failure)

SERVER_ERROR = Failure(
    500,
    "InternalServerException",
    "The server encountered an error processing your request. Try your request again.",
    "7c1d9a52-3f4e-4b8a-9e6d-2a5b8c0f1e37",
)
RATE_LIMITED = Failure(
    429,
    "ThrottlingException",
    "Too many tokens, please wait before trying again.",
    "e4b2f816-0a9c-4d3e-b7f1-6c8d2e5a9b40",
)


class BedrockApi:
    """`with BedrockApi() as api:` serves `api.url` until the block ends; answers come from `expect(...)`."""

    def __init__(self) -> None:
        self._queue: deque[Reply | Failure] = deque()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self._queue))
        self._thread = threading.Thread(target=self._server.serve_forever, name="bedrock-mock", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def expect(self, answer: _Answer) -> _Answer:
        self._queue.append(answer)
        return answer

    def __enter__(self) -> BedrockApi:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(queue: deque[Reply | Failure]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            operation = unquote(self.path).rsplit("/", 1)[-1]  # /model/<model id>/<operation>
            answer = queue.popleft()
            if isinstance(answer, Failure):
                body = json.dumps({"message": answer.message}).encode()
                self._send(
                    answer.status,
                    body,
                    {
                        "content-type": "application/json",
                        "x-amzn-RequestId": answer.request_id,
                        "x-amzn-ErrorType": f"{answer.error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                    },
                )
                return
            headers = {"x-amzn-RequestId": answer.request_id}
            if operation == "invoke":
                headers |= {
                    "content-type": "application/json",
                    "x-amzn-bedrock-invocation-latency": "1834",
                    "x-amzn-bedrock-input-token-count": str(answer.input_tokens),
                    "x-amzn-bedrock-output-token-count": str(answer.output_tokens),
                    "x-amzn-bedrock-cache-read-input-token-count": str(answer.cache_read_tokens),
                    "x-amzn-bedrock-cache-write-input-token-count": str(answer.cache_write_tokens),
                }
                self._send(200, json.dumps(_anthropic_message(answer)).encode(), headers)
            elif operation == "converse":
                self._send(200, json.dumps(_converse(answer)).encode(), headers | {"content-type": "application/json"})
            elif operation == "converse-stream":
                stream = b"".join(_converse_events(answer))
                self._send(200, stream, headers | {"content-type": "application/vnd.amazon.eventstream"})
            else:
                self._send(404, b'{"message":"unknown operation"}', {"content-type": "application/json"})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _bedrock_usage(answer: Reply) -> dict[str, int]:
    return {
        "inputTokens": answer.input_tokens,
        "outputTokens": answer.output_tokens,
        "totalTokens": answer.input_tokens
        + answer.cache_read_tokens
        + answer.cache_write_tokens
        + answer.output_tokens,
        "cacheReadInputTokens": answer.cache_read_tokens,
        "cacheWriteInputTokens": answer.cache_write_tokens,
    }


def _anthropic_message(answer: Reply) -> dict[str, Any]:
    return {
        "id": answer.message_id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": answer.input_tokens,
            "cache_creation_input_tokens": answer.cache_write_tokens,
            "cache_read_input_tokens": answer.cache_read_tokens,
            "output_tokens": answer.output_tokens,
        },
    }


def _converse(answer: Reply) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": answer.text}]}},
        "stopReason": "end_turn",
        "usage": _bedrock_usage(answer),
        "metrics": {"latencyMs": 1127},
    }


def _converse_events(answer: Reply) -> list[bytes]:
    words = answer.text.split(" ")
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    events += [
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w if i == 0 else " " + w}})
        for i, w in enumerate(words)
    ]
    events += [
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
        ("metadata", {"usage": _bedrock_usage(answer), "metrics": {"latencyMs": 941}}),
    ]
    return [_event_message(name, payload) for name, payload in events]


def _event_message(event_type: str, payload: dict[str, Any]) -> bytes:
    """One `application/vnd.amazon.eventstream` message: prelude, its CRC, headers, payload, message CRC."""
    headers = b"".join(
        _string_header(name, value)
        for name, value in (
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        )
    )
    body = json.dumps(payload, separators=(",", ":")).encode()
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + headers + body
    return message + struct.pack(">I", binascii.crc32(message))


def _string_header(name: str, value: str) -> bytes:
    encoded_name, encoded_value = name.encode(), value.encode()
    return bytes([len(encoded_name)]) + encoded_name + b"\x07" + struct.pack(">H", len(encoded_value)) + encoded_value
