"""The demo fleet, end to end: real pydantic-ai agents, real logfire, our processor, a real /metrics."""

from __future__ import annotations

import io
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from rich.console import Console
from rich.text import Text

from otel_puppy import demo
from otel_puppy.engine import PolicyEngine
from otel_puppy.settings import PuppySettings

PROVIDERS = {"openai", "anthropic", "google", "self-hosted"}
MODELS = {
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4o",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "acme-kb-7b-instruct",
}
SELF_HOSTED = "acme-kb-7b-instruct"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def parse(text: str) -> dict[str, list[Sample]]:
    """Samples by sample name (`..._total`), as Prometheus would read the exposition."""
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def scrape(url: str) -> dict[str, list[Sample]] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return parse(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None  # not listening yet


def total(samples: dict[str, list[Sample]], name: str) -> float:
    return sum(sample.value for sample in samples.get(name, []))


def labels(samples: dict[str, list[Sample]], name: str, label: str) -> set[str]:
    return {sample.labels[label] for sample in samples.get(name, [])}


def capture_engines(monkeypatch: pytest.MonkeyPatch) -> list[PolicyEngine]:
    """The engines `run` builds, so the test can read their final state after the server is gone."""
    engines: list[PolicyEngine] = []
    original: Callable[..., PolicyEngine] = PolicyEngine.from_settings

    def from_settings(settings: PuppySettings | None = None, **kwargs: Any) -> PolicyEngine:
        engine = original(settings, **kwargs)
        engines.append(engine)
        return engine

    monkeypatch.setattr(PolicyEngine, "from_settings", staticmethod(from_settings))
    return engines


def run_in_thread(**kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["summary"] = demo.run(**kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="demo")
    thread.start()
    return thread, outcome


def test_demo_fills_every_metric_and_stops_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engines = capture_engines(monkeypatch)
    port = free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    output = io.StringIO()
    settings = PuppySettings.load(store="memory://", port=port, policies=policies)
    url = f"http://127.0.0.1:{port}/metrics"

    thread, outcome = run_in_thread(
        settings=settings, duration=3, rate=20, live=False, console=Console(file=output, width=160)
    )
    live_scrape: dict[str, list[Sample]] | None = None
    while thread.is_alive():
        samples = scrape(url)
        requests = "otel_puppy_llm_requests_total"
        if (
            samples
            and labels(samples, requests, "provider") == PROVIDERS
            and labels(samples, requests, "model") == MODELS
        ):
            live_scrape = samples
            break
        time.sleep(0.1)
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    summary: demo.DemoSummary = outcome["summary"]

    # Scraped over HTTP while the fleet ran: four providers and eight models, every agent.
    assert live_scrape is not None, "never saw every provider and model on /metrics while the demo ran"
    assert labels(live_scrape, "otel_puppy_llm_requests_total", "agent") == {spec.name for spec in demo.FLEET}
    assert labels(live_scrape, "otel_puppy_llm_requests_total", "service") == {"otel-puppy-demo"}

    # The server is gone: nothing listens on the port any more.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass

    # The engine's final state, read as Prometheus would.
    (engine,) = engines
    final = parse(generate_latest(engine.registry).decode())
    assert summary.metrics_url == url
    assert url in output.getvalue()
    assert summary.runs > 0
    assert summary.calls > 0

    # Every model request the simulated providers served is one call; execute_tool and invoke_agent
    # spans reached the engine too (they carry gen_ai.operation.name) but were not counted as calls.
    assert total(final, "otel_puppy_llm_requests_total") == summary.calls
    spans = {sample.labels["result"]: sample.value for sample in final["otel_puppy_spans_total"]}
    assert spans["applied"] == summary.calls
    assert spans["ignored"] >= summary.runs  # at least one invoke_agent span per run
    assert "otel_puppy_internal_errors_total" not in final

    # Spend: metrics, summary and store agree.
    assert total(final, "otel_puppy_llm_cost_usd_total") == pytest.approx(float(summary.spend_usd), abs=1e-9)
    assert summary.spend_usd > 0
    assert engine.snapshot().spend("24h") == summary.spend_usd
    assert sum(summary.spend_by_model.values(), Decimal(0)) == summary.spend_usd
    assert sum(summary.spend_by_agent.values(), Decimal(0)) == summary.spend_usd
    priced = {f"{s.labels['provider']}:{s.labels['model']}" for s in final["otel_puppy_llm_cost_usd_total"]}
    assert set(summary.spend_by_model) == priced
    assert {"openai:gpt-4.1", "anthropic:claude-sonnet-4-5", "google:gemini-2.5-pro"} <= priced
    assert all(
        sample.value == 0
        for sample in final["otel_puppy_llm_cost_usd_total"]
        if sample.labels["model"] == SELF_HOSTED  # only its failed calls, which cost nothing
    )

    # Failures: like providers', classified, and each one ended its run (no retries configured).
    errors = [s for s in final["otel_puppy_llm_requests_total"] if s.labels["outcome"] == "error"]
    assert errors
    assert {s.labels["error_class"] for s in errors} <= {"server_error", "rate_limit"}
    assert sum(s.value for s in errors) == summary.failed_runs

    # The self-hosted model is unpriced, never $0.
    unpriced = final["otel_puppy_llm_unpriced_requests_total"]
    assert {(s.labels["provider"], s.labels["model"], s.labels["reason"]) for s in unpriced} == {
        ("self-hosted", SELF_HOSTED, "unknown_model")
    }
    assert sum(s.value for s in unpriced) == summary.unpriced_calls > 0

    # Cached prefixes: reads on every provider that reports them, writes only on Anthropic.
    tokens = final["otel_puppy_llm_tokens_total"]
    assert {s.labels["provider"] for s in tokens if s.labels["type"] == "cache_read"} == {
        "openai",
        "anthropic",
        "google",
    }
    assert {s.labels["provider"] for s in tokens if s.labels["type"] == "cache_write"} == {"anthropic"}


def test_live_display_shows_the_tables(tmp_path: Path) -> None:
    output = io.StringIO()
    settings = PuppySettings.load(store="memory://", port=free_port(), policies=tmp_path)
    summary = demo.run(
        settings,
        duration=1,
        rate=20,
        seed=3,
        live=True,
        console=Console(file=output, force_terminal=True, width=160),
    )
    text = Text.from_ansi(output.getvalue()).plain
    assert summary.metrics_url in text
    assert "Spend by model" in text
    assert "Spend by agent" in text
    assert "claude-haiku-4-5" in text
    assert f"runs {summary.runs} " in text
