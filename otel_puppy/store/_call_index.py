"""`CallIndex`: the call keys of applied spans, kept exactly in little memory.

`MemoryStore` (and `SQLiteStore` per process) keeps every applied span's `CallKey`s for an hour
(`call_identity.CALL_KEYS_TTL_S`). As a dict of `CallKey` named tuples that cost about 250 bytes a
span; here a span is one slot of open-addressing tables of plain arrays, by the 128-bit blake2b
digest of its key (as `KeySet` keeps span keys): the digest, a 16-bit expiry bucket and the span's
source (an interned id, with its `identified` bit), and its start and end only when it has a time.
A response id's key (any time: start 0, end `CEILING`) takes 22 bytes a slot, about 32 a span at
the tables' load; a key with a time 38 bytes a slot.

Exact up to a digest collision (two distinct keys share a 128-bit digest with probability about
n²/2^129 for n keys kept at once: 3e-27 for a million): a collision would let one call's span be
compared with another's kept spans under the rules of `CallKey` (times overlapping, sources
differing), which could then report it as nested. No probabilistic filter: a span never kept is
never joined.

A key may hold several spans (up to `MAX_CALL_SPANS`, those ending last): each is a slot of its own
under the same digest, found by walking its probe sequence. Every span of a key is in the key's
expiry bucket, the bucket of the latest `until` any of them was kept until, so a key's spans are
forgotten together; a bucket is a minute (`_keyset.Buckets`), so a key is forgotten never before
its `until` and at most a minute after it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from hashlib import blake2b
from typing import Final

from otel_puppy.store._keyset import (
    _EMPTY,
    _FULL,
    _GONE,
    _SHARD_SHIFT,
    _SHARDS,
    _SPARSE,
    Buckets,
    _prime_at_least,
    _unpack,
)
from otel_puppy.store.base import CEILING, MAX_CALL_SPANS, CallKey

__all__ = ("CallIndex",)

_INT64: Final = (-(2**63), 2**63 - 1)
_Span = tuple[bool, int, int, str, int, float]
"""A kept span, as `restore` puts it back: whether it has a time, its start and end, its source,
its `identified` bit, and the latest `until` of the bucket it was in."""
_Undo = tuple[int, int, tuple[_Span, ...]]
"""How to take back one key's `keep`: its digest and the spans it held before."""


def _digest(key: str) -> tuple[int, int]:
    """`key`'s 128-bit blake2b digest as (high, low) 64-bit halves, never (0, 0); a key may hold any
    text a span sent (lone surrogates included)."""
    low, high = _unpack(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest())
    return (high, low) if high or low else (0, 1)


class _Spans:
    """One shard of spans of one kind (with a time or without): an open-addressing table with double
    hashing (start at `low % capacity`, step `1 + high % (capacity - 1)`) holding a slot per span, so
    a digest may fill several slots of its probe sequence."""

    __slots__ = ("capacity", "end", "filled", "generation", "high", "live", "low", "meta", "start")

    def __init__(self, capacity: int, timed: bool) -> None:
        self.capacity = capacity
        self.high = array("Q", bytes(8 * capacity))
        self.low = array("Q", bytes(8 * capacity))
        self.generation = array("H", bytes(2 * capacity))
        """Per slot: `_EMPTY`, `_GONE`, or the id of the bucket its key expires with."""
        self.meta = array("I", bytes(4 * capacity))
        """Per slot: its source's id, shifted left by one, or-ed with `identified`."""
        self.start: array[int] | None = array("q", bytes(8 * capacity)) if timed else None
        self.end: array[int] | None = array("q", bytes(8 * capacity)) if timed else None
        self.live = 0
        self.filled = 0
        """Live slots and tombstones: what probing has to walk past."""

    def slots(self, high: int, low: int) -> list[int]:
        """The slots holding spans of the digest."""
        capacity, generation, highs, lows = self.capacity, self.generation, self.high, self.low
        slot = low % capacity
        step = 1 + high % (capacity - 1)
        found = []
        while (g := generation[slot]) != _EMPTY:
            if g != _GONE and lows[slot] == low and highs[slot] == high:
                found.append(slot)
            slot = (slot + step) % capacity
        return found

    def times(self, slot: int) -> tuple[int, int]:
        """The start and end of the span in `slot`."""
        if self.start is None or self.end is None:
            return 0, CEILING
        return self.start[slot], self.end[slot]

    def insert(self, high: int, low: int, gen: int, *, meta: int, start: int = 0, end: int = CEILING) -> None:
        """Put one more span of the digest."""
        if self.filled + 1 > _FULL * self.capacity:
            self._rebuild(int((self.live + 1) / _SPARSE) + 1)
        capacity, generation = self.capacity, self.generation
        slot = low % capacity
        step = 1 + high % (capacity - 1)
        while (g := generation[slot]) != _EMPTY and g != _GONE:
            slot = (slot + step) % capacity
        if g == _EMPTY:
            self.filled += 1
        self.high[slot], self.low[slot], generation[slot], self.meta[slot] = high, low, gen, meta
        if self.start is not None and self.end is not None:
            self.start[slot], self.end[slot] = start, end
        self.live += 1

    def remove(self, slot: int) -> None:
        """Make one slot a tombstone (its bucket and source are the caller's to count)."""
        self.generation[slot] = _GONE
        self.live -= 1

    def forget(self, gen: int, refs: list[int], unused: list[int]) -> int:
        """Make every slot of bucket `gen` a tombstone, counting their sources out of `refs` (a
        source no slot holds any more into `unused`); how many there were."""
        if not self.live:
            return 0
        pattern = array("H", (gen,)).tobytes()
        data = self.generation.tobytes()  # searched in C: only the bucket's own slots are visited
        generation, meta = self.generation, self.meta
        dropped = 0
        at = data.find(pattern)
        while at != -1:
            if not at & 1:  # a whole 16-bit slot, not the halves of two
                slot = at >> 1
                generation[slot] = _GONE
                source = meta[slot] >> 1
                if source:
                    refs[source] -= 1
                    if not refs[source]:
                        unused.append(source)
                dropped += 1
                at = data.find(pattern, at + 2)
            else:
                at = data.find(pattern, at + 1)
        self.live -= dropped
        if self.live < self.filled * (1 - _SPARSE) and self.capacity > 16:  # mostly tombstones: smaller
            self._rebuild(int(self.live / _SPARSE) + 1)
        return dropped

    def _rebuild(self, capacity: int) -> None:
        old = (self.high, self.low, self.generation, self.meta)
        starts, ends = self.start, self.end
        self.__init__(_prime_at_least(capacity), starts is not None)  # type: ignore[misc]
        for slot, (high, low, gen, meta) in enumerate(zip(*old, strict=True)):
            if gen not in {_EMPTY, _GONE}:
                start, end = (starts[slot], ends[slot]) if starts is not None and ends is not None else (0, CEILING)
                self.insert(high, low, gen, meta=meta, start=start, end=end)

    def nbytes(self) -> int:
        return self.capacity * (38 if self.start is not None else 22)


class CallIndex:
    """The call keys of applied spans, in memory: how `MemoryStore`, and `SQLiteStore` per process,
    recognise spans of one call that are not parent and child (`SpendRecord.call_keys`). Not
    thread-safe (the store's lock guards it).

    Per key, the spans kept (the `MAX_CALL_SPANS` that end last) until the latest `until` of them
    (and at most a minute more, see the module).

    >>> index = CallIndex()
    >>> index.keep((CallKey("k", 100, 200, "A"),), until=60.0)
    >>> index.joins((CallKey("k", 150, 300, "B"),)), index.joins((CallKey("k", 150, 300, "A"),))
    (True, False)
    """

    __slots__ = ("_buckets", "_refs", "_source_ids", "_sources", "_timed", "_timeless", "_unused")

    def __init__(self) -> None:
        self._timeless: list[_Spans | None] = [None] * _SHARDS
        """Spans of any time (start 0, end `CEILING`: a response id's), per shard of digests."""
        self._timed: list[_Spans | None] = [None] * _SHARDS
        self._buckets = Buckets()
        self._sources: list[str] = [""]
        """Source id -> source; id 0 is `""` (matches any), never counted or freed."""
        self._source_ids: dict[str, int] = {"": 0}
        self._refs: list[int] = [0]
        """Per source id, the slots holding it: a source no slot holds is forgotten (its id reused)."""
        self._unused: list[int] = []
        """Source ids free again."""

    def joins(self, keys: Iterable[CallKey]) -> bool:
        """Whether any of `keys` describes the call of a kept span (see `CallKey`)."""
        for key in keys:
            high, low = _digest(key.key)
            shard = high >> _SHARD_SHIFT
            source = self._source_ids.get(key.source, -1)  # -1: no kept span has it
            for table in (self._timeless[shard], self._timed[shard]):
                if table is None:
                    continue
                meta = table.meta
                for slot in table.slots(high, low):
                    kept_start, kept_end = table.times(slot)
                    kept = meta[slot]
                    if (
                        kept_start <= key.end
                        and key.start <= kept_end
                        and (kept < 2 or not source or kept >> 1 != source)
                        and not (kept & 1 and key.identified)
                    ):
                        return True
        return False

    def keep(self, keys: Iterable[CallKey], until: float, undo: list[_Undo] | None = None) -> None:
        """Keep `keys` until `until` (or the latest time one of their key already had). With `undo`,
        append what `restore` needs to take this back (a transaction that may not commit)."""
        buckets = self._buckets
        for key in keys:
            high, low = _digest(key.key)
            shard = high >> _SHARD_SHIFT
            found = self._find(shard, high, low)
            if undo is not None:
                undo.append((high, low, tuple(self._span(table, slot) for table, slot in found)))
            gen = buckets.take(until)
            if found:
                table, slot = found[0]
                held = table.generation[slot]  # every span of the key is in the key's bucket
                if held != gen:
                    if buckets.bucket(gen) > buckets.bucket(held):  # a later bucket: all move to it
                        for table, slot in found:
                            table.generation[slot] = gen
                        buckets.add(gen, len(found))
                        buckets.drop(held, len(found))
                    else:
                        buckets.drop(gen)
                        buckets.add(held, 1)
                        gen = held
                if len(found) >= MAX_CALL_SPANS:  # room for the span that ends last
                    order = [(self._order(table, slot), table, slot) for table, slot in found]
                    first, table, slot = min(order, key=lambda item: item[0])
                    if (key.end, key.start, key.source, key.identified) < first:  # the new one goes
                        buckets.drop(gen)
                        continue
                    self._remove(table, slot)
            start, end = key.start, key.end
            timed = start != 0 or end != CEILING
            tables = self._timed if timed else self._timeless
            table = tables[shard] or _Spans(_prime_at_least(3), timed)
            tables[shard] = table
            if timed:
                start, end = min(max(start, _INT64[0]), _INT64[1]), min(max(end, _INT64[0]), _INT64[1])
            table.insert(high, low, gen, meta=self._source(key.source) << 1 | key.identified, start=start, end=end)

    def restore(self, undo: list[_Undo]) -> None:
        """Take back the `keep` calls that filled `undo`, latest first."""
        for high, low, spans in reversed(undo):
            shard = high >> _SHARD_SHIFT
            for table, slot in self._find(shard, high, low):
                self._remove(table, slot)
            for timed, start, end, source, identified, latest in spans:
                tables = self._timed if timed else self._timeless
                table = tables[shard] or _Spans(_prime_at_least(3), timed)
                tables[shard] = table
                meta = self._source(source) << 1 | identified
                table.insert(high, low, self._buckets.take(latest), meta=meta, start=start, end=end)

    def expire(self, now: float) -> int:
        """Forget the keys whose time has passed; how many spans were kept under them."""
        dropped = 0
        unused: list[int] = []
        refs = self._refs
        for gen in self._buckets.expired(now):
            for table in (*self._timeless, *self._timed):
                if table is not None:
                    dropped += table.forget(gen, refs, unused)
        for source in unused:
            del self._source_ids[self._sources[source]]
            self._sources[source] = ""
            self._unused.append(source)
        return dropped

    def nbytes(self) -> int:
        """Bytes its tables hold (slots, kept or free)."""
        return sum(table.nbytes() for table in (*self._timeless, *self._timed) if table is not None)

    def __len__(self) -> int:
        """Spans kept."""
        return sum(table.live for table in (*self._timeless, *self._timed) if table is not None)

    def _find(self, shard: int, high: int, low: int) -> list[tuple[_Spans, int]]:
        """Every kept span of the digest: its table and slot."""
        return [
            (table, slot)
            for table in (self._timeless[shard], self._timed[shard])
            if table is not None
            for slot in table.slots(high, low)
        ]

    def _span(self, table: _Spans, slot: int) -> _Span:
        meta = table.meta[slot]
        start, end = table.times(slot)
        latest = self._buckets.latest(table.generation[slot])
        return (table.start is not None, start, end, self._sources[meta >> 1], meta & 1, latest)

    def _order(self, table: _Spans, slot: int) -> tuple[int, int, str, bool]:
        """Which span of a key is let go first: the one ending first (as `CallKey`s sort, by end)."""
        _, start, end, source, identified, _ = self._span(table, slot)
        return (end, start, source, bool(identified))

    def _remove(self, table: _Spans, slot: int) -> None:
        source = table.meta[slot] >> 1
        self._buckets.drop(table.generation[slot])
        table.remove(slot)
        if source:
            self._refs[source] -= 1
            if not self._refs[source]:
                del self._source_ids[self._sources[source]]
                self._sources[source] = ""
                self._unused.append(source)

    def _source(self, source: str) -> int:
        """`source`'s id, interned if new; counts one slot more holding it."""
        if not source:
            return 0
        found = self._source_ids.get(source)
        if found is None:
            if self._unused:
                found = self._unused.pop()
                self._sources[found] = source
            else:
                found = len(self._sources)
                self._sources.append(source)
                self._refs.append(0)
            self._source_ids[source] = found
        self._refs[found] += 1
        return found
