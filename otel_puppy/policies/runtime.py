"""`PolicyRuntime`: what the live state of every policy kind offers the engine.

A policy kind is its entry model (the grammar, one section of a policy file) and its runtime
(the state built from that section's entries). The entry model names its runtime
(`SectionEntry.runtime`), so the engine finds every kind from the `PolicySet` alone and loops over
the runtimes for observe, decide, snapshot, collect, restore and fork; it knows no kind's
internals. Effects from one kind on another (an anomaly opening a breaker) are typed events the
engine routes (`RuntimeEvent`), never strings parsed by the receiver.

Two roles are not runtimes of their own: budget admission (reserve, then settle: `admission.py`
over the budget runtime's instances) and routing (`policies/routing.py`, given a read-only view
of budget headroom).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, get_args, get_type_hints
from zoneinfo import ZoneInfo

from prometheus_client.core import Metric

from otel_puppy._logging import RateLimitedLog
from otel_puppy.alerts import AlertEvent
from otel_puppy.calls import LLMCall
from otel_puppy.clock import Clock
from otel_puppy.decision import DecisionRequest, PolicyHit
from otel_puppy.exceptions import StoreError
from otel_puppy.metrics import LabelGuard

if TYPE_CHECKING:
    from otel_puppy.store.base import Store

__all__ = (
    "OpenBreaker",
    "PolicyRuntime",
    "RuntimeContext",
    "RuntimeEvent",
    "RuntimeFactory",
    "StateChanged",
    "StoreFailed",
    "runtime_sections",
)


@dataclass(frozen=True, slots=True)
class OpenBreaker:
    """An anomaly asks the breakers of `provider` (and `model`, if it names one) to open now."""

    provider: str
    model: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A runtime's state changed in a way other replicas should see soon (a breaker transition)."""

    kind: str


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """Housekeeping that can wait (an alert check, a scrape's reads) found the store unavailable."""

    operation: str
    error: StoreError


RuntimeEvent = AlertEvent | OpenBreaker | StateChanged | StoreFailed
"""What a runtime may tell the engine: an alert to send, an effect on another kind, an outage to count."""


@dataclass(frozen=True, slots=True)
class RuntimeContext:
    """What the engine lends every runtime: injected, so tests pass a fake clock and their own store."""

    clock: Clock
    zone: ZoneInfo
    store: Store
    log: RateLimitedLog
    """For lines a request or a span can repeat at will: one per reason per minute."""
    guard: LabelGuard
    """Bounds the values of a label on /metrics (`guard("scope", label)`)."""
    emit: Callable[[RuntimeEvent], None]
    """Hand an event to the engine: called outside the runtime's own lock."""


class PolicyRuntime(Protocol):
    """The live state built from one section's entries; thread-safe, never raising on bad input.

    Built by the section's `RuntimeFactory` at start, and by `with_policies` on every reload (which
    carries over what the new entries still have). Each method states when the engine calls it.
    """

    @property
    def kind(self) -> str:
        """The section name (`breakers`): the namespace of its saved state, the key of its statuses."""
        ...

    @property
    def persists(self) -> bool:
        """False: there is nothing to save (the store holds its state already, as for budgets)."""
        ...

    @property
    def shared(self) -> bool:
        """True: its state is merged with other replicas every second through `Store.merge_state`
        (each item's `version` decides); False: saved whole every minute and on close, loaded at start."""
        ...

    def observe(self, observed: Sequence[tuple[LLMCall, int | None]], now: float) -> None:
        """Calls just applied (each once), with their cost in nano-USD (`None`: unpriced)."""
        ...

    def check(self, request: DecisionRequest, now: float) -> Sequence[PolicyHit]:
        """What this kind says about a request: a hit per policy with a say (none: no objection).
        May take a resource (a half-open breaker's probe) that `release` gives back."""
        ...

    def release(self, request: DecisionRequest) -> None:
        """The decision will not go ahead with this request's model (denied, or degraded away)."""
        ...

    def statuses(self, now: float) -> Sequence[Any]:
        """Where every policy of this kind stands, for `snapshot()` and the API."""
        ...

    def collect(self, now: float) -> Iterable[Metric]:
        """This kind's Prometheus families, built at scrape time; series bounded."""
        ...

    def export_state(self) -> dict[str, bytes]:
        """The state worth keeping across a restart (and sharing, when `shared`), by key."""
        ...

    def import_state(self, items: Mapping[str, bytes]) -> None:
        """Adopt exported state; an unreadable item is skipped (and counted), never raised."""
        ...

    def version(self, key: str, blob: bytes) -> int | None:
        """For a `shared` runtime: how new an exported item is (the store keeps the highest);
        `None` for another replica's item this runtime has no policy for (it is not adopted)."""
        ...

    def with_policies(self, policies: tuple[Any, ...]) -> PolicyRuntime:
        """A runtime for a reloaded section, keeping the state of the entries that stay."""
        ...

    def handle(self, event: RuntimeEvent) -> None:
        """An event another runtime emitted; ignore what does not concern this kind."""
        ...

    def after_fork(self) -> None:
        """In a forked child: replace what the parent's threads held (its own locks)."""
        ...


RuntimeFactory = Callable[[tuple[Any, ...], RuntimeContext], PolicyRuntime]
"""Builds a kind's runtime from its section's entries; an entry model names it as `runtime`."""


def runtime_sections(policy_set: type) -> tuple[tuple[str, RuntimeFactory], ...]:
    """The sections of a `PolicySet` class whose entries have a runtime, with its factory, in order.

    A `PolicySet` field `toys: tuple[ToyPolicy, ...]` whose `ToyPolicy.runtime` is a factory is a
    kind: that field (its schema entry) and the file defining `ToyPolicy` are all a kind needs.
    """
    return _sections(policy_set)


@cache
def _sections(policy_set: type) -> tuple[tuple[str, RuntimeFactory], ...]:
    found: list[tuple[str, RuntimeFactory]] = []
    for name, hint in get_type_hints(policy_set).items():
        args = get_args(hint)
        entry = args[0] if args else None
        factory = getattr(entry, "runtime", None) if isinstance(entry, type) else None
        if factory is not None:
            found.append((name, factory))
    return tuple(found)
