"""`KeySet` against a dict of the same keys: the same answers through growth, expiry and reuse."""

from __future__ import annotations

import random
from hashlib import blake2b
from typing import Any

import pytest

from otel_puppy.store import _keyset
from otel_puppy.store._keyset import KeySet, Partition, digest


class _Model:
    """What a `KeySet` promises, with plain dicts: a key is kept until the first `expire` at or
    after the latest `until` put in its minute bucket."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}  # key -> its bucket
        self.latest: dict[int, float] = {}

    def add(self, key: str, until: float) -> bool:
        if key in self.keys:
            return False
        self.put(key, until)
        return True

    def put(self, key: str, until: float) -> None:
        old = self.keys.get(key)
        bucket = int(until // 60)
        self.keys[key] = bucket
        self.latest[bucket] = max(self.latest.get(bucket, until), until)
        if old is not None and old != bucket and old not in self.keys.values():
            del self.latest[old]

    def expire(self, now: float) -> int:
        gone = {bucket for bucket, latest in self.latest.items() if latest <= now}
        for bucket in gone:
            del self.latest[bucket]
        stale = [key for key, bucket in self.keys.items() if bucket in gone]
        for key in stale:
            del self.keys[key]
        return len(stale)


@pytest.mark.parametrize("bits", [None, 8], ids=["4096 strings", "split from 256"])
def test_a_keyset_answers_as_a_dict_of_its_keys_would(bits: int | None) -> None:
    # From 256 strings of 2 records, strings are split all along (rounds of 256, 512, ... strings).
    rng = random.Random(20)
    keys, model = KeySet(Partition(bits, load=2) if bits else None), _Model()
    now = 1_800_000_000.0
    for _ in range(60):
        for _ in range(rng.randrange(1, 2000)):
            key = f"{rng.randrange(30_000):048x}" + rng.choice(("", "~"))
            until = now + rng.choice((60.0, 300.0, 3600.0)) + rng.random()
            if rng.random() < 0.8:
                assert keys.add(key, until) == model.add(key, until)
            else:
                keys.put(key, until)
                model.put(key, until)
        probes = [f"{rng.randrange(30_000):048x}" for _ in range(500)]
        assert [key in keys for key in probes] == [key in model.keys for key in probes]
        now += rng.choice((0.0, 30.0, 120.0, 600.0))
        assert keys.expire(now) == model.expire(now)
        assert len(keys) == len(model.keys)
    assert all(key in keys for key in model.keys)
    assert keys.expire(now + 86400) == len(model.keys)
    assert len(keys) == 0
    assert keys.nbytes() < 100_000  # the tables shrink again


def test_a_key_is_kept_until_its_time_and_its_bucket_ends_with_its_latest() -> None:
    keys = KeySet()
    keys.add("a", 1200.0)
    keys.add("b", 1230.5)  # the same minute: kept as long as b
    assert keys.expire(1200.0) == 0
    assert "a" in keys
    assert keys.expire(1230.5) == 2
    assert "a" not in keys
    assert "b" not in keys


def test_a_digest_is_120_bits_and_keyed_per_process() -> None:
    whole = digest("a")
    assert len(whole) == 15
    assert digest("a") == whole != digest("b")
    assert whole != blake2b(b"a", digest_size=15).digest()  # keyed: span ids cannot aim at one string


def test_keys_of_one_string_never_match_across_two_records() -> None:
    """A digest's tail found across the end of one record and the start of the next is not a key."""
    keys = KeySet()
    records = keys._records
    tail = bytes(range(14))
    records.append(7, bytes(range(100, 114)) + tail[:2])  # a record ending with the tail's first bytes
    records.append(7, tail[2:] + b"\x01\x00\x00\x00")  # ... and one starting with the rest
    assert records.find(records.strings[7], tail) == -1
    records.append(7, tail + b"\x01\x00")
    assert records.find(records.strings[7], tail) == 32


def test_a_key_takes_16_bytes() -> None:
    keys = KeySet()
    for i in range(100_000):
        keys.add(f"{i:048x}", 60.0)
    assert len(keys) == 100_000
    assert keys.nbytes() == 1_600_000
    assert keys.expire(60.0) == 100_000
    assert keys.nbytes() == 0


class _Walks(list[bytes]):
    """The strings of `Records`, counting the walks over them."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        _Walks.walks += 1
        return super().__iter__()


def test_an_expire_after_a_long_pause_walks_the_strings_once() -> None:
    # A working day of spans (600 minute buckets), then a pause past the window: the next expire
    # forgets every bucket at once. Walking the strings (then 65,536) once per bucket held the store's lock
    # for seconds (8.5 s for 300,000 keys); one walk takes about 0.1 s.
    keys = KeySet()
    for i in range(6000):
        keys.add(f"trace-{i}", until=1_800_000_000.0 + 60 * (i // 10))
    keys._records.strings = _Walks(keys._records.strings)
    _Walks.walks = 0
    assert keys.expire(1_800_000_000.0 + 60 * 600) == 6000
    assert _Walks.walks == 1
    assert len(keys) == 0
    assert not any(keys._records.strings)


def test_keys_past_the_last_bucket_id_do_not_each_look_for_the_latest_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A dedupe window longer than 0xFFFE minutes (45 days; `dedupe_ttl_s` has no upper bound) uses
    # every bucket id after 45 days: each later key joins the latest bucket. Finding it by `max`
    # over the 65,534 buckets at every key cost 1.2 ms a key (600x); it is found once.
    scans = 0

    def counting_max(*args: Any, **kwargs: Any) -> Any:
        nonlocal scans
        scans += len(args) == 1 and isinstance(args[0], dict)
        return max(*args, **kwargs)

    monkeypatch.setattr(_keyset, "_MAX_GENERATIONS", 50)
    monkeypatch.setattr(_keyset, "max", counting_max, raising=False)
    keys = KeySet()
    for minute in range(50):
        keys.add(f"k{minute}", until=60.0 * minute)
    for i in range(200):
        assert keys.add(f"late{i}", until=60.0 * (50 + i))
    assert scans <= 1
    assert all(f"late{i}" in keys for i in range(200))
    assert keys.expire(60.0 * 248) == 49  # the latest bucket holds every late key, until the latest
    assert keys.expire(60.0 * 249) == 201
    assert len(keys) == 0


def test_a_key_kept_for_ever_is_kept_and_expires_with_nothing() -> None:
    # `dedupe_ttl_s` may be `inf` (the settings allow it): every key's `until` is then `inf`.
    keys = KeySet()
    assert keys.add("a", until=float("inf"))
    assert not keys.add("a", until=float("inf"))
    keys.put("b", until=float("inf"))
    keys.add("c", until=60.0)
    assert keys.expire(1e18) == 1
    assert "a" in keys
    assert "b" in keys
    assert "c" not in keys


def test_strings_stay_near_their_load_however_many_keys() -> None:
    """Linear hashing: a lookup scans about `load` records, never a string grown with the key count."""
    partition = Partition(8, load=16)
    keys = KeySet(partition)
    for i in range(100_000):
        assert keys.add(f"{i:032x}", 60.0)
    records = keys._records
    assert len(records.strings) == partition.strings == 100_000 // 16  # 256 strings, split to 6,250
    assert partition.bits == 12
    longest = max(len(found) for found in records.strings) // records.width
    assert longest < 4 * 16  # unsplit strings of a round hold about twice the load, split ones about half
    assert all(f"{i:032x}" in keys for i in range(0, 100_000, 7))
    assert not any(f"{i:032x}" in keys for i in range(100_000, 110_000))
    assert keys.expire(60.0) == 100_000


def test_a_partition_starts_with_at_least_256_strings() -> None:
    with pytest.raises(ValueError, match="2\\*\\*8"):
        Partition(7)
    with pytest.raises(ValueError, match="at least one record"):
        Partition(12, load=0)
