"""Issue 12, points 1, 5 and 6: absurd numbers, over-long names and far-off timestamps, sent as an
attacker or a buggy client would, against a real `otel-puppy serve` on SQLite and on Redis and
against the in-process engine.

Each test first sends the attack, then shows that it changed nothing it must not: an exhausted deny
budget still denies, `/v1/budgets` tells the truth, the normal span sent in the same batch as the
hostile ones is counted exactly once, and the service keeps answering other clients (hang guards
only: every request carries a timeout, nothing is timed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from otel_puppy.decision import Action, DecisionRequest
from otel_puppy.exceptions import RequestError
from otel_puppy.policies import parse_policy_text
from otel_puppy.testing import FakeClock, engine_for_tests, make_call
from tests._redis import RedisServer
from tests._service import NANOS, Service, environment, metric, service, spent_nanos, write_policies

POLICIES = """
budgets:
  - name: org-deny
    limit_usd: 0.01
    window: day
    action: deny
  - name: org-warn
    limit_usd: 0.000001
    window: day
    action: warn
"""
"""A deny budget that four normal calls (0.0028 USD each) exhaust, and a warn budget one call exhausts."""
TIMEOUT = httpx.Timeout(30.0)
"""A hang guard: before issue 12, one `1e999990` estimate held the server for about half a minute."""
WEEK_NS = 7 * 86400 * 10**9
YEAR_NS = 366 * 86400 * 10**9


# --- a real service, on SQLite and on Redis ------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    policies = write_policies(tmp_path, POLICIES)
    redis: RedisServer | None = None
    if request.param == "redis":
        redis = RedisServer(tmp_path / "redis")
        redis.workdir.mkdir()
        redis.start()
        store = redis.url
    else:
        store = f"sqlite:///{tmp_path / 'state.db'}"
    try:
        with service(tmp_path, "--policies", str(policies), env=environment(store=store)) as running:
            yield running
    finally:
        if redis is not None:
            redis.stop()


def value(kind: str, raw: object) -> dict[str, object]:
    return {kind: raw}


CHAT: dict[str, dict[str, object]] = {
    "gen_ai.operation.name": value("stringValue", "chat"),
    "gen_ai.provider.name": value("stringValue", "openai"),
    "gen_ai.request.model": value("stringValue", "gpt-4.1"),
    "gen_ai.response.model": value("stringValue", "gpt-4.1"),
    "gen_ai.usage.input_tokens": value("intValue", "1000"),
    "gen_ai.usage.output_tokens": value("intValue", "100"),
}
"""The tests' normal call (1,000 input and 100 output tokens of gpt-4.1: `NANOS`), as OTLP/JSON attributes."""

HOSTILE: list[dict[str, dict[str, object]]] = [
    {"gen_ai.usage.input_tokens": value("intValue", "9" * 100_000)},
    {"gen_ai.usage.input_tokens": value("intValue", str(2**63 - 1))},
    {"gen_ai.usage.input_tokens": value("intValue", str(2**64))},
    {"gen_ai.usage.input_tokens": value("intValue", "-5")},
    {"gen_ai.usage.input_tokens": value("doubleValue", "Infinity")},
    {"gen_ai.usage.output_tokens": value("doubleValue", 1e308)},
    {"gen_ai.usage.output_tokens": value("stringValue", "1e999990")},
    {"gen_ai.usage.cache_read.input_tokens": value("intValue", "100000001")},
    {"operation.cost": value("stringValue", "1e999990")},
    {"gen_ai.usage.cost": value("doubleValue", "-Infinity")},
]
"""Each replaces or adds one attribute of `CHAT`: a number outside its bound, each spelled its own way."""


def span(attributes: dict[str, dict[str, object]], end_ns: int | None = None) -> dict[str, Any]:
    end = end_ns if end_ns is not None else time.time_ns()
    return {
        "traceId": os.urandom(16).hex(),
        "spanId": os.urandom(8).hex(),
        "name": "chat gpt-4.1",
        "kind": 3,
        "startTimeUnixNano": str(end - 10**9),
        "endTimeUnixNano": str(end),
        "attributes": [{"key": k, "value": v} for k, v in attributes.items()],
    }


def export_json(client: httpx.Client, *spans: dict[str, Any]) -> dict[str, Any]:
    body = {"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}
    response = client.post("/v1/traces", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


class Raw(str):
    """A JSON number written as is (`1e999990`), which `json.dumps` cannot write from a float."""


def body_text(fields: dict[str, object]) -> str:
    """The decision request as JSON text, `Raw` values written verbatim."""
    parts = [f"{json.dumps(k)}: {v if isinstance(v, Raw) else json.dumps(v)}" for k, v in fields.items()]
    return "{" + ", ".join(parts) + "}"


def decide(client: Any, **fields: object) -> httpx.Response:
    text = body_text({"provider": "openai", "model": "gpt-4.1", **fields})
    response: httpx.Response = client.post("/v1/decide", content=text, headers={"content-type": "application/json"})
    return response


def test_hostile_numbers_on_spans_are_rejected_and_the_normal_span_counts_once(served: Service) -> None:
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        batch = [span({**CHAT, **hostile}) for hostile in HOSTILE]
        batch.insert(4, span(CHAT))
        answer = export_json(client, *batch)
        partial = answer["partialSuccess"]
        assert partial["rejectedSpans"] == str(len(HOSTILE))
        assert "gen_ai.usage.input_tokens is out of range: 1e9999 (allowed: 0 to 100000000)" in partial["errorMessage"]
        assert "operation.cost is out of range: 1e999990 (allowed: 0 to 100000)" in partial["errorMessage"]
        # the normal span, exactly once, and nothing of the others
        assert spent_nanos(served.url, "org-deny") == NANOS
        assert metric(served.url, "otel_puppy_spans_total", result="rejected") == len(HOSTILE)
        assert metric(served.url, "otel_puppy_spans_total", result="applied") == 1.0
        # the same batch again: the normal span is a duplicate, the hostile ones are rejected again
        again = export_json(client, *batch)
        assert again["partialSuccess"]["rejectedSpans"] == str(len(HOSTILE))
        assert spent_nanos(served.url, "org-deny") == NANOS
        assert client.get("/readyz").status_code == 200

        # exhaust the deny budget with normal spans; hostile estimates never turn it into an allow
        export_json(client, *(span(CHAT) for _ in range(3)))
        assert spent_nanos(served.url, "org-deny") == 4 * NANOS
        assert decide(client, estimated_cost_usd="0.001").json()["action"] == "deny"
        for hostile in ("1e999990", Raw("1e999990"), "-1e-999999999", Raw("-1"), "NaN", "9" * 100_000):
            refused = decide(client, estimated_cost_usd=hostile)
            assert refused.status_code == 422, refused.text
            assert refused.json()["message"].startswith("body.estimated_cost_usd: "), refused.text
        assert decide(client, estimated_cost_usd="0.001").json()["action"] == "deny"
        assert decide(client).json()["action"] == "deny"
        assert spent_nanos(served.url, "org-deny") == 4 * NANOS
        assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("field", "hostile", "message"),
    [
        ("estimated_cost_usd", "1e999990", "Input should be less than or equal to 100000"),
        ("estimated_cost_usd", Raw("1e999990"), "Input should be less than or equal to 100000"),
        ("estimated_cost_usd", Raw("9" * 4000), "Input should be less than or equal to 100000"),
        ("estimated_cost_usd", "100000.000000001", "Input should be less than or equal to 100000"),
        ("estimated_input_tokens", 100_000_001, "Input should be less than or equal to 100000000"),
        ("estimated_output_tokens", 2**63, "Input should be less than or equal to 100000000"),
        ("context_tokens", -1, "Input should be greater than or equal to 0"),
        ("agent", "a" * 257, "String should have at most 256 characters"),
        ("user", "u" * 100_000, "String should have at most 256 characters"),
        ("conversation", "c" * 257, "String should have at most 256 characters"),
        ("service", "s" * 257, "String should have at most 256 characters"),
        ("team", "t" * 257, "String should have at most 256 characters"),
        ("environment", "e" * 257, "String should have at most 256 characters"),
        ("operation", "o" * 257, "String should have at most 256 characters"),
        ("model", "m" * 257, "String should have at most 256 characters"),
        ("provider", "p" * 257, "String should have at most 256 characters"),
        ("capabilities", ["tools"] * 33, "Tuple should have at most 32 items after validation, not 33"),
    ],
)
def test_the_decision_api_refuses_values_out_of_bounds_naming_the_field(
    tmp_path: Path, field: str, hostile: object, message: str
) -> None:
    from fastapi.testclient import TestClient

    from otel_puppy.server.app import create_app

    engine = engine_for_tests(parse_policy_text(POLICIES, Path("policies/p.yaml")))
    with TestClient(create_app(engine)) as client:
        response = decide(client, **{field: hostile})
        assert response.status_code == 422, response.text
        assert response.json()["message"].startswith(f"body.{field}: "), response.text
        assert message in response.json()["message"]
        # the bound itself is accepted
        assert (
            client.post(
                "/v1/decide",
                json={"provider": "openai", "model": "gpt-4.1", "agent": "a" * 256, "estimated_cost_usd": "100000"},
            ).status_code
            == 200
        )
    engine.close()


def test_far_off_span_times_are_charged_on_arrival_and_metrics_agree_with_budgets(served: Service) -> None:
    now = time.time_ns()
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        answer = export_json(client, span(CHAT, end_ns=now - WEEK_NS), span(CHAT, end_ns=now + YEAR_NS), span(CHAT))
        assert answer == {}
        assert spent_nanos(served.url, "org-deny") == 3 * NANOS  # each in today's window, none lost
        assert metric(served.url, "otel_puppy_late_spans_total", direction="past") == 1.0
        assert metric(served.url, "otel_puppy_late_spans_total", direction="future") == 1.0
        assert metric(served.url, "otel_puppy_spans_total", result="applied") == 3.0
        assert _metric_sum(client, "otel_puppy_llm_cost_usd_total") == pytest.approx(3 * NANOS / 1e9, abs=1e-12)
        assert decide(client, estimated_cost_usd="0.0017").json()["action"] == "deny"  # 3 x 0.0028 + 0.0017 > 0.01


def _metric_sum(client: httpx.Client, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == name
    )


def test_other_clients_keep_being_answered_during_the_attack(served: Service) -> None:
    stop = threading.Event()
    answered: list[int] = []
    failures: list[BaseException] = []

    def other_client() -> None:
        try:
            with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
                while not stop.is_set() or not answered:  # at least one answer, however short the attack
                    answered.append(decide(client, agent="bystander").status_code)
        except BaseException as exc:  # reported by the test's own thread
            failures.append(exc)

    bystander = threading.Thread(target=other_client)
    bystander.start()
    try:
        with httpx.Client(base_url=served.url, timeout=TIMEOUT) as attacker:
            for _ in range(5):
                for hostile in ("1e999990", Raw("1e999990"), Raw("1e-999999999"), "9" * 60, "a" * 300):
                    decide(attacker, estimated_cost_usd=hostile)
                export_json(attacker, *(span({**CHAT, **h}) for h in HOSTILE))
    finally:
        stop.set()
        bystander.join(60)
    assert not bystander.is_alive()
    assert failures == []
    assert answered
    assert set(answered) == {200}
    assert spent_nanos(served.url, "org-deny") == 0


# --- the in-process engine ------------------------------------------------------------------------


def test_in_process_decide_refuses_bad_values_to_its_caller_and_never_allows_them() -> None:
    engine = engine_for_tests(parse_policy_text(POLICIES, Path("policies/p.yaml")))
    for _ in range(4):
        engine.observe(make_call(end_s=engine.clock.now()))
    assert engine.decide(provider="openai", model="gpt-4.1").action is Action.DENY
    refused: list[tuple[str, object]] = [
        ("estimated_cost_usd", "1e999990"),
        ("estimated_cost_usd", Decimal("1e999990")),
        ("estimated_cost_usd", Decimal("Infinity")),
        ("estimated_cost_usd", float("inf")),
        ("estimated_cost_usd", -1),
        ("estimated_input_tokens", 10**9),
        ("estimated_output_tokens", -1),
        ("context_tokens", 10**100),
        ("agent", "a" * 257),
        ("user", "u" * 10**6),
        ("capabilities", ("x",) * 33),
    ]
    for field, hostile in refused:
        with pytest.raises(ValueError, match=f"^{field}"):  # `RequestError` (a `ValueError`) naming the field
            engine.decide(provider="openai", model="gpt-4.1", **cast(dict[str, Any], {field: hostile}))
    with pytest.raises(RequestError, match=r"^provider: is 257 characters long"):
        DecisionRequest(provider="p" * 257, model="gpt-4.1")
    # a value that rounds to nothing is nothing; the bound itself is accepted (and denied: the budget is spent)
    tiny = DecisionRequest(provider="openai", model="gpt-4.1", estimated_cost_usd="1e-999999999")  # type: ignore[arg-type]
    assert tiny.estimated_cost_usd == Decimal(0)
    assert engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd=Decimal(100_000)).action is Action.DENY
    assert engine.metrics.internal_errors() == 0
    engine.close()


def test_in_process_spans_out_of_bounds_are_counted_never_applied_never_raised() -> None:
    engine = engine_for_tests(parse_policy_text(POLICIES, Path("policies/p.yaml")))
    normal = make_call(end_s=engine.clock.now())
    hostile = dataclasses.replace(make_call(end_s=engine.clock.now()), rejected="input tokens out of range")
    [first, second] = engine.observe_many([hostile, normal])
    assert (first.result.value, second.result.value) == ("rejected", "applied")
    assert engine.snapshot().budget("org-deny").spent_usd == Decimal(NANOS).scaleb(-9)
    registry = engine.registry
    assert registry.get_sample_value("otel_puppy_spans_total", {"result": "rejected"}) == 1.0
    assert registry.get_sample_value("otel_puppy_spans_total", {"result": "applied"}) == 1.0
    engine.close()


def test_lateness_in_process_a_week_ago_and_next_year_land_in_todays_budget() -> None:
    clock = FakeClock(1_767_268_800.0)  # 2026-01-01T12:00:00Z: an hour back is the same day
    engine = engine_for_tests(parse_policy_text(POLICIES, Path("policies/p.yaml")), clock=clock)
    now = clock.now()
    engine.observe_many(
        [
            make_call(end_s=now - 7 * 86400),
            make_call(end_s=now + 366 * 86400),
            make_call(end_s=now - 3599),  # inside the bound: its own time, the same day here
        ]
    )
    snapshot = engine.snapshot()
    assert snapshot.budget("org-deny").spent_usd == Decimal(3 * NANOS).scaleb(-9)
    registry = engine.registry
    assert registry.get_sample_value("otel_puppy_late_spans_total", {"direction": "past"}) == 1.0
    assert registry.get_sample_value("otel_puppy_late_spans_total", {"direction": "future"}) == 1.0
    cost = sum(
        s.value
        for m in registry.collect()
        if m.name == "otel_puppy_llm_cost_usd"
        for s in m.samples
        if s.name == "otel_puppy_llm_cost_usd_total"
    )
    assert cost == pytest.approx(3 * NANOS / 1e9, abs=1e-12)
    engine.close()


def test_lateness_bound_is_a_setting() -> None:
    clock = FakeClock()
    engine = engine_for_tests(
        parse_policy_text(POLICIES, Path("policies/p.yaml")), clock=clock, max_span_lateness_s=60.0
    )
    engine.observe(make_call(end_s=clock.now() - 61))
    engine.observe(make_call(end_s=clock.now() - 59))
    assert engine.registry.get_sample_value("otel_puppy_late_spans_total", {"direction": "past"}) == 1.0
    engine.close()
