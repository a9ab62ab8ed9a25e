"""PuppySpanProcessor: hands off, never raises, never blocks, flushes exactly, survives fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import NoReturn

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.util.types import AttributeValue

from otel_puppy.calls import LLMCall
from otel_puppy.engine import Observation, PolicyEngine
from otel_puppy.testing import engine_for_tests, make_span

CALL: dict[str, AttributeValue] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}
GPT41_NANOS = 2_800_000  # 1000 * $2/MTok + 100 * $8/MTok


def spans_total(engine: PolicyEngine, result: str) -> float | None:
    return engine.registry.get_sample_value("otel_puppy_spans_total", {"result": result})


def test_force_flush_returns_once_everything_handed_over_is_applied(engine: PolicyEngine) -> None:
    processor = engine.span_processor()
    for _ in range(1000):
        processor.on_end(make_span(CALL))
    assert processor.force_flush()
    assert spans_total(engine, "applied") == 1000
    assert engine.snapshot().spend("day") * 10**9 == 1000 * GPT41_NANOS


def test_non_genai_spans_are_not_queued(engine: PolicyEngine) -> None:
    processor = engine.span_processor()
    processor.on_end(make_span({"http.method": "GET"}))
    processor.on_end(make_span({}))
    processor.force_flush()
    assert len(processor._queue) == 0
    assert spans_total(engine, "ignored") is None


def test_full_queue_drops_and_counts_without_blocking() -> None:
    engine = engine_for_tests(queue_size=10)
    processor = engine.span_processor()
    gate = threading.Event()
    original = engine.observe_many

    def slow(calls: Sequence[LLMCall]) -> list[Observation]:
        gate.wait(5)
        return original(calls)

    engine.observe_many = slow  # type: ignore[method-assign]
    processor.on_end(make_span(CALL))  # taken by the worker, which now waits on the gate
    while processor._queue:
        pass
    for _ in range(25):
        processor.on_end(make_span(CALL))
    gate.set()
    processor.force_flush()
    assert spans_total(engine, "dropped") == 15
    assert spans_total(engine, "applied") == 11
    engine.close()


def test_processor_errors_are_counted_and_never_reach_the_app() -> None:
    engine = engine_for_tests(raise_internal_errors=False)
    processor = engine.span_processor()

    def broken(calls: Sequence[LLMCall]) -> NoReturn:
        raise RuntimeError("store on fire")

    engine.observe_many = broken  # type: ignore[method-assign]
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("chat", attributes=CALL):
        pass
    processor.force_flush()
    assert (
        engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "processor.observe"}) == 1.0
    )

    class Exploding:
        _attributes = property(lambda self: 1 / 0)

    processor.on_end(Exploding())  # type: ignore[arg-type]
    assert (
        engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "processor.on_end"}) == 1.0
    )
    engine.close()


def test_under_pytest_internal_errors_surface_from_force_flush(engine: PolicyEngine) -> None:
    def broken(calls: Sequence[LLMCall]) -> NoReturn:
        raise RuntimeError("bug")

    engine.observe_many = broken  # type: ignore[method-assign]
    engine.span_processor().on_end(make_span(CALL))
    with pytest.raises(RuntimeError, match="bug"):
        engine.span_processor().force_flush()


def test_shutdown_applies_what_is_queued_and_is_idempotent(engine: PolicyEngine) -> None:
    processor = engine.span_processor()
    for _ in range(100):
        processor.on_end(make_span(CALL))
    processor.shutdown()
    processor.shutdown()
    assert spans_total(engine, "applied") == 100
    processor.on_end(make_span(CALL))
    assert spans_total(engine, "dropped") == 1
    assert processor.force_flush()


def test_one_processor_per_engine(engine: PolicyEngine) -> None:
    assert engine.span_processor() is engine.span_processor()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_worker(engine: PolicyEngine) -> None:
    processor = engine.span_processor()
    processor.on_end(make_span(CALL))
    processor.force_flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's worker thread does not exist here
        try:
            for _ in range(3):
                processor.on_end(make_span(CALL))
            ok = processor.force_flush(5000)
            applied = spans_total(engine, "applied")
            os.write(write, f"{ok} {applied}".encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 100).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True 4.0"  # 1 inherited from the parent's state + 3 of its own
    assert spans_total(engine, "applied") == 1.0


_LOCK_TYPE = type(threading.Lock())
"""Plain locks: an `RLock` (the SQLite store's) has no `locked()` before Python 3.13; the SQLite fork
tests in tests/store/test_conformance.py hold that store."""


def locks_of(root: object) -> dict[str, threading.Lock]:
    """Every lock held by otel_puppy objects reachable from `root`, by attribute path."""
    found: dict[str, threading.Lock] = {}
    seen: set[int] = set()

    def walk(value: object, path: str, depth: int) -> None:
        if isinstance(value, _LOCK_TYPE):
            found[path] = value
            return
        if id(value) in seen or depth > 6:
            return
        seen.add(id(value))
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value[:50]):
                walk(item, f"{path}[{index}]", depth + 1)
        elif type(value).__module__.startswith("otel_puppy"):
            fields = getattr(value, "__dict__", {})
            slots = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())]
            for name in [*fields, *slots]:
                if hasattr(value, name):
                    walk(getattr(value, name), f"{path}.{name}", depth + 1)

    walk(root, "engine", 0)
    return found


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_the_worker_holds_any_lock_leaves_the_child_none_held(engine: PolicyEngine) -> None:
    """Whatever lock a parent's thread held at the fork (the worker is mid-batch at any moment), the
    child's worker and decisions do not wait on it: every part's `after_fork` replaces its locks."""
    processor = engine.span_processor()
    processor.on_end(make_span(CALL))
    assert processor.force_flush()
    locks = locks_of(engine)
    assert {"engine.learned._lock", "engine.redundancy._lock", "engine.reservations._lock"} <= set(locks)
    held = [lock for lock in locks.values() if lock.acquire(blocking=False)]
    read, write = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                still = sorted(path for path, lock in locks_of(engine).items() if lock.locked())
                processor.on_end(make_span(CALL))
                ok = processor.force_flush(5000)
                os.write(write, f"{ok} {spans_total(engine, 'applied')} {still}".encode())
            finally:
                os._exit(0)
    finally:
        for lock in held:
            lock.release()
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 10_000).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True 2.0 []"


class Counting(SpanProcessor):
    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


HOSTILE: list[dict[str, object]] = [
    {"gen_ai.usage.input_tokens": -1, "gen_ai.usage.output_tokens": 5},
    {"gen_ai.usage.input_tokens": float("nan"), "gen_ai.usage.output_tokens": 5},
    {"gen_ai.usage.input_tokens": 10**30, "gen_ai.usage.output_tokens": 5},
    {"gen_ai.usage.input_tokens": "lots", "gen_ai.usage.output_tokens": 5},
    {"gen_ai.usage.input_tokens": [1, 2], "gen_ai.usage.output_tokens": 5},
    {"gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 5, "gen_ai.response.model": ""},
    {"gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 5, "gen_ai.response.model": "\x00\xff"},
    {"gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 5, "gen_ai.response.model": "x" * 10_000},
    {"gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 5, "gen_ai.system": 7},
    {"gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 5, "operation.cost": float("-inf")},
]


def test_hostile_attributes_through_a_real_tracer_provider(engine: PolicyEngine) -> None:
    provider = TracerProvider()
    after = Counting()
    provider.add_span_processor(engine.span_processor())
    provider.add_span_processor(after)
    tracer = provider.get_tracer("app")

    def app_call(attributes: dict[str, object]) -> None:
        with tracer.start_as_current_span("chat") as span:
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"})
            span.set_attributes(attributes)  # type: ignore[arg-type]
            raise KeyError("the app's own")

    for attributes in HOSTILE:
        with pytest.raises(KeyError, match="the app's own"):
            app_call(attributes)
    engine.span_processor().force_flush()
    assert after.ended == len(HOSTILE)
    # bad usage is counted as invalid (and unpriced); bad names leave a priced call; numbers out of their
    # bounds (-1 and 10**30 tokens, a cost of -inf) reject the span, which is counted and never applied
    assert spans_total(engine, "invalid") == 6.0
    assert spans_total(engine, "applied") == 1.0
    assert spans_total(engine, "rejected") == 3.0
    assert (
        engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "processor.on_end"}) is None
    )
    unpriced = sum(
        s.value
        for m in engine.registry.collect()
        if m.name == "otel_puppy_llm_unpriced_requests"
        for s in m.samples
        if s.labels["reason"] == "invalid_usage"
    )
    assert unpriced == 6.0
