"""Metrics where users look: the default Prometheus registry, one engine at a time, `/metrics` in-process."""

from __future__ import annotations

import pickle
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.registry import CollectorRegistry

from otel_puppy import MetricsServer, RegistryInUse
from otel_puppy.calls import extract_call
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PuppyError, StoreError
from otel_puppy.metrics import Metrics, claimant
from otel_puppy.metrics_server import start_metrics_server
from otel_puppy.policies import PolicySet
from otel_puppy.settings import PuppySettings
from otel_puppy.store.memory import MemoryStore
from otel_puppy.testing import FakeClock, make_span

COST_LINE = (
    'otel_puppy_llm_cost_usd_total{agent="support",model="gpt-4.1",provider="openai",service="test-service"} 0.0028\n'
)
"""1,000 input tokens at $2/Mtok and 100 output tokens at $8/Mtok."""
IN_USE = (
    "the default Prometheus registry (prometheus_client.REGISTRY) already exports the metrics of a live "
    "otel_puppy PolicyEngine: pass this engine its own registry (registry=prometheus_client.CollectorRegistry()) "
    "or close() the first engine"
)


def default_engine(**settings: object) -> PolicyEngine:
    """An engine as a user builds it: no `registry=`."""
    return PolicyEngine(
        PuppySettings.load(store="memory://", **settings), policies=PolicySet(), clock=FakeClock(1_767_225_600.0)
    )


@pytest.fixture
def engine() -> Iterator[PolicyEngine]:
    engine = default_engine()
    yield engine
    engine.close()


def priced_call(engine: PolicyEngine) -> None:
    span = make_span(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4.1",
            "gen_ai.agent.name": "support",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 100,
        }
    )
    call = extract_call(span)
    assert call is not None
    engine.observe(call)


def test_an_engine_without_a_registry_exports_on_the_default_one(engine: PolicyEngine) -> None:
    assert engine.registry is REGISTRY
    assert claimant(REGISTRY) is engine.metrics
    priced_call(engine)
    assert COST_LINE in generate_latest().decode()


def test_close_unregisters_and_frees_the_default_registry() -> None:
    first = default_engine()
    priced_call(first)
    assert "otel_puppy_" in generate_latest().decode()
    first.close()
    assert "otel_puppy_" not in generate_latest().decode()
    assert claimant(REGISTRY) is None
    first.close()  # idempotent
    second = default_engine()
    try:
        assert claimant(REGISTRY) is second.metrics
        assert "otel_puppy_llm_cost_usd_total{" not in generate_latest().decode()  # nothing of the first's
    finally:
        second.close()


def test_a_second_live_engine_on_one_registry_is_refused_with_our_error(engine: PolicyEngine) -> None:
    with pytest.raises(RegistryInUse) as raised:
        default_engine()
    assert str(raised.value) == IN_USE
    assert isinstance(raised.value, PuppyError)
    assert claimant(REGISTRY) is engine.metrics  # the first keeps exporting
    private = CollectorRegistry(auto_describe=True)
    other = PolicyEngine(PuppySettings.load(store="memory://"), policies=PolicySet(), registry=private)
    try:
        with pytest.raises(RegistryInUse, match=r"^the Prometheus registry CollectorRegistry at 0x[0-9a-f]+ already"):
            PolicyEngine(PuppySettings.load(store="memory://"), policies=PolicySet(), registry=private)
    finally:
        other.close()
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (type(copy), str(copy)) == (RegistryInUse, IN_USE)


def test_an_engine_that_loses_the_race_for_a_registry_closes_what_it_opened(
    engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed by another engine between the early check and the claim: refused, and its store closed."""
    closed: list[bool] = []

    class Store(MemoryStore):
        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr("otel_puppy.engine.ensure_free", lambda registry: None)
    with pytest.raises(RegistryInUse):
        PolicyEngine(PuppySettings.load(store="memory://"), policies=PolicySet(), store=Store())
    assert closed == [True]
    assert claimant(REGISTRY) is engine.metrics


def test_an_engine_that_fails_to_start_claims_no_registry() -> None:
    settings = PuppySettings.load(store="memory://").model_copy(update={"store": "bogus://"})
    with pytest.raises(StoreError, match="'bogus' is not supported"):
        PolicyEngine(settings, policies=PolicySet())
    assert claimant(REGISTRY) is None
    default_engine().close()


def test_metrics_register_on_one_registry_at_a_time() -> None:
    metrics = Metrics(CollectorRegistry())
    with pytest.raises(ValueError, match="already registered on the Prometheus registry CollectorRegistry"):
        metrics.register(CollectorRegistry())
    metrics.unregister()
    metrics.unregister()  # idempotent


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        body: bytes = answer.read()
    return body.decode()


def test_start_metrics_server_serves_the_series_on_loopback_and_stops(engine: PolicyEngine) -> None:
    priced_call(engine)
    server = engine.start_metrics_server(0)
    assert isinstance(server, MetricsServer)
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    assert COST_LINE in scrape(server.url)
    server.close()
    server.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        scrape(server.url)


def test_closing_the_engine_stops_its_metrics_servers() -> None:
    engine = default_engine()
    with engine.start_metrics_server(0) as server:
        assert "otel_puppy_spans_buffered 0.0" in scrape(server.url)
        engine.close()
        with pytest.raises(urllib.error.URLError):
            scrape(server.url)


@pytest.mark.parametrize("port", [-1, 65536, 2**64, True, "9464", 9464.0])
def test_start_metrics_server_refuses_a_port_out_of_range(port: object) -> None:
    with pytest.raises(ValueError, match=r"^port must be an integer from 0 to 65535, not "):
        start_metrics_server(CollectorRegistry(), port)  # type: ignore[arg-type]


@pytest.mark.parametrize("addr", ["", "h" * 254, "127.0.0.1\n", "host\x00name"])
def test_start_metrics_server_refuses_an_implausible_address(addr: str) -> None:
    with pytest.raises(ValueError, match=r"^addr must be a host name or IP address of 1 to 253 characters, not "):
        start_metrics_server(CollectorRegistry(), 0, addr)


def test_a_huge_address_is_refused_and_not_echoed_whole() -> None:
    with pytest.raises(ValueError, match=r"^addr must be") as raised:
        start_metrics_server(CollectorRegistry(), 0, "h" * 10_000_000)
    assert str(raised.value).endswith(f"not {'h' * 40 + '...'!r}")  # cut in the message, never echoed whole
