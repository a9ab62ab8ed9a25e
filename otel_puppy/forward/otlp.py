"""Enrich a decoded OTLP export in place, then serialize it as it goes downstream.

The request is the `ExportTraceServiceRequest` the receiver decoded: attributes are appended to
its spans (`forward/enrich.py` says which) and it is serialized with opentelemetry-proto, so
every span, resource and scope goes on as it came, GenAI or not, counted or refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_puppy import semconv
from otel_puppy.forward.enrich import REJECTED, RunCosts, call_attributes, is_run, run_attributes
from otel_puppy.pricing import Price

__all__ = ("SpanKey", "enrich_request")

SpanKey = tuple[int, int]
"""(trace id, span id) as integers."""

_RUN_KEYS: Final = frozenset(
    {semconv.OPERATION[0], semconv.OPENINFERENCE_KIND, semconv.TRACELOOP_KIND, semconv.LOGFIRE_SPAN_TYPE}
)


def enrich_request(
    request: ExportTraceServiceRequest,
    priced: Mapping[SpanKey, Price],
    counted: Mapping[SpanKey, int],
    rejected: Mapping[SpanKey, str],
    runs: RunCosts,
) -> int:
    """Append our attributes to the request's spans; returns how many spans it holds.

    `priced`: every model-call span read from the request, at its price (counted or not);
    `counted`: the calls applied to the store, in nanos (what runs sum); `rejected`: spans
    refused, and why.
    """
    spans: list[tuple[SpanKey, Span]] = []
    links: list[tuple[int, int, int]] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                key = (int.from_bytes(span.trace_id, "big"), int.from_bytes(span.span_id, "big"))
                spans.append((key, span))
                if len(span.parent_span_id) == 8:
                    links.append((key[0], key[1], int.from_bytes(span.parent_span_id, "big")))
    runs.link(links)
    for (trace_id, span_id), nanos in counted.items():
        runs.count(trace_id, span_id, nanos)
    run_keys: list[SpanKey] = []
    for key, span in spans:
        price = priced.get(key)
        if price is not None:
            _append(span, call_attributes(price, {kv.key for kv in span.attributes}))
        elif key in rejected:
            _append(span, [(REJECTED, rejected[key])] if all(kv.key != REJECTED for kv in span.attributes) else [])
        elif is_run({kv.key: kv.value.string_value for kv in span.attributes if kv.key in _RUN_KEYS}):
            run_keys.append(key)
    if run_keys:
        sums = runs.sums(run_keys)
        for key, span in spans:
            if key in sums:
                _append(span, run_attributes(sums[key], {kv.key for kv in span.attributes}))
    return len(spans)


def _append(span: Span, attributes: Sequence[tuple[str, float | int | str]]) -> None:
    for key, value in attributes:
        if isinstance(value, str):
            span.attributes.add(key=key, value=AnyValue(string_value=value))
        elif isinstance(value, int):
            span.attributes.add(key=key, value=AnyValue(int_value=value))
        else:
            span.attributes.add(key=key, value=AnyValue(double_value=value))
