"""Who may do what: bearer tokens checked by role and scope before routing (`AuthGate`), refusals and
admin actions audited (`AuthAudit`), and the OpenAPI description of both.

With a tokens file or `api_token` (`tokens.Keyring`), every path but the probes (`OPEN_PATHS`) needs
`Authorization: Bearer <secret>`; unknown paths too, so a client without a token learns nothing about
the routes. A missing, unknown or expired token is `401`; a known token without the role the endpoint
needs (`roles`, given by `app.py`) is `403` with an error naming the role, as is a scoped token at an
endpoint that cannot be split by scope (`scoping.SCOPED_READ_FORBIDDEN`). The token found is put on
the request (`scoping.principal(request)`) for the routes that act on its scope. The gate also bounds
JSON API bodies (size and arrival time) before any route reads them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client.core import CounterMetricFamily, Metric
from starlette._utils import get_route_path  # the router's own: the gate sees the path it routes
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_puppy._logging import RateLimitedLog
from otel_puppy.metrics import Metrics
from otel_puppy.server.errors import RPC_UNAUTHENTICATED, json_error, otlp_reply_type, otlp_status
from otel_puppy.server.receiver import TRACES_PATH
from otel_puppy.server.scoping import SCOPED_READ_FORBIDDEN
from otel_puppy.server.tokens import Keyring, Role, Token

__all__ = (
    "MAX_JSON_BODY_BYTES",
    "OPEN_PATHS",
    "AuthAudit",
    "AuthGate",
    "document_bearer_auth",
)

MAX_JSON_BODY_BYTES: Final = 1024 * 1024
"""A JSON API request body (a decision request is a few hundred bytes)."""
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
"""The probes: they never need a token."""

_RPC_PERMISSION_DENIED: Final = 7
_NO_DIGEST: Final = bytes(32)
"""What an unknown token's digest is compared with: every bearer token costs one comparison of 32 bytes."""
_UNLISTED_PATH: Final = "(a path that needs any token)"
"""How a refused request for a path outside the route table is logged: the path is the client's own text."""
_AUDIT_LOG: Final = RateLimitedLog(logging.getLogger("otel_puppy.audit"))
"""Refusals and admin actions: one line per (outcome, token, endpoint) a minute, with the count of repeats."""


class AuthAudit:
    """Counts refusals in `otel_puppy_auth_refusals_total{reason, role}` and logs them, and every admin
    action, by the token's *name* (never its secret), role, endpoint and outcome, rate-limited.

    Reasons: `missing` (no `Authorization`), `malformed` (not `Bearer`), `invalid` (no such token),
    `expired`, `role` (the token lacks the endpoint's role), `scope` (a scoped token beyond its scope).
    `role` is the role the endpoint needs, `any` for a path that needs only a valid token.
    """

    def __init__(self, metrics: Metrics | None, log: RateLimitedLog = _AUDIT_LOG) -> None:
        self.refusals = _refusals(metrics)
        self.log = log

    def refused(self, reason: str, role: str, token: str, method: str, route: str, status: int) -> None:  # noqa: PLR0917
        self.refusals.add(reason, role)
        self.log.warning(
            f"refused:{reason}:{role}:{token}:{route}",
            "auth: refused %s %s (%d %s): token %s, endpoint needs role %s",
            method,
            route,
            status,
            reason,
            token,
            role,
        )

    def admin(self, token: Token, method: str, route: str, status: int) -> None:
        self.log.log(
            logging.INFO,
            f"admin:{token.name}:{route}:{status}",
            "audit: token %s (role admin) %s %s -> %d",
            token.name,
            method,
            route,
            status,
        )


class _Refusals:
    """`otel_puppy_auth_refusals_total{reason, role}`, exported with the engine's own families, so
    it lives and goes (`engine.close()`) with the engine's registration."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def add(self, reason: str, role: str) -> None:
        with self._lock:
            self._counts[reason, role] = self._counts.get((reason, role), 0) + 1

    def count(self, reason: str, role: str) -> int:
        with self._lock:
            return self._counts.get((reason, role), 0)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = dict(self._counts)
        family = CounterMetricFamily(
            "otel_puppy_auth_refusals",
            "Requests refused by the bearer token check: why (missing, malformed, invalid, expired, role, "
            "scope) and the role the endpoint needs.",
            labels=("reason", "role"),
        )
        for key, count in counts.items():
            family.add_metric(key, float(count))
        yield family


_REFUSALS: weakref.WeakKeyDictionary[Metrics, _Refusals] = weakref.WeakKeyDictionary()


def _refusals(metrics: Metrics | None) -> _Refusals:
    """One count per engine, however many apps are built over it."""
    if metrics is None:
        return _Refusals()
    refusals = _REFUSALS.get(metrics)
    if refusals is None:
        refusals = _REFUSALS[metrics] = _Refusals()
        metrics.add_collector(refusals.collect)
    return refusals


class AuthGate:
    """Pure ASGI, before routing: the bearer token, its role and scope, and a size limit on JSON API bodies.

    `keyring` None: no token needed (loopback without a token). `roles` maps (method, path) to the role
    it needs (`HEAD` as `GET`); any other path needs only a valid token (the API documents, unknown
    paths). The OTLP path limits its own body, by streaming and after decompression. A JSON body must
    arrive within `body_timeout_s`, else `408` and the connection is closed.

    `shortcuts`: by (method, path), an application serving that route itself, handed the request in
    place of the rest of the stack once it has passed here (`server/app.py`'s `/v1/decide`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keyring: Keyring | None,
        roles: Mapping[tuple[str, str], Role],
        audit: AuthAudit | None,
        max_json_body_bytes: int,
        body_timeout_s: float,
        clock: Callable[[], float],
        shortcuts: Mapping[tuple[str, str], ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.roles = dict(roles)
        self.audit = audit or AuthAudit(None)
        self.clock = clock
        self.body_timeout_s = body_timeout_s
        self.max_json_body_bytes = max_json_body_bytes
        self.shortcuts = shortcuts if shortcuts is not None else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The path the router routes (without a `--root-path` prefix, which the scope's `path` starts
        # with): roles, the open paths and the shortcuts are keyed by it, so a prefixed request needs
        # the role of the route it reaches.
        path = get_route_path(scope)
        if self.keyring is not None and path not in OPEN_PATHS:
            method: str = scope["method"]
            needed = self.roles.get(("GET" if method == "HEAD" else method, path))
            token = self._authenticate(scope, path, needed)
            if isinstance(token, Response):
                await token(scope, receive, send)
                return
            if needed is Role.ADMIN:
                send = self._audited(send, token, method, path)
            scope.setdefault("state", {})["principal"] = token
        if path == TRACES_PATH or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):  # asyncio's: half the CPU of anyio's `fail_after`
                body = await self._buffer(scope, receive)
        except TimeoutError:
            message = f"the request body did not arrive within {self.body_timeout_s:g}s"
            await json_error(408, message, {"Connection": "close"})(scope, receive, send)
            return
        if body is None:
            message = f"request body is over the limit of {self.max_json_body_bytes} bytes"
            await json_error(413, message)(scope, receive, send)
            return
        shortcut = self.shortcuts.get((scope["method"], path))
        await (shortcut or self.app)(scope, _replay(body, receive), send)

    def _authenticate(self, scope: Scope, path: str, needed: Role | None) -> Token | Response:
        """The request's token, if it may use this endpoint; else the refusal to send."""
        assert self.keyring is not None
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = bytes(value)
                break
        if header is None:
            return self._refuse(scope, "missing", needed, None)
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return self._refuse(scope, "malformed", needed, None)
        presented = hashlib.sha256(credentials.strip()).digest()
        token = self.keyring.book.by_digest.get(presented)
        # The lookup is by digest, a value the client cannot steer; the comparison confirms it in
        # constant time, and is made for unknown tokens too, so both cost the same.
        confirmed = hmac.compare_digest(presented, presented if token is not None else _NO_DIGEST)
        if token is None or not confirmed:
            return self._refuse(scope, "invalid", needed, None)
        if token.expires_at is not None and self.clock() >= token.expires_at:
            return self._refuse(scope, "expired", needed, token)
        if needed is None or (needed in token.roles and not (token.scope and path in SCOPED_READ_FORBIDDEN)):
            return token
        return self._refuse(scope, "role" if needed not in token.roles else "scope", needed, token)

    def _refuse(self, scope: Scope, reason: str, needed: Role | None, token: Token | None) -> Response:
        """The answer to a refused request, counted and logged (only refusals pay for their words)."""
        method: str = scope["method"]
        path = get_route_path(scope)
        role = needed.value if needed is not None else "any"
        name = token.name if token is not None else ("none" if reason in ("missing", "malformed") else "unknown")
        self.audit.refused(
            reason,
            role,
            name,
            method,
            path if needed is not None else _UNLISTED_PATH,
            403 if reason in ("role", "scope") else 401,
        )
        if reason == "missing":
            return _unauthorized(scope, path, "this endpoint needs 'Authorization: Bearer <token>'", "")
        if reason == "malformed":
            return _unauthorized(scope, path, "the Authorization header must be 'Bearer <token>'", "invalid_request")
        if reason == "invalid" or token is None:
            return _unauthorized(scope, path, "invalid bearer token", "invalid_token")
        if reason == "expired":
            assert token.expires_at is not None
            when = datetime.fromtimestamp(token.expires_at, UTC).isoformat().replace("+00:00", "Z")
            return _unauthorized(scope, path, f"the token {token.name!r} expired at {when}", "invalid_token")
        if reason == "role":
            message = f"{method} {path} needs the {role!r} role; the token {token.name!r} has {token.roles_text}"
            return _forbidden(scope, path, message, "missing_role")
        message = (
            f"{method} {path} is not split by scope; the token {token.name!r} is scoped to "
            f"{token.scope.text} (an unscoped {role!r} token reads it)"
        )
        return _forbidden(scope, path, message, "out_of_scope")

    def _audited(self, send: Send, token: Token, method: str, path: str) -> Send:
        async def audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.audit.admin(token, method, path, int(message["status"]))
            await send(message)

        return audited

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


def document_bearer_auth(app: FastAPI, roles: Mapping[tuple[str, str], Role]) -> None:
    """Say in the OpenAPI document that every operation but the probes needs a bearer token, which
    role each needs (`x-otel-puppy-role`), and that a token without it is answered `403`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        document.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if path in OPEN_PATHS:
                    operation["security"] = []
                    continue
                role = roles.get((method.upper(), path))
                if role is None:
                    continue
                operation["x-otel-puppy-role"] = role.value
                denied = operation.setdefault("responses", {}).get("401", {})
                scoped = " or is scoped, and this endpoint is not split by scope" * (path in SCOPED_READ_FORBIDDEN)
                operation["responses"]["403"] = {
                    **denied,
                    "description": f"The token lacks the `{role.value}` role{scoped}; the message names it.",
                }
        app.openapi_schema = document
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


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value).decode("latin-1")
    return ""


def _unauthorized(scope: Scope, path: str, message: str, error: str) -> Response:
    challenge = 'Bearer realm="otel_puppy"' + (f', error="{error}"' if error else "")
    headers = {"WWW-Authenticate": challenge}
    if path == TRACES_PATH:
        return otlp_status(401, RPC_UNAUTHENTICATED, message, otlp_reply_type(_content_type(scope)), headers)
    return json_error(401, message, headers)


def _forbidden(scope: Scope, path: str, message: str, code: str) -> Response:
    # RFC 6750 section 3.1: a token without the privileges the request needs
    headers = {"WWW-Authenticate": 'Bearer realm="otel_puppy", error="insufficient_scope"'}
    if path == TRACES_PATH:
        return otlp_status(403, _RPC_PERMISSION_DENIED, message, otlp_reply_type(_content_type(scope)), headers)
    return json_error(403, message, headers, code=code)
