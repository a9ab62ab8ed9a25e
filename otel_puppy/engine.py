"""`PolicyEngine`: one place that prices calls, keeps state and answers questions about it.

Both front doors (the span processor and, in service mode, the OTLP receiver) feed
`observe_many`; the store dedupes and applies atomically, so a span is counted once however
often it arrives and however many instrumentations describe its call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

from prometheus_client.registry import CollectorRegistry

from otel_puppy.calls import LLMCall
from otel_puppy.clock import Clock, SystemClock
from otel_puppy.exceptions import PolicyErrors
from otel_puppy.metrics import Metrics
from otel_puppy.money import nanos_to_usd
from otel_puppy.policies import PolicySet, load_policies
from otel_puppy.pricing import Price, Pricer
from otel_puppy.processor import PuppySpanProcessor
from otel_puppy.settings import PuppySettings
from otel_puppy.store import ApplyResult, SpendRecord, Store, open_store
from otel_puppy.store.base import Increment
from otel_puppy.windows import CalendarWindow, RollingWindow, Window

__all__ = ("Observation", "PolicyEngine", "Snapshot")

logger = logging.getLogger("otel_puppy")

TOTAL_SCOPE: Final = "total"
_EXPIRE_EVERY_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Observation:
    """What the engine made of one call."""

    call: LLMCall
    price: Price
    result: ApplyResult


@dataclass(frozen=True, slots=True)
class WindowSpend:
    window: str
    spend_usd: Decimal
    tokens: int
    requests: int
    resets_at: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Spend across everything, per window, read from the store."""

    windows: tuple[WindowSpend, ...]

    def spend(self, window: str) -> Decimal:
        for item in self.windows:
            if item.window == window:
                return item.spend_usd
        raise KeyError(window)


class PolicyEngine:
    """Prices calls, keeps spend in a store, and exports it all to Prometheus.

    >>> engine = PolicyEngine.from_settings(PuppySettings(store="memory://", policies="policies"))
    ... # doctest: +SKIP
    >>> logfire.configure(additional_span_processors=[engine.span_processor()])  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: PuppySettings | None = None,
        *,
        policies: PolicySet | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings or PuppySettings.load()
        self.clock: Clock = clock or SystemClock()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.metrics = Metrics(self.registry, max_label_values=self.settings.max_label_values)
        self._store = store or open_store(self.settings.store)
        self._policies = policies if policies is not None else PolicySet()
        self._pricer = Pricer(self._policies.price_overrides())
        zone = self.settings.zone
        self._total_windows: tuple[Window, ...] = (
            CalendarWindow("hour", zone),
            CalendarWindow("day", zone),
            RollingWindow(3600, "1h"),
            RollingWindow(86400, "24h"),
        )
        self._processor: PuppySpanProcessor | None = None
        self._processor_lock = threading.Lock()
        self._next_expiry = 0.0
        self._closed = False

    @classmethod
    def from_settings(cls, settings: PuppySettings | None = None, **kwargs: object) -> PolicyEngine:
        """An engine from `OTEL_PUPPY_*` settings: loads `policies`, opens `store`.

        Raises:
            SettingsError: a setting is invalid (the message names the variable).
            PolicyErrors: a policy file is invalid (every error, with file:line:column).
        """
        settings = settings or PuppySettings.load()
        policies = load_policies(settings.policies) if Path(settings.policies).exists() else PolicySet()
        return cls(settings, policies=policies, **kwargs)  # type: ignore[arg-type]

    # --- front doors --------------------------------------------------------------------------

    def span_processor(self) -> PuppySpanProcessor:
        """This engine's span processor (one per engine), for `TracerProvider.add_span_processor`."""
        with self._processor_lock:
            if self._processor is None:
                self._processor = PuppySpanProcessor(self, max_queue_size=self.settings.queue_size)
            return self._processor

    def observe(self, call: LLMCall) -> Observation:
        """Price one call and apply it. Returns what became of it."""
        return self.observe_many([call])[0]

    def observe_many(self, calls: Sequence[LLMCall]) -> list[Observation]:
        """Price calls and apply them in one store round trip, each deduped atomically."""
        now = self.clock.now()
        pricer, ttl = self._pricer, self.settings.dedupe_ttl_s
        prices = [pricer.price(call) for call in calls]
        records = [self._record(call, price, now, ttl) for call, price in zip(calls, prices, strict=True)]
        results = self._store.apply(records, now)
        observations = [Observation(c, p, r) for c, p, r in zip(calls, prices, results, strict=True)]
        applied = [(o.call, o.price) for o in observations if o.result is ApplyResult.APPLIED]
        metrics = self.metrics
        metrics.record_calls(applied)
        invalid = sum(1 for call, _ in applied if call.problems)
        for result, count in (
            ("applied", len(applied) - invalid),
            ("invalid", invalid),
            ("duplicate", sum(1 for o in observations if o.result is ApplyResult.DUPLICATE)),
            ("nested", sum(1 for o in observations if o.result is ApplyResult.NESTED)),
        ):
            if count:
                metrics.record_spans(result, count)
        if now >= self._next_expiry:
            self._next_expiry = now + _EXPIRE_EVERY_S
            self._store.expire(now)
        return observations

    def _record(self, call: LLMCall, price: Price, now: float, ttl: float) -> SpendRecord:
        # Spend belongs to the window the call ended in, but never to one in the future (skew).
        ts = min(call.end_ns / 1e9, now) if call.end_ns > 0 else now
        nanos = price.nanos or 0
        tokens = call.input_tokens + call.output_tokens
        increments = tuple(
            Increment(f"{TOTAL_SCOPE}|{bucket.key}", nanos, tokens, bucket.end + window.retention())
            for window in self._total_windows
            for bucket in (window.bucket(ts),)
        )
        trace = f"{call.trace_id:032x}"
        return SpendRecord(
            span_key=f"{trace}{call.span_id:016x}",
            parent_key=f"{trace}{call.parent_span_id:016x}" if call.parent_span_id else None,
            increments=increments,
            dedupe_until=now + ttl,
        )

    # --- reading state ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Total spend, tokens and requests in each built-in window, as the store has them now."""
        now = self.clock.now()
        windows = []
        for window in self._total_windows:
            buckets = window.buckets_for_read(now)
            counters = self._store.read([f"{TOTAL_SCOPE}|{b.key}" for b in buckets])
            windows.append(
                WindowSpend(
                    window=window.name,
                    spend_usd=nanos_to_usd(sum(c.nanos for c in counters)),
                    tokens=sum(c.tokens for c in counters),
                    requests=sum(c.requests for c in counters),
                    resets_at=window.resets_at(now),
                )
            )
        return Snapshot(tuple(windows))

    @property
    def policies(self) -> PolicySet:
        return self._policies

    @property
    def pricer(self) -> Pricer:
        return self._pricer

    # --- lifecycle ----------------------------------------------------------------------------

    def reload(self) -> PolicySet:
        """Load the policy files again. A broken edit raises and the running set stays in force.

        Raises:
            PolicyErrors: every error in the new files; nothing changed.
        """
        try:
            policies = load_policies(self.settings.policies)
        except PolicyErrors:
            logger.exception("policy reload failed; keeping the last good policy set")
            raise
        # Swapped whole: readers see either the old pair or the new one, never a mix.
        self._pricer = self._pricer.with_overrides(policies.price_overrides())
        self._policies = policies
        return policies

    def close(self) -> None:
        """Flush and stop the span processor, then close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._processor is not None:
            self._processor.shutdown()
        self._store.close()

    def __enter__(self) -> PolicyEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internal errors ----------------------------------------------------------------------

    def _internal_error(self, component: str, *, reraise: bool | None = None) -> None:
        """Count and log an error we survived; under pytest re-raise it so tests see bugs.

        Call from an `except` block.
        """
        try:
            self.metrics.record_internal_error(component)
            logger.exception("otel_puppy internal error in %s", component)
        except Exception:  # noqa: S110 - the host application must never see our failures
            pass
        if self.settings.reraise if reraise is None else reraise:
            raise  # noqa: PLE0704 - re-raises the exception being handled by our caller

    def _after_fork(self) -> None:
        """In a forked child: locks held by the parent's threads would never be released here."""
        self.metrics._lock = threading.Lock()
        self._processor_lock = threading.Lock()
        store_lock = getattr(self._store, "_lock", None)
        if store_lock is not None:
            self._store._lock = threading.Lock()  # type: ignore[attr-defined]
        self._pricer._lock = threading.Lock()
