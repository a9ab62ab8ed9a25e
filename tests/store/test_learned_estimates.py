"""Learned estimates on every store: a decision without an estimate reserves what such calls usually
cost (`otel_puppy.learned`), exactly: the nearest-rank p95 of the newest calls of the agent's
series, else of the provider and model's, once 20 were seen.

The test data: call `i` (1..30) has `1000 * i` input and `10 * i` output tokens of a model priced
$1 per million of either, so it costs `0.00101 * i` USD. With 30 calls the nearest-rank p95 is the
`ceil(0.95 * 30)` = 29th smallest: $0.02929 and 290 output tokens.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy import learned
from otel_puppy.calls import ErrorClass
from otel_puppy.clock import ManualClock
from otel_puppy.decision import Decision
from otel_puppy.engine import PolicyEngine
from otel_puppy.learned import MAX_ESTIMATE_NANOS, series_key
from otel_puppy.policies import parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import CEILING, MAX_SAMPLE_KEYS, Sample, Store, open_store
from otel_puppy.testing import make_call

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PRICES = "prices:\n  - {provider: self-hosted, model: m, input_mtok: 1, output_mtok: 1}\n"
BUDGETS = "budgets:\n  - {name: daily, limit_usd: 100, window: day, action: deny}\n"
P95 = Decimal("0.029290000")


def engine_on(store: Store, budgets: str = BUDGETS, **settings: Any) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store="memory://", watch_policies_s=None, **settings),
        policies=parse_policy_text(PRICES + budgets, Path("policies/test.yaml")),
        store=store,
        clock=ManualClock(T0),
        registry=CollectorRegistry(auto_describe=True),
    )


def calls(
    engine: PolicyEngine, count: int = 30, *, agent: str | None = "support", scale: int = 1, **fields: Any
) -> None:
    """Calls 1..count of the test data (costs multiplied by `scale`), applied in one batch."""
    made = [
        dataclasses.replace(
            make_call(
                end_s=engine.clock.now(),
                provider="self-hosted",
                model="m",
                agent=agent,
                input_tokens=1000 * i * scale,
                output_tokens=10 * i * scale,
            ),
            **fields,
        )
        for i in range(1, count + 1)
    ]
    engine.observe_many(made)


def ask(engine: PolicyEngine, **fields: Any) -> Decision:
    return engine.decide(provider="self-hosted", model="m", **fields)


def later(engine: PolicyEngine, seconds: float) -> None:
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)


def test_thirty_calls_then_a_decision_without_an_estimate_reserves_the_learned_p95(store: Store) -> None:
    engine = engine_on(store)
    calls(engine)
    decision = ask(engine, agent="support")
    assert (decision.estimate_source, decision.estimated_cost_usd, decision.reserved_usd) == ("learned", P95, P95)
    hit = decision.reasons[0]  # the budget as it was before this decision's hold; spent: 0.00101 * 465
    assert (hit.policy, hit.spent_usd, hit.reserved_usd) == ("daily", Decimal("0.469650000"), Decimal(0))
    held = ask(engine, agent="support", reserve=False).reasons[0]
    assert held.reserved_usd == P95  # the first decision's reservation, held until its span settles it
    engine.close()


def test_with_too_few_calls_nothing_is_learned_and_nothing_reserved(store: Store) -> None:
    engine = engine_on(store)
    calls(engine, 19)
    decision = ask(engine, agent="support")
    assert (decision.estimate_source, decision.estimated_cost_usd, decision.reserved_usd) == ("none", None, None)
    calls(engine, 1)  # the 20th call: enough
    later(engine, 1)  # a store with I/O counts this process's new calls a second after its last figure
    decision = ask(engine, agent="support")
    # 20 calls: 1..19 and 1 again; the ceil(0.95 * 20) = 19th smallest is call 18's $0.01818 (and 180 tokens)
    assert (decision.estimate_source, decision.estimated_cost_usd) == ("learned", Decimal("0.018180000"))
    engine.close()


def test_an_agent_with_too_few_calls_gets_the_provider_and_models_figure(store: Store) -> None:
    engine = engine_on(store)
    calls(engine, agent=None)  # 30 calls with no agent: only the provider and model's series
    calls(engine, 5, agent="new", scale=100)  # five dear calls of `new`: too few for its own series
    decision = ask(engine, agent="new")
    # provider and model: calls 1..30 and the five at 100x (0.101 .. 0.505): 35 calls, the 34th smallest
    assert decision.estimated_cost_usd == Decimal("0.404000000")
    assert decision.estimate_source == "learned"
    assert ask(engine).estimated_cost_usd == Decimal("0.404000000")  # no agent: the same series
    engine.close()


def test_an_agents_own_series_wins_once_it_has_enough_calls(store: Store) -> None:
    engine = engine_on(store)
    calls(engine, agent="dear", scale=10)  # 30 calls at 10x
    calls(engine, agent="cheap")
    assert ask(engine, agent="cheap").estimated_cost_usd == P95
    assert ask(engine, agent="dear").estimated_cost_usd == P95 * 10
    engine.close()


def test_failed_and_unpriced_calls_are_not_learned_from(store: Store) -> None:
    engine = engine_on(store)
    failed = [
        make_call(end_s=T0, provider="self-hosted", model="m", agent="support", error=ErrorClass.SERVER_ERROR)
        for _ in range(30)
    ]
    engine.observe_many(failed)
    unknown = [make_call(end_s=T0, provider="self-hosted", model="unknown-model", agent="support") for _ in range(30)]
    engine.observe_many(unknown)
    assert ask(engine, agent="support").estimate_source == "none"
    assert engine.decide(provider="self-hosted", model="unknown-model", agent="support").estimate_source == "none"
    engine.close()


def test_input_tokens_alone_are_priced_with_the_learned_output_tokens(store: Store) -> None:
    engine = engine_on(store)
    calls(engine)
    decision = ask(engine, agent="support", estimated_input_tokens=5000)
    # 5,000 input tokens as asked and the learned p95 of 290 output tokens, at $1 per million each
    assert (decision.estimate_source, decision.estimated_cost_usd) == ("learned", Decimal("0.005290000"))
    given = ask(engine, agent="support", estimated_input_tokens=5000, estimated_output_tokens=10)
    assert (given.estimate_source, given.estimated_cost_usd) == ("request", Decimal("0.005010000"))
    stated = ask(engine, agent="support", estimated_cost_usd="0.5")
    assert (stated.estimate_source, stated.estimated_cost_usd) == ("request", Decimal("0.500000000"))
    engine.close()


def test_the_setting_turns_learning_off(store: Store) -> None:
    engine = engine_on(store, learned_estimates=False)
    calls(engine)
    decision = ask(engine, agent="support")
    assert (decision.estimate_source, decision.estimated_cost_usd, decision.reserved_usd) == ("none", None, None)
    engine.close()


def test_the_figure_decays_by_count_and_by_age(store: Store) -> None:
    engine = engine_on(store, learned_samples=30)
    calls(engine, scale=10)  # 30 calls at 10x
    assert ask(engine, agent="support").estimated_cost_usd == P95 * 10
    later(engine, 1)
    calls(engine, 28)  # 28 cheaper calls: the newest 30 kept hold two of the dear ones (0.2929, 0.303)
    later(engine, 1)
    # sorted, the 29th of 30 is the first of the two dear ones left: still the old price ...
    assert ask(engine, agent="support").estimated_cost_usd == Decimal("0.292900000")
    calls(engine, 1)
    later(engine, 1)
    # ... and with one more cheap call, at most 30 - 29 = 1 dear call is kept: the new price
    assert ask(engine, agent="support").estimated_cost_usd == Decimal("0.028280000")
    later(engine, 7 * 86400)  # older than learned_max_age_s (7 days): nothing counts any more
    assert ask(engine, agent="support").estimate_source == "none"
    engine.close()


def test_sixteen_concurrent_deciders_overshoot_by_at_most_the_spread_of_the_estimate(store: Store) -> None:
    """The bound: a budget admits decisions while spent + reserved + E <= limit, so each admitted call
    can overshoot only by what it costs over the learned estimate E; with calls from the same
    distribution, at most (max - E) each: n admitted calls overshoot by at most n * (max - E)."""
    engine = engine_on(
        store, "budgets:\n  - {name: fleet, limit_usd: 0.09, window: day, action: deny, match: {agent: fleet}}\n"
    )
    calls(engine, agent=None)  # E = $0.02929 for any agent (the provider and model's series); max = $0.0303
    start = threading.Barrier(16)
    decisions: list[Decision] = []
    lock = threading.Lock()

    def decider() -> None:
        start.wait()
        decision = ask(engine, agent="fleet")
        with lock:
            decisions.append(decision)

    threads = [threading.Thread(target=decider) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 3  # 3 * 0.02929 = 0.08787 <= 0.09 < 4 * 0.02929
    assert {d.reserved_usd for d in admitted} == {P95}
    for decision in admitted:  # each admitted call costs the most any call cost: the worst case
        call = make_call(
            end_s=T0, provider="self-hosted", model="m", agent="fleet", input_tokens=30_000, output_tokens=300
        )
        engine.observe(dataclasses.replace(call, decision_id=decision.decision_id))
    spent = ask(engine, agent="fleet", reserve=False).reasons[0].spent_usd
    assert spent is not None
    overshoot = spent - Decimal("0.09")
    assert overshoot == Decimal("0.000900000")  # measured: 3 * 0.0303 - 0.09
    assert overshoot <= 3 * (Decimal("0.0303") - P95)  # the bound: 3 * $0.00101
    engine.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis", "redis-cluster"])
def test_learned_figures_survive_a_restart_and_are_shared(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Store-backed: another process on the same store (a replica, or this one restarted) learns from
    the calls the first one saw. (The memory store keeps nothing past its process.)"""
    urls: dict[str, Callable[[], str]] = {
        "sqlite": lambda: f"sqlite:///{tmp_path / 'state.db'}",
        "redis": lambda: str(request.getfixturevalue("redis_url")),
        "redis-cluster": lambda: str(request.getfixturevalue("redis_cluster_url")),
    }
    url = urls[kind]()
    first = engine_on(open_store(url))
    calls(first)
    first.close()  # flushes this process's last samples; the store's state stays
    second = engine_on(open_store(url))
    decision = ask(second, agent="support")
    assert (decision.estimate_source, decision.estimated_cost_usd) == ("learned", P95)
    second.close()


def _writes(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[list[Sample]]:
    """Every `add_samples` of `store` from now on, the samples of each."""
    written: list[list[Sample]] = []
    add = store.add_samples

    def recorded(samples: list[Sample], **kwargs: Any) -> None:
        written.append(list(samples))
        add(samples, **kwargs)

    monkeypatch.setattr(store, "add_samples", recorded)
    return written


def test_a_second_of_calls_writes_each_series_newest_samples_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store with I/O gets the samples once a second, however many calls came: those waiting are
    cut to each series' newest `learned_samples` (100) once past `_COMPACT_AT`, all the store would
    keep of them. The figure is the same: the p95 of the newest 100 calls."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    written = _writes(store, monkeypatch)
    engine = engine_on(store)
    per_batch = 2 * 300  # each call a sample of its agent's series and one of the model's
    batches = learned._COMPACT_AT // per_batch + 2
    assert (batches - 2) * per_batch <= learned._COMPACT_AT < (batches - 1) * per_batch  # the last one compacts
    for _ in range(batches):
        calls(engine, 300)  # calls 1..300, in the same second
    assert [len(samples) for samples in written] == [per_batch]  # the first at once; the rest wait
    later(engine, 1)
    calls(engine, 1)  # call 1 (the cheapest), a second later: all that waits is written
    assert [len(samples) for samples in written] == [per_batch, 2 * 100 + 2]
    assert {key: [s.nanos for s in written[1] if s.key == key][-3:] for key in {s.key for s in written[1]}} == {
        series_key(name, "self-hosted", "m"): [1_010_000 * 299, 1_010_000 * 300, 1_010_000]
        for name in ("support", None)
    }
    # The newest 100 calls: 202..300 and 1; the 95th cheapest is call 295.
    decision = ask(engine, agent="support")
    assert (decision.estimate_source, decision.estimated_cost_usd) == ("learned", Decimal("0.29795"))
    engine.close()


def test_samples_of_many_series_are_written_at_once_past_half_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compacting does not shrink samples of many series (one call each): past half `_COMPACT_AT`
    after it, they are written without waiting for the second."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    written = _writes(store, monkeypatch)
    engine = engine_on(store)
    calls(engine, 1)
    agents = learned._COMPACT_AT // 2 + 1  # as many samples of the model's series: over the bound
    engine.observe_many(
        [
            make_call(end_s=T0, provider="self-hosted", model="m", agent=f"a{i}", input_tokens=1000, output_tokens=10)
            for i in range(agents)
        ]
    )
    assert [len(samples) for samples in written] == [2, agents + 100]  # each agent's one, the model's newest 100
    engine.close()


# --- the store capability ---------------------------------------------------------------------


def test_a_series_keeps_its_newest_samples_and_reads_newest_first(store: Store) -> None:
    store.add_samples([Sample("k", T0 + i, i, 10 * i) for i in range(1, 8)], keep=5, ttl_s=60, now=T0)
    assert store.read_samples(["k", "absent"], T0) == [[(7, 70), (6, 60), (5, 50), (4, 40), (3, 30)], []]
    assert store.read_samples(["k"], T0 + 6) == [[(7, 70), (6, 60)]]  # older than `since`: not read


def test_sample_amounts_are_clamped_where_they_enter(store: Store) -> None:
    store.add_samples([Sample("k", T0, -5, 2**80)], keep=5, ttl_s=60, now=T0)
    assert store.read_samples(["k"], T0) == [[(0, CEILING)]]


def test_keys_are_bounded_the_least_recently_written_forgotten(store: Store) -> None:
    store.add_samples([Sample(f"k{i}", T0, i, 0) for i in range(MAX_SAMPLE_KEYS)], keep=2, ttl_s=600, now=T0)
    store.add_samples([Sample("k0", T0, 1, 0)], keep=2, ttl_s=600, now=T0)  # k0 written again: now the newest
    store.add_samples([Sample("new", T0, 7, 0)], keep=2, ttl_s=600, now=T0)
    assert store.read_samples(["k0", "k1", "k2", "new"], T0) == [[(1, 0), (0, 0)], [], [(2, 0)], [(7, 0)]]


def test_series_keys_are_injective() -> None:
    assert series_key("a|b", "c", "d") != series_key("a", "b|c", "d")
    assert series_key(None, "p", "m") == "|p|m"


def test_an_unreadable_stored_sample_reads_as_the_largest_estimate(tmp_path: Path) -> None:
    """Garbage in a shared store never makes an estimate smaller: it reads as the ceiling, clamped to
    the largest estimate, and is reported."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    engine = engine_on(store)
    calls(engine)
    db = store._connection()  # type: ignore[attr-defined]
    db.execute("UPDATE samples SET nanos = 'garbage' WHERE seq IN (SELECT seq FROM samples LIMIT 2)")
    db.commit()
    later(engine, 11)  # past learned_refresh_s: read again
    decision = ask(engine, agent="support")
    assert decision.estimated_cost_usd == Decimal(MAX_ESTIMATE_NANOS).scaleb(-9)
    assert store.health().unreadable >= 1
    engine.close()


# --- reservation outcomes ---------------------------------------------------------------------


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_reservation_outcomes_are_counted_by_source_with_the_settled_ratio(store: Store) -> None:
    engine = engine_on(store)
    registry = engine.registry
    for source in ("request", "learned", "none"):  # every series from the first scrape
        for outcome in ("settled", "expired", "released"):
            assert sample(registry, "otel_puppy_reservations_total", source=source, outcome=outcome) == 0
    calls(engine)
    learned = ask(engine, agent="support")  # holds the learned $0.02929
    call = make_call(
        end_s=T0, provider="self-hosted", model="m", agent="support", input_tokens=30_000, output_tokens=300
    )
    engine.observe(dataclasses.replace(call, decision_id=learned.decision_id))  # costs $0.0303
    released = ask(engine, agent="support", estimated_cost_usd="0.01")
    assert engine.store.release(released.decision_id or "")
    ask(engine, agent="support", estimated_cost_usd="0.02")  # never settled
    later(engine, 301)  # past the reservation TTL (300 s)
    engine.store.expire(engine.clock.now())

    assert sample(registry, "otel_puppy_reservations_total", source="learned", outcome="settled") == 1
    assert sample(registry, "otel_puppy_reservations_total", source="request", outcome="released") == 1
    assert sample(registry, "otel_puppy_reservations_total", source="request", outcome="expired") == 1
    assert sample(registry, "otel_puppy_reservations_total", source="request", outcome="settled") == 0
    # one settled learned reservation: 0.0303 / 0.02929 = 1.0345 (le 1.1, not le 1)
    assert sample(registry, "otel_puppy_reservation_settled_ratio_bucket", source="learned", le="1") == 0
    assert sample(registry, "otel_puppy_reservation_settled_ratio_bucket", source="learned", le="1.1") == 1
    assert sample(registry, "otel_puppy_reservation_settled_ratio_count", source="learned") == 1
    assert sample(registry, "otel_puppy_reservation_settled_ratio_sum", source="learned") == pytest.approx(
        30_300 / 29_290, rel=1e-12
    )
    assert sample(registry, "otel_puppy_reservation_settled_ratio_count", source="request") == 0
    assert sample(registry, "otel_puppy_reservations_total", source="learned", outcome="settled") == 1  # taken once
    engine.close()


def test_a_call_budgets_reservation_without_an_estimate_is_counted_as_none(store: Store) -> None:
    engine = engine_on(store, "budgets:\n  - {name: calls, limit_calls: 5, window: day, action: deny}\n")
    decision = ask(engine, agent="support")
    assert (decision.estimate_source, decision.decision_id is not None) == ("none", True)
    call = make_call(end_s=T0, provider="self-hosted", model="m", agent="support")
    engine.observe(dataclasses.replace(call, decision_id=decision.decision_id))
    registry = engine.registry
    assert sample(registry, "otel_puppy_reservations_total", source="none", outcome="settled") == 1
    assert (
        sample(registry, "otel_puppy_reservation_settled_ratio_count", source="learned") == 0
    )  # no estimate: no ratio
    engine.close()


def test_an_older_sqlite_file_gets_the_reservation_columns(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    open_store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:  # the file as version 4 wrote it
        db.execute("ALTER TABLE reservations DROP COLUMN source")
        db.execute("ALTER TABLE reservations DROP COLUMN estimate")
        db.execute("ALTER TABLE reservations DROP COLUMN items")  # its items were rows of their own
        db.execute(
            "CREATE TABLE reservation_items (seq INTEGER NOT NULL, item INTEGER NOT NULL, scope TEXT NOT NULL, "
            "nanos INTEGER NOT NULL, tokens INTEGER NOT NULL, PRIMARY KEY (seq, item)) WITHOUT ROWID"
        )
        db.execute("UPDATE schema_version SET version = 4")
    store = open_store(f"sqlite:///{path}")
    engine = engine_on(store)
    decision = ask(engine, agent="support", estimated_cost_usd="0.01")
    assert decision.reserved_usd == Decimal("0.010000000")
    assert engine.store.release(decision.decision_id or "")
    assert engine.store.take_outcomes() == [("request", "released", 10_000_000, 0)]
    engine.close()


def test_the_series_key_memo_is_bounded_in_agents_and_models() -> None:
    """Agents and models are names spans chose: past `_CACHE_LIMIT` of either, the memo of their series
    keys is forgotten (and computed again), never grown; the keys are the same either way."""
    engine = engine_on(open_store("memory://"))
    estimates = engine.learned
    limit = learned._CACHE_LIMIT
    for i in range(limit + 5):
        assert estimates._series(f"agent-{i}", "openai", "gpt-4.1")[0] == series_key(f"agent-{i}", "openai", "gpt-4.1")
        assert estimates._kept <= limit
    assert sum(len(agents) for _, agents in estimates._keys.values()) <= limit
    for i in range(limit + 5):
        estimates._series(None, "openai", f"model-{i}")
        assert len(estimates._keys) <= limit
    assert estimates._series("agent-1", "openai", "m") == (
        series_key("agent-1", "openai", "m"),
        series_key(None, "openai", "m"),
    )
    engine.close()
