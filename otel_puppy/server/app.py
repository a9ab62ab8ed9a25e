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
  `/v1/health`, `/v1/policies`, `/v1/policies/reload`), described by the models in `schemas.py`; its errors
  are always `{"code": ..., "message": ...}`.
- `/metrics` for Prometheus, `/healthz` (the process is up) and `/readyz` (the store answers).

With a tokens file or `api_token`, every path but `/healthz` and `/readyz` needs `Authorization: Bearer`,
and each route a role (`ROUTE_ROLES`: `ingest`, `decide`, `read`, `admin`); a scoped token's decisions
and reads stay in its scope (`scoping.py`). This module wires the routes; OTLP ingest is `receiver.py`,
the tokens `tokens.py`, the check `auth.py`, error bodies `errors.py`.
Work that touches pricing or the store runs in worker threads, so the event loop only moves
bytes. Request bodies are never logged: prompts may be in them.

>>> app = create_app(PolicyEngine.from_settings())  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=4319)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

import anyio
import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

import otel_puppy
from otel_puppy.bounds import MAX_NAME_LENGTH
from otel_puppy.engine import TOTAL_SCOPE, PolicyEngine
from otel_puppy.exceptions import PolicyErrors, SettingsError, StoreCorruptError
from otel_puppy.focus import focus_csv_lines
from otel_puppy.forward.sender import Forwarder
from otel_puppy.guard import traceparent_trace_id
from otel_puppy.health import assess
from otel_puppy.ledger import LEDGER_DIMENSIONS, LedgerRow, costs_by, parse_period, read_rows
from otel_puppy.money import format_usd, nanos_to_usd
from otel_puppy.policies.models import PolicyFile
from otel_puppy.policies.presence import missing_policies
from otel_puppy.server.auth import MAX_JSON_BODY_BYTES, AuthAudit, AuthGate, document_bearer_auth
from otel_puppy.server.decoder import DecodePool
from otel_puppy.server.docs import add_offline_docs
from otel_puppy.server.errors import (
    CORRUPT_STORE_MESSAGE,
    JSON_ERRORS,
    STORE_RETRY_AFTER_S,
    add_error_handlers,
    json_error,
)
from otel_puppy.server.memory import MemoryLimiter
from otel_puppy.server.receiver import (
    INGEST_WAIT_S,
    MAX_BODY_BYTES,
    MAX_CONCURRENT_INGEST,
    OTLP_REQUEST,
    OTLP_RESPONSES,
    OVERLOAD_RETRY_AFTER_S,
    TRACES_PATH,
    TraceReceiver,
)
from otel_puppy.server.record import SpanRecorder
from otel_puppy.server.schemas import (
    AnomaliesResponse,
    BreakersResponse,
    BudgetsResponse,
    CostsResponse,
    DecideRequest,
    DecisionResponse,
    ErrorResponse,
    HealthResponse,
    InvalidPoliciesResponse,
    LiveResponse,
    ModelsResponse,
    PoliciesResponse,
    ReadyResponse,
    ReloadResponse,
)
from otel_puppy.server.scoping import (
    OutOfScope,
    principal,
    scope_changes,
    token_scope,
    visible_anomalies,
    visible_budgets,
)
from otel_puppy.server.tokens import Keyring, Role
from otel_puppy.windows import RollingWindow

__all__ = (
    "CORRUPT_STORE_MESSAGE",
    "INGEST_WAIT_S",
    "MAX_BODY_BYTES",
    "MAX_CONCURRENT_INGEST",
    "MAX_JSON_BODY_BYTES",
    "OVERLOAD_RETRY_AFTER_S",
    "ROUTE_ROLES",
    "STORE_RETRY_AFTER_S",
    "TRACES_PATH",
    "create_app",
)

logger = logging.getLogger("otel_puppy")

READY_TIMEOUT_S: Final = 2.0
ROUTE_ROLES: Final[Mapping[tuple[str, str], Role]] = {
    ("POST", TRACES_PATH): Role.INGEST,
    ("POST", "/v1/decide"): Role.DECIDE,
    ("GET", "/v1/budgets"): Role.READ,
    ("GET", "/v1/breakers"): Role.READ,
    ("GET", "/v1/anomalies"): Role.READ,
    ("GET", "/v1/models"): Role.READ,
    ("GET", "/v1/health"): Role.READ,
    ("GET", "/v1/policies"): Role.READ,
    ("GET", "/metrics"): Role.READ,
    ("GET", "/v1/export/focus"): Role.READ,
    ("GET", "/v1/costs"): Role.READ,
    ("POST", "/v1/policies/reload"): Role.ADMIN,
}
"""The role each route needs (`HEAD` as `GET`). The API documents (`/openapi.json`, `/docs`) need any
valid token; the probes none."""
_READY_WINDOW: Final = RollingWindow(3600, "1h")
_PERIOD: Final = r"^\d{4}-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?)?)?$"
"""What `from` and `to` may look like (`ledger.parse_period` reads them: a month or day must also exist)."""
_BY: Final = r"^(provider|model|service|agent|team|environment)(,(provider|model|service|agent|team|environment))*$"


class _PeriodQuery(BaseModel):
    """A period's query parameters (`from`, `to`). Any other parameter is refused (422), never
    ignored: a misspelt filter (`billing_acount=`) would otherwise be answered as if it were absent,
    with every row."""

    model_config = ConfigDict(extra="forbid")

    start: str | None = Field(None, alias="from", max_length=64, pattern=_PERIOD)
    end: str | None = Field(None, alias="to", max_length=64, pattern=_PERIOD)


class _FocusQuery(_PeriodQuery):
    billing_account: str | None = Field(None, min_length=1, max_length=MAX_NAME_LENGTH)


class _CostsQuery(_PeriodQuery):
    by: str = Field("team", max_length=128, pattern=_BY)


_NO_TELEMETRY: Final = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
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
    recorder: SpanRecorder | None = None,
    keyring: Keyring | None = None,
    forwarder: Forwarder | None = None,
    decoder: DecodePool | None = None,
) -> FastAPI:
    """The HTTP application over `engine`. Serve it with any ASGI server (uvicorn).

    The engine is not closed with the application: its owner closes it. `body_timeout_s` and
    `ingest_memory_limit_bytes` default to the engine's settings of the same names. A `recorder`
    (`otel-puppy serve --record`) appends every accepted OTLP export to its file; its owner closes it.
    A `forwarder` (`otel-puppy serve --forward-to`) enriches and queues every accepted export for
    the downstream, and `/readyz` fails while its queue is full; its owner starts and closes it.
    With a `decoder` (`otel-puppy serve` on two CPUs or more), OTLP bodies are decoded and their spans
    read in its processes (`server/decoder.py`); its owner starts and closes it.
    The tokens are `keyring`'s, by default the settings' tokens file (`tokens_path`) and `api_token`;
    while the application is served (its lifespan), the file is polled for changes.

    Raises:
        SettingsError: `api_token` is set but empty.
        TokenFileErrors: the tokens file cannot be used (each error at `file:line:column`).
    """
    token = engine.settings.api_token
    secret: str | None = None
    if token is not None:
        secret = token.get_secret_value()
        if not secret.strip():
            raise SettingsError("OTEL_PUPPY_API_TOKEN is set but empty: set a real token, or unset it")
    if keyring is None:
        keyring = Keyring(engine.settings.tokens_path, api_token=secret)
    gate_keyring = keyring if keyring.enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keyring.start()
        try:
            yield
        finally:
            keyring.stop()

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
        docs_url=None,  # FastAPI's pages load from a CDN: `add_offline_docs` serves them from here
        redoc_url=None,
        lifespan=lifespan,
        **options,
    )
    add_offline_docs(app)
    settings = engine.settings
    body_timeout = settings.body_timeout_s if body_timeout_s is None else body_timeout_s
    memory = MemoryLimiter(
        settings.ingest_memory_limit_bytes if ingest_memory_limit_bytes is None else ingest_memory_limit_bytes
    )
    audit = AuthAudit(engine.metrics)
    shortcuts: dict[tuple[str, str], ASGIApp] = {}
    """Routes the gate serves itself, filled below (the middleware is built at the first request)."""
    app.add_middleware(
        AuthGate,
        keyring=gate_keyring,
        roles=ROUTE_ROLES,
        audit=audit,
        max_json_body_bytes=max_json_body_bytes,
        body_timeout_s=body_timeout,
        clock=engine.clock.now,
        shortcuts=shortcuts,
    )
    if gate_keyring is not None:
        document_bearer_auth(app, ROUTE_ROLES)
    add_error_handlers(app, engine)
    receiver = TraceReceiver(
        engine,
        max_body_bytes=max_body_bytes,
        max_concurrent=max_concurrent_ingest,
        wait_s=ingest_wait_s,
        body_timeout_s=body_timeout,
        memory=memory,
        recorder=recorder,
        forwarder=forwarder,
        decoder=decoder,
    )

    async def export_traces(request: Request) -> Response:
        """Receive an `ExportTraceServiceRequest` (protobuf or JSON, optionally gzip or deflate).

        Answers only after the batch is applied; spans with unusable ids are counted in
        `partial_success.rejected_spans`. Errors are `google.rpc.Status` in the request's encoding.
        """
        return await receiver.receive(request)

    # Every exporter's every batch: served by `_RequestRoute`, not FastAPI's request pipeline.
    app.router.add_api_route(
        TRACES_PATH,
        export_traces,
        methods=["POST"],
        tags=["otlp"],
        summary="OTLP/HTTP trace export",
        response_class=Response,
        responses=OTLP_RESPONSES,
        openapi_extra=OTLP_REQUEST,
        route_class_override=_RequestRoute,
    )

    # With the memory store a decision is tens of microseconds of CPU: answering on the event loop
    # beats a hop to a worker thread. A store that does I/O keeps the event loop free instead, but
    # SQLite's decision is a few short statements when no one else is writing: then it is answered
    # on the event loop too (`SQLiteStore.uncontended`), and otherwise in a worker thread, which may
    # wait for the lock. Measured at 1,000 decisions/s: the hop and its threads cost 270 us of CPU
    # per decision, more than the SQLite work (about 80 us), and the thread's statements queued for
    # the interpreter lock behind the event loop (p99 in the hundreds of milliseconds).
    inline_decide = not engine.store.does_io
    uncontended = getattr(engine.store, "uncontended", None)  # a capability only some stores have

    async def decide(body: DecideRequest, http: Request) -> Response:
        """May this call go ahead, and with which model? Reserves `estimated_cost_usd` on matching budgets
        (`"reserve": false` only asks). A scoped token's values fill the request; naming another is `403`."""
        scope = token_scope(http)
        if scope:
            try:
                changes = scope_changes(body, scope)
            except OutOfScope as exc:
                name = getattr(principal(http), "name", "unknown")
                audit.refused("scope", Role.DECIDE, name, "POST", "/v1/decide", 403)
                return json_error(403, str(exc), code="out_of_scope")
            if changes:  # the token's values, checked when the file was loaded and by `to_request`
                body = body.model_copy(update=changes)
        request, reserve = body.to_request(traceparent_trace_id(http.headers)), body.reserve
        decision = None
        if inline_decide:
            decision = engine.decide(request, reserve=reserve)
        elif uncontended is not None:
            with uncontended() as at_once:
                if at_once:
                    decision = engine.decide(request, reserve=reserve)
        if decision is None:
            decision = await anyio.to_thread.run_sync(functools.partial(engine.decide, request, reserve=reserve))
        # pydantic-core's encoder: a third of `json.dumps`'s time for a decision with nine hits
        return Response(to_json(decision.to_dict(), inf_nan_mode="null"), media_type="application/json")

    # Every agent asks before every call: served by `_BodyRoute`, not FastAPI's request pipeline, and
    # by the auth gate itself once it has let the request through (`_served_directly`).
    app.router.add_api_route(
        "/v1/decide",
        decide,
        methods=["POST"],
        tags=["decisions"],
        response_model=DecisionResponse,
        responses=JSON_ERRORS,
        route_class_override=_BodyRoute,
    )
    [decide_route] = [route for route in app.router.routes if getattr(route, "path", None) == "/v1/decide"]
    shortcuts["POST", "/v1/decide"] = _served_directly(app, decide_route)

    @app.get("/v1/budgets", tags=["state"], response_model=BudgetsResponse, responses=JSON_ERRORS)
    def budgets(request: Request) -> JSONResponse:
        """Every known budget instance: spend, reservations and limit in its current window. A scoped
        token sees the instances that are its scope's alone."""
        hits = visible_budgets(engine.snapshot().budgets, engine.policies, token_scope(request))
        return JSONResponse({"budgets": [hit.to_dict() for hit in hits]})

    @app.get("/v1/breakers", tags=["state"], response_model=BreakersResponse, responses=JSON_ERRORS)
    def breakers() -> JSONResponse:
        """Every circuit breaker subject and its state (per provider and model: every token sees them all)."""
        return JSONResponse({"breakers": [status.to_dict() for status in engine.snapshot().breakers]})

    @app.get("/v1/anomalies", tags=["state"], response_model=AnomaliesResponse, responses=JSON_ERRORS)
    def anomalies(request: Request) -> JSONResponse:
        """Every anomaly detector: current value, baseline, score, and whether it is firing. A scoped
        token sees the detectors that watch its scope's calls alone."""
        statuses = visible_anomalies(engine.snapshot().anomalies, engine.policies, token_scope(request))
        return JSONResponse({"anomalies": [status.to_dict() for status in statuses]})

    def ledger_rows(
        request: Request, start: str | None, end: str | None
    ) -> tuple[Iterator[LedgerRow], int, int] | JSONResponse:
        """The ledger rows of the period a request asks for, as its token may see them, or the error."""
        try:
            first, last = parse_period(start, end, engine.clock.now())
        except ValueError as exc:
            return json_error(400, str(exc))
        scope = token_scope(request)
        try:
            rows = read_rows(engine.store, first, last, dict(scope.values))
        except ValueError as exc:  # a scope the ledger is not split by
            return json_error(403, f"this token is scoped to {scope.text}: {exc}", code="forbidden")
        return rows, first, last

    @app.get(
        "/v1/export/focus",
        tags=["chargeback"],
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}, "description": "FOCUS 1.2 CSV."}, **JSON_ERRORS},
    )
    def export_focus(request: Request, query: Annotated[_FocusQuery, Query()]) -> Response:
        """The cost ledger of a period as FOCUS 1.2 CSV (`from`, `to`: `YYYY-MM`, `YYYY-MM-DD` or ISO 8601
        times, UTC; by default last month), one row per hour, provider, model, service, agent, team,
        environment and token type (`billing_account`: BillingAccountId and Name; by default the provider's).
        A scoped token gets its scope's rows alone."""
        found = ledger_rows(request, query.start, query.end)
        if isinstance(found, JSONResponse):
            return found
        return StreamingResponse(
            focus_csv_lines(found[0], billing_account=query.billing_account), media_type="text/csv; charset=us-ascii"
        )

    @app.get("/v1/costs", tags=["chargeback"], response_model=CostsResponse, responses=JSON_ERRORS)
    def costs(request: Request, query: Annotated[_CostsQuery, Query()]) -> JSONResponse:
        """Cost and calls of a period (by default this month) per value of `by` (comma-separated:
        provider, model, service, agent, team, environment): the figures a FOCUS export adds up to."""
        by, start, end = query.by, query.start, query.end
        names = [name.strip() for name in by.split(",") if name.strip()]
        if not names or len(names) > len(LEDGER_DIMENSIONS) or not LEDGER_DIMENSIONS.issuperset(names):
            allowed = ", ".join(sorted(LEDGER_DIMENSIONS))
            return json_error(400, f"by: {by!r} is not a comma-separated list of {allowed}")
        if start is None and end is None:
            start = datetime.fromtimestamp(engine.clock.now(), UTC).strftime("%Y-%m")
        found = ledger_rows(request, start, end)
        if isinstance(found, JSONResponse):
            return found
        rows, first, last = found
        totals = costs_by(rows, names)
        body = {
            "from": datetime.fromtimestamp(first, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "to": datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "by": names,
            "costs": [
                {**dict(zip(names, key, strict=True)), "cost_usd": format_usd(nanos_to_usd(nanos)), "calls": calls}
                for key, nanos, calls in totals
            ],
            "total_usd": format_usd(nanos_to_usd(sum(nanos for _, nanos, _ in totals))),
        }
        return JSONResponse(body)

    @app.get("/v1/models", tags=["state"], response_model=ModelsResponse, responses=JSON_ERRORS)
    def models() -> JSONResponse:
        """Every model seen recently: requests, errors, latency percentiles, cost per request."""
        return JSONResponse({"models": [stat.to_dict() for stat in engine.snapshot().models]})

    @app.get("/v1/health", tags=["state"], response_model=HealthResponse, responses=JSON_ERRORS)
    def health() -> JSONResponse:
        """The system's health as data: the worst indicator's status, every indicator, recommendations
        naming the provider, model or budget to act on, and hourly cost, error and latency trends."""
        return JSONResponse(assess(engine).to_dict())

    @app.post(
        "/v1/policies/reload",
        tags=["policies"],
        response_model=ReloadResponse,
        responses={
            **JSON_ERRORS,
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

    @app.get("/v1/policies", tags=["policies"], response_model=PoliciesResponse, responses=JSON_ERRORS)
    def policies_in_force() -> JSONResponse:
        """The policy set in force: how many of each kind, the files, and the path they are loaded from."""
        policies, path = engine.policies, Path(engine.settings.policies)
        counts = {kind: len(getattr(policies, kind)) for kind in PolicyFile.model_fields}
        body = {
            "path": str(path.absolute()),
            "count": sum(counts.values()),
            "counts": counts,
            "sources": [str(source) for source in policies.sources],
            "missing": missing_policies(path),
            "summary": policies.summary(),
        }
        return JSONResponse(body)

    @app.get(
        "/metrics",
        tags=["monitoring"],
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
            401: JSON_ERRORS[401],
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
                    full = None if forwarder is None else await anyio.to_thread.run_sync(forwarder.problem)
                    if full is None:
                        return JSONResponse({"status": "ready"})
                    logger.warning("readiness: %s", full)
                    problem = "the forward queue is full: the downstream is not accepting spans"
                    return json_error(503, problem, code="not_ready")
                logger.warning("readiness: the store's state cannot be trusted: %s", state_problem)
                problem = "the store's state cannot be read or is damaged; see the service log"
        return json_error(503, problem, code="not_ready")

    # Load balancers probe with HEAD: the same status, no body (the server drops it). Undocumented,
    # as FastAPI would otherwise list each probe twice under one operation id.
    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    return app


class _RequestRoute(APIRoute):
    """A route whose endpoint takes the `Request` alone and returns a `Response`, awaited directly:
    without FastAPI's request pipeline (dependency solving, its exit stacks, response checks),
    which has nothing to do for such an endpoint. Documented from the endpoint's signature and
    the route's arguments like any route.

    For `POST /v1/traces`, which every exporter calls for every batch: FastAPI's pipeline cost
    about 25 us of CPU per request (in-process ASGI calls of an empty export: 160 us with it).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        parameters = list(inspect.signature(endpoint).parameters.values())
        if len(parameters) != 1 or self.dependant.dependencies or self.dependencies:
            raise TypeError(f"{self.path}: a _RequestRoute endpoint takes the Request alone, and no dependencies")
        return endpoint


def _served_directly(app: FastAPI, route: BaseRoute) -> ASGIApp:
    """`route` as an ASGI application of its own, for `AuthGate` to hand its requests to past the rest
    of the stack (FastAPI's exception middleware, its exit stack, the router: 30 us of CPU of the
    225 an in-process `/v1/decide` took). An exception gets the response `app`'s handler for it
    gives, as FastAPI's exception middleware would; one without a handler of its own (a bug) goes
    on to the server-error middleware around the gate, which answers `500` and logs it.
    """
    if not isinstance(route, APIRoute):
        raise TypeError(f"{route!r}: a shortcut serves an APIRoute")
    handle = route.get_route_handler()
    handlers = app.exception_handlers

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await handle(request)
        except Exception as exc:
            # As Starlette's exception middleware looks it up: an HTTP error's status first, then the
            # nearest class; `Exception`'s handler (and a 500's) is the outer middleware's.
            key: int | type = Exception
            if isinstance(exc, StarletteHTTPException) and exc.status_code in handlers and exc.status_code != 500:
                key = exc.status_code
            else:
                key = next((kind for kind in type(exc).__mro__ if kind in handlers), Exception)
            if key is Exception:
                raise
            handled = handlers[key](request, exc)
            response = await handled if inspect.isawaitable(handled) else handled
        await response(scope, receive, send)

    return served


class _BodyRoute(APIRoute):
    """A route whose endpoint takes one JSON body (a pydantic model) and the `Request`, and returns a
    `Response`, served without FastAPI's request pipeline (dependency solving, body parsing, response model).

    Documented from the endpoint's signature like any route. The body is read, parsed and
    validated here as FastAPI would (the same content types, the same errors, so the same 422
    messages), then the endpoint is awaited with it. For `/v1/decide`, which every agent calls
    before every model call.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Any, Request], Coroutine[Any, Any, Response]] = self.endpoint
        model = self.body_field.field_info.annotation if self.body_field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{self.path}: a _BodyRoute endpoint takes one body parameter, a pydantic model")

        async def handle(request: Request) -> Response:
            body = _validated_body(model, await request.body(), request.headers.get("content-type"))
            return await endpoint(body, request)

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
