"""`DecodePool`: OTLP bodies decoded, and their spans read into calls, in processes of their own.

The service applies every batch in one process, the one that holds the state (the memory store's
counters and keys, the breakers, the model statistics). Decoding a body and reading its spans
(`otlp.calls_from_request`) needs none of that state: in another process it runs on another core
while the service's process applies the batch before it. With message bodies, reading a span takes
about as long as applying it, so on two cores the service ingests about 1.4x the spans a second, for
the CPU of handing each batch over (the body one way, each call back as a tuple of its fields).
Its pipes hold a megabyte each (`_PIPE_BYTES`, Linux), so that several batches wait in the pipe for
the worker while the service's thread that wrote each is free again at once.
`otel-puppy serve` starts one by default when it may run on two CPUs or more (`default_processes`,
`OTEL_PUPPY_DECODE_PROCESSES`), as it starts (started with the first batch instead, the bench's first
batches waited a second for it: 56% of parse-only became 46%); the library alone never does.

A worker is this interpreter, isolated (`-I`: no current directory, no `PYTHON*` variables) with the
service's own `sys.path`, running `_serve_worker` over two pipes of its own: a request is a pickled
header (content type, limits, ...) and the body's bytes; the answer, the calls' fields or the error
raised (an `OtlpDecodeError` is the client's `400` as before). Not `multiprocessing`: its `spawn`
and `forkserver` run the service's main script again in every worker (a launcher without a
`__main__` guard would start a second service), and its pool adds two threads per batch hand-over.

A worker that dies (killed, out of memory, a crash) fails the batches sent to it and not yet
answered: each is answered `503` with `Retry-After` (`DecoderUnavailable`), nothing of it applied,
and a new worker takes its place at once. One that answers nothing for `_STALLED_S` while batches
wait is killed, and so replaced. Workers run in a session of their own (a terminal's Ctrl-C is for
the service, which stops them), and exit when the service's process is gone, even killed: their
request pipe ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_puppy.bounds import MAX_DECODE_PROCESSES, CallLimits
from otel_puppy.calls import LLMCall, call_fields, call_from_fields
from otel_puppy.exceptions import PuppyError
from otel_puppy.forward.otlp import SpanFacts, span_facts
from otel_puppy.server.otlp import calls_from_request, decode_traces

__all__ = (
    "DecodePool",
    "DecoderUnavailable",
    "ReadSpans",
    "default_processes",
    "read_request",
)

_LOG: Final = logging.getLogger("otel_puppy.server")

ReadSpans = tuple[list[LLMCall], int, list[str], dict[tuple[int, int], str] | None]
"""A request read: its calls, how many spans were rejected, why (the first few), and with `with_rejected`
each rejected span's (trace id, span id) and reason (`otlp.calls_from_request`)."""


class DecoderUnavailable(PuppyError):
    """The decoding process holding a batch stopped before answering: nothing of the batch was
    applied; the exporter retries it (`503`)."""


def default_processes() -> int:
    """One decoding process when this process may run on two CPUs or more, else none."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return 1 if cpus >= 2 else 0


def read_request(
    request: ExportTraceServiceRequest, limits: CallLimits, max_messages: int, with_rejected: bool
) -> ReadSpans:
    """The calls of a decoded request (`otlp.calls_from_request`), as a decoding process reads them."""
    rejected_spans: dict[tuple[int, int], str] | None = {} if with_rejected else None
    calls, rejected, problems = calls_from_request(request, max_messages, limits, rejected_spans)
    return calls, rejected, problems, rejected_spans


def _read_in_worker(
    body: bytes | bytearray, header: tuple[str, CallLimits, int, bool, bool]
) -> tuple[list[tuple[Any, ...]], int, list[str], dict[tuple[int, int], str] | None, bytes | None, SpanFacts | None]:
    """`body` decoded and read in a worker (`header`: `DecodePool.read`'s arguments): each call as its
    fields (`calls.call_fields`); with `with_request`, the decoded request too, as protobuf (which the
    service parses in C, where a JSON body would be decoded a second time in Python); for a batch to
    `forward`, its rejected spans and its `span_facts`."""
    content_type, limits, max_messages, forward, with_request = header
    request = decode_traces(body, content_type)
    calls, rejected, problems, rejected_spans = read_request(request, limits, max_messages, forward)
    encoded = request.SerializeToString() if with_request else None
    facts = span_facts(request) if forward else None
    return [call_fields(call) for call in calls], rejected, problems, rejected_spans, encoded, facts


_HEADER: Final = struct.Struct("<II")
"""A request's lengths: its pickled header's, then its body's."""
_LENGTH: Final = struct.Struct("<I")
"""An answer's length (its pickle follows)."""
_READY: Final = _LENGTH.pack(0)
"""What a worker writes first, once it has started (no answer is empty)."""
_BOOT: Final = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[3]); "
    "from otel_puppy.server.decoder import _serve_worker; _serve_worker(int(sys.argv[1]), int(sys.argv[2]))"
)
"""A worker's program: the service's `sys.path` (so it imports what the service imports, and nothing
from wherever it was started), then its loop."""
_PIPE_BYTES: Final = 1 << 20
"""What each pipe to and from a worker holds (Linux's `F_SETPIPE_SZ`; an unprivileged process may ask
for up to `/proc/sys/fs/pipe-max-size`, 1 MiB unless lowered). With the default 64 KiB, a batch's
inflated body (150 KB for 100 spans with message bodies) did not fit: its thread stayed in `write`,
holding the pipe, until the worker had read it, and the threads of the batches after it could write
theirs only once one of them next got the interpreter from the thread applying a batch (up to the
switch interval, 5 ms): the worker sat idle for a third of the time with batches waiting. Held here
they go through at once: 16,100 -> 19,500 spans a second (bench_service's big spans, memory store).
The kernel holds at most this much more per pipe."""
_STOP_WITHIN_S: Final = 5.0
_STALLED_S: Final = 30.0
"""A worker that answers nothing for this long while batches wait for it is killed (a 16 MiB body
decodes in a few seconds)."""


class _Gone(Exception):
    """The worker's pipes ended: it stopped."""


def _enlarge(pipe: int) -> None:
    """Have `pipe` hold `_PIPE_BYTES` where the system lets it (else it keeps its size: slower, not wrong)."""
    size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if size is None:
        return
    try:
        fcntl.fcntl(pipe, size, _PIPE_BYTES)
    except OSError as exc:  # over a lowered pipe-max-size (EPERM), or the user's pipe pages spent
        _LOG.debug("otel_puppy: a decoding process's pipe keeps its size: %s", exc)


def _read_exactly(source: io.RawIOBase, size: int) -> bytearray | None:
    """`size` bytes from `source`; `None` if it ends first."""
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size:
        got = source.readinto(view[done:])
        if not got:
            return None
        done += got
    return data


def _write_all(sink: io.RawIOBase, *parts: bytes | bytearray) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            written = sink.write(view)
            view = view[written or 0 :]


def _serve_worker(requests_fd: int, answers_fd: int) -> None:
    """A worker's loop: answer each request on `requests_fd` on `answers_fd` until the first ends."""
    with open(requests_fd, "rb", buffering=0) as requests, open(answers_fd, "wb", buffering=0) as answers:
        _write_all(answers, _READY)  # ready: its start is not time spent answering nothing
        while (lengths := _read_exactly(requests, _HEADER.size)) is not None:
            header_size, body_size = _HEADER.unpack(lengths)
            header = _read_exactly(requests, header_size)
            body = _read_exactly(requests, body_size)
            if header is None or body is None:
                return
            try:
                answer: tuple[bool, Any] = (True, _read_in_worker(body, pickle.loads(header)))  # noqa: S301 - the service's (`_Worker.ask`)
            except Exception as exc:  # the service answers the batch with it (400, or 500 for a bug)
                answer = (False, _portable(exc))
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
            _write_all(answers, _LENGTH.pack(len(data)), data)


def _portable(exc: Exception) -> Exception:
    """`exc` as the service can be given it: itself if it pickles (an `OtlpDecodeError`), else a
    `RuntimeError` saying what it was; with the worker's traceback as a note, for the service's log."""
    exc.add_note("".join(traceback.format_exception(exc)).rstrip())
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - its own bytes
    except Exception:
        portable = RuntimeError(f"{type(exc).__name__}: {exc}")
        portable.add_note(exc.__notes__[-1])
        return portable
    return exc


class _Waiting:
    """A request sent to a worker: its answer once read (`None` if the worker stopped first)."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: tuple[bool, Any] | None = None


class _Worker:
    """One decoding process, its two pipes, and the thread that reads its answers.

    Requests are written as they come, without waiting for the answers before them: the worker
    finds the next body in its pipe as soon as it is done with one (waiting would leave it idle
    until this process's thread got the interpreter back to send it, up to the switch interval).
    It answers in order; `waiting` holds the requests not yet answered, in that order. `on_gone`
    is called (from the reader thread) once its pipe has ended.
    """

    def __init__(self, on_gone: Callable[[_Worker], None]) -> None:
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        for fd in (requests_write, answers_write):
            _enlarge(fd)
        try:
            self.process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
                [sys.executable, "-I", "-c", _BOOT, str(requests_read), str(answers_write), json.dumps(sys.path)],
                pass_fds=(requests_read, answers_write),
                start_new_session=True,
            )
        except BaseException:
            for fd in (requests_read, requests_write, answers_read, answers_write):
                os.close(fd)
            raise
        os.close(requests_read)
        os.close(answers_write)
        self.requests = open(requests_write, "wb", buffering=0)  # noqa: SIM115 - closed by `close`
        self.answers = open(answers_read, "rb", buffering=0)  # noqa: SIM115 - closed by its reader
        self.waiting: deque[_Waiting] = deque()
        self.gone = False
        self.progress = time.monotonic()
        """When it last answered, or was given a request with none waiting."""
        self._on_gone = on_gone
        self._writing = threading.Lock()
        self._reader = threading.Thread(target=self._read_answers, name="otel-puppy-decoder", daemon=True)
        self._reader.start()

    def ask(self, header: bytes, body: bytes | bytearray) -> tuple[bool, Any]:
        """The worker's answer to one request.

        Raises:
            _Gone: the worker stopped before answering.
        """
        waiting = _Waiting()
        with self._writing:
            if self.gone:
                raise _Gone
            if not self.waiting:
                self.progress = time.monotonic()
            self.waiting.append(waiting)  # before writing: its answer can come before `write` returns
            try:
                _write_all(self.requests, _HEADER.pack(len(header), len(body)), header, body)
            except (OSError, ValueError) as exc:  # a broken pipe, or closed: gone (its reader says so)
                raise _Gone from exc
        while not waiting.done.wait(_STALLED_S / 4):
            if time.monotonic() - self.progress >= _STALLED_S:  # its reader then fails every request waiting
                _LOG.error("otel_puppy: an OTLP decoding process answered nothing for %gs; killing it", _STALLED_S)
                self.process.kill()
                waiting.done.wait()
        if waiting.answer is None:
            raise _Gone
        return waiting.answer

    def _read_answers(self) -> None:
        """Each answer to the request waiting longest, until the worker's pipe ends; then every request
        still waiting is told it is gone, and so is `on_gone`."""
        answers = self.answers
        try:
            while (length := _read_exactly(answers, _LENGTH.size)) is not None:
                if length == _READY:
                    self.progress = time.monotonic()
                    continue
                data = _read_exactly(answers, _LENGTH.unpack(length)[0])
                if data is None:
                    break
                # Pickles only ever cross the two pipes between the service and the worker it started:
                # no one else holds an end (the descriptors go to that child alone).
                answer: tuple[bool, Any] = pickle.loads(data)  # noqa: S301
                self.progress = time.monotonic()
                waiting = self.waiting.popleft()
                waiting.answer = answer
                waiting.done.set()
        except OSError:
            pass
        finally:
            with self._writing:
                self.gone = True
                left = list(self.waiting)
                self.waiting.clear()
            for waiting in left:
                waiting.done.set()
            answers.close()
        self._on_gone(self)

    def close(self) -> None:
        """End its request pipe: it answers what it holds, then exits (killed if it has not within
        `_STOP_WITHIN_S`)."""
        if not self._writing.acquire(timeout=_STOP_WITHIN_S):  # a write stuck: the worker reads no more
            self.process.kill()  # (the writer then fails: a broken pipe)
            self._writing.acquire()
        try:
            with contextlib.suppress(OSError):
                self.requests.close()
        finally:
            self._writing.release()
        try:
            self.process.wait(_STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if threading.current_thread() is not self._reader:
            self._reader.join(_STOP_WITHIN_S)


class DecodePool:
    """`processes` worker processes that decode OTLP bodies and read their spans (`read`); each body
    goes to the worker with the fewest waiting (the ingest slots bound how many wait in all).

    >>> pool = DecodePool(1).start()  # doctest: +SKIP
    >>> (calls, rejected, problems, _), _, _ = pool.read(body, PROTOBUF, DEFAULT_LIMITS, 10, False)  # doctest: +SKIP
    >>> pool.close()  # doctest: +SKIP
    """

    def __init__(self, processes: int) -> None:
        if not 1 <= processes <= MAX_DECODE_PROCESSES:
            raise ValueError(f"processes must be from 1 to {MAX_DECODE_PROCESSES}, not {processes}")
        self.processes = processes
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[_Worker] = []

    def start(self) -> DecodePool:
        """Start the workers (each takes under a second to import; a body sent meanwhile waits in its pipe).

        Raises:
            OSError: a worker could not be started (no process or file descriptor left).
        """
        with self._lock:
            self._fill()
        return self

    def _fill(self) -> None:
        """Start workers up to `processes` (the lock held)."""
        while len(self._workers) < self.processes and not self._closed:
            self._workers.append(_Worker(self._replace))

    def pids(self) -> list[int]:
        """The workers' process ids."""
        with self._lock:
            return sorted(worker.process.pid for worker in self._workers)

    def read(
        self,
        body: bytes | bytearray,
        content_type: str,
        limits: CallLimits,
        max_messages: int,
        forward: bool,
        *,
        with_request: bool = False,
    ) -> tuple[ReadSpans, ExportTraceServiceRequest | None, SpanFacts | None]:
        """`body` decoded and read in a worker (`read_request`); for a batch to `forward`, its rejected
        spans and its `forward.otlp.span_facts`; with `with_request`, the decoded request. Blocks the
        calling thread (not the interpreter) until it answers.

        Raises:
            OtlpDecodeError: the body is not a valid OTLP trace export.
            DecoderUnavailable: the worker stopped before answering (another takes its place), none
                could be started, or the pool is closed.
        """
        with self._lock:
            if self._closed:
                raise DecoderUnavailable("the OTLP decoding processes are stopped")
            if len(self._workers) < self.processes:  # not started yet, or one could not be before: once more
                try:
                    self._fill()
                except OSError as exc:
                    if not self._workers:
                        raise DecoderUnavailable(f"no OTLP decoding process could be started: {exc}") from None
            worker = min(self._workers, key=lambda worker: len(worker.waiting))
        header = (content_type, limits, max_messages, forward, with_request)
        try:
            ok, value = worker.ask(pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL), body)
        except _Gone:
            self._replace(worker)
            raise DecoderUnavailable("the OTLP decoding process stopped before answering") from None
        if not ok:
            raise value
        rows, rejected, problems, rejected_spans, encoded, facts = value
        request = None if encoded is None else ExportTraceServiceRequest.FromString(encoded)
        return ([call_from_fields(row) for row in rows], rejected, problems, rejected_spans), request, facts

    def _replace(self, gone: _Worker) -> None:
        """A new worker in place of `gone`, once (whichever of its reader and its batches sees it first;
        none once closed). One that cannot be started now is started by the next `read`."""
        with self._lock:
            if gone not in self._workers:
                return
            self._workers.remove(gone)
            try:
                self._fill()
            except OSError as exc:
                _LOG.error("otel_puppy: no OTLP decoding process could be started: %s; trying again", exc)
        gone.close()
        _LOG.error(
            "otel_puppy: an OTLP decoding process stopped (exit status %s); the batches it held were refused "
            "(503) and another took its place",
            gone.process.returncode,
        )

    def close(self) -> None:
        """Stop the workers: each ends once it has answered the bodies it holds."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:
            worker.close()
