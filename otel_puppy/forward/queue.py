"""The forward queue: OTLP batches acknowledged upstream and not yet accepted downstream.

A batch is put once it has been applied (priced, counted) and enriched, before the `200` goes
upstream; it leaves the queue only when the downstream accepted it (or refused it for good). Each
store gives its own queue (`Store.forward_queue`): in the SQLite file, in Redis (a stream, so
replicas share it and a dead replica's claimed batches are taken over), or in memory, which does
not survive the process and says so (`durable`).

The queue is bounded in bytes: `put` refuses a batch that does not fit, and the receiver asks
`room` before it applies a batch, so a full queue turns into `503` upstream, never a lost batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Protocol

from otel_puppy.exceptions import PuppyError

__all__ = ("LEASE_S", "Claimed", "ForwardQueue", "MemoryQueue", "QueueFull")

LEASE_S: Final = 60.0
"""A claimed batch not finished within this is given to the next `claim` (its claimer died)."""


class QueueFull(PuppyError):
    """The batch does not fit in the forward queue's bound: refuse it upstream with `503`."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A batch taken from the queue for one delivery attempt."""

    id: str
    body: bytes
    """The `ExportTraceServiceRequest` as it is sent: serialized, compressed when the sender compresses."""
    spans: int


class ForwardQueue(Protocol):
    """Batches in arrival order; `claim` hands each out for `LEASE_S`, `hold` extends that while the
    claimer retries, `done` removes it. A claimer that dies loses its lease: the batch is claimed
    again (delivery is at least once; the downstream sees a batch twice only then)."""

    lease_s: float
    """How long a claim holds (`LEASE_S` unless a test shortens it)."""

    @property
    def durable(self) -> bool:
        """True when a queued batch survives the process (a crash, a `kill -9`)."""
        ...

    def room(self, size: int) -> bool:
        """Whether a batch of `size` bytes would fit now (a hint: `put` is the check)."""
        ...

    def put(self, body: bytes, spans: int) -> None:
        """Append a batch, durably when `durable`, before returning.

        Raises:
            QueueFull: over the queue's byte bound.
            StoreError: the backend failed; nothing was queued.
        """
        ...

    def claim(self, now: float) -> Claimed | None:
        """The oldest batch nobody holds (or whose holder's lease ran out), or None."""
        ...

    def done(self, claimed: Claimed) -> None:
        """The batch was delivered (or refused for good): forget it."""
        ...

    def hold(self, claimed: Claimed, now: float) -> None:
        """Keep the batch claimed for another `LEASE_S` from `now` (the claimer is retrying it)."""
        ...

    def depth(self) -> tuple[int, int]:
        """(batches, bytes) queued now, claimed ones included."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Held:
    body: bytes
    spans: int
    claimed_until: float = 0.0


class MemoryQueue:
    """A queue in this process's memory: lost with it (`durable` is False; `serve` says so)."""

    durable = False

    def __init__(self, max_bytes: int, *, lease_s: float = LEASE_S) -> None:
        self.max_bytes = max_bytes
        self.lease_s = lease_s
        self._items: OrderedDict[int, _Held] = OrderedDict()
        self._next = 0
        self._bytes = 0
        self._lock = threading.Lock()

    def room(self, size: int) -> bool:
        return self._bytes + size <= self.max_bytes

    def put(self, body: bytes, spans: int) -> None:
        with self._lock:
            if self._bytes + len(body) > self.max_bytes:
                raise QueueFull(f"forward queue full: {self._bytes} of {self.max_bytes} bytes")
            self._next += 1
            self._items[self._next] = _Held(body, spans)
            self._bytes += len(body)

    def claim(self, now: float) -> Claimed | None:
        with self._lock:
            for key, held in self._items.items():
                if held.claimed_until <= now:
                    held.claimed_until = now + self.lease_s
                    return Claimed(str(key), held.body, held.spans)
        return None

    def done(self, claimed: Claimed) -> None:
        with self._lock:
            held = self._items.pop(int(claimed.id), None)
            if held is not None:
                self._bytes -= len(held.body)

    def hold(self, claimed: Claimed, now: float) -> None:
        with self._lock:
            held = self._items.get(int(claimed.id))
            if held is not None:
                held.claimed_until = now + self.lease_s

    def depth(self) -> tuple[int, int]:
        with self._lock:
            return len(self._items), self._bytes

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def close(self) -> None:
        pass
