"""The demo's live view and printed summary (rich), and the lines it prints as it starts.

On a terminal the view redraws in place (rich `Live`); into a pipe or a file it prints one plain
line every `PLAIN_EVERY_S` seconds instead (`View`), and the full board once at the end.
"""

from __future__ import annotations

import math
from decimal import Decimal
from types import TracebackType
from typing import Final

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from otel_puppy.cli.render import ACTION_STYLES, SEVERITY_STYLES, STATE_STYLES, utilization
from otel_puppy.decision import Action, PolicyHit
from otel_puppy.demo.agents import FLEET, SPIKE_AGENT
from otel_puppy.demo.fleet import Counts
from otel_puppy.demo.scenario import Scenario
from otel_puppy.demo.summary import Board, Row, Totals
from otel_puppy.engine import PolicyEngine, Snapshot
from otel_puppy.money import format_usd, nanos_to_usd

__all__ = (
    "ALERT_ROWS",
    "PLAIN_EVERY_S",
    "View",
    "introduce",
    "plain_line",
    "print_counts",
    "progress_line",
    "render_board",
)

_BUDGET_ROWS = 8


ALERT_ROWS = 6
"""Alerts the live view shows; the summary printed at the end (`live=False`) shows twice as many."""


PLAIN_EVERY_S: Final = 10.0
"""Seconds between the plain progress lines printed when the output is not a terminal."""


class View:
    """How the demo shows its progress while it runs, as a context manager around the run.

    `live` on a terminal: the board redrawn in place. `live` elsewhere (a pipe, a file, CI): a
    plain line every `PLAIN_EVERY_S` seconds and when finished, no cursor movement. Not `live`:
    nothing while it runs. `board_at_end` says whether the caller should print the board once
    it is over (every case but the live terminal view, which already shows it).
    """

    def __init__(self, console: Console, board: Board, engine: PolicyEngine, *, duration: float | None, live: bool):
        self.console = console
        self.board = board
        self.engine = engine
        self.duration = duration
        self._live = (
            Live(console=console, auto_refresh=False, transient=False) if live and console.is_terminal else None
        )
        self._plain = live and not console.is_terminal
        self._next_line = 0.0

    @property
    def board_at_end(self) -> bool:
        return self._live is None

    def __enter__(self) -> View:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(kind, exc, traceback)

    def show(self, elapsed: float, *, finished: bool = False) -> None:
        """The state `elapsed` seconds into the run (`finished`: the last time)."""
        if self._live is not None:
            progress = progress_line(elapsed, self.duration, finished=finished)
            self._live.update(render_board(self.board, self.engine, progress), refresh=True)
        elif self._plain and (finished or elapsed >= self._next_line):
            while self._next_line <= elapsed:
                self._next_line += PLAIN_EVERY_S
            line = plain_line(self.board, self.engine, elapsed, finished=finished)
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)


def plain_line(board: Board, engine: PolicyEngine, elapsed: float, *, finished: bool = False) -> str:
    """One line of the run's state, for logs and pipes: counts, spend, and what the policies did."""
    totals = Totals.read(engine)
    counts = board.counts
    alerts = sum(totals.alerts.values())
    state = "done" if finished else "running"
    return (
        f"+{elapsed:.0f}s {state}: {counts.runs} runs ({counts.failed_runs} failed, {counts.denied_runs} denied), "
        f"{totals.calls} calls ({totals.errors} errors, {totals.unpriced} unpriced), "
        f"spend {_usd(nanos_to_usd(totals.nanos), 6)}, "
        f"{totals.decisions.get('degrade', 0)} degraded, {totals.decisions.get('deny', 0)} denied decisions, "
        f"{alerts} alerts, breakers opened {totals.breaker_opened}x, anomalies fired {totals.anomalies}"
    )


def spend_text(row: Row) -> str:
    """A row's spend for the tables; a row of only unpriced calls has none, not $0."""
    return _usd(nanos_to_usd(row.nanos), 4) if row.priced else "[yellow]unpriced[/]"


def progress_line(elapsed: float, duration: float | None, *, finished: bool) -> RenderableType:
    """The progress bar and the elapsed time (`duration` None: until Ctrl-C)."""
    if duration is None:
        bar = ProgressBar(total=None, pulse=not finished, width=40)
        note = "stopped" if finished else "Ctrl-C to stop"
    else:
        bar = ProgressBar(total=duration or 1.0, completed=min(elapsed, duration) if duration else 1.0, width=40)
        if finished:
            note = "done"
        elif elapsed >= duration:
            note = "finishing the runs in flight"
        else:
            note = f"of {duration:g}s"
    line = Table.grid(padding=(0, 1))
    line.add_row(bar, Text(f"{elapsed:5.1f}s {note}"))
    return line


def render_board(
    board: Board, engine: PolicyEngine, progress: RenderableType | None = None, *, alerts: int = ALERT_ROWS
) -> RenderableType:
    """Everything the live view shows: counts, spend by model and agent, state tables, alerts."""
    totals = Totals.read(engine)
    snapshot = engine.snapshot()
    parts: list[RenderableType] = [progress] if progress is not None else []

    counts = board.counts
    summary = Table.grid(padding=(0, 2))
    summary.add_row(
        f"runs [bold]{counts.runs}[/] ([red]{counts.failed_runs} failed[/], [magenta]{counts.denied_runs} denied[/])",
        f"calls [bold]{totals.calls}[/] ([red]{totals.errors} errors[/])",
        f"unpriced [yellow]{totals.unpriced}[/]",
        f"spend [bold green]{_usd(nanos_to_usd(totals.nanos), 4)}[/] (metrics)",
        f"[green]{_usd(snapshot.spend('day'), 4)}[/] today (store)",
    )
    by_kind = ", ".join(f"{count} {kind}" for kind, count in sorted(totals.alerts.items())) or "none"
    summary.add_row(
        f"degraded [magenta]{totals.decisions.get('degrade', 0)}[/] decisions",
        f"alerts {by_kind}",
        f"breakers opened [bold]{totals.breaker_opened}[/]x",
        f"anomalies fired [bold]{totals.anomalies}[/]",
    )
    parts.append(summary)

    by_model = Table(title="Spend by model", title_justify="left", expand=False)
    for column in ("provider", "model", "calls", "errors", "unpriced", "spend"):
        by_model.add_column(column, justify="left" if column in ("provider", "model") else "right")
    for (provider, model), row in sorted(totals.by_model.items(), key=lambda item: -item[1].nanos):
        by_model.add_row(
            provider, model, str(row.calls), str(row.errors), str(row.unpriced) if row.unpriced else "", spend_text(row)
        )

    by_agent = Table(title="Spend by agent", title_justify="left", expand=False)
    for column in ("agent", "calls", "errors", "spend"):
        by_agent.add_column(column, justify="left" if column == "agent" else "right")
    for agent, row in sorted(totals.by_agent.items(), key=lambda item: -item[1].nanos):
        by_agent.add_row(agent, str(row.calls), str(row.errors), spend_text(row))

    parts.append(Columns([by_model, by_agent], padding=(0, 4)))  # side by side when they fit
    now = engine.clock.now()
    parts.append(
        Columns(
            [
                _decisions_table(totals),
                _breakers_table(snapshot, now),
                _anomalies_table(snapshot, board.started_at),
                _budgets_table(snapshot),
            ],
            padding=(0, 4),
        )
    )
    parts.append(_alerts_table(engine, board.started_at, alerts))
    return Group(*parts)


def _decisions_table(totals: Totals) -> Table:
    table = Table(title="Decisions", title_justify="left", expand=False)
    table.add_column("action")
    table.add_column("count", justify="right")
    for action in Action:
        style = ACTION_STYLES[action.value]
        table.add_row(f"[{style}]{action.value}[/]", str(totals.decisions.get(action.value, 0)))
    return table


def _breakers_table(snapshot: Snapshot, now: float) -> Table:
    table = Table(title="Breakers", title_justify="left", expand=False)
    for column in ("breaker", "subject", "state", "failures"):
        table.add_column(column, justify="right" if column == "failures" else "left")
    for status in snapshot.breakers:
        state = f"[{STATE_STYLES[status.state]}]{status.state}[/]"
        if status.state == "open" and status.retry_at is not None:
            state += f" ({max(status.retry_at - now, 0):.0f}s)"
        table.add_row(status.policy, status.subject, state, str(status.failures))
    if not snapshot.breakers:
        table.add_row("[dim]no calls seen yet[/]", "", "", "")
    return table


def _anomalies_table(snapshot: Snapshot, started_at: float) -> Table:
    """Anomalies past their threshold now or within their cooldown; `now` is the last interval."""
    table = Table(title="Anomalies firing", title_justify="left", expand=False)
    for column in ("anomaly", "subject", "fired", "now", "baseline", "score"):
        table.add_column(column, justify="left" if column in ("anomaly", "subject") else "right")
    firing = [status for status in snapshot.anomalies if status.firing]
    for status in firing:
        unit = "$" if status.signal == "cost_rate" else ""
        table.add_row(
            f"[red]{status.policy}[/]",
            status.subject,
            f"{status.fired_at - started_at:+.0f}s" if status.fired_at is not None else "",
            f"{unit}{status.current:.3g}",
            f"{unit}{status.baseline:.3g}",
            f"{status.score:.1f}",
        )
    if not firing:
        watched = len(snapshot.anomalies)
        table.add_row(f"[dim]none of {watched} watched[/]", "", "", "", "", "")
    return table


def _budgets_table(snapshot: Snapshot) -> Table:
    table = Table(title="Budgets (fullest)", title_justify="left", expand=False)
    for column in ("budget", "scope", "spent", "limit", "used"):
        table.add_column(column, justify="left" if column in ("budget", "scope") else "right")
    fullest = sorted(snapshot.budgets, key=lambda hit: -(hit.utilization or 0.0))
    shown = fullest[:_BUDGET_ROWS]
    for hit in shown:
        name = f"[dim]{hit.policy}[/]" if hit.shadow else hit.policy
        table.add_row(name, hit.scope, *_amounts(hit), utilization(hit.utilization or 0.0))
    notes = [f"and {len(fullest) - len(shown)} more"] if len(fullest) > len(shown) else []
    if any(hit.shadow for hit in shown):
        notes.append("dimmed: shadow")
    table.caption = "; ".join(notes) or None
    if not fullest:
        table.add_row("[dim]none[/]", "", "", "", "")
    return table


def _amounts(hit: PolicyHit) -> tuple[str, str]:
    if hit.limit_usd is not None:
        return _usd(hit.spent_usd or Decimal(0), 4), _usd(hit.limit_usd, 2)
    if hit.limit_calls is not None:
        return f"{hit.spent_calls or 0:,}", f"{hit.limit_calls:,} calls"
    return f"{hit.spent_tokens or 0:,}", f"{hit.limit_tokens or 0:,} tok"


def _alerts_table(engine: PolicyEngine, started_at: float, rows: int) -> Table:
    table = Table(title="Latest alerts", title_justify="left", expand=False)
    for column in ("at", "severity", "alert"):
        table.add_column(column, justify="right" if column == "at" else "left")
    recent = list(engine.alerts.recent[-rows:])
    for event in recent:
        severity = event.severity.value
        table.add_row(f"{event.at - started_at:+.0f}s", f"[{SEVERITY_STYLES[severity]}]{severity}[/]", event.message)
    if not recent:
        table.add_row("", "", "[dim]none yet[/]")
    return table


def introduce(
    console: Console,
    engine: PolicyEngine,
    scenario: Scenario,
    outage_provider: str,
    *,
    rate: float,
    url: str,
    processes: int | None,
) -> None:
    """What runs, where, under which policies, and the scenario: printed once at the start."""
    providers = len({spec.provider for spec in FLEET})
    where = "in this process" if processes is None else f"in {processes} processes over OTLP/HTTP"
    metrics_url = f"{url}/metrics"
    console.print(
        Text.assemble(
            ("otel-puppy demo", "bold"),
            f": {len(FLEET)} agents on {providers} providers, {rate:g} runs/s {where}; service at ",
            (url, f"link {url}"),
            ", metrics at ",
            (metrics_url, f"link {metrics_url}"),
        )
    )
    policies = engine.policies
    kinds = [
        f"{len(entries)} {name}"
        for name, entries in (
            ("budgets", policies.budgets),
            ("breakers", policies.breakers),
            ("anomalies", policies.anomalies),
            ("routing", policies.routing),
        )
        if entries
    ]
    sources = ", ".join(str(path) for path in policies.sources) or "no policy files"
    console.print(f"policies: {', '.join(kinds) or 'none'} ({sources})", highlight=False)
    events = []
    if math.isfinite(scenario.outage_at):
        events.append(f"{outage_provider} outage at {scenario.outage_at:g}s for {scenario.outage_for:g}s")
    if math.isfinite(scenario.spike_at) and scenario.spike_for:
        events.append(f"{SPIKE_AGENT} prompt spike at {scenario.spike_at:g}s for {scenario.spike_for:g}s")
    console.print(f"scenario: {'; '.join(events) or 'quiet'}", highlight=False)


def print_counts(console: Console, counts: Counts, elapsed: float) -> None:
    """One line of a fleet's counts (`run_fleet` prints one every ten seconds)."""
    console.print(
        f"+{elapsed:.0f}s: {counts.runs} runs ({counts.failed_runs} failed, {counts.denied_runs} denied), "
        f"{counts.calls} model calls"
    )


def _usd(amount: Decimal, places: int) -> str:
    return format_usd(amount, places=places, dollar=True, grouping=True)
