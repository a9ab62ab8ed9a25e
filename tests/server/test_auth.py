"""Roles and scopes over HTTP (`server/auth.py`, the routes of `server/app.py`): every endpoint x role,
the 401/403 bodies, a scoped token's decisions and reads, expiry, the refusal counter and the audit log.

The app runs on a real uvicorn server in a thread; the same against `otel-puppy serve` with a tokens
file that changes under it is tests/test_tokens_service.py.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from google.rpc import status_pb2  # type: ignore[import-untyped]
from prometheus_client.registry import CollectorRegistry

from otel_puppy.client import DecisionClient, DecisionServiceError
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import load_policies
from otel_puppy.server import auth
from otel_puppy.server.app import ROUTE_ROLES, create_app
from otel_puppy.server.auth import OPEN_PATHS
from otel_puppy.server.scoping import SCOPED_READ_FORBIDDEN
from otel_puppy.server.tokens import Keyring
from otel_puppy.settings import PuppySettings
from otel_puppy.store.memory import MemoryStore
from otel_puppy.testing import FakeClock, make_call
from tests._serving import serve
from tests.test_tokens import Spec, write_tokens

POLICIES = """
budgets:
  - {name: org, limit_usd: 100, window: day}
  - {name: per-team, per: [team], limit_usd: 10, window: day, action: deny}
  - {name: search-daily, match: {team: search}, limit_usd: 5, window: day}
  - {name: ads-daily, match: {team: ads}, limit_usd: 0.000001, window: day, action: deny}
anomalies:
  - {name: team-spikes, signal: cost_rate, per: [team]}
"""
OPERATOR = "operator-secret-0123456789"

INGEST = Spec("collector", ("ingest",))
DECIDE = Spec("agents", ("decide",))
READ = Spec("grafana", ("read",))
ADMIN = Spec("ops", ("admin",))
READ_DECIDE = Spec("dashboard-agent", ("read", "decide"))
SEARCH_READ = Spec("grafana-search", ("read", "decide"), {"team": "search"})
SEARCH_DECIDE = Spec("agents-search", ("decide",), {"team": "search"})
SEARCH_INGEST = Spec("collector-search", ("ingest",), {"team": "search"})
EXPIRING = Spec("temp", ("read",), expires="2026-01-02")
SPECS = (INGEST, DECIDE, READ, ADMIN, READ_DECIDE, SEARCH_READ, SEARCH_DECIDE, SEARCH_INGEST, EXPIRING)

BODIES: dict[str, dict[str, Any]] = {
    "/v1/decide": {"json": {"provider": "openai", "model": "gpt-4.1"}},
    "/v1/traces": {"content": b"", "headers": {"content-type": "application/x-protobuf"}},
}


@dataclass
class Served:
    engine: PolicyEngine
    keyring: Keyring
    client: httpx.Client
    clock: FakeClock
    tokens: Path


@pytest.fixture(autouse=True)
def _fresh_audit_log() -> None:
    """One audit line per (outcome, token, endpoint) a minute: a test reading one must not find it spent."""
    auth._AUDIT_LOG.reset()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "budgets.yaml").write_text(POLICIES)
    tokens = write_tokens(tmp_path / "tokens.yaml", SPECS)
    clock = FakeClock(1_767_225_600.0)  # 2026-01-01T00:00:00Z: EXPIRING has a day left
    settings = PuppySettings.load(store="memory://", policies=policies, api_token=OPERATOR, watch_policies_s=None)
    engine = PolicyEngine(
        settings,
        policies=load_policies(policies),
        store=MemoryStore(),
        clock=clock,
        registry=CollectorRegistry(auto_describe=True),
    )
    keyring = Keyring(tokens, api_token=OPERATOR)
    assert settings.tokens_path == tokens  # found beside the policies
    with serve(create_app(engine, keyring=keyring)) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield Served(engine, keyring, client, clock, tokens)
    engine.close()


def request(client: httpx.Client, method: str, path: str, spec: Spec | None) -> httpx.Response:
    kwargs = BODIES.get(path, {})
    headers = {**kwargs.get("headers", {}), **(spec.header if spec is not None else {})}
    return client.request(method, path, headers=headers, **{k: v for k, v in kwargs.items() if k != "headers"})


def test_every_route_has_a_role_but_the_probes_and_the_documents(served: Served) -> None:
    app = create_app(served.engine, keyring=served.keyring)
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documents = {("GET", "/docs"), ("GET", "/redoc")}
    assert routes - set(ROUTE_ROLES) == {("GET", p) for p in OPEN_PATHS} | documents
    assert set(ROUTE_ROLES) <= routes


def test_every_endpoint_answers_each_role_200_or_403_naming_the_role(served: Served) -> None:
    operator = Spec(
        "OTEL_PUPPY_API_TOKEN", ("ingest", "decide", "read", "admin"), secret=OPERATOR
    )  # the single token keeps every role
    for (method, path), role in ROUTE_ROLES.items():
        for spec in (*SPECS, operator):
            response = request(served.client, method, path, spec)
            scoped = bool(spec.scope) and role in spec.roles and path in SCOPED_READ_FORBIDDEN
            if role in spec.roles and not scoped:
                assert response.status_code == 200, (method, path, spec.name, response.text)
                continue
            assert response.status_code == 403, (method, path, spec.name, response.text)
            assert response.headers["www-authenticate"] == 'Bearer realm="otel_puppy", error="insufficient_scope"'
            if path == "/v1/traces":
                status = status_pb2.Status.FromString(response.content)  # in the request's encoding
                assert status.code == 7  # PERMISSION_DENIED
                has = ",".join(r for r in ("ingest", "decide", "read", "admin") if r in spec.roles)
                assert status.message == f"POST /v1/traces needs the 'ingest' role; the token {spec.name!r} has {has}"
            elif scoped:
                assert response.json() == {
                    "code": "out_of_scope",
                    "message": f"{method} {path} is not split by scope; the token {spec.name!r} is scoped to "
                    "team=search (an unscoped 'read' token reads it)",
                }
            else:
                assert response.json() == {
                    "code": "missing_role",
                    "message": f"{method} {path} needs the {role.value!r} role; the token {spec.name!r} has "
                    f"{','.join(r for r in ('ingest', 'decide', 'read', 'admin') if r in spec.roles)}",
                }
        anonymous = request(served.client, method, path, None)
        assert anonymous.status_code == 401, (method, path)
        wrong = request(served.client, method, path, Spec("nobody", ("read",)))
        assert wrong.status_code == 401, (method, path)
    for path in ("/openapi.json", "/docs"):  # the documents: any valid token
        for spec in SPECS:
            assert request(served.client, "GET", path, spec).status_code == 200, (path, spec.name)
        assert request(served.client, "GET", path, None).status_code == 401
    for path in OPEN_PATHS:
        assert request(served.client, "GET", path, None).status_code == 200
    assert request(served.client, "GET", "/v1/nothing", READ).status_code == 404
    assert request(served.client, "GET", "/v1/nothing", None).status_code == 401


def test_an_otlp_refusal_speaks_protobuf_to_a_protobuf_exporter(served: Served) -> None:
    response = served.client.post(
        "/v1/traces", content=b"", headers={"content-type": "application/x-protobuf", **READ.header}
    )
    assert (response.status_code, response.headers["content-type"]) == (403, "application/x-protobuf")
    status = status_pb2.Status.FromString(response.content)
    assert (status.code, status.message) == (7, "POST /v1/traces needs the 'ingest' role; the token 'grafana' has read")


def test_a_scoped_decide_token_decides_for_its_team_only(served: Served) -> None:
    client = served.client
    ask = {"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": "0.01", "reserve": False}
    # the ads team's own token: ads-daily is exhausted by any estimate, so ads is denied
    ads = client.post("/v1/decide", json={**ask, "team": "ads"}, headers=DECIDE.header)
    assert ads.json()["action"] == "deny"
    # the search token cannot ask for ads
    refused = client.post("/v1/decide", json={**ask, "team": "ads"}, headers=SEARCH_DECIDE.header)
    assert refused.status_code == 403
    assert refused.json() == {
        "code": "out_of_scope",
        "message": "this token is scoped to team=search: a request cannot name another team "
        "(leave team out, or send 'search')",
    }
    # without a team, the token's fills in: the search budgets apply, never the ads ones
    for body in (ask, {**ask, "team": "search"}):
        decision = client.post("/v1/decide", json=body, headers=SEARCH_DECIDE.header).json()
        assert decision["action"] == "allow"
        assert {hit["policy"] for hit in decision["reasons"]} >= {"per-team", "search-daily"}
        assert "ads-daily" not in {hit["policy"] for hit in decision["reasons"]}
    # a reserving decision reserves on the search team's budgets
    reserved = client.post("/v1/decide", json={**ask, "reserve": True}, headers=SEARCH_DECIDE.header).json()
    assert Decimal(reserved["reserved_usd"]) == Decimal("0.01")
    assert served.engine.snapshot().budget("per-team", "team=search").reserved_usd == Decimal("0.01")


def test_a_scoped_read_token_sees_its_teams_budgets_and_anomalies_only(served: Served) -> None:
    engine = served.engine
    for team in ("search", "ads"):
        engine.observe(replace(make_call(end_s=served.clock.now() - 1), team=team))
    everything = {
        (b["policy"], b["scope"]) for b in served.client.get("/v1/budgets", headers=READ.header).json()["budgets"]
    }
    assert everything == {
        ("org", ""),
        ("per-team", "team=search"),
        ("per-team", "team=ads"),
        ("search-daily", ""),
        ("ads-daily", ""),
    }
    for spec in (SEARCH_READ,):
        budgets = served.client.get("/v1/budgets", headers=spec.header).json()["budgets"]
        assert {(b["policy"], b["scope"]) for b in budgets} == {("per-team", "team=search"), ("search-daily", "")}
        anomalies = served.client.get("/v1/anomalies", headers=spec.header).json()["anomalies"]
        assert {a["subject"] for a in anomalies} <= {"team=search"}
        breakers = served.client.get("/v1/breakers", headers=spec.header)
        assert breakers.status_code == 200  # per provider: shared, shown to every reader


def test_an_expired_token_is_refused_from_its_expiry_on(served: Served) -> None:
    assert served.client.get("/v1/budgets", headers=EXPIRING.header).status_code == 200
    served.clock.advance(86_400)  # 2026-01-02T00:00:00Z
    response = served.client.get("/v1/budgets", headers=EXPIRING.header)
    assert response.status_code == 401
    assert response.json() == {"code": "unauthorized", "message": "the token 'temp' expired at 2026-01-02T00:00:00Z"}
    assert response.headers["www-authenticate"] == 'Bearer realm="otel_puppy", error="invalid_token"'


def test_refusals_are_counted_by_reason_and_role_and_logged_by_token_name(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    client = served.client
    with caplog.at_level(logging.INFO, logger="otel_puppy.audit"):
        client.get("/v1/budgets")  # missing
        client.get("/v1/budgets", headers={"Authorization": f"Basic {READ.secret}"})  # malformed
        client.get("/v1/budgets", headers={"Authorization": "Bearer not-a-token"})  # invalid
        for _ in range(3):
            client.get("/v1/budgets", headers=INGEST.header)  # role, three times: one line
        client.post("/v1/decide", json={"provider": "p", "model": "m", "team": "ads"}, headers=SEARCH_DECIDE.header)
        client.get("/metrics", headers=SEARCH_READ.header)  # scope
        client.post("/v1/policies/reload", headers=ADMIN.header)  # an admin action
    registry = served.engine.registry

    def refusals(reason: str, role: str) -> float | None:
        return registry.get_sample_value("otel_puppy_auth_refusals_total", {"reason": reason, "role": role})

    assert [refusals(*key) for key in [("missing", "read"), ("malformed", "read"), ("invalid", "read")]] == [1, 1, 1]
    assert (refusals("role", "read"), refusals("scope", "decide"), refusals("scope", "read")) == (3, 1, 1)
    lines = [record.getMessage() for record in caplog.records if record.name == "otel_puppy.audit"]
    assert lines == [
        "auth: refused GET /v1/budgets (401 missing): token none, endpoint needs role read",
        "auth: refused GET /v1/budgets (401 malformed): token none, endpoint needs role read",
        "auth: refused GET /v1/budgets (401 invalid): token unknown, endpoint needs role read",
        "auth: refused GET /v1/budgets (403 role): token collector, endpoint needs role read",
        "auth: refused POST /v1/decide (403 scope): token agents-search, endpoint needs role decide",
        "auth: refused GET /metrics (403 scope): token grafana-search, endpoint needs role read",
        "audit: token ops (role admin) POST /v1/policies/reload -> 200",
    ]
    scraped = client.get("/metrics", headers=READ.header).text
    assert 'otel_puppy_auth_refusals_total{reason="role",role="read"} 3.0' in scraped
    for spec in SPECS:  # no secret in any log line nor in the metrics
        assert spec.secret not in caplog.text + scraped
    assert OPERATOR not in caplog.text + scraped


def test_each_bearer_token_costs_one_comparison_whatever_the_number_of_tokens(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    many = [Spec(f"t{i}", ("read",)) for i in range(200)]
    write_tokens(served.tokens, [*SPECS, *many])
    assert served.keyring.check()
    for spec in (READ, many[-1], Spec("unknown", ("read",)), INGEST):
        compared.clear()
        served.client.get("/v1/breakers", headers=spec.header)
        assert compared == [(32, 32)], spec.name


def test_the_document_says_which_role_each_operation_needs_and_that_403_may_answer(served: Served) -> None:
    document = served.client.get("/openapi.json", headers=READ.header).json()
    for (method, path), role in ROUTE_ROLES.items():
        operation = document["paths"][path][method.lower()]
        assert operation["x-otel-puppy-role"] == role.value
        assert "403" in operation["responses"], path
        assert f"`{role.value}`" in operation["responses"]["403"]["description"]
    assert "out_of_scope" not in str(document["paths"]["/healthz"])
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_the_decision_client_sends_its_token_and_is_told_what_it_lacks(served: Served) -> None:
    url = str(served.client.base_url)
    with DecisionClient(url, api_token=SEARCH_DECIDE.secret, retries=0) as client:
        decision = client.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.01", reserve=False)
        assert "search-daily" in {hit.policy for hit in decision.reasons}
        with pytest.raises(DecisionServiceError) as info:
            client.decide(provider="openai", model="gpt-4.1", team="ads")
        assert (info.value.status_code, info.value.code) == (403, "out_of_scope")
    with DecisionClient(url, api_token=READ.secret, retries=0) as client, pytest.raises(DecisionServiceError) as info:
        client.decide(provider="openai", model="gpt-4.1")
    assert (info.value.status_code, info.value.code) == (403, "missing_role")
    assert "needs the 'decide' role" in info.value.message
    assert client.failures == 0  # refused, never failed open
