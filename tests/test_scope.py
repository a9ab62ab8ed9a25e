"""`Scope`: one shape for the dimensions of calls and requests, read by matching, labels and schemas;
and `DecisionRequest.from_fields`, the one way keywords become a request."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from otel_puppy.decision import DecisionRequest, Priority
from otel_puppy.exceptions import RequestError
from otel_puppy.policies import matching
from otel_puppy.policies.matching import Match, scope_label
from otel_puppy.scope import DIMENSIONS, Scope
from otel_puppy.server.schemas import DecideRequest
from otel_puppy.testing import make_call


def test_a_calls_scope_carries_every_dimension_and_its_trace_in_lowercase_hex() -> None:
    call = dataclasses.replace(
        make_call(end_s=100.0, agent="support", user="u1", service="api"),
        trace_id=0xABC,
        team="t",
        environment="prod",
        conversation="c1",
    )
    scope = call.scope()
    assert scope == Scope(
        provider="openai",
        model="gpt-4.1",
        agent="support",
        service="api",
        user="u1",
        team="t",
        environment="prod",
        conversation="c1",
        operation="chat",
        trace="00000000000000000000000000000abc",
    )
    assert scope.as_dict() == {dimension: getattr(scope, dimension) for dimension in DIMENSIONS}
    assert list(scope.as_dict()) == list(DIMENSIONS)


def test_a_requests_scope_is_a_calls_without_the_trace() -> None:
    request = DecisionRequest(provider="openai", model="gpt-4.1", agent="support", user="u1", service="api")
    call = make_call(end_s=100.0, agent="support", user="u1", service="api")
    assert request.scope().trace is None
    assert request.scope() == dataclasses.replace(call.scope(), trace=None)


def test_get_and_item_access_read_a_dimension_by_name() -> None:
    scope = Scope(provider="openai", model="gpt-4.1", agent="support")
    assert [scope.get(d) for d in DIMENSIONS] == ["openai", "gpt-4.1", "support"] + [None] * 7
    assert (scope["provider"], scope["team"]) == ("openai", None)
    assert scope.get("colour") is None
    assert scope.get("get") is None  # a method's name is not a dimension
    with pytest.raises(KeyError):
        scope["colour"]
    assert {scope: 1}[Scope(provider="openai", model="gpt-4.1", agent="support")] == 1  # hashable, by value
    with pytest.raises(dataclasses.FrozenInstanceError):
        scope.agent = "other"  # type: ignore[misc]


def test_policies_match_and_split_on_every_dimension_the_trace_too() -> None:
    assert DIMENSIONS == matching.DIMENSIONS
    assert tuple(Match.model_fields) == matching.DIMENSIONS
    # the API takes every one of them (the trace as `trace_id`, or the `traceparent` header)
    assert {d for d in matching.DIMENSIONS if d != "trace"} | {"trace_id"} <= set(DecideRequest.model_fields)
    scope = Scope(provider="openai", model="gpt-4.1-mini", agent="x,user=y", trace="ab" * 16)
    assert Match(provider=("openai",), model=("gpt-4.1*",)).matches(scope)
    assert not Match(agent=("support",)).matches(scope)
    assert not Match(team=("*",)).matches(scope)  # a missing value never matches
    assert scope_label(("agent", "user"), scope) == "agent=x\\,user=y,user="  # escaped: injective
    assert scope_label(("agent",), scope) == scope_label(("agent",), scope.as_dict())  # a mapping still works


# --- DecisionRequest.from_fields -----------------------------------------------------------------


def test_from_fields_builds_the_request_the_constructor_builds() -> None:
    request = DecisionRequest.from_fields(
        {
            "provider": "openai",
            "model": "gpt-4.1",
            "agent": "support",
            "priority": "high",
            "estimated_cost_usd": "0.02",
            "estimated_input_tokens": 1000,
            "capabilities": ["tools"],
        }
    )
    assert request == DecisionRequest(
        provider="openai",
        model="gpt-4.1",
        agent="support",
        priority=Priority.HIGH,
        estimated_cost_usd=Decimal("0.02"),
        estimated_input_tokens=1000,
        capabilities=("tools",),
    )
    assert type(request.priority) is Priority
    assert DecisionRequest.from_fields(
        {"provider": "p", "model": "m", "estimated_cost_usd": 0.1}
    ).estimated_cost_usd == (Decimal("0.1"))
    assert (
        DecisionRequest.from_fields({"provider": "p", "model": "m", "priority": Priority.BULK}).priority
        is Priority.BULK
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"provider": "p", "model": "m", "colour": "blue"}, "colour: not a field of a decision request"),
        ({"model": "m"}, "provider: is required"),
        ({"provider": "p"}, "model: is required"),
        (
            {"provider": "p", "model": "m", "priority": "urgent"},
            "priority: must be one of critical, high, normal, low, bulk",
        ),
        ({"provider": "p", "model": "m", "priority": 3}, "priority: must be one of critical, high, normal, low, bulk"),
        ({"provider": "p", "model": "m", "capabilities": "tools"}, "capabilities: must be a list of at most 32 names"),
        ({"provider": 1, "model": "m"}, "provider: must be a string, not int"),
        (
            {"provider": "p", "model": "m", "estimated_cost_usd": "-1"},
            "estimated_cost_usd: is out of range: -1 (allowed: 0 to 100000)",
        ),
        ({"provider": "p", "model": "m", "agent": "a" * 300}, "agent: is 300 characters long (allowed: at most 256)"),
    ],
)
def test_from_fields_refuses_with_a_request_error_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError) as refused:
        DecisionRequest.from_fields(fields)
    assert str(refused.value) == message
    assert refused.value.field == message.partition(":")[0]
