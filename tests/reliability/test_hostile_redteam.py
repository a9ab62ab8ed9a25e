"""Red team of issue 12: the worst value of each type at every entry point, one test per finding.

Each test reproduces what a hostile client or a buggy instrumentation could do before the fix and
asserts what happens now.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy._keys import escape
from otel_puppy.admission import settle_key as _settle_key
from otel_puppy.calls import extract_call
from otel_puppy.cli import main
from otel_puppy.client import DecisionClient
from otel_puppy.decision import Action, Decision
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PolicyErrors, RequestError
from otel_puppy.policies import parse_policy_text
from otel_puppy.policies.matching import scope_label
from otel_puppy.settings import PuppySettings
from otel_puppy.store import open_store
from otel_puppy.testing import FakeClock, engine_for_tests, make_call, make_span

PER_AGENT_USER = """
budgets:
  - {name: per-pair, per: [agent, user], limit_usd: 1, window: 30d, action: deny}
"""


NOW = 1_767_225_600.0  # the fake clock's start; the memory store keeps time only by it


def _engine(yaml: str) -> PolicyEngine:
    return engine_for_tests(parse_policy_text(yaml, Path("policies/test.yaml")), FakeClock(NOW))


# --- scope labels and settle keys are injective ---------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"agent": "x", "user": "y,user=z"}, {"agent": "x,user=y", "user": "z"}),
        ({"agent": "x,user=", "user": None}, {"agent": "x", "user": ",user="}),
        ({"agent": "x\\", "user": "y"}, {"agent": "x\\,user=y", "user": None}),
    ],
)
def test_scope_labels_of_different_values_never_collide(first: dict[str, str], second: dict[str, str]) -> None:
    assert scope_label(("agent", "user"), first) != scope_label(("agent", "user"), second)


def test_scope_labels_of_ordinary_values_are_unchanged() -> None:
    # Stored state is keyed by these: an upgrade must find the spend it counted before.
    assert scope_label(("agent", "user"), {"agent": "support-bot.v2", "user": "u@x.io|7"}) == (
        "agent=support-bot.v2,user=u@x.io|7"
    )
    assert _settle_key("openai", "gpt-4.1", "support", None) == "openai|gpt-4.1|support|"
    assert escape("a=b c", ",") == "a=b c"


def test_an_agent_named_like_another_scope_does_not_use_its_budget() -> None:
    engine = _engine(PER_AGENT_USER)
    # The attacker spends $1 as agent `x,user=y`, user `z`.
    engine.observe(make_call(end_s=NOW, agent="x,user=y", user="z", input_tokens=500_000, output_tokens=0))
    exhausted = engine.decide(provider="openai", model="gpt-4.1", agent="x,user=y", user="z", estimated_cost_usd="0.01")
    assert exhausted.action is Action.DENY
    # Before: both were `agent=x,user=y,user=z`, so agent x's user `y,user=z` was denied for the
    # attacker's spend (and the other way round the attacker could spend on the victim's budget).
    victim = engine.decide(provider="openai", model="gpt-4.1", agent="x", user="y,user=z", estimated_cost_usd="0.01")
    assert victim.action is Action.ALLOW
    scopes = sorted(hit.scope for hit in engine.snapshot().budgets)
    assert scopes == ["agent=x,user=y\\,user=z", "agent=x\\,user=y,user=z"]
    assert engine.snapshot().budget("per-pair", "agent=x\\,user=y,user=z").spent_usd == Decimal("1.000000000")
    engine.close()


@pytest.mark.parametrize(
    ("reserved_as", "span_as"),
    [
        ({"agent": "a|b", "user": "c"}, {"agent": "a", "user": "b|c"}),
        ({"agent": "a", "user": "b|c"}, {"agent": "a|b", "user": "c"}),
        ({"agent": "a|", "user": None}, {"agent": "a", "user": "|"}),
    ],
)
def test_a_span_never_settles_the_reservation_of_a_colliding_scope(
    reserved_as: dict[str, str | None], span_as: dict[str, str | None]
) -> None:
    engine = _engine("budgets:\n  - {name: all, limit_usd: 1, window: 30d, action: deny}\n")
    decision = engine.decide(
        provider="openai", model="gpt-4.1", estimated_cost_usd="0.5", **cast(dict[str, Any], reserved_as)
    )
    assert decision.action is Action.ALLOW
    assert engine.snapshot().budget("all").reserved_usd == Decimal("0.500000000")
    # Before: the settle keys (`openai|gpt-4.1|a|b|c`) were equal, and this span released the other
    # caller's reservation, so a second caller could reserve past the budget.
    span = make_call(end_s=NOW, input_tokens=1, output_tokens=0, agent=span_as["agent"], user=span_as["user"])
    engine.observe(span)
    assert engine.snapshot().budget("all").reserved_usd == Decimal("0.500000000")
    engine.close()


# --- a huge Python int where a cost is read -------------------------------------------------------

CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}
HUGE = 1 << 33_000_000  # about 10^(10^7): the SDK takes any int as an attribute value


@pytest.mark.timeout(30)  # a hang guard: before the fix this took about 25 minutes
@pytest.mark.parametrize("key", ["operation.cost", "gen_ai.usage.cost"])
def test_a_reported_cost_that_is_a_huge_int_is_rejected_at_once(key: str) -> None:
    # Before: the int was compared with the `Decimal` bound, which converts it digit by digit
    # (14 s for 10^6 digits) on the processor's worker, so no spend was applied meanwhile.
    call = extract_call(make_span({**CHAT, key: HUGE}))
    assert call is not None
    assert call.rejected == f"{key} is out of range: an integer of 33000001 bits (allowed: 0 to 100000)"


@pytest.mark.timeout(30)
def test_an_estimate_that_is_a_huge_int_is_refused_at_once() -> None:
    engine = _engine(PER_AGENT_USER)
    with pytest.raises(RequestError, match="estimated_cost_usd: is out of range: an integer of 33000001 bits"):
        engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd=HUGE)
    engine.close()


# --- lone surrogates on in-process spans ----------------------------------------------------------

SPLIT_BY_EVERY_NAME = """
budgets:
  - {name: all, limit_usd: 10, window: 30d, action: deny}
  - {name: split, per: [provider, model, service, operation], limit_usd: 10, window: 30d, action: warn}
breakers:
  - {name: providers, per: [provider, model], failure_threshold: 5, recovery_timeout: 30s}
"""
ONE_CALL = Decimal("0.002800000")  # 1,000 input and 100 output tokens of gpt-4.1


@pytest.mark.parametrize(
    ("attributes", "resource"),
    [
        ({"gen_ai.provider.name": "open\ud800ai"}, None),
        ({"gen_ai.operation.name": "chat\udfff"}, None),
        ({"otel_puppy.decision.model": "openai:gpt-4.1\ud800"}, None),
        ({"otel_puppy.decision.model": "open\ud800ai:gpt-4.1"}, None),
        ({"otel_puppy.decision_id": "\ud800"}, None),
        ({}, {"service.name": "svc\ud800"}),
    ],
)
def test_a_lone_surrogate_on_an_sdk_span_is_counted_and_never_poisons_the_store(
    tmp_path: Path, attributes: dict[str, str], resource: dict[str, str] | None
) -> None:
    # The SDK keeps any `str`; SQLite (and Redis) cannot encode a lone surrogate. Before: the span's
    # spend was lost (an internal error), its budget read as exhausted, breaker and state sync failed.
    engine = PolicyEngine(
        PuppySettings.load(store="memory://", watch_policies_s=None),
        policies=parse_policy_text(SPLIT_BY_EVERY_NAME, Path("policies/test.yaml")),
        store=open_store(f"sqlite:///{tmp_path / 'state.db'}"),
        clock=FakeClock(NOW + 10),
        registry=CollectorRegistry(auto_describe=True),
    )
    hostile = extract_call(make_span({**CHAT, **attributes}, start_ns=int(NOW * 1e9), resource=resource))
    normal = extract_call(make_span(CHAT, start_ns=int(NOW * 1e9)))
    assert hostile is not None
    assert normal is not None
    results = [observation.result.value for observation in engine.observe_many([hostile, normal])]
    assert results == ["applied", "applied"]
    assert engine.snapshot().budget("all").spent_usd == 2 * ONE_CALL
    assert engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "engine.observe"}) is None
    assert engine.problems() == ()
    engine.close()  # saves breaker and anomaly state: raised under pytest before the fix


# --- policy names are parts of stored keys and labels ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("'a|b'", "a policy name may not contain '|'"),
        ('"a\\nb"', "a policy name may not contain '\\n'"),
        ('"a\\0b"', "a policy name may not contain '\\x00'"),
        ("n" * 257, "String should have at most 256 characters"),
    ],
)
def test_a_policy_name_that_could_address_other_state_is_refused(name: str, error: str) -> None:
    # Before: accepted. `budget:a|b|` then read as the state of budget `a`, breaker sync compared
    # `key.partition("|")[0]` with the names, and a 100 KB name became every series' label value.
    with pytest.raises(PolicyErrors) as raised:
        parse_policy_text(f"budgets:\n  - {{name: {name}, limit_usd: 1, window: day, action: deny}}\n", Path("p.yaml"))
    assert [f"{e.path}: {e.message}".split(", got")[0] for e in raised.value.errors] == [f"budgets[0].name: {error}"]


def test_a_price_for_a_model_name_no_span_can_carry_is_refused() -> None:
    with pytest.raises(PolicyErrors, match=r"prices\[0\]\.model: String should have at most 256 characters"):
        parse_policy_text(
            f"prices:\n  - {{provider: p, model: {'m' * 257}, input_mtok: 1, output_mtok: 1}}\n", Path("p.yaml")
        )


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1e999999", " (is out of range: 1e999999 (allowed: 0 to 100000))"),
        ("99999999999999999999999", " (is out of range: 99999999999999999999999 (allowed: 0 to 100000))"),
        ("-1", " (is out of range: -1 (allowed: 0 to 100000))"),
        ("NaN", ""),
        ("1" * 100, ""),
    ],
)
def test_decide_on_the_command_line_refuses_an_estimate_out_of_bounds_as_a_usage_error(
    value: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: `1e999999` passed the CLI's own check and raised `OutOfBounds` as a traceback (exit 1),
    # after the URL was resolved; now it is argparse's usage error (exit 2) and nothing is sent.
    with pytest.raises(SystemExit) as exited:
        main(["decide", "--url", "http://127.0.0.1:9", "--provider", "openai", "--model", "gpt-4.1",
              f"--estimated-cost-usd={value}"])  # fmt: skip
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"otel-puppy decide: error: argument --estimated-cost-usd: not an amount in USD: {value!r}{reason}"
    )


# --- DecisionClient against a hostile service ------------------------------------------------------


def _drip(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n")
    while True:
        connection.sendall(b" ")
        time.sleep(0.05)


def _huge(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500000000\r\n\r\n")
    chunk = b" " * (1 << 20)
    for _ in range(477):
        connection.sendall(chunk)


def _deep(connection: socket.socket) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
    connection.sendall(body)


@contextmanager
def _hostile_service(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection, suppress(OSError):
                connection.settimeout(10)
                connection.recv(65536)
                answer(connection)
                connection.shutdown(socket.SHUT_WR)  # then drain: closing with unread bytes resets
                while connection.recv(65536):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopped.set()
        listener.close()


DRIP_TIMEOUT_S = 0.25
"""The dripping answer is waited out, twice (a retry): a short budget, still five of its 0.05 s drips
(a per-read timeout would never fire). The other answers keep 0.5 s to be read and refused in."""


@pytest.mark.timeout(60)  # a hang guard: before the fix the dripping answer held the caller for ever
@pytest.mark.parametrize(
    ("answer", "timeout_s", "cause"),
    [
        (_drip, DRIP_TIMEOUT_S, "ReadTimeout after 0.25s"),
        (_huge, 0.5, "RemoteProtocolError: the answer is larger than 1048576 bytes"),
        (_deep, 0.5, "HTTP 200 without a decision: RecursionError"),
    ],
)
@pytest.mark.parametrize("fail_open", [True, False])
def test_a_hostile_service_makes_the_client_fail_by_its_mode(
    answer: Callable[[socket.socket], None], timeout_s: float, cause: str, fail_open: bool
) -> None:
    # Before: a dripping answer was read for ever (httpx's timeout bounds each read, not the answer),
    # a 500 MB answer was read whole (1.1 GB of memory), and a deeply nested one raised
    # RecursionError into the agent.
    with (
        _hostile_service(answer) as url,
        DecisionClient(url, timeout_s=timeout_s, retries=1, fail_open=fail_open) as client,
    ):
        decision = client.decide(provider="openai", model="gpt-4.1")
    assert decision.action is (Action.ALLOW if fail_open else Action.DENY)
    assert cause in decision.reasons[0].message


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("answer", "timeout_s", "cause"),
    [(_drip, DRIP_TIMEOUT_S, "ReadTimeout after 0.25s"), (_deep, 0.5, "RecursionError")],
)
def test_a_hostile_service_makes_the_async_client_fail_by_its_mode(
    answer: Callable[[socket.socket], None], timeout_s: float, cause: str
) -> None:
    async def decide(url: str) -> Decision:
        async with DecisionClient(url, timeout_s=timeout_s, retries=1) as client:
            return await client.adecide(provider="openai", model="gpt-4.1")

    with _hostile_service(answer) as url:
        decision = asyncio.run(decide(url))
    assert decision.action is Action.ALLOW
    assert cause in decision.reasons[0].message
