"""`otel-puppy demo`: a simulated fleet of pydantic-ai agents, so every metric has data.

Real pydantic-ai `Agent`s, instrumented by real logfire with our span processor, talk to
simulated providers: a `FunctionModel` that reports a real provider and model (so the spans look
exactly like those of `openai:gpt-4.1` or `anthropic:claude-sonnet-4-5`), returns seeded-random
usage with cached prefixes, calls tools, and fails now and then like providers do (a 3% background
of 429/500/503, plus an occasional outage of one provider). Nothing leaves the machine but the
Prometheus endpoint on `settings.host:settings.port`.

User and conversation ids reach the `chat` spans as OpenTelemetry baggage: OTel attributes are not
inherited by child spans, and pydantic-ai opens the `chat` spans itself, so each run is wrapped in
`logfire.set_baggage(...)` and logfire (`add_baggage_to_attributes=True`) copies the baggage onto
every span started inside, `chat` spans included, where `extract_call` reads `otel_puppy.user` and
`otel_puppy.conversation`.

>>> summary = run(PuppySettings.load(port=9464), duration=30, rate=8)  # doctest: +SKIP
>>> summary.spend_usd  # doctest: +SKIP
Decimal('0.412345678')
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Literal

import logfire
import prometheus_client
from prometheus_client.registry import CollectorRegistry
from pydantic_ai import Agent
from pydantic_ai.exceptions import (
    AgentRunError,
    ModelHTTPError,
    ModelOverloadedError,
    ModelRateLimitError,
    ModelServerError,
    ModelUnavailableError,
)
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionDef, FunctionModel
from pydantic_ai.usage import RequestUsage
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from otel_puppy.engine import PolicyEngine
from otel_puppy.money import NANOS_PER_USD, nanos_to_usd
from otel_puppy.settings import PuppySettings

__all__ = ("FLEET", "AgentSpec", "DemoSummary", "run")

SERVICE_NAME: Final = "otel-puppy-demo"
USER_KEY: Final = "otel_puppy.user"
CONVERSATION_KEY: Final = "otel_puppy.conversation"

_ERROR_SHARE: Final = 0.03
"""Share of calls that fail outside outages, like the background error rate of real providers."""
_CACHE_SHARE: Final = 0.45
"""Share of first calls in a run whose prompt prefix (instructions, tools) is already cached."""
_MIN_INPUT, _MAX_INPUT = 300, 20_000
_MIN_OUTPUT, _MAX_OUTPUT = 50, 2_000
_MAX_IN_FLIGHT: Final = 256
_REFRESH_S: Final = 0.5
_USERS: Final = 60

Caching = Literal["explicit", "implicit", "none"]


# --- the fleet -------------------------------------------------------------------------------


def lookup_order(order_id: str) -> str:
    """Look up an order by id: status, items and shipping."""
    return f"order {order_id}: shipped, 2 items, arriving Thursday"


def search_help_center(query: str) -> str:
    """Search the help center for articles matching a query."""
    return f"3 articles match {query!r}: 'Returns', 'Shipping times', 'Changing an order'"


def route_ticket(queue: str) -> str:
    """Route the current ticket to a queue (billing, support, sales, abuse)."""
    return f"ticket routed to {queue}"


def web_search(query: str) -> str:
    """Search the web and return the top results with snippets."""
    return f"10 results for {query!r}; top: 'A survey of LLM cost controls' (2025)"


def read_page(url: str) -> str:
    """Fetch a web page and return its main text."""
    return f"{url}: 2,400 words on rate limiting, budgets and circuit breakers"


def get_invoice(invoice_id: str) -> str:
    """Get an invoice with its line items."""
    return f"invoice {invoice_id}: $1,240.00, 3 line items, paid"


def lookup_plan(customer_id: str) -> str:
    """Look up a customer's subscription plan and usage."""
    return f"customer {customer_id}: Team plan, 14 seats, renews on the 1st"


def fetch_document(doc_id: str) -> str:
    """Fetch a document from the document store."""
    return f"document {doc_id}: 18 pages, quarterly review"


def run_sql(query: str) -> str:
    """Run a read-only SQL query against the analytics warehouse."""
    return f"{query!r}: 42 rows"


def find_slots(date: str) -> str:
    """Find free meeting slots on a date."""
    return f"free on {date}: 10:00, 14:30, 16:00"


def search_kb(query: str) -> str:
    """Search the internal knowledge base."""
    return f"5 internal pages match {query!r}"


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent of the simulated fleet: its model, share of traffic, tools and how it behaves."""

    name: str
    provider: str
    """As pydantic-ai's models report it in `gen_ai.provider.name` (`openai`, `anthropic`, `google`)."""
    model: str
    weight: float
    """Relative share of the fleet's runs."""
    tools: tuple[Callable[[str], str], ...]
    prompts: tuple[str, ...]
    caching: Caching = "implicit"
    """`explicit`: cache reads and writes are reported (Anthropic); `implicit`: reads only."""
    speed: float = 1.0
    """Latency multiplier: above 1 is slower."""
    outage_status: int = 503

    @property
    def instructions(self) -> str:
        return f"You are the {self.name} agent of Acme Corp. Be concise; use your tools when they help."


FLEET: Final[tuple[AgentSpec, ...]] = (
    AgentSpec(
        "support",
        "openai",
        "gpt-4.1-mini",
        0.22,
        (lookup_order, search_help_center),
        ("Where is my order?", "How do I return a jacket?", "Can I change my delivery address?"),
        speed=0.6,
        outage_status=429,
    ),
    AgentSpec(
        "triage",
        "anthropic",
        "claude-haiku-4-5",
        0.16,
        (route_ticket,),
        ("Customer says they were charged twice.", "Login page shows a 500 error.", "Spam from a partner."),
        caching="explicit",
        speed=0.5,
    ),
    AgentSpec(
        "summarizer",
        "google",
        "gemini-2.5-flash",
        0.14,
        (fetch_document,),
        ("Summarize the Q3 review.", "Summarize this incident report.", "TL;DR of the board memo."),
        speed=0.6,
    ),
    AgentSpec(
        "research",
        "anthropic",
        "claude-sonnet-4-5",
        0.12,
        (web_search, read_page),
        ("Compare vector databases for 10M documents.", "What changed in the EU AI Act this year?"),
        caching="explicit",
        speed=1.4,
    ),
    AgentSpec(
        "billing",
        "openai",
        "gpt-4.1",
        0.10,
        (get_invoice, lookup_plan),
        ("Why did my invoice go up?", "Add 3 seats to our plan.", "Send me last month's invoice."),
        speed=1.0,
        outage_status=429,
    ),
    AgentSpec(
        "analyst",
        "google",
        "gemini-2.5-pro",
        0.08,
        (run_sql,),
        ("Weekly active users by region?", "Churn by plan over the last quarter?"),
        speed=1.6,
    ),
    AgentSpec(
        "scheduler",
        "openai",
        "gpt-4o",
        0.08,
        (find_slots,),
        ("Find 30 minutes with the design team next week.", "Move my 1:1 to Friday."),
        speed=0.9,
        outage_status=429,
    ),
    AgentSpec(
        "kb-search",
        "self-hosted",
        "acme-kb-7b-instruct",  # served by our own vLLM: genai-prices has no price for it
        0.10,
        (search_kb,),
        ("How do I rotate the staging database password?", "Who owns the billing service?"),
        caching="none",
        speed=0.7,
        outage_status=500,
    ),
)
"""Eight agents on four providers and eight models, one of them self-hosted and unpriced."""


class SimulatedModel(FunctionModel):
    """A `FunctionModel` whose spans name a real provider instead of `function`.

    pydantic-ai's instrumentation writes `model.system` to `gen_ai.provider.name` (and the
    deprecated `gen_ai.system`) and `model.model_name` to `gen_ai.request.model`; `FunctionModel`
    keeps the former in `_system`, which defaults to `function`.
    """

    def __init__(self, function: FunctionDef, *, provider: str, model_name: str) -> None:
        super().__init__(function, model_name=model_name)
        self._system = provider


# --- one run ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """What one agent run will do, drawn up front from its own seeded generator."""

    spec: AgentSpec
    rng: random.Random
    user: str
    conversation: str
    prompt: str
    tool_rounds: int
    context_tokens: int
    cached_tokens: int = 0


_CURRENT_RUN: ContextVar[_Run] = ContextVar("otel_puppy_demo_run")


@dataclass(frozen=True, slots=True)
class _Outage:
    """One provider failing a `share` of its calls until `until` (monotonic seconds)."""

    provider: str
    until: float
    share: float

    def fails(self, provider: str, now: float, draw: float) -> bool:
        return provider == self.provider and now < self.until and draw < self.share


@dataclass(slots=True)
class _Counts:
    runs: int = 0
    failed_runs: int = 0
    calls: int = 0


class _Fleet:
    """The agents, the traffic they get and the failures their providers have."""

    def __init__(self, specs: tuple[AgentSpec, ...], seed: int) -> None:
        self.specs = specs
        self.agents = {spec.name: self._agent(spec) for spec in specs}
        self.counts = _Counts()
        self._rng = random.Random(seed)
        # Outages are drawn from their own generator: when they start depends on the wall clock,
        # and that must not shift what the runs themselves draw.
        self._outage_rng = random.Random(f"{seed}:outages")
        self._weights = [spec.weight for spec in specs]
        self._conversations: dict[str, str] = {}
        self._outage: _Outage | None = None
        self._next_outage = math.inf
        self._launched = 0

    def _agent(self, spec: AgentSpec) -> Agent[None, str]:
        model = SimulatedModel(self._respond_as(spec), provider=spec.provider, model_name=spec.model)
        agent: Agent[None, str] = Agent(model, name=spec.name, instructions=spec.instructions)
        for tool in spec.tools:
            agent.tool_plain(tool)
        return agent

    def start(self, now: float) -> None:
        self._next_outage = now + self._outage_rng.uniform(15, 45)

    def plan(self) -> _Run:
        """The next run. The first pass goes once through the fleet, so every series exists early."""
        index, rng = self._launched, self._rng
        self._launched += 1
        spec = self.specs[index] if index < len(self.specs) else rng.choices(self.specs, self._weights)[0]
        run_rng = random.Random(rng.getrandbits(64))
        user = f"user-{min(int(run_rng.paretovariate(1.2)), _USERS):03d}"
        conversation = self._conversations.get(user)
        if conversation is None or run_rng.random() < 0.3:
            conversation = self._conversations[user] = f"conv-{run_rng.getrandbits(48):012x}"
        return _Run(
            spec=spec,
            rng=run_rng,
            user=user,
            conversation=conversation,
            prompt=run_rng.choice(spec.prompts),
            tool_rounds=run_rng.choices((0, 1, 2), (0.15, 0.65, 0.20))[0],
            context_tokens=_log_uniform(run_rng, _MIN_INPUT, 12_000),
        )

    def next_arrival(self, rate: float) -> float:
        """Seconds until the next run: arrivals are a Poisson process of `rate` a second."""
        return self._rng.expovariate(rate)

    def update_outage(self, now: float) -> None:
        if self._outage is not None and now >= self._outage.until:
            self._outage = None
            self._next_outage = now + self._outage_rng.expovariate(1 / 60)
        if self._outage is None and now >= self._next_outage:
            rng = self._outage_rng
            provider = rng.choice(sorted({spec.provider for spec in self.specs}))
            self._outage = _Outage(provider, now + rng.uniform(5, 15), rng.uniform(0.4, 0.8))

    def _failure(self, run: _Run, now: float) -> int | None:
        """The HTTP status this call fails with, or None. Always draws twice, outage or not."""
        background, in_outage = run.rng.random(), run.rng.random()
        outage = self._outage
        if outage is not None and outage.fails(run.spec.provider, now, in_outage):
            return run.spec.outage_status
        if background < _ERROR_SHARE:
            return run.rng.choices((429, 500, 503), (0.4, 0.35, 0.25))[0]
        return None

    def _respond_as(self, spec: AgentSpec) -> FunctionDef:
        async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            run = _CURRENT_RUN.get()
            self.counts.calls += 1
            status = self._failure(run, time.monotonic())
            if status is not None:
                await asyncio.sleep(run.rng.uniform(0.02, 0.3) * spec.speed)
                raise _http_error(spec, status)
            rounds_done = sum(
                1
                for message in messages
                if isinstance(message, ModelResponse) and any(isinstance(p, ToolCallPart) for p in message.parts)
            )
            call_tool = rounds_done < run.tool_rounds and bool(info.function_tools)
            output = run.rng.randint(_MIN_OUTPUT, 200) if call_tool else _log_uniform(run.rng, 80, _MAX_OUTPUT)
            usage = _usage(run, output)
            # Simulated time runs fast (thousands of tokens a second) so a demo run lasts about a second.
            await asyncio.sleep((run.rng.uniform(0.05, 0.25) + output / run.rng.uniform(2_500, 5_000)) * spec.speed)
            if call_tool:
                tool = run.rng.choice(info.function_tools)
                parameter = next(iter(tool.parameters_json_schema.get("properties", {"query": None})))
                value = run.prompt if parameter == "query" else f"{parameter.split('_')[0]}-{run.rng.randrange(10**5)}"
                parts: list[TextPart | ToolCallPart] = [ToolCallPart(tool.name, {parameter: value})]
                finish: Literal["stop", "tool_call"] = "tool_call"
            else:
                parts = [TextPart(f"[{spec.name}] Here is what I found about: {run.prompt}")]
                finish = "stop"
            return ModelResponse(
                parts=parts,
                usage=usage,
                model_name=spec.model,
                provider_name=spec.provider,
                finish_reason=finish,
            )

        return respond

    async def run_one(self, run: _Run) -> None:
        """One request of the host application: an agent run, its failure caught like an app would."""
        _CURRENT_RUN.set(run)  # this task's own context: concurrent runs never see each other's
        spec = run.spec
        self.counts.runs += 1
        try:
            with (
                logfire.set_baggage(**{USER_KEY: run.user, CONVERSATION_KEY: run.conversation}),
                logfire.span("{agent} request", agent=spec.name),
            ):
                await self.agents[spec.name].run(run.prompt, conversation_id=run.conversation)
        except AgentRunError:
            self.counts.failed_runs += 1


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


def _usage(run: _Run, output_tokens: int) -> RequestUsage:
    """Usage of the next call of `run`; input includes cache reads and writes, as pydantic-ai counts."""
    spec, rng = run.spec, run.rng
    input_tokens = min(max(run.context_tokens, _MIN_INPUT), _MAX_INPUT)
    cache_read = cache_write = 0
    if spec.caching != "none":
        if run.cached_tokens:
            # A follow-up call: the conversation so far is usually still in the provider's cache.
            if rng.random() < 0.85:
                cache_read = min(run.cached_tokens, input_tokens)
        elif rng.random() < _CACHE_SHARE:
            cache_read = int(input_tokens * rng.uniform(0.4, 0.9))
        if spec.caching == "explicit" and rng.random() < 0.5:
            cache_write = input_tokens - cache_read
    run.cached_tokens = input_tokens
    # The next call sees this one's output and a tool result.
    run.context_tokens = input_tokens + output_tokens + rng.randint(100, 3_000)
    return RequestUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


_Category = type[ModelRateLimitError | ModelServerError | ModelUnavailableError]
_CATEGORIES: Final[dict[int, _Category]] = {
    429: ModelRateLimitError,
    500: ModelServerError,
    503: ModelUnavailableError,
}
_BODIES: Final[dict[tuple[str, int], object]] = {
    ("openai", 429): {"error": {"message": "Rate limit reached for requests", "code": "rate_limit_exceeded"}},
    ("openai", 500): {"error": {"message": "The server had an error while processing your request."}},
    ("anthropic", 503): {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ("google", 503): {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
}


def _http_error(spec: AgentSpec, status: int) -> ModelHTTPError:
    """The error pydantic-ai's own models raise for this status (a `ModelHTTPError` of a category)."""
    category: _Category = _CATEGORIES[status]
    if spec.provider == "anthropic" and status == 503:
        category = ModelOverloadedError
    return ModelHTTPError.for_category(
        category,
        status_code=status,
        model_name=spec.model,
        body=_BODIES.get((spec.provider, status)),
    )


# --- reading the metrics ---------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    calls: int = 0
    errors: int = 0
    unpriced: int = 0
    nanos: int = 0
    priced: bool = False
    """Some call was priced. A row of only unpriced (or failed) calls has no spend, not $0."""


@dataclass(slots=True)
class _Totals:
    """What the engine's metrics say, read the way Prometheus would (one `collect()`)."""

    calls: int = 0
    errors: int = 0
    unpriced: int = 0
    nanos: int = 0
    by_model: dict[tuple[str, str], _Row] = field(default_factory=dict)
    by_agent: dict[str, _Row] = field(default_factory=dict)

    @classmethod
    def read(cls, registry: CollectorRegistry) -> _Totals:
        totals = cls()
        for family in registry.collect():
            for sample in family.samples:
                if sample.name not in _READ:
                    continue
                labels = sample.labels
                rows = (
                    totals.by_model.setdefault((labels["provider"], labels["model"]), _Row()),
                    totals.by_agent.setdefault(labels["agent"], _Row()),
                )
                value = sample.value
                if sample.name == "otel_puppy_llm_requests_total":
                    count, failed = int(value), int(value) if labels["outcome"] == "error" else 0
                    totals.calls += count
                    totals.errors += failed
                    for row in rows:
                        row.calls += count
                        row.errors += failed
                elif sample.name == "otel_puppy_llm_cost_usd_total":
                    # Exported as float USD; integer nano-USD again (exact below $4.5M a series).
                    nanos = round(value * NANOS_PER_USD)
                    totals.nanos += nanos
                    for row in rows:
                        row.nanos += nanos
                        row.priced = True
                else:
                    totals.unpriced += int(value)
                    for row in rows:
                        row.unpriced += int(value)
        return totals


_READ: Final = frozenset(
    {"otel_puppy_llm_requests_total", "otel_puppy_llm_cost_usd_total", "otel_puppy_llm_unpriced_requests_total"}
)


# --- the summary -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What the demo did, as the engine's metrics counted it.

    `calls` is counted by the simulated providers themselves (one per model request, failed
    ones included), independently of otel_puppy; spend and unpriced calls come from the metrics.
    """

    runs: int
    failed_runs: int
    calls: int
    spend_usd: Decimal
    spend_by_model: dict[str, Decimal]
    """Keyed `provider:model`, like pydantic-ai model names."""
    spend_by_agent: dict[str, Decimal]
    unpriced_calls: int
    metrics_url: str


def _summary(fleet: _Fleet, totals: _Totals, metrics_url: str) -> DemoSummary:
    return DemoSummary(
        runs=fleet.counts.runs,
        failed_runs=fleet.counts.failed_runs,
        calls=fleet.counts.calls,
        spend_usd=nanos_to_usd(totals.nanos),
        spend_by_model={
            f"{provider}:{model}": nanos_to_usd(row.nanos)
            for (provider, model), row in sorted(totals.by_model.items())
            if row.priced
        },
        spend_by_agent={agent: nanos_to_usd(row.nanos) for agent, row in sorted(totals.by_agent.items()) if row.priced},
        unpriced_calls=totals.unpriced,
        metrics_url=metrics_url,
    )


def _spend(row: _Row) -> str:
    return f"${row.nanos / NANOS_PER_USD:,.4f}" if row.priced else "[yellow]unpriced[/]"


def _progress(elapsed: float, duration: float | None, *, finished: bool) -> RenderableType:
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


def _render(fleet: _Fleet, engine: PolicyEngine, progress: RenderableType | None = None) -> RenderableType:
    totals = _Totals.read(engine.registry)
    today = engine.snapshot().spend("day")
    parts: list[RenderableType] = [progress] if progress is not None else []

    counts = fleet.counts
    summary = Table.grid(padding=(0, 2))
    summary.add_row(
        f"runs [bold]{counts.runs}[/] ([red]{counts.failed_runs} failed[/])",
        f"calls [bold]{totals.calls}[/] ([red]{totals.errors} errors[/])",
        f"unpriced [yellow]{totals.unpriced}[/]",
        f"spend [bold green]${totals.nanos / NANOS_PER_USD:,.4f}[/] (metrics)",
        f"[green]${today:,.4f}[/] today (store)",
    )
    parts.append(summary)

    by_model = Table(title="Spend by model", title_justify="left", expand=False)
    for column in ("provider", "model", "calls", "errors", "unpriced", "spend"):
        by_model.add_column(column, justify="left" if column in ("provider", "model") else "right")
    for (provider, model), row in sorted(totals.by_model.items(), key=lambda item: -item[1].nanos):
        by_model.add_row(
            provider, model, str(row.calls), str(row.errors), str(row.unpriced) if row.unpriced else "", _spend(row)
        )

    by_agent = Table(title="Spend by agent", title_justify="left", expand=False)
    for column in ("agent", "calls", "errors", "spend"):
        by_agent.add_column(column, justify="left" if column == "agent" else "right")
    for agent, row in sorted(totals.by_agent.items(), key=lambda item: -item[1].nanos):
        by_agent.add_row(agent, str(row.calls), str(row.errors), _spend(row))

    parts.append(Columns([by_model, by_agent], padding=(0, 4)))  # side by side when they fit
    return Group(*parts)


# --- driving it ------------------------------------------------------------------------------


async def _drive(
    fleet: _Fleet,
    *,
    duration: float | None,
    rate: float,
    on_tick: Callable[[float], None] | None,
) -> None:
    """Launch runs at `rate` a second (Poisson arrivals) until `duration`, then let them finish.

    The first Ctrl-C (`asyncio.run` cancels this task) stops launching and lets the runs in flight
    finish, so their spans are complete; a second one stops at once.
    """
    start = time.monotonic()
    deadline = math.inf if duration is None else start + duration
    fleet.start(start)
    tasks: set[asyncio.Task[None]] = set()
    ticker = asyncio.create_task(_tick(on_tick, start)) if on_tick is not None else None
    try:
        try:
            await _launch(fleet, tasks, start=start, deadline=deadline, rate=rate)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or current.uncancel() > 0:
                raise  # cancelled by someone else too
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def _launch(fleet: _Fleet, tasks: set[asyncio.Task[None]], *, start: float, deadline: float, rate: float) -> None:
    next_at = start
    while next_at < deadline:
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        fleet.update_outage(time.monotonic())
        if len(tasks) >= _MAX_IN_FLIGHT:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(fleet.run_one(fleet.plan()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += fleet.next_arrival(rate)
    remaining = deadline - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)


async def _tick(on_tick: Callable[[float], None], start: float) -> None:
    while True:
        on_tick(time.monotonic() - start)
        await asyncio.sleep(_REFRESH_S)


@contextlib.contextmanager
def _metrics_server(settings: PuppySettings, registry: CollectorRegistry) -> Iterator[str]:
    """Serve `registry` on /metrics; yields its URL. Stopped, and its port closed, on exit."""
    server, thread = prometheus_client.start_http_server(settings.port, addr=settings.host, registry=registry)
    try:
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        yield f"http://{host}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _shutdown_logfire() -> None:
    shutdown = getattr(logfire, "shutdown", None)
    if shutdown is not None:
        shutdown()
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()


def run(
    settings: PuppySettings,
    *,
    duration: float | None = None,
    rate: float = 8.0,
    seed: int = 7,
    console: Console | None = None,
    live: bool = True,
) -> DemoSummary:
    """Run the simulated fleet for `duration` seconds (forever when None, until Ctrl-C).

    Serves the engine's metrics on `http://{settings.host}:{settings.port}/metrics` while it runs,
    configures logfire (nothing is sent anywhere) with the engine's span processor, and returns
    what the fleet did once every span has been applied and everything is shut down.

    Raises:
        ValueError: `rate` is not positive or `duration` is negative.
        OSError: the metrics port cannot be bound.
    """
    if not rate > 0:
        raise ValueError(f"rate must be positive, not {rate!r}")
    if duration is not None and not duration >= 0:
        raise ValueError(f"duration must be zero or more seconds, not {duration!r}")
    console = console if console is not None else Console()
    engine = PolicyEngine.from_settings(settings)
    with contextlib.ExitStack() as stack:
        # Unwound in reverse: engine (flushed), then logfire, then the metrics server.
        stack.callback(engine.close)  # also when the port cannot be bound
        metrics_url = stack.enter_context(_metrics_server(settings, engine.registry))
        logfire.configure(
            send_to_logfire=False,
            console=False,
            service_name=SERVICE_NAME,
            additional_span_processors=[engine.span_processor()],
            add_baggage_to_attributes=True,  # how user and conversation ids reach the chat spans
        )
        stack.callback(_shutdown_logfire)
        stack.callback(engine.close)
        logfire.instrument_pydantic_ai()
        fleet = _Fleet(FLEET, seed)
        providers = len({spec.provider for spec in FLEET})
        console.print(
            Text.assemble(
                ("otel-puppy demo", "bold"),
                f": {len(FLEET)} agents on {providers} providers, {rate:g} runs/s; metrics at ",
                (metrics_url, f"link {metrics_url}"),
            )
        )
        _drive_with_display(fleet, engine, console, duration=duration, rate=rate, live=live)
        engine.span_processor().force_flush()
        summary = _summary(fleet, _Totals.read(engine.registry), metrics_url)
        if not live:
            console.print(_render(fleet, engine))
    return summary


def _drive_with_display(
    fleet: _Fleet, engine: PolicyEngine, console: Console, *, duration: float | None, rate: float, live: bool
) -> None:
    if not live:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_drive(fleet, duration=duration, rate=rate, on_tick=None))
        return
    # Rendered from the event loop (not rich's refresh thread), so reads never race the loop.
    start = time.monotonic()
    with Live(console=console, auto_refresh=False, transient=False) as display:

        def on_tick(elapsed: float) -> None:
            display.update(_render(fleet, engine, _progress(elapsed, duration, finished=False)), refresh=True)

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_drive(fleet, duration=duration, rate=rate, on_tick=on_tick))
        engine.span_processor().force_flush()
        elapsed = time.monotonic() - start
        display.update(_render(fleet, engine, _progress(elapsed, duration, finished=True)), refresh=True)
