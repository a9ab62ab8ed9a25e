"""`otel-puppy replay FILE`: what would the current policies have decided over recorded spans?

The OpenTelemetry Collector's `file` exporter writes one OTLP/JSON `ExportTraceServiceRequest`
per line; `read_spans` reads such a file (or one JSON document, gzipped or not) back into model
calls, and `replay` runs them through a fresh engine on a fake clock, in time order, asking
`decide` before each call as an agent would have and feeding the engine each allowed call's
span when it ended.

Approximations, stated so nobody mistakes a replay for a recording:

- A denied call did not happen, so its spend is not applied (it is reported as
  `spend_denied_usd`); the calls after it in the file happened anyway.
- A degraded call is applied as recorded (at the original model's cost): what the cheaper model
  would have cost depends on tokens it never produced.
- By default the decision's estimate is the call's actual cost: a perfect estimator, which shows
  what the policies decide, not how good an agent's estimates are. With `estimates="learned"`
  (`replay --estimates learned`) the requests carry none, as most agents' do: each decision
  reserves what the engine learned from the calls before it (`otel_puppy.learned`), or nothing
  while too few were seen, and every row says which (`estimate_usd`, `estimate_source`).
"""

from __future__ import annotations

import gzip
import heapq
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Final, Literal, Protocol

from rich.console import Console
from rich.table import Table
from rich.text import Text

from otel_puppy.calls import LLMCall
from otel_puppy.clock import ManualClock
from otel_puppy.decision import Action, Decision, DecisionRequest
from otel_puppy.money import format_usd, nanos_to_usd
from otel_puppy.pricing import Price
from otel_puppy.server.otlp import JSON, OtlpDecodeError, calls_from_request, decode_traces

__all__ = (
    "ReplayEngine",
    "ReplayReport",
    "ReplayRow",
    "ReplayTotal",
    "read_spans",
    "render",
    "replay",
    "report_json",
    "summarize",
)

logger = logging.getLogger("otel_puppy")

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_ZERO: Final = nanos_to_usd(0)
"""Zero at the nano-dollar scale, so sums print as exactly as the amounts they add up."""
_ACTION_STYLES: Final = {Action.ALLOW: "green", Action.WARN: "yellow", Action.DEGRADE: "magenta", Action.DENY: "red"}


class _Pricing(Protocol):
    def price(self, call: LLMCall) -> Price: ...


class ReplayEngine(Protocol):
    """What `replay` needs of an engine; `PolicyEngine` is one."""

    @property
    def pricer(self) -> _Pricing: ...

    def decide(self, request: DecisionRequest, /) -> Decision: ...

    def observe(self, call: LLMCall) -> object: ...


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """One recorded call and what the policies decided about it."""

    at: float
    """When the call started, in seconds since the epoch (UTC)."""
    provider: str
    model: str
    """The model the call asked for (as an agent would name it to `decide`)."""
    agent: str | None
    action: str
    policies: tuple[str, ...]
    """Every enforced policy that matched, in the decision's order."""
    cost_usd: Decimal | None
    """What the call cost as recorded; `None` when it could not be priced."""
    estimate_usd: Decimal | None = None
    """What the decision estimated (and reserved, if a budget matched); `None`: no estimate."""
    estimate_source: str = "none"
    """Where that estimate came from: `request`, `learned` or `none` (`Decision.estimate_source`)."""


@dataclass(frozen=True, slots=True)
class ReplayReport:
    rows: tuple[ReplayRow, ...]
    allowed: int
    """Calls decided `allow` (each row is counted under exactly one action)."""
    warned: int
    degraded: int
    denied: int
    spend_usd: Decimal
    """Priced spend of the calls that went ahead (allowed, warned, degraded)."""
    spend_denied_usd: Decimal
    """Priced spend the denials would have prevented."""
    skipped: int = 0
    """Spans not replayed: repeats of a span already seen, or a call nested in one (two
    instrumentations describing one call), which the engine would count once."""
    unpriced: int = 0
    """Calls replayed without a price: in no spend total, never counted as $0."""
    estimates: str = "actual"
    """`actual` (each request's estimate was the call's cost) or `learned` (requests carried none)."""

    @property
    def learned(self) -> int:
        """Decisions that reserved a learned estimate."""
        return sum(row.estimate_source == "learned" for row in self.rows)


@dataclass(frozen=True, slots=True)
class ReplayTotal:
    """One agent's calls to one model over the whole recording (`replay --summary`)."""

    agent: str | None
    provider: str
    model: str
    calls: int
    allowed: int
    warned: int
    degraded: int
    denied: int
    unpriced: int
    spend_usd: Decimal
    """Priced spend of its calls that went ahead."""
    spend_denied_usd: Decimal
    """Priced spend of its calls that were denied."""


# --- reading --------------------------------------------------------------------------------


def read_spans(path: Path) -> Iterator[LLMCall]:
    """The model calls recorded in a Collector `file` exporter output (OTLP/JSON, one request a line).

    A single JSON document (pretty-printed over many lines) works too, as do gzipped files.
    Blank lines are skipped; spans with invalid ids are skipped and logged.

    Raises:
        OtlpDecodeError: a line (or the document) is not OTLP/JSON; the message names the line.
    """
    with path.open("rb") as probe:
        magic = probe.read(4)
    if magic.startswith(_ZSTD_MAGIC):
        raise OtlpDecodeError(f"{path}: zstd-compressed; decompress it first (zstd -d)")
    lineno = 0
    try:
        stream: io.BufferedIOBase
        with gzip.open(path, "rb") if magic.startswith(_GZIP_MAGIC) else path.open("rb") as stream:
            first = True
            for lineno, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                if first:
                    first = False
                    if not _is_json(line):
                        # Not a JSON value on its own: the file is one document spread over lines.
                        # Blank lines before it keep JSON's error positions true to the file.
                        document = b"\n" * (lineno - 1) + line + stream.read()
                        yield from _calls(path, None, document)
                        return
                yield from _calls(path, lineno, line)
    except (EOFError, gzip.BadGzipFile) as exc:
        raise OtlpDecodeError(f"{path}: damaged gzip data after line {lineno}: {exc}") from exc


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line.removeprefix(b"\xef\xbb\xbf"))
    except ValueError:
        return False
    return True


def _calls(path: Path, lineno: int | None, body: bytes) -> list[LLMCall]:
    where = f"{path}:{lineno}" if lineno is not None else str(path)
    try:
        request = decode_traces(body, JSON)
    except OtlpDecodeError as exc:
        raise OtlpDecodeError(f"{where}: {exc}") from exc
    calls, rejected, messages = calls_from_request(request)
    if rejected:
        logger.warning("%s: skipped %d spans with invalid ids: %s", where, rejected, "; ".join(messages))
    return calls


# --- replaying ------------------------------------------------------------------------------


def replay(
    calls: Iterable[LLMCall],
    engine_factory: Callable[[ManualClock], ReplayEngine],
    *,
    estimates: Literal["actual", "learned"] = "actual",
) -> ReplayReport:
    """Decide every call again, in start order, on a fresh engine whose clock follows the recording.

    The engine sees events as it would have live, and the clock never runs backwards: before a
    call's decision, every earlier allowed call that had ended by then is observed (clock at its
    end); calls still running are known only by what `decide` reserved for them. Duplicated and
    nested spans are skipped (`ReplayReport.skipped`).

    Each request names the model the call asked for (`request_model`, else the one that
    answered): that is what an agent passes to `decide`, and what settles the reservation. Its
    estimate is the call's actual cost, or with `estimates="learned"` none (the engine's learned one).
    """
    if estimates not in {"actual", "learned"}:
        raise ValueError(f"estimates must be 'actual' or 'learned', not {estimates!r}")
    ordered = sorted(calls, key=lambda c: (c.start_ns, -c.end_ns, c.trace_id, c.span_id))
    clock = ManualClock(ordered[0].start_ns / 1e9) if ordered else ManualClock()
    engine = engine_factory(clock)
    pricer = engine.pricer
    running: list[tuple[int, int, LLMCall]] = []  # (end_ns, order, call): a heap of allowed calls in flight
    seen: set[tuple[int, int]] = set()
    rows: list[ReplayRow] = []
    counts = dict.fromkeys(Action, 0)
    spend = denied_spend = 0
    skipped = unpriced = 0

    def finish(until_ns: int | None) -> None:
        while running and (until_ns is None or running[0][0] <= until_ns):
            end_ns, _, done = heapq.heappop(running)
            clock.set(max(clock.now(), end_ns / 1e9))
            engine.observe(done)

    for order, call in enumerate(ordered):
        key = (call.trace_id, call.span_id)
        nested = call.parent_span_id != 0 and (call.trace_id, call.parent_span_id) in seen
        if key in seen or nested:
            seen.add(key)  # a call nested in a skipped one is the same call again
            skipped += 1
            continue
        seen.add(key)
        finish(call.start_ns)
        clock.set(max(clock.now(), call.start_ns / 1e9))
        price = pricer.price(call)
        cost = nanos_to_usd(price.nanos) if price.nanos is not None else None
        model = call.request_model or call.model
        decision = engine.decide(
            DecisionRequest(
                provider=call.provider,
                model=model,
                agent=call.agent,
                service=call.service,
                user=call.user,
                team=call.team,
                environment=call.environment,
                conversation=call.conversation,
                operation=call.operation,
                estimated_cost_usd=cost if estimates == "actual" else None,
                trace_id=f"{call.trace_id:032x}" if call.trace_id else None,  # the run, for `per: [trace]`
            )
        )
        action = Action(decision.action)
        counts[action] += 1
        if price.nanos is None:
            unpriced += 1
        if action is Action.DENY:
            denied_spend += price.nanos or 0
        else:
            spend += price.nanos or 0
            heapq.heappush(running, (max(call.end_ns, call.start_ns), order, call))
        rows.append(
            ReplayRow(
                at=call.start_ns / 1e9,
                provider=call.provider,
                model=model,
                agent=call.agent,
                action=action.value,
                policies=tuple(dict.fromkeys(hit.policy for hit in decision.reasons)),
                cost_usd=cost,
                estimate_usd=decision.estimated_cost_usd,
                estimate_source=decision.estimate_source,
            )
        )
    finish(None)
    return ReplayReport(
        rows=tuple(rows),
        allowed=counts[Action.ALLOW],
        warned=counts[Action.WARN],
        degraded=counts[Action.DEGRADE],
        denied=counts[Action.DENY],
        spend_usd=nanos_to_usd(spend),
        spend_denied_usd=nanos_to_usd(denied_spend),
        skipped=skipped,
        unpriced=unpriced,
        estimates=estimates,
    )


def summarize(report: ReplayReport) -> tuple[ReplayTotal, ...]:
    """The rows added up per agent and model, the largest spend (applied, then prevented) first."""
    groups: dict[tuple[str, str, str], list[ReplayRow]] = {}
    for row in report.rows:
        groups.setdefault((row.agent or "", row.provider, row.model), []).append(row)
    totals = []
    for (_, provider, model), rows in groups.items():
        actions = [row.action for row in rows]
        denied = [row for row in rows if row.action == Action.DENY.value]
        went_ahead = [row for row in rows if row.action != Action.DENY.value]
        totals.append(
            ReplayTotal(
                agent=rows[0].agent,
                provider=provider,
                model=model,
                calls=len(rows),
                allowed=actions.count(Action.ALLOW.value),
                warned=actions.count(Action.WARN.value),
                degraded=actions.count(Action.DEGRADE.value),
                denied=len(denied),
                unpriced=sum(row.cost_usd is None for row in rows),
                spend_usd=sum((row.cost_usd or _ZERO for row in went_ahead), _ZERO),
                spend_denied_usd=sum((row.cost_usd or _ZERO for row in denied), _ZERO),
            )
        )
    totals.sort(key=lambda t: (-t.spend_usd, -t.spend_denied_usd, t.agent or "", t.provider, t.model))
    return tuple(totals)


def report_json(report: ReplayReport, *, summary: bool = False) -> dict[str, object]:
    """The report as JSON data (`replay --json`): money as exact decimal strings, times in ISO 8601 UTC.

    `rows` holds one entry per call, or with `summary` `totals_by_agent_model` one per agent and
    model; `totals` is the whole recording's either way.
    """
    document: dict[str, object] = {}
    if summary:
        document["totals_by_agent_model"] = [
            {
                "agent": total.agent,
                "provider": total.provider,
                "model": total.model,
                "calls": total.calls,
                "allowed": total.allowed,
                "warned": total.warned,
                "degraded": total.degraded,
                "denied": total.denied,
                "unpriced": total.unpriced,
                "spend_usd": format_usd(total.spend_usd),
                "spend_denied_usd": format_usd(total.spend_denied_usd),
            }
            for total in summarize(report)
        ]
    else:
        document["rows"] = [
            {
                "time": _utc(row.at),
                "agent": row.agent,
                "provider": row.provider,
                "model": row.model,
                "action": row.action,
                "policies": list(row.policies),
                "cost_usd": None if row.cost_usd is None else format_usd(row.cost_usd),
                "estimate_usd": None if row.estimate_usd is None else format_usd(row.estimate_usd),
                "estimate_source": row.estimate_source,
            }
            for row in report.rows
        ]
    document["totals"] = {
        "calls": len(report.rows),
        "allowed": report.allowed,
        "warned": report.warned,
        "degraded": report.degraded,
        "denied": report.denied,
        "unpriced": report.unpriced,
        "skipped": report.skipped,
        "spend_usd": format_usd(report.spend_usd),
        "spend_denied_usd": format_usd(report.spend_denied_usd),
        "estimates": report.estimates,
        "learned_estimates": report.learned,
    }
    return document


# --- showing --------------------------------------------------------------------------------


def render(report: ReplayReport, console: Console, *, summary: bool = False) -> None:
    """The decisions as a table (time in UTC, ISO 8601), or with `summary` one row per agent and
    model, then the totals. Money columns never wrap; on a console as wide as its content (off a
    terminal, `cli.render.command_console`) no figure is cut."""
    console.print(_summary_table(report) if summary else _rows_table(report))
    totals = Text()
    totals.append(f"allowed {report.allowed}", style="green")
    totals.append(", ")
    totals.append(f"warned {report.warned}", style="yellow")
    totals.append(", ")
    totals.append(f"degraded {report.degraded}", style="magenta")
    totals.append(", ")
    totals.append(f"denied {report.denied}", style="red")
    console.print(totals)
    console.print(Text(f"spend {_usd(report.spend_usd)} applied, {_usd(report.spend_denied_usd)} prevented by denials"))
    notes = []
    if report.unpriced:
        notes.append(f"{report.unpriced} calls could not be priced (not in the totals)")
    if report.skipped:
        notes.append(f"{report.skipped} duplicate or nested spans skipped")
    if report.estimates == "learned":
        notes.append(f"{report.learned} of {len(report.rows)} decisions reserved a learned estimate")
    if notes:
        console.print(Text("; ".join(notes), style="dim"))


def _rows_table(report: ReplayReport) -> Table:
    table = Table(title=f"Replay: {len(report.rows)} calls", title_justify="left")
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("agent")
    table.add_column("model")
    table.add_column("action")
    table.add_column("policies")
    table.add_column("cost (USD)", justify="right", no_wrap=True)
    learned = report.estimates == "learned"
    if learned:
        table.add_column("estimate (USD)", justify="right", no_wrap=True)
    for row in report.rows:
        estimate = [f"{_usd(row.estimate_usd)} {row.estimate_source}" if row.estimate_usd is not None else "none"]
        # Span data is text, never rich markup: a model named "[red]x" must print as written.
        table.add_row(
            _utc(row.at),
            Text(row.agent or "-"),
            Text(f"{row.provider}:{row.model}"),
            Text(row.action, style=_ACTION_STYLES.get(Action(row.action), "")),
            Text(", ".join(row.policies)),
            _usd(row.cost_usd),
            *(estimate if learned else ()),
        )
    return table


def _summary_table(report: ReplayReport) -> Table:
    totals = summarize(report)
    title = f"Replay: {len(report.rows)} calls by {len(totals)} agent and model pairs"
    table = Table(title=title, title_justify="left")
    table.add_column("agent")
    table.add_column("model")
    for action in Action:
        table.add_column(action.value, justify="right", style=_ACTION_STYLES[action])
    table.add_column("unpriced", justify="right")
    table.add_column("spend (USD)", justify="right", no_wrap=True)
    table.add_column("prevented (USD)", justify="right", no_wrap=True)
    for total in totals:
        table.add_row(
            Text(total.agent or "-"),
            Text(f"{total.provider}:{total.model}"),
            str(total.allowed),
            str(total.warned),
            str(total.degraded),
            str(total.denied),
            str(total.unpriced) if total.unpriced else "",
            _usd(total.spend_usd),
            _usd(total.spend_denied_usd),
        )
    return table


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _usd(value: Decimal | None) -> str:
    return "unpriced" if value is None else format_usd(value, places=6, dollar=True, grouping=True)
