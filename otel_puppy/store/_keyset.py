"""`KeySet`: the memory store's span keys, kept exactly in little memory.

`MemoryStore` remembers every span's key for the dedupe window (a day by default). As a dict of
`str` keys a million spans cost about 130 MB; here each key is its 120-bit digest, kept as a
16-byte record (the digest's last 14 bytes and a 16-bit expiry bucket) in one of a few thousand
`bytes` strings chosen by the digest's low bits (`Records`, `Partition`), so a million keys take
about 16 MB. Looking a key up is one `bytes.find` in C over the records of its string; keeping one
is one concatenation.

Strings of a few kilobytes, however many keys: `Partition` starts with 4,096 strings and, as keys
are added, splits one string in two each time the average passes `_LOAD` records (linear hashing),
so a lookup never scans more than a few kilobytes (a fixed 4,096 strings scanned about 40 KB each
at ten million keys, five times the work per key) and no split moves more than one string's
records. Not fewer, smaller strings: strings of a few hundred bytes live in Python's small-object
pools, one pool per size, and as every string grows by a record at a time the pools of the sizes
they grew out of stay held by the few strings still that small (65,536 strings of a few hundred
bytes held 11 MB of mostly empty pools and 4 MB of headers at a million keys); strings of a few
kilobytes are allocated by `malloc`, which coalesces what they free.

The digest is keyed BLAKE2b with a key drawn when the process starts: whoever writes span ids
cannot choose ones that pile into one string (each string stays about `_LOAD` records long).
Nothing keyed by it outlives the process (the memory store and a process's call index).

Exact up to a digest collision: two distinct keys share a 120-bit digest with probability about
n²/2^121 for n keys kept at once (4e-25 for a million, 4e-19 for a billion), far below any hardware
error rate; a collision would report one span as a duplicate of another. (120 bits, not 128: a
128-bit digest's record took a byte more, 2 MB at a million spans with their call keys, for a
probability that was already negligible.) No probabilistic filter:
a key never kept is never reported kept otherwise.

Expiry is by bucket: a key's `until` falls in a one-minute bucket, and the whole bucket is forgotten
by the first `expire(now)` at or after the latest `until` put in it. A key is therefore never
forgotten before its `until`, and at most a minute after it (every key of a batch has the same
`until`, so most buckets are forgotten exactly on time). An `expire` walks the strings once, however
many buckets it forgets, reading each string's bucket ids in C.
"""

from __future__ import annotations

import math
import os
import sys
from array import array
from collections.abc import Collection
from hashlib import blake2b
from typing import Final

__all__ = ("TAIL", "Buckets", "KeySet", "Partition", "Records", "digest")

_BUCKET_S: Final = 60.0
_MAX_GENERATIONS: Final = 0xFFFE
"""Buckets kept at once (ids 1 to 0xFFFE): 45 days of minutes. Past that a key joins the latest
bucket, which then lasts until its `until` (never shorter, see `Buckets.take`)."""
_ENDLESS: Final = -(2**62)
"""The bucket of an `until` that is no finite number: `dedupe_ttl_s=inf` (settings allow it) keeps a
span's key for ever, as the dicts of keys did (`int(inf // 60)` raised, and every span with it).
Its bucket expires by its latest `until` like any other: one of `inf` never."""
_FIRST_BITS: Final = 12
"""A partition starts with 2**12 strings (at least 2**8: the string's index holds the digest's first byte)."""
_LOAD: Final = 240
"""Records a partition's strings hold on average (about 4 KB of 16-byte records) before one more is split."""
_MAX_BITS: Final = 30
"""Strings stop being split at 2**30 (the index is read from the digest's first four bytes)."""
TAIL: Final = 14
"""Bytes of a digest a record starts with: all but the first, which the string's index holds (the
index's low 8 bits are the first byte; its higher bits, kept in the record too, split strings)."""
_FEW: Final = 4
"""Buckets `Records.forget` looks for by searching bytes; past that it reads every bucket id."""
_SWAP: Final = sys.byteorder != "little"
"""Records keep bucket ids little-endian; `array` reads them in the machine's order."""
_KEY: Final = os.urandom(16)
"""This process's digest key (see the module)."""


_HASHER: Final = blake2b(digest_size=1 + TAIL, key=_KEY)
"""Keyed once: a copy of it digests a key faster than keying anew."""


def digest(key: str) -> bytes:
    """`key`'s 120-bit keyed BLAKE2b digest (15 bytes); a key may hold any text a span sent (lone
    surrogates included)."""
    hasher = _HASHER.copy()
    hasher.update(key.encode("utf-8", "surrogatepass"))
    return hasher.digest()


class Partition:
    """Which string a digest's records are in, for the `Records` sharing it (a `CallIndex`'s three
    kinds of record share one: a key is looked for at one index in each). Linear hashing: the index
    is the low `bits` bits of the digest's first four bytes (little-endian), or one bit more for the
    strings split in this round (those below `split`). Once the records outgrow `load` a string on
    average, the next string's records are split in two by that bit, the new string appended (at its
    index, `split + 2**bits`); after 2**bits splits a round ends with `bits` one more. Not thread-safe."""

    __slots__ = ("bits", "limit", "live", "load", "members", "split")

    def __init__(self, bits: int = _FIRST_BITS, load: int = _LOAD) -> None:
        if not 8 <= bits <= _MAX_BITS or load < 1:
            raise ValueError(f"a partition starts with 2**8 to 2**{_MAX_BITS} strings of at least one record")
        self.bits = bits
        self.split = 0
        self.load = load
        self.live = 0
        """Records in its members."""
        self.limit = load << bits
        """Records past which one more string is split."""
        self.members: list[Records] = []

    @property
    def strings(self) -> int:
        return (1 << self.bits) + self.split

    def place(self, whole: bytes) -> tuple[int, bytes]:
        """The string the records of digest `whole` are in, and the tail they start with."""
        low = int.from_bytes(whole[:4], "little")
        index = low & ((1 << self.bits) - 1)
        if index < self.split:
            index = low & ((1 << (self.bits + 1)) - 1)
        return index, whole[1:]

    def added(self, count: int) -> None:
        """`count` records more (fewer, negative) in its members; a string split if they outgrew them."""
        self.live += count
        if self.live > self.limit and self.bits < _MAX_BITS:
            bit = self.bits
            for records in self.members:
                records.split(self.split, bit)
            self.split += 1
            if self.split == 1 << bit:
                self.bits, self.split = bit + 1, 0
            self.limit = self.load * self.strings


class Records:
    """Fixed-width records, each led by the last `TAIL` bytes of a 15-byte digest and a 16-bit bucket
    id (little-endian), in `bytes` strings chosen by the digest's low bits (`Partition.place`). Not
    thread-safe (the store's lock guards it); records of one digest may repeat (`CallIndex`)."""

    __slots__ = ("live", "partition", "strings", "width")

    def __init__(self, width: int, partition: Partition | None = None) -> None:
        self.width = width
        """Bytes a record: 16 (`TAIL` and the bucket), and what the caller keeps after them."""
        self.partition = partition if partition is not None else Partition()
        self.partition.members.append(self)
        self.strings: list[bytes] = [b""] * self.partition.strings
        self.live = 0

    def find(self, found: bytes, tail: bytes, at: int = 0) -> int:
        """Where in string `found` the next record of `tail` (a digest's last `TAIL` bytes) starts, from
        offset `at`; -1 if none."""
        width = self.width
        at = found.find(tail, at)
        while at > 0 and at % width:  # a match across two records, not the start of one
            at = found.find(tail, at + 1)
        return at

    def append(self, index: int, record: bytes) -> None:
        self.strings[index] += record
        self.live += 1
        self.partition.added(1)

    def replace(self, index: int, at: int, record: bytes) -> None:
        """Overwrite the record at offset `at` of string `index` (same width)."""
        found = self.strings[index]
        self.strings[index] = found[:at] + record + found[at + self.width :]

    def remove(self, index: int, at: int) -> None:
        found = self.strings[index]
        self.strings[index] = found[:at] + found[at + self.width :]
        self.live -= 1
        self.partition.live -= 1

    def split(self, index: int, bit: int) -> None:
        """Move the records of string `index` whose digest has `bit` set to a new string (appended):
        `Partition.added`. The digest's byte `bit // 8` (at least the second) is in the record."""
        found = self.strings[index]
        moved: list[bytes] = []
        if found:
            width, at, mask = self.width, bit // 8 - 1, 1 << (bit % 8)
            kept: list[bytes] = []
            for start in range(0, len(found), width):
                (moved if found[start + at] & mask else kept).append(found[start : start + width])
            if moved:
                self.strings[index] = b"".join(kept)
        self.strings.append(b"".join(moved))

    def forget(self, generations: Collection[int]) -> list[bytes]:
        """Take out every record of the buckets `generations`, in one walk over the strings however
        many buckets expire at once (after a pause longer than the window, hundreds do); the records
        taken. A string holds a record of a few buckets if `bytes.find` (in C) finds an id's two bytes
        at a record's bucket; of many, if its bucket ids, gathered by slicing and read as 16-bit
        integers (`array`), meet them."""
        gens = set(generations)
        if not gens:
            return []
        width = self.width
        patterns = [gen.to_bytes(2, "little") for gen in gens] if len(gens) <= _FEW else []
        strings = self.strings
        taken: list[bytes] = []
        for index, found in enumerate(strings):
            if not found:
                continue
            if patterns:
                for pattern in patterns:
                    at = found.find(pattern, TAIL)
                    while at != -1 and at % width != TAIL:  # the bytes inside a record, not its bucket
                        at = found.find(pattern, at + 1)
                    if at != -1:
                        break
                else:
                    continue
            else:
                low = found[TAIL::width]
                pairs = bytearray(2 * len(low))
                pairs[0::2] = low
                pairs[1::2] = found[TAIL + 1 :: width]
                ids = array("H", pairs)
                if _SWAP:
                    ids.byteswap()
                if gens.isdisjoint(ids):
                    continue
            kept: list[bytes] = []
            for start in range(0, len(found), width):
                record = found[start : start + width]
                (taken if int.from_bytes(record[TAIL : TAIL + 2], "little") in gens else kept).append(record)
            strings[index] = b"".join(kept)
        self.live -= len(taken)
        self.partition.live -= len(taken)
        return taken

    def nbytes(self) -> int:
        """Bytes of records (the strings' own headers, about 40 bytes each, come on top)."""
        return self.live * self.width


class Buckets:
    """Expiry buckets: a kept item's `until` falls in a one-minute bucket, and the bucket (every item
    in it) is forgotten by the first `expired(now)` at or after the latest `until` put in it. Items
    are counted per bucket, so a bucket left empty frees its id at once. Each bucket has a small id
    (1 to `_MAX_GENERATIONS`) that records keep (a 16-bit generation)."""

    __slots__ = ("_buckets", "_free", "_generations", "_last", "_newest")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        """Bucket (minute of `until`) -> its id in the tables."""
        self._generations: dict[int, list[float]] = {}
        """Bucket id -> [its bucket, the latest `until` put in it, how many items it holds]."""
        self._free: list[int] = []
        """Ids free again, once their bucket expired (reused before new ones)."""
        self._newest: tuple[int, int] | None = None
        """(bucket, id) of the latest bucket, once asked for: no bucket made since is later, so
        while its bucket is kept it is the latest (every id in use, each `take` asks for it)."""
        self._last: tuple[float, int, list[float]] | None = None
        """The `until` last taken, the id it was given and that id's entry in `_generations`, while the
        id is in use: a batch's keys mostly share one `until`."""

    def take(self, until: float) -> int:
        """The id of `until`'s bucket, made if new; counts one item more in it."""
        last = self._last
        if last is not None and last[0] == until:  # its latest `until` is at least this one already
            last[2][2] += 1
            return last[1]
        bucket = int(until // _BUCKET_S) if math.isfinite(until) else _ENDLESS
        gen = self._buckets.get(bucket)
        if gen is None:
            if self._free:
                gen = self._free.pop()
            elif len(self._generations) < _MAX_GENERATIONS:
                gen = len(self._generations) + 1
            else:  # every id in use: the latest bucket keeps it, for at least as long
                newest = self._newest
                if newest is None or self._buckets.get(newest[0]) != newest[1]:
                    latest = max(self._buckets)  # once per latest bucket, not per key
                    newest = self._newest = (latest, self._buckets[latest])
                gen = newest[1]
                info = self._generations[gen]
                info[1], info[2] = max(info[1], until), info[2] + 1
                self._last = (until, gen, info)
                return gen
            newest = self._newest
            if newest is not None and bucket > newest[0]:
                self._newest = (bucket, gen)
            self._buckets[bucket] = gen
            info = self._generations[gen] = [float(bucket), until, 1]
            self._last = (until, gen, info)
            return gen
        info = self._generations[gen]
        info[1] = max(info[1], until)
        info[2] += 1
        self._last = (until, gen, info)
        return gen

    def add(self, gen: int, count: int) -> None:
        """`count` items more in bucket `gen` (moved there from another)."""
        self._generations[gen][2] += count

    def drop(self, gen: int, count: int = 1) -> None:
        """`count` items left bucket `gen` (moved or taken out): a bucket left empty is forgotten."""
        info = self._generations[gen]
        info[2] -= count
        if not info[2]:
            del self._generations[gen]
            del self._buckets[int(info[0])]
            self._free.append(gen)
            self._last = None

    def bucket(self, gen: int) -> float:
        """The minute bucket `gen` is the id of: buckets compare by it, not by id."""
        return self._generations[gen][0]

    def latest(self, gen: int) -> float:
        """The latest `until` put in bucket `gen`: it is forgotten at or after it."""
        return self._generations[gen][1]

    def expired(self, now: float) -> list[int]:
        """Forget the buckets whose latest `until` is at or before `now`; their ids (free again:
        the caller forgets their items before it takes any new one)."""
        gens = [gen for gen, (_, latest, _) in self._generations.items() if latest <= now]
        if gens:
            self._last = None
        for gen in gens:
            del self._buckets[int(self._generations.pop(gen)[0])]
            self._free.append(gen)
        return gens


class KeySet:
    """Keys (strings) each kept until its own time, by 120-bit digest (see the module); not
    thread-safe (the store's lock guards it).

    >>> keys = KeySet()
    >>> keys.add("a", until=120.0), keys.add("a", until=180.0), "a" in keys, "b" in keys
    (True, False, True, False)
    >>> keys.expire(119.0), keys.expire(120.0), "a" in keys
    (0, 1, False)
    """

    __slots__ = ("_buckets", "_records")

    def __init__(self, partition: Partition | None = None) -> None:
        self._records = Records(TAIL + 2, partition)
        self._buckets = Buckets()

    def __contains__(self, key: str) -> bool:
        return self.has(digest(key))

    def has(self, whole: bytes) -> bool:
        """Whether the key of digest `whole` is kept."""
        records = self._records
        index, tail = records.partition.place(whole)
        found = records.strings[index]
        return bool(found) and records.find(found, tail) >= 0

    def add(self, key: str, until: float) -> bool:
        """Keep `key` until `until`, unless it is kept already (then nothing changes); whether it was new."""
        return self.add_digest(digest(key), until)

    def add_digest(self, whole: bytes, until: float) -> bool:
        """`add` by the key's digest."""
        records = self._records
        index, tail = records.partition.place(whole)
        found = records.strings[index]
        if found and records.find(found, tail) >= 0:
            return False
        records.append(index, tail + self._buckets.take(until).to_bytes(2, "little"))
        return True

    def put(self, key: str, until: float) -> None:
        """Keep `key` until `until`, whether it was kept or not (a dict's `keys[key] = until`)."""
        self.put_digest(digest(key), until)

    def put_digest(self, whole: bytes, until: float) -> None:
        """`put` by the key's digest."""
        records = self._records
        index, tail = records.partition.place(whole)
        found = records.strings[index]
        at = records.find(found, tail) if found else -1
        gen = self._buckets.take(until)
        record = tail + gen.to_bytes(2, "little")
        if at < 0:
            records.append(index, record)
            return
        old = int.from_bytes(found[at + TAIL : at + TAIL + 2], "little")
        records.replace(index, at, record)
        self._buckets.drop(old)

    def expire(self, now: float) -> int:
        """Forget the buckets whose every key's `until` is at or before `now`; how many keys."""
        return len(self._records.forget(self._buckets.expired(now)))

    def nbytes(self) -> int:
        """Bytes of its records."""
        return self._records.nbytes()

    def __len__(self) -> int:
        return self._records.live
