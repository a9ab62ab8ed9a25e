"""`run` (the service and the fleet, with the live view) and `run_fleet` (only the fleet, against a URL)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from prometheus_client.registry import CollectorRegistry
from rich.console import Console

from otel_puppy.demo.agents import FLEET, SERVICE_NAME, alternatives_for
from otel_puppy.demo.display import ALERT_ROWS, View, introduce, print_counts, render_board
from otel_puppy.demo.drive import REFRESH_S, drive_fleet
from otel_puppy.demo.fleet import Fleet, configure_logfire, shutdown_logfire
from otel_puppy.demo.scenario import Scenario
from otel_puppy.demo.summary import Board, DemoSummary, Totals, summarize
from otel_puppy.demo.workers import WorkerPlan, Workers
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import PolicySet, load_policies
from otel_puppy.server.app import create_app
from otel_puppy.server.thread import serving
from otel_puppy.settings import PuppySettings

__all__ = ("run", "run_fleet")

_FLEET_REPORT_S = 10.0
_PIPE_WIDTH = 200


def run(
    settings: PuppySettings,
    *,
    duration: float | None = None,
    rate: float = 8.0,
    seed: int = 7,
    console: Console | None = None,
    live: bool = True,
    outage_at: float = 20.0,
    outage_for: float = 25.0,
    outage_provider: str = "self-hosted",
    outage_every: float = 120.0,
    spike_at: float = 90.0,
    spike_for: float = 45.0,
    fleet_processes: int = 2,
    in_process: bool = False,
) -> DemoSummary:
    """Run the service and the simulated fleet for `duration` seconds (forever when None), or until Ctrl-C.

    Serves the engine as `otel-puppy serve` does (OTLP/HTTP, the decision API and /metrics on
    `http://{settings.host}:{settings.port}`, port 0 for a free one) from a thread, and drives it
    from `fleet_processes` processes, each running every agent at `rate / fleet_processes` runs a
    second: their spans reach the service through the standard OTLP exporter, their decisions
    through a `DecisionClient`. Returns what the fleet did once every span has been applied and
    everything is shut down. `in_process` runs the fleet in this process instead, with the
    engine's span processor and the engine as the decider (no export, no HTTP but /metrics).

    The scenario, in seconds since the start: `outage_provider` fails every call from
    `outage_at` for `outage_for`; milder outages of providers drawn from `seed` follow every
    `outage_every` seconds on average (`math.inf` for none); the research agent's prompts are 16x
    larger from `spike_at` for `spike_for`. Pass `math.inf` as `outage_at` or `spike_at` to leave
    either out. Every fleet process sees the same outages; its runs are drawn from its own seed.

    On the main thread, the first SIGINT (Ctrl-C) or SIGTERM stops it as the end of `duration`
    does: the launches stop, the runs in flight finish, every fleet process exits, and it
    returns. A second one stops it at once: the fleet processes are terminated and it raises
    `KeyboardInterrupt` (after stopping the service and closing the engine).

    Raises:
        ValueError: `rate` is not positive, a duration or time is negative, no agent of the
            fleet uses `outage_provider`, or `fleet_processes` is not positive.
        OSError: the service's port cannot be bound.
        PolicyErrors: a policy file is invalid.
        RuntimeError: a fleet process failed.
        KeyboardInterrupt: a second signal stopped it at once.
    """
    if not rate > 0:
        raise ValueError(f"rate must be positive, not {rate!r}")
    if duration is not None and not duration >= 0:
        raise ValueError(f"duration must be zero or more seconds, not {duration!r}")
    times = {"outage_at": outage_at, "outage_for": outage_for, "spike_at": spike_at, "spike_for": spike_for}
    for name, value in times.items():
        if not value >= 0:
            raise ValueError(f"{name} must be zero or more seconds, not {value!r}")
    if not outage_every > 0:
        raise ValueError(f"outage_every must be positive (math.inf for no later outages), not {outage_every!r}")
    providers = sorted({spec.provider for spec in FLEET})
    if outage_provider not in providers:
        raise ValueError(f"outage_provider must be one of {', '.join(providers)}, not {outage_provider!r}")
    if fleet_processes < 1:
        raise ValueError(f"fleet_processes must be 1 or more, not {fleet_processes!r}")
    scenario = Scenario(outage_at, outage_for, outage_every, spike_at, spike_for)
    console = console if console is not None else _console()
    engine = PolicyEngine.from_settings(settings, registry=CollectorRegistry(auto_describe=True))  # its own /metrics
    alternatives = {spec.name: alternatives_for(engine.policies, spec) for spec in FLEET}
    board = Board()
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(_StopSignals())
        # Unwound in reverse: the service stops once everything is applied, then the engine closes.
        stack.callback(engine.close)  # also when the port cannot be bound
        url = stack.enter_context(serving(create_app(engine), settings.host, settings.port))
        metrics_url = f"{url}/metrics"
        processes = None if in_process else fleet_processes
        introduce(console, engine, scenario, outage_provider, rate=rate, url=url, processes=processes)
        if in_process:
            configure_logfire(SERVICE_NAME, engine.span_processor())
            stack.callback(shutdown_logfire)
            fleet = Fleet(FLEET, engine, alternatives, scenario, seed=seed, outage_provider=outage_provider)
            board.counts = fleet.counts
            view = View(console, board, engine, duration=duration, live=live)
            _drive_with_display(fleet, board, engine, view, duration=duration, rate=rate, signals=signals)
        else:
            token = settings.api_token.get_secret_value() if settings.api_token is not None else None
            plans = [
                WorkerPlan(
                    worker=worker,
                    url=url,
                    api_token=token,
                    fail_open=settings.fail_open,
                    seed=seed,
                    rate=rate / fleet_processes,
                    scenario=scenario,
                    outage_provider=outage_provider,
                    alternatives=alternatives,
                )
                for worker in range(fleet_processes)
            ]
            view = View(console, board, engine, duration=duration, live=live)
            _run_fleet(Workers(plans), board, engine, view, duration=duration, signals=signals)
        if signals.at_once:
            raise KeyboardInterrupt  # here, not in whatever the signal interrupted: the stack unwinds as usual
        summary = summarize(board, Totals.read(engine), metrics_url)
        if view.board_at_end:
            console.print(render_board(board, engine, alerts=2 * ALERT_ROWS))
    return summary


def run_fleet(
    settings: PuppySettings,
    url: str,
    *,
    traces_url: str | None = None,
    duration: float | None = None,
    rate: float = 8.0,
    seed: int = 7,
    fleet_processes: int = 2,
    console: Console | None = None,
) -> None:
    """Only the fleet, against a service already running at `url` (one replica, or a balancer).

    Spans go to `traces_url` (a Collector's OTLP/HTTP traces endpoint) when given, else to the
    service. Runs until `duration` or Ctrl-C, printing the fleet's counts every 10 seconds. The
    scenario is `run`'s defaults; the policies (for degrade alternatives) are `settings.policies`.
    Signals as for `run`: the first SIGINT or SIGTERM stops it gracefully, a second at once.

    Raises:
        PolicyErrors: a policy file is invalid.
        RuntimeError: a fleet process failed.
        KeyboardInterrupt: a second signal stopped it at once.
    """
    console = console if console is not None else Console(soft_wrap=True, highlight=False)
    policies = load_policies(settings.policies) if settings.policies.exists() else PolicySet()
    scenario = Scenario(20.0, 25.0, 120.0, 90.0, 45.0)
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    plans = [
        WorkerPlan(
            worker=worker,
            url=url.rstrip("/"),
            api_token=token,
            fail_open=settings.fail_open,
            seed=seed,
            rate=rate / fleet_processes,
            scenario=scenario,
            outage_provider="self-hosted",
            alternatives={spec.name: alternatives_for(policies, spec) for spec in FLEET},
            traces_url=traces_url,
        )
        for worker in range(fleet_processes)
    ]
    workers = Workers(plans)
    console.print(f"otel-puppy fleet: {fleet_processes} processes deciding at {url}, spans to {traces_url or url}")
    with _StopSignals() as signals:
        _report_fleet(workers, console, duration=duration, signals=signals)
    if signals.at_once:
        raise KeyboardInterrupt
    if workers.errors:
        raise RuntimeError(f"a fleet process failed: {workers.errors[0]}")


def _report_fleet(workers: Workers, console: Console, *, duration: float | None, signals: _StopSignals) -> None:
    """Run the fleet processes until `duration` or a signal, printing their counts every 10 seconds."""
    try:
        if not workers.launch(stopping=lambda: signals.stopping):
            return
        began = last = time.monotonic()
        while not signals.stopping and (duration is None or time.monotonic() < began + duration):
            workers.collect(REFRESH_S)
            if workers.errors:
                break
            if time.monotonic() - last >= _FLEET_REPORT_S:
                last = time.monotonic()
                print_counts(console, workers.total(), last - began)
        workers.close(at_once=lambda: signals.at_once)
        if not signals.at_once:
            print_counts(console, workers.total(), time.monotonic() - began)
    finally:
        workers.close(at_once=lambda: signals.at_once)


def _console() -> Console:
    """The terminal's width on a terminal; into a pipe, wide enough that no table cuts a figure."""
    console = Console()
    return console if console.is_terminal else Console(width=_PIPE_WIDTH)


class _StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM, counted by handlers that do nothing else: the first asks for a
    graceful stop (the launches stop, the runs in flight finish, the fleet processes exit), a
    second for a stop at once. The demo's loops look at the count at least every `REFRESH_S`.

    Installed over whatever was there, as `otel-puppy serve` does, an ignored SIGINT included: a
    process a script starts in the background (`otel-puppy demo &`, no job control) inherits an
    ignored SIGINT, which Python leaves ignored, so `kill -INT` would do nothing at all.

    A handler must not raise: Python's own Ctrl-C handler raises `KeyboardInterrupt` wherever the
    main thread is, half-way through reading a fleet report (the reports' pipe is left misaligned:
    the next read fails), or just after the queue's lock is taken (never released: no report is
    read again). Nor may it take a lock (`threading.Event.set` does): the code it interrupts may
    hold it. SIGTERM's default, dying at once, would leave the fleet processes behind for a while.
    Installed only on the main thread, where signal handlers live; elsewhere nothing is counted.
    """

    _SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def stopping(self) -> bool:
        return self.count >= 1

    @property
    def at_once(self) -> bool:
        return self.count >= 2

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self._SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _run_fleet(
    workers: Workers, board: Board, engine: PolicyEngine, view: View, *, duration: float | None, signals: _StopSignals
) -> None:
    """Run the fleet processes until `duration` or a signal, showing the engine's state on `view`;
    then they finish their runs in flight (until a second signal) and exit."""
    try:
        if not workers.launch(stopping=lambda: signals.stopping):
            return
        board.started_at = engine.clock.now()
        began = time.monotonic()
        with view:

            def show(*, finished: bool = False) -> None:
                board.counts = workers.total()
                view.show(time.monotonic() - began, finished=finished)

            while not signals.stopping and (duration is None or (left := began + duration - time.monotonic()) > 0):
                workers.collect(REFRESH_S if duration is None else min(REFRESH_S, left))
                show()
            workers.halt()
            while workers.finishing() and not signals.at_once:
                workers.collect(REFRESH_S)
                show()
            workers.close(at_once=lambda: signals.at_once)
            if not signals.at_once:
                show(finished=True)
    finally:
        workers.close(at_once=lambda: signals.at_once)
    if workers.errors:
        raise RuntimeError(f"a fleet process failed: {workers.errors[0]}")


def _drive_with_display(
    fleet: Fleet,
    board: Board,
    engine: PolicyEngine,
    view: View,
    *,
    duration: float | None,
    rate: float,
    signals: _StopSignals,
) -> None:
    """Drive the in-process fleet until `duration` or a signal; every span applied when it returns
    (but after a second signal)."""
    board.started_at = engine.clock.now()
    # Rendered from the event loop (not rich's refresh thread), so reads never race the loop.
    start = time.monotonic()
    with view:
        asyncio.run(_drive_until_signalled(fleet, duration=duration, rate=rate, on_tick=view.show, signals=signals))
        if not signals.at_once:
            engine.span_processor().force_flush()
            view.show(time.monotonic() - start, finished=True)


async def _drive_until_signalled(
    fleet: Fleet, *, duration: float | None, rate: float, on_tick: Callable[[float], None], signals: _StopSignals
) -> None:
    """`drive_fleet`, cancelled once for each signal, looked at every `REFRESH_S`: cancelled once,
    it stops the launches and lets the runs in flight finish; twice, it cancels them too."""
    drive = asyncio.create_task(drive_fleet(fleet, duration=duration, rate=rate, on_tick=on_tick))
    cancels = 0
    while not drive.done():
        await asyncio.wait({drive}, timeout=REFRESH_S)
        while cancels < min(signals.count, 2) and not drive.done():
            drive.cancel()
            cancels += 1
    with contextlib.suppress(asyncio.CancelledError):
        await drive
