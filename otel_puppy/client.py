"""`DecisionClient`: the decision API of `otel-puppy serve`, for agents in other processes.

    client = DecisionClient("http://127.0.0.1:4319", api_token="...")
    decision = client.decide(provider="openai", model="gpt-4.1", agent="support", estimated_cost_usd="0.02")
    agent = Agent(otel_puppy.guarded("openai:gpt-4.1", client, agent="support"))

It answers with the same `Decision` as `PolicyEngine.decide` in-process, so code (and
`guarded`) does not care which one it holds. Connections are kept alive and reused: one
`httpx.Client` for `decide`, one `httpx.AsyncClient` per event loop for `adecide`.

When the service cannot answer (down, timing out, overloaded, failing), the client retries
within a fixed time budget and then fails open (an `allow`) or closed (a `deny` with
`retry_after_s`), each such decision carrying one `internal` reason that says why; an outage
slows an agent by at most the budget and never crashes it. When the service answers that the
request itself is wrong (a missing, wrong or insufficient token, an invalid field), nothing is failed open:
`DecisionServiceError` is raised, because misconfiguration must be loud.

Request bodies are never logged: they name users and conversations.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, Self

import httpx
from pydantic import SecretStr

from otel_puppy.decision import Action, Decision, DecisionRequest, PolicyHit, Priority, Severity
from otel_puppy.exceptions import PuppyError, RequestError, SettingsError
from otel_puppy.guard import current_trace_id
from otel_puppy.settings import PuppySettings, redact_url

__all__ = ("DEFAULT_URL", "UNREACHABLE_RETRY_AFTER_S", "DecisionClient", "DecisionServiceError")

logger = logging.getLogger("otel_puppy")

DEFAULT_URL: Final = "http://127.0.0.1:4319"
DECIDE_PATH: Final = "/v1/decide"
UNREACHABLE_RETRY_AFTER_S: Final = 5.0
"""`retry_after_s` of a fail-closed `deny` when the service gave no `Retry-After` of its own."""

_RETRYABLE_STATUS: Final = frozenset({429, 502, 503, 504})
_BIND_ALL: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - mapped to loopback


class DecisionServiceError(PuppyError):
    """The decision service refused the request itself (`401`, `403`, `422`, any `4xx` but `429`).

    Retrying cannot help and failing open would hide a misconfiguration (a wrong token, URL or
    field), so it is raised. `status_code`, `code` and `message` are the server's answer
    (`{"code": ..., "message": ...}`); `body` is all of it.
    """

    def __init__(self, status_code: int, code: str, message: str, body: Mapping[str, Any] | None = None) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.body: dict[str, Any] = dict(body) if body is not None else {"code": code, "message": message}
        super().__init__(f"the decision service refused the request: HTTP {status_code} {code}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status_code, self.code, self.message, self.body))


class DecisionClient:
    """Ask a running `otel-puppy serve` for decisions; sync (`decide`) and async (`adecide`).

    Args:
        url: The service's base URL.
        api_token: A token of the service with the `decide` role (from its tokens file, or its
            `OTEL_PUPPY_API_TOKEN`), sent as `Authorization: Bearer`. A token scoped to a team has its
            team filled into every request; naming another is a `DecisionServiceError` (`403`).
        timeout_s: How long one attempt may wait to connect, and then for the answer.
        retries: Further attempts after a connection error, a timeout, or `429`/`502`/`503`/`504`.
            Together they never take longer than `timeout_s * (retries + 1)`; a `Retry-After`
            that does not fit in what is left ends the retries at once.
        backoff_s: The first wait between attempts; it doubles each time, with jitter.
        fail_open: When the service cannot answer, allow the call (`True`) or deny it.
        transport: For `decide`, e.g. `httpx.MockTransport` in tests.
        async_transport: For `adecide`; shared by the clients of every event loop.

    `failures` counts the decisions made without the service (failed open or closed) and
    `retried` the extra attempts. A retry after a timeout may reach a service that had already
    reserved the first attempt's estimate; that reservation expires after its TTL.

    Thread-safe. Close it (`close()`, `with`), and in each event loop that used `adecide`,
    `await aclose()` (or `async with`): connections belong to the loop that opened them.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_token: str | SecretStr | None = None,
        timeout_s: float = 0.5,
        retries: int = 2,
        backoff_s: float = 0.05,
        fail_open: bool = True,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"url must be http://host:port or https://host:port, not {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        if retries < 0 or backoff_s < 0:
            raise ValueError("retries and backoff_s must not be negative")
        token = api_token.get_secret_value() if isinstance(api_token, SecretStr) else api_token
        if token is not None and not token.strip():
            raise SettingsError("api_token is set but empty: set the service's token, or unset it")

        self.url = str(parsed).rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.fail_open = fail_open
        self.failures = 0
        """Decisions made without the service: failed open or closed."""
        self.retried = 0
        """Attempts after the first, over all decisions."""

        from otel_puppy import __version__

        self._headers = {"content-type": "application/json", "user-agent": f"otel-puppy/{__version__}"}
        if token is not None:
            self._headers["authorization"] = f"Bearer {token.strip()}"
        self._transport = transport
        self._async_transport = async_transport
        self._lock = threading.Lock()
        self._closed = False
        self._down = False
        self._client: httpx.Client | None = None
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_settings(cls, settings: PuppySettings | None = None, **overrides: Any) -> DecisionClient:
        """A client for the service these settings describe (`OTEL_PUPPY_HOST`/`PORT`/`API_TOKEN`).

        `fail_open` follows `OTEL_PUPPY_FAIL_OPEN`; keyword arguments override anything.
        """
        settings = settings if settings is not None else PuppySettings.load()
        options: dict[str, Any] = {
            "url": _service_url(settings.host, settings.port),
            "api_token": settings.api_token,
            "fail_open": settings.fail_open,
            **overrides,
        }
        return cls(**options)

    def __repr__(self) -> str:
        return f"DecisionClient({redact_url(self.url)!r}, fail_open={self.fail_open})"

    # --- deciding -----------------------------------------------------------------------------

    def decide(self, request: DecisionRequest | None = None, /, *, reserve: bool = True, **fields: object) -> Decision:
        """May this call go ahead, and with which model? The same arguments as `PolicyEngine.decide`;
        `reserve=False` only asks (`"reserve": false`: nothing is held, nothing left to settle).

        Raises:
            RequestError: a field the request refuses (`DecisionRequest.from_fields`), before any request.
            DecisionServiceError: the service refused the request (token, URL, invalid field).
        """
        call = _Call(self, request if request is not None else DecisionRequest.from_fields(fields), reserve)
        client = self._sync_client()
        while True:
            try:
                with client.stream("POST", DECIDE_PATH, content=call.body, timeout=call.timeout()) as streamed:
                    response = _bounded(streamed, streamed.iter_bytes(), call.deadline)
            except httpx.TransportError as exc:
                call.failed(exc)
            else:
                decision = call.answered(response)
                if decision is not None:
                    return self._answered(decision)
            delay = call.next_delay()
            if delay is None:
                return self._unanswered(call)
            time.sleep(delay)

    async def adecide(
        self, request: DecisionRequest | None = None, /, *, reserve: bool = True, **fields: object
    ) -> Decision:
        """`decide`, without blocking the event loop."""
        call = _Call(self, request if request is not None else DecisionRequest.from_fields(fields), reserve)
        client = self._async_client()
        while True:
            try:
                async with client.stream("POST", DECIDE_PATH, content=call.body, timeout=call.timeout()) as streamed:
                    response = await _abounded(streamed, call.deadline)
            except httpx.TransportError as exc:
                call.failed(exc)
            else:
                decision = call.answered(response)
                if decision is not None:
                    return self._answered(decision)
            delay = call.next_delay()
            if delay is None:
                return self._unanswered(call)
            await asyncio.sleep(delay)

    def _answered(self, decision: Decision) -> Decision:
        if self._down:
            self._down = False
            logger.info("otel_puppy decision service at %s answers again", self.url)
        return decision

    def _unanswered(self, call: _Call) -> Decision:
        """The decision without the service: allow (fail open) or deny (fail closed)."""
        with self._lock:
            self.failures += 1
        how = "open" if self.fail_open else "closed"
        message = f"decision service unreachable ({call.cause}); failing {how}"
        # One warning when the service goes away, not one per call while it stays away.
        level = logging.DEBUG if self._down else logging.WARNING
        self._down = True
        logger.log(level, "otel_puppy decision service at %s: %s", self.url, message)
        request = call.request
        if self.fail_open:
            hit = PolicyHit("internal", "otel_puppy", Action.ALLOW, message, severity=Severity.CRITICAL)
            return Decision(
                Action.ALLOW,
                request.provider,
                request.model,
                reasons=(hit,),
                estimated_cost_usd=request.estimated_cost_usd,
            )
        retry_after = call.retry_after if call.retry_after is not None else UNREACHABLE_RETRY_AFTER_S
        hit = PolicyHit(
            "internal",
            "otel_puppy",
            Action.DENY,
            message,
            severity=Severity.CRITICAL,
            retry_after_s=retry_after,
        )
        return Decision(
            Action.DENY,
            request.provider,
            request.model,
            reasons=(hit,),
            retry_after_s=retry_after,
            estimated_cost_usd=request.estimated_cost_usd,
        )

    # --- connections ----------------------------------------------------------------------------

    def _sync_client(self) -> httpx.Client:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            self._check_open()
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.url, headers=self._headers, timeout=self.timeout_s, transport=self._transport
                )
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._check_open()
            client = self._async_clients.get(loop)
            if client is None:
                client = httpx.AsyncClient(
                    base_url=self.url, headers=self._headers, timeout=self.timeout_s, transport=self._async_transport
                )
                self._async_clients[loop] = client
            return client

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this DecisionClient is closed")

    def close(self) -> None:
        """Close the connections of `decide`. Idempotent."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the connections of `decide` and of `adecide` in this event loop. Idempotent."""
        self.close()
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.pop(loop, None)
            # Another loop's connections can only be closed in that loop; they go with it.
            self._async_clients.clear()
        if client is not None:
            await client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _Call:
    """One decision: its body, the attempts left, their deadline, and why the last one failed.

    Shared by `decide` and `adecide`, which differ only in how they send and sleep.
    """

    __slots__ = ("attempt", "body", "cause", "client", "deadline", "final", "request", "retry_after")

    def __init__(self, client: DecisionClient, request: DecisionRequest, reserve: bool) -> None:
        self.client = client
        self.request = request
        self.body = _body(request, reserve=reserve)
        self.deadline = time.monotonic() + client.timeout_s * (client.retries + 1)
        self.attempt = 0
        self.cause = ""
        self.final = False
        self.retry_after: float | None = None

    def timeout(self) -> httpx.Timeout:
        """This attempt's timeout: `timeout_s`, or less when the budget has less left."""
        remaining = self.deadline - time.monotonic()
        return httpx.Timeout(max(min(self.client.timeout_s, remaining), 0.001))

    def failed(self, exc: httpx.TransportError) -> None:
        self.retry_after = None
        if isinstance(exc, httpx.TimeoutException):
            self.cause = f"{type(exc).__name__} after {self.client.timeout_s:g}s"
        else:
            text = str(exc)
            self.cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        self.final = isinstance(exc, httpx.UnsupportedProtocol)

    def answered(self, response: httpx.Response) -> Decision | None:
        """The decision, or `None` after noting why there is none (retryable unless `final`).

        Raises:
            DecisionServiceError: on a `4xx` but `429`.
        """
        status = response.status_code
        if status == 200:
            try:
                return Decision.from_dict(response.json())
            except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError, RecursionError) as exc:
                # Not a decision: a proxy's page, or a service too new or too old for this client.
                self.cause = f"HTTP 200 without a decision: {type(exc).__name__}: {exc}"
                self.final = True
                return None
        code, message, body = _error(response)
        if 400 <= status < 500 and status != 429:
            raise DecisionServiceError(status, code, message, body)
        self.cause = f"HTTP {status} {code}: {message}" if message else f"HTTP {status}"
        self.retry_after = _retry_after(response.headers.get("retry-after"))
        self.final = status not in _RETRYABLE_STATUS
        return None

    def next_delay(self) -> float | None:
        """How long to wait before the next attempt; `None` to stop trying."""
        backoff = self.client.backoff_s * 2.0**self.attempt
        delay = max(backoff * random.uniform(0.5, 1.0), self.retry_after or 0.0)
        if self.final or self.attempt >= self.client.retries or time.monotonic() + delay >= self.deadline:
            attempts = self.attempt + 1
            self.cause += f", after {attempts} attempt{'s' if attempts != 1 else ''}"
            return None
        self.attempt += 1
        with self.client._lock:
            self.client.retried += 1
        return delay


def _body(request: DecisionRequest, *, reserve: bool = True) -> bytes:
    """The `POST /v1/decide` body: the fields that differ from the defaults, money as a string; the
    trace id the request names, else the current span context's (the run the call belongs to).

    Raises:
        RequestError: `reserve` is not a bool (`"false"` would be truthy).
    """
    if reserve is not True and reserve is not False:
        raise RequestError("reserve", "must be true or false")
    data: dict[str, object] = {"provider": request.provider, "model": request.model}
    if not reserve:
        data["reserve"] = False
    for name in ("agent", "service", "user", "team", "environment", "conversation"):
        value = getattr(request, name)
        if value is not None:
            data[name] = value
    if request.operation != "chat":
        data["operation"] = request.operation
    if request.priority is not Priority.NORMAL:
        data["priority"] = Priority(request.priority).value
    if request.estimated_cost_usd is not None:
        cost = request.estimated_cost_usd
        data["estimated_cost_usd"] = format(cost if isinstance(cost, Decimal) else Decimal(str(cost)), "f")
    for name in ("estimated_input_tokens", "estimated_output_tokens", "context_tokens"):
        value = getattr(request, name)
        if value is not None:
            data[name] = value
    if request.capabilities:
        data["capabilities"] = list(request.capabilities)
    trace_id = request.trace_id or current_trace_id()  # the agent run, for `per: [trace]` budgets
    if trace_id is not None:
        data["trace_id"] = trace_id
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


MAX_ANSWER_BYTES: Final = 1 << 20
"""The largest answer read from the service: a decision is a few KB; a larger one is not a decision."""


def _bounded(streamed: httpx.Response, chunks: Iterator[bytes], deadline: float) -> httpx.Response:
    """The answer read whole, at most `MAX_ANSWER_BYTES` and before `deadline`.

    httpx's timeout bounds each read, not the whole answer: a server dripping a byte at a time
    would hold the caller for ever, and one sending gigabytes would fill its memory.

    Raises:
        httpx.ReadTimeout: the deadline passed while the answer was arriving.
        httpx.RemoteProtocolError: the answer is larger than `MAX_ANSWER_BYTES`.
    """
    body = bytearray()
    for chunk in chunks:
        _take(body, chunk, deadline)
    return httpx.Response(streamed.status_code, headers=streamed.headers, content=bytes(body))


async def _abounded(streamed: httpx.Response, deadline: float) -> httpx.Response:
    """`_bounded` for the async client."""
    body = bytearray()
    async for chunk in streamed.aiter_bytes():
        _take(body, chunk, deadline)
    return httpx.Response(streamed.status_code, headers=streamed.headers, content=bytes(body))


def _take(body: bytearray, chunk: bytes, deadline: float) -> None:
    body += chunk
    if len(body) > MAX_ANSWER_BYTES:
        raise httpx.RemoteProtocolError(f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
    if time.monotonic() > deadline:
        raise httpx.ReadTimeout("the answer did not arrive within the time budget")


def _error(response: httpx.Response) -> tuple[str, str, dict[str, Any] | None]:
    """(code, message, body) of an error answer: the service's `{"code", "message"}`, or a summary."""
    try:
        body = response.json()
    except (ValueError, RecursionError):  # a proxy's page, or nested past the parser's depth
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return body["code"], str(body.get("message", "")), body
    return response.reason_phrase.lower().replace(" ", "_") or "error", "", None


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _service_url(host: str, port: int) -> str:
    """Where a service bound to `host:port` is reached from this machine (a bind-all is loopback)."""
    host = _BIND_ALL.get(host, host)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{port}"
