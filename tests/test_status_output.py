"""`otel-puppy status` for people and for pipes (issue 14, point 8): off a terminal the tables are as
wide as their content whatever `COLUMNS` says, so no money figure is cut; `--json` is the API's own
JSON, money as exact decimal strings; and the policies in force are shown, with where they came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import load_policies
from otel_puppy.server.app import create_app
from otel_puppy.settings import PuppySettings
from otel_puppy.store.memory import MemoryStore
from otel_puppy.testing import FakeClock, make_call
from tests._service import cli, environment
from tests._serving import serve

POLICIES = """\
budgets:
  - {name: org-monthly-spend-for-the-whole-company, limit_usd: 1234567.891, window: month, action: deny}
breakers:
  - {name: providers, per: [provider], failure_threshold: 5, recovery_timeout: 30s}
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A service with $0.0084 spent (three gpt-4.1 calls of 1,000 + 100 tokens) and $0.012345679 reserved."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "budgets.yaml").write_text(POLICIES)
    engine = PolicyEngine(
        PuppySettings.load(store="memory://", policies=folder, watch_policies_s=None),
        policies=load_policies(folder),
        store=MemoryStore(),
        clock=FakeClock(),
        registry=CollectorRegistry(auto_describe=True),
    )
    for _ in range(3):
        engine.observe(make_call(end_s=engine.clock.now(), agent="support"))
    decision = engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="0.0123456789")
    assert str(decision.reserved_usd) == "0.012345679"
    with serve(create_app(engine)) as url:
        yield url, folder
    engine.close()


def status(tmp_path: Path, url: str, *options: str) -> str:
    """`otel-puppy status` with stdout a pipe, as narrow as a terminal may be."""
    result = cli(tmp_path, "status", "--url", url, *options, env={**environment(), "COLUMNS": "40"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_through_a_pipe_no_figure_is_cut_however_narrow_columns_is(served: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = served
    lines = status(tmp_path, url).splitlines()
    assert lines[:2] == [
        f"otel-puppy at {url}",
        f"policies: 2 in force (budgets: 1, breakers: 1) from {folder}: {folder / 'budgets.yaml'}",
    ]
    row = next(line for line in lines if "org-monthly-spend-for-the-whole-company" in line)
    cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
    assert cells[:6] == [
        "org-monthly-spend-for-the-whole-company",
        "-",
        "month",
        "$0.0084 / $1234567.891",
        "0.0%",
        "$0.012345679",
    ]
    assert cells[6].startswith("2026-02-01 00:00 UTC (")  # the fake clock's month ends then
    assert all("…" not in line for line in lines)  # nothing ellipsized anywhere


def test_json_is_the_apis_own_with_exact_decimal_strings(served: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = served
    state = json.loads(status(tmp_path, url, "--json"))
    assert list(state) == ["policies", "budgets", "breakers", "anomalies", "health"]
    assert state["policies"] == {
        "path": str(folder),
        "count": 2,
        "counts": {"budgets": 1, "anomalies": 0, "breakers": 1, "routing": 0, "prices": 0},
        "sources": [str(folder / "budgets.yaml")],
        "missing": None,
        "summary": [
            "budget org-monthly-spend-for-the-whole-company: $1234567.891 per month, deny when over",
            "breaker providers: per provider, open after 5 failures, probe after 30s",
        ],
    }
    (budget,) = state["budgets"]
    assert (budget["spent_usd"], budget["limit_usd"], budget["reserved_usd"]) == (
        "0.008400000",
        "1234567.891",
        "0.012345679",
    )
    assert budget["utilization"] == pytest.approx((0.0084 + 0.012345679) / 1234567.891)
