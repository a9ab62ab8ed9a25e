"""Routing policies: which model to use among candidates, by strategy and under constraints.

The policy models (`RoutingPolicy`, `Candidate`, `Weights`) are the grammar; `Router` is the
runtime the engine asks during `decide()`: the first routing policy matching the request picks
one of its candidates, skipping those that cannot serve it, and says why in a `PolicyHit`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Literal

from genai_prices import data_snapshot
from pydantic import BeforeValidator, Field, field_validator

from otel_puppy.bounds import MAX_CALL_COST_USD, MAX_CALL_TOKENS
from otel_puppy.decision import Action, DecisionRequest, PolicyHit, Severity
from otel_puppy.model_stats import ModelStat, ModelStats
from otel_puppy.money import format_usd, nanos_to_usd, usd_to_nanos
from otel_puppy.policies.base import Duration, NamedEntry, PolicyModel
from otel_puppy.policies.matching import Match, Scope
from otel_puppy.pricing import Pricer

__all__ = ("Candidate", "Route", "Router", "RoutingPolicy", "Strategy", "Weights")

Strategy = Literal["cheapest", "fastest", "most_reliable", "balanced", "round_robin"]


def _candidate(value: object) -> object:
    return {"model": value} if isinstance(value, str) else value


class Candidate(PolicyModel):
    """A model routing may choose: `openai:gpt-4.1`, or with what it can do."""

    model: Annotated[str, Field(pattern=r"^[^:\s]+:\S+$", max_length=256)]
    """`provider:model`."""
    capabilities: tuple[str, ...] = ()
    """What the model can do (`tools`, `vision`, `json`), matched against the request's needs."""
    context_window: Annotated[int, Field(gt=0, le=MAX_CALL_TOKENS)] | None = None
    """Largest prompt in tokens; genai-prices' figure when absent."""

    @property
    def provider_model(self) -> tuple[str, str]:
        provider, _, model = self.model.partition(":")
        return provider, model


class Weights(PolicyModel):
    """How `balanced` weighs each ranking; they need not sum to 1."""

    cost: Annotated[float, Field(ge=0)] = 0.25
    speed: Annotated[float, Field(ge=0)] = 0.25
    reliability: Annotated[float, Field(ge=0)] = 0.25
    capability: Annotated[float, Field(ge=0)] = 0.25


class RoutingPolicy(NamedEntry):
    """Choose the model for requests matching `match` among `candidates`.

    >>> RoutingPolicy(name="default", candidates=["openai:gpt-4.1", "openai:gpt-4.1-mini"]).describe()
    'routing default: balanced among openai:gpt-4.1, openai:gpt-4.1-mini'
    """

    match: Match | None = None
    strategy: Strategy = "balanced"
    weights: Weights = Weights()
    candidates: Annotated[tuple[Annotated[Candidate, BeforeValidator(_candidate)], ...], Field(min_length=1)]
    max_latency_s: Duration | None = None
    """Skip candidates whose recent p95 latency is above this."""
    max_cost_usd: Annotated[Decimal, Field(gt=0, le=MAX_CALL_COST_USD, allow_inf_nan=False)] | None = None
    """Skip candidates whose estimated cost for the request is above this."""
    require: tuple[str, ...] = ()
    """Capabilities every chosen model must have, on top of those the request asks for."""
    min_context: Annotated[int, Field(gt=0, le=MAX_CALL_TOKENS)] | None = None
    shadow: bool = False

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, value: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
        models = [c.model for c in value]
        if len(set(models)) != len(models):
            raise ValueError("each candidate may appear once")
        return value

    def describe(self) -> str:
        scope = f" for {self.match.describe()}" if self.match else ""
        shadow = " (shadow)" if self.shadow else ""
        models = ", ".join(c.model for c in self.candidates)
        return f"routing {self.name}: {self.strategy} among {models}{scope}{shadow}"


# --- runtime ----------------------------------------------------------------------------------

_LIST_PRICE_TOKENS = 1000
"""Without token estimates, `cheapest` and `balanced` compare prices for 1k input + 1k output tokens."""


@dataclass(frozen=True, slots=True)
class Route:
    """The model routing chose, and the policy hit that explains it."""

    provider: str
    model: str
    hit: PolicyHit

    @property
    def model_ref(self) -> str:
        """`provider:model`, the form pydantic-ai takes."""
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True, slots=True)
class _Option:
    """A candidate that survived the constraints, with what the strategies rank it on."""

    index: int
    provider: str
    model: str
    capabilities: frozenset[str]
    stat: ModelStat | None
    cost_nanos: int | None
    """For the request's estimated tokens when it gave some, else for 1k input + 1k output tokens."""

    @property
    def ref(self) -> str:
        return f"{self.provider}:{self.model}"


class Router:
    """Chooses the model for a request among the candidates of the first routing policy that matches it.

    Candidates are skipped when `available(provider, model)` says no (the engine's breakers and
    budgets), when they lack a capability the policy or the request requires, when their context
    window is smaller than `max(min_context, request.context_tokens)`, when their recent p95
    latency is above `max_latency_s`, or when their estimated cost is above `max_cost_usd`.
    Missing data never skips: no latency stats yet, an unknown context window or no estimate.

    >>> router = Router(policies.routing, ModelStats(clock), Pricer())  # doctest: +SKIP
    >>> router.route(request, available=lambda provider, model: True).model_ref  # doctest: +SKIP
    'openai:gpt-4.1-mini'
    """

    def __init__(self, policies: tuple[RoutingPolicy, ...], stats: ModelStats, pricer: Pricer) -> None:
        self.policies = policies
        self._stats = stats
        self._pricer = pricer
        self._turns: dict[str, int] = {}
        """Round-robin position per policy name."""
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def with_policies(self, policies: tuple[RoutingPolicy, ...], *, pricer: Pricer | None = None) -> Router:
        """A router for a new policy set (and the reloaded pricer, if given), sharing the stats.

        Round-robin policies that keep their name keep their place in the rotation.
        """
        router = Router(policies, self._stats, pricer or self._pricer)
        names = {policy.name for policy in policies}
        with self._lock:
            router._turns = {name: turn for name, turn in self._turns.items() if name in names}
        return router

    def applies(self, scope: Scope) -> bool:
        """Whether a routing policy matches this scope (`route()` returns `None` when none does)."""
        return any(p.match is None or p.match.matches(scope) for p in self.policies)

    def route(self, request: DecisionRequest, *, available: Callable[[str, str], bool]) -> Route | None:
        """The model to use for this request, or `None` when no routing policy matches it.

        When every candidate is skipped the route keeps the requested model, with a `warn` hit that
        says why each was skipped. A shadow policy's route carries `hit.shadow`; do not apply it.
        """
        scope = request.scope()
        policy = next((p for p in self.policies if p.match is None or p.match.matches(scope)), None)
        if policy is None:
            return None
        needs = tuple(dict.fromkeys((*policy.require, *request.capabilities)))
        min_context = max(policy.min_context or 0, request.context_tokens or 0)
        max_cost = usd_to_nanos(policy.max_cost_usd) if policy.max_cost_usd is not None else None
        wants_stats = policy.max_latency_s is not None or policy.strategy in ("fastest", "most_reliable", "balanced")
        wants_cost = policy.strategy in ("cheapest", "balanced")
        has_tokens = request.estimated_input_tokens is not None or request.estimated_output_tokens is not None

        options: list[_Option] = []
        skipped: list[str] = []
        for index, candidate in enumerate(policy.candidates):
            provider, model = candidate.provider_model
            capabilities = frozenset(candidate.capabilities)
            if not available(provider, model):
                skipped.append(f"{candidate.model} (unavailable)")
                continue
            missing = [need for need in needs if need not in capabilities]
            if missing:
                skipped.append(f"{candidate.model} (lacks {', '.join(missing)})")
                continue
            if min_context:
                window = candidate.context_window or _known_context_window(provider, model)
                if window is not None and window < min_context:
                    skipped.append(f"{candidate.model} (context window {window:,} < {min_context:,} tokens)")
                    continue
            stat = self._stats.get(provider, model) if wants_stats else None
            if policy.max_latency_s is not None and stat is not None and stat.latency_p95_s > policy.max_latency_s:
                skipped.append(f"{candidate.model} (p95 latency {stat.latency_p95_s:g}s > {policy.max_latency_s:g}s)")
                continue
            estimate = self._estimate(request, provider, model) if max_cost is not None or has_tokens else None
            if max_cost is not None and estimate is not None and estimate > max_cost:
                over = format_usd(nanos_to_usd(estimate), trim=True, dollar=True)
                cap = format_usd(nanos_to_usd(max_cost), trim=True, dollar=True)
                skipped.append(f"{candidate.model} (estimated {over} > {cap})")
                continue
            cost = None
            if wants_cost:
                cost = estimate if has_tokens else self._list_price(provider, model)
            options.append(_Option(index, provider, model, capabilities, stat, cost))

        skips = f"; skipped {', '.join(skipped)}" if skipped else ""
        if not options:
            requested = f"{request.provider}:{request.model}"
            return Route(
                request.provider,
                request.model,
                PolicyHit(
                    kind="routing",
                    policy=policy.name,
                    action=Action.WARN,
                    message=f"routing {policy.name}: every candidate skipped: {', '.join(skipped)}; "
                    f"keeping {requested}",
                    severity=Severity.WARNING,
                    shadow=policy.shadow,
                    model=requested,
                ),
            )
        chosen, why = self._choose(policy, options, needs, has_tokens)
        return Route(
            chosen.provider,
            chosen.model,
            PolicyHit(
                kind="routing",
                policy=policy.name,
                action=Action.ALLOW,
                message=f"routing {policy.name}: {policy.strategy} chose {chosen.ref} ({why}){skips}",
                shadow=policy.shadow,
                model=chosen.ref,
            ),
        )

    # --- strategies ---------------------------------------------------------------------------

    def _choose(
        self, policy: RoutingPolicy, options: list[_Option], needs: tuple[str, ...], has_tokens: bool
    ) -> tuple[_Option, str]:
        strategy = policy.strategy
        if strategy == "cheapest":
            chosen = min(options, key=lambda o: (o.cost_nanos is None, o.cost_nanos or 0, o.index))
            return chosen, _cost_text(chosen.cost_nanos, has_tokens)
        if strategy == "fastest":
            chosen = min(options, key=lambda o: (o.stat is None, o.stat.latency_p95_s if o.stat else 0.0, o.index))
            return chosen, f"p95 {chosen.stat.latency_p95_s:g}s" if chosen.stat else "no latency data yet"
        if strategy == "most_reliable":
            chosen = min(options, key=lambda o: (-(o.stat.success_rate if o.stat else 1.0), o.stat is None, o.index))
            stat = chosen.stat
            return chosen, f"{stat.success_rate:.1%} success over {stat.requests} requests" if stat else "no data yet"
        if strategy == "round_robin":
            with self._lock:
                turn = self._turns.get(policy.name, 0)
                self._turns[policy.name] = turn + 1
            position = turn % len(options)
            return options[position], f"turn {position + 1} of {len(options)}"
        return _balanced(policy.weights, options, needs)

    def _estimate(self, request: DecisionRequest, provider: str, model: str) -> int | None:
        """Nano-USD this request would cost on this model, or `None` when there is no estimate."""
        if request.estimated_input_tokens is not None or request.estimated_output_tokens is not None:
            return self._pricer.price_usage(
                provider,
                model,
                input_tokens=request.estimated_input_tokens or 0,
                output_tokens=request.estimated_output_tokens or 0,
            ).nanos
        if request.estimated_cost_usd is not None and (provider, model) == (request.provider, request.model):
            return usd_to_nanos(request.estimated_cost_usd)
        return None

    def _list_price(self, provider: str, model: str) -> int | None:
        return self._pricer.price_usage(
            provider, model, input_tokens=_LIST_PRICE_TOKENS, output_tokens=_LIST_PRICE_TOKENS
        ).nanos


def _balanced(weights: Weights, options: list[_Option], needs: tuple[str, ...]) -> tuple[_Option, str]:
    """Each of cost, speed, reliability and capability scored in [0, 1] (1 is best), weighted and summed.

    Cost and speed score `best / value` among the options (half as cheap scores 0.5), and 0 when
    unknown (unpriced, no latency data); reliability is the success rate (1 with no data yet);
    capability is the share of the candidate's capabilities the request needs (1 when it needs none),
    so a model is not spent on a request that uses little of what it can do.
    """
    costs = [o.cost_nanos for o in options if o.cost_nanos is not None]
    latencies = [o.stat.latency_p95_s for o in options if o.stat is not None]
    best_cost = min(costs, default=0)
    best_latency = min(latencies, default=0.0)
    scored: list[tuple[float, int, _Option, str]] = []
    for option in options:
        cost = _relative(best_cost, option.cost_nanos)
        speed = _relative(best_latency, option.stat.latency_p95_s if option.stat else None)
        reliability = option.stat.success_rate if option.stat else 1.0
        capability = (
            sum(1 for need in needs if need in option.capabilities) / len(option.capabilities) if needs else 1.0
        )
        score = (
            weights.cost * cost
            + weights.speed * speed
            + weights.reliability * reliability
            + weights.capability * capability
        )
        detail = (
            f"score {score:.3f}: cost {cost:.2f}, speed {speed:.2f}, "
            f"reliability {reliability:.2f}, capability {capability:.2f}"
        )
        scored.append((-score, option.index, option, detail))
    _, _, chosen, detail = min(scored, key=lambda item: (item[0], item[1]))
    return chosen, detail


def _relative(best: float, value: float | None) -> float:
    """1 for the best (lowest) value, best/value for the others, 0 when unknown."""
    if value is None:
        return 0.0
    if value <= best:
        return 1.0
    return best / value


def _cost_text(nanos: int | None, has_tokens: bool) -> str:
    if nanos is None:
        return "no price known"
    usd = format_usd(nanos_to_usd(nanos), trim=True, dollar=True)
    if has_tokens:
        return f"estimated {usd} for this request"
    return f"{usd} per 1k input + 1k output tokens"


@lru_cache(maxsize=4096)
def _known_context_window(provider: str, model: str) -> int | None:
    """genai-prices' context window for this provider's model; `None` when it does not know."""
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    window = info.context_window
    return window if isinstance(window, int) else None
