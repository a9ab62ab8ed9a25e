"""`otel-puppy replay` for people and for pipes: `--json` with exact money, `--summary` per agent and
model, and tables that never cut a figure when stdout is not a terminal."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

from rich.console import Console

from otel_puppy.replay import ReplayTotal, read_spans, render, replay, report_json, summarize
from tests._service import cli, cli_all, environment
from tests.server.test_otlp import make_request, otlp_json, span
from tests.test_replay import EXPECTED_ROWS, T0, S, StubEngine, chat, recording, write_jsonl

POLICIES = "budgets:\n  - name: daily\n    limit_usd: 0.006\n    window: day\n    action: deny\n"
LONG_AGENT = "an-agent-whose-name-is-far-longer-than-any-terminal-column-would-allow-for"


def real_recording(tmp_path: Path) -> Path:
    """Three gpt-4.1 calls at $0.0028 each (the third is denied) and one gpt-4.1-mini call."""
    calls = [
        span(chat("gpt-4.1", 1000, 100, "support"), trace_id=t, span_id=t, start_ns=(T0 + 10 * t) * S)
        for t in (1, 2, 3)
    ]
    calls.append(span(chat("gpt-4.1-mini", 1000, 100, LONG_AGENT), trace_id=9, span_id=9, start_ns=(T0 + 5) * S))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "budgets.yaml").write_text(POLICIES)
    return write_jsonl(tmp_path / "t.jsonl", [json.dumps(otlp_json(make_request(*calls)))])


def test_json_rows_carry_exact_money(tmp_path: Path) -> None:
    path = real_recording(tmp_path)
    result = cli(tmp_path, "replay", str(path), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    # gpt-4.1: 1000 input + 100 output tokens cost $0.0028; gpt-4.1-mini the same tokens $0.00056
    support = {"agent": "support", "provider": "openai", "model": "gpt-4.1"}
    exact = {"estimate_source": "request"}  # each request's estimate is the call's cost (`--estimates actual`)
    assert document["rows"] == [
        {"time": "2026-01-01T00:00:05.000Z", "agent": LONG_AGENT, "provider": "openai", "model": "gpt-4.1-mini",
         "action": "allow", "policies": ["daily"], "cost_usd": "0.000560000", "estimate_usd": "0.000560000", **exact},
        {"time": "2026-01-01T00:00:10.000Z", **support, "action": "allow", "policies": ["daily"],
         "cost_usd": "0.002800000", "estimate_usd": "0.002800000", **exact},
        {"time": "2026-01-01T00:00:20.000Z", **support, "action": "deny", "policies": ["daily"],
         "cost_usd": "0.002800000", "estimate_usd": "0.002800000", **exact},
        {"time": "2026-01-01T00:00:30.000Z", **support, "action": "deny", "policies": ["daily"],
         "cost_usd": "0.002800000", "estimate_usd": "0.002800000", **exact},
    ]  # fmt: skip
    assert document["totals"] == {
        "calls": 4,
        "allowed": 2,
        "warned": 0,
        "degraded": 0,
        "denied": 2,
        "unpriced": 0,
        "skipped": 0,
        "spend_usd": "0.003360000",
        "spend_denied_usd": "0.005600000",
        "estimates": "actual",
        "learned_estimates": 0,
    }


def test_json_summary_has_one_entry_per_agent_and_model(tmp_path: Path) -> None:
    path = real_recording(tmp_path)
    result = cli(tmp_path, "replay", str(path), "--json", "--summary")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert "rows" not in document
    assert document["totals_by_agent_model"] == [
        {"agent": "support", "provider": "openai", "model": "gpt-4.1", "calls": 3, "allowed": 1, "warned": 0,
         "degraded": 0, "denied": 2, "unpriced": 0, "spend_usd": "0.002800000", "spend_denied_usd": "0.005600000"},
        {"agent": LONG_AGENT, "provider": "openai", "model": "gpt-4.1-mini", "calls": 1, "allowed": 1, "warned": 0,
         "degraded": 0, "denied": 0, "unpriced": 0, "spend_usd": "0.000560000", "spend_denied_usd": "0.000000000"},
    ]  # fmt: skip
    assert document["totals"]["spend_usd"] == "0.003360000"


def test_off_a_terminal_no_figure_is_cut(tmp_path: Path) -> None:
    path = real_recording(tmp_path)
    # A 20-column "terminal" would fold or ellipsize every cell; a pipe is no terminal, so none is.
    env = {**environment(), "COLUMNS": "20"}
    rows, totals = cli_all(tmp_path, ["replay", str(path)], ["replay", str(path), "--summary"], env=env)
    for result in (rows, totals):
        assert result.returncode == 0, result.stderr
        text = result.stdout
        assert "\N{HORIZONTAL ELLIPSIS}" not in text
        assert "\x1b[" not in text  # no colour or cursor codes into a pipe
        lines = text.splitlines()
        assert any(LONG_AGENT in line and "openai:gpt-4.1-mini" in line and "$0.000560" in line for line in lines)
        assert "spend $0.003360 applied, $0.005600 prevented by denials" in text
    summary = totals.stdout
    assert "Replay: 4 calls by 2 agent and model pairs" in summary
    [support] = [line for line in summary.splitlines() if "openai:gpt-4.1 " in line]
    cells = [cell.strip() for cell in support.split("\N{BOX DRAWINGS LIGHT VERTICAL}")[1:-1]]
    assert cells == ["support", "openai:gpt-4.1", "1", "0", "0", "2", "", "$0.002800", "$0.005600"]


def test_summarize_adds_up_each_agent_and_model(tmp_path: Path) -> None:
    report = replay(read_spans(recording(tmp_path)), StubEngine)
    assert report.rows == EXPECTED_ROWS
    assert summarize(report) == (
        ReplayTotal("support", "openai", "gpt-4.1", 4, 1, 1, 2, 0, 0, Decimal("0.00492"), Decimal(0)),
        ReplayTotal("[bold]ops", "openai", "gpt-4.1", 1, 0, 0, 0, 1, 0, Decimal(0), Decimal("0.003")),
        ReplayTotal("batch", "openai", "mystery-model", 1, 1, 0, 0, 0, 1, Decimal(0), Decimal(0)),
    )
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render(report, console, summary=True)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Replay: 6 calls by 3 agent and model pairs" in text
    assert "[bold]ops" in text  # span data as written, never markup
    assert "allowed 2, warned 1, degraded 2, denied 1" in text
    assert report_json(report, summary=True)["totals"] == report_json(report)["totals"]


def test_an_empty_recording_in_json(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "budgets.yaml").write_text(POLICIES)
    path = write_jsonl(tmp_path / "t.jsonl", [""])
    keys = ("rows", "totals_by_agent_model")
    results = cli_all(tmp_path, ["replay", str(path), "--json"], ["replay", str(path), "--json", "--summary"])
    for key, result in zip(keys, results, strict=True):
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document[key] == []
        assert document["totals"]["calls"] == 0
        assert document["totals"]["spend_usd"] == "0.000000000"
