"""The simulated fleet in one process: runs drawn from a seed, simulated providers, the apps' telemetry.

`Fleet` plans each agent run up front from its own seeded generator and runs it through a real
pydantic-ai `Agent` whose model (`SimulatedModel`) reports a real provider and model, returns
seeded-random usage with cached prefixes, calls tools, and fails like providers do. Every model is
wrapped in `otel_puppy.guarded(...)`, so each request is decided first.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, Literal

import logfire
from opentelemetry.sdk.trace import SpanProcessor
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

import otel_puppy
from otel_puppy.demo.agents import CONVERSATION_KEY, SERVICE_NAME, SPIKE_AGENT, USER_KEY, AgentSpec
from otel_puppy.demo.scenario import OUTAGE_SHARE, Outage, Scenario
from otel_puppy.exceptions import PolicyDenied
from otel_puppy.integrations.pydantic_ai import Decider, GuardedModel

__all__ = ("Counts", "Fleet", "Run", "SimulatedModel", "configure_logfire", "shutdown_logfire")

_ERROR_SHARE: Final = 0.03
"""Share of calls that fail outside outages, like the background error rate of real providers."""


_CACHE_SHARE: Final = 0.45
"""Share of first calls in a run whose prompt prefix (instructions, tools) is already cached."""


_SPIKE_FACTOR: Final = 16
"""How much larger the spiking agent's context is (and may grow)."""
_MIN_INPUT, _MAX_INPUT = 300, 20_000
_MIN_OUTPUT, _MAX_OUTPUT = 50, 2_000


_USERS: Final = 60


class SimulatedModel(FunctionModel):
    """A `FunctionModel` whose spans name a real provider instead of `function`.

    pydantic-ai's instrumentation writes `model.system` to `gen_ai.provider.name` (and the
    deprecated `gen_ai.system`) and `model.model_name` to `gen_ai.request.model`; `FunctionModel`
    keeps the former in `_system`, which defaults to `function`.
    """

    def __init__(self, function: FunctionDef, *, provider: str, model_name: str) -> None:
        super().__init__(function, model_name=model_name)
        self._system = provider


@dataclass(slots=True)
class Run:
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


_CURRENT_RUN: ContextVar[Run] = ContextVar("otel_puppy_demo_run")


@dataclass(slots=True)
class Counts:
    """What a fleet did: runs (failed, denied) and the model calls its simulated providers saw."""

    runs: int = 0
    failed_runs: int = 0
    denied_runs: int = 0
    calls: int = 0


class Fleet:
    """The agents, the traffic they get and the failures their providers have."""

    def __init__(
        self,
        specs: tuple[AgentSpec, ...],
        decider: Decider,
        alternatives: Mapping[str, Sequence[tuple[str, str]]],
        scenario: Scenario,
        *,
        seed: int,
        outage_provider: str,
        service: str = SERVICE_NAME,
        worker: int | None = None,
    ) -> None:
        """`alternatives`: the models each agent's decisions may switch to (`agents.alternatives_for`).

        `worker` numbers one of several fleet processes: its runs are drawn from a seed derived
        from `seed`, its outages from `seed` itself, so every process sees the same outages.
        """
        self.specs = specs
        self.decider = decider
        self.service = service
        self.scenario = scenario
        self.counts = Counts()
        self._rng = random.Random(seed if worker is None else f"{seed}:worker:{worker}")
        # Outages are drawn from their own generator, so they never shift what the runs draw.
        self._outage_rng = random.Random(f"{seed}:outages")
        self._providers = sorted({spec.provider for spec in specs})
        self.outage_provider = outage_provider
        """The provider of the first outage."""
        self._weights = [spec.weight for spec in specs]
        self._conversations: dict[str, str] = {}
        self._outage: Outage | None = None
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

    def plan(self, now: float) -> Run:
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
        context_tokens = log_uniform(run_rng, _MIN_INPUT, 12_000)
        # The spike changes the sizes, never the draws: the rest of the run is the same.
        scale = _SPIKE_FACTOR if spec.name == SPIKE_AGENT and self.scenario.spiking(self.elapsed(now)) else 1
        return Run(
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
                outage = Outage(self.outage_provider, begins + self.scenario.outage_for, OUTAGE_SHARE)
            else:
                outage = Outage(rng.choice(self._providers), begins + rng.uniform(5, 15), rng.uniform(0.4, 0.8))
            self._outages += 1
            self._outage = outage

    def _failure(self, run: Run, provider: str, now: float) -> int | None:
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
            output = run.rng.randint(_MIN_OUTPUT, 200) if call_tool else log_uniform(run.rng, 80, _MAX_OUTPUT)
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

    async def run_one(self, run: Run) -> None:
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


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


def _usage(run: Run, output_tokens: int) -> RequestUsage:
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


def configure_logfire(service_name: str, processor: SpanProcessor) -> None:
    """Logfire as the fleet's applications configure it: nothing sent to Logfire, no console."""
    logfire.configure(
        send_to_logfire=False,
        console=False,
        service_name=service_name,
        additional_span_processors=[processor],
        add_baggage_to_attributes=True,  # how user and conversation ids reach the chat spans
    )
    logfire.instrument_pydantic_ai()


def shutdown_logfire() -> None:
    shutdown = getattr(logfire, "shutdown", None)
    if shutdown is not None:
        shutdown()
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()
