"""Truthful windows: a rolling window never resets, so a deny says when enough spend has aged out.

Every amount is exact: the test model costs $1 per million input tokens (1,000 nano-USD a token).
The clock starts at 2026-01-01T00:00:00Z (`ManualClock`'s default), a boundary of every
sub-bucket; a 1h window's sub-buckets are 60 s long, and spend in the sub-bucket of `t` stops
counting at the start of the sub-bucket 61 after it (`RollingWindow.drops_at`).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from prometheus_client.registry import CollectorRegistry

from otel_puppy.clock import ManualClock
from otel_puppy.decision import Action, Decision, Priority
from otel_puppy.engine import PolicyEngine
from otel_puppy.health.assessment import assess
from otel_puppy.policies import parse_policy_text
from otel_puppy.policies.budget import SUB_BUCKET_READS, BudgetBook, too_large
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import CEILING, Increment, SpendRecord, Store, SubBucket, open_store
from otel_puppy.store.memory import MemoryStore
from otel_puppy.store.sqlite import SQLiteStore
from otel_puppy.testing import make_call
from otel_puppy.windows import RollingWindow
from tests.server.test_app import client_for

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MINUTE = 60.0
PRICES = "prices:\n  - {provider: self-hosted, model: m, input_mtok: 1, output_mtok: 1}\n"
HOURLY = PRICES + "budgets:\n  - {name: b, limit_usd: 1, window: 1h, action: deny}\n"


def engine_on(yaml: str, store: Store | None = None, clock: ManualClock | None = None, **settings: Any) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store="memory://", watch_policies_s=None, **settings),
        policies=parse_policy_text(yaml, Path("policies/test.yaml")),
        store=store if store is not None else MemoryStore(),  # an empty MemoryStore is falsy
        clock=clock or ManualClock(T0),
        registry=CollectorRegistry(auto_describe=True),
    )


def clock_of(engine: PolicyEngine) -> ManualClock:
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    return clock


def spend_usd(engine: PolicyEngine, usd: str, at: float) -> None:
    """A call costing exactly `usd`, ending at `at` (the clock is moved there)."""
    clock_of(engine).set(at)
    tokens = int(Decimal(usd) * 1_000_000)
    engine.observe(make_call(end_s=at, provider="self-hosted", model="m", input_tokens=tokens, output_tokens=0))


def ask(engine: PolicyEngine, usd: str | None = None, **fields: Any) -> Decision:
    if usd is not None:
        fields["estimated_cost_usd"] = usd
    return engine.decide(provider="self-hosted", model="m", **fields)


@pytest.fixture
def hourly() -> Iterator[PolicyEngine]:
    """A 1h rolling budget of $1: $0.60 spent at T0 and $0.30 at T0 + 20 min; the clock at T0 + 30 min."""
    engine = engine_on(HOURLY)
    spend_usd(engine, "0.60", T0)
    spend_usd(engine, "0.30", T0 + 20 * MINUTE)
    clock_of(engine).set(T0 + 30 * MINUTE)
    yield engine
    engine.close()


# --- the arithmetic ---------------------------------------------------------------------------


def test_a_sub_bucket_drops_out_61_sub_buckets_after_its_own_start() -> None:
    window = RollingWindow(3600, "1h")
    index = int(T0 // 60)
    assert window.drops_at(index) == T0 + 61 * MINUTE
    assert window.bucket(window.drops_at(index) - 0.001).key == f"1h:{index + 60}"  # still counted
    assert f"1h:{index}" in {b.key for b in window.buckets_for_read(T0 + 61 * MINUTE - 0.001)}
    assert f"1h:{index}" not in {b.key for b in window.buckets_for_read(T0 + 61 * MINUTE)}


def test_drops_at_is_the_first_instant_of_the_sub_bucket_even_with_an_inexact_step() -> None:
    window = RollingWindow(61, "61s")  # a step of 61/60 s, not exact in binary
    for index in (0, 7, 1_000_003, int(T0 // window.step)):
        at = window.drops_at(index)
        assert int(at // window.step) == index + 61
        assert int(math.nextafter(at, 0) // window.step) == index + 60


def test_room_at_drops_the_oldest_first_and_counts_reservations_as_spend_made_now() -> None:
    window = RollingWindow(3600, "1h")
    first = int(T0 // 60)
    buckets = [(first, 600), (first + 20, 300)]
    now = T0 + 30 * MINUTE
    assert window.room_at(buckets, 0, 250, 1000, now) == T0 + 61 * MINUTE
    assert window.room_at(buckets, 0, 750, 1000, now) == T0 + 81 * MINUTE
    assert window.room_at(buckets, 0, 100, 1000, now) == now  # fits already
    assert window.room_at(buckets, 0, 1001, 1000, now) is None  # larger than the limit: never
    assert window.room_at(buckets, 0, 1000, 1000, now) == T0 + 81 * MINUTE  # all of it must go
    # reserved 300 counts as spend in now's sub-bucket (first + 30): it drops at T0 + 91 min
    assert window.room_at([(first, 600)], 300, 750, 1000, now) == T0 + 91 * MINUTE
    # no estimate: room is anything left (under the limit)
    assert window.room_at([(first, 600), (first + 20, 400)], 0, 0, 1000, now) == T0 + 61 * MINUTE
    assert window.room_at([], 0, 0, 0, now) is None  # a limit of nothing never has room


# --- decisions --------------------------------------------------------------------------------


def test_a_rolling_deny_says_when_enough_spend_has_aged_out(hourly: PolicyEngine) -> None:
    decision = ask(hourly, "0.25")
    assert (decision.action, decision.retry_after_s, decision.resets_at) == (Action.DENY, 1860.0, None)
    [hit] = decision.reasons
    assert (hit.retry_after_s, hit.resets_at, hit.window) == (1860.0, None, "1h")
    assert hit.message == "budget b: $0.900000000 of $1 this 1h (90%); denied"
    clock_of(hourly).set(T0 + 61 * MINUTE - 1)  # the T0 spend still counts for a second
    assert (ask(hourly, "0.25").action, ask(hourly, "0.25").retry_after_s) == (Action.DENY, 1.0)
    clock_of(hourly).set(T0 + 61 * MINUTE)  # exactly when it said: the $0.60 has aged out
    allowed = ask(hourly, "0.25")
    assert allowed.action is Action.ALLOW
    assert (allowed.reasons[0].spent_usd, allowed.reasons[0].reserved_usd) == (Decimal("0.300000000"), Decimal(0))


def test_a_larger_request_waits_for_more_sub_buckets_to_age_out(hourly: PolicyEngine) -> None:
    decision = ask(hourly, "0.75")
    assert (decision.action, decision.retry_after_s) == (Action.DENY, 3060.0)  # T0 + 81 min: both gone
    clock_of(hourly).set(T0 + 61 * MINUTE)
    assert (ask(hourly, "0.75").action, ask(hourly, "0.75").retry_after_s) == (Action.DENY, 1200.0)
    clock_of(hourly).set(T0 + 81 * MINUTE)
    assert ask(hourly, "0.75").action is Action.ALLOW


def test_a_request_larger_than_the_limit_never_fits(hourly: PolicyEngine) -> None:
    decision = ask(hourly, "2")
    assert (decision.action, decision.retry_after_s, decision.resets_at) == (Action.DENY, None, None)
    [hit] = decision.reasons
    assert hit.retry_after_s is None
    assert hit.message == (
        "budget b: $0.900000000 of $1 this 1h (90%); denied: "
        "this request alone ($2) is larger than the budget's limit ($1), so it never fits"
    )
    clock_of(hourly).set(T0 + 10 * 3600)  # nothing counts any more: still never
    assert ask(hourly, "2").reasons[0].retry_after_s is None
    assert ask(hourly, "1").action is Action.ALLOW  # exactly the limit fits an empty window


def test_a_request_over_the_limit_its_priority_may_use_never_fits_at_that_priority() -> None:
    engine = engine_on(PRICES + "budgets:\n  - {name: b, limit_usd: 1, window: 1h, reserve: {critical: 0.1}}\n")
    decision = ask(engine, "0.95")
    assert (decision.action, decision.retry_after_s) == (Action.DENY, None)
    assert decision.reasons[0].message == (
        "budget b: $0.000000000 of $1 this 1h (0%); denied: this request alone ($0.95) is larger than "
        "the budget's limit for its priority ($0.9 of $1), so it never fits"
    )
    assert ask(engine, "0.95", priority="critical").action is Action.ALLOW


def test_a_never_fitting_budget_gives_the_decision_no_retry_time_though_another_does() -> None:
    engine = engine_on(
        PRICES
        + "budgets:\n  - {name: small, limit_usd: 0.6, window: 1h}\n  - {name: daily, limit_usd: 1, window: day}\n"
    )
    spend_usd(engine, "0.50", T0)
    decision = ask(engine, "0.7")
    assert decision.action is Action.DENY
    assert [(h.policy, h.retry_after_s) for h in decision.reasons] == [("small", None), ("daily", 86400.0)]
    assert decision.retry_after_s is None
    both = ask(engine, "0.55")  # both could fit later: the later of the two
    assert [(h.policy, h.retry_after_s) for h in both.reasons] == [("small", 3660.0), ("daily", 86400.0)]
    assert both.retry_after_s == 86400.0
    engine.close()


def test_reservations_in_flight_count_as_spend_made_now() -> None:
    """The choice: a reservation ages out with the sub-bucket it was held in (it settles, nearly
    always within seconds, as spend that counts for the whole window; expiring only frees room
    sooner). Neither "held until the TTL" (300 s: T0 + 35 min) nor "never ages" (never fits)."""
    engine = engine_on(HOURLY)
    spend_usd(engine, "0.60", T0)
    clock_of(engine).set(T0 + 30 * MINUTE)
    held = ask(engine, "0.30")
    assert (held.action, held.reserved_usd) == (Action.ALLOW, Decimal("0.30"))
    decision = ask(engine, "0.75")  # needs the $0.60 and the $0.30 reserved at T0 + 30 min to go
    assert (decision.action, decision.retry_after_s) == (Action.DENY, 3660.0)  # T0 + 91 min
    assert decision.reasons[0].reserved_usd == Decimal("0.300000000")
    assert ask(engine, "0.25").retry_after_s == 1860.0  # the $0.60 going is enough
    engine.close()


def test_a_rolling_token_budget_waits_for_tokens_to_age_out() -> None:
    engine = engine_on(PRICES + "budgets:\n  - {name: t, limit_tokens: 1000, window: 15m}\n")  # 15 s sub-buckets
    spend_usd(engine, "0.000600", T0)  # 600 tokens
    spend_usd(engine, "0.000300", T0 + 300)
    clock_of(engine).set(T0 + 450)
    decision = ask(engine, estimated_input_tokens=250)
    assert (decision.action, decision.retry_after_s) == (Action.DENY, 465.0)  # T0 + 61 * 15 s
    assert ask(engine, estimated_input_tokens=1001).reasons[0].message == (
        "budget t: 900 of 1,000 tokens this 15m (90%); denied: "
        "this request alone (1,001 tokens) is larger than the budget's limit (1,000 tokens), so it never fits"
    )
    clock_of(engine).set(T0 + 915)
    assert ask(engine, estimated_input_tokens=250).action is Action.ALLOW
    engine.close()


def test_a_rolling_degrade_says_how_long_it_lasts_and_the_decision_gives_no_retry() -> None:
    engine = engine_on(PRICES + "budgets:\n  - {name: b, limit_usd: 1, window: 1h, action: {degrade: m2}}\n")
    spend_usd(engine, "0.60", T0)
    spend_usd(engine, "0.30", T0 + 20 * MINUTE)
    clock_of(engine).set(T0 + 30 * MINUTE)
    decision = ask(engine, "0.25")
    assert (decision.action, decision.model, decision.retry_after_s, decision.resets_at) == (
        Action.DEGRADE,
        "m2",
        None,
        None,
    )
    hit = next(h for h in decision.reasons if h.policy == "b" and h.action is Action.DEGRADE)
    assert (hit.retry_after_s, hit.resets_at) == (1860.0, None)
    engine.close()


def test_a_shadow_rolling_budget_reports_its_wait_on_an_allowed_decision() -> None:
    engine = engine_on(PRICES + "budgets:\n  - {name: s, limit_usd: 1, window: 1h, shadow: true}\n")
    spend_usd(engine, "0.60", T0)
    clock_of(engine).set(T0 + 30 * MINUTE)
    decision = ask(engine, "0.5")
    assert (decision.action, decision.retry_after_s) == (Action.ALLOW, None)
    [shadow] = decision.shadow
    assert (shadow.action, shadow.retry_after_s, shadow.resets_at) == (Action.DENY, 1860.0, None)
    # as sent over HTTP, no hit built: $0.50 more is held now, and T0's $0.60 going still makes room
    assert ask(engine, "0.5").to_dict()["shadow"][0]["retry_after_s"] == 1860.0
    engine.close()


def test_the_hint_falls_back_to_the_longest_wait_when_the_store_cannot_read_sub_buckets() -> None:
    class NoSubBuckets(MemoryStore):
        def read_sub_buckets(self, reads: Any, now: float) -> list[tuple[SubBucket, ...]]:
            raise OSError("disk gone")

    engine = engine_on(HOURLY, store=NoSubBuckets())
    spend_usd(engine, "0.60", T0)
    clock_of(engine).set(T0 + 30 * MINUTE)
    decision = ask(engine, "0.5")
    assert (decision.action, decision.retry_after_s) == (Action.DENY, 3660.0)  # all counted now gone: T0 + 91 min
    engine.close()


# --- calendar windows keep their reset -----------------------------------------------------------


def test_a_calendar_day_keeps_resets_at_the_next_midnight_in_its_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    start = datetime(2026, 3, 10, 22, 0, tzinfo=paris).timestamp()
    engine = engine_on(
        PRICES + "budgets:\n  - {name: d, limit_usd: 1, window: day}\n",
        clock=ManualClock(start),
        timezone="Europe/Paris",
    )
    spend_usd(engine, "0.90", start)
    clock_of(engine).set(start + 3600)  # 23:00 in Paris
    decision = ask(engine, "0.25")
    midnight = datetime(2026, 3, 11, tzinfo=paris)
    assert (decision.action, decision.retry_after_s, decision.resets_at) == (Action.DENY, 3600.0, midnight)
    assert decision.reasons[0].resets_at == midnight
    never = ask(engine, "1.5")
    assert (never.retry_after_s, never.resets_at) == (None, midnight)
    assert never.reasons[0].message == (
        "budget d: $0.900000000 of $1 this day (90%); denied: "
        "this request alone ($1.5) is larger than the budget's limit ($1), so it never fits"
    )
    engine.close()


# --- the same truth over HTTP and in health -----------------------------------------------------


def test_the_same_over_post_v1_decide(hourly: PolicyEngine) -> None:
    with client_for(hourly) as client:
        denied = client.post("/v1/decide", json={"provider": "self-hosted", "model": "m", "estimated_cost_usd": "0.25"})
        never = client.post("/v1/decide", json={"provider": "self-hosted", "model": "m", "estimated_cost_usd": "2"})
    assert denied.status_code == 200
    body = denied.json()
    assert (body["action"], body["retry_after_s"], body["resets_at"]) == ("deny", 1860.0, None)
    assert body["reasons"] == [
        {
            "kind": "budget",
            "policy": "b",
            "action": "deny",
            "message": "budget b: $0.900000000 of $1 this 1h (90%); denied",
            "scope": "",
            "severity": "info",
            "shadow": False,
            "spent_usd": "0.900000000",
            "limit_usd": "1",
            "spent_tokens": 900000,
            "limit_tokens": None,
            "reserved_usd": "0.000000000",
            "utilization": 0.9,
            "window": "1h",
            "resets_at": None,
            "retry_after_s": 1860.0,
            "model": None,
            "spent_calls": None,
            "limit_calls": None,
        }
    ]
    never_body = never.json()
    assert (never_body["action"], never_body["retry_after_s"]) == ("deny", None)
    assert never_body["reasons"][0]["message"] == (
        "budget b: $0.900000000 of $1 this 1h (90%); denied: "
        "this request alone ($2) is larger than the budget's limit ($1), so it never fits"
    )


def exhausted(action: str) -> PolicyEngine:
    """A 1h rolling budget over its limit: $0.60 at T0, $0.45 at T0 + 20 min; the clock at T0 + 30 min."""
    engine = engine_on(PRICES + f"budgets:\n  - {{name: b, limit_usd: 1, window: 1h, action: {action}}}\n")
    spend_usd(engine, "0.60", T0)
    spend_usd(engine, "0.45", T0 + 20 * MINUTE)
    clock_of(engine).set(T0 + 30 * MINUTE)
    return engine


@pytest.mark.parametrize(
    ("action", "tail"),
    [
        ("deny", "calls are denied until enough of its spend ages out, at 2026-01-01T01:01:00+00:00; "
         "raise its limit or shed low-priority work"),
        ("'{degrade: m2}'", "calls are degraded to m2 until enough of its spend ages out, "
         "at 2026-01-01T01:01:00+00:00"),
        ("warn", "it is over (warning only) until enough of its spend ages out, at 2026-01-01T01:01:00+00:00"),
    ],
)  # fmt: skip
def test_health_advice_says_when_a_rolling_budget_has_room_again(action: str, tail: str) -> None:
    engine = exhausted(action.strip("'"))
    try:
        status = engine.snapshot().budget("b")
        assert (status.retry_after_s, status.resets_at) == (1860.0, None)  # $0.45 < $1 once T0's $0.60 is gone
        [advice] = [r for r in assess(engine).recommendations if r.kind == "budget"]
        assert advice.message == f"budget b is at 105% of its 1h limit: {tail}"
    finally:
        engine.close()


def test_get_v1_budgets_says_the_same() -> None:
    engine = exhausted("deny")
    try:
        with client_for(engine) as client:
            [budget] = client.get("/v1/budgets").json()["budgets"]
    finally:
        engine.close()
    assert (budget["action"], budget["resets_at"], budget["retry_after_s"]) == ("deny", None, 1860.0)


def test_health_advice_for_a_rolling_budget_near_its_limit_says_it_ages_out() -> None:
    engine = exhausted("deny")
    try:
        clock_of(engine).set(T0 + 61 * MINUTE)  # $0.45 left: not near; add $0.50 more
        spend_usd(engine, "0.50", T0 + 61 * MINUTE)
        [advice] = [r for r in assess(engine).recommendations if r.kind == "budget"]
        assert advice.message == (
            "budget b is at 95% of its 1h limit: its spend ages out over the trailing 1h; "
            "slow down or raise its limit before it runs out"
        )
    finally:
        engine.close()


# --- every store ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("redis_url")
    return url


def test_every_store_gives_the_same_wait(store_url: str) -> None:
    engine = engine_on(HOURLY, store=open_store(store_url))
    try:
        spend_usd(engine, "0.60", T0)
        spend_usd(engine, "0.30", T0 + 20 * MINUTE)
        clock_of(engine).set(T0 + 30 * MINUTE)
        assert (ask(engine, "0.25").retry_after_s, ask(engine, "0.75").retry_after_s) == (1860.0, 3060.0)
        assert ask(engine, "2").retry_after_s is None
        clock_of(engine).set(T0 + 61 * MINUTE)
        assert ask(engine, "0.25").action is Action.ALLOW
    finally:
        engine.close()


# --- bounds -----------------------------------------------------------------------------------


def test_many_budgets_over_their_limit_are_read_in_bounded_chunks() -> None:
    """600 per-user rolling budgets over their limit: statuses read their sub-buckets
    `SUB_BUCKET_READS` windows a store call (a Redis script must stay short), each hit exact."""

    class Counting(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[int] = []

        def read_sub_buckets(self, reads: Any, now: float) -> list[tuple[SubBucket, ...]]:
            self.calls.append(len(reads))
            return super().read_sub_buckets(reads, now)

    store = Counting()
    engine = engine_on(PRICES + "budgets:\n  - {name: u, per: [user], limit_usd: 0.001, window: 1h}\n", store=store)
    clock_of(engine).set(T0)
    calls = [
        make_call(end_s=T0, provider="self-hosted", model="m", user=f"u{i}", input_tokens=1000, output_tokens=0)
        for i in range(600)
    ]
    engine.observe_many(calls)
    clock_of(engine).set(T0 + 30 * MINUTE)
    statuses = engine.snapshot().budgets
    assert len(statuses) == 600
    assert {(hit.action, hit.retry_after_s) for hit in statuses} == {(Action.DENY, 1860.0)}
    assert store.calls == [SUB_BUCKET_READS, SUB_BUCKET_READS, 600 - 2 * SUB_BUCKET_READS]
    engine.close()


def test_the_worst_values_stay_exact() -> None:
    """A 90-day window (the longest) with every sub-bucket at the ceiling and as much reserved: exact
    integer arithmetic; a request of the ceiling itself never fits a smaller limit."""
    window = RollingWindow(90 * 86400, "90d")
    first = int(T0 // window.step)
    now = T0 + 60 * window.step
    buckets = [(first + i, CEILING) for i in range(61)]
    assert window.room_at(buckets, CEILING, 1, CEILING, now) == window.drops_at(first + 60)
    [instance] = BudgetBook(parse_policy_text(HOURLY, Path("p.yaml")).budgets, ZoneInfo("UTC")).instances({})
    check = instance.checks[Priority.NORMAL]
    assert too_large(instance, check, CEILING, 0) == (
        "this request alone ($9007199.254740991) is larger than the budget's limit ($1), so it never fits"
    )
    assert too_large(instance, check, 10**9, 0) is None
    assert too_large(instance, check, 10**9 + 1, 0) is not None


# --- stored garbage reads as full, never as room ----------------------------------------------


def test_sqlite_garbage_in_a_sub_bucket_reads_as_the_ceiling(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    window = RollingWindow(3600, "1h")
    index = int(T0 // 60)
    store.apply([SpendRecord("a", None, (Increment("s", window, T0, 600, 6),), T0 + 86400)], T0)
    store.apply([SpendRecord("b", None, (Increment("t", window, T0, 600, 6),), T0 + 86400)], T0)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE rolling SET nanos = 'garbage' WHERE scope = 's'")
        db.execute("UPDATE rolling SET idx = 'x' WHERE scope = 't'")  # not even an index
    now = T0 + 30 * MINUTE
    assert store.read_sub_buckets([("s", window), ("t", window)], now) == [
        ((index, CEILING, 6, 1),),
        ((index + 30, CEILING, CEILING, CEILING),),  # counted as now's: it ages out last
    ]
    assert store.health().unreadable == 4  # the garbage, and the three counts of the row with no index
    store.close()


def test_redis_garbage_in_a_sub_bucket_reads_as_the_ceiling(redis_url: str) -> None:
    store = open_store(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        window = RollingWindow(3600, "1h")
        index = int(T0 // 60)
        for scope in ("s", "t"):
            store.apply([SpendRecord(scope, None, (Increment(scope, window, T0, 600, 6),), T0 + 86400)], T0)
        client.hset("{otel_puppy}:roll:1h:s", f"n{index % 61}", "garbage")
        client.hset("{otel_puppy}:roll:1h:t", "p", "1")  # a ring marked unreadable
        now = T0 + 30 * MINUTE
        assert store.read_sub_buckets([("s", window), ("t", window)], now) == [
            ((index, CEILING, 6, 1),),
            ((index + 30, CEILING, CEILING, CEILING),),
        ]
        assert store.health().unreadable == 2
    finally:
        client.close()
        store.close()
