"""`otel-puppy serve --record FILE`: accepted exports appended as OTLP JSON lines that `replay` reads,
to the same spend; a failing or full file never fails ingest."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from otel_puppy.engine import PolicyEngine
from otel_puppy.money import format_usd, nanos_to_usd, usd_to_nanos
from otel_puppy.policies import parse_policy_text
from otel_puppy.replay import read_spans
from otel_puppy.server.app import create_app
from otel_puppy.server.receiver import TRACES_PATH
from otel_puppy.server.record import MAX_BYTES_LIMIT, SpanRecorder, otlp_json_line
from otel_puppy.testing import engine_for_tests
from tests._service import NANOS, chat_spans, cli, cli_all, environment, export, service, spent_nanos
from tests.server.test_otlp import make_request, otlp_json, span

POLICIES = """
budgets:
  - name: everything
    limit_usd: 1000
    window: 24h
    action: deny
"""
MINI_INPUT, MINI_OUTPUT = 12_345, 678
MINI = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1-mini",
    "gen_ai.usage.input_tokens": MINI_INPUT,
    "gen_ai.usage.output_tokens": MINI_OUTPUT,
    "gen_ai.agent.name": "batch",
}
PROTOBUF = "application/x-protobuf"


def mini_batch(count: int) -> ExportTraceServiceRequest:
    """`count` gpt-4.1-mini calls that started just now, each in its own trace."""
    now = time.time_ns()
    return make_request(
        *(span(MINI, trace_id=random.getrandbits(127) + 1, span_id=i + 1, start_ns=now) for i in range(count))
    )


def samples(text: str, name: str) -> dict[str, float]:
    """`name`'s samples by their `result` label."""
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_a_recording_replays_to_the_same_spend(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "budgets.yaml").write_text(POLICIES)
    recording = tmp_path / "spans.jsonl"
    with service(tmp_path, "--store", "memory://", "--record", str(recording)) as running:
        spans = chat_spans(3)
        assert export(running.url, spans).name == "SUCCESS"  # the real OTLP exporter: protobuf
        assert export(running.url, spans).name == "SUCCESS"  # a retry: recorded again, counted once
        as_json = json.dumps(otlp_json(mini_batch(2)))
        response = httpx.post(
            f"{running.url}{TRACES_PATH}", content=as_json, headers={"content-type": "application/json"}, timeout=10
        )
        assert response.status_code == 200, response.text
        refused = httpx.post(f"{running.url}{TRACES_PATH}", content=b"{", headers={"content-type": "application/json"})
        assert refused.status_code == 400  # not accepted, so not recorded
        spent = spent_nanos(running.url, "everything")
        metrics = httpx.get(f"{running.url}/metrics", timeout=5).text
        assert running.stop() == 0

    assert samples(metrics, "otel_puppy_record_batches_total") == {"written": 3.0}
    lines = recording.read_bytes().splitlines()
    assert len(lines) == 3
    assert oct(recording.stat().st_mode & 0o777) == "0o600"  # spans may carry prompts

    # Exactly what the service spent: 3 gpt-4.1 calls (once, despite the retry) and 2 gpt-4.1-mini calls.
    calls = list(read_spans(recording))
    assert len(calls) == 8
    assert spent == 3 * NANOS + 2 * usd_to_nanos(_mini_price())
    replayed = cli(tmp_path, "replay", str(recording), "--json")
    assert replayed.returncode == 0, replayed.stderr
    totals = json.loads(replayed.stdout)["totals"]
    assert totals == {
        "calls": 5,
        "allowed": 5,
        "warned": 0,
        "degraded": 0,
        "denied": 0,
        "unpriced": 0,
        "skipped": 3,
        "spend_usd": format_usd(nanos_to_usd(spent)),
        "spend_denied_usd": "0.000000000",
        "estimates": "actual",
        "learned_estimates": 0,
    }


def _mini_price() -> Decimal:
    from genai_prices import Usage, calc_price

    usage = Usage(input_tokens=MINI_INPUT, output_tokens=MINI_OUTPUT)
    return calc_price(usage, "gpt-4.1-mini", provider_id="openai").total_price


def test_a_recorded_line_reads_back_as_the_same_request() -> None:
    request = mini_batch(3)
    line = otlp_json_line(request)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    document = json.loads(line)
    assert document == otlp_json(request)  # hex ids, integer enums: the OTLP/JSON encoding
    first = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert first["spanId"] == "0000000000000001"


@pytest.fixture
def engine() -> Iterator[PolicyEngine]:
    policies = parse_policy_text(POLICIES, Path("budgets.yaml"))
    engine = engine_for_tests(policies, clock=None)
    yield engine
    engine.close()


def post(client: TestClient, request: ExportTraceServiceRequest) -> int:
    response = client.post(TRACES_PATH, content=request.SerializeToString(), headers={"content-type": PROTOBUF})
    return response.status_code


def test_a_failing_disk_never_fails_ingest(
    tmp_path: Path, engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_bytes(b'{"resourceSpans":[]}\n')  # an earlier recording, appended to
    recorder = SpanRecorder(path, registry=engine.registry)
    client = TestClient(create_app(engine, recorder=recorder))
    write_all = SpanRecorder._write_all

    def full_disk(self: SpanRecorder, line: bytes) -> None:
        os.write(self._fd, line[:7])  # part of the line lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SpanRecorder, "_write_all", full_disk)
    with caplog.at_level(logging.WARNING, logger="otel_puppy"):
        assert post(client, mini_batch(1)) == 200
        assert post(client, mini_batch(1)) == 200
    # Both batches applied; neither recorded, and the file still holds whole lines only.
    assert engine.snapshot().spend("24h") == 2 * _mini_price()
    assert path.read_bytes() == b'{"resourceSpans":[]}\n'
    assert engine.registry.get_sample_value("otel_puppy_record_batches_total", {"result": "failed"}) == 2
    lines = [r for r in caplog.records if "could not record" in r.getMessage()]
    assert len(lines) == 1  # rate-limited: one line a minute however often it fails
    assert "No space left on device" in lines[0].getMessage()

    monkeypatch.setattr(SpanRecorder, "_write_all", write_all)  # space again: recording goes on
    assert post(client, mini_batch(1)) == 200
    assert len(path.read_bytes().splitlines()) == 2
    assert engine.registry.get_sample_value("otel_puppy_record_batches_total", {"result": "written"}) == 1
    recorder.close()
    assert engine.registry.get_sample_value("otel_puppy_record_batches_total", {"result": "written"}) is None


def test_the_cap_stops_recording_not_ingest(
    tmp_path: Path, engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spans.jsonl"
    first = mini_batch(1)
    cap = len(otlp_json_line(first)) + 10  # room for one line, not two
    recorder = SpanRecorder(path, max_bytes=cap, registry=engine.registry)
    client = TestClient(create_app(engine, recorder=recorder))
    with caplog.at_level(logging.WARNING, logger="otel_puppy"):
        assert post(client, first) == 200
        assert path.read_bytes() == otlp_json_line(first)
        for _ in range(2):
            assert post(client, mini_batch(1)) == 200
    assert engine.snapshot().spend("24h") == 3 * _mini_price()
    assert path.read_bytes() == otlp_json_line(first)
    assert engine.registry.get_sample_value("otel_puppy_record_batches_total", {"result": "written"}) == 1
    assert engine.registry.get_sample_value("otel_puppy_record_batches_total", {"result": "full"}) == 2
    assert recorder.full
    assert [r.getMessage() for r in caplog.records if "recording stopped" in r.getMessage()] == [
        f"recording stopped: {path} would pass its cap of {cap} bytes; exports are still applied"
    ]
    recorder.close()


def test_the_smallest_and_largest_caps(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "spans.jsonl"
    for bad in (0, -1, MAX_BYTES_LIMIT + 1):
        with pytest.raises(ValueError, match="size cap must be 1 to"):
            SpanRecorder(path, max_bytes=bad, registry=registry)
    smallest = SpanRecorder(path, max_bytes=1, registry=registry)
    smallest.write(smallest.encode(mini_batch(1)))  # nothing fits in one byte
    assert smallest.full
    assert path.read_bytes() == b""
    smallest.close()
    largest = SpanRecorder(path, max_bytes=MAX_BYTES_LIMIT, registry=registry)
    largest.write(largest.encode(mini_batch(1)))
    assert len(path.read_bytes().splitlines()) == 1
    largest.close()


def test_serve_refuses_a_bad_cap_or_an_unwritable_file(tmp_path: Path) -> None:
    env = environment(allow_no_policies="true")
    bad_caps = ("0", "-5", "1e9", "\uff11\uff12", str(MAX_BYTES_LIMIT + 1), "9" * 400)
    *refused, result = cli_all(
        tmp_path,
        *(["serve", "--record", "x.jsonl", "--record-max-bytes", bad] for bad in bad_caps),
        ["serve", "--store", "memory://", "--record", str(tmp_path / "missing" / "x.jsonl")],
        env=env,
    )
    for bad, refusal in zip(bad_caps, refused, strict=True):
        assert refusal.returncode == 2, bad
        assert f"expected a whole number of bytes from 1 to {MAX_BYTES_LIMIT}" in refusal.stderr
    assert result.returncode == 1
    assert f"cannot record to {tmp_path / 'missing' / 'x.jsonl'}: No such file or directory" in result.stderr
