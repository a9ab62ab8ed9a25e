"""Log lines an attacker cannot multiply: at most one line per key per interval.

Warnings that a request or a span can trigger again and again (a scope folded into `other`, a
refused decision, an internal error, a failing webhook) go through a `RateLimitedLog`, keyed by
what an operator acts on (the policy, the reason), never by the hostile value itself. The first
line for a key is written at once; repeats within `interval_s` are only counted, and the next
line for that key, or a summary line once the interval is over, says how many were suppressed.

So a flood of any number of distinct values costs at most two lines per key per interval (the
line and its summary), and keys are bounded too (`max_keys`; past it, keys share one).

>>> log = RateLimitedLog(logging.getLogger("otel_puppy"), interval_s=60)  # doctest: +SKIP
>>> log.warning("fold:per-user", "budget %s is full; %r counts as 'other'", name, label)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ("DEFAULT_INTERVAL_S", "DEFAULT_MAX_KEYS", "OVERFLOW_KEY", "RateLimitedLog")

DEFAULT_INTERVAL_S: Final = 60.0
DEFAULT_MAX_KEYS: Final = 1_000
OVERFLOW_KEY: Final = "<other keys>"
"""Keys past `max_keys` share this one (so do their lines)."""


@dataclass(slots=True)
class _Key:
    started: float
    """When the line that opened this key's interval was written."""
    suppressed: int = 0
    level: int = logging.WARNING
    message: str = ""
    """The last suppressed line's format string, named in the summary."""


class RateLimitedLog:
    """A logger's lines, at most one per key per `interval_s`, with the count of suppressed repeats.

    Thread-safe. `clock` is injected (monotonic seconds) so tests never sleep.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self.clock = clock
        self.suppressed = 0
        """Lines suppressed so far, in total (for tests and status pages)."""
        self._keys: dict[str, _Key] = {}
        self._next_sweep = clock() + interval_s
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object, exc_info: bool | BaseException = False) -> bool:
        return self.log(logging.WARNING, key, msg, *args, exc_info=exc_info)

    def error(self, key: str, msg: str, *args: object, exc_info: bool | BaseException = False) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool | BaseException = False) -> bool:
        """Write the line unless `key` had one within `interval_s`; True if it was written.

        The arguments are formatted only when the line is written (a suppressed line costs a dict
        lookup). `exc_info=True` attaches the exception being handled, as `logger.exception` does; an exception
        instance attaches that one.
        """
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        before = 0
        summaries: list[tuple[str, _Key]] = []
        with self._lock:
            if now >= self._next_sweep:
                summaries = self._sweep(now)
            state = self._keys.get(key)
            if state is None and len(self._keys) >= self.max_keys:
                key = OVERFLOW_KEY
                state = self._keys.get(key)
            if state is not None and now - state.started < self.interval_s:
                state.suppressed += 1
                state.level = max(state.level, level)
                state.message = msg
                self.suppressed += 1
                write = False
            else:
                before = state.suppressed if state is not None else 0
                self._keys[key] = _Key(started=now)
                write = True
        self._summarize(summaries)
        if write:
            if before:
                msg += " (%d similar lines suppressed in the previous %gs)"
                args = (*args, before, self.interval_s)
            self.logger.log(level, msg, *args, exc_info=exc_info)
        return write

    def reset(self) -> None:
        """Forget every key and count, as if new (module-level logs between tests)."""
        with self._lock:
            self._keys.clear()
            self.suppressed = 0

    def flush(self) -> None:
        """Write the summary line of every key whose interval is over (also done as lines come)."""
        with self._lock:
            summaries = self._sweep(self.clock())
        self._summarize(summaries)

    def _sweep(self, now: float) -> list[tuple[str, _Key]]:
        """Under the lock: forget keys whose interval is over, returning those with suppressed lines."""
        self._next_sweep = now + self.interval_s
        over = [key for key, state in self._keys.items() if now - state.started >= self.interval_s]
        return [(key, state) for key in over if (state := self._keys.pop(key)).suppressed]

    def _summarize(self, summaries: list[tuple[str, _Key]]) -> None:
        for key, state in summaries:
            self.logger.log(
                state.level,
                "%d similar lines suppressed in the last %gs for %s (the last: %r)",
                state.suppressed,
                self.interval_s,
                key,
                state.message,
            )
