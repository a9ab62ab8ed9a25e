"""Anomaly detectors: a signal per (policy, subject) against its own baseline.

`AnomalyPolicy` is the grammar; `AnomalyWatch` is the runtime. The watch adds applied calls to
the open interval of every matching (policy, subject); when an interval ends, `tick()` compares
its value with the subject's EWMA baseline *before* folding the value in, and reports increases
past the threshold as `AnomalyEvent`s, at most one per `cooldown`. `check()` turns firing
anomalies into `PolicyHit`s for `decide()`.

How the numbers are made:

- Intervals are aligned to multiples of `interval` on the clock. Rate signals (`cost_rate`,
  `token_rate`, `request_rate`) are per second and an interval without calls is a sample of 0;
  `error_rate` (failed calls / calls) and `latency_p95` have no value without calls, so such an
  interval is not a sample.
- The interval in progress when the watch (or a policy with a new `interval`) started is not a
  sample: it saw only part of the traffic.
- The baseline is an EWMA of mean and variance with `alpha = interval / baseline` (at most 1).
  Until `1 / alpha` samples exist it is the plain running mean and population variance, so a
  young baseline is not biased towards its first interval.
- `zscore`: `(value - mean) / stddev`, the stddev floored at `MIN_RELATIVE_STDDEV` of the mean
  so a perfectly flat baseline still gives finite scores. `ratio`: `value / mean`. Against a
  baseline of exactly 0 the score and `deviation_pct` are `inf` when the value is above 0 (and 0
  when it is 0); `AnomalyStatus.to_dict()` reports non-finite numbers as `null`.
- A subject without a single call for a whole `baseline` (and not in cooldown) is forgotten:
  its slot under `max_subjects` is freed and it learns a new baseline when it comes back, rather
  than alarming against a baseline that decayed to nothing while it was idle.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import Discriminator, Field, Tag, field_validator

from otel_puppy.alerts import AlertEvent
from otel_puppy.calls import LLMCall
from otel_puppy.clock import Clock
from otel_puppy.decision import Action, DecisionRequest, PolicyHit, Severity
from otel_puppy.money import NANOS_PER_USD
from otel_puppy.policies.base import Duration, NamedEntry, PolicyModel
from otel_puppy.policies.matching import Dimension, Match, Scope, call_scope_key, scope_label
from otel_puppy.policies.runtime import OpenBreaker, RuntimeContext, RuntimeEvent
from otel_puppy.store.base import report_unrestored

__all__ = (
    "MIN_RELATIVE_STDDEV",
    "RESERVOIR_SIZE",
    "AnomalyEvent",
    "AnomalyPolicy",
    "AnomalyStatus",
    "AnomalyWatch",
    "Ratio",
    "Signal",
    "ZScore",
)

logger = logging.getLogger("otel_puppy")

Signal = Literal["cost_rate", "token_rate", "request_rate", "error_rate", "latency_p95"]


class ZScore(PolicyModel):
    """Fire when the current value is this many standard deviations above the EWMA baseline."""

    zscore: Annotated[float, Field(gt=0, le=1000)]


class Ratio(PolicyModel):
    """Fire when the current value is this many times the EWMA baseline."""

    ratio: Annotated[float, Field(gt=1, le=1_000_000)]


def _threshold_tag(value: object) -> str:
    if isinstance(value, dict):
        return "ratio" if "ratio" in value else "zscore"
    return "ratio" if isinstance(value, Ratio) else "zscore"


Threshold = Annotated[Annotated[ZScore, Tag("zscore")] | Annotated[Ratio, Tag("ratio")], Discriminator(_threshold_tag)]


class AnomalyPolicy(NamedEntry):
    """Watch `signal` per subject (`per`), sampled every `interval`, against a baseline spanning
    `baseline`; after `min_samples` intervals, a value past `threshold` is an anomaly, acted on at most
    once per `cooldown`.

    >>> AnomalyPolicy(name="spend-spike", signal="cost_rate", threshold={"zscore": 4}).describe()
    'anomaly spend-spike: cost_rate zscore > 4 over a 1h baseline, alert'
    """

    signal: Signal
    match: Match | None = None
    per: tuple[Dimension, ...] = ()
    baseline: Duration = 3600.0
    interval: Duration = 60.0
    threshold: Threshold = ZScore(zscore=4)
    min_samples: Annotated[int, Field(ge=1, le=100_000)] = 20
    cooldown: Duration = 300.0
    action: Literal["alert", "warn", "deny", "open_breaker"] = "alert"
    shadow: bool = False
    max_subjects: Annotated[int, Field(ge=1, le=100_000)] = 1_000

    @field_validator("per")
    @classmethod
    def _no_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("each dimension may appear once in per")
        if "trace" in value:
            raise ValueError("trace is one agent run: a baseline per run never forms (use a budget per: [trace])")
        return value

    @staticmethod
    def runtime(policies: tuple[AnomalyPolicy, ...], context: RuntimeContext) -> AnomalyRuntime:
        """The live state of an `anomalies:` section (see `policies/runtime.py`)."""
        return AnomalyRuntime.build(policies, context)

    def describe(self) -> str:
        threshold = (
            f"zscore > {self.threshold.zscore:g}"
            if isinstance(self.threshold, ZScore)
            else f"> {self.threshold.ratio:g}x"
        )
        scope = f" for {self.match.describe()}" if self.match else ""
        per = f" per {'/'.join(self.per)}" if self.per else ""
        baseline = f"{self.baseline / 3600:g}h" if self.baseline >= 3600 else f"{self.baseline / 60:g}m"
        shadow = " (shadow)" if self.shadow else ""
        return (
            f"anomaly {self.name}: {self.signal}{per}{scope} {threshold} over a {baseline} baseline, "
            f"{self.action}{shadow}"
        )


# --- runtime ------------------------------------------------------------------------------------

MIN_RELATIVE_STDDEV: Final = 0.05
"""Floor of the baseline's standard deviation, as a fraction of its mean: against a perfectly flat
baseline, `zscore: 4` fires 20% above it instead of on any rounding noise."""
RESERVOIR_SIZE: Final = 512
"""Durations kept per subject and interval for `latency_p95` (reservoir sampling past this)."""
_RATES: Final = frozenset({"cost_rate", "token_rate", "request_rate"})
_SUMMED: Final = _RATES | {"error_rate"}
"""Signals a batch adds to per scope key at once (`latency_p95` samples each call's duration)."""


@dataclass(frozen=True, slots=True)
class AnomalyStatus:
    """Where one (policy, subject) detector stands, as of its last closed interval."""

    policy: str
    signal: str
    subject: str
    """`provider=openai` for a `per: [provider]` policy (`scope_label`); empty without `per`."""
    current: float
    """The signal over the last closed interval: per second for `*_rate`, a fraction for
    `error_rate`, seconds for `latency_p95`."""
    baseline: float
    """The EWMA of the intervals before it: what `current` was compared with."""
    deviation_pct: float
    """`(current - baseline) / baseline * 100`; `inf` when the baseline is 0 and current is not."""
    score: float
    """The z-score for `zscore` thresholds, `current / baseline` for `ratio` thresholds."""
    samples: int
    """Closed intervals observed (the baseline is judged only from `min_samples` on)."""
    firing: bool
    """Past the threshold at the last closed interval, or fired less than `cooldown` ago."""
    fired_at: float | None
    """When it last fired (the end of the interval that was anomalous), epoch seconds."""
    action: str
    shadow: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready; non-finite numbers (against a zero baseline) become `None`."""
        return {
            "policy": self.policy,
            "signal": self.signal,
            "subject": self.subject,
            "current": _finite(self.current),
            "baseline": _finite(self.baseline),
            "deviation_pct": _finite(self.deviation_pct),
            "score": _finite(self.score),
            "samples": self.samples,
            "firing": self.firing,
            "fired_at": self.fired_at,
            "action": self.action,
            "shadow": self.shadow,
        }


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """An anomaly fired: once per detector per `cooldown`."""

    status: AnomalyStatus
    at: float
    """The end of the anomalous interval, epoch seconds."""
    message: str
    """e.g. `anomaly spend-spike for provider=openai: cost_rate $0.012/s is 500% above baseline $0.002/s (z=100.0)`."""
    target: tuple[str, str | None] | None = None
    """The subject's provider and model (`None` if not `per` model), when the policy is `per` provider."""

    def to_dict(self) -> dict[str, object]:
        return {"at": self.at, "message": self.message, **self.status.to_dict()}


class _Detector:
    """One subject of one policy: the open interval's accumulators and the baseline."""

    __slots__ = (
        "amount",
        "baseline",
        "calls",
        "current",
        "deviation",
        "durations",
        "errors",
        "exceeded",
        "fired_at",
        "last_seen",
        "mean",
        "message",
        "samples",
        "score",
        "target",
        "var",
    )

    def __init__(self, now: float) -> None:
        # open interval
        self.calls = 0
        self.errors = 0
        self.amount = 0
        """Nano-USD for cost_rate, tokens for token_rate, calls for request_rate."""
        self.durations: list[float] = []
        self.last_seen = now
        # baseline
        self.mean = 0.0
        self.var = 0.0
        self.samples = 0
        # the last closed interval
        self.current = 0.0
        self.baseline = 0.0
        self.score = 0.0
        self.deviation = 0.0
        self.exceeded = False
        self.fired_at: float | None = None
        self.message = ""
        """Said about the last interval past the threshold."""
        self.target: tuple[str, str | None] | None = None
        """The subject's provider and model, for `open_breaker` (set by the calls it observes)."""

    def copy(self, *, keep_open: bool) -> _Detector:
        other = _Detector.__new__(_Detector)
        for name in _Detector.__slots__:
            setattr(other, name, getattr(self, name))
        other.durations = list(self.durations) if keep_open else []
        if not keep_open:
            other.calls = other.errors = other.amount = 0
        return other


class _Watched:
    """One policy's detectors and the interval they are all in."""

    __slots__ = ("alpha", "detectors", "first_full", "index", "overflowed", "policy", "threshold", "warmup", "zscore")

    def __init__(self, policy: AnomalyPolicy, now: float) -> None:
        self.policy = policy
        self.alpha = min(policy.interval / policy.baseline, 1.0)
        # while a baseline has fewer samples than this, it is the plain running mean and variance
        self.warmup = max(1, int(policy.baseline // policy.interval))
        self.zscore = isinstance(policy.threshold, ZScore)
        self.threshold = policy.threshold.zscore if isinstance(policy.threshold, ZScore) else policy.threshold.ratio
        self.index = math.floor(now / policy.interval)
        """The open interval: `[index * interval, (index + 1) * interval)`."""
        self.first_full = self.index if self.index * policy.interval == now else self.index + 1
        """Intervals before this one started before the watch did: not samples."""
        self.detectors: dict[str, _Detector] = {}
        self.overflowed = False


class AnomalyWatch:
    """The detectors of a policy set's `anomalies`: fed applied calls, ticked by the clock.

    Thread-safe: one short lock; `on_anomaly` is called outside it, on the thread that called
    `tick()`. Replace the whole watch on reload with `with_policies`, which keeps baselines.

    >>> watch = AnomalyWatch((AnomalyPolicy(name="spend-spike", signal="cost_rate"),), SystemClock())
    ... # doctest: +SKIP
    >>> watch.observe([(call, 1_200_000)]); events = watch.tick()  # doctest: +SKIP
    """

    def __init__(
        self,
        policies: tuple[AnomalyPolicy, ...],
        clock: Clock,
        on_anomaly: Callable[[AnomalyEvent], None] | None = None,
    ) -> None:
        self.policies = policies
        self._clock = clock
        self._on_anomaly = on_anomaly
        self._lock = threading.Lock()
        now = clock.now()
        self._watched = tuple(_Watched(policy, now) for policy in policies)
        self._reads_trace = any(policy.match is not None and policy.match.trace is not None for policy in policies)
        """Whether a policy matches on the trace id (`per` never names it)."""
        self._pending: list[AnomalyEvent] = []
        """Events from intervals closed by `observe` (it saw a boundary before `tick` did)."""
        self._fired: dict[tuple[str, str, str], int] = {}
        # the reservoir only needs to be unbiased, not unpredictable; seeded so runs repeat
        self._random = random.Random(0)
        self._due = math.inf
        self._update_due()
        self._quiet_from = -math.inf
        """From this time on no detector is firing (while nothing changes): `quiet()` reads it."""

    # --- feeding --------------------------------------------------------------------------------

    def observe(self, observed: Sequence[tuple[LLMCall, int | None]]) -> None:
        """Add applied calls, with their cost in nano-USD (`None`: unpriced, adds no cost), to the
        open interval of every matching (policy, subject). O(1) per call and matching policy.

        Intervals that ended meanwhile are closed first; their events come out of the next `tick()`.
        """
        if not self._watched or not observed:
            return
        now = self._clock.now()
        overflowed: list[AnomalyPolicy] = []
        with self._lock:
            if now >= self._due:
                self._roll_all(now, self._pending)
            # Calls with one scope key match and split alike: a batch works each key out once, and
            # adds its calls up per key: [the first call, its scope, its (watched, subject) pairs,
            # calls, nano-USD, tokens, errors].
            reads_trace = self._reads_trace
            groups: dict[tuple[object, ...], list[Any]] = {}
            timed: list[tuple[LLMCall, list[tuple[_Watched, str]]]] = []
            # ... and each call of a key with a latency policy, in order, with its latency pairs: a
            # reservoir draws per call.
            for call, nanos in observed:
                key = call_scope_key(call, reads_trace)
                group = groups.get(key)
                if group is None:
                    scope = call.scope()
                    pairs = [
                        (watched, scope_label(watched.policy.per, scope))
                        for watched in self._watched
                        if watched.policy.match is None or watched.policy.match.matches(scope)
                    ]
                    timing = [(watched, subject) for watched, subject in pairs if watched.policy.signal not in _SUMMED]
                    group = groups[key] = [call, scope, pairs, 0, 0, 0, 0, timing]
                group[3] += 1
                group[4] += nanos or 0
                group[5] += call.input_tokens + call.output_tokens
                group[6] += call.error_class is not None  # not call.ok
                if group[7]:
                    timed.append((call, group[7]))
            # Each detector is made (or found full) in the order the calls first reach it, as one
            # call at a time would.
            for first, scope, pairs, calls, cost, tokens, errors, _ in groups.values():
                for watched, subject in pairs:
                    policy = watched.policy
                    detector = watched.detectors.get(subject)
                    if detector is None:
                        if len(watched.detectors) >= policy.max_subjects:
                            if not watched.overflowed:
                                watched.overflowed = True
                                overflowed.append(policy)
                            continue
                        detector = watched.detectors[subject] = _Detector(now)
                    if detector.target is None and "provider" in policy.per:
                        model = scope.get("model") if "model" in policy.per else None
                        detector.target = (scope.get("provider") or first.provider, model)
                    detector.last_seen = now
                    signal = policy.signal
                    if signal not in _SUMMED:
                        continue  # counted per call below
                    detector.calls += calls
                    if signal == "cost_rate":
                        detector.amount += cost
                    elif signal == "token_rate":
                        detector.amount += tokens
                    elif signal == "request_rate":
                        detector.amount += calls
                    else:  # error_rate
                        detector.errors += errors
            for call, pairs in timed:
                for watched, subject in pairs:
                    detector = watched.detectors.get(subject)
                    if detector is None:  # the policy watches too many subjects already
                        continue
                    detector.calls += 1
                    durations = detector.durations
                    if len(durations) < RESERVOIR_SIZE:
                        durations.append(call.duration_s)
                    else:
                        slot = self._random.randrange(detector.calls)
                        if slot < RESERVOIR_SIZE:
                            durations[slot] = call.duration_s
        for policy in overflowed:
            logger.warning(
                "anomaly policy %s watches %d subjects already; new %s values are not watched",
                policy.name,
                policy.max_subjects,
                "/".join(policy.per),
            )

    def tick(self, now: float | None = None) -> list[AnomalyEvent]:
        """Close every interval that ended and return the anomalies found (also given to `on_anomaly`).

        Cheap when no interval ended. A long idle gap costs O(1) per subject: empty intervals are
        folded into the baseline in closed form. If `on_anomaly` raises, every event is still
        delivered, then the first exception propagates.
        """
        if now is None:
            now = self._clock.now()
        if now < self._due and not self._pending:
            return []
        with self._lock:
            events, self._pending = self._pending, []
            if now >= self._due:
                self._roll_all(now, events)
        if events and self._on_anomaly is not None:
            error: Exception | None = None
            for event in events:
                try:
                    self._on_anomaly(event)
                except Exception as exc:
                    error = error or exc
            if error is not None:
                raise error
        return events

    # --- reading --------------------------------------------------------------------------------

    def quiet(self, now: float) -> bool:
        """True when no detector of any policy is firing at `now`: `check()` would find nothing.

        O(1), for `decide()` to skip building the scope `check()` needs. False is no promise that
        one fires for a given scope (ask `check()`).
        """
        return now >= self._quiet_from

    def check(self, scope: Scope) -> list[PolicyHit]:
        """Hits for the anomalies firing for this scope's subject of every matching policy.

        `warn` -> WARN, `deny` -> DENY (`retry_after_s`: the cooldown left), `alert` and
        `open_breaker` -> ALLOW (informational; opening the breaker is the engine's part).
        """
        if not self._watched:
            return []
        now = self._clock.now()
        found: list[tuple[AnomalyPolicy, AnomalyStatus, str, float]] = []
        with self._lock:
            for watched in self._watched:
                policy = watched.policy
                if policy.match is not None and not policy.match.matches(scope):
                    continue
                subject = scope_label(policy.per, scope)
                detector = watched.detectors.get(subject)
                if detector is None or not _firing(policy, detector, now):
                    continue
                status = _status(watched, subject, detector, now)
                found.append((policy, status, detector.message, (watched.index + 1) * policy.interval))
        return [_hit(policy, status, message, now, next_close) for policy, status, message, next_close in found]

    def statuses(self) -> list[AnomalyStatus]:
        """Every watched (policy, subject), in policy order."""
        now = self._clock.now()
        with self._lock:
            return [
                _status(watched, subject, detector, now)
                for watched in self._watched
                for subject, detector in watched.detectors.items()
            ]

    def collect(self) -> Iterable[Metric]:
        """`otel_puppy_anomaly_score{policy, signal, subject}` (subjects with a closed interval) and
        `otel_puppy_anomalies_total{policy, signal, action}`, built now."""
        with self._lock:
            scores = [
                ((watched.policy.name, watched.policy.signal, subject), detector.score)
                for watched in self._watched
                for subject, detector in watched.detectors.items()
                if detector.samples
            ]
            fired = dict(self._fired)
        gauge = GaugeMetricFamily(
            "otel_puppy_anomaly_score",
            "The last closed interval against its baseline: z-score, or current/baseline for ratio thresholds.",
            labels=("policy", "signal", "subject"),
        )
        for labels, score in scores:
            gauge.add_metric(labels, score)
        counter = CounterMetricFamily(
            "otel_puppy_anomalies", "Anomalies fired (at most one per cooldown).", labels=("policy", "signal", "action")
        )
        for key, count in fired.items():
            counter.add_metric(key, float(count))
        return [gauge, counter]

    # --- reload ---------------------------------------------------------------------------------

    def with_policies(self, policies: tuple[AnomalyPolicy, ...]) -> AnomalyWatch:
        """A watch for a new policy set, keeping the baselines (and cooldowns) of every policy
        whose name, `signal` and `per` are unchanged, the event counts, and undelivered events.

        With an unchanged `interval` the open interval carries over too; with a new one, the
        partial interval in progress is not a sample.
        """
        new = AnomalyWatch(policies, self._clock, self._on_anomaly)
        now = self._clock.now()
        with self._lock:
            if now >= self._due:
                self._roll_all(now, self._pending)
            previous = {watched.policy.name: watched for watched in self._watched}
            for watched in new._watched:
                old = previous.get(watched.policy.name)
                if old is None or old.policy.signal != watched.policy.signal or old.policy.per != watched.policy.per:
                    continue
                same_interval = old.policy.interval == watched.policy.interval
                if same_interval:
                    watched.index, watched.first_full = old.index, old.first_full
                for subject, detector in old.detectors.items():
                    if len(watched.detectors) >= watched.policy.max_subjects:
                        break
                    kept = watched.detectors[subject] = detector.copy(keep_open=same_interval)
                    if old.zscore != watched.zscore:
                        # a z-score is no ratio: judged afresh at the next close
                        kept.score, kept.exceeded = 0.0, False
            new._fired = dict(self._fired)
            new._pending, self._pending = self._pending, []
            new._update_due()
            new._update_quiet()
        return new

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    # --- persistence --------------------------------------------------------------------------

    def export_state(self) -> dict[str, bytes]:
        """Every (policy, subject)'s baseline and cooldown as blobs for `Store.save_state`.

        Keys are `policy|subject`; each value is a small JSON object (the policy's name, `signal`
        and `per` beside the numbers). The open interval's partial data is not part of it.
        """
        items: dict[str, bytes] = {}
        with self._lock:
            for watched in self._watched:
                policy = watched.policy
                for subject, detector in watched.detectors.items():
                    record: dict[str, object] = {
                        "policy": policy.name,
                        "signal": policy.signal,
                        "per": list(policy.per),
                        "subject": subject,
                    }
                    record.update((name, getattr(detector, name)) for name in _SAVED)
                    # json writes inf as Infinity (not strict JSON, but json.loads reads it back)
                    items[f"{policy.name}|{subject}"] = json.dumps(record, separators=(",", ":")).encode()
        return items

    def import_state(self, items: Mapping[str, bytes]) -> None:
        """Restore baselines saved by `export_state` (an earlier process's watch, usually).

        A detector is restored when a policy of the same name, `signal` and `per` exists here;
        other entries (a policy removed or changed, unreadable data) are skipped with a warning.
        The restored baseline is judged from the next full interval on, without learning again.
        """
        by_name = {watched.policy.name: watched for watched in self._watched}
        now = self._clock.now()
        unknown: list[str] = []
        corrupt: list[str] = []
        with self._lock:
            for item_key, blob in items.items():
                try:
                    record = json.loads(blob)
                    watched = by_name.get(record["policy"])
                    if (
                        watched is None
                        or record["signal"] != watched.policy.signal
                        or tuple(record["per"]) != watched.policy.per
                    ):
                        unknown.append(item_key)
                        continue
                    subject, detector = _restored_detector(record, now)
                except (ValueError, TypeError, KeyError):
                    corrupt.append(item_key)
                    continue
                if subject not in watched.detectors and len(watched.detectors) >= watched.policy.max_subjects:
                    unknown.append(item_key)
                    continue
                watched.detectors[subject] = detector
            self._update_quiet()
        report_unrestored("anomaly", corrupt, unknown)

    # --- intervals (under the lock) -----------------------------------------------------------

    def _update_due(self) -> None:
        self._due = min(((w.index + 1) * w.policy.interval for w in self._watched), default=math.inf)

    def _roll_all(self, now: float, events: list[AnomalyEvent]) -> None:
        for watched in self._watched:
            index = math.floor(now / watched.policy.interval)
            if index > watched.index:
                self._roll(watched, index, events)
        self._update_due()
        self._update_quiet()

    def _update_quiet(self) -> None:
        """`_quiet_from` from every detector: detectors change state only where this is called
        (an interval closing, a restore, a reload). A second past the end of each cooldown, so
        that rounding never makes `quiet()` say yes while `_firing` would still say so."""
        quiet_from = -math.inf
        for watched in self._watched:
            cooldown = watched.policy.cooldown
            for detector in watched.detectors.values():
                if detector.exceeded:
                    self._quiet_from = math.inf
                    return
                if detector.fired_at is not None:
                    quiet_from = max(quiet_from, detector.fired_at + cooldown + 1.0)
        self._quiet_from = quiet_from

    def _roll(self, watched: _Watched, index: int, events: list[AnomalyEvent]) -> None:
        """Close the open interval, then the empty ones up to `index`, which becomes the open one."""
        policy = watched.policy
        interval = policy.interval
        end = (watched.index + 1) * interval
        boundary = index * interval
        empty = index - watched.index - 1
        counted = watched.index >= watched.first_full
        rate = policy.signal in _RATES
        forget_before = boundary - max(policy.baseline, interval)
        for subject, detector in list(watched.detectors.items()):
            value = _take(policy.signal, detector, interval)
            if counted and value is not None:
                self._close(watched, subject, detector, value, end=end, events=events)
            if detector.last_seen <= forget_before and not (
                detector.fired_at is not None and boundary - detector.fired_at < policy.cooldown
            ):
                del watched.detectors[subject]
                continue
            if empty and rate:
                _decay(watched, detector, empty - 1)
                self._close(watched, subject, detector, 0.0, end=boundary, events=events)
        watched.index = index

    def _close(
        self,
        watched: _Watched,
        subject: str,
        detector: _Detector,
        value: float,
        *,
        end: float,
        events: list[AnomalyEvent],
    ) -> None:
        """Judge one closed interval against the baseline, then fold it in."""
        policy = watched.policy
        mean = detector.mean
        if detector.samples:
            score, deviation = _score(watched, value, mean, detector.var), _deviation(value, mean)
        else:
            score = deviation = 0.0
        exceeded = detector.samples >= policy.min_samples and score >= watched.threshold
        fire = exceeded and (detector.fired_at is None or end - detector.fired_at >= policy.cooldown)
        detector.current, detector.baseline, detector.score = value, mean, score
        detector.deviation, detector.exceeded = deviation, exceeded
        samples = detector.samples + 1
        alpha = 1.0 / samples if samples <= watched.warmup else watched.alpha
        diff = value - mean
        step = alpha * diff
        detector.mean = mean + step
        detector.var = (1.0 - alpha) * (detector.var + diff * step)
        detector.samples = samples
        if exceeded:
            if fire:
                detector.fired_at = end
            status = _status(watched, subject, detector, end)
            detector.message = _message(watched, status)
            if fire:
                key = (policy.name, policy.signal, policy.action)
                self._fired[key] = self._fired.get(key, 0) + 1
                events.append(AnomalyEvent(status, end, detector.message, detector.target))


_SAVED: Final = (
    "mean",
    "var",
    "samples",
    "last_seen",
    "current",
    "baseline",
    "score",
    "deviation",
    "exceeded",
    "fired_at",
    "message",
)
"""The `_Detector` fields `export_state` keeps: the baseline, the last closed interval, the cooldown."""


def _restored_detector(record: dict[str, Any], now: float) -> tuple[str, _Detector]:
    """A saved subject and its detector, checked field by field; the open interval starts empty."""
    subject = record["subject"]
    if not isinstance(subject, str):
        raise TypeError("subject")
    detector = _Detector(now)
    for name in ("mean", "var", "last_seen", "current", "baseline", "score", "deviation"):
        value = record[name]
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            raise TypeError(name)
        setattr(detector, name, float(value))
    if not (math.isfinite(detector.mean) and math.isfinite(detector.var) and detector.var >= 0):
        raise ValueError("mean, var")
    samples, exceeded, fired_at, message = record["samples"], record["exceeded"], record["fired_at"], record["message"]
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
        raise ValueError("samples")
    if not isinstance(exceeded, bool) or not isinstance(message, str):
        raise TypeError("exceeded, message")
    if fired_at is not None and (not isinstance(fired_at, int | float) or isinstance(fired_at, bool)):
        raise TypeError("fired_at")
    detector.samples, detector.exceeded, detector.message = samples, exceeded, message
    detector.fired_at = None if fired_at is None else float(fired_at)
    return subject, detector


def _take(signal: str, detector: _Detector, interval: float) -> float | None:
    """The open interval's value (None: no value without calls), resetting the accumulators."""
    calls, amount = detector.calls, detector.amount
    detector.calls = detector.amount = 0
    if signal == "cost_rate":
        return amount / (NANOS_PER_USD * interval)
    if signal in _RATES:
        return amount / interval
    if signal == "error_rate":
        errors, detector.errors = detector.errors, 0
        return errors / calls if calls else None
    durations, detector.durations = detector.durations, []
    if not durations:
        return None
    durations.sort()
    return durations[math.ceil(0.95 * len(durations)) - 1]  # nearest rank


def _decay(watched: _Watched, detector: _Detector, count: int) -> None:
    """Fold `count` zero-valued samples into the baseline in O(1): what as many `_close` calls would do."""
    if count <= 0:
        return
    samples = detector.samples
    warm = max(0, min(count, watched.warmup - samples))
    if warm and samples:
        # the running mean and population variance of the samples so far plus `warm` zeros
        mean, total = detector.mean, samples + warm
        new_mean = mean * samples / total
        detector.var = max(samples * (detector.var + mean * mean) / total - new_mean * new_mean, 0.0)
        detector.mean = new_mean
    rest = count - warm
    if rest:
        # x -> 0 repeated: mean *= f, var = f * (var + mean^2 * (1 - f)) with f = (1 - alpha)^rest
        keep = (1.0 - watched.alpha) ** rest
        detector.var = keep * (detector.var + detector.mean * detector.mean * (1.0 - keep))
        detector.mean *= keep
    detector.samples = samples + count


def _score(watched: _Watched, value: float, mean: float, var: float) -> float:
    if watched.zscore:
        stddev = max(math.sqrt(var), MIN_RELATIVE_STDDEV * mean)
        if stddev > 0:
            return (value - mean) / stddev
    elif mean > 0:
        return value / mean
    return math.inf if value > mean else 0.0


def _deviation(value: float, mean: float) -> float:
    if mean > 0:
        return (value - mean) / mean * 100
    return math.inf if value > 0 else 0.0


def _firing(policy: AnomalyPolicy, detector: _Detector, now: float) -> bool:
    return detector.exceeded or (detector.fired_at is not None and now - detector.fired_at < policy.cooldown)


def _status(watched: _Watched, subject: str, detector: _Detector, now: float) -> AnomalyStatus:
    policy = watched.policy
    return AnomalyStatus(
        policy=policy.name,
        signal=policy.signal,
        subject=subject,
        current=detector.current,
        baseline=detector.baseline,
        deviation_pct=detector.deviation,
        score=detector.score,
        samples=detector.samples,
        firing=_firing(policy, detector, now),
        fired_at=detector.fired_at,
        action=policy.action,
        shadow=policy.shadow,
    )


def _message(watched: _Watched, status: AnomalyStatus) -> str:
    where = f" for {status.subject}" if status.subject else ""
    signal = status.signal
    score = f"z={status.score:.1f}" if watched.zscore else f"{status.score:.1f}x baseline"
    baseline = _format(signal, status.baseline)
    if math.isfinite(status.deviation_pct):
        change = f"is {status.deviation_pct:.0f}% above baseline {baseline}"
    else:
        change = f"rose from a baseline of {baseline}"
    return f"anomaly {status.policy}{where}: {signal} {_format(signal, status.current)} {change} ({score})"


def _format(signal: str, value: float) -> str:
    if signal == "cost_rate":
        return f"${value:.3g}/s"
    if signal == "token_rate":
        return f"{value:.3g} tokens/s"
    if signal == "request_rate":
        return f"{value:.3g} requests/s"
    if signal == "error_rate":
        return f"{value:.1%}"
    return f"{value:.3g}s"


def _hit(policy: AnomalyPolicy, status: AnomalyStatus, message: str, now: float, next_close: float) -> PolicyHit:
    action = {"warn": Action.WARN, "deny": Action.DENY}.get(policy.action, Action.ALLOW)
    retry_after: float | None = None
    if action is Action.DENY:
        left = status.fired_at + policy.cooldown - now if status.fired_at is not None else 0.0
        # past the cooldown but still past the threshold: judged again when the open interval closes
        retry_after = left if left > 0 else max(next_close - now, 0.0)
    return PolicyHit(
        kind="anomaly",
        policy=policy.name,
        action=action,
        message=message,
        scope=status.subject,
        severity=Severity.CRITICAL if action is Action.DENY else Severity.WARNING,
        shadow=policy.shadow,
        retry_after_s=retry_after,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class AnomalyRuntime:
    """The anomalies' `PolicyRuntime`: an `AnomalyWatch` whose events become alerts, and, for an
    enforced `open_breaker` policy per provider, an `OpenBreaker` event for the breakers."""

    kind: Final = "anomalies"
    persists: Final = True
    shared: Final = False

    def __init__(self, watch: AnomalyWatch, context: RuntimeContext) -> None:
        self.watch = watch
        self._context = context

    @classmethod
    def build(cls, policies: tuple[AnomalyPolicy, ...], context: RuntimeContext) -> AnomalyRuntime:
        runtime = cls(AnomalyWatch(policies, context.clock), context)
        runtime.watch._on_anomaly = runtime._fired
        return runtime

    def observe(self, observed: Sequence[tuple[LLMCall, int | None]], now: float) -> None:
        self.watch.observe(observed)
        self.watch.tick(now)

    def check(self, request: DecisionRequest, now: float) -> Sequence[PolicyHit]:
        watch = self.watch
        watch.tick(now)
        return () if watch.quiet(now) else watch.check(request.scope())

    def release(self, request: DecisionRequest) -> None:
        """Nothing: a check takes nothing."""

    def statuses(self, now: float) -> list[AnomalyStatus]:
        return self.watch.statuses()

    def collect(self, now: float) -> Iterable[Metric]:
        return self.watch.collect()

    def export_state(self) -> dict[str, bytes]:
        return self.watch.export_state()

    def import_state(self, items: Mapping[str, bytes]) -> None:
        self.watch.import_state(items)

    def version(self, key: str, blob: bytes) -> int | None:
        return 0  # not shared

    def with_policies(self, policies: tuple[AnomalyPolicy, ...]) -> AnomalyRuntime:
        return AnomalyRuntime(self.watch.with_policies(policies), self._context)

    def handle(self, event: RuntimeEvent) -> None:
        """Nothing another kind does concerns the detectors."""

    def after_fork(self) -> None:
        self.watch.after_fork()

    def _fired(self, event: AnomalyEvent) -> None:
        status = event.status
        emit = self._context.emit
        emit(
            AlertEvent(
                kind="anomaly",
                policy=status.policy,
                scope=status.subject,
                severity=Severity.WARNING,
                message=event.message,
                at=event.at,
                value=status.current,
                threshold=status.baseline,
            )
        )
        if status.action == "open_breaker" and not status.shadow:
            if event.target is not None:
                emit(OpenBreaker(event.target[0], event.target[1], reason=event.message))
            else:
                message = "anomaly %s wants to open a breaker but is not per provider"
                self._context.log.warning(f"anomaly:{status.policy}", message, status.policy)
