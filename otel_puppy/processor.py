"""`PuppySpanProcessor`: the in-process front door.

`on_end` runs on the thread that ends the span. It must not block or raise, and should cost
about what `BatchSpanProcessor.on_end` costs: it looks up a few attribute names in the span's
dict, appends the span to a deque and, only when the worker sleeps, sets an event. Extraction,
pricing and the store all happen on the worker thread. A full queue drops the span and counts
it (`otel_puppy_spans_total{result="dropped"}`); it never waits.

When the store does not answer (Redis restarting), the worker keeps the calls it could not
apply, up to the queue size, and retries them with back-off until the store is back; a retry
can never count a span twice, because the store dedupes by span id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from otel_puppy import semconv
from otel_puppy._fork import repair_in_child
from otel_puppy.calls import LLMCall, extract_call
from otel_puppy.exceptions import StoreError
from otel_puppy.guard import DECISION_CONTEXT_KEY
from otel_puppy.metrics import Metrics
from otel_puppy.settings import PuppySettings

__all__ = ("DECISION_CONTEXT_KEY", "CallSink", "PuppySpanProcessor")

logger = logging.getLogger("otel_puppy")

_MARKERS: Final = semconv.MARKERS
_PENDING: Final = semconv.LOGFIRE_PENDING
_SPAN_TYPE: Final = semconv.LOGFIRE_SPAN_TYPE
_BATCH: Final = 512
_FIRST_BACKOFF_S: Final = 0.25
_MAX_BACKOFF_S: Final = 5.0

_DECISION_ATTRIBUTE: Final = semconv.DECISION_ID
_ERROR: Final = StatusCode.ERROR


class CallSink(Protocol):
    """What the processor feeds (`PolicyEngine`): it never imports the engine, so no import circle."""

    settings: PuppySettings
    metrics: Metrics

    def observe_many(self, calls: Sequence[LLMCall]) -> Sequence[object]: ...

    def internal_error(self, component: str, *, reraise: bool | None = None) -> None:
        """Count and log the exception being handled; re-raise it under pytest unless `reraise=False`."""


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class PuppySpanProcessor(SpanProcessor):
    """Feeds ended GenAI spans to a `PolicyEngine` on a worker thread.

    Get one from `engine.span_processor()` and give it to the tracer provider, for example
    `logfire.configure(additional_span_processors=[engine.span_processor()])`.
    """

    def __init__(self, engine: CallSink, max_queue_size: int = 20_000) -> None:
        self._engine = engine
        self._max_queue_size = max_queue_size
        self._shutdown = False
        self._worker_error: BaseException | None = None
        self._start()
        # A forked child gets a copy of this object but not its thread: a fresh queue and worker
        # there, after the engine's own repair (registered when the engine was made, so run first).
        repair_in_child(self, PuppySpanProcessor._after_fork)

    def _after_fork(self) -> None:
        self._shutdown = False
        self._worker_error = None
        self._start()

    def _start(self) -> None:
        self._queue: deque[ReadableSpan | _Flush] = deque()
        self._held: deque[LLMCall] = deque()
        """Calls the store did not take (it was down), retried with back-off: see `_hold`."""
        self._retry_at = 0.0
        self._backoff = _FIRST_BACKOFF_S
        self._wake = threading.Event()
        self._idle = True
        self._drop_lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="otel-puppy-worker", daemon=True)
        self._worker.start()

    # --- app thread ---------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Inside a guarded call, stamp the span with the decision that allowed it (to settle it)."""
        try:
            decision_id = otel_context.get_value(DECISION_CONTEXT_KEY, parent_context)
            # Our guards put a str there; anything else is not ours to stamp on the app's span.
            if type(decision_id) is str:
                span.set_attribute(_DECISION_ATTRIBUTE, decision_id)
        except Exception:
            self._engine.internal_error("processor.on_start")

    def on_end(self, span: ReadableSpan) -> None:
        """Hand a GenAI span to the worker; ignore every other span. Never blocks, never raises."""
        try:
            attributes: Any = span._attributes  # the public property copies into a MappingProxy
            if not attributes:
                # A failed span with no attribute at all may still be a call (`calls._bare_failure`).
                if span._status.status_code is not _ERROR:
                    return
            else:
                if type(attributes) is BoundedAttributes:
                    attributes = attributes._dict
                if attributes.keys().isdisjoint(_MARKERS) or attributes.get(_SPAN_TYPE) == _PENDING:
                    return
            queue = self._queue
            if len(queue) >= self._max_queue_size or self._shutdown:
                self._drop()
                return
            queue.append(span)
            if self._idle:
                self._idle = False
                self._wake.set()
        except Exception:
            self._engine.internal_error("processor.on_end")

    def _drop(self) -> None:
        with self._drop_lock:
            self._engine.metrics.record_spans("dropped")

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Return once every span handed over so far has been applied (or the timeout passed)."""
        if self._shutdown and not self._worker.is_alive():
            return True
        marker = _Flush()
        self._queue.append(marker)
        self._idle = False
        self._wake.set()
        done = marker.done.wait(timeout_millis / 1000)
        error, self._worker_error = self._worker_error, None
        if error is not None:
            raise error
        return done and not self._held  # False while the store is down and spans wait for it

    def shutdown(self) -> None:
        """Apply what is queued, then stop the worker. Calling it again does nothing."""
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=30)

    # --- worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        queue, wake = self._queue, self._wake
        while True:
            batch: list[ReadableSpan] = []
            flushes: list[_Flush] = []
            while queue and len(batch) < _BATCH:
                item = queue.popleft()
                if type(item) is _Flush:
                    flushes.append(item)
                    break  # everything before the marker is in `batch`
                batch.append(item)  # type: ignore[arg-type]
            if batch:
                self._process(batch)
            if self._held and (flushes or self._shutdown or time.monotonic() >= self._retry_at):
                self._apply_held()
            for flush in flushes:
                flush.done.set()
            if batch or flushes:
                continue
            if self._shutdown:
                self._give_up_held()
                return
            wake.clear()
            self._idle = True
            if queue or self._shutdown:  # appended between our check and `_idle = True`
                continue
            wake.wait(min(1.0, max(0.0, self._retry_at - time.monotonic())) if self._held else 1.0)

    def _process(self, spans: list[ReadableSpan]) -> None:
        calls: list[LLMCall] = []
        ignored = 0
        limits = self._engine.settings.call_limits
        for span in spans:
            try:
                call = extract_call(span, limits)
            except Exception as exc:
                self._record_worker_error(exc, "extract")
                continue
            if call is None:
                ignored += 1
            else:
                calls.append(call)
        engine = self._engine
        if ignored:
            engine.metrics.record_spans("ignored", ignored)
        if not calls:
            return
        if self._held:  # the store is still down: keep order, wait for the next retry
            self._hold(calls)
            return
        try:
            engine.observe_many(calls)
        except StoreError:
            self._hold(calls)
        except Exception as exc:
            self._record_worker_error(exc, "observe")

    # --- while the store is down ----------------------------------------------------------------

    def _hold(self, calls: list[LLMCall]) -> None:
        """Keep calls the store could not take, up to the queue size; the oldest go first (counted)."""
        held = self._held
        held.extend(calls)
        over = len(held) - self._max_queue_size
        if over > 0:
            for _ in range(over):
                held.popleft()
            self._engine.metrics.record_spans("dropped", over)
        self._engine.metrics.buffered = len(held)
        if self._retry_at <= time.monotonic():
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)

    def _apply_held(self) -> None:
        """Try the store again with what it could not take; retrying is safe, a span counts once."""
        held = self._held
        while held:
            batch = [held[i] for i in range(min(len(held), _BATCH))]
            try:
                self._engine.observe_many(batch)
            except StoreError:
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)
                break
            except Exception as exc:
                self._record_worker_error(exc, "observe")
            for _ in batch:
                held.popleft()
        else:
            self._backoff = _FIRST_BACKOFF_S
        self._engine.metrics.buffered = len(held)

    def _give_up_held(self) -> None:
        if self._held:
            logger.warning("otel_puppy shut down with %d spans its store never took; they are lost", len(self._held))
            self._engine.metrics.record_spans("dropped", len(self._held))
            self._held.clear()
            self._engine.metrics.buffered = 0

    def _record_worker_error(self, exc: Exception, component: str) -> None:
        try:
            self._engine.internal_error(f"processor.{component}", reraise=False)
        finally:
            if self._engine.settings.reraise:
                # Under pytest the error surfaces from the next force_flush, in the test's thread.
                self._worker_error = exc
