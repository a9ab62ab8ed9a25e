"""Extraction across the instrumentation corpus: what reading each instrumentation's spans costs.

The corpus (`tests/corpus/recordings/<instrumentation>/*.jsonl`) holds the spans sixteen real
instrumentations emitted for real SDK calls: each line one OTLP/JSON export. Here each recording's
exports are protobuf gzip bodies again, as a Collector would send them, and two things are timed on
the same bodies in this process: what the service's reader does with them (gunzip, decode, and
`calls_from_request`: every span's call read, or passed over) and the least any reader does (gunzip,
decode, and a read of every span's ids, times, status and name, and of every attribute's key and
value: `bench_service.decode_and_walk`). CPU time, per span of the recording (model calls, agent runs,
tools and HTTP spans alike), best of 3.

`python -m bench corpus --no-write` prints the figure.
"""

from __future__ import annotations

import gzip
import math
import time
from pathlib import Path

from bench._harness import Result
from bench.bench_service import decode_and_walk
from otel_puppy.server.otlp import JSON, PROTOBUF, calls_from_request, decode_traces

RECORDINGS = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "recordings"
SPANS = 3_000
"""Each recording's bodies are read over again until this many spans are timed."""


def recordings(root: Path = RECORDINGS) -> dict[str, list[bytes]]:
    """Per instrumentation, its exports as protobuf gzip bodies."""
    found: dict[str, list[bytes]] = {}
    for directory in sorted(path for path in root.iterdir() if path.is_dir()):
        bodies = [
            gzip.compress(decode_traces(line, JSON).SerializeToString())
            for recording in sorted(directory.glob("*.jsonl"))
            for line in recording.read_bytes().splitlines()
            if line.strip()
        ]
        if bodies:
            found[directory.name] = bodies
    return found


def spans_in(bodies: list[bytes]) -> int:
    return sum(
        len(scope_spans.spans)
        for body in bodies
        for resource_spans in decode_traces(gzip.decompress(body), PROTOBUF).resource_spans
        for scope_spans in resource_spans.scope_spans
    )


def read(bodies: list[bytes], spans: int) -> float:
    """CPU microseconds per span to gunzip, decode and read `bodies` (`spans` spans) as the service
    does, best of 3."""
    best = math.inf
    for _ in range(3):
        start = time.process_time()
        for body in bodies:
            calls_from_request(decode_traces(gzip.decompress(body), PROTOBUF))
        best = min(best, (time.process_time() - start) / spans * 1e6)
    return best


def run() -> list[Result]:
    figures: dict[str, tuple[float, float, int, int]] = {}
    for name, bodies in recordings().items():
        per_round = spans_in(bodies)
        rounds = max(1, math.ceil(SPANS / per_round))
        repeated = bodies * rounds
        ours = read(repeated, per_round * rounds)
        calls = sum(len(calls_from_request(decode_traces(gzip.decompress(body), PROTOBUF))[0]) for body in bodies)
        figures[name] = (ours, decode_and_walk(repeated), per_round, calls)
    worst = max(figures, key=lambda name: figures[name][0] / figures[name][1])
    ours, walk, _, _ = figures[worst]
    each = "; ".join(
        f"{name} {cpu:.1f} us ({cpu / baseline:.1f}x, {spans} spans, {calls} calls)"
        for name, (cpu, baseline, spans, calls) in figures.items()
    )
    return [
        Result(
            name=f"OTLP extraction across the instrumentation corpus ({len(figures)} recordings), protobuf gzip",
            ours=f"worst {worst}: {ours:.1f} us of CPU a span",
            baseline=f"its decode and walk {walk:.1f} us a span",
            ratio=ours / walk,
            ratio_text=f"{ours / walk:.1f}x decode and walk",
            target="report",
            met=None,
            note="each recording's exports (tests/corpus/recordings) as protobuf gzip bodies, read over until "
            f"{SPANS:,} spans; gunzip, decode and `calls_from_request` against gunzip, decode and a walk of "
            f"every span and attribute, CPU per span of the recording, best of 3: {each}",
        )
    ]
