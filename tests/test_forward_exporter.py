"""`engine.enriching_exporter(...)`: the costs on the spans an application exports itself.

Spans made by the real SDK go through the wrapper into an `InMemorySpanExporter`; then real logfire with
a real pydantic-ai agent exports through the wrapper and the real OTLP exporter to a backend on loopback.
Money is asserted exactly: each cost is genai-prices' own `calc_price` of the usage sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import logfire
import pytest
from genai_prices import Usage, calc_price
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from opentelemetry.util.types import Attributes

from otel_puppy import EnrichingSpanExporter
from otel_puppy.calls import extract_call
from otel_puppy.engine import PolicyEngine
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
)
from otel_puppy.forward.exporter import OPERATION_COST
from otel_puppy.money import usd_to_nanos
from otel_puppy.policies import parse_policy_text
from otel_puppy.testing import engine_for_tests
from tests._downstream import Downstream
from tests.corpus.record import logfire_pydantic_ai as recorded
from tests.corpus.record._scripted import Scripted

GENAI_PRICES = f"genai-prices {version('genai-prices')}"
MODEL = "gpt-4.1-2025-04-14"


def usd(input_tokens: int, cached: int, output_tokens: int) -> Decimal:
    """genai-prices' own price of this usage of `MODEL` on OpenAI."""
    usage = Usage(input_tokens=input_tokens, cache_read_tokens=cached, output_tokens=output_tokens)
    total: Decimal = calc_price(usage, MODEL, provider_id="openai").total_price
    return total


def chat(input_tokens: int = 1874, cached: int = 1536, output_tokens: int = 23) -> dict[str, Any]:
    """A chat span's attributes, as the GenAI conventions write them."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4.1",
        "gen_ai.response.model": MODEL,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.cache_read.input_tokens": cached,
        "gen_ai.usage.output_tokens": output_tokens,
    }


def priced(amount: Decimal) -> dict[str, Any]:
    return {COST_AMOUNT: float(amount), COST_CURRENCY: "USD", COST_SOURCE: "local", PRICE_VERSION: GENAI_PRICES}


def ended(make: Callable[[Tracer], None], limits: SpanLimits | None = None) -> tuple[ReadableSpan, ...]:
    """The spans `make` starts and ends on a real SDK tracer, in the order they ended."""
    provider = TracerProvider(resource=Resource.create({"service.name": "tests"}), span_limits=limits)
    finished = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    make(provider.get_tracer("tests"))
    provider.shutdown()
    return finished.get_finished_spans()


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def wrapper(engine: PolicyEngine, exported: InMemorySpanExporter) -> EnrichingSpanExporter:
    return engine.enriching_exporter(exported)


def one_span(attributes: Attributes, name: str = "chat gpt-4.1") -> ReadableSpan:
    def make(tracer: Tracer) -> None:
        tracer.start_span(name, attributes=attributes).end()

    (span,) = ended(make)
    return span


# --- model calls ----------------------------------------------------------------------------------


def test_a_model_call_gains_its_exact_cost_and_is_otherwise_the_same_span(
    wrapper: EnrichingSpanExporter, exported: InMemorySpanExporter
) -> None:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("handle request"):  # a parent, to see it kept
            span = tracer.start_span("chat gpt-4.1", attributes=chat())
            for n in range(3):  # past the limit of 1: two are dropped, and stay counted as dropped
                span.add_event(f"gen_ai.choice {n}", {"index": n})
            span.end()

    call, _parent = ended(make, SpanLimits(max_events=1))
    assert wrapper.export([call]) is SpanExportResult.SUCCESS
    (out,) = exported.get_finished_spans()
    assert out is not call
    assert dict(out.attributes or {}) == chat() | priced(usd(1874, 1536, 23))
    assert out.attributes is not None
    assert type(out.attributes[COST_AMOUNT]) is float
    for field in ("name", "context", "parent", "resource", "events", "links", "kind", "status", "start_time"):
        assert getattr(out, field) == getattr(call, field), field
    assert (out.end_time, out.instrumentation_scope) == (call.end_time, call.instrumentation_scope)
    assert (out.dropped_attributes, out.dropped_events, out.dropped_links) == (0, 2, 0)


def test_an_unknown_model_is_marked_unpriced_never_zero(
    wrapper: EnrichingSpanExporter, exported: InMemorySpanExporter
) -> None:
    attributes = chat() | {"gen_ai.request.model": "acme-kb-7b", "gen_ai.response.model": "acme-kb-7b"}
    wrapper.export([one_span(attributes)])
    (out,) = exported.get_finished_spans()
    assert dict(out.attributes or {}) == attributes | {UNPRICED_REASON: "unknown_model"}


def test_a_cost_already_on_the_span_is_kept_and_ours_goes_beside_it(
    wrapper: EnrichingSpanExporter, exported: InMemorySpanExporter
) -> None:
    attributes = chat() | {COST_AMOUNT: 0.25, COST_CURRENCY: "USD", COST_SOURCE: "provider"}
    wrapper.export([one_span(attributes)])
    (out,) = exported.get_finished_spans()
    assert dict(out.attributes or {}) == attributes | {
        OUR_COST_AMOUNT: float(usd(1874, 1536, 23)),
        PRICE_VERSION: GENAI_PRICES,
    }


def test_a_span_with_a_number_out_of_bounds_is_marked_rejected_and_not_priced(
    wrapper: EnrichingSpanExporter, exported: InMemorySpanExporter
) -> None:
    span = one_span(chat(input_tokens=200_000_000))
    call = extract_call(span)
    assert call is not None
    assert call.rejected
    wrapper.export([span])
    (out,) = exported.get_finished_spans()
    assert dict(out.attributes or {}) == chat(input_tokens=200_000_000) | {REJECTED: call.rejected}


def test_spans_that_are_not_model_calls_pass_as_the_same_objects(
    wrapper: EnrichingSpanExporter, exported: InMemorySpanExporter
) -> None:
    def make(tracer: Tracer) -> None:
        tracer.start_span("GET /orders", attributes={"http.request.method": "GET"}).end()
        tracer.start_span("execute_tool lookup_order", attributes={"gen_ai.operation.name": "execute_tool"}).end()
        tracer.start_span("bare").end()
        tracer.start_span("tags", attributes={"gen_ai.operation.name": ("invoke_agent", "chat")}).end()

    spans = ended(make)
    wrapper.export(spans)
    assert all(out is span for out, span in zip(exported.get_finished_spans(), spans, strict=True))


def test_operation_cost_is_written_only_where_the_instrumentation_wrote_none(
    engine: PolicyEngine, exported: InMemorySpanExporter
) -> None:
    wrapper = engine.enriching_exporter(exported, operation_cost=True)
    unknown = chat() | {"gen_ai.request.model": "acme-kb-7b", "gen_ai.response.model": "acme-kb-7b"}
    spans = [one_span(chat()), one_span(chat() | {OPERATION_COST: 0.5}), one_span(unknown)]
    wrapper.export(spans)
    without, reported, unpriced = exported.get_finished_spans()
    amount = float(usd(1874, 1536, 23))
    assert dict(without.attributes or {}) == chat() | priced(usd(1874, 1536, 23)) | {OPERATION_COST: amount}
    assert dict(reported.attributes or {}) == (chat() | {OPERATION_COST: 0.5}) | priced(usd(1874, 1536, 23))
    assert dict(unpriced.attributes or {}) == unknown | {UNPRICED_REASON: "unknown_model"}


# --- agent runs -----------------------------------------------------------------------------------


def agent_run(tracer: Tracer) -> None:
    """An agent run over two calls: the first also described by the SDK's own span beneath it (one call,
    two spans), the second under a step span. Each span ends before its parent, as in a real run."""
    run = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support"}
    with tracer.start_as_current_span("invoke_agent support", attributes=run):
        with tracer.start_as_current_span("chat gpt-4.1", attributes=chat()):
            sdk = tracer.start_span("openai.chat", attributes=chat())  # the same call, seen by its SDK
            sdk.end()
        with tracer.start_as_current_span("running tools"):
            tracer.start_span("execute_tool lookup_order", attributes={"gen_ai.operation.name": "execute_tool"}).end()
            tracer.start_span("chat gpt-4.1", attributes=chat(1956, 1792, 96)).end()


@pytest.mark.parametrize("batches", ["one batch", "a batch per span"])
def test_a_run_gains_the_exact_sum_of_its_calls_each_counted_once(
    wrapper: EnrichingSpanExporter, exported: InMemorySpanExporter, batches: str
) -> None:
    spans = ended(agent_run)
    if batches == "one batch":
        wrapper.export(spans)
    else:
        for span in spans:
            wrapper.export([span])
    sdk, first, tool, second, step, run = exported.get_finished_spans()
    assert [s.name for s in (sdk, first, tool, second, step, run)] == [
        "openai.chat",
        "chat gpt-4.1",
        "execute_tool lookup_order",
        "chat gpt-4.1",
        "running tools",
        "invoke_agent support",
    ]
    nanos = usd_to_nanos(usd(1874, 1536, 23)) + usd_to_nanos(usd(1956, 1792, 96))
    assert dict(run.attributes or {}) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "support",
        RUN_COST: nanos / 1e9,
        RUN_CALLS: 2,
    }
    assert dict(sdk.attributes or {})[COST_AMOUNT] == float(usd(1874, 1536, 23))  # each span of the call has it
    assert tool is spans[2]
    assert step is spans[4]


def test_only_traces_with_a_call_are_remembered(engine: PolicyEngine, exported: InMemorySpanExporter) -> None:
    """An application's other spans (requests, queries) cost no memory: a call's ancestors end after it."""
    wrapper = engine.enriching_exporter(exported)
    wrapper.max_traces = 1

    def requests(tracer: Tracer) -> None:
        for _ in range(50):
            with tracer.start_as_current_span("GET /orders"):
                tracer.start_span("SELECT orders").end()

    wrapper.export(ended(requests))
    wrapper.export(ended(agent_run))
    wrapper.export(ended(agent_run))
    assert len(wrapper.runs._parents) == 5 + 5  # each run's five parent links; none of the 50 requests'
    (remembered,) = wrapper._traces  # max_traces: the last trace with a call only
    assert remembered == exported.get_finished_spans()[-1].context.trace_id


def test_a_run_whose_calls_were_not_seen_says_so_with_zero_calls(
    wrapper: EnrichingSpanExporter, exported: InMemorySpanExporter
) -> None:
    run = one_span({"gen_ai.operation.name": "invoke_agent"}, name="invoke_agent support")
    wrapper.export([run])
    (out,) = exported.get_finished_spans()
    assert dict(out.attributes or {}) == {"gen_ai.operation.name": "invoke_agent", RUN_COST: 0.0, RUN_CALLS: 0}


# --- never in the way -----------------------------------------------------------------------------


class Refusing(SpanExporter):
    def __init__(self, *, raises: bool = False) -> None:
        self.raises = raises
        self.flushed: list[int] = []
        self.shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.raises:
            raise ConnectionError("the backend is down")
        return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self.flushed.append(timeout_millis)
        return False

    def shutdown(self) -> None:
        self.shut = True


def test_the_wrapped_exporters_answers_are_its_own(engine: PolicyEngine) -> None:
    refusing = Refusing()
    wrapper = engine.enriching_exporter(refusing)
    assert wrapper.export([one_span(chat())]) is SpanExportResult.FAILURE
    assert wrapper.force_flush(1234) is False
    assert refusing.flushed == [1234]
    wrapper.shutdown()
    assert refusing.shut


def test_a_wrapped_exporter_that_raises_is_answered_failure(engine: PolicyEngine) -> None:
    wrapper = engine.enriching_exporter(Refusing(raises=True))
    assert wrapper.export([one_span(chat())]) is SpanExportResult.FAILURE


class Unreadable(ReadableSpan):
    @property
    def attributes(self) -> Attributes:
        raise RuntimeError("these attributes cannot be read")


@pytest.fixture
def surviving_engine() -> Iterator[PolicyEngine]:
    """An engine that counts internal errors and goes on, as in production (pytest would re-raise them)."""
    engine = engine_for_tests(raise_internal_errors=False)
    yield engine
    engine.close()


def test_an_error_of_ours_exports_the_spans_as_they_came_and_is_counted(
    surviving_engine: PolicyEngine, exported: InMemorySpanExporter
) -> None:
    wrapper = surviving_engine.enriching_exporter(exported)
    spans = [one_span(chat()), Unreadable("broken", context=one_span(None).context)]
    assert wrapper.export(spans) is SpanExportResult.SUCCESS
    assert list(exported.get_finished_spans()) == spans
    assert all(out is span for out, span in zip(exported.get_finished_spans(), spans, strict=True))
    errors = surviving_engine.registry.get_sample_value(
        "otel_puppy_internal_errors_total", {"component": "forward.exporter"}
    )
    assert errors == 1


def test_under_pytest_an_error_of_ours_is_raised_not_hidden(wrapper: EnrichingSpanExporter) -> None:
    with pytest.raises(RuntimeError, match="cannot be read"):
        wrapper.export([Unreadable("broken", context=one_span(None).context)])


# --- logfire, pydantic-ai, the OTLP exporter and a backend on loopback --------------------------------


class WritesOnEnding(SpanProcessor):
    def _on_ending(self, span: Span) -> None:  # the SDK's (private) hook as a span ends
        span.set_attribute(COST_AMOUNT, 0.5)


def test_the_sdk_has_no_hook_that_can_still_add_attributes_as_a_span_ends() -> None:
    """Why the wrapper rebuilds spans: `_on_ending` runs once the end time is set, when `set_attribute`
    refuses. If an SDK upgrade makes this fail, the hook became usable: consider it instead."""
    provider = TracerProvider()
    finished = InMemorySpanExporter()
    provider.add_span_processor(WritesOnEnding())
    provider.add_span_processor(SimpleSpanProcessor(finished))
    provider.get_tracer("tests").start_span("chat gpt-4.1", attributes=chat()).end()
    (span,) = finished.get_finished_spans()
    assert dict(span.attributes or {}) == chat()


def configure_logfire(wrapper: EnrichingSpanExporter) -> None:
    """The documented wiring: logfire's spans through the wrapper, over OTLP, to the backend."""
    logfire.configure(
        send_to_logfire=False,
        console=False,
        metrics=False,
        service_name="tests",
        additional_span_processors=[BatchSpanProcessor(wrapper)],
    )
    logfire.instrument_pydantic_ai()


@pytest.fixture
def through_wrapper() -> Iterator[Callable[[EnrichingSpanExporter], None]]:
    """`configure_logfire`; afterwards logfire is configured afresh, so no later test exports through
    this test's wrapper to its stopped backend."""
    yield configure_logfire
    logfire.configure(send_to_logfire=False, console=False, metrics=False)


def by_name(down: Downstream) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for received in down.received():
        found.setdefault(received.span.name, []).append(received.attributes)
    return found


def test_logfire_and_pydantic_ai_through_the_wrapper_reach_the_backend_with_costs(
    engine: PolicyEngine, through_wrapper: Callable[[EnrichingSpanExporter], None]
) -> None:
    with Downstream() as down:
        exporter = OTLPSpanExporter(endpoint=f"{down.url}/v1/traces")
        through_wrapper(engine.enriching_exporter(exporter, operation_cost=True))
        # two calls (a tool call, then the answer), each also described by logfire's OpenAI span beneath it
        calls = recorded.agent_openai_tool(Scripted(), "test-forward-exporter", instrument_openai=True)
        logfire.force_flush()
        spans = by_name(down)
    costs = [
        usd(c["usage"]["input_tokens"], c["usage"]["cache_read_tokens"], c["usage"]["output_tokens"]) for c in calls
    ]
    assert [c["model"] for c in calls] == [MODEL, MODEL]
    chats = spans["chat gpt-4.1"]
    assert [attributes[COST_AMOUNT] for attributes in chats] == [float(cost) for cost in costs]
    for attributes, cost in zip(chats, costs, strict=True):
        assert (attributes[COST_CURRENCY], attributes[COST_SOURCE]) == ("USD", "local")
        assert attributes[PRICE_VERSION] == GENAI_PRICES
        assert attributes[OPERATION_COST] == float(cost)  # pydantic-ai's own, kept
    sdk_spans = [a for name, found in spans.items() if name.startswith("Chat Completion") for a in found]
    assert [attributes[COST_AMOUNT] for attributes in sdk_spans] == [float(cost) for cost in costs]
    (run,) = spans["invoke_agent support"]
    assert run[RUN_COST] == sum(usd_to_nanos(cost) for cost in costs) / 1e9  # each call once, not per span
    assert run[RUN_CALLS] == 2
    assert all(RUN_COST not in attributes for found in spans.values() for attributes in found if attributes is not run)


OVERRIDE = """
prices:
  - {provider: openai, model: acme-kb-7b, input_mtok: 0.6, output_mtok: 2.4}
"""


@pytest.fixture
def engine_with_override() -> Iterator[PolicyEngine]:
    engine = engine_for_tests(parse_policy_text(OVERRIDE, Path("policies/prices.yaml")))
    yield engine
    engine.close()


def test_logfire_gets_operation_cost_on_a_call_its_instrumentation_could_not_price(
    engine_with_override: PolicyEngine, through_wrapper: Callable[[EnrichingSpanExporter], None]
) -> None:
    """pydantic-ai writes `operation.cost` only for models genai-prices knows; a `prices:` entry prices the
    rest here, and the wrapper gives Logfire the cost it would otherwise not show."""
    with Downstream() as down:
        exporter = OTLPSpanExporter(endpoint=f"{down.url}/v1/traces")
        through_wrapper(engine_with_override.enriching_exporter(exporter, operation_cost=True))
        scripted = Scripted()
        model, _client = recorded.openai_model(scripted, "acme-kb-7b")
        recorded.openai_turn(scripted, "test-override", "acme-kb-7b", prompt=1200, cached=0, completion=300, tool=False)
        recorded.agent(model, tools=False).run_sync(recorded.QUESTION)
        logfire.force_flush()
        spans = by_name(down)
    (call,) = spans["chat acme-kb-7b"]
    amount = float(Decimal(1200) * Decimal("0.6") / 10**6 + Decimal(300) * Decimal("2.4") / 10**6)
    assert amount == 0.00144
    assert (call[OPERATION_COST], call[COST_AMOUNT], call[PRICE_VERSION]) == (amount, amount, "override")
    (run,) = spans["invoke_agent support"]
    assert (run[RUN_COST], run[RUN_CALLS]) == (amount, 1)
