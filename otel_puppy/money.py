"""Money as integer nano-USD inside; `Decimal` at the API; float only in Prometheus samples.

Integers make sums exact and let stores add atomically (SQLite, Redis `INCRBY`).
One nano-dollar is 1e-9 USD; an int64 holds about $9.2 billion of them.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal

__all__ = ("NANOS_PER_USD", "format_nanos", "format_usd", "nanos_to_float", "nanos_to_usd", "usd_to_nanos")

NANOS_PER_USD = 1_000_000_000

# Wide enough that rounding a bounded amount to any table's places never runs out of digits.
_FORMAT_CONTEXT = Context(prec=100, rounding=ROUND_HALF_EVEN)
_multiply = _FORMAT_CONTEXT.multiply
_NANOS_PER_USD_DECIMAL = Decimal(NANOS_PER_USD)
_PLAIN_NANOS = 10**28
"""Amounts below it have at most 28 digits: `nanos_to_usd` keeps every one (the default context's precision)."""


def usd_to_nanos(usd: Decimal | int | str) -> int:
    """Round a USD amount to whole nano-dollars, half to even (banker's rounding).

    >>> usd_to_nanos(Decimal("0.00472"))
    4720000
    """
    value = usd if isinstance(usd, Decimal) else Decimal(usd)
    if not value.is_finite():
        raise ValueError(f"not a finite amount of money: {usd!r}")
    # Multiplied exactly (the default context's 28 digits would round a long amount first, then
    # `round` again), then `round`: half to even, to an int.
    return round(_multiply(value, _NANOS_PER_USD_DECIMAL))


def nanos_to_usd(nanos: int) -> Decimal:
    """Exact `Decimal` USD for an integer amount of nano-dollars."""
    return Decimal(nanos).scaleb(-9)


def format_nanos(nanos: int, *, dollar: bool = False) -> str:
    """`format_usd(nanos_to_usd(nanos), dollar=dollar)`, for an amount a decision sends many of (every
    budget hit's spent, reserved and used): printed from the integer, a seventh of the time through
    a `Decimal`. An amount no store holds (negative, or past `Decimal`'s 28 digits, which `nanos_to_usd`
    rounds to) still goes through it, so the text is always `format_usd`'s.

    >>> format_nanos(5_600_000), format_nanos(1_234_567_890_123, dollar=True)
    ('0.005600000', '$1234.567890123')
    """
    if not 0 <= nanos < _PLAIN_NANOS:
        return format_usd(nanos_to_usd(nanos), dollar=dollar)
    whole, nano = divmod(nanos, NANOS_PER_USD)
    return f"${whole}.{nano:09d}" if dollar else f"{whole}.{nano:09d}"


def nanos_to_float(nanos: int) -> float:
    """Float USD, for Prometheus samples only."""
    return nanos / NANOS_PER_USD


def format_usd(
    usd: Decimal,
    /,
    *,
    places: int | None = None,
    trim: bool = False,
    dollar: bool = False,
    grouping: bool = False,
) -> str:
    """Text for an amount of USD: the one way to print money, exact (never through a float).

    With no option the digits are the `Decimal`'s own, in fixed point (`0E-9` reads `0.000000000`);
    nano-USD are printed as `format_usd(nanos_to_usd(nanos))`. `places` rounds half to even to that
    many decimals (for tables), `trim` drops trailing zeros (`0.0112000` -> `0.0112`, `1E+2` -> `100`),
    `dollar` puts a `$` after any sign, `grouping` separates thousands with commas.

    >>> format_usd(Decimal("0.0112000"), trim=True, dollar=True)
    '$0.0112'
    >>> format_usd(nanos_to_usd(1_234_567_890_123), places=4, grouping=True, dollar=True)
    '$1,234.5679'
    >>> format_usd(nanos_to_usd(5_600_000))
    '0.005600000'
    """
    if not usd.is_finite():
        raise ValueError(f"not a finite amount of money: {usd!r}")
    amount = usd if places is None else usd.quantize(Decimal(1).scaleb(-places), context=_FORMAT_CONTEXT)
    text = format(amount.copy_abs(), ",f" if grouping else "f")  # `abs()` would round to 28 digits
    if trim and "." in text:
        text = text.rstrip("0").rstrip(".")
    sign = "-" if amount.is_signed() and amount != 0 else ""
    return f"{sign}{'$' if dollar else ''}{text}"
