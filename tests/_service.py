"""`otel-puppy serve` as a real process for tests: started on a free loopback port, fed by the standard
OTLP exporter, read over HTTP, and stopped (or killed) by the test that started it.

Calendar windows are put in a timezone where it is about noon, so a `day` budget cannot reset in
the middle of a test.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Final

import httpx
from genai_prices import Usage, calc_price
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from otel_puppy.money import usd_to_nanos

__all__ = (
    "CHAT_CALL",
    "NANOS",
    "PRICE",
    "READY_WITHIN_S",
    "STOP_WITHIN_S",
    "Service",
    "chat_spans",
    "cli",
    "cli_all",
    "environment",
    "export",
    "free_port",
    "metric",
    "noon_timezone",
    "service",
    "services",
    "spent_nanos",
    "wait_until_ready",
    "write_policies",
)

PRICE = calc_price(Usage(input_tokens=1000, output_tokens=100), "gpt-4.1", provider_id="openai").total_price
NANOS = usd_to_nanos(PRICE)
"""Every span these tests export is one gpt-4.1 call of 1,000 input and 100 output tokens."""
CHAT_CALL: dict[str, str | int] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.response.model": "gpt-4.1",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}
"""The attributes of that call, as the GenAI semantic conventions name them."""
READY_WITHIN_S = 30.0
STOP_WITHIN_S = 15.0


def noon_timezone() -> str:
    """An `Etc/GMT` zone where it is now between 11:00 and 13:00: its midnight is hours away."""
    offset = 12 - datetime.now(UTC).hour  # hours east of UTC, -11..12
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"  # POSIX sign


def environment(**settings: str) -> dict[str, str]:
    """This environment without any OpenTelemetry or otel_puppy settings, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["OTEL_PUPPY_TIMEZONE"] = noon_timezone()
    env.update({f"OTEL_PUPPY_{name.upper()}": value for name, value in settings.items()})
    return env


def _own_ports() -> range:
    """The loopback ports this test process hands out: its share of 10000-19999, by its pytest-xdist
    worker number (`./scripts/test` runs one process per CPU). Disjoint shares, so a port one process
    let go of (a Redis stopped to be restarted on it) is never taken meanwhile by a server another
    process starts; and below the kernel's ephemeral ports (32768 and up), which clients' connections
    take theirs from."""
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    share = 10_000 // count
    if share == 0:
        raise RuntimeError(f"{count} test processes: at most 10,000 can each have a loopback port of their own")
    return range(10_000 + worker * share, 10_000 + (worker + 1) * share)


_PORTS: Final = _own_ports()
_next_port = itertools.count(random.randrange(len(_PORTS)))
"""In turn through `_PORTS` (from a random place): a port comes back only after all the others."""


def free_port() -> int:
    """A loopback port of this test process's own (`_own_ports`) that nothing is bound to now."""
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_next_port) % len(_PORTS)]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in {_PORTS.start}-{_PORTS.stop - 1}")


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(STOP_WITHIN_S)


OTEL_PUPPY: tuple[str, ...] = (sys.executable, "-m", "otel_puppy")


@contextmanager
def service(
    cwd: Path, *args: str, env: dict[str, str] | None = None, command: Sequence[str] = OTEL_PUPPY
) -> Iterator[Service]:
    """`otel-puppy serve` in `cwd` on a free loopback port, once `/readyz` answers; killed if still running.

    `command` runs the `otel-puppy` command line (a wrapper may stand in for it)."""
    port = free_port()
    run = len(list(cwd.glob("serve-*.out")))
    stdout, stderr = cwd / f"serve-{run}.out", cwd / f"serve-{run}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port), *args],
            cwd=cwd,
            env=env or environment(),
            stdout=out,
            stderr=err,
        )
    running = Service(process, f"http://127.0.0.1:{port}", stdout, stderr)
    try:
        wait_until_ready(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(STOP_WITHIN_S)


@contextmanager
def services(*starts: tuple[Path, Sequence[str], dict[str, str]]) -> Iterator[list[Service]]:
    """`service(cwd, *args, env=env)` for each (cwd, args, env), started at once and each yielded once
    ready, as replicas deployed together start (each takes about 0.7 s of CPU to get ready); killed if
    still running. Each needs a `cwd` of its own (its output files are named after those in it)."""
    assert len({cwd for cwd, _, _ in starts}) == len(starts), "a working directory for each"
    with ExitStack() as stack, ThreadPoolExecutor(len(starts)) as pool:
        started = [pool.submit(stack.enter_context, service(cwd, *args, env=env)) for cwd, args, env in starts]
        yield [future.result() for future in started]


def wait_until_ready(running: Service) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    with httpx.Client(base_url=running.url, timeout=1) as client:
        while True:
            code = running.process.poll()
            assert code is None, f"otel-puppy serve exited with {code}:\n{running.output()}"
            with suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    return
            assert time.monotonic() < deadline, f"not ready within {READY_WITHIN_S}s:\n{running.output()}"
            time.sleep(0.05)  # polling for an event (the port answering), not waiting out time


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_puppy", *args],
        cwd=cwd,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_all(
    cwd: Path, *commands: Sequence[str], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """`cli(cwd, *command)` for each of `commands`, all at once (they must not depend on each other: each
    process starts as slowly alone as beside others, about 0.6 s of CPU, and there are two cores)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: cli(cwd, *command, env=env), commands))


def chat_spans(count: int, agent: str = "support", service_name: str = "support-bot") -> list[ReadableSpan]:
    """`count` finished GenAI chat spans of the real SDK, each with its own random ids."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    attributes = {**CHAT_CALL, "gen_ai.agent.name": agent}
    for _ in range(count):
        with tracer.start_as_current_span("chat gpt-4.1", kind=SpanKind.CLIENT, attributes=attributes):
            pass
    provider.shutdown()
    return list(exporter.get_finished_spans())


def export(url: str, spans: Sequence[ReadableSpan], headers: dict[str, str] | None = None) -> SpanExportResult:
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=10, headers=headers)
    try:
        result: SpanExportResult = exporter.export(spans)
        return result
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


def metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def spent_nanos(url: str, policy: str, headers: dict[str, str] | None = None) -> int:
    response = httpx.get(f"{url}/v1/budgets", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    [budget] = [b for b in response.json()["budgets"] if b["policy"] == policy and b["scope"] == ""]
    return usd_to_nanos(Decimal(budget["spent_usd"]))


def write_policies(tmp_path: Path, text: str) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "budgets.yaml").write_text(text)
    return policies
