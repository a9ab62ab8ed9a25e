"""The deployment files, checked by the tools that read them (no Docker engine here).

`docker-compose.yml`, the Collector configs and `deploy/prometheus.yml` are parsed and checked
against each other: every image pinned, every mounted file present, every Collector pipeline
complete with `memory_limiter` first, the load balancer routing by trace id to exactly the
replicas' Collectors, each of which forwards to its replica's port with retries and a queue,
the replicas passing every span on to Jaeger from a durable queue, every `OTEL_PUPPY_*` variable
one otel_puppy reads, and Prometheus scraping every replica (checked by `promtool check config`).
The same topology runs for real, on loopback, in tests/test_scale_out.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from ruamel.yaml import YAML

from otel_puppy.settings import PuppySettings
from tests._programs import require_program

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = ("otel-puppy-1", "otel-puppy-2")
SERVE_PORT = 4319
JAEGER_OTLP_HTTP = 4318
JAEGER_UI = 16686


def load(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load(ROOT / "docker-compose.yml")
    return document


@pytest.fixture(scope="module")
def gateway() -> dict[str, Any]:
    document: dict[str, Any] = load(ROOT / "deploy" / "otel-collector.yaml")
    return document


@pytest.fixture(scope="module")
def beside_replica() -> dict[str, Any]:
    document: dict[str, Any] = load(ROOT / "deploy" / "otel-collector-replica.yaml")
    return document


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "redis",
        *REPLICAS,
        *(f"{r}-ingest" for r in REPLICAS),
        "collector",
        "fleet",
        "prometheus",
        "grafana",
        "tokens",
        "jaeger",
    }


def test_every_image_is_pinned_to_a_version(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} names no tag"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9.-]+)?", tag), f"{name}: {image} is not pinned"
    assert "FROM python:3.11.10-slim-bookworm\n" in (ROOT / "Dockerfile").read_text()


def test_the_image_installs_the_lock_and_nothing_else() -> None:
    """Every `pip`/`uv` install in the Dockerfile takes a hashed lock file, or the project without deps."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    installs = [" ".join(i.split()) for i in re.findall(r"(?:pip|uv pip) install[^&\n]*", text)]
    assert installs == [
        "pip install --require-hashes --no-deps -r requirements/uv.txt",
        "uv pip install --system --require-hashes -r requirements/image.txt",
        "uv pip install --system --no-deps --no-build-isolation .",
    ]
    lock = (ROOT / "requirements" / "image.txt").read_text()
    assert "--hash=sha256:" in lock
    assert re.search(r"^redis==", lock, re.M)
    assert re.search(r"^logfire==", lock, re.M)


def test_every_reference_in_compose_resolves(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", [])
        for dependency in depends if isinstance(depends, list) else depends.keys():
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name} uses unknown secret {secret}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} mounts unknown volume {source}"


def test_replicas_share_redis_and_need_a_token(compose: dict[str, Any]) -> None:
    for name in REPLICAS:
        service = compose["services"][name]
        assert service["command"] == ["serve", "--host", "0.0.0.0", "--port", str(SERVE_PORT)]
        env = service["environment"]
        assert env["OTEL_PUPPY_STORE"] == "redis://redis:6379/0"
        assert env["OTEL_PUPPY_API_TOKEN"].startswith("${OTEL_PUPPY_API_TOKEN:?")  # refused to start without
        assert service["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "tokens": {"condition": "service_completed_successfully"},
            "jaeger": {"condition": "service_started"},  # not healthy: the forward queue waits for it
        }
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
    redis = compose["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert compose["services"]["grafana"]["volumes"] == [
        "./grafana/provisioning:/etc/grafana/provisioning:ro",
        "./grafana/dashboards:/var/lib/grafana/dashboards:ro",
    ]


def test_replicas_pass_every_span_on_to_jaeger_from_a_durable_queue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in REPLICAS:
        env = services[name]["environment"]
        url = urlsplit(env["OTEL_PUPPY_FORWARD_URL"])
        assert (url.scheme, url.hostname, url.port, url.path) == ("http", "jaeger", JAEGER_OTLP_HTTP, "")
        settings = PuppySettings.load(forward_url=env["OTEL_PUPPY_FORWARD_URL"], store=env["OTEL_PUPPY_STORE"])
        assert settings.forward_url == f"http://jaeger:{JAEGER_OTLP_HTTP}"
        # the forward queue lives in the store: a Redis stream here (append-only), never memory://
        assert settings.store.startswith(("redis://", "sqlite:///"))
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2.")  # v2: OTLP on 0.0.0.0:4318 in its image
    # the UI only: the host's OTLP ports are the Collector's, and spans must reach Jaeger through otel_puppy
    assert jaeger["ports"] == [f"{JAEGER_UI}:{JAEGER_UI}"]
    assert "OTEL_PUPPY_FORWARD_URL" not in services["fleet"]["environment"]


def test_every_otel_puppy_variable_in_compose_is_a_setting(compose: dict[str, Any]) -> None:
    known = {f"OTEL_PUPPY_{name.upper()}" for name in PuppySettings.model_fields}
    for name, service in compose["services"].items():
        if service["image"].startswith("otel-puppy:"):
            given = {key for key in service.get("environment", {}) if key.startswith("OTEL_PUPPY_")}
            assert given - known == set(), f"{name} sets variables otel_puppy does not read"


def _pipeline_components_are_defined(config: dict[str, Any]) -> dict[str, Any]:
    [pipeline] = config["service"]["pipelines"].values()
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline[kind]:
            assert component in config[kind], f"{kind} {component} is used but not configured"
    assert pipeline["processors"][0] == "memory_limiter"
    result: dict[str, Any] = pipeline
    return result


def test_the_gateway_balances_by_trace_id_over_each_replicas_collector(
    gateway: dict[str, Any], compose: dict[str, Any]
) -> None:
    pipeline = _pipeline_components_are_defined(gateway)
    assert pipeline["processors"] == ["memory_limiter", "batch"]
    assert pipeline["exporters"] == ["loadbalancing"]
    balancer = gateway["exporters"]["loadbalancing"]
    assert balancer["routing_key"] == "traceID"
    hosts = balancer["resolver"]["static"]["hostnames"]
    assert hosts == [f"{r}-ingest:4317" for r in REPLICAS]
    assert all(host.split(":")[0] in compose["services"] for host in hosts)
    otlp = balancer["protocol"]["otlp"]
    assert "endpoint" not in otlp  # the resolver fills it in
    assert otlp["retry_on_failure"]["enabled"] is True
    assert otlp["sending_queue"]["enabled"] is True
    assert gateway["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"


def test_each_replicas_collector_forwards_over_otlp_http_with_retries(
    beside_replica: dict[str, Any], compose: dict[str, Any]
) -> None:
    pipeline = _pipeline_components_are_defined(beside_replica)
    assert pipeline["exporters"] == ["otlphttp"]
    exporter = beside_replica["exporters"]["otlphttp"]
    assert exporter["traces_endpoint"] == f"http://${{env:OTEL_PUPPY_REPLICA}}:{SERVE_PORT}/v1/traces"
    # the Collector holds an ingest token only (made by the compose `tokens` service)
    assert exporter["headers"] == {"Authorization": "Bearer ${file:/run/otel-puppy/tokens/collector.secret}"}
    assert (exporter["retry_on_failure"]["enabled"], exporter["sending_queue"]["enabled"]) == (True, True)
    for replica in REPLICAS:
        env = compose["services"][f"{replica}-ingest"]["environment"]
        assert env["OTEL_PUPPY_REPLICA"] == replica


def test_prometheus_scrapes_every_replica_and_promtool_accepts_the_config(tmp_path: Path) -> None:
    promtool = require_program("promtool")
    config = load(ROOT / "deploy" / "prometheus.yml")
    [job] = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"{r}:{SERVE_PORT}" for r in REPLICAS]}]
    assert config["rule_files"] == ["alert-rules.yml"]
    # promtool checks that the token file exists: the compose secret, here a stand-in
    token = tmp_path / "token"
    token.write_text("a-token")
    text = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert text.count("/run/otel-puppy/tokens/prometheus.secret") == 1  # a read token only
    (tmp_path / "prometheus.yml").write_text(text.replace("/run/otel-puppy/tokens/prometheus.secret", str(token)))
    shutil.copy(ROOT / "deploy" / "alert-rules.yml", tmp_path / "alert-rules.yml")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
