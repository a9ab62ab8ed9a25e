"""Time windows that spend is counted in.

Calendar windows (`hour`, `day`, `week`, `month`) follow the wall clock of a timezone, so a
`day` in Europe/Paris is 23 or 25 hours long on DST changes. Rolling windows (`15m`, `1h`,
`24h`, `7d`, `30d`) are kept as 60 sub-buckets each and summed over the trailing duration: they
never reset, their spend ages out one sub-bucket at a time (`RollingWindow.drops_at`), so when a
request fits again is worked out from the sub-buckets (`RollingWindow.room_at`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ("CALENDAR_UNITS", "Bucket", "CalendarWindow", "RollingWindow", "Window", "parse_window")

CALENDAR_UNITS: Final = ("hour", "day", "week", "month")
_ROLLING = re.compile(r"^(\d+)(s|m|h|d)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SUB_BUCKETS: Final = 60


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter's slot in time: spend at `ts` is added to the counter named `key`."""

    key: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class CalendarWindow:
    unit: str
    zone: ZoneInfo
    _last: list[tuple[float, float, datetime, str]] = field(
        default_factory=lambda: [(0.0, 0.0, datetime.min.replace(tzinfo=UTC), "")],
        compare=False,
        hash=False,
        repr=False,
    )
    """The bucket computed last (start, end, end as a datetime and as ISO 8601 text): local-time
    arithmetic is the slow part, and the current bucket is nearly always the answer. One list item,
    replaced whole: thread-safe."""

    @property
    def name(self) -> str:
        return self.unit

    def bucket(self, ts: float) -> Bucket:
        start, end = self.bounds(ts)
        return Bucket(f"{self.unit}:{int(start)}", start, end)

    def buckets_for_read(self, now: float) -> tuple[Bucket, ...]:
        return (self.bucket(now),)

    def resets_at(self, now: float) -> float:
        return self.bounds(now)[1]

    def resets_at_datetime(self, now: float) -> datetime:
        """When the window current at `now` ends, as an aware UTC datetime."""
        start, end, end_datetime, _ = self._last[0]
        if start <= now < end:
            return end_datetime
        return datetime.fromtimestamp(self.bounds(now)[1], UTC)

    def resets_at_text(self, now: float) -> str:
        """`resets_at_datetime(now).isoformat()`, kept with the current bucket (every budget hit over
        HTTP sends it)."""
        start, end, _, text = self._last[0]
        if start <= now < end:
            return text
        return self.resets_at_datetime(now).isoformat()

    def bounds(self, ts: float) -> tuple[float, float]:
        start, end, _, _ = self._last[0]
        if start <= ts < end:
            return start, end
        start, end = self._compute(ts)
        if start >= self._last[0][0]:
            end_datetime = datetime.fromtimestamp(end, UTC)
            self._last[0] = (start, end, end_datetime, end_datetime.isoformat())
        return start, end

    def _compute(self, ts: float) -> tuple[float, float]:
        local = datetime.fromtimestamp(ts, self.zone)
        if self.unit == "hour":
            start = local.replace(minute=0, second=0, microsecond=0)
            # An hour is 3600 s even across a DST change; start carries `fold` so it is exact.
            return start.timestamp(), start.timestamp() + 3600
        day = local.date()
        if self.unit == "day":
            first, following = day, day + timedelta(days=1)
        elif self.unit == "week":
            first = day - timedelta(days=day.weekday())
            following = first + timedelta(days=7)
        else:
            first = day.replace(day=1)
            following = (first + timedelta(days=32)).replace(day=1)
        return _midnight(first, self.zone), _midnight(following, self.zone)

    def retention(self) -> float:
        return {"hour": 2 * 3600, "day": 2 * 86400, "week": 14 * 86400, "month": 62 * 86400}[self.unit]


@dataclass(frozen=True, slots=True)
class RollingWindow:
    seconds: int
    label: str

    @property
    def name(self) -> str:
        return self.label

    @property
    def step(self) -> float:
        return self.seconds / SUB_BUCKETS

    def bucket(self, ts: float) -> Bucket:
        index = int(ts // self.step)
        return Bucket(f"{self.label}:{index}", index * self.step, (index + 1) * self.step)

    def buckets_for_read(self, now: float) -> tuple[Bucket, ...]:
        """The sub-buckets whose spend still counts at `now`: the current one and 60 before it.

        Spend therefore counts for at least the whole duration (and at most one step longer):
        for enforcement, counting a little long is safe where dropping early would overshoot.
        """
        last = int(now // self.step)
        return tuple(
            Bucket(f"{self.label}:{i}", i * self.step, (i + 1) * self.step) for i in range(last - SUB_BUCKETS, last + 1)
        )

    def resets_at(self, now: float) -> float:
        """When the oldest sub-bucket counted now drops out (a rolling window never resets: spend
        ages out sub-bucket by sub-bucket; see `drops_at` and `room_at`)."""
        return (int(now // self.step) + 1) * self.step

    def drops_at(self, index: int) -> float:
        """When spend in sub-bucket `index` stops counting: `buckets_for_read` counts the current
        sub-bucket and the 60 before it, so at the first instant of sub-bucket `index + 61`.

        >>> RollingWindow(3600, "1h").drops_at(0)
        3660.0
        """
        step = self.step
        edge = index + SUB_BUCKETS + 1
        at = edge * step
        # The first float `bucket()` puts in sub-bucket `edge`: with a step like 61/60 s the
        # product can land a rounding error either side of it.
        while int(at // step) < edge:
            at = math.nextafter(at, math.inf)
        while int((before := math.nextafter(at, -math.inf)) // step) >= edge:
            at = before
        return at

    def room_at(self, buckets: Iterable[tuple[int, int]], held: int, need: int, limit: int, now: float) -> float | None:
        """The first instant from `now` at which what still counts of `buckets` ((sub-bucket index,
        amount), each counted at `now`), plus `held`, plus `need` fits `limit`: within it with a
        need, under it without one (the rule of `store.base.check_state`). None: never (`need`
        alone does not fit).

        `held` (reservations in flight) is counted as spend made at `now`: a reservation nearly
        always settles within seconds as spend that then counts for the whole window, and one that
        expires unsettled only frees room sooner.

        >>> RollingWindow(3600, "1h").room_at([(0, 60), (20, 30)], 0, 25, 100, 1800.0)
        3660.0
        """
        limit = max(limit, 0)
        if need > limit or (need == 0 and limit == 0):
            return None
        room = limit - need if need else limit - 1
        dropping = sorted((self.drops_at(index), amount) for index, amount in buckets)
        dropping.append((self.drops_at(int(now // self.step)), held))
        dropping.sort(key=lambda item: item[0])  # stable: the held amount last among equals
        left = sum(amount for _, amount in dropping)
        if left <= room:
            return now
        for at, amount in dropping:
            left -= amount
            if left <= room:
                return max(at, now)
        return None  # unreachable: nothing is left once every amount has dropped

    def resets_at_datetime(self, now: float) -> datetime:
        return datetime.fromtimestamp(self.resets_at(now), UTC)

    def retention(self) -> float:
        return self.seconds + 2 * self.step


Window = CalendarWindow | RollingWindow


def parse_window(text: str, zone: ZoneInfo) -> Window:
    """`day` -> calendar day in `zone`; `24h` -> the trailing 24 hours.

    Raises:
        ValueError: the text is neither a calendar unit nor a duration like `15m`, `1h`, `7d`.
    """
    if text in CALENDAR_UNITS:
        return CalendarWindow(text, zone)
    match = _ROLLING.match(text)
    if not match:
        raise ValueError(
            f"unknown window {text!r}: use one of {', '.join(CALENDAR_UNITS)} or a duration like 15m, 1h, 24h, 7d"
        )
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if not 60 <= seconds <= 90 * 86400:
        raise ValueError(f"rolling window {text!r} must be between 1m and 90d")
    return RollingWindow(seconds, text)


def _midnight(day: object, zone: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()  # type: ignore[attr-defined]
