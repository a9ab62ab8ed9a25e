"""Scaling: OTLP ingest with 1, 2 and 4 `otel-puppy serve` replicas sharing one Redis, on this machine.

Replicas share budgets, reservations and dedupe through the Redis store (`redis://`), as behind
the Collector's `loadbalancing` exporter. A real `redis-server` is started on a free loopback
port (no persistence) and stopped after; each replica count gets a database of its own, and the
exporters spread over the replicas. Baselines, measured in the same run: one replica on Redis
for the others, and one service on the memory store for that one. Without the Redis store (the
`redis` extra) or `redis-server`, the figures are reported as not measured, with the reason.

`python -m bench.bench_scaling` prints the figures.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench._harness import Result
from bench.bench_service import BATCH_SPANS, ingest, payloads, service
from otel_puppy.server.otlp import PROTOBUF

REPLICAS = (1, 2, 4)
BATCHES = 200
EXPORTERS_PER_REPLICA = 2
REDIS_SERVER = "/usr/bin/redis-server"


def redis_store_missing() -> str | None:
    """Why the Redis store cannot be used here, or None."""
    try:
        from otel_puppy.store.redis import RedisStore  # noqa: F401
    except ImportError as exc:
        return f"the Redis store is not importable ({exc})"
    if shutil.which("redis-server") is None and not Path(REDIS_SERVER).exists():
        return "no redis-server on this machine"
    return None


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """`redis-server` on a free loopback port without persistence: its host:port."""
    binary = shutil.which("redis-server") or REDIS_SERVER
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _rate(stores: list[str], tmp: Path, rng: random.Random) -> float:
    """Spans per second ingested by one replica per store URL, exporters spread over them."""
    bodies = payloads("protobuf", BATCHES, rng)  # ids of their own: no span is a duplicate of an earlier run's
    run = tempfile.mkdtemp(dir=tmp)
    with ExitStack() as stack:
        urls = []
        for n, store in enumerate(stores):
            workdir = Path(run) / f"replica-{n}"
            workdir.mkdir()
            urls.append(stack.enter_context(service(store, workdir)).url)
        rate, _ = ingest(urls, bodies, PROTOBUF, threads=EXPORTERS_PER_REPLICA * len(urls))
    return rate


def run() -> list[Result]:
    names = [f"OTLP ingest, protobuf gzip, {n} replica{'s' if n > 1 else ''} on one Redis" for n in REPLICAS]
    missing = redis_store_missing()
    if missing is not None:
        return [Result(name, "not measured", "-", 0.0, "-", "report", None, note=missing) for name in names]
    rng = random.Random(1234)
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="otel-puppy-scaling-") as tmp, redis_server(Path(tmp)) as redis:
        memory = _rate(["memory://"], Path(tmp), rng)
        for db, n in enumerate(REPLICAS, start=1):
            rates[n] = _rate([f"redis://{redis}/{db}"] * n, Path(tmp), rng)
    results = []
    for name, n in zip(names, REPLICAS, strict=True):
        if n == 1:
            baseline, ratio = f"one service, memory store {memory:,.0f} spans/s", rates[1] / memory
            text = f"{ratio:.2f}x the memory store"
        else:
            baseline, ratio = f"1 replica {rates[1]:,.0f} spans/s", rates[n] / rates[1]
            text = f"{ratio:.2f}x one replica"
        results.append(
            Result(
                name=name,
                ours=f"{rates[n]:,.0f} spans/s",
                baseline=baseline,
                ratio=ratio,
                ratio_text=text,
                target="report",
                met=None,
                note=f"{BATCHES * BATCH_SPANS:,} pydantic-ai chat spans in {BATCH_SPANS}-span batches from "
                f"{EXPORTERS_PER_REPLICA * n} exporters spread over the replicas; every span deduplicated and applied "
                "in Redis before its 200; the replicas, redis-server and the exporters share this machine's cores",
            )
        )
    return results


if __name__ == "__main__":
    for result in run():
        print(result)
