"""`otel-puppy serve --forward-to`: every span received goes on downstream with its cost written on.

A real service, fed by the standard OTLP exporter, forwarding to a real OTLP/HTTP endpoint on
loopback (`tests/_downstream.py`) that decodes what it accepts; the downstream is refused, stopped
and restarted mid-stream, and the service killed with batches still queued.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from genai_prices import Usage, calc_price
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_puppy.exceptions import SettingsError
from otel_puppy.settings import PuppySettings
from tests._downstream import Downstream, Received
from tests._service import (
    CHAT_CALL,
    NANOS,
    PRICE,
    Service,
    chat_spans,
    cli,
    environment,
    export,
    metric,
    service,
    spent_nanos,
    write_policies,
)
from tests.corpus._recording import otlp_json_line

POLICY = "budgets:\n  - {name: everything, limit_usd: 1000, window: day}\n"
VERSION = f"genai-prices {version('genai-prices')}"
WAIT_S = 20.0
MINI = calc_price(Usage(input_tokens=1000, output_tokens=100), "gpt-4.1-mini", provider_id="openai").total_price


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return write_policies(tmp_path, POLICY)


@contextmanager
def forwarding(tmp_path: Path, down: Downstream, *args: str, **settings: str) -> Iterator[Service]:
    store = settings.pop("store", f"sqlite:///{tmp_path / 'state.db'}")
    env = environment(forward_url=down.url, store=store, **settings)
    with service(tmp_path, *args, env=env) as running:
        yield running


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.05)  # polling for an event (spans arriving), not waiting out time


def agent_run() -> list[ReadableSpan]:
    """One agent run as an application's instrumentations trace it, with the SDK's own spans.

    invoke_agent support
    ├── chat gpt-4.1            (pydantic-ai's)  1,000 in, 100 out
    │   └── POST /chat/completions (the OpenAI SDK's own span of the same call, same usage)
    ├── execute_tool lookup
    │   └── chat gpt-4.1-mini   1,000 in, 100 out
    ├── chat some-local-model   (unpriced)
    └── GET /orders             (not GenAI)
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot", "team.name": "search"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.forward", "1.2.3")
    run = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support"}
    with tracer.start_as_current_span("invoke_agent support", attributes=run):
        with tracer.start_as_current_span("chat gpt-4.1", kind=SpanKind.CLIENT, attributes={**CHAT_CALL}):
            inner = {**CHAT_CALL, "gen_ai.response.id": "chatcmpl-forward-1"}
            with tracer.start_as_current_span("POST /chat/completions", kind=SpanKind.CLIENT, attributes=inner):
                pass
        with tracer.start_as_current_span("execute_tool lookup", attributes={"gen_ai.operation.name": "execute_tool"}):
            mini = {**CHAT_CALL, "gen_ai.request.model": "gpt-4.1-mini", "gen_ai.response.model": "gpt-4.1-mini"}
            with tracer.start_as_current_span("chat gpt-4.1-mini", kind=SpanKind.CLIENT, attributes=mini):
                pass
        local = {**CHAT_CALL, "gen_ai.request.model": "some-local-model", "gen_ai.response.model": "some-local-model"}
        with tracer.start_as_current_span("chat some-local-model", kind=SpanKind.CLIENT, attributes=local):
            pass
        with tracer.start_as_current_span("GET /orders", kind=SpanKind.CLIENT, attributes={"http.method": "GET"}):
            pass
    provider.shutdown()
    return list(exporter.get_finished_spans())


def by_name(received: list[Received]) -> dict[str, Received]:
    return {item.span.name: item for item in received}


def with_attributes(span: ReadableSpan, extra: dict[str, Any]) -> ReadableSpan:
    """`span` with `extra` attributes, as its instrumentation might have written them."""
    return ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        resource=span.resource,
        attributes={**(span.attributes or {}), **extra},
        kind=span.kind,
        start_time=span.start_time,
        end_time=span.end_time,
    )


def key(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def test_every_span_arrives_downstream_with_its_cost_and_the_run_with_the_sum(tmp_path: Path, policies: Path) -> None:
    spans = agent_run()
    with Downstream() as down, forwarding(tmp_path, down) as running:
        assert export(running.url, spans) == SpanExportResult.SUCCESS
        wait_for(lambda: len(down.spans) >= len(spans), "every span downstream")
        received = list(down.received())
        assert sorted(item.key for item in received) == sorted(key(span) for span in spans)  # each once
        assert {(item.resource["team.name"], item.scope) for item in received} == {("search", "tests.forward")}
        named = by_name(received)
        for name in ("chat gpt-4.1", "POST /chat/completions"):  # both spans of the call carry its cost
            ours = {k: v for k, v in named[name].attributes.items() if k.startswith("otel_puppy.")}
            assert ours == {"otel_puppy.price.version": VERSION}
            attributes = named[name].attributes
            assert attributes["gen_ai.usage.cost.amount"] == float(PRICE)
            assert attributes["gen_ai.usage.cost.currency"] == "USD"
            assert attributes["gen_ai.usage.cost.source"] == "local"
        assert named["chat gpt-4.1-mini"].attributes["gen_ai.usage.cost.amount"] == float(MINI)
        local = named["chat some-local-model"].attributes
        assert "gen_ai.usage.cost.amount" not in local
        assert local["otel_puppy.price.unpriced_reason"] == "unknown_model"
        run = named["invoke_agent support"].attributes
        # the two priced calls, the nested SDK span of the first counted once through it
        assert run["otel_puppy.run.cost.amount"] == (NANOS + round(MINI * 10**9)) / 1e9
        assert run["otel_puppy.run.calls"] == 2
        for untouched in ("execute_tool lookup", "GET /orders"):
            assert not any(k.startswith(("otel_puppy.", "gen_ai.usage.cost")) for k in named[untouched].attributes)
        # the service counted the calls as without forwarding: once each, the unpriced one unpriced
        assert spent_nanos(running.url, "everything") == NANOS + round(MINI * 10**9)
        assert metric(running.url, "otel_puppy_forward_spans_total", result="queued") == len(spans)
        assert metric(running.url, "otel_puppy_forward_spans_total", result="forwarded") == len(spans)
        assert metric(running.url, "otel_puppy_forward_queue_batches") == 0
        assert down.requests[0]["content-encoding"] == "gzip"
        assert down.requests[0]["content-type"] == "application/x-protobuf"
        assert "forwarding every span to" in running.output()


def test_a_cost_already_on_the_span_is_kept_and_ours_goes_beside_it(tmp_path: Path, policies: Path) -> None:
    [span] = chat_spans(1)
    claimed = with_attributes(span, {"gen_ai.usage.cost.amount": 9.5, "gen_ai.usage.cost.currency": "EUR"})
    with Downstream() as down, forwarding(tmp_path, down) as running:
        export(running.url, [claimed])
        wait_for(lambda: len(down.spans) == 1, "the span downstream")
        [item] = down.received()
        attributes = item.attributes
        assert attributes["gen_ai.usage.cost.amount"] == 9.5
        assert attributes["gen_ai.usage.cost.currency"] == "EUR"
        assert attributes["otel_puppy.cost.amount"] == float(PRICE)
        assert "gen_ai.usage.cost.source" not in attributes
        assert [kv.key for kv in item.span.attributes].count("gen_ai.usage.cost.amount") == 1


def test_a_span_refused_for_accounting_goes_on_with_the_reason(tmp_path: Path, policies: Path) -> None:
    [span] = chat_spans(1)
    hostile = with_attributes(span, {"gen_ai.usage.input_tokens": 10**12})
    with Downstream() as down, forwarding(tmp_path, down) as running:
        export(running.url, [hostile])
        wait_for(lambda: len(down.spans) == 1, "the span downstream")
        [item] = down.received()
        assert item.attributes["otel_puppy.rejected"] == (
            "resourceSpans[0].scopeSpans[0].spans[0]: gen_ai.usage.input_tokens is out of range: "
            "1000000000000 (allowed: 0 to 100000000)"
        )
        assert "gen_ai.usage.cost.amount" not in item.attributes
        assert spent_nanos(running.url, "everything") == 0


def test_an_outage_downstream_loses_nothing_and_counts_spend_once(tmp_path: Path, policies: Path) -> None:
    batches = [chat_spans(3) for _ in range(6)]
    with Downstream() as down, forwarding(tmp_path, down) as running:
        down.answer(503, retry_after="1")
        for batch in batches[:2]:
            assert export(running.url, batch) == SpanExportResult.SUCCESS
        wait_for(lambda: len(down.requests) >= 2, "a retry")  # refused, retried after Retry-After
        assert (metric(running.url, "otel_puppy_forward_retries_total", reason="503") or 0) >= 1
        down.stop()  # the backend goes away altogether: connections refused
        for batch in batches[2:4]:
            assert export(running.url, batch) == SpanExportResult.SUCCESS
        assert (metric(running.url, "otel_puppy_forward_queue_batches") or 0) >= 3
        down.answer(200)
        down.start()  # back, on the same port
        for batch in batches[4:]:
            assert export(running.url, batch) == SpanExportResult.SUCCESS
        wait_for(lambda: len(down.spans) >= 18, "every span after the outage", timeout_s=45)
        keys = [item.key for item in down.received()]
        assert sorted(keys) == sorted(key(span) for batch in batches for span in batch)
        assert spent_nanos(running.url, "everything") == 18 * NANOS
        assert metric(running.url, "otel_puppy_forward_queue_batches") == 0
        assert metric(running.url, "otel_puppy_forward_spans_total", result="forwarded") == 18


def test_a_refusal_for_good_is_counted_and_not_retried(tmp_path: Path, policies: Path) -> None:
    with Downstream() as down, forwarding(tmp_path, down) as running:
        down.answer(400)
        export(running.url, chat_spans(2))
        wait_for(lambda: metric(running.url, "otel_puppy_forward_spans_total", result="failed") == 2, "failed")
        down.answer(200)
        export(running.url, chat_spans(1))
        wait_for(lambda: len(down.spans) == 1, "the next batch")
        assert len(down.requests) == 2  # the refused batch was sent once
        assert "refused a batch of 2 spans with HTTP 400" in running.output()


def test_a_full_queue_refuses_upstream_with_503_and_readiness_fails(tmp_path: Path, policies: Path) -> None:
    padding = secrets.token_hex(40 * 1024)  # 80 KB that gzip cannot shrink much
    with Downstream() as down:
        down.stop()
        with (
            forwarding(tmp_path, down, forward_queue_max_bytes=str(1024 * 1024)) as running,
            httpx.Client(base_url=running.url) as client,  # one client: building one takes 20 ms
        ):
            statuses = []
            for _ in range(40):
                [span] = chat_spans(1)
                body = otlp_json_line([with_attributes(span, {"padding": padding})])
                response = client.post("/v1/traces", content=body, headers={"Content-Type": "application/json"})
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert response.headers["Retry-After"] == "5"
                    assert "forward queue is full" in response.json()["message"]
                    break
            assert statuses[-1] == 503
            accepted = statuses.count(200)
            assert accepted >= 5
            ready = httpx.get(f"{running.url}/readyz")
            assert ready.status_code == 503
            assert ready.json() == {
                "code": "not_ready",
                "message": "the forward queue is full: the downstream is not accepting spans",
            }
            assert spent_nanos(running.url, "everything") == accepted * NANOS  # the refused batch was not applied
            down.start()
            wait_for(lambda: len(down.spans) == accepted, "the queue drained")
            wait_for(lambda: httpx.get(f"{running.url}/readyz").status_code == 200, "ready again")


@pytest.mark.long  # two services and a lease waited out: ./scripts/test-long
def test_kill_9_with_batches_queued_loses_nothing_acknowledged(tmp_path: Path, policies: Path) -> None:
    batches = [chat_spans(2) for _ in range(5)]
    with Downstream() as down:
        down.answer(503, retry_after="30")  # nothing gets through: everything acknowledged stays queued
        with forwarding(tmp_path, down, forward_timeout_s="1") as running:  # claims held 4 s
            for batch in batches:
                assert export(running.url, batch) == SpanExportResult.SUCCESS
            assert metric(running.url, "otel_puppy_forward_queue_batches") == 5
            os.kill(running.process.pid, signal.SIGKILL)
            running.process.wait(10)
        down.answer(200)
        with forwarding(tmp_path, down, forward_timeout_s="1") as running:
            # The batch the dead process held is claimed again once its lease runs out (4 s).
            wait_for(lambda: len({item.key for item in down.received()}) == 10, "the queued spans", timeout_s=30)
            assert sorted({item.key for item in down.received()}) == sorted(key(s) for b in batches for s in b)
            assert spent_nanos(running.url, "everything") == 10 * NANOS
            # the Collector, never told otherwise, may resend: counted once, forwarded again
            assert export(running.url, batches[0]) == SpanExportResult.SUCCESS
            assert spent_nanos(running.url, "everything") == 10 * NANOS


def test_forwarding_on_memory_says_it_is_not_durable(tmp_path: Path, policies: Path) -> None:
    with Downstream() as down, forwarding(tmp_path, down, store="memory://") as running:
        export(running.url, chat_spans(1))
        wait_for(lambda: len(down.spans) == 1, "the span downstream")
        assert "is not durable on memory://" in running.output()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://collector:4318", "expected an http:// or https:// URL with a host"),
        ("http://collector:4318/?a=b", "expected no query or fragment"),
        ("http://:4318", "expected an http:// or https:// URL with a host"),
        ("http://collector:99999", "Port out of range"),
        ("http://" + "c" * 2048, "at most 2048 characters"),
    ],
)
def test_a_bad_forward_url_is_refused(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match="OTEL_PUPPY_FORWARD_URL") as raised:
        PuppySettings.load(forward_url=value)
    assert message in str(raised.value)


def test_serve_refuses_a_bad_forward_url_at_start(tmp_path: Path, policies: Path) -> None:
    result = cli(tmp_path, "serve", "--port", "0", "--forward-to", "ftp://collector:4318")
    assert result.returncode == 2  # a settings error, as every other
    assert "OTEL_PUPPY_FORWARD_URL: Value error, expected an http:// or https:// URL with a host" in result.stderr


def test_forward_headers_are_sent_and_never_shown(tmp_path: Path, policies: Path) -> None:
    with (
        Downstream() as down,
        forwarding(tmp_path, down, forward_headers="Authorization=Bearer%20s3cret,x-team=search") as running,
    ):
        export(running.url, chat_spans(1))
        wait_for(lambda: len(down.spans) == 1, "the span downstream")
        assert down.requests[0]["authorization"] == "Bearer s3cret"
        assert down.requests[0]["x-team"] == "search"
        assert "s3cret" not in running.output()
        assert "s3cret" not in httpx.get(f"{running.url}/metrics").text
    result = cli(
        tmp_path, "serve", "--port", "0", env=environment(forward_url=down.url, forward_headers="s3cret" * 2000)
    )
    assert result.returncode == 2
    assert "OTEL_PUPPY_FORWARD_HEADERS: Value error, at most 8192 characters" in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.long  # two replicas and a lease waited out: ./scripts/test-long
def test_replicas_on_redis_share_the_queue_and_a_dead_ones_batches_go_on(
    tmp_path: Path, policies: Path, redis_url: str
) -> None:
    batches = [chat_spans(2) for _ in range(6)]
    with Downstream() as down:
        down.answer(503, retry_after="2")
        settings = {"store": redis_url, "forward_timeout_s": "1"}
        with forwarding(tmp_path, down, **settings) as one, forwarding(tmp_path, down, **settings) as two:
            for n, batch in enumerate(batches):
                assert export((one if n % 2 else two).url, batch) == SpanExportResult.SUCCESS
            assert metric(one.url, "otel_puppy_forward_queue_batches") == 6  # one queue, seen by both
            os.kill(one.process.pid, signal.SIGKILL)  # holding a batch it was retrying
            one.process.wait(10)
            down.answer(200)
            # the survivor drains everything, the dead replica's claim once its lease ran out
            wait_for(lambda: len({item.key for item in down.received()}) == 12, "every span", timeout_s=30)
            assert sorted({item.key for item in down.received()}) == sorted(key(s) for b in batches for s in b)
            assert spent_nanos(two.url, "everything") == 12 * NANOS
            wait_for(lambda: metric(two.url, "otel_puppy_forward_queue_batches") == 0, "an empty queue")
