"""The parts of forwarding that need no service: the attributes, run sums and their bounds, Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from email.utils import formatdate

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client.registry import CollectorRegistry

from otel_puppy.exceptions import SettingsError
from otel_puppy.forward.enrich import RunCost, RunCosts, call_attributes, is_run, price_version, run_attributes
from otel_puppy.forward.queue import MemoryQueue, QueueFull
from otel_puppy.forward.sender import (
    MAX_BACKOFF_S,
    MAX_REPLY_BYTES,
    Forwarder,
    ForwardTarget,
    lease_for,
    parse_headers,
    retry_after_s,
)
from otel_puppy.pricing import Price
from otel_puppy.server.app import create_app
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import engine_for_tests
from tests._service import NANOS, chat_spans
from tests._serving import serve
from tests.corpus._recording import otlp_json_line

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def test_a_priced_call_gains_the_cost_attributes_and_nothing_it_has() -> None:
    price = Price(nanos=2_800_000, scaled=28, scale=4)
    assert call_attributes(price, set()) == [
        ("gen_ai.usage.cost.amount", 0.0028),
        ("gen_ai.usage.cost.currency", "USD"),
        ("gen_ai.usage.cost.source", "local"),
        ("otel_puppy.price.version", price_version(price)),
    ]
    assert call_attributes(price, {"gen_ai.usage.cost.amount", "otel_puppy.price.version"}) == [
        ("otel_puppy.cost.amount", 0.0028)
    ]
    assert (
        call_attributes(price, {"gen_ai.usage.cost.amount", "otel_puppy.cost.amount", "otel_puppy.price.version"}) == []
    )
    assert price_version(Price(nanos=1, source="override")) == "override"


def test_an_unpriced_call_gains_its_reason_only() -> None:
    assert call_attributes(Price(nanos=None, unpriced_reason="unknown_model"), set()) == [
        ("otel_puppy.price.unpriced_reason", "unknown_model")
    ]


def test_the_cost_is_the_exact_price_not_the_rounded_nanos() -> None:
    price = Price(nanos=1, scaled=12345, scale=13)  # $0.0000000012345, counted as 1 nano
    assert call_attributes(price, set())[0] == ("gen_ai.usage.cost.amount", float(Decimal("0.0000000012345")))


@pytest.mark.parametrize(
    ("attributes", "run"),
    [
        ({"gen_ai.operation.name": "invoke_agent"}, True),
        ({"gen_ai.operation.name": "invoke_workflow"}, True),
        ({"openinference.span.kind": "AGENT"}, True),
        ({"traceloop.span.kind": "workflow"}, True),
        ({"gen_ai.operation.name": "chat"}, False),
        ({"openinference.span.kind": "CHAIN"}, False),
        ({"gen_ai.operation.name": ["invoke_agent"]}, False),  # a list, unhashable: never an error
        ({"gen_ai.operation.name": "invoke_agent", "logfire.span_type": "pending_span"}, False),
        ({}, False),
    ],
)
def test_runs_in_every_convention(attributes: dict[str, object], run: bool) -> None:
    assert is_run(attributes) is run


def test_a_run_sums_the_calls_beneath_it_once_each() -> None:
    runs = RunCosts()
    # run 1 > tool 2 > call 3 > nested call 4; run 1 > call 5; call 6 elsewhere in the trace
    runs.link([(9, 2, 1), (9, 3, 2), (9, 4, 3), (9, 5, 1), (9, 6, 7)])
    for span, nanos in ((3, 100), (4, 100), (5, 40), (6, 1000)):
        runs.count(9, span, nanos)
    assert run_attributes(runs.run(9, 1), set()) == [
        ("otel_puppy.run.cost.amount", 140 / 1e9),
        ("otel_puppy.run.calls", 2),
    ]
    assert runs.run(8, 1).calls == 0  # another trace
    assert run_attributes(runs.run(9, 1), {"otel_puppy.run.cost.amount", "otel_puppy.run.calls"}) == []
    # asked together, as a batch asks: a sub-agent's run (2) and the run over it (1) both hold call 3
    assert runs.sums([(9, 1), (9, 2), (8, 1)]) == {
        (9, 1): RunCost(140, 2),
        (9, 2): RunCost(100, 1),
        (8, 1): RunCost(0, 0),
    }


def test_a_batch_of_many_runs_in_one_trace_walks_each_call_once() -> None:
    runs = RunCosts(max_calls=1000)
    runs.link([(1, call, 0xFFFF) for call in range(1000)])  # 1,000 calls under one run
    for call in range(1000):
        runs.count(1, call, 1)
    hostile = [(1, 0x10000 + n) for n in range(50_000)]  # 50,000 run spans claimed in that trace
    sums = runs.sums([*hostile, (1, 0xFFFF)])
    assert sums[(1, 0xFFFF)] == RunCost(1000, 1000)
    assert {sums[key] for key in hostile} == {RunCost(0, 0)}


def test_run_costs_stay_within_their_bounds_and_forget_the_oldest() -> None:
    runs = RunCosts(max_spans=100, max_calls=50, max_depth=8)
    for trace in range(1000):
        runs.link([(trace, 2, 1)])
        runs.count(trace, 2, 7)
    assert len(runs._parents) == 100
    assert runs._call_count == 50
    assert runs.run(999, 1).nanos == 7
    assert runs.run(0, 1).nanos == 0  # forgotten: a run longer than the bounds hold is incomplete
    chain = RunCosts(max_depth=8)
    chain.link([(1, n + 1, n) for n in range(1, 20)])  # 20 spans deep
    chain.count(1, 20, 5)
    assert chain.run(1, 15).nanos == 5
    assert chain.run(1, 1).nanos == 0  # deeper than max_depth: not walked


def test_a_cycle_of_parents_ends() -> None:
    runs = RunCosts()
    runs.link([(1, 2, 3), (1, 3, 2)])
    runs.count(1, 2, 5)
    assert runs.run(1, 99).nanos == 0


def test_retry_after_in_seconds_or_a_date_else_none() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s(" 12 ") == 12.0
    when = retry_after_s(formatdate(time.time() + 20, usegmt=True))
    assert when is not None
    assert 18 <= when <= 21
    assert retry_after_s(formatdate(time.time() - 100, usegmt=True)) == 0.0
    for bad in (None, "", "soon", "-5", "1.5e999", "9" * 200, "²", "٣"):  # digits float() refuses
        value = retry_after_s(bad)
        assert value is None or min(MAX_BACKOFF_S, value) == MAX_BACKOFF_S, bad


def test_a_claim_outlives_two_attempts() -> None:
    assert lease_for(10.0) == 22.0
    assert lease_for(1.0) == 4.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Authorization", "pair 1: expected key=value"),
        ("a=1,=x", "pair 2: expected key=value"),
        ("bad key=1", "pair 1: expected key=value"),
        ("x-token=caf%C3%A9", "pair 1 (x-token): the value must be printable ASCII"),
        ("x-token=a%0Ab", "pair 1 (x-token): the value must be printable ASCII"),
    ],
)
def test_forward_headers_are_parsed_strictly_and_the_error_never_shows_a_value(text: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        parse_headers(text)
    assert message in str(raised.value)
    assert "caf" not in str(raised.value)


def test_forward_headers_as_the_otlp_exporter_writes_them() -> None:
    assert parse_headers("Authorization=Bearer%20abc, x-team=search,,") == {
        "authorization": "Bearer abc",
        "x-team": "search",
    }


@pytest.mark.parametrize(
    "setting",
    [
        {"forward_queue_max_bytes": 1024 * 1024 - 1},
        {"forward_queue_max_bytes": (1 << 40) + 1},
        {"forward_timeout_s": 0},
        {"forward_timeout_s": 300.5},
        {"forward_timeout_s": float("inf")},
        {"forward_compression": "brotli"},
    ],
)
def test_forward_settings_out_of_range_are_refused(setting: dict[str, object]) -> None:
    with pytest.raises(SettingsError, match=f"OTEL_PUPPY_{next(iter(setting)).upper()}"):
        PuppySettings.load(**setting)


@pytest.fixture
def forwarder() -> Iterator[Callable[[Callable[[httpx.Request], httpx.Response]], Forwarder]]:
    made: list[Forwarder] = []

    def make(answer: Callable[[httpx.Request], httpx.Response]) -> Forwarder:
        engine = engine_for_tests(raise_internal_errors=False)
        made.append(
            Forwarder(
                ForwardTarget("http://downstream:4318", {}, timeout_s=2),
                MemoryQueue(1 << 20),
                engine.metrics,
                CollectorRegistry(),
                max_bytes=1 << 20,
                transport=httpx.MockTransport(answer),
            )
        )
        return made[-1]

    yield make
    for each in made:
        each.close()


def deliver(forwarder: Forwarder, spans: int) -> None:
    forwarder.queue.put(b"batch", spans)
    forwarder.start()
    deadline = time.monotonic() + 10
    while forwarder.queue.depth()[0]:
        assert time.monotonic() < deadline, "not delivered"
        time.sleep(0.01)  # polling for an event (the queue drained), not waiting out time


def spans_counted(forwarder: Forwarder, result: str) -> float:
    return float(forwarder._spans.labels(result)._value.get())


def test_a_reply_claiming_more_rejected_spans_than_were_sent_counts_them_all_rejected(
    forwarder: Callable[[Callable[[httpx.Request], httpx.Response]], Forwarder],
) -> None:
    reply = ExportTraceServiceResponse()
    reply.partial_success.rejected_spans = 2**62
    sink = forwarder(lambda request: httpx.Response(200, content=reply.SerializeToString(), headers=PROTOBUF))
    deliver(sink, 3)
    assert (spans_counted(sink, "forwarded"), spans_counted(sink, "rejected")) == (0, 3)
    assert sink._thread is not None
    assert sink._thread.is_alive()


def test_a_huge_reply_is_read_no_further_than_its_bound(
    forwarder: Callable[[Callable[[httpx.Request], httpx.Response]], Forwarder],
) -> None:
    read: list[int] = []

    def endless() -> Iterator[bytes]:
        for _ in range(10_000):  # 640 MB if it were all read
            read.append(1)
            yield b"\0" * 65536

    sink = forwarder(lambda request: httpx.Response(200, content=endless(), headers=PROTOBUF))
    deliver(sink, 2)
    assert spans_counted(sink, "forwarded") == 2  # unreadable (cut) reply: still a success
    assert len(read) <= MAX_REPLY_BYTES // 65536 + 1


def test_an_unusual_retry_after_is_waited_out_as_a_back_off_not_a_crash(
    forwarder: Callable[[Callable[[httpx.Request], httpx.Response]], Forwarder],
) -> None:
    # b"\xb2" is read as "²" (latin-1), which `str.isdigit` takes and `float` refuses
    answers = iter([httpx.Response(503, headers=[(b"Retry-After", b"\xb2")]), httpx.Response(200)])
    sink = forwarder(lambda request: next(answers))
    deliver(sink, 1)
    assert spans_counted(sink, "forwarded") == 1


def test_an_internal_error_delivering_is_counted_and_the_thread_goes_on(
    forwarder: Callable[[Callable[[httpx.Request], httpx.Response]], Forwarder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = forwarder(lambda request: httpx.Response(200))
    failing = iter([RuntimeError("a bug of ours")])

    def claim_once_failing(now: float) -> object:
        for error in failing:
            raise error
        return MemoryQueue.claim(sink.queue, now)  # type: ignore[arg-type]

    monkeypatch.setattr(sink.queue, "claim", claim_once_failing)
    monkeypatch.setattr("otel_puppy.forward.sender.MAX_BACKOFF_S", 0.01)
    deliver(sink, 1)
    assert sink.metrics.internal_errors() == 1
    assert spans_counted(sink, "forwarded") == 1


def test_a_batch_applied_then_not_queued_is_503_saying_a_retry_counts_once() -> None:
    """`room` said yes, and another batch took the room first: the 503 must not claim nothing was applied."""
    engine = engine_for_tests(raise_internal_errors=False)

    class TakenFirst(MemoryQueue):
        def put(self, body: bytes, spans: int) -> None:
            raise QueueFull("taken by another batch")

    sink = Forwarder(
        ForwardTarget("http://downstream:4318", {}),
        TakenFirst(1 << 20),
        engine.metrics,
        CollectorRegistry(),
        max_bytes=1 << 20,
    )
    body = otlp_json_line(chat_spans(2))
    with serve(create_app(engine, forwarder=sink)) as url:
        first = httpx.post(f"{url}/v1/traces", content=body, headers={"Content-Type": "application/json"})
        again = httpx.post(f"{url}/v1/traces", content=body, headers={"Content-Type": "application/json"})
    assert first.status_code == again.status_code == 503
    assert first.headers["Retry-After"] == "5"
    assert first.json()["message"] == (
        "the batch was counted but could not be queued for the downstream; retry after the Retry-After "
        "interval (it will not be counted twice)"
    )
    assert engine.snapshot().spend("day") == 2 * NANOS / Decimal(10**9)  # counted once, retried or not
    sink.close()


def test_readiness_fails_while_the_last_batch_refused_for_room_would_still_not_fit() -> None:
    """The receiver asks `room` with the bytes received; `/readyz` must not say ready while it refuses
    with "the forward queue is full", even with the queue under 95% of its bound."""
    engine = engine_for_tests(raise_internal_errors=False)
    forwarder = Forwarder(
        ForwardTarget("http://downstream:4318", {}),
        MemoryQueue(1000),
        engine.metrics,
        CollectorRegistry(),
        max_bytes=1000,
    )
    try:
        forwarder.queue.put(b"x" * 800, 1)  # 80% of the bound
        assert forwarder.problem() is None
        assert forwarder.room(150)  # fits: still ready
        assert forwarder.problem() is None
        assert not forwarder.room(300)  # refused
        assert forwarder.problem() == (
            "forward queue full: 1 batches, 800 of 1000 bytes waiting for the downstream; no room for the last "
            "batch refused (300 bytes)"
        )
        claimed = forwarder.queue.claim(time.time())  # delivered downstream: room again
        assert claimed is not None
        forwarder.queue.done(claimed)
        assert forwarder.problem() is None
        assert forwarder.room(300)
    finally:
        forwarder.close()
