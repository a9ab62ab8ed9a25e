"""Scale-out as deployed, on loopback: two `otel-puppy serve` replicas sharing one real `redis-server`.

The Collector's `loadbalancing` exporter sends each trace to one replica and retries elsewhere;
these tests play its part with the standard OTLP exporter, delivering batches to either replica
(or both), and retrying a refused batch until it is acknowledged, as its sending queue does.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import cast

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.parser import text_string_to_metric_families

from tests._redis import RedisServer
from tests._service import NANOS, Service, chat_spans, environment, export, metric, services, spent_nanos

BUDGETS = """\
budgets:
  - {name: everything, limit_usd: 1000000, window: day}
  - {name: support-daily, match: {agent: support}, limit_usd: 0.01, window: day, action: deny}
  - {name: research-daily, match: {agent: research}, limit_usd: 1, window: day, action: deny}
"""


@pytest.fixture
def redis_for_replicas(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


def replicas(stack: ExitStack, tmp_path: Path, redis: RedisServer, *fail_open: bool) -> list[Service]:
    policies = tmp_path / "policies"
    if not policies.exists():
        policies.mkdir()
        (policies / "budgets.yaml").write_text(BUDGETS)
    starts = []
    for i, mode in enumerate(fail_open):
        workdir = tmp_path / f"replica-{i}"
        workdir.mkdir(exist_ok=True)
        env = environment(store=redis.url, fail_open=str(mode).lower(), reservation_ttl_s="600")
        starts.append((workdir, ("--policies", str(policies)), env))
    return stack.enter_context(services(*starts))  # started side by side, as a deployment's replicas


def decide(url: str, agent: str, estimate: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"provider": "openai", "model": "gpt-4.1", "agent": agent}
    if estimate is not None:
        body["estimated_cost_usd"] = estimate
    response = httpx.post(f"{url}/v1/decide", json=body, timeout=10)
    assert response.status_code == 200, response.text
    decision: dict[str, object] = response.json()
    return decision


def test_two_replicas_count_a_batch_once_and_decide_on_each_others_spend(
    tmp_path: Path, redis_for_replicas: RedisServer
) -> None:
    with ExitStack() as stack:
        a, b = replicas(stack, tmp_path, redis_for_replicas, True, True)
        spans = chat_spans(4, agent="support")
        # the same batch to both replicas (a Collector retry after a timeout): counted once
        assert export(a.url, spans) is SpanExportResult.SUCCESS
        assert export(b.url, spans) is SpanExportResult.SUCCESS
        assert spent_nanos(a.url, "everything") == spent_nanos(b.url, "everything") == 4 * NANOS
        assert metric(b.url, "otel_puppy_spans_total", result="duplicate") == 4.0

        # spend that arrived through a, over support's $0.01: b denies support at once
        decision = decide(b.url, "support")
        assert decision["action"] == "deny"
        reasons = {r["policy"]: r for r in decision["reasons"]}  # type: ignore[attr-defined]
        assert sorted(reasons) == ["everything", "support-daily"]
        assert reasons["support-daily"]["action"] == "deny"
        assert Decimal(reasons["support-daily"]["spent_usd"]) == 4 * NANOS / Decimal(10**9)
        assert decide(a.url, "research")["action"] == "allow"


def test_sixteen_deciders_over_both_replicas_never_admit_past_the_budget(
    tmp_path: Path, redis_for_replicas: RedisServer
) -> None:
    with ExitStack() as stack:
        a, b = replicas(stack, tmp_path, redis_for_replicas, True, True)
        # research has $1 a day; each call reserves $0.0125: exactly 80 of 800 fit
        start = threading.Barrier(16)

        def decider(n: int) -> list[str]:
            url = (a, b)[n % 2].url
            start.wait()
            with httpx.Client(base_url=url, timeout=10) as client:
                actions = []
                for _ in range(50):
                    body = {"provider": "openai", "model": "gpt-4.1", "agent": "research"}
                    body["estimated_cost_usd"] = "0.0125"
                    response = client.post("/v1/decide", json=body)
                    assert response.status_code == 200, response.text
                    actions.append(response.json()["action"])
                return actions

        with ThreadPoolExecutor(16) as pool:
            actions = [action for result in pool.map(decider, range(16)) for action in result]
        assert (actions.count("allow"), actions.count("deny"), len(actions)) == (80, 720, 800)
        budgets = httpx.get(f"{b.url}/v1/budgets", timeout=5).json()["budgets"]
        [research] = [x for x in budgets if x["policy"] == "research-daily"]
        assert Decimal(research["reserved_usd"]) == Decimal("1.0000")


def test_redis_stopped_and_restarted_mid_load(tmp_path: Path, redis_for_replicas: RedisServer) -> None:
    spans = chat_spans(40 * 25, agent="research")
    batches = [spans[i : i + 25] for i in range(0, len(spans), 25)]
    with ExitStack() as stack:
        a, b = replicas(stack, tmp_path, redis_for_replicas, True, False)  # a fails open, b fails closed
        acknowledged: list[int] = []
        refused = 0
        lock = threading.Lock()

        def deliver(batch_numbers: range, url: str) -> None:
            nonlocal refused
            exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=2)
            try:
                for n in batch_numbers:
                    # the Collector's sending queue: retry a refused batch until it is taken
                    while exporter.export(batches[n]) is not SpanExportResult.SUCCESS:
                        with lock:
                            refused += 1
                        time.sleep(0.2)
                    with lock:
                        acknowledged.append(n)
                    time.sleep(0.02)
            finally:
                exporter.shutdown()  # type: ignore[no-untyped-call]

        loaders = [
            threading.Thread(target=deliver, args=(range(0, 40, 2), a.url)),
            threading.Thread(target=deliver, args=(range(1, 40, 2), b.url)),
        ]
        for loader in loaders:
            loader.start()
        while len(acknowledged) < 8:
            time.sleep(0.01)
        redis_for_replicas.process.kill()  # type: ignore[union-attr]
        redis_for_replicas.process.wait(10)  # type: ignore[union-attr]

        # decisions follow each replica's fail mode, within the store's timeout
        for running, action in ((a, "allow"), (b, "deny")):
            began = time.monotonic()
            decision = decide(running.url, "research", "0.01")
            assert time.monotonic() - began < 2.0
            assert decision["action"] == action
            [reason] = cast("list[dict[str, object]]", decision["reasons"])
            assert reason["kind"] == "internal"
            mode = "open" if action == "allow" else "closed"
            assert reason["message"] == f"the state store is unavailable; failing {mode}"
            ready = httpx.get(f"{running.url}/readyz", timeout=5)
            assert ready.status_code == 503
            assert ready.json()["code"] == "not_ready"
        while refused < 2:  # the load goes on, refused with 503 and retried
            time.sleep(0.01)

        redis_for_replicas.start()
        for loader in loaders:
            loader.join(60)
            assert not loader.is_alive()
        assert sorted(acknowledged) == list(range(40))
        for running in (a, b):
            assert httpx.get(f"{running.url}/readyz", timeout=5).status_code == 200
            assert spent_nanos(running.url, "everything") == len(spans) * NANOS
            assert metric(running.url, "otel_puppy_store_errors_total", operation="decide") == 1.0
        total_applied = sum(metric(r.url, "otel_puppy_spans_total", result="applied") or 0 for r in (a, b))
        assert total_applied == len(spans)


@pytest.mark.long
def test_the_compose_fleet_decides_at_one_replica_and_exports_through_another(
    tmp_path: Path, redis_for_replicas: RedisServer
) -> None:
    with ExitStack() as stack:
        a, b = replicas(stack, tmp_path, redis_for_replicas, True, True)
        env = environment(policies=str(tmp_path / "policies"))
        fleet = subprocess.run(
            [sys.executable, "-m", "otel_puppy", "fleet", "--url", a.url, "--traces-url", f"{b.url}/v1/traces",
             "--duration", "4", "--rate", "6"],
            env=env, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        assert fleet.returncode == 0, fleet.stdout + fleet.stderr
        assert f"otel-puppy fleet: 2 processes deciding at {a.url}, spans to {b.url}/v1/traces" in fleet.stdout
        calls = int(re.findall(r"runs \(\d+ failed, \d+ denied\), (\d+) model calls", fleet.stdout)[-1])
        assert calls > 0
        decided = sum(
            float(sample.value)
            for family in text_string_to_metric_families(httpx.get(f"{a.url}/metrics", timeout=5).text)
            if family.name == "otel_puppy_decisions"
            for sample in family.samples
        )
        assert decided >= calls  # one decision before every model request
        assert metric(a.url, "otel_puppy_spans_total", result="applied") is None  # no span reached a
        assert metric(b.url, "otel_puppy_spans_total", result="applied") == calls
        assert spent_nanos(a.url, "everything") == spent_nanos(b.url, "everything") > 0
