"""Faults: a full disk, a read-only or locked database, the clock jumping, an application forking.

The service tests run real `otel-puppy serve` processes on a SQLite file on a small tmpfs that the
test mounts (root only: skipped otherwise, failed under `CI=true`). Every case checks that what was
acknowledged is kept, that nothing is counted twice when refused batches are sent again, and that
the service answers `503` with `Retry-After` while it cannot write, then recovers by itself.

kill -9 during ingest is tests/test_service.py::test_kill_9_mid_load_loses_no_acknowledged_span_and_counts_none_twice
(and tests/store/test_sqlite.py for the store alone); a fork after a flush is
tests/test_processor.py::test_forked_child_gets_its_own_worker.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client.registry import CollectorRegistry

from otel_puppy.calls import ErrorClass
from otel_puppy.decision import Action
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import ApplyResult
from otel_puppy.store.sqlite import SQLiteStore
from otel_puppy.testing import FakeClock, make_call
from tests._service import NANOS, Service, chat_spans, cli, environment, service, spent_nanos, write_policies

PROTOBUF = "application/x-protobuf"
EVERYTHING = "budgets:\n  - {name: everything, limit_usd: 1000000, window: day}\n"


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the test; skipped without the right to mount (failed under CI)."""
    path.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not mounted:
        message = "mounting a tmpfs needs root (and CAP_SYS_ADMIN)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(path: Path) -> None:
    """Write zeros to `path` until the disk is full (raises `OSError` then)."""
    with path.open("wb") as stream:
        while True:
            stream.write(bytes(65536))
            stream.flush()


def post(client: httpx.Client, spans: list[ReadableSpan]) -> httpx.Response:
    body = encode_spans(spans).SerializeToString()
    return client.post("/v1/traces", content=body, headers={"content-type": PROTOBUF})


def client_of(running: Service) -> httpx.Client:
    """One client for a test's requests (building one, with its TLS context, takes 20 ms)."""
    return httpx.Client(base_url=running.url, timeout=30)


def test_a_full_disk_is_503_with_retry_after_and_recovers_losing_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    policies = write_policies(tmp_path, EVERYTHING)
    batches = [chat_spans(50) for _ in range(12)]
    store = f"sqlite:///{disk}/state.db"
    with (
        tmpfs(disk, "4m"),
        service(tmp_path, "--policies", str(policies), "--store", store) as running,
        client_of(running) as client,
    ):
        assert [post(client, batch).status_code for batch in batches[:2]] == [200, 200]
        filler = disk / "filler"
        with pytest.raises(OSError, match="No space left on device"):
            fill(filler)

        # SQLite may still write a batch or two into space its files already hold; then it cannot
        answers = [post(client, batch) for batch in batches[2:]]
        refused = [r for r in answers if r.status_code != 200]
        assert len(refused) >= 3, [r.status_code for r in answers]
        assert {(r.status_code, r.headers.get("retry-after")) for r in refused} == {(503, "5")}
        # the client learns that the store failed, never its file path; the log says why
        assert all(b"state store unavailable, nothing was applied" in r.content for r in refused)
        assert not any(str(disk).encode() in r.content for r in refused)
        assert "database or disk is full (SQLITE_FULL)" in running.output()
        acknowledged = 2 + len(answers) - len(refused)
        print(f"\ndisk full: {len(refused)} of {len(answers)} exports refused 503, {acknowledged - 2} still fit")
        # the rest of the service answers: decisions fail open, reads work
        decision = client.post("/v1/decide", json={"provider": "openai", "model": "gpt-4.1"}, timeout=10)
        assert decision.json()["action"] == "allow"
        assert spent_nanos(running.url, "everything") == acknowledged * 50 * NANOS  # what was acknowledged, kept

        filler.unlink()  # space again: the very next export is applied
        assert [post(client, batch).status_code for batch in batches] == [200] * 12  # refused ones retried
        assert [post(client, batch).status_code for batch in batches] == [200] * 12  # all again: duplicates
        assert spent_nanos(running.url, "everything") == 12 * 50 * NANOS
        assert running.stop() == 0
    assert "Traceback" not in running.output()


def test_a_read_only_database_is_refused_at_start_with_its_name_and_kept(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    policies = write_policies(tmp_path, EVERYTHING)
    store = f"sqlite:///{disk}/state.db"
    with tmpfs(disk, "4m"):
        with service(tmp_path, "--policies", str(policies), "--store", store) as running, client_of(running) as client:
            assert post(client, chat_spans(30)).status_code == 200
            assert running.stop() == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        try:
            refused = cli(tmp_path, "serve", "--policies", str(policies), "--store", store, "--port", "0")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"error: sqlite store {disk}/state.db: cannot open: ")
        assert "Traceback" not in refused.stderr
        with service(tmp_path, "--policies", str(policies), "--store", store) as restarted:
            assert spent_nanos(restarted.url, "everything") == 30 * NANOS
            assert restarted.stop() == 0


@pytest.mark.long
def test_a_database_locked_by_another_process_is_503_then_applied_once(tmp_path: Path) -> None:
    """A backup tool (or `sqlite3` in a shell) holds the write lock past the busy timeout (5 s)."""
    policies = write_policies(tmp_path, EVERYTHING)
    batches = [chat_spans(20) for _ in range(3)]
    with (
        service(tmp_path, "--policies", str(policies), "--store", "sqlite:///state.db") as running,
        client_of(running) as client,
    ):
        assert post(client, batches[0]).status_code == 200
        other = sqlite3.connect(tmp_path / "state.db", isolation_level=None, timeout=30)
        other.execute("BEGIN IMMEDIATE")
        try:
            locked = post(client, batches[1])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (locked.status_code, locked.headers["retry-after"]) == (503, "5")
        assert b"state store unavailable, nothing was applied" in locked.content  # why: in the log only
        assert "database is locked (SQLITE_BUSY)" in running.output()
        assert [post(client, batch).status_code for batch in batches] == [200] * 3
        assert spent_nanos(running.url, "everything") == 3 * 20 * NANOS
        assert running.stop() == 0


# --- the clock jumps ---------------------------------------------------------------------------------

JUMPS = """
budgets:
  - {name: daily, limit_usd: 1, window: day, action: deny}
  - {name: rolling, limit_usd: 1, window: 1h, action: deny}
breakers:
  - {name: providers, per: [provider], failure_threshold: 2, recovery_timeout: 30s, success_threshold: 1}
"""
NOON = 1_767_268_800.0  # 2026-01-01T12:00:00Z


@pytest.fixture
def jumping(tmp_path: Path) -> Iterator[tuple[PolicyEngine, FakeClock]]:
    """An engine on a real SQLite file, with a clock the test moves (forwards and backwards)."""
    clock = FakeClock(NOON)
    engine = PolicyEngine(
        PuppySettings.load(store="memory://"),
        policies=parse_policy_text(JUMPS, Path("policies.yaml")),
        store=SQLiteStore(tmp_path / "state.db"),
        clock=clock,
        registry=CollectorRegistry(auto_describe=True),
    )
    yield engine, clock
    engine.close()


def usd(calls: int) -> Decimal:
    return Decimal(calls * NANOS).scaleb(-9)


def test_clock_jumps_never_count_a_span_twice_nor_lose_one(jumping: tuple[PolicyEngine, FakeClock]) -> None:
    engine, clock = jumping
    first = [make_call(end_s=clock.now()) for _ in range(3)]
    assert [o.result for o in engine.observe_many(first)] == [ApplyResult.APPLIED] * 3

    clock.advance(-3600)  # NTP steps the clock back an hour
    assert [o.result for o in engine.observe_many(first)] == [ApplyResult.DUPLICATE] * 3  # retries
    snapshot = engine.snapshot()
    assert (snapshot.spend("day"), snapshot.spend("1h"), snapshot.spend("hour")) == (usd(3), usd(3), usd(0))
    later = make_call(end_s=clock.now())
    assert engine.observe(later).result is ApplyResult.APPLIED
    assert engine.snapshot().spend("day") == usd(4)

    clock.advance(3600 + 60)  # and forward again, a minute past where it was
    assert [o.result for o in engine.observe_many([*first, later])] == [ApplyResult.DUPLICATE] * 4
    snapshot = engine.snapshot()
    assert (snapshot.spend("day"), snapshot.spend("1h")) == (usd(4), usd(3))  # `later` is 61 minutes ago

    clock.advance(2 * 86400)  # a VM resumed after two days: new windows, old spans still known
    assert [o.result for o in engine.observe_many([*first, later])] == [ApplyResult.DUPLICATE] * 4
    snapshot = engine.snapshot()
    assert (snapshot.spend("day"), snapshot.spend("1h"), snapshot.spend("24h")) == (usd(0), usd(0), usd(0))
    assert engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.5").action is Action.ALLOW
    assert engine.metrics.internal_errors() == 0


def test_a_breaker_recovers_on_time_after_the_clock_steps_back(jumping: tuple[PolicyEngine, FakeClock]) -> None:
    engine, clock = jumping
    for _ in range(2):
        engine.observe(make_call(end_s=clock.now(), provider="anthropic", error=ErrorClass.SERVER_ERROR))
    assert engine.decide(provider="anthropic", model="claude-sonnet-4-5").action is Action.DENY
    clock.advance(-3600)
    # the first decision after the step sees the earlier time: the timeout counts from there
    assert engine.decide(provider="anthropic", model="claude-sonnet-4-5").action is Action.DENY
    clock.advance(29)
    assert engine.decide(provider="anthropic", model="claude-sonnet-4-5").action is Action.DENY
    clock.advance(2)  # the recovery timeout (30 s) has passed, as any stopwatch would tell
    assert engine.decide(provider="anthropic", model="claude-sonnet-4-5").action is Action.ALLOW


# --- an application that forks ------------------------------------------------------------------------

FORKING_APP = textwrap.dedent(
    """\
    import os, sys
    from opentelemetry.sdk.trace import TracerProvider
    from otel_puppy.engine import PolicyEngine
    from otel_puppy.settings import PuppySettings

    engine = PolicyEngine(PuppySettings.load(store=sys.argv[1], raise_internal_errors=False))
    processor = engine.span_processor()
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("app")
    CALL = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4.1",
            "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 100}

    def calls(count):
        for _ in range(count):
            with tracer.start_as_current_span("chat", attributes=CALL):
                pass

    def report(who):
        flushed = processor.force_flush(20_000)
        spent = int(engine.snapshot().spend("day") * 10**9) if flushed else None
        print(who, flushed, engine.metrics.internal_errors(), spent, flush=True)

    calls(2000)  # the worker is in the middle of these (and of a store transaction) at the fork
    pid = os.fork()
    if pid == 0:
        try:
            calls(100)
            report("child")
        finally:
            os._exit(0)
    calls(100)
    report("parent")
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status), flush=True)
    engine.close()
    """
)


def run_forking_app(tmp_path: Path, store: str) -> list[str]:
    (tmp_path / "app.py").write_text(FORKING_APP)
    env = {key: value for key, value in environment().items() if key != "OTEL_PUPPY_TIMEZONE"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), store],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return sorted(result.stdout.splitlines())


def test_an_app_forking_mid_batch_keeps_counting_in_both_processes(tmp_path: Path) -> None:
    """Memory store: each process keeps its own state; the child inherits the parent's up to the
    fork (whatever the worker had applied), never a span twice, and neither deadlocks."""
    lines = run_forking_app(tmp_path, "memory://")
    assert lines[1] == "child exit 0"
    assert lines[2] == f"parent True 0 {2100 * NANOS}"
    who, flushed, errors, spent = lines[0].split()
    assert (who, flushed, errors) == ("child", "True", "0")
    assert 100 * NANOS <= Decimal(spent) <= 2100 * NANOS  # its own 100, and what it inherited
    assert Decimal(spent) % NANOS == 0


@pytest.mark.xfail(strict=True, reason="SQLiteStore keeps the parent's connection, mid-transaction, in a child")
def test_an_app_forking_mid_batch_on_a_shared_sqlite_file_counts_every_span_once(tmp_path: Path) -> None:
    lines = run_forking_app(tmp_path, f"sqlite:///{tmp_path}/state.db")
    assert lines == [f"child True 0 {2200 * NANOS}", "child exit 0", f"parent True 0 {2200 * NANOS}"]
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
