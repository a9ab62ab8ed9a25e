"""Alert events (budget thresholds crossed, anomalies, breakers opening) and where they go.

Every event is counted in `otel_puppy_alerts_total{kind, policy, severity}` and logged; with
`OTEL_PUPPY_ALERT_WEBHOOK_URL` set it is also POSTed as JSON from a background thread, so the
engine never waits on the network. The webhook is the only URL otel_puppy ever fetches, and it
comes from settings, never from policy files.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import Message
from typing import IO, Any, Final, Protocol

from prometheus_client.core import CounterMetricFamily, Metric

from otel_puppy._logging import RateLimitedLog
from otel_puppy.decision import Severity
from otel_puppy.settings import redact_url

__all__ = ("AlertEvent", "AlertSink", "Alerts", "LogSink", "WebhookSink")

logger = logging.getLogger("otel_puppy.alerts")

_LOG_LEVELS: Final = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.ERROR,
    Severity.EMERGENCY: logging.CRITICAL,
}


@dataclass(frozen=True, slots=True)
class AlertEvent:
    kind: str
    """`budget`, `anomaly` or `breaker`."""
    policy: str
    scope: str
    severity: Severity
    message: str
    at: float
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        data["at"] = datetime.fromtimestamp(self.at, UTC).isoformat()
        return data


class AlertSink(Protocol):
    def send(self, event: AlertEvent) -> None:
        """Deliver an event; must not block for long and must not raise. A sink with threads or locks
        also has `after_fork()`, called in a forked child to repair what the parent's threads held."""
        ...


class LogSink:
    """Alerts to the `otel_puppy.alerts` logger, at a level that follows the severity.

    Spans can drive alerts (breakers flapping, a budget per user crossing for each new user), so
    lines are rate-limited per (kind, policy, severity): one a minute, then a count of the rest.
    Every event is still counted in `otel_puppy_alerts_total` and sent to the other sinks.
    """

    def __init__(self, log: RateLimitedLog | None = None) -> None:
        self.log = log or RateLimitedLog(logger)

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the log's lock."""
        self.log.after_fork()

    def send(self, event: AlertEvent) -> None:
        key = f"{event.kind}:{event.policy}:{event.severity.value}"
        level = _LOG_LEVELS[event.severity]
        self.log.log(level, key, "%s alert [%s] %s", event.kind, event.severity.value, event.message)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The webhook is the only URL otel_puppy fetches: a redirect elsewhere is a failed delivery."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> None:
        return None  # urllib then raises HTTPError for the 3xx answer


_OPENER: Final = urllib.request.build_opener(_NoRedirects)


class WebhookSink:
    """POSTs each event as JSON to one URL from a background thread; a full queue drops and counts.

    Redirects are not followed. The URL is never printed whole (its path is often the secret).
    """

    def __init__(self, url: str, timeout_s: float = 5.0, max_queue: int = 1_000) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"alert webhook must be an http(s) URL, not {redact_url(url, keep_path=False)!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.dropped = 0
        self.failed = 0
        self._log = RateLimitedLog(logger)
        self._max_queue = max_queue
        self._start()

    def _start(self) -> None:
        self._queue: queue.Queue[AlertEvent | None] = queue.Queue(maxsize=self._max_queue)
        self._thread = threading.Thread(target=self._run, name="otel-puppy-webhook", daemon=True)
        self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread is not here and its queue's locks may be held. The
        events the parent had queued are the parent's to deliver: the child starts with none."""
        self._log.after_fork()
        self._start()

    def send(self, event: AlertEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            request = urllib.request.Request(  # noqa: S310 - the URL is checked to be http(s) above
                self.url,
                data=json.dumps(event.to_dict()).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with _OPENER.open(request, timeout=self.timeout_s):
                    pass
            except Exception:  # the receiver being down must not stop alerting
                self.failed += 1
                self._log.warning("webhook", "alert webhook POST failed", exc_info=True)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until queued events are delivered (for tests and shutdown)."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(timeout_s)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout_s + 1)


class Alerts:
    """Counts events and hands them to every sink."""

    def __init__(self, sinks: Sequence[AlertSink]) -> None:
        self.sinks = tuple(sinks)
        self._log = RateLimitedLog(logger)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self.recent: list[AlertEvent] = []
        """The last 100 events, newest last (for status pages and tests)."""

    def after_fork(self) -> None:
        """In a forked child: repair what the parent's threads held, here and in every sink."""
        self._lock = threading.Lock()
        self._log.after_fork()
        for sink in self.sinks:
            after_fork = getattr(sink, "after_fork", None)
            if after_fork is not None:
                after_fork()

    def emit(self, event: AlertEvent) -> None:
        with self._lock:
            key = (event.kind, event.policy, event.severity.value)
            self._counts[key] = self._counts.get(key, 0) + 1
            self.recent.append(event)
            del self.recent[:-100]
        for sink in self.sinks:
            try:
                sink.send(event)
            except Exception:
                self._log.error(f"sink:{type(sink).__name__}", "alert sink %r failed", sink, exc_info=True)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts = dict(self._counts)
        family = CounterMetricFamily(
            "otel_puppy_alerts", "Alert events, by kind, policy and severity.", labels=("kind", "policy", "severity")
        )
        for key, value in counts.items():
            family.add_metric(key, float(value))
        yield family

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
