"""Circuit breakers: the pure state machine, `BreakerBoard` (feed, consult, guard, export, reload)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Iterable
from typing import Any

import pytest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import ValidationError

from otel_puppy.calls import ErrorClass, LLMCall, extract_call
from otel_puppy.decision import Action, PolicyHit, Severity
from otel_puppy.exceptions import CircuitOpenError
from otel_puppy.policies.breaker import (
    BreakerBoard,
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    advance,
    apply_event,
    classify_exception,
)
from otel_puppy.testing import FakeClock, make_call, make_span

T0 = 1_767_225_600.0  # FakeClock's default start


def policy(name: str = "providers", **fields: object) -> BreakerPolicy:
    values: dict[str, object] = {
        "failure_threshold": 3,
        "recovery_timeout": "30s",
        "success_threshold": 2,
        "half_open_max_calls": 2,
        **fields,
    }
    return BreakerPolicy.model_validate({"name": name, **values})


def call(provider: str = "openai", model: str = "gpt-4.1", error: ErrorClass | None = None) -> LLMCall:
    return make_call(end_s=0, duration_s=0, provider=provider, model=model, error=error)


def fail(n: int, provider: str = "openai", model: str = "gpt-4.1") -> list[LLMCall]:
    return [call(provider, model, ErrorClass.SERVER_ERROR) for _ in range(n)]


def ok(n: int = 1, provider: str = "openai", model: str = "gpt-4.1") -> list[LLMCall]:
    return [call(provider, model) for _ in range(n)]


class Transitions:
    """An `on_transition` that remembers (policy, subject, from, to) for each change."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []

    def __call__(self, status: BreakerStatus, previous: str) -> None:
        self.seen.append((status.policy, status.subject, previous, status.state))


def board_for(*policies: BreakerPolicy) -> tuple[BreakerBoard, FakeClock, Transitions]:
    clock = FakeClock()
    transitions = Transitions()
    return BreakerBoard(policies or (policy(),), clock, transitions), clock, transitions


def only(board: BreakerBoard) -> BreakerStatus:
    (status,) = board.statuses()
    return status


def open_hit(retry_after_s: float, message: str, subject: str = "openai", shadow: bool = False) -> PolicyHit:
    return PolicyHit(
        kind="breaker",
        policy="providers",
        action=Action.DENY,
        message=message,
        scope=subject,
        severity=Severity.CRITICAL,
        shadow=shadow,
        retry_after_s=retry_after_s,
    )


def probe_hit(probe: int, of: int = 2, subject: str = "openai", shadow: bool = False) -> PolicyHit:
    return PolicyHit(
        kind="breaker",
        policy="providers",
        action=Action.ALLOW,
        message=f"breaker providers: {subject} is half-open: probe {probe} of {of}",
        scope=subject,
        severity=Severity.WARNING,
        shadow=shadow,
    )


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run`, on a loop of its own: `asyncio.run` resets the thread's current event loop,
    and one left there by an earlier test (pydantic-ai's `run_sync`) would be collected unclosed,
    failing whichever test runs next with a ResourceWarning."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coroutine)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def half_open(board: BreakerBoard, clock: FakeClock, provider: str = "openai", model: str = "gpt-4.1") -> None:
    board.observe(fail(3, provider, model))
    clock.advance(30)


# --- the full cycle -------------------------------------------------------------------------------


def test_closed_open_half_open_closed() -> None:
    board, clock, transitions = board_for()
    assert board.check("openai", "gpt-4.1") == []

    board.observe(fail(2))
    assert only(board) == BreakerStatus(
        policy="providers",
        subject="openai",
        provider="openai",
        model=None,
        state="closed",
        failures=2,
        successes=0,
        opened_at=None,
        retry_at=None,
        transitions=0,
        shadow=False,
    )
    assert board.check("openai", "gpt-4.1") == []

    clock.advance(5)
    board.observe(fail(1))
    status = only(board)
    assert (status.state, status.failures, status.opened_at, status.retry_at) == ("open", 3, T0 + 5, T0 + 35)
    clock.advance(18)
    assert board.check("openai", "gpt-4.1") == [
        open_hit(12.0, "breaker providers: openai is open after 3 failures; retry in 12.0s")
    ]
    assert not board.available("openai", "gpt-4.1")

    clock.advance(12)  # exactly the recovery timeout
    assert board.check("openai", "gpt-4.1") == [probe_hit(1)]
    status = only(board)
    assert (status.state, status.successes, status.opened_at, status.retry_at) == ("half_open", 0, T0 + 5, T0 + 35)

    board.observe(ok())
    assert (only(board).state, only(board).successes) == ("half_open", 1)
    board.observe(ok())
    assert only(board) == BreakerStatus(
        policy="providers",
        subject="openai",
        provider="openai",
        model=None,
        state="closed",
        failures=0,
        successes=0,
        opened_at=None,
        retry_at=None,
        transitions=3,
        shadow=False,
    )
    assert board.check("openai", "gpt-4.1") == []
    assert transitions.seen == [
        ("providers", "openai", "closed", "open"),
        ("providers", "openai", "open", "half_open"),
        ("providers", "openai", "half_open", "closed"),
    ]


def test_half_open_failure_opens_again_with_a_new_opened_at() -> None:
    board, clock, transitions = board_for()
    half_open(board, clock)
    assert board.check("openai", "gpt-4.1") == [probe_hit(1)]
    board.observe(ok())
    clock.advance(2)
    board.observe(fail(1))

    status = only(board)
    assert (status.state, status.failures, status.successes) == ("open", 4, 0)
    assert (status.opened_at, status.retry_at, status.transitions) == (T0 + 32, T0 + 62, 3)
    assert board.check("openai", "gpt-4.1") == [
        open_hit(30.0, "breaker providers: openai is open after a failed probe; retry in 30.0s")
    ]
    assert transitions.seen[-2:] == [
        ("providers", "openai", "open", "half_open"),
        ("providers", "openai", "half_open", "open"),
    ]


def test_the_lazy_half_open_is_seen_by_whatever_reads_or_feeds_first() -> None:
    board, clock, transitions = board_for()
    board.observe(fail(3))
    clock.advance(29.9)
    assert board.statuses()[0].state == "open"
    clock.advance(0.1)
    board.observe(fail(1))  # fed: half-open first, then the failed probe opens it again
    assert transitions.seen == [
        ("providers", "openai", "closed", "open"),
        ("providers", "openai", "open", "half_open"),
        ("providers", "openai", "half_open", "open"),
    ]
    assert only(board).opened_at == T0 + 30


def test_results_while_open_change_nothing() -> None:
    board, clock, _ = board_for()
    board.observe(fail(3))
    before = only(board)
    clock.advance(10)
    board.observe([*ok(5), *fail(5)])
    assert only(board) == before


# --- what counts --------------------------------------------------------------------------------


def test_client_errors_do_not_count() -> None:
    board, _, transitions = board_for()
    board.observe(fail(2))
    board.observe([call(error=ErrorClass.CLIENT_ERROR) for _ in range(10)])
    assert (only(board).state, only(board).failures) == ("closed", 2)  # nor do they reset the count
    board.observe(fail(1))
    assert only(board).state == "open"
    assert transitions.seen == [("providers", "openai", "closed", "open")]


@pytest.mark.parametrize(
    "error",
    [ErrorClass.SERVER_ERROR, ErrorClass.TIMEOUT, ErrorClass.RATE_LIMIT, ErrorClass.CONNECTION, ErrorClass.OTHER],
)
def test_provider_failures_count(error: ErrorClass) -> None:
    board, _, _ = board_for()
    board.observe([call(error=error) for _ in range(3)])
    assert only(board).state == "open"


def test_policy_failures_choose_what_counts() -> None:
    board, _, _ = board_for(policy(failures=["rate_limit"]))
    board.observe(fail(5))
    assert only(board).failures == 0
    board.observe([call(error=ErrorClass.RATE_LIMIT) for _ in range(3)])
    assert only(board).state == "open"


def test_a_success_resets_consecutive_failures() -> None:
    board, _, _ = board_for()
    board.observe([*fail(2), *ok(), *fail(2)])
    assert (only(board).state, only(board).failures) == ("closed", 2)
    board.observe(fail(1))
    assert (only(board).state, only(board).failures) == ("open", 3)


def test_failed_spans_from_extract_call() -> None:
    attributes = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4.1", "gen_ai.operation.name": "chat"}
    server_error = extract_call(make_span({**attributes, "http.response.status_code": 503}, error=True))
    bad_request = extract_call(make_span(attributes, error=True, exception_type="openai.BadRequestError"))
    success = extract_call(make_span({**attributes, "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5}))
    assert server_error is not None
    assert bad_request is not None
    assert success is not None
    assert (server_error.error_class, bad_request.error_class, success.error_class) == (
        ErrorClass.SERVER_ERROR,
        ErrorClass.CLIENT_ERROR,
        None,
    )

    board, _, _ = board_for()
    board.observe([server_error, bad_request, server_error])
    assert only(board).failures == 2
    board.observe([success])
    assert only(board).failures == 0


def test_match_selects_calls() -> None:
    board, _, _ = board_for(policy(match={"provider": "anthropic", "model": "claude-*"}))
    board.observe([*fail(3, "openai"), *fail(3, "anthropic", "claude-haiku-4-5")])
    assert [(s.subject, s.state) for s in board.statuses()] == [("anthropic", "open")]
    assert board.check("openai", "gpt-4.1") == []
    assert board.check("anthropic", "other-model") == []  # the breaker does not apply to this model
    assert len(board.check("anthropic", "claude-sonnet-4-5")) == 1


def test_breakers_match_on_provider_and_model_only() -> None:
    assert policy(match=None).match is None
    assert policy(match={"provider": "openai", "model": "gpt-*"}).match is not None
    with pytest.raises(ValidationError, match="a breaker can match on provider and model only, not agent, user"):
        policy(match={"provider": "openai", "agent": "support", "user": "u1"})


# --- probes ---------------------------------------------------------------------------------------


def test_probe_permits_are_limited_and_released() -> None:
    board, clock, _ = board_for()
    half_open(board, clock)
    assert board.check("openai", "gpt-4.1", acquire=False) == [probe_hit(1)]
    assert board.check("openai", "gpt-4.1", acquire=False) == [probe_hit(1)]  # nothing taken
    assert board.check("openai", "gpt-4.1") == [probe_hit(1)]
    assert board.available("openai", "gpt-4.1")
    assert board.check("openai", "gpt-4.1") == [probe_hit(2)]

    in_flight = open_hit(1.0, "breaker providers: openai is half-open: all 2 probes in flight; retry in 1.0s")
    assert board.check("openai", "gpt-4.1", acquire=False) == [in_flight]
    assert not board.available("openai", "gpt-4.1")

    board.release("openai", "gpt-4.1")  # the last check took the second permit: it comes back
    assert board.available("openai", "gpt-4.1")
    assert board.check("openai", "gpt-4.1") == [probe_hit(2)]
    assert board.check("openai", "gpt-4.1") == [in_flight]
    board.release("openai", "gpt-4.1")  # the last check took nothing: nothing comes back
    assert board.check("openai", "gpt-4.1", acquire=False) == [in_flight]

    board.observe([call(error=ErrorClass.CLIENT_ERROR)])  # one probe ended
    assert board.check("openai", "gpt-4.1") == [probe_hit(2)]
    board.observe([call(error=ErrorClass.CLIENT_ERROR), call(error=ErrorClass.CLIENT_ERROR)])  # both ended
    board.release("openai", "gpt-4.1")
    board.release("openai", "gpt-4.1")
    assert board.check("openai", "gpt-4.1") == [probe_hit(1)]  # never below zero
    assert only(board).state == "half_open"


def test_release_is_per_thread_and_per_subject() -> None:
    board, clock, _ = board_for(policy(per=["provider", "model"]))
    half_open(board, clock, model="a")
    half_open(board, clock, model="b")
    assert board.check("openai", "a") == [probe_hit(1, subject="openai:a")]
    assert board.check("openai", "b") == [probe_hit(1, subject="openai:b")]

    other = threading.Thread(target=board.release, args=("openai", "a"))
    other.start()
    other.join()
    assert board.check("openai", "a", acquire=False) == [probe_hit(2, subject="openai:a")]  # not its permit

    board.release("openai", "a")
    assert board.check("openai", "a", acquire=False) == [probe_hit(1, subject="openai:a")]
    assert board.check("openai", "b", acquire=False) == [probe_hit(2, subject="openai:b")]


def test_a_probe_result_gives_its_permit_back() -> None:
    board, clock, _ = board_for(policy(success_threshold=3, half_open_max_calls=1))
    half_open(board, clock)
    assert board.check("openai", "gpt-4.1") == [probe_hit(1, of=1)]
    assert board.check("openai", "gpt-4.1")[0].action is Action.DENY
    board.observe([call(error=ErrorClass.CLIENT_ERROR)])  # neither success nor failure, but it ended
    assert board.check("openai", "gpt-4.1") == [probe_hit(1, of=1)]
    board.observe(ok())
    assert board.check("openai", "gpt-4.1") == [probe_hit(1, of=1)]
    board.observe(ok())
    assert board.check("openai", "gpt-4.1") == [probe_hit(1, of=1)]
    board.observe(ok())
    assert only(board).state == "closed"


def test_permits_of_probes_that_never_report_expire() -> None:
    board, clock, transitions = board_for()
    half_open(board, clock)
    board.check("openai", "gpt-4.1")
    board.check("openai", "gpt-4.1")
    clock.advance(29)
    assert not board.available("openai", "gpt-4.1")
    clock.advance(1)
    assert board.available("openai", "gpt-4.1")
    assert board.check("openai", "gpt-4.1") == [probe_hit(1)]
    assert len(transitions.seen) == 2  # closed -> open -> half-open, nothing since


def test_release_after_the_breaker_moved_on_gives_nothing_back() -> None:
    board, clock, _ = board_for()
    half_open(board, clock)
    board.check("openai", "gpt-4.1")
    board.observe(fail(1))  # open again: the permit belonged to that half-open period
    clock.advance(30)
    probes = [threading.Thread(target=board.check, args=("openai", "gpt-4.1")) for _ in range(2)]
    for probe in probes:
        probe.start()
        probe.join()
    board.release("openai", "gpt-4.1")
    assert board.check("openai", "gpt-4.1", acquire=False)[0].action is Action.DENY


def test_only_one_of_many_threads_gets_each_permit() -> None:
    board, clock, _ = board_for(policy(half_open_max_calls=3))
    half_open(board, clock)
    barrier = threading.Barrier(16)
    allowed: list[bool] = []
    lock = threading.Lock()

    def ask() -> None:
        barrier.wait()
        (hit,) = board.check("openai", "gpt-4.1")
        with lock:
            allowed.append(hit.action is Action.ALLOW)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(allowed) == [False] * 13 + [True] * 3


# --- subjects -------------------------------------------------------------------------------------


def test_per_provider_and_model_keeps_separate_subjects() -> None:
    board, _, transitions = board_for(policy(per=["provider", "model"]))
    board.observe([*fail(3, "openai", "gpt-4.1"), *fail(2, "openai", "gpt-4.1-mini"), *ok(1, "anthropic", "claude")])
    assert [(s.subject, s.provider, s.model, s.state, s.failures) for s in board.statuses()] == [
        ("openai:gpt-4.1", "openai", "gpt-4.1", "open", 3),
        ("openai:gpt-4.1-mini", "openai", "gpt-4.1-mini", "closed", 2),
        ("anthropic:claude", "anthropic", "claude", "closed", 0),
    ]
    assert board.check("openai", "gpt-4.1") == [
        open_hit(30.0, "breaker providers: openai:gpt-4.1 is open after 3 failures; retry in 30.0s", "openai:gpt-4.1")
    ]
    assert board.check("openai", "gpt-4.1-mini") == []
    assert board.available("openai", "gpt-4.1-mini")
    assert transitions.seen == [("providers", "openai:gpt-4.1", "closed", "open")]


def test_per_provider_counts_every_model_together() -> None:
    board, _, _ = board_for()
    board.observe([*fail(1, model="a"), *fail(1, model="b"), *fail(1, model="c")])
    assert (only(board).subject, only(board).state) == ("openai", "open")
    assert board.check("openai", "anything")[0].scope == "openai"


def test_subjects_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    board, _, _ = board_for(policy(max_subjects=2))
    with caplog.at_level(logging.WARNING, logger="otel_puppy"):
        board.observe([*fail(3, "p1"), *fail(3, "p2"), *fail(3, "p3"), *fail(3, "p4")])
    assert [s.subject for s in board.statuses()] == ["p1", "p2"]
    assert board.check("p3", "m") == []
    assert caplog.messages == ["breaker providers tracks 2 subjects already; p3 and later new subjects are not tracked"]


# --- shadow ---------------------------------------------------------------------------------------


def test_shadow_breakers_report_but_never_deny_or_take_permits() -> None:
    board, clock, _ = board_for(policy(shadow=True))
    board.observe(fail(3))
    assert board.check("openai", "gpt-4.1") == [
        open_hit(30.0, "breaker providers: openai is open after 3 failures; retry in 30.0s", shadow=True)
    ]
    assert board.available("openai", "gpt-4.1")
    with board.guard("openai"):
        pass  # a shadow breaker does not stop the call (its success is simply ignored while open)

    clock.advance(30)
    for _ in range(5):
        assert board.check("openai", "gpt-4.1") == [probe_hit(1, shadow=True)]
    board.observe(ok(2))
    assert only(board).state == "closed"
    assert only(board).shadow


# --- trip -----------------------------------------------------------------------------------------


def test_trip_opens_now() -> None:
    board, clock, transitions = board_for()
    board.trip("openai", "gpt-4.1", "spend-spike")
    assert board.check("openai", "gpt-4.1") == [
        open_hit(30.0, "breaker providers: openai is open (spend-spike); retry in 30.0s")
    ]
    clock.advance(10)
    board.trip("openai", None, "spend-spike again")  # already open: the timeout restarts, no transition
    status = only(board)
    assert (status.state, status.opened_at, status.retry_at, status.transitions) == ("open", T0 + 10, T0 + 40, 1)
    assert transitions.seen == [("providers", "openai", "closed", "open")]

    clock.advance(30)
    assert board.check("openai", "gpt-4.1") == [probe_hit(1)]
    board.trip("openai", "gpt-4.1", "spend-spike")
    assert transitions.seen[-1] == ("providers", "openai", "half_open", "open")


def test_trip_without_model_opens_every_known_model_of_the_provider() -> None:
    board, _, _ = board_for(policy(per=["provider", "model"]))
    board.observe([*ok(1, "openai", "a"), *ok(1, "openai", "b"), *ok(1, "anthropic", "c")])
    board.trip("openai", None, "error-rate")
    assert [(s.subject, s.state) for s in board.statuses()] == [
        ("openai:a", "open"),
        ("openai:b", "open"),
        ("anthropic:c", "closed"),
    ]
    board.trip("openai", "d", "error-rate")
    assert [(s.subject, s.state) for s in board.statuses()][-1] == ("openai:d", "open")


# --- guard ----------------------------------------------------------------------------------------


class StatusError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class ResponseError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.response = Response(status_code)


def test_guard_records_and_raises_while_open() -> None:
    board, clock, _ = board_for()
    with board.guard("openai", "gpt-4.1"):
        pass
    for _ in range(3):
        error = StatusError("upstream unavailable", 503)
        with pytest.raises(StatusError) as info, board.guard("openai", "gpt-4.1"):
            raise error
        assert info.value is error  # unchanged
    assert only(board).state == "open"

    clock.advance(12)
    with pytest.raises(CircuitOpenError) as denied, board.guard("openai", "gpt-4.1"):
        pytest.fail("the call must not be made")
    assert (denied.value.breaker, denied.value.subject, denied.value.retry_after_s) == ("providers", "openai", 18.0)
    assert str(denied.value) == "circuit providers is open for openai; retry in 18.0s"


def test_guard_does_not_count_client_errors() -> None:
    board, _, _ = board_for()
    for _ in range(5):
        with pytest.raises(StatusError), board.guard("openai"):
            raise StatusError("bad request", 400)
        with pytest.raises(ResponseError), board.guard("openai"):
            raise ResponseError("nope", 401)
    assert (only(board).state, only(board).failures) == ("closed", 0)

    with pytest.raises(ResponseError), board.guard("openai"):
        raise ResponseError("nope", 502)
    assert only(board).failures == 1


def test_guard_probes_while_half_open() -> None:
    board, clock, _ = board_for(policy(half_open_max_calls=1))
    half_open(board, clock)
    with board.guard("openai"):
        with pytest.raises(CircuitOpenError) as info, board.guard("openai"):
            pass
        assert info.value.retry_after_s == 1.0
    assert (only(board).state, only(board).successes) == ("half_open", 1)
    with board.guard("openai"):
        pass
    assert only(board).state == "closed"


def test_guard_async() -> None:
    board, clock, transitions = board_for()

    async def app() -> None:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                async with board.guard("openai", "gpt-4.1"):
                    raise TimeoutError("read timed out")
        with pytest.raises(CircuitOpenError):
            async with board.guard("openai", "gpt-4.1"):
                pytest.fail("the call must not be made")
        clock.advance(30)
        for _ in range(2):
            async with board.guard("openai", "gpt-4.1"):
                await asyncio.sleep(0)

    run(app())
    assert [t[3] for t in transitions.seen] == ["open", "half_open", "closed"]


def test_guard_cancellation_is_not_a_provider_failure() -> None:
    board, _, _ = board_for()

    async def cancelled() -> None:
        async with board.guard("openai"):
            raise asyncio.CancelledError

    for _ in range(5):
        with pytest.raises(asyncio.CancelledError):
            run(cancelled())
    assert (only(board).state, only(board).failures) == ("closed", 0)


def test_guard_that_leaves_results_to_spans() -> None:
    board, clock, _ = board_for(policy(half_open_max_calls=1))
    for _ in range(5):
        with pytest.raises(StatusError), board.guard("openai", record=False):
            raise StatusError("down", 503)
    assert board.statuses() == []  # nothing recorded: the spans will say

    half_open(board, clock)
    outer, inner = board.guard("openai", record=False), board.guard("openai", record=False)
    with outer, pytest.raises(CircuitOpenError), inner:
        pass  # the outer guard holds the only probe
    assert not board.available("openai", "gpt-4.1")  # the probe is out until its span reports
    board.observe(ok())
    assert (only(board).state, only(board).successes) == ("half_open", 1)
    assert board.available("openai", "gpt-4.1")


def test_guard_with_only_per_model_breakers_needs_a_model() -> None:
    board, _, _ = board_for(policy(per=["provider", "model"]))
    for _ in range(5):
        with pytest.raises(StatusError), board.guard("openai"):
            raise StatusError("down", 503)
    assert board.statuses() == []


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (StatusError("x", 503), ErrorClass.SERVER_ERROR),
        (StatusError("x", 400), ErrorClass.CLIENT_ERROR),
        (ResponseError("x", 429), ErrorClass.RATE_LIMIT),
        (TimeoutError("read timed out"), ErrorClass.TIMEOUT),
        (ConnectionError("refused"), ErrorClass.CONNECTION),
        (ValueError("no JSON in the answer"), ErrorClass.OTHER),
    ],
)
def test_classify_exception(exc: Exception, expected: ErrorClass) -> None:
    assert classify_exception(exc) is expected


# --- callbacks ------------------------------------------------------------------------------------


def test_on_transition_gets_the_status_after_and_the_state_before() -> None:
    seen: list[tuple[BreakerStatus, str]] = []
    clock = FakeClock()
    board = BreakerBoard((policy(),), clock, lambda status, previous: seen.append((status, previous)))
    board.observe(fail(3))
    assert seen == [
        (
            BreakerStatus(
                policy="providers",
                subject="openai",
                provider="openai",
                model=None,
                state="open",
                failures=3,
                successes=0,
                opened_at=T0,
                retry_at=T0 + 30,
                transitions=1,
                shadow=False,
            ),
            "closed",
        )
    ]
    assert seen[0][0].to_dict() == {
        "policy": "providers",
        "subject": "openai",
        "provider": "openai",
        "model": None,
        "state": "open",
        "failures": 3,
        "successes": 0,
        "opened_at": T0,
        "retry_at": T0 + 30,
        "transitions": 1,
        "shadow": False,
    }


def test_on_transition_runs_outside_the_lock_and_its_errors_are_contained(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    reads: list[bool] = []

    def callback(status: BreakerStatus, previous: str) -> None:
        reads.append(board.available(status.provider, "m"))  # would deadlock under the lock
        raise RuntimeError("callback bug")

    board = BreakerBoard((policy(),), clock, callback)
    with caplog.at_level(logging.ERROR, logger="otel_puppy"):
        board.observe(fail(3))
    assert reads == [False]
    assert only(board).state == "open"
    assert caplog.messages == ["breaker on_transition callback failed for providers openai"]


# --- metrics --------------------------------------------------------------------------------------


class BoardCollector(Collector):
    def __init__(self, board: BreakerBoard) -> None:
        self.board = board

    def collect(self) -> Iterable[Metric]:
        return self.board.collect()


def test_metrics() -> None:
    board, clock, _ = board_for(policy(), policy("models", per=["provider", "model"], failure_threshold=1))
    registry = CollectorRegistry()
    registry.register(BoardCollector(board))
    board.observe([*fail(3, "openai", "gpt-4.1"), *ok(1, "anthropic", "claude")])

    def state(policy: str, provider: str, model: str) -> float | None:
        return registry.get_sample_value(
            "otel_puppy_breaker_state", {"policy": policy, "provider": provider, "model": model}
        )

    def entered(policy: str, provider: str, model: str, to: str) -> float | None:
        return registry.get_sample_value(
            "otel_puppy_breaker_transitions_total", {"policy": policy, "provider": provider, "model": model, "to": to}
        )

    assert state("providers", "openai", "") == 2.0
    assert state("providers", "anthropic", "") == 0.0
    assert state("models", "openai", "gpt-4.1") == 2.0
    assert state("models", "anthropic", "claude") == 0.0
    assert entered("providers", "openai", "", "open") == 1.0
    assert entered("models", "openai", "gpt-4.1", "open") == 1.0
    assert entered("providers", "openai", "", "half_open") is None

    clock.advance(30)  # read lazily by the scrape itself
    assert state("providers", "openai", "") == 1.0
    assert entered("providers", "openai", "", "half_open") == 1.0
    board.observe(fail(1, "openai", "gpt-4.1"))
    assert state("providers", "openai", "") == 2.0
    assert entered("providers", "openai", "", "open") == 2.0
    assert entered("models", "openai", "gpt-4.1", "open") == 2.0

    names = sorted({s.name for metric in board.collect() for s in metric.samples})
    assert names == ["otel_puppy_breaker_state", "otel_puppy_breaker_transitions_total"]


def test_an_empty_board_exports_empty_families() -> None:
    board = BreakerBoard((), FakeClock())
    board.observe(fail(10))
    assert [(m.name, m.samples) for m in board.collect()] == [
        ("otel_puppy_breaker_state", []),
        ("otel_puppy_breaker_transitions", []),
    ]


# --- reload ---------------------------------------------------------------------------------------


def test_with_policies_keeps_state_of_unchanged_breakers() -> None:
    seen = Transitions()
    clock = FakeClock()
    board = BreakerBoard(
        (policy(), policy("models", per=["provider", "model"]), policy("gone")),
        clock,
        seen,
    )
    board.observe([*fail(3), *ok(1, "anthropic", "claude")])
    board.observe(fail(1, "anthropic", "claude"))

    reloaded = board.with_policies(
        (
            policy(failure_threshold=10, recovery_timeout="60s"),  # same name and per: kept
            policy("models", per=["provider"]),  # per changed: starts afresh
            policy("new"),
        )
    )
    assert [(s.policy, s.subject, s.state, s.failures, s.retry_at) for s in reloaded.statuses()] == [
        ("providers", "openai", "open", 3, T0 + 60),  # the new recovery timeout applies
        ("providers", "anthropic", "closed", 1, None),
    ]
    assert board.statuses()[0].retry_at == T0 + 30  # the old board is untouched
    assert reloaded.check("openai", "gpt-4.1")[0].message == (
        "breaker providers: openai is open after 3 failures; retry in 60.0s"
    )
    registry = CollectorRegistry()
    registry.register(BoardCollector(reloaded))
    assert (
        registry.get_sample_value(
            "otel_puppy_breaker_transitions_total",
            {"policy": "providers", "provider": "openai", "model": "", "to": "open"},
        )
        == 1.0
    )

    reloaded.observe(fail(8, "anthropic", "claude"))
    assert reloaded.statuses()[1].failures == 9  # the new threshold (10) applies to the kept count
    reloaded.observe(fail(1, "anthropic", "claude"))
    assert seen.seen[-1] == ("providers", "anthropic", "closed", "open")  # the callback carries over


# --- the pure state machine -------------------------------------------------------------------------


def test_pure_transitions() -> None:
    p = policy()
    closed = BreakerState()
    assert apply_event(closed, "failure", T0, p) == BreakerState(failures=1)
    assert apply_event(BreakerState(failures=2), "failure", T0, p) == BreakerState(
        state="open", failures=3, opened_at=T0, reason="after 3 failures", transitions=1
    )
    assert apply_event(BreakerState(failures=2), "success", T0, p) == closed
    assert apply_event(BreakerState(failures=2), "neutral", T0, p) == BreakerState(failures=2)

    opened = BreakerState(state="open", failures=3, opened_at=T0, reason="after 3 failures", transitions=1)
    assert advance(opened, T0 + 29.999, p) is opened
    halfway = advance(opened, T0 + 30, p)
    assert halfway == BreakerState(
        state="half_open", failures=3, opened_at=T0, reason="after 3 failures", transitions=2
    )
    probing = apply_event(apply_event(halfway, "acquire", T0 + 31, p), "acquire", T0 + 32, p)
    assert (probing.permits, probing.probe_at) == (2, T0 + 32)
    assert apply_event(probing, "acquire", T0 + 33, p) is probing
    assert apply_event(probing, "release", T0 + 33, p).permits == 1
    assert advance(probing, T0 + 62, p).permits == 0
    one = apply_event(probing, "success", T0 + 33, p)
    assert (one.state, one.successes, one.permits) == ("half_open", 1, 1)
    assert apply_event(one, "success", T0 + 34, p) == BreakerState(transitions=3)
    assert apply_event(one, "failure", T0 + 34, p) == BreakerState(
        state="open", failures=4, opened_at=T0 + 34, reason="after a failed probe", transitions=3
    )
    assert apply_event(opened, "trip", T0 + 5, p, "(x)") == BreakerState(
        state="open", failures=3, opened_at=T0 + 5, reason="(x)", transitions=1
    )


def test_check_answers_at_once_while_every_subject_is_closed_and_sees_every_way_one_leaves() -> None:
    # `check()` skips its lock and its scan while no subject is open or half-open (decide() asks on
    # every call): it must still see subjects opened by failures, by `trip`, by a restore, by a reload.
    board, clock, _ = board_for()
    assert board.check("openai", "gpt-4.1") == []
    board.observe([call(error=ErrorClass.SERVER_ERROR)] * 3)
    assert [hit.action for hit in board.check("openai", "gpt-4.1")] == [Action.DENY]
    clock.advance(30)
    board.observe([call(), call()])  # two probes succeed: closed again
    assert board.check("openai", "gpt-4.1") == []
    board.trip("openai", None, reason="spend spike")
    assert [hit.action for hit in board.check("openai", "gpt-4.1")] == [Action.DENY]
    reloaded = board.with_policies(board.policies)
    assert [hit.action for hit in reloaded.check("openai", "gpt-4.1")] == [Action.DENY]
    restored, _, _ = board_for()
    restored.import_state(board.export_state())
    assert [hit.action for hit in restored.check("openai", "gpt-4.1")] == [Action.DENY]
    assert restored.check("anthropic", "claude-sonnet-4-5") == []
