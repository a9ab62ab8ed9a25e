"""The `Store` protocol: every backend does the same few things atomically, on integers.

- `apply`: dedupe a span by (trace, span), and by the call it describes (its parent, or a
  `CallKey` another span of the call carried), and add its spend to window counters,
  all-or-nothing, settling the reservation it answers.
- `admit`: read every budget a request falls in and, only if every blocking one fits, reserve the
  estimate on all of them, in one atomic step. N concurrent callers therefore cannot overshoot a
  budget by more than their estimates were wrong.
- `totals`, `mark`/`unmark` (alert crossings), `release`, `expire`.
- `save_state`/`load_state`/`delete_state`: opaque blobs by (namespace, key), so breaker and
  anomaly state survives a restart; the store never looks inside them.
- `merge_state`: versioned blobs, the higher version wins: how replicas share breaker state.
- `add_samples`/`read_samples`: the newest costs of settled calls per key (agent, provider and
  model), bounded per key and in keys: what learned estimates are learned from (`learned.py`).
- `read_ledger`: the hourly cost ledger rows `apply` writes with the spend (`ledger.py`).
- `take_outcomes`: what became of reservations (settled by a call, expired unused, released), each
  reported once to whichever process takes it: `otel_puppy_reservations_total`.
- `health`: what the store found wrong with its own state (saturated counters, unreadable values,
  a damaged file), for readiness and metrics.
- `read_budgets`: the state of budgets, reserving nothing (statuses, denied requests);
  `read_fullest`: per group of a budget's instances only its fullest one's state (what a scrape's
  one series per group needs, without a state per instance).
- `read_sub_buckets`: the spend in each sub-bucket of rolling windows, so a denied request can be
  told when enough of it has aged out for the request to fit (read only when something is over).
- Capabilities, so no caller needs to know the backend: `shares_state` (other processes see the
  same state), `does_io` (a call may block on I/O), `after_fork()` (repair in a forked child).

A backend is one module with one class whose `from_url` opens it, and one line in `SCHEMES`.

Every count a store keeps (nanos, tokens, requests, reserved totals) is an integer in
`[0, CEILING]`, on every backend: an amount is clamped into that range where it enters, a sum that
would pass the ceiling stays at it (saturates) and is reported, and a check's limit is clamped to it
too. A counter at the ceiling is therefore over every limit: a saturated budget denies, so an
absurd amount makes enforcement stricter, never looser. A stored value that cannot be read back as
such an integer (a float, text, a negative number, garbage written by another tool) reads as the
ceiling and is reported as unreadable: its budget is exhausted, never wide open.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from otel_puppy.exceptions import StoreError
from otel_puppy.ledger import LedgerEntry
from otel_puppy.windows import RollingWindow, Window

if TYPE_CHECKING:
    from otel_puppy.forward.queue import ForwardQueue

logger = logging.getLogger("otel_puppy")

__all__ = (
    "CEILING",
    "MAX_CALL_SPANS",
    "MAX_OUTCOMES",
    "MAX_SAMPLES",
    "MAX_SAMPLE_KEYS",
    "SCHEMES",
    "Admission",
    "Admitted",
    "ApplyResult",
    "BudgetCheck",
    "CallKey",
    "CheckState",
    "CheckTerms",
    "Counter",
    "Increment",
    "Outcome",
    "Sample",
    "SpendRecord",
    "Spread",
    "SpreadSums",
    "StateReport",
    "Store",
    "StoreHealth",
    "SubBucket",
    "check_state",
    "clamp",
    "fullest_states",
    "newest_samples",
    "open_store",
    "report_unrestored",
)


MAX_CALL_SPANS: Final = 32
"""Spans a store keeps per call key (those that end last): a key many spans share cannot make every
lookup of it slower than this. A response id names one call; a key shared by more spans than this
(a burst of failures) may count a late overlapping span again."""


MAX_SAMPLE_KEYS: Final = 10_000
"""Sample series a store keeps (`add_samples`): past this, the least recently written are forgotten,
so calls naming ever new agents or models cannot grow the state without bound."""
MAX_SAMPLES: Final = 1000
"""The most samples one series may keep (`add_samples`'s `keep`)."""


MAX_OUTCOMES: Final = 100_000
"""Reservation outcomes a store keeps until they are taken (`take_outcomes`); past this the oldest
are dropped (a scrape takes them all, so only a store nobody scrapes fills up)."""
SETTLED: Final = "settled"
EXPIRED: Final = "expired"
RELEASED: Final = "released"


class Outcome(NamedTuple):
    """What became of one reservation: `settled` by its call's span, `expired` unused, or `released`
    (denied after all, or the decision was replaced)."""

    source: str
    """Where its estimate came from (`Admission.source`): `request`, `learned` or `none`."""
    outcome: str
    estimate: int
    """The nano-USD it held."""
    cost: int = 0
    """Settled: what the settling call cost, in nano-USD."""


class Sample(NamedTuple):
    """One settled call, for learned estimates: its key (agent, provider and model), when it was
    applied, what it cost and the output tokens it made (both clamped by the caller)."""

    key: str
    at: float
    nanos: int
    tokens: int


def newest_samples(samples: Sequence[Sample], keep: int) -> list[Sample]:
    """The newest `keep` samples of each series, in order: what a store keeping each series' newest
    `keep` would leave of them once all are written (its older ones go too, and the order of what is
    left is the same)."""
    counts: dict[str, int] = {}
    newest: list[Sample] = []
    for sample in reversed(samples):
        count = counts.get(sample.key, 0)
        if count < keep:
            counts[sample.key] = count + 1
            newest.append(sample)
    newest.reverse()
    return newest


class CallKey(NamedTuple):
    """One way a span identifies its call beyond its own ids (`call_identity.call_keys`).

    Two spans are one call when they carry the same `key` and their kept parts agree: their times
    overlap, they come from different instrumentations (`source`, when both name one), and they do
    not both carry a response id (`identified`: two different ids are two calls).
    """

    key: str
    start: int
    """Microseconds since the epoch; `0` with `end` at `CEILING` for any time."""
    end: int
    source: str = ""
    """The instrumentation that wrote the span; `""` matches any."""
    identified: bool = False


CEILING: Final = 2**53 - 1
"""The largest count any store keeps: 9,007,199,254,740,991 nano-USD (about $9.007 million) or
tokens or requests per counter and per reserved total. It is the largest integer a Redis Lua
script (whose numbers are doubles) holds exactly, so every backend saturates at the same value and
answers alike. A count at the ceiling is over every limit (limits are clamped to it)."""


def clamp(amount: int) -> int:
    """`amount` into `[0, CEILING]`, an `int`: where an amount enters a store (hostile values
    included). A whole-number float or a bool is its integer (`5.0` and `True` are 5 and 1, as an
    INTEGER column once stored them), so every store and every process reads back what was written.

    Raises:
        TypeError: the amount is not a whole number.
    """
    if type(amount) is not int:
        value: object = amount
        if not (isinstance(value, bool) or (isinstance(value, float) and value.is_integer())):
            raise TypeError(f"an amount must be a whole number, not {value!r}")
        amount = int(value)
    return 0 if amount <= 0 else min(amount, CEILING)


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What a store found wrong with its own state since it was opened (`Store.health()`)."""

    saturated: int = 0
    """Counts (the nanos, tokens or requests of one counter) found at `CEILING` after a write: spend
    past it was not added, and the budget the counter belongs to now denies."""
    unreadable: int = 0
    """Stored values read as `CEILING` because they were not an integer in range (poisoned state)."""
    problem: str | None = None
    """Why the state cannot be trusted now, or None: the file is damaged (until restarted on a good
    one), or unreadable values were read within the last minute. Readiness should fail on it."""


class StateReport:
    """A store's `StoreHealth` counts and its rate-limited warnings (one line a minute per kind,
    with the number of repeats it held back). Thread-safe."""

    _EVERY_S: Final = 60.0

    def __init__(self, store: str) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._saturated = 0
        self._unreadable = 0
        self._unreadable_at = -1e18
        self._corrupt: str | None = None
        self._logged_at: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def saturated(self, count: int, where: str) -> None:
        if count > 0:
            with self._lock:
                self._saturated += count
            self._warn(
                "saturated",
                count,
                f"{count} counter update(s) reached the ceiling ({where}); the budgets they belong to now deny",
            )

    def unreadable(self, count: int, where: str) -> None:
        if count > 0:
            with self._lock:
                self._unreadable += count
                self._unreadable_at = time.monotonic()
            self._warn(
                "unreadable",
                count,
                f"{count} stored value(s) could not be read ({where}); "
                "each counts as exhausted (its budget denies) until it expires or is repaired",
            )

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock, and never release it here."""
        self._lock = threading.Lock()

    def corrupt(self, problem: str) -> None:
        with self._lock:
            self._corrupt = problem

    def health(self) -> StoreHealth:
        with self._lock:
            problem = self._corrupt
            if problem is None and time.monotonic() - self._unreadable_at < self._EVERY_S:
                problem = f"{self._store}: stored values could not be read within the last minute"
            return StoreHealth(self._saturated, self._unreadable, problem)

    def _warn(self, kind: str, count: int, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._logged_at.get(kind, -1e18) < self._EVERY_S:
                self._held_back[kind] = self._held_back.get(kind, 0) + 1
                return
            self._logged_at[kind] = now
            held_back = self._held_back.pop(kind, 0)
        more = f" ({held_back} similar warnings held back in the last minute)" if held_back else ""
        logger.warning("%s: %s%s", self._store, message, more)


class ApplyResult(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    """The same span was applied before (an OTLP retry, or the same batch twice)."""
    NESTED = "nested"
    """Another span of the same call was applied: a wrapper over an SDK span, or the reverse."""
    REJECTED = "rejected"
    """Never sent to a store: the span carries a number outside its bound (`LLMCall.rejected`)."""


class Increment(NamedTuple):
    """Add spend at time `ts` to the counter of `scope` in `window`. (A named tuple: every applied
    call makes one per window and budget instance it counts in.)"""

    scope: str
    window: Window
    ts: float
    nanos: int
    tokens: int


class Spread(NamedTuple):
    """A record's increments in one piece (the engine's records for the memory store): `nanos` and
    `tokens` at `ts` added to the counter of each (scope, window) of `targets`, a tuple shared by the
    records of a batch that count in the same budgets. The same as one `Increment` per target."""

    targets: tuple[tuple[str, Window], ...]
    ts: float
    nanos: int
    tokens: int


class SpreadSums:
    """A batch's `Spread`s added up (for `apply`): per targets tuple and the counter each of its windows
    has at the spread's time, the first spread's time and the sums of the clamped nanos and tokens and
    the count of spreads. `counters()` gives each target's share, as its increments would add up: amounts
    are clamped into [0, CEILING] first, so adding them in any grouping saturates where they would."""

    __slots__ = ("groups", "windows")

    def __init__(self) -> None:
        self.groups: dict[tuple[Any, ...], list[Any]] = {}
        self.windows: dict[int, list[Any]] = {}
        """Per targets tuple (by id, kept in the value): `_layout`."""

    def add(self, spread: Spread) -> None:
        targets, ts, nanos, tokens = spread
        nanos = 0 if nanos <= 0 else nanos if nanos < CEILING else CEILING  # `clamp`, inlined
        tokens = 0 if tokens <= 0 else tokens if tokens < CEILING else CEILING
        layout = self.windows.get(id(targets))
        if layout is None or layout[0] is not targets:
            layout = self._layout(targets)
        # Spreads of the same targets whose time falls in the same counter of each window: one group
        # (a rolling window's counter is `ts // step`, a calendar window's its start). The calendar
        # windows' starts are those of the last time looked up while `ts` falls in all their counters
        # (`bounds` answers a time in [start, end) with that start and end).
        if not layout[3] <= ts < layout[4]:
            starts, ends = zip(*[bounds(ts) for bounds in layout[2]], strict=True) if layout[2] else ((), ())
            layout[3:] = max(starts, default=-math.inf), min(ends, default=math.inf), starts
        steps = layout[1]
        if len(steps) == 1:  # most batches: a comprehension's frame costs as much as the rest
            found: tuple[Any, ...] = (id(targets), ts // steps[0], *layout[5])
        elif len(steps) == 2:
            found = (id(targets), ts // steps[0], ts // steps[1], *layout[5])
        else:
            found = (id(targets), *[ts // step for step in steps], *layout[5])
        group = self.groups.get(found)
        if group is None:
            self.groups[found] = [targets, ts, nanos, tokens, 1]
        else:
            group[2] += nanos
            group[3] += tokens
            group[4] += 1

    def _layout(self, targets: tuple[tuple[str, Window], ...]) -> list[Any]:
        """The targets' rolling windows' steps (each once: equal steps give equal counters) and calendar
        windows' `bounds`, each window once: by identity (a batch's windows are a few objects, the
        totals' and the budgets', and a window's own hash is not cheap; equal windows apart only add a
        part to the key that is the same); then the span of time the calendar starts last looked up
        hold for, and those starts (none yet)."""
        distinct = list({id(window): window for _, window in targets}.values())
        steps = tuple({window.step: None for window in distinct if isinstance(window, RollingWindow)})
        calendars = tuple(window.bounds for window in distinct if not isinstance(window, RollingWindow))
        layout = self.windows[id(targets)] = [targets, steps, calendars, math.inf, -math.inf, ()]
        return layout

    def counters(self) -> Iterator[tuple[str, Window, float, int, int, int]]:
        """Per group and target: its scope and window, the group's first time, nanos, tokens and count."""
        for targets, ts, nanos, tokens, calls in self.groups.values():
            for scope, window in targets:
                yield scope, window, ts, nanos, tokens, calls


class SpendRecord(NamedTuple):
    """One span's effect on the store, applied all-or-nothing with its dedupe check.

    `span_key` identifies the span (trace id and span id); `parent_key` its parent in the same
    trace. Two spans describe one call when one is the other's parent, or when they share a
    `call_keys` entry (`CallKey`: the same response id, in any trace; or the same service, provider
    and usage or failure at overlapping times): the store counts whichever arrives first and reports
    the others as `NESTED`. The record settles the reservation `decision_id` names, or else the
    oldest open one with the same `settle_key`.

    A `weak` record (a call that succeeded without reporting usage) may be `NESTED` like any other,
    but never makes another record `NESTED`: it is nobody's parent, covers nobody and keeps no call
    key, so a span without usage can never hide the spend another span of its call reports.
    """

    span_key: str
    parent_key: str | None
    increments: tuple[Increment, ...]
    dedupe_until: float
    decision_id: str | None = None
    settle_key: str | None = None
    call_keys: tuple[CallKey, ...] = ()
    """Kept (when the record is applied and not weak) until `calls_until`, at most `MAX_CALL_SPANS`
    per key."""
    calls_until: float | None = None
    """Until when the record's call keys are kept (`None`: `dedupe_until`). The spans of one call
    arrive close together (the engine keeps their keys an hour), where a span's own key is kept
    for any retry."""
    weak: bool = False
    ledger: LedgerEntry | None = None
    """The call's ledger row increment (`ledger.py`), added with the spend when the record is applied."""
    spread: Spread | None = None
    """Its increments in one piece, in place of `increments` (empty then): only a store that reads it
    is given one (`MemoryStore.reads_spread`)."""

    @property
    def nanos(self) -> int:
        """The call's cost: every increment adds it (to a different counter); 0 with none."""
        if self.increments:
            return self.increments[0].nanos
        spread = self.spread
        return spread.nanos if spread is not None and spread.targets else 0

    @property
    def keys_until(self) -> float:
        return self.dedupe_until if self.calls_until is None else self.calls_until

    @property
    def seen_key(self) -> str:
        """The key the store remembers the span by: a weak span's apart, so it is nobody's parent."""
        return self.span_key + "~" if self.weak else self.span_key


@dataclass(frozen=True, slots=True)
class Counter:
    nanos: int = 0
    tokens: int = 0
    requests: int = 0


@dataclass(frozen=True, slots=True)
class CheckTerms:
    """What a check says beside its scope: its window, its usable limits and whether it blocks.
    Shared: every instance of a budget holds its budget's terms for a priority (tens of thousands of
    instances hold one reference, not five fields each)."""

    window: Window
    limit_nanos: int | None
    limit_tokens: int | None
    blocking: bool
    """A blocking check that does not fit stops the whole reservation (enforced `deny` budgets)."""
    limit_calls: int | None = None
    """A call budget (`limit_calls`): its amount is calls, not the request's estimate. Spent calls are
    the counter's requests; every admission that reserves holds one call on it until the call's span
    settles it (or it expires). Its `CheckState` token fields count calls."""


@dataclass(frozen=True, slots=True, init=False)
class BudgetCheck:
    """One budget instance in an admission: its scope, and its usable limit (for the request's
    priority) in its `terms`, read through the fields `window`, `limit_nanos`, `limit_tokens`,
    `blocking` and `limit_calls`. Made from those six fields, as the dataclass of them it was;
    frozen, equal and hashed by scope and terms."""

    scope: str
    terms: CheckTerms

    def __init__(  # noqa: PLR0917 - the six fields in order, as the dataclass it was took them
        self,
        scope: str,
        window: Window,
        limit_nanos: int | None,
        limit_tokens: int | None,
        blocking: bool,
        limit_calls: int | None = None,
    ) -> None:
        _set_field(self, "scope", scope)
        _set_field(self, "terms", CheckTerms(window, limit_nanos, limit_tokens, blocking, limit_calls))

    @classmethod
    def sharing(cls, scope: str, terms: CheckTerms) -> BudgetCheck:
        """A check of `scope` on `terms` (the object itself, shared)."""
        check = cls.__new__(cls)
        _set_field(check, "scope", scope)
        _set_field(check, "terms", terms)
        return check

    @property
    def window(self) -> Window:
        return self.terms.window

    @property
    def limit_nanos(self) -> int | None:
        return self.terms.limit_nanos

    @property
    def limit_tokens(self) -> int | None:
        return self.terms.limit_tokens

    @property
    def blocking(self) -> bool:
        return self.terms.blocking

    @property
    def limit_calls(self) -> int | None:
        return self.terms.limit_calls

    def amounts(self, nanos: int, tokens: int) -> tuple[int, int]:
        """What a reservation of (`nanos`, `tokens`) holds on this check's scope: one call on a
        call budget (in the token slot), else the estimate."""
        return (0, 1) if self.terms.limit_calls is not None else (nanos, tokens)


_set_field: Final = object.__setattr__
"""How a frozen check's fields are set (the dataclass's `__setattr__` refuses)."""


class CheckState(NamedTuple):
    """A budget's state in an admission (a named tuple: `decide()` makes one per matching budget).

    For a call budget (`BudgetCheck.limit_calls`) `spent_tokens` and `reserved_tokens` count calls:
    the calls made in the window and the calls admitted and not yet settled."""

    spent_nanos: int
    spent_tokens: int
    reserved_nanos: int
    reserved_tokens: int
    fits: bool


class SubBucket(NamedTuple):
    """Spend in one sub-bucket of a rolling window, counts as `totals` reads them (an unreadable
    value reads as `CEILING`)."""

    number: int
    """The sub-bucket's index (`RollingWindow.bucket`: `int(ts // step)`)."""
    nanos: int
    tokens: int
    requests: int = 0
    """Calls counted (what a call budget counts)."""


def report_unrestored(kind: str, corrupt: Sequence[str], unknown: Sequence[str], owners: str = "policies") -> None:
    """Log, once per restore, the saved entries of `kind` that were not restored, and why."""
    if corrupt:
        logger.warning("%s state: %d unreadable entries ignored: %s", kind, len(corrupt), ", ".join(corrupt[:5]))
    if unknown:
        logger.warning(
            "%s state: %d entries for %s no longer configured (or full) ignored: %s",
            kind,
            len(unknown),
            owners,
            ", ".join(unknown[:5]),
        )


def check_state(
    check: BudgetCheck, spent: Sequence[int], reserved: Sequence[int], nanos: int, tokens: int
) -> CheckState:
    """Whether `nanos` and `tokens` more fit in a budget already at `spent` + `reserved`.

    Every store decides with this one rule: with no estimate a request fits while anything is
    left; with one it fits when spend, reservations and the estimate stay within the limit. A call
    budget's amount is always one call: it fits while calls made (`spent[2]`, the requests) and
    calls held (`reserved[1]`) are under its limit. Every input is a count in `[0, CEILING]` and
    limits are clamped to `CEILING`, so a saturated counter never fits.
    """
    if (calls := check.limit_calls) is not None:
        return CheckState(spent[0], spent[2], reserved[0], reserved[1], spent[2] + reserved[1] < min(calls, CEILING))
    used_nanos = spent[0] + reserved[0]
    used_tokens = spent[1] + reserved[1]
    limit = check.limit_nanos
    if limit is not None:
        limit = min(limit, CEILING)
    fits = limit is None or (used_nanos + nanos <= limit if nanos else used_nanos < limit)
    if fits and (limit := check.limit_tokens) is not None:
        limit = min(limit, CEILING)
        fits = used_tokens + tokens <= limit if tokens else used_tokens < limit
    return CheckState(spent[0], spent[1], reserved[0], reserved[1], fits)


def fullest_states(groups: Sequence[Sequence[BudgetCheck]], states: Sequence[CheckState]) -> list[CheckState]:
    """Per group, the fullest of its checks' `states` (given flat, in the groups' order): the most
    nanos spent plus reserved when the group's checks have a nano limit, the most calls made plus held
    for a call budget, else the most tokens spent; the first of equals. The rule every
    `Store.read_fullest` answers by."""
    found: list[CheckState] = []
    at = 0
    for group in groups:
        first = group[0]
        rank = (
            _spent_and_reserved_nanos
            if first.limit_nanos is not None
            else _spent_and_reserved_tokens
            if first.limit_calls is not None
            else _spent_tokens
        )
        found.append(max(states[at : at + len(group)], key=rank))  # `max` keeps the first of equals
        at += len(group)
    return found


def _spent_and_reserved_nanos(state: CheckState) -> int:
    return state.spent_nanos + state.reserved_nanos


def _spent_tokens(state: CheckState) -> int:
    return state.spent_tokens


def _spent_and_reserved_tokens(state: CheckState) -> int:
    return state.spent_tokens + state.reserved_tokens


class Admission(NamedTuple):
    """Reserve `nanos` and `tokens` on every check's budget (one call on a call budget's), iff every
    blocking one fits. An admission with a call budget among its checks reserves even with no
    estimate. (A named tuple, as `CheckState`: `decide()` makes one per decision.)"""

    decision_id: str
    checks: tuple[BudgetCheck, ...]
    nanos: int
    tokens: int
    expires_at: float
    settle_key: str | None
    reserve: bool = True
    """False: only read the checks' state (the request is already denied for another reason)."""
    source: str = "request"
    """Where the estimate came from (`Decision.estimate_source`), kept with the reservation for its `Outcome`."""


class Admitted(NamedTuple):
    """The store's answer to an `Admission`: whether it reserved, and each check's state."""

    reserved: bool
    states: tuple[CheckState, ...]


class Store(Protocol):
    """What every backend does; `MemoryStore` is the reference the conformance suite holds each
    backend to (tests/store/test_conformance.py)."""

    @property
    def shares_state(self) -> bool:
        """True when other processes (replicas, forked workers) read and write the same state (a
        SQLite file, Redis): then breaker state is shared through `merge_state`."""
        ...

    @property
    def does_io(self) -> bool:
        """True when a call may block on I/O (disk, network): callers on an event loop must run it
        in a thread. False only for a store that answers from this process's memory."""
        ...

    def after_fork(self) -> None:
        """Make the store usable in a child after `os.fork()`: locks the parent's threads held are
        replaced, caches the child cannot trust are dropped. Called in the child, before any other
        call; must not do I/O."""
        ...

    def apply(self, records: Sequence[SpendRecord], now: float) -> list[ApplyResult]:
        """Dedupe and apply each record atomically; the results are in the records' order."""
        ...

    def totals(self, reads: Sequence[tuple[str, Window]], now: float) -> list[Counter]:
        """Spend of each (scope, window) in the window current at `now` (zero when unknown)."""
        ...

    def admit(self, admission: Admission, now: float) -> Admitted:
        """Check every budget and reserve on all of them iff every blocking one fits, atomically."""
        ...

    def read_budgets(self, checks: Sequence[BudgetCheck], now: float) -> list[CheckState]:
        """The state of each check's budget at `now`, in order, reserving nothing: exactly the
        states `admit` with `reserve=False` and no estimate reads (`fits`: anything is left)."""
        ...

    def read_fullest(self, groups: Sequence[Sequence[BudgetCheck]], now: float) -> list[CheckState]:
        """For each non-empty group of checks on one budget (one window and limit), in order, the
        state `read_budgets` reads for its fullest check, reserving nothing: `fullest_states` over
        `read_budgets` of every check is the reference answer. A store answers it in one pass over
        its own structures, without a state per check: a scrape reads tens of thousands of budget
        instances into a few hundred series."""
        ...

    def read_sub_buckets(self, reads: Sequence[tuple[str, RollingWindow]], now: float) -> list[tuple[SubBucket, ...]]:
        """For each (scope, rolling window), in order, its sub-buckets that count at `now` and hold
        spend (nanos or tokens), oldest first: what `totals` sums. Read-only in effect (a ring may
        be moved forward to `now`, as any read does). An unreadable window reads as one sub-bucket,
        the newest, at `CEILING`."""
        ...

    def release(self, decision_id: str) -> bool:
        """Drop a reservation (the call will not happen); False if it was not open."""
        ...

    def mark(self, key: str, expires_at: float) -> bool:
        """Set `key` if absent (True) or report it was set already (False): once-per-crossing alerts."""
        ...

    def unmark(self, key: str) -> None: ...

    def expire(self, now: float) -> int:
        """Forget what is past its expiry (windows, dedupe keys, reservations, marks); returns how many."""
        ...

    def save_state(self, namespace: str, items: Mapping[str, bytes]) -> None:
        """Insert or replace each key's blob in `namespace`, all of them in one transaction."""
        ...

    def load_state(self, namespace: str) -> dict[str, bytes]:
        """Every key's blob in `namespace` (empty when there is none)."""
        ...

    def delete_state(self, namespace: str, keys: Iterable[str]) -> None:
        """Forget these keys of `namespace` (absent keys are ignored), in one transaction."""
        ...

    def merge_state(self, namespace: str, items: Mapping[str, tuple[int, bytes]]) -> dict[str, tuple[int, bytes]]:
        """Keep each key's (version, blob) where its version is higher than the one kept, atomically;
        then every key's (version, blob) in `namespace`. Replicas share state (breakers) this way: a
        newer state, wherever it was made, wins, and an older one never overwrites it."""
        ...

    def read_ledger(self, start: int, end: int) -> list[tuple[int, str, tuple[int, ...]]]:
        """Every ledger row of the hours in `[start, end)` (epoch seconds): (hour, dims, counts), the
        counts as `ledger.COUNTS`, each saturated at `CEILING`. A row that cannot be read back (another
        tool's writes) is left out and reported (`health()`)."""
        ...

    def take_outcomes(self) -> list[Outcome]:
        """The outcomes of reservations since they were last taken (by any process), oldest first,
        and forget them: each is reported once."""
        ...

    def add_samples(self, samples: Sequence[Sample], *, keep: int, ttl_s: float, now: float) -> None:
        """Append each sample to its key's series, which keeps its newest `keep` (at most
        `MAX_SAMPLES`) and is forgotten `ttl_s` after `now` unless written again; past `MAX_SAMPLE_KEYS`
        series, the least recently written are forgotten. In one transaction."""
        ...

    def read_samples(self, keys: Sequence[str], since: float) -> list[list[tuple[int, int]]]:
        """For each key, in order, its kept samples applied at `since` or later, as (nanos, tokens),
        newest first. A stored value that cannot be read back as a count reads as `CEILING` (the
        caller bounds it) and is reported (`health()`)."""
        ...

    def health(self) -> StoreHealth:
        """What the store found wrong with its state: saturated counters, unreadable values, a
        damaged file (`problem`: readiness fails while it is set)."""
        ...

    def forward_queue(self, max_bytes: int) -> ForwardQueue:
        """A queue of OTLP batches for the downstream (`otel-puppy serve --forward-to`), kept where this
        store keeps its state (durable when the store is), bounded at `max_bytes`; its owner closes it.

        Raises:
            StoreError: the queue cannot be opened.
        """
        ...

    def close(self) -> None: ...


SCHEMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "memory": "otel_puppy.store.memory:MemoryStore",
        "sqlite": "otel_puppy.store.sqlite:SQLiteStore",
        "redis": "otel_puppy.store.redis:RedisStore",
        "rediss": "otel_puppy.store.redis:RedisStore",
        "unix": "otel_puppy.store.redis:RedisStore",
        "valkey": "otel_puppy.store.redis:RedisStore",
        "redis+cluster": "otel_puppy.store.redis:RedisStore",
        "rediss+cluster": "otel_puppy.store.redis:RedisStore",
    }
)
"""Store URL scheme -> `module:Class` of its backend, whose `from_url(url)` opens it: the one place a
scheme is registered (`open_store` and the `store` setting's validator both read it). The module is
imported only when a URL names it, so an optional backend's client library stays optional."""


def open_store(url: str) -> Store:
    """A store for a settings URL: `memory://`, `sqlite:///path/to/state.db` (`sqlite://`: in memory),
    `redis://host:port/db` (the `redis` extra; `rediss://` for TLS, `valkey://` accepted too), or
    `redis+cluster://host:port` for a Redis Cluster (`rediss+cluster://` for TLS).

    Raises:
        StoreError: an unknown or unavailable kind of store, or one that cannot be opened.
    """
    backend = SCHEMES.get(url.partition(":")[0])
    if backend is None:
        raise StoreError(
            f"store URL scheme {url.partition(':')[0]!r} is not supported: use memory://, sqlite:///path, "
            "redis://host:port/db or redis+cluster://host:port"
        )
    module, _, name = backend.partition(":")
    store: Store = getattr(importlib.import_module(module), name).from_url(url)
    return store
