"""Time windows that spend is counted in.

Calendar windows (`hour`, `day`, `week`, `month`) follow the wall clock of a timezone, so a
`day` in Europe/Paris is 23 or 25 hours long on DST changes. Rolling windows (`15m`, `1h`,
`24h`, `7d`, `30d`) are kept as 60 sub-buckets each and summed over the trailing duration.
"""

from __future__ import annotations

import re
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
    _last: list[tuple[float, float, datetime]] = field(
        default_factory=lambda: [(0.0, 0.0, datetime.min.replace(tzinfo=UTC))], compare=False, hash=False, repr=False
    )
    """The bucket computed last (start, end, end as a datetime): local-time arithmetic is the slow part,
    and the current bucket is nearly always the answer. One list item, replaced whole: thread-safe."""

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
        start, end, end_datetime = self._last[0]
        if start <= now < end:
            return end_datetime
        return datetime.fromtimestamp(self.bounds(now)[1], UTC)

    def bounds(self, ts: float) -> tuple[float, float]:
        start, end, _ = self._last[0]
        if start <= ts < end:
            return start, end
        start, end = self._compute(ts)
        if start >= self._last[0][0]:
            self._last[0] = (start, end, datetime.fromtimestamp(end, UTC))
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
        """When the oldest sub-bucket counted now drops out."""
        return (int(now // self.step) + 1) * self.step

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
