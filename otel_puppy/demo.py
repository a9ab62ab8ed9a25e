"""`otel-puppy demo`: the service, and a simulated fleet of pydantic-ai agents under real policies driving it.

The demo runs as production does. The service (`create_app` on uvicorn, as `otel-puppy serve`
runs it) serves OTLP/HTTP, the decision API and /metrics on `settings.host:settings.port` from a
thread of the demo's process; the fleet runs in `fleet_processes` spawned processes, each an
application of its own: logfire exports its spans with the standard OTLP/HTTP exporter to the
service, and every model request is decided by the service through a `DecisionClient`. The live
view and the summary read the service's engine. (`in_process=True` runs the fleet in the demo's
own process instead, with the engine's span processor and the engine as the decider.)

Real pydantic-ai `Agent`s, instrumented by real logfire, talk to simulated providers: a
`FunctionModel` that reports a real provider and model (so the spans look exactly like those of
`openai:gpt-4.1` or `anthropic:claude-sonnet-4-5`), returns seeded-random usage with cached
prefixes, calls tools, and fails now and then like providers do (a 3% background of 429/500/503,
plus outages). Every agent's model is wrapped in `otel_puppy.guarded(...)`, as an application would
do it: each request asks for a decision first, a denied run ends with `PolicyDenied` (counted apart
from failures), and a degraded or routed one goes to a simulated model of the cheaper kind, whose
spans name it. Nothing leaves the machine: the fleet talks to the service only.

The scenario is the same for a given seed, on a clock that starts with the demo; `run()`'s keyword
arguments set its timing, and the defaults suit the shipped `policies/`:

- at `outage_at` (20 s) `outage_provider` (the self-hosted model server) fails every call for
  `outage_for` (25 s): its breaker opens, probes fail while the outage lasts and succeed once it is
  over. Milder outages of providers drawn from the seed follow now and then (`outage_every`: mean
  seconds between them).
- at `spike_at` (90 s) the research agent starts pasting whole pages into its prompts (16x the
  context, not in the provider's cache) for `spike_for` (45 s), spending about ten times as much:
  the spend-spike anomaly fires, and the per-agent budget soon stops it.
- at the default rate, budgets cross their alert thresholds and `openai-hourly` degrades gpt-4.1
  and gpt-4o to gpt-4.1-mini within about two minutes.

User and conversation ids reach the `chat` spans as OpenTelemetry baggage: OTel attributes are not
inherited by child spans, and pydantic-ai opens the `chat` spans itself, so each run is wrapped in
`logfire.set_baggage(...)` and logfire (`add_baggage_to_attributes=True`) copies the baggage onto
every span started inside, `chat` spans included, where `extract_call` reads `otel_puppy.user` and
`otel_puppy.conversation`. Decisions get the user from the guarded model of each run.

>>> summary = run(PuppySettings.load(port=9464), duration=30, rate=8)  # doctest: +SKIP
>>> summary.spend_usd  # doctest: +SKIP
Decimal('0.412345678')
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import queue
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from typing import Final, Literal

import logfire
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
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
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionDef, FunctionModel
from pydantic_ai.usage import RequestUsage
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import otel_puppy
from otel_puppy.client import DecisionClient
from otel_puppy.decision import Action, PolicyHit, Priority
from otel_puppy.engine import PolicyEngine, Snapshot
from otel_puppy.exceptions import PolicyDenied
from otel_puppy.integrations.pydantic_ai import Decider, GuardedModel
from otel_puppy.money import NANOS_PER_USD, nanos_to_usd
from otel_puppy.policies import PolicySet, load_policies
from otel_puppy.policies.base import Degrade
from otel_puppy.server.app import TRACES_PATH, create_app
from otel_puppy.server.thread import serving
from otel_puppy.settings import PuppySettings

__all__ = ("FLEET", "SPIKE_AGENT", "AgentSpec", "DemoSummary", "run")

SERVICE_NAME: Final = "otel-puppy-demo"
"""The service name of the fleet's spans when it runs in the demo's own process (`in_process`)."""
FLEET_SERVICE_NAME: Final = "otel-puppy-demo-fleet"
"""The service name of the fleet processes' spans, exported to the service over OTLP."""
USER_KEY: Final = "otel_puppy.user"
CONVERSATION_KEY: Final = "otel_puppy.conversation"
SPIKE_AGENT: Final = "research"
"""The agent whose prompts balloon during the spend spike."""

_ERROR_SHARE: Final = 0.03
"""Share of calls that fail outside outages, like the background error rate of real providers."""
_CACHE_SHARE: Final = 0.45
"""Share of first calls in a run whose prompt prefix (instructions, tools) is already cached."""
_OUTAGE_SHARE: Final = 1.0
"""Share of calls the first outage fails: the server is down, so the breaker sees failures in a row."""
_SPIKE_FACTOR: Final = 16
"""How much larger the spiking agent's context is (and may grow)."""
_MIN_INPUT, _MAX_INPUT = 300, 20_000
_MIN_OUTPUT, _MAX_OUTPUT = 50, 2_000
_MAX_IN_FLIGHT: Final = 256
_REFRESH_S: Final = 0.5
_FLEET_REPORT_S: Final = 10.0
_DECIDE_TIMEOUT_S: Final = 5.0
"""Generous for loopback: a decision that times out is failed open and never reaches the service's counts."""
_WORKER_START_S: Final = 120.0
"""Spawning imports pydantic-ai and logfire afresh in each process: seconds on a slow machine."""
_WORKER_STOP_S: Final = 30.0
"""How long the fleet processes may take to finish their runs in flight and export their spans."""
_USERS: Final = 60
_BUDGET_ROWS: Final = 8
_ALERT_ROWS: Final = 6
"""Alerts the live view shows; the summary printed at the end (`live=False`) shows twice as many."""

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
    priority: Priority = Priority.NORMAL
    """What its decisions ask with: budgets keep their last fraction for the higher priorities."""

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
        priority=Priority.HIGH,
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
        priority=Priority.HIGH,
    ),
    AgentSpec(
        "summarizer",
        "google",
        "gemini-2.5-flash",
        0.14,
        (fetch_document,),
        ("Summarize the Q3 review.", "Summarize this incident report.", "TL;DR of the board memo."),
        speed=0.6,
        priority=Priority.LOW,
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
        priority=Priority.NORMAL,
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
        priority=Priority.CRITICAL,
    ),
    AgentSpec(
        "analyst",
        "google",
        "gemini-2.5-pro",
        0.08,
        (run_sql,),
        ("Weekly active users by region?", "Churn by plan over the last quarter?"),
        speed=1.6,
        priority=Priority.NORMAL,
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
        priority=Priority.NORMAL,
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
        priority=Priority.BULK,
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


def _alternatives(policies: PolicySet, spec: AgentSpec) -> list[tuple[str, str]]:
    """Every model a decision for this agent may switch to: degrade targets and routing candidates.

    Each gets a simulated model, so a degraded or routed request never reaches a real provider.
    """
    found: dict[tuple[str, str], None] = {}
    for budget in policies.budgets:
        if isinstance(budget.action, Degrade):
            found[budget.action.target(spec.provider)] = None
    for routing in policies.routing:
        for candidate in routing.candidates:
            found[candidate.provider_model] = None
    found.pop((spec.provider, spec.model), None)
    return list(found)


# --- the scenario ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scenario:
    """When things go wrong, in seconds since the demo started."""

    outage_at: float
    outage_for: float
    outage_every: float
    """Mean seconds between the milder outages after the first (`math.inf`: none)."""
    spike_at: float
    spike_for: float

    def spiking(self, elapsed: float) -> bool:
        return self.spike_at <= elapsed < self.spike_at + self.spike_for


@dataclass(frozen=True, slots=True)
class _Outage:
    """One provider failing a `share` of its calls until `until` (monotonic seconds)."""

    provider: str
    until: float
    share: float

    def fails(self, provider: str, now: float, draw: float) -> bool:
        return provider == self.provider and now < self.until and draw < self.share


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
    scale: int = 1
    """How many times larger than usual its prompts and tool results are (the spend spike)."""
    cached_tokens: int = 0


_CURRENT_RUN: ContextVar[_Run] = ContextVar("otel_puppy_demo_run")


@dataclass(slots=True)
class _Counts:
    runs: int = 0
    failed_runs: int = 0
    denied_runs: int = 0
    calls: int = 0


class _Fleet:
    """The agents, the traffic they get and the failures their providers have."""

    def __init__(
        self,
        specs: tuple[AgentSpec, ...],
        decider: Decider,
        alternatives: Mapping[str, Sequence[tuple[str, str]]],
        scenario: _Scenario,
        *,
        seed: int,
        outage_provider: str,
        service: str = SERVICE_NAME,
        worker: int | None = None,
    ) -> None:
        """`alternatives`: the models each agent's decisions may switch to (`_alternatives`).

        `worker` numbers one of several fleet processes: its runs are drawn from a seed derived
        from `seed`, its outages from `seed` itself, so every process sees the same outages.
        """
        self.specs = specs
        self.decider = decider
        self.service = service
        self.scenario = scenario
        self.counts = _Counts()
        self._rng = random.Random(seed if worker is None else f"{seed}:worker:{worker}")
        # Outages are drawn from their own generator, so they never shift what the runs draw.
        self._outage_rng = random.Random(f"{seed}:outages")
        self._providers = sorted({spec.provider for spec in specs})
        self.outage_provider = outage_provider
        """The provider of the first outage."""
        self._weights = [spec.weight for spec in specs]
        self._conversations: dict[str, str] = {}
        self._outage: _Outage | None = None
        self._outages = 0
        self._next_outage = math.inf
        self._launched = 0
        self._start = 0.0
        self._models = {spec.name: self._simulated(spec, spec.provider, spec.model) for spec in specs}
        self._degrade_to: dict[str, Mapping[str, Model]] = {
            spec.name: {f"{p}:{m}": self._simulated(spec, p, m) for p, m in alternatives.get(spec.name, ())}
            for spec in specs
        }
        self.agents = {spec.name: self._agent(spec) for spec in specs}

    def _simulated(self, spec: AgentSpec, provider: str, model: str) -> SimulatedModel:
        return SimulatedModel(self._respond_as(spec, provider, model), provider=provider, model_name=model)

    def _guarded(self, spec: AgentSpec, user: str | None) -> GuardedModel:
        """The agent's model behind otel_puppy: every request is decided before it is made."""
        return otel_puppy.guarded(
            self._models[spec.name],
            self.decider,
            agent=spec.name,
            priority=spec.priority,
            user=user,
            service=self.service,
            degrade_to=self._degrade_to[spec.name],
        )

    def _agent(self, spec: AgentSpec) -> Agent[None, str]:
        agent: Agent[None, str] = Agent(self._guarded(spec, None), name=spec.name, instructions=spec.instructions)
        for tool in spec.tools:
            agent.tool_plain(tool)
        return agent

    def start(self, now: float) -> None:
        self._start = now
        self._next_outage = now + self.scenario.outage_at

    def elapsed(self, now: float) -> float:
        return now - self._start

    def plan(self, now: float) -> _Run:
        """The next run. The first pass goes once through the fleet, so every series exists early."""
        index, rng = self._launched, self._rng
        self._launched += 1
        spec = self.specs[index] if index < len(self.specs) else rng.choices(self.specs, self._weights)[0]
        run_rng = random.Random(rng.getrandbits(64))
        user = f"user-{min(int(run_rng.paretovariate(1.2)), _USERS):03d}"
        conversation = self._conversations.get(user)
        if conversation is None or run_rng.random() < 0.3:
            conversation = self._conversations[user] = f"conv-{run_rng.getrandbits(48):012x}"
        prompt = run_rng.choice(spec.prompts)
        tool_rounds = run_rng.choices((0, 1, 2), (0.15, 0.65, 0.20))[0]
        context_tokens = _log_uniform(run_rng, _MIN_INPUT, 12_000)
        # The spike changes the sizes, never the draws: the rest of the run is the same.
        scale = _SPIKE_FACTOR if spec.name == SPIKE_AGENT and self.scenario.spiking(self.elapsed(now)) else 1
        return _Run(
            spec=spec,
            rng=run_rng,
            user=user,
            conversation=conversation,
            prompt=prompt,
            tool_rounds=tool_rounds,
            context_tokens=context_tokens * scale,
            scale=scale,
        )

    def next_arrival(self, rate: float) -> float:
        """Seconds until the next run: arrivals are a Poisson process of `rate` a second."""
        return self._rng.expovariate(rate)

    def update_outage(self, now: float) -> None:
        """End the outage that is over and start the one that is due, on the scenario's schedule."""
        outage, rng = self._outage, self._outage_rng
        if outage is not None and now >= outage.until:
            self._outage = None
            every = self.scenario.outage_every
            self._next_outage = outage.until + rng.expovariate(1 / every) if math.isfinite(every) else math.inf
        if self._outage is None and now >= self._next_outage:
            begins = self._next_outage
            if self._outages == 0:
                outage = _Outage(self.outage_provider, begins + self.scenario.outage_for, _OUTAGE_SHARE)
            else:
                outage = _Outage(rng.choice(self._providers), begins + rng.uniform(5, 15), rng.uniform(0.4, 0.8))
            self._outages += 1
            self._outage = outage

    def _failure(self, run: _Run, provider: str, now: float) -> int | None:
        """The HTTP status this call fails with, or None. Always draws twice, outage or not."""
        background, in_outage = run.rng.random(), run.rng.random()
        outage = self._outage
        if outage is not None and outage.fails(provider, now, in_outage):
            return run.spec.outage_status
        if background < _ERROR_SHARE:
            return run.rng.choices((429, 500, 503), (0.4, 0.35, 0.25))[0]
        return None

    def _respond_as(self, spec: AgentSpec, provider: str, model: str) -> FunctionDef:
        async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            run = _CURRENT_RUN.get()
            self.counts.calls += 1
            status = self._failure(run, provider, time.monotonic())
            if status is not None:
                await asyncio.sleep(run.rng.uniform(0.02, 0.3) * spec.speed)
                raise _http_error(provider, model, status)
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
                model_name=model,
                provider_name=provider,
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
                # The end user is known per request: a guarded wrapper per run carries it to decide().
                model = self._guarded(spec, run.user)
                await self.agents[spec.name].run(run.prompt, model=model, conversation_id=run.conversation)
        except PolicyDenied:
            # A policy said no before a model call: the application's choice, not a provider failure.
            self.counts.denied_runs += 1
        except AgentRunError:
            self.counts.failed_runs += 1


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


def _usage(run: _Run, output_tokens: int) -> RequestUsage:
    """Usage of the next call of `run`; input includes cache reads and writes, as pydantic-ai counts."""
    spec, rng = run.spec, run.rng
    input_tokens = min(max(run.context_tokens, _MIN_INPUT), _MAX_INPUT * run.scale)
    cache_read = cache_write = 0
    if spec.caching != "none":
        if run.cached_tokens:
            # A follow-up call: the conversation so far is usually still in the provider's cache.
            if rng.random() < 0.85:
                cache_read = min(run.cached_tokens, input_tokens)
        elif rng.random() < _CACHE_SHARE:
            # The cached prefix (instructions, tools) does not grow with pasted pages.
            cache_read = int(input_tokens * rng.uniform(0.4, 0.9) / run.scale)
        if spec.caching == "explicit" and rng.random() < 0.5:
            cache_write = input_tokens - cache_read
    run.cached_tokens = input_tokens
    # The next call sees this one's output and a tool result (whole pages during a spike).
    run.context_tokens = input_tokens + output_tokens + rng.randint(100, 3_000) * run.scale
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


def _http_error(provider: str, model: str, status: int) -> ModelHTTPError:
    """The error pydantic-ai's own models raise for this status (a `ModelHTTPError` of a category)."""
    category: _Category = _CATEGORIES[status]
    if provider == "anthropic" and status == 503:
        category = ModelOverloadedError
    return ModelHTTPError.for_category(
        category,
        status_code=status,
        model_name=model,
        body=_BODIES.get((provider, status)),
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
    decisions: dict[str, int] = field(default_factory=dict)
    """`otel_puppy_decisions_total` by action."""
    alerts: dict[str, int] = field(default_factory=dict)
    """`otel_puppy_alerts_total` by kind."""
    breaker_opened: int = 0
    """`otel_puppy_breaker_transitions_total{to="open"}`."""
    anomalies: int = 0
    """`otel_puppy_anomalies_total`."""

    @classmethod
    def read(cls, registry: CollectorRegistry) -> _Totals:
        totals = cls()
        for family in registry.collect():
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name in _CALLS:
                    totals._add_call(name, labels, value)
                elif name == "otel_puppy_decisions_total":
                    action = labels["action"]
                    totals.decisions[action] = totals.decisions.get(action, 0) + int(value)
                elif name == "otel_puppy_alerts_total":
                    kind = labels["kind"]
                    totals.alerts[kind] = totals.alerts.get(kind, 0) + int(value)
                elif name == "otel_puppy_breaker_transitions_total" and labels["to"] == "open":
                    totals.breaker_opened += int(value)
                elif name == "otel_puppy_anomalies_total":
                    totals.anomalies += int(value)
        return totals

    def _add_call(self, name: str, labels: dict[str, str], value: float) -> None:
        rows = (
            self.by_model.setdefault((labels["provider"], labels["model"]), _Row()),
            self.by_agent.setdefault(labels["agent"], _Row()),
        )
        if name == "otel_puppy_llm_requests_total":
            count, failed = int(value), int(value) if labels["outcome"] == "error" else 0
            self.calls += count
            self.errors += failed
            for row in rows:
                row.calls += count
                row.errors += failed
        elif name == "otel_puppy_llm_cost_usd_total":
            # Exported as float USD; integer nano-USD again (exact below $4.5M a series).
            nanos = round(value * NANOS_PER_USD)
            self.nanos += nanos
            for row in rows:
                row.nanos += nanos
                row.priced = True
        else:
            self.unpriced += int(value)
            for row in rows:
                row.unpriced += int(value)


_CALLS: Final = frozenset(
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
    denied_runs: int
    """Runs a decision denied (`PolicyDenied`): stopped before a model call, not failed."""
    degraded_decisions: int
    """Decisions that sent a request to a cheaper model."""
    alerts: dict[str, int]
    """Alert events by kind: `budget`, `breaker`, `anomaly`."""
    breaker_opened: bool
    anomalies_fired: int


@dataclass(slots=True)
class _Board:
    """What the display and the summary read besides the engine: the fleet's own counts."""

    counts: _Counts = field(default_factory=_Counts)
    """The in-process fleet's counts, or the sum of the fleet processes' latest reports."""
    started_at: float = 0.0
    """When the fleet started, on the engine's clock (epoch seconds), to date its alerts."""


def _summary(board: _Board, totals: _Totals, metrics_url: str) -> DemoSummary:
    return DemoSummary(
        runs=board.counts.runs,
        failed_runs=board.counts.failed_runs,
        calls=board.counts.calls,
        spend_usd=nanos_to_usd(totals.nanos),
        spend_by_model={
            f"{provider}:{model}": nanos_to_usd(row.nanos)
            for (provider, model), row in sorted(totals.by_model.items())
            if row.priced
        },
        spend_by_agent={agent: nanos_to_usd(row.nanos) for agent, row in sorted(totals.by_agent.items()) if row.priced},
        unpriced_calls=totals.unpriced,
        metrics_url=metrics_url,
        denied_runs=board.counts.denied_runs,
        degraded_decisions=totals.decisions.get(Action.DEGRADE.value, 0),
        alerts=dict(sorted(totals.alerts.items())),
        breaker_opened=totals.breaker_opened > 0,
        anomalies_fired=totals.anomalies,
    )


# --- the display -----------------------------------------------------------------------------

_ACTION_STYLES: Final = {"allow": "green", "warn": "yellow", "degrade": "magenta", "deny": "red"}
_STATE_STYLES: Final = {"closed": "green", "half_open": "yellow", "open": "bold red"}
_SEVERITY_STYLES: Final = {"info": "cyan", "warning": "yellow", "critical": "red", "emergency": "bold red"}


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


def _render(
    board: _Board, engine: PolicyEngine, progress: RenderableType | None = None, *, alerts: int = _ALERT_ROWS
) -> RenderableType:
    totals = _Totals.read(engine.registry)
    snapshot = engine.snapshot()
    parts: list[RenderableType] = [progress] if progress is not None else []

    counts = board.counts
    summary = Table.grid(padding=(0, 2))
    summary.add_row(
        f"runs [bold]{counts.runs}[/] ([red]{counts.failed_runs} failed[/], [magenta]{counts.denied_runs} denied[/])",
        f"calls [bold]{totals.calls}[/] ([red]{totals.errors} errors[/])",
        f"unpriced [yellow]{totals.unpriced}[/]",
        f"spend [bold green]${totals.nanos / NANOS_PER_USD:,.4f}[/] (metrics)",
        f"[green]${snapshot.spend('day'):,.4f}[/] today (store)",
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
            provider, model, str(row.calls), str(row.errors), str(row.unpriced) if row.unpriced else "", _spend(row)
        )

    by_agent = Table(title="Spend by agent", title_justify="left", expand=False)
    for column in ("agent", "calls", "errors", "spend"):
        by_agent.add_column(column, justify="left" if column == "agent" else "right")
    for agent, row in sorted(totals.by_agent.items(), key=lambda item: -item[1].nanos):
        by_agent.add_row(agent, str(row.calls), str(row.errors), _spend(row))

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


def _decisions_table(totals: _Totals) -> Table:
    table = Table(title="Decisions", title_justify="left", expand=False)
    table.add_column("action")
    table.add_column("count", justify="right")
    for action in Action:
        style = _ACTION_STYLES[action.value]
        table.add_row(f"[{style}]{action.value}[/]", str(totals.decisions.get(action.value, 0)))
    return table


def _breakers_table(snapshot: Snapshot, now: float) -> Table:
    table = Table(title="Breakers", title_justify="left", expand=False)
    for column in ("breaker", "subject", "state", "failures"):
        table.add_column(column, justify="right" if column == "failures" else "left")
    for status in snapshot.breakers:
        state = f"[{_STATE_STYLES[status.state]}]{status.state}[/]"
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
        table.add_row(name, hit.scope, *_amounts(hit), _utilization(hit.utilization or 0.0))
    notes = [f"and {len(fullest) - len(shown)} more"] if len(fullest) > len(shown) else []
    if any(hit.shadow for hit in shown):
        notes.append("dimmed: shadow")
    table.caption = "; ".join(notes) or None
    if not fullest:
        table.add_row("[dim]none[/]", "", "", "", "")
    return table


def _amounts(hit: PolicyHit) -> tuple[str, str]:
    if hit.limit_usd is not None:
        return f"${hit.spent_usd or 0:,.4f}", f"${hit.limit_usd:,.2f}"
    return f"{hit.spent_tokens or 0:,}", f"{hit.limit_tokens or 0:,} tok"


def _utilization(ratio: float) -> str:
    style = "bold red" if ratio >= 1 else "red" if ratio >= 0.9 else "yellow" if ratio >= 0.75 else ""
    text = f"{ratio:.0%}"
    return f"[{style}]{text}[/]" if style else text


def _alerts_table(engine: PolicyEngine, started_at: float, rows: int) -> Table:
    table = Table(title="Latest alerts", title_justify="left", expand=False)
    for column in ("at", "severity", "alert"):
        table.add_column(column, justify="right" if column == "at" else "left")
    recent = list(engine.alerts.recent[-rows:])
    for event in recent:
        severity = event.severity.value
        table.add_row(f"{event.at - started_at:+.0f}s", f"[{_SEVERITY_STYLES[severity]}]{severity}[/]", event.message)
    if not recent:
        table.add_row("", "", "[dim]none yet[/]")
    return table


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
        now = time.monotonic()
        fleet.update_outage(now)
        if len(tasks) >= _MAX_IN_FLIGHT:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(fleet.run_one(fleet.plan(now)))
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


# --- the service -----------------------------------------------------------------------------


# --- the fleet processes ---------------------------------------------------------------------

_Report = tuple[Literal["ready", "counts", "done", "error"], int, "_Counts | str | None"]


@dataclass(frozen=True, slots=True)
class _WorkerPlan:
    """What one fleet process needs, as plain data: it is pickled into a spawned process."""

    worker: int
    url: str
    """The service's base URL: decisions go to its `/v1/decide` (and spans to its `/v1/traces`)."""
    api_token: str | None
    fail_open: bool
    seed: int
    rate: float
    scenario: _Scenario
    outage_provider: str
    alternatives: dict[str, list[tuple[str, str]]]
    traces_url: str | None = None
    """Export spans here instead (a Collector's OTLP/HTTP `/v1/traces`), as a scaled-out fleet does."""


def _work(plan: _WorkerPlan, start: EventType, stop: EventType, reports: Queue[_Report]) -> None:
    """One fleet process, as an application of the fleet would run: the standard OTLP exporter
    sends its spans to the service and a `DecisionClient` asks it before every model request.

    Runs from `start` until `stop`, reports its counts on `reports` twice a second, and reports
    them a last time (`done`) once its spans are exported, so the service has applied them all.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the demo's: it sets `stop`
    try:
        headers = {"authorization": f"Bearer {plan.api_token}"} if plan.api_token else None
        traces_url = plan.traces_url or f"{plan.url}{TRACES_PATH}"
        exporter = OTLPSpanExporter(endpoint=traces_url, headers=None if plan.traces_url else headers)
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=200)
        _configure_logfire(FLEET_SERVICE_NAME, processor)
        reports.put(("ready", plan.worker, None))
        while not start.wait(0.1):
            if stop.is_set():
                return
        counts = asyncio.run(_work_until(plan, stop, reports))
        processor.force_flush()  # the service answers an export once it has applied it
        reports.put(("done", plan.worker, counts))
        _shutdown_logfire()
    except BaseException as exc:
        reports.put(("error", plan.worker, f"{type(exc).__name__}: {exc}"))
        raise


async def _work_until(plan: _WorkerPlan, stop: EventType, reports: Queue[_Report]) -> _Counts:
    async with DecisionClient(
        plan.url, api_token=plan.api_token, timeout_s=_DECIDE_TIMEOUT_S, fail_open=plan.fail_open
    ) as client:
        fleet = _Fleet(
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

        drive = asyncio.create_task(_drive(fleet, duration=None, rate=plan.rate, on_tick=report))
        while not stop.is_set() and not drive.done():
            await asyncio.wait({drive}, timeout=0.1)
        # Cancelling stops the launches; the runs in flight finish, so their spans are complete.
        drive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drive
        return dataclasses.replace(fleet.counts)


class _Workers:
    """The fleet processes seen from the demo: started, watched through their reports, stopped."""

    def __init__(self, plans: list[_WorkerPlan]) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the service's threads stay here
        self.start, self.stop = context.Event(), context.Event()
        self.reports: Queue[_Report] = context.Queue()
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
        self.counts: dict[int, _Counts] = {}
        self.errors: list[str] = []
        self._closed = False

    def launch(self) -> None:
        """Start the processes and wait until each is ready; then start them all at once."""
        for process in self.processes:
            process.start()
        deadline = time.monotonic() + _WORKER_START_S
        while len(self.ready) < len(self.processes):
            if self.errors:
                raise RuntimeError(f"a fleet process failed: {self.errors[0]}")
            if time.monotonic() > deadline or not all(p.is_alive() for p in self.processes):
                raise RuntimeError("the fleet processes did not start")
            self.collect(0.1)
        self.start.set()

    def collect(self, timeout: float) -> None:
        """Take the reports that arrive within `timeout` seconds, or until a process is done."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                kind, worker, payload = self.reports.get(timeout=left)
            except queue.Empty:
                return
            if kind == "ready":
                self.ready.add(worker)
            elif kind == "error":
                self.errors.append(str(payload))
                self.done.add(worker)
                return
            elif isinstance(payload, _Counts):
                # A late periodic report never replaces the final one.
                if worker not in self.done:
                    self.counts[worker] = payload
                if kind == "done":
                    self.done.add(worker)
                    return  # the caller may be waiting for exactly this

    def total(self) -> _Counts:
        counts = _Counts()
        for reported in self.counts.values():
            counts.runs += reported.runs
            counts.failed_runs += reported.failed_runs
            counts.denied_runs += reported.denied_runs
            counts.calls += reported.calls
        return counts

    def finishing(self) -> bool:
        return len(self.done) < len(self.processes) and any(p.is_alive() for p in self.processes)

    def close(self) -> None:
        """Stop every process: the ones still running after `_WORKER_STOP_S` are terminated."""
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        deadline = time.monotonic() + _WORKER_STOP_S
        while self.finishing() and time.monotonic() < deadline:
            self.collect(0.1)  # drained first: a process joins only once its queue is flushed
        for process in self.processes:
            process.join(timeout=max(deadline - time.monotonic(), 1.0))
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self.collect(0)
        self.reports.close()


def _run_fleet(
    workers: _Workers,
    board: _Board,
    engine: PolicyEngine,
    console: Console,
    *,
    duration: float | None,
    live: bool,
) -> None:
    """Run the fleet processes until `duration` (or Ctrl-C), showing the engine's state if `live`."""
    display = Live(console=console, auto_refresh=False, transient=False) if live else None
    try:
        workers.launch()
        board.started_at = engine.clock.now()
        began = time.monotonic()
        with display if display is not None else contextlib.nullcontext():

            def show(*, finished: bool = False) -> None:
                board.counts = workers.total()
                if display is not None:
                    progress = _progress(time.monotonic() - began, duration, finished=finished)
                    display.update(_render(board, engine, progress), refresh=True)

            with contextlib.suppress(KeyboardInterrupt):
                while duration is None or (left := began + duration - time.monotonic()) > 0:
                    workers.collect(_REFRESH_S if duration is None else min(_REFRESH_S, left))
                    show()
                workers.stop.set()
                while workers.finishing():
                    workers.collect(_REFRESH_S)
                    show()
            workers.close()
            show(finished=True)
    finally:
        workers.close()
    if workers.errors:
        raise RuntimeError(f"a fleet process failed: {workers.errors[0]}")


# --- running it ------------------------------------------------------------------------------


def _configure_logfire(service_name: str, processor: SpanProcessor) -> None:
    """Logfire as the fleet's applications configure it: nothing sent to Logfire, no console."""
    logfire.configure(
        send_to_logfire=False,
        console=False,
        service_name=service_name,
        additional_span_processors=[processor],
        add_baggage_to_attributes=True,  # how user and conversation ids reach the chat spans
    )
    logfire.instrument_pydantic_ai()


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
    scenario = _Scenario(outage_at, outage_for, outage_every, spike_at, spike_for)
    console = console if console is not None else Console()
    engine = PolicyEngine.from_settings(settings)
    alternatives = {spec.name: _alternatives(engine.policies, spec) for spec in FLEET}
    board = _Board()
    with contextlib.ExitStack() as stack:
        # Unwound in reverse: the service stops once everything is applied, then the engine closes.
        stack.callback(engine.close)  # also when the port cannot be bound
        url = stack.enter_context(serving(create_app(engine), settings.host, settings.port))
        metrics_url = f"{url}/metrics"
        processes = None if in_process else fleet_processes
        _introduce(console, engine, scenario, outage_provider, rate=rate, url=url, processes=processes)
        if in_process:
            _configure_logfire(SERVICE_NAME, engine.span_processor())
            stack.callback(_shutdown_logfire)
            fleet = _Fleet(FLEET, engine, alternatives, scenario, seed=seed, outage_provider=outage_provider)
            board.counts = fleet.counts
            _drive_with_display(fleet, board, engine, console, duration=duration, rate=rate, live=live)
            engine.span_processor().force_flush()
        else:
            token = settings.api_token.get_secret_value() if settings.api_token is not None else None
            plans = [
                _WorkerPlan(
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
            _run_fleet(_Workers(plans), board, engine, console, duration=duration, live=live)
        summary = _summary(board, _Totals.read(engine.registry), metrics_url)
        if not live:
            console.print(_render(board, engine, alerts=2 * _ALERT_ROWS))
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
    scenario = _Scenario(20.0, 25.0, 120.0, 90.0, 45.0)
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    plans = [
        _WorkerPlan(
            worker=worker,
            url=url.rstrip("/"),
            api_token=token,
            fail_open=settings.fail_open,
            seed=seed,
            rate=rate / fleet_processes,
            scenario=scenario,
            outage_provider="self-hosted",
            alternatives={spec.name: _alternatives(policies, spec) for spec in FLEET},
            traces_url=traces_url,
        )
        for worker in range(fleet_processes)
    ]
    workers = _Workers(plans)
    console.print(f"otel-puppy fleet: {fleet_processes} processes deciding at {url}, spans to {traces_url or url}")
    try:
        workers.launch()
        began = last = time.monotonic()
        with contextlib.suppress(KeyboardInterrupt):
            while duration is None or time.monotonic() < began + duration:
                workers.collect(_REFRESH_S)
                if workers.errors:
                    break
                if time.monotonic() - last >= _FLEET_REPORT_S:
                    last = time.monotonic()
                    _print_counts(console, workers.total(), last - began)
        workers.close()
        _print_counts(console, workers.total(), time.monotonic() - began)
    finally:
        workers.close()
    if workers.errors:
        raise RuntimeError(f"a fleet process failed: {workers.errors[0]}")


def _print_counts(console: Console, counts: _Counts, elapsed: float) -> None:
    console.print(
        f"+{elapsed:.0f}s: {counts.runs} runs ({counts.failed_runs} failed, {counts.denied_runs} denied), "
        f"{counts.calls} model calls"
    )


def _introduce(
    console: Console,
    engine: PolicyEngine,
    scenario: _Scenario,
    outage_provider: str,
    *,
    rate: float,
    url: str,
    processes: int | None,
) -> None:
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


def _drive_with_display(
    fleet: _Fleet,
    board: _Board,
    engine: PolicyEngine,
    console: Console,
    *,
    duration: float | None,
    rate: float,
    live: bool,
) -> None:
    board.started_at = engine.clock.now()
    if not live:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_drive(fleet, duration=duration, rate=rate, on_tick=None))
        return
    # Rendered from the event loop (not rich's refresh thread), so reads never race the loop.
    start = time.monotonic()
    with Live(console=console, auto_refresh=False, transient=False) as display:

        def on_tick(elapsed: float) -> None:
            display.update(_render(board, engine, _progress(elapsed, duration, finished=False)), refresh=True)

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_drive(fleet, duration=duration, rate=rate, on_tick=on_tick))
        engine.span_processor().force_flush()
        elapsed = time.monotonic() - start
        display.update(_render(board, engine, _progress(elapsed, duration, finished=True)), refresh=True)
