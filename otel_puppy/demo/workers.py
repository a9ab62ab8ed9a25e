"""The fleet processes: spawned, each an application of its own, watched through their reports.

Each process (`WorkerPlan`, pickled into it) runs every agent with the standard OTLP exporter
sending its spans to the service and a `DecisionClient` asking it before every model request;
`Workers` starts them together, sums their counts, and stops them once their spans are exported.
Ctrl-C is the demo's alone: a fleet process ignores it and stops when told (`stop`), or when the
demo is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from typing import Final, Literal

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_puppy.client import DecisionClient
from otel_puppy.demo.agents import FLEET, FLEET_SERVICE_NAME
from otel_puppy.demo.drive import drive_fleet
from otel_puppy.demo.fleet import Counts, Fleet, configure_logfire, shutdown_logfire
from otel_puppy.demo.scenario import Scenario
from otel_puppy.server.receiver import TRACES_PATH

__all__ = ("Report", "WorkerPlan", "Workers")

_DECIDE_TIMEOUT_S: Final = 5.0
"""Generous for loopback: a decision that times out is failed open and never reaches the service's counts."""


_WORKER_START_S: Final = 120.0
"""Spawning imports pydantic-ai and logfire afresh in each process: seconds on a slow machine."""


_WORKER_STOP_S: Final = 30.0
"""How long the fleet processes may take to finish their runs in flight and export their spans."""


_ORPHAN_EXIT_S: Final = 10.0
"""How long a fleet process whose demo is gone may take to finish its runs before it exits anyway."""


_EXIT_WAIT_S: Final = 1.0
"""How long a fleet process that reported `done` may take to exit, at least, before it is terminated."""


_KILL_WAIT_S: Final = 5.0
"""How long a terminated fleet process may take to exit before it is killed."""


def _never() -> bool:
    return False


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while it spawns the fleet processes, as multiprocessing's
    resource tracker is spawned: they inherit the mask, so a Ctrl-C (sent to the whole process
    group) never interrupts their imports, before `_work` ignores it. The demo loses nothing: a
    signal sent meanwhile is delivered to another of its threads, or here once unblocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


Report = tuple[Literal["ready", "counts", "done", "error"], int, "Counts | str | None"]
"""What a fleet process tells the demo: (kind, worker number, counts or an error)."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one fleet process needs, as plain data: it is pickled into a spawned process."""

    worker: int
    url: str
    """The service's base URL: decisions go to its `/v1/decide` (and spans to its `/v1/traces`)."""
    api_token: str | None
    fail_open: bool
    seed: int
    rate: float
    scenario: Scenario
    outage_provider: str
    alternatives: dict[str, list[tuple[str, str]]]
    traces_url: str | None = None
    """Export spans here instead (a Collector's OTLP/HTTP `/v1/traces`), as a scaled-out fleet does."""


def _work(plan: WorkerPlan, start: EventType, stop: EventType, reports: Queue[Report]) -> None:
    """One fleet process, as an application of the fleet would run: the standard OTLP exporter
    sends its spans to the service and a `DecisionClient` asks it before every model request.

    Runs from `start` until `stop`, reports its counts on `reports` twice a second, and reports
    them a last time (`done`) once its spans are exported, so the service has applied them all.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the demo's: it sets `stop`
    _exit_with_parent(stop)
    try:
        headers = {"authorization": f"Bearer {plan.api_token}"} if plan.api_token else None
        traces_url = plan.traces_url or f"{plan.url}{TRACES_PATH}"
        exporter = OTLPSpanExporter(endpoint=traces_url, headers=None if plan.traces_url else headers)
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=200)
        configure_logfire(FLEET_SERVICE_NAME, processor)
        reports.put(("ready", plan.worker, None))
        while not start.wait(0.1):
            if stop.is_set():
                return
        counts = asyncio.run(_work_until(plan, stop, reports))
        processor.force_flush()  # the service answers an export once it has applied it
        reports.put(("done", plan.worker, counts))
        shutdown_logfire()
    except BaseException as exc:
        reports.put(("error", plan.worker, f"{type(exc).__name__}: {exc}"))
        raise


def _exit_with_parent(stop: EventType) -> None:
    """Stop when the demo's process is gone, however it ended (even `kill -9`): the fleet never
    outlives it. `stop` lets the runs in flight finish; after `_ORPHAN_EXIT_S` the process exits
    anyway, since its spans may have nowhere left to go."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        try:
            stop.set()
        finally:  # exits even if the event cannot be set any more
            time.sleep(_ORPHAN_EXIT_S)  # a grace period, not a wait for an event: the exit is the point
            os._exit(1)

    threading.Thread(target=watch, name="otel-puppy-parent-watch", daemon=True).start()


async def _work_until(plan: WorkerPlan, stop: EventType, reports: Queue[Report]) -> Counts:
    async with DecisionClient(
        plan.url, api_token=plan.api_token, timeout_s=_DECIDE_TIMEOUT_S, fail_open=plan.fail_open
    ) as client:
        fleet = Fleet(
            FLEET,
            client,
            plan.alternatives,
            plan.scenario,
            seed=plan.seed,
            outage_provider=plan.outage_provider,
            service=FLEET_SERVICE_NAME,
            worker=plan.worker,
        )

        def report(elapsed: float) -> None:
            reports.put(("counts", plan.worker, dataclasses.replace(fleet.counts)))

        drive = asyncio.create_task(drive_fleet(fleet, duration=None, rate=plan.rate, on_tick=report))
        while not stop.is_set() and not drive.done():
            await asyncio.wait({drive}, timeout=0.1)
        # Cancelling stops the launches; the runs in flight finish, so their spans are complete.
        drive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drive
        return dataclasses.replace(fleet.counts)


class Workers:
    """The fleet processes seen from the demo: started, watched through their reports, stopped."""

    def __init__(self, plans: list[WorkerPlan]) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the service's threads stay here
        self.start, self.stop = context.Event(), context.Event()
        self.reports: Queue[Report] = context.Queue()
        self.processes = [
            context.Process(
                target=_work,
                args=(plan, self.start, self.stop, self.reports),
                name=f"otel-puppy-fleet-{plan.worker}",
                daemon=True,
            )
            for plan in plans
        ]
        self.ready: set[int] = set()
        self.done: set[int] = set()
        self.counts: dict[int, Counts] = {}
        self.errors: list[str] = []
        self._halt_by: float | None = None
        self._closed = False

    def launch(self, stopping: Callable[[], bool] = _never) -> bool:
        """Start the processes and wait until each is ready; then start them all at once.

        Returns False, with no run started, when `stopping()` turns true first (a signal while
        the processes import): they exit at `close`.
        """
        with _sigint_blocked():
            for process in self.processes:
                process.start()
        deadline = time.monotonic() + _WORKER_START_S
        while len(self.ready) < len(self.processes):
            if stopping():
                return False
            if self.errors:
                raise RuntimeError(f"a fleet process failed: {self.errors[0]}")
            if time.monotonic() > deadline or not all(p.is_alive() for p in self.processes):
                raise RuntimeError("the fleet processes did not start")
            self.collect(0.1)
        self.start.set()
        return True

    def collect(self, timeout: float) -> None:
        """Take the reports that arrive within `timeout` seconds, or until a process is done;
        with `timeout` 0, every report already there."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                kind, worker, payload = self.reports.get(timeout=left) if left > 0 else self.reports.get(block=False)
            except queue.Empty:
                return
            if self._take(kind, worker, payload) and timeout > 0:
                return  # the caller may be waiting for exactly this

    def _take(self, kind: str, worker: int, payload: Counts | str | None) -> bool:
        """Note one report; True when it is a process's last (`done` or `error`)."""
        if kind == "ready":
            self.ready.add(worker)
        elif kind == "error":
            self.errors.append(str(payload))
            self.done.add(worker)
            return True
        elif isinstance(payload, Counts):
            # A late periodic report never replaces the final one.
            if worker not in self.done:
                self.counts[worker] = payload
            if kind == "done":
                self.done.add(worker)
                return True
        return False

    def total(self) -> Counts:
        counts = Counts()
        for reported in self.counts.values():
            counts.runs += reported.runs
            counts.failed_runs += reported.failed_runs
            counts.denied_runs += reported.denied_runs
            counts.calls += reported.calls
        return counts

    def halt(self) -> None:
        """Stop the launches: each process lets its runs in flight finish, exports their spans,
        reports `done` and exits. They have `_WORKER_STOP_S` from the first call."""
        if self._halt_by is None:
            self._halt_by = time.monotonic() + _WORKER_STOP_S
        self.stop.set()

    def finishing(self) -> bool:
        """Whether a process still runs without having reported `done`, and has time left to."""
        if self._halt_by is not None and time.monotonic() >= self._halt_by:
            return False
        return len(self.done) < len(self.processes) and any(p.is_alive() for p in self.processes)

    def close(self, at_once: Callable[[], bool] = _never) -> None:
        """Stop every process: `halt`, then the ones still running after `_WORKER_STOP_S` are
        terminated, and all of them at once as soon as `at_once()` is true (a second signal).

        Whatever happens while it waits, no process outlives `close`.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.halt()
            while self.finishing() and not at_once():
                self.collect(0.1)  # drained first: a process exits only once its reports are in the pipe
            # A process reports `done`, then shuts its exporter down: a moment more to exit.
            exit_by = max(self._halt_by or 0.0, time.monotonic() + _EXIT_WAIT_S)
            started = [process for process in self.processes if process.pid is not None]
            while any(p.exitcode is None for p in started) and time.monotonic() < exit_by and not at_once():
                self.collect(0.1)
            self.collect(0)  # the last reports of the processes that exited
        finally:
            self._end_processes()
            self.reports.close()

    def _end_processes(self) -> None:
        """Terminate (then kill) every process still running, and reap them all."""
        started = [process for process in self.processes if process.pid is not None]
        for process in started:
            if process.is_alive():
                process.terminate()
        for process in started:
            process.join(timeout=_KILL_WAIT_S)
            if process.is_alive():
                process.kill()
                process.join(timeout=_KILL_WAIT_S)
