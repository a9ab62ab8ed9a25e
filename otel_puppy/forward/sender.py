"""Forwarding: every batch received goes on downstream, enriched, with delivery you can trust.

`Forwarder.accept` runs in the receiver's worker thread once a batch is applied: it writes the
costs onto the spans (`forward/otlp.py`), serializes the request with opentelemetry-proto,
compresses it, and puts it in the forward queue; the receiver answers `200` only after that. A
thread drains the queue to `<url>/v1/traces` as OTLP/HTTP protobuf, one batch at a time, in order:

- a `2xx` removes the batch (spans the downstream rejected in `partial_success` are counted);
- `429`, `502`, `503`, `504` and connection failures are retried, the same batch, with
  exponential back-off (`Retry-After` honoured, at most `MAX_BACKOFF_S`), as the OTLP
  specification says; an outage fills the queue, and then the receiver answers `503`;
- any other status is a refusal for good: logged, counted, and the batch dropped, never retried
  forever.
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import gzip
import logging
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from otel_puppy._logging import RateLimitedLog
from otel_puppy.exceptions import SettingsError, StoreError
from otel_puppy.forward.enrich import RunCosts
from otel_puppy.forward.otlp import SpanFacts, SpanKey, enrich_request
from otel_puppy.forward.queue import Claimed, ForwardQueue, QueueFull
from otel_puppy.metrics import Metrics
from otel_puppy.pricing import Price
from otel_puppy.settings import PuppySettings, redact_url
from otel_puppy.snapshot import Observation
from otel_puppy.store.base import ApplyResult

if TYPE_CHECKING:
    from otel_puppy.engine import PolicyEngine

__all__ = ("INITIAL_BACKOFF_S", "MAX_BACKOFF_S", "ForwardTarget", "Forwarder")

logger = logging.getLogger("otel_puppy")
_LOG: Final = RateLimitedLog(logger)

INITIAL_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 30.0
"""The longest wait between two attempts, `Retry-After` included (under the queue's lease)."""
FULL_FRACTION: Final = 0.95
"""`/readyz` fails while the queue holds more than this fraction of its bound."""
_RETRYABLE: Final = frozenset({429, 502, 503, 504})
MAX_REPLY_BYTES: Final = 64 * 1024
"""Of a downstream's reply, what is read: an `ExportTraceServiceResponse` is a few bytes."""
_PROTOBUF: Final = "application/x-protobuf"
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
"""A header name (RFC 9110 `token`), lower-cased."""


class ForwardTarget:
    """Where batches go: `<url>/v1/traces`, with these headers, gzip-compressed or not."""

    def __init__(self, url: str, headers: Mapping[str, str], *, gzip: bool = True, timeout_s: float = 10.0) -> None:
        self.endpoint = url.rstrip("/") + "/v1/traces"
        self.headers = {"Content-Type": _PROTOBUF, "Accept-Encoding": "identity", **dict(headers)}
        if gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.gzip = gzip
        self.timeout_s = timeout_s

    def __str__(self) -> str:  # headers and URL credentials are never shown
        return redact_url(self.endpoint)

    def __repr__(self) -> str:
        return f"ForwardTarget({str(self)!r}, gzip={self.gzip})"


class _Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    REFUSED = "refused"


class Forwarder:
    """Enrich and queue applied batches (`accept`), deliver the queue downstream (a thread).
    `close` stops the thread and closes the queue (what it holds stays there when it is durable)."""

    def __init__(
        self,
        target: ForwardTarget,
        queue: ForwardQueue,
        metrics: Metrics,
        registry: CollectorRegistry,
        *,
        max_bytes: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.target = target
        self.queue = queue
        self.metrics = metrics
        """The engine's: where an internal error of the delivery thread is counted."""
        self.max_bytes = max_bytes
        self.runs = RunCosts()
        self._refused = 0
        """The size of the last batch refused for want of room (0: none since one fitted): `/readyz`
        fails while it would still not fit, as the receiver refuses with "the forward queue is full"."""
        self._client = httpx.Client(timeout=target.timeout_s, transport=transport, follow_redirects=False)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spans = Counter(
            "otel_puppy_forward_spans",
            "Spans passed on downstream, by result: queued (acknowledged upstream), forwarded (accepted "
            "downstream), rejected (accepted, but refused in its partial_success), failed (refused for good).",
            ["result"],
            registry=registry,
        )
        for result in ("queued", "forwarded", "rejected", "failed"):
            self._spans.labels(result)
        self._retries = Counter(
            "otel_puppy_forward_retries",
            "Deliveries of a batch retried, by reason: the status code, or `connection`.",
            ["reason"],
            registry=registry,
        )
        registry.register(_QueueCollector(self))

    @classmethod
    def from_settings(cls, settings: PuppySettings, engine: PolicyEngine) -> Forwarder:
        """The forwarder `forward_url` asks for, its queue in the engine's store (not started).

        Raises:
            SettingsError: `forward_url` is unset, or `forward_headers` cannot be read.
            StoreError: the queue cannot be opened.
        """
        if settings.forward_url is None:
            raise SettingsError("OTEL_PUPPY_FORWARD_URL is not set")
        headers = settings.forward_headers.get_secret_value() if settings.forward_headers is not None else ""
        target = ForwardTarget(
            settings.forward_url,
            parse_headers(headers),
            gzip=settings.forward_compression == "gzip",
            timeout_s=settings.forward_timeout_s,
        )
        queue = engine.store.forward_queue(settings.forward_queue_max_bytes)
        queue.lease_s = lease_for(settings.forward_timeout_s)
        return cls(target, queue, engine.metrics, engine.registry, max_bytes=settings.forward_queue_max_bytes)

    # --- the receiver's side ---------------------------------------------------------------------

    def room(self, size: int) -> bool:
        """Whether a batch of about `size` bytes fits in the queue now (asked before applying it)."""
        fits = self.queue.room(size)
        self._refused = 0 if fits else size
        return fits

    def accept(
        self,
        request: ExportTraceServiceRequest,
        observations: Iterable[Observation],
        rejected: Mapping[SpanKey, str],
        *,
        facts: SpanFacts | None = None,
    ) -> None:
        """Enrich an applied batch and queue it; once this returns, the batch may be acknowledged.
        `facts`: the request's `span_facts`, when a decoding process has read them.

        Raises:
            QueueFull: the queue has no room for it.
            StoreError: the queue's backend failed.
        """
        priced: dict[SpanKey, Price] = {}
        counted: dict[SpanKey, int] = {}
        for observation in observations:
            call = observation.call
            key = (call.trace_id, call.span_id)
            priced[key] = observation.price
            if observation.result is ApplyResult.APPLIED and observation.price.nanos is not None:
                counted[key] = observation.price.nanos
        spans = enrich_request(request, priced, counted, rejected, self.runs, facts=facts)
        body = request.SerializeToString()
        if self.target.gzip:
            body = gzip.compress(body, compresslevel=6, mtime=0)
        try:
            self.queue.put(body, spans)
        except QueueFull:
            self._refused = len(body)
            raise
        self._spans.labels("queued").inc(spans)
        self._wake.set()

    def problem(self) -> str | None:
        """Why `/readyz` should fail: the queue is (nearly) full, or cannot be read."""
        try:
            batches, size = self.queue.depth()
        except StoreError as exc:
            return f"forward queue unreadable: {exc}"
        if size > self.max_bytes * FULL_FRACTION:
            return f"forward queue full: {batches} batches, {size} of {self.max_bytes} bytes waiting for the downstream"
        refused = self._refused
        if refused:  # a batch was refused for want of room (the receiver said so): full until it would fit
            if not self.queue.room(refused):
                return (
                    f"forward queue full: {batches} batches, {size} of {self.max_bytes} bytes waiting for the "
                    f"downstream; no room for the last batch refused ({refused} bytes)"
                )
            self._refused = 0
        return None

    # --- delivery --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otel-puppy-forward", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop delivering (what is queued stays queued, for the next start when durable)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._client.close()
        self.queue.close()

    def _run(self) -> None:
        """Deliver until closed. Nothing stops it: an error of ours is counted and the batch retried
        after a back-off (acknowledged batches wait in the queue, they are never dropped for it)."""
        while not self._stop.is_set():
            try:
                self._deliver_one()
            except StoreError as exc:
                _LOG.warning("forward:store", "forward queue unusable, retrying: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                self.metrics.record_internal_error("forward.sender")
                _LOG.error("forward:internal", "otel_puppy internal error forwarding a batch", exc_info=True)
                self._stop.wait(MAX_BACKOFF_S)

    def _deliver_one(self) -> None:
        claimed = self.queue.claim(time.time())
        if claimed is None:
            self._wake.wait(1.0)
            self._wake.clear()
            return
        backoff = INITIAL_BACKOFF_S
        while not self._stop.is_set():
            outcome, wait_s = self._send(claimed)
            if outcome is not _Outcome.RETRY:
                self._finish(claimed)
                return
            delay = min(MAX_BACKOFF_S, wait_s if wait_s is not None else backoff * random.uniform(0.5, 1.0))
            backoff = min(MAX_BACKOFF_S, backoff * 2)
            self._wait_holding(claimed, delay)

    def _wait_holding(self, claimed: Claimed, delay: float) -> None:
        """Wait `delay` before the next attempt, renewing the claim so no other replica takes it; the
        lease covers one attempt after the last renewal (`lease_for`)."""
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            with contextlib.suppress(StoreError):  # else the lease runs out: claimed again, sent at least once
                self.queue.hold(claimed, time.time())
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, self.queue.lease_s / 3))

    def _finish(self, claimed: Claimed) -> None:
        try:
            self.queue.done(claimed)
        except StoreError as exc:  # delivered, not forgotten: it will be sent once more
            _LOG.warning("forward:done", "forward queue could not drop a delivered batch: %s", exc)

    def _send(self, claimed: Claimed) -> tuple[_Outcome, float | None]:
        """One attempt; the reply is read raw (not inflated), at most `MAX_REPLY_BYTES`, and the whole
        attempt within the timeout, so no downstream can hold memory or the thread."""
        target = self.target
        deadline = time.monotonic() + target.timeout_s
        try:
            with self._client.stream("POST", target.endpoint, content=claimed.body, headers=target.headers) as response:
                reply = _bounded_reply(response, deadline)
        except httpx.HTTPError as exc:
            self._retries.labels("connection").inc()
            _LOG.warning("forward:connect", "forwarding to %s failed, retrying: %s", target, type(exc).__name__)
            return _Outcome.RETRY, None
        status = response.status_code
        if 200 <= status < 300:
            rejected = min(claimed.spans, _rejected_spans(response.headers, reply))
            self._spans.labels("forwarded").inc(claimed.spans - rejected)
            if rejected:
                self._spans.labels("rejected").inc(rejected)
                _LOG.warning("forward:partial", "the downstream rejected %d of %d spans", rejected, claimed.spans)
            return _Outcome.SENT, None
        if status in _RETRYABLE:
            self._retries.labels(str(status)).inc()
            return _Outcome.RETRY, retry_after_s(response.headers.get("retry-after"))
        self._spans.labels("failed").inc(claimed.spans)
        _LOG.error(
            f"forward:{status}",
            "the downstream %s refused a batch of %d spans with HTTP %d (not retried): %r",
            target,
            claimed.spans,
            status,
            reply[:200],
        )
        return _Outcome.REFUSED, None


def parse_headers(text: str) -> dict[str, str]:
    """`OTEL_EXPORTER_OTLP_HEADERS`' format: `key=value` pairs separated by commas, values URL-encoded.
    Strict where the SDK's parser is lenient: it logs a malformed pair as it is (a token in the log)
    and drops it; this refuses the setting, naming only the pair's position and key.

    Raises:
        SettingsError: a pair without `=`, an empty or non-token key, or a value that is not ASCII text.
    """
    headers: dict[str, str] = {}
    for position, pair in enumerate(text.split(","), 1):
        if not pair.strip():
            continue
        key, found, value = pair.partition("=")
        key = key.strip().lower()
        where = f"OTEL_PUPPY_FORWARD_HEADERS: pair {position}"
        if not found or not _TOKEN.fullmatch(key):
            raise SettingsError(f"{where}: expected key=value with a header name as the key")
        value = urllib.parse.unquote(value.strip())
        if not value.isascii() or not value.isprintable():
            raise SettingsError(f"{where} ({key}): the value must be printable ASCII once URL-decoded")
        headers[key] = value
    return headers


def lease_for(timeout_s: float) -> float:
    """How long a claim holds: two attempts and a margin. A replica that dies holding a batch delays
    it this long (then another, or the restarted process, claims it); while one is retrying, it
    renews its claim every third of this."""
    return 2 * timeout_s + 2


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()[:64]
    if value.isascii() and value.isdigit():  # `isdigit` alone takes "²", which `float` refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _bounded_reply(response: httpx.Response, deadline: float) -> bytes:
    """At most `MAX_REPLY_BYTES` of the reply as sent (never inflated), read until `deadline`."""
    reply = bytearray()
    try:
        for chunk in response.iter_raw():
            reply += chunk[: MAX_REPLY_BYTES - len(reply)]
            if len(reply) >= MAX_REPLY_BYTES or time.monotonic() > deadline:
                break
    except httpx.StreamConsumed:  # a transport that read the reply already (an in-process one)
        return response.content[:MAX_REPLY_BYTES]
    return bytes(reply)


def _rejected_spans(headers: httpx.Headers, reply: bytes) -> int:
    """`partial_success.rejected_spans` of a protobuf `ExportTraceServiceResponse` (0 otherwise)."""
    if not reply or not headers.get("content-type", "").startswith(_PROTOBUF) or headers.get("content-encoding"):
        return 0
    answer = ExportTraceServiceResponse()
    try:
        answer.ParseFromString(reply)
    except Exception:  # a reply we cannot read (or cut at MAX_REPLY_BYTES) is still a success
        return 0
    return max(0, int(answer.partial_success.rejected_spans))


class _QueueCollector(Collector):
    """The queue's depth at scrape time."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder

    def collect(self) -> Iterable[GaugeMetricFamily]:
        forwarder = self._forwarder
        try:
            batches, size = forwarder.queue.depth()
        except StoreError:
            return []
        return [
            GaugeMetricFamily("otel_puppy_forward_queue_batches", "Batches waiting to go downstream.", value=batches),
            GaugeMetricFamily("otel_puppy_forward_queue_bytes", "Bytes waiting to go downstream.", value=size),
            GaugeMetricFamily(
                "otel_puppy_forward_queue_limit_bytes", "The forward queue's bound.", value=forwarder.max_bytes
            ),
        ]
