"""A tracing backend on loopback for forwarding tests: it decodes every `POST /v1/traces` it accepts.

`Downstream()` listens on a free 127.0.0.1 port; `answer(status, retry_after=...)` makes it refuse
what comes next (to play an outage or a 400), `stop()` closes the port and `start()` opens the same
port again (a restart). Each accepted request is decoded with opentelemetry-proto (gzip inflated)
and its spans kept in `spans`, with their resource and scope, in arrival order.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests._service import free_port

__all__ = ("Downstream", "Received", "attributes")


@dataclass(frozen=True)
class Received:
    span: Span
    resource: dict[str, Any]
    scope: str

    @property
    def key(self) -> tuple[str, str]:
        return self.span.trace_id.hex(), self.span.span_id.hex()

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)


def attributes(key_values: Any) -> dict[str, Any]:
    """OTLP key-values as a dict of plain values (the last of a repeated key wins)."""
    found: dict[str, Any] = {}
    for kv in key_values:
        kind = kv.value.WhichOneof("value")
        found[kv.key] = (
            getattr(kv.value, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else kind
        )
    return found


class Downstream:
    """`with Downstream() as down:` a backend at `down.url` until the block ends."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, str]] = []
        """Headers of every request that arrived, accepted or not."""
        self.spans: list[Received] = []
        self._status = 200
        self._retry_after: str | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def answer(self, status: int, retry_after: str | None = None) -> None:
        with self._lock:
            self._status, self._retry_after = status, retry_after

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        # stop()'s shutdown() waits for serve_forever's next look at it: every 0.5 s by default, 0.05 s here
        serve = self._server.serve_forever
        self._thread = threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, name="downstream", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Downstream:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def received(self) -> Iterator[Received]:
        with self._lock:
            yield from list(self.spans)

    def by_key(self) -> dict[tuple[str, str], list[Received]]:
        found: dict[tuple[str, str], list[Received]] = {}
        for received in self.received():
            found.setdefault(received.key, []).append(received)
        return found

    def _accept(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.requests.append(headers)
            status, retry_after = self._status, self._retry_after
        if status != 200:
            return status, ({"Retry-After": retry_after} if retry_after else {}), b"refused by the test"
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(Received(span, resource, scope_spans.scope.name))
        reply = ExportTraceServiceResponse().SerializeToString()
        return 200, {"Content-Type": "application/x-protobuf"}, reply


def _handler(downstream: Downstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # the standard library's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, extra, reply = (404, {}, b"") if self.path != "/v1/traces" else downstream._accept(headers, body)
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:  # the standard library's name
            pass

    return Handler
