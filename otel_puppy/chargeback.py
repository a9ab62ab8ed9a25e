"""Chargeback on the dashboards: this month's cost by team and agent, from the cost ledger.

`otel_puppy_cost_this_month_usd{team, agent}` is the ledger's cost since the start of the calendar
month (UTC) per team and agent: the figures `otel-puppy status --by team,agent` prints and a FOCUS
export of the month adds up to. It is read from the store, which every replica shares, so every
replica exports the same values (`max` them, never sum). A team or agent a call did not name is `""`.

A scrape must stay cheap, so hours that can no longer change are added up once: a span is filed under
its end time unless it arrived later than `OTEL_PUPPY_MAX_SPAN_LATENESS_S`, so hours older than that
(and one more) are final; the hours after them are read again at most once a minute (`REFRESH_S`): the
figures are up to a minute old, as fits a monthly figure. Series are bounded by the engine's label
guard (`OTEL_PUPPY_MAX_LABEL_VALUES` values per label, later ones `other`), the same that bounds every
other family, so `agent` takes the values it takes on `otel_puppy_llm_cost_usd_total`; a folded
value's cost is added to its `other` series, so the month's total stays whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric

from otel_puppy.ledger import COST_COUNTS, HOUR, LedgerRow, hour_of
from otel_puppy.money import nanos_to_float
from otel_puppy.store.base import Store

__all__ = ("MonthToDate",)

_NANOS: Final = COST_COUNTS
REFRESH_S: Final = 60.0


class MonthToDate:
    """This month's cost by team and agent, kept up to date from the ledger at each scrape."""

    def __init__(self, store: Store, *, lateness_s: float, guard: Callable[[str, str | None], str]) -> None:
        self._store = store
        self._lateness_s = lateness_s
        self._guard = guard
        self._lock = threading.Lock()
        self._month = -1
        self._final: dict[tuple[str, str], int] = {}
        """Cost in nano-USD per (team, agent) of the month's hours before `_final_until`."""
        self._final_until = 0
        self._last: tuple[float, dict[tuple[str, str], int]] | None = None
        """When the figures were last read (`REFRESH_S`), and their series: the figures per (team,
        agent) as labelled, folded by the guard once per read (a value the guard admitted stays
        admitted, and one it folded stays folded, so the fold cannot change until the next read)."""
        self._names: dict[str, tuple[str, str]] = {}
        """(team, agent) per ledger dims key seen: a scrape decodes each key once."""

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def costs(self, now: float) -> dict[tuple[str, str], int]:
        """Nano-USD per (team, agent) since the start of the month of `now` (UTC).

        Raises:
            StoreError: the store did not answer.
        """
        at = datetime.fromtimestamp(now, UTC)
        month = int(at.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())
        final_until = max(month, hour_of(now - self._lateness_s) - HOUR)
        with self._lock:
            if month != self._month:
                self._month, self._final, self._final_until = month, {}, month
            if final_until > self._final_until:
                self._add(self._final, self._final_until, final_until)
                self._final_until = final_until
            costs = dict(self._final)
            recent_from = self._final_until
        self._add(costs, recent_from, hour_of(now) + HOUR)
        return costs

    def _add(self, into: dict[tuple[str, str], int], start: int, end: int) -> None:
        names = self._names
        if len(names) > 100_000:
            names.clear()
        for chunk in range(start, end, 86400):  # a day at a time, as `ledger.read_rows`
            for _, dims, counts in self._store.read_ledger(chunk, min(chunk + 86400, end)):
                key = names.get(dims)
                if key is None:
                    row = LedgerRow.read(0, dims, counts)
                    if row is None:
                        continue
                    key = names[dims] = (row.team or "", row.agent or "")
                into[key] = into.get(key, 0) + sum(counts[i] for i in _NANOS)

    def collect(self, now: float) -> Iterator[Metric]:
        """`otel_puppy_cost_this_month_usd{team, agent}` (see the module).

        Raises:
            StoreError: the store did not answer (nothing is yielded).
        """
        last = self._last
        if last is None or not 0 <= now - last[0] < REFRESH_S:
            guard = self._guard
            series: dict[tuple[str, str], int] = {}
            for (team, agent), nanos in self.costs(now).items():
                labels = (guard("team", team), guard("agent", agent))
                series[labels] = series.get(labels, 0) + nanos
            last = self._last = (now, series)
        series = last[1]
        family = GaugeMetricFamily(
            "otel_puppy_cost_this_month_usd",
            "Cost since the start of the calendar month (UTC) by team and agent, from the cost ledger (the "
            "figures a FOCUS export of the month adds up to); the same on every replica.",
            labels=("team", "agent"),
        )
        for labels, nanos in series.items():
            family.add_metric(labels, nanos_to_float(nanos))
        yield family
