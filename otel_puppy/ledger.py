"""The cost ledger: hourly rollups of exact spend, for chargeback (FOCUS export, `status --by team`).

Every applied, priced call adds to one ledger row: its hour (the time its spend is filed under, as
budgets file it: the end of the call, or its arrival when it was late) and its dimensions (provider,
the model that priced it, service, agent, team, environment, and the unit prices it was priced at).
A row holds the calls and, per token type, the tokens and their cost in nano-USD:

- `input`: input tokens neither read from nor written to the prompt cache;
- `cached_input`: prompt-cache reads; `cache_write`: prompt-cache writes;
- `output`: output tokens that are not reasoning; `reasoning`: reasoning tokens;
- and `request_nanos`, a per-request fee where a model has one.

Each type has its own price, so each exported row states a truthful quantity, unit price and cost.
The types' costs add up to the call's cost exactly: each is the type's tokens at its unit price (the
linear form genai-prices' price takes for the call's tier), rounded down to the nano-dollar, and the
nano-dollars the call's own rounding adds are given to the types with the largest remainders. For a
price that is not linear in the token counts (none in genai-prices today), each type's cost is what
it adds to the call's price, in the order above.

The store writes a call's row in the same atomic step as its spend (`SpendRecord.ledger`), so a
retried batch never adds twice, and keeps rows for `OTEL_PUPPY_LEDGER_RETENTION_DAYS` (400); the
memory store keeps `MEMORY_LEDGER_DAYS` (35) at most, enough for last month. Dimensions are bounded
like every name (`bounds.MAX_NAME_LENGTH`) and rows per hour as a whole (`MAX_LEDGER_ROWS`): past it
a new row's calls are folded into one row of `other` dimensions (no unit prices), so totals stay
exact. User and conversation ids are never dimensions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quoted  # `json.dumps`'s own, with ensure_ascii=False
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from otel_puppy.store.base import Store

__all__ = (
    "COUNTS",
    "DIMS",
    "MAX_LEDGER_ROWS",
    "MEMORY_LEDGER_DAYS",
    "OTHER_DIMS",
    "TOKEN_TYPES",
    "LedgerEntry",
    "LedgerRow",
    "TokenType",
    "decode_dims",
    "encode_dims",
    "hour_of",
    "split_costs",
)

HOUR: Final = 3600
MAX_LEDGER_ROWS: Final = 10_000
"""Ledger rows one hour may have; a call that would add another is folded into `OTHER_DIMS`."""
MEMORY_LEDGER_DAYS: Final = 35
"""What the memory store keeps at most (a month and its edges): it lives only as long as its process."""
DIMS: Final = ("provider", "model", "service", "agent", "team", "environment", "prices")
"""A row's dimensions, in order; `prices` holds the unit prices (`unit_prices`), empty when unknown."""
COUNTS: Final = (
    "calls",
    "input_tokens",
    "input_nanos",
    "cached_input_tokens",
    "cached_input_nanos",
    "cache_write_tokens",
    "cache_write_nanos",
    "output_tokens",
    "output_nanos",
    "reasoning_tokens",
    "reasoning_nanos",
    "request_nanos",
)
"""A row's counts, in order: every one an integer a store adds exactly."""


class TokenType(NamedTuple):
    """One token type of a row: its name, and where its tokens and nano-USD are in `COUNTS`."""

    name: str
    tokens: int
    nanos: int


TOKEN_TYPES: Final = (
    TokenType("input", 1, 2),
    TokenType("cached_input", 3, 4),
    TokenType("cache_write", 5, 6),
    TokenType("output", 7, 8),
    TokenType("reasoning", 9, 10),
)
REQUEST_NANOS: Final = 11
COST_COUNTS: Final = (*(t.nanos for t in TOKEN_TYPES), REQUEST_NANOS)
"""Where a row's nano-USD are in `COUNTS`: every type's, then the request fees."""


def encode_dims(dims: Sequence[str | None]) -> str:
    """A row's dimensions as one store key (JSON: injective, and read back by `decode_dims`): what
    `json.dumps(list(dims), separators=(",", ":"), ensure_ascii=False)` writes, in a third of its time."""
    if all(type(d) is str or d is None for d in dims):
        return "[" + ",".join([_quoted(d) if d is not None else "null" for d in dims]) + "]"
    return json.dumps(list(dims), separators=(",", ":"), ensure_ascii=False)


def decode_dims(key: str) -> tuple[str | None, ...] | None:
    """The dimensions `encode_dims` wrote, or None for a key it did not write (another tool's)."""
    try:
        dims = json.loads(key)
    except ValueError:
        return None
    if not isinstance(dims, list) or len(dims) != len(DIMS):
        return None
    if not all(d is None or isinstance(d, str) for d in dims):
        return None
    return tuple(dims)


OTHER_DIMS: Final = encode_dims(["other", "other", "other", "other", "other", "other", ""])


class LedgerEntry(NamedTuple):
    """What one applied call adds to the ledger (`SpendRecord.ledger`)."""

    hour: int
    """The start of its hour, in seconds since the epoch (UTC)."""
    dims: str
    """`encode_dims` of its dimensions."""
    counts: tuple[int, ...]
    """As `COUNTS`: 1 call, then its tokens and nano-USD per type, then its request fee."""
    until: float
    """When the row may be forgotten (its hour plus the retention)."""


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One row of the ledger as read back: an hour, its dimensions and its counts."""

    hour: int
    provider: str
    model: str
    service: str | None
    agent: str | None
    team: str | None
    environment: str | None
    prices: str
    counts: tuple[int, ...]

    @property
    def nanos(self) -> int:
        """The row's cost in nano-USD: every type's, and the request fees."""
        counts = self.counts
        return sum(counts[i] for i in COST_COUNTS)

    @classmethod
    def read(cls, hour: int, key: str, counts: Sequence[int]) -> LedgerRow | None:
        dims = decode_dims(key)
        if dims is None or len(counts) != len(COUNTS):
            return None
        provider, model, service, agent, team, environment, prices = dims
        return cls(hour, provider or "", model or "", service, agent, team, environment, prices or "", tuple(counts))


def hour_of(ts: float) -> int:
    """The start of the UTC hour `ts` (epoch seconds) falls in."""
    return int(ts // HOUR) * HOUR


def split_costs(scaled_parts: Sequence[int], scale: int, total_nanos: int) -> list[int]:
    """Each part's nano-USD, given exactly as `scaled_parts` (USD times `10**scale`, each >= 0, scale
    >= 9): rounded down, then the nano-dollars `total_nanos` has over their sum given one each to the
    parts with the largest remainders (the first of equal ones), so they add up to `total_nanos`.

    >>> split_costs([1_500, 2_500, 1_000], 12, 5)
    [2, 2, 1]
    """
    unit = 10 ** (scale - 9)
    floors = [part // unit for part in scaled_parts]
    left = total_nanos - sum(floors)
    if left == 1:  # the usual remainder: the first part with the largest remainder gets it
        remainders = [part % unit for part in scaled_parts]
        floors[remainders.index(max(remainders))] += 1
        left = 0
    elif left > 0:
        below = [-(part % unit) for part in scaled_parts]
        order = sorted(range(len(scaled_parts)), key=below.__getitem__)
        for i in order[:left]:
            floors[i] += 1
        left -= min(left, len(order))
    if left:  # cannot happen for parts that add up to the total; never lose a nano-dollar
        floors[0] += left
    return floors


def unit_prices(scale: int, units: Iterable[int]) -> str:
    """The `prices` dimension: the scale and each type's unit price (then the request fee) scaled."""
    return f"{scale}:" + ",".join(str(unit) for unit in units)


def read_unit_prices(prices: str) -> tuple[int, tuple[int, ...]] | None:
    """The scale and each type's scaled unit price (then the request fee's) that `unit_prices` wrote, or
    None when unknown (empty, or not written by it)."""
    scale, _, units = prices.partition(":")
    parts = units.split(",")
    if not scale.isdigit() or not all(part.lstrip("-").isdigit() for part in parts):
        return None
    return int(scale), tuple(int(part) for part in parts)


LEDGER_DIMENSIONS: Final = frozenset({"provider", "model", "service", "agent", "team", "environment"})
"""What a row can be selected or grouped by (`read_rows`, `costs_by`)."""
MAX_PERIOD_DAYS: Final = 3660
"""The longest period one read covers (the longest retention)."""


def read_rows(store: Store, start: int, end: int, scope: Mapping[str, str] | None = None) -> Iterator[LedgerRow]:
    """The ledger rows of the hours in `[start, end)`, a day of them read at a time (so an export of
    any length holds one day's rows); with `scope`, only those whose dimensions have its values (a
    scoped token's view). A row the store could not read back is left out (and reported by the store).

    Raises:
        ValueError: `scope` names a dimension the ledger does not keep (user, conversation); at once.
        StoreError: the store did not answer (while iterating).
    """
    wanted = dict(scope or {})
    if not LEDGER_DIMENSIONS.issuperset(wanted):
        unknown = sorted(set(wanted) - LEDGER_DIMENSIONS)[0]
        raise ValueError(f"the ledger is not kept by {unknown}")
    return _rows(store, start, end, wanted)


def _rows(store: Store, start: int, end: int, wanted: Mapping[str, str]) -> Iterator[LedgerRow]:
    for day in range(start, end, _READ_CHUNK_S):
        for hour, dims, counts in store.read_ledger(day, min(day + _READ_CHUNK_S, end)):
            row = LedgerRow.read(hour, dims, counts)
            if row is not None and all(getattr(row, name) == value for name, value in wanted.items()):
                yield row


_READ_CHUNK_S: Final = 86400


def costs_by(rows: Iterable[LedgerRow], by: Sequence[str]) -> list[tuple[tuple[str | None, ...], int, int]]:
    """Cost in nano-USD and calls per value of the `by` dimensions, the largest cost first."""
    totals: dict[tuple[str | None, ...], list[int]] = {}
    for row in rows:
        key = tuple(getattr(row, name) for name in by)
        total = totals.setdefault(key, [0, 0])
        total[0] += row.nanos
        total[1] += row.counts[0]
    return sorted(((key, n, c) for key, (n, c) in totals.items()), key=lambda t: (-t[1], [k or "" for k in t[0]]))


def parse_period(start: str | None, end: str | None, now: float) -> tuple[int, int]:
    """`[start, end)` in epoch seconds, on hour boundaries, from `YYYY-MM`, `YYYY-MM-DD` or an ISO 8601
    time (UTC unless it says otherwise): by default the last calendar month; `end` alone (or `start`
    alone) takes the month before (or after) it.

    Raises:
        ValueError: naming `from` or `to`: not a time, `to` not after `from`, or a period over
            `MAX_PERIOD_DAYS` days.
    """
    this_month = datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    begin = _instant("from", start) if start else None
    finish = _instant("to", end) if end else None
    if begin is None and finish is None:
        finish = this_month
        begin = _months(this_month, -1)
    elif begin is None:
        assert finish is not None
        begin = _months(finish, -1)
    elif finish is None:
        finish = _months(begin, 1)
    first, last = hour_of(begin.timestamp()), -(-int(finish.timestamp()) // HOUR) * HOUR
    if last <= first:
        raise ValueError("to: must be after from")
    if last - first > MAX_PERIOD_DAYS * 86400:
        raise ValueError(f"to: the period is over {MAX_PERIOD_DAYS} days")
    return first, last


def _instant(name: str, text: str) -> datetime:
    if len(text) > 64:
        raise ValueError(f"{name}: not a date or time (at most 64 characters)")
    try:
        if len(text) == 7:  # YYYY-MM
            return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a date (YYYY-MM-DD, YYYY-MM) or an ISO 8601 time") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _months(at: datetime, months: int) -> datetime:
    index = at.year * 12 + at.month - 1 + months
    return at.replace(year=index // 12, month=index % 12 + 1, day=min(at.day, 28) if at.day > 28 else at.day)
