"""`DecodePool`: a decoding process reads what the service's own would, and its failures lose nothing.

The processes here are real: `python -c` workers over pipes, as `otel-puppy serve` starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_puppy.bounds import DEFAULT_LIMITS, MAX_DECODE_PROCESSES, CallLimits
from otel_puppy.forward.enrich import RunCosts
from otel_puppy.forward.otlp import enrich_request, span_facts
from otel_puppy.money import nanos_to_usd
from otel_puppy.pricing import Pricer
from otel_puppy.server import decoder as decoder_module
from otel_puppy.server.app import create_app
from otel_puppy.server.decoder import DecodePool, DecoderUnavailable, default_processes, read_request
from otel_puppy.server.otlp import JSON, PROTOBUF, OtlpDecodeError, UnsupportedContentType, decode_traces
from otel_puppy.testing import engine_for_tests
from tests._serving import serve
from tests.corpus._replay import load_cases
from tests.server.test_otlp_http import NANOS, json_with_bad_ids, protobuf_body, sample, status_of, with_bad_ids

STOP_WITHIN_S = 10.0


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    """A pool of its own, for a test that stops, kills or starves its worker."""
    pool = DecodePool(1).start()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[DecodePool]:
    """One pool for the tests that only read through it."""
    pool = DecodePool(1).start()
    yield pool
    pool.close()


def bodies() -> list[tuple[str, bytes, str]]:
    """Every recorded corpus body (OTLP/JSON from ten instrumentations), and protobuf and JSON bodies
    with spans whose ids cannot be used, and one whose tokens are over the bound."""
    out = [(case.id, line, JSON) for case in load_cases() for line in case.body().splitlines() if line.strip()]
    out.append(("protobuf with bad ids", with_bad_ids(protobuf_body(3)), PROTOBUF))
    out.append(("json with bad ids", json_with_bad_ids(), JSON))
    request = ExportTraceServiceRequest.FromString(protobuf_body(2))
    for attribute in request.resource_spans[0].scope_spans[0].spans[0].attributes:
        if attribute.key == "gen_ai.usage.input_tokens":
            attribute.value.int_value = 2**63 - 1  # over every bound: rejected
    out.append(("tokens over the bound", request.SerializeToString(), PROTOBUF))
    return out


def test_a_decoding_process_reads_every_body_as_the_service_does(shared: DecodePool) -> None:
    cases = bodies()
    assert len(cases) > 100
    for limits in (DEFAULT_LIMITS, CallLimits(max_tokens=500, max_cost_usd=Decimal("0.001"))):
        for with_rejected in (False, True):
            for name, body, content_type in cases:
                here = read_request(decode_traces(body, content_type), limits, 10, with_rejected)
                there, request, facts = shared.read(bytearray(body), content_type, limits, 10, with_rejected)
                assert there == here, name
                assert request is None
                # what forwarding reads of each span, read there for a batch to forward
                assert facts == (span_facts(decode_traces(body, content_type)) if with_rejected else None), name
    # the bad ids and the token bound were met, not skipped
    rejected = {
        name: shared.read(body, content_type, DEFAULT_LIMITS, 10, True)[0][1] for name, body, content_type in cases
    }
    assert (rejected["protobuf with bad ids"], rejected["json with bad ids"], rejected["tokens over the bound"]) == (
        2,
        2,
        1,
    )


def test_a_body_that_is_not_otlp_is_the_same_error_from_a_decoding_process(shared: DecodePool) -> None:
    for body, content_type in [
        (b"\xff\x00 not protobuf", PROTOBUF),
        (b'{"resourceSpans": [', JSON),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', JSON),
        (b"{}", "text/plain"),
    ]:
        with pytest.raises(OtlpDecodeError) as here:
            read_request(decode_traces(body, content_type), DEFAULT_LIMITS, 10, False)
        with pytest.raises(OtlpDecodeError) as there:
            shared.read(body, content_type, DEFAULT_LIMITS, 10, False)
        assert (type(there.value), str(there.value)) == (type(here.value), str(here.value))
    assert type(there.value) is UnsupportedContentType
    assert "Traceback" in there.value.__notes__[-1]  # the worker's, for the service's log
    [pid] = shared.pids()
    assert shared.read(protobuf_body(2), PROTOBUF, DEFAULT_LIMITS, 10, False)[0][0]  # the same worker goes on
    assert shared.pids() == [pid]


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (reaped, or a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # reaped before the open, or between the open and the read
        return True
    return state == "Z"


def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + STOP_WITHIN_S
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.02)  # polling for an event (the process ending), not waiting out time


def held(pool: DecodePool, sender: ThreadPoolExecutor, body: bytes) -> Future[object]:
    """`pool.read(body)` sent from `sender`'s thread, once its worker (stopped: SIGSTOP) holds it."""
    [worker] = pool._workers
    sent: Future[object] = sender.submit(pool.read, body, PROTOBUF, DEFAULT_LIMITS, 10, False)
    eventually(lambda: bool(worker.waiting))  # the batch is in its pipe
    return sent


def test_a_killed_worker_fails_the_batch_it_held_and_another_takes_its_place(
    pool: DecodePool, caplog: pytest.LogCaptureFixture
) -> None:
    body = protobuf_body(2)
    [before] = pool.pids()
    assert len(pool.read(body, PROTOBUF, DEFAULT_LIMITS, 10, False)[0][0]) == 2
    os.kill(before, signal.SIGSTOP)  # it holds the next batch, unanswered
    with ThreadPoolExecutor(1) as sender:
        sent = held(pool, sender, body)
        os.kill(before, signal.SIGKILL)
        failure = sent.exception(STOP_WITHIN_S)
    assert isinstance(failure, DecoderUnavailable)
    assert str(failure) == "the OTLP decoding process stopped before answering"
    [after] = pool.pids()
    assert after != before
    assert len(pool.read(body, PROTOBUF, DEFAULT_LIMITS, 10, False)[0][0]) == 2
    expected = [
        "otel_puppy: an OTLP decoding process stopped (exit status -9); the batches it held were refused (503) "
        "and another took its place"
    ]
    eventually(lambda: [r.getMessage() for r in caplog.records if r.name == "otel_puppy.server"] == expected)


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STOP_WITHIN_S
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.01)  # polling for an event (another thread's), not waiting out time


def test_batches_wait_in_a_busy_workers_pipe_and_their_threads_go_on(pool: DecodePool) -> None:
    """Four bodies of 150 KB (100 spans with message bodies inflate to about that) are written into the
    pipe of a worker that reads none of them yet, each thread free again at once: with the pipe's
    default 64 KiB, the first stayed in `write` until the worker read it, holding the pipe from the rest."""
    body = protobuf_body(350)
    assert 140_000 < len(body) < 160_000
    [worker] = pool._workers
    assert len(pool.read(body, PROTOBUF, DEFAULT_LIMITS, 10, False)[0][0]) == 350  # started
    os.kill(worker.process.pid, signal.SIGSTOP)
    with ThreadPoolExecutor(4) as senders:
        sent = [senders.submit(pool.read, body, PROTOBUF, DEFAULT_LIMITS, 10, False) for _ in range(4)]
        try:
            eventually(lambda: len(worker.waiting) == 4 and not worker._writing.locked())
            assert not any(future.done() for future in sent)
        finally:
            os.kill(worker.process.pid, signal.SIGCONT)
        assert [len(future.result(STOP_WITHIN_S)[0][0]) for future in sent] == [350] * 4


def test_a_worker_that_dies_idle_is_replaced_at_once(pool: DecodePool) -> None:
    [before] = pool.pids()
    os.kill(before, signal.SIGKILL)
    eventually(lambda: pool.pids() not in ([], [before]))
    (calls, _, _, _), _, _ = pool.read(protobuf_body(2), PROTOBUF, DEFAULT_LIMITS, 10, False)  # no batch refused
    assert len(calls) == 2


def test_a_worker_that_answers_nothing_is_killed_and_replaced(
    pool: DecodePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    [before] = pool.pids()
    pool.read(protobuf_body(1), PROTOBUF, DEFAULT_LIMITS, 10, False)  # started
    os.kill(before, signal.SIGSTOP)
    # Short only while the stopped worker holds the batch: a worker still starting (this one before, the
    # new one after) may take seconds to answer on a loaded machine, and must not be taken for stalled.
    monkeypatch.setattr(decoder_module, "_STALLED_S", 0.5)
    started = time.monotonic()
    with pytest.raises(DecoderUnavailable, match="stopped before answering"):
        pool.read(protobuf_body(2), PROTOBUF, DEFAULT_LIMITS, 10, False)
    assert time.monotonic() - started < STOP_WITHIN_S
    monkeypatch.undo()
    # Killed: its pipe ends as the kernel closes its files, a moment before the process itself is gone.
    wait_until_gone(before)
    [after] = pool.pids()
    assert after != before
    (calls, _, _, _), _, _ = pool.read(protobuf_body(2), PROTOBUF, DEFAULT_LIMITS, 10, False)
    assert len(calls) == 2


def test_a_worker_that_cannot_be_started_is_started_by_the_next_batch(
    pool: DecodePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = decoder_module._Worker

    def no_process(*args: object) -> object:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(decoder_module, "_Worker", no_process)
    [before] = pool.pids()
    os.kill(before, signal.SIGKILL)
    eventually(lambda: pool.pids() == [])
    for _ in range(2):  # refused, to be retried: never a 500
        with pytest.raises(DecoderUnavailable, match=r"no OTLP decoding process could be started: \[Errno 24\]"):
            pool.read(protobuf_body(2), PROTOBUF, DEFAULT_LIMITS, 10, False)
    monkeypatch.setattr(decoder_module, "_Worker", worker)
    (calls, _, _, _), _, _ = pool.read(protobuf_body(2), PROTOBUF, DEFAULT_LIMITS, 10, False)
    assert len(calls) == 2
    assert len(pool.pids()) == 1


def test_a_decoding_process_gives_the_request_back_when_asked(shared: DecodePool) -> None:
    for body, content_type in [(json_with_bad_ids(), JSON), (with_bad_ids(protobuf_body(2)), PROTOBUF)]:
        (calls, rejected, _, spans), request, _ = shared.read(
            body, content_type, DEFAULT_LIMITS, 10, True, with_request=True
        )
        assert request == decode_traces(body, content_type)
        assert (len(calls), rejected, len(spans or {})) == (2, 2, 2)


def test_a_worker_imports_only_what_the_service_imports(tmp_path: Path) -> None:
    """Not a stray `pickle.py` in the directory the service was started from (as `python -c` would)."""
    (tmp_path / "pickle.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\nraise SystemExit(3)\n")
    program = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from otel_puppy.bounds import DEFAULT_LIMITS
        from otel_puppy.server.decoder import DecodePool
        from tests.server.test_otlp_http import protobuf_body
        pool = DecodePool(1).start()
        (calls, _, _, _), _, _ = pool.read(protobuf_body(2), "application/x-protobuf", DEFAULT_LIMITS, 10, False)
        pool.close()
        print(len(calls))
        """
    )
    # `-I`, as the installed `otel-puppy` command runs: its working directory is not on its path
    done = subprocess.run(
        [sys.executable, "-I", "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "2\n", "")
    assert not (tmp_path / "imported").exists()


def test_an_export_whose_worker_died_is_refused_with_503_and_counted_once_when_retried(pool: DecodePool) -> None:
    engine = engine_for_tests()
    body = protobuf_body(2)
    headers = {"content-type": PROTOBUF}
    try:
        with serve(create_app(engine, decoder=pool)) as url, httpx.Client(base_url=url, timeout=30) as client:
            [pid] = pool.pids()
            [worker] = pool._workers
            os.kill(pid, signal.SIGSTOP)  # the export waits in its pipe
            with ThreadPoolExecutor(1) as sender:
                sent = sender.submit(client.post, "/v1/traces", content=body, headers=headers)
                eventually(lambda: bool(worker.waiting))
                os.kill(pid, signal.SIGKILL)
                refused = sent.result(STOP_WITHIN_S)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert status_of(refused) == (
                14,
                "the OTLP decoding process stopped, nothing was applied; retry after the Retry-After interval",
            )
            assert engine.snapshot().spend("day") == 0
            assert sample(client, "otel_puppy_internal_errors_total", component="server.decoder") == 1.0
            retried = client.post("/v1/traces", content=body, headers=headers)
            assert retried.status_code == 200
            again = client.post("/v1/traces", content=body, headers=headers)  # a duplicate: counted once
            assert again.status_code == 200
            assert engine.snapshot().spend("day") == nanos_to_usd(2 * NANOS)
            assert sample(client, "otel_puppy_spans_total", result="applied") == 2.0
    finally:
        engine.close()


def test_a_closed_pool_refuses_and_its_workers_have_exited() -> None:
    pool = DecodePool(2).start()
    pids = pool.pids()
    assert len(pids) == 2
    pool.close()
    for pid in pids:
        wait_until_gone(pid)
    with pytest.raises(DecoderUnavailable, match="the OTLP decoding processes are stopped"):
        pool.read(protobuf_body(1), PROTOBUF, DEFAULT_LIMITS, 10, False)


def test_workers_are_out_of_reach_of_a_terminals_ctrl_c(shared: DecodePool) -> None:
    [pid] = shared.pids()
    # A terminal signals its foreground process group; the workers are in a session of their own.
    assert os.getpgid(pid) == os.getsid(pid) == pid
    assert os.getpgid(pid) != os.getpgid(0)


def test_workers_exit_when_the_service_is_killed(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import sys, time
        from otel_puppy.server.decoder import DecodePool
        pool = DecodePool(2).start()
        print(*pool.pids(), flush=True)
        time.sleep(600)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2], text=True
    ) as service:
        try:
            assert service.stdout is not None
            pids = [int(pid) for pid in service.stdout.readline().split()]
            assert len(pids) == 2
            assert not any(gone(pid) for pid in pids)
        finally:
            service.kill()
            service.wait(STOP_WITHIN_S)
    for pid in pids:
        wait_until_gone(pid)


def test_the_number_of_processes_is_bounded() -> None:
    for processes in (0, -1, MAX_DECODE_PROCESSES + 1):
        with pytest.raises(ValueError, match=f"processes must be from 1 to 16, not {processes}"):
            DecodePool(processes)


def test_one_decoding_process_by_default_on_two_cpus_or_more(monkeypatch: pytest.MonkeyPatch) -> None:
    for cpus, expected in (({0}, 0), ({0, 1}, 1), (set(range(64)), 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, cpus=cpus: cpus)
        assert default_processes() == expected


def test_closing_a_pool_whose_worker_hangs_kills_it_and_fails_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_module, "_STOP_WITHIN_S", 0.5)
    pool = DecodePool(1).start()
    try:
        [pid] = pool.pids()
        os.kill(pid, signal.SIGSTOP)  # reads nothing more: a 4 MiB body fills its pipe, the write waits
        [worker] = pool._workers
        with ThreadPoolExecutor(1) as sender:
            sent = held(pool, sender, bytes(4 * 1024 * 1024))
            pool.close()  # does not wait for the write for ever: the worker is killed
            failure = sent.exception(STOP_WITHIN_S)
    finally:
        pool.close()  # a stopped worker left behind would never see its pipe end: killed here too
    assert isinstance(failure, DecoderUnavailable)
    assert worker.process.returncode == -signal.SIGKILL


def test_a_batch_enriched_with_the_facts_a_decoding_process_read_is_the_batch_enriched_here(shared: DecodePool) -> None:
    pricer = Pricer()
    enriched = 0
    for name, body, content_type in bodies():
        (calls, _, _, rejected), _, facts = shared.read(body, content_type, DEFAULT_LIMITS, 10, True)
        assert facts is not None
        priced = {(call.trace_id, call.span_id): pricer.price(call) for call in calls}
        counted = {key: price.nanos for key, price in priced.items() if price.nanos is not None}
        here, there = decode_traces(body, content_type), decode_traces(body, content_type)
        spans = enrich_request(here, priced, counted, rejected or {}, RunCosts())
        assert enrich_request(there, priced, counted, rejected or {}, RunCosts(), facts=facts) == spans, name
        assert there.SerializeToString() == here.SerializeToString(), name
        enriched += here != decode_traces(body, content_type)
    assert enriched > 100  # attributes were written, not nothing twice
    request = decode_traces(protobuf_body(2), PROTOBUF)  # an agent run, two calls and an HTTP span
    with pytest.raises(ValueError, match="facts of 3 spans for a request of 4"):
        enrich_request(request, {}, {}, {}, RunCosts(), facts=span_facts(request)[:3])
