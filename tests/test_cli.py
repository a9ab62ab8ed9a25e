"""The command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from otel_puppy.cli import main

BROKEN = """\
budgets:
  - name: daily
    limit_usd: -5
    window: fortnight
    action: {degrade: gpt-4.1-mini}
    colour: red
"""


def test_check_names_file_line_and_column_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "budgets.yaml").write_text(BROKEN)
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{tmp_path}/budgets.yaml:3:16: budgets[0].limit_usd: expected a number >= 0.000000001, got -5",
        f"{tmp_path}/budgets.yaml:4:13: budgets[0].window: unknown window 'fortnight': use one of hour, day, week, "
        "month or a duration like 15m, 1h, 24h, 7d",
        f"{tmp_path}/budgets.yaml:6:5: budgets[0].colour: unknown key 'colour' (allowed keys: name, match, per, "
        "limit_usd, limit_tokens, limit_calls, window, action, alerts, reserve, shadow, max_scopes, idle_timeout)",
        "3 error(s)",
    ]


def test_check_summarises_a_good_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "b.yaml").write_text("budgets:\n  - {name: org, limit_usd: 100, window: day, alerts: [0.5, 0.9]}\n")
    assert main(["check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"ok: {tmp_path} ({tmp_path}/b.yaml)" in out
    assert "budget org: $100 per day, deny when over, alerts at 50%, 90%" in out


def test_console_script_runs(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("prices: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "otel_puppy", "check", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout.splitlines()[0]) == (0, f"ok: {tmp_path} ({tmp_path}/p.yaml)")


def otlp_line(trace: int, span: int, start_s: int, agent: str) -> str:
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4.1",
        "gen_ai.agent.name": agent,
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 100,
    }
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": f"{trace:032x}",
                                    "spanId": f"{span:016x}",
                                    "name": "chat gpt-4.1",
                                    "kind": 3,
                                    "startTimeUnixNano": str(start_s * 10**9),
                                    "endTimeUnixNano": str((start_s + 1) * 10**9),
                                    "attributes": [
                                        {
                                            "key": k,
                                            "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v},
                                        }
                                        for k, v in attributes.items()
                                    ],
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    )


def test_replay_reports_what_the_policies_would_have_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "b.yaml").write_text("budgets:\n  - {name: daily, limit_usd: 0.006, window: day}\n")
    spans = tmp_path / "spans.jsonl"
    spans.write_text("\n".join(otlp_line(i, i, 1_767_225_600 + 60 * i, "support") for i in range(1, 5)) + "\n")
    assert main(["replay", str(spans), "--policies", str(tmp_path / "policies")]) == 0
    rows = [line.split("│")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        [f"2026-01-01T00:0{i}:00.000Z", "support", "openai:gpt-4.1", action, "daily", "$0.002800"]
        for i, action in ((1, "allow"), (2, "allow"), (3, "deny"), (4, "deny"))
    ]


def test_replay_names_the_malformed_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spans = tmp_path / "spans.jsonl"
    spans.write_text(otlp_line(1, 1, 1_767_225_600, "a") + "\n{not json\n")
    assert main(["replay", str(spans), "--policies", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {spans}:2:")
