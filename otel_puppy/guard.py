"""`DecisionGuard` and the decision context key: how a decision reaches the spans of its call.

`engine.guard()` decides, raises `PolicyDenied` on deny, and attaches the decision id to the
OpenTelemetry context; the span processor reads it back in `on_start`, so the call's span settles
the reservation. Both sides import this module, neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_puppy.decision import Decision, DecisionRequest
from otel_puppy.exceptions import PolicyDenied

__all__ = ("DECISION_CONTEXT_KEY", "Decider", "DecisionGuard", "current_trace_id", "traceparent_trace_id")

DECISION_CONTEXT_KEY: Final = otel_context.create_key("otel_puppy.decision_id")
"""Set by `engine.guard()` / `guarded()`; spans started inside get `otel_puppy.decision_id`."""


class Decider(Protocol):
    """What a guard asks: a decision for a request (`PolicyEngine.decide`)."""

    def decide(
        self, request: DecisionRequest | None = None, /, *, reserve: bool = True, **fields: object
    ) -> Decision: ...


class DecisionGuard:
    """`with engine.guard(...) as decision:` / `async with ...`: decide, raise on deny, tag spans."""

    def __init__(self, engine: Decider, request: DecisionRequest) -> None:
        self._engine = engine
        self._request = request
        self._token: object | None = None
        self.decision: Decision | None = None

    def __enter__(self) -> Decision:
        decision = self._engine.decide(self._request)
        self.decision = decision
        if not decision.allowed:
            raise PolicyDenied(decision)
        self._token = otel_context.attach(otel_context.set_value(DECISION_CONTEXT_KEY, decision.decision_id))
        return decision

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    async def __aenter__(self) -> Decision:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def current_trace_id() -> str | None:
    """The trace id of the current span context (32 lowercase hex digits): the agent run a decision
    made here belongs to, as its call's span will carry it; None outside any trace."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


_TRACE_CONTEXT: Final = TraceContextTextMapPropagator()


def traceparent_trace_id(headers: Mapping[str, str]) -> str | None:
    """The trace id of a W3C `traceparent` header, read by OpenTelemetry's own propagator (which
    bounds and validates it); None when absent or invalid, which Trace Context says to ignore."""
    value = headers.get("traceparent")
    if not value or len(value) > _MAX_TRACEPARENT:
        return None
    context = trace.get_current_span(_TRACE_CONTEXT.extract({"traceparent": value})).get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


_MAX_TRACEPARENT: Final = 512
"""Longer is not a `traceparent` of any version this reads (version 00 is 55 characters)."""
