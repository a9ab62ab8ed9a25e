"""Enrich a decoded OTLP export in place, then serialize it as it goes downstream.

The request is the `ExportTraceServiceRequest` the receiver decoded: attributes are appended to
its spans (`forward/enrich.py` says which) and it is serialized with opentelemetry-proto, so
every span, resource and scope goes on as it came, GenAI or not, counted or refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_puppy import semconv
from otel_puppy.forward.enrich import (
    COST_AMOUNT,
    COST_CURRENCY,
    COST_SOURCE,
    OUR_COST_AMOUNT,
    PRICE_VERSION,
    REJECTED,
    RUN_CALLS,
    RUN_COST,
    UNPRICED_REASON,
    RunCosts,
    call_attributes,
    is_run,
    run_attributes,
)
from otel_puppy.pricing import Price

__all__ = ("SpanFacts", "SpanKey", "enrich_request", "span_facts")

SpanKey = tuple[int, int]
"""(trace id, span id) as integers."""

_RUN_KEYS: Final = frozenset(
    {semconv.OPERATION[0], semconv.OPENINFERENCE_KIND, semconv.TRACELOOP_KIND, semconv.LOGFIRE_SPAN_TYPE}
)


SpanFacts = list[tuple[SpanKey, int | None, frozenset[str], bool]]
"""What enriching a request reads of each of its spans, in order: its key, its parent's span id (`None`
without one), which of the attributes enrichment looks for it has already, and whether it is an agent
run (`span_facts`)."""

_LOOKED_FOR: Final = frozenset(
    {COST_AMOUNT, COST_CURRENCY, COST_SOURCE, OUR_COST_AMOUNT, PRICE_VERSION, UNPRICED_REASON, REJECTED}
    | {RUN_COST, RUN_CALLS}
)
"""Every attribute whose presence `call_attributes`, `run_attributes` and a refusal look for."""
_NONE: Final[frozenset[str]] = frozenset()


def span_facts(request: ExportTraceServiceRequest) -> SpanFacts:
    """`SpanFacts` of `request`: one pass over every span's attributes (a decoding process reads them
    while the service applies the batch before, `server/decoder.py`)."""
    facts: SpanFacts = []
    looked_for, run_keys = _LOOKED_FOR, _RUN_KEYS
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                present = _NONE
                run: dict[str, str] = {}
                for kv in span.attributes:
                    key = kv.key
                    if key in looked_for:
                        present = present | {key}
                    elif key in run_keys:
                        run[key] = kv.value.string_value
                parent = span.parent_span_id
                facts.append(
                    (
                        (int.from_bytes(span.trace_id, "big"), int.from_bytes(span.span_id, "big")),
                        int.from_bytes(parent, "big") if len(parent) == 8 else None,
                        present,
                        is_run(run),
                    )
                )
    return facts


def enrich_request(
    request: ExportTraceServiceRequest,
    priced: Mapping[SpanKey, Price],
    counted: Mapping[SpanKey, int],
    rejected: Mapping[SpanKey, str],
    runs: RunCosts,
    *,
    facts: SpanFacts | None = None,
) -> int:
    """Append our attributes to the request's spans; returns how many spans it holds.

    `priced`: every model-call span read from the request, at its price (counted or not);
    `counted`: the calls applied to the store, in nanos (what runs sum); `rejected`: spans
    refused, and why; `facts`: the request's `span_facts`, when they were read already.
    """
    if facts is None:
        facts = span_facts(request)
    spans = [span for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans]
    if len(spans) != len(facts):
        raise ValueError(f"facts of {len(facts)} spans for a request of {len(spans)}")
    runs.link([(key[0], key[1], parent) for key, parent, _, _ in facts if parent is not None])
    for (trace_id, span_id), nanos in counted.items():
        runs.count(trace_id, span_id, nanos)
    run_keys: list[SpanKey] = []
    for (key, _, present, run), span in zip(facts, spans, strict=True):
        price = priced.get(key)
        if price is not None:
            _append(span, call_attributes(price, present))
        elif key in rejected:
            _append(span, [(REJECTED, rejected[key])] if REJECTED not in present else [])
        elif run:
            run_keys.append(key)
    if run_keys:
        sums = runs.sums(run_keys)
        for (key, _, present, _), span in zip(facts, spans, strict=True):
            if key in sums:
                _append(span, run_attributes(sums[key], present))
    return len(spans)


def _append(span: Span, attributes: Sequence[tuple[str, float | int | str]]) -> None:
    # Each value set in place: `add(key=..., value=AnyValue(...))` builds a message to copy, twice the time.
    add = span.attributes.add
    for key, value in attributes:
        attribute = add()
        attribute.key = key
        if isinstance(value, str):
            attribute.value.string_value = value
        elif isinstance(value, int):
            attribute.value.int_value = value
        else:
            attribute.value.double_value = value
