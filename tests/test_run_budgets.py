"""Run-scoped budgets: `per: [trace]` caps one agent run, across frameworks, without a gateway.

A decision's trace is the current span context in-process (`guard()`, `guarded()`), the W3C
`traceparent` header or a `trace_id` field over HTTP (the client sends the current one); the call's
span carries the same trace id, so it settles against the same budget instance. Trace ids are never
labels, and idle runs are forgotten so the 10,001st run gets its own budget.

The model is priced by a `prices:` entry with free input and $20 per million output tokens, so a
call of 100 output tokens costs exactly $0.002 and `guarded(..., output_tokens=100)` estimates
exactly that: what a run holds does not depend on when its spans are processed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import logfire
import openai
import pytest
from opentelemetry import trace
from prometheus_client.registry import CollectorRegistry
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import otel_puppy
from otel_puppy.clock import ManualClock
from otel_puppy.decision import Action, Decision, DecisionRequest, PolicyHit
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PolicyDenied, PuppyError, RequestError
from otel_puppy.policies import parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import engine_for_tests, make_call
from tests.server.test_app import client_for

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PRICES = "prices:\n  - {provider: openai, model: gpt-4.1, input_mtok: 0, output_mtok: 20}\n"
RUN_BUDGET = PRICES + "budgets:\n  - {name: per-run, per: [trace], limit_usd: 0.005, window: day, action: deny}\n"
TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"


def tool_calls_wanted(prompt: str) -> int:
    return {"one call": 0, "two calls": 1, "three calls": 2}[prompt]


def completion(request: httpx.Request) -> httpx.Response:
    """A tool call until the run has made as many as its prompt asks, then the answer; 100 output tokens each."""
    body = json.loads(request.content)
    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    made = sum(1 for m in body["messages"] if m["role"] == "tool")
    if made < tool_calls_wanted(prompt):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": f"call-{made}", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            ],
        }
        finish = "tool_calls"
    else:
        message, finish = {"role": "assistant", "content": "done"}, "stop"
    return httpx.Response(
        200,
        json={
            "id": f"chatcmpl-{id(request)}-{made}",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        },
    )


@pytest.fixture
def agents() -> Iterator[tuple[PolicyEngine, Agent[None, str]]]:
    engine = engine_for_tests(parse_policy_text(RUN_BUDGET, Path("policies/test.yaml")))
    logfire.configure(
        send_to_logfire=False, console=False, service_name="tests", additional_span_processors=[engine.span_processor()]
    )
    logfire.instrument_pydantic_ai()
    client = openai.AsyncOpenAI(
        api_key="test",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(completion)),  # type: ignore[arg-type]  # openai types it as httpx2's; httpx's client works the same
        max_retries=0,
    )
    model = OpenAIChatModel("gpt-4.1", provider=OpenAIProvider(openai_client=client))
    agent: Agent[None, str] = Agent(otel_puppy.guarded(model, engine, agent="research", output_tokens=100))

    @agent.tool_plain
    def lookup() -> str:
        return "found"

    yield engine, agent
    engine.close()


def run_hits(engine: PolicyEngine) -> dict[str, PolicyHit]:
    return {hit.scope: hit for hit in engine.snapshot().budgets if hit.policy == "per-run"}


def test_a_run_is_denied_its_third_call_while_a_run_beside_it_is_allowed(
    agents: tuple[PolicyEngine, Agent[None, str]],
) -> None:
    engine, agent = agents

    async def both() -> tuple[object, object]:
        return await asyncio.gather(agent.run("three calls"), agent.run("two calls"), return_exceptions=True)

    long_run, short_run = asyncio.run(both())
    engine.span_processor().force_flush()

    assert isinstance(long_run, PolicyDenied)
    decision = long_run.decision
    hit = next(h for h in decision.reasons if h.policy == "per-run")
    assert hit.action is Action.DENY
    assert hit.scope.startswith("trace=")
    # Two calls made ($0.004); the third's $0.002 would pass the run's $0.005.
    assert hit.message == f"budget per-run for {hit.scope}: $0.004000000 of $0.005 this day (80%); denied"
    assert not isinstance(short_run, BaseException)
    assert short_run.output == "done"  # type: ignore[attr-defined]

    runs = run_hits(engine)
    assert len(runs) == 2
    assert [h.spent_usd for h in runs.values()] == [Decimal("0.004"), Decimal("0.004")]
    assert {h.reserved_usd for h in runs.values()} == {Decimal(0)}  # every reservation settled
    assert engine.snapshot().spend("day") == Decimal("0.008")
    # One series for every run: the fullest (`max`), never one per trace id.
    gauges = {
        sample.labels["scope"]
        for family in engine.registry.collect()
        if family.name == "otel_puppy_budget_utilization_ratio"
        for sample in family.samples
        if sample.labels["budget"] == "per-run"
    }
    assert gauges == {"max"}


def test_guard_takes_the_trace_of_the_current_span(agents: tuple[PolicyEngine, Agent[None, str]]) -> None:
    engine, _ = agents
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("run") as span:
        with engine.guard("openai", "gpt-4.1", estimated_cost_usd="0.001") as decision:
            pass
        trace_id = f"{span.get_span_context().trace_id:032x}"
    hit = next(h for h in decision.reasons if h.policy == "per-run")
    assert hit.scope == f"trace={trace_id}"
    with engine.guard("openai", "gpt-4.1", estimated_cost_usd="0.001") as outside:  # no span: no run budget
        pass
    assert [h.policy for h in outside.reasons] == []


# --- over HTTP --------------------------------------------------------------------------------


def http_engine(yaml: str = RUN_BUDGET) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store="memory://", watch_policies_s=None),
        policies=parse_policy_text(yaml, Path("policies/test.yaml")),
        clock=ManualClock(T0),
        registry=CollectorRegistry(auto_describe=True),
    )


def call_of_run(engine: PolicyEngine, trace_id: str, decision: dict[str, Any]) -> None:
    """The call's span: 100 output tokens ($0.002) in the run, settling its decision."""
    call = make_call(end_s=T0, provider="openai", model="gpt-4.1", input_tokens=0, output_tokens=100)
    engine.observe(dataclasses.replace(call, trace_id=int(trace_id, 16), decision_id=decision["decision_id"]))


def traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}


def test_over_http_traceparent_budgets_each_run() -> None:
    engine = http_engine()
    body = {"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": "0.002"}
    with client_for(engine) as client:
        for _ in range(2):
            answer = client.post("/v1/decide", json=body, headers=traceparent(TRACE_A)).json()
            assert answer["action"] == "allow"
            call_of_run(engine, TRACE_A, answer)
        denied = client.post("/v1/decide", json=body, headers=traceparent(TRACE_A)).json()
        other = client.post("/v1/decide", json=body, headers=traceparent(TRACE_B)).json()
        by_field = client.post("/v1/decide", json={**body, "trace_id": TRACE_A.upper()}).json()
    assert denied["action"] == "deny"
    assert denied["reasons"][0]["scope"] == f"trace={TRACE_A}"
    assert denied["reasons"][0]["message"] == (
        f"budget per-run for trace={TRACE_A}: $0.004000000 of $0.005 this day (80%); denied"
    )
    assert other["action"] == "allow"
    assert other["reasons"][0]["scope"] == f"trace={TRACE_B}"
    assert by_field["action"] == "deny"  # the field names the same run (hex is case-blind)
    engine.close()


@pytest.mark.parametrize(
    "header",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # the invalid all-zero id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # 31 digits
        "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-" + "a" * 10_000,
        "",
    ],
)
def test_a_malformed_traceparent_is_ignored_as_trace_context_says(header: str) -> None:
    engine = http_engine()
    with client_for(engine) as client:
        answer = client.post(
            "/v1/decide", json={"provider": "openai", "model": "gpt-4.1"}, headers={"traceparent": header}
        )
    assert answer.status_code == 200
    assert answer.json()["reasons"] == []  # no run: no run budget
    engine.close()


@pytest.mark.parametrize(
    ("trace_id", "error"),
    [
        ("4bf92f3577b34da6a3ce929d0e0e473", "String should have at least 32 characters"),
        ("4bf92f3577b34da6a3ce929d0e0e4736ff", "String should have at most 32 characters"),
        ("g" * 32, "String should match pattern"),
        ("0" * 4096, "String should have at most 32 characters"),
        (12, "Input should be a valid string"),
    ],
)
def test_a_bad_trace_id_field_is_a_422_naming_it(trace_id: object, error: str) -> None:
    engine = http_engine()
    with client_for(engine) as client:
        answer = client.post("/v1/decide", json={"provider": "openai", "model": "gpt-4.1", "trace_id": trace_id})
    assert answer.status_code == 422
    assert answer.json()["code"] == "invalid_request"
    assert answer.json()["message"].startswith(f"body.trace_id: {error}")
    engine.close()


@pytest.mark.parametrize(
    ("trace_id", "message"),
    [
        ("0" * 32, "must be 32 hex digits, not all zero (W3C Trace Context)"),
        ("x" * 32, "must be 32 hex digits, not all zero (W3C Trace Context)"),
        ("abc", "must be 32 hex digits (W3C Trace Context), not 3 characters"),
        (7, "must be a string of 32 hex digits, not int"),
    ],
)
def test_a_bad_trace_id_in_process_is_a_request_error(trace_id: object, message: str) -> None:
    with pytest.raises(RequestError) as raised:
        DecisionRequest.from_fields({"provider": "openai", "model": "gpt-4.1", "trace_id": trace_id})
    assert (raised.value.field, raised.value.message) == ("trace_id", message)


def test_the_client_sends_the_current_trace() -> None:
    engine = http_engine()
    tracer = trace.get_tracer("tests")
    with (
        client_for(engine) as http,
        otel_puppy.DecisionClient(str(http.base_url), retries=0) as client,
        tracer.start_as_current_span("run") as span,
    ):
        decision: Decision = client.decide(provider="openai", model="gpt-4.1")
        trace_id = f"{span.get_span_context().trace_id:032x}"
    assert [h.scope for h in decision.reasons] == [f"trace={trace_id}"]
    engine.close()


# --- runs come and go by the thousand -----------------------------------------------------------


def runs_in_sequence(yaml: str, runs: int) -> tuple[PolicyEngine, list[Decision]]:
    """`runs` agent runs one second apart, each deciding once and making its one $0.002 call."""
    engine = http_engine(yaml)
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    decisions = []
    for run in range(runs):
        trace_id = f"{run + 1:032x}"
        clock.set(T0 + run)
        decision = engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.002", trace_id=trace_id)
        decisions.append(decision)
        call = make_call(end_s=T0 + run, provider="openai", model="gpt-4.1", input_tokens=0, output_tokens=100)
        engine.observe(dataclasses.replace(call, trace_id=run + 1, decision_id=decision.decision_id))
    return engine, decisions


@pytest.mark.long
@pytest.mark.parametrize(
    "budget",
    [
        "{name: per-run, per: [trace], limit_usd: 0.005, window: 1h, action: deny}",  # idle: its window
        "{name: per-run, per: [trace], limit_usd: 0.005, window: day, action: deny, idle_timeout: 15m}",
    ],
)
def test_twenty_thousand_runs_in_sequence_each_get_their_own_budget(budget: str) -> None:
    engine, decisions = runs_in_sequence(PRICES + "budgets:\n  - " + budget + "\n", 20_000)
    assert all(d.allowed for d in decisions)
    last = decisions[-1]
    assert [h.scope for h in last.reasons] == [f"trace={20_000:032x}"]  # its own, not `other`
    book = engine._rules.budgets.book
    assert book.folded == 0
    assert book.forgotten > 0
    assert len(book.known_instances()) <= 10_000
    assert all(h.scope != "other" for d in decisions for h in d.reasons)
    engine.close()


def test_without_idle_runs_the_10001st_shares_other() -> None:
    """A calendar day with no idle timeout: every run of the day may still spend, so none is forgotten."""
    engine, decisions = runs_in_sequence(RUN_BUDGET.replace("action: deny}", "action: deny, max_scopes: 100}"), 101)
    assert [h.scope for h in decisions[99].reasons] == [f"trace={100:032x}"]
    assert [h.scope for h in decisions[100].reasons] == ["other"]
    engine.close()


def test_trace_is_refused_for_anomalies_and_accepted_in_match() -> None:
    with pytest.raises(PuppyError, match="trace is one agent run"):
        parse_policy_text("anomalies:\n  - {name: a, signal: cost_rate, per: [trace]}\n", Path("policies/a.yaml"))
    policies = parse_policy_text(
        PRICES + f"budgets:\n  - {{name: one, match: {{trace: '{TRACE_A}'}}, limit_usd: 1, window: day}}\n",
        Path("policies/b.yaml"),
    )
    engine = engine_for_tests(policies)
    assert [h.policy for h in engine.decide(provider="openai", model="gpt-4.1", trace_id=TRACE_A).reasons] == ["one"]
    assert engine.decide(provider="openai", model="gpt-4.1", trace_id=TRACE_B).reasons == ()
    engine.close()


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("91d", "rolling window '91d' must be between 1m and 90d"),
        ("30s", "rolling window '30s' must be between 1m and 90d"),
        ("day", "idle_timeout 'day' must be a duration like 15m, 1h, 24h"),
        ("9" * 400, "unknown window"),
    ],
)
def test_an_idle_timeout_out_of_range_names_the_file_and_line(value: str, error: str) -> None:
    with pytest.raises(PuppyError) as raised:
        parse_policy_text(
            f"budgets:\n  - {{name: b, per: [trace], limit_usd: 1, window: day, idle_timeout: '{value}'}}\n",
            Path("policies/b.yaml"),
        )
    assert "policies/b.yaml:2" in str(raised.value)
    assert error in str(raised.value)
