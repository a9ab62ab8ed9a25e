"""Pricing: `Pricer.price` against a plain `genai_prices.calc_price` call, identical results."""

from __future__ import annotations

import itertools
import random
import time

from genai_prices import Usage, calc_price

from bench._harness import Result
from otel_puppy.calls import LLMCall
from otel_puppy.pricing import Pricer

MODELS = (
    ("openai", "gpt-4.1"),
    ("openai", "gpt-4o-2024-08-06"),
    ("openai", "gpt-4.1-mini"),
    ("anthropic", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-flash"),
)
CALLS = 3_000


def _workload() -> list[LLMCall]:
    rng = random.Random(11)
    calls = []
    for i in range(CALLS):
        provider, model = MODELS[i % len(MODELS)]
        input_tokens = rng.randint(200, 30_000)
        cache_read = rng.choice((0, input_tokens // 2))
        calls.append(
            LLMCall(
                trace_id=i + 1,
                span_id=i + 1,
                parent_span_id=0,
                provider=provider,
                request_model=model,
                response_model=model,
                operation="chat",
                start_ns=1_767_225_600_000_000_000 + i * 1_000_000,
                end_ns=1_767_225_601_000_000_000 + i * 1_000_000,
                input_tokens=input_tokens,
                output_tokens=rng.randint(10, 2_000),
                cache_read_tokens=cache_read,
                has_usage=True,
            )
        )
    return calls


def _reference(call: LLMCall) -> object:
    usage = Usage(
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        **({"cache_read_tokens": call.cache_read_tokens} if call.cache_read_tokens else {}),
    )
    return calc_price(usage, call.model, provider_id=call.provider).total_price


def run() -> list[Result]:
    calls = _workload()
    pricer = Pricer()
    mismatches = sum(1 for call in calls if pricer.price(call).exact_usd != _reference(call))

    def timed(fn: object, items: list[LLMCall]) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter_ns()
            for call in items:
                fn(call)  # type: ignore[operator]
            best = min(best, (time.perf_counter_ns() - start) / len(items))
        return best

    ours = timed(pricer.price, list(itertools.islice(itertools.cycle(calls), 5 * CALLS)))
    theirs = timed(_reference, calls)
    speedup = theirs / ours
    return [
        Result(
            name="pricing a call",
            ours=f"Pricer.price {ours / 1000:.2f} us",
            baseline=f"calc_price {theirs / 1000:.1f} us",
            ratio=speedup,
            ratio_text=f"{speedup:.1f}x faster",
            target=">= 20x faster, identical",
            met=speedup >= 20 and mismatches == 0,
            note=f"{mismatches} of {len(calls)} results differ from calc_price",
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
