"""What only the Redis store does: native expiry, hash tags, lost replies, outages, many clients at once.

Everything else (the store protocol's semantics) is tests/store/test_conformance.py, which runs on
a real `redis-server` too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from otel_puppy.exceptions import StoreError
from otel_puppy.store.base import Admission, ApplyResult, BudgetCheck, Counter, open_store
from otel_puppy.store.redis import RedisStore
from tests._redis import RedisServer
from tests.store.test_conformance import DAY, H1, HOUR, T0, admit, check, read, rec

APPLIED, DUPLICATE, NESTED = ApplyResult.APPLIED, ApplyResult.DUPLICATE, ApplyResult.NESTED


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    store = RedisStore.from_url(redis_url)
    yield store
    store.close()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


def test_open_store_opens_redis_urls(redis_url: str) -> None:
    store = open_store(redis_url + "?prefix={tenant-a}&socket_timeout=0.2")
    assert isinstance(store, RedisStore)
    assert store.prefix == "{tenant-a}"
    store.close()


def test_a_prefix_without_a_hash_tag_is_refused(redis_url: str) -> None:
    with pytest.raises(StoreError, match=r"prefix 'plain' needs a hash tag such as \{otel_puppy\}"):
        RedisStore.from_url(redis_url + "?prefix=plain")


def test_the_password_never_appears_in_errors_or_repr() -> None:
    store = RedisStore.from_url("redis://user:s3cret@127.0.0.1:1/0?socket_connect_timeout=0.2")
    assert "s3cret" not in repr(store)
    with pytest.raises(StoreError) as caught:
        store.totals([("s", DAY)], T0)
    assert "s3cret" not in str(caught.value)
    assert "redis://***@127.0.0.1:1/0" in str(caught.value)
    store.close()


def test_every_key_is_in_the_slot_of_the_prefix(store: RedisStore, client: redis.Redis) -> None:
    store.apply([rec("a", windows=(DAY, HOUR, H1)), rec("b", parent="run", settle_key="k")], T0)
    admit(store, "d1", check(), nanos=5, settle_key="k")
    store.mark("alert", T0 + 60)
    store.save_state("breakers", {"k": b"v"})
    keys = [key.decode() for key in client.keys("*")]
    assert len(keys) >= 10
    assert all(key.startswith("{otel_puppy}:") for key in keys), keys
    assert {key_slot(key.encode()) for key in keys} == {key_slot(b"{otel_puppy}")}


def test_prefixes_keep_deployments_apart(redis_url: str) -> None:
    a = RedisStore.from_url(redis_url + "?prefix={a}")
    b = RedisStore.from_url(redis_url + "?prefix={b}")
    assert a.apply([rec("x", nanos=7)], T0) == [APPLIED]
    assert b.apply([rec("x", nanos=9)], T0) == [APPLIED]
    assert (read(a), read(b)) == (Counter(7, 10, 1), Counter(9, 10, 1))
    a.close()
    b.close()


def test_keys_expire_in_redis_relative_to_the_time_they_were_written(store: RedisStore, client: redis.Redis) -> None:
    now = T0 + 100
    store.apply([rec("a", windows=(DAY, HOUR, H1), until=now + 600), rec("c", parent="p", until=now + 900)], now)
    store.mark("m", now + 60)

    def ttl_s(key: str) -> float:
        return float(client.pttl(key)) / 1000

    assert 599 < ttl_s("{otel_puppy}:s:a") <= 600
    assert 899 < ttl_s("{otel_puppy}:s:c") <= 900
    assert 899 < ttl_s("{otel_puppy}:c:p") <= 900
    # a calendar bucket is kept for its retention after it ends: the noon hour for 2 h after 13:00
    assert 3600 + 7200 - 101 < ttl_s(f"{{otel_puppy}}:cal:hour:{T0!r}:s") <= 3600 + 7200 - 100
    day_start = DAY.bounds(T0)[0]
    assert ttl_s(f"{{otel_puppy}}:cal:day:{day_start!r}:s") == pytest.approx(day_start + 86400 * 3 - now, abs=1)
    # a rolling window until two steps after its newest sub-bucket stops counting
    assert ttl_s("{otel_puppy}:roll:1h:s") == pytest.approx(T0 + 60 + 3600 + 120 - now, abs=1)
    assert client.pttl("{otel_puppy}:m:m") == -1  # marks: by the expiry index, counted by expire()
    assert store.expire(now + 60) == 1


def test_a_batch_larger_than_a_script_chunk_is_one_pipeline(store: RedisStore) -> None:
    batch = [rec(f"s{i}", nanos=i) for i in range(1000)] + [rec("s5")]
    results = store.apply(batch, T0)
    assert results == [APPLIED] * 1000 + [DUPLICATE]
    assert read(store) == Counter(sum(range(1000)), 10_000, 1000)


class _LostReply:
    """Runs the real script, then loses the reply the way a dropped connection does."""

    def __init__(self, script: Any) -> None:
        self.script = script

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.script(*args, **kwargs)
        raise redis.ConnectionError("Connection closed by server.")


def test_a_retry_after_a_lost_reply_counts_nothing_twice_and_reports_what_happened(
    store: RedisStore, redis_url: str
) -> None:
    admit(store, "d1", check(), nanos=500, settle_key="k")
    batch = [rec("call", decision_id="d1", settle_key="k"), rec("sdk", parent="call"), rec("other", nanos=1)]
    real = store._apply
    store._apply = _LostReply(real)
    with pytest.raises(StoreError, match="Connection closed by server"):
        store.apply(batch, T0)
    store._apply = real
    store._down_until = 0.0  # the connection is back
    assert store.apply(batch, T0) == [APPLIED, NESTED, APPLIED]
    assert read(store) == Counter(101, 20, 2)
    assert admit(store, "probe", check(), reserve=False).states[0].reserved_nanos == 0  # d1 settled once
    # another replica delivering the same spans sees duplicates, and so does a third delivery here
    other = RedisStore.from_url(redis_url)
    assert other.apply(batch, T0) == [DUPLICATE, DUPLICATE, DUPLICATE]
    assert store.apply(batch, T0) == [DUPLICATE, DUPLICATE, DUPLICATE]
    other.close()


def test_sixteen_clients_at_once_never_reserve_past_the_budget(redis_url: str) -> None:
    # $1 budget, $0.0125 per call: exactly 80 fit, however the 16 clients interleave.
    budget = BudgetCheck("org", DAY, 1_000_000_000, None, blocking=True)
    admitted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def decide_many(n: int) -> None:
        store = RedisStore.from_url(redis_url)
        start.wait()
        for i in range(50):
            result = store.admit(Admission(f"d{n}-{i}", (budget,), 12_500_000, 0, T0 + 300, None), T0)
            with lock:
                admitted.append(result.reserved)
        store.close()

    threads = [threading.Thread(target=decide_many, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (admitted.count(True), admitted.count(False)) == (80, 720)


def test_an_unreachable_redis_fails_fast_and_the_store_recovers(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = RedisServer(tmp_path_factory.mktemp("redis-outage")).start()
    try:
        store = RedisStore.from_url(server.url)
        assert store.apply([rec("a")], T0) == [APPLIED]
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreError, match="Connection"):
            store.admit(Admission("d", (check(),), 1, 0, T0 + 300, None), T0)
        with pytest.raises(StoreError, match="unreachable"):  # within the back-off: no network wait
            store.totals([("s", DAY)], T0)
        assert time.monotonic() - started < 1.0
        server.start()  # same port, empty: the scripts are loaded again on NOSCRIPT
        deadline = time.monotonic() + 5
        while True:
            try:
                assert store.apply([rec("b", nanos=5)], T0) == [APPLIED]
                break
            except StoreError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert read(store) == Counter(5, 10, 1)
        store.close()
    finally:
        server.stop()
