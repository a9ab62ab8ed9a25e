"""`Pricer`: the exact cost of a call, from genai-prices, fast.

`genai_prices.calc_price` resolves the provider and model, picks the price in force, decomposes
usage into priced units and sums `Decimal`s on every call. For one resolved `ModelPrice` that is a
linear function of the token counts (per tier), so we derive its integer coefficients once, by
asking genai-prices itself at a few probe points, check them against genai-prices at another
point, and from then on price a call with a handful of integer multiplications. A price that is
not linear (a rule we do not model) keeps using genai-prices per call, so results are identical
either way.

Caches: model lookup per (provider, model reference); the price in force per (model, price
period), where a period ends when a dated or time-of-day price starts or stops; coefficients per
resolved price.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Final

# genai-prices imports these inside its pricing functions. Imported here, at load, so the first price
# is never an import on the worker thread: an app forking during that import leaves its child a
# module lock no thread will release.
from genai_prices import data_snapshot, decompose, validation  # noqa: F401
from genai_prices import types as gp

from otel_puppy.calls import LLMCall
from otel_puppy.ledger import split_costs, unit_prices
from otel_puppy.money import usd_to_nanos

__all__ = ("Price", "PriceOverride", "Pricer", "Unpriced")

_FIELDS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "output_reasoning_tokens")
_FOREVER_START: Final = datetime(1970, 1, 1, tzinfo=UTC)
_STATIC_LIMIT: Final = 4096
"""(provider, response model, request model) names whose time-independent price a pricer keeps; then forgotten."""
_STATIC_NAME_LIMIT: Final = 1024
"""... each with at most this many characters in all (longer ones are priced the long way each time)."""
_FOREVER_END: Final = datetime(9999, 1, 1, tzinfo=UTC)


class Unpriced:
    """Reasons a call has no price. An unpriced call is counted as such, never as $0."""

    UNKNOWN_MODEL: Final = "unknown_model"
    INVALID_USAGE: Final = "invalid_usage"
    NO_USAGE: Final = "no_usage"
    """A call that succeeded but reported no usage (e.g. cancelled mid-stream): spend unknown."""


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one call, or why there is none."""

    nanos: int | None
    """Cost in integer nano-USD, rounded half to even; `None` when unpriced."""
    unpriced_reason: str | None = None
    source: str = "genai-prices"
    """`genai-prices` or `override` (a `prices:` entry in the policy files)."""
    scaled: int = 0
    scale: int = 9
    tariff: object = None
    """What priced it, for `Pricer.split`: the linear form of the price (`_Linear`), or genai-prices'
    `ModelPrice` where the price is not linear; `None` for a call without usage."""
    model: str | None = None
    """The model that priced it (the response model, else the one asked for, as genai-prices knows it)."""

    @property
    def priced(self) -> bool:
        return self.nanos is not None

    @property
    def exact_usd(self) -> Decimal | None:
        """The exact cost genai-prices computes, before rounding to nano-USD."""
        return None if self.nanos is None else Decimal(self.scaled).scaleb(-self.scale)


_PRICE_SETTERS: Final = tuple(getattr(Price, f.name).__set__ for f in fields(Price))
"""Each field's slot setter, in field order, for `_linear_price` (tests/test_pricing.py holds the two together)."""
_new_object: Final = object.__new__


def _linear_price(  # noqa: PLR0917 - positional, as Price(...) is
    nanos: int, source: str, scaled: int, scale: int, tariff: object, model: str
) -> Price:
    """`Price(nanos, None, source, scaled, scale, tariff, model)`, as the generated `__init__` builds it
    but without a frozen `__setattr__` per field: every priced span makes one (two with cache reads)."""
    price: Price = _new_object(Price)
    put_nanos, put_reason, put_source, put_scaled, put_scale, put_tariff, put_model = _PRICE_SETTERS
    put_nanos(price, nanos)
    put_reason(price, None)
    put_source(price, source)
    put_scaled(price, scaled)
    put_scale(price, scale)
    put_tariff(price, tariff)
    put_model(price, model)
    return price


FREE: Final = Price(nanos=0)
_UNKNOWN_MODEL: Final = Price(nanos=None, unpriced_reason=Unpriced.UNKNOWN_MODEL)
_INVALID_USAGE: Final = Price(nanos=None, unpriced_reason=Unpriced.INVALID_USAGE)
_NO_USAGE: Final = Price(nanos=None, unpriced_reason=Unpriced.NO_USAGE)


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """A price from the policy files, for models genai-prices does not know (or to correct it).

    Prices are USD per million tokens, like genai-prices' `*_mtok` fields.
    """

    provider: str
    model: str
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None

    def model_price(self) -> gp.ModelPrice:
        return gp.ModelPrice(
            input_mtok=self.input_mtok,
            output_mtok=self.output_mtok,
            cache_read_mtok=self.cache_read_mtok,
            cache_write_mtok=self.cache_write_mtok,
        )


@dataclass(frozen=True, slots=True)
class _Linear:
    """cost * 10**scale = c0 + sum(coefficient * count), valid while input_tokens <= upper."""

    upper: int | None
    scale: int
    c0: int
    coefficients: tuple[int, int, int, int, int]


_Static = tuple[tuple[_Linear, ...], str, str] | tuple[()]
"""`Pricer._static_for`: a call's linear pieces, price source and pricing model, or `()`."""


def _valid(counts: tuple[int, int, int, int, int]) -> bool:
    """Whether token counts (input, output, cache read, cache write, reasoning) make a usage: none
    negative, cache tokens within input tokens, reasoning tokens within output tokens."""
    input_tokens, output_tokens, cache_read, cache_write, reasoning = counts
    return (
        input_tokens >= 0
        and output_tokens >= 0
        and cache_read >= 0
        and cache_write >= 0
        and reasoning >= 0
        and cache_read + cache_write <= input_tokens
        and reasoning <= output_tokens
    )


def _by_pieces(
    pieces: Iterable[_Linear], counts: tuple[int, int, int, int, int], source: str, model: str
) -> Price | None:
    """Valid `counts` priced by the first of a price's linear pieces that holds their input tokens;
    `None` if none does (the price is then calculated in full)."""
    input_tokens, output_tokens, cache_read, cache_write, reasoning = counts
    for piece in pieces:
        if piece.upper is None or input_tokens <= piece.upper:
            c_in, c_out, c_cr, c_cw, c_rs = piece.coefficients
            scaled = (
                piece.c0
                + c_in * input_tokens
                + c_out * output_tokens
                + c_cr * cache_read
                + c_cw * cache_write
                + c_rs * reasoning
            )
            return _linear_price(_round_nanos(scaled, piece.scale), source, scaled, piece.scale, piece, model)
    return None


@dataclass(slots=True)
class _Resolved:
    """One model as genai-prices (or an override) knows it, with the price period last used."""

    model: gp.ModelInfo | None
    provider: gp.Provider | None
    static_price: gp.ModelPrice | None
    source: str
    period_start: datetime = _FOREVER_START
    period_end: datetime = _FOREVER_START
    period_price: gp.ModelPrice | None = None


class Pricer:
    """Prices calls exactly as genai-prices does, memoized.

    >>> pricer = Pricer()
    >>> pricer.price_usage("openai", "gpt-4o", input_tokens=1000, output_tokens=100).nanos
    3500000
    """

    def __init__(self, overrides: Sequence[PriceOverride] = ()) -> None:
        self._overrides = {(o.provider.lower(), o.model.lower()): o for o in overrides}
        self._snapshot = data_snapshot.get_snapshot()
        self._known_providers = frozenset(p.id for p in self._snapshot.providers)
        self._models: dict[tuple[str, str], _Resolved | None] = {}
        self._linear: dict[int, tuple[gp.ModelPrice, tuple[_Linear, ...] | None]] = {}
        self._units: dict[int, tuple[_Linear, tuple[int, ...], str]] = {}
        """Each linear piece split by (`split`), by its id: its unit prices by token type (then the request
        fee) and their `ledger.unit_prices`."""
        self._static: dict[tuple[str, str | None, str | None], _Static] = {}
        """`_static_for` per (provider, response model, request model) of the calls priced."""
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def with_overrides(self, overrides: Sequence[PriceOverride]) -> Pricer:
        """A new pricer with these overrides (the policy set changed); this one is untouched."""
        return Pricer(overrides)

    def price(self, call: LLMCall) -> Price:
        """The cost of a call. Never raises: bad usage gives an unpriced result with its reason."""
        return self._price(call, call.cache_read_tokens)

    def cache_savings(self, call: LLMCall, price: Price) -> int:
        """Nano-USD the provider's prompt cache saved on `call` (priced at `price`): the cost of its
        cache reads had they been plain input tokens, less what they cost. 0 without cache reads."""
        if not call.cache_read_tokens or price.nanos is None:
            return 0
        tariff = price.tariff
        if isinstance(tariff, _Linear):
            # Priced by a linear piece: with no cache reads the same piece prices it (the piece is chosen
            # by input tokens alone), less the cache reads' term; as pricing the call again would.
            scaled = price.scaled - tariff.coefficients[2] * call.cache_read_tokens
            return max(_round_nanos(scaled, tariff.scale) - price.nanos, 0)
        uncached = self._price(call, 0)
        return max((uncached.nanos or 0) - price.nanos, 0) if uncached.nanos is not None else 0

    def _price(self, call: LLMCall, cache_read_tokens: int) -> Price:
        """`price(call)` with `cache_read_tokens` in place of the call's own (`cache_savings` asks with 0,
        and copying the call to ask would cost more than pricing it)."""
        if call.problems or call.rejected is not None:  # a rejected call is never applied; never price it
            return _INVALID_USAGE
        if not call.has_usage:
            # Providers do not bill failed calls; a successful call without usage cost something unknown.
            return FREE if call.error_class is not None else _NO_USAGE
        names = (call.provider, call.response_model, call.request_model)
        static = self._static.get(names)
        if static is None:
            static = self._static_for(names)
        counts = (
            call.input_tokens,
            call.output_tokens,
            cache_read_tokens,
            call.cache_write_tokens,
            call.reasoning_tokens,
        )
        if static:  # `_price_counts`, its price and pieces known: the same checks, the same sums
            pieces, source, model = static
            if not _valid(counts):
                return Price(nanos=None, unpriced_reason=Unpriced.INVALID_USAGE, source=source)
            priced = _by_pieces(pieces, counts, source, model)
            if priced is not None:
                return priced
        at = call.start_ns / 1e9 if call.start_ns > 0 else None
        for model_ref in _model_refs(call.response_model, call.request_model):
            price = self._price_counts(call.provider, model_ref, counts, at)
            if price.unpriced_reason != Unpriced.UNKNOWN_MODEL:
                return price
        return _UNKNOWN_MODEL

    def _static_for(self, names: tuple[str, str | None, str | None]) -> _Static:
        """For `_price`: the linear pieces, source and model a call of (provider, response model, request
        model) is priced by when that does not depend on the time (the first of its models known has
        one price for all time, and it is linear); else `()`. Kept for `_STATIC_LIMIT` such names."""
        provider, response_model, request_model = names
        found: _Static = ()
        for model_ref in _model_refs(response_model, request_model):
            resolved = self._resolve(provider, model_ref)
            if resolved is None:
                continue
            if resolved.static_price is not None:
                pieces = self._linear_for(resolved.static_price)
                if pieces:
                    found = (pieces, resolved.source, model_ref)
            break
        if sum(len(name or "") for name in names) <= _STATIC_NAME_LIMIT:
            with self._lock:
                if len(self._static) >= _STATIC_LIMIT:
                    self._static.clear()
                self._static[names] = found
        return found

    def price_usage(
        self,
        provider: str | None,
        model: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        at: datetime | float | None = None,
    ) -> Price:
        """The cost of this usage of `provider`/`model` at `at` (a datetime or epoch seconds; now by default)."""
        counts = (input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens)
        return self._price_counts(provider or "", model, counts, at)

    def _price_counts(
        self, provider: str, model: str, counts: tuple[int, int, int, int, int], at: datetime | float | None
    ) -> Price:
        """`price_usage` of `counts` (input, output, cache read, cache write, reasoning tokens)."""
        resolved = self._resolve(provider, model)
        if resolved is None:
            return _UNKNOWN_MODEL
        if not _valid(counts):
            return Price(nanos=None, unpriced_reason=Unpriced.INVALID_USAGE, source=resolved.source)
        model_price = resolved.static_price or self._price_in_force(resolved, _as_datetime(at))
        linear = self._linear_for(model_price)
        if linear is not None:
            priced = _by_pieces(linear, counts, resolved.source, model)
            if priced is not None:
                return priced
        try:
            total = model_price.calc_price(_usage(counts))["total_price"]
        except (ValueError, ArithmeticError):
            return Price(nanos=None, unpriced_reason=Unpriced.INVALID_USAGE, source=resolved.source)
        exponent = -int(total.as_tuple().exponent)
        scale = max(9, exponent)
        scaled = int(total.scaleb(scale))
        return Price(usd_to_nanos(total), None, resolved.source, scaled, scale, model_price, model)

    # --- splitting by token type ---------------------------------------------------------------

    def split(self, call: LLMCall, price: Price) -> tuple[list[int], str] | None:
        """`price` of `call` by token type, in nano-USD adding up to `price.nanos` exactly: input
        (uncached), cached input, cache write, output (not reasoning), reasoning, then a per-request
        fee; and the unit prices they were priced at (`ledger.unit_prices`; empty when the price is
        not linear). None for an unpriced call. See `ledger.py` for the rule."""
        if price.nanos is None:
            return None
        cached, written, reasoning = call.cache_read_tokens, call.cache_write_tokens, call.reasoning_tokens
        tariff = price.tariff
        if isinstance(tariff, _Linear):
            found = self._units.get(id(tariff))
            if found is None or found[0] is not tariff:  # the id of a collected piece can be reused
                c_in, c_out, c_cr, c_cw, c_rs = tariff.coefficients
                units = (c_in, c_in + c_cr, c_in + c_cw, c_out, c_out + c_rs, tariff.c0)
                found = self._units[id(tariff)] = (tariff, units, unit_prices(tariff.scale, units))
            u_input, u_cached, u_written, u_output, u_reasoning, fee = found[1]
            parts = [
                u_input * (call.input_tokens - cached - written),
                u_cached * cached,
                u_written * written,
                u_output * (call.output_tokens - reasoning),
                u_reasoning * reasoning,
                fee,
            ]
            if min(parts) >= 0:
                return split_costs(parts, tariff.scale, price.nanos), found[2]
        elif isinstance(tariff, gp.ModelPrice):
            tokens = (call.input_tokens - cached - written, cached, written, call.output_tokens - reasoning, reasoning)
            parts_usd = _telescoped(tariff, tokens)
            if parts_usd is not None:
                scale = max(9, *(-int(part.as_tuple().exponent) for part in parts_usd))
                return split_costs([int(part.scaleb(scale)) for part in parts_usd], scale, price.nanos), ""
        return [price.nanos, 0, 0, 0, 0, 0], ""  # no price to split by (a call without usage is free)

    # --- resolution, memoized ---------------------------------------------------------------

    def _resolve(self, provider: str, model: str) -> _Resolved | None:
        key = (provider, model)
        try:
            return self._models[key]
        except KeyError:
            pass
        resolved = self._lookup(provider, model)
        with self._lock:
            self._models[key] = resolved
        return resolved

    def _lookup(self, provider: str, model: str) -> _Resolved | None:
        override = self._overrides.get((provider.lower(), model.lower()))
        if override is not None:
            return _Resolved(None, None, override.model_price(), "override")
        provider_id = provider if provider in self._known_providers else None
        try:
            found_provider, info = self._snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            if provider_id is None:
                return None
            try:  # a provider we know that serves a model it does not list (e.g. through a proxy)
                found_provider, info = self._snapshot.find_provider_model(model, None, None, None)
            except LookupError:
                found = self._unprefixed(provider_id, model)
                if found is None:
                    return None
                found_provider, info = found
        static = info.prices if isinstance(info.prices, gp.ModelPrice) else None
        return _Resolved(info, found_provider, static, "genai-prices")

    def _unprefixed(self, provider_id: str, model: str) -> tuple[gp.Provider, gp.ModelInfo] | None:
        """The provider's one model whose id is `model` under a namespace prefix an instrumentation
        stripped (OpenLLMetry writes Bedrock's `amazon.nova-pro-v1:0` as `nova-pro-v1:0`)."""
        provider = next(p for p in self._snapshot.providers if p.id == provider_id)
        suffix = "." + model.lower()
        found = [info for info in provider.models if info.id.lower().endswith(suffix)]
        return (provider, found[0]) if len(found) == 1 else None

    def _price_in_force(self, resolved: _Resolved, when: datetime) -> gp.ModelPrice:
        if resolved.static_price is not None:
            return resolved.static_price
        if resolved.period_price is not None and resolved.period_start <= when < resolved.period_end:
            return resolved.period_price
        assert resolved.model is not None
        model_price = resolved.model.get_prices(when)
        start, end = _period(resolved.model, when)
        with self._lock:
            resolved.period_start, resolved.period_end, resolved.period_price = start, end, model_price
        return model_price

    def _linear_for(self, model_price: gp.ModelPrice) -> tuple[_Linear, ...] | None:
        cached = self._linear.get(id(model_price))
        if cached is not None and cached[0] is model_price:  # the id of a collected price can be reused
            return cached[1]
        linear = _derive_linear(model_price)
        with self._lock:
            self._linear[id(model_price)] = (model_price, linear)
        return linear


def _model_refs(response_model: str | None, request_model: str | None) -> tuple[str, ...]:
    """The models to price a call as, in turn: the one that answered, then the one asked for."""
    if not response_model:
        return (request_model,) if request_model else ("unknown",)
    if not request_model or request_model == response_model:
        return (response_model,)
    return (response_model, request_model)


def _telescoped(model_price: gp.ModelPrice, tokens: tuple[int, int, int, int, int]) -> list[Decimal] | None:
    """What each token type adds to the price, in `Pricer.split`'s order (then the request fee: the
    price of no tokens); None if genai-prices refuses a step or a type would cost less than nothing."""
    uncached, cached, written, plain, reasoning = tokens
    steps = (
        (0, 0, 0, 0, 0),
        (uncached, 0, 0, 0, 0),
        (uncached + cached, 0, cached, 0, 0),
        (uncached + cached + written, 0, cached, written, 0),
        (uncached + cached + written, plain, cached, written, 0),
        (uncached + cached + written, plain + reasoning, cached, written, reasoning),
    )
    try:
        totals = [model_price.calc_price(_usage(step))["total_price"] for step in steps]
    except (ValueError, ArithmeticError):
        return None
    parts = [after - before for before, after in itertools.pairwise(totals)] + [totals[0]]
    return parts if min(parts) >= 0 else None


def _usage(counts: tuple[int, ...]) -> gp.Usage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gp.Usage(**{field: count for field, count in zip(_FIELDS, counts, strict=True) if count})


def _as_datetime(at: datetime | float | None) -> datetime:
    if at is None:
        return datetime.now(tz=UTC)
    if isinstance(at, datetime):
        return at
    return datetime.fromtimestamp(at, tz=UTC)


def _round_nanos(scaled: int, scale: int) -> int:
    """`scaled * 10**-scale` USD in nano-USD, rounded half to even, in integers."""
    if scale == 9:
        return scaled
    unit: int = 10 ** (scale - 9)
    quotient, remainder = divmod(scaled, unit)
    twice, half = 2 * remainder, unit
    if twice > half or (twice == half and quotient % 2):
        quotient += 1
    return quotient


def _derive_linear(model_price: gp.ModelPrice) -> tuple[_Linear, ...] | None:
    """Integer coefficients per tier, derived by probing genai-prices and then checked against it."""
    thresholds = sorted(
        {
            tier.start
            for value in vars(model_price).values()
            if isinstance(value, gp.TieredPrices)
            for tier in value.tiers
        }
    )
    pieces: list[_Linear] = []
    lower = 0
    try:
        for upper in [*thresholds, None]:
            piece = _probe_piece(model_price, lower, upper)
            if piece is None:
                return None
            pieces.append(piece)
            lower = (upper or 0) + 1
    except (ValueError, ArithmeticError, TypeError, AttributeError):
        return None
    return tuple(pieces)


def _probe_piece(model_price: gp.ModelPrice, lower: int, upper: int | None) -> _Linear | None:
    a = max(lower, 1)
    b = a + 1
    if upper is not None and b > upper:
        return None

    def cost(inp: int, out: int = 0, cr: int = 0, cw: int = 0, rs: int = 0) -> Decimal:
        return model_price.calc_price(_usage((inp, out, cr, cw, rs)))["total_price"]

    base = cost(a)
    c_in = cost(b) - base
    c_out = cost(a, out=1) - base
    c_cr = cost(a, cr=1) - base
    c_cw = cost(a, cw=1) - base
    c_rs = cost(a, out=1, rs=1) - cost(a, out=1)
    c0 = base - c_in * a
    decimals = (c0, c_in, c_out, c_cr, c_cw, c_rs)
    scale = max(9, *(-int(d.as_tuple().exponent) for d in decimals if d != 0))
    if scale > 30:
        return None
    factor = Decimal(10) ** scale
    ints = [d * factor for d in decimals]
    if any(i != i.to_integral_value() for i in ints):
        return None
    c0_i, *coefficients = (int(i) for i in ints)
    piece = _Linear(upper, scale, c0_i, tuple(coefficients))  # type: ignore[arg-type]
    # Check at a point far from the probes: a rule we do not model shows up here.
    check_in = a + 997 if upper is None else min(upper, a + 997)
    counts = (check_in, 311, min(113, check_in // 3), min(59, check_in // 3), 17)
    expected = cost(*counts)
    got = Decimal(c0_i + sum(c * n for c, n in zip(coefficients, counts, strict=True))).scaleb(-scale)
    return piece if got == expected else None


def _period(model: gp.ModelInfo, when: datetime) -> tuple[datetime, datetime]:
    """The interval around `when` in which no dated or time-of-day price starts or stops."""
    changes: list[datetime] = []
    prices = model.prices if isinstance(model.prices, list) else []
    day = when.astimezone(UTC).date()
    for conditional in prices:
        constraint = conditional.constraint
        if isinstance(constraint, gp.StartDateConstraint):
            changes.append(datetime.combine(constraint.start_date, time(), UTC))
        elif isinstance(constraint, gp.TimeOfDateConstraint):
            for moment in (constraint.start_time, constraint.end_time):
                utc_time = _utc_time(moment)
                changes.extend(datetime.combine(day + timedelta(days=offset), utc_time) for offset in (-1, 0, 1))
    start = max((c for c in changes if c <= when), default=_FOREVER_START)
    end = min((c for c in changes if c > when), default=_FOREVER_END)
    return start, end


def _utc_time(moment: time) -> time:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return datetime.combine(date(1970, 1, 1), moment).astimezone(UTC).timetz()
