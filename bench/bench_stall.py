"""`on_end` while the store stalls: every write takes 100 ms, against a store that does not, same run.

The application thread must never wait for the store: `on_end` only filters and enqueues, and a
full queue drops (and counts) rather than blocks. Spans arrive in bursts, as a busy application
ends them; the worker runs between bursts, so it is inside the stalled store while later bursts
are timed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client.registry import CollectorRegistry

from bench._harness import Result, finished_spans, no_thread_switches, percentile
from bench.bench_on_end import GENAI
from otel_puppy.engine import PolicyEngine
from otel_puppy.settings import PuppySettings
from otel_puppy.store import ApplyResult, SpendRecord
from otel_puppy.store.memory import MemoryStore

STALL_S = 0.1
BURST = 100
"""Spans ended back to back, then a pause: 20,000 spans a second in all."""
PAUSE_S = 0.005
BURSTS = 300
QUEUE = 20_000
TARGET = 1.2


class StallingStore(MemoryStore):
    """A memory store whose every write first waits `STALL_S` (a slow disk, a far Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.stall_s = STALL_S

    def apply(self, records: Sequence[SpendRecord], now: float) -> list[ApplyResult]:
        self.writes += 1
        time.sleep(self.stall_s)
        return super().apply(records, now)


def _measure(store: MemoryStore, spans: list[ReadableSpan]) -> tuple[list[float], float, float]:
    """Each `on_end` call's nanoseconds; spans dropped; and spans applied by the end."""
    settings = PuppySettings.load(store="memory://", queue_size=QUEUE, raise_internal_errors=False)
    engine = PolicyEngine(settings, store=store, registry=CollectorRegistry(auto_describe=True))
    processor = engine.span_processor()
    on_end = processor.on_end
    clock = time.perf_counter_ns
    samples: list[float] = []
    for first in range(0, len(spans), BURST):
        with no_thread_switches():  # the burst's own cost; the worker runs during the pause
            for span in spans[first : first + BURST]:
                began = clock()
                on_end(span)
                samples.append(clock() - began)
        time.sleep(PAUSE_S)
    dropped = engine.registry.get_sample_value("otel_puppy_spans_total", {"result": "dropped"}) or 0.0
    applied = engine.registry.get_sample_value("otel_puppy_spans_total", {"result": "applied"}) or 0.0
    if isinstance(store, StallingStore):
        store.stall_s = 0.0  # the store recovers: the queue drains quickly
    processor.shutdown()
    engine.close()
    return samples, dropped, applied


def run() -> list[Result]:
    count = BURST * BURSTS
    healthy, _, _ = _measure(MemoryStore(), finished_spans(GENAI, count))
    store = StallingStore()
    stalled, dropped, applied = _measure(store, finished_spans(GENAI, count, first_id=count + 1))
    ours, theirs = percentile(stalled, 0.99), percentile(healthy, 0.99)
    worst = max(stalled)
    return [
        Result(
            name="on_end p99, store stalling 100 ms per write",
            ours=f"p99 {ours:.0f} ns (median {percentile(stalled, 0.5):.0f} ns, max {worst / 1000:.0f} us)",
            baseline=f"healthy store p99 {theirs:.0f} ns (median {percentile(healthy, 0.5):.0f} ns)",
            ratio=ours / theirs,
            ratio_text=f"{ours / theirs:.2f}x",
            target=f"<= {TARGET}x (unchanged)",
            met=ours / theirs <= TARGET and worst < STALL_S * 1e9 / 10,
            note=f"{len(stalled):,} GenAI spans in bursts of {BURST} every {PAUSE_S * 1000:g} ms; the store was "
            f"written {store.writes} times (each waiting {STALL_S * 1000:g} ms); {applied:,.0f} spans applied "
            f"and {dropped:,.0f} dropped (counted) by the end of the bursts: the queue of {QUEUE:,} filled, no call "
            f"waited",
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
