"""Load: a real `otel-puppy serve` (SQLite) driven at twice the ingest capacity it just showed.

The test first measures how many spans per second the service acknowledges when senders keep it
busy, then offers twice that, open loop (a batch is sent on schedule whether or not earlier ones
were answered), for `OTEL_PUPPY_LOAD_SECONDS` (120 by default). It holds:

- every answer is `200`, or an overload answer (`429`/`503`) with `Retry-After`; nothing else;
- the service's memory stays bounded (resident set sampled twice a second);
- once the load stops, an export is acknowledged again within `RECOVERY_S`;
- the spend is exactly that of the acknowledged batches, and once every refused batch has been
  sent again (as exporters retry), exactly that of every batch: none lost, none counted twice.

The figures it measured are printed (`pytest -s`) and recorded in RELIABILITY.md.
"""

from __future__ import annotations

import itertools
import os
import queue
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.util.types import AttributeValue

from tests._service import NANOS, chat_spans, service, spent_nanos, write_policies

LOAD_S = float(os.environ.get("OTEL_PUPPY_LOAD_SECONDS", "120"))
"""How long the overload lasts (the issue asks for two minutes)."""
MEASURE_S = 6.0
BATCH = 100
"""Spans per export, as a BatchSpanProcessor sends them."""
SENDERS = 32
RECOVERY_S = 5.0
RETRIERS = 8
RSS_GROWTH_LIMIT = 160 * 1024 * 1024
"""The service may hold `MAX_CONCURRENT_INGEST` (8) bodies at once and SQLite a 32 MiB page cache."""
PROTOBUF = {"content-type": "application/x-protobuf"}


class Batches:
    """Export bodies of `BATCH` spans, each with trace ids no other batch has, made by patching a
    template's ids (encoding 100 SDK spans per batch would cost the load generator more than the service)."""

    def __init__(self) -> None:
        request = encode_spans(chat_spans(BATCH))
        self._template = request.SerializeToString()
        ids = [span.trace_id for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
        self._offsets = [self._template.index(trace_id) for trace_id in ids]
        assert len(self._offsets) == BATCH
        self._run = random.getrandbits(63)

    def body(self, index: int) -> bytes:
        data = bytearray(self._template)
        for position, offset in enumerate(self._offsets):
            data[offset : offset + 16] = struct.pack(">QQ", self._run, index * BATCH + position + 1)
        return bytes(data)


@dataclass
class Outcomes:
    """What became of each batch: its status code, or `None` when no answer came (a timeout)."""

    status: dict[int, int | None] = field(default_factory=dict)
    retry_after: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, index: int, response: httpx.Response | None) -> None:
        with self.lock:
            self.status[index] = None if response is None else response.status_code
            if response is not None and response.status_code != 200:
                self.retry_after[response.headers.get("retry-after", "missing")] += 1

    def acknowledged(self) -> list[int]:
        return [index for index, status in self.status.items() if status == 200]


def send(client: httpx.Client, batches: Batches, index: int, outcomes: Outcomes) -> None:
    try:
        response: httpx.Response | None = client.post("/v1/traces", content=batches.body(index), headers=PROTOBUF)
    except httpx.TimeoutException:
        response = None
    outcomes.record(index, response)


def retry_until_acknowledged(url: str, batches: Batches, indexes: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        for index in indexes:
            while client.post("/v1/traces", content=batches.body(index), headers=PROTOBUF).status_code != 200:
                time.sleep(0.05)


def chunks(items: list[int], count: int) -> list[list[int]]:
    return [items[start::count] for start in range(count)]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class Sampler:
    """The service's resident set, twice a second, in a thread."""

    pid: int
    samples: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.samples.append(rss(self.pid))


def measure_capacity(url: str, batches: Batches, outcomes: Outcomes, numbers: Iterator[int]) -> float:
    """Spans per second acknowledged with `SENDERS` threads sending back to back: the service saturated
    (some of them are refused), so this is the most it acknowledges, not what a few senders get."""
    deadline = time.monotonic() + MEASURE_S
    acknowledged = 0
    lock = threading.Lock()

    def closed_loop() -> None:
        nonlocal acknowledged
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    index = next(numbers)
                send(client, batches, index, outcomes)
                if outcomes.status[index] == 200:
                    with lock:
                        acknowledged += BATCH

    started = time.monotonic()
    threads = [threading.Thread(target=closed_loop) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acknowledged / (time.monotonic() - started)


@pytest.mark.long
@pytest.mark.timeout(int(LOAD_S) + 240)
def test_twice_the_ingest_capacity_for_two_minutes(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        message = "reads the service's memory from /proc (Linux)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message)
    policies = write_policies(tmp_path, "budgets:\n  - {name: everything, limit_usd: 9000000, window: day}\n")
    batches = Batches()
    outcomes = Outcomes()
    numbers = itertools.count()
    with service(tmp_path, "--policies", str(policies), "--store", "sqlite:///state.db") as running:
        capacity = measure_capacity(running.url, batches, outcomes, numbers)
        assert capacity > 0
        target = 2 * capacity / BATCH  # batches per second
        sampler = Sampler(running.process.pid)
        baseline = rss(running.process.pid)
        sampling = threading.Thread(target=sampler.run, daemon=True)
        sampling.start()

        work: queue.Queue[int | None] = queue.Queue()

        def sender() -> None:
            with httpx.Client(base_url=running.url, timeout=30) as client:
                while (index := work.get()) is not None:
                    send(client, batches, index, outcomes)

        threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
        for thread in threads:
            thread.start()
        offered = 0
        started = time.monotonic()
        next_at = started
        while (now := time.monotonic()) < started + LOAD_S:
            if now < next_at:
                time.sleep(min(next_at - now, 0.01))
                continue
            work.put(next(numbers))
            offered += 1
            next_at += 1 / target
        for _ in threads:
            work.put(None)
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started

        # recovery: once the load has stopped, the next export is acknowledged within seconds
        recovering = time.monotonic()
        with httpx.Client(base_url=running.url, timeout=30) as client:
            while True:
                index = next(numbers)
                send(client, batches, index, outcomes)
                if outcomes.status[index] == 200:
                    break
                assert time.monotonic() - recovering < RECOVERY_S, "no export acknowledged after the load stopped"
                time.sleep(0.05)
        recovered_s = time.monotonic() - recovering
        sampler.stop.set()
        sampling.join(5)

        statuses = Counter(outcomes.status.values())
        acknowledged = outcomes.acknowledged()
        unanswered = [index for index, status in outcomes.status.items() if status is None]
        # only overload answers, each with Retry-After
        assert set(statuses) <= {200, 429, 503, None}, statuses
        assert "missing" not in outcomes.retry_after, outcomes.retry_after
        peak = max(sampler.samples)
        spent = spent_nanos(running.url, "everything")
        # none lost, none counted twice: the acknowledged are all there; unanswered ones may be too
        assert len(acknowledged) * BATCH * NANOS <= spent <= (len(acknowledged) + len(unanswered)) * BATCH * NANOS
        assert (spent // NANOS) % BATCH == 0  # whole batches only

        # exporters retry what was refused or unanswered (and a sample of what was acknowledged)
        again = [index for index, status in outcomes.status.items() if status != 200] + acknowledged[::50]
        with ThreadPoolExecutor(RETRIERS) as pool:
            list(pool.map(lambda part: retry_until_acknowledged(running.url, batches, part), chunks(again, RETRIERS)))
        total = len(outcomes.status)
        assert spent_nanos(running.url, "everything") == total * BATCH * NANOS
        assert running.stop() == 0
    print(
        f"\nload: capacity {capacity:.0f} spans/s; offered {offered * BATCH / elapsed:.0f} spans/s "
        f"({offered * BATCH / elapsed / capacity:.2f}x) for {elapsed:.0f}s; answers {dict(statuses)}; "
        f"Retry-After {dict(outcomes.retry_after)}; "
        f"RSS {baseline / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB; "
        f"recovered in {recovered_s:.2f}s; {total * BATCH} spans counted exactly once"
    )
    assert offered * BATCH / elapsed >= 1.8 * capacity, "the load generator could not offer twice the capacity"
    assert peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew by {(peak - baseline) / 2**20:.0f} MiB"
    assert statuses[503] + statuses[429] > 0, "twice the capacity was all acknowledged: no overload was reached"


@pytest.mark.long
def test_the_span_processor_under_more_spans_than_its_worker_can_take() -> None:
    """In the host app: spans end faster than the worker applies them for a few seconds. The queue
    never holds more than its size, `on_end` never waits, and ended = applied + dropped, exactly."""
    from opentelemetry.sdk.trace import TracerProvider

    from otel_puppy.testing import engine_for_tests

    engine = engine_for_tests(queue_size=2_000)
    processor = engine.span_processor()
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("app")
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4.1",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 100,
    }
    ended = 0
    longest = 0
    durations: list[float] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for _ in range(1_000):
            span = tracer.start_span("chat", attributes=attributes)
            before = time.perf_counter()
            span.end()
            durations.append(time.perf_counter() - before)
        ended += 1_000
        longest = max(longest, len(processor._queue))
    assert processor.force_flush()
    applied = engine.registry.get_sample_value("otel_puppy_spans_total", {"result": "applied"}) or 0
    dropped = engine.registry.get_sample_value("otel_puppy_spans_total", {"result": "dropped"}) or 0
    durations.sort()
    print(
        f"\nprocessor: {ended} spans ended in 5s, {applied:.0f} applied, {dropped:.0f} dropped; queue at most "
        f"{longest}; span.end() p50 {durations[len(durations) // 2] * 1e6:.0f} us, "
        f"p99 {durations[len(durations) * 99 // 100] * 1e6:.0f} us (the worker shares the GIL)"
    )
    assert applied + dropped == ended
    assert dropped > 0  # the worker was outrun: the bound was tested
    assert longest <= 2_000 + 1  # the queue's bound (+1: a flush marker)
    assert engine.snapshot().spend("day") * 10**9 == applied * NANOS
    provider.shutdown()
    engine.close()
