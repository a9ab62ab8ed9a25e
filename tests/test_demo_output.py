"""The demo's output off a terminal (a pipe, a log, CI): plain progress lines, never rich's redraws."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from otel_puppy import demo
from otel_puppy.demo import display
from otel_puppy.money import format_usd
from otel_puppy.settings import PuppySettings
from tests._service import free_port


def test_off_a_terminal_the_live_view_prints_plain_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(display, "PLAIN_EVERY_S", 0.5)  # a line every half second, so a short run has several
    output = io.StringIO()
    console = Console(file=output, width=200)
    assert not console.is_terminal
    settings = PuppySettings.load(store="memory://", port=free_port(), policies=tmp_path, allow_no_policies=True)
    summary = demo.run(
        settings, duration=2, rate=20, seed=3, live=True, console=console, spike_at=float("inf"), in_process=True
    )
    text = output.getvalue()
    assert "\x1b[" not in text  # no cursor movement, no colour: nothing redrawn into the file
    lines = text.splitlines()
    progress = [line for line in lines if re.match(r"\+\d+s (running|done): ", line)]
    running = [line for line in progress if " running: " in line]
    assert len(running) >= 3
    # One line each half second, in order, then the last one once every span is applied.
    seconds = [int(line[1 : line.index("s")]) for line in running]
    assert seconds == sorted(seconds)
    done = progress[-1]
    assert " done: " in done
    assert done.split(": ", 1)[1].startswith(
        f"{summary.runs} runs ({summary.failed_runs} failed, {summary.denied_runs} denied), {summary.calls} calls ("
    )
    assert f"spend {format_usd(summary.spend_usd, places=6, dollar=True, grouping=True)}, " in done
    # The board is printed once, at the end, as with --no-live.
    assert text.count("Spend by model") == 1
    assert text.index("Spend by model") > text.index(done)


def test_no_live_prints_no_progress_lines(tmp_path: Path) -> None:
    output = io.StringIO()
    settings = PuppySettings.load(store="memory://", port=free_port(), policies=tmp_path, allow_no_policies=True)
    demo.run(
        settings,
        duration=1,
        rate=20,
        seed=3,
        live=False,
        console=Console(file=output, width=200),
        spike_at=float("inf"),
        in_process=True,
    )
    text = output.getvalue()
    assert re.search(r"^\+\d+s (running|done): ", text, re.MULTILINE) is None
    assert text.count("Spend by model") == 1
