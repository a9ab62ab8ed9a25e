"""The Grafana dashboards and provisioning files: generated, well formed, and every panel query
returning data from a real Prometheus scraping `otel-puppy demo`."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard as SchemaDashboard
from prometheus_client import generate_latest

from otel_puppy.policies import load_policies
from otel_puppy.testing import engine_for_tests
from tests._programs import require_program
from tests.deploy._stack import (
    DASHBOARDS_DIR,
    PROVISIONING_DIR,
    ROOT,
    TEST_POLICIES,
    Settled,
    dashboards,
    exported_names,
    http_get,
    label_values_query,
    metric_names,
    panel_queries,
    panels,
    query_variables,
    substitute,
    yaml_load,
)
from tests.deploy.conftest import SCENARIO

EXPECTED = {
    "overview.json": ("otel-puppy-overview", {"service", "provider", "model", "agent", "job"}),
    "budgets.json": ("otel-puppy-budgets", {"budget"}),
    "providers.json": ("otel-puppy-providers", {"service", "provider", "model", "agent"}),
    "decisions.json": ("otel-puppy-decisions", {"policy"}),
    "models.json": ("otel-puppy-models", {"service", "provider", "model", "agent"}),
}
UNITS = {"currencyUSD", "s", "percentunit", "reqps", "short", "suffix:x", "none"}
EVENT_ONLY = {"otel_puppy_internal_errors_total"}
"""Named by a dashboard (as `... or vector(0)`) but without samples until the event happens once."""


def load_generator() -> ModuleType:
    """grafana/generate.py (a script outside the package), imported as `grafana_generate`."""
    name = "grafana_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "grafana" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --- without Prometheus ---------------------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_writes(tmp_path: Path) -> None:
    generate = load_generator()
    assert generate.main(["--out", str(tmp_path)]) == 0
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(EXPECTED)
    assert sorted(p.name for p in DASHBOARDS_DIR.iterdir()) == generated
    for name in generated:
        committed = (DASHBOARDS_DIR / name).read_text(encoding="utf-8")
        assert committed == (tmp_path / name).read_text(encoding="utf-8"), f"run python grafana/generate.py: {name}"
    assert generate.main(["--check"]) == 0


def test_check_reports_a_stale_dashboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate = load_generator()
    generate.main(["--out", str(tmp_path)])
    (tmp_path / "budgets.json").write_text("{}\n", encoding="utf-8")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'budgets.json'} is out of date: run python grafana/generate.py\n"


def through_grafanas_schema(dashboard: dict[str, Any]) -> str:
    """`dashboard` decoded into grafana-foundation-sdk's models (panel options, field config and queries by
    their plugin's schema) and encoded again as the generator writes it: whatever the schema lacks is gone."""
    register_default_plugins()
    return JSONEncoder(indent=2, sort_keys=True, ensure_ascii=False).encode(SchemaDashboard.from_json(dashboard)) + "\n"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_holds_only_what_grafanas_schema_knows(name: str) -> None:
    text = (DASHBOARDS_DIR / name).read_text(encoding="utf-8")
    assert through_grafanas_schema(json.loads(text)) == text


def test_a_field_grafanas_schema_lacks_does_not_survive_the_check() -> None:
    """The check above has teeth: an unknown field at every level of every panel type is dropped."""
    kinds = set()
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        dashboard = json.loads(text)
        dashboard["unknownField"] = 1
        dashboard["templating"]["list"][0]["unknownField"] = 1
        dashboard["templating"]["list"][1]["unknownField"] = 1
        for panel in dashboard["panels"]:
            panel["unknownField"] = 1
            if panel["type"] == "row":
                continue
            kinds.add(panel["type"])
            panel["options"]["unknownField"] = 1
            panel["fieldConfig"]["defaults"]["unknownField"] = 1
            if "custom" in panel["fieldConfig"]["defaults"]:  # typed where the panel type's schema has one
                panel["fieldConfig"]["defaults"]["custom"]["unknownField"] = 1
            panel["targets"][0]["unknownField"] = 1
        assert through_grafanas_schema(dashboard) == text, path.name
    assert kinds == {"stat", "gauge", "timeseries", "bargauge", "table", "state-timeline"}


def test_the_sdk_is_the_release_for_the_grafana_in_docker_compose() -> None:
    """The SDK's versions are `<build time>!<Grafana version>`, and the highest build time is not the newest
    Grafana: the pin names the release generated for the Grafana image docker-compose.yml runs."""
    image = yaml_load(ROOT / "docker-compose.yml")["services"]["grafana"]["image"]
    grafana = image.removeprefix("grafana/grafana:")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dev = project["optional-dependencies"]["dev"]
    (pin,) = [requirement for requirement in dev if requirement.startswith("grafana-foundation-sdk")]
    name, _, version = pin.partition("==")
    build, _, generated_for = version.partition("!")
    assert name == "grafana-foundation-sdk"
    assert build.isdigit()
    assert generated_for.split(".")[:2] == grafana.split(".")[:2], f"{pin} is not the SDK for {image}"
    assert importlib.metadata.version("grafana-foundation-sdk") == version


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_is_well_formed(name: str) -> None:
    dashboard = dashboards()[name]
    uid, variables = EXPECTED[name]
    assert dashboard["uid"] == uid
    assert dashboard["title"].startswith("otel_puppy / ")
    assert dashboard["tags"] == ["otel_puppy"]
    assert dashboard["description"]
    templating = dashboard["templating"]["list"]
    assert templating[0]["type"] == "datasource"
    assert templating[0]["query"] == "prometheus"
    assert templating[0]["current"]["value"] == "prometheus"  # the provisioned data source's uid
    assert {v["name"] for v in query_variables(dashboard)} == variables
    for variable in query_variables(dashboard):
        assert variable["includeAll"] is True
        assert variable["multi"] is True
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        label_values_query(variable)

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
    for panel in panels(dashboard):
        title = panel["title"]
        assert panel["description"], title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] in UNITS, title
        assert defaults["thresholds"]["steps"][0]["value"] is None, title
        targets = panel["targets"]
        assert targets, title
        assert [t["refId"] for t in targets] == [chr(ord("A") + i) for i in range(len(targets))], title
        for target in targets:
            assert target["datasource"] == panel["datasource"], title
            assert target["expr"].strip(), title
            assert target["instant"] is not target["range"], title
        if panel["type"] in ("bargauge", "table"):
            assert all(t["instant"] for t in targets), f"{title}: rankings read one instant"
        if panel["type"] == "table":
            assert all(t["format"] == "table" for t in targets), title
            (merge, organize) = panel["transformations"]
            assert merge["id"] == "merge"
            # Grafana names one query's value column `Value`, several queries' `Value #A`, `Value #B`...
            values = ["Value"] if len(targets) == 1 else [f"Value #{t['refId']}" for t in targets]
            assert list(organize["options"]["renameByName"]) == values, title
            columns = list(organize["options"]["renameByName"].values())
            assert [o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]] == columns, title
            assert panel["options"]["sortBy"][0]["displayName"] == columns[0], title


def test_units_fit_what_panels_show() -> None:
    by_title = {(name, p["title"]): p["fieldConfig"]["defaults"]["unit"] for name, d in dashboards().items()
                for p in panels(d)}  # fmt: skip
    assert by_title["overview.json", "Spend rate"] == "currencyUSD"
    assert by_title["overview.json", "Latency"] == "s"
    assert by_title["overview.json", "Error rate"] == "percentunit"
    assert by_title["overview.json", "Fullest budget"] == "percentunit"
    assert by_title["budgets.json", "Time to exhaustion"] == "s"
    assert by_title["budgets.json", "Spend vs limit"] == "currencyUSD"
    assert by_title["models.json", "Cost per 1K tokens"] == "currencyUSD"
    assert by_title["models.json", "Prompt cache hit share"] == "percentunit"


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression (variables replaced) as a recording rule."""
    promtool = require_program("promtool")
    values = dict.fromkeys(("service", "provider", "model", "agent", "job", "budget", "policy"), ".*")
    queries = panel_queries()
    rules = [{"record": f"panel:query:{i}", "expr": substitute(q.expr, values)} for i, q in enumerate(queries)]
    path = tmp_path / "panels.yml"
    path.write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboards_name_only_metrics_otel_puppy_exports(tmp_path: Path) -> None:
    """Every metric name in a panel is a family an engine declares on /metrics (or Prometheus's `up`)."""
    (tmp_path / "policies.yaml").write_text(TEST_POLICIES, encoding="utf-8")
    engine = engine_for_tests(load_policies(tmp_path))
    try:
        declared, _sampled = exported_names(generate_latest(engine.registry).decode())
    finally:
        engine.close()
    named = {name for query in panel_queries() for name in metric_names(query.expr)}
    assert named - declared == {"up"}


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    datasources = yaml_load(PROVISIONING_DIR / "datasources" / "prometheus.yaml")
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["uid"] == "prometheus"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    providers = yaml_load(PROVISIONING_DIR / "dashboards" / "otel-puppy.yaml")
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "otel_puppy"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# --- against Prometheus scraping the demo ---------------------------------------------------------------


@pytest.mark.long
@pytest.mark.timeout(300)
def test_every_panel_query_returns_data(settled: Settled) -> None:
    assert settled.missing == [], "\n".join(settled.missing) + "\n" + settled.stack.logs()
    stack = settled.stack
    empty = []
    count = 0
    for name, dashboard in dashboards().items():
        values = stack.variable_values(dashboard)
        for panel in panels(dashboard):
            for target in panel["targets"]:
                expr = substitute(target["expr"], values)
                count += 1
                if not stack.query(expr):
                    empty.append(f"{name} / {panel['title']} / {target['refId']}: {expr}")
    assert empty == []
    assert count == len(panel_queries()) > 50


@pytest.mark.long
@pytest.mark.timeout(300)
def test_every_variable_has_values(settled: Settled) -> None:
    stack = settled.stack
    found: dict[str, list[str]] = {}
    for dashboard in dashboards().values():
        for variable in query_variables(dashboard):
            selector, label = label_values_query(variable)
            selector = substitute(selector, {"service": ".*", "provider": ".*"})
            found[variable["name"]] = stack.label_values(selector, label)
    assert set(found["provider"]) == {"openai", "anthropic", "google", "self-hosted"}
    assert set(found["agent"]) >= {"support", "triage", "research", "billing", "kb-search"}
    assert found["service"] == ["otel-puppy-demo-fleet"]
    assert found["job"] == ["otel-puppy"]
    assert set(found["budget"]) == {"org-daily", "openai-hourly", "per-agent", "tokens-per-user"}
    assert {"providers", "provider-errors"} <= set(found["policy"])
    assert "acme-kb-7b-instruct" in found["model"]


@pytest.mark.long
@pytest.mark.timeout(300)
def test_every_metric_a_dashboard_names_is_on_the_demos_metrics(settled: Settled) -> None:
    status, body = http_get(settled.stack.metrics_url)
    assert status == 200
    declared, sampled = exported_names(body.decode())
    named = {name for query in panel_queries() for name in metric_names(query.expr)} - {"up"}
    assert named <= declared
    assert named - sampled == EVENT_ONLY


@pytest.mark.long
@pytest.mark.timeout(300)
def test_the_demo_played_the_scenario(settled: Settled) -> None:
    """Not only data: the events the test policies provoke, which the dashboards are there to show."""
    stack = settled.stack
    happened = {what for what, expr in SCENARIO.items() if stack.query(expr)}
    assert happened == set(SCENARIO), settled.missing

    def value(expr: str) -> float:
        (sample,) = stack.query(expr)
        return float(sample["value"][1])

    assert value('max(otel_puppy_budget_window_seconds{budget="openai-hourly"})') == 3600.0
    assert value('max(otel_puppy_budget_window_seconds{budget="per-agent"})') == 900.0
    assert value('max(otel_puppy_budget_window_seconds{budget="org-daily"})') == 86400.0  # UTC days
    assert value('sum(otel_puppy_llm_unpriced_requests_total{model="acme-kb-7b-instruct"})') >= 1.0
