"""OTLP/HTTP ingest, `POST /v1/traces`: bounded slots, a memory limiter, bounded body reading.

`TraceReceiver.receive` answers one export as the OpenTelemetry protocol specification says
(`opentelemetry-specification/specification/protocol/otlp.md`, "OTLP/HTTP"): protobuf and JSON on
one path, gzip and deflate, the reply in the request's encoding, an empty request is success, bad
data `400`, spans with unusable ids in `partial_success`, overload and store failures `503` with
`Retry-After`. A `200` is sent only once `observe_many` has applied the batch to the store: an
acknowledged span is never lost, and a retried one is deduplicated there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, Final, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.requests import ClientDisconnect

from otel_puppy._logging import RateLimitedLog
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import StoreCorruptError, StoreError
from otel_puppy.forward.otlp import SpanFacts
from otel_puppy.forward.queue import QueueFull
from otel_puppy.forward.sender import Forwarder
from otel_puppy.server.decoder import DecodePool, DecoderUnavailable, ReadSpans, read_request
from otel_puppy.server.errors import (
    CORRUPT_STORE_MESSAGE,
    PROTOBUF_TYPES,
    RPC_DATA_LOSS,
    RPC_DEADLINE_EXCEEDED,
    RPC_INTERNAL,
    RPC_INVALID_ARGUMENT,
    RPC_RESOURCE_EXHAUSTED,
    RPC_UNAVAILABLE,
    STORE_RETRY_AFTER_S,
    media_type,
    otlp_reply_type,
    otlp_status,
)
from otel_puppy.server.memory import MemoryFull, MemoryLimiter, Reservation, decode_cost
from otel_puppy.server.otlp import JSON, PROTOBUF, OtlpDecodeError, decode_traces, encode_response
from otel_puppy.server.record import SpanRecorder
from otel_puppy.server.scoping import stamp, token_scope
from otel_puppy.server.tokens import TokenScope
from otel_puppy.store.base import ApplyResult

__all__ = (
    "DECODER_RETRY_AFTER_S",
    "INGEST_WAIT_S",
    "MAX_BODY_BYTES",
    "MAX_CONCURRENT_INGEST",
    "MEMORY_RETRY_AFTER_S",
    "OTLP_REQUEST",
    "OTLP_RESPONSES",
    "OVERLOAD_RETRY_AFTER_S",
    "TRACES_PATH",
    "TraceReceiver",
)

logger = logging.getLogger("otel_puppy")
_LOG: Final = RateLimitedLog(logger)
"""Lines a client can trigger at will: one per reason per minute, with the count of repeats."""

TRACES_PATH: Final = "/v1/traces"
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""An OTLP request body, after decompression (and before it: a compressed body is never larger)."""
MAX_CONCURRENT_INGEST: Final = 8
"""OTLP requests being read, decoded and applied at once; with `MAX_BODY_BYTES` it bounds memory."""
INGEST_WAIT_S: Final = 0.05
"""How long an OTLP request waits for a free slot before it is refused with `503` (never queued)."""
OVERLOAD_RETRY_AFTER_S: Final = 1
FORWARD_RETRY_AFTER_S: Final = 5
"""After a full forward queue: the downstream is away, and a retry every second would not help it."""
MEMORY_RETRY_AFTER_S: Final = 1
DECODER_RETRY_AFTER_S: Final = 1
"""After a decoding process stopped: new ones are starting (`server/decoder.py`)."""

_OTLP_TYPES: Final = PROTOBUF_TYPES | {JSON}
_IDENTITY: Final = frozenset({"", "identity"})
_GZIP: Final = frozenset({"gzip", "x-gzip"})
_ENCODINGS: Final = _IDENTITY | _GZIP | {"deflate"}
_INFLATE_CHUNK: Final = 256 * 1024
_MAX_MESSAGES: Final = 10


class _TooLarge(Exception):
    pass


class _AppliedNotQueued(Exception):
    """The batch was applied, then could not be queued for the downstream: a retry is counted once."""


class TraceReceiver:
    """`POST /v1/traces`: bounded reads, incremental inflation, decode and apply off the event loop.

    The body is read first, within `body_timeout_s`, holding nothing but the bytes received (counted
    against `memory`); only then does the request take one of the ingest slots, so clients that
    trickle or stall their bodies cannot starve the others. Before decoding, the request reserves
    an upper bound of what decoding allocates (`server/memory.py`). With a `recorder`, every
    batch applied is also appended to its file (`server/record.py`); recording never fails a batch.
    With a `forwarder`, every batch applied is enriched and queued for the downstream before its
    `200` (`forward/sender.py`); a full queue is `503` before anything is applied.
    """

    def __init__(
        self,
        engine: PolicyEngine,
        *,
        max_body_bytes: int,
        max_concurrent: int,
        wait_s: float,
        body_timeout_s: float,
        memory: MemoryLimiter,
        recorder: SpanRecorder | None = None,
        forwarder: Forwarder | None = None,
        decoder: DecodePool | None = None,
    ) -> None:
        self.engine = engine
        self.decoder = decoder
        self.recorder = recorder
        self.forwarder = forwarder
        self.max_body_bytes = max_body_bytes
        self.wait_s = wait_s
        self.body_timeout_s = body_timeout_s
        self.memory = memory
        self._slots = anyio.Semaphore(max_concurrent)
        # One thread per slot, started as needed: a batch never waits for a thread.
        self._workers = ThreadPoolExecutor(max_concurrent, thread_name_prefix="otel-puppy-ingest")
        # With a store that does no I/O, decoding and applying a batch is interpreter work from end to
        # end: batches in several threads gain nothing from running at once (they take turns on the GIL),
        # and each forced switch between them costs CPU (caches refilled). Measured in-process with four
        # threads: 3-4 us per span more than one batch at a time (big spans), 1-2 us (small ones). So they
        # take turns here, whole; inflating (which lets go of the GIL) still overlaps. A store that does
        # I/O keeps them overlapping: one batch's round trips are another's time to decode.
        self._one_batch: AbstractContextManager[object] = (
            contextlib.nullcontext() if engine.store.does_io else threading.Lock()
        )

    async def receive(self, request: Request) -> Response:
        scope = token_scope(request)
        content_type = request.headers.get("content-type", "")
        if media_type(content_type) not in _OTLP_TYPES:
            shown = content_type[:80] or "none"
            message = f"unsupported content type {shown!r}: send {PROTOBUF} or {JSON}"
            return otlp_status(415, RPC_INVALID_ARGUMENT, message, JSON)
        reply_type = otlp_reply_type(content_type)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            message = f"unsupported content encoding {encoding[:40]!r}: send gzip, deflate or identity"
            return otlp_status(415, RPC_INVALID_ARGUMENT, message, reply_type)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large(reply_type)

        with self.memory.reservation() as reservation:
            try:
                with anyio.fail_after(self.body_timeout_s):
                    raw = await self._read(request, reservation)
                if raw is None:
                    return self._too_large(reply_type)
                if not await self._take_slot():
                    message = "overloaded: too many exports in progress; retry after the Retry-After interval"
                    retry = {"Retry-After": str(OVERLOAD_RETRY_AFTER_S)}
                    return otlp_status(503, RPC_UNAVAILABLE, message, reply_type, retry)
                try:
                    # handed over in a list the worker empties: the raw body is freed once inflated
                    holder = [raw]
                    del raw
                    rejected, message = await _in_thread(
                        self._workers, self._ingest, holder, encoding, content_type, reservation, scope
                    )
                finally:
                    self._slots.release()
            except TimeoutError:
                # Retrying will not make this client faster; the connection is closed, freeing it.
                message = f"the request body did not arrive within {self.body_timeout_s:g}s"
                return otlp_status(408, RPC_DEADLINE_EXCEEDED, message, reply_type, {"Connection": "close"})
            except MemoryFull as exc:
                return self._memory_full(exc, reply_type)
            except _AppliedNotQueued as exc:
                _LOG.warning("traces:forward-put", "OTLP export applied but not queued for the downstream: %s", exc)
                message = (
                    "the batch was counted but could not be queued for the downstream; retry after the "
                    "Retry-After interval (it will not be counted twice)"
                )
                retry = {"Retry-After": str(FORWARD_RETRY_AFTER_S)}
                return otlp_status(503, RPC_UNAVAILABLE, message, reply_type, retry)
            except QueueFull:
                _LOG.warning("traces:forward-full", "OTLP export refused: the forward queue is full")
                message = (
                    "the forward queue is full (the downstream is not accepting spans); nothing was applied; "
                    "retry after the Retry-After interval"
                )
                retry = {"Retry-After": str(FORWARD_RETRY_AFTER_S)}
                return otlp_status(503, RPC_UNAVAILABLE, message, reply_type, retry)
            except _TooLarge:
                return self._too_large(reply_type)
            except OtlpDecodeError as exc:
                return otlp_status(400, RPC_INVALID_ARGUMENT, str(exc), reply_type)
            except DecoderUnavailable:
                self.engine.metrics.record_internal_error("server.decoder")
                message = "the OTLP decoding process stopped, nothing was applied; retry after the Retry-After interval"
                retry = {"Retry-After": str(DECODER_RETRY_AFTER_S)}
                return otlp_status(503, RPC_UNAVAILABLE, message, reply_type, retry)
            except StoreCorruptError:
                # 500, which exporters do not retry: a damaged file is not fixed by sending it again.
                _LOG.error("traces:corrupt", "OTLP export refused, the store is damaged", exc_info=True)
                return otlp_status(500, RPC_DATA_LOSS, CORRUPT_STORE_MESSAGE, reply_type)
            except StoreError as exc:
                # Nothing was acknowledged: the exporter retries the whole batch, deduplicated later.
                # The cause (a file path, a host) goes to the log, not to the client.
                _LOG.warning("traces:store", "OTLP export refused, the store failed: %s", exc)
                message = "state store unavailable, nothing was applied; retry after the Retry-After interval"
                retry = {"Retry-After": str(STORE_RETRY_AFTER_S)}
                return otlp_status(503, RPC_UNAVAILABLE, message, reply_type, retry)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is listening any more
            except Exception:
                self.engine.metrics.record_internal_error("server.traces")
                _LOG.error("traces:internal", "otel_puppy internal error receiving an OTLP export", exc_info=True)
                return otlp_status(500, RPC_INTERNAL, "internal error; see the service log", reply_type)
        return Response(encode_response(rejected, message, reply_type), 200, media_type=reply_type)

    async def _take_slot(self) -> bool:
        """One of the ingest slots, waiting at most `wait_s` (an export is refused, never queued)."""
        with contextlib.suppress(anyio.WouldBlock):
            # A free slot is taken at once, with no deadline to set up nor checkpoint: 10 us of CPU
            # per export where `acquire` in `move_on_after` costs it (microbenchmark, uvloop).
            self._slots.acquire_nowait()
            return True
        with anyio.move_on_after(self.wait_s):
            await self._slots.acquire()
            return True
        return False

    def _memory_full(self, exc: MemoryFull, reply_type: str) -> Response:
        if not exc.ever:
            message = (
                f"this batch needs up to {exc.wanted} bytes to decode, over the ingest memory limit of "
                f"{exc.limit} bytes: send smaller batches"
            )
            return otlp_status(413, RPC_RESOURCE_EXHAUSTED, message, reply_type)
        message = "overloaded: the ingest memory limit is reached; retry after the Retry-After interval"
        return otlp_status(503, RPC_UNAVAILABLE, message, reply_type, {"Retry-After": str(MEMORY_RETRY_AFTER_S)})

    def _too_large(self, reply_type: str) -> Response:
        message = f"request body is over the limit of {self.max_body_bytes} bytes (after decompression)"
        return otlp_status(413, RPC_RESOURCE_EXHAUSTED, message, reply_type)

    async def _read(self, request: Request, reservation: Reservation) -> bytearray | None:
        """The raw body, or `None` as soon as it passes the limit (chunked bodies have no length).

        Raises:
            MemoryFull: the bytes received do not fit in the ingest memory limit.
        """
        body = bytearray()  # one buffer, no join: the body is held once
        async for chunk in request.stream():
            if len(body) + len(chunk) > self.max_body_bytes:
                return None
            reservation.grow_to(len(body) + len(chunk))
            body += chunk
        return body

    def _ingest(
        self, holder: list[bytearray], encoding: str, content_type: str, reservation: Reservation, scope: TokenScope
    ) -> tuple[int, str]:
        """In a worker thread: inflate, decode, apply. Returns (rejected spans, partial-success message).

        Raises:
            MemoryFull: inflating or decoding the body would pass the ingest memory limit.
        """
        raw = holder.pop()
        received = len(raw)
        forwarder = self.forwarder
        if forwarder is not None and not forwarder.room(received):
            raise QueueFull("no room for the batch")
        body = _inflate(raw, encoding, self.max_body_bytes, lambda size: reservation.grow_to(received + size))
        del raw
        if not body:
            return 0, ""  # the spec: an empty request is a success
        # Reserved before taking a turn: a batch over the memory left is refused at once, not after
        # the batches ahead of it (tests/reliability/test_hostile_server.py holds one inside apply).
        reservation.grow_to(decode_cost(body, media_type(content_type) == JSON))
        read: ReadSpans | None = None
        request: ExportTraceServiceRequest | None = None
        facts: SpanFacts | None = None
        if self.decoder is not None:  # read in a decoding process, while this one applies other batches
            limits = self.engine.settings.call_limits
            # The request itself for those that write it out again: a JSON body's from the decoding
            # process, as protobuf (decoding JSON here too would cost as much again); protobuf's here.
            again = (forwarder is not None or self.recorder is not None) and media_type(content_type) == JSON
            read, request, facts = self.decoder.read(
                body, content_type, limits, _MAX_MESSAGES, forwarder is not None, with_request=again
            )
        holder.append(body)  # handed over as the raw body was: freed once decoded
        del body
        with self._one_batch:
            return self._apply(holder, content_type, reservation, scope, read=read, request=request, facts=facts)

    def _apply(
        self,
        holder: list[bytearray],
        content_type: str,
        reservation: Reservation,
        scope: TokenScope,
        *,
        read: ReadSpans | None = None,
        request: ExportTraceServiceRequest | None = None,
        facts: SpanFacts | None = None,
    ) -> tuple[int, str]:
        """`_ingest` once the body is inflated: decode (unless a decoding process has: `read`, and the
        `request` and its `facts` when asked for them), apply, record, forward."""
        body = holder.pop()
        forwarder = self.forwarder
        # The request itself only to read it here, or for those that write it out again (protobuf and
        # `json` read a bytearray as they read bytes).
        if request is None and (read is None or forwarder is not None or self.recorder is not None):
            request = decode_traces(body, content_type)
        del body
        if read is None:
            assert request is not None
            read = read_request(request, self.engine.settings.call_limits, _MAX_MESSAGES, forwarder is not None)
        calls, rejected, problems, rejected_spans = read
        if scope:  # a scoped ingest token: its scope on every call, whatever the span claims
            calls = [stamp(call, scope) for call in calls]
        # Encoded now, written once applied: only accepted batches are recorded.
        record = self.recorder.encode(request) if self.recorder is not None and request is not None else None
        if forwarder is None:
            del request  # nothing else needs it: freed before the store round trip
        warnings: list[str] = []
        observations = self.engine.observe_many(calls) if calls else []
        for observation in observations:
            call = observation.call
            if observation.result is ApplyResult.APPLIED and call.problems and len(warnings) < _MAX_MESSAGES:
                span = f"span {call.trace_id:032x}/{call.span_id:016x}"
                warnings.append(f"{span} counted but not priced: {', '.join(call.problems)}")
        if forwarder is not None:  # applied: now queued for the downstream, before the 200
            assert request is not None
            try:
                forwarder.accept(request, observations, rejected_spans or {}, facts=facts)
            except (QueueFull, StoreError) as exc:  # `room` said yes, and another batch took it first
                raise _AppliedNotQueued(str(exc)) from exc
        if rejected:
            self.engine.metrics.record_spans("rejected", rejected)
        if self.recorder is not None:
            self.recorder.write(record)
        parts: list[str] = []
        if rejected:
            more = rejected - len(problems)
            listed = "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
            parts.append(f"{rejected} span{'s' if rejected != 1 else ''} rejected: {listed}")
        parts.extend(warnings)
        return rejected, "; ".join(parts)


_T = TypeVar("_T")


async def _in_thread(workers: ThreadPoolExecutor, func: Callable[..., _T], *args: Any) -> _T:
    """`func(*args)` in one of `workers`, as `anyio.to_thread.run_sync` would run it, and shielded as it
    is: a request cancelled meanwhile (the server stopping) still waits for its batch to be applied,
    so that its slot and its memory are let go only once the worker is done with them.

    The hop is about 20 us of CPU per export where anyio's is about 40: anyio adds a checkpoint, a
    capacity limiter (with its own checkpoint) and a cancel scope, none of which a request holding an
    ingest slot needs.
    """
    future = asyncio.get_running_loop().run_in_executor(workers, func, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((future,))
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller is told
        raise


def _inflate(raw: bytearray, encoding: str, limit: int, reserve: Callable[[int], None] | None = None) -> bytearray:
    """Decompress `raw` a bounded chunk at a time, stopping as soon as the output passes `limit`.

    A gzip bomb (a small body that inflates to gigabytes) therefore costs at most `limit` plus
    one chunk of memory. gzip bodies may hold several members (RFC 1952); `deflate` is the zlib
    format (RFC 9110), and raw deflate, which some clients send, is accepted too. `reserve` is
    told the output's size as it grows (it raises to stop), and the output is never copied.

    Raises:
        _TooLarge: the inflated body is over `limit`.
        OtlpDecodeError: the body is not valid for its encoding.
    """
    if encoding in _IDENTITY or not raw:
        return raw
    if encoding in _GZIP:
        wbits = 16 + zlib.MAX_WBITS
    else:
        zlib_header = len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    out = bytearray()
    pending: bytes | bytearray = raw
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof:
                chunk = inflater.decompress(pending, _INFLATE_CHUNK)
                pending = inflater.unconsumed_tail
                out += chunk
                if len(out) > limit:
                    raise _TooLarge
                if reserve is not None and chunk:
                    reserve(len(out))
                if not chunk and not pending and not inflater.eof:
                    raise OtlpDecodeError(f"{encoding} body is truncated")
            pending = inflater.unused_data
            if not pending or encoding not in _GZIP:
                break
    except zlib.error as exc:
        raise OtlpDecodeError(f"invalid {encoding} body: {exc}") from None
    return out


_STATUS_SCHEMA: Final = {
    "description": "A `google.rpc.Status` in the request's encoding.",
    "content": {
        PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        JSON: {
            "schema": {
                "type": "object",
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            }
        },
    },
}
OTLP_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Applied. An `ExportTraceServiceResponse` in the request's encoding; "
        "`partialSuccess.rejectedSpans` counts spans with unusable ids.",
        "content": {
            PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            JSON: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "partialSuccess": {
                            "type": "object",
                            "properties": {"rejectedSpans": {"type": "string"}, "errorMessage": {"type": "string"}},
                        }
                    },
                }
            },
        },
    },
    400: {**_STATUS_SCHEMA, "description": "Malformed payload (do not retry); the message names what is wrong."},
    401: {**_STATUS_SCHEMA, "description": "Missing or wrong bearer token (when `api_token` is set)."},
    413: {**_STATUS_SCHEMA, "description": f"Body over {MAX_BODY_BYTES} bytes after decompression."},
    415: {**_STATUS_SCHEMA, "description": "Content type not protobuf or JSON, or an encoding not gzip/deflate."},
    503: {**_STATUS_SCHEMA, "description": "Overloaded or store unavailable; retry after `Retry-After` seconds."},
}
OTLP_REQUEST: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "description": "An OTLP `ExportTraceServiceRequest`; `Content-Encoding: gzip` or `deflate` optional.",
        "content": {
            PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            # proto3 JSON: `null` is the field's default (no spans), as an absent field is
            JSON: {"schema": {"type": "object", "properties": {"resourceSpans": {"type": ["array", "null"]}}}},
        },
    }
}
