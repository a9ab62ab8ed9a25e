"""Budgets and decisions: windows, alerts, reserves, shadow, degrade, reserve-then-settle, races."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from otel_puppy.alerts import AlertEvent
from otel_puppy.calls import ErrorClass
from otel_puppy.decision import Action, Decision, DecisionRequest, PolicyHit, Priority, Severity, allowed_decision
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import CircuitOpenError, PolicyDenied, PolicyErrors
from otel_puppy.policies import parse_policy_text
from otel_puppy.testing import FakeClock, engine_for_tests, make_call

GPT41_1K_100 = 2_800_000  # nano-USD: 1000 input tokens at $2/MTok + 100 output at $8/MTok


class Collect:
    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)


def engine_with(yaml: str, clock: FakeClock | None = None, **settings: object) -> tuple[PolicyEngine, Collect]:
    sink = Collect()
    engine = engine_for_tests(parse_policy_text(yaml, Path("policies/test.yaml")), clock=clock, **settings)
    engine.alerts.sinks = (sink,)
    return engine, sink


def spend(
    engine: PolicyEngine,
    *,
    model: str = "gpt-4.1",
    agent: str = "support",
    user: str = "u1",
    input_tokens: int = 1000,
    output_tokens: int = 100,
    decision_id: str | None = None,
    provider: str = "openai",
) -> None:
    call = make_call(
        end_s=engine.clock.now(),
        provider=provider,
        model=model,
        agent=agent,
        user=user,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        duration_s=1.0,
        decision_id=decision_id,
    )
    engine.observe(call)


def at(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


# --- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "start", "just_before_reset", "after_reset"),
    [
        ("hour", "2026-03-10T14:10:00", "2026-03-10T14:59:59", "2026-03-10T15:00:00"),
        ("day", "2026-03-10T08:00:00", "2026-03-10T23:59:59", "2026-03-11T00:00:00"),
        ("month", "2026-02-03T08:00:00", "2026-02-28T23:59:59", "2026-03-01T00:00:00"),
    ],
)
def test_calendar_windows_roll_over(window: str, start: str, just_before_reset: str, after_reset: str) -> None:
    clock = FakeClock(at(start))
    engine, _ = engine_with(f"budgets:\n  - {{name: b, limit_usd: 0.01, window: {window}}}\n", clock)
    spend(engine)
    clock.set(at(just_before_reset))
    hit = engine.decide(provider="openai", model="gpt-4.1").reasons[0]
    assert (hit.spent_usd, hit.resets_at) == (Decimal("0.002800000"), datetime.fromtimestamp(at(after_reset), UTC))
    clock.set(at(after_reset))
    assert engine.decide(provider="openai", model="gpt-4.1").reasons[0].spent_usd == 0


def test_day_window_across_a_dst_change_in_a_non_utc_timezone() -> None:
    # 2026-03-29 in Paris has 23 hours: midnight to midnight is 23 h, and the reset follows local time.
    clock = FakeClock(at("2026-03-29T00:30:00", "Europe/Paris"))
    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 1, window: day}\n", clock, timezone="Europe/Paris")
    spend(engine)
    clock.advance(22 * 3600)  # 23:30 local, 22 real hours later
    hit = engine.decide(provider="openai", model="gpt-4.1").reasons[0]
    assert hit.spent_usd == Decimal("0.002800000")
    assert hit.resets_at == datetime(2026, 3, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert hit.resets_at is not None
    assert (hit.resets_at.timestamp() - at("2026-03-29T00:00:00", "Europe/Paris")) == 23 * 3600
    clock.advance(3600)  # 00:30 on the 30th
    assert engine.decide(provider="openai", model="gpt-4.1").reasons[0].spent_usd == 0


def test_rolling_window_forgets_spend_after_its_duration() -> None:
    clock = FakeClock()
    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 1, window: 15m}\n", clock)
    spend(engine)
    clock.advance(15 * 60 - 1)
    assert engine.decide(provider="openai", model="gpt-4.1").reasons[0].spent_usd == Decimal("0.002800000")
    clock.advance(15 + 2)
    assert engine.decide(provider="openai", model="gpt-4.1").reasons[0].spent_usd == 0


# --- actions ----------------------------------------------------------------------------------


def test_deny_when_over_with_reasons_and_retry_after() -> None:
    clock = FakeClock(at("2026-03-10T23:00:00"))
    engine, _ = engine_with("budgets:\n  - {name: org-daily, limit_usd: 0.005, window: day, action: deny}\n", clock)
    spend(engine)
    assert engine.decide(provider="openai", model="gpt-4.1").action is Action.ALLOW
    spend(engine)
    decision = engine.decide(provider="openai", model="gpt-4.1", agent="support")
    assert decision.action is Action.DENY
    assert not decision.allowed
    assert decision.retry_after_s == 3600.0
    [hit] = decision.reasons
    assert (hit.kind, hit.policy, hit.action, hit.severity) == ("budget", "org-daily", Action.DENY, Severity.EMERGENCY)
    assert (hit.spent_usd, hit.limit_usd, hit.utilization) == (Decimal("0.005600000"), Decimal("0.005"), 1.12)
    assert hit.message == "budget org-daily: $0.005600000 of $0.005 this day (112%); denied"
    assert (
        engine.registry.get_sample_value("otel_puppy_decisions_total", {"action": "deny", "policy": "org-daily"}) == 1.0
    )


def test_strictest_action_wins_and_every_matching_policy_is_listed() -> None:
    engine, _ = engine_with(
        """
budgets:
  - {name: soft, limit_usd: 0.001, window: day, action: warn}
  - {name: cheap, limit_usd: 0.001, window: day, action: {degrade: gpt-4.1-mini}, match: {model: gpt-4.1}}
  - {name: roomy, limit_usd: 100, window: day, action: deny}
"""
    )
    spend(engine)
    decision = engine.decide(provider="openai", model="gpt-4.1")
    assert (decision.action, decision.provider, decision.model) == (Action.DEGRADE, "openai", "gpt-4.1-mini")
    assert [(h.policy, h.action) for h in decision.reasons] == [
        ("cheap", Action.DEGRADE),
        ("soft", Action.WARN),
        ("roomy", Action.ALLOW),
    ]


def test_degrade_then_deny_when_the_cheaper_model_is_over_a_deny_budget() -> None:
    engine, _ = engine_with(
        """
budgets:
  - {name: big-model, limit_usd: 0.001, window: day, action: {degrade: "openai:gpt-4.1-mini"}, match: {model: gpt-4.1}}
  - {name: small-model, limit_usd: 0.0001, window: day, action: deny, match: {model: gpt-4.1-mini}}
"""
    )
    spend(engine)
    spend(engine, model="gpt-4.1-mini")
    decision = engine.decide(provider="openai", model="gpt-4.1")
    assert (decision.action, decision.model) == (Action.DENY, "gpt-4.1-mini")
    assert [(h.policy, h.action) for h in decision.reasons] == [
        ("big-model", Action.DEGRADE),
        ("small-model", Action.DENY),
    ]


def test_shadow_budget_is_reported_never_enforced() -> None:
    engine, _ = engine_with("budgets:\n  - {name: s, limit_usd: 0.001, window: day, action: deny, shadow: true}\n")
    spend(engine)
    decision = engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.01")
    assert decision.action is Action.ALLOW
    assert decision.reasons == ()
    [hit] = decision.shadow
    assert (hit.policy, hit.action, hit.shadow) == ("s", Action.DENY, True)


def test_reserve_fractions_shed_lower_priorities_first() -> None:
    engine, _ = engine_with(
        "budgets:\n  - {name: b, limit_usd: 0.01, window: day, action: deny, reserve: {critical: 0.1, high: 0.3}}\n"
    )
    spend(engine, input_tokens=3000, output_tokens=0)  # $0.006 of $0.01: 60%
    est: dict[str, Any] = {"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": "0.001"}
    # normal may use 70%: 0.006 + 0.001 fits; bulk too (same 70%); a second reservation does not
    assert engine.decide(**est, priority="bulk").action is Action.ALLOW
    assert engine.decide(**est, priority="normal").action is Action.DENY  # 0.008 > 0.007
    assert engine.decide(**est, priority=Priority.HIGH).action is Action.ALLOW  # 0.008 <= 0.009
    assert engine.decide(**est, priority="high").action is Action.ALLOW  # 0.009 <= 0.009
    assert engine.decide(**est, priority="high").action is Action.DENY  # 0.010 > 0.009
    assert engine.decide(**est, priority="critical").action is Action.ALLOW  # 0.010 <= 0.010
    assert engine.decide(**est, priority="critical").action is Action.DENY


def test_per_budget_keeps_one_instance_per_value_and_folds_past_max_scopes() -> None:
    engine, _ = engine_with(
        "budgets:\n  - {name: per-agent, per: [agent], limit_usd: 0.003, window: day, max_scopes: 2}\n"
    )
    spend(engine, agent="a")
    assert engine.decide(provider="openai", model="gpt-4.1", agent="a").reasons[0].scope == "agent=a"
    assert engine.decide(provider="openai", model="gpt-4.1", agent="b").action is Action.ALLOW
    spend(engine, agent="a")
    assert engine.decide(provider="openai", model="gpt-4.1", agent="a").action is Action.DENY
    assert engine.decide(provider="openai", model="gpt-4.1", agent="b").action is Action.ALLOW
    assert engine.decide(provider="openai", model="gpt-4.1", agent="c").reasons[0].scope == "other"


def test_token_budget() -> None:
    engine, _ = engine_with("budgets:\n  - {name: t, per: [user], limit_tokens: 2000, window: month, action: warn}\n")
    spend(engine, user="u1")
    assert engine.decide(provider="openai", model="gpt-4.1", user="u1").action is Action.ALLOW
    spend(engine, user="u1")
    decision = engine.decide(provider="openai", model="gpt-4.1", user="u1")
    assert decision.action is Action.WARN
    assert (
        decision.reasons[0].message
        == "budget t for user=u1: 2,200 of 2,000 tokens this month (110%); over, warning only"
    )


# --- alerts -----------------------------------------------------------------------------------


def test_alerts_once_per_crossing_per_window() -> None:
    clock = FakeClock(at("2026-03-10T10:00:00"))
    engine, sink = engine_with(
        "budgets:\n  - {name: b, limit_usd: 0.01, window: day, alerts: [0.5, 0.75, 0.9]}\n", clock
    )
    for _ in range(2):
        spend(engine)  # 0.0056: 56%
    spend(engine)  # 84%
    spend(engine)  # 112%: 0.9 and 1.0 together
    spend(engine)
    assert [(e.threshold, e.severity) for e in sink.events] == [
        (0.5, Severity.INFO),
        (0.75, Severity.WARNING),
        (0.9, Severity.CRITICAL),
        (1.0, Severity.EMERGENCY),
    ]
    assert sink.events[0].message == "budget b crossed 50% of its day limit (56.0% used)"
    clock.set(at("2026-03-11T10:00:00"))  # a new day: crossings alert again
    for _ in range(2):
        spend(engine)
    assert len(sink.events) == 5
    assert (
        engine.registry.get_sample_value(
            "otel_puppy_alerts_total", {"kind": "budget", "policy": "b", "severity": "info"}
        )
        == 2.0
    )


def test_rolling_window_alerts_again_after_dropping_below() -> None:
    clock = FakeClock()
    engine, sink = engine_with("budgets:\n  - {name: r, limit_usd: 0.01, window: 1h, alerts: [0.5]}\n", clock)
    spend(engine)
    spend(engine)
    spend(engine)
    assert len(sink.events) == 1
    clock.advance(3 * 3600)
    spend(engine)  # 28%: below, re-armed
    spend(engine)  # 56%: crosses again
    assert len(sink.events) == 2


# --- reserve, then settle ---------------------------------------------------------------------


def test_reservation_is_settled_by_the_decision_id_on_the_span() -> None:
    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 1, window: day}\n")
    decision = engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.5")
    assert decision.reasons[0].reserved_usd == 0
    assert engine.snapshot().budget("b").reserved_usd == Decimal("0.500000000")
    assert (
        engine.registry.get_sample_value(
            "otel_puppy_budget_reserved_usd", {"budget": "b", "scope": "", "window": "day"}
        )
        == 0.5
    )
    spend(engine, decision_id=decision.decision_id)
    state = engine.snapshot().budget("b")
    assert (state.reserved_usd, state.spent_usd) == (Decimal("0E-9"), Decimal("0.002800000"))


def test_reservation_is_settled_by_scope_when_the_span_has_no_decision_id() -> None:
    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 1, window: day}\n")
    engine.decide(provider="openai", model="gpt-4.1", agent="support", user="u1", estimated_cost_usd="0.2")
    engine.decide(provider="openai", model="gpt-4.1", agent="other", user="u1", estimated_cost_usd="0.3")
    spend(engine, agent="support", user="u1")
    assert engine.snapshot().budget("b").reserved_usd == Decimal("0.300000000")


def test_unsettled_reservations_expire_after_the_ttl() -> None:
    clock = FakeClock()
    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 1, window: day}\n", clock, reservation_ttl_s=60)
    engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.9")
    assert engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.2").action is Action.DENY
    clock.advance(61)
    assert engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.2").action is Action.ALLOW


def test_a_denied_decision_reserves_nothing() -> None:
    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 1, window: day}\n")
    assert engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="2").action is Action.DENY
    assert engine.snapshot().budget("b").reserved_usd == 0


def test_estimate_from_tokens_is_priced_for_the_model() -> None:
    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 1, window: day}\n")
    decision = engine.decide(
        provider="openai", model="gpt-4.1", estimated_input_tokens=1000, estimated_output_tokens=100
    )
    assert decision.estimated_cost_usd == Decimal("0.002800000")
    assert engine.snapshot().budget("b").reserved_usd == Decimal("0.002800000")


def test_sixteen_threads_racing_never_admit_more_than_the_budget() -> None:
    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 1, window: day, action: deny}\n")
    admitted: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def agent() -> None:
        start.wait()
        for _ in range(50):
            decision = engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.0125")
            if decision.allowed:
                with lock:
                    admitted.append(decision.decision_id or "")

    threads = [threading.Thread(target=agent) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 80  # exactly $1 / $0.0125, out of 800 attempts
    assert engine.snapshot().budget("b").reserved_usd == Decimal("1.000000000")


# --- reload -----------------------------------------------------------------------------------


def test_reload_keeps_window_spend_and_a_broken_edit_keeps_the_last_good_set(tmp_path: Path) -> None:
    (tmp_path / "budgets.yaml").write_text("budgets:\n  - {name: b, limit_usd: 0.003, window: day}\n")
    engine = PolicyEngine.from_settings(
        engine_for_tests().settings.model_copy(update={"policies": tmp_path}), clock=FakeClock()
    )
    spend(engine)
    (tmp_path / "budgets.yaml").write_text("budgets:\n  - {name: b, limit_usd: 0.002, window: day}\n")
    engine.reload()
    assert engine.decide(provider="openai", model="gpt-4.1").action is Action.DENY  # same spend, lower limit
    (tmp_path / "budgets.yaml").write_text("budgets:\n  - {name: b, limit_usd: -1, window: fortnight}\n")
    with pytest.raises(PolicyErrors) as info:
        engine.reload()
    assert [str(e).split(": ", 1)[0] for e in info.value.errors] == [
        f"{tmp_path}/budgets.yaml:2:26",
        f"{tmp_path}/budgets.yaml:2:38",
    ]
    assert engine.policies.budgets[0].limit_usd == Decimal("0.002")
    assert engine.decide(provider="openai", model="gpt-4.1").action is Action.DENY
    engine.close()


# --- breakers, anomalies, routing through decide() -----------------------------------------------


def fail(engine: PolicyEngine, provider: str = "openai", model: str = "gpt-4.1") -> None:
    engine.observe(
        make_call(
            end_s=engine.clock.now(), provider=provider, model=model, error=ErrorClass.SERVER_ERROR, duration_s=1.0
        )
    )


def test_breaker_opens_denies_probes_and_recovers() -> None:
    clock = FakeClock()
    engine, sink = engine_with(
        "breakers:\n  - {name: providers, failure_threshold: 3, recovery_timeout: 30s, success_threshold: 2,"
        " half_open_max_calls: 2}\n",
        clock,
    )
    for _ in range(3):
        fail(engine)
    denied = engine.decide(provider="openai", model="gpt-4.1")
    assert (denied.action, denied.retry_after_s) == (Action.DENY, 30.0)
    assert denied.reasons[0].message == "breaker providers: openai is open after 3 failures; retry in 30.0s"
    assert engine.decide(provider="anthropic", model="claude-sonnet-4-5").action is Action.ALLOW
    clock.advance(30)
    assert [engine.decide(provider="openai", model="gpt-4.1").action for _ in range(3)] == [
        Action.ALLOW,
        Action.ALLOW,
        Action.DENY,  # two probes, then wait for them
    ]
    spend(engine)
    spend(engine)
    assert engine.decide(provider="openai", model="gpt-4.1").reasons == ()
    assert [e.message for e in sink.events] == [
        "breaker providers for openai: closed -> open",
        "breaker providers for openai: open -> half_open",
        "breaker providers for openai: half_open -> closed",
    ]
    assert (
        engine.registry.get_sample_value(
            "otel_puppy_breaker_state", {"policy": "providers", "provider": "openai", "model": ""}
        )
        == 0.0
    )


def test_engine_breaker_guard_fails_fast_while_open() -> None:
    import asyncio

    engine, _ = engine_with("breakers:\n  - {name: providers, failure_threshold: 1}\n")
    fail(engine)

    async def call() -> None:
        async with engine.breaker("openai"):
            raise AssertionError("must not run")

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(CircuitOpenError, match=r"circuit providers is open for openai; retry in 30\.0s"):
            loop.run_until_complete(call())
    finally:
        loop.close()


def test_anomaly_with_deny_action_denies_its_subject_only() -> None:
    clock = FakeClock()
    engine, sink = engine_with(
        "anomalies:\n  - {name: spike, signal: request_rate, per: [provider], interval: 1m, baseline: 10m,"
        " threshold: {ratio: 3}, min_samples: 5, cooldown: 5m, action: deny}\n",
        clock,
    )
    for _ in range(8):  # a steady 2 calls a minute
        spend(engine)
        spend(engine)
        clock.advance(60)
    for _ in range(10):  # 10 in the next minute: 5x the baseline
        spend(engine)
    clock.advance(60)
    decision = engine.decide(provider="openai", model="gpt-4.1")
    assert decision.action is Action.DENY
    assert decision.reasons[0].kind == "anomaly"
    assert engine.decide(provider="anthropic", model="claude-sonnet-4-5").action is Action.ALLOW
    assert [e.kind for e in sink.events] == ["anomaly"]
    assert (
        engine.registry.get_sample_value(
            "otel_puppy_anomalies_total", {"policy": "spike", "signal": "request_rate", "action": "deny"}
        )
        == 1.0
    )


def test_routing_picks_the_model_and_skips_an_open_breaker() -> None:
    engine, _ = engine_with(
        """
routing:
  - {name: cheap-first, match: {agent: batch}, strategy: cheapest,
     candidates: [openai:gpt-4.1, openai:gpt-4.1-mini, anthropic:claude-sonnet-4-5]}
breakers:
  - {name: models, per: [provider, model], failure_threshold: 1}
"""
    )
    decision = engine.decide(provider="openai", model="gpt-4.1", agent="batch")
    assert (decision.action, decision.model) == (Action.ALLOW, "gpt-4.1-mini")
    assert decision.reasons[0].kind == "routing"
    fail(engine, model="gpt-4.1-mini")
    decision = engine.decide(provider="openai", model="gpt-4.1", agent="batch")
    assert decision.model == "gpt-4.1"
    assert "skipped openai:gpt-4.1-mini (unavailable)" in decision.reasons[0].message
    assert engine.decide(provider="openai", model="gpt-4.1", agent="support").model == "gpt-4.1"  # no match


def test_file_watching_reloads_good_edits_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    from otel_puppy.policies.watch import PolicyWatcher

    policy = tmp_path / "budgets.yaml"
    policy.write_text("budgets:\n  - {name: b, limit_usd: 1, window: day}\n")
    engine = PolicyEngine.from_settings(
        engine_for_tests().settings.model_copy(update={"policies": tmp_path, "watch_policies_s": None}),
        clock=FakeClock(),
    )
    watcher = PolicyWatcher(tmp_path, engine.reload)  # polled by hand: the test does not wait on time
    assert watcher.check() is False
    policy.write_text("budgets:\n  - {name: b, limit_usd: 2, window: day}\n")
    assert watcher.check() is True
    assert engine.policies.budgets[0].limit_usd == 2
    policy.write_text("budgets:\n  - {name: b, limit_usd: 3, window: day, colour: red}\n")
    assert watcher.check() is False
    assert (watcher.reloads, watcher.failures) == (1, 1)
    assert watcher.last_error is not None
    assert str(watcher.last_error.errors[0]).startswith(f"{policy}:2:42: budgets[0].colour: unknown key")
    assert engine.policies.budgets[0].limit_usd == 2
    (tmp_path / "more.yml").write_text("prices:\n  - {provider: p, model: m, input_mtok: 1, output_mtok: 1}\n")
    policy.write_text("budgets:\n  - {name: b, limit_usd: 4, window: day}\n")
    assert watcher.check() is True
    assert (engine.policies.budgets[0].limit_usd, len(engine.policies.prices)) == (Decimal(4), 1)
    engine.close()


def test_from_settings_starts_a_watcher_that_close_stops(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("budgets: []\n")
    engine = PolicyEngine.from_settings(engine_for_tests().settings.model_copy(update={"policies": tmp_path}))
    watcher = engine._watcher
    assert watcher is not None
    assert watcher._thread is not None
    assert watcher._thread.is_alive()
    engine.close()
    assert watcher._thread is None


def test_alert_webhook_posts_json_to_a_real_http_server() -> None:
    import json as jsonlib
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from otel_puppy.alerts import WebhookSink

    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(jsonlib.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next look at it: every 0.5 s by default, 0.05 s here
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    sink = WebhookSink(f"http://127.0.0.1:{server.server_port}/hook")
    try:
        engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 0.004, window: day, alerts: [0.5]}\n")
        engine.alerts.sinks = (sink,)
        spend(engine)
        sink.flush()
        assert [(r["kind"], r["policy"], r["severity"], r["threshold"]) for r in received] == [
            ("budget", "b", "info", 0.5)
        ]
        assert received[0]["message"] == "budget b crossed 50% of its day limit (70.0% used)"
    finally:
        sink.close()
        server.shutdown()
        server.server_close()


def test_engine_guard_async_reserves_and_raises_on_deny() -> None:
    import asyncio

    engine, _ = engine_with("budgets:\n  - {name: b, limit_usd: 0.01, window: day}\n")

    async def calls() -> Decimal:
        async with engine.guard("openai", "gpt-4.1", agent="a", estimated_cost_usd="0.006") as decision:
            assert decision.action is Action.ALLOW
        reserved = engine.snapshot().budget("b").reserved_usd
        with pytest.raises(PolicyDenied) as denied:
            async with engine.guard("openai", "gpt-4.1", agent="a", estimated_cost_usd="0.006"):
                raise AssertionError("must not run")
        assert denied.value.decision.reasons[0].policy == "b"
        assert reserved is not None
        return reserved

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(calls()) == Decimal("0.006")
    finally:
        loop.close()


def test_an_allowed_decision_builds_its_hits_when_read_and_sends_them_as_they_read() -> None:
    engine, _ = engine_with(
        "budgets:\n"
        "  - {name: org, limit_usd: 10, window: day}\n"
        "  - {name: per-user, per: [user], limit_usd: 1, window: day}\n"
        "  - {name: tokens, per: [user], limit_tokens: 1500, window: day, shadow: true}\n"
    )
    spend(engine, user="u1")
    decision = engine.decide(provider="openai", model="gpt-4.1", agent="support", user="u1", estimated_cost_usd="0.01")
    data = decision.to_dict()  # the hits are sent without being built
    assert data["reasons"] == [hit.to_dict() for hit in decision.reasons]
    assert data["shadow"] == [hit.to_dict() for hit in decision.shadow]
    assert [(h.policy, h.action, h.spent_usd, h.reserved_usd) for h in decision.reasons] == [
        ("org", Action.ALLOW, Decimal("0.0028"), Decimal(0)),
        ("per-user", Action.ALLOW, Decimal("0.0028"), Decimal(0)),
    ]
    assert [(h.policy, h.action, h.spent_tokens) for h in decision.shadow] == [("tokens", Action.ALLOW, 1100)]
    spend(engine, user="u1")
    again = engine.decide(provider="openai", model="gpt-4.1", agent="support", user="u1", estimated_cost_usd="0.01")
    assert [h.reserved_usd for h in again.reasons] == [Decimal("0"), Decimal("0")]  # settled by the span
    # over the shadow budget: reported as it would act, still allowed
    assert [(h.policy, h.action) for h in again.shadow] == [("tokens", Action.DENY)]
    assert again.action is Action.ALLOW


def test_decisions_follow_a_new_policy_set_at_once() -> None:
    engine, _ = engine_with("budgets:\n  - {name: org, limit_usd: 10, window: day}\n")
    request: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4.1",
        "agent": "support",
        "estimated_cost_usd": "0.01",
    }
    assert [h.policy for h in engine.decide(**request).reasons] == ["org"]
    engine.use_policies(
        parse_policy_text(
            "budgets:\n  - {name: tiny, match: {agent: support}, limit_usd: 0.001, window: day}\n",
            Path("policies/test.yaml"),
        )
    )
    decision = engine.decide(**request)
    assert (decision.action, [h.policy for h in decision.reasons]) == (Action.DENY, ["tiny"])


def test_allowed_decision_builds_what_the_generated_init_builds() -> None:
    hit = PolicyHit("budget", "b", Action.ALLOW, "budget b: $0 of $1 this day (0%)")
    built = allowed_decision("openai", "gpt-4.1", (hit,), (), "d-1", Decimal("0.02"), Decimal("0.02"), "learned")
    made = Decision(
        Action.ALLOW,
        "openai",
        "gpt-4.1",
        reasons=(hit,),
        shadow=(),
        decision_id="d-1",
        estimated_cost_usd=Decimal("0.02"),
        reserved_usd=Decimal("0.02"),
        created_at=built.created_at,
        estimate_source="learned",
    )
    assert built == made


def test_from_fields_builds_what_the_generated_init_builds() -> None:
    """`_assembled` sets each slot by hand: every field with a value of its own, and every default."""
    given: dict[str, object] = {
        "provider": "openai",
        "model": "gpt-4.1",
        "agent": "a",
        "service": "s",
        "user": "u",
        "team": "t",
        "environment": "e",
        "conversation": "c",
        "operation": "embeddings",
        "priority": Priority.HIGH,
        "estimated_cost_usd": Decimal("0.5"),
        "estimated_input_tokens": 3,
        "estimated_output_tokens": 4,
        "capabilities": ("tools",),
        "context_tokens": 5,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }
    assert set(given) == {f.name for f in dataclasses.fields(DecisionRequest)}  # a new field is added here
    built = DecisionRequest.from_fields(given)
    assert built == DecisionRequest(**given)  # type: ignore[arg-type]
    assert [getattr(built, name) for name in given] == list(given.values())
    defaults = DecisionRequest.from_fields({"provider": "openai", "model": "gpt-4.1"})
    assert defaults == DecisionRequest("openai", "gpt-4.1")
    assert (defaults.operation, defaults.priority, defaults.capabilities) == ("chat", Priority.NORMAL, ())
