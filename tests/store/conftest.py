"""A real Redis Cluster for the store tests: the conformance suite runs on it as a fourth store."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otel_puppy.store.base import Store, open_store
from tests._redis import RedisClusterServers

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """Three `redis-server --cluster-enabled yes` primaries for the session."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The session's cluster under a prefix of this test's own (so a hash slot of its own, spread
    over the nodes from test to test): nothing to flush, and redirects are exercised."""
    return f"{redis_cluster.url}?prefix={{test-{next(_prefixes)}}}"


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each backend, opened by its URL as a deployment opens it: a new backend adds one line here."""
    urls: dict[str, Callable[[], str]] = {
        "memory": lambda: "memory://",
        "sqlite": lambda: f"sqlite:///{tmp_path / 'state.db'}",
        "redis": lambda: request.getfixturevalue("redis_url"),
        "redis-cluster": lambda: request.getfixturevalue("redis_cluster_url"),
    }
    store = open_store(urls[request.param]())
    yield store
    store.close()
