"""Hostile clients against the service (issue 12, points 4, 7 and 8): stalled and trickled uploads,
idle and slowloris connections, too many connections, bodies that decode to a hundred times their
size, concurrent large batches, and a damaged store.

Each attack is first run against a real `otel-puppy serve` (or the app on uvicorn where a test must
hold a request mid-flight); then the test shows that an exhausted deny budget still denies, that
an export from another client is applied exactly once, and that the probes answer. Deadlines are
set short through settings so the tests wait for events (a closed socket, a status line) with
generous hang guards only, never for time to pass.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import StoreCorruptError, StoreError
from otel_puppy.server.app import CORRUPT_STORE_MESSAGE, create_app
from otel_puppy.server.memory import decode_cost
from otel_puppy.store.base import StoreHealth
from otel_puppy.testing import engine_for_tests
from tests._service import NANOS, Service, chat_spans, environment, export, service, spent_nanos, write_policies
from tests._serving import serve

PROTOBUF = "application/x-protobuf"
MiB = 1024 * 1024
GUARD_S = 30.0
"""A hang guard: every wait below ends on an event long before it."""
POLICIES = """
budgets:
  - name: org-daily
    limit_usd: 0.001
    window: day
    action: deny
"""
DECIDE = {"provider": "openai", "model": "gpt-4.1", "agent": "support", "estimated_cost_usd": "0.0001"}


# --- helpers --------------------------------------------------------------------------------------


def protobuf(spans: int) -> bytes:
    data: bytes = encode_spans(chat_spans(spans)).SerializeToString()
    return data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def empty_spans_body(size: int = 16 * MiB) -> bytes:
    """One resource, one scope, and `size / 2` empty spans: two wire bytes that decode to ~180."""
    spans = b"\x12\x00" * ((size - 16) // 2)
    resource_spans = b"\x12" + _varint(len(spans)) + spans
    return b"\x0a" + _varint(len(resource_spans)) + resource_spans


def empty_objects_json(size: int = 16 * MiB) -> bytes:
    """`{}` spans in JSON: three bytes that decode to ~130."""
    count = (size - 64) // 3
    return b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + b",".join([b"{}"] * count) + b"]}]}]}"


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=GUARD_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the guard raises on a hang)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def stalled_upload(url: str, path: str = "/v1/traces", content_type: str = PROTOBUF) -> socket.socket:
    """A request whose head is complete and whose body stops after 10 of its promised 100,000 bytes."""
    sock = connect(url)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n"
    sock.sendall(head.encode() + b"\x0a" * 10)
    return sock


def hwm_bytes(process_id: int) -> int:
    for line in Path(f"/proc/{process_id}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def rss_bytes(process_id: int) -> int:
    for line in Path(f"/proc/{process_id}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextmanager
def hostile_service(tmp_path: Path, **settings: str) -> Iterator[Service]:
    """`otel-puppy serve` on SQLite with a $0.001 deny budget, already exhausted by one call."""
    policies = write_policies(tmp_path, POLICIES)
    with service(tmp_path, "--policies", str(policies), env=environment(**settings)) as running:
        assert export(running.url, chat_spans(1)) is SpanExportResult.SUCCESS
        yield running


def still_enforced(running: Service, exported: int) -> None:
    """Another client's export is applied once, the exhausted budget denies, the probes answer."""
    assert export(running.url, chat_spans(1)) is SpanExportResult.SUCCESS
    assert spent_nanos(running.url, "org-daily") == (exported + 1) * NANOS
    with httpx.Client(base_url=running.url, timeout=GUARD_S) as client:
        decision = client.post("/v1/decide", json=DECIDE)
        assert decision.status_code == 200, decision.text
        assert decision.json()["action"] == "deny"
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}


# --- point 4: slow and idle clients ---------------------------------------------------------------


def test_stalled_uploads_do_not_hold_the_ingest_slots(tmp_path: Path) -> None:
    # Before the fix every upload took an ingest slot (8) and then waited for its body: 12 stalled
    # uploads made every export a 503 until they gave up.
    with hostile_service(tmp_path, body_timeout_s="60") as running, ExitStack() as stack:
        for _ in range(12):
            stack.enter_context(closing(stalled_upload(running.url)))
        still_enforced(running, exported=1)
        assert running.process.poll() is None


def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_closed(tmp_path: Path) -> None:
    with hostile_service(tmp_path, body_timeout_s="1") as running, ExitStack() as stack:
        uploads = (("/v1/traces", PROTOBUF), ("/v1/decide", "application/json"))
        # both stalled at once: each waits out the same second
        stalled = [stack.enter_context(closing(stalled_upload(running.url, *upload))) for upload in uploads]
        for (path, _), sock in zip(uploads, stalled, strict=True):
            answer = read_until_closed(sock)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"connection: close" in head.lower()
            message = "the request body did not arrive within 1s"
            if path == "/v1/traces":
                assert status_pb2.Status.FromString(body).code == 4  # DEADLINE_EXCEEDED
                assert status_pb2.Status.FromString(body).message == message
            else:
                assert body == b'{"code":"request_timeout","message":"' + message.encode() + b'"}'
        still_enforced(running, exported=1)


@pytest.mark.long
def test_idle_and_slowloris_connections_are_closed(tmp_path: Path) -> None:
    with hostile_service(tmp_path, head_timeout_s="1", keep_alive_timeout_s="1") as running:
        # connected, never a byte: uvicorn alone would keep this open for ever
        with closing(connect(running.url)) as idle:
            assert read_until_closed(idle) == b""
        # a head sent a byte at a time, each within the keep-alive timeout: closed at the head deadline
        with closing(connect(running.url)) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            closed = threading.Event()

            def trickle() -> None:
                while not closed.is_set():
                    try:
                        slow.sendall(b"X")
                    except OSError:
                        return
                    closed.wait(0.2)

            sender = threading.Thread(target=trickle)
            sender.start()
            try:
                assert read_until_closed(slow) == b""
            finally:
                closed.set()
                sender.join(GUARD_S)
        # a finished request on a keep-alive connection, then silence
        with closing(connect(running.url)) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_until_closed(kept)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert answer.endswith(b'{"status":"ok"}')
        still_enforced(running, exported=1)


def test_past_max_connections_new_requests_get_503_until_connections_close(tmp_path: Path) -> None:
    with hostile_service(tmp_path, max_connections="4", head_timeout_s="60") as running, ExitStack() as stack:
        idle = [stack.enter_context(closing(connect(running.url))) for _ in range(4)]
        with httpx.Client(base_url=running.url, timeout=GUARD_S) as client:
            refused = client.get("/healthz")
            assert (refused.status_code, refused.text) == (503, "Service Unavailable")
            for sock in idle:
                sock.close()
            with httpx.Client(base_url=running.url, timeout=GUARD_S) as fresh:
                while fresh.get("/healthz").status_code != 200:  # the server sees the closes: an event
                    pass
        still_enforced(running, exported=1)


def test_head_on_the_probes() -> None:
    engine = engine_for_tests()
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=GUARD_S) as client:
        for path in ("/healthz", "/readyz"):
            response = client.head(path)
            assert (response.status_code, response.content) == (200, b"")
        engine.store.totals = _raise(StoreError("down"))  # type: ignore[method-assign]
        response = client.head("/readyz")
        assert (response.status_code, response.content) == (503, b"")
        assert client.head("/healthz").status_code == 200
    engine.close()


# --- point 7: memory bounded per request and in total ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(empty_spans_body, PROTOBUF), (empty_objects_json, "application/json")],
    ids=["protobuf-empty-spans", "json-empty-objects"],
)
def test_a_body_that_would_decode_to_gigabytes_is_refused_before_decoding(
    tmp_path: Path, body: Any, content_type: str
) -> None:
    payload: bytes = body()
    assert len(payload) <= 16 * MiB
    wanted = decode_cost(payload, content_type == "application/json")
    assert wanted > 1024 * MiB  # decoding it would take 1.4 GiB (measured), so it may not start
    with hostile_service(tmp_path) as running:
        before = hwm_bytes(running.process.pid)
        headers = {"content-type": content_type}
        response = httpx.post(f"{running.url}/v1/traces", content=payload, headers=headers, timeout=GUARD_S)
        assert response.status_code == 413
        message = (
            f"this batch needs up to {wanted} bytes to decode, over the ingest memory limit of "
            f"{1024 * MiB} bytes: send smaller batches"
        )
        if content_type == PROTOBUF:
            assert status_pb2.Status.FromString(response.content).message == message
        else:
            assert response.json() == {"code": 8, "message": message}
        # the body was read (16 MiB) and counted, never decoded
        assert hwm_bytes(running.process.pid) - before < 64 * MiB
        still_enforced(running, exported=1)


def test_concurrent_large_batches_share_one_memory_limit(tmp_path: Path) -> None:
    body = protobuf(4000)  # ~1.4 MiB of real SDK spans; reserves ~34 times that to decode
    cost = decode_cost(body, json=False)
    limit = 64 * MiB
    assert limit // 2 < cost < limit  # one fits at a time: concurrent ones must be refused or wait
    with hostile_service(tmp_path, ingest_memory_limit_bytes=str(limit)) as running:
        before = rss_bytes(running.process.pid)
        statuses: list[int] = []
        lock = threading.Lock()

        def send() -> None:
            with httpx.Client(base_url=running.url, timeout=GUARD_S) as client:
                response = client.post("/v1/traces", content=body, headers={"content-type": PROTOBUF})
                if response.status_code == 503:
                    assert response.headers["retry-after"] == "1"
                with lock:
                    statuses.append(response.status_code)

        threads = [threading.Thread(target=send) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD_S)
        assert len(statuses) == 6
        assert set(statuses) <= {200, 503}
        assert 200 in statuses
        # the same batch each time: applied once, however many were accepted
        assert spent_nanos(running.url, "org-daily") == (1 + 4000) * NANOS
        assert hwm_bytes(running.process.pid) - before < limit + 64 * MiB
        still_enforced(running, exported=4001)


def test_a_request_over_the_memory_left_is_told_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic: one export held inside `observe_many` keeps its reservation; the next is 503."""
    engine = engine_for_tests()
    body = protobuf(4000)
    limit = 64 * MiB
    assert limit // 2 < decode_cost(body, json=False) < limit
    entered, release = threading.Event(), threading.Event()
    observe_many = engine.observe_many

    def held(calls: Any) -> Any:
        entered.set()
        assert release.wait(GUARD_S)
        return observe_many(calls)

    monkeypatch.setattr(engine, "observe_many", held)
    app = create_app(engine, ingest_memory_limit_bytes=limit)
    with serve(app) as url, httpx.Client(base_url=url, timeout=GUARD_S) as client:
        headers = {"content-type": PROTOBUF}
        first: list[int] = []
        thread = threading.Thread(
            target=lambda: first.append(client.post("/v1/traces", content=body, headers=headers).status_code)
        )
        thread.start()
        assert entered.wait(GUARD_S)
        refused = client.post("/v1/traces", content=body, headers=headers)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert status_pb2.Status.FromString(refused.content).message == (
            "overloaded: the ingest memory limit is reached; retry after the Retry-After interval"
        )
        assert client.get("/healthz").status_code == 200
        release.set()
        thread.join(GUARD_S)
        assert first == [200]
        monkeypatch.setattr(engine, "observe_many", observe_many)
        assert (
            client.post("/v1/traces", content=body, headers=headers).status_code == 200
        )  # the reservation was released
    engine.close()


# --- point 8: a damaged store ---------------------------------------------------------------------

SECRET_PATH = "/srv/secret-dir/otel-puppy.db"


def _raise(exc: Exception) -> Any:
    def raising(*args: object, **kwargs: object) -> Any:
        raise exc

    return raising


@pytest.fixture
def engine() -> Iterator[PolicyEngine]:
    engine = engine_for_tests()
    yield engine
    engine.close()


def test_a_damaged_store_is_a_non_retryable_export_error_and_not_ready(
    engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = StoreCorruptError(f"{SECRET_PATH}: database disk image is malformed")
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=GUARD_S) as client:
        monkeypatch.setattr(engine, "observe_many", _raise(damaged))
        response = client.post("/v1/traces", content=protobuf(1), headers={"content-type": PROTOBUF})
        # OTLP/HTTP exporters retry 429, 502, 503 and 504 only: 500 stops the retry loop
        assert response.status_code == 500
        status = status_pb2.Status.FromString(response.content)
        assert (status.code, status.message) == (15, CORRUPT_STORE_MESSAGE)
        assert "retry-after" not in response.headers
        monkeypatch.setattr(engine.store, "totals", _raise(damaged))
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"code": "not_ready", "message": CORRUPT_STORE_MESSAGE})
        assert SECRET_PATH.encode() not in response.content + ready.content
    assert SECRET_PATH in caplog.text  # the operator learns where, from the log


def test_a_store_reporting_unreadable_state_is_not_ready(engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=GUARD_S) as client:
        assert client.get("/readyz").json() == {"status": "ready"}
        problem = StoreHealth(0, 3, "memory: stored values could not be read within the last minute")
        monkeypatch.setattr(engine.store, "health", lambda: problem, raising=False)
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (
            503,
            {"code": "not_ready", "message": "the store's state cannot be read or is damaged; see the service log"},
        )


def test_a_store_failure_does_not_tell_exporters_where_the_file_is(
    engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=GUARD_S) as client:
        monkeypatch.setattr(engine, "observe_many", _raise(StoreError(f"{SECRET_PATH}: database is locked")))
        response = client.post("/v1/traces", content=protobuf(1), headers={"content-type": PROTOBUF})
        assert (response.status_code, response.headers["retry-after"]) == (503, "5")
        status = status_pb2.Status.FromString(response.content)
        assert status.message == "state store unavailable, nothing was applied; retry after the Retry-After interval"
    assert SECRET_PATH in caplog.text
