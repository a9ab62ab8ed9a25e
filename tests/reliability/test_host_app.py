"""The host application is never broken by otel_puppy.

Spans with arbitrary attribute names, types and values go through a real `TracerProvider` holding
our processor and, after it, a processor that counts what it sees. Whatever the attributes, and
whatever fails inside otel_puppy (the store, the pricer, a policy), no exception reaches the
application, the application's own exceptions keep their type, the processor after ours sees every
span, and every GenAI span is accounted for exactly once: applied, invalid, ignored, or counted in
`otel_puppy_internal_errors_total`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue
from prometheus_client.registry import CollectorRegistry

from otel_puppy import semconv
from otel_puppy.decision import Action
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PolicyDenied, StoreError
from otel_puppy.policies import parse_policy_text
from otel_puppy.processor import DECISION_CONTEXT_KEY
from otel_puppy.settings import PuppySettings
from otel_puppy.store.memory import MemoryStore
from otel_puppy.testing import FakeClock, engine_for_tests, make_span

CALL: dict[str, AttributeValue] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}
GPT41_NANOS = 2_800_000  # 1000 * $2/MTok + 100 * $8/MTok
POLICIES = """
budgets:
  - {name: daily, limit_usd: 100, window: day, action: deny}
breakers:
  - {name: providers, per: [provider], failure_threshold: 5, recovery_timeout: 30s}
"""
OUTCOMES = ("applied", "invalid", "rejected", "ignored")
"""What becomes of a GenAI span the worker read (`rejected`: a number out of bounds); a span that failed
inside otel_puppy is an internal error."""

# Every attribute name otel_puppy reads, so generated spans hit the parsing code and not only the filter.
READ_KEYS = sorted(
    {
        *semconv.PROVIDER,
        *semconv.REQUEST_MODEL,
        *semconv.RESPONSE_MODEL,
        *semconv.OPERATION,
        *semconv.USAGE_KEYS,
        *semconv.CACHE_READ_TOKENS,
        *semconv.CACHE_WRITE_TOKENS,
        *semconv.REASONING_TOKENS,
        *semconv.REPORTED_COST,
        *semconv.AGENT,
        *semconv.CONVERSATION,
        *semconv.USER,
        *semconv.TEAM,
        *semconv.ENVIRONMENT,
        *semconv.PROMPT,
        *semconv.HTTP_STATUS,
        semconv.ERROR_TYPE,
        semconv.DECISION_ID,
        semconv.DECISION_ACTION,
        semconv.LOGFIRE_SPAN_TYPE,
        semconv.OPENINFERENCE_KIND,
        semconv.TRACELOOP_KIND,
        semconv.EXCEPTION_TYPE,
        semconv.EXCEPTION_MESSAGE,
    }
)
NAMES = st.one_of(st.sampled_from(READ_KEYS), st.text(max_size=30))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN, infinities, -0.0, subnormals
    st.text(max_size=60),
    st.sampled_from(["chat", "invoke_agent", "pending_span", "deny", "LLM", "openai", "gpt-4.1", "", "\x00", "\ud800"]),
)
SDK_VALUES = st.one_of(
    SCALARS,
    st.binary(max_size=20),
    st.lists(SCALARS, max_size=4),
    st.lists(SCALARS, max_size=4).map(tuple),
    st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
)
"""What an application may pass to `set_attribute`: the SDK keeps the valid ones and drops the rest."""


def _refuse(self: object, *args: object) -> Any:
    raise RuntimeError("hostile")


class Hostile:
    """An object no attribute should ever hold: every conversion of it raises."""

    __str__ = __repr__ = __int__ = __float__ = __bool__ = __len__ = __iter__ = _refuse


RAW_VALUES = st.one_of(
    SDK_VALUES,
    st.decimals(allow_nan=True, allow_infinity=True),
    st.complex_numbers(),
    st.builds(Hostile),
    st.builds(object),
    st.lists(st.one_of(SCALARS, st.builds(Hostile)), max_size=3),
    st.frozensets(st.integers(), max_size=3),
)
"""What a span built outside the SDK (a buggy instrumentation, another processor) may carry."""
RAW_NAMES = st.one_of(NAMES, st.integers(), st.none(), st.tuples(st.integers()))


class AppError(Exception):
    """The application's own exception."""


class AppAbort(BaseException):
    """The application's own `BaseException` (not an `Exception`): it too must pass untouched."""


APP_ERRORS: Sequence[type[BaseException]] = (AppError, KeyError, ValueError, AppAbort)


class SequentialIds(IdGenerator):
    """Unique ids even under hypothesis, which seeds `random` (the SDK's generator) the same way for
    every example: otherwise spans of different examples share ids and count as retries."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._next)

    def generate_trace_id(self) -> int:
        return next(self._next)


class Recording(SpanProcessor):
    """The processor after ours: it must see every span ours saw."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def counts(engine: PolicyEngine) -> dict[str, float]:
    """`otel_puppy_spans_total` by result, and internal errors by component."""
    found: dict[str, float] = {}
    for family in engine.registry.collect():
        for sample in family.samples:
            if sample.name == "otel_puppy_spans_total":
                found[sample.labels["result"]] = sample.value
            elif sample.name == "otel_puppy_internal_errors_total":
                found[f"error:{sample.labels['component']}"] = sample.value
    return found


def difference(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}


def is_genai(attributes: Mapping[Any, Any]) -> bool:
    """The processor's own filter: a span with a GenAI key that is not a logfire pending span."""
    keys = set(attributes)
    return not keys.isdisjoint(semconv.MARKERS) and attributes.get(semconv.LOGFIRE_SPAN_TYPE) != semconv.LOGFIRE_PENDING


@contextmanager
def host_app(engine: PolicyEngine) -> Iterator[tuple[TracerProvider, Recording]]:
    """A real tracer provider with our processor first and a recording processor after it."""
    provider = TracerProvider(id_generator=SequentialIds())
    after = Recording()
    provider.add_span_processor(engine.span_processor())
    provider.add_span_processor(after)
    try:
        yield provider, after
    finally:
        provider.shutdown()


AppSpan = tuple[bool, Sequence[tuple[Any, Any]], bool, int]
"""(starts as a well-formed call, attributes set on it in order, error status, which app error it raises)."""


def app_work(tracer: Tracer, spec: AppSpan) -> None:
    """One unit of the application's work: a span with these attributes, ending with the app's own error."""
    call, attributes, error, raises = spec
    with tracer.start_as_current_span("chat", attributes=CALL if call else None) as span:
        for key, value in attributes:
            span.set_attribute(key, value)
        if error:
            span.set_status(Status(StatusCode.ERROR, "provider said no"))
        if raises:
            raise APP_ERRORS[raises - 1]("the app's own")


def run_app(provider: TracerProvider, spans: Sequence[AppSpan]) -> list[type[BaseException] | None]:
    """Returns the exception type each unit of work ended with, as the application saw it."""
    tracer = provider.get_tracer("app")
    seen: list[type[BaseException] | None] = []
    for spec in spans:
        try:
            app_work(tracer, spec)
        except BaseException as exc:
            seen.append(type(exc))
        else:
            seen.append(None)
    return seen


SPAN_KIND_KEYS = frozenset({semconv.OPENINFERENCE_KIND, semconv.TRACELOOP_KIND})
"""A map value under these keys once made `calls.call_from_parts` raise `TypeError` (an unhashable
value tested for membership in a set): `test_a_map_valued_span_kind_is_read_without_an_internal_error`."""


SPANS = st.lists(
    st.tuples(
        st.booleans(),
        st.lists(st.tuples(NAMES, SDK_VALUES), max_size=8),
        st.booleans(),
        st.integers(0, len(APP_ERRORS)),
    ),
    min_size=1,
    max_size=6,
)


def test_arbitrary_attributes_through_a_real_tracer_provider() -> None:
    engine = engine_for_tests(parse_policy_text(POLICIES, Path("policies.yaml")))
    processor = engine.span_processor()
    examples = 0

    with host_app(engine) as (provider, after):

        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(SPANS)
        def check(spans: list[AppSpan]) -> None:
            nonlocal examples
            examples += 1
            before, seen_before = counts(engine), len(after.spans)
            got = run_app(provider, spans)
            # under pytest a failure in the worker is re-raised here: none may happen
            assert processor.force_flush()
            assert got == [APP_ERRORS[raises - 1] if raises else None for *_, raises in spans]
            ended = after.spans[seen_before:]
            assert len(ended) == len(spans)
            changed = difference(counts(engine), before)
            assert set(changed) <= set(OUTCOMES), changed
            # a failed span with no attribute at all is looked at too (OpenLIT's failed calls: `calls._bare_failure`)
            looked_at = [
                span
                for span in ended
                if is_genai(span.attributes or {})
                or (not span.attributes and span.status.status_code is StatusCode.ERROR)
            ]
            assert sum(changed.values()) == len(looked_at)

        check()
    assert examples == 300
    assert counts(engine).get("applied", 0) > 0  # the generator reaches priced calls, not only junk
    engine.close()


@pytest.mark.parametrize("key", sorted(SPAN_KIND_KEYS))
def test_a_map_valued_span_kind_is_read_without_an_internal_error(key: str) -> None:
    """The SDK keeps a map attribute value; reading the span must not fail (it is simply no call kind)."""
    engine = engine_for_tests()
    with host_app(engine) as (provider, after):
        with provider.get_tracer("app").start_as_current_span("chat", attributes=CALL) as span:
            span.set_attribute(key, {"kind": "LLM"})
        assert after.spans[0].attributes == {**CALL, key: {"kind": "LLM"}}
        engine.span_processor().force_flush()  # under pytest the worker's TypeError is raised here
        assert counts(engine) == {"applied": 1.0}
    engine.close()


RAW_SPANS = st.lists(
    st.tuples(
        st.dictionaries(RAW_NAMES, RAW_VALUES, max_size=8),
        st.booleans(),
        st.lists(st.dictionaries(RAW_NAMES, RAW_VALUES, max_size=3), max_size=2),
    ),
    min_size=1,
    max_size=4,
)


def attribute(span: ReadableSpan, key: str) -> object:
    """One attribute of a finished span; a span the SDK built always has its attributes."""
    assert span.attributes is not None
    return span.attributes.get(key)


def raw_span(attributes: dict[Any, Any], error: bool, events: list[dict[Any, Any]]) -> ReadableSpan:
    """A finished span with any Python objects as attributes, as no SDK would build it."""
    span = make_span({**CALL, **attributes}, error=error)
    span._events = tuple(Event("exception", attrs) for attrs in events)
    return span


def test_spans_built_outside_the_sdk_with_any_objects_never_raise_into_the_app() -> None:
    engine = engine_for_tests(raise_internal_errors=False)
    processor = engine.span_processor()

    @settings(max_examples=300, deadline=None, database=None)
    @given(RAW_SPANS)
    def check(spans: list[tuple[dict[Any, Any], bool, list[dict[Any, Any]]]]) -> None:
        before = counts(engine)
        built = [raw_span(*span) for span in spans]
        for span in built:
            processor.on_start(span, None)  # type: ignore[arg-type]
            processor.on_end(span)
        assert processor.force_flush()
        changed = difference(counts(engine), before)
        # A span the worker cannot read is an internal error of its own (`processor.extract`); an
        # error applying the batch would count once for the batch, and must not happen at all.
        assert set(changed) <= {*OUTCOMES, "error:processor.extract"}, changed
        assert sum(changed.values()) == sum(1 for span in built if is_genai(span._attributes or {}))

    check()
    engine.close()


def test_on_start_stamps_only_our_own_decision_ids() -> None:
    from opentelemetry import context as otel_context

    engine = engine_for_tests()
    values = (Hostile(), 3, None, b"\xff", "d-" + "x" * 10_000)
    with host_app(engine) as (provider, after):
        tracer = provider.get_tracer("app")
        for value in values:
            token = otel_context.attach(otel_context.set_value(DECISION_CONTEXT_KEY, value))
            try:
                with pytest.raises(AppError), tracer.start_as_current_span("chat", attributes=CALL):
                    raise AppError
            finally:
                otel_context.detach(token)
        assert engine.span_processor().force_flush()
        assert [attribute(span, semconv.DECISION_ID) for span in after.spans] == [None] * 4 + [values[-1]]
        assert counts(engine) == {"applied": 5.0}
    engine.close()


# --- faults inside otel_puppy -------------------------------------------------------------------


class FailingStore(MemoryStore):
    """A memory store whose writes and admissions raise `error` while it is set."""

    error: Exception | None = None

    def apply(self, records: Any, now: float) -> Any:
        if self.error is not None:
            raise self.error
        return super().apply(records, now)

    def admit(self, admission: Any, now: float) -> Any:
        if self.error is not None:
            raise self.error
        return super().admit(admission, now)


def engine_on(store: MemoryStore, policies: str = POLICIES) -> PolicyEngine:
    """A production engine (internal errors counted, not raised) on `store`, with a fake clock."""
    return PolicyEngine(
        PuppySettings.load(store="memory://", raise_internal_errors=False),
        policies=parse_policy_text(policies, Path("policies.yaml")),
        store=store,
        clock=FakeClock(),
        registry=CollectorRegistry(auto_describe=True),
    )


def store_outage(engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    store = engine.store
    assert isinstance(store, FailingStore)
    store.error = StoreError("connection refused")
    return lambda: setattr(store, "error", None)


def store_bug(engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    store = engine.store
    assert isinstance(store, FailingStore)
    store.error = RuntimeError("store bug")
    return lambda: setattr(store, "error", None)


def pricer_bug(engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    def broken(*args: object, **kwargs: object) -> object:
        raise ArithmeticError("pricing bug")

    monkeypatch.setattr(engine.pricer, "price", broken)
    monkeypatch.setattr(engine.pricer, "price_usage", broken)
    return monkeypatch.undo


def policy_bug(engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    def broken(*args: object, **kwargs: object) -> object:
        raise IndexError("policy bug")

    breakers = engine._rules.breakers
    monkeypatch.setattr(breakers, "observe", broken)
    monkeypatch.setattr(breakers, "check", broken)
    return monkeypatch.undo


@dataclass(frozen=True)
class Fault:
    name: str
    install: Callable[[PolicyEngine, pytest.MonkeyPatch], Callable[[], None]]
    flushed: bool
    """What `force_flush()` says while the fault lasts: `False` while spans wait for the store."""
    decided: tuple[Action, list[str]]
    """The decision during the fault: an outage decides by the fail mode (open here); any other
    error by the fail mode too, but never looser than the budgets: one that cannot be read counts
    as exhausted (`daily` denies), one that can is listed."""
    errors: dict[str, float]
    """Internal errors once the fault has cleared (10 spans, then 2 decisions, during it)."""
    spend: int
    """Calls whose spend is in the store once the fault has cleared (10 during it, 3 after)."""


FAULTS = [
    # The store is down (an outage, not a bug): the worker holds the calls and applies them once it
    # is back, nothing lost; decisions fail open meanwhile.
    Fault("store-outage", store_outage, False, (Action.ALLOW, ["internal"]), {}, 13),
    # Bugs are counted and cost the calls they hit; the application never sees them.
    Fault(
        "store-bug",
        store_bug,
        True,
        (Action.DENY, ["internal", "budget"]),
        {"error:processor.observe": 10.0, "error:engine.decide": 2.0},
        3,
    ),
    Fault(
        "pricer-bug",
        pricer_bug,
        True,
        (Action.ALLOW, ["internal", "budget"]),
        {"error:processor.observe": 10.0, "error:engine.decide": 2.0},
        3,
    ),
    # A policy fails after the store applied the call: its spend is kept (once), the batch reported failed.
    Fault(
        "policy-bug",
        policy_bug,
        True,
        (Action.ALLOW, ["internal", "budget"]),
        {"error:processor.observe": 10.0, "error:engine.decide": 2.0},
        13,
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_a_failing_store_pricer_or_policy_never_reaches_the_app(fault: Fault, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_on(FailingStore())
    heal = fault.install(engine, monkeypatch)
    processor = engine.span_processor()
    with host_app(engine) as (provider, after):
        tracer = provider.get_tracer("app")
        for index in range(10):
            app_error = APP_ERRORS[index % len(APP_ERRORS)]
            with pytest.raises(app_error), tracer.start_as_current_span("chat", attributes=CALL):
                raise app_error("the app's own")
            # one span per batch, so each costs one internal error when the fault is a bug
            assert processor.force_flush() is fault.flushed
        assert len(after.spans) == 10

        # deciding never raises into the app, and is counted
        decision = engine.decide(provider="openai", model="gpt-4.1", estimated_input_tokens=1000)
        assert (decision.action, [hit.kind for hit in decision.reasons]) == fault.decided
        if fault.decided[0] is Action.ALLOW:  # the guard lets the call through
            with engine.guard("openai", "gpt-4.1", estimated_output_tokens=100) as guarded:
                assert guarded.action is Action.ALLOW
        else:  # the guard stops it, as a deny budget would
            with pytest.raises(PolicyDenied), engine.guard("openai", "gpt-4.1", estimated_output_tokens=100):
                pass

        heal()
        for _ in range(3):
            with tracer.start_as_current_span("chat", attributes=CALL):
                pass
        assert processor.force_flush()
        assert len(after.spans) == 13
    applied = {"applied": float(fault.spend)} if fault.name == "store-outage" else {"applied": 3.0}
    assert counts(engine) == {**fault.errors, **applied}
    assert engine.snapshot().spend("day") * 10**9 == fault.spend * GPT41_NANOS
    engine.close()


def test_faults_that_come_and_go_leave_exact_counts() -> None:
    """A store that fails one round in three (a bug, so the round's calls are lost and counted)."""
    store = FailingStore()
    engine = engine_on(store, policies="")
    processor = engine.span_processor()
    healthy = 0
    for round_ in range(20):
        store.error = RuntimeError("store bug") if round_ % 3 == 0 else None
        for _ in range(50):
            processor.on_end(make_span(CALL))
        assert processor.force_flush()
        healthy += 0 if store.error else 50
    found = counts(engine)
    assert found["applied"] == healthy == 650
    assert 7 <= found["error:processor.observe"] <= 7 * 50  # 7 failing rounds, in batches of any size
    assert set(found) == {"applied", "error:processor.observe"}
    assert engine.snapshot().spend("day") * 10**9 == healthy * GPT41_NANOS
    engine.close()


def test_a_long_store_outage_holds_at_most_the_queue_size_and_counts_the_rest() -> None:
    """Memory stays bounded while the store is down: the oldest held calls are dropped, and counted."""
    store = FailingStore()
    store.error = StoreError("connection refused")
    engine = PolicyEngine(
        PuppySettings.load(store="memory://", raise_internal_errors=False, queue_size=100),
        store=store,
        clock=FakeClock(),
        registry=CollectorRegistry(auto_describe=True),
    )
    processor = engine.span_processor()
    for _ in range(5):
        for _ in range(60):
            processor.on_end(make_span(CALL))
        assert processor.force_flush() is False
    store.error = None
    assert processor.force_flush()
    found = counts(engine)
    assert found == {"applied": 100.0, "dropped": 200.0}  # 300 ended: 100 held and applied, 200 counted
    assert engine.snapshot().spend("day") * 10**9 == 100 * GPT41_NANOS
    engine.close()
