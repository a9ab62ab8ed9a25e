"""The cost ledger as FOCUS 1.2: the FinOps Open Cost and Usage Specification FinOps tools read.

One row per hour, provider, model, service, agent, team, environment and token type (input, cached
input, cache write, output, reasoning; and a model's per-request fee, where it has one), each with
its own quantity in tokens, unit price and cost, all in USD:

- `BilledCost` and `EffectiveCost` are what the calls cost, exactly as otel_puppy counted them (the
  nano-dollar sum of the calls' costs of that type: `ledger.py`), so the export adds up to the
  spend the budgets and `otel_puppy_llm_cost_usd_total` saw. `ListUnitPrice` (= `ContractedUnitPrice`:
  list prices, no negotiated discount is known) is the price per token genai-prices (or a `prices:`
  override) gives, and `ListCost` (= `ContractedCost`) that price times the tokens, rounded to the
  nano-dollar; it differs from `BilledCost` only by the rounding of each call to the nano-dollar.
  Rows whose price is unknown (folded `other` rows) state the average price.
- `SkuId` is `provider/model`; `SkuPriceId` adds the token type and the unit price, so every price
  has its own id. `ChargePeriod` is the hour, `BillingPeriod` its calendar month (UTC).
- Agent, team, environment and service are `Tags` (a JSON object; absent ones are left out).
- `ProviderName`, `PublisherName` and `InvoiceIssuerName` are the provider's name; `BillingAccountId`
  and `BillingAccountName` the account at the provider (its id and name unless given).
- Every text column is ASCII (FOCUS's string format): other characters are written as `?`, except in
  `Tags`, which is JSON with `\\u` escapes.

Checked by the FinOps Foundation's `focus-validator` in the tests (tests/test_focus.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Context, Decimal
from functools import cache, lru_cache
from typing import Final, TextIO

from otel_puppy.ledger import HOUR, REQUEST_NANOS, TOKEN_TYPES, LedgerRow, read_unit_prices
from otel_puppy.money import nanos_to_usd

__all__ = ("FOCUS_COLUMNS", "focus_csv_lines", "focus_row_values", "focus_rows", "month_bounds", "write_focus_csv")

FOCUS_COLUMNS: Final = (
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "CommitmentDiscountUnit",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
    "x_TokenType",
)
"""FOCUS 1.2's columns in the specification's order (empty where FOCUS allows null and nothing applies:
no commitment discounts, capacity reservations, regions, resources or invoices), then ours."""
_METERS: Final = {
    "input": "Input Tokens",
    "cached_input": "Cached Input Tokens",
    "cache_write": "Cache Write Tokens",
    "output": "Output Tokens",
    "reasoning": "Reasoning Tokens",
    "request": "Requests",
}
_EXACT: Final = Context(prec=60)


def month_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) `at` falls in: its first instant and the next month's."""
    start = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def focus_rows(rows: Iterable[LedgerRow], *, billing_account: str | None = None) -> Iterator[dict[str, str]]:
    """The FOCUS rows of ledger rows, as dicts by column: one per token type with tokens or cost (see
    the module)."""
    for values in focus_row_values(rows, billing_account=billing_account):
        yield dict(zip(FOCUS_COLUMNS, values, strict=True))


def focus_row_values(
    rows: Iterable[LedgerRow], *, billing_account: str | None = None, quote: bool = False
) -> Iterator[list[str]]:
    """The FOCUS rows of ledger rows, each a list of values in `FOCUS_COLUMNS` order; with `quote`, each
    value already as a CSV field (`csv.writer`'s minimal quoting: what `focus_csv_lines` joins).

    What a ledger row's FOCUS rows share (names, periods, tags) is built once per row; per token type only
    its quantity, prices and costs, in integers (no `Decimal` on the way for a known price)."""
    for row in rows:
        counts = row.counts
        units = _unit_prices(row.prices)
        shared = _shared(row, billing_account, quote)
        for i, token_type in enumerate(TOKEN_TYPES):
            quantity, nanos = counts[token_type.tokens], counts[token_type.nanos]
            if quantity or nanos:
                yield _typed(shared, token_type.name, "Tokens", quantity, nanos, units[i] if units else None)
        fee = counts[REQUEST_NANOS]
        if fee:
            yield _typed(shared, "request", "Requests", counts[0], fee, units[-1] if units else None)


def write_focus_csv(rows: Iterable[LedgerRow], out: TextIO, *, billing_account: str | None = None) -> int:
    """Write the FOCUS CSV (a header, then a line per `focus_row_values`) to `out`; returns the rows written."""
    written = -1
    for written, line in enumerate(_lines(rows, billing_account)):  # noqa: B007 - the count is the last index
        out.write(line)
    return written


def focus_csv_lines(rows: Iterable[LedgerRow], *, billing_account: str | None = None) -> Iterator[str]:
    """The FOCUS CSV as text chunks (the header, then 1,000 rows each): what `write_focus_csv` writes,
    for a streamed response."""
    chunk: list[str] = []
    for line in _lines(rows, billing_account):
        chunk.append(line)
        if len(chunk) == 1000:
            yield "".join(chunk)
            chunk.clear()
    yield "".join(chunk)


def _lines(rows: Iterable[LedgerRow], billing_account: str | None) -> Iterator[str]:
    """The header, then one CSV line per FOCUS row, as `csv.writer` writes them (minimal quoting, `\\n`):
    fields quoted once per ledger row rather than checked by the writer for every FOCUS row."""
    yield ",".join(FOCUS_COLUMNS) + "\n"
    for values in focus_row_values(rows, billing_account=billing_account, quote=True):
        yield ",".join(values) + "\n"


_INDEX: Final = {column: i for i, column in enumerate(FOCUS_COLUMNS)}
_CONSTANT: Final = {
    "BillingCurrency": "USD",
    "ChargeCategory": "Usage",
    "ChargeFrequency": "Usage-Based",
    "PricingCategory": "Standard",
    "PricingCurrency": "USD",
    "ServiceCategory": "AI and Machine Learning",
    "ServiceSubcategory": "Generative AI",
}
_PER_TYPE: Final = tuple(
    _INDEX[column]
    for column in (
        "BilledCost",
        "ChargeDescription",
        "ConsumedQuantity",
        "ConsumedUnit",
        "ContractedCost",
        "ContractedUnitPrice",
        "EffectiveCost",
        "ListCost",
        "ListUnitPrice",
        "PricingCurrencyContractedUnitPrice",
        "PricingCurrencyEffectiveCost",
        "PricingCurrencyListUnitPrice",
        "PricingQuantity",
        "PricingUnit",
        "SkuMeter",
        "SkuPriceDetails",
        "SkuPriceId",
        "x_TokenType",
    )
)
"""The columns a token type's row sets itself, in column order (`_typed` fills them in this order)."""


class _Shared:
    """What a ledger row's FOCUS rows have in common: every other column, and the SKU and model for theirs;
    `quote`: as CSV fields."""

    __slots__ = ("model", "quote", "sku", "values")

    def __init__(self, values: list[str], sku: str, model: str, quote: bool) -> None:
        self.values = values
        self.sku = sku
        self.model = model
        self.quote = quote


def _shared(row: LedgerRow, billing_account: str | None, quote: bool) -> _Shared:
    values = [""] * len(FOCUS_COLUMNS)
    for column, value in _CONSTANT.items():
        values[_INDEX[column]] = value
    provider_name = _provider_name(row.provider)
    charge_start, charge_end, month_start, month_end = _periods(row.hour)
    tags = {"agent": row.agent, "team": row.team, "environment": row.environment, "service": row.service}
    values[_INDEX["BillingAccountId"]] = _ascii(billing_account or row.provider)
    values[_INDEX["BillingAccountName"]] = _ascii(billing_account or provider_name)
    values[_INDEX["BillingPeriodEnd"]] = month_end
    values[_INDEX["BillingPeriodStart"]] = month_start
    values[_INDEX["ChargePeriodEnd"]] = charge_end
    values[_INDEX["ChargePeriodStart"]] = charge_start
    values[_INDEX["InvoiceIssuerName"]] = provider_name
    values[_INDEX["ProviderName"]] = provider_name
    values[_INDEX["PublisherName"]] = provider_name
    values[_INDEX["ServiceName"]] = f"{provider_name} API"
    sku = _ascii(f"{row.provider}/{row.model}")
    values[_INDEX["SkuId"]] = sku
    values[_INDEX["Tags"]] = json.dumps({k: v for k, v in tags.items() if v is not None}, separators=(",", ":"))
    if quote:
        values = [_field(value) for value in values]
    return _Shared(values, sku, _ascii(row.model), quote)


def _typed(  # noqa: PLR0917 - one row's parts, positional
    shared: _Shared,
    token_type: str,
    unit_name: str,
    quantity: int,
    nanos: int,
    unit: tuple[int, int, str] | None,
) -> list[str]:
    """A token type's row: `unit` is its price (scaled integer, scale, text); `None` when unknown."""
    cost = _nanos_text(nanos)
    if unit is None:  # no list price known (a folded row): the average the calls paid
        average = _EXACT.divide(nanos_to_usd(nanos), Decimal(quantity)) if quantity else Decimal(0)
        price, listed = _decimal(average), cost
    else:
        scaled, scale, price = unit
        listed = _nanos_text(_round_half_even(scaled * quantity, scale - 9))
    meter = _METERS[token_type]
    quantity_text = f"{quantity}.0"
    description, sku_price, details = (
        f"{meter} for {shared.model}",
        f"{shared.sku}/{token_type}/{price}",
        _DETAILS[token_type],
    )
    if shared.quote:  # the numbers, units and meters never need it
        description, sku_price, details = _field(description), _field(sku_price), _QUOTED_DETAILS[token_type]
    values = shared.values.copy()
    (
        values[_PER_TYPE[0]],
        values[_PER_TYPE[1]],
        values[_PER_TYPE[2]],
        values[_PER_TYPE[3]],
        values[_PER_TYPE[4]],
        values[_PER_TYPE[5]],
        values[_PER_TYPE[6]],
        values[_PER_TYPE[7]],
        values[_PER_TYPE[8]],
        values[_PER_TYPE[9]],
        values[_PER_TYPE[10]],
        values[_PER_TYPE[11]],
        values[_PER_TYPE[12]],
        values[_PER_TYPE[13]],
        values[_PER_TYPE[14]],
        values[_PER_TYPE[15]],
        values[_PER_TYPE[16]],
        values[_PER_TYPE[17]],
    ) = (
        cost,  # BilledCost
        description,  # ChargeDescription
        quantity_text,  # ConsumedQuantity
        unit_name,  # ConsumedUnit
        listed,  # ContractedCost
        price,  # ContractedUnitPrice
        cost,  # EffectiveCost
        listed,  # ListCost
        price,  # ListUnitPrice
        price,  # PricingCurrencyContractedUnitPrice
        cost,  # PricingCurrencyEffectiveCost
        price,  # PricingCurrencyListUnitPrice
        quantity_text,  # PricingQuantity
        unit_name,  # PricingUnit
        meter,  # SkuMeter
        details,  # SkuPriceDetails
        sku_price,  # SkuPriceId
        token_type,  # x_TokenType
    )
    return values


def _field(value: str) -> str:
    """`value` as `csv.writer` writes a field (QUOTE_MINIMAL): quoted, quotes doubled, when it holds a
    comma, a quote or a line break."""
    if "," in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


_DETAILS: Final = {name: json.dumps({"x_TokenType": name}) for name in _METERS}
_QUOTED_DETAILS: Final = {name: _field(details) for name, details in _DETAILS.items()}


@lru_cache(maxsize=1024)
def _unit_prices(prices: str) -> tuple[tuple[int, int, str], ...] | None:
    """Each type's unit price (then the fee's) as (scaled integer, scale, decimal text), from a ledger row's
    `prices`; None when unknown. One parse per distinct price list."""
    found = read_unit_prices(prices)
    if found is None:
        return None
    scale, units = found
    return tuple((unit, scale, _decimal(Decimal(unit).scaleb(-scale))) for unit in units)


@lru_cache(maxsize=8784)  # a leap year of hours
def _periods(hour: int) -> tuple[str, str, str, str]:
    """The charge period (the hour) and billing period (its month) of an hour, as FOCUS writes times."""
    start = datetime.fromtimestamp(hour, UTC)
    month_start, month_end = month_bounds(start)
    end = datetime.fromtimestamp(hour + HOUR, UTC)
    return _when(start), _when(end), _when(month_start), _when(month_end)


def _nanos_text(nanos: int) -> str:
    """Nano-USD as FOCUS reads money: `0.002800000` (nine places, never an exponent)."""
    whole, part = divmod(nanos, 1_000_000_000)
    return f"{whole}.{part:09d}"


def _round_half_even(value: int, digits: int) -> int:
    """`value / 10**digits`, rounded half to even."""
    unit: int = 10 ** abs(digits)
    if digits <= 0:
        return value * unit
    quotient, remainder = divmod(value, unit)
    twice = 2 * remainder
    if twice > unit or (twice == unit and quotient % 2):
        quotient += 1
    return quotient


@cache
def _provider_name(provider: str) -> str:
    """The provider's name as genai-prices has it (`OpenAI`), else its id."""
    from genai_prices.data_snapshot import get_snapshot

    for known in get_snapshot().providers:
        if known.id == provider:
            return _ascii(known.name)
    return _ascii(provider) or "unknown"


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _decimal(value: Decimal) -> str:
    """A decimal FOCUS reads as one: plain digits, always with a point (`0.000002`, `0.0`)."""
    text = format(value.normalize(_EXACT), "f")
    return text if "." in text else f"{text}.0"


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
