"""`otel-puppy serve --record FILE`: every accepted OTLP export appended to FILE, one OTLP/JSON line each.

The lines are what the Collector's `file` exporter writes and `otel-puppy replay` reads: proto3
JSON with hex trace and span ids and integer enums (the OTLP/JSON encoding). Recording never
breaks ingest: a batch is recorded after it was applied, a write that fails (a full disk) is
logged at most once a minute, counted in `otel_puppy_record_batches_total{result="failed"}` and
rolled back so the file keeps whole lines, and the batch stays applied. The file is capped
(`max_bytes`, counting what it held before): once the next line would pass the cap, batches are
counted as `full` and no longer written.

A retried export is recorded again when it is accepted again; `replay` counts each span once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Final

from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import Counter
from prometheus_client.registry import CollectorRegistry

from otel_puppy._logging import RateLimitedLog

__all__ = ("DEFAULT_MAX_BYTES", "MAX_BYTES_LIMIT", "SpanRecorder", "otlp_json_line")

logger = logging.getLogger("otel_puppy")

DEFAULT_MAX_BYTES: Final = 1024**3
"""1 GiB: days of a busy fleet's spans; `--record-max-bytes` changes it."""
MAX_BYTES_LIMIT: Final = 1024**5
"""The largest cap accepted (1 PiB): past any disk, but a bound on the number."""
_ID_KEYS: Final = frozenset({"traceId", "spanId", "parentSpanId"})


def otlp_json_line(request: ExportTraceServiceRequest) -> bytes:
    """`request` as one line of OTLP/JSON (newline included), as the Collector's file exporter writes it."""
    document = _hex_ids(json_format.MessageToDict(request, use_integers_for_enums=True))
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _hex_ids(value: Any) -> Any:
    """proto3 JSON writes bytes as base64; OTLP/JSON writes trace and span ids as hex."""
    if isinstance(value, dict):
        return {k: base64.b64decode(v).hex() if k in _ID_KEYS else _hex_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hex_ids(v) for v in value]
    return value


class SpanRecorder:
    """Appends OTLP/JSON lines to one file, thread-safe, each line written whole or not at all.

    Opened at once (created with mode 0600: spans may carry prompts), so a path that cannot be
    written fails before the service starts. `encode` and `write` never raise.

    Raises (constructor):
        ValueError: `max_bytes` is outside 1..`MAX_BYTES_LIMIT`.
        OSError: the file cannot be opened for appending.
    """

    def __init__(
        self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, registry: CollectorRegistry | None = None
    ) -> None:
        if not 1 <= max_bytes <= MAX_BYTES_LIMIT:
            raise ValueError(f"the recording's size cap must be 1 to {MAX_BYTES_LIMIT} bytes, not {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._lock = threading.Lock()
        self._full = False
        self._log = RateLimitedLog(logger)
        self._registry = registry
        self._batches = Counter(
            "otel_puppy_record_batches",
            "OTLP exports given to `serve --record`, by result: written, failed (logged), full (over the cap).",
            ["result"],
            registry=registry,
        )

    @property
    def full(self) -> bool:
        """The cap is reached: nothing more is written."""
        return self._full

    def encode(self, request: ExportTraceServiceRequest) -> bytes | None:
        """The line to `write` for `request`; None once the file is full or when it cannot be encoded."""
        if self._full:
            return None
        try:
            return otlp_json_line(request)
        except Exception:
            self._batches.labels("failed").inc()
            self._log.error("record:encode", "could not encode an OTLP export for %s", self.path, exc_info=True)
            return None

    def write(self, line: bytes | None) -> None:
        """Append `line` (from `encode`) whole, or leave the file as it was; None counts as not written."""
        with self._lock:
            if self._full or line is None:
                if self._full:
                    self._batches.labels("full").inc()
                return
            if self._size + len(line) > self.max_bytes:
                self._full = True
                self._batches.labels("full").inc()
                logger.warning(
                    "recording stopped: %s would pass its cap of %d bytes; exports are still applied",
                    self.path,
                    self.max_bytes,
                )
                return
            try:
                self._write_all(line)
            except OSError as exc:
                self._rollback()
                self._batches.labels("failed").inc()
                self._log.warning("record:write", "could not record an OTLP export to %s: %s", self.path, exc)
                return
            self._size += len(line)
            self._batches.labels("written").inc()

    def _write_all(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _rollback(self) -> None:
        """Cut a partly written line off, so the file holds whole lines only."""
        # On failure too the write failure is already logged; the next line starts after the fragment.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)

    def close(self) -> None:
        """Close the file and take the counter off the registry."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._full = True
        if self._registry is not None:
            with contextlib.suppress(KeyError):  # already unregistered
                self._registry.unregister(self._batches)
