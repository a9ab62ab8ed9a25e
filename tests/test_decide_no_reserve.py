"""A decision that only asks (issue 14, point 7): `reserve=False` in-process, `"reserve": false` over
HTTP, `DecisionClient(...).decide(reserve=False)`, and `otel-puppy decide` without `--reserve`.

An ask answers exactly as a reserving decision would (action, model, every reason), holds nothing
(no reservation, no breaker probe) and leaves nothing to settle (no decision id). `--reserve` prints
what it reserved as `/v1/budgets` writes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from otel_puppy.calls import ErrorClass
from otel_puppy.client import DecisionClient
from otel_puppy.decision import Action, Decision
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import RequestError
from otel_puppy.policies import parse_policy_text
from otel_puppy.server.app import create_app
from otel_puppy.testing import FakeClock, engine_for_tests, make_call
from tests._service import cli, cli_all, environment
from tests._serving import serve

POLICIES = """
budgets:
  - {name: org-daily, limit_usd: 0.05, window: day, action: deny}
  - {name: per-agent, per: [agent], limit_usd: 0.03, window: day, action: {degrade: gpt-4.1-mini}}
  - {name: tokens-hourly, limit_tokens: 100000, window: hour, action: deny, shadow: true}
breakers:
  - {name: providers, per: [provider], failure_threshold: 2, recovery_timeout: 30s, success_threshold: 1,
     half_open_max_calls: 1}
"""
BUDGETS = ("org-daily", "per-agent", "tokens-hourly")
ASK: dict[str, Any] = {"provider": "openai", "model": "gpt-4.1", "agent": "support"}


def engine() -> PolicyEngine:
    return engine_for_tests(parse_policy_text(POLICIES, Path("policies/test.yaml")))


def reserved(engine: PolicyEngine) -> dict[str, Decimal | None]:
    return {status.policy: status.reserved_usd for status in engine.snapshot().budgets}


def answer(decision: Decision) -> tuple[Any, ...]:
    """Everything a decision says about the call, but its id, reservation and creation time."""
    return (
        decision.action,
        decision.provider,
        decision.model,
        list(decision.reasons),
        list(decision.shadow),
        decision.retry_after_s,
        decision.resets_at,
        decision.estimated_cost_usd,
    )


# --- in-process -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimate", "action", "model", "held"),
    [
        ("0.01", Action.ALLOW, "gpt-4.1", Decimal("0.010000000")),
        ("0.04", Action.DEGRADE, "gpt-4.1-mini", Decimal("0.040000000")),  # over per-agent's $0.03
        ("0.06", Action.DENY, "gpt-4.1", None),  # over org-daily's $0.05: nothing is held
    ],
)
def test_an_ask_answers_as_a_reserving_decision_and_holds_nothing(
    estimate: str, action: Action, model: str, held: Decimal | None
) -> None:
    puppy = engine()
    asks = [puppy.decide(**ASK, estimated_cost_usd=estimate, reserve=False) for _ in range(2)]
    assert reserved(puppy) == dict.fromkeys(BUDGETS, Decimal(0))
    decision = puppy.decide(**ASK, estimated_cost_usd=estimate)
    assert (decision.action, decision.model, decision.reserved_usd) == (action, model, held)
    for ask in asks:
        assert answer(ask) == answer(decision)
        assert (ask.decision_id, ask.reserved_usd) == (None, None)  # nothing to settle
    assert [hit.policy for hit in decision.reasons] == (
        ["per-agent", "org-daily"] if action is Action.DEGRADE else ["org-daily", "per-agent"]
    )
    assert reserved(puppy) == dict.fromkeys(BUDGETS, held or Decimal(0))
    if held is not None:
        assert decision.decision_id is not None
    puppy.close()


def test_an_ask_takes_no_probe_of_a_half_open_breaker() -> None:
    puppy = engine()
    for _ in range(2):
        puppy.observe(make_call(end_s=puppy.clock.now(), agent="support", error=ErrorClass.SERVER_ERROR))
    clock = puppy.clock
    assert isinstance(clock, FakeClock)
    clock.advance(31)  # past the recovery timeout: half-open, one probe allowed

    def breaker(decision: Decision) -> tuple[Action, list[str]]:
        return decision.action, [hit.message for hit in decision.reasons if hit.kind == "breaker"]

    probe = (Action.ALLOW, ["breaker providers: openai is half-open: probe 1 of 1"])
    assert breaker(puppy.decide(**ASK, reserve=False)) == probe
    assert breaker(puppy.decide(**ASK, reserve=False)) == probe
    assert breaker(puppy.decide(**ASK)) == probe  # the asks left the one probe to a real call
    assert breaker(puppy.decide(**ASK)) == (
        Action.DENY,
        ["breaker providers: openai is half-open: all 1 probes in flight; retry in 1.0s"],
    )
    puppy.close()


@pytest.mark.parametrize("value", ["false", 0, 1, None, "no"])
def test_reserve_must_be_a_bool_in_process(value: object) -> None:
    puppy = engine()
    with pytest.raises(RequestError) as refused:
        puppy.decide(**ASK, estimated_cost_usd="0.01", reserve=value)  # type: ignore[arg-type]
    assert (refused.value.field, refused.value.message) == ("reserve", "must be true or false")
    assert reserved(puppy) == {"org-daily": Decimal(0), "tokens-hourly": Decimal(0)}  # per-agent: never asked
    puppy.close()


# --- over HTTP: the API, the client, the command line ---------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[PolicyEngine, str]]:
    puppy = engine()
    with serve(create_app(puppy)) as url:
        yield puppy, url
    puppy.close()


def budgets_reserved(client: httpx.Client) -> dict[str, str]:
    return {budget["policy"]: budget["reserved_usd"] for budget in client.get("/v1/budgets").json()["budgets"]}


def test_reserve_false_over_http_leaves_budgets_unreserved(served: tuple[PolicyEngine, str]) -> None:
    _, url = served
    body = {**ASK, "estimated_cost_usd": "0.01"}
    with httpx.Client(base_url=url, timeout=10) as client:
        asks = [client.post("/v1/decide", json={**body, "reserve": False}).json() for _ in range(2)]
        assert budgets_reserved(client) == dict.fromkeys(BUDGETS, "0.000000000")
        decision = client.post("/v1/decide", json=body).json()
        assert budgets_reserved(client) == dict.fromkeys(BUDGETS, "0.010000000")
        explicit = client.post("/v1/decide", json={**body, "reserve": True}).json()
        assert budgets_reserved(client) == dict.fromkeys(BUDGETS, "0.020000000")
    assert (decision["action"], decision["reserved_usd"], explicit["reserved_usd"]) == (
        "allow",
        "0.010000000",
        "0.010000000",
    )
    for ask in asks:
        assert (ask["decision_id"], ask["reserved_usd"]) == (None, None)
        same = ("action", "provider", "model", "reasons", "shadow", "retry_after_s", "resets_at", "estimated_cost_usd")
        assert {key: ask[key] for key in same} == {key: decision[key] for key in same}


@pytest.mark.parametrize("value", ["false", 0, 1, None, [], {"reserve": False}])
def test_a_reserve_that_is_not_a_bool_is_422_naming_the_field(served: tuple[PolicyEngine, str], value: object) -> None:
    puppy, url = served
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/v1/decide", json={**ASK, "estimated_cost_usd": "0.01", "reserve": value})
    assert response.status_code == 422
    assert response.json() == {"code": "invalid_request", "message": "body.reserve: Input should be a valid boolean"}
    assert reserved(puppy) == {"org-daily": Decimal(0), "tokens-hourly": Decimal(0)}  # nothing was decided


def test_the_client_asks_without_reserving_sync_and_async(served: tuple[PolicyEngine, str]) -> None:
    puppy, url = served

    async def ask_async(client: DecisionClient) -> Decision:
        try:
            return await client.adecide(**ASK, estimated_cost_usd="0.01", reserve=False)
        finally:
            await client.aclose()

    with DecisionClient(url, timeout_s=10) as client:
        asked = client.decide(**ASK, estimated_cost_usd="0.01", reserve=False)
        asked_async = asyncio.run(ask_async(DecisionClient(url, timeout_s=10)))
        assert reserved(puppy) == dict.fromkeys(BUDGETS, Decimal(0))
        with pytest.raises(RequestError) as refused:
            client.decide(**ASK, reserve="false")  # type: ignore[arg-type]
        assert str(refused.value) == "reserve: must be true or false"
        decision = client.decide(**ASK, estimated_cost_usd="0.01")
        assert client.failures == 0
    assert reserved(puppy) == dict.fromkeys(BUDGETS, Decimal("0.010000000"))
    assert decision.reserved_usd == Decimal("0.010000000")
    for ask in (asked, asked_async):
        assert answer(ask) == answer(decision)
        assert (ask.decision_id, ask.reserved_usd) == (None, None)


def test_the_command_line_asks_unless_told_to_reserve(served: tuple[PolicyEngine, str], tmp_path: Path) -> None:
    puppy, url = served
    decide = ["decide", "--provider", "openai", "--model", "gpt-4.1", "--agent", "support", "--url", url]
    narrow = {**environment(), "COLUMNS": "40"}  # a pipe, and a narrow terminal's width: nothing may be cut
    ask = [*decide, "--estimated-cost-usd", "0.01"]
    asked, asked_json = cli_all(tmp_path, ask, [*ask, "--json"], env=narrow)  # asks hold nothing: at once
    assert asked.returncode == 0, asked.stderr
    assert "estimate  $0.01 (request, nothing reserved)" in asked.stdout
    assert "reserved" not in asked.stdout.replace("nothing reserved", "")
    as_json = json.loads(asked_json.stdout)
    assert (as_json["action"], as_json["decision_id"], as_json["reserved_usd"]) == ("allow", None, None)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert budgets_reserved(client) == dict.fromkeys(BUDGETS, "0.000000000")
        held = cli(tmp_path, *decide, "--estimated-cost-usd", "0.0123456789", "--reserve", env=narrow)
        assert held.returncode == 0, held.stderr
        shown = budgets_reserved(client)
    assert shown == dict.fromkeys(BUDGETS, "0.012345679")  # nano-USD, half to even
    assert "reserved     0.012345679 USD on org-daily, per-agent (agent=support), tokens-hourly" in held.stdout, (
        held.stdout
    )
    assert reserved(puppy) == dict.fromkeys(BUDGETS, Decimal("0.012345679"))
