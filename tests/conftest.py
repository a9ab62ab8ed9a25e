from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator

import logfire
import pytest
from prometheus_client import REGISTRY

from otel_puppy.engine import PolicyEngine
from otel_puppy.metrics import claimant
from otel_puppy.testing import engine_for_tests
from tests._redis import RedisServer
from tests._serving import close_servers


@pytest.fixture
def engine() -> Iterator[PolicyEngine]:
    engine = engine_for_tests()
    yield engine
    engine.close()


@pytest.fixture
def logfire_engine() -> Iterator[PolicyEngine]:
    """Real logfire, configured with our processor, as a user would in their app."""
    engine = engine_for_tests()
    logfire.configure(
        send_to_logfire=False,
        console=False,
        service_name="tests",
        additional_span_processors=[engine.span_processor()],
    )
    yield engine
    engine.span_processor().force_flush()
    engine.close()


@pytest.fixture(autouse=True)
def _free_default_registry() -> Iterator[None]:
    """An engine built without `registry=` exports on `prometheus_client.REGISTRY`, one at a time
    (`RegistryInUse`). A test that leaves one open must not fail the next test that builds one."""
    yield
    leftover = claimant(REGISTRY)
    if leftover is not None:
        leftover.unregister()


@pytest.fixture(autouse=True)
def _fresh_rate_limited_logs() -> None:
    """The server's module-level logs allow one line per reason a minute: a test that reads a line
    must not find it spent by an earlier test."""
    from otel_puppy.server import auth, errors, otlp, receiver

    for log in (errors._LOG, otlp._LOG, receiver._LOG, auth._AUDIT_LOG):
        log.reset()


@pytest.fixture(autouse=True)
def _close_leftover_event_loop() -> Iterator[None]:
    """pydantic-ai's `run_sync` leaves its event loop set on the thread; close it so it is not
    collected later, in another test, with a ResourceWarning."""
    yield
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
    if not loop.is_running() and not loop.is_closed():
        loop.close()
    policy.set_event_loop(None)
    # Collect now, in this test's teardown: a finalizer run by a collection in the middle of a later
    # test's `ast.parse` (logfire parses sources when instrumenting) trips CPython 3.11's "AST
    # constructor recursion depth mismatch" SystemError.
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def _servers_stopped_at_the_end() -> Iterator[None]:
    """The uvicorn servers `tests._serving.serve` keeps for the session, stopped once it is over."""
    yield
    close_servers()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real `redis-server` for the session; tests flush it through `redis_url`."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, empty."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a test stopped it
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url
