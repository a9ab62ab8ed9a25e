"""Logs an attacker cannot flood (issue 12, point 9): `RateLimitedLog` and the warnings that use it.

The bound: per key (a policy, a reason; never the hostile value) at most one line per interval plus
one summary line with the count of what was suppressed. Clocks are injected: nothing sleeps.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import pytest

from otel_puppy._logging import OVERFLOW_KEY, RateLimitedLog
from otel_puppy.alerts import AlertEvent, Alerts, LogSink
from otel_puppy.decision import Action, Severity
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import parse_policy_text
from otel_puppy.testing import FakeClock, engine_for_tests, make_call

LOGGER = logging.getLogger("otel_puppy.test_logging")


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_then_the_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    clock = Ticks()
    limited = RateLimitedLog(LOGGER, interval_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        assert limited.warning("fold:b", "value %r", "v0") is True
        assert [limited.warning("fold:b", "value %r", f"v{i}") for i in range(1, 5)] == [False] * 4
        assert limited.warning("other", "another reason") is True  # keys are independent
        clock.now += 59.9
        assert limited.warning("fold:b", "value %r", "v5") is False
        clock.now += 0.1  # the interval is over: a summary of what was held back, then the line
        assert limited.warning("fold:b", "value %r", "v6") is True
        # sweeps run once an interval (the last at 1060): a key whose interval ends between two
        # sweeps carries its count on its next line instead
        clock.now = 1061
        assert limited.warning("late", "late %d", 1) is True
        assert limited.warning("late", "late %d", 2) is False
        clock.now = 1120.5
        assert limited.warning("other", "another reason") is True  # sweeps; `late` has 0.5 s to go
        clock.now = 1122
        assert limited.warning("late", "late %d", 3) is True
    assert caplog.messages == [
        "value 'v0'",
        "another reason",
        "5 similar lines suppressed in the last 60s for fold:b (the last: 'value %r')",
        "value 'v6'",
        "late 1",
        "another reason",
        "late 3 (1 similar lines suppressed in the previous 60s)",
    ]
    assert limited.suppressed == 6


def test_a_flood_that_stops_is_summarized_by_the_next_sweep_or_flush(caplog: pytest.LogCaptureFixture) -> None:
    clock = Ticks()
    limited = RateLimitedLog(LOGGER, interval_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        for i in range(10):
            limited.warning("a", "hostile %d", i)
            limited.error("b", "broken %d", i)
        limited.flush()  # nothing is over yet: no summary
        clock.now += 61
        limited.warning("c", "unrelated")  # any line sweeps the keys whose interval is over
        limited.flush()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "hostile 0"),
        ("ERROR", "broken 0"),
        ("WARNING", "9 similar lines suppressed in the last 60s for a (the last: 'hostile %d')"),
        ("ERROR", "9 similar lines suppressed in the last 60s for b (the last: 'broken %d')"),
        ("WARNING", "unrelated"),
    ]


def test_keys_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(LOGGER, max_keys=3, clock=Ticks())
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        for i in range(1000):
            limited.warning(f"key{i}", "line %d", i)
    assert caplog.messages == ["line 0", "line 1", "line 2", "line 3"]  # the 4th key on share OVERFLOW_KEY
    assert set(limited._keys) == {"key0", "key1", "key2", OVERFLOW_KEY}
    assert limited.suppressed == 996


def test_a_disabled_level_costs_nothing_and_counts_nothing() -> None:
    limited = RateLimitedLog(LOGGER, clock=Ticks())
    LOGGER.setLevel(logging.ERROR)
    try:
        assert limited.warning("k", "x") is False
        assert limited.suppressed == 0
        assert limited._keys == {}
    finally:
        LOGGER.setLevel(logging.NOTSET)


# --- the warnings an attacker drives --------------------------------------------------------------

FLOOD = 100_000


def test_100k_distinct_scopes_folded_into_other_log_two_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Each new agent past `max_scopes` used to log one line: 100,000 hostile agent names, 100,000 lines."""
    clock = FakeClock()
    yaml = "budgets: [{name: per-agent, per: [agent], limit_usd: 1, window: 30d, action: deny, max_scopes: 10}]"
    engine = engine_for_tests(parse_policy_text(yaml, Path("p.yaml")), clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="otel_puppy"):
            for i in range(FLOOD):
                engine._rules.book.instances({"provider": "openai", "model": "gpt-4.1", "agent": f"evil-{i}"})
            clock.advance(61)
            engine._log.flush()
        assert engine._rules.book.folded == FLOOD - 10
        assert caplog.messages == [
            "budget per-agent has 10 scopes already; 'agent=evil-10' counts as 'other'",
            f"{FLOOD - 11} similar lines suppressed in the last 60s for fold:per-agent "
            "(the last: 'budget %s has %d scopes already; %r counts as %r')",
        ]
        assert engine._log.suppressed == FLOOD - 11
    finally:
        engine.close()


@pytest.mark.long
def test_100k_failing_decisions_log_one_traceback_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    yaml = "budgets: [{name: org, limit_usd: 1, window: 30d, action: deny}]"
    engine = engine_for_tests(parse_policy_text(yaml, Path("p.yaml")), clock=clock, raise_internal_errors=False)

    def broken(*args: object) -> list[object]:
        raise RuntimeError("boom")

    engine._rules.breakers.check = broken  # type: ignore[method-assign,assignment]
    try:
        with caplog.at_level(logging.WARNING, logger="otel_puppy"):
            for i in range(FLOOD):
                decision = engine.decide(provider="openai", model="gpt-4.1", agent=f"evil-{i}")
                assert decision.action is Action.ALLOW  # the budget has room: the fail mode (open) decides
            clock.advance(60)
            engine.decide(provider="openai", model="gpt-4.1")
        summary = f"{FLOOD - 1} similar lines suppressed in the last 60s for internal:engine.decide"
        assert [(r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
            ("otel_puppy internal error in engine.decide", True),
            (f"{summary} (the last: 'otel_puppy internal error in %s')", False),
            ("otel_puppy internal error in engine.decide", True),
        ]
        errors = engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "engine.decide"})
        assert errors == FLOOD + 1  # every one counted
    finally:
        engine.close()


def test_alert_lines_are_rate_limited_per_policy_and_severity_and_all_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Ticks()
    sink = LogSink(RateLimitedLog(logging.getLogger("otel_puppy.alerts"), clock=clock))
    alerts = Alerts([sink])
    with caplog.at_level(logging.INFO, logger="otel_puppy.alerts"):
        for i in range(FLOOD):
            alerts.emit(
                AlertEvent(
                    kind="budget", policy="per-user", scope=f"user=u{i}", severity=Severity.WARNING,
                    message=f"budget per-user for user=u{i} crossed 75%", at=0.0,
                )
            )  # fmt: skip
        alerts.emit(AlertEvent(kind="budget", policy="org", scope="", severity=Severity.EMERGENCY, message="org", at=0))
    assert caplog.messages == [
        "budget alert [warning] budget per-user for user=u0 crossed 75%",
        "budget alert [emergency] org",
    ]
    family = {s.labels["policy"]: s.value for m in alerts.collect() for s in m.samples}
    assert family == {"per-user": FLOOD, "org": 1}


def test_store_outage_warnings_in_decide_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    from otel_puppy.exceptions import StoreError
    from otel_puppy.store.base import Admission, Admitted
    from otel_puppy.store.memory import MemoryStore

    class Down(MemoryStore):
        def admit(self, admission: Admission, now: float) -> Admitted:
            raise StoreError("connection refused")

    clock = FakeClock()
    yaml = "budgets: [{name: org, limit_usd: 1, window: 30d, action: deny}]"
    engine = PolicyEngine(
        engine_for_tests().settings,
        policies=parse_policy_text(yaml, Path("p.yaml")),
        store=Down(),
        clock=clock,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="otel_puppy"):
            for _ in range(1000):
                assert engine.decide(provider="openai", model="gpt-4.1").action is Action.ALLOW
        assert caplog.messages == ["otel_puppy could not reach its store to decide: connection refused"]
        assert engine.registry.get_sample_value("otel_puppy_store_errors_total", {"operation": "decide"}) == 1000
    finally:
        engine.close()


def test_spend_still_counts_while_folding(caplog: pytest.LogCaptureFixture) -> None:
    """Folded scopes share `other`: the spend of every hostile agent is counted there, exactly."""
    yaml = "budgets: [{name: per-agent, per: [agent], limit_usd: 1, window: 30d, action: deny, max_scopes: 2}]"
    engine = engine_for_tests(parse_policy_text(yaml, Path("p.yaml")))
    try:
        with caplog.at_level(logging.WARNING, logger="otel_puppy"):
            engine.observe_many([make_call(agent=f"a{i}", end_s=engine.clock.now()) for i in range(50)])
        assert engine.snapshot().budget("per-agent", "other").spent_usd == Decimal("0.134400000")
        assert len(caplog.messages) == 1
    finally:
        engine.close()
