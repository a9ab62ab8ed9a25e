"""`CallIndex` against the dicts of `CallKey`s it replaced: the same answers through growth, spans
let go past `MAX_CALL_SPANS`, rollbacks, `joins_else_keep` and expiry."""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Iterable

import pytest

from otel_puppy.store._call_index import CallIndex, _Undo
from otel_puppy.store._keyset import Partition, digest
from otel_puppy.store.base import CEILING, MAX_CALL_SPANS, CallKey


def _joins(kept: CallKey, key: CallKey) -> bool:
    return (
        kept.start <= key.end
        and key.start <= kept.end
        and (not kept.source or not key.source or kept.source != key.source)
        and not (kept.identified and key.identified)
    )


class _Model:
    """Per key its spans (sorted by end, the `MAX_CALL_SPANS` ending last) and until when; a key
    expires exactly at its latest `until` (the test puts every `until` on a minute, where a bucket's
    expiry is exact too)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[float, list[tuple[int, CallKey]]]] = {}

    def joins(self, keys: Iterable[CallKey]) -> bool:
        for key in keys:
            entry = self.keys.get(key.key)
            if entry is not None:
                spans = entry[1]
                if any(_joins(kept, key) for _, kept in spans[bisect_left(spans, (key.start,)) :]):
                    return True
        return False

    def keep(self, keys: Iterable[CallKey], until: float) -> None:
        for key in keys:
            before, spans = self.keys.get(key.key, (until, []))
            spans = list(spans)
            insort(spans, (key.end, key))
            if len(spans) > MAX_CALL_SPANS:
                spans.pop(0)
            self.keys[key.key] = (max(before, until), spans)

    def expire(self, now: float) -> int:
        stale = [key for key, (until, _) in self.keys.items() if until <= now]
        return sum(len(self.keys.pop(key)[1]) for key in stale)


def _random_key(rng: random.Random) -> CallKey:
    if rng.random() < 0.3:  # a response id's: any time
        return CallKey(f"r\x1f{rng.randrange(2000)}", 0, CEILING, rng.choice(("", "A", "B")))
    start = rng.randrange(1000)
    return CallKey(
        f"u\x1f{rng.randrange(6)}",
        start,
        start + rng.randrange(50),
        rng.choice(("", "A", "B", "C")),
        rng.random() < 0.3,
    )


@pytest.mark.parametrize("bits", [None, 8], ids=["4096 strings", "split from 256"])
def test_a_call_index_answers_as_the_dicts_of_call_keys_did(bits: int | None) -> None:
    # From 256 strings of 2 records, strings (of all three kinds of record at once) are split all along.
    rng = random.Random(20)
    index, model = CallIndex(Partition(bits, load=2) if bits else None), _Model()
    now = 1_800_000_000.0
    for _ in range(40):
        for _ in range(rng.randrange(1, 400)):
            keys = tuple(_random_key(rng) for _ in range(rng.randrange(1, 4)))
            until = now + 60 * rng.choice((1, 5, 60))
            if rng.random() < 0.2:  # a transaction that does not commit: nothing changes
                undo: list[_Undo] = []
                index.keep(keys, until, undo)
                more = tuple(_random_key(rng) for _ in range(2))
                if rng.random() < 0.5:  # as the SQLite store applies a span, in its transaction
                    index.joins_else_keep(more, [digest(key.key) for key in more], until + 60, undo)
                else:
                    index.keep(more, until + 60, undo)
                index.restore(undo)
                continue
            if rng.random() < 0.5:  # as the memory store applies a span: its keys kept unless one joins
                joined = model.joins(keys)
                assert index.joins_else_keep(keys, [digest(key.key) for key in keys], until) == joined
                if not joined:
                    model.keep(keys, until)
                continue
            index.keep(keys, until)
            model.keep(keys, until)
        probes = [tuple(_random_key(rng) for _ in range(rng.randrange(1, 3))) for _ in range(300)]
        assert [index.joins(keys) for keys in probes] == [model.joins(keys) for keys in probes]
        now += 60 * rng.choice((0, 1, 2, 10))
        assert index.expire(now) == model.expire(now)
        assert len(index) == sum(len(spans) for _, spans in model.keys.values())
    assert index.expire(now + 86400) == sum(len(spans) for _, spans in model.keys.values())
    assert len(index) == 0
    assert index._source_ids == {"": 0}  # every source forgotten with the last span holding it
    assert index.nbytes() < 100_000  # the tables shrink again


def test_a_key_is_kept_until_its_latest_time_and_at_most_a_minute_more() -> None:
    index = CallIndex()
    index.keep((CallKey("k", 100, 200, "A"),), until=1200.0)
    index.keep((CallKey("k", 300, 400, "A"),), until=1230.5)
    index.keep((CallKey("k", 500, 600, "A"),), until=1100.0)  # an earlier time: the key keeps its latest
    probe = (CallKey("k", 150, 160, "B"),)
    assert index.expire(1200.0) == 0
    assert index.joins(probe)
    assert index.expire(1230.5) == 3
    assert not index.joins(probe)


def test_a_response_id_costs_16_bytes_or_20_with_a_source_and_any_text_is_a_key() -> None:
    index = CallIndex()
    index.keep([CallKey(f"r\x1fchatcmpl-{i}", 0, CEILING) for i in range(100_000)], until=3600.0)
    assert index.nbytes() == 16 * len(index)
    index.keep((CallKey("r\x1f\ud800", 0, CEILING, "A"),), until=3600.0)  # a lone surrogate, as JSON may send
    assert index.joins((CallKey("r\x1f\ud800", 0, CEILING, "B"),))
    assert not index.joins((CallKey("r\x1f\ud800", 0, CEILING, "A"),))
    assert index.joins((CallKey("r\x1fchatcmpl-99999", 0, CEILING, "B"),))
    assert index.joins((CallKey("r\x1fchatcmpl-99999", 0, CEILING, ""),))
    assert not index.joins((CallKey("r\x1fchatcmpl-100000", 0, CEILING, "B"),))
    assert index.nbytes() == 16 * 100_000 + 20
    assert index.expire(3600.0) == 100_001
    assert index._source_ids == {"": 0}


def test_expiring_one_bucket_or_many_at_once_takes_exactly_theirs() -> None:
    # Records whose sources and times hold every small bucket id's two bytes at other offsets, in
    # buckets expired one at a time (ids searched as bytes) and hundreds at once (ids read as
    # integers, one walk over the strings): each expire takes exactly the spans the model drops.
    rng = random.Random(7)
    now = 1_800_000_000.0
    for pause in (1, 3, 300):
        index, model = CallIndex(), _Model()
        for minute in range(1, 301):
            for _ in range(20):
                start = int.from_bytes(bytes(rng.randrange(1, 8) for _ in range(8)), "little") >> 2
                key = CallKey(f"u\x1f{rng.randrange(10**9)}", start, start + 1, rng.choice("ABCDEFGH"))
                keys = (key, CallKey(f"r\x1f{rng.randrange(10**9)}", 0, CEILING, key.source))
                index.keep(keys, now + 60 * minute)
                model.keep(keys, now + 60 * minute)
        for minute in range(pause, 301 + pause, pause):
            assert index.expire(now + 60 * minute) == model.expire(now + 60 * minute)
            assert len(index) == sum(len(spans) for _, spans in model.keys.values())
        assert len(index) == 0
        assert index._source_ids == {"": 0}
