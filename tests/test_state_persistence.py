"""Breaker and anomaly state in the store: a restarted engine carries on where the last one stopped."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

import otel_puppy.store.sqlite as sqlite_store
from otel_puppy.alerts import AlertEvent
from otel_puppy.calls import ErrorClass
from otel_puppy.decision import Action
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import StoreError
from otel_puppy.policies import PolicySet, parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import Store
from otel_puppy.store.memory import MemoryStore
from otel_puppy.store.sqlite import SCHEMA_VERSION, SQLiteStore
from otel_puppy.testing import FakeClock, make_call

BREAKER = (
    "breakers:\n  - {name: providers, failure_threshold: 3, recovery_timeout: 30s, success_threshold: 2,"
    " half_open_max_calls: 2}\n"
)
ANOMALY = (
    "anomalies:\n  - {name: spike, signal: request_rate, per: [provider], interval: 1m, baseline: 10m,"
    " threshold: {ratio: 3}, min_samples: 5, cooldown: 5m, action: deny}\n"
)


class Collect:
    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)


class Engines:
    """Engines on one SQLite file and one fake clock, each one a restart of the service."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = FakeClock()  # on a minute boundary
        self.open: list[PolicyEngine] = []

    def start(self, yaml: str, *, store: Store | None = None) -> tuple[PolicyEngine, Collect]:
        sink = Collect()
        engine = PolicyEngine(
            PuppySettings.load(store=f"sqlite:///{self.path}", watch_policies_s=None),
            policies=policies(yaml),
            store=store,
            clock=self.clock,
            registry=CollectorRegistry(auto_describe=True),
            alert_sinks=[sink],
        )
        self.open.append(engine)
        return engine, sink


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    engines = Engines(tmp_path / "state.db")
    yield engines
    for engine in engines.open:
        engine.close()


def policies(yaml: str) -> PolicySet:
    return parse_policy_text(yaml, Path("policies/test.yaml"))


def call(engine: PolicyEngine, provider: str = "openai", *, ok: bool = True) -> None:
    error = None if ok else ErrorClass.SERVER_ERROR
    engine.observe(make_call(end_s=engine.clock.now(), provider=provider, error=error, duration_s=1.0))


def decide(engine: PolicyEngine, provider: str = "openai") -> Action:
    return engine.decide(provider=provider, model="gpt-4.1").action


def internal_errors(engine: PolicyEngine, component: str) -> float | None:
    return engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": component})


def state_rows(path: Path, namespace: str) -> dict[str, bytes]:
    """Saved blobs of `namespace`: breakers are versioned (shared by processes), anomalies are not."""
    table = "versioned_state" if namespace == "breakers" else "state"
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute(f"SELECT key, data FROM {table} WHERE namespace = ?", (namespace,)).fetchall())


# --- breakers -------------------------------------------------------------------------------------


def test_an_open_breaker_stays_open_across_a_restart_then_recovers(engines: Engines) -> None:
    first, _ = engines.start(BREAKER)
    for _ in range(3):
        call(first, ok=False)
    engines.clock.advance(10)
    first.close()

    second, sink = engines.start(BREAKER)
    denied = second.decide(provider="openai", model="gpt-4.1")
    assert (denied.action, denied.retry_after_s) == (Action.DENY, 20.0)
    assert denied.reasons[0].message == "breaker providers: openai is open after 3 failures; retry in 20.0s"
    engines.clock.advance(20)
    assert [decide(second) for _ in range(3)] == [Action.ALLOW, Action.ALLOW, Action.DENY]
    call(second)
    call(second)
    assert second.decide(provider="openai", model="gpt-4.1").reasons == ()
    assert [e.message for e in sink.events] == [
        "breaker providers for openai: open -> half_open",
        "breaker providers for openai: half_open -> closed",
    ]
    second.close()

    third, _ = engines.start(BREAKER)
    (status,) = third.snapshot().breakers
    assert (status.state, status.failures, status.opened_at, status.transitions) == ("closed", 0, None, 3)


def test_every_transition_is_saved_at_once_so_a_crash_keeps_it(engines: Engines) -> None:
    first, _ = engines.start(BREAKER)
    for _ in range(3):
        call(first, ok=False)
    # `first` is never closed before `second` starts: as if the process had been killed
    record = json.loads(state_rows(engines.path, "breakers")["providers|openai"])
    assert (record["state"], record["opened_at"], record["reason"]) == (
        "open",
        engines.clock.now(),
        "after 3 failures",
    )
    second, _ = engines.start(BREAKER)
    assert decide(second) is Action.DENY


def test_a_restored_half_open_breaker_has_no_probes_in_flight(engines: Engines) -> None:
    first, _ = engines.start(BREAKER)
    for _ in range(3):
        call(first, ok=False)
    engines.clock.advance(30)
    assert [decide(first) for _ in range(3)] == [Action.ALLOW, Action.ALLOW, Action.DENY]  # both probes taken
    first.close()  # their calls died with the process

    second, _ = engines.start(BREAKER)
    (status,) = second.snapshot().breakers
    assert status.state == "half_open"
    assert [decide(second) for _ in range(3)] == [Action.ALLOW, Action.ALLOW, Action.DENY]


def test_closed_breaker_failure_counts_are_saved_with_the_periodic_save(engines: Engines) -> None:
    first, _ = engines.start(BREAKER)
    call(first, ok=False)
    call(first, ok=False)
    engines.clock.advance(60)
    call(first, "anthropic")  # the minute's save, from observe
    second, _ = engines.start(BREAKER)
    call(second, ok=False)  # the third in a row
    assert decide(second) is Action.DENY


# --- anomalies ------------------------------------------------------------------------------------


def test_an_anomaly_baseline_survives_a_restart(engines: Engines) -> None:
    first, _ = engines.start(ANOMALY)
    for _ in range(8):  # a steady 2 calls a minute
        call(first)
        call(first)
        engines.clock.advance(60)
    # 7 closed intervals; the 8th is open (its calls are not saved). Saved by the minute's save, so
    # an engine started without `first` being closed (a crash) has them too.
    second, sink = engines.start(ANOMALY)
    (status,) = second.snapshot().anomalies
    assert (status.subject, status.samples, status.current, status.firing) == ("provider=openai", 7, 2 / 60, False)
    for _ in range(10):  # 5x the baseline in the first full minute after the restart
        call(second)
    engines.clock.advance(60)
    decision = second.decide(provider="openai", model="gpt-4.1")
    assert decision.action is Action.DENY
    assert decision.reasons[0].message == (
        "anomaly spike for provider=openai: request_rate 0.167 requests/s is 400% above baseline "
        "0.0333 requests/s (5.0x baseline)"
    )
    assert [e.kind for e in sink.events] == ["anomaly"]
    second.close()

    third, sink = engines.start(ANOMALY)  # the cooldown survives too: still denying, no second alert
    assert decide(third) is Action.DENY
    assert sink.events == []


def test_a_changed_policy_does_not_inherit_a_baseline(engines: Engines, caplog: pytest.LogCaptureFixture) -> None:
    first, _ = engines.start(ANOMALY)
    call(first)
    engines.clock.advance(120)
    call(first)
    first.close()
    second, _ = engines.start(ANOMALY.replace("request_rate", "token_rate"))
    assert second.snapshot().anomalies == ()
    assert "anomaly state: 1 entries for policies no longer configured (or full) ignored: spike|provider=openai" in (
        caplog.text
    )


# --- failures -------------------------------------------------------------------------------------


def test_a_corrupt_row_is_ignored_and_the_rest_restored(engines: Engines, caplog: pytest.LogCaptureFixture) -> None:
    first, _ = engines.start(BREAKER)
    for provider in ("openai", "anthropic", "google"):
        for _ in range(3):
            call(first, provider, ok=False)
    first.close()
    with contextlib.closing(sqlite3.connect(engines.path)) as db, db:
        db.execute("UPDATE versioned_state SET data = ? WHERE key = 'providers|openai'", (b"{not json",))
        record = json.loads(db.execute("SELECT data FROM versioned_state WHERE key = 'providers|google'").fetchone()[0])
        record["state"] = "ajar"
        db.execute("UPDATE versioned_state SET data = ? WHERE key = 'providers|google'", (json.dumps(record).encode(),))
        # written as text, for a breaker since removed from the policies
        db.execute(
            """INSERT INTO versioned_state VALUES
            ('breakers', 'gone|openai', 9, '{"policy": "gone", "per": ["provider"]}')"""
        )

    second, _ = engines.start(BREAKER)
    assert [decide(second, p) for p in ("openai", "anthropic", "google")] == [Action.ALLOW, Action.DENY, Action.ALLOW]
    assert [r.getMessage() for r in caplog.records] == [
        "breaker state: 2 unreadable entries ignored: providers|google, providers|openai",
        "breaker state: 1 entries for breakers no longer configured (or full) ignored: gone|openai",
    ]
    assert internal_errors(second, "engine.restore_state") is None
    for _ in range(3):  # openai fails again here and opens: the same version as the corrupt row, which stays
        call(second, "openai", ok=False)
    assert state_rows(engines.path, "breakers")["providers|openai"] == b"{not json"
    engines.clock.advance(30)
    assert decide(second, "openai") is Action.ALLOW  # half-open, a newer version: it replaces the corrupt row
    second.close()
    # Shared state is never deleted (another process may use it); what no breaker here reads is kept.
    rows = state_rows(engines.path, "breakers")
    assert set(rows) == {"providers|openai", "providers|anthropic", "providers|google", "gone|openai"}
    assert json.loads(rows["providers|openai"])["state"] == "half_open"


class FailingStore(MemoryStore):
    def load_state(self, namespace: str) -> dict[str, bytes]:
        raise StoreError("sqlite store state.db: load state failed: disk I/O error")

    def save_state(self, namespace: str, items: Mapping[str, bytes]) -> None:
        raise StoreError("sqlite store state.db: save state failed: database or disk is full")

    def merge_state(self, namespace: str, items: Mapping[str, tuple[int, bytes]]) -> dict[str, tuple[int, bytes]]:
        raise StoreError("sqlite store state.db: merge state failed: database or disk is full")


def store_errors(engine: PolicyEngine, operation: str) -> int | None:
    # the counts, not the registry: a closed engine is no longer registered
    return engine.metrics.totals().store_errors_by_operation.get(operation)


def test_a_failing_store_neither_stops_the_engine_nor_reaches_the_caller(engines: Engines) -> None:
    engine, sink = engines.start(BREAKER + ANOMALY, store=FailingStore())
    # an outage of the store, not a bug of ours: counted as store errors, never internal ones
    assert (store_errors(engine, "sync_breakers"), store_errors(engine, "load_state")) == (1.0, 1.0)
    for _ in range(3):
        call(engine, ok=False)
    assert decide(engine) is Action.DENY  # the breaker works in memory
    assert [e.message for e in sink.events] == ["breaker providers for openai: closed -> open"]
    assert store_errors(engine, "sync_breakers") == 2.0  # the transition's sync
    engine.close()
    assert (store_errors(engine, "sync_breakers"), store_errors(engine, "save_state")) == (3.0, 1.0)  # at close
    assert engine.metrics.totals().internal_errors == 0


# --- schema ---------------------------------------------------------------------------------------


def test_a_schema_1_file_is_migrated_and_keeps_its_spend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v1.db"
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_store, "SCHEMA_VERSION", 1)
        patch.setattr(sqlite_store, "_SCHEMA", tuple(s for s in sqlite_store._SCHEMA if "EXISTS state " not in s))
        old = SQLiteStore(path)
        assert old.mark("m", 2e9) is True
        old.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'state'").fetchall() == []

    store = SQLiteStore(path)
    assert store.mark("m", 2e9) is False  # what the old file held is still there
    store.save_state("breakers", {"k": b"v"})
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    store = SQLiteStore(path)
    assert store.load_state("breakers") == {"k": b"v"}
    store.close()
