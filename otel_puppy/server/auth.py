"""The bearer token, as pure ASGI middleware before routing (`AuthGate`), and its OpenAPI description.

With `api_token` set, every path but the probes (`OPEN_PATHS`) needs `Authorization: Bearer`;
unknown paths too, so a client without the token learns nothing about the routes. The gate also
bounds JSON API bodies (size and arrival time) before any route reads them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final

import anyio
from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_puppy.server.errors import RPC_UNAUTHENTICATED, json_error, otlp_reply_type, otlp_status
from otel_puppy.server.receiver import TRACES_PATH

__all__ = ("MAX_JSON_BODY_BYTES", "OPEN_PATHS", "AuthGate", "document_bearer_auth")

MAX_JSON_BODY_BYTES: Final = 1024 * 1024
"""A JSON API request body (a decision request is a few hundred bytes)."""
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
"""The probes: they never need the token."""


class AuthGate:
    """Pure ASGI, before routing: the bearer token, and a size limit on JSON API bodies.

    Unknown paths need the token too, so a client without it learns nothing about the routes.
    The OTLP path limits its own body, by streaming and after decompression. A JSON body must
    arrive within `body_timeout_s`, else `408` and the connection is closed.
    """

    def __init__(self, app: ASGIApp, *, token: bytes | None, max_json_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.token = token
        self.body_timeout_s = body_timeout_s
        # Compared as digests: equal lengths, so the comparison's time says nothing of the token's length.
        self._token_digest = hashlib.sha256(token).digest() if token is not None else b""
        self.max_json_body_bytes = max_json_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.token is not None and path not in OPEN_PATHS:
            problem = self._credentials_problem(scope)
            if problem is not None:
                await _unauthorized(scope, path, *problem)(scope, receive, send)
                return
        if path == TRACES_PATH or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            with anyio.fail_after(self.body_timeout_s):
                body = await self._buffer(scope, receive)
        except TimeoutError:
            message = f"the request body did not arrive within {self.body_timeout_s:g}s"
            await json_error(408, message, {"Connection": "close"})(scope, receive, send)
            return
        if body is None:
            message = f"request body is over the limit of {self.max_json_body_bytes} bytes"
            await json_error(413, message)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _credentials_problem(self, scope: Scope) -> tuple[str, str] | None:
        """`None` when the request carries the token; else (message, RFC 6750 error or '')."""
        assert self.token is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = bytes(value).strip().partition(b" ")
                if scheme.lower() != b"bearer":
                    return "the Authorization header must be 'Bearer <token>'", "invalid_request"
                if hmac.compare_digest(hashlib.sha256(credentials.strip()).digest(), self._token_digest):
                    return None
                return "invalid bearer token", "invalid_token"
        return "this endpoint needs 'Authorization: Bearer <token>'", ""

    async def _buffer(self, scope: Scope, receive: Receive) -> bytes | None:
        limit = self.max_json_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # a disconnect: the app sees an empty body and nobody reads the answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def document_bearer_auth(app: FastAPI) -> None:
    """Say in the OpenAPI document that every operation but the probes needs the bearer token."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        document.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        for path in OPEN_PATHS:
            for operation in document["paths"].get(path, {}).values():
                operation["security"] = []
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _unauthorized(scope: Scope, path: str, message: str, error: str) -> Response:
    challenge = 'Bearer realm="otel_puppy"' + (f', error="{error}"' if error else "")
    headers = {"WWW-Authenticate": challenge}
    if path == TRACES_PATH:
        content_type = ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = bytes(value).decode("latin-1")
        return otlp_status(401, RPC_UNAUTHENTICATED, message, otlp_reply_type(content_type), headers)
    return json_error(401, message, headers)
