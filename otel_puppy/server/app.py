"""The service's HTTP surface: OTLP/HTTP in, decisions and state out (`otel-puppy serve`).

`create_app(engine)` builds a FastAPI application over one `PolicyEngine`:

- `POST /v1/traces`: OTLP/HTTP as the OpenTelemetry protocol specification says
  (`opentelemetry-specification/specification/protocol/otlp.md`, "OTLP/HTTP"): protobuf and
  JSON on one path, gzip and deflate, the reply in the request's encoding, an empty request is
  success, bad data `400`, spans with unusable ids in `partial_success`, overload and store
  failures `503` with `Retry-After` (retryable), every failure body a `google.rpc.Status`.
  A `200` is sent only once `observe_many` has applied the batch to the store: an
  acknowledged span is never lost, and a retried one is deduplicated there.
- The JSON API (`/v1/decide`, `/v1/budgets`, `/v1/breakers`, `/v1/anomalies`, `/v1/models`,
  `/v1/health`, `/v1/policies/reload`), described by the models in `schemas.py`; its errors
  are always `{"code": ..., "message": ...}`.
- `/metrics` for Prometheus, `/healthz` (the process is up) and `/readyz` (the store answers).

With `api_token` set, every path but `/healthz` and `/readyz` needs `Authorization: Bearer`.
Work that touches pricing or the store runs in worker threads, so the event loop only moves
bytes. Request bodies are never logged: prompts may be in them.

>>> app = create_app(PolicyEngine.from_settings())  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=4319)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import zlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import otel_puppy
from otel_puppy._logging import RateLimitedLog
from otel_puppy.engine import TOTAL_SCOPE, PolicyEngine
from otel_puppy.exceptions import PolicyErrors, RequestError, SettingsError, StoreCorruptError, StoreError
from otel_puppy.health import assess
from otel_puppy.server.memory import MemoryFull, MemoryLimiter, Reservation, decode_cost
from otel_puppy.server.otlp import (
    JSON,
    PROTOBUF,
    OtlpDecodeError,
    calls_from_request,
    decode_traces,
    encode_response,
    encode_status,
)
from otel_puppy.server.schemas import (
    AnomaliesResponse,
    BreakersResponse,
    BudgetsResponse,
    DecideRequest,
    DecisionResponse,
    ErrorResponse,
    HealthResponse,
    InvalidPoliciesResponse,
    LiveResponse,
    ModelsResponse,
    ReadyResponse,
    ReloadResponse,
)
from otel_puppy.store.base import ApplyResult
from otel_puppy.store.memory import MemoryStore
from otel_puppy.windows import RollingWindow

__all__ = (
    "INGEST_WAIT_S",
    "MAX_BODY_BYTES",
    "MAX_CONCURRENT_INGEST",
    "MAX_JSON_BODY_BYTES",
    "OVERLOAD_RETRY_AFTER_S",
    "STORE_RETRY_AFTER_S",
    "TRACES_PATH",
    "create_app",
)

logger = logging.getLogger("otel_puppy")
_LOG: Final = RateLimitedLog(logger)
"""Lines a client can trigger at will: one per reason per minute, with the count of repeats."""

TRACES_PATH: Final = "/v1/traces"
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""An OTLP request body, after decompression (and before it: a compressed body is never larger)."""
MAX_JSON_BODY_BYTES: Final = 1024 * 1024
"""A JSON API request body (a decision request is a few hundred bytes)."""
MAX_CONCURRENT_INGEST: Final = 8
"""OTLP requests being read, decoded and applied at once; with `MAX_BODY_BYTES` it bounds memory."""
INGEST_WAIT_S: Final = 0.05
"""How long an OTLP request waits for a free slot before it is refused with `503` (never queued)."""
OVERLOAD_RETRY_AFTER_S: Final = 1
STORE_RETRY_AFTER_S: Final = 5
MEMORY_RETRY_AFTER_S: Final = 1
READY_TIMEOUT_S: Final = 2.0
CORRUPT_STORE_MESSAGE: Final = (
    "the state store is damaged, nothing was applied and retrying will not help: "
    "the operator must restore the state file from a backup or move it aside (see the service log)"
)
"""What a client is told when the store is corrupt (`/v1/traces` 500, `/readyz` 503): no paths."""

_OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
_PROTOBUF_TYPES: Final = frozenset({PROTOBUF, "application/protobuf"})
_OTLP_TYPES: Final = _PROTOBUF_TYPES | {JSON}
_IDENTITY: Final = frozenset({"", "identity"})
_GZIP: Final = frozenset({"gzip", "x-gzip"})
_ENCODINGS: Final = _IDENTITY | _GZIP | {"deflate"}
_INFLATE_CHUNK: Final = 256 * 1024
_MAX_MESSAGES: Final = 10
_READY_WINDOW: Final = RollingWindow(3600, "1h")

# gRPC status codes for `google.rpc.Status.code`; the spec says clients act on the HTTP status.
_INVALID_ARGUMENT: Final = 3
_RESOURCE_EXHAUSTED: Final = 8
_INTERNAL: Final = 13
_UNAVAILABLE: Final = 14
_DEADLINE_EXCEEDED: Final = 4
_DATA_LOSS: Final = 15
_UNAUTHENTICATED: Final = 16

_NO_TELEMETRY: Final = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}

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

_JSON_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ErrorResponse, "description": "A request body that is not UTF-8 text."},
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token (when `api_token` is set)."},
    413: {"model": ErrorResponse, "description": "Request body over the limit."},
    422: {"model": ErrorResponse, "description": "The request does not validate; the message names the field."},
    503: {"model": ErrorResponse, "description": "The state store is unavailable; retry after `Retry-After`."},
}


def create_app(
    engine: PolicyEngine,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_json_body_bytes: int = MAX_JSON_BODY_BYTES,
    max_concurrent_ingest: int = MAX_CONCURRENT_INGEST,
    ingest_wait_s: float = INGEST_WAIT_S,
    body_timeout_s: float | None = None,
    ingest_memory_limit_bytes: int | None = None,
) -> FastAPI:
    """The HTTP application over `engine`. Serve it with any ASGI server (uvicorn).

    The engine is not closed with the application: its owner closes it. `body_timeout_s` and
    `ingest_memory_limit_bytes` default to the engine's settings of the same names.

    Raises:
        SettingsError: `api_token` is set but empty.
    """
    token = engine.settings.api_token
    token_bytes: bytes | None = None
    if token is not None:
        token_bytes = token.get_secret_value().encode("utf-8")
        if not token_bytes.strip():
            raise SettingsError("OTEL_PUPPY_API_TOKEN is set but empty: set a real token, or unset it")

    options: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:
        # FastAPI's own OpenTelemetry instrumentation (on by default since it has one) stays
        # off: a receiver of spans must not emit spans about receiving them (an exporter
        # pointed at the service would loop), and its logs of validation failures carry
        # request values.
        options["telemetry"] = _NO_TELEMETRY
    app = FastAPI(
        title="otel_puppy",
        version=otel_puppy.__version__,
        summary="Cost and reliability control for LLM agents, inside the OpenTelemetry pipeline.",
        **options,
    )
    settings = engine.settings
    body_timeout = settings.body_timeout_s if body_timeout_s is None else body_timeout_s
    memory = MemoryLimiter(
        settings.ingest_memory_limit_bytes if ingest_memory_limit_bytes is None else ingest_memory_limit_bytes
    )
    app.add_middleware(_Gate, token=token_bytes, max_json_body_bytes=max_json_body_bytes, body_timeout_s=body_timeout)
    if token_bytes is not None:
        _document_bearer_auth(app)
    _add_error_handlers(app, engine)
    receiver = _TraceReceiver(
        engine,
        max_body_bytes=max_body_bytes,
        max_concurrent=max_concurrent_ingest,
        wait_s=ingest_wait_s,
        body_timeout_s=body_timeout,
        memory=memory,
    )

    @app.post(
        TRACES_PATH,
        tags=["otlp"],
        summary="OTLP/HTTP trace export",
        response_class=Response,
        responses=_OTLP_RESPONSES,
        openapi_extra=_OTLP_REQUEST,
    )
    async def export_traces(request: Request) -> Response:
        """Receive an `ExportTraceServiceRequest` (protobuf or JSON, optionally gzip or deflate).

        Answers only after the batch is applied; spans with unusable ids are counted in
        `partial_success.rejected_spans`. Errors are `google.rpc.Status` in the request's encoding.
        """
        return await receiver.receive(request)

    # With the memory store a decision is tens of microseconds of CPU: answering on the event loop
    # beats a hop to a worker thread. A store that does I/O keeps the event loop free instead.
    inline_decide = isinstance(engine.store, MemoryStore)

    async def decide(body: DecideRequest) -> Response:
        """May this call go ahead, and with which model? Reserves `estimated_cost_usd` on matching budgets."""
        request = body.to_request()
        if inline_decide:
            decision = engine.decide(request)
        else:
            decision = await anyio.to_thread.run_sync(engine.decide, request)
        # pydantic-core's encoder: a third of `json.dumps`'s time for a decision with nine hits
        return Response(to_json(decision.to_dict(), inf_nan_mode="null"), media_type="application/json")

    # Every agent asks before every call: served by `_BodyRoute`, not FastAPI's request pipeline.
    app.router.add_api_route(
        "/v1/decide",
        decide,
        methods=["POST"],
        tags=["decisions"],
        response_model=DecisionResponse,
        responses=_JSON_ERRORS,
        route_class_override=_BodyRoute,
    )

    @app.get("/v1/budgets", tags=["state"], response_model=BudgetsResponse, responses=_JSON_ERRORS)
    def budgets() -> JSONResponse:
        """Every known budget instance: spend, reservations and limit in its current window."""
        return JSONResponse({"budgets": [hit.to_dict() for hit in engine.snapshot().budgets]})

    @app.get("/v1/breakers", tags=["state"], response_model=BreakersResponse, responses=_JSON_ERRORS)
    def breakers() -> JSONResponse:
        """Every circuit breaker subject and its state."""
        return JSONResponse({"breakers": [status.to_dict() for status in engine.snapshot().breakers]})

    @app.get("/v1/anomalies", tags=["state"], response_model=AnomaliesResponse, responses=_JSON_ERRORS)
    def anomalies() -> JSONResponse:
        """Every anomaly detector: current value, baseline, score, and whether it is firing."""
        return JSONResponse({"anomalies": [status.to_dict() for status in engine.snapshot().anomalies]})

    @app.get("/v1/models", tags=["state"], response_model=ModelsResponse, responses=_JSON_ERRORS)
    def models() -> JSONResponse:
        """Every model seen recently: requests, errors, latency percentiles, cost per request."""
        return JSONResponse({"models": [stat.to_dict() for stat in engine.snapshot().models]})

    @app.get("/v1/health", tags=["state"], response_model=HealthResponse, responses=_JSON_ERRORS)
    def health() -> JSONResponse:
        """The system's health as data: the worst indicator's status, every indicator, recommendations
        naming the provider, model or budget to act on, and hourly cost, error and latency trends."""
        return JSONResponse(assess(engine).to_dict())

    @app.post(
        "/v1/policies/reload",
        tags=["policies"],
        response_model=ReloadResponse,
        responses={
            **_JSON_ERRORS,
            422: {"model": InvalidPoliciesResponse, "description": "The files are invalid; nothing changed."},
        },
    )
    def reload_policies() -> JSONResponse:
        """Load the policy files again. A broken edit answers 422 with every error; the running set stays."""
        try:
            policies = engine.reload()
        except PolicyErrors as exc:
            errors = [
                {"file": str(e.file), "line": e.line, "column": e.column, "path": e.path, "message": e.message}
                for e in exc.errors
            ]
            count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
            message = f"{count} in the policy files; the running policies stay in force"
            return JSONResponse({"code": "invalid_policies", "message": message, "errors": errors}, status_code=422)
        return JSONResponse({"summary": policies.summary(), "sources": [str(path) for path in policies.sources]})

    @app.get(
        "/metrics",
        tags=["monitoring"],
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
            401: _JSON_ERRORS[401],
        },
    )
    def metrics() -> Response:
        """Every otel_puppy series, for Prometheus to scrape."""
        return Response(generate_latest(engine.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["monitoring"], response_model=LiveResponse)
    async def healthz() -> JSONResponse:
        """The process is up (liveness). Never needs the token."""
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        tags=["monitoring"],
        response_model=ReadyResponse,
        responses={503: {"model": ErrorResponse, "description": "The store does not answer, or its state is damaged."}},
    )
    async def readyz() -> JSONResponse:
        """The store answers a cheap read and reports its state sound (readiness). Never needs the token."""
        problem = f"the store did not answer within {READY_TIMEOUT_S:g}s"
        with anyio.move_on_after(READY_TIMEOUT_S):
            try:
                state_problem = await anyio.to_thread.run_sync(_read_store, engine, abandon_on_cancel=True)
            except StoreCorruptError as exc:
                logger.warning("readiness: the store is damaged: %s", _describe(exc))
                problem = CORRUPT_STORE_MESSAGE
            except Exception as exc:
                # The probe needs no token: the details (paths, hosts) go to the log, not the answer.
                logger.warning("readiness: the store failed a read: %s", _describe(exc))
                problem = f"the store failed a read ({type(exc).__name__}); see the service log"
            else:
                if state_problem is None:
                    return JSONResponse({"status": "ready"})
                logger.warning("readiness: the store's state cannot be trusted: %s", state_problem)
                problem = "the store's state cannot be read or is damaged; see the service log"
        return _error(503, problem, code="not_ready")

    # Load balancers probe with HEAD: the same status, no body (the server drops it). Undocumented,
    # as FastAPI would otherwise list each probe twice under one operation id.
    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    return app


class _BodyRoute(APIRoute):
    """A route whose endpoint takes one JSON body (a pydantic model) and returns a `Response`,
    served without FastAPI's request pipeline (dependency solving, body parsing, response model).

    Documented from the endpoint's signature like any route. The body is read, parsed and
    validated here as FastAPI would (the same content types, the same errors, so the same 422
    messages), then the endpoint is awaited with it. For `/v1/decide`, which every agent calls
    before every model call.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Any], Coroutine[Any, Any, Response]] = self.endpoint
        model = self.body_field.field_info.annotation if self.body_field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{self.path}: a _BodyRoute endpoint takes one body parameter, a pydantic model")

        async def handle(request: Request) -> Response:
            return await endpoint(_validated_body(model, await request.body(), request.headers.get("content-type")))

        return handle


def _validated_body(model: type[BaseModel], body: bytes, content_type: str | None) -> BaseModel:
    """`body` as FastAPI reads a JSON body parameter: parsed when the content type is JSON (a
    body of another type is validated as bytes, and fails), an empty body is a missing one."""
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    value: Any = body
    if content_type is not None and _is_json(content_type):
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
            raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}], body=exc.doc) from None
        except (ValueError, RecursionError):  # not UTF-8, or nested past the parser's depth
            raise StarletteHTTPException(400, "There was an error parsing the body") from None
    try:
        return model.model_validate(value, from_attributes=True)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=value) from None


def _is_json(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, parameters ignored."""
    maintype, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))


def _read_store(engine: PolicyEngine) -> str | None:
    """In a worker thread: a real read, then the store's own report (why its state is unsound, or None)."""
    # A key that exists in every store: an empty read may not touch the backend at all.
    engine.store.totals([(TOTAL_SCOPE, _READY_WINDOW)], engine.clock.now())
    return state_unreadable(engine)


def state_unreadable(engine: PolicyEngine) -> str | None:
    """Why the engine's state cannot be trusted now (a damaged file, budgets whose values cannot be
    read), from `PolicyEngine.problems()`; None when sound. The hook `/readyz` fails on: the reason
    goes to the log, never to the unauthenticated probe."""
    problems = engine.problems()
    return "; ".join(problems) if problems else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- OTLP/HTTP ------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _status(
    http_status: int, code: int, message: str, reply_type: str, headers: dict[str, str] | None = None
) -> Response:
    """A `google.rpc.Status` reply, the body of every OTLP `4xx`/`5xx`."""
    return Response(encode_status(code, message, reply_type), http_status, headers=headers, media_type=reply_type)


def _reply_type(content_type: str) -> str:
    """The request's own encoding; JSON when it has none we speak (a `415`, a `401`)."""
    return PROTOBUF if _media_type(content_type) in _PROTOBUF_TYPES else JSON


class _TraceReceiver:
    """`POST /v1/traces`: bounded reads, incremental inflation, decode and apply off the event loop.

    The body is read first, within `body_timeout_s`, holding nothing but the bytes received (counted
    against `memory`); only then does the request take one of the ingest slots, so clients that
    trickle or stall their bodies cannot starve the others. Before decoding, the request reserves
    an upper bound of what decoding allocates (`server/memory.py`).
    """

    def __init__(
        self,
        engine: PolicyEngine,
        *,
        max_body_bytes: int,
        max_concurrent: int,
        wait_s: float,
        body_timeout_s: float,
        memory: MemoryLimiter,
    ) -> None:
        self.engine = engine
        self.max_body_bytes = max_body_bytes
        self.wait_s = wait_s
        self.body_timeout_s = body_timeout_s
        self.memory = memory
        self._slots = anyio.Semaphore(max_concurrent)

    async def receive(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if _media_type(content_type) not in _OTLP_TYPES:
            shown = content_type[:80] or "none"
            message = f"unsupported content type {shown!r}: send {PROTOBUF} or {JSON}"
            return _status(415, _INVALID_ARGUMENT, message, JSON)
        reply_type = _reply_type(content_type)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            message = f"unsupported content encoding {encoding[:40]!r}: send gzip, deflate or identity"
            return _status(415, _INVALID_ARGUMENT, message, reply_type)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large(reply_type)

        with self.memory.reservation() as reservation:
            try:
                with anyio.fail_after(self.body_timeout_s):
                    raw = await self._read(request, reservation)
                if raw is None:
                    return self._too_large(reply_type)
                if not await self._take_slot():
                    message = "overloaded: too many exports in progress; retry after the Retry-After interval"
                    retry = {"Retry-After": str(OVERLOAD_RETRY_AFTER_S)}
                    return _status(503, _UNAVAILABLE, message, reply_type, retry)
                try:
                    # handed over in a list the worker empties: the raw body is freed once inflated
                    holder = [raw]
                    del raw
                    rejected, message = await anyio.to_thread.run_sync(
                        self._ingest, holder, encoding, content_type, reservation
                    )
                finally:
                    self._slots.release()
            except TimeoutError:
                # Retrying will not make this client faster; the connection is closed, freeing it.
                message = f"the request body did not arrive within {self.body_timeout_s:g}s"
                return _status(408, _DEADLINE_EXCEEDED, message, reply_type, {"Connection": "close"})
            except MemoryFull as exc:
                return self._memory_full(exc, reply_type)
            except _TooLarge:
                return self._too_large(reply_type)
            except OtlpDecodeError as exc:
                return _status(400, _INVALID_ARGUMENT, str(exc), reply_type)
            except StoreCorruptError:
                # 500, which exporters do not retry: a damaged file is not fixed by sending it again.
                _LOG.error("traces:corrupt", "OTLP export refused, the store is damaged", exc_info=True)
                return _status(500, _DATA_LOSS, CORRUPT_STORE_MESSAGE, reply_type)
            except StoreError as exc:
                # Nothing was acknowledged: the exporter retries the whole batch, deduplicated later.
                # The cause (a file path, a host) goes to the log, not to the client.
                _LOG.warning("traces:store", "OTLP export refused, the store failed: %s", exc)
                message = "state store unavailable, nothing was applied; retry after the Retry-After interval"
                retry = {"Retry-After": str(STORE_RETRY_AFTER_S)}
                return _status(503, _UNAVAILABLE, message, reply_type, retry)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is listening any more
            except Exception:
                self.engine.metrics.record_internal_error("server.traces")
                _LOG.error("traces:internal", "otel_puppy internal error receiving an OTLP export", exc_info=True)
                return _status(500, _INTERNAL, "internal error; see the service log", reply_type)
        return Response(encode_response(rejected, message, reply_type), 200, media_type=reply_type)

    async def _take_slot(self) -> bool:
        """One of the ingest slots, waiting at most `wait_s` (an export is refused, never queued)."""
        with anyio.move_on_after(self.wait_s):
            await self._slots.acquire()
            return True
        return False

    def _memory_full(self, exc: MemoryFull, reply_type: str) -> Response:
        if not exc.ever:
            message = (
                f"this batch needs up to {exc.wanted} bytes to decode, over the ingest memory limit of "
                f"{exc.limit} bytes: send smaller batches"
            )
            return _status(413, _RESOURCE_EXHAUSTED, message, reply_type)
        message = "overloaded: the ingest memory limit is reached; retry after the Retry-After interval"
        return _status(503, _UNAVAILABLE, message, reply_type, {"Retry-After": str(MEMORY_RETRY_AFTER_S)})

    def _too_large(self, reply_type: str) -> Response:
        message = f"request body is over the limit of {self.max_body_bytes} bytes (after decompression)"
        return _status(413, _RESOURCE_EXHAUSTED, message, reply_type)

    async def _read(self, request: Request, reservation: Reservation) -> bytearray | None:
        """The raw body, or `None` as soon as it passes the limit (chunked bodies have no length).

        Raises:
            MemoryFull: the bytes received do not fit in the ingest memory limit.
        """
        body = bytearray()  # one buffer, no join: the body is held once
        async for chunk in request.stream():
            if len(body) + len(chunk) > self.max_body_bytes:
                return None
            reservation.grow_to(len(body) + len(chunk))
            body += chunk
        return body

    def _ingest(
        self, holder: list[bytearray], encoding: str, content_type: str, reservation: Reservation
    ) -> tuple[int, str]:
        """In a worker thread: inflate, decode, apply. Returns (rejected spans, partial-success message).

        Raises:
            MemoryFull: inflating or decoding the body would pass the ingest memory limit.
        """
        raw = holder.pop()
        received = len(raw)
        body = _inflate(raw, encoding, self.max_body_bytes, lambda size: reservation.grow_to(received + size))
        del raw
        if not body:
            return 0, ""  # the spec: an empty request is a success
        reservation.grow_to(decode_cost(body, _media_type(content_type) == JSON))
        request = decode_traces(body, content_type)  # protobuf and `json` read a bytearray as they read bytes
        del body
        calls, rejected, problems = calls_from_request(
            request, max_messages=_MAX_MESSAGES, limits=self.engine.settings.call_limits
        )
        del request
        warnings: list[str] = []
        if calls:
            for observation in self.engine.observe_many(calls):
                call = observation.call
                if observation.result is ApplyResult.APPLIED and call.problems and len(warnings) < _MAX_MESSAGES:
                    span = f"span {call.trace_id:032x}/{call.span_id:016x}"
                    warnings.append(f"{span} counted but not priced: {', '.join(call.problems)}")
        if rejected:
            self.engine.metrics.record_spans("rejected", rejected)
        parts: list[str] = []
        if rejected:
            more = rejected - len(problems)
            listed = "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
            parts.append(f"{rejected} span{'s' if rejected != 1 else ''} rejected: {listed}")
        parts.extend(warnings)
        return rejected, "; ".join(parts)


def _inflate(raw: bytearray, encoding: str, limit: int, reserve: Callable[[int], None] | None = None) -> bytearray:
    """Decompress `raw` a bounded chunk at a time, stopping as soon as the output passes `limit`.

    A gzip bomb (a small body that inflates to gigabytes) therefore costs at most `limit` plus
    one chunk of memory. gzip bodies may hold several members (RFC 1952); `deflate` is the zlib
    format (RFC 9110), and raw deflate, which some clients send, is accepted too. `reserve` is
    told the output's size as it grows (it raises to stop), and the output is never copied.

    Raises:
        _TooLarge: the inflated body is over `limit`.
        OtlpDecodeError: the body is not valid for its encoding.
    """
    if encoding in _IDENTITY or not raw:
        return raw
    if encoding in _GZIP:
        wbits = 16 + zlib.MAX_WBITS
    else:
        zlib_header = len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    out = bytearray()
    pending: bytes | bytearray = raw
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof:
                chunk = inflater.decompress(pending, _INFLATE_CHUNK)
                pending = inflater.unconsumed_tail
                out += chunk
                if len(out) > limit:
                    raise _TooLarge
                if reserve is not None and chunk:
                    reserve(len(out))
                if not chunk and not pending and not inflater.eof:
                    raise OtlpDecodeError(f"{encoding} body is truncated")
            pending = inflater.unused_data
            if not pending or encoding not in _GZIP:
                break
    except zlib.error as exc:
        raise OtlpDecodeError(f"invalid {encoding} body: {exc}") from None
    return out


_STATUS_SCHEMA: Final = {
    "description": "A `google.rpc.Status` in the request's encoding.",
    "content": {
        PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        JSON: {
            "schema": {
                "type": "object",
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            }
        },
    },
}
_OTLP_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Applied. An `ExportTraceServiceResponse` in the request's encoding; "
        "`partialSuccess.rejectedSpans` counts spans with unusable ids.",
        "content": {
            PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            JSON: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "partialSuccess": {
                            "type": "object",
                            "properties": {"rejectedSpans": {"type": "string"}, "errorMessage": {"type": "string"}},
                        }
                    },
                }
            },
        },
    },
    400: {**_STATUS_SCHEMA, "description": "Malformed payload (do not retry); the message names what is wrong."},
    401: {**_STATUS_SCHEMA, "description": "Missing or wrong bearer token (when `api_token` is set)."},
    413: {**_STATUS_SCHEMA, "description": f"Body over {MAX_BODY_BYTES} bytes after decompression."},
    415: {**_STATUS_SCHEMA, "description": "Content type not protobuf or JSON, or an encoding not gzip/deflate."},
    503: {**_STATUS_SCHEMA, "description": "Overloaded or store unavailable; retry after `Retry-After` seconds."},
}
_OTLP_REQUEST: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "description": "An OTLP `ExportTraceServiceRequest`; `Content-Encoding: gzip` or `deflate` optional.",
        "content": {
            PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            # proto3 JSON: `null` is the field's default (no spans), as an absent field is
            JSON: {"schema": {"type": "object", "properties": {"resourceSpans": {"type": ["array", "null"]}}}},
        },
    }
}


# --- auth and body limits -------------------------------------------------------------------


class _Gate:
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
        if self.token is not None and path not in _OPEN_PATHS:
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
            await _error(408, message, {"Connection": "close"})(scope, receive, send)
            return
        if body is None:
            message = f"request body is over the limit of {self.max_json_body_bytes} bytes"
            await _error(413, message)(scope, receive, send)
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


def _document_bearer_auth(app: FastAPI) -> None:
    """Say in the OpenAPI document that every operation but the probes needs the bearer token."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        document.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        for path in _OPEN_PATHS:
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
        return _status(401, _UNAUTHENTICATED, message, _reply_type(content_type), headers)
    return _error(401, message, headers)


# --- JSON errors ----------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"code": code or _ERROR_CODES.get(status, "error"), "message": message}, status, headers=headers
    )


def _add_error_handlers(app: FastAPI, engine: PolicyEngine) -> None:
    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error(422, _validation_message(exc.errors()))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, message, dict(exc.headers or {}))

    async def on_store_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StoreCorruptError):
            _LOG.error("api:corrupt", "%s %s failed, the store is damaged: %s", request.method, request.url.path, exc)
            return _error(500, CORRUPT_STORE_MESSAGE, code="store_corrupt")
        _LOG.warning("api:store", "%s %s failed, the store failed: %s", request.method, request.url.path, exc)
        message = f"state store unavailable: {exc}"
        return _error(503, message, {"Retry-After": str(STORE_RETRY_AFTER_S)}, code="store_unavailable")

    async def on_request_error(request: Request, exc: Exception) -> Response:
        # a value of the request the engine refuses (engine.decide): the client's, never a fail-open
        return _error(422, str(exc))

    async def on_internal_error(request: Request, exc: Exception) -> Response:
        engine.metrics.record_internal_error("server")
        path = request.url.path
        _LOG.error("api:internal", "otel_puppy internal error in %s %s", request.method, path, exc_info=exc)
        return _error(500, "internal error; see the service log")

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(Exception, on_internal_error)


def _validation_message(errors: Iterable[Any]) -> str:
    """`body.priority: Input should be 'critical', ...; body.model: Field required`."""
    parts: list[str] = []
    for error in errors:
        where = ""
        for part in error.get("loc", ()):
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            parts.append(f"body is not valid JSON: {reason}")
        else:
            parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"
