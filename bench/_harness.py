"""Timing helpers, results, and the machine description written into BENCHMARKS.md."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags


@dataclass(frozen=True)
class Result:
    """One figure: ours against a baseline measured in the same run."""

    name: str
    ours: str
    baseline: str
    ratio: float
    ratio_text: str
    target: str
    met: bool | None
    note: str = ""


def per_call_ns(fn: Callable[[], object], calls: int) -> float:
    """Mean nanoseconds per call of `fn`, over `calls` calls, GC paused."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        return (time.perf_counter_ns() - start) / calls
    finally:
        gc.enable()


def best_of(measure: Callable[[], float], rounds: int = 7) -> float:
    """The best of several rounds: the figure least disturbed by a shared, noisy machine."""
    return min(measure() for _ in range(rounds))


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


@contextmanager
def no_thread_switches() -> Iterator[None]:
    """Keep the GIL on this thread while timing, so workers do not run inside the timed loop.

    Both processors under comparison hand spans to a worker thread; with switches off the timed
    loop measures what the app thread pays in `on_end`, not what the worker does meanwhile.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


_RESOURCE = Resource.create({"service.name": "bench"})
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _own_response_id(attributes: Mapping[str, Any], i: int) -> dict[str, Any]:
    own = dict(attributes)
    if "gen_ai.response.id" in own:
        own["gen_ai.response.id"] = f"{own['gen_ai.response.id']}-{i}"
    return own


def finished_spans(attributes: Mapping[str, Any], count: int, *, first_id: int = 1) -> list[ReadableSpan]:
    """`count` finished CLIENT spans with these attributes, each with ids of its own, sharing one
    resource (`otel_puppy.testing.make_span` makes a resource per span: slow for a million). A
    response id in `attributes` is made unique per span, as a provider's is: the counting rules
    count one response id once."""
    spans = []
    start = time.time_ns() - 2_000_000_000
    for i in range(first_id, first_id + count):
        context = SpanContext(i, i, is_remote=False, trace_flags=_SAMPLED)
        spans.append(
            ReadableSpan(
                name="chat gpt-4.1",
                context=context,
                resource=_RESOURCE,
                attributes=_own_response_id(attributes, i),
                kind=SpanKind.CLIENT,
                start_time=start,
                end_time=start + 1_000_000_000,
            )
        )
    return spans


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}){memory}, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )
