"""`otel-puppy demo` as a real process: SIGTERM or Ctrl-C stops it and every fleet process with it,
gracefully, a second one at once, and a demo killed outright (`kill -9`) leaves no fleet process
behind either. The handlers only count the signals: nothing is raised into the code they interrupt.
SIGINT works even when the demo starts with it ignored, as a job a script starts with `&` does (and
so does a test run started that way: the sigint case then timed out)."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from otel_puppy.demo.runner import _StopSignals
from tests._service import environment, free_port

STARTED_WITHIN_S = 180.0
"""Spawning the fleet imports pydantic-ai and logfire afresh in each process: generous on 2 busy cores."""
GONE_WITHIN_S = 90.0
"""A hang guard: the graceful stop lets the runs in flight finish (at most 30 s), then terminates."""
AT_ONCE_WITHIN_S = 30.0
"""A second signal terminates the fleet at once; the service still stops and the engine closes."""
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


def _start_demo(tmp_path: Path, *, sigint_ignored: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    """The demo, with SIGINT as this process has it (`sigint_ignored`: ignored, inherited through exec)."""
    (tmp_path / "policies").mkdir()
    out = tmp_path / "demo.out"
    previous = signal.getsignal(signal.SIGINT)
    if sigint_ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with out.open("wb") as stdout:
            process = subprocess.Popen(
                [sys.executable, "-m", "otel_puppy", "demo", "--duration", "600", "--rate", "4"],
                cwd=tmp_path,
                env=environment(port=str(free_port()), store="memory://", allow_no_policies="true"),
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
    finally:
        if sigint_ignored:
            signal.signal(signal.SIGINT, previous)
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


@pytest.mark.parametrize(
    ("signum", "sigint_ignored"),
    [
        pytest.param(signal.SIGTERM, False, id="sigterm", marks=pytest.mark.long),
        pytest.param(signal.SIGINT, False, id="sigint"),
        pytest.param(signal.SIGINT, True, id="sigint-to-a-background-job", marks=pytest.mark.long),
    ],
)
def test_a_signal_stops_the_demo_and_every_fleet_process(
    tmp_path: Path, signum: signal.Signals, sigint_ignored: bool
) -> None:
    process, out = _start_demo(tmp_path, sigint_ignored=sigint_ignored)
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


def test_a_second_signal_stops_the_demo_at_once(tmp_path: Path) -> None:
    process, out = _start_demo(tmp_path)
    try:
        descendants = _wait_for_fleet(process, out)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGINT)
        code = process.wait(AT_ONCE_WITHIN_S)
        assert _wait_gone(descendants, AT_ONCE_WITHIN_S) == set(), out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(GONE_WITHIN_S)
    text = out.read_text()
    assert code == 130, text  # interrupted, as the shell reports a Ctrl-C
    assert " done: " not in text
    assert "Traceback" not in text


def test_the_handlers_count_signals_and_raise_nothing_into_the_code_they_interrupt() -> None:
    reports = multiprocessing.get_context("spawn").Queue()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with _StopSignals() as signals:
            assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) != signal.default_int_handler
            # Delivered while this thread waits in a report read, as a Ctrl-C usually is: the read
            # goes on to its timeout, with nothing raised into it, and the signal is counted.
            timer = threading.Timer(0.1, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
            timer.start()
            with pytest.raises(queue.Empty):
                reports.get(timeout=0.5)
            timer.join()
            assert (signals.count, signals.stopping, signals.at_once) == (1, True, False)
            signal.raise_signal(signal.SIGTERM)
            assert (signals.count, signals.stopping, signals.at_once) == (2, True, True)
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        reports.close()


def test_an_ignored_sigint_is_handled_too_and_other_threads_install_nothing() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as inherited by a job a script starts with `&`
    try:
        with _StopSignals() as signals:
            signal.raise_signal(signal.SIGINT)
            assert signals.count == 1
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    outside = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def elsewhere() -> None:
        with _StopSignals() as signals:
            seen.append(signal.getsignal(signal.SIGTERM))
            seen.append(signals.count)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [outside, 0]


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
