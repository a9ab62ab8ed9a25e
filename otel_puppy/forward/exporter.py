"""The costs on the spans an application exports itself: a `SpanExporter` around its own.

`engine.enriching_exporter(OTLPSpanExporter(...))` writes onto the spans it exports what
`otel-puppy serve --forward-to` writes onto the spans it passes on (`forward/enrich.py`): each model
call's cost, each agent run's. It reads and prices each model-call span in the exporting thread (about
35 µs, what the OTLP exporter takes to encode it; pricing itself, memoized, about 2 µs) and costs about
3 µs per other span; it never raises, and waits on nothing but the wrapped exporter. It prices only:
spend is counted, and budgets kept, by the engine's span processor.

Ended spans are read-only, and this SDK has no supported hook that runs before they become so:
`SpanProcessor._on_ending` (private) runs once `Span.end()` has set the end time, when `set_attribute`
refuses. So a span that gains attributes is exported as a new `ReadableSpan`, the same in all else
(dropped counts included); every other span goes on as the same object.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode
from opentelemetry.util.types import AttributeValue

from otel_puppy import semconv
from otel_puppy._fork import repair_in_child
from otel_puppy._logging import RateLimitedLog
from otel_puppy.calls import LLMCall, extract_call, is_genai_span
from otel_puppy.forward.enrich import REJECTED, RunCosts, call_attributes, is_run, run_attributes

if TYPE_CHECKING:
    from otel_puppy.engine import PolicyEngine
    from otel_puppy.pricing import Price

__all__ = ("OPERATION_COST", "EnrichingSpanExporter")

logger = logging.getLogger("otel_puppy")
_LOG: Final = RateLimitedLog(logger)

OPERATION_COST: Final = semconv.REPORTED_COST[0]
"""logfire's and pydantic-ai's cost attribute (USD, a double), which Logfire shows and sums."""

_Added = list[tuple[str, AttributeValue]]
_Link = tuple[int, int, int]
"""(trace id, span id, parent span id), as `RunCosts.link` takes them."""


class EnrichingSpanExporter(SpanExporter):
    """`exporter`, with each model call's cost and each agent run's written onto the spans it exports.

    >>> exporter = engine.enriching_exporter(OTLPSpanExporter())  # doctest: +SKIP
    >>> provider.add_span_processor(BatchSpanProcessor(exporter))  # doctest: +SKIP

    A model call gains `gen_ai.usage.cost.amount`, `.currency`, `.source` and `otel_puppy.price.version`
    (or `otel_puppy.price.unpriced_reason`); an agent run span, `otel_puppy.run.cost.amount` and
    `otel_puppy.run.calls` over the calls beneath it exported before it (`runs`, bounded; only the spans
    of the last `max_traces` traces with a call are remembered). No attribute already on a span is
    overwritten. With `operation_cost`, a priced call without `operation.cost`
    gains it too, so Logfire shows the cost of calls its instrumentation could not price (a `prices:`
    override, an instrumentation that writes no cost).

    `export` never raises: an error of ours is counted (`otel_puppy_internal_errors_total{component=
    "forward.exporter"}`) and the spans are exported as they came; one of the wrapped exporter's is
    logged and answered `FAILURE`.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        engine: PolicyEngine,
        *,
        operation_cost: bool = False,
        runs: RunCosts | None = None,
        max_traces: int = 10_000,
    ) -> None:
        self.exporter = exporter
        self.engine = engine
        self.operation_cost = operation_cost
        self.runs = runs if runs is not None else RunCosts()
        self.max_traces = max_traces
        self._traces: OrderedDict[int, None] = OrderedDict()
        """The last `max_traces` traces with a call. Only their spans are linked in `runs`: a call's
        ancestors end after it, so they are exported with it or later, and an application's other
        spans (requests, queries) cost no memory."""
        self._lock = threading.Lock()
        # The SDK's BatchSpanProcessor restarts its worker in a forked child: the locks that worker
        # (or another thread) held here at the fork are replaced there.
        repair_in_child(self, EnrichingSpanExporter.after_fork)

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the locks."""
        self._lock = threading.Lock()
        self.runs.after_fork()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            enriched = self._enrich(spans)
        except Exception:
            self.engine.internal_error("forward.exporter")
            enriched = spans
        try:
            return self.exporter.export(enriched)
        except Exception:
            _LOG.error("exporter:wrapped", "otel_puppy: the wrapped exporter %s raised", self.exporter, exc_info=True)
            return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def _enrich(self, spans: Sequence[ReadableSpan]) -> Sequence[ReadableSpan]:
        engine = self.engine
        pricer, limits = engine.pricer, engine.settings.call_limits
        links: list[_Link] = []
        calls: list[tuple[int, ReadableSpan, LLMCall, Price | None]] = []
        runs: list[tuple[int, int, int]] = []  # (index, trace id, span id) of each agent run span
        for index, span in enumerate(spans):
            context = span.context
            if context is None:
                continue
            links.append((context.trace_id, context.span_id, span.parent.span_id if span.parent is not None else 0))
            attributes = span.attributes or {}
            call = None
            if is_genai_span(attributes) or (not attributes and span.status.status_code is StatusCode.ERROR):
                read = _Enriched(span, [])  # a plain dict reads twice as fast as the SDK's attributes
                call = extract_call(read, limits)  # None for a logfire pending span, an agent run, a tool...
                if call is not None:
                    calls.append((index, read, call, None if call.rejected is not None else pricer.price(call)))
            if call is None and is_run(attributes):
                runs.append((index, context.trace_id, context.span_id))
        # Every parent in a trace with a call (a batch of tools links a later run to its calls) and
        # every priced call of the batch first: a run's calls may be in the same batch.
        self.runs.link(self._of_traces_with_calls(links, {call.trace_id for _, _, call, _ in calls}))
        if not calls and not runs:
            return spans
        for _, _, call, price in calls:
            if price is not None and price.nanos is not None:
                self.runs.count(call.trace_id, call.span_id, price.nanos)
        enriched: list[ReadableSpan] = list(spans)
        for index, readable, call, price in calls:
            if added := self._call_attributes(readable, call, price):
                enriched[index] = _Enriched(readable, added)
        sums = self.runs.sums((trace_id, span_id) for _, trace_id, span_id in runs)
        for index, trace_id, span_id in runs:
            if gained := run_attributes(sums[(trace_id, span_id)], spans[index].attributes or {}):
                enriched[index] = _Enriched(spans[index], gained)
        return enriched

    def _of_traces_with_calls(self, links: list[_Link], new: set[int]) -> list[_Link]:
        """Remember the traces of this batch's calls (`new`); the links in a trace with a call."""
        with self._lock:
            traces = self._traces
            for trace_id in new:
                traces[trace_id] = None
                traces.move_to_end(trace_id)
            while len(traces) > self.max_traces:
                traces.popitem(last=False)
            return [link for link in links if link[0] in traces]

    def _call_attributes(self, span: ReadableSpan, call: LLMCall, price: Price | None) -> _Added:
        present = span.attributes or {}
        if price is None:  # rejected: a number out of bounds; never priced, as the receiver refuses it
            return [(REJECTED, call.rejected or "rejected")] if REJECTED not in present else []
        added: _Added = list(call_attributes(price, present))
        if self.operation_cost and price.exact_usd is not None and OPERATION_COST not in present:
            added.append((OPERATION_COST, float(price.exact_usd)))
        return added


class _Enriched(ReadableSpan):
    """`span` with attributes added, in a plain dict; all else is the original's, the dropped counts
    included (the SDK's `events` and `links` are copies that lose them)."""

    def __init__(self, span: ReadableSpan, added: Sequence[tuple[str, AttributeValue]]) -> None:
        super().__init__(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes={**(span.attributes or {}), **dict(added)},
            events=span.events,
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )
        self._dropped = (span.dropped_attributes, span.dropped_events, span.dropped_links)

    @property
    def dropped_attributes(self) -> int:
        return self._dropped[0]

    @property
    def dropped_events(self) -> int:
        return self._dropped[1]

    @property
    def dropped_links(self) -> int:
        return self._dropped[2]
