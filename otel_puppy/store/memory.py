"""In-memory store: one lock, dicts of integers. The library default.

Calendar windows keep one counter per (scope, window, bucket start), the counters of a bucket in
one `array` (24 bytes a counter). Rolling windows keep a ring
of 61 sub-buckets per (scope, window) with a running total, so reading a trailing 24 hours is
O(1) rather than a sum over 61 counters; a ring holds only the sub-buckets from its oldest written
one still counting to its newest, in one `array` (24 bytes a sub-bucket).

Span keys (`KeySet`) and call keys (`CallIndex`) are 120-bit digests in fixed-width records, 16
and 16 to 36 bytes a span, instead of dicts of strings (about 380 bytes a span): a million spans in
the dedupe window take about 32 MB (`bench/bench_memory.py`).

Counts saturate at `CEILING` (see `store.base`): a calendar counter and each sub-bucket stop there;
a ring's running total is the exact sum of its sub-buckets (at most 61 times the ceiling, in an
int64) and reads as the ceiling above it; a scope's reserved total is exact and reads likewise.
"""

from __future__ import annotations

import heapq
import math
import struct
import threading
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import add, itemgetter
from typing import TYPE_CHECKING, Any, Final

from otel_puppy.exceptions import StoreError
from otel_puppy.forward.queue import ForwardQueue, MemoryQueue
from otel_puppy.ledger import COUNTS, MAX_LEDGER_ROWS, MEMORY_LEDGER_DAYS, OTHER_DIMS
from otel_puppy.store._call_index import CallIndex
from otel_puppy.store._keyset import KeySet, digest
from otel_puppy.store.base import (
    CEILING,
    EXPIRED,
    MAX_OUTCOMES,
    MAX_SAMPLE_KEYS,
    MAX_SAMPLES,
    RELEASED,
    SETTLED,
    Admission,
    Admitted,
    ApplyResult,
    BudgetCheck,
    CheckState,
    Counter,
    Increment,
    Outcome,
    Sample,
    SpendRecord,
    SpreadSums,
    StateReport,
    StoreHealth,
    SubBucket,
    clamp,
)
from otel_puppy.windows import SUB_BUCKETS, RollingWindow, Window

__all__ = ("MemoryStore",)

_SLOTS = SUB_BUCKETS + 1
_ZERO: Final = array("q", bytes(24))
"""The counts of a counter never written (never changed: a shared stand-in). A calendar bucket's
counters start with a copy of it (`MemoryStore._calendar`)."""
_ZEROS: Final = array("q", bytes(8 * 3 * _SLOTS))
"""A ring's counts of 61 sub-buckets never written (more than its header and one sub-bucket too)."""
_LEDGER_WIDTH: Final = len(COUNTS)
"""Counts a ledger row holds (`LedgerEntry.counts`)."""
_NONE_RESERVED = [0, 0]
_NO_RINGS: Final[dict[str, _Ring]] = {}
"""The rings of a rolling window none is kept for yet (never written)."""
_new_state = tuple.__new__
"""`CheckState`'s fields as a tuple, without the named tuple's Python-level `__new__`."""


_FIRST: Final = 3
"""Where a ring holds the number of its first held sub-bucket (after its running total)."""
_LAST: Final = 4
"""Where a ring holds the number of its newest sub-bucket: it counts the 61 up to it."""
_HELD: Final = 5
"""Where a ring's sub-buckets' counts start."""


_FLOATS: dict[float, float] = {}
"""The one float object of each value `_shared` was given (at most `_FLOATS_LIMIT`)."""
_FLOATS_LIMIT: Final = 4096


def _shared(value: float) -> float:
    """One object for equal floats: ten thousand rings of a window hold the same step and mostly the
    same `until`, 32 bytes each as objects of their own (`RollingWindow.step` computes a new one each
    time): 0.64 MB for ten thousand rings. Forgotten all at once past `_FLOATS_LIMIT` values (a new
    `until` per sub-bucket); equal floats are interchangeable (no NaN reaches here: `int(now // step)`
    refuses it first)."""
    shared = _FLOATS.get(value)
    if shared is None:
        if len(_FLOATS) >= _FLOATS_LIMIT:
            _FLOATS.clear()
        shared = _FLOATS[value] = value
    return shared


if TYPE_CHECKING:
    _Int64s = array[int]
else:
    _Int64s = array  # `array[int]` at run time only from Python 3.12


class _Ring(_Int64s):
    """The sub-buckets of a rolling window that count (the 61 up to `last`) and their running total.

    The ring is itself its `array` of int64s: first the running total (nanos, tokens, requests: the
    exact sums of the sub-buckets, at most 61 times the ceiling, which an int64 holds), then the
    numbers of its first held sub-bucket (`_FIRST`) and of its newest (`_LAST`), then (nanos, tokens,
    requests) per sub-bucket from the first held to the newest one written (those in between never
    written hold zeros); none before the oldest written that still counts, none after the newest
    written. The same object for the ring's life (`read_fullest` keeps it).

    One object: a ring written in one sub-bucket takes 96 bytes plus 64 of counts, where an object of
    five slots holding an array, two Python ints and two floats took 320 (a ring per user: 1.6 MB
    for ten thousand). Its `step` and `until` are floats other rings share (`_shared`); the `step`
    slot costs nothing: the object is 88 bytes without it, 96 with it, allocated in 16s.
    Sub-bucket numbers are int64s (a clock before the year 10**13)."""

    __slots__ = ("step", "until")
    step: float
    until: float

    def __new__(cls, step: float, ts: float | None = None) -> _Ring:
        # From an array: its counts allocated exactly (`bytes` or `extend` allocate room for more).
        # With `ts`, room for its sub-bucket, which `add` writes. (typeshed's `array.__new__` returns
        # `array[int]` whatever the class.)
        ring: _Ring = super().__new__(cls, "q", _ZEROS[: _HELD if ts is None else _HELD + 3])  # type: ignore[assignment]
        ring.step = _shared(step)
        ring.until = -math.inf
        """When the newest sub-bucket ends: before it, reading needs no `_advance`."""
        ring[_FIRST] = 0 if ts is None else int(ts // step)
        ring[_LAST] = -1
        return ring

    def _advance(self, newest: int) -> None:
        if newest <= self[_LAST]:
            return
        first = self[_FIRST]
        gone = min((len(self) - _HELD) // 3, newest - SUB_BUCKETS - first)  # the oldest, no longer counting
        if gone > 0:
            end = _HELD + 3 * gone
            self[0] -= sum(self[_HELD:end:3])
            self[1] -= sum(self[_HELD + 1 : end : 3])
            self[2] -= sum(self[_HELD + 2 : end : 3])
            del self[_HELD:end]
            self[_FIRST] = first + gone
        self[_LAST] = newest
        # One ulp below the product (rounded by at most half an ulp): never after the true end.
        self.until = _shared(math.nextafter((newest + 1) * self.step, -math.inf))

    def add(self, ts: float, nanos: int, tokens: int, requests: int = 1) -> int:
        """Add to the sub-bucket of `ts` (amounts in `[0, CEILING]`); returns how many of its
        counts are at the ceiling now (saturated)."""
        i = int(ts // self.step)
        self._advance(i)
        if i <= self[_LAST] - _SLOTS:  # older than the window: it no longer counts
            return 0
        held = (len(self) - _HELD) // 3
        first = self[_FIRST]
        if not held:
            self.extend(_ZEROS[:3])
            self[_FIRST] = first = i
        elif i < first:
            self[_HELD:_HELD] = _ZEROS[: 3 * (first - i)]
            self[_FIRST] = first = i
        elif i >= first + held:
            self.extend(_ZEROS[: 3 * (i - first - held + 1)])
        at = _HELD + 3 * (i - first)
        saturated = 0
        for field, amount in enumerate((nanos, tokens, requests)):
            old = self[at + field]
            new = old + amount
            if new >= CEILING:
                new = CEILING
                saturated += 1
            self[at + field] = new
            self[field] += new - old
        return saturated

    def read(self, now: float) -> Counter:
        return Counter(*self.read_raw(now))

    def read_raw(self, now: float) -> array[int]:
        """[nanos, tokens, requests] now, each at most `CEILING`."""
        if now >= self.until:  # else `now` is still in the newest sub-bucket: nothing to advance
            self._advance(int(now // self.step))
        totals = self[:3]  # a plain `array`
        if totals[0] > CEILING or totals[1] > CEILING or totals[2] > CEILING:
            return array("q", [min(total, CEILING) for total in totals])
        return totals

    def sub_buckets(self, now: float) -> tuple[SubBucket, ...]:
        """The sub-buckets that count at `now` and hold spend, oldest first."""
        self._advance(int(now // self.step))
        first = self[_FIRST]
        return tuple(
            SubBucket(first + (at - _HELD) // 3, *self[at : at + 3])
            for at in range(_HELD, len(self), 3)
            if self[at] or self[at + 1] or self[at + 2]
        )


_SAMPLE: Final = struct.Struct("<dqq")
"""A sample of a series: when (a float), nano-USD and tokens (each at most `CEILING`)."""
_SERIES: Final = struct.Struct("<dII")
"""A series' header: when the key is forgotten unless written again, how many samples it keeps
(`keep`, at most `MAX_SAMPLES`), and the oldest sample's slot once it keeps that many (`head`)."""
_UNTIL: Final = struct.Struct("<d")
"""The header's first field alone (`until`)."""


def _new_series(keep: int, until: float) -> bytearray:
    """One key's newest samples (`add_samples`): a `_SERIES` header then a ring of `_SAMPLE` records,
    24 bytes a sample, in one `bytearray` of its own. Not an object holding a bytearray and the key's
    `until` (48 bytes more a key: 0.48 MB for the ten thousand of `bench/bench_memory.py`), nor a
    deque of tuples, nor an `array` per field (64 bytes each before its first sample, and most keys
    hold a few)."""
    return bytearray(_SERIES.pack(until, keep, 0))


def _newest_first(series: bytearray) -> list[tuple[float, int, int]]:
    head = _SERIES.unpack_from(series)[2]
    samples = list(_SAMPLE.iter_unpack(series[_SERIES.size :]))
    return samples[:head][::-1] + samples[head:][::-1]


def _resized(series: bytearray, keep: int, until: float) -> bytearray:
    """The same key keeping its newest `keep` samples, oldest first (its oldest slot, `head`, is 0)."""
    kept = reversed(_newest_first(series)[:keep])
    return bytearray(_SERIES.pack(until, keep, 0) + b"".join(_SAMPLE.pack(*sample) for sample in kept))


@dataclass(slots=True)
class _Reservation:
    """The same `nanos` and `tokens` held on the budget of each of `checks` (the admission's own
    tuple, kept as it is: no copy per decision)."""

    checks: tuple[BudgetCheck, ...]
    nanos: int
    tokens: int
    expires_at: float
    settle_key: str | None
    source: str


_Counter = tuple["_Ring | array[int]", int, int | None, int | None, bool, int | None, list[int]]
"""What `admit` reads for one check: its counts (a ring, a calendar bucket's counters, or `_ZERO`)
and where its own start in them (0 but in a bucket's), its limits (clamped to `CEILING`),
whether it blocks, its call limit (clamped) if it is a call budget, and its scope's reserved totals
(the very list `_reserved` holds, which reservations change in place)."""
_RANKED_BY: Final = (itemgetter(0), itemgetter(1), itemgetter(2))
"""What `read_fullest` ranks a group's counters by: spend, tokens or calls (`[nanos, tokens, requests]`)."""
_Found = tuple[tuple[BudgetCheck, ...], int, float, float, list[_Counter], bool]
"""`MemoryStore._find`: the checks, the layout and the span of time it holds for, each check's
counter, and whether a call budget is among them (an admission then reserves with no estimate)."""
_FOUND_LIMIT: Final = 4096
"""Admission shapes kept (one per request shape in use; forgotten all at once past this)."""
_Plan = tuple[int, list["_Ring"], list["array[int]"], "itemgetter[tuple[int, ...]] | None", list[int]]
"""`read_fullest`'s plan of a group: the field it ranks by; the rings to bring to now and per check
its ring (`_ZERO` when there is none yet), if a rolling window; else its calendar bucket's counters
(one item: `_ZERO` when there is no bucket yet) and what reads the field of each check's counter
from them (its zeros when there is none yet); then (one item) the step every ring of the group was
last brought to."""


class MemoryStore:
    """Holds everything in this process; nothing survives a restart."""

    shares_state = False
    """Only this process sees the state (a forked child gets a copy that goes its own way)."""
    does_io = False
    """Every call answers from memory under one short lock."""
    reads_spread = True
    """`apply` reads a record's `SpendRecord.spread` (the engine sends one in place of its increments)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calendar: dict[tuple[str, float], tuple[dict[str, int], array[int]]] = {}
        """Per calendar bucket (a window's unit and the bucket's start): where each scope's counter
        starts in it, and its counters, (nanos, tokens, requests) each, after the zeros of a counter
        never written (at 0: where a scope with none reads). One key and one expiry per bucket, not
        per counter (tens of thousands of scopes share a bucket), and one `array`: 24 bytes a counter
        and the int of where (32 past 256), where an array each took 96 (a 64-byte object and its 24
        bytes apart, allocated in 32): 1.0 MB less for twenty thousand counters (tracemalloc)."""
        self._calendar_expiry: dict[tuple[str, float], float] = {}
        """Per calendar bucket, when it is forgotten: the latest end and retention of its counters'."""
        self._rings: dict[str, dict[str, _Ring]] = {}
        """Per rolling window (its label), each scope's ring: no (scope, label) key tuple per ring."""
        self._seen = KeySet()
        """Span keys applied (by 120-bit digest, see `KeySet`), each until its `dedupe_until`."""
        self._covered = KeySet()
        """Parents of applied spans: their own span is a nested one."""
        self._calls = CallIndex()
        self._reservations: dict[str, _Reservation] = {}
        self._reserved: dict[str, list[int]] = {}
        """Per scope, [nanos, tokens] its outstanding reservations hold. A list stays while `admit`'s
        `_found` may hold it (at [0, 0] once released); `expire` drops those at zero."""
        self._by_settle_key: dict[str, deque[str]] = {}
        self._reservation_heap: list[tuple[float, str]] = []
        self._marks: dict[str, float] = {}
        self._state: dict[str, dict[str, bytes]] = {}
        self._versioned: dict[str, dict[str, tuple[int, bytes]]] = {}
        self._outcomes: deque[Outcome] = deque(maxlen=MAX_OUTCOMES)
        self._ledger: dict[int, tuple[dict[str, int], array[int], list[float]]] = {}
        """Per hour: where each row's counts start (by its dims) in the hour's one `array` of counts
        (8 bytes a count, where a list of Python ints took 40, and no array of its own per row: 64
        bytes more each, for ten thousand agents' rows), that array, and [until when it is kept]."""
        self._samples: dict[str, bytearray] = {}
        """Per key its newest samples and when it is forgotten (`_new_series`); least recently written first (a dict,
        in order of insertion: a key written is put back at the end; an `OrderedDict` took 60 bytes
        a key more)."""
        self._report = StateReport("memory store")
        self._layout = 0
        """Changes whenever a ring or calendar counter is created or dropped."""
        self._found: dict[int, _Found] = {}
        """`admit`'s counters per admission shape (see `_find`), by the id of its checks tuple (kept in it)."""
        self._plans: tuple[Sequence[Sequence[BudgetCheck]], tuple[float, ...], int, list[_Plan]] | None = None
        """`read_fullest`'s counters for the groups it was last asked about (see there)."""

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """`memory://` (nothing may follow it).

        Raises:
            StoreError: any other URL.
        """
        if url != "memory://":
            raise StoreError(f"store {url!r}: the memory store's URL is memory:// alone")
        return cls()

    def after_fork(self) -> None:
        """In a forked child: a lock a parent's thread held would never be released here."""
        self._lock = threading.Lock()
        self._report.after_fork()

    # --- spans ---------------------------------------------------------------------------------

    def apply(self, records: Sequence[SpendRecord], now: float) -> list[ApplyResult]:
        # The applied records' increments are added up per counter first (a batch's spans mostly fall
        # in the same few budgets' counters), then each counter is written once: the same totals as
        # adding them one by one, since every amount is clamped into [0, CEILING] and counts only grow
        # (a counter saturates where the one-by-one sum would have; `saturated` counts writes).
        # A record's `spread` is added up first per targets and counters (`SpreadSums`), then per counter.
        # Ledger rows likewise: each row's counts are gathered per batch, then added to it once, into
        # its hour's one array of counts (so every entry has `ledger.COUNTS`' counts: refused first).
        if any(r.ledger is not None and len(r.ledger.counts) != _LEDGER_WIDTH for r in records):
            raise ValueError(f"a ledger entry has not {_LEDGER_WIDTH} counts (`ledger.COUNTS`): nothing was applied")
        with self._lock:
            rolling: dict[tuple[str, str, int], list[Any]] = {}
            calendar: dict[tuple[str, str, float], list[Any]] = {}
            spreads = SpreadSums()
            ledgers: dict[tuple[int, str], list[Any]] = {}
            try:
                return [self._apply_one(record, rolling, calendar, spreads, ledgers) for record in records]
            finally:
                for (hour, dims), (until, counts) in ledgers.items():
                    self._ledger_add(hour, dims, until, counts)
                for scope, window, ts, nanos, tokens, calls in spreads.counters():
                    if isinstance(window, RollingWindow):
                        key: tuple[str, str, Any] = (scope, window.label, int(ts // window.step))
                        pending: dict[Any, list[Any]] = rolling
                    else:
                        key = (scope, window.unit, window.bounds(ts)[0])
                        pending = calendar
                    entry = pending.get(key)
                    if entry is None:
                        pending[key] = [Increment(scope, window, ts, nanos, tokens), nanos, tokens, calls]
                    else:
                        entry[1] += nanos
                        entry[2] += tokens
                        entry[3] += calls
                if rolling or calendar:
                    saturated = self._add_all(rolling, calendar)
                    if saturated:
                        self._report.saturated(saturated, "apply")

    def _apply_one(
        self,
        record: SpendRecord,
        rolling: dict[tuple[str, str, int], list[Any]],
        calendar: dict[tuple[str, str, float], list[Any]],
        spreads: SpreadSums,
        ledgers: dict[tuple[int, str], list[Any]],
    ) -> ApplyResult:
        # Each key is digested once (`KeySet`, `CallIndex`): the span's, its parent's, its calls'.
        seen = self._seen
        span = digest(record.span_key)
        weak = record.weak
        if not seen.add_digest(digest(record.span_key + "~") if weak else span, record.dedupe_until):  # `seen_key`
            return ApplyResult.DUPLICATE
        parent = None if record.parent_key is None else digest(record.parent_key)
        call_keys = record.call_keys
        if (
            self._covered.has(span)
            or (parent is not None and seen.has(parent))
            or (call_keys and self._calls.recognises(call_keys, record.keys_until, keep=not weak))  # kept if applied
        ):
            if record.decision_id is not None:
                self._release(record.decision_id, SETTLED, record.nanos)
            return ApplyResult.NESTED
        if not weak and parent is not None:
            self._covered.put_digest(parent, record.dedupe_until)
        if record.spread is not None:
            spreads.add(record.spread)
        for inc in record.increments:  # added up per counter; written by `apply` (`_add_all`)
            window = inc.window
            nanos, tokens = inc.nanos, inc.tokens
            nanos = 0 if nanos <= 0 else nanos if nanos < CEILING else CEILING  # `clamp`, inlined
            tokens = 0 if tokens <= 0 else tokens if tokens < CEILING else CEILING
            if isinstance(window, RollingWindow):
                key: tuple[str, str, Any] = (inc.scope, window.label, int(inc.ts // window.step))
                pending: dict[Any, list[Any]] = rolling
            else:
                key = (inc.scope, window.unit, window.bounds(inc.ts)[0])  # the calendar counter's own key
                pending = calendar
            entry = pending.get(key)
            if entry is None:
                pending[key] = [inc, nanos, tokens, 1]
            else:
                entry[1] += nanos
                entry[2] += tokens
                entry[3] += 1
        ledger = record.ledger
        if ledger is not None:  # added up per row; written by `apply` (`_ledger_add`)
            row = ledgers.get((ledger.hour, ledger.dims))
            if row is None:
                ledgers[(ledger.hour, ledger.dims)] = [ledger.until, [ledger.counts]]
            else:
                row[0] = max(row[0], ledger.until)
                row[1].append(ledger.counts)
        decision_id = record.decision_id
        if decision_id is not None and self._release(decision_id, SETTLED, record.nanos):
            return ApplyResult.APPLIED
        settle_key = record.settle_key
        if settle_key and settle_key in self._by_settle_key:  # else `_settle_oldest` finds no reservation
            self._settle_oldest(settle_key, record.nanos)
        return ApplyResult.APPLIED

    def _add_all(
        self, rolling: dict[tuple[str, str, int], list[Any]], calendar: dict[tuple[str, str, float], list[Any]]
    ) -> int:
        """Write the increments `_apply_one` added up (per counter: an increment of it, its nanos, tokens
        and calls); how many counts are at the ceiling after their write."""
        saturated = 0
        windows = self._rings
        for (scope, label, _), (inc, nanos, tokens, calls) in rolling.items():
            rings = windows.get(label)
            if rings is None:
                rings = windows[label] = {}
            ring = rings.get(scope)
            if ring is None:
                ring = rings[scope] = _Ring(inc.window.step, inc.ts)
                self._layout += 1
            saturated += ring.add(inc.ts, min(nanos, CEILING), min(tokens, CEILING), calls)
        buckets, expiry = self._calendar, self._calendar_expiry
        for (scope, unit, start), (inc, nanos, tokens, calls) in calendar.items():
            bucket = buckets.get((unit, start))
            if bucket is None:
                bucket = buckets[(unit, start)] = ({}, _ZERO[:])
            starts, counters = bucket
            at = starts.get(scope)
            if at is None:
                window = inc.window
                at = starts[scope] = len(counters)
                counters.extend(_ZERO)
                self._layout += 1
                until = window.bounds(inc.ts)[1] + window.retention()
                if until > expiry.get((unit, start), -math.inf):
                    expiry[(unit, start)] = until
            for field, amount in enumerate((nanos, tokens, calls), at):
                total = counters[field] + amount
                if total >= CEILING:
                    total = CEILING
                    saturated += 1
                counters[field] = total
        return saturated

    # --- reading -------------------------------------------------------------------------------

    def totals(self, reads: Sequence[tuple[str, Window]], now: float) -> list[Counter]:
        with self._lock:
            return [self._total(scope, window, now) for scope, window in reads]

    def _total(self, scope: str, window: Window, now: float) -> Counter:
        return Counter(*self._raw_total(scope, window, now))

    def _raw_total(self, scope: str, window: Window, now: float) -> array[int]:
        if isinstance(window, RollingWindow):
            ring = self._rings.get(window.label, _NO_RINGS).get(scope)
            return ring.read_raw(now) if ring is not None else _ZERO
        bucket = self._calendar.get((window.unit, window.bounds(now)[0]))
        at = bucket[0].get(scope) if bucket is not None else None
        return bucket[1][at : at + 3] if bucket is not None and at is not None else _ZERO

    # --- admission -----------------------------------------------------------------------------

    def admit(self, admission: Admission, now: float) -> Admitted:
        # `decide()` calls this for every decision with every matching budget (often ten or so), so
        # the loop is `_raw_total` and `check_state` inlined, with the lookups kept in locals.
        # tests/store/test_memory.py holds the inlined rule to `check_state` over every case.
        checks = admission.checks
        nanos, tokens = admission.nanos, admission.tokens
        if not (type(nanos) is int and type(tokens) is int and 0 <= nanos <= CEILING and 0 <= tokens <= CEILING):
            nanos, tokens = clamp(nanos), clamp(tokens)
        with self._lock:
            heap = self._reservation_heap
            if heap and heap[0][0] <= now:
                self._expire_reservations(now)
            found = self._found.get(id(checks))
            if found is None or found[0] is not checks or found[1] != self._layout or not found[2] <= now < found[3]:
                found = self._find(checks, now)
            states = []
            admitted = True
            for counter, at, limit_nanos, limit_tokens, blocking, limit_calls, held in found[4]:
                # Each count read once, into a local.
                if isinstance(counter, _Ring):  # `read_raw`, inlined
                    if now >= counter.until:
                        counter._advance(int(now // counter.step))
                    spent_nanos, spent_tokens, spent_calls = counter[0], counter[1], counter[2]  # its running total
                    if spent_nanos > CEILING or spent_tokens > CEILING or spent_calls > CEILING:
                        spent_nanos, spent_tokens = min(spent_nanos, CEILING), min(spent_tokens, CEILING)
                        spent_calls = min(spent_calls, CEILING)
                else:  # three counts of a calendar bucket's (or `_ZERO`'s)
                    spent_nanos, spent_tokens, spent_calls = counter[at], counter[at + 1], counter[at + 2]
                held_nanos, held_tokens = held
                if held_nanos > CEILING or held_tokens > CEILING:  # exact totals; they read saturated
                    held_nanos, held_tokens = min(held_nanos, CEILING), min(held_tokens, CEILING)
                if limit_calls is not None:  # a call budget: one call more, held in the token slot
                    fits = spent_calls + held_tokens < limit_calls
                    states.append(_new_state(CheckState, (spent_nanos, spent_calls, held_nanos, held_tokens, fits)))
                    if not fits and blocking:
                        admitted = False
                    continue
                used = spent_nanos + held_nanos
                fits = limit_nanos is None or (used + nanos <= limit_nanos if nanos else used < limit_nanos)
                if fits and limit_tokens is not None:
                    used = spent_tokens + held_tokens
                    fits = used + tokens <= limit_tokens if tokens else used < limit_tokens
                states.append(_new_state(CheckState, (spent_nanos, spent_tokens, held_nanos, held_tokens, fits)))
                if not fits and blocking:
                    admitted = False
            reserve = admitted and admission.reserve and bool(nanos or tokens or found[5]) and bool(checks)
            if reserve:
                decision_id = admission.decision_id
                if decision_id in self._reservations:
                    self._release(decision_id)  # the same decision admitted again replaces its reservation
                self._reservations[decision_id] = _Reservation(
                    checks, nanos, tokens, admission.expires_at, admission.settle_key, admission.source
                )
                # Exact (Python ints): released reservations take back exactly what they added. Each
                # check's totals are the scope's own list (`_find` put it there): no lookup.
                for entry in found[4]:
                    totals = entry[6]
                    if entry[5] is not None:  # a call budget holds one call
                        totals[1] += 1
                    else:
                        totals[0] += nanos
                        totals[1] += tokens
                settle_key = admission.settle_key
                if settle_key:
                    queue = self._by_settle_key.get(settle_key)
                    if queue is None:
                        queue = self._by_settle_key[settle_key] = deque()
                    queue.append(decision_id)
                heapq.heappush(heap, (admission.expires_at, decision_id))
            return Admitted(reserve, tuple(states))

    def _find(self, checks: tuple[BudgetCheck, ...], now: float) -> _Found:
        """The counter each of `checks` reads at `now` (a ring, a calendar counter, or `_ZERO`'s), kept
        for `admit` while no counter is created or dropped and `now` stays in every calendar bucket:
        a request of the same shape then reads them with no key to build or look up."""
        rings, calendar, reserved = self._rings, self._calendar, self._reserved
        counters: list[_Counter] = []
        first, last = -math.inf, math.inf
        for check in checks:
            window = check.window
            found_counter: _Ring | array[int] | None
            if isinstance(window, RollingWindow):
                found_counter = rings.get(window.label, _NO_RINGS).get(check.scope)
                at = 0
            else:
                start, end = window.bounds(now)
                first, last = max(first, start), min(last, end)
                bucket = calendar.get((window.unit, start))
                found_counter = bucket[1] if bucket is not None else None
                at = bucket[0].get(check.scope, 0) if bucket is not None else 0  # 0: its zeros
            limit_nanos, limit_tokens, limit_calls = check.limit_nanos, check.limit_tokens, check.limit_calls
            held = reserved.get(check.scope)
            if held is None:
                held = reserved[check.scope] = [0, 0]
            counters.append(
                (
                    found_counter if found_counter is not None else _ZERO,
                    at,
                    None if limit_nanos is None else min(limit_nanos, CEILING),  # limits are clamped to it
                    None if limit_tokens is None else min(limit_tokens, CEILING),
                    check.blocking,
                    None if limit_calls is None else min(limit_calls, CEILING),
                    held,
                )
            )
        holds_calls = any(check.limit_calls is not None for check in checks)
        found = (checks, self._layout, first, last, counters, holds_calls)
        if len(self._found) >= _FOUND_LIMIT:
            self._found.clear()
        self._found[id(checks)] = found
        return found

    def read_budgets(self, checks: Sequence[BudgetCheck], now: float) -> list[CheckState]:
        # A scrape reads every budget instance (tens of thousands) in one call: the loop is
        # `admit`'s without the estimate (no estimate: a budget fits while anything is left).
        with self._lock:
            heap = self._reservation_heap
            if heap and heap[0][0] <= now:
                self._expire_reservations(now)
            return self._read_budgets(checks, now)

    def read_fullest(self, groups: Sequence[Sequence[BudgetCheck]], now: float) -> list[CheckState]:
        # A scrape after tens of thousands of budget instances: per group only the amount it ranks
        # by is read, from the counters themselves, found once for these groups (a scrape passes the
        # same groups until an instance is new) while no counter is created or dropped and their
        # calendar buckets last; then `read_budgets`'s loop reads the winners.
        winners: list[BudgetCheck] = []
        with self._lock:
            heap = self._reservation_heap
            if heap and heap[0][0] <= now:
                self._expire_reservations(now)
            plans = self._fullest_plans(groups, now)
            reserving = bool(self._reservations)  # `_reserved` keeps lists at zero: not the test
            for group, (field, group_rings, counts, pick, advanced) in zip(groups, plans, strict=True):
                if len(group) == 1:  # most groups: a label the guard let through, one instance each
                    winners.append(group[0])
                    continue
                if group_rings:  # a rolling window: bring each ring to now first (once per step:
                    newest = int(now // group_rings[0].step)  # writes only move a ring forward)
                    if advanced[0] != newest:
                        for ring in [ring for ring in group_rings if ring[_LAST] < newest]:
                            ring._advance(newest)
                        advanced[0] = newest
                # In C, not a Python loop per check: the first counter with the most, and its index
                # (`index` finds that counter first: any before it holds less, so is not equal).
                if pick is not None:  # a calendar window: its counters never pass the ceiling
                    amounts = pick(counts[0])
                    best = amounts.index(max(amounts))
                elif (fullest := max(counts, key=_RANKED_BY[field]))[field] <= CEILING:
                    best = counts.index(fullest)
                else:  # a ring's total past the ceiling reads as the ceiling: the first of those
                    best = next(i for i, counted in enumerate(counts) if counted[field] >= CEILING)
                if field != 1 and reserving:  # reservations count too: rank again with them
                    best = self._fullest_reserving(group, now)
                winners.append(group[best])
            return self._read_budgets(winners, now)

    def _fullest_plans(self, groups: Sequence[Sequence[BudgetCheck]], now: float) -> list[_Plan]:
        """Per group: the field it ranks by (nanos, or tokens for a token budget) and its checks'
        rings or calendar counters; kept for the same `groups` object while no counter is created
        or dropped and their calendar buckets last."""
        starts = tuple(
            group[0].window.bounds(now)[0] if not isinstance(group[0].window, RollingWindow) else 0.0
            for group in groups
        )
        cached = self._plans
        if cached is not None and cached[0] is groups and cached[1] == starts and cached[2] == self._layout:
            return cached[3]
        rings, calendar = self._rings, self._calendar
        plans: list[_Plan] = []
        for group, start in zip(groups, starts, strict=True):
            window = group[0].window
            first_check = group[0]
            field = 0 if first_check.limit_nanos is not None else 2 if first_check.limit_calls is not None else 1
            if isinstance(window, RollingWindow):
                window_rings = rings.get(window.label, _NO_RINGS)
                found = [window_rings.get(check.scope) for check in group]
                present = [ring for ring in found if ring is not None]
                # A ring is an array of its counts, its running total first, changed in place for its life.
                plans.append((field, present, [ring if ring is not None else _ZERO for ring in found], None, [-1]))
            else:
                bucket = calendar.get((window.unit, start))
                starts_at = bucket[0] if bucket is not None else {}
                # A tuple of the group's amounts, read in C (a group of one, of which `itemgetter` reads
                # one amount and no tuple, is not ranked).
                pick = itemgetter(*[starts_at.get(check.scope, 0) + field for check in group])
                plans.append((field, [], [bucket[1] if bucket is not None else _ZERO], pick, [-1]))
        self._plans = (groups, starts, self._layout, plans)
        return plans

    def _fullest_reserving(self, group: Sequence[BudgetCheck], now: float) -> int:
        """The index of the fullest of a spend (or call) budget's checks, spend plus reserved."""
        states = self._read_budgets(group, now)
        if group[0].limit_calls is not None:
            return max(range(len(states)), key=lambda i: states[i][1] + states[i][3])
        return max(range(len(states)), key=lambda i: states[i][0] + states[i][2])

    def _read_budgets(self, checks: Iterable[BudgetCheck], now: float) -> list[CheckState]:
        rings, calendar, reserved_totals = self._rings, self._calendar, self._reserved
        states: list[CheckState] = []
        append = states.append
        for check in checks:
            scope, window = check.scope, check.window
            spent: array[int]
            at = 0
            if isinstance(window, RollingWindow):
                ring = rings.get(window.label, _NO_RINGS).get(scope)
                spent = ring.read_raw(now) if ring is not None else _ZERO
            else:
                bucket = calendar.get((window.unit, window.bounds(now)[0]))
                spent = bucket[1] if bucket is not None else _ZERO
                at = bucket[0].get(scope, 0) if bucket is not None else 0
            spent_nanos, spent_tokens, spent_calls = spent[at], spent[at + 1], spent[at + 2]
            held = reserved_totals.get(scope) or _NONE_RESERVED
            if held[0] > CEILING or held[1] > CEILING:
                held = [min(held[0], CEILING), min(held[1], CEILING)]
            if (limit := check.limit_calls) is not None:
                fits = spent_calls + held[1] < min(limit, CEILING)
                append(_new_state(CheckState, (spent_nanos, spent_calls, held[0], held[1], fits)))
                continue
            limit = check.limit_nanos
            fits = limit is None or spent_nanos + held[0] < min(limit, CEILING)
            if fits and (limit := check.limit_tokens) is not None:
                fits = spent_tokens + held[1] < min(limit, CEILING)
            append(_new_state(CheckState, (spent_nanos, spent_tokens, held[0], held[1], fits)))
        return states

    def read_sub_buckets(self, reads: Sequence[tuple[str, RollingWindow]], now: float) -> list[tuple[SubBucket, ...]]:
        with self._lock:
            rings = self._rings
            found: list[tuple[SubBucket, ...]] = []
            for scope, window in reads:
                ring = rings.get(window.label, _NO_RINGS).get(scope)
                found.append(ring.sub_buckets(now) if ring is not None else ())
            return found

    def release(self, decision_id: str) -> bool:
        with self._lock:
            return self._release(decision_id)

    def _release(self, decision_id: str, outcome: str = RELEASED, cost: int = 0) -> bool:
        reservation = self._reservations.pop(decision_id, None)
        if reservation is None:
            return False
        nanos, tokens = reservation.nanos, reservation.tokens
        self._outcomes.append(Outcome(reservation.source, outcome, nanos, cost))
        for check in reservation.checks:
            held_nanos, held_tokens = (0, 1) if check.limit_calls is not None else (nanos, tokens)
            totals = self._reserved.get(check.scope)
            if totals is None:  # only a hold of nothing (a call budget's request of no estimate) finds none
                continue
            totals[0] -= held_nanos
            totals[1] -= held_tokens  # at [0, 0] it stays: `_found` may hold it (`expire` drops it)
        if reservation.settle_key:
            queue = self._by_settle_key.get(reservation.settle_key)
            if queue is not None:
                if decision_id in queue:
                    queue.remove(decision_id)
                if not queue:
                    del self._by_settle_key[reservation.settle_key]
        return True

    def _settle_oldest(self, settle_key: str, cost: int) -> None:
        queue = self._by_settle_key.get(settle_key)
        while queue:
            if self._release(queue[0], SETTLED, cost):
                return
            queue.popleft()

    def _expire_reservations(self, now: float) -> None:
        heap = self._reservation_heap
        while heap and heap[0][0] <= now:
            _, decision_id = heapq.heappop(heap)
            self._release(decision_id, EXPIRED)

    # --- marks ---------------------------------------------------------------------------------

    def mark(self, key: str, expires_at: float) -> bool:
        with self._lock:
            if key in self._marks:
                return False
            self._marks[key] = expires_at
            return True

    def unmark(self, key: str) -> None:
        with self._lock:
            self._marks.pop(key, None)

    # --- state blobs ---------------------------------------------------------------------------

    def save_state(self, namespace: str, items: Mapping[str, bytes]) -> None:
        with self._lock:
            self._state.setdefault(namespace, {}).update(items)

    def load_state(self, namespace: str) -> dict[str, bytes]:
        with self._lock:
            return dict(self._state.get(namespace, {}))

    def delete_state(self, namespace: str, keys: Iterable[str]) -> None:
        with self._lock:
            blobs = self._state.get(namespace)
            if blobs is not None:
                for key in keys:
                    blobs.pop(key, None)

    def merge_state(self, namespace: str, items: Mapping[str, tuple[int, bytes]]) -> dict[str, tuple[int, bytes]]:
        with self._lock:
            kept = self._versioned.setdefault(namespace, {})
            for key, (version, data) in items.items():
                current = kept.get(key)
                if current is None or version > current[0]:
                    kept[key] = (version, data)
            return dict(kept)

    # --- the ledger ----------------------------------------------------------------------------

    def _ledger_add(self, start: int, dims: str, until: float, entries: list[tuple[int, ...]]) -> None:
        """Add the counts of `entries` (`LedgerEntry.counts`, in order) to row `dims` of hour `start`,
        kept at least until `until` (the latest of theirs): as adding each in turn would (the rows
        of an hour are made in the order their first entries came, so the same ones overflow into
        `OTHER_DIMS`)."""
        hour = self._ledger.get(start)
        until = min(until, start + MEMORY_LEDGER_DAYS * 86400)
        if hour is None:
            hour = self._ledger[start] = ({}, array("q"), [until])
        elif until > hour[2][0]:
            hour[2][0] = until
        rows, table = hour[0], hour[1]
        row = rows.get(dims)
        if row is None and len(rows) >= MAX_LEDGER_ROWS:
            dims = OTHER_DIMS
            row = rows.get(dims)
        if min(map(min, entries)) < 0 or max(map(max, entries)) > CEILING:  # never from the engine
            entries = [tuple(map(clamp, added)) for added in entries]  # clamped where they enter
        # Each count saturates at the ceiling: it only ever grows, so it reads as the exact sum would
        # (`read_ledger`), and a sum of two counts at most the ceiling fits an int64.
        if len(entries) == 1:
            added: Sequence[int] = entries[0]
        else:
            added = [total if total < CEILING else CEILING for total in map(sum, zip(*entries, strict=True))]
        if row is None:
            rows[dims] = len(table)
            table.extend(added)
            return
        at = row + _LEDGER_WIDTH
        counts = array("q", map(add, table[row:at], added))
        if max(counts) > CEILING:
            counts = array("q", [min(count, CEILING) for count in counts])
        table[row:at] = counts

    def read_ledger(self, start: int, end: int) -> list[tuple[int, str, tuple[int, ...]]]:
        with self._lock:
            return [
                (hour, dims, tuple(min(count, CEILING) for count in table[row : row + _LEDGER_WIDTH]))
                for hour, (rows, table, _) in sorted(self._ledger.items())
                if start <= hour < end
                for dims, row in rows.items()
            ]

    def take_outcomes(self) -> list[Outcome]:
        with self._lock:
            taken = list(self._outcomes)
            self._outcomes.clear()
            return taken

    # --- samples -------------------------------------------------------------------------------

    def add_samples(self, samples: Sequence[Sample], *, keep: int, ttl_s: float, now: float) -> None:
        keep = max(1, min(keep, MAX_SAMPLES))
        until = now + ttl_s
        # Per key, its samples of the batch in order; keys in the order of their last sample (each
        # moved to the end again by a later one), the order in which writing sample by sample would
        # leave them last written. With no key let go for room (below) that is the same write.
        groups: dict[str, list[Sample]] = {}
        pop = groups.pop
        for sample in samples:
            key = sample[0]
            found = pop(key, None)
            if found is None:
                groups[key] = [sample]
            else:
                found.append(sample)
                groups[key] = found
        with self._lock:
            series = self._samples
            if len(series) + sum(key not in series for key in groups) > MAX_SAMPLE_KEYS:
                # Keys are let go for room while the batch is written: which ones depends on the order
                # of every sample, so sample by sample.
                for sample in samples:
                    self._add_series(series, sample[0], (sample,), keep, until)
                return
            for key, kept in groups.items():
                self._add_series(series, key, kept, keep, until)

    @staticmethod
    def _add_series(series: dict[str, bytearray], key: str, samples: Sequence[Sample], keep: int, until: float) -> None:
        """Write `samples` of `key` (in order) to its series, made the most recently written."""
        kept = series.pop(key, None)  # put back last: the most recently written
        if kept is None:
            while len(series) >= MAX_SAMPLE_KEYS:
                del series[next(iter(series))]  # the least recently written
            kept = _new_series(keep, until)
        _, kept_keep, head = _SERIES.unpack_from(kept)
        if kept_keep != keep:
            kept = _resized(kept, keep, until)
            head = 0
        series[key] = kept
        # One more sample each, the oldest let go once `keep` are kept; the key lasts until `until`.
        full = _SERIES.size + keep * _SAMPLE.size
        write_sample, pack = _SAMPLE.pack_into, _SAMPLE.pack
        _UNTIL.pack_into(kept, 0, until)
        for _, at, spent, used in samples:
            nanos = 0 if spent <= 0 else spent if spent < CEILING else CEILING  # `clamp`, inlined
            tokens = 0 if used <= 0 else used if used < CEILING else CEILING
            if len(kept) < full:
                kept += pack(at, nanos, tokens)
            else:
                write_sample(kept, _SERIES.size + head * _SAMPLE.size, at, nanos, tokens)
                head = head + 1 if head + 1 < keep else 0
        _SERIES.pack_into(kept, 0, until, keep, head)

    def read_samples(self, keys: Sequence[str], since: float) -> list[list[tuple[int, int]]]:
        with self._lock:
            found = [self._samples.get(key) for key in keys]
            return [
                [] if kept is None else [(nanos, tokens) for at, nanos, tokens in _newest_first(kept) if at >= since]
                for kept in found
            ]

    # --- housekeeping --------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        with self._lock:
            dropped = self._seen.expire(now) + self._covered.expire(now)
            stale = [key for key, until in self._marks.items() if until <= now]
            for key in stale:
                del self._marks[key]
            dropped += len(stale)
            dropped += self._calls.expire(now)
            old = [bucket for bucket, until in self._calendar_expiry.items() if until <= now]
            counters = 0
            for bucket in old:
                del self._calendar_expiry[bucket]
                counters += len(self._calendar.pop(bucket)[0])
                self._layout += 1
            idle = 0
            for label, rings in list(self._rings.items()):
                gone = [scope for scope, ring in rings.items() if ring.read_raw(now)[2] == 0]
                for scope in gone:
                    del rings[scope]
                    self._layout += 1
                idle += len(gone)
                if not rings:
                    del self._rings[label]
            hours = [hour for hour, (_, _, until) in self._ledger.items() if until[0] <= now]
            for hour in hours:
                del self._ledger[hour]
            dropped += len(hours)
            forgotten = [key for key, kept in self._samples.items() if _UNTIL.unpack_from(kept)[0] <= now]
            for key in forgotten:
                del self._samples[key]
            before = len(self._reservations)
            self._expire_reservations(now)
            released = [scope for scope, totals in self._reserved.items() if totals == [0, 0]]
            if released:
                for scope in released:
                    del self._reserved[scope]
                self._found.clear()  # it holds these lists: `admit` finds its counters again
            return dropped + counters + idle + len(forgotten) + before - len(self._reservations)

    def health(self) -> StoreHealth:
        return self._report.health()

    def forward_queue(self, max_bytes: int) -> ForwardQueue:
        """In this process's memory, like the rest of this store: lost when it exits."""

        return MemoryQueue(max_bytes)

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        counters = sum(len(starts) for starts, _ in self._calendar.values())
        rings = sum(len(window_rings) for window_rings in self._rings.values())
        return counters + rings + len(self._seen)
