"""`run` (the service and the fleet, with the live view) and `run_fleet` (only the fleet, against a URL)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

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
    """Run the service and the simulated fleet for `duration` seconds (forever when None, until Ctrl-C).

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

    Raises:
        ValueError: `rate` is not positive, a duration or time is negative, no agent of the
            fleet uses `outage_provider`, or `fleet_processes` is not positive.
        OSError: the service's port cannot be bound.
        PolicyErrors: a policy file is invalid.
        RuntimeError: a fleet process failed.
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
        stack.enter_context(_sigterm_as_ctrl_c())
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
            _drive_with_display(fleet, board, engine, view, duration=duration, rate=rate)
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
            _run_fleet(Workers(plans), board, engine, view, duration=duration)
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

    Raises:
        PolicyErrors: a policy file is invalid.
        RuntimeError: a fleet process failed.
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
    with _sigterm_as_ctrl_c():
        _report_fleet(workers, console, duration=duration)
    if workers.errors:
        raise RuntimeError(f"a fleet process failed: {workers.errors[0]}")


def _report_fleet(workers: Workers, console: Console, *, duration: float | None) -> None:
    """Run the fleet processes until `duration` (or Ctrl-C), printing their counts every 10 seconds."""
    try:
        workers.launch()
        began = last = time.monotonic()
        with contextlib.suppress(KeyboardInterrupt):
            while duration is None or time.monotonic() < began + duration:
                workers.collect(REFRESH_S)
                if workers.errors:
                    break
                if time.monotonic() - last >= _FLEET_REPORT_S:
                    last = time.monotonic()
                    print_counts(console, workers.total(), last - began)
        workers.close()
        print_counts(console, workers.total(), time.monotonic() - began)
    finally:
        workers.close()


def _console() -> Console:
    """The terminal's width on a terminal; into a pipe, wide enough that no table cuts a figure."""
    console = Console()
    return console if console.is_terminal else Console(width=_PIPE_WIDTH)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the demo as the first Ctrl-C does: launches stop, the runs in flight finish,
    the fleet processes exit, then everything shuts down. (Its default, dying at once, would leave
    the fleet processes running.) Only on the main thread, where signal handlers live."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_fleet(workers: Workers, board: Board, engine: PolicyEngine, view: View, *, duration: float | None) -> None:
    """Run the fleet processes until `duration` (or Ctrl-C), showing the engine's state on `view`."""
    try:
        workers.launch()
        board.started_at = engine.clock.now()
        began = time.monotonic()
        with view:

            def show(*, finished: bool = False) -> None:
                board.counts = workers.total()
                view.show(time.monotonic() - began, finished=finished)

            with contextlib.suppress(KeyboardInterrupt):
                while duration is None or (left := began + duration - time.monotonic()) > 0:
                    workers.collect(REFRESH_S if duration is None else min(REFRESH_S, left))
                    show()
                workers.stop.set()
                while workers.finishing():
                    workers.collect(REFRESH_S)
                    show()
            workers.close()
            show(finished=True)
    finally:
        workers.close()
    if workers.errors:
        raise RuntimeError(f"a fleet process failed: {workers.errors[0]}")


def _drive_with_display(
    fleet: Fleet, board: Board, engine: PolicyEngine, view: View, *, duration: float | None, rate: float
) -> None:
    """Drive the in-process fleet until `duration` (or Ctrl-C); every span applied when it returns."""
    board.started_at = engine.clock.now()
    # Rendered from the event loop (not rich's refresh thread), so reads never race the loop.
    start = time.monotonic()
    with view:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(drive_fleet(fleet, duration=duration, rate=rate, on_tick=view.show))
        engine.span_processor().force_flush()
        view.show(time.monotonic() - start, finished=True)
