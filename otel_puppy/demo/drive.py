"""Driving a fleet in one event loop: Poisson arrivals until a deadline, then the runs in flight finish."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Final

from otel_puppy.demo.fleet import Fleet

__all__ = ("REFRESH_S", "drive_fleet")

_MAX_IN_FLIGHT: Final = 256


REFRESH_S: Final = 0.5


async def drive_fleet(
    fleet: Fleet,
    *,
    duration: float | None,
    rate: float,
    on_tick: Callable[[float], None] | None,
) -> None:
    """Launch runs at `rate` a second (Poisson arrivals) until `duration`, then let them finish.

    The first Ctrl-C (`asyncio.run` cancels this task) stops launching and lets the runs in flight
    finish, so their spans are complete; a second one stops at once.
    """
    start = time.monotonic()
    deadline = math.inf if duration is None else start + duration
    fleet.start(start)
    tasks: set[asyncio.Task[None]] = set()
    ticker = asyncio.create_task(_tick(on_tick, start)) if on_tick is not None else None
    try:
        try:
            await _launch(fleet, tasks, start=start, deadline=deadline, rate=rate)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or current.uncancel() > 0:
                raise  # cancelled by someone else too
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def _launch(fleet: Fleet, tasks: set[asyncio.Task[None]], *, start: float, deadline: float, rate: float) -> None:
    next_at = start
    while next_at < deadline:
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        fleet.update_outage(now)
        if len(tasks) >= _MAX_IN_FLIGHT:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(fleet.run_one(fleet.plan(now)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += fleet.next_arrival(rate)
    remaining = deadline - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)


async def _tick(on_tick: Callable[[float], None], start: float) -> None:
    while True:
        on_tick(time.monotonic() - start)
        await asyncio.sleep(REFRESH_S)
