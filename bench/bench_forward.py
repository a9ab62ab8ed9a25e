"""Forwarding: `otel-puppy serve --forward-to` against the same service without it, same run.

The same OTLP batches are sent to a service that only ingests (prices, dedupes, applies, answers
`200`) and to one that also enriches each batch, queues it in the SQLite file and delivers it to a
sink that reads and drops what it gets (`bench/_sink.py`, its own process: the sink is not what is
measured). The forwarding figure is spans per second from the first export to the last batch
*accepted downstream*, not merely acknowledged upstream.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from bench._harness import Result
from bench.bench_service import BATCH_SPANS, PROTOBUF, ingest, payloads, service

BATCHES = 300
ROUNDS = 2
TARGET = 0.6
STORE = "sqlite:///bench-state.db"


@contextmanager
def sink() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "bench._sink", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.TransportError):
                httpx.get(f"{url}/count", timeout=1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the sink did not start")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _count(url: str) -> int:
    return int(httpx.get(f"{url}/count", timeout=5).text)


def _plain(bodies: list[bytes], workdir: Path) -> float:
    with service(STORE, workdir) as running:
        ingest(running.url, bodies[:20], PROTOBUF)
        rate, _ = ingest(running.url, bodies[20:], PROTOBUF)
    return rate


def _forwarding(bodies: list[bytes], workdir: Path, sink_url: str) -> float:
    with service(STORE, workdir, "--forward-to", sink_url) as running:
        before = _count(sink_url)
        ingest(running.url, bodies[:20], PROTOBUF)
        while _count(sink_url) < before + 20:
            time.sleep(0.01)
        start = time.perf_counter()
        ingest(running.url, bodies[20:], PROTOBUF)
        while _count(sink_url) < before + len(bodies):
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
    return (len(bodies) - 20) * BATCH_SPANS / elapsed


def run() -> list[Result]:
    rng = random.Random(17)
    plain: list[float] = []
    forwarded: list[float] = []
    with tempfile.TemporaryDirectory(prefix="otel-puppy-bench-forward-") as tmp, sink() as sink_url:
        for n in range(ROUNDS):  # alternated, fresh ids each time: noise falls on both
            bodies = payloads("protobuf", BATCHES, rng)
            (Path(tmp) / f"plain-{n}").mkdir()
            (Path(tmp) / f"forward-{n}").mkdir()
            plain.append(_plain(bodies, Path(tmp) / f"plain-{n}"))
            forwarded.append(_forwarding(bodies, Path(tmp) / f"forward-{n}", sink_url))
    ours, theirs = max(forwarded), max(plain)
    ratio = ours / theirs
    return [
        Result(
            name="OTLP ingest with forwarding, protobuf gzip, sqlite store",
            ours=f"{ours:,.0f} spans/s delivered downstream",
            baseline=f"ingest without forwarding {theirs:,.0f} spans/s",
            ratio=ratio,
            ratio_text=f"{ratio:.2f}x",
            target=f">= {TARGET}x",
            met=ratio >= TARGET,
            note=f"{(BATCHES - 20) * BATCH_SPANS:,} pydantic-ai chat spans in {BATCH_SPANS}-span batches, 4 exporters; "
            f"each batch applied, enriched, gzipped and queued in the SQLite file before its 200, then delivered "
            f"to a sink that does not decode; best of {ROUNDS} alternated rounds each",
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
