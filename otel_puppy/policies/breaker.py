"""Circuit breakers per provider (or provider and model), fed by spans, consulted by `decide()`.

`BreakerPolicy` is the grammar. One subject's state is a small frozen `BreakerState`, and the state
machine is two pure functions of it (`advance` for the passing of time, `apply_event` for results,
probes and trips), so any store can run them. `BreakerBoard` keeps the states of a policy set in
memory: fed by finished calls (`observe`), consulted by `decide()` (`check`, `release`), exported at
scrape time (`collect`), and usable directly around a call (`guard`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from types import TracebackType
from typing import Annotated, Any, Final, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import Field, field_validator

from otel_puppy.alerts import AlertEvent
from otel_puppy.calls import ErrorClass, LLMCall, classify_error
from otel_puppy.clock import Clock
from otel_puppy.decision import Action, DecisionRequest, PolicyHit, Severity
from otel_puppy.exceptions import CircuitOpenError
from otel_puppy.policies.base import Duration, NamedEntry
from otel_puppy.policies.matching import DIMENSIONS, Match, ScopeLike, call_scope_key
from otel_puppy.policies.runtime import OpenBreaker, RuntimeContext, RuntimeEvent, StateChanged
from otel_puppy.store.base import report_unrestored

__all__ = (
    "BreakerBoard",
    "BreakerEvent",
    "BreakerGuard",
    "BreakerPolicy",
    "BreakerRuntime",
    "BreakerState",
    "BreakerStatus",
    "State",
    "advance",
    "apply_event",
    "classify_exception",
    "outcome",
    "retry_at",
)

logger = logging.getLogger("otel_puppy")

DEFAULT_FAILURES = (
    ErrorClass.SERVER_ERROR,
    ErrorClass.TIMEOUT,
    ErrorClass.RATE_LIMIT,
    ErrorClass.CONNECTION,
    ErrorClass.OTHER,
)


class BreakerPolicy(NamedEntry):
    """closed -> open after `failure_threshold` consecutive failures -> half-open after
    `recovery_timeout`, letting `half_open_max_calls` probes through -> closed after
    `success_threshold` successes (or open again on a failure).

    >>> BreakerPolicy(name="providers").describe()
    'breaker providers: per provider, open after 5 failures, probe after 30s'
    """

    match: Match | None = None
    per: tuple[Literal["provider", "model"], ...] = ("provider",)
    failure_threshold: Annotated[int, Field(ge=1, le=10_000)] = 5
    recovery_timeout: Duration = 30.0
    success_threshold: Annotated[int, Field(ge=1, le=10_000)] = 2
    half_open_max_calls: Annotated[int, Field(ge=1, le=10_000)] = 3
    failures: tuple[ErrorClass, ...] = DEFAULT_FAILURES
    """Error classes that count as provider failures; client errors (400, 401) do not by default."""
    shadow: bool = False
    max_subjects: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """Distinct subjects tracked; calls to later new subjects are not tracked (a warning is logged once)."""

    @field_validator("match")
    @classmethod
    def _provider_model_only(cls, value: Match | None) -> Match | None:
        # `decide()` consults breakers with a provider and a model only; a breaker fed by the calls of
        # one agent could never be found again for that agent's requests.
        if value is None:
            return None
        other = [d for d in DIMENSIONS if d not in ("provider", "model") and getattr(value, d) is not None]
        if other:
            raise ValueError(f"a breaker can match on provider and model only, not {', '.join(other)}")
        return value

    @field_validator("per")
    @classmethod
    def _provider_first(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value not in (("provider",), ("provider", "model")):
            raise ValueError("per must be [provider] or [provider, model]")
        return value

    @staticmethod
    def runtime(policies: tuple[BreakerPolicy, ...], context: RuntimeContext) -> BreakerRuntime:
        """The live state of a `breakers:` section (see `policies/runtime.py`)."""
        return BreakerRuntime.build(policies, context)

    def describe(self) -> str:
        scope = f" for {self.match.describe()}" if self.match else ""
        shadow = " (shadow)" if self.shadow else ""
        return (
            f"breaker {self.name}: per {'+'.join(self.per)}{scope}, open after {self.failure_threshold} failures, "
            f"probe after {self.recovery_timeout:g}s{shadow}"
        )


# --- the state machine, as pure functions ---------------------------------------------------------

State = Literal["closed", "half_open", "open"]
BreakerEvent = Literal["success", "failure", "neutral", "acquire", "release", "trip"]
"""What can happen to a subject: a call's result (`success`, `failure`, or `neutral` for errors the
policy does not count), a probe permit taken or given back, or an explicit `trip`."""

STATE_VALUES: Final[Mapping[State, int]] = {"closed": 0, "half_open": 1, "open": 2}
"""`otel_puppy_breaker_state` sample values."""
PROBE_RETRY_S: Final = 1.0
"""`retry_after_s` when a half-open breaker has every probe in flight: probes usually end soon."""


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One subject's breaker, as a store keeps it. Changed only through `advance` and `apply_event`."""

    state: State = "closed"
    failures: int = 0
    """Consecutive failures since the breaker last closed."""
    successes: int = 0
    """Successful probes in this half-open period."""
    permits: int = 0
    """Probe permits handed out in this half-open period whose calls have not reported back."""
    opened_at: float | None = None
    """When the breaker last opened (epoch seconds); `None` while closed."""
    probe_at: float | None = None
    """When a probe permit was last handed out, so permits of probes that never report back expire."""
    reason: str = ""
    """Why it opened: `after 5 failures`, `after a failed probe`, or what `trip` was given."""
    transitions: int = 0


def retry_at(state: BreakerState, policy: BreakerPolicy) -> float | None:
    """When the breaker turns (or turned) half-open; `None` while closed."""
    if state.state == "closed" or state.opened_at is None:
        return None
    return state.opened_at + policy.recovery_timeout


def advance(state: BreakerState, now: float, policy: BreakerPolicy) -> BreakerState:
    """The state at `now` with nothing else happening: an open breaker turns half-open after the
    recovery timeout, and probe permits unanswered for as long expire (their calls never reported)."""
    if state.opened_at is not None and now < state.opened_at:
        # The clock stepped back past the opening (NTP, a VM restore): count the timeout from now,
        # rather than keep the breaker open until the clock catches up.
        state = replace(state, opened_at=now)
    if state.state == "open":
        half_open_at = retry_at(state, policy)
        if half_open_at is not None and now >= half_open_at:
            return replace(
                state, state="half_open", successes=0, permits=0, probe_at=None, transitions=state.transitions + 1
            )
    elif (
        state.state == "half_open"
        and state.permits
        and state.probe_at is not None
        and now >= state.probe_at + policy.recovery_timeout
    ):
        return replace(state, permits=0, probe_at=None)
    return state


def apply_event(
    state: BreakerState, event: BreakerEvent, now: float, policy: BreakerPolicy, reason: str = ""
) -> BreakerState:
    """The state after `event`, for a state already `advance`d to `now`.

    In half-open every result gives its probe permit back, so at most `half_open_max_calls` probes
    are in flight at once. Results arriving while open (calls that started before it opened) and
    `trip` of an open breaker (which only restarts its recovery timeout) change no state.
    """
    current = state.state
    if event == "trip":
        if current == "open":
            return replace(state, opened_at=now, reason=reason)
        return _opened(state, now, reason)
    if current == "closed":
        if event == "success" and state.failures:
            return replace(state, failures=0)
        if event == "failure":
            failures = state.failures + 1
            if failures >= policy.failure_threshold:
                return _opened(replace(state, failures=failures), now, f"after {failures} failures")
            return replace(state, failures=failures)
        return state
    if current == "open":
        return state
    # half-open
    if event == "acquire":
        if state.permits >= policy.half_open_max_calls:
            return state
        return replace(state, permits=state.permits + 1, probe_at=now)
    permits = max(state.permits - 1, 0)
    if event == "success":
        successes = state.successes + 1
        if successes >= policy.success_threshold:
            return BreakerState(transitions=state.transitions + 1)
        return replace(state, successes=successes, permits=permits)
    if event == "failure":
        return _opened(replace(state, failures=state.failures + 1), now, "after a failed probe")
    return replace(state, permits=permits)  # release, neutral


def _opened(state: BreakerState, now: float, reason: str) -> BreakerState:
    return replace(
        state,
        state="open",
        successes=0,
        permits=0,
        opened_at=now,
        probe_at=None,
        reason=reason,
        transitions=state.transitions + 1,
    )


def outcome(policy: BreakerPolicy, ok: bool, error_class: ErrorClass | None) -> BreakerEvent:
    """How a call's result counts for this policy: success, failure, or neither."""
    if ok:
        return "success"
    return "failure" if (error_class or ErrorClass.OTHER) in policy.failures else "neutral"


def classify_exception(exc: BaseException) -> ErrorClass:
    """Why a call raising `exc` failed, read like a span's exception event (type, message, HTTP status)."""
    attributes: dict[str, Any] = {}
    status = _status_code(exc)
    if status is not None:
        attributes["http.response.status_code"] = status
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the type
        message = ""
    event = {"exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}", "exception.message": message}
    return classify_error(attributes, None, (event,))


def _status_code(exc: BaseException) -> int | None:
    try:
        for holder in (exc, getattr(exc, "response", None)):
            value = getattr(holder, "status_code", None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    except Exception:  # properties of third-party exceptions may raise
        return None
    return None


# --- the board ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """One subject's breaker as readers see it (`/v1/breakers`, `otel-puppy status`, callbacks)."""

    policy: str
    subject: str
    """`openai`, or `openai:gpt-4.1` for a `per: [provider, model]` breaker."""
    provider: str
    model: str | None
    state: State
    failures: int
    """Consecutive failures since the breaker last closed."""
    successes: int
    """Successful probes while half-open."""
    opened_at: float | None
    retry_at: float | None
    """When half-open begins (or began), epoch seconds."""
    transitions: int
    shadow: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_Key = tuple[str, str | None]
_Change = tuple[BreakerStatus, State]
_MAX_HELD: Final = 256
TransitionCallback = Callable[[BreakerStatus, str], None]


@dataclass(slots=True)
class _Breaker:
    """One policy's subjects and what the board keeps beside them."""

    policy: BreakerPolicy
    subjects: dict[_Key, BreakerState] = field(default_factory=dict)
    entered: dict[tuple[_Key, State], int] = field(default_factory=dict)
    """`otel_puppy_breaker_transitions_total` by subject and state entered."""
    full: bool = False

    def key(self, provider: str, model: str | None) -> _Key | None:
        if len(self.policy.per) == 1:
            return (provider, None)
        return None if model is None else (provider, model)

    def applies(self, scope: ScopeLike) -> bool:
        match = self.policy.match
        return match is None or match.matches(scope)


_Permit = tuple[_Breaker, _Key, float | None]
"""A probe permit handed out: whose, for which subject, in the half-open period opened when."""


@dataclass(slots=True)
class _Pass:
    """One operation on the board: its time, and what to report once the lock is released."""

    now: float
    changes: list[_Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _subject(key: _Key) -> str:
    provider, model = key
    return provider if model is None else f"{provider}:{model}"


class BreakerBoard:
    """The breakers of a policy set and every subject's state, in memory.

    Thread-safe: one lock, held only to read or replace states; `on_transition(status, from_state)`
    runs after it is released, on whichever thread caused the change (a lazy open -> half-open
    change is seen by the first read or feed after the recovery timeout, a scrape included). It
    should not raise: its exceptions are logged and swallowed, so a callback never breaks a
    decision, a scrape or a guarded call.

    >>> board = BreakerBoard((BreakerPolicy(name="providers"),), SystemClock())  # doctest: +SKIP
    >>> with board.guard("openai"):  # doctest: +SKIP
    ...     client.chat.completions.create(...)
    """

    def __init__(
        self,
        policies: tuple[BreakerPolicy, ...],
        clock: Clock,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        self.policies = policies
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._local = threading.local()
        self._breakers = tuple(_Breaker(policy) for policy in policies)
        self._reads_trace = any(policy.match is not None and policy.match.trace is not None for policy in policies)
        """Whether a breaker matches on the trace id."""
        self._unclosed = 0
        """Subjects not closed, over every breaker. While none is, `check()` has nothing to say and
        returns at once: the usual case, and `decide()` asks on every call. Read without the lock:
        a read racing a change is the same as the read happening just before it."""

    # --- feeding ------------------------------------------------------------------------------

    def observe(self, calls: Sequence[LLMCall]) -> None:
        """Feed finished (already deduplicated) calls to every breaker whose `match` they fit."""
        if not self._breakers:
            return
        run = _Pass(self._clock.now())
        reads_trace = self._reads_trace
        applying: dict[tuple[object, ...], list[_Breaker]] = {}  # calls with one scope key match alike
        with self._lock:
            for call in calls:
                key = call_scope_key(call, reads_trace)
                breakers = applying.get(key)
                if breakers is None:
                    scope = call.scope()
                    breakers = applying[key] = [breaker for breaker in self._breakers if breaker.applies(scope)]
                model = call.request_model or call.model  # decide() sees requested names
                for breaker in breakers:
                    subject = breaker.key(call.provider, model)
                    event = outcome(breaker.policy, call.ok, call.error_class)
                    self._feed(breaker, subject, event, run)
        self._after(run)

    def record(self, provider: str, model: str | None, *, ok: bool, error_class: ErrorClass | None = None) -> None:
        """A result reported directly (as `guard()` does): the same as observing such a call.

        With `model=None`, `per: [provider, model]` breakers are not fed (they have no subject for it).
        A failure without `error_class` counts as `other`.
        """
        self._record(provider, model, lambda policy: outcome(policy, ok, error_class))

    def trip(self, provider: str, model: str | None, reason: str) -> None:
        """Open every matching breaker subject now (an anomaly's `open_breaker` action).

        With `model=None`, a `per: [provider, model]` breaker opens every subject of `provider` it
        knows. An open subject stays open with its recovery timeout restarted (no transition).
        """
        run = _Pass(self._clock.now())
        with self._lock:
            for breaker in self._breakers:
                keys: list[_Key | None]
                if model is None and len(breaker.policy.per) == 2:
                    keys = [k for k in breaker.subjects if k[0] == provider]
                else:
                    keys = [breaker.key(provider, model)]
                for key in keys:
                    if key is not None and breaker.applies({"provider": key[0], "model": key[1] or model}):
                        self._feed(breaker, key, "trip", run, reason=f"({reason})")
        self._after(run)

    # --- consulting ---------------------------------------------------------------------------

    def check(self, provider: str, model: str, *, acquire: bool = True) -> list[PolicyHit]:
        """One hit per matching breaker that is not closed: for `decide()`.

        Open: `deny` until `retry_after_s`. Half-open with a probe permit left: `allow` with a
        warning, taking the permit when `acquire` (give it back with `release()` if the decision
        is denied for another reason). Half-open with every probe in flight: `deny` for a second.
        Shadow breakers report the same hits, marked `shadow`, and never take permits.
        """
        if not self._unclosed:
            if acquire:
                held: dict[tuple[str, str], list[_Permit]] | None = getattr(self._local, "held", None)
                if held:
                    held.pop((provider, model), None)
            return []
        hits, taken = self._check(provider, model, acquire=acquire)
        if acquire:
            held = self._held()
            if taken:
                held[(provider, model)] = taken
            else:
                held.pop((provider, model), None)
        return hits

    def release(self, provider: str, model: str) -> None:
        """Give back the probe permits the last `check()` of this subject on this thread took, when
        the call is not made after all (the decision was denied for another reason).

        A permit goes back only to the half-open period it came from, and never below zero; a
        second `release()` for the same check does nothing.
        """
        self._give_back(self._held().pop((provider, model), []))

    def available(self, provider: str, model: str) -> bool:
        """Whether `decide()` would let a call through every enforced breaker (no side effects)."""
        now = self._clock.now()
        scope = {"provider": provider, "model": model}
        with self._lock:
            for breaker in self._breakers:
                policy = breaker.policy
                if policy.shadow or not breaker.applies(scope):
                    continue
                key = breaker.key(provider, model)
                state = breaker.subjects.get(key) if key is not None else None
                if state is None:
                    continue
                state = advance(state, now, policy)
                if state.state == "open" or (
                    state.state == "half_open" and state.permits >= policy.half_open_max_calls
                ):
                    return False
        return True

    def guard(self, provider: str, model: str | None = None, *, record: bool = True) -> BreakerGuard:
        """Around one call made outside of `decide()`: `with board.guard("openai"): ...`.

        Entering raises `CircuitOpenError` when an enforced breaker is open (or half-open with
        every probe in flight), and takes a probe permit when half-open. Leaving records a success,
        or classifies the exception (`classify_exception`) and records it; the exception always
        propagates unchanged. Works with `async with` too.

        When the call's span also reaches this board (`observe`), pass `record=False`: the guard
        then only admits, and the span reports the result, so the call is not counted twice.
        """
        return BreakerGuard(self, provider, model, record=record)

    # --- reading ------------------------------------------------------------------------------

    def statuses(self) -> list[BreakerStatus]:
        """Every tracked subject, policy by policy, as of now."""
        run = _Pass(self._clock.now())
        statuses: list[BreakerStatus] = []
        with self._lock:
            for breaker in self._breakers:
                for key in list(breaker.subjects):
                    state = self._step(breaker, key, None, run)
                    statuses.append(self._status(breaker, key, state))
        self._after(run)
        return statuses

    def collect(self) -> Iterable[Metric]:
        """`otel_puppy_breaker_state` and `otel_puppy_breaker_transitions_total`, built now."""
        statuses = self.statuses()
        with self._lock:
            entered = [
                (breaker.policy.name, key, to, count)
                for breaker in self._breakers
                for (key, to), count in breaker.entered.items()
            ]
        state = GaugeMetricFamily(
            "otel_puppy_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=("policy", "provider", "model"),
        )
        for status in statuses:
            state.add_metric((status.policy, status.provider, status.model or ""), STATE_VALUES[status.state])
        transitions = CounterMetricFamily(
            "otel_puppy_breaker_transitions",
            "Circuit breaker state changes, by the state entered.",
            labels=("policy", "provider", "model", "to"),
        )
        for policy, (provider, model), to, count in entered:
            transitions.add_metric((policy, provider, model or "", to), float(count))
        return [state, transitions]

    # --- persistence --------------------------------------------------------------------------

    def export_state(self, *, only: tuple[str, str] | None = None) -> dict[str, bytes]:
        """Every subject's state (or only `(policy, subject)`'s) as blobs for `Store.save_state`.

        Keys are `policy|subject`; each value is a small JSON object of the `BreakerState` fields
        with the policy's name and `per` and the subject's provider and model, so `import_state`
        needs nothing from the key.
        """
        items: dict[str, bytes] = {}
        with self._lock:
            for breaker in self._breakers:
                policy = breaker.policy
                if only is not None and only[0] != policy.name:
                    continue
                for key, state in breaker.subjects.items():
                    subject = _subject(key)
                    if only is not None and only[1] != subject:
                        continue
                    record = {"policy": policy.name, "per": list(policy.per), "provider": key[0], "model": key[1]}
                    record.update(asdict(state))
                    items[f"{policy.name}|{subject}"] = json.dumps(record, separators=(",", ":")).encode()
        return items

    def import_state(self, items: Mapping[str, bytes]) -> None:
        """Restore subjects saved by `export_state` (an earlier process's board, usually).

        A subject is restored when a breaker of the same name and `per` exists here; other entries
        (a policy removed or changed, unreadable data) are skipped with a warning. Probe permits in
        flight are not restored: their calls belonged to the old process, so a half-open subject
        starts with none taken. Restoring reports no transitions.
        """
        by_name = {breaker.policy.name: breaker for breaker in self._breakers}
        unknown: list[str] = []
        corrupt: list[str] = []
        with self._lock:
            for item_key, blob in items.items():
                try:
                    record = json.loads(blob)
                    breaker = by_name.get(record["policy"])
                    if breaker is None or tuple(record["per"]) != breaker.policy.per:
                        unknown.append(item_key)
                        continue
                    key = _restored_key(record, breaker.policy)
                    state = _restored_state(record)
                except (ValueError, TypeError, KeyError):
                    corrupt.append(item_key)
                    continue
                if key not in breaker.subjects and len(breaker.subjects) >= breaker.policy.max_subjects:
                    unknown.append(item_key)
                    continue
                breaker.subjects[key] = state
            self._recount()
        report_unrestored("breaker", corrupt, unknown, owners="breakers")

    def with_policies(self, policies: tuple[BreakerPolicy, ...]) -> BreakerBoard:
        """A board for a reloaded policy set, keeping the state of every subject whose policy kept
        its name and `per` (thresholds and timeouts may change); other subjects start afresh."""
        board = BreakerBoard(policies, self._clock, self._on_transition)
        with self._lock:
            old = {breaker.policy.name: breaker for breaker in self._breakers}
            for breaker in board._breakers:
                previous = old.get(breaker.policy.name)
                if previous is None or previous.policy.per != breaker.policy.per:
                    continue
                breaker.subjects = dict(islice(previous.subjects.items(), breaker.policy.max_subjects))
                breaker.entered = {k: n for k, n in previous.entered.items() if k[0] in breaker.subjects}
            board._recount()
        return board

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    # --- internals ----------------------------------------------------------------------------

    def _record(self, provider: str, model: str | None, event_for: Callable[[BreakerPolicy], BreakerEvent]) -> None:
        run = _Pass(self._clock.now())
        scope = {"provider": provider, "model": model}
        with self._lock:
            for breaker in self._breakers:
                if breaker.applies(scope):
                    key = breaker.key(provider, model)
                    self._feed(breaker, key, event_for(breaker.policy), run)
        self._after(run)

    def _check(self, provider: str, model: str | None, *, acquire: bool) -> tuple[list[PolicyHit], list[_Permit]]:
        run = _Pass(self._clock.now())
        now = run.now
        scope = {"provider": provider, "model": model}
        hits: list[PolicyHit] = []
        taken: list[_Permit] = []
        with self._lock:
            for breaker in self._breakers:
                if not breaker.applies(scope):
                    continue
                key = breaker.key(provider, model)
                if key is None or key not in breaker.subjects:
                    continue
                state = self._step(breaker, key, None, run)
                policy = breaker.policy
                subject = _subject(key)
                where = f"breaker {policy.name}: {subject}"
                if state.state == "open":
                    wait = max((retry_at(state, policy) or now) - now, 0.0)
                    hits.append(
                        _hit(
                            policy, subject, Action.DENY, f"{where} is open {state.reason}; retry in {wait:.1f}s", wait
                        )
                    )
                elif state.state == "half_open":
                    limit = policy.half_open_max_calls
                    if state.permits >= limit:
                        message = f"{where} is half-open: all {limit} probes in flight; retry in {PROBE_RETRY_S:.1f}s"
                        hits.append(_hit(policy, subject, Action.DENY, message, PROBE_RETRY_S))
                        continue
                    probe = state.permits + 1
                    if acquire and not policy.shadow:
                        breaker.subjects[key] = apply_event(state, "acquire", now, policy)
                        taken.append((breaker, key, state.opened_at))
                    hits.append(_hit(policy, subject, Action.ALLOW, f"{where} is half-open: probe {probe} of {limit}"))
        self._after(run)
        return hits, taken

    def _held(self) -> dict[tuple[str, str], list[_Permit]]:
        """This thread's permits from its last `check()` of each subject, for `release()`."""
        held: dict[tuple[str, str], list[_Permit]] | None = getattr(self._local, "held", None)
        if held is None or len(held) >= _MAX_HELD:  # permits never released expire with their probes
            held = self._local.held = {}
        return held

    def _give_back(self, permits: list[_Permit]) -> None:
        if not permits:
            return
        run = _Pass(self._clock.now())
        with self._lock:
            for breaker, key, opened_at in permits:
                if key not in breaker.subjects:
                    continue
                state = self._step(breaker, key, None, run)
                # Only to the half-open period it came from: a later one starts with none out.
                if state.state == "half_open" and state.opened_at == opened_at:
                    self._step(breaker, key, "release", run)
        self._after(run)

    def _admit(self, provider: str, model: str | None) -> None:
        hits, taken = self._check(provider, model, acquire=True)
        denied = [hit for hit in hits if hit.action is Action.DENY and not hit.shadow]
        if denied:
            self._give_back(taken)
            worst = max(denied, key=lambda hit: hit.retry_after_s or 0.0)
            raise CircuitOpenError(worst.policy, worst.scope, worst.retry_after_s or 0.0)

    def _settle(self, provider: str, model: str | None, exc: BaseException | None) -> None:
        try:
            if exc is None:
                self._record(provider, model, lambda policy: "success")
            elif not isinstance(exc, Exception) or isinstance(exc, CircuitOpenError):
                # Cancellation, interpreter exit, or a breaker further in: the provider did not fail.
                self._record(provider, model, lambda policy: "neutral")
            else:
                error_class = classify_exception(exc)
                self._record(provider, model, lambda policy: outcome(policy, False, error_class))
        except Exception:  # the application's own outcome must never be replaced by ours
            logger.exception("breaker could not record a guarded call's result")

    def _feed(
        self,
        breaker: _Breaker,
        key: _Key | None,
        event: BreakerEvent,
        run: _Pass,
        reason: str = "",
    ) -> None:
        if key is None:
            return
        if key not in breaker.subjects:
            policy = breaker.policy
            if len(breaker.subjects) >= policy.max_subjects:
                if not breaker.full:
                    breaker.full = True
                    run.warnings.append(
                        f"breaker {policy.name} tracks {policy.max_subjects} subjects already; "
                        f"{_subject(key)} and later new subjects are not tracked"
                    )
                return
            breaker.subjects[key] = BreakerState()
        self._step(breaker, key, event, run, reason)

    def _step(
        self,
        breaker: _Breaker,
        key: _Key,
        event: BreakerEvent | None,
        run: _Pass,
        reason: str = "",
    ) -> BreakerState:
        """Advance one subject to `now`, apply `event`, store it, and note each state change."""
        policy = breaker.policy
        state = before = breaker.subjects[key]
        for new in _steps(state, event, run.now, policy, reason):
            if new.state != state.state:
                breaker.entered[(key, new.state)] = breaker.entered.get((key, new.state), 0) + 1
                run.changes.append((self._status(breaker, key, new), state.state))
            state = new
        breaker.subjects[key] = state
        if (before.state == "closed") != (state.state == "closed"):
            self._unclosed += 1 if before.state == "closed" else -1
        return state

    def _recount(self) -> None:
        """`_unclosed` from scratch, after subjects were put in place other than by `_step`."""
        self._unclosed = sum(
            1 for breaker in self._breakers for state in breaker.subjects.values() if state.state != "closed"
        )

    def _status(self, breaker: _Breaker, key: _Key, state: BreakerState) -> BreakerStatus:
        policy = breaker.policy
        return BreakerStatus(
            policy=policy.name,
            subject=_subject(key),
            provider=key[0],
            model=key[1],
            state=state.state,
            failures=state.failures,
            successes=state.successes,
            opened_at=state.opened_at,
            retry_at=retry_at(state, policy),
            transitions=state.transitions,
            shadow=policy.shadow,
        )

    def _after(self, run: _Pass) -> None:
        """Outside the lock: log what to warn about, then tell `on_transition`."""
        for warning in run.warnings:
            logger.warning(warning)
        callback = self._on_transition
        if callback is None:
            return
        for status, previous in run.changes:
            try:
                callback(status, previous)
            except Exception:
                logger.exception("breaker on_transition callback failed for %s %s", status.policy, status.subject)


_STATES: Final = frozenset(STATE_VALUES)


def _restored_key(record: dict[str, Any], policy: BreakerPolicy) -> _Key:
    provider, model = record["provider"], record["model"]
    if not isinstance(provider, str) or not provider:
        raise ValueError("provider")
    if len(policy.per) == 1:
        if model is not None:
            raise ValueError("model")
        return (provider, None)
    if not isinstance(model, str):
        raise TypeError("model")
    return (provider, model)


def _restored_state(record: dict[str, Any]) -> BreakerState:
    """A saved `BreakerState`, checked field by field; without its in-flight probe permits."""
    state = record["state"]
    if state not in _STATES:
        raise ValueError("state")
    counts = [record[name] for name in ("failures", "successes", "transitions")]
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts):
        raise ValueError("counts")
    opened_at = record["opened_at"]
    if opened_at is not None and (not isinstance(opened_at, int | float) or isinstance(opened_at, bool)):
        raise TypeError("opened_at")
    if state != "closed" and opened_at is None:
        raise ValueError("opened_at")
    reason = record.get("reason", "")
    if not isinstance(reason, str):
        raise TypeError("reason")
    failures, successes, transitions = counts
    return BreakerState(
        state=state,
        failures=failures,
        successes=successes,
        opened_at=None if opened_at is None else float(opened_at),
        reason=reason,
        transitions=transitions,
    )


def _steps(
    state: BreakerState, event: BreakerEvent | None, now: float, policy: BreakerPolicy, reason: str
) -> tuple[BreakerState, ...]:
    advanced = advance(state, now, policy)
    if event is None:
        return (advanced,)
    return (advanced, apply_event(advanced, event, now, policy, reason))


def _hit(
    policy: BreakerPolicy, subject: str, action: Action, message: str, retry_after_s: float | None = None
) -> PolicyHit:
    return PolicyHit(
        kind="breaker",
        policy=policy.name,
        action=action,
        message=message,
        scope=subject,
        severity=Severity.CRITICAL if action is Action.DENY else Severity.WARNING,
        shadow=policy.shadow,
        retry_after_s=retry_after_s,
    )


class BreakerGuard:
    """`with board.guard(provider, model):` or `async with ...`: see `BreakerBoard.guard`."""

    __slots__ = ("_board", "_model", "_provider", "_record")

    def __init__(self, board: BreakerBoard, provider: str, model: str | None, *, record: bool = True) -> None:
        self._board = board
        self._provider = provider
        self._model = model
        self._record = record

    def __enter__(self) -> BreakerGuard:
        self._board._admit(self._provider, self._model)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._record:
            self._board._settle(self._provider, self._model, exc)

    async def __aenter__(self) -> BreakerGuard:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, traceback)


_BREAKER_RANK: Final = {"closed": 0, "half_open": 1, "open": 2}


class BreakerRuntime:
    """The breakers' `PolicyRuntime`: a `BreakerBoard` whose transitions become alerts, shared with
    other replicas through the store (`shared`: the newest state of a subject wins everywhere)."""

    kind: Final = "breakers"
    persists: Final = True
    shared: Final = True

    def __init__(self, board: BreakerBoard, context: RuntimeContext) -> None:
        self.board = board
        self._context = context
        self._names = frozenset(policy.name for policy in board.policies)

    @classmethod
    def build(cls, policies: tuple[BreakerPolicy, ...], context: RuntimeContext) -> BreakerRuntime:
        runtime = cls(BreakerBoard(policies, context.clock), context)
        runtime.board._on_transition = runtime._transition
        return runtime

    def observe(self, observed: Sequence[tuple[LLMCall, int | None]], now: float) -> None:
        self.board.observe([call for call, _ in observed])

    def check(self, request: DecisionRequest, now: float) -> Sequence[PolicyHit]:
        return self.board.check(request.provider, request.model)

    def release(self, request: DecisionRequest) -> None:
        self.board.release(request.provider, request.model)

    def available(self, provider: str, model: str) -> bool:
        """Whether every enforced breaker would let a call to this model through (no side effects)."""
        return self.board.available(provider, model)

    def statuses(self, now: float) -> list[BreakerStatus]:
        return self.board.statuses()

    def collect(self, now: float) -> Iterable[Metric]:
        return self.board.collect()

    def export_state(self) -> dict[str, bytes]:
        return self.board.export_state()

    def import_state(self, items: Mapping[str, bytes]) -> None:
        self.board.import_state(items)

    def version(self, key: str, blob: bytes) -> int | None:
        """Transitions, and at a tie the more careful state (open) wins; `None`: not our policy."""
        if key.partition("|")[0] not in self._names:
            return None
        record = json.loads(blob)
        return int(record["transitions"]) * 4 + _BREAKER_RANK[record["state"]]

    def with_policies(self, policies: tuple[BreakerPolicy, ...]) -> BreakerRuntime:
        return BreakerRuntime(self.board.with_policies(policies), self._context)

    def handle(self, event: RuntimeEvent) -> None:
        if isinstance(event, OpenBreaker):
            self.board.trip(event.provider, event.model, reason=event.reason)

    def after_fork(self) -> None:
        self.board.after_fork()

    def _transition(self, status: BreakerStatus, previous: str) -> None:
        emit = self._context.emit
        emit(
            AlertEvent(
                kind="breaker",
                policy=status.policy,
                scope=status.subject,
                severity=Severity.CRITICAL if status.state == "open" else Severity.INFO,
                message=f"breaker {status.policy} for {status.subject}: {previous} -> {status.state}",
                at=self._context.clock.now(),
            )
        )
        emit(StateChanged(self.kind))  # other replicas adopt it at their next sync
