"""Helpers for testing code that uses otel_puppy (and for otel_puppy's own tests).

- `FakeClock`: time that moves only when told to.
- `make_span(...)`: a finished SDK `ReadableSpan` with the attributes you give it.
- `engine_for_tests(...)`: an engine on a memory store, its own registry, and a fake clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client.registry import CollectorRegistry

from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.clock import ManualClock
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import PolicySet
from otel_puppy.settings import PuppySettings
from otel_puppy.store.memory import MemoryStore

__all__ = ("FakeClock", "engine_for_tests", "make_call", "make_span")

_ids = itertools.count(1)


FakeClock = ManualClock
"""A clock for tests: `now()` returns what it was set to; `advance(seconds)` moves it."""


def make_span(
    attributes: Mapping[str, Any] | None = None,
    *,
    name: str = "chat",
    trace_id: int | None = None,
    span_id: int | None = None,
    parent_span_id: int | None = None,
    start_ns: int = 1_767_225_600_000_000_000,
    duration_s: float = 1.0,
    error: bool = False,
    exception_type: str | None = None,
    resource: Mapping[str, Any] | None = None,
) -> ReadableSpan:
    """A finished span, as the SDK hands it to `on_end`. Ids are unique unless given."""
    trace_id = trace_id if trace_id is not None else next(_ids)
    span_id = span_id if span_id is not None else next(_ids)
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = (
        SpanContext(trace_id, parent_span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        if parent_span_id
        else None
    )
    events: Sequence[Event] = ()
    if exception_type:
        events = (Event("exception", {"exception.type": exception_type, "exception.message": "failed"}),)
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=Resource.create(dict(resource or {"service.name": "test-service"})),
        attributes=dict(attributes or {}),
        events=events,
        kind=SpanKind.CLIENT,
        status=Status(StatusCode.ERROR if error else StatusCode.UNSET),
        start_time=start_ns,
        end_time=start_ns + int(duration_s * 1e9),
    )


def make_call(
    *,
    end_s: float,
    provider: str = "openai",
    model: str = "gpt-4.1",
    agent: str | None = None,
    user: str | None = None,
    service: str | None = None,
    input_tokens: int = 1000,
    output_tokens: int = 100,
    error: ErrorClass | None = None,
    duration_s: float = 2.0,
    decision_id: str | None = None,
) -> LLMCall:
    """A finished model call as `extract_call` makes it, ending at `end_s`; a failed call has no usage."""
    end_ns = int(end_s * 1e9)
    return LLMCall(
        trace_id=next(_ids),
        span_id=next(_ids),
        parent_span_id=0,
        provider=provider,
        request_model=model,
        response_model=model if error is None else None,
        operation="chat",
        start_ns=end_ns - round(duration_s * 1e9),  # round: 1.001 s is 1,001,000,000 ns, not ...999
        end_ns=end_ns,
        input_tokens=input_tokens if error is None else 0,
        output_tokens=output_tokens if error is None else 0,
        has_usage=error is None,
        error_class=error,
        agent=agent,
        user=user,
        service=service,
        decision_id=decision_id,
    )


def engine_for_tests(
    policies: PolicySet | None = None, clock: FakeClock | None = None, **settings: Any
) -> PolicyEngine:
    """An engine on a fresh memory store and registry, with a fake clock by default."""
    return PolicyEngine(
        PuppySettings.load(**{"store": "memory://", **settings}),
        policies=policies or PolicySet(),
        store=MemoryStore(),
        clock=clock or FakeClock(),
        registry=CollectorRegistry(auto_describe=True),
    )
