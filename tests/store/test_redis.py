"""What only the Redis store does: native expiry, hash tags, lost replies, outages, many clients at once.

Everything else (the store protocol's semantics) is tests/store/test_conformance.py, which runs on
a real `redis-server` too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from redis.crc import key_slot

from otel_puppy.exceptions import StoreError
from otel_puppy.store.base import (
    CEILING,
    Admission,
    Admitted,
    ApplyResult,
    BudgetCheck,
    CheckState,
    Counter,
    open_store,
)
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
    keys = [key.decode() for key in cast("list[bytes]", client.keys("*"))]  # no decode_responses: bytes
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
    store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admit(store, "d1", check(), nanos=500, settle_key="k")
    batch = [rec("call", decision_id="d1", settle_key="k"), rec("sdk", parent="call"), rec("other", nanos=1)]
    real = store._apply
    monkeypatch.setattr(store, "_apply", _LostReply(real))
    with pytest.raises(StoreError, match="Connection closed by server"):
        store.apply(batch, T0)
    monkeypatch.setattr(store, "_apply", real)
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


# --- poisoned values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "poison",
    ["garbage", "1.5", "-5", "9007199254740992", "007", "", "99999999999999999999999"],
    ids=["text", "float", "negative", "past the ceiling", "leading zeros", "empty", "past int64"],
)
def test_an_unreadable_count_reads_as_exhausted_and_no_script_fails(
    store: RedisStore, client: redis.Redis, poison: str
) -> None:
    store.apply([rec("a", windows=(DAY, H1))], T0)
    admit(store, "held", check("r", limit_nanos=None), nanos=5, tokens=1)
    day = f"{{otel_puppy}}:cal:day:{DAY.bounds(T0)[0]!r}:s"
    ring = "{otel_puppy}:roll:1h:s"
    client.hset(day, "n", poison)
    client.hset(ring, "t", poison)  # the ring's running total of tokens
    client.hset("{otel_puppy}:reserved", "n|r", poison)
    tokens = check("s", window=H1, limit_nanos=None, limit_tokens=1000)
    states = admit(store, "d1", check("s"), tokens, check("r"), nanos=1, tokens=1)
    # A ring's running total may pass the ceiling (it sums 61 counts): that one is a saturated total.
    saturated_total = poison == "9007199254740992"
    ring_state = CheckState(100, CEILING, 0, 0, False) if saturated_total else CheckState(CEILING, CEILING, 0, 0, False)
    assert states == Admitted(
        False,
        (
            CheckState(CEILING, 10, 0, 0, False),
            ring_state,  # an unreadable ring reads as exhausted whole
            CheckState(0, 0, CEILING, 1, False),
        ),
    )
    health = store.health()
    assert health.unreadable == (2 if saturated_total else 3)
    assert (
        health.problem
        == "redis store redis://127.0.0.1:{}/0: stored values could not be read within the last minute".format(
            client.connection_pool.connection_kwargs["port"]
        )
    )
    # writes on top never fail: the calendar count becomes the ceiling, the ring stays marked
    assert store.apply([rec("b", nanos=1, windows=(DAY, H1))], T0) == [APPLIED]
    rolling = Counter(101, CEILING, 2) if saturated_total else Counter(CEILING, CEILING, CEILING)
    assert store.totals([("s", DAY), ("s", H1)], T0) == [Counter(CEILING, 20, 2), rolling]
    assert client.hget(day, "n") == str(CEILING).encode()
    assert store.release("held") is True  # an unreadable total is left as it is: still exhausted
    assert admit(store, "d2", check("r"), reserve=False).states[0].fits is False
    assert store.expire(T0 + 10**6) == 0


def test_an_unreadable_reservation_is_dropped_without_taking_anything_back(
    store: RedisStore, client: redis.Redis
) -> None:
    admit(store, "d1", check("r", limit_nanos=None), nanos=5, tokens=1)
    admit(store, "d2", check("r", limit_nanos=None), nanos=7, tokens=2)
    client.hset("{otel_puppy}:r:d1", "n", "x")
    client.hset("{otel_puppy}:r:d2", "c", "1000000000")  # a count of scopes it does not hold: no endless loop
    assert (store.release("d1"), store.release("d2")) == (True, True)
    assert admit(store, "probe", check("r"), reserve=False).states[0][2:4] == (12, 3)


def test_an_old_whole_reserved_total_is_read_and_carried_exactly(store: RedisStore, client: redis.Redis) -> None:
    # Totals written whole by the previous version (one field per scope) keep working.
    admit(store, "d1", check("r", limit_nanos=None), nanos=5, tokens=1)
    client.hset("{otel_puppy}:reserved", mapping={"n|r": str(2**45 + 5), "t|r": "1"})
    assert admit(store, "probe", check("r"), reserve=False).states[0][2:4] == (2**45 + 5, 1)
    assert store.release("d1") is True
    assert admit(store, "probe", check("r"), reserve=False).states[0][2:4] == (2**45, 0)


def test_keys_do_not_depend_on_the_servers_clock(store: RedisStore, client: redis.Redis) -> None:
    # Expiry is relative to the `now` a call passes (PEXPIRE, PX), never an absolute time: spend
    # written with a clock decades before or after the server's is kept for its retention alike.
    for offset, scope in ((-30 * 365 * 86400.0, "past"), (0.0, "t0"), (70 * 365 * 86400.0, "future")):
        now = T0 + offset
        store.apply([rec(f"a-{scope}", scope=scope, ts=now, until=now + 600)], now)
        assert store.totals([(scope, DAY), (scope, H1)], now) == [Counter(100, 10, 1)] * 2
        assert 599_000 < client.pttl(f"{{otel_puppy}}:s:a-{scope}") <= 600_000
