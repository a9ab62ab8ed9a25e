"""DecisionClient against a real uvicorn server: the engine's decisions, reused connections,
auth, retries within a time budget, fail-open and fail-closed, and a guarded pydantic-ai agent."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import SecretStr
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from starlette.types import ASGIApp, Receive, Scope, Send

import otel_puppy
from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.client import UNREACHABLE_RETRY_AFTER_S, DecisionClient, DecisionServiceError, _retry_after
from otel_puppy.decision import Action, Decision, DecisionRequest, PolicyHit, Priority, Severity
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PolicyDenied, PuppyError, RequestError
from otel_puppy.policies import parse_policy_text
from otel_puppy.server.app import create_app
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import engine_for_tests, make_call
from tests._service import free_port
from tests._serving import serve as serve_app
from tests.server.test_app import POLICIES

TOKEN = "s3cret-token"
T = TypeVar("T")


# --- a real server, counting its TCP connections ------------------------------------------------


@dataclass
class Seen:
    """What reached the server: one client address per TCP connection, every Authorization header."""

    peers: set[tuple[str, int]] = field(default_factory=set)
    authorization: list[str | None] = field(default_factory=list)
    requests: int = 0


class Recorder:
    def __init__(self, app: ASGIApp, seen: Seen) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host, port = scope["client"]
            self.seen.peers.add((host, port))
            headers = dict(scope["headers"])
            value = headers.get(b"authorization")
            self.seen.authorization.append(value.decode() if value is not None else None)
            self.seen.requests += 1
        await self.app(scope, receive, send)


@contextmanager
def serve(engine: PolicyEngine) -> Iterator[tuple[str, Seen]]:
    """`create_app(engine)` on uvicorn in a thread, on a free loopback port, with what reached it."""
    seen = Seen()
    with serve_app(Recorder(create_app(engine), seen)) as url:
        yield url, seen


@contextmanager
def hung_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog does) and never answers."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a loop of its own, closed after (see tests/policies/test_breaker.py)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


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


def engine_with(policies: str = POLICIES, **settings: Any) -> PolicyEngine:
    """openai: two calls by `support`, one by `research` ($0.0028 each); the anthropic breaker open."""
    engine = engine_for_tests(parse_policy_text(policies, Path("policies/test.yaml")), **settings)
    engine.observe(call(engine))
    engine.observe(call(engine))
    engine.observe(call(engine, agent="research"))
    for _ in range(2):
        engine.observe(call(engine, provider="anthropic", model="claude-sonnet-4-5", error=ErrorClass.SERVER_ERROR))
    return engine


@pytest.fixture
def engines() -> Iterator[tuple[PolicyEngine, PolicyEngine]]:
    """The served engine and its twin in-process, in the same state."""
    served, twin = engine_with(), engine_with()
    yield served, twin
    served.close()
    twin.close()


@pytest.fixture
def service(engines: tuple[PolicyEngine, PolicyEngine]) -> Iterator[tuple[str, Seen]]:
    with serve(engines[0]) as served:
        yield served


def same(remote: Decision, local: Decision) -> None:
    """Equal in every field but the decision id (random per process) and the time it was made."""
    assert remote.to_dict() | {"decision_id": None, "created_at": None} == local.to_dict() | {
        "decision_id": None,
        "created_at": None,
    }
    assert (remote.decision_id is None) == (local.decision_id is None)


# --- the same decisions as in-process ----------------------------------------------------------

PATIENT: dict[str, Any] = {"timeout_s": 30.0, "retries": 0}
"""For tests that compare state: a retry after a slow answer (a loaded CI machine) would reserve twice."""

REQUESTS: list[DecisionRequest | dict[str, Any]] = [
    {"provider": "openai", "model": "gpt-4.1", "agent": "research", "estimated_cost_usd": "0.001"},
    {"provider": "openai", "model": "gpt-4.1", "agent": "support", "estimated_cost_usd": 0.0005},
    {"provider": "anthropic", "model": "claude-sonnet-4-5", "agent": "research"},
    {
        "provider": "openai",
        "model": "gpt-4.1",
        "agent": "batch",
        "estimated_cost_usd": Decimal("0.5"),
        "priority": "bulk",
    },
    {"provider": "openai", "model": "gpt-4.1", "estimated_input_tokens": 2000, "estimated_output_tokens": 500},
    DecisionRequest(
        provider="openai",
        model="gpt-4.1-mini",
        agent="research",
        user="u-1",
        team="core",
        environment="prod",
        conversation="c-9",
        operation="embeddings",
        priority=Priority.HIGH,
        estimated_cost_usd=Decimal("0.000000001"),
        capabilities=("tools",),
        context_tokens=1000,
    ),
]


def ask(decide: Callable[..., T], request: DecisionRequest | dict[str, Any]) -> T:
    return decide(request) if isinstance(request, DecisionRequest) else decide(**request)


def test_sync_and_async_decisions_are_the_engines(
    engines: tuple[PolicyEngine, PolicyEngine], service: tuple[str, Seen]
) -> None:
    _, twin = engines
    url, _ = service
    actions = []
    with DecisionClient(url, **PATIENT) as client:
        for request in REQUESTS:
            remote = ask(client.decide, request)
            same(remote, ask(twin.decide, request))
            actions.append((remote.action.value, remote.model))

        async def decide_all() -> list[tuple[str, str]]:
            async with DecisionClient(url, **PATIENT) as aclient:
                seen = []
                for request in REQUESTS:
                    remote = await ask(aclient.adecide, request)
                    same(remote, ask(twin.decide, request))
                    seen.append((remote.action.value, remote.model))
                return seen

        async_actions = run(decide_all())
        assert (client.failures, client.retried) == (0, 0)
    assert actions == [
        ("allow", "gpt-4.1"),
        ("degrade", "gpt-4.1-mini"),  # per-agent: support is over $0.005
        ("deny", "claude-sonnet-4-5"),  # the anthropic breaker is open
        ("deny", "gpt-4.1"),  # $0.5 is over org-daily
        ("degrade", "gpt-4.1-mini"),  # the estimate is priced: $0.008 is over per-agent
        ("allow", "gpt-4.1-mini"),
    ]
    # the first pass reserved what it was allowed; the second sees it, as the twin does
    assert async_actions == [
        ("allow", "gpt-4.1"),
        ("degrade", "gpt-4.1-mini"),
        ("deny", "claude-sonnet-4-5"),
        ("deny", "gpt-4.1"),
        ("deny", "gpt-4.1"),  # now org-daily is too full for the $0.008 estimate
        ("allow", "gpt-4.1-mini"),
    ]


def test_one_connection_serves_many_calls(service: tuple[str, Seen]) -> None:
    url, seen = service
    with DecisionClient(url, **PATIENT) as client:
        for _ in range(25):
            client.decide(provider="openai", model="gpt-4.1-mini", agent="research")
        assert seen.requests == 25
        assert len(seen.peers) == 1

        async def many() -> None:
            async with DecisionClient(url, **PATIENT) as aclient:
                for _ in range(25):
                    await aclient.adecide(provider="openai", model="gpt-4.1-mini", agent="research")

        run(many())
        assert seen.requests == 50
        assert len(seen.peers) == 2  # one more for the event loop's client

        # threads share the client's pool: at most one connection each, reused across their calls
        def work() -> None:
            for _ in range(10):
                assert client.decide(provider="openai", model="gpt-4.1-mini").action is Action.ALLOW

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen.requests == 90
        assert len(seen.peers) <= 2 + 4


# --- auth and refused requests: loud, never failed open -----------------------------------------


def test_token_is_sent_and_a_missing_or_wrong_one_raises() -> None:
    engine = engine_with(api_token=TOKEN)
    with serve(engine) as (url, seen):
        with DecisionClient(url, api_token=SecretStr(TOKEN)) as client:
            assert client.decide(provider="openai", model="gpt-4.1-mini").action is Action.ALLOW
        assert seen.authorization == [f"Bearer {TOKEN}"]
        assert TOKEN not in repr(client)

        for token, message in [
            (None, "this endpoint needs 'Authorization: Bearer <token>'"),
            ("nope", "invalid bearer token"),
        ]:
            with DecisionClient(url, api_token=token) as client, pytest.raises(DecisionServiceError) as refused:
                client.decide(provider="openai", model="gpt-4.1")
            error = refused.value
            assert isinstance(error, PuppyError)
            assert (error.status_code, error.code, error.message) == (401, "unauthorized", message)
            assert error.body == {"code": "unauthorized", "message": message}
            assert (client.failures, client.retried) == (0, 0)

        async def unauthorized() -> DecisionServiceError:
            async with DecisionClient(url) as aclient:
                with pytest.raises(DecisionServiceError) as refused:
                    await aclient.adecide(provider="openai", model="gpt-4.1")
                return refused.value

        assert run(unauthorized()).status_code == 401
        assert seen.requests == 4  # never retried
    engine.close()


def test_an_invalid_request_raises_with_the_servers_message() -> None:
    # Only the service knows prices: 10^8 tokens of this model are over the $100,000 an estimate may be.
    pricey = POLICIES + "prices:\n  - {provider: acme, model: gold, input_mtok: 2000, output_mtok: 2000}\n"
    engine = engine_with(pricey)
    with serve(engine) as (url, seen), DecisionClient(url) as client, pytest.raises(DecisionServiceError) as refused:
        client.decide(provider="acme", model="gold", estimated_input_tokens=100_000_000)
    engine.close()
    assert (refused.value.status_code, refused.value.code) == (422, "invalid_request")
    assert refused.value.message == "estimated_input_tokens: is priced at over 100000 USD for gold"
    assert seen.requests == 1


def test_a_value_out_of_bounds_fails_before_any_request(service: tuple[str, Seen]) -> None:
    url, seen = service
    with DecisionClient(url) as client, pytest.raises(RequestError, match=r"^estimated_cost_usd: is out of range: -1 "):
        client.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="-1")
    assert seen.requests == 0


def test_unknown_fields_fail_before_any_request() -> None:
    with (
        DecisionClient(f"http://127.0.0.1:{free_port()}") as client,
        pytest.raises(RequestError, match=r"^colour: not a field of a decision request$"),
    ):
        client.decide(provider="openai", model="gpt-4.1", colour="blue")


# --- the service cannot answer: fail open or closed, within the budget --------------------------


def unreachable(cause: str, action: Action, retry_after_s: float | None = None) -> PolicyHit:
    how = "open" if action is Action.ALLOW else "closed"
    return PolicyHit(
        kind="internal",
        policy="otel_puppy",
        action=action,
        message=f"decision service unreachable ({cause}); failing {how}",
        severity=Severity.CRITICAL,
        retry_after_s=retry_after_s,
    )


def test_service_down_fails_open_within_the_budget() -> None:
    client = DecisionClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5, retries=2)
    started = time.monotonic()
    decision = client.decide(provider="openai", model="gpt-4.1", agent="support", estimated_cost_usd=0.02)
    elapsed = time.monotonic() - started
    client.close()
    assert elapsed < 0.5 * 3 + 0.5
    assert (decision.action, decision.provider, decision.model) == (Action.ALLOW, "openai", "gpt-4.1")
    assert decision.allowed
    [hit] = decision.reasons
    cause = hit.message.removeprefix("decision service unreachable (").removesuffix("); failing open")
    assert cause.startswith("ConnectError: ")
    assert cause.endswith(", after 3 attempts")
    assert hit == unreachable(cause, Action.ALLOW)
    assert (decision.decision_id, decision.retry_after_s, decision.estimated_cost_usd) == (None, None, Decimal("0.02"))
    assert (client.failures, client.retried) == (1, 2)


def test_service_down_fails_closed_sync_and_async() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = DecisionClient(url, fail_open=False, retries=1)

    async def adecide() -> Decision:
        async with client:
            return await client.adecide(provider="anthropic", model="claude-sonnet-4-5")

    for decision in (client.decide(provider="anthropic", model="claude-sonnet-4-5"), run(adecide())):
        assert (decision.action, decision.model, decision.retry_after_s) == (
            Action.DENY,
            "claude-sonnet-4-5",
            UNREACHABLE_RETRY_AFTER_S,
        )
        [hit] = decision.reasons
        assert hit.message.startswith("decision service unreachable (ConnectError: ")
        assert hit.message.endswith(", after 2 attempts); failing closed")
        assert (hit.kind, hit.policy, hit.action, hit.severity) == ("internal", "otel_puppy", Action.DENY, "critical")
        assert hit.retry_after_s == UNREACHABLE_RETRY_AFTER_S
        with pytest.raises(PolicyDenied):
            raise PolicyDenied(decision)
    assert (client.failures, client.retried) == (2, 2)


def test_a_hung_service_times_out_within_the_budget() -> None:
    with hung_server() as url:
        # Waits of at most 1 and 2 ms between the attempts, so the third one starts well inside the 0.6 s
        # budget: with the default 25-50 and 50-100 ms, as little as 50 ms was to spare, and four test
        # processes on two CPUs delayed the first two attempts by more (2 attempts, not 3).
        client = DecisionClient(url, timeout_s=0.2, retries=2, backoff_s=0.001)
        started = time.monotonic()
        decision = client.decide(provider="openai", model="gpt-4.1")
        elapsed = time.monotonic() - started
        client.close()
        assert 0.4 < elapsed < 0.2 * 3 + 0.5
        assert decision.action is Action.ALLOW
        assert decision.reasons == (unreachable("ReadTimeout after 0.2s, after 3 attempts", Action.ALLOW),)

        async def adecide() -> tuple[Decision, float]:
            async with DecisionClient(url, timeout_s=0.2, retries=1, fail_open=False) as aclient:
                started = time.monotonic()
                return await aclient.adecide(provider="openai", model="gpt-4.1"), time.monotonic() - started

        decision, elapsed = run(adecide())
        assert 0.2 < elapsed < 0.2 * 2 + 0.5
        assert decision.action is Action.DENY
        assert decision.reasons == (
            unreachable("ReadTimeout after 0.2s, after 2 attempts", Action.DENY, UNREACHABLE_RETRY_AFTER_S),
        )


# --- retries, with a mock transport -------------------------------------------------------------

ALLOWED = Decision(Action.ALLOW, "openai", "gpt-4.1", decision_id="abc").to_dict()


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[float]]:
    """A transport answering in order (the last answer repeats); it records when each request came."""
    times: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        answer = answers[min(len(times), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), times


def test_503_with_retry_after_is_honoured_then_succeeds() -> None:
    transport, times = scripted(
        httpx.Response(503, json={"code": "store_unavailable", "message": "later"}, headers={"Retry-After": "1"}),
        httpx.Response(200, json=ALLOWED),
    )
    with DecisionClient(timeout_s=1.0, retries=2, transport=transport) as client:
        decision = client.decide(provider="openai", model="gpt-4.1")
    assert decision == Decision.from_dict(ALLOWED)
    assert len(times) == 2
    assert 1.0 <= times[1] - times[0] < 1.5
    assert (client.failures, client.retried) == (0, 1)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_answers_are_retried_async(status: int) -> None:
    transport, times = scripted(httpx.Response(status, headers={"Retry-After": "0"}), httpx.Response(200, json=ALLOWED))

    async def adecide() -> Decision:
        async with DecisionClient(async_transport=transport) as client:
            decision = await client.adecide(provider="openai", model="gpt-4.1")
            assert (client.failures, client.retried) == (0, 1)
            return decision

    assert run(adecide()) == Decision.from_dict(ALLOWED)
    assert len(times) == 2


def test_a_retry_after_beyond_the_budget_stops_at_once() -> None:
    transport, times = scripted(
        httpx.Response(503, json={"code": "unavailable", "message": "x"}, headers={"Retry-After": "30"})
    )
    with DecisionClient(timeout_s=0.5, retries=2, fail_open=False, transport=transport) as client:
        started = time.monotonic()
        decision = client.decide(provider="openai", model="gpt-4.1")
        assert time.monotonic() - started < 0.5
    assert len(times) == 1
    assert (decision.action, decision.retry_after_s) == (Action.DENY, 30.0)
    assert decision.reasons == (unreachable("HTTP 503 unavailable: x, after 1 attempt", Action.DENY, 30.0),)


@pytest.mark.parametrize("retries", [0, 1, 3])
@pytest.mark.parametrize(
    "answer",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("closed"),
        httpx.Response(502),
    ],
    ids=["connect", "timeout", "protocol", "502"],
)
def test_retries_count(retries: int, answer: httpx.Response | Exception) -> None:
    transport, times = scripted(answer)
    with DecisionClient(retries=retries, backoff_s=0.001, transport=transport) as client:
        decision = client.decide(provider="openai", model="gpt-4.1")
    assert len(times) == retries + 1
    assert decision.action is Action.ALLOW
    assert decision.reasons[0].message.endswith(f"after {retries + 1} attempt{'s' if retries else ''}); failing open")
    assert (client.failures, client.retried) == (1, retries)


def test_backoff_grows_exponentially_with_jitter() -> None:
    transport, times = scripted(httpx.ConnectError("refused"))
    with DecisionClient(timeout_s=1.0, retries=3, backoff_s=0.02, transport=transport) as client:
        client.decide(provider="openai", model="gpt-4.1")
    waits = [b - a for a, b in itertools.pairwise(times)]
    for wait, base in zip(waits, [0.02, 0.04, 0.08], strict=True):
        assert base * 0.5 <= wait < base + 0.1


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (httpx.Response(500, json={"code": "internal_error", "message": "boom"}), "HTTP 500 internal_error: boom"),
        (httpx.Response(200, text="<html>captive portal</html>"), "HTTP 200 without a decision: JSONDecodeError: "),
        (httpx.Response(200, json={"status": "ok"}), "HTTP 200 without a decision: KeyError: 'action'"),
    ],
)
def test_answers_that_are_not_decisions_fail_open_without_retrying(answer: httpx.Response, cause: str) -> None:
    transport, times = scripted(answer)
    with DecisionClient(transport=transport) as client:
        decision = client.decide(provider="openai", model="gpt-4.1")
    assert len(times) == 1
    assert decision.action is Action.ALLOW
    assert cause in decision.reasons[0].message
    assert client.failures == 1


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_client_errors_raise_without_retrying(status: int) -> None:
    transport, times = scripted(httpx.Response(status, json={"code": "nope", "message": "because"}))
    with DecisionClient(transport=transport) as client, pytest.raises(DecisionServiceError) as refused:
        client.decide(provider="openai", model="gpt-4.1")
    assert (refused.value.status_code, refused.value.code, refused.value.message) == (status, "nope", "because")
    assert len(times) == 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_values(header: str, seconds: float | None) -> None:
    assert _retry_after(header) == seconds


# --- configuration ------------------------------------------------------------------------------


def test_from_settings_reaches_the_service_the_settings_describe() -> None:
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=ALLOWED)

    settings = PuppySettings(host="0.0.0.0", port=4400, api_token=SecretStr(TOKEN), fail_open=False)
    with DecisionClient.from_settings(settings, transport=httpx.MockTransport(handle), retries=0) as client:
        client.decide(provider="openai", model="gpt-4.1", priority=Priority.LOW, estimated_cost_usd=Decimal("1E-9"))
    assert (client.url, client.fail_open, client.retries) == ("http://127.0.0.1:4400", False, 0)
    [request] = requests
    assert str(request.url) == "http://127.0.0.1:4400/v1/decide"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.content == (
        b'{"provider":"openai","model":"gpt-4.1","priority":"low","estimated_cost_usd":"0.000000001"}'
    )
    assert DecisionClient.from_settings(PuppySettings(host="::1", port=1)).url == "http://[::1]:1"


def test_misconfiguration_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="url must be"):
        DecisionClient("127.0.0.1:4319")
    with pytest.raises(PuppyError, match="api_token is set but empty"):
        DecisionClient(api_token=" ")
    client = DecisionClient()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.decide(provider="openai", model="gpt-4.1")


# --- a pydantic-ai agent, guarded through the service -------------------------------------------

GUARD_POLICIES = """
budgets:
  - name: support-daily
    match: {agent: support}
    limit_usd: 0.004
    window: day
    action: deny
"""


def test_guarded_agent_is_denied_by_a_budget_through_the_service() -> None:
    engine = engine_for_tests(parse_policy_text(GUARD_POLICIES, Path("policies/test.yaml")))
    calls: list[int] = []

    def reply(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(len(messages))
        return ModelResponse(parts=[TextPart("ok")])

    with serve(engine) as (url, seen), DecisionClient(url, api_token=None) as client:
        agent = Agent(otel_puppy.guarded(FunctionModel(reply), client, agent="support"), name="support")
        assert agent.run_sync("hello").output == "ok"
        engine.observe(call(engine))  # $0.0028
        engine.observe(call(engine))  # $0.0056 of $0.004: the budget denies
        with pytest.raises(PolicyDenied) as denied:
            agent.run_sync("hello again")
        assert seen.requests == 2
        assert len(seen.peers) == 1
        # guarded() awaited adecide() on run_sync's event loop: its connections close on that loop
        asyncio.get_event_loop_policy().get_event_loop().run_until_complete(client.aclose())
    engine.close()

    assert calls == [1]  # the denied request never reached the model
    decision = denied.value.decision
    assert decision.action is Action.DENY
    [hit] = decision.reasons
    assert (hit.kind, hit.policy, hit.action, hit.scope) == ("budget", "support-daily", Action.DENY, "")
    assert (hit.spent_usd, hit.limit_usd) == (Decimal("0.005600000"), Decimal("0.004"))
    assert hit.message == "budget support-daily: $0.005600000 of $0.004 this day (140%); denied"
    assert hit.retry_after_s is not None
    assert hit.retry_after_s > 0  # until the day resets
    assert decision.retry_after_s == hit.retry_after_s
    assert str(denied.value) == f"denied: {hit.message}"
    assert client.failures == 0


def test_its_repr_never_shows_credentials_in_the_url() -> None:
    client = DecisionClient("http://user:s3cret@127.0.0.1:1")
    assert repr(client) == "DecisionClient('http://***@127.0.0.1:1', fail_open=True)"
    client.close()
