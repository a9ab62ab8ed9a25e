"""Anomaly detectors: exact scores against FakeClock time, hits for decide(), metrics, reload."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy.calls import ErrorClass, LLMCall
from otel_puppy.decision import Action, DecisionRequest, PolicyHit, Severity
from otel_puppy.policies.anomaly import AnomalyEvent, AnomalyPolicy, AnomalyStatus, AnomalyWatch
from otel_puppy.scope import Scope
from otel_puppy.testing import FakeClock, make_call

T0 = 1_767_225_600.0
"""FakeClock's start: a multiple of every interval used here."""
MINUTE = 60.0

Batch = list[tuple[LLMCall, int | None]]


def call(
    provider: str = "openai",
    *,
    input_tokens: int = 1000,
    output_tokens: int = 200,
    duration_s: float = 1.0,
    error: ErrorClass | None = None,
    user: str | None = None,
) -> LLMCall:
    return make_call(
        end_s=T0 + duration_s,
        provider=provider,
        user=user,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        error=error,
        duration_s=duration_s,
    )


def policy(**fields: Any) -> AnomalyPolicy:
    """One-minute intervals, a ten-minute baseline (alpha 0.1), five samples, five-minute cooldown."""
    defaults: dict[str, Any] = {
        "name": "spike",
        "signal": "cost_rate",
        "interval": "1m",
        "baseline": "10m",
        "min_samples": 5,
        "cooldown": "5m",
        "threshold": {"zscore": 4},
        "action": "warn",
    }
    return AnomalyPolicy(**{**defaults, **fields})


def spend(nanos: int, provider: str = "openai") -> Batch:
    """One call costing `nanos`: over a minute, 120_000_000 nano-USD is $0.002/s."""
    return [(call(provider), nanos)]


def run(
    watch: AnomalyWatch, clock: FakeClock, batches: Sequence[Sequence[tuple[LLMCall, int | None]]]
) -> list[AnomalyEvent]:
    """Each batch is one whole interval: observed at its start, closed at its end."""
    events: list[AnomalyEvent] = []
    for batch in batches:
        watch.observe(batch)
        clock.advance(MINUTE)
        events += watch.tick()
    return events


def status_of(watch: AnomalyWatch, subject: str = "") -> AnomalyStatus:
    (found,) = [s for s in watch.statuses() if s.subject == subject]
    return found


STEADY = 120_000_000  # $0.002/s
SPIKE = 720_000_000  # $0.012/s


def test_steady_cost_then_spike_fires_exactly_once() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(),), clock)
    assert run(watch, clock, [spend(STEADY)] * 5) == []
    assert status_of(watch) == AnomalyStatus(
        policy="spike",
        signal="cost_rate",
        subject="",
        current=0.002,
        baseline=0.002,
        deviation_pct=0.0,
        score=0.0,
        samples=5,
        firing=False,
        fired_at=None,
        action="warn",
        shadow=False,
    )

    (event,) = run(watch, clock, [spend(SPIKE)])
    assert event.at == T0 + 6 * MINUTE
    status = event.status
    assert (status.current, status.baseline, status.samples) == (0.012, 0.002, 6)
    assert status.deviation_pct == pytest.approx(500.0)
    # a flat baseline: the stddev is floored at 5% of the mean, 0.0001/s
    assert status.score == pytest.approx(100.0)
    assert (status.firing, status.fired_at, status.action) == (True, T0 + 6 * MINUTE, "warn")
    assert event.message == "anomaly spike: cost_rate $0.012/s is 500% above baseline $0.002/s (z=100.0)"

    # back to normal: no new event; the cooldown still says firing until it ends
    assert run(watch, clock, [spend(STEADY)] * 3) == []
    assert status_of(watch).firing
    assert run(watch, clock, [spend(STEADY)] * 2) == []
    assert not status_of(watch).firing


def test_no_firing_before_min_samples() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(),), clock)
    assert run(watch, clock, [spend(STEADY)] * 4 + [spend(SPIKE)]) == []
    status = status_of(watch)
    # judged all the same, for dashboards; only not acted on
    assert (status.samples, status.firing) == (5, False)
    assert status.score == pytest.approx(100.0)


def test_drops_are_not_anomalies() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(),), clock)
    assert run(watch, clock, [spend(STEADY)] * 5 + [spend(0), []]) == []
    status = status_of(watch)
    assert status.current == 0.0
    assert status.score < 0


def test_unpriced_calls_add_no_cost() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(),), clock)
    run(watch, clock, [[(call(), STEADY), (call(), None)]])
    assert status_of(watch).current == 0.002


def test_cooldown_suppresses_repeats_then_allows_a_new_one() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(threshold={"ratio": 2}),), clock)
    run(watch, clock, [spend(STEADY)] * 5)
    huge = spend(6_000_000_000)  # $0.1/s
    first = run(watch, clock, [huge])
    assert [e.at for e in first] == [T0 + 6 * MINUTE]
    # past the threshold again 1 and 4 minutes later: firing, but no event within the 5m cooldown
    assert run(watch, clock, [huge]) == []
    assert status_of(watch).firing
    assert status_of(watch).score >= 2
    # decide() hears about the latest interval past the threshold
    (hit,) = watch.check(request())
    # the baseline already holds the first spike: (5 * 0.002 + 0.1) / 6
    assert hit.message == "anomaly spike: cost_rate $0.1/s is 445% above baseline $0.0183/s (5.5x baseline)"
    assert run(watch, clock, [spend(STEADY)] * 2 + [huge]) == []
    assert status_of(watch).fired_at == T0 + 6 * MINUTE
    # exactly one cooldown after the first: a new event
    (second,) = run(watch, clock, [huge])
    assert second.at == T0 + 11 * MINUTE
    assert second.status.fired_at == T0 + 11 * MINUTE


def test_ratio_threshold() -> None:
    def final_event(nanos: int) -> list[AnomalyEvent]:
        clock = FakeClock()
        watch = AnomalyWatch((policy(threshold={"ratio": 3}),), clock)
        return run(watch, clock, [spend(STEADY)] * 5 + [spend(nanos)])

    assert final_event(350_000_000) == []  # 2.9x
    (event,) = final_event(480_000_000)  # 4x
    assert event.status.score == 4.0
    assert event.status.current == 0.008
    assert event.message == "anomaly spike: cost_rate $0.008/s is 300% above baseline $0.002/s (4.0x baseline)"


def test_error_rate() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(signal="error_rate"),), clock)

    def calls(errors: int) -> Batch:
        return [(call(error=ErrorClass.SERVER_ERROR if i < errors else None), None) for i in range(20)]

    # an interval without calls has no error rate: not a sample
    assert run(watch, clock, [calls(1)] * 3 + [[]] + [calls(1)] * 2) == []
    assert status_of(watch).samples == 5
    (event,) = run(watch, clock, [calls(10)])
    assert (event.status.current, event.status.baseline) == (0.5, 0.05)
    assert event.status.score == pytest.approx(180.0)  # 0.45 / (5% of 0.05)
    assert event.message == "anomaly spike: error_rate 50.0% is 900% above baseline 5.0% (z=180.0)"


def test_latency_p95() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(signal="latency_p95"),), clock)

    def calls(slow: int) -> Batch:
        return [(call(duration_s=10.0 if i < slow else 1.0), None) for i in range(20)]

    run(watch, clock, [calls(0)] * 5)
    assert status_of(watch).current == 1.0
    # one slow call in 20 is within the p95 (nearest rank: the 19th of 20)
    assert run(watch, clock, [calls(1)]) == []
    (event,) = run(watch, clock, [calls(2)])
    assert (event.status.current, event.status.baseline) == (10.0, 1.0)
    assert event.message.startswith("anomaly spike: latency_p95 10s is 900% above baseline 1s")


def test_latency_reservoir_is_bounded() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(signal="latency_p95"),), clock)
    run(watch, clock, [[(call(duration_s=float(i % 100)), None) for i in range(5000)]])
    assert 80 <= status_of(watch).current <= 99


def test_request_rate() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(signal="request_rate"),), clock)
    (event,) = run(watch, clock, [[(call(), None)] * 6] * 5 + [[(call(), None)] * 60])
    assert (event.status.current, event.status.baseline) == (1.0, 0.1)
    assert event.message == "anomaly spike: request_rate 1 requests/s is 900% above baseline 0.1 requests/s (z=180.0)"


def test_token_rate() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(signal="token_rate"),), clock)
    steady = [(call(input_tokens=1000, output_tokens=200), None)]
    spike = [(call(input_tokens=10_000, output_tokens=2000), None)]
    (event,) = run(watch, clock, [steady] * 5 + [spike])
    assert (event.status.current, event.status.baseline) == (200.0, 20.0)


def test_per_provider_subjects_are_separate() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(per=["provider"]),), clock)
    both = spend(STEADY, "openai") + spend(STEADY, "anthropic")
    (event,) = run(watch, clock, [both] * 5 + [spend(SPIKE, "openai") + spend(STEADY, "anthropic")])
    assert event.status.subject == "provider=openai"
    assert event.message.startswith("anomaly spike for provider=openai: cost_rate $0.012/s")
    assert {s.subject: s.firing for s in watch.statuses()} == {"provider=openai": True, "provider=anthropic": False}
    assert status_of(watch, "provider=anthropic").current == 0.002


def request(provider: str = "openai") -> Scope:
    return DecisionRequest(provider=provider, model="gpt-4.1").scope()


def spiked(*policies: AnomalyPolicy) -> tuple[AnomalyWatch, FakeClock]:
    """A watch whose openai subject just spiked (fired at T0 + 6m, clock at T0 + 6m)."""
    clock = FakeClock()
    watch = AnomalyWatch(policies, clock)
    both = spend(STEADY, "openai") + spend(STEADY, "anthropic")
    events = run(watch, clock, [both] * 5 + [spend(SPIKE, "openai") + spend(STEADY, "anthropic")])
    assert events
    return watch, clock


def test_check_warns_for_the_matching_subject_only() -> None:
    watch, _ = spiked(policy(per=["provider"]))
    assert watch.check(request("openai")) == [
        PolicyHit(
            kind="anomaly",
            policy="spike",
            action=Action.WARN,
            message="anomaly spike for provider=openai: cost_rate $0.012/s is 500% above baseline $0.002/s (z=100.0)",
            scope="provider=openai",
            severity=Severity.WARNING,
        )
    ]
    assert watch.check(request("anthropic")) == []
    assert watch.check(request("mistral")) == []


def test_check_denies_until_the_cooldown_ends() -> None:
    watch, clock = spiked(policy(per=["provider"], action="deny"))
    (hit,) = watch.check(request("openai"))
    assert (hit.action, hit.severity, hit.retry_after_s) == (Action.DENY, Severity.CRITICAL, 300.0)
    clock.advance(100)
    assert watch.check(request("openai"))[0].retry_after_s == 200.0
    assert watch.check(request("anthropic")) == []
    # normal again, and the cooldown is over
    run(watch, clock, [spend(STEADY, "openai")] * 5)
    assert watch.check(request("openai")) == []


def test_check_alert_and_open_breaker_are_informational() -> None:
    watch, _ = spiked(policy(name="a", per=["provider"], action="alert"), policy(name="b", action="open_breaker"))
    hits = watch.check(request("openai"))
    assert [(h.policy, h.action, h.severity, h.scope) for h in hits] == [
        ("a", Action.ALLOW, Severity.WARNING, "provider=openai"),
        ("b", Action.ALLOW, Severity.WARNING, ""),
    ]


def test_check_respects_match() -> None:
    watch, _ = spiked(policy(match={"provider": "openai", "model": "gpt-4.1"}))
    assert [h.policy for h in watch.check(request("openai"))] == ["spike"]
    mini = DecisionRequest(provider="openai", model="gpt-4.1-mini").scope()
    assert watch.check(mini) == []


def test_shadow_policies_report_hits_marked_shadow() -> None:
    watch, _ = spiked(policy(per=["provider"], action="deny", shadow=True))
    (hit,) = watch.check(request("openai"))
    assert (hit.action, hit.shadow) == (Action.DENY, True)
    assert status_of(watch, "provider=openai").shadow


def test_observe_closes_intervals_that_ended_before_tick() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(),), clock)
    for _ in range(5):
        watch.observe(spend(STEADY))
        clock.advance(MINUTE)
    watch.observe(spend(SPIKE))
    clock.advance(MINUTE)
    # the spike interval was only closed by this observe; its event comes out of the next tick
    watch.observe(spend(STEADY))
    (event,) = watch.tick()
    assert (event.at, event.status.current) == (T0 + 6 * MINUTE, 0.012)
    assert watch.tick() == []


def test_tick_between_boundaries_does_nothing() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(),), clock)
    watch.observe(spend(STEADY))
    clock.advance(59)
    assert watch.tick() == []
    assert status_of(watch).samples == 0
    clock.advance(1)
    assert watch.tick() == []
    assert status_of(watch).samples == 1


def test_interval_in_progress_at_start_is_not_a_sample() -> None:
    clock = FakeClock(T0 + 30)
    watch = AnomalyWatch((policy(),), clock)
    watch.observe(spend(STEADY))
    clock.set(T0 + MINUTE)
    watch.tick()
    assert status_of(watch).samples == 0
    watch.observe(spend(STEADY))
    clock.advance(MINUTE)
    watch.tick()
    assert (status_of(watch).samples, status_of(watch).current) == (1, 0.002)


def test_zero_baseline_reports_infinite_deviation() -> None:
    clock = FakeClock(T0 + 30)
    watch = AnomalyWatch((policy(signal="request_rate"),), clock)
    watch.observe([(call(), None)])  # creates the subject in the partial interval: not a sample
    clock.set(T0 + MINUTE)
    assert run(watch, clock, [[]] * 5) == []
    (event,) = run(watch, clock, [[(call(), None)] * 6])
    assert (event.status.baseline, event.status.deviation_pct, event.status.score) == (0.0, math.inf, math.inf)
    assert event.message == "anomaly spike: request_rate 0.1 requests/s rose from a baseline of 0 requests/s (z=inf)"
    data = event.to_dict()
    assert (data["baseline"], data["deviation_pct"], data["score"], data["current"]) == (0.0, None, None, 0.1)


def test_idle_gap_forgets_the_subject_and_a_later_spike_still_works() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(),), clock)
    run(watch, clock, [spend(STEADY)] * 5)
    clock.advance(3 * 86400)
    started = time.perf_counter()
    assert watch.tick() == []
    assert time.perf_counter() - started < 0.5
    # idle for a whole baseline: forgotten, rather than alarming against a baseline decayed to nothing
    assert watch.statuses() == []
    assert run(watch, clock, [spend(STEADY)] * 5) == []
    (event,) = run(watch, clock, [spend(SPIKE)])
    assert (event.status.current, event.status.baseline, event.status.samples) == (0.012, 0.002, 6)


def test_gap_within_the_baseline_is_folded_in_closed_form() -> None:
    """Many empty intervals in O(1), with the same baseline as closing them one by one."""
    ninety_days = 90 * 86400
    slow_clock, fast_clock = FakeClock(), FakeClock()
    slow = AnomalyWatch((policy(baseline="10m"),), slow_clock)
    fast = AnomalyWatch((policy(baseline="10m"),), fast_clock)
    for watch, clock in ((slow, slow_clock), (fast, fast_clock)):
        run(watch, clock, [spend(STEADY)] * 3 + [spend(SPIKE)] * 2 + [spend(STEADY)] * 3)
    fast.observe(spend(STEADY))
    fast_clock.advance(9 * MINUTE)  # 1 interval with a call, then 8 empty: past warm-up (10 samples)
    fast.tick()
    for batch in [spend(STEADY)] + [[]] * 8:
        slow.observe(batch)
        slow_clock.advance(MINUTE)
        slow.tick()
    a, b = status_of(slow), status_of(fast)
    assert b.samples == a.samples == 17
    assert b.baseline == pytest.approx(a.baseline, rel=1e-12)
    assert b.score == pytest.approx(a.score, rel=1e-9)

    # a month of one-second intervals inside a 90-day baseline: 2.6 million intervals
    clock = FakeClock()
    watch = AnomalyWatch((policy(interval="1s", baseline=ninety_days),), clock)
    watch.observe(spend(STEADY))
    clock.advance(1)
    watch.tick()
    clock.advance(30 * 86400)
    started = time.perf_counter()
    watch.tick()
    assert time.perf_counter() - started < 0.5
    status = status_of(watch)
    assert status.samples == 1 + 30 * 86400
    assert status.baseline == pytest.approx(0.12 / (30 * 86400))  # the running mean of 0.12/s and zeros


def test_metrics() -> None:
    watch, _ = spiked(policy(per=["provider"]), policy(name="global", signal="request_rate", action="deny"))
    registry = CollectorRegistry(auto_describe=True)
    registry.register(watch)
    score = registry.get_sample_value(
        "otel_puppy_anomaly_score", {"policy": "spike", "signal": "cost_rate", "subject": "provider=openai"}
    )
    assert score == pytest.approx(100.0)
    assert (
        registry.get_sample_value(
            "otel_puppy_anomaly_score", {"policy": "spike", "signal": "cost_rate", "subject": "provider=anthropic"}
        )
        == 0.0
    )
    assert (
        registry.get_sample_value(
            "otel_puppy_anomaly_score", {"policy": "global", "signal": "request_rate", "subject": ""}
        )
        == 0.0
    )
    assert (
        registry.get_sample_value(
            "otel_puppy_anomalies_total", {"policy": "spike", "signal": "cost_rate", "action": "warn"}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "otel_puppy_anomalies_total", {"policy": "global", "signal": "request_rate", "action": "deny"}
        )
        is None
    )


def test_with_policies_keeps_baselines() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(per=["provider"]), policy(name="volume", signal="request_rate")), clock)
    (first,) = run(watch, clock, [spend(STEADY)] * 5 + [spend(SPIKE)])
    watch.observe(spend(STEADY))  # the open interval carries over too

    reloaded = watch.with_policies(
        (policy(per=["provider"], threshold={"ratio": 2}), policy(name="volume", signal="token_rate"))
    )
    # the changed signal starts over; the kept policy keeps samples, baseline and cooldown
    assert [(s.policy, s.subject, s.samples) for s in reloaded.statuses()] == [("spike", "provider=openai", 6)]
    status = status_of(reloaded, "provider=openai")
    assert (status.fired_at, status.firing) == (T0 + 6 * MINUTE, True)
    (hit,) = reloaded.check(request("openai"))
    assert hit.message == first.message
    assert run(reloaded, clock, [[]] + [spend(STEADY)] * 3) == []
    assert status_of(reloaded, "provider=openai").samples == 10
    # the new threshold, one cooldown after the first event
    (second,) = run(reloaded, clock, [spend(6_000_000_000)])
    assert second.at == T0 + 11 * MINUTE
    assert second.message.endswith("x baseline)")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(reloaded)
    labels = {"policy": "spike", "signal": "cost_rate", "action": "warn"}
    assert registry.get_sample_value("otel_puppy_anomalies_total", labels) == 2.0


def test_with_policies_drops_baselines_when_per_changes() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(),), clock)
    run(watch, clock, [spend(STEADY)] * 5)
    reloaded = watch.with_policies((policy(per=["provider"]),))
    assert reloaded.statuses() == []
    assert run(reloaded, clock, [spend(SPIKE)]) == []


def test_on_anomaly_receives_events() -> None:
    clock = FakeClock()
    received: list[AnomalyEvent] = []
    watch = AnomalyWatch((policy(), policy(name="requests", signal="request_rate")), clock, received.append)
    events = run(watch, clock, [spend(STEADY)] * 5 + [spend(SPIKE) * 10])
    assert [e.status.policy for e in events] == ["spike", "requests"]
    assert received == events


def test_on_anomaly_errors_propagate_after_every_event_is_delivered() -> None:
    clock = FakeClock()
    received: list[str] = []

    def fail(event: AnomalyEvent) -> None:
        received.append(event.status.policy)
        raise RuntimeError("sink down")

    watch = AnomalyWatch((policy(), policy(name="requests", signal="request_rate")), clock, fail)
    run(watch, clock, [spend(STEADY)] * 5)
    watch.observe(spend(SPIKE) * 10)
    clock.advance(MINUTE)
    with pytest.raises(RuntimeError, match="sink down"):
        watch.tick()
    assert received == ["spike", "requests"]
    assert watch.tick() == []


def test_max_subjects(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(per=["user"], max_subjects=2),), clock)
    with caplog.at_level(logging.WARNING, logger="otel_puppy"):
        for _ in range(3):
            watch.observe([(call(user=f"u{i}"), STEADY) for i in range(4)])
    assert [s.subject for s in watch.statuses()] == ["user=u0", "user=u1"]
    assert [r.getMessage() for r in caplog.records] == [
        "anomaly policy spike watches 2 subjects already; new user values are not watched"
    ]


def test_concurrent_observe_and_tick_lose_nothing() -> None:
    clock = FakeClock()
    watch = AnomalyWatch((policy(signal="request_rate"),), clock)
    batch = [(call(), None)] * 10

    def feed() -> None:
        for _ in range(100):
            watch.observe(batch)
            watch.tick()
            watch.check(request())

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    clock.advance(MINUTE)
    watch.tick()
    assert status_of(watch).current == 4000 / 60


def test_quiet_while_no_detector_fires() -> None:
    # decide() asks `quiet()` before building the scope `check()` needs.
    watch, clock = spiked(policy(per=["provider"], action="deny"))
    assert not watch.quiet(clock.now())
    assert watch.check(request("openai"))
    run(watch, clock, [spend(STEADY, "openai")] * 6)  # normal again, and the cooldown is over
    assert watch.check(request("openai")) == []
    assert watch.quiet(clock.now())
    restored = AnomalyWatch(watch.policies, clock)
    assert restored.quiet(clock.now())
    fired, _ = spiked(policy(per=["provider"], action="deny"))
    restored.import_state(fired.export_state())
    assert not restored.quiet(clock.now())
    assert not fired.with_policies(fired.policies).quiet(clock.now())
