"""deploy/alert-rules.yml: valid, unit-tested by promtool for every alert, loaded healthy by a real
Prometheus, and firing on `otel-puppy demo` where the demo's policies say it must."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from otel_puppy.policies import load_policies
from otel_puppy.testing import FakeClock, engine_for_tests
from tests._programs import require_program
from tests.deploy._stack import (
    ALERT_RULES,
    ALERT_TESTS,
    TEST_POLICIES,
    Settled,
    alert_names,
    exported_names,
    metric_names,
    rule_expressions,
    yaml_load,
)
from tests.deploy.conftest import EXPECTED_ACTIVE, EXPECTED_QUIET

ALERTS = (
    "OtelPuppyBudgetBurnRateFast",
    "OtelPuppyBudgetBurnRateSlow",
    "OtelPuppyBudgetExhausted",
    "OtelPuppyBreakerOpen",
    "OtelPuppyAnomalyFiring",
    "OtelPuppyUnpricedModel",
    "OtelPuppyDown",
    "OtelPuppySpansDropped",
    "OtelPuppyInternalErrors",
    "OtelPuppyStoreUnavailable",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_program("promtool"), *args], capture_output=True, text=True, check=False)


# --- without Prometheus ---------------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in yaml_load(ALERT_RULES)["groups"])
    assert [line.strip() for line in result.stdout.splitlines() if line.strip()] == [
        f"Checking {ALERT_RULES}",
        f"SUCCESS: {count} rules found",
    ]


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["Unit", "Testing:", str(ALERT_TESTS), "SUCCESS"]


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation makes `promtool test rules` fail: the unit tests check what they claim."""
    broken = tmp_path / "alert-rules.test.yml"
    text = ALERT_TESTS.read_text(encoding="utf-8").replace("is burning 29.5x", "is burning 29.4x")
    broken.write_text(text.replace("  - alert-rules.yml", f"  - {ALERT_RULES}"), encoding="utf-8")
    result = promtool("test", "rules", str(broken))
    assert result.returncode == 1
    assert "alertname: OtelPuppyBudgetBurnRateFast, time: 1h10m" in result.stderr
    assert 'summary="Budget hourly is burning 29.5x its pace"' in result.stderr


def test_every_alert_has_unit_tests_that_fire_it_and_keep_it_quiet() -> None:
    assert alert_names() == list(ALERTS)
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml_load(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
            for alert in check["exp_alerts"]:
                assert set(alert["exp_annotations"]) == {"summary", "description"}, check["alertname"]
    assert fired == set(ALERTS)
    assert quiet == set(ALERTS)


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for group in yaml_load(ALERT_RULES)["groups"]:
        assert group["name"].startswith("otel_puppy.")
        for rule in group["rules"]:
            if "alert" not in rule:
                # Prometheus's naming: level:metric:operations, the metric one of ours
                assert re.fullmatch(r"(budget|source):otel_puppy_[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]
                continue
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]


def test_rules_name_only_metrics_otel_puppy_exports(tmp_path: Path) -> None:
    (tmp_path / "policies.yaml").write_text(TEST_POLICIES, encoding="utf-8")
    engine = engine_for_tests(load_policies(tmp_path))
    try:
        declared, _sampled = exported_names(generate_latest(engine.registry).decode())
    finally:
        engine.close()
    named = {name for expr in rule_expressions() for name in metric_names(expr)}
    assert named - declared == {"up"}


def test_budget_window_seconds_is_each_budgets_window_length(tmp_path: Path) -> None:
    """The burn-rate rules divide each limit by its window's length, calendar windows as they are now."""
    (tmp_path / "budgets.yaml").write_text(
        """
budgets:
  - {name: daily, limit_usd: 10, window: day}
  - {name: monthly, limit_usd: 100, window: month}
  - {name: rolling, limit_usd: 1, window: 15m}
  - {name: tokens, limit_tokens: 1000, window: 7d}
""",
        encoding="utf-8",
    )
    clock = FakeClock(1_774_746_000.0)  # 2026-03-29T01:00:00Z, the day Europe/Paris has 23 hours
    engine = engine_for_tests(load_policies(tmp_path), clock=clock, timezone="Europe/Paris")
    try:

        def length(budget: str) -> float | None:
            return engine.registry.get_sample_value("otel_puppy_budget_window_seconds", {"budget": budget,
                                                    "scope": "", "window": window[budget]})  # fmt: skip

        window = {"daily": "day", "monthly": "month", "rolling": "15m", "tokens": "7d"}
        assert length("daily") == 23 * 3600.0
        assert length("monthly") == 31 * 86400.0 - 3600.0  # March in Paris: one hour short
        assert length("rolling") == 900.0
        assert length("tokens") == 7 * 86400.0
    finally:
        engine.close()


# --- in a real Prometheus scraping the demo -------------------------------------------------------------


@pytest.mark.long
@pytest.mark.timeout(300)
def test_prometheus_loads_every_rule_healthy(settled: Settled) -> None:
    groups = settled.stack.api("/api/v1/rules")["groups"]
    expected = {group["name"]: [r.get("alert") or r["record"] for r in group["rules"]]
                for group in yaml_load(ALERT_RULES)["groups"]}  # fmt: skip
    assert {group["name"]: [rule["name"] for rule in group["rules"]] for group in groups} == expected
    for group in groups:
        assert group["file"] == str(ALERT_RULES)
        for rule in group["rules"]:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
            assert rule.get("lastError", "") == ""


@pytest.mark.long
@pytest.mark.timeout(300)
def test_alerts_fire_on_the_demo(settled: Settled) -> None:
    active = settled.stack.active_alerts()
    assert active.keys() >= EXPECTED_ACTIVE, settled.missing
    assert not EXPECTED_QUIET & active.keys()
    assert active["OtelPuppyBreakerOpen"] == {"firing"}  # no `for:`: at once
    assert active["OtelPuppyUnpricedModel"] == {"firing"}
    labels = [alert["labels"] for alert in settled.stack.api("/api/v1/alerts")["alerts"]]
    unpriced = [a for a in labels if a["alertname"] == "OtelPuppyUnpricedModel"]
    assert unpriced == [
        {
            "alertname": "OtelPuppyUnpricedModel",
            "model": "acme-kb-7b-instruct",
            "provider": "self-hosted",
            "reason": "unknown_model",
            "severity": "warning",
        }
    ]
    breakers = {(a["provider"], a["policy"]) for a in labels if a["alertname"] == "OtelPuppyBreakerOpen"}
    assert ("self-hosted", "providers") in breakers
    burning = {a["budget"] for a in labels if a["alertname"] == "OtelPuppyBudgetBurnRateFast"}
    assert "openai-hourly" in burning
