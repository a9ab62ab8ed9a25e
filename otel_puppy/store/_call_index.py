"""`CallIndex`: the call keys of applied spans, kept exactly in little memory.

`MemoryStore` (and `SQLiteStore` per process) keeps every applied span's `CallKey`s for an hour
(`call_identity.CALL_KEYS_TTL_S`). As a dict of `CallKey` named tuples that cost about 250 bytes a
span. Here a key that one span holds (nearly every key: a response id names one call) is a
fixed-width record under the key's 120-bit digest, in `_keyset.Records`: the digest, a 16-bit
expiry bucket, then the span's source (an interned id, with its `identified` bit) unless it has
none, then its start and end only when it has a time. A response id's key (any time: start 0, end
`CEILING`) takes 16 bytes without a source and 20 with one, a key with a time 36. Looking a key up
is a `bytes.find` in C, keeping it a concatenation.

A key a second span comes to hold moves to a dict by its digest, with its spans in order of end
(`_Kept`, the `MAX_CALL_SPANS` that end last), kept until the latest `until` of them: such keys are
few (the spans of one call that agree on their usage), and each is looked up as a dict key.

Exact up to a digest collision (two distinct keys share a 120-bit digest with probability about
n²/2^121 for n keys kept at once: 4e-25 for a million): a collision would let one call's span be
compared with another's kept spans under the rules of `CallKey` (times overlapping, sources
differing), which could then report it as nested. No probabilistic filter: a span never kept is
never joined.

A record expires with its bucket (a minute, `_keyset.Buckets`): never before its `until` and at
most a minute after it.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Final

from otel_puppy.store._keyset import TAIL, Buckets, Partition, Records, digest
from otel_puppy.store.base import CEILING, MAX_CALL_SPANS, CallKey

__all__ = ("CallIndex",)

_INT64: Final = (-(2**63), 2**63 - 1)
_BARE: Final = TAIL + 2
"""A record of a key with any time and no source (nor `identified`): digest tail and bucket (2)."""
_TIMELESS: Final = _BARE + 4
"""A record of a key with any time: ... and its source id and `identified` (4)."""
_TIMED: Final = _TIMELESS + 16
"""... and its start and end (8 each, signed)."""
_Undo = tuple[str, bytes, "CallKey | None", "CallKey | None", float]
"""How to take back one key's `keep`: what it did (`new` record, added to `many` spans, or made a
single record `two`), the key's digest, the span it added (or the single span it moved) and the one
it let go, and the `until` the key had before."""


def _joins(kept: CallKey, key: CallKey) -> bool:
    """Whether `key` and a kept span's `kept` describe one call (see `CallKey`)."""
    return (
        kept.start <= key.end
        and key.start <= kept.end
        and (not kept.source or not key.source or kept.source != key.source)
        and not (kept.identified and key.identified)
    )


class _Kept:
    """The spans kept under one key when there are several, in order of end time (each with its end
    first, so the list sorts and bisects natively)."""

    __slots__ = ("sources", "spans", "until")

    def __init__(self, first: CallKey, until: float) -> None:
        self.spans: list[tuple[int, CallKey]] = [(first.end, first)]
        self.sources = {first.source}
        """Every source kept so far (never shrinks): a key only one instrumentation ever wrote joins nothing of it."""
        self.until = until

    def joins(self, key: CallKey) -> bool:
        # Only the spans ending at or after `key.start` can overlap it.
        sources = self.sources
        if key.source and len(sources) == 1 and key.source in sources:
            return False
        spans = self.spans
        return any(_joins(kept, key) for _, kept in spans[bisect_left(spans, (key.start,)) :])

    def keep(self, key: CallKey) -> CallKey | None:
        """Keep `key`; the span let go to make room for it, if any. (`sources` is not taken back with
        it: a source too many only makes `joins` look at the spans.)"""
        spans = self.spans
        insort(spans, (key.end, key))
        self.sources.add(key.source)
        if len(spans) > MAX_CALL_SPANS:
            return spans.pop(0)[1]
        return None


def _bucket(records: Records, index: int, at: int) -> int:
    """The bucket id of the record at offset `at` of string `index`."""
    return int.from_bytes(records.strings[index][at + TAIL : at + _BARE], "little")


class CallIndex:
    """The call keys of applied spans, in memory: how `MemoryStore`, and `SQLiteStore` per process,
    recognise spans of one call that are not parent and child (`SpendRecord.call_keys`). Not
    thread-safe (the store's lock guards it).

    Per key, the spans kept (the `MAX_CALL_SPANS` that end last) until the latest `until` of them
    (a key of one span: at most a minute more, see the module).

    >>> index = CallIndex()
    >>> index.keep((CallKey("k", 100, 200, "A"),), until=60.0)
    >>> index.joins((CallKey("k", 150, 300, "B"),)), index.joins((CallKey("k", 150, 300, "A"),))
    (True, False)
    """

    __slots__ = (
        "_bare",
        "_buckets",
        "_many",
        "_refs",
        "_source_ids",
        "_sources",
        "_timed",
        "_timeless",
        "_unused",
    )

    def __init__(self, partition: Partition | None = None) -> None:
        if partition is None:  # one index in all three kinds of record: `_single` looks once
            partition = Partition()
        self._bare = Records(_BARE, partition)
        """Keys of one span of any time and no source (not `identified`): a response id's, when the
        span names no instrumentation."""
        self._timeless = Records(_TIMELESS, partition)
        """Keys of one span of any time (start 0, end `CEILING`: a response id's)."""
        self._timed = Records(_TIMED, partition)
        """Keys of one span with a time."""
        self._many: dict[bytes, _Kept] = {}
        """Keys of several spans, by digest."""
        self._buckets = Buckets()
        self._sources: list[str] = [""]
        """Source id -> source; id 0 is `""` (matches any), never counted or freed."""
        self._source_ids: dict[str, int] = {"": 0}
        self._refs: list[int] = [0]
        """Per source id, the records holding it: a source none holds is forgotten (its id reused)."""
        self._unused: list[int] = []
        """Source ids free again."""

    def joins(self, keys: Sequence[CallKey], digests: Sequence[bytes] | None = None) -> bool:
        """Whether any of `keys` describes the call of a kept span (see `CallKey`); `digests`: their
        keys' digests (`_keyset.digest`), if the caller has them."""
        for i, key in enumerate(keys):
            whole = digests[i] if digests is not None else digest(key.key)
            many = self._many.get(whole)
            if many is not None:
                if many.joins(key):
                    return True
                continue
            single = self._single(whole)
            if single is not None and _joins(self._decode(key.key, *single), key):
                return True
        return False

    def keep(
        self,
        keys: Sequence[CallKey],
        until: float,
        undo: list[_Undo] | None = None,
        digests: Sequence[bytes] | None = None,
    ) -> None:
        """Keep `keys` until `until` (or the latest time one of their key already had). With `undo`,
        append what `restore` needs to take this back (a transaction that may not commit)."""
        for i, key in enumerate(keys):
            whole = digests[i] if digests is not None else digest(key.key)
            many = self._many.get(whole)
            self._keep(whole, key, until, many, None if many is not None else self._single(whole), undo=undo)

    def recognises(self, keys: Sequence[CallKey], until: float, *, keep: bool, undo: list[_Undo] | None = None) -> bool:
        """How a store applies a span's `keys`: whether they describe a kept span's call (`joins`); with
        `keep`, kept until `until` when they do not (`joins_else_keep`, `undo` as there). A span that
        reported no usage (`SpendRecord.weak`) is only recognised: it keeps nothing. Each key is
        digested once, for both."""
        digests = [digest(key.key) for key in keys]
        return self.joins_else_keep(keys, digests, until, undo) if keep else self.joins(keys, digests)

    def joins_else_keep(
        self, keys: Sequence[CallKey], digests: Sequence[bytes], until: float, undo: list[_Undo] | None = None
    ) -> bool:
        """`joins(keys, digests)`; if not, `keep(keys, until, undo, digests)` too, with the spans each
        key holds looked up once for both.

        Keys of distinct digests (every span's: a response id's key and an agreement's) are taken one
        at a time, each kept as soon as it is found joining nothing, and the keeps taken back should a
        later key join (`restore`): keys of distinct digests never see each other's spans, so that is
        the answer and the index of looking at all before keeping any, each key placed once."""
        if len(keys) == 1:  # most spans: one key
            return self._joins_else_keep(keys[0], digests[0], until, undo)
        if len(set(digests)) == len(digests):
            taken: list[_Undo] = []
            for key, whole in zip(keys, digests, strict=True):
                if self._joins_else_keep(key, whole, until, taken):
                    self.restore(taken)
                    return True
            if undo is not None:
                undo += taken
            return False
        if self.joins(keys, digests):  # keys of one digest: each keep sees the one before
            return True
        self.keep(keys, until, undo, digests)
        return False

    def _joins_else_keep(self, key: CallKey, whole: bytes, until: float, undo: list[_Undo] | None) -> bool:
        """`joins_else_keep` of one key of digest `whole`: its string placed once for both."""
        many = self._many.get(whole)
        if many is not None:
            if many.joins(key):
                return True
            self._keep(whole, key, until, many, None, undo=undo)
            return False
        index, tail = self._bare.partition.place(whole)
        single = self._single_at(index, tail)
        if single is not None:
            if _joins(self._decode(key.key, *single), key):
                return True
            self._keep(whole, key, until, None, single, undo=undo)
            return False
        self._append_at(index, tail, key, self._buckets.take(until))
        if undo is not None:
            undo.append(("new", whole, key, None, until))
        return False

    def _keep(
        self,
        whole: bytes,
        key: CallKey,
        until: float,
        many: _Kept | None,
        single: tuple[Records, int, int] | None,
        *,
        undo: list[_Undo] | None,
    ) -> None:
        """`keep` one key of digest `whole`, whose spans kept are `many`, else `single` (`_single`)."""
        if many is not None:
            before = many.until
            dropped = many.keep(key)
            many.until = max(before, until)
            if undo is not None:
                undo.append(("many", whole, key, dropped, before))
            return
        if single is None:
            self._append(whole, key, self._buckets.take(until))
            if undo is not None:
                undo.append(("new", whole, key, None, until))
            return
        first = self._decode(key.key, *single)
        before = self._buckets.latest(_bucket(*single))
        self._remove(*single)
        many = self._many[whole] = _Kept(first, max(before, until))
        many.keep(key)
        if undo is not None:
            undo.append(("two", whole, first, None, before))

    def restore(self, undo: list[_Undo]) -> None:
        """Take back the `keep` calls that filled `undo`, latest first."""
        for kind, whole, key, dropped, before in reversed(undo):
            assert key is not None
            if kind == "new":
                single = self._single(whole)
                assert single is not None
                self._remove(*single)
            elif kind == "many":
                many = self._many[whole]
                many.until = before
                if dropped is key:  # it was let go at once: nothing else changed
                    continue
                many.spans.remove((key.end, key))
                if dropped is not None:
                    insort(many.spans, (dropped.end, dropped))
            else:  # "two": back to the one span it held
                del self._many[whole]
                self._append(whole, key, self._buckets.take(before))

    def expire(self, now: float) -> int:
        """Forget the keys whose time has passed; how many spans were kept under them."""
        dropped = 0
        refs, unused = self._refs, []
        gens = self._buckets.expired(now)
        dropped += len(self._bare.forget(gens))
        for records in (self._timeless, self._timed):
            for record in records.forget(gens):
                source = int.from_bytes(record[_BARE:_TIMELESS], "little") >> 1
                if source:
                    refs[source] -= 1
                    if not refs[source]:
                        unused.append(source)
                dropped += 1
        for source in unused:
            self._free_source(source)
        many = self._many
        stale = [whole for whole, kept in many.items() if kept.until <= now]
        for whole in stale:
            dropped += len(many.pop(whole).spans)
        return dropped

    def nbytes(self) -> int:
        """Bytes its records hold, and about 200 a span of the keys several spans hold."""
        held = self._bare.nbytes() + self._timeless.nbytes() + self._timed.nbytes()
        return held + 200 * sum(len(kept.spans) for kept in self._many.values())

    def __len__(self) -> int:
        """Spans kept."""
        held = self._bare.live + self._timeless.live + self._timed.live
        return held + sum(len(kept.spans) for kept in self._many.values())

    def _single(self, whole: bytes) -> tuple[Records, int, int] | None:
        """Where the one span a key holds is: its records, string and offset; None if none."""
        return self._single_at(*self._bare.partition.place(whole))

    def _single_at(self, index: int, tail: bytes) -> tuple[Records, int, int] | None:
        """`_single` of the digest `Partition.place` put at string `index` with `tail`."""
        for records in (self._bare, self._timeless, self._timed):
            found = records.strings[index]
            if found:
                at = records.find(found, tail)
                if at >= 0:
                    return records, index, at
        return None

    def _decode(self, key: str, records: Records, index: int, at: int) -> CallKey:
        """The span of a record, as the `CallKey` it was kept as (named `key`)."""
        if records is self._bare:
            return CallKey(key, 0, CEILING, "", False)
        found = records.strings[index]
        meta = int.from_bytes(found[at + _BARE : at + _TIMELESS], "little")
        if records is self._timeless:
            start, end = 0, CEILING
        else:
            start = int.from_bytes(found[at + _TIMELESS : at + _TIMELESS + 8], "little", signed=True)
            end = int.from_bytes(found[at + _TIMELESS + 8 : at + _TIMED], "little", signed=True)
        return CallKey(key, start, end, self._sources[meta >> 1], bool(meta & 1))

    def _append(self, whole: bytes, key: CallKey, gen: int) -> None:
        self._append_at(*self._bare.partition.place(whole), key, gen)

    def _append_at(self, index: int, tail: bytes, key: CallKey, gen: int) -> None:
        """`_append` of the digest `Partition.place` put at string `index` with `tail`."""
        record = tail + gen.to_bytes(2, "little")
        start, end = key.start, key.end
        timeless = start == 0 and end == CEILING
        if timeless and not key.source and not key.identified:
            self._bare.append(index, record)
            return
        record += (self._source(key.source) << 1 | key.identified).to_bytes(4, "little")
        if timeless:
            self._timeless.append(index, record)
            return
        start, end = min(max(start, _INT64[0]), _INT64[1]), min(max(end, _INT64[0]), _INT64[1])
        record += start.to_bytes(8, "little", signed=True) + end.to_bytes(8, "little", signed=True)
        self._timed.append(index, record)

    def _remove(self, records: Records, index: int, at: int) -> None:
        self._buckets.drop(_bucket(records, index, at))
        found = records.strings[index]
        source = 0 if records is self._bare else int.from_bytes(found[at + _BARE : at + _TIMELESS], "little") >> 1
        records.remove(index, at)
        if source:
            self._refs[source] -= 1
            if not self._refs[source]:
                self._free_source(source)

    def _free_source(self, source: int) -> None:
        del self._source_ids[self._sources[source]]
        self._sources[source] = ""
        self._unused.append(source)

    def _source(self, source: str) -> int:
        """`source`'s id, interned if new; counts one record more holding it."""
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
