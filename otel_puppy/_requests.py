"""A decision request's estimate in the units a store holds, refused unless every store holds it exactly.

`DecisionRequest` holds its names and numbers to `otel_puppy.bounds` when it is built (text every
store can encode, required names not empty, estimates in range), so a value that would make the
decision path raise, loosen a budget or take seconds never reaches a decision: it is refused with
`RequestError` naming the field, before anything is decided or reserved, and never answered by the
fail mode. This is the last check before a store: the amount in nano-USD.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from otel_puppy.exceptions import RequestError
from otel_puppy.money import usd_to_nanos

__all__ = (
    "MAX_AMOUNT",
    "estimate_nanos",
)

MAX_AMOUNT: Final = 2**53 - 1
"""Largest estimate in nano-USD or tokens (about $9 million): exact in every store, Redis Lua included."""
_MAX_USD_DIGITS: Final = 7
"""`estimated_cost_usd` below 10^7 USD (checked on the exponent, before any conversion)."""


def estimate_nanos(cost: object) -> int:
    """`estimated_cost_usd` in nano-USD, refused unless finite, non-negative and at most `MAX_AMOUNT`.

    The exponent is checked before any conversion: `1e999990` would take seconds to turn into an integer.

    Raises:
        RequestError: naming `estimated_cost_usd`.
    """
    if not isinstance(cost, Decimal) or not cost.is_finite() or (cost.is_signed() and cost != 0):
        raise RequestError("estimated_cost_usd", "must be a finite, non-negative amount of USD")
    if cost != 0 and cost.adjusted() >= _MAX_USD_DIGITS:
        raise RequestError("estimated_cost_usd", f"must be below {10**_MAX_USD_DIGITS} USD")
    if cost != 0 and cost.adjusted() < -30:
        return 0  # below a nano-dollar by far: rounds to nothing (and costs no arithmetic)
    nanos = usd_to_nanos(cost)
    if nanos > MAX_AMOUNT:
        raise RequestError("estimated_cost_usd", f"must be at most {Decimal(MAX_AMOUNT).scaleb(-9)} USD")
    return nanos
