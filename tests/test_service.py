"""`otel-puppy serve` as it is deployed: a real process on loopback, fed by the standard OTLP
exporter, asked by the `decide` and `status` commands, stopped by SIGTERM, killed by SIGKILL.

Every process is started on a free 127.0.0.1 port and stopped by the test that started it
(the helpers are in tests/_service.py).
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_puppy.cli import DENY_EXIT_CODE
from otel_puppy.server.decoder import default_processes
from tests._service import (
    NANOS,
    PRICE,
    STOP_WITHIN_S,
    Service,
    chat_spans,
    cli,
    cli_all,
    environment,
    export,
    free_port,
    metric,
    service,
    spent_nanos,
    write_policies,
)

__all__ = ("NANOS", "Service", "chat_spans", "environment", "export", "metric", "service", "spent_nanos")
"""Other tests import these from here; they live in tests/_service.py."""

TOKEN = "a-long-random-token-for-tests"

BUDGETS = """\
budgets:
  - {name: everything, limit_usd: 1000, window: day}
  - {name: support-daily, match: {agent: support}, limit_usd: 0.01, window: day, action: deny}
"""


def test_the_price_is_what_genai_prices_says() -> None:
    assert Decimal("0.0028") == PRICE


# --- the service's life -----------------------------------------------------------------------


def test_serve_ingests_answers_and_keeps_its_state_in_sqlite_across_a_restart(tmp_path: Path) -> None:
    policies = write_policies(tmp_path, BUDGETS)
    with service(tmp_path, "--policies", str(policies)) as running:
        assert running.stdout.read_text() == (
            f"otel-puppy serving OTLP/HTTP, the decision API and /metrics on {running.url}\n"
        )
        # the standard exporter, protobuf; the same batch again (a retry) is counted once
        spans = chat_spans(4)
        assert export(running.url, spans) is SpanExportResult.SUCCESS
        assert export(running.url, spans) is SpanExportResult.SUCCESS
        labels = {"provider": "openai", "model": "gpt-4.1", "agent": "support", "service": "support-bot"}
        assert metric(running.url, "otel_puppy_llm_cost_usd_total", **labels) == 4 * NANOS / 1e9
        assert metric(running.url, "otel_puppy_spans_total", result="duplicate") == 4.0

        # $0.0112 spent by support, over its $0.01: support is denied, research is not
        denied = cli(tmp_path, "decide", "--provider", "openai", "--model", "gpt-4.1", "--agent", "support",
                     "--url", running.url)  # fmt: skip
        assert denied.returncode == DENY_EXIT_CODE, denied.stderr
        assert "deny" in denied.stdout
        assert "support-daily" in denied.stdout
        allowed = cli(tmp_path, "decide", "--provider", "openai", "--model", "gpt-4.1", "--agent", "research",
                      "--priority", "high", "--estimated-cost-usd", "0.02", "--reserve",
                      "--url", running.url, "--json")  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        decision = json.loads(allowed.stdout)
        assert (decision["action"], decision["model"]) == ("allow", "gpt-4.1")
        assert Decimal(decision["estimated_cost_usd"]) == Decimal("0.02")
        assert [reason["policy"] for reason in decision["reasons"]] == ["everything"]

        wide = {**environment(), "COLUMNS": "200"}
        with ThreadPoolExecutor(2) as both:  # two readers at once: each process takes 0.6 s of CPU to start
            as_json = both.submit(cli, tmp_path, "status", "--url", running.url, "--json")
            as_tables = both.submit(cli, tmp_path, "status", "--url", running.url, env=wide)
        status, tables = as_json.result(), as_tables.result()
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        budgets = {b["policy"]: b for b in state["budgets"]}
        assert Decimal(budgets["support-daily"]["spent_usd"]) == 4 * PRICE
        assert Decimal(budgets["everything"]["spent_usd"]) == 4 * PRICE
        assert Decimal(budgets["everything"]["reserved_usd"]) == Decimal("0.02")  # research's estimate
        assert state["health"]["status"] in ("healthy", "degraded", "unhealthy")
        assert (state["breakers"], state["anomalies"]) == ([], [])

        assert tables.returncode == 0, tables.stderr
        assert "support-daily" in tables.stdout
        assert "$0.0112 / $0.01" in tables.stdout

        assert running.stop(signal.SIGTERM) == 0
        assert "Traceback" not in running.output()

    # no --store and no OTEL_PUPPY_STORE: the service's state is SQLite, in the working directory
    assert (tmp_path / "otel-puppy.db").is_file()
    with service(tmp_path, "--policies", str(policies)) as restarted:
        assert spent_nanos(restarted.url, "everything") == 4 * NANOS
        assert spent_nanos(restarted.url, "support-daily") == 4 * NANOS
        assert export(restarted.url, spans) is SpanExportResult.SUCCESS  # still remembered: not counted again
        assert spent_nanos(restarted.url, "everything") == 4 * NANOS
        assert restarted.stop(signal.SIGINT) == 0


def _decoders(pid: int) -> list[int]:
    """The decoding processes `pid` started (`server/decoder.py`): its children running `_serve_worker`."""
    children = [
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    ]
    return [child for child in children if b"_serve_worker" in Path(f"/proc/{child}/cmdline").read_bytes()]


@pytest.mark.parametrize("processes", [None, "0"])
def test_serve_decodes_in_its_decoding_processes_and_stops_them_with_it(tmp_path: Path, processes: str | None) -> None:
    """By default one decoding process on two CPUs or more (as here), `OTEL_PUPPY_DECODE_PROCESSES` otherwise,
    started with the service; the spans it reads are counted as ever, and it stops with the service."""
    policies = write_policies(tmp_path, BUDGETS)
    env = environment() if processes is None else environment(decode_processes=processes)
    with service(tmp_path, "--policies", str(policies), env=env) as running:
        decoders = _decoders(running.process.pid)  # started with the service
        assert len(decoders) == (default_processes() if processes is None else int(processes))
        spans = chat_spans(3)
        assert export(running.url, spans) is SpanExportResult.SUCCESS
        assert _decoders(running.process.pid) == decoders
        assert export(running.url, spans) is SpanExportResult.SUCCESS  # a retry: counted once
        labels = {"provider": "openai", "model": "gpt-4.1", "agent": "support", "service": "support-bot"}
        assert metric(running.url, "otel_puppy_llm_cost_usd_total", **labels) == 3 * NANOS / 1e9
        assert metric(running.url, "otel_puppy_spans_total", result="duplicate") == 3.0
        assert running.stop() == 0
    for decoder in decoders:  # stopped and waited for by the service before it exits
        assert not Path(f"/proc/{decoder}").exists()


@pytest.mark.long
def test_kill_9_mid_load_loses_no_acknowledged_span_and_counts_none_twice(tmp_path: Path) -> None:
    policies = write_policies(tmp_path, "budgets:\n  - {name: everything, limit_usd: 1000000, window: day}\n")
    args = ("--policies", str(policies), "--store", "sqlite:///state.db")
    spans = chat_spans(30 * 200)
    # Batches of 20 to 30 spans, so the batch in flight at the kill has a cost of its own.
    batches: list[list[ReadableSpan]] = []
    while spans:
        size = 20 + len(batches) % 11
        batches.append(spans[:size])
        del spans[:size]
    cost = [len(batch) * NANOS for batch in batches]

    with service(tmp_path, *args) as running:
        results: dict[int, SpanExportResult] = {}
        started: list[int] = []
        stop = threading.Event()

        def load() -> None:
            exporter = OTLPSpanExporter(endpoint=f"{running.url}/v1/traces", timeout=2)
            try:
                for index, batch in enumerate(batches):
                    if stop.is_set():
                        return
                    started.append(index)
                    results[index] = exporter.export(batch)
                    if results[index] is not SpanExportResult.SUCCESS:
                        return  # the service is gone
            finally:
                exporter.shutdown()  # type: ignore[no-untyped-call]

        loader = threading.Thread(target=load, name="otlp-load")
        loader.start()
        began = time.monotonic()
        while sum(result is SpanExportResult.SUCCESS for result in results.values()) < 15:
            assert loader.is_alive(), f"the load stopped early: {results}"
            assert time.monotonic() < began + 30, "15 batches were not acknowledged within 30s"
            time.sleep(0.001)
        # Somewhere inside the next batch's round trip: before, during or after its transaction.
        time.sleep(random.uniform(0, (time.monotonic() - began) / 15))
        running.process.kill()  # SIGKILL: no shutdown, no flush
        assert running.process.wait(STOP_WITHIN_S) == -signal.SIGKILL
        stop.set()
        loader.join(30)
        assert not loader.is_alive()

    acknowledged = [i for i in started if results.get(i) is SpanExportResult.SUCCESS]
    assert acknowledged == list(range(len(acknowledged))), "a batch failed before the kill"
    assert len(acknowledged) < len(batches), "the load ended before the kill"
    in_flight = len(acknowledged)  # sent when the service died: applied entirely or not at all
    acked_nanos = sum(cost[i] for i in acknowledged)

    with service(tmp_path, *args) as restarted:
        assert spent_nanos(restarted.url, "everything") in (acked_nanos, acked_nanos + cost[in_flight])
        # every batch again, acknowledged or not, as exporters retrying after an outage would
        exporter = OTLPSpanExporter(endpoint=f"{restarted.url}/v1/traces", timeout=10)
        try:
            assert all(exporter.export(batch) is SpanExportResult.SUCCESS for batch in batches)
        finally:
            exporter.shutdown()  # type: ignore[no-untyped-call]
        assert spent_nanos(restarted.url, "everything") == sum(cost)
        assert restarted.stop() == 0


# --- security ---------------------------------------------------------------------------------


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    result = cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "OTEL_PUPPY_API_TOKEN" in result.stderr
    assert "0.0.0.0" in result.stderr
    assert not (tmp_path / "otel-puppy.db").exists()  # refused before anything was opened


def test_with_a_token_every_request_without_it_is_401(tmp_path: Path) -> None:
    policies = write_policies(tmp_path, BUDGETS)
    env = environment(api_token=TOKEN)
    with service(tmp_path, "--policies", str(policies), env=env) as running:  # /readyz needs no token
        for path in ("/v1/budgets", "/v1/health", "/metrics"):
            response = httpx.get(f"{running.url}{path}", timeout=5)
            assert (response.status_code, response.json()["code"]) == (401, "unauthorized"), path
        wrong = httpx.get(f"{running.url}/v1/budgets", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401
        decide = httpx.post(f"{running.url}/v1/decide", json={"provider": "openai", "model": "gpt-4.1"}, timeout=5)
        assert decide.status_code == 401
        spans = chat_spans(2)
        assert export(running.url, spans) is SpanExportResult.FAILURE
        assert spent_nanos(running.url, "everything", {"Authorization": f"Bearer {TOKEN}"}) == 0
        assert export(running.url, spans, headers={"Authorization": f"Bearer {TOKEN}"}) is SpanExportResult.SUCCESS
        assert spent_nanos(running.url, "everything", {"Authorization": f"Bearer {TOKEN}"}) == 2 * NANOS

        # the commands send the token from the settings, and say what is wrong without it
        with ThreadPoolExecutor(2) as both:  # two readers at once: each process takes 0.6 s of CPU to start
            with_token = both.submit(cli, tmp_path, "status", "--url", running.url, env=env)
            without = both.submit(cli, tmp_path, "status", "--url", running.url)
        assert with_token.result().returncode == 0
        refused = without.result()
        assert refused.returncode == 1
        assert "OTEL_PUPPY_API_TOKEN" in refused.stderr
        assert running.stop() == 0


def test_commands_say_when_the_service_is_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    status, decide = cli_all(
        tmp_path, ["status", "--url", url], ["decide", "--provider", "openai", "--model", "gpt-4.1", "--url", url]
    )
    assert (status.returncode, status.stdout) == (1, "")
    assert f"cannot reach otel-puppy at {url}" in status.stderr
    assert (decide.returncode, decide.stdout) == (1, "")
    assert f"cannot get a decision from {url}" in decide.stderr
