"""The forward queue every store gives (`Store.forward_queue`), held to one behaviour on each backend:
order, the byte bound, claims and their leases, durability where the store is durable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_puppy.exceptions import StoreError
from otel_puppy.forward.queue import ForwardQueue, QueueFull
from otel_puppy.store.base import Store, open_store

KIB = 1024
T0 = 1_800_000_000.0


@pytest.fixture
def queue(store: Store) -> Iterator[ForwardQueue]:
    queue = store.forward_queue(4 * KIB)
    yield queue
    queue.close()


def drain(queue: ForwardQueue, now: float = T0) -> list[bytes]:
    bodies = []
    while (claimed := queue.claim(now)) is not None:
        bodies.append(claimed.body)
        queue.done(claimed)
    return bodies


def test_batches_come_out_in_order_with_their_span_counts_and_leave_when_done(queue: ForwardQueue) -> None:
    for n in range(5):
        queue.put(bytes([n]) * 100, n + 1)
    assert queue.depth() == (5, 500)
    first = queue.claim(T0)
    assert first is not None
    assert (first.body, first.spans) == (bytes([0]) * 100, 1)
    second = queue.claim(T0)  # the first is claimed: the next one is handed out
    assert second is not None
    assert second.spans == 2
    queue.done(first)
    queue.done(second)
    assert queue.depth() == (3, 300)
    assert drain(queue) == [bytes([n]) * 100 for n in (2, 3, 4)]
    assert queue.depth() == (0, 0)
    assert queue.claim(T0) is None


def test_the_byte_bound_refuses_what_does_not_fit_and_keeps_what_is_queued(queue: ForwardQueue) -> None:
    queue.put(b"a" * (3 * KIB), 1)
    assert queue.room(KIB)
    assert not queue.room(KIB + 1)
    with pytest.raises(QueueFull):
        queue.put(b"b" * (KIB + 1), 1)
    queue.put(b"c" * KIB, 1)  # exactly full
    assert queue.depth() == (2, 4 * KIB)
    with pytest.raises(QueueFull):
        queue.put(b"d", 1)
    assert drain(queue) == [b"a" * (3 * KIB), b"c" * KIB]
    assert queue.room(4 * KIB)


def test_a_claim_is_handed_out_again_once_its_lease_runs_out_and_hold_extends_it(queue: ForwardQueue) -> None:
    queue.lease_s = 0.3  # Redis measures the lease by its own clock: a short one, waited out for real
    queue.put(b"x" * 10, 3)
    claimed = queue.claim(time.time())
    assert claimed is not None
    assert queue.claim(time.time()) is None  # held
    time.sleep(0.2)
    queue.hold(claimed, time.time())
    time.sleep(0.2)
    assert queue.claim(time.time()) is None  # the hold renewed the lease
    time.sleep(0.35)
    again = queue.claim(time.time())  # the claimer died: the batch is claimed again, nothing lost
    assert again is not None
    assert (again.body, again.spans) == (b"x" * 10, 3)
    queue.done(again)
    assert queue.depth() == (0, 0)


def test_done_twice_forgets_once(queue: ForwardQueue) -> None:
    queue.put(b"y" * 50, 1)
    queue.put(b"z" * 60, 1)
    claimed = queue.claim(T0)
    assert claimed is not None
    queue.done(claimed)
    queue.done(claimed)  # a lost reply's retry: the size is not taken twice
    assert queue.depth() == (1, 60)


def test_a_durable_queue_keeps_its_batches_across_a_reopen(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    queue = store.forward_queue(4 * KIB)
    assert queue.durable
    queue.put(b"kept" * 10, 2)
    claimed = queue.claim(T0)  # claimed when the process died: handed out again after its lease
    assert claimed is not None
    queue.close()
    store.close()
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    queue = store.forward_queue(4 * KIB)
    assert queue.depth() == (1, 40)
    assert queue.claim(T0) is None
    assert drain(queue, T0 + queue.lease_s) == [b"kept" * 10]
    queue.close()
    store.close()


def test_the_memory_queue_says_it_is_not_durable() -> None:
    assert not open_store("memory://").forward_queue(KIB).durable
    assert not open_store("sqlite://").forward_queue(KIB).durable  # an in-memory SQLite database


def test_two_redis_replicas_share_one_queue_and_each_batch_goes_to_one(redis_url: str) -> None:
    one, two = open_store(redis_url), open_store(redis_url)
    first, second = one.forward_queue(4 * KIB), two.forward_queue(4 * KIB)
    for n in range(4):
        (first if n % 2 else second).put(bytes([n]) * 10, 1)
    assert first.depth() == second.depth() == (4, 40)
    got: list[bytes] = []
    while True:
        claims = [(queue, queue.claim(T0)) for queue in (first, second)]
        held = [(queue, claimed) for queue, claimed in claims if claimed is not None]
        if not held:
            break
        for queue, claimed in held:
            got.append(claimed.body)
            queue.done(claimed)
    assert sorted(got) == [bytes([n]) * 10 for n in range(4)]  # each once
    assert first.depth() == (0, 0)
    one.close()
    two.close()


def test_a_redis_queue_that_cannot_be_reached_fails_with_a_store_error(redis_url: str) -> None:
    store = open_store("redis://127.0.0.1:1/0")
    with pytest.raises(StoreError, match="redis forward queue: open"):
        store.forward_queue(KIB)
