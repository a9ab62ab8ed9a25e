"""`decide()` in-process with 50 policies, against a yardstick measured in the same run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from genai_prices import Usage, calc_price

from bench._harness import Result, percentile
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import parse_policy_text
from otel_puppy.testing import engine_for_tests, make_call

AGENTS = ("support", "research", "billing", "triage", "summarizer")


def policy_yaml() -> str:
    """50 policies: 38 budgets, 5 breakers, 5 anomalies, 2 routing; a request matches about 8."""
    lines = ["budgets:"]
    lines += [f"  - {{name: org-{w}, limit_usd: 100000, window: {w}}}" for w in ("hour", "day", "month", "24h")]
    lines += [f"  - {{name: per-{w}, per: [agent], limit_usd: 10000, window: {w}}}" for w in ("day", "1h")]
    lines += ["  - {name: per-user, per: [user], limit_usd: 5000, window: day, reserve: {critical: 0.1}}"]
    lines += ["  - {name: tokens-user, per: [user], limit_tokens: 100000000, window: month, shadow: true}"]
    for i in range(30):
        agent = AGENTS[i % len(AGENTS)]
        lines.append(f"  - {{name: team-{i}, match: {{agent: {agent}, team: team-{i}}}, limit_usd: 100, window: day}}")
    lines.append("breakers:")
    lines += [
        f"  - {{name: b-{p}, match: {{provider: {p}}}}}" for p in ("openai", "anthropic", "google", "x-ai", "aws")
    ]
    lines.append("anomalies:")
    for i, signal in enumerate(("cost_rate", "token_rate", "request_rate", "error_rate", "latency_p95")):
        lines.append(f"  - {{name: a-{i}, signal: {signal}, per: [provider]}}")
    lines.append("routing:")
    lines.append("  - {name: r-batch, match: {agent: batch}, strategy: cheapest, candidates: [openai:gpt-4.1-mini]}")
    lines.append("  - {name: r-bulk, match: {agent: bulk}, strategy: fastest, candidates: [openai:gpt-4.1]}")
    return "\n".join(lines) + "\n"


def run() -> list[Result]:
    policies = parse_policy_text(policy_yaml(), Path("bench.yaml"))
    count = sum(len(getattr(policies, kind)) for kind in ("budgets", "breakers", "anomalies", "routing"))
    assert count == 50, count
    engine = engine_for_tests(policies, raise_internal_errors=False)
    requests = [
        {
            "provider": "openai",
            "model": "gpt-4.1",
            "agent": AGENTS[i % len(AGENTS)],
            "user": f"user-{i % 200}",
            "team": f"team-{i % 30}",
            "estimated_cost_usd": "0.002",
        }
        for i in range(1000)
    ]
    for request in requests:  # warm the scope caches, as a running service is
        engine.decide(**request)
    median, p99 = _timed(engine, requests)
    matched = len(engine.decide(**requests[0]).reasons) + len(engine.decide(**requests[0]).shadow)
    engine.close()
    # Learned estimates, on an engine of its own (the same state as the first one had when timed): 30
    # calls of each agent seen, then half the requests carry no estimate.
    engine = engine_for_tests(policies, raise_internal_errors=False)
    engine.observe_many(
        [
            make_call(end_s=engine.clock.now(), agent=agent, input_tokens=1000 + 100 * i, output_tokens=100)
            for agent in AGENTS
            for i in range(30)
        ]
    )
    mixed = [request if i % 2 else _without_estimate(request) for i, request in enumerate(requests)]
    learned = engine.decide(**mixed[0])
    assert learned.estimate_source == "learned", learned
    for request in mixed:
        engine.decide(**request)
    learned_median, learned_p99 = _timed(engine, mixed)
    engine.close()

    clock = time.perf_counter_ns
    usage = Usage(input_tokens=1000, output_tokens=100)
    yard: list[float] = []
    for _ in range(300):
        start = clock()
        calc_price(usage, "gpt-4.1", provider_id="openai")
        yard.append(clock() - start)
    yardstick = statistics.median(yard) / 1000
    return [
        Result(
            name="decide(), 50 policies, in-process",
            ours=f"median {median:.1f} us, p99 {p99:.1f} us",
            baseline=f"one calc_price {yardstick:.1f} us",
            ratio=median / yardstick,
            ratio_text=f"{median / yardstick:.2f}x of a calc_price",
            target="median < 20 us",
            met=median < 20,
            note=f"{matched} policies match each request; every decision reserves its estimate",
        ),
        Result(
            name="decide(), 50 policies, half the requests without an estimate (learned)",
            ours=f"median {learned_median:.1f} us, p99 {learned_p99:.1f} us",
            baseline=f"one calc_price {yardstick:.1f} us",
            ratio=learned_median / yardstick,
            ratio_text=f"{learned_median / yardstick:.2f}x of a calc_price",
            target="median < 20 us",
            met=learned_median < 20,
            note="learned estimates on (the default), 30 calls of each agent seen: every other decision reserves "
            "the learned p95 of its agent's calls",
        ),
    ]


def _timed(engine: PolicyEngine, requests: list[dict[str, str]]) -> tuple[float, float]:
    """Median and p99 of `decide()` over ten passes of `requests`, in microseconds."""
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(10):
        for request in requests:
            start = clock()
            engine.decide(**request)
            samples.append(clock() - start)
    return statistics.median(samples) / 1000, percentile(samples, 0.99) / 1000


def _without_estimate(request: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in request.items() if key != "estimated_cost_usd"}


if __name__ == "__main__":
    for result in run():
        print(result)
