"""`KeySet`: the memory store's span keys, kept exactly in little memory.

`MemoryStore` remembers every span's key for the dedupe window (a day by default). As a dict of
`str` keys a million spans cost about 130 MB; here each key is its 128-bit blake2b digest, kept in
open-addressing tables of plain arrays (two unsigned 64-bit halves and a 16-bit expiry bucket: 18
bytes a slot, about 26 a key at the tables' load), so a million keys take about 26 MB.

Exact up to a digest collision: two distinct keys share a 128-bit digest with probability about
n²/2^129 for n keys kept at once (3e-27 for a million, 3e-21 for a billion), far below any hardware
error rate; a collision would report one span as a duplicate of another. No probabilistic filter:
a key never kept is never reported kept otherwise.

Expiry is by bucket: a key's `until` falls in a one-minute bucket, and the whole bucket is forgotten
by the first `expire(now)` at or after the latest `until` put in it. A key is therefore never
forgotten before its `until`, and at most a minute after it (every key of a batch has the same
`until`, so most buckets are forgotten exactly on time).

The keys are spread over `_SHARDS` tables by their digest, so growing one (in Python, a slot at a
time) holds the store's lock for milliseconds, not for a rebuild of every key.
"""

from __future__ import annotations

import struct
from array import array
from functools import lru_cache
from hashlib import blake2b
from typing import Final

__all__ = ("KeySet",)

_SHARDS: Final = 256
_SHARD_SHIFT: Final = 56
"""A digest's table: its top 8 bits."""
_BUCKET_S: Final = 60.0
_EMPTY: Final = 0
_GONE: Final = 0xFFFF
"""A forgotten key's slot (a tombstone): probing goes on past it; an insert may reuse it."""
_MAX_GENERATIONS: Final = 0xFFFE
"""Buckets kept at once (ids 1 to 0xFFFE): 45 days of minutes. Past that a key joins the latest
bucket, which then lasts until its `until` (never shorter, see `KeySet._generation`)."""
_FULL: Final = 0.85
"""Live and forgotten slots over capacity at which a table is rebuilt."""
_SPARSE: Final = 0.55
"""A rebuilt table's load: it grows (or shrinks, after expiry) to hold its live keys at this."""
_unpack = struct.Struct("<QQ").unpack


def digest(key: str) -> tuple[int, int]:
    """`key`'s 128-bit blake2b digest as (high, low) 64-bit halves; never (0, 0)."""
    low, high = _unpack(blake2b(key.encode(), digest_size=16).digest())
    return (high, low) if high or low else (0, 1)  # (0, 0) is merged with (0, 1): a 2^-128 collision


@lru_cache(maxsize=256)
def _prime_at_least(n: int) -> int:
    """A table's capacity: prime, so that every probe step in [1, capacity - 1] visits every slot."""
    n = max(n, 3) | 1
    while any(n % d == 0 for d in range(3, int(n**0.5) + 1, 2)):
        n += 2
    return n


class _Table:
    """One shard: an open-addressing table with double hashing (start at `low % capacity`, step
    `1 + high % (capacity - 1)`)."""

    __slots__ = ("capacity", "filled", "generation", "high", "live", "low")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.high = array("Q", bytes(8 * capacity))
        self.low = array("Q", bytes(8 * capacity))
        self.generation = array("H", bytes(2 * capacity))
        """Per slot: `_EMPTY`, `_GONE`, or the id of the bucket its key expires with."""
        self.live = 0
        self.filled = 0
        """Live keys and tombstones: what probing has to walk past."""

    def find(self, high: int, low: int) -> int:
        """The slot holding the digest, or -1."""
        capacity, generation, highs, lows = self.capacity, self.generation, self.high, self.low
        slot = low % capacity
        step = 0
        while True:
            g = generation[slot]
            if g == _EMPTY:
                return -1
            if g != _GONE and lows[slot] == low and highs[slot] == high:
                return slot
            if not step:
                step = 1 + high % (capacity - 1)
            slot = (slot + step) % capacity

    def insert(self, high: int, low: int, gen: int) -> None:
        """Put a digest not in the table (the caller has looked)."""
        if self.filled + 1 > _FULL * self.capacity:
            self._rebuild(int((self.live + 1) / _SPARSE) + 1)
        capacity, generation = self.capacity, self.generation
        slot = low % capacity
        step = 1 + high % (capacity - 1)
        while (g := generation[slot]) != _EMPTY and g != _GONE:
            slot = (slot + step) % capacity
        if g == _EMPTY:
            self.filled += 1
        self.high[slot], self.low[slot], generation[slot] = high, low, gen
        self.live += 1

    def forget(self, gen: int) -> int:
        """Make every slot of bucket `gen` a tombstone; how many there were."""
        if not self.live:
            return 0
        pattern = array("H", (gen,)).tobytes()
        data = self.generation.tobytes()  # searched in C: only the bucket's own slots are visited
        generation = self.generation
        dropped = 0
        at = data.find(pattern)
        while at != -1:
            if not at & 1:  # a whole 16-bit slot, not the halves of two
                generation[at >> 1] = _GONE
                dropped += 1
                at = data.find(pattern, at + 2)
            else:
                at = data.find(pattern, at + 1)
        self.live -= dropped
        if self.live < self.filled * (1 - _SPARSE) and self.capacity > 16:  # mostly tombstones: smaller
            self._rebuild(int(self.live / _SPARSE) + 1)
        return dropped

    def _rebuild(self, capacity: int) -> None:
        old = (self.high, self.low, self.generation)
        self.__init__(_prime_at_least(capacity))  # type: ignore[misc]
        for high, low, gen in zip(*old, strict=True):
            if gen not in {_EMPTY, _GONE}:
                self.insert(high, low, gen)

    def nbytes(self) -> int:
        return self.capacity * 18


class KeySet:
    """Keys (strings) each kept until its own time, by 128-bit digest; not thread-safe (the store's
    lock guards it).

    >>> keys = KeySet()
    >>> keys.add("a", until=120.0), keys.add("a", until=180.0), "a" in keys, "b" in keys
    (True, False, True, False)
    >>> keys.expire(119.0), keys.expire(120.0), "a" in keys
    (0, 1, False)
    """

    __slots__ = ("_buckets", "_free", "_generations", "_tables")

    def __init__(self) -> None:
        self._tables: list[_Table | None] = [None] * _SHARDS
        self._buckets: dict[int, int] = {}
        """Bucket (minute of `until`) -> its id in the tables."""
        self._generations: dict[int, list[float]] = {}
        """Bucket id -> [its bucket, the latest `until` put in it, how many keys it holds]."""
        self._free: list[int] = []
        """Ids free again, once their bucket expired (reused before new ones)."""

    def __contains__(self, key: str) -> bool:
        high, low = digest(key)
        table = self._tables[high >> _SHARD_SHIFT]
        return table is not None and table.find(high, low) >= 0

    def add(self, key: str, until: float) -> bool:
        """Keep `key` until `until`, unless it is kept already (then nothing changes); whether it was new."""
        high, low = digest(key)
        shard = high >> _SHARD_SHIFT
        table = self._tables[shard]
        if table is None:
            table = self._tables[shard] = _Table(_prime_at_least(3))
        elif table.find(high, low) >= 0:
            return False
        table.insert(high, low, self._generation(until))
        return True

    def put(self, key: str, until: float) -> None:
        """Keep `key` until `until`, whether it was kept or not (a dict's `keys[key] = until`)."""
        high, low = digest(key)
        table = self._tables[high >> _SHARD_SHIFT]
        slot = table.find(high, low) if table is not None else -1
        if slot < 0:
            self.add(key, until)
            return
        assert table is not None
        gen = self._generation(until)
        old = table.generation[slot]
        table.generation[slot] = gen
        self._drop_one(old)

    def expire(self, now: float) -> int:
        """Forget the buckets whose every key's `until` is at or before `now`; how many keys."""
        dropped = 0
        for gen in [gen for gen, (_, latest, _) in self._generations.items() if latest <= now]:
            bucket = int(self._generations.pop(gen)[0])
            del self._buckets[bucket]
            for table in self._tables:
                if table is not None:
                    dropped += table.forget(gen)
            self._free.append(gen)
        return dropped

    def nbytes(self) -> int:
        """Bytes its tables hold (slots, kept or free)."""
        return sum(table.nbytes() for table in self._tables if table is not None)

    def __len__(self) -> int:
        return sum(table.live for table in self._tables if table is not None)

    def _generation(self, until: float) -> int:
        """The id of `until`'s bucket, made if new; counts one key more in it."""
        bucket = int(until // _BUCKET_S)
        gen = self._buckets.get(bucket)
        if gen is None:
            if self._free:
                gen = self._free.pop()
            elif len(self._generations) < _MAX_GENERATIONS:
                gen = len(self._generations) + 1
            else:  # every id in use: the latest bucket keeps it, for at least as long
                gen = self._buckets[max(self._buckets)]
                info = self._generations[gen]
                info[1], info[2] = max(info[1], until), info[2] + 1
                return gen
            self._buckets[bucket] = gen
            self._generations[gen] = [float(bucket), until, 1]
            return gen
        info = self._generations[gen]
        info[1] = max(info[1], until)
        info[2] += 1
        return gen

    def _drop_one(self, gen: int) -> None:
        """One key left bucket `gen` (moved to another): a bucket left empty is forgotten."""
        info = self._generations[gen]
        info[2] -= 1
        if not info[2]:
            del self._generations[gen]
            del self._buckets[int(info[0])]
            self._free.append(gen)
