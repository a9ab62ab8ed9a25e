"""Least privilege against a real `otel-puppy serve` with a tokens file: every endpoint x role, a team's
tokens kept to their team, a token revoked without a restart, a broken file never in force, no secret
ever printed, and the command line's clients with a scoped token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_puppy.money import usd_to_nanos
from otel_puppy.server.app import ROUTE_ROLES
from otel_puppy.server.scoping import SCOPED_READ_FORBIDDEN
from otel_puppy.server.tokens import TOKENS_POLL_S
from tests._service import CHAT_CALL, NANOS, Service, cli, environment, export, free_port, service
from tests.test_tokens import Spec, tokens_yaml, write_tokens

POLICIES = """
budgets:
  - {name: org, limit_usd: 100, window: day}
  - {name: per-team, per: [team], limit_usd: 10, window: day, action: deny}
  - {name: search-daily, match: {team: search}, limit_usd: 5, window: day}
  - {name: ads-daily, match: {team: ads}, limit_usd: 0.000001, window: day, action: deny}
"""
OPERATOR = "operator-secret-for-the-service-tests"

INGEST = Spec("collector", ("ingest",))
DECIDE = Spec("agents", ("decide",))
READ = Spec("prometheus", ("read",))
ADMIN = Spec("ops", ("admin",))
SEARCH_READ = Spec("grafana-search", ("read", "decide"), {"team": "search"})
SEARCH_DECIDE = Spec("agents-search", ("decide",), {"team": "search"})
SEARCH_INGEST = Spec("collector-search", ("ingest",), {"team": "search"})
ADS_INGEST = Spec("collector-ads", ("ingest",), {"team": "ads"})
SPECS = (INGEST, DECIDE, READ, ADMIN, SEARCH_READ, SEARCH_DECIDE, SEARCH_INGEST, ADS_INGEST)
ALL = Spec("OTEL_PUPPY_API_TOKEN", ("ingest", "decide", "read", "admin"), secret=OPERATOR)
BODIES: dict[str, dict[str, Any]] = {
    "/v1/decide": {"json": {"provider": "openai", "model": "gpt-4.1"}},
    "/v1/traces": {"content": b"", "headers": {"content-type": "application/x-protobuf"}},
}


@dataclass
class Running:
    service: Service
    directory: Path
    tokens: Path

    @property
    def url(self) -> str:
        return self.service.url


@contextmanager
def start(directory: Path, specs: tuple[Spec, ...] = SPECS, **settings: str) -> Iterator[Running]:
    policies = directory / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "budgets.yaml").write_text(POLICIES)
    tokens = write_tokens(directory / "tokens.yaml", specs)  # beside the policies: found without a setting
    env = environment(api_token=OPERATOR, **settings)
    with service(directory, "--policies", str(policies), env=env) as running:
        yield Running(running, directory, tokens)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with start(tmp_path_factory.mktemp("tokens-service")) as started:
        yield started


def call(client: httpx.Client, method: str, path: str, spec: Spec | None) -> httpx.Response:
    kwargs = BODIES.get(path, {})
    headers = {**kwargs.get("headers", {}), **(spec.header if spec is not None else {})}
    body = {k: v for k, v in kwargs.items() if k != "headers"}
    return client.request(method, path, headers=headers, **body)


def client_of(url: str) -> httpx.Client:
    """One client for a test's many requests (building one, with its TLS context, takes 20 ms)."""
    return httpx.Client(base_url=url, timeout=10)


def team_spans(count: int, team: str) -> list[ReadableSpan]:
    """`count` gpt-4.1 chat spans (1,000 in, 100 out) claiming `team`."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bot"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    for _ in range(count):
        attributes = {**CHAT_CALL, "otel_puppy.team": team}
        with tracer.start_as_current_span("chat gpt-4.1", kind=SpanKind.CLIENT, attributes=attributes):
            pass
    provider.shutdown()
    return list(exporter.get_finished_spans())


def budgets(url: str, spec: Spec) -> dict[tuple[str, str], int]:
    response = httpx.get(f"{url}/v1/budgets", headers=spec.header, timeout=10)
    assert response.status_code == 200, response.text
    return {(b["policy"], b["scope"]): usd_to_nanos(Decimal(b["spent_usd"])) for b in response.json()["budgets"]}


# --- every endpoint x role ---------------------------------------------------------------------------


def test_every_endpoint_answers_every_role_as_the_table_says(running: Running) -> None:
    with client_of(running.url) as client:
        for (method, path), role in ROUTE_ROLES.items():
            for spec in (*SPECS, ALL):
                response = call(client, method, path, spec)
                allowed = role.value in spec.roles and not (spec.scope and path in SCOPED_READ_FORBIDDEN)
                assert response.status_code == (200 if allowed else 403), (method, path, spec.name, response.text)
                if not allowed and path != "/v1/traces":
                    assert role.value in response.json()["message"] or "scope" in response.json()["message"]
            assert call(client, method, path, None).status_code == 401, (method, path)
            assert call(client, method, path, Spec("stranger", ("read",))).status_code == 401, (method, path)
        for path in ("/healthz", "/readyz"):
            assert call(client, "GET", path, None).status_code == 200


def test_a_team_scoped_decide_token_cannot_decide_nor_read_for_another_team(running: Running) -> None:
    url = running.url
    ask = {"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": "0.01"}
    # the ads team's budget is spent by any estimate: a decision for ads is a deny
    assert httpx.post(f"{url}/v1/decide", json={**ask, "team": "ads"}, headers=DECIDE.header).json()["action"] == "deny"
    refused = httpx.post(f"{url}/v1/decide", json={**ask, "team": "ads"}, headers=SEARCH_DECIDE.header)
    assert (refused.status_code, refused.json()["code"]) == (403, "out_of_scope")
    decision = httpx.post(f"{url}/v1/decide", json=ask, headers=SEARCH_DECIDE.header).json()
    assert decision["action"] == "allow"
    assert {hit["policy"] for hit in decision["reasons"]} == {"org", "per-team", "search-daily"}
    # reading: a decide token reads nothing; the scoped reader reads its team's budgets only
    assert httpx.get(f"{url}/v1/budgets", headers=SEARCH_DECIDE.header).status_code == 403
    httpx.post(f"{url}/v1/decide", json={**ask, "team": "ads"}, headers=DECIDE.header)  # an ads instance exists
    assert ("per-team", "team=ads") in budgets(url, READ)
    assert set(budgets(url, SEARCH_READ)) == {("per-team", "team=search"), ("search-daily", "")}


def test_a_scoped_ingest_tokens_spans_land_on_its_team_whatever_team_they_claim(running: Running) -> None:
    url = running.url
    before = budgets(url, READ)
    spans = team_spans(2, "ads")  # spans from search's Collector that claim to be the ads team's
    assert export(url, spans, headers=SEARCH_INGEST.header) is SpanExportResult.SUCCESS
    after = budgets(url, READ)
    assert after[("per-team", "team=search")] - before.get(("per-team", "team=search"), 0) == 2 * NANOS
    assert after[("search-daily", "")] - before.get(("search-daily", ""), 0) == 2 * NANOS
    assert after.get(("ads-daily", ""), 0) == before.get(("ads-daily", ""), 0)

    # one team cannot pre-send another team's spans to suppress their spend: the dedupe keys differ
    theirs = team_spans(3, "ads")
    assert export(url, theirs, headers=SEARCH_INGEST.header) is SpanExportResult.SUCCESS  # sent first, by search
    assert export(url, theirs, headers=ADS_INGEST.header) is SpanExportResult.SUCCESS
    assert export(url, theirs, headers=ADS_INGEST.header) is SpanExportResult.SUCCESS  # a retry: once
    final = budgets(url, READ)
    assert final[("per-team", "team=ads")] - after.get(("per-team", "team=ads"), 0) == 3 * NANOS
    assert final[("per-team", "team=search")] - after[("per-team", "team=search")] == 3 * NANOS


def test_the_command_lines_clients_use_a_scoped_token(running: Running) -> None:
    env = environment(api_token=SEARCH_READ.secret)
    where, url = running.directory, running.url
    ask = ("decide", "--url", url, "--provider", "openai", "--model", "gpt-4.1")
    with ThreadPoolExecutor(3) as clients:  # at once: they only read and ask, and each takes 0.6 s of CPU to start
        reading = clients.submit(cli, where, "status", "--url", url, env=env)
        asking = clients.submit(cli, where, *ask, env=env)
        refusing = clients.submit(cli, where, "status", "--url", url, env=environment(api_token=INGEST.secret))
    status, decide, refused = reading.result(), asking.result(), refusing.result()
    assert status.returncode == 0, status.stderr
    assert "policies: not shown to this token: GET /v1/policies is not split by scope" in status.stdout
    assert "health: not shown to this token" in status.stdout
    assert "search-daily" in status.stdout
    assert "ads-daily" not in status.stdout
    assert decide.returncode == 0, decide.stderr
    assert "search-daily" in decide.stdout
    assert refused.returncode == 1
    assert "needs the 'read' role; the token 'collector' has ingest" in refused.stderr


def test_no_secret_is_ever_printed_nor_exported(running: Running) -> None:
    """Every token, used here once more (the tests above may run in another test process), and every
    request above that ran in this one, refused or not, has gone through the log."""
    with client_of(running.url) as client:
        for spec in (*SPECS, ALL):  # the ingest tokens and `decide` ones are refused, by name
            call(client, "GET", "/v1/budgets", spec)
    scraped = httpx.get(f"{running.url}/metrics", headers=READ.header, timeout=10).text
    output = running.service.output()
    assert "auth: refused" in output  # the audit lines are there, by token name
    assert "token collector" in output
    for spec in (*SPECS, ALL):
        assert spec.secret not in output + scraped, spec.name
    assert metric_value(scraped, "otel_puppy_auth_refusals_total", reason="role", role="read") >= 1


def metric_value(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


# --- the file changes under a running service --------------------------------------------------------


def test_a_token_removed_from_the_file_stops_working_without_a_restart(tmp_path: Path) -> None:
    with start(tmp_path) as running, client_of(running.url) as client:
        pid = running.service.process.pid
        assert call(client, "GET", "/v1/budgets", READ).status_code == 200
        write_tokens(running.tokens, [s for s in SPECS if s is not READ])
        removed = time.monotonic()
        while call(client, "GET", "/v1/budgets", READ).status_code == 200:
            assert time.monotonic() - removed < TOKENS_POLL_S + 2.0, "the revoked token still works"
            time.sleep(0.05)  # polling for the event (the reload), not waiting out time
        assert call(client, "GET", "/v1/budgets", READ).json()["message"] == "invalid bearer token"
        assert running.service.process.pid == pid
        assert running.service.process.poll() is None

        newcomer = Spec("newcomer", ("read",))
        write_tokens(running.tokens, [*SPECS, newcomer])
        added = time.monotonic()
        while call(client, "GET", "/v1/budgets", newcomer).status_code != 200:
            assert time.monotonic() - added < TOKENS_POLL_S + 2.0, "the new token does not work"
            time.sleep(0.05)

        # a broken edit: reported with file:line:column, and the last good tokens stay in force
        running.tokens.write_text(tokens_yaml([newcomer]) + "  - name: half-written\n")
        while "cannot be used" not in running.service.output():
            assert time.monotonic() - added < 2 * TOKENS_POLL_S + 10.0, running.service.output()
            time.sleep(0.05)
        assert f"{running.tokens}:5:5: tokens[1].sha256: Field required" in running.service.output()
        assert call(client, "GET", "/v1/budgets", newcomer).status_code == 200
        assert call(client, "GET", "/v1/budgets", INGEST).status_code == 403  # still known: the last good file
        assert call(client, "GET", "/v1/budgets", ALL).status_code == 200  # the operator's token throughout
        assert "otel_puppy.audit" in running.service.output()


def test_serve_refuses_to_start_with_a_broken_tokens_file(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "budgets.yaml").write_text(POLICIES)
    (tmp_path / "tokens.yaml").write_text("tokens:\n  - name: a\n    roles: [read]\n")
    # nor binds beyond loopback without a token of any kind, and does with a tokens file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with ThreadPoolExecutor(2) as both:  # two processes at once: each takes a second of CPU to refuse
        broken = both.submit(cli, tmp_path, "serve", "--port", str(free_port()), "--policies", str(policies))
        beyond = both.submit(
            cli, elsewhere, "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--policies", str(elsewhere / "p")
        )
    result = broken.result()
    assert result.returncode == 1
    assert f"{tmp_path / 'tokens.yaml'}:2:5: tokens[0].sha256: Field required" in result.stderr
    result = beyond.result()
    assert result.returncode == 2
    assert "needs OTEL_PUPPY_API_TOKEN or a tokens file" in result.stderr
