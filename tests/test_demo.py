"""The demo, end to end: the service on uvicorn, real pydantic-ai agents and logfire in fleet processes
exporting with the standard OTLP exporter and deciding over HTTP, and a real /metrics.

The in-process path (`in_process=True`: the engine's span processor, the engine as decider) tells
the scaled scenario's story quickly and deterministically.
"""

from __future__ import annotations

import inspect
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
from otel_puppy.decision import Priority, Severity
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import load_policies
from otel_puppy.policies.base import Degrade
from otel_puppy.settings import PuppySettings
from tests._service import free_port

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
SHIPPED_POLICIES = Path(__file__).resolve().parents[1] / "policies"

# The shipped policies' knobs, scaled down so the demo's events happen within seconds.
SCALED_POLICIES = """
budgets:
  - name: fleet
    limit_usd: 1.5
    window: 1h
    action: warn
    alerts: [0.5, 0.75, 0.9]
  - name: openai-hourly
    match: {provider: openai}
    limit_usd: 0.2
    window: 1h
    action: {degrade: gpt-4.1-mini}
anomalies:
  - name: spend-spike
    signal: cost_rate
    per: [agent]
    interval: 1s
    baseline: 10s
    min_samples: 5
    # 4, not the shipped 5: a baseline of a few one-second samples is noisier, and one lumpy
    # interval in it must not hide the spike.
    threshold: {zscore: 4}
    cooldown: 1m
    action: warn
breakers:
  - name: providers
    per: [provider]
    failure_threshold: 3
    recovery_timeout: 2s
    success_threshold: 2
    half_open_max_calls: 3
    failures: [server_error, timeout, rate_limit, connection]
"""


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


def by_label(samples: dict[str, list[Sample]], name: str, label: str, **where: str) -> dict[str, float]:
    """Sum of a family's samples per value of `label`, over the samples whose labels match `where`."""
    sums: dict[str, float] = {}
    for sample in samples.get(name, []):
        if all(sample.labels.get(key) == value for key, value in where.items()):
            key = sample.labels[label]
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def capture_engines(monkeypatch: pytest.MonkeyPatch) -> list[PolicyEngine]:
    """The engines `run` builds, so the test can read their final state after the server is gone."""
    engines: list[PolicyEngine] = []
    original: Callable[..., PolicyEngine] = PolicyEngine.from_settings

    def from_settings(settings: PuppySettings | None = None, **kwargs: Any) -> PolicyEngine:
        engine = original(settings, **kwargs)
        engines.append(engine)
        close = engine.close

        def close_keeping_the_series() -> None:  # close() unregisters them: registered again to be read
            close()
            engine.metrics.register(engine.registry)

        monkeypatch.setattr(engine, "close", close_keeping_the_series)
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
    settings = PuppySettings.load(store="memory://", port=port, policies=policies, allow_no_policies=True)
    url = f"http://127.0.0.1:{port}/metrics"

    thread, outcome = run_in_thread(
        settings=settings,
        duration=3,
        rate=20,
        live=False,
        console=Console(file=output, width=160),
        outage_at=0.5,  # the self-hosted server fails for a while, so failures are certain
        outage_for=1.5,
        spike_at=float("inf"),
        in_process=True,
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

    # Every model request was decided first; without policies, each was allowed and none denied.
    assert by_label(final, "otel_puppy_decisions_total", "action") == {"allow": summary.calls}
    assert (summary.denied_runs, summary.degraded_decisions, summary.alerts) == (0, 0, {})
    assert (summary.breaker_opened, summary.anomalies_fired) == (False, 0)

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
    settings = PuppySettings.load(store="memory://", port=free_port(), policies=tmp_path, allow_no_policies=True)
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
    for title in ("Decisions", "Breakers", "Anomalies firing", "Budgets", "Latest alerts"):
        assert title in text
    assert "scenario: self-hosted outage at 20s for 25s; research prompt spike at 90s for 45s" in text


@pytest.mark.long
def test_scaled_scenario_crosses_alerts_opens_and_closes_a_breaker_spikes_and_degrades(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped policies' story in 16 seconds: knobs and scenario scaled down together."""
    engines = capture_engines(monkeypatch)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "scaled.yaml").write_text(SCALED_POLICIES)
    settings = PuppySettings.load(store="memory://", port=free_port(), policies=policies)
    output = io.StringIO()

    summary = demo.run(
        settings,
        duration=16,
        rate=20,
        seed=11,
        live=False,
        console=Console(file=output, width=200),
        outage_at=2,
        outage_for=4,
        outage_every=float("inf"),
        spike_at=10,
        spike_for=6,
        in_process=True,
    )

    (engine,) = engines
    final = parse(generate_latest(engine.registry).decode())
    events = list(engine.alerts.recent)

    # Budget alerts: the fleet budget crossed 50%, 75% and 90%, each once (then 100%: emergency).
    budget_alerts = by_label(final, "otel_puppy_alerts_total", "severity", kind="budget", policy="fleet")
    assert budget_alerts == {"info": 1, "warning": 1, "critical": 1, "emergency": 1}
    assert [e.severity for e in events if e.kind == "budget" and e.policy == "fleet"] == [
        Severity.INFO,
        Severity.WARNING,
        Severity.CRITICAL,
        Severity.EMERGENCY,
    ]

    # The self-hosted outage opened its breaker; probes after the outage closed it again.
    transitions = by_label(final, "otel_puppy_breaker_transitions_total", "to", provider="self-hosted")
    assert transitions.keys() == {"open", "half_open", "closed"}
    changes = [e.message.split(": ", 1)[1] for e in events if e.kind == "breaker" and e.scope == "self-hosted"]
    assert changes[0] == "closed -> open"
    assert changes[-1] == "half_open -> closed"
    assert "open -> half_open" in changes
    assert {b.subject: b.state for b in engine.snapshot().breakers}["self-hosted"] == "closed"
    assert summary.breaker_opened

    # The research agent's prompt spike fired the spend-spike anomaly for it.
    assert total(final, "otel_puppy_anomalies_total") == summary.anomalies_fired > 0
    assert any(e.kind == "anomaly" and e.scope == "agent=research" for e in events)

    # openai-hourly degraded: billing (gpt-4.1) and scheduler (gpt-4o) calls went to gpt-4.1-mini.
    decisions = by_label(final, "otel_puppy_decisions_total", "action")
    assert decisions["degrade"] == summary.degraded_decisions > 0
    degraded = by_label(final, "otel_puppy_llm_requests_total", "agent", model="gpt-4.1-mini", outcome="ok")
    assert degraded.keys() >= {"billing", "scheduler"}

    # Every model call was decided first; each denied run was one deny decision and made no call.
    assert decisions["deny"] == summary.denied_runs > 0
    assert decisions["allow"] + decisions.get("warn", 0) + decisions["degrade"] == summary.calls
    assert summary.alerts.keys() == {"anomaly", "breaker", "budget"}

    text = output.getvalue()
    for figure in (f"{summary.denied_runs} denied", f"degraded {summary.degraded_decisions} decisions"):
        assert figure in text


# Small enough to be crossed within seconds: openai-hourly degrades, the research cap denies.
OTLP_POLICIES = """
budgets:
  - name: openai-hourly
    match: {provider: openai}
    limit_usd: 0.05
    window: 1h
    action: {degrade: gpt-4.1-mini}
  - name: research-cap
    match: {agent: research}
    limit_usd: 0.1
    window: 1h
    action: deny
"""


@pytest.mark.long
def test_fleet_processes_export_over_otlp_and_decide_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default path: the service in a thread, two spawned fleet processes, everything over HTTP."""
    engines = capture_engines(monkeypatch)
    port = free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "otlp.yaml").write_text(OTLP_POLICIES)
    settings = PuppySettings.load(store="memory://", port=port, policies=policies)
    output = io.StringIO()
    url = f"http://127.0.0.1:{port}/metrics"

    thread, outcome = run_in_thread(
        settings=settings,
        duration=6,
        rate=20,
        seed=5,
        live=False,
        console=Console(file=output, width=200),
        outage_at=1,
        outage_for=2,
        spike_at=float("inf"),
        fleet_processes=2,
    )
    live_scrape: dict[str, list[Sample]] | None = None
    while thread.is_alive():
        samples = scrape(url)
        if samples and total(samples, "otel_puppy_llm_requests_total") > 0:
            live_scrape = samples
        time.sleep(0.2)
    thread.join(timeout=60)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    summary: demo.DemoSummary = outcome["summary"]

    # The service answered /metrics while the fleet ran, with spans it received over OTLP.
    assert live_scrape is not None, "never saw a call on /metrics while the demo ran"
    assert labels(live_scrape, "otel_puppy_llm_requests_total", "service") == {demo.FLEET_SERVICE_NAME}
    assert f"http://127.0.0.1:{port}" in output.getvalue()
    assert summary.metrics_url == url

    # The service is gone: nothing listens on the port any more.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass

    (engine,) = engines
    final = parse(generate_latest(engine.registry).decode())
    assert summary.runs > 0
    assert summary.calls > 0

    # Every model request the fleet processes reported reached the service as an applied span.
    assert total(final, "otel_puppy_llm_requests_total") == summary.calls
    spans = by_label(final, "otel_puppy_spans_total", "result")
    assert spans["applied"] == summary.calls > 0
    assert "dropped" not in spans
    assert "rejected" not in spans
    assert "otel_puppy_internal_errors_total" not in final
    assert labels(final, "otel_puppy_llm_requests_total", "agent") == {spec.name for spec in demo.FLEET}

    # Spend: metrics, summary and store agree, to the nano-dollar.
    assert summary.spend_usd > 0
    assert total(final, "otel_puppy_llm_cost_usd_total") == pytest.approx(float(summary.spend_usd), abs=1e-9)
    assert sum(summary.spend_by_model.values(), Decimal(0)) == summary.spend_usd
    assert sum(summary.spend_by_agent.values(), Decimal(0)) == summary.spend_usd
    assert engine.snapshot().spend("24h") == summary.spend_usd

    # Every decision was made by the service, over HTTP: one before each model call, and one for
    # each denied run, which then made no call.
    decisions = by_label(final, "otel_puppy_decisions_total", "action")
    assert decisions.keys() <= {"allow", "warn", "degrade", "deny"}
    assert total(final, "otel_puppy_decisions_total") == sum(decisions.values()) > 0
    assert sum(decisions.values()) == summary.calls + summary.denied_runs
    assert decisions.get("deny", 0) == summary.denied_runs > 0
    assert decisions.get("degrade", 0) == summary.degraded_decisions > 0
    degraded = by_label(final, "otel_puppy_llm_requests_total", "agent", model="gpt-4.1-mini")
    assert degraded.keys() > {"support"}  # billing or scheduler went to gpt-4.1-mini

    # The self-hosted outage: failures, each of which ended its run.
    errors = by_label(final, "otel_puppy_llm_requests_total", "provider", outcome="error")
    assert errors.get("self-hosted", 0) > 0
    assert sum(errors.values()) == summary.failed_runs


def test_shipped_policies_load_and_fit_the_demo_scenario() -> None:
    policies = load_policies(SHIPPED_POLICIES)
    lines = policies.summary()
    kinds = {line.split(" ", 1)[0] for line in lines}
    assert kinds == {"budget", "anomaly", "breaker", "routing", "price"}

    budgets = {b.name: b for b in policies.budgets}
    assert budgets["org-daily"].alerts == (0.5, 0.75, 0.9)
    assert budgets["openai-hourly"].action == Degrade(degrade="gpt-4.1-mini")
    assert budgets["per-agent"].per == ("agent",)
    assert budgets["per-agent"].reserve == {Priority.CRITICAL: 0.10}
    assert budgets["tokens-per-user"].shadow
    assert [p.provider for p in policies.prices] == ["self-hosted"]

    # The timings fit the demo's default scenario: the anomaly has its minimum samples before the
    # spike, and the breaker probes soon enough after the outage to be closed again before it.
    defaults = {name: p.default for name, p in inspect.signature(demo.run).parameters.items()}
    (spike,) = policies.anomalies
    assert spike.per == ("agent",)
    assert spike.interval * (spike.min_samples + 1) < defaults["spike_at"]
    assert spike.interval * 2 < defaults["spike_for"]
    (breaker,) = policies.breakers
    assert breaker.per == ("provider",)
    assert defaults["outage_at"] + defaults["outage_for"] + breaker.recovery_timeout < defaults["spike_at"]
    (routing,) = policies.routing
    assert routing.match is not None
    assert routing.match.agent == ("summarizer",)
