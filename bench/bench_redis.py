"""`otel-puppy serve` on the Redis store against the same service on the memory store, same run.

A real `redis-server` (found on PATH) is started on a free loopback port without persistence,
as the state of a fleet of replicas would be. Each service run gets the 50 policies of
`bench_decide`; figures are decisions per second from 4 kept-alive connections sending back to
back (closed loop), and OTLP protobuf ingest from 4 concurrent exporters, each batch applied
before its `200`.

`python -m bench.bench_redis` prints the figures.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench._harness import Result
from bench.bench_scaling import redis_server, redis_store_missing
from bench.bench_service import BATCH_SPANS, INGEST_THREADS, decision_bodies, ingest, payloads, service
from otel_puppy.server.otlp import PROTOBUF

CONNECTIONS = 4
DECIDE_REQUESTS = 3000
INGEST_BATCHES = 150


def decisions_per_second(url: str) -> float:
    """`POST /v1/decide` back to back from `CONNECTIONS` kept-alive connections: decisions per second."""
    bodies = decision_bodies()
    headers = {"content-type": "application/json"}
    failures: list[int] = []

    def send(first: int, count: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(first, first + count):
                status = client.post("/v1/decide", content=bodies[i % len(bodies)], headers=headers).status_code
                if status != 200:
                    failures.append(status)

    def round_of(requests: int) -> float:
        each = requests // CONNECTIONS
        threads = [threading.Thread(target=send, args=(n * each, each)) for n in range(CONNECTIONS)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return each * CONNECTIONS / (time.perf_counter() - start)

    round_of(1000)  # warms every scope
    rate = round_of(DECIDE_REQUESTS)
    if failures:
        raise RuntimeError(f"{len(failures)} decide requests failed, e.g. HTTP {failures[0]}")
    return rate


def run() -> list[Result]:
    rng = random.Random(6379)
    missing = redis_store_missing()
    if missing is not None:
        return [Result("Redis store vs memory store", "n/a", "n/a", 0.0, "n/a", "measured", None, missing)]
    with tempfile.TemporaryDirectory(prefix="otel-puppy-bench-redis-") as tmp, redis_server(Path(tmp)) as address:
        redis_url = f"redis://{address}/0"
        figures: dict[str, tuple[float, float]] = {}
        for kind, store in (("memory", "memory://"), ("redis", redis_url)):
            workdir = Path(tmp) / kind
            workdir.mkdir()
            bodies = payloads("protobuf", INGEST_BATCHES, rng)
            with service(store, workdir) as running:
                decided = decisions_per_second(running.url)
                ingested, _ = ingest(running.url, bodies, PROTOBUF)
            figures[kind] = (decided, ingested)
    (memory_decide, memory_ingest), (redis_decide, redis_ingest) = figures["memory"], figures["redis"]
    return [
        Result(
            name="/v1/decide throughput, redis store",
            ours=f"{redis_decide:,.0f} decisions/s",
            baseline=f"memory store {memory_decide:,.0f} decisions/s",
            ratio=redis_decide / memory_decide,
            ratio_text=f"{redis_decide / memory_decide:.2f}x memory",
            target="measured",
            met=None,
            note="50 policies, about 9 matching each request, each reserving $0.002 in one Lua script; "
            "4 kept-alive connections back to back",
        ),
        Result(
            name="OTLP ingest, protobuf gzip, redis store",
            ours=f"{redis_ingest:,.0f} spans/s",
            baseline=f"memory store {memory_ingest:,.0f} spans/s",
            ratio=redis_ingest / memory_ingest,
            ratio_text=f"{redis_ingest / memory_ingest:.2f}x memory",
            target="measured",
            met=None,
            note=f"{INGEST_BATCHES * BATCH_SPANS:,} pydantic-ai chat spans in {BATCH_SPANS}-span batches from "
            f"{INGEST_THREADS} exporters; each batch deduped and applied by Lua scripts in one pipeline",
        ),
    ]


def main() -> None:
    for r in run():
        print(f"{r.name}\n  ours:     {r.ours}\n  baseline: {r.baseline} (same run)\n  ratio:    {r.ratio_text}")


if __name__ == "__main__":
    main()
