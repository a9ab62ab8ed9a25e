"""Replay the corpus through otel_puppy's two front doors and compare what it counted with the manifests.

Each recording `tests/corpus/recordings/<instrumentation>/<case>.jsonl` holds the spans a real
library emitted for real SDK calls over a mocked transport; its `manifest.json` says what each call
really was: the usage THE MOCK PROVIDER RETURNED, its outcome and the labels a user writes in
`match:`. The expected cost is `genai_prices.calc_price` on that usage (less the `shortfall` an
instrumentation documents as dropped), never on what otel_puppy read back from the spans.

The front doors: the span processor (`PuppySpanProcessor.on_end`, with the recorded spans rebuilt as
the SDK's `ReadableSpan`s) and the OTLP/HTTP receiver (a real `POST /v1/traces` of the recorded
line). Both feed `PolicyEngine.observe_many`, where the observations (what the store applied, as
what, at what price) are collected.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import httpx
from genai_prices import Usage, calc_price
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from starlette.types import ASGIApp, Receive, Scope, Send

from otel_puppy.calls import ErrorClass
from otel_puppy.engine import PolicyEngine
from otel_puppy.money import nanos_to_usd, usd_to_nanos
from otel_puppy.server.app import create_app
from otel_puppy.server.decoder import DecodePool
from otel_puppy.server.thread import serving
from otel_puppy.snapshot import Observation
from otel_puppy.store import ApplyResult
from otel_puppy.testing import engine_for_tests

__all__ = (
    "RECORDINGS",
    "TOKEN_FIELDS",
    "Case",
    "Expected",
    "Receiver",
    "Replayed",
    "compare",
    "load_cases",
    "observed",
    "receiver",
    "replayed",
    "through_processor",
)

RECORDINGS: Final = Path(__file__).parent / "recordings"
TOKEN_FIELDS: Final = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
"""genai-prices' names, as the manifests write usage; `LLMCall` has the same attribute names."""
_ERROR_CLASSES: Final = {429: ErrorClass.RATE_LIMIT, 408: ErrorClass.TIMEOUT, 504: ErrorClass.TIMEOUT}


@dataclass(frozen=True, slots=True)
class Expected:
    """One call of a case, as the manifest says it was."""

    outcome: str
    http_status: int
    streamed: bool
    provider: str
    model: str
    response_id: str | None
    usage: Mapping[str, int]
    shortfall: Mapping[str, int]
    agent: str | None = None
    span_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels as this instrumentation's spans name them, where they lose the user's (`provider`,
    `model`): documented in the manifest like `shortfall`."""
    note: str = ""

    @property
    def labels(self) -> tuple[str, str]:
        """(provider, model) as otel_puppy must read them from the spans."""
        return self.span_labels.get("provider", self.provider), self.span_labels.get("model", self.model)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def error_class(self) -> ErrorClass | None:
        if self.ok:
            return None
        known = _ERROR_CLASSES.get(self.http_status)
        if known is not None:
            return known
        return ErrorClass.SERVER_ERROR if self.http_status >= 500 else ErrorClass.CLIENT_ERROR

    def tokens(self) -> dict[str, int]:
        """What the spans can tell: the usage the provider returned, less the documented shortfall."""
        return {name: self.usage.get(name, 0) - self.shortfall.get(name, 0) for name in TOKEN_FIELDS}

    def nanos(self, at: datetime) -> int | None:
        """`genai_prices.calc_price` on `tokens()` for the manifest's provider and model, in nano-USD;
        0 for a failed call (never a cost); `None` (unpriced) for a model genai-prices does not know."""
        if not self.ok:
            return 0
        counts = {name: count for name, count in self.tokens().items() if count}
        with warnings.catch_warnings():  # reasoning tokens are priced as output; genai-prices warns it
            warnings.simplefilter("ignore")
            usage = Usage(**counts)
            try:
                price = calc_price(usage, self.model, provider_id=self.provider, genai_request_timestamp=at)
            except LookupError:
                return None
        return usd_to_nanos(price.total_price)


@dataclass(frozen=True, slots=True)
class Case:
    """One recorded case: its OTLP/JSON line and the calls it made."""

    instrumentation: str
    name: str
    path: Path
    packages: Mapping[str, str]
    language: str
    calls: tuple[Expected, ...]

    @property
    def id(self) -> str:
        return f"{self.instrumentation}/{self.name}"

    def body(self) -> bytes:
        return self.path.read_bytes()

    def spans(self) -> list[ReadableSpan]:
        """The recorded spans rebuilt as the SDK hands them to `on_end`, in recorded order."""
        spans: list[ReadableSpan] = []
        for line in self.body().splitlines():
            if line.strip():
                spans.extend(_spans_of(json.loads(line)))
        return spans


def load_cases(recordings: Path = RECORDINGS) -> list[Case]:
    """Every case of every `*/manifest.json` under `recordings`, sorted by instrumentation and case."""
    cases: list[Case] = []
    for manifest in sorted(recordings.glob("*/manifest.json")):
        document = json.loads(manifest.read_text())
        for entry in document["cases"]:
            calls = tuple(
                Expected(
                    outcome=call["outcome"],
                    http_status=int(call["http_status"]),
                    streamed=bool(call.get("streamed", False)),
                    provider=call["provider"],
                    model=call["model"],
                    response_id=call.get("response_id"),
                    usage=dict(call["usage"]),
                    shortfall=dict(call.get("shortfall") or {}),
                    agent=call.get("agent"),
                    span_labels=dict(call.get("span_labels") or {}),
                    note=call.get("note", ""),
                )
                for call in entry["calls"]
            )
            cases.append(
                Case(
                    instrumentation=document["instrumentation"],
                    name=entry["case"],
                    path=manifest.parent / entry["file"],
                    packages=dict(document.get("packages", {})),
                    language=document.get("language", "python"),
                    calls=calls,
                )
            )
    return cases


# --- comparing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replayed:
    """What one front door made of one case: what the engine observed, and what it then reported."""

    observations: list[Observation]
    requests: Counter[tuple[str, str, str, str]]
    """`otel_puppy_llm_requests_total` by (provider, model, outcome, error_class)."""
    spend_usd: Decimal
    """The store's spend in the day window."""
    store_requests: int

    @property
    def applied(self) -> list[Observation]:
        """The calls counted, in start order."""
        return sorted((o for o in self.observations if o.result is ApplyResult.APPLIED), key=_started)


def compare(case: Case, replayed: Replayed) -> list[str]:
    """Every difference from the manifest; empty when exact. Per call (in start order): one request,
    its outcome and error class, cost to the nano-dollar (never a cost for a failed call), tokens by
    type, provider and model labels; and the same once more as the metrics and the store report them."""
    applied = replayed.applied
    problems: list[str] = []
    if len(applied) != len(case.calls):
        shown = "; ".join(_describe(o) for o in applied)
        problems.append(f"{len(applied)} requests counted for {len(case.calls)} calls: {shown or 'none'}")
    expected_nanos = 0
    for index, (expected, observation) in enumerate(zip(case.calls, applied, strict=False)):
        call, price = observation.call, observation.price
        where = f"call {index + 1}"
        if call.error_class != expected.error_class:
            problems.append(f"{where}: error class {_value(call.error_class)}, expected {_value(expected.error_class)}")
        if (call.provider, call.model) != expected.labels:
            provider, model = expected.labels
            problems.append(
                f"{where}: labels provider={call.provider} model={call.model}, "
                f"expected provider={provider} model={model}"
            )
        if expected.agent is not None and call.agent != expected.agent:
            problems.append(f"{where}: agent {call.agent!r}, expected {expected.agent!r}")
        got_tokens = {name: getattr(call, name) for name in TOKEN_FIELDS}
        if expected.ok and got_tokens != expected.tokens():
            problems.append(f"{where}: tokens {_tokens(got_tokens)}, expected {_tokens(expected.tokens())}")
        want = expected.nanos(datetime.fromtimestamp(call.start_ns / 1e9, tz=UTC))
        expected_nanos += want or 0
        if price.nanos != want:
            reason = f" ({price.unpriced_reason})" if price.unpriced_reason else ""
            problems.append(f"{where}: cost {price.nanos} nano-USD{reason}, expected {want}")
    requests = Counter(
        (*e.labels, "ok" if e.ok else "error", e.error_class.value if e.error_class else "") for e in case.calls
    )
    if replayed.requests != requests:
        problems.append(f"otel_puppy_llm_requests_total {dict(replayed.requests)}, expected {dict(requests)}")
    if replayed.store_requests != len(case.calls) or replayed.spend_usd != nanos_to_usd(expected_nanos):
        problems.append(
            f"the store holds {replayed.store_requests} requests and ${replayed.spend_usd}, "
            f"expected {len(case.calls)} and ${nanos_to_usd(expected_nanos)}"
        )
    return problems


def _started(observation: Observation) -> tuple[int, int]:
    return observation.call.start_ns, observation.call.span_id


def _value(error_class: ErrorClass | None) -> str:
    return error_class.value if error_class is not None else "none (ok)"


def _tokens(tokens: Mapping[str, int]) -> str:
    return ", ".join(f"{name.removesuffix('_tokens')}={count}" for name, count in tokens.items())


def _describe(observation: Observation) -> str:
    call = observation.call
    state = call.error_class.value if call.error_class is not None else "ok"
    return f"{call.provider}/{call.model} {state} span {call.span_id:016x}"


# --- the front doors ---------------------------------------------------------------------------


@contextmanager
def observed(engine: PolicyEngine) -> Iterator[list[Observation]]:
    """Every observation `engine.observe_many` returns while the block runs (both doors call it)."""
    seen: list[Observation] = []
    original = engine.observe_many

    def spy(calls: Sequence[Any]) -> list[Observation]:
        result = original(calls)
        seen.extend(result)
        return result

    engine.observe_many = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del engine.observe_many


def replayed(engine: PolicyEngine, observations: list[Observation]) -> Replayed:
    """What `engine` observed and then reported (read before it is closed)."""
    requests: Counter[tuple[str, str, str, str]] = Counter()
    for family in engine.registry.collect():
        for sample in family.samples:
            if sample.name == "otel_puppy_llm_requests_total":
                labels = sample.labels
                key = (labels["provider"], labels["model"], labels["outcome"], labels["error_class"])
                requests[key] += int(sample.value)
    day = next(w for w in engine.snapshot().windows if w.window == "day")
    return Replayed(observations, requests, day.spend_usd, day.requests)


def through_processor(case: Case) -> Replayed:
    """The case's spans through `PuppySpanProcessor.on_end`, in recorded order, on a fresh engine."""
    engine = engine_for_tests(allow_no_policies=True)
    try:
        with observed(engine) as seen:
            processor = engine.span_processor()
            for span in case.spans():
                processor.on_end(span)
            assert processor.force_flush(), "the span processor did not apply every span"
        return replayed(engine, seen)
    finally:
        engine.close()


class Receiver:
    """One uvicorn server for every case; each POST goes to an app over a fresh engine of its own,
    its bodies read in a decoding process as `otel-puppy serve` reads them on two CPUs or more.
    One HTTP client posts them all (building a client, with its TLS context, takes 20 ms)."""

    def __init__(self, url: str, swap: Callable[[ASGIApp], None], decoder: DecodePool, client: httpx.Client) -> None:
        self.url = url
        self._swap = swap
        self._decoder = decoder
        self._client = client

    def post(self, case: Case) -> Replayed:
        """`POST /v1/traces` of the recorded OTLP/JSON line(s), on a fresh engine."""
        return self.post_bodies([line for line in case.body().splitlines() if line.strip()])

    def post_bodies(self, bodies: Sequence[bytes]) -> Replayed:
        """`POST /v1/traces` of each OTLP/JSON body in turn, on a fresh engine."""
        engine = engine_for_tests(allow_no_policies=True)
        try:
            self._swap(create_app(engine, decoder=self._decoder))
            with observed(engine) as seen:
                for body in bodies:
                    reply = self._client.post("/v1/traces", content=body, headers={"content-type": "application/json"})
                    assert reply.status_code == 200, f"POST /v1/traces answered {reply.status_code}: {reply.text}"
                    assert "rejectedSpans" not in reply.text, f"spans were rejected: {reply.text}"
            return replayed(engine, seen)
        finally:
            engine.close()


@contextmanager
def receiver() -> Iterator[Receiver]:
    """A real OTLP/HTTP server on loopback whose app is swapped per case (starting one per case is slow)."""
    current: list[ASGIApp] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await current[-1](scope, receive, send)

    def swap(new: ASGIApp) -> None:
        current[:] = [new]

    decoder = DecodePool(1).start()
    try:
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Receiver(url, swap, decoder, client)
    finally:
        decoder.close()


# --- OTLP/JSON -> ReadableSpan ------------------------------------------------------------------


def _spans_of(document: Mapping[str, Any]) -> Iterator[ReadableSpan]:
    for resource_spans in document.get("resourceSpans") or ():
        resource = Resource(_attributes((resource_spans.get("resource") or {}).get("attributes")))
        for scope_spans in resource_spans.get("scopeSpans") or ():
            scope = scope_spans.get("scope") or {}
            instrumentation = InstrumentationScope(scope.get("name", ""), scope.get("version"))
            for span in scope_spans.get("spans") or ():
                yield _span(span, resource, instrumentation)


def _span(span: Mapping[str, Any], resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    trace_id = int(span["traceId"], 16)
    flags = TraceFlags(TraceFlags.SAMPLED)
    parent_id = int(span["parentSpanId"], 16) if span.get("parentSpanId") else 0
    status = span.get("status") or {}
    code = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}[int(status.get("code", 0))]
    return ReadableSpan(
        name=span.get("name", ""),
        context=SpanContext(trace_id, int(span["spanId"], 16), is_remote=False, trace_flags=flags),
        parent=SpanContext(trace_id, parent_id, is_remote=False, trace_flags=flags) if parent_id else None,
        resource=resource,
        attributes=_attributes(span.get("attributes")),
        events=[
            Event(event.get("name", ""), _attributes(event.get("attributes")), int(event.get("timeUnixNano", 0)))
            for event in span.get("events") or ()
        ],
        kind=SpanKind(max(int(span.get("kind", 1)) - 1, 0)),  # OTLP counts from UNSPECIFIED = 0
        status=Status(code, status.get("message") or None) if code is StatusCode.ERROR else Status(code),
        start_time=int(span.get("startTimeUnixNano", 0)),
        end_time=int(span.get("endTimeUnixNano", 0)),
        instrumentation_scope=scope,
    )


def _attributes(pairs: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for pair in pairs or ():
        value = _value_of(pair.get("value") or {})
        if value is not None:  # a kvlist: the SDK holds no such attribute
            attributes[pair["key"]] = value
    return attributes


def _value_of(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    if "arrayValue" in value:
        items = [_value_of(item) for item in (value["arrayValue"].get("values") or ())]
        return tuple(item for item in items if item is not None)
    return None
