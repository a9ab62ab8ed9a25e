"""`MemoryStore.admit` and `read_budgets` inline `check_state` for speed: they must answer exactly as
the rule does."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

from otel_puppy.store.base import Admission, BudgetCheck, CheckState, Increment, SpendRecord, check_state
from otel_puppy.store.memory import MemoryStore
from otel_puppy.windows import CalendarWindow, RollingWindow, Window

UTC = ZoneInfo("UTC")
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()
WINDOWS: tuple[Window, ...] = (CalendarWindow("day", UTC), RollingWindow(3600, "1h"))


def test_admit_gives_the_states_check_state_gives_for_every_case() -> None:
    # Budgets at, below and over their limits in nanos and tokens, with and without reservations
    # and estimates: every branch of the rule, through the store's own counters.
    limits = (None, 0, 999, 1000, 1001, 5000)
    spends = ((0, 0), (1000, 40), (1000, 50))
    reserved = ((0, 0), (0, 10))
    estimates = ((0, 0), (1, 0), (0, 1), (1000, 10))
    case = itertools.count()
    for window, limit_nanos, limit_tokens, (spent_nanos, spent_tokens), held, (nanos, tokens) in itertools.product(
        WINDOWS, limits, (None, 50, 60), spends, reserved, estimates
    ):
        if limit_nanos is None and limit_tokens is None:
            continue
        store = MemoryStore()
        scope = f"budget:{next(case)}"
        check = BudgetCheck(scope, window, limit_nanos, limit_tokens, blocking=False)
        if spent_nanos or spent_tokens:
            increment = Increment(scope, window, T0, spent_nanos, spent_tokens)
            store.apply([SpendRecord("span", None, (increment,), T0 + 86400)], T0)
        if held != (0, 0):
            store.admit(Admission("earlier", (check,), held[0], held[1], T0 + 60, None), T0)
        admitted = store.admit(Admission("now", (check,), nanos, tokens, T0 + 60, None, reserve=False), T0)
        expected = check_state(check, (spent_nanos, spent_tokens), held, nanos, tokens)
        assert admitted.states == (expected,)
        assert type(admitted.states[0]) is CheckState
        if nanos == tokens == 0:
            read = store.read_budgets([check], T0)
            assert read == [expected]
            assert type(read[0]) is CheckState
