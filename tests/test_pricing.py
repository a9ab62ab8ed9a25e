"""Pricer: identical to genai-prices, memoized, with overrides and unpriced reasons."""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price, data_snapshot
from genai_prices.types import StartDateConstraint

from otel_puppy import pricing
from otel_puppy.calls import LLMCall, extract_call
from otel_puppy.money import usd_to_nanos
from otel_puppy.pricing import Price, PriceOverride, Pricer, Unpriced
from otel_puppy.testing import make_call, make_span


def _every_model() -> Iterator[tuple[Any, Any]]:
    """Every (provider, model) genai-prices knows, with its warnings (deprecated models) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for provider in data_snapshot.get_snapshot().providers:
            for model in provider.models:
                yield provider, model


def test_matches_calc_price_for_every_model_genai_prices_knows() -> None:
    pricer = Pricer()
    rng = random.Random(3)
    checked = 0
    for provider, model in _every_model():
        for input_tokens in (0, 1, 1_000, 150_000, 250_000, 1_500_000):
            cache_read = rng.randint(0, input_tokens // 2)
            cache_write = rng.randint(0, (input_tokens - cache_read) // 2)
            output = rng.randint(0, 5_000)
            reasoning = rng.randint(0, output)
            usage = {
                "input_tokens": input_tokens,
                "output_tokens": output,
                "cache_read_tokens": cache_read,
                "cache_write_tokens": cache_write,
                "output_reasoning_tokens": reasoning,
            }
            try:
                expected = calc_price(
                    Usage(**{k: v for k, v in usage.items() if v}), model.id, provider_id=provider.id
                ).total_price
            except (ValueError, LookupError):
                continue  # genai-prices itself refuses this usage for this model
            got = pricer.price_usage(
                provider.id,
                model.id,
                input_tokens=input_tokens,
                output_tokens=output,
                cache_read_tokens=cache_read,
                cache_write_tokens=cache_write,
                reasoning_tokens=reasoning,
            )
            assert got.exact_usd == expected, (provider.id, model.id, usage)
            assert got.nanos == usd_to_nanos(expected)
            checked += 1
    assert checked > 10_000


def test_tiered_price_crosses_its_threshold() -> None:
    pricer = Pricer()
    below = pricer.price_usage("anthropic", "claude-sonnet-4-5", input_tokens=200_000, output_tokens=1000)
    above = pricer.price_usage("anthropic", "claude-sonnet-4-5", input_tokens=200_001, output_tokens=1000)
    assert (
        below.exact_usd
        == calc_price(
            Usage(input_tokens=200_000, output_tokens=1000), "claude-sonnet-4-5", provider_id="anthropic"
        ).total_price
    )
    assert (
        above.exact_usd
        == calc_price(
            Usage(input_tokens=200_001, output_tokens=1000), "claude-sonnet-4-5", provider_id="anthropic"
        ).total_price
    )
    assert above.exact_usd is not None
    assert below.exact_usd is not None
    assert above.exact_usd > below.exact_usd * Decimal("1.9")  # the long-context tier applies to every token


def test_dated_price_uses_the_price_in_force_at_the_call() -> None:
    snapshot = data_snapshot.get_snapshot()
    dated = [
        (p.id, m)
        for p in snapshot.providers
        for m in p.models
        if isinstance(m.prices, list) and any(isinstance(c.constraint, StartDateConstraint) for c in m.prices)
    ]
    assert dated, "genai-prices has no dated prices any more"
    provider, model = dated[0]
    assert isinstance(model.prices, list)
    starts = [c.constraint.start_date for c in model.prices if isinstance(c.constraint, StartDateConstraint)]
    pricer = Pricer()
    for start in starts:
        for at in (
            datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() - 1,
            datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp(),
        ):
            when = datetime.fromtimestamp(at, UTC)
            expected = calc_price(
                Usage(input_tokens=10_000, output_tokens=1_000),
                model.id,
                provider_id=provider,
                genai_request_timestamp=when,
            ).total_price
            got = pricer.price_usage(provider, model.id, input_tokens=10_000, output_tokens=1_000, at=at)
            assert got.exact_usd == expected


def test_unknown_model_is_unpriced_never_zero() -> None:
    price = Pricer().price_usage("self-hosted", "llama-3.1-70b-custom", input_tokens=10, output_tokens=10)
    assert price == Price(nanos=None, unpriced_reason=Unpriced.UNKNOWN_MODEL)
    assert not price.priced


def test_override_prices_a_model_genai_prices_does_not_know() -> None:
    pricer = Pricer([PriceOverride("self-hosted", "llama-3.1-70b", Decimal("0.6"), Decimal("0.8"))])
    price = pricer.price_usage("self-hosted", "llama-3.1-70b", input_tokens=1_000_000, output_tokens=500_000)
    assert price.exact_usd == Decimal("1.0")
    assert (price.nanos, price.source) == (1_000_000_000, "override")


def test_invalid_usage_is_unpriced() -> None:
    span = make_span(
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": -1,
            "gen_ai.usage.output_tokens": 3,
        }
    )
    c = extract_call(span)
    assert c is not None
    assert Pricer().price(c).unpriced_reason == Unpriced.INVALID_USAGE


def test_response_model_first_then_request_model() -> None:
    span = make_span(
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-some-future-snapshot-nobody-knows",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 100,
        }
    )
    c = extract_call(span)
    assert c is not None
    expected = calc_price(Usage(input_tokens=1000, output_tokens=100), "gpt-4o", provider_id="openai").total_price
    assert Pricer().price(c).exact_usd == expected


def test_model_lookup_is_memoized() -> None:
    pricer = Pricer()
    for _ in range(3):
        pricer.price_usage("openai", "gpt-4.1", input_tokens=10, output_tokens=10)
    assert list(pricer._models) == [("openai", "gpt-4.1")]
    assert len(pricer._linear) == 1


@pytest.mark.parametrize("provider", ["function", "unknown", ""])
def test_unrecognised_provider_falls_back_to_the_model_name(provider: str) -> None:
    price = Pricer().price_usage(provider, "gpt-4.1", input_tokens=1000, output_tokens=100)
    assert price.exact_usd == calc_price(Usage(input_tokens=1000, output_tokens=100), "gpt-4.1").total_price


def test_a_successful_call_without_usage_is_unpriced_and_a_failed_one_free() -> None:
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}
    # Without usage, a success is a call only with the provider's response id (the provider answered).
    ok = extract_call(make_span({**attributes, "gen_ai.response.id": "chatcmpl-no-usage"}))
    failed = extract_call(make_span(attributes, error=True, exception_type="openai.InternalServerError"))
    assert ok is not None
    assert failed is not None
    assert Pricer().price(ok) == Price(nanos=None, unpriced_reason=Unpriced.NO_USAGE)
    assert Pricer().price(failed) == Price(nanos=0)


@pytest.mark.parametrize(
    ("usd", "nanos"),
    [
        ("0.00472", 4_720_000),
        ("0.0000000005", 0),  # half to even
        ("0.0000000015", 2),
        ("-0.0000000025", -2),
        # 34 significant digits: the default context's 28 would round to ...0005 first, then to even
        ("1000.00000000050000000000000000000001", 1_000_000_000_001),
        ("1000000.000000000499999999999999999999", 1_000_000_000_000_000),
    ],
)
def test_usd_to_nanos_rounds_once_half_to_even(usd: str, nanos: int) -> None:
    assert usd_to_nanos(Decimal(usd)) == nanos


def test_a_linear_price_is_the_price_its_fields_make() -> None:
    """`_linear_price` sets `Price`'s slots in field order, without its `__init__`: a field added to
    `Price` must be added there too."""
    from otel_puppy.pricing import Price, _linear_price

    tariff = object()
    built = _linear_price(12, "override", 1200, 11, tariff, "gpt-4.1")
    assert built == Price(12, None, "override", 1200, 11, tariff, "gpt-4.1")
    assert [f.name for f in dataclasses.fields(Price)] == [
        "nanos",
        "unpriced_reason",
        "source",
        "scaled",
        "scale",
        "tariff",
        "model",
    ]


def test_cache_savings_are_pricing_the_call_again_without_its_cache_reads() -> None:
    """A linear price's savings come from its own piece (no second pricing): for every model genai-prices
    knows, tiers crossed or not, they are what pricing the call with no cache reads gives."""
    pricer = Pricer()
    rng = random.Random(5)
    checked = 0
    for provider, model in _every_model():
        for input_tokens in (1, 1_000, 150_000, 250_000, 1_500_000):
            cache_read = rng.randint(1, input_tokens)
            output = rng.randint(0, 5_000)
            call = LLMCall(
                trace_id=1,
                span_id=2,
                parent_span_id=0,
                provider=provider.id,
                request_model=model.id,
                response_model=None,
                operation="chat",
                start_ns=1_767_225_600 * 10**9,
                end_ns=1_767_225_601 * 10**9,
                input_tokens=input_tokens,
                output_tokens=output,
                cache_read_tokens=cache_read,
                cache_write_tokens=rng.randint(0, input_tokens - cache_read),
                reasoning_tokens=rng.randint(0, output),
                has_usage=True,
            )
            price = pricer.price(call)
            if price.nanos is None:
                continue
            uncached = pricer._price(call, 0)
            expected = max((uncached.nanos or 0) - price.nanos, 0) if uncached.nanos is not None else 0
            assert pricer.cache_savings(call, price) == expected, (provider.id, model.id, input_tokens)
            checked += 1
    assert checked > 5_000


def test_the_static_price_memo_is_bounded_in_entries_and_name_length() -> None:
    """Names a span chose are keys of `Pricer._static`: at most `_STATIC_LIMIT` of them (then all are
    forgotten), none longer than `_STATIC_NAME_LIMIT` in all; prices are the same whether kept or not."""
    pricer = Pricer()
    known = make_call(end_s=1.7e9, model="gpt-4.1", input_tokens=1000, output_tokens=100)
    expected = pricer.price(known).nanos
    assert expected is not None
    long_name = "m" * (pricing._STATIC_NAME_LIMIT + 1)
    assert pricer.price(dataclasses.replace(known, request_model=long_name, response_model=None)).nanos is None
    assert all(len("".join(name or "" for name in names)) <= pricing._STATIC_NAME_LIMIT for names in pricer._static)
    for i in range(pricing._STATIC_LIMIT + 10):
        pricer.price(dataclasses.replace(known, request_model=f"no-such-model-{i}", response_model=None))
        assert len(pricer._static) <= pricing._STATIC_LIMIT
    assert pricer.price(known).nanos == expected
