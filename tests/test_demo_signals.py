"""`otel-puppy demo` as a real process: SIGTERM or Ctrl-C stops it and every fleet process with it,
and a demo killed outright (`kill -9`) leaves no fleet process behind either."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._service import environment, free_port

STARTED_WITHIN_S = 180.0
"""Spawning the fleet imports pydantic-ai and logfire afresh in each process: generous on 2 busy cores."""
GONE_WITHIN_S = 90.0
"""A hang guard: the graceful stop lets the runs in flight finish (at most 30 s), then terminates."""
FLEET_PROCESSES = 2


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it no longer exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has exited; only its entry is left


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[1]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _fleet(pids: set[int]) -> set[int]:
    """The spawned fleet processes among `pids` (multiprocessing's `spawn_main`)."""
    fleet = set()
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"spawn_main" in command:
            fleet.add(pid)
    return fleet


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    (tmp_path / "policies").mkdir()
    out = tmp_path / "demo.out"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "otel_puppy", "demo", "--duration", "600", "--rate", "4"],
            cwd=tmp_path,
            env=environment(port=str(free_port()), store="memory://", allow_no_policies="true"),
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    return process, out


def _wait_for_fleet(process: subprocess.Popen[bytes], out: Path) -> set[int]:
    """Every descendant of the demo, once its fleet processes run (the first progress line is out)."""
    deadline = time.monotonic() + STARTED_WITHIN_S
    while True:
        assert process.poll() is None, f"the demo exited with {process.returncode}:\n{out.read_text()}"
        descendants = _descendants(process.pid)
        if len(_fleet(descendants)) == FLEET_PROCESSES and " running: " in out.read_text():
            return descendants
        assert time.monotonic() < deadline, f"no fleet within {STARTED_WITHIN_S}s:\n{out.read_text()}"
        time.sleep(0.2)  # polling for an event (the processes appearing), not waiting out time


def _wait_gone(pids: set[int], within_s: float) -> set[int]:
    deadline = time.monotonic() + within_s
    while (left := {pid for pid in pids if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_stops_the_demo_and_every_fleet_process(tmp_path: Path, signum: signal.Signals) -> None:
    process, out = _start_demo(tmp_path)
    try:
        descendants = _wait_for_fleet(process, out)
        process.send_signal(signum)
        code = process.wait(GONE_WITHIN_S)
        assert _wait_gone(descendants, GONE_WITHIN_S) == set(), out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(GONE_WITHIN_S)
    text = out.read_text()
    # A graceful stop, as the first Ctrl-C: the runs in flight finished and the last line says so.
    assert code == 0, text
    assert " done: " in text
    assert "Traceback" not in text
    assert "\x1b[" not in text  # into a file: plain lines, no cursor movement


@pytest.mark.long
def test_fleet_processes_exit_when_the_demo_is_killed(tmp_path: Path) -> None:
    process, out = _start_demo(tmp_path)
    try:
        fleet = _fleet(_wait_for_fleet(process, out))
        process.kill()  # no handler runs: the fleet processes must notice on their own
        process.wait(GONE_WITHIN_S)
        assert _wait_gone(fleet, GONE_WITHIN_S) == set()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(GONE_WITHIN_S)
        for pid in _fleet(_descendants(os.getpid())):
            os.kill(pid, signal.SIGKILL)  # never leave one behind, whatever the test found
