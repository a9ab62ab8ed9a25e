"""Error bodies and handlers: what a client is told when something fails, in one place.

The JSON API's errors are always `{"code": ..., "message": ...}` (`json_error`, the handlers
`add_error_handlers` installs); OTLP's are a `google.rpc.Status` in the request's own encoding
(`otlp_status`, `reply_type`), as the OTLP/HTTP specification says. Causes that name files or
hosts go to the service log, never into a body.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from otel_puppy._logging import RateLimitedLog
from otel_puppy.bounds import shown
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import RequestError, StoreCorruptError, StoreError
from otel_puppy.server.otlp import JSON, PROTOBUF, encode_status
from otel_puppy.server.schemas import ErrorResponse

__all__ = (
    "CORRUPT_STORE_MESSAGE",
    "JSON_ERRORS",
    "PROTOBUF_TYPES",
    "RPC_DATA_LOSS",
    "RPC_DEADLINE_EXCEEDED",
    "RPC_INTERNAL",
    "RPC_INVALID_ARGUMENT",
    "RPC_RESOURCE_EXHAUSTED",
    "RPC_UNAUTHENTICATED",
    "RPC_UNAVAILABLE",
    "STORE_RETRY_AFTER_S",
    "add_error_handlers",
    "json_error",
    "media_type",
    "otlp_reply_type",
    "otlp_status",
)

logger = logging.getLogger("otel_puppy")
_LOG: Final = RateLimitedLog(logger)
"""Lines a client can trigger at will: one per reason per minute, with the count of repeats."""

STORE_RETRY_AFTER_S: Final = 5
CORRUPT_STORE_MESSAGE: Final = (
    "the state store is damaged, nothing was applied and retrying will not help: "
    "the operator must restore the state file from a backup or move it aside (see the service log)"
)
"""What a client is told when the store is corrupt (`/v1/traces` 500, `/readyz` 503): no paths."""
PROTOBUF_TYPES: Final = frozenset({PROTOBUF, "application/protobuf"})

# gRPC status codes for `google.rpc.Status.code`; the spec says clients act on the HTTP status.
RPC_INVALID_ARGUMENT: Final = 3
RPC_RESOURCE_EXHAUSTED: Final = 8
RPC_INTERNAL: Final = 13
RPC_UNAVAILABLE: Final = 14
RPC_DEADLINE_EXCEEDED: Final = 4
RPC_DATA_LOSS: Final = 15
RPC_UNAUTHENTICATED: Final = 16

_ERROR_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "content_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}

JSON_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ErrorResponse, "description": "A request body that is not UTF-8 text."},
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token (when `api_token` is set)."},
    413: {"model": ErrorResponse, "description": "Request body over the limit."},
    422: {"model": ErrorResponse, "description": "The request does not validate; the message names the field."},
    503: {"model": ErrorResponse, "description": "The state store is unavailable; retry after `Retry-After`."},
}


def media_type(content_type: str) -> str:
    """The media type of a `Content-Type` value, parameters dropped, lower case."""
    return content_type.partition(";")[0].strip().lower()


def otlp_reply_type(content_type: str) -> str:
    """The request's own encoding; JSON when it has none we speak (a `415`, a `401`)."""
    return PROTOBUF if media_type(content_type) in PROTOBUF_TYPES else JSON


def otlp_status(
    http_status: int, code: int, message: str, reply_type: str, headers: dict[str, str] | None = None
) -> Response:
    """A `google.rpc.Status` reply, the body of every OTLP `4xx`/`5xx`."""
    return Response(encode_status(code, message, reply_type), http_status, headers=headers, media_type=reply_type)


def json_error(
    status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None
) -> JSONResponse:
    """A JSON API error body: `code` defaults to the status's own (`not_found`, `unavailable`...)."""
    return JSONResponse(
        {"code": code or _ERROR_CODES.get(status, "error"), "message": message}, status, headers=headers
    )


def add_error_handlers(app: FastAPI, engine: PolicyEngine) -> None:
    """Every exception a route lets through becomes a JSON error body; unknown ones count as internal errors."""

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return json_error(422, _validation_message(exc.errors()))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return json_error(exc.status_code, message, dict(exc.headers or {}))

    async def on_store_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StoreCorruptError):
            _LOG.error("api:corrupt", "%s %s failed, the store is damaged: %s", request.method, request.url.path, exc)
            return json_error(500, CORRUPT_STORE_MESSAGE, code="store_corrupt")
        _LOG.warning("api:store", "%s %s failed, the store failed: %s", request.method, request.url.path, exc)
        message = f"state store unavailable: {exc}"
        return json_error(503, message, {"Retry-After": str(STORE_RETRY_AFTER_S)}, code="store_unavailable")

    async def on_request_error(request: Request, exc: Exception) -> Response:
        # a value of the request the engine refuses (engine.decide): the client's, never a fail-open
        return json_error(422, str(exc))

    async def on_internal_error(request: Request, exc: Exception) -> Response:
        engine.metrics.record_internal_error("server")
        path = request.url.path
        _LOG.error("api:internal", "otel_puppy internal error in %s %s", request.method, path, exc_info=exc)
        return json_error(500, "internal error; see the service log")

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(Exception, on_internal_error)


def _validation_message(errors: Iterable[Any]) -> str:
    """`body.priority: Input should be 'critical', ...; body.model: Field required`. The client's own
    names (a query parameter's, a JSON key's) as `bounds.shown` quotes them, and the first
    `_ERRORS_SHOWN` errors with a count of the rest: the message stays short whatever the request held."""
    parts: list[str] = []
    errors = list(errors)
    for error in errors[:_ERRORS_SHOWN]:
        where = ""
        for part in error.get("loc", ()):
            where += f"[{part}]" if isinstance(part, int) else (f".{shown(part)}" if where else shown(part))
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            parts.append(f"body is not valid JSON: {reason}")
        else:
            parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    if len(errors) > _ERRORS_SHOWN:
        parts.append(f"and {len(errors) - _ERRORS_SHOWN} more")
    return "; ".join(parts) or "invalid request"


_ERRORS_SHOWN: Final = 10
