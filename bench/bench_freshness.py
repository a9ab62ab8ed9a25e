"""Freshness: how soon after a span ends its spend is visible to `decide()`, in-process.

Real time, the real span processor and worker thread: a span ends (its `on_end` is called), and
this thread asks `decide()` until the budget the span counts against shows its spend. The
yardstick, measured in the same run, is the floor of any hand-off to another thread: from
`Event.set()` here to the waiting thread running.
"""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal
from pathlib import Path

from bench._harness import Result, finished_spans, percentile
from bench.bench_on_end import GENAI
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import parse_policy_text
from otel_puppy.settings import PuppySettings

SPANS = 500
POLL_S = 0.0002
"""How often `decide()` is asked while waiting: the figures are this precise."""
TARGET_MS = 50.0
POLICY = "budgets:\n  - {name: per-agent, per: [agent], limit_usd: 1000000, window: day}\n"


def _spent(engine: PolicyEngine, agent: str) -> Decimal:
    decision = engine.decide(provider="openai", model="gpt-4.1", agent=agent)  # no estimate: reserves nothing
    return next(hit.spent_usd or Decimal(0) for hit in decision.reasons if hit.policy == "per-agent")


def _visible_after(engine: PolicyEngine, rng: random.Random) -> list[float]:
    """Seconds from each span's `on_end` to `decide()` showing its spend."""
    processor = engine.span_processor()
    lags: list[float] = []
    spans = finished_spans({**GENAI, "gen_ai.agent.name": "fresh"}, SPANS, first_id=10**9)
    before = _spent(engine, "fresh")
    for span in spans:
        time.sleep(rng.uniform(0.0005, 0.005))  # the worker is idle, as between an application's calls
        ended = time.perf_counter()
        processor.on_end(span)
        while (spent := _spent(engine, "fresh")) == before:
            time.sleep(POLL_S)
        lags.append(time.perf_counter() - ended)
        before = spent
    return lags


def _hand_off(rng: random.Random, count: int = SPANS) -> list[float]:
    """Seconds from `Event.set()` to the waiting thread running, `count` times."""
    wake, woke = threading.Event(), threading.Event()
    lags: list[float] = []
    stamp = [0.0]

    def waiter() -> None:
        for _ in range(count):
            wake.wait()
            wake.clear()
            lags.append(time.perf_counter() - stamp[0])
            woke.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    for _ in range(count):
        time.sleep(rng.uniform(0.0005, 0.005))
        stamp[0] = time.perf_counter()
        wake.set()
        woke.wait()
        woke.clear()
    thread.join()
    return lags


def run() -> list[Result]:
    rng = random.Random(50)
    policies = parse_policy_text(POLICY, Path("bench.yaml"))
    settings = PuppySettings.load(store="memory://", raise_internal_errors=False, watch_policies_s=None)
    engine = PolicyEngine(settings, policies=policies)
    try:
        lags = _visible_after(engine, rng)
    finally:
        engine.close()
    floor = _hand_off(rng)
    p99, floor_p99 = percentile(lags, 0.99) * 1000, percentile(floor, 0.99) * 1000
    return [
        Result(
            name="freshness: span end to visible in decide(), in-process",
            ours=f"p99 {p99:.2f} ms (median {percentile(lags, 0.5) * 1000:.2f} ms, max {max(lags) * 1000:.1f} ms)",
            baseline=f"thread hand-off p99 {floor_p99:.3f} ms (median {percentile(floor, 0.5) * 1000:.3f} ms)",
            ratio=p99 / floor_p99,
            ratio_text=f"{p99 / floor_p99:.1f}x a hand-off",
            target=f"p99 <= {TARGET_MS:g} ms",
            met=p99 <= TARGET_MS,
            note=f"{SPANS} GenAI spans ended 0.5-5 ms apart on the real clock; decide() asked every "
            f"{POLL_S * 1e6:.0f} us until the span's per-agent budget showed its spend",
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
