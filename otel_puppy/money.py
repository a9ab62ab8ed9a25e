"""Money as integer nano-USD inside; `Decimal` at the API; float only in Prometheus samples.

Integers make sums exact and let stores add atomically (SQLite, Redis `INCRBY`).
One nano-dollar is 1e-9 USD; an int64 holds about $9.2 billion of them.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

__all__ = ("NANOS_PER_USD", "nanos_to_float", "nanos_to_usd", "usd_to_nanos")

NANOS_PER_USD = 1_000_000_000


def usd_to_nanos(usd: Decimal | int | str) -> int:
    """Round a USD amount to whole nano-dollars, half to even (banker's rounding).

    >>> usd_to_nanos(Decimal("0.00472"))
    4720000
    """
    value = usd if isinstance(usd, Decimal) else Decimal(usd)
    if not value.is_finite():
        raise ValueError(f"not a finite amount of money: {usd!r}")
    return int((value * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int) -> Decimal:
    """Exact `Decimal` USD for an integer amount of nano-dollars."""
    return Decimal(nanos).scaleb(-9)


def nanos_to_float(nanos: int) -> float:
    """Float USD, for Prometheus samples only."""
    return nanos / NANOS_PER_USD
