"""The JSON API over a real server: decisions as in-process, state as data, auth, errors, OpenAPI."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response
from prometheus_client.registry import CollectorRegistry

import otel_puppy
from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.decision import Decision, DecisionRequest, PolicyHit, Priority
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PolicyErrors, StoreError
from otel_puppy.policies import load_policies, parse_policy_text
from otel_puppy.server.app import _RequestRoute, create_app
from otel_puppy.server.auth import AuthGate
from otel_puppy.server.schemas import (
    AnomaliesResponse,
    BreakersResponse,
    BudgetsResponse,
    DecisionResponse,
    HealthResponse,
    ModelsResponse,
)
from otel_puppy.settings import PuppySettings
from otel_puppy.store.memory import MemoryStore
from otel_puppy.store.sqlite import SQLiteStore
from otel_puppy.testing import FakeClock, engine_for_tests, make_call
from tests._serving import serve

POLICIES = """
budgets:
  - name: org-daily
    limit_usd: 0.02
    window: day
    action: deny
  - name: per-agent
    per: [agent]
    limit_usd: 0.005
    window: day
    action: {degrade: gpt-4.1-mini}
  - name: tokens-hourly
    limit_tokens: 1000
    window: hour
    action: deny
    shadow: true
breakers:
  - name: providers
    per: [provider]
    failure_threshold: 2
    recovery_timeout: 30s
    success_threshold: 1
    half_open_max_calls: 1
anomalies:
  - name: request-spike
    signal: request_rate
    per: [provider]
    interval: 1m
    baseline: 10m
    min_samples: 3
    threshold: {ratio: 3}
    action: warn
"""
TOKEN = "s3cret-token"


# --- a real server ----------------------------------------------------------------------------


@contextmanager
def client_for(engine: PolicyEngine, **options: Any) -> Iterator[httpx.Client]:
    """The app over `engine` on uvicorn, in a thread, on a loopback port (`tests._serving.serve`)."""
    with serve(create_app(engine, **options)) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


# --- state ------------------------------------------------------------------------------------


def call(
    engine: PolicyEngine,
    *,
    provider: str = "openai",
    model: str = "gpt-4.1",
    agent: str = "support",
    error: ErrorClass | None = None,
) -> LLMCall:
    return make_call(
        end_s=engine.clock.now(), provider=provider, model=model, agent=agent, error=error, service="support-bot"
    )


def build_state(engine: PolicyEngine) -> None:
    """openai: two calls by `support`, one by `research` ($0.0028 each); anthropic fails twice: open."""
    clock = engine.clock
    assert isinstance(clock, FakeClock)
    for _ in range(2):
        engine.observe(call(engine))
        clock.advance(60)
    engine.observe(call(engine, agent="research"))
    for _ in range(2):
        engine.observe(call(engine, provider="anthropic", model="claude-sonnet-4-5", error=ErrorClass.SERVER_ERROR))


def engine_with(policies: str = POLICIES, **settings: Any) -> PolicyEngine:
    return engine_for_tests(parse_policy_text(policies, Path("policies/test.yaml")), **settings)


@pytest.fixture
def engine() -> Iterator[PolicyEngine]:
    engine = engine_with()
    build_state(engine)
    yield engine
    engine.close()


@pytest.fixture
def client(engine: PolicyEngine) -> Iterator[httpx.Client]:
    with client_for(engine) as client:
        yield client


# --- decisions --------------------------------------------------------------------------------

REQUESTS: list[dict[str, Any]] = [
    {"provider": "openai", "model": "gpt-4.1", "agent": "research", "estimated_cost_usd": "0.001"},
    {"provider": "openai", "model": "gpt-4.1", "agent": "support", "estimated_cost_usd": 0.0005},
    {"provider": "anthropic", "model": "claude-sonnet-4-5", "agent": "research"},
    {"provider": "openai", "model": "gpt-4.1", "agent": "batch", "estimated_cost_usd": "0.5", "priority": "bulk"},
    {"provider": "openai", "model": "gpt-4.1", "estimated_input_tokens": 2000, "estimated_output_tokens": 500},
]


def hits(hits: Any) -> list[tuple[str, str, str, str, str]]:
    return [(h.kind, h.policy, h.action.value, h.scope, h.message) for h in hits]


def test_decide_over_http_is_the_same_decision_as_in_process(engine: PolicyEngine, client: httpx.Client) -> None:
    twin = engine_with()
    build_state(twin)
    actions = []
    for body in REQUESTS:
        response = client.post("/v1/decide", json=body)
        assert response.status_code == 200, response.text
        data = response.json()
        DecisionResponse.model_validate(data)
        remote = Decision.from_dict(data)
        fields: dict[str, Any] = {**body}
        if "priority" in fields:
            fields["priority"] = Priority(fields["priority"])
        if "estimated_cost_usd" in fields:
            fields["estimated_cost_usd"] = Decimal(str(fields["estimated_cost_usd"]))
        local = twin.decide(DecisionRequest(**fields))
        assert (remote.action, remote.provider, remote.model) == (local.action, local.provider, local.model)
        assert hits(remote.reasons) == hits(local.reasons)
        assert hits(remote.shadow) == hits(local.shadow)
        # every field of every hit survives the trip, amounts and reset times included
        assert list(remote.reasons) == list(local.reasons)
        assert list(remote.shadow) == list(local.shadow)
        assert (remote.retry_after_s, remote.resets_at) == (local.retry_after_s, local.resets_at)
        assert remote.estimated_cost_usd == local.estimated_cost_usd
        assert remote.to_dict() == data  # from_dict round-trips the response exactly
        actions.append((remote.action.value, remote.model))
    twin.close()
    assert actions == [
        ("allow", "gpt-4.1"),
        ("degrade", "gpt-4.1-mini"),
        ("deny", "claude-sonnet-4-5"),
        ("deny", "gpt-4.1"),
        ("degrade", "gpt-4.1-mini"),  # the estimate is priced: $0.008 is over a per-agent budget
    ]


def test_decide_reserves_the_estimate(engine: PolicyEngine, client: httpx.Client) -> None:
    before = engine.snapshot().budget("org-daily").reserved_usd
    response = client.post(
        "/v1/decide", json={"provider": "openai", "model": "gpt-4.1", "agent": "x", "estimated_cost_usd": "0.003"}
    )
    assert response.json()["action"] == "allow"
    assert response.json()["decision_id"]
    assert before == Decimal(0)
    assert engine.snapshot().budget("org-daily").reserved_usd == Decimal("0.003")


def test_decide_on_sqlite_answers_on_the_event_loop_unless_someone_is_writing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    engine = PolicyEngine(
        PuppySettings.load(store="memory://"),
        policies=parse_policy_text(POLICIES, Path("policies/test.yaml")),
        store=SQLiteStore(path),
        clock=FakeClock(),
        registry=CollectorRegistry(auto_describe=True),
    )
    deciding_threads: list[str] = []
    decide = engine.decide

    def watched(*args: Any, **kwargs: Any) -> Decision:
        deciding_threads.append(threading.current_thread().name)
        return decide(*args, **kwargs)

    engine.decide = watched  # type: ignore[method-assign]
    body = {"provider": "openai", "model": "gpt-4.1", "agent": "x", "estimated_cost_usd": "0.0001"}
    with client_for(engine) as client:
        assert client.post("/v1/decide", json=body).json()["action"] == "allow"
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process writing: the decision waits in a worker thread
            timer = threading.Timer(0.3, other.execute, ("ROLLBACK",))
            timer.start()
            assert client.post("/v1/decide", json=body).json()["action"] == "allow"
            timer.join()
    assert deciding_threads[0] == "uvicorn"  # the server's event loop (`serving` runs it in this thread)
    assert deciding_threads[1] not in ("uvicorn", threading.main_thread().name)
    assert engine.snapshot().budget("org-daily").reserved_usd == Decimal("0.0002")
    engine.close()


def test_a_decision_without_an_estimate_reserves_the_learned_one_over_http() -> None:
    engine = engine_with("budgets:\n  - {name: org-daily, limit_usd: 100, window: day, action: deny}\n")
    for i in range(1, 31):  # gpt-4.1 at $2/$8 per million: call i costs 0.0028 * i
        call = make_call(end_s=engine.clock.now(), agent="support", input_tokens=1000 * i, output_tokens=100 * i)
        engine.observe(call)
    with client_for(engine) as client:
        response = client.post("/v1/decide", json={"provider": "openai", "model": "gpt-4.1", "agent": "support"})
        data = response.json()
        early = client.post("/v1/decide", json={"provider": "openai", "model": "gpt-4.1", "agent": "new"}).json()
    assert response.status_code == 200, data
    DecisionResponse.model_validate(data)
    # the nearest-rank p95 of 30 calls: the 29th smallest, 0.0028 * 29
    assert (data["estimate_source"], data["estimated_cost_usd"]) == ("learned", "0.081200000")
    assert Decision.from_dict(data).estimate_source == "learned"
    assert engine.snapshot().budget("org-daily").reserved_usd == 2 * Decimal("0.0812")  # both decisions hold it
    assert (early["estimate_source"], early["estimated_cost_usd"]) == ("learned", "0.081200000")  # provider and model's
    engine.close()


# --- state endpoints ----------------------------------------------------------------------------


def test_budgets_exact_json(client: httpx.Client) -> None:
    response = client.get("/v1/budgets")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "budgets": [
            {
                "kind": "budget",
                "policy": "org-daily",
                "action": "allow",
                "message": "budget org-daily: $0.008400000 of $0.02 this day (42%)",
                "scope": "",
                "severity": "info",
                "shadow": False,
                "spent_usd": "0.008400000",
                "limit_usd": "0.02",
                "spent_tokens": 3300,
                "limit_tokens": None,
                "reserved_usd": "0.000000000",
                "utilization": 0.42,
                "window": "day",
                "resets_at": "2026-01-02T00:00:00+00:00",
                "retry_after_s": None,
                "model": None,
                "spent_calls": None,
                "limit_calls": None,
            },
            {
                "kind": "budget",
                "policy": "per-agent",
                "action": "allow",
                "message": "budget per-agent for agent=research: $0.002800000 of $0.005 this day (56%)",
                "scope": "agent=research",
                "severity": "info",
                "shadow": False,
                "spent_usd": "0.002800000",
                "limit_usd": "0.005",
                "spent_tokens": 1100,
                "limit_tokens": None,
                "reserved_usd": "0.000000000",
                "utilization": 0.56,
                "window": "day",
                "resets_at": "2026-01-02T00:00:00+00:00",
                "retry_after_s": None,
                "model": "gpt-4.1-mini",
                "spent_calls": None,
                "limit_calls": None,
            },
            {
                "kind": "budget",
                "policy": "per-agent",
                "action": "degrade",
                "message": "budget per-agent for agent=support: $0.005600000 of $0.005 this day (112%); degrading",
                "scope": "agent=support",
                "severity": "emergency",
                "shadow": False,
                "spent_usd": "0.005600000",
                "limit_usd": "0.005",
                "spent_tokens": 2200,
                "limit_tokens": None,
                "reserved_usd": "0.000000000",
                "utilization": 1.12,
                "window": "day",
                "resets_at": "2026-01-02T00:00:00+00:00",
                "retry_after_s": None,
                "model": "gpt-4.1-mini",
                "spent_calls": None,
                "limit_calls": None,
            },
            {
                "kind": "budget",
                "policy": "tokens-hourly",
                "action": "deny",
                "message": "budget tokens-hourly: 3,300 of 1,000 tokens this hour (330%); denied",
                "scope": "",
                "severity": "emergency",
                "shadow": True,
                "spent_usd": "0.008400000",
                "limit_usd": None,
                "spent_tokens": 3300,
                "limit_tokens": 1000,
                "reserved_usd": "0.000000000",
                "utilization": 3.3,
                "window": "hour",
                "resets_at": "2026-01-01T01:00:00+00:00",
                "retry_after_s": 3480.0,
                "model": None,
                "spent_calls": None,
                "limit_calls": None,
            },
        ]
    }
    BudgetsResponse.model_validate(response.json())


def test_breakers_exact_json(client: httpx.Client) -> None:
    response = client.get("/v1/breakers")
    assert response.status_code == 200
    assert response.json() == {
        "breakers": [
            {
                "policy": "providers",
                "subject": "openai",
                "provider": "openai",
                "model": None,
                "state": "closed",
                "failures": 0,
                "successes": 0,
                "opened_at": None,
                "retry_at": None,
                "transitions": 0,
                "shadow": False,
            },
            {
                "policy": "providers",
                "subject": "anthropic",
                "provider": "anthropic",
                "model": None,
                "state": "open",
                "failures": 2,
                "successes": 0,
                "opened_at": 1_767_225_720.0,
                "retry_at": 1_767_225_750.0,
                "transitions": 1,
                "shadow": False,
            },
        ]
    }
    BreakersResponse.model_validate(response.json())


def test_anomalies_and_models_json(engine: PolicyEngine, client: httpx.Client) -> None:
    anomalies = client.get("/v1/anomalies").json()
    assert anomalies == {"anomalies": [status.to_dict() for status in engine.snapshot().anomalies]}
    AnomaliesResponse.model_validate(anomalies)
    subjects = {(a["policy"], a["signal"], a["subject"], a["firing"]) for a in anomalies["anomalies"]}
    assert subjects == {
        ("request-spike", "request_rate", "provider=openai", False),
        ("request-spike", "request_rate", "provider=anthropic", False),
    }

    models = client.get("/v1/models").json()
    ModelsResponse.model_validate(models)
    by_model = {(m["provider"], m["model"]): m for m in models["models"]}
    assert by_model[("openai", "gpt-4.1")] == {
        "provider": "openai",
        "model": "gpt-4.1",
        "requests": 3,
        "errors": 0,
        "success_rate": 1.0,
        "latency_p50_s": by_model[("openai", "gpt-4.1")]["latency_p50_s"],
        "latency_p95_s": by_model[("openai", "gpt-4.1")]["latency_p95_s"],
        "latency_p99_s": by_model[("openai", "gpt-4.1")]["latency_p99_s"],
        "tokens_per_request": 1100.0,
        "cost_per_request_usd": "0.0028",
        "cost_per_1k_tokens_usd": "0.002545454545454545454545454545",
    }
    assert by_model[("openai", "gpt-4.1")]["latency_p50_s"] == pytest.approx(2.0, rel=0.1)
    assert (
        by_model[("anthropic", "claude-sonnet-4-5")]["requests"],
        by_model[("anthropic", "claude-sonnet-4-5")]["errors"],
    ) == (2, 2)
    assert models == {"models": [stat.to_dict() for stat in engine.snapshot().models]}


def test_metrics_is_the_engines_registry(engine: PolicyEngine, client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    line = 'otel_puppy_breaker_state{model="",policy="providers",provider="anthropic"} 2.0'
    assert line in response.text.splitlines()
    labels = {"policy": "providers", "provider": "anthropic", "model": ""}
    assert engine.registry.get_sample_value("otel_puppy_breaker_state", labels) == 2.0


# --- health -----------------------------------------------------------------------------------


def test_health_reports_an_open_breaker(client: httpx.Client) -> None:
    response = client.get("/v1/health")
    assert response.status_code == 200
    health = response.json()
    HealthResponse.model_validate(health)
    indicators = {i["name"]: i for i in health["indicators"]}
    assert health["status"] == "degraded"
    assert indicators["open_breakers"] == {
        "name": "open_breakers",
        "value": 1.0,
        "threshold": 0,
        "status": "degraded",
        "message": "calls are refused or probed: providers for anthropic is open",
    }
    # the over-limit per-agent budget degrades, and does not deny: degraded, not unhealthy
    assert indicators["budget_utilization"] == {
        "name": "budget_utilization",
        "value": 1.12,
        "threshold": 0.9,
        "status": "degraded",
        "message": "fullest: per-agent for agent=support at 112% of its day limit; 1 over 90%",
    }
    assert indicators["error_rate"]["value"] == 0.4
    assert indicators["error_rate"]["status"] == "degraded"
    for name in ("store", "anomalies", "unpriced_share", "dropped_spans", "internal_errors"):
        assert indicators[name]["status"] == "healthy", indicators[name]
    assert set(indicators) == {
        "store",
        "open_breakers",
        "anomalies",
        "budget_utilization",
        "error_rate",
        "unpriced_share",
        "dropped_spans",
        "internal_errors",
    }
    assert set(health) == {"status", "at", "indicators", "recommendations", "trends"}
    assert health["at"] == "2026-01-01T00:02:00+00:00"
    assert [(r["kind"], r["provider"], r["alternative"]) for r in health["recommendations"]] == [
        ("budget", None, None),
        ("breaker", "anthropic", "openai:gpt-4.1"),
    ]
    assert health["trends"][0] == {
        "name": "cost",
        "direction": "stable",
        "change_pct": 0.0,
        "hourly": [{"hour": "2026-01-01T00:00:00+00:00", "value": 0.0084}],
    }


def test_health_is_healthy_with_nothing_wrong() -> None:
    engine = engine_with()
    engine.observe(call(engine))
    with client_for(engine) as client:
        health = client.get("/v1/health").json()
    engine.close()
    assert health["status"] == "healthy"
    assert {i["name"]: i["status"] for i in health["indicators"]} == dict.fromkeys(
        [
            "store",
            "open_breakers",
            "anomalies",
            "budget_utilization",
            "error_rate",
            "unpriced_share",
            "dropped_spans",
            "internal_errors",
        ],
        "healthy",
    )


def test_health_unpriced_share_and_exhausted_deny_budget() -> None:
    engine = engine_with()
    for index in range(8):  # $0.0028 each, one agent each: $0.0224 of the $0.02 org-daily deny budget
        engine.observe(call(engine, agent=f"agent-{index}"))
    engine.observe(call(engine, model="no-such-model-anywhere", agent="z"))
    with client_for(engine) as client:
        health = client.get("/v1/health").json()
    engine.close()
    indicators = {i["name"]: i for i in health["indicators"]}
    assert health["status"] == "unhealthy"
    assert indicators["unpriced_share"]["value"] == pytest.approx(1 / 9)
    assert indicators["unpriced_share"]["status"] == "degraded"
    assert indicators["unpriced_share"]["message"].startswith("1 of 9 calls since start could not be priced (11.1%)")
    assert indicators["budget_utilization"]["status"] == "unhealthy"
    assert indicators["budget_utilization"]["message"] == (
        "fullest: org-daily at 112% of its day limit; 1 over 90%, 1 denying calls"
    )


# --- policies -----------------------------------------------------------------------------------

GOOD = """
budgets:
  - name: org-daily
    limit_usd: 100
    window: day
    action: deny
"""
BROKEN = """
budgets:
  - name: org-daily
    limit_usd: -5
    window: fortnight
    action: deny
"""


def file_engine(path: Path) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store="memory://", policies=path, watch_policies_s=None),
        policies=load_policies(path),
        store=MemoryStore(),
        clock=FakeClock(),
        registry=CollectorRegistry(auto_describe=True),
    )


def test_reload_applies_good_files_and_refuses_broken_ones_keeping_the_running_set(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "budgets.yaml").write_text(GOOD)
    engine = file_engine(policies)
    with client_for(engine) as client:
        (policies / "budgets.yaml").write_text(GOOD.replace("100", "50"))
        response = client.post("/v1/policies/reload")
        assert response.status_code == 200
        assert response.json() == {
            "summary": load_policies(policies).summary(),
            "sources": [str(policies / "budgets.yaml")],
        }
        assert engine.policies.budgets[0].limit_usd == Decimal(50)

        (policies / "budgets.yaml").write_text(BROKEN)
        response = client.post("/v1/policies/reload")
        assert response.status_code == 422
        with pytest.raises(PolicyErrors) as raised:
            load_policies(policies)
        expected = [
            {"file": str(e.file), "line": e.line, "column": e.column, "path": e.path, "message": e.message}
            for e in raised.value.errors
        ]
        assert len(expected) == 2
        assert response.json() == {
            "code": "invalid_policies",
            "message": "2 errors in the policy files; the running policies stay in force",
            "errors": expected,
        }
        assert [(e["line"], e["path"]) for e in expected] == [(4, "budgets[0].limit_usd"), (5, "budgets[0].window")]
        # the running set stays
        assert engine.policies.budgets[0].limit_usd == Decimal(50)
        body = {"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": "60"}
        assert client.post("/v1/decide", json=body).json()["action"] == "deny"
    engine.close()


# --- auth -------------------------------------------------------------------------------------


def test_every_endpoint_but_the_probes_needs_the_token(tmp_path: Path) -> None:
    (tmp_path / "budgets.yaml").write_text(GOOD)
    engine = PolicyEngine(
        PuppySettings.load(store="memory://", policies=tmp_path, api_token=TOKEN, watch_policies_s=None),
        store=MemoryStore(),
        clock=FakeClock(),
        registry=CollectorRegistry(auto_describe=True),
    )
    app = create_app(engine)
    routes = [
        (method, getattr(route, "path", "")) for route in app.routes for method in sorted(getattr(route, "methods", ()))
    ]
    routes = [(m, p) for m, p in routes if m != "HEAD"]
    assert {p for _, p in routes} >= {
        "/v1/traces",
        "/v1/decide",
        "/v1/budgets",
        "/v1/breakers",
        "/v1/anomalies",
        "/v1/models",
        "/v1/health",
        "/v1/policies/reload",
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
    }
    bodies: dict[str, dict[str, Any]] = {
        "/v1/decide": {"json": {"provider": "openai", "model": "gpt-4.1"}},
        "/v1/traces": {"content": b"", "headers": {"content-type": "application/x-protobuf"}},
    }
    good = {"Authorization": f"Bearer {TOKEN}"}
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        for method, path in routes:
            kwargs = bodies.get(path, {})
            headers = {**kwargs.get("headers", {})}
            request = {k: v for k, v in kwargs.items() if k != "headers"}
            anonymous = client.request(method, path, headers=headers, **request)
            wrong = client.request(method, path, headers={**headers, "Authorization": "Bearer nope"}, **request)
            authorized = client.request(method, path, headers={**headers, **good}, **request)
            assert authorized.status_code == 200, (method, path, authorized.text)
            if path in ("/healthz", "/readyz"):
                assert anonymous.status_code == 200
                continue
            assert anonymous.status_code == 401, (method, path)
            assert anonymous.headers["www-authenticate"] == 'Bearer realm="otel_puppy"'
            assert wrong.status_code == 401
            assert wrong.headers["www-authenticate"] == 'Bearer realm="otel_puppy", error="invalid_token"'
            if path != "/v1/traces":
                assert anonymous.json() == {
                    "code": "unauthorized",
                    "message": "this endpoint needs 'Authorization: Bearer <token>'",
                }
                assert wrong.json() == {"code": "unauthorized", "message": "invalid bearer token"}
        # unknown paths too: no route is revealed without the token
        assert client.get("/v1/secret").status_code == 401
        assert client.get("/v1/secret", headers=good).status_code == 404
        basic = client.get("/v1/budgets", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401
        assert basic.json()["message"] == "the Authorization header must be 'Bearer <token>'"
        # OTLP clients get a google.rpc.Status in their encoding
        otlp = client.post("/v1/traces", content=b"{}", headers={"content-type": "application/json"})
        assert otlp.status_code == 401
        assert otlp.json() == {"code": 16, "message": "this endpoint needs 'Authorization: Bearer <token>'"}
    engine.close()


# --- errors -------------------------------------------------------------------------------------


def test_a_validation_message_stays_short_whatever_the_request_names(client: httpx.Client) -> None:
    """The client's own names are quoted as `bounds.shown` quotes any value (cut past 40 characters,
    escaped when not printable ASCII), and at most ten errors are listed: a request cannot make its error
    as long as itself."""
    long_name = client.get("/v1/costs", params={"x" * 5000: "1"})
    unprintable = client.get("/v1/costs?b%C3%BE=1&%0A=2")
    many = client.get("/v1/costs", params={f"p{i}": "1" for i in range(1000)})
    assert (long_name.status_code, long_name.json()["message"]) == (
        422,
        f"query.{'x' * 20}...(5000 characters): Extra inputs are not permitted",
    )
    assert unprintable.json()["message"] == (
        "query.'b\\xfe': Extra inputs are not permitted; query.'\\n': Extra inputs are not permitted"
    )
    listed = "; ".join(f"query.p{i}: Extra inputs are not permitted" for i in range(10))
    assert (many.status_code, many.json()["message"]) == (422, f"{listed}; and 990 more")


def test_validation_errors_name_the_field(client: httpx.Client) -> None:
    response = client.post(
        "/v1/decide",
        json={"provider": "openai", "priority": "urgent", "estimated_cost_usd": "abc", "capabilities": ["x", 3]},
    )
    assert response.status_code == 422
    assert response.json() == {
        "code": "invalid_request",
        "message": "body.model: Field required; "
        "body.priority: Input should be 'critical', 'high', 'normal', 'low' or 'bulk'; "
        "body.estimated_cost_usd: Input should be a valid decimal; "
        "body.capabilities[1]: Input should be a valid string",
    }
    response = client.post("/v1/decide", json={"provider": "openai", "model": "m", "estimated_cost": 1})
    assert response.json() == {
        "code": "invalid_request",
        "message": "body.estimated_cost: Extra inputs are not permitted",
    }
    response = client.post("/v1/decide", json={"provider": "openai", "model": "m", "estimated_cost_usd": -1})
    assert response.json()["message"] == "body.estimated_cost_usd: Input should be greater than or equal to 0"
    response = client.post("/v1/decide", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert response.json()["message"].startswith("body is not valid JSON")


def test_not_found_method_not_allowed_and_too_large_are_json(client: httpx.Client) -> None:
    response = client.get("/v1/nothing")
    assert (response.status_code, response.json()) == (
        404,
        {"code": "not_found", "message": "no such endpoint: GET /v1/nothing"},
    )
    response = client.get("/v1/decide")
    assert response.status_code == 405
    assert response.json() == {"code": "method_not_allowed", "message": "GET is not allowed on /v1/decide"}
    assert response.headers["allow"] == "POST"
    huge = b'{"provider": "' + b"x" * (2 * 1024 * 1024) + b'", "model": "m"}'
    response = client.post("/v1/decide", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {
        "code": "content_too_large",
        "message": "request body is over the limit of 1048576 bytes",
    }


def test_store_failure_is_503_json_with_retry_after(
    engine: PolicyEngine, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> object:
        raise StoreError("database is locked")

    monkeypatch.setattr(engine.store, "totals", broken)
    response = client.get("/v1/budgets")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"code": "store_unavailable", "message": "state store unavailable: database is locked"}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "code": "not_ready",
        "message": "the store failed a read (StoreError); see the service log",
    }
    health = client.get("/v1/health").json()
    assert health["status"] == "unhealthy"
    assert health["indicators"][0] == {
        "name": "store",
        "value": None,
        "threshold": 0.1,
        "status": "unhealthy",
        "message": "store failed: database is locked",
    }
    assert client.get("/healthz").json() == {"status": "ok"}


def test_probes(client: httpx.Client) -> None:
    assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (200, {"status": "ok"})
    assert (client.get("/readyz").status_code, client.get("/readyz").json()) == (200, {"status": "ready"})


# --- OpenAPI ------------------------------------------------------------------------------------


def test_the_otlp_route_is_served_by_its_endpoint_alone() -> None:
    """`POST /v1/traces` skips FastAPI's request pipeline: its handler is the endpoint itself, which
    works only for an endpoint taking the `Request` alone, so any other is refused when built."""
    engine = engine_for_tests()
    try:
        route = next(route for route in create_app(engine).routes if getattr(route, "path", "") == "/v1/traces")
    finally:
        engine.close()
    assert isinstance(route, _RequestRoute)
    assert route.get_route_handler() is route.endpoint

    async def two(request: Request, limit: int) -> Response:
        raise AssertionError("never called")

    async def one() -> int:
        return 1

    async def depends(request: Request, value: int = Depends(one)) -> Response:
        raise AssertionError("never called")

    for endpoint in (two, depends):
        with pytest.raises(TypeError, match="takes the Request alone"):
            _RequestRoute("/x", endpoint, methods=["POST"])
    with pytest.raises(TypeError, match="takes the Request alone"):
        _RequestRoute("/x", route.endpoint, methods=["POST"], dependencies=[Depends(one)])


def test_openapi_lists_every_endpoint_with_its_schemas(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    assert document["info"] == {
        "title": "otel_puppy",
        "version": otel_puppy.__version__,
        "summary": "Cost and reliability control for LLM agents, inside the OpenTelemetry pipeline.",
    }
    paths = document["paths"]

    def ok_schema(path: str, method: str) -> Any:
        return paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]

    assert {
        (path, method): ok_schema(path, method)
        for path, method in [
            ("/v1/decide", "post"),
            ("/v1/budgets", "get"),
            ("/v1/breakers", "get"),
            ("/v1/anomalies", "get"),
            ("/v1/models", "get"),
            ("/v1/health", "get"),
            ("/v1/policies/reload", "post"),
            ("/healthz", "get"),
            ("/readyz", "get"),
        ]
    } == {
        ("/v1/decide", "post"): "#/components/schemas/DecisionResponse",
        ("/v1/budgets", "get"): "#/components/schemas/BudgetsResponse",
        ("/v1/breakers", "get"): "#/components/schemas/BreakersResponse",
        ("/v1/anomalies", "get"): "#/components/schemas/AnomaliesResponse",
        ("/v1/models", "get"): "#/components/schemas/ModelsResponse",
        ("/v1/health", "get"): "#/components/schemas/HealthResponse",
        ("/v1/policies/reload", "post"): "#/components/schemas/ReloadResponse",
        ("/healthz", "get"): "#/components/schemas/LiveResponse",
        ("/readyz", "get"): "#/components/schemas/ReadyResponse",
    }
    decide = paths["/v1/decide"]["post"]
    assert decide["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DecideRequest"
    }
    assert decide["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    reload_422 = paths["/v1/policies/reload"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert reload_422 == {"$ref": "#/components/schemas/InvalidPoliciesResponse"}
    assert set(paths["/v1/traces"]["post"]["requestBody"]["content"]) == {"application/x-protobuf", "application/json"}
    assert set(paths["/v1/traces"]["post"]["responses"]) == {"200", "400", "401", "413", "415", "503"}
    assert "text/plain; version=1.0.0; charset=utf-8" in paths["/metrics"]["get"]["responses"]["200"]["content"]

    schemas = document["components"]["schemas"]
    request = schemas["DecideRequest"]
    assert request["required"] == ["provider", "model"]
    assert request["additionalProperties"] is False
    assert request["properties"]["priority"]["$ref"] == "#/components/schemas/Priority"
    assert schemas["Priority"]["enum"] == ["critical", "high", "normal", "low", "bulk"]
    cost_types = {option.get("type") for option in request["properties"]["estimated_cost_usd"]["anyOf"]}
    assert cost_types == {"number", "string", "null"}
    decision = schemas["DecisionResponse"]
    assert set(decision["properties"]) == set(Decision.__dataclass_fields__)
    assert schemas["Action"]["enum"] == ["allow", "warn", "degrade", "deny"]
    money = decision["properties"]["estimated_cost_usd"]["anyOf"][0]
    assert money["type"] == "string"  # decimals go out as exact strings
    assert set(schemas["PolicyHitModel"]["properties"]) == set(PolicyHit.__dataclass_fields__)
    assert schemas["BreakerStatusModel"]["properties"]["state"]["enum"] == ["closed", "half_open", "open"]
    assert set(schemas["HealthIndicator"]["required"]) == {"name", "value", "threshold", "status", "message"}


def test_decide_reads_its_body_as_fastapi_reads_a_json_body(client: httpx.Client) -> None:
    # `/v1/decide` parses its own body (it skips FastAPI's request pipeline): same types, same errors.
    body = b'{"provider": "openai", "model": "gpt-4.1", "agent": "x"}'

    def post(content: bytes, content_type: str | None) -> tuple[int, Any]:
        headers = {"content-type": content_type} if content_type is not None else {}
        response = client.post("/v1/decide", content=content, headers=headers)
        return response.status_code, response.json() if response.status_code != 200 else response.json()["action"]

    not_an_object = {
        "code": "invalid_request",
        "message": "body: Input should be a valid dictionary or object to extract fields from",
    }
    assert post(body, "application/json") == (200, "allow")
    assert post(body, "Application/JSON; charset=utf-8") == (200, "allow")
    assert post(body, "application/vnd.otel-puppy+json") == (200, "allow")
    assert post(body, "text/plain") == (422, not_an_object)
    assert post(body, None) == (422, not_an_object)
    assert post(b"null", "application/json") == (422, not_an_object)
    assert post(b"", "application/json") == (422, {"code": "invalid_request", "message": "body: Field required"})
    assert post('{"provider": "été"}'.encode("latin-1"), "application/json") == (
        400,
        {"code": "bad_request", "message": "There was an error parsing the body"},
    )


def _gate(app: FastAPI) -> AuthGate:
    """The app's auth gate, in its middleware stack (built by the first request)."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, AuthGate):
        layer = layer.app
    return layer


def test_decide_is_served_by_the_gate_with_the_answers_of_the_whole_stack(engine: PolicyEngine) -> None:
    """Past the auth gate, `POST /v1/decide` is the route's handler alone (`_served_directly`): each
    answer, every error included, is the one FastAPI's exception middleware and router give."""
    decision = {"provider": "openai", "model": "gpt-4.1", "agent": "research", "reserve": False}
    bodies: list[tuple[bytes, str]] = [
        (json.dumps(decision).encode(), "application/json"),
        (json.dumps({**decision, "estimated_cost_usd": "0.001"}).encode(), "application/json"),
        (b'{"provider": "openai"', "application/json"),  # not JSON
        (b'{"model": "gpt-4.1"}', "application/json"),  # no provider
        (json.dumps({**decision, "priority": "urgent"}).encode(), "application/json"),
        (json.dumps({**decision, "estimated_cost_usd": "1e400"}).encode(), "application/json"),
        (json.dumps({**decision, "trace_id": "0" * 32}).encode(), "application/json"),  # refused by the request
        (json.dumps(decision).encode(), "text/plain"),
        (b"", "application/json"),
        ('{"provider": "été"}'.encode("latin-1"), "application/json"),
    ]
    app = create_app(engine)
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:

        def answers() -> list[tuple[int, Any]]:
            out = []
            for content, content_type in bodies:
                response = client.post("/v1/decide", content=content, headers={"content-type": content_type})
                answer = response.json()
                answer.pop("created_at", None)  # the only field of a decision that differs between two asks
                out.append((response.status_code, answer))
            return out

        served_by_gate = answers()
        gate = _gate(app)
        assert set(gate.shortcuts) == {("POST", "/v1/decide")}
        shortcuts, gate.shortcuts = gate.shortcuts, {}
        try:
            served_by_stack = answers()
        finally:
            gate.shortcuts = shortcuts
    assert [status for status, _ in served_by_gate] == [200, 200, 422, 422, 422, 422, 422, 422, 422, 400]
    assert served_by_gate == served_by_stack


def test_an_internal_error_deciding_over_http_is_a_logged_500(
    engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug past the gate's shortcut (here the answer cannot be built) reaches the server-error
    middleware as in any route: `500`, the JSON error, counted and logged with its traceback."""

    def broken(self: Decision) -> dict[str, Any]:
        raise RuntimeError("cannot build the answer")

    monkeypatch.setattr(Decision, "to_dict", broken)
    with client_for(engine) as client:
        response = client.post("/v1/decide", json={"provider": "openai", "model": "gpt-4.1", "reserve": False})
    assert (response.status_code, response.json()) == (
        500,
        {"code": "internal_error", "message": "internal error; see the service log"},
    )
    assert engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "server"}) == 1
    logged = [r for r in caplog.records if r.getMessage() == "otel_puppy internal error in POST /v1/decide"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert str(logged[0].exc_info[1]) == "cannot build the answer"
