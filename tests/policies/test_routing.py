from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from otel_puppy.calls import ErrorClass
from otel_puppy.decision import Action, DecisionRequest, PolicyHit, Severity
from otel_puppy.model_stats import ModelStats
from otel_puppy.policies.routing import Route, Router, RoutingPolicy
from otel_puppy.pricing import PriceOverride, Pricer
from otel_puppy.testing import FakeClock, make_call

GPT41, MINI, SONNET = "openai:gpt-4.1", "openai:gpt-4.1-mini", "anthropic:claude-sonnet-4-5"
PRICER = Pricer()


def policy(**fields: Any) -> RoutingPolicy:
    return RoutingPolicy.model_validate({"name": "default", "candidates": [GPT41, MINI, SONNET], **fields})


def request(provider: str = "openai", model: str = "gpt-4.1", **fields: Any) -> DecisionRequest:
    return DecisionRequest(provider=provider, model=model, **fields)


def everything(provider: str, model: str) -> bool:
    return True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stats(clock: FakeClock) -> ModelStats:
    return ModelStats(clock)


def feed(stats: ModelStats, clock: FakeClock, ref: str, latencies_ms: list[int], errors: int = 0) -> None:
    """Calls to `ref` with these latencies; the first `errors` of them failed."""
    provider, _, model = ref.partition(":")
    stats.observe(
        [
            (
                make_call(
                    end_s=clock.now(),
                    provider=provider,
                    model=model,
                    input_tokens=100,
                    output_tokens=10,
                    error=ErrorClass.SERVER_ERROR if i < errors else None,
                    duration_s=ms / 1000,
                ),
                1000,
            )
            for i, ms in enumerate(latencies_ms)
        ]
    )


def route(
    stats: ModelStats, *policies: RoutingPolicy, req: DecisionRequest | None = None, available: Any = everything
) -> Route:
    found = Router(policies, stats, PRICER).route(req or request(), available=available)
    assert found is not None
    return found


def test_route_hit_describes_the_choice(stats: ModelStats) -> None:
    found = route(stats, policy(strategy="cheapest"))
    assert found == Route(
        "openai",
        "gpt-4.1-mini",
        PolicyHit(
            kind="routing",
            policy="default",
            action=Action.ALLOW,
            message="routing default: cheapest chose openai:gpt-4.1-mini ($0.002 per 1k input + 1k output tokens)",
            model="openai:gpt-4.1-mini",
        ),
    )
    assert found.model_ref == "openai:gpt-4.1-mini"
    assert found.hit.severity is Severity.INFO
    assert not found.hit.shadow


# --- strategies -------------------------------------------------------------------------------


def test_cheapest_uses_the_requests_token_estimate(stats: ModelStats) -> None:
    found = route(
        stats, policy(strategy="cheapest"), req=request(estimated_input_tokens=10_000, estimated_output_tokens=1000)
    )
    assert found.hit.message == (
        "routing default: cheapest chose openai:gpt-4.1-mini (estimated $0.0056 for this request)"
    )


def test_cheapest_ranks_unpriced_candidates_last(stats: ModelStats) -> None:
    found = route(stats, policy(strategy="cheapest", candidates=["self-hosted:llama", SONNET, GPT41]))
    assert found.hit.message == "routing default: cheapest chose openai:gpt-4.1 ($0.01 per 1k input + 1k output tokens)"
    only_unpriced = route(stats, policy(strategy="cheapest", candidates=["self-hosted:llama", "self-hosted:qwen"]))
    assert only_unpriced.hit.message == "routing default: cheapest chose self-hosted:llama (no price known)"


def test_fastest_picks_lowest_p95(clock: FakeClock, stats: ModelStats) -> None:
    feed(stats, clock, GPT41, [500, 2000])
    feed(stats, clock, MINI, [400, 500])
    found = route(stats, policy(strategy="fastest", candidates=[SONNET, GPT41, MINI]))
    assert found.hit.message == "routing default: fastest chose openai:gpt-4.1-mini (p95 0.5s)"


def test_fastest_without_stats_keeps_candidate_order(stats: ModelStats) -> None:
    found = route(stats, policy(strategy="fastest", candidates=[SONNET, GPT41]))
    assert found.hit.message == "routing default: fastest chose anthropic:claude-sonnet-4-5 (no latency data yet)"


def test_most_reliable_prefers_highest_success_rate(clock: FakeClock, stats: ModelStats) -> None:
    feed(stats, clock, GPT41, [100] * 10, errors=1)
    feed(stats, clock, SONNET, [100] * 10)
    found = route(stats, policy(strategy="most_reliable"))
    assert (
        found.hit.message
        == "routing default: most_reliable chose anthropic:claude-sonnet-4-5 (100.0% success over 10 requests)"
    )


def test_most_reliable_counts_no_stats_as_perfect_but_after_proven(clock: FakeClock, stats: ModelStats) -> None:
    feed(stats, clock, GPT41, [100] * 8, errors=1)
    found = route(stats, policy(strategy="most_reliable", candidates=[GPT41, MINI]))
    assert found.hit.message == "routing default: most_reliable chose openai:gpt-4.1-mini (no data yet)"
    feed(stats, clock, SONNET, [100] * 3)
    found = route(stats, policy(strategy="most_reliable", candidates=[GPT41, MINI, SONNET]))
    assert (
        found.hit.message
        == "routing default: most_reliable chose anthropic:claude-sonnet-4-5 (100.0% success over 3 requests)"
    )


def test_balanced_weighs_normalized_scores(clock: FakeClock, stats: ModelStats) -> None:
    # gpt-4.1: $0.01/1k+1k, p95 1 s, 100%; mini: $0.002, p95 4 s, 50%; sonnet: $0.018, no stats.
    feed(stats, clock, GPT41, [1000, 1000])
    feed(stats, clock, MINI, [4000, 4000], errors=1)
    found = route(stats, policy(strategy="balanced"))
    assert found.hit.message == (
        "routing default: balanced chose openai:gpt-4.1 "
        "(score 0.800: cost 0.20, speed 1.00, reliability 1.00, capability 1.00)"
    )
    cost_only = route(
        stats, policy(strategy="balanced", weights={"cost": 1, "speed": 0, "reliability": 0, "capability": 0})
    )
    assert cost_only.hit.message == (
        "routing default: balanced chose openai:gpt-4.1-mini "
        "(score 1.000: cost 1.00, speed 0.25, reliability 0.50, capability 1.00)"
    )


def test_balanced_capability_prefers_models_that_fit_the_request(stats: ModelStats) -> None:
    candidates = [
        {"model": GPT41, "capabilities": ["tools", "vision", "json"]},
        {"model": SONNET, "capabilities": ["tools"]},
    ]
    weights = {"cost": 0, "speed": 0, "reliability": 0, "capability": 1}
    found = route(stats, policy(candidates=candidates, weights=weights), req=request(capabilities=("tools",)))
    assert found.hit.message == (
        "routing default: balanced chose anthropic:claude-sonnet-4-5 "
        "(score 1.000: cost 0.56, speed 0.00, reliability 1.00, capability 1.00)"
    )
    # Nothing asked for: every candidate fits; the tie goes to candidate order.
    found = route(stats, policy(candidates=candidates, weights=weights))
    assert found.model_ref == GPT41


def test_round_robin_rotates_over_available_candidates(stats: ModelStats) -> None:
    router = Router((policy(strategy="round_robin"),), stats, PRICER)
    picks = []
    for _ in range(4):
        found = router.route(request(), available=everything)
        assert found is not None
        picks.append(found.model_ref)
    assert picks == [GPT41, MINI, SONNET, GPT41]
    found = router.route(request(), available=lambda provider, model: model != "gpt-4.1-mini")
    assert found is not None
    assert found.hit.message == (
        "routing default: round_robin chose openai:gpt-4.1 (turn 1 of 2); skipped openai:gpt-4.1-mini (unavailable)"
    )


def test_with_policies_keeps_the_rotation_and_takes_a_new_pricer(stats: ModelStats) -> None:
    router = Router((policy(strategy="round_robin"),), stats, PRICER)
    router.route(request(), available=everything)
    reloaded = router.with_policies((policy(strategy="round_robin"),))
    found = reloaded.route(request(), available=everything)
    assert found is not None
    assert found.model_ref == MINI

    cheap = [PriceOverride("self-hosted", "llama", Decimal("0.1"), Decimal("0.1"))]
    candidates = [MINI, "self-hosted:llama"]
    repriced = router.with_policies((policy(strategy="cheapest", candidates=candidates),), pricer=Pricer(cheap))
    found = repriced.route(request(), available=everything)
    assert found is not None
    assert found.hit.message == (
        "routing default: cheapest chose self-hosted:llama ($0.0002 per 1k input + 1k output tokens)"
    )


# --- constraints ------------------------------------------------------------------------------


def test_unavailable_candidates_are_skipped(stats: ModelStats) -> None:
    found = route(stats, policy(strategy="cheapest"), available=lambda provider, model: provider != "openai")
    assert found.hit.message == (
        "routing default: cheapest chose anthropic:claude-sonnet-4-5 ($0.018 per 1k input + 1k output tokens); "
        "skipped openai:gpt-4.1 (unavailable), openai:gpt-4.1-mini (unavailable)"
    )


def test_capabilities_from_request_and_policy(stats: ModelStats) -> None:
    candidates = [
        {"model": GPT41, "capabilities": ["tools", "vision"]},
        {"model": MINI, "capabilities": ["tools"]},
    ]
    found = route(stats, policy(strategy="cheapest", candidates=candidates), req=request(capabilities=("vision",)))
    assert found.hit.message == (
        "routing default: cheapest chose openai:gpt-4.1 ($0.01 per 1k input + 1k output tokens); "
        "skipped openai:gpt-4.1-mini (lacks vision)"
    )
    strict = policy(strategy="cheapest", candidates=candidates, require=["json"])
    found = route(stats, strict, req=request(capabilities=("vision",)))
    assert found.hit.message == (
        "routing default: every candidate skipped: openai:gpt-4.1 (lacks json), "
        "openai:gpt-4.1-mini (lacks json, vision); keeping openai:gpt-4.1"
    )


def test_context_window_from_genai_prices(stats: ModelStats) -> None:
    # genai-prices: gpt-4o 128,000 tokens, gpt-4.1 1,000,000.
    candidates = ["openai:gpt-4o", GPT41]
    found = route(stats, policy(strategy="fastest", candidates=candidates), req=request(context_tokens=200_000))
    assert found.hit.message == (
        "routing default: fastest chose openai:gpt-4.1 (no latency data yet); "
        "skipped openai:gpt-4o (context window 128,000 < 200,000 tokens)"
    )
    assert (
        route(stats, policy(strategy="fastest", candidates=candidates), req=request(context_tokens=1_000_000)).model_ref
        == GPT41
    )
    found = route(stats, policy(strategy="fastest", candidates=candidates), req=request(context_tokens=1_000_001))
    assert found.hit.message == (
        "routing default: every candidate skipped: openai:gpt-4o (context window 128,000 < 1,000,001 tokens), "
        "openai:gpt-4.1 (context window 1,000,000 < 1,000,001 tokens); keeping openai:gpt-4.1"
    )


def test_context_window_from_policy(stats: ModelStats) -> None:
    found = route(stats, policy(strategy="fastest", candidates=["openai:gpt-4o", GPT41], min_context=150_000))
    assert found.model_ref == GPT41
    assert "skipped openai:gpt-4o (context window 128,000 < 150,000 tokens)" in found.hit.message
    declared = [{"model": "openai:gpt-4o", "context_window": 300_000}, "self-hosted:llama"]
    found = route(stats, policy(strategy="fastest", candidates=declared, min_context=150_000))
    assert found.model_ref == "openai:gpt-4o"
    unknown = route(stats, policy(strategy="fastest", candidates=["self-hosted:llama"], min_context=10**7))
    assert unknown.hit.message == "routing default: fastest chose self-hosted:llama (no latency data yet)"


def test_max_latency_skips_slow_candidates_with_stats(clock: FakeClock, stats: ModelStats) -> None:
    feed(stats, clock, GPT41, [1000, 3000])
    feed(stats, clock, MINI, [2000, 2000])
    found = route(stats, policy(strategy="fastest", candidates=[GPT41, SONNET, MINI], max_latency_s="2s"))
    assert found.hit.message == (
        "routing default: fastest chose openai:gpt-4.1-mini (p95 2s); skipped openai:gpt-4.1 (p95 latency 3s > 2s)"
    )
    found = route(stats, policy(strategy="cheapest", candidates=[GPT41, SONNET], max_latency_s="2s"))
    assert found.hit.message == (
        "routing default: cheapest chose anthropic:claude-sonnet-4-5 ($0.018 per 1k input + 1k output tokens); "
        "skipped openai:gpt-4.1 (p95 latency 3s > 2s)"
    )


def test_max_cost_skips_candidates_estimated_above(stats: ModelStats) -> None:
    capped = policy(strategy="fastest", max_cost_usd="0.01")
    found = route(stats, capped, req=request(estimated_input_tokens=10_000, estimated_output_tokens=1000))
    assert found.hit.message == (
        "routing default: fastest chose openai:gpt-4.1-mini (no latency data yet); "
        "skipped openai:gpt-4.1 (estimated $0.028 > $0.01), anthropic:claude-sonnet-4-5 (estimated $0.045 > $0.01)"
    )
    assert route(stats, capped).model_ref == GPT41  # no estimate: nothing skipped
    found = route(stats, capped, req=request(estimated_cost_usd=Decimal("0.05")))  # an estimate for gpt-4.1 only
    assert found.hit.message == (
        "routing default: fastest chose openai:gpt-4.1-mini (no latency data yet); "
        "skipped openai:gpt-4.1 (estimated $0.05 > $0.01)"
    )


def test_all_skipped_keeps_requested_model_with_a_warning(stats: ModelStats) -> None:
    found = route(
        stats, policy(strategy="cheapest"), req=request("azure", "gpt-4o"), available=lambda provider, model: False
    )
    assert found == Route(
        "azure",
        "gpt-4o",
        PolicyHit(
            kind="routing",
            policy="default",
            action=Action.WARN,
            message="routing default: every candidate skipped: openai:gpt-4.1 (unavailable), "
            "openai:gpt-4.1-mini (unavailable), anthropic:claude-sonnet-4-5 (unavailable); keeping azure:gpt-4o",
            severity=Severity.WARNING,
            model="azure:gpt-4o",
        ),
    )


# --- which policy -----------------------------------------------------------------------------


def test_first_matching_policy_wins(stats: ModelStats) -> None:
    policies = (
        policy(name="gpt5", match={"model": "gpt-5*"}, strategy="cheapest", candidates=[GPT41]),
        policy(name="openai", match={"provider": "openai"}, strategy="cheapest", candidates=[MINI]),
        policy(name="rest", strategy="cheapest", candidates=[SONNET]),
        policy(name="never", strategy="cheapest", candidates=[GPT41]),
    )
    router = Router(policies, stats, PRICER)
    picks = {}
    for provider, model in (("openai", "gpt-5-mini"), ("openai", "gpt-4.1"), ("anthropic", "claude-opus-4")):
        found = router.route(request(provider, model), available=everything)
        assert found is not None
        picks[model] = (found.hit.policy, found.model_ref)
    assert picks == {
        "gpt-5-mini": ("gpt5", GPT41),
        "gpt-4.1": ("openai", MINI),
        "claude-opus-4": ("rest", SONNET),
    }


def test_no_matching_policy_gives_none(stats: ModelStats) -> None:
    router = Router((policy(match={"agent": "support"}),), stats, PRICER)
    assert router.route(request(), available=everything) is None
    assert router.route(request(agent="support"), available=everything) is not None
    assert Router((), stats, PRICER).route(request(), available=everything) is None


def test_shadow_policy_route_is_flagged(stats: ModelStats) -> None:
    found = route(stats, policy(strategy="cheapest", shadow=True))
    assert (found.model_ref, found.hit.shadow, found.hit.action) == (MINI, True, Action.ALLOW)
    skipped = route(stats, policy(strategy="cheapest", shadow=True), available=lambda provider, model: False)
    assert (skipped.model_ref, skipped.hit.shadow, skipped.hit.action) == (GPT41, True, Action.WARN)
