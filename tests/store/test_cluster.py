"""Redis Cluster for real: three `redis-server --cluster-enabled yes` nodes on loopback.

The store conformance suite runs on the cluster too (tests/store/test_conformance.py); here is
what only a cluster does: slots on several nodes, redirects, and two `otel-puppy serve` replicas
sharing budgets through it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from redis.crc import key_slot

from otel_puppy.exceptions import StoreError
from otel_puppy.settings import PuppySettings
from otel_puppy.store.base import ApplyResult, Counter, open_store
from otel_puppy.store.redis import RedisStore
from tests._redis import RedisClusterServers
from tests._service import NANOS, Service, chat_spans, environment, export, metric, services, spent_nanos
from tests.store.test_conformance import DAY, H1, T0, admit, check, read, rec

APPLIED, DUPLICATE = ApplyResult.APPLIED, ApplyResult.DUPLICATE
BUDGETS = """\
budgets:
  - {name: everything, limit_usd: 1000000, window: day}
  - {name: support-daily, match: {agent: support}, limit_usd: 0.01, window: day, action: deny}
  - {name: research-daily, match: {agent: research}, limit_usd: 1, window: day, action: deny}
"""


def owner(cluster: RedisClusterServers, prefix: str) -> int:
    """The port of the node that owns the slot of `prefix`'s hash tag."""
    slot = key_slot(prefix.encode())
    client = cluster.node(cluster.ports[0])
    try:
        for start, end, (_host, port, *_rest), *_replicas in client.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
            if start <= slot <= end:
                return int(port)
    finally:
        client.close()
    raise AssertionError(f"no node owns slot {slot}")


def test_the_cluster_url_is_accepted_by_settings_and_open_store(redis_cluster: RedisClusterServers) -> None:
    url = f"{redis_cluster.url}?prefix={{scheme-test}}"
    assert PuppySettings.load(store=url).store == url
    store = open_store(url)
    assert isinstance(store, RedisStore)
    assert store.apply([rec("a")], T0) == [APPLIED]
    assert read(store) == Counter(100, 10, 1)
    store.close()
    secure = PuppySettings.load(store="rediss+cluster://user:pw@cache:6379").store
    assert secure == "rediss+cluster://user:pw@cache:6379"


def test_an_unreachable_cluster_is_a_store_error() -> None:
    with pytest.raises(
        StoreError,
        match=r"redis store redis\+cluster://\*\*\*@127\.0\.0\.1:1\?socket_connect_timeout=0\.2: "
        r"RedisClusterUnreachableError: ",
    ):
        RedisStore.from_url("redis+cluster://user:secret@127.0.0.1:1?socket_connect_timeout=0.2")


def test_every_prefix_runs_on_the_node_that_owns_its_slot_through_any_node(
    redis_cluster: RedisClusterServers,
) -> None:
    # Prefixes whose slots are on each of the three nodes, each reached through the first node's URL.
    prefixes: dict[int, str] = {}
    n = 0
    while len(prefixes) < 3:
        prefix = f"{{spread-{n}}}"
        prefixes.setdefault(owner(redis_cluster, prefix), prefix)
        n += 1
    assert sorted(prefixes) == sorted(redis_cluster.ports)
    for port, prefix in prefixes.items():
        store = RedisStore.from_url(f"{redis_cluster.url}?prefix={prefix}")
        batch = [rec(f"s{i}", nanos=i, windows=(DAY, H1)) for i in range(600)]  # three chunks: one pipeline
        assert store.apply(batch, T0) == [APPLIED] * 600
        assert store.apply(batch[:5], T0) == [DUPLICATE] * 5
        assert admit(store, "d1", check(limit_nanos=sum(range(600)) + 10), nanos=10).reserved is True
        assert store.totals([("s", DAY), ("s", H1)], T0) == [Counter(sum(range(600)), 6000, 600)] * 2
        node = redis_cluster.node(port)
        keys = [key.decode() if isinstance(key, bytes) else key for key in node.keys("*")]
        keys = [key for key in keys if key.startswith(prefix)]
        assert len(keys) >= 600
        assert {key_slot(key.encode()) for key in keys} == {key_slot(prefix.encode())}
        node.close()
        store.close()


def test_scripts_are_loaded_again_on_a_node_that_lost_them(redis_cluster: RedisClusterServers) -> None:
    prefix = "{flushed-scripts}"
    store = RedisStore.from_url(f"{redis_cluster.url}?prefix={prefix}")
    assert store.apply([rec(f"a{i}") for i in range(300)], T0) == [APPLIED] * 300
    node = redis_cluster.node(owner(redis_cluster, prefix))
    node.script_flush()  # as after a restart or a failover to a node that never ran them
    node.close()
    assert store.apply([rec(f"b{i}") for i in range(300)], T0) == [APPLIED] * 300  # pipelined: NOSCRIPT
    assert store.apply([rec("c")], T0) == [APPLIED]
    assert read(store) == Counter(601 * 100, 6010, 601)
    store.close()


# --- two `otel-puppy serve` replicas on the cluster ---------------------------------------------------


@pytest.fixture
def cluster_replicas(tmp_path: Path, redis_cluster: RedisClusterServers) -> Iterator[list[Service]]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "budgets.yaml").write_text(BUDGETS)
    url = f"{redis_cluster.url}?prefix={{serve-{tmp_path.name}}}"
    starts = []
    for i in range(2):
        workdir = tmp_path / f"replica-{i}"
        workdir.mkdir()
        env = environment(store=url, fail_open="false", reservation_ttl_s="600")
        starts.append((workdir, ("--policies", str(policies)), env))
    with services(*starts) as started:  # side by side, as a deployment's replicas start
        yield started


def test_two_replicas_on_a_cluster_count_exactly_once_and_never_overshoot(cluster_replicas: list[Service]) -> None:
    a, b = cluster_replicas
    spans = chat_spans(40, agent="support")
    # the same batch to both replicas (a Collector retry after a timeout): counted once
    assert export(a.url, spans) is SpanExportResult.SUCCESS
    assert export(b.url, spans) is SpanExportResult.SUCCESS
    assert spent_nanos(a.url, "everything") == spent_nanos(b.url, "everything") == 40 * NANOS
    assert metric(a.url, "otel_puppy_spans_total", result="applied") == 40.0
    assert metric(b.url, "otel_puppy_spans_total", result="duplicate") == 40.0
    decision = httpx.post(f"{b.url}/v1/decide", json={"provider": "openai", "model": "gpt-4.1", "agent": "support"})
    assert decision.json()["action"] == "deny"  # spend that arrived through a, over support's $0.01

    # research has $1 a day; each call reserves $0.0125: exactly 80 of 800 fit, over both replicas
    start = threading.Barrier(16)

    def decider(n: int) -> list[str]:
        start.wait()
        with httpx.Client(base_url=(a, b)[n % 2].url, timeout=10) as client:
            actions = []
            for _ in range(50):
                body = {"provider": "openai", "model": "gpt-4.1", "agent": "research", "estimated_cost_usd": "0.0125"}
                response = client.post("/v1/decide", json=body)
                assert response.status_code == 200, response.text
                actions.append(response.json()["action"])
            return actions

    with ThreadPoolExecutor(16) as pool:
        actions = [action for result in pool.map(decider, range(16)) for action in result]
    assert (actions.count("allow"), actions.count("deny"), len(actions)) == (80, 720, 800)
    for replica in (a, b):
        budgets = httpx.get(f"{replica.url}/v1/budgets", timeout=5).json()["budgets"]
        [research] = [x for x in budgets if x["policy"] == "research-daily"]
        assert Decimal(research["reserved_usd"]) == Decimal("1.0000")
        assert httpx.get(f"{replica.url}/readyz", timeout=5).status_code == 200
