"""Rich rendering shared by the command line and the demo: styles, money, times, state tables.

The tables render the JSON API's records (`/v1/budgets`, `/v1/breakers`, ...) as the service
sends them, so `otel-puppy status` shows what any client would read; money goes through
`money.format_usd`, exact as the API sends it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from otel_puppy.money import format_usd

if TYPE_CHECKING:
    from otel_puppy.decision import Decision

__all__ = (
    "ACTION_STYLES",
    "HEALTH_STYLES",
    "SEVERITY_STYLES",
    "STATE_STYLES",
    "command_console",
    "number",
    "policy_name",
    "render_anomalies",
    "render_breakers",
    "render_budgets",
    "render_decision",
    "render_health",
    "render_policies",
    "reservation",
    "usd_text",
    "utilization",
    "when",
)

ACTION_STYLES: Final = {"allow": "green", "warn": "yellow", "degrade": "magenta", "deny": "red"}
"""A decision's action; degrade apart from warn, as the demo has always shown it."""
STATE_STYLES: Final = {"closed": "green", "half_open": "yellow", "open": "bold red"}
"""A circuit breaker's state."""
HEALTH_STYLES: Final = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
SEVERITY_STYLES: Final = {"info": "cyan", "warning": "yellow", "critical": "red", "emergency": "bold red"}


def utilization(ratio: float, *, places: int = 0) -> str:
    """`93%` in yellow from 75%, red from 90%, bold red at the limit and over."""
    style = "bold red" if ratio >= 1 else "red" if ratio >= 0.9 else "yellow" if ratio >= 0.75 else ""
    text = f"{ratio:.{places}%}"
    return f"[{style}]{text}[/]" if style else text


def render_decision(decision: Decision, console: Console) -> None:
    """A decision as `otel-puppy decide` prints it: the summary, then every reason."""
    action = decision.action.value
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("action", f"[{ACTION_STYLES.get(action, 'white')}]{action}[/]")
    summary.add_row("call", decision.model_ref)
    if decision.decision_id:
        summary.add_row("decision id", decision.decision_id)
    if decision.estimated_cost_usd is not None:
        held = "" if decision.reserved_usd is not None else ", nothing reserved"
        summary.add_row("estimate", f"{usd_text(decision.estimated_cost_usd)} ({decision.estimate_source}{held})")
    else:
        summary.add_row("estimate", "none (the request gave none and too few calls were seen to learn one)")
    if decision.reserved_usd is not None:
        summary.add_row("reserved", reservation(decision))
    if decision.retry_after_s is not None:
        summary.add_row("retry after", f"{decision.retry_after_s:g} s")
    if decision.resets_at is not None:
        summary.add_row("resets", when(decision.resets_at))
    console.print(summary)
    hits = [(hit, False) for hit in decision.reasons] + [(hit, True) for hit in decision.shadow]
    if not hits:
        console.print("no policy matched")
        return
    table = Table("policy", "kind", "scope", "action", "message", title="reasons", title_justify="left")
    for hit, shadow in hits:
        style = ACTION_STYLES.get(hit.action.value, "white")
        name = f"{hit.policy} [dim](shadow)[/]" if shadow or hit.shadow else hit.policy
        table.add_row(name, hit.kind, hit.scope or "-", f"[{style}]{hit.action.value}[/]", hit.message)
    console.print(table)


def render_budgets(budgets: list[dict[str, Any]], console: Console) -> None:
    """`/v1/budgets` records as a table."""
    if not budgets:
        console.print("budgets: none")
        return
    table = Table(
        "policy", "scope", "window", "spent / limit", "utilization", "reserved", "resets",
        title="budgets", title_justify="left",
    )  # fmt: skip
    for budget in budgets:
        if budget.get("limit_usd") is not None:
            spent = f"{usd_text(budget.get('spent_usd') or 0)} / {usd_text(budget['limit_usd'])}"
        elif budget.get("limit_tokens") is not None:
            spent = f"{budget.get('spent_tokens') or 0:,} / {budget['limit_tokens']:,} tokens"
        elif budget.get("limit_calls") is not None:
            spent = f"{budget.get('spent_calls') or 0:,} / {budget['limit_calls']:,} calls"
        else:
            spent = "-"
        ratio = budget.get("utilization")
        used = "-" if ratio is None else utilization(ratio, places=1)
        reserved = budget.get("reserved_usd")
        table.add_row(
            policy_name(budget),
            budget.get("scope") or "-",
            budget.get("window") or "-",
            spent,
            used,
            usd_text(reserved) if reserved is not None and Decimal(str(reserved)) else "-",
            when(budget.get("resets_at")),
        )
    console.print(table)


def render_costs(body: Mapping[str, Any], console: Console) -> None:
    """`GET /v1/costs` as `status --by` prints it: one row per value, the largest cost first, then the total."""
    by = [str(name) for name in body.get("by", [])]
    table = Table(
        *by, "cost (USD)", "calls", title=f"Cost from {body.get('from')} to {body.get('to')}", title_justify="left"
    )
    table.columns[-2].justify = table.columns[-1].justify = "right"
    table.columns[-2].no_wrap = True
    for row in body.get("costs", []):
        # Names are data, never rich markup.
        cells: list[Any] = [Text(str(row.get(name) or "-")) for name in by]
        table.add_row(*cells, usd_text(row.get("cost_usd")), number(row.get("calls")))
    console.print(table)
    console.print(f"total {usd_text(body.get('total_usd'))}")


def render_breakers(breakers: list[dict[str, Any]], console: Console) -> None:
    """`/v1/breakers` records as a table."""
    if not breakers:
        console.print("breakers: none")
        return
    table = Table("policy", "subject", "state", "failures", "retry at", title="breakers", title_justify="left")
    for breaker in breakers:
        state = str(breaker.get("state", "?"))
        table.add_row(
            policy_name(breaker),
            str(breaker.get("subject", "")),
            f"[{STATE_STYLES.get(state, 'white')}]{state.replace('_', '-')}[/]",
            str(breaker.get("failures", 0)),
            when(breaker.get("retry_at")) if state != "closed" else "-",
        )
    console.print(table)


def render_anomalies(anomalies: list[dict[str, Any]], console: Console) -> None:
    """`/v1/anomalies` records as a table."""
    if not anomalies:
        console.print("anomalies: none")
        return
    table = Table(
        "policy", "subject", "signal", "current", "baseline", "deviation", "firing",
        title="anomalies", title_justify="left",
    )  # fmt: skip
    for anomaly in anomalies:
        deviation = anomaly.get("deviation_pct")
        table.add_row(
            policy_name(anomaly),
            anomaly.get("subject") or "all",
            str(anomaly.get("signal", "")),
            number(anomaly.get("current")),
            number(anomaly.get("baseline")),
            f"{deviation:+.0f}%" if isinstance(deviation, int | float) else "-",
            "[red]yes[/]" if anomaly.get("firing") else "no",
        )
    console.print(table)


def render_health(health: dict[str, Any], console: Console) -> None:
    """`/v1/health` as a status line, the indicators, then recommendations and trends."""
    status = str(health.get("status", "unknown"))
    console.print(f"health: [{HEALTH_STYLES.get(status, 'white')}]{status}[/]")
    indicators = health.get("indicators") or []
    if indicators:
        table = Table("indicator", "status", "value", "threshold", "message")
        for indicator in indicators:
            state = str(indicator.get("status", ""))
            table.add_row(
                str(indicator.get("name", "")),
                f"[{HEALTH_STYLES.get(state, 'white')}]{state}[/]",
                number(indicator.get("value")),
                number(indicator.get("threshold")),
                str(indicator.get("message", "")),
            )
        console.print(table)
    # Recommendations and trends are shown as the service words them, whatever their shape.
    for title in ("recommendations", "trends"):
        _render_records(title, health.get(title), console)


def _render_records(title: str, value: object, console: Console) -> None:
    records: list[object]
    if isinstance(value, Mapping):
        records = [{"name": key, **item} if isinstance(item, Mapping) else {"name": key, "value": item}
                   for key, item in value.items()]  # fmt: skip
    elif isinstance(value, list):
        records = value
    else:
        return
    if not records:
        return
    if not all(isinstance(record, Mapping) for record in records):
        console.print(f"{title}:")
        for record in records:
            console.print(f"  - {record}")
        return
    columns: list[str] = []
    for record in records:
        assert isinstance(record, Mapping)
        columns += [key for key, item in record.items() if key not in columns and not isinstance(item, list | dict)]
    table = Table(*columns, title=title, title_justify="left")
    for record in records:
        assert isinstance(record, Mapping)
        table.add_row(*(_cell(record.get(column)) for column in columns))
    console.print(table)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return number(value)
    return str(value)


def policy_name(record: Mapping[str, Any]) -> str:
    """A record's policy name, marked when it is in shadow mode."""
    name = str(record.get("policy", ""))
    return f"{name} [dim](shadow)[/]" if record.get("shadow") else name


def usd_text(value: object) -> str:
    """`$0.0112`, `$100`: exact decimals, as the API sends them."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    return format_usd(amount, trim=True, dollar=True) if amount.is_finite() else str(value)


def number(value: object) -> str:
    """`-` for none, else four significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return f"{value:.4g}"


def when(value: object) -> str:
    """`2026-01-02 00:00 UTC (in 5h 3m)` from ISO 8601 text, a datetime or epoch seconds."""
    moment: datetime
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int((moment - datetime.now(UTC)).total_seconds())
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({_relative(seconds)})"


def _relative(seconds: int) -> str:
    span = abs(seconds)
    days, rest = divmod(span, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d {hours}h"
    elif hours:
        text = f"{hours}h {minutes}m"
    elif minutes:
        text = f"{minutes}m {secs}s"
    else:
        text = f"{secs}s"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


# --- added for issue 14: output for people and for pipes ----------------------------------------

PLAIN_WIDTH: Final = 100_000
"""The width of output that is not a terminal: wider than any line a command prints, so rich never
wraps, cuts or ellipsizes a figure to fit `COLUMNS` (or its default of 80)."""


def command_console() -> Console:
    """Where a command prints its result: rich at the terminal's width on a terminal; to a pipe or a
    file, plain text (no colour, as rich does off a terminal) with each table as wide as its content.

    Off a terminal rich would fit tables to `COLUMNS`, or 80, folding and cutting cells: a money
    figure read by a script or a person in a log must come out whole.
    """
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=PLAIN_WIDTH, soft_wrap=True)


def reservation(decision: Decision) -> str:
    """What a decision holds: `0.020000000 USD on org-daily, per-agent (agent=support)`.

    The amount is written as `GET /v1/budgets` writes `reserved_usd` (`money.format_usd`, no option),
    so the two can be compared as text; the budgets are those it counts against, shadow ones too.
    """
    if decision.reserved_usd is None:
        return "nothing"
    budgets = [hit for hit in (*decision.reasons, *decision.shadow) if hit.kind == "budget"]
    names = ", ".join(f"{hit.policy} ({hit.scope})" if hit.scope else hit.policy for hit in budgets)
    return f"{format_usd(decision.reserved_usd)} USD" + (f" on {names}" if names else "")


def render_policies(policies: Mapping[str, Any] | None, console: Console) -> None:
    """`/v1/policies` as one line: how many policies are in force, of which kinds, and from where.

    `None` (a service older than `/v1/policies`) says so instead.
    """
    if policies is None:
        console.print("policies: not reported by this service")
        return
    counts = policies.get("counts") or {}
    kinds = ", ".join(f"{kind}: {count}" for kind, count in counts.items() if count)
    count = policies.get("count", 0)
    where = policies.get("path", "?")
    if not count:
        why = policies.get("missing") or f"none in force from {where}"
        console.print(f"policies: [bold red]0 in force[/]: {why}")
        return
    files = ", ".join(str(source) for source in policies.get("sources") or ())
    console.print(f"policies: {count} in force ({kinds}) from {where}" + (f": {files}" if files else ""))
