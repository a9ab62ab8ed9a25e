"""The bounds on every number, string and timestamp that enters otel_puppy, and the one parser for numbers.

Every value a span, a decision request or a policy file brings is checked here (or against these
constants) before any arithmetic, so no input can make a sum overflow, a conversion take seconds, or
a decision fail open. The bounds are chosen from reality with headroom:

| bound                  | default          | why                                                                    |
|------------------------|------------------|------------------------------------------------------------------------|
| `MAX_CALL_TOKENS`      | 100,000,000      | each token count of one call: 10x the largest context window (10M)     |
| `MAX_CALL_COST_USD`    | $100,000         | one call's reported cost or estimate: `MAX_CALL_TOKENS` at $600/Mtok   |
|                        |                  | (the priciest list price today) is $60,000                             |
| `MAX_NAME_LENGTH`      | 256 characters   | every name: provider, model, agent, user, ..., decision id, label      |
| `MAX_CAPABILITIES`     | 32               | capabilities a decision request may list                               |
| `MAX_SPAN_LATENESS_S`  | 3600 s           | a span ending further in the past (or the future) is charged on arrival|
| `MAX_NUMBER_TEXT`      | 64 characters    | a number written as text (JSON string, attribute string)               |
| `MAX_LIMIT_USD`        | $9,000,000       | a budget's `limit_usd`: under the stores' ceiling (2^53-1 nano-USD)    |
| `MAX_LIMIT_TOKENS`     | 10^15            | a budget's `limit_tokens` (under 2^53)                                 |
| `MAX_LIMIT_CALLS`      | 10^15            | a budget's `limit_calls` (under 2^53)                                  |
| `MAX_ALERTS`           | 20               | alert thresholds one budget may list                                   |

`MAX_CALL_TOKENS`, `MAX_CALL_COST_USD` and `MAX_SPAN_LATENESS_S` are the defaults of the settings
`OTEL_PUPPY_MAX_CALL_TOKENS`, `OTEL_PUPPY_MAX_CALL_COST_USD` and `OTEL_PUPPY_MAX_SPAN_LATENESS_S`,
which may lower them (never raise them) for span ingestion; decision requests are held to the
constants. What the stores must hold, worst case, for one applied span: each of its token counts
at most `MAX_CALL_TOKENS`, and its priced cost at most `2 * MAX_CALL_TOKENS` tokens at
`policies.base.MAX_PRICE_MTOK` per million (2e17 nano-USD, under 2^63; genai-prices' own prices are far
lower). Sums of those are the stores' business: they saturate above every limit.

>>> read_decimal("0.02", name="estimated_cost_usd", maximum=MAX_CALL_COST_USD)
Decimal('0.02')
>>> read_decimal("1e999990", name="estimated_cost_usd", maximum=MAX_CALL_COST_USD)
Traceback (most recent call last):
...
otel_puppy.bounds.OutOfBounds: estimated_cost_usd is out of range: 1e999990 (allowed: 0 to 100000)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Final

from otel_puppy.exceptions import PuppyError

__all__ = (
    "DEFAULT_LIMITS",
    "MAX_ALERTS",
    "MAX_CALL_COST_USD",
    "MAX_CALL_TOKENS",
    "MAX_CAPABILITIES",
    "MAX_LIMIT_CALLS",
    "MAX_LIMIT_TOKENS",
    "MAX_LIMIT_USD",
    "MAX_NAME_LENGTH",
    "MAX_NUMBER_TEXT",
    "MAX_SPAN_LATENESS_S",
    "CallLimits",
    "InvalidNumber",
    "NotANumber",
    "OutOfBounds",
    "check_name",
    "read_count",
    "read_decimal",
    "shown",
)

MAX_CALL_TOKENS: Final = 100_000_000
"""Each token count of one call (input, output, cache reads, cache writes, reasoning, an estimate)."""
MAX_CALL_COST_USD: Final = Decimal(100_000)
"""One call's reported cost (`operation.cost`, `gen_ai.usage.cost`) or estimate (`estimated_cost_usd`)."""
MAX_NAME_LENGTH: Final = 256
"""Characters of any name: decision-request fields, span attributes used as labels or scopes, ids."""
MAX_CAPABILITIES: Final = 32
"""Capabilities one decision request may list."""
MAX_SPAN_LATENESS_S: Final = 3600.0
"""Seconds a span's end may lie before (or after) its arrival and still be charged to its own time."""
MAX_NUMBER_TEXT: Final = 64
"""Characters of a number written as text, surrounding blanks excluded."""
MAX_LIMIT_USD: Final = Decimal(9_000_000)
"""A budget's `limit_usd`. Every count a store keeps saturates at `store.base.CEILING` (2**53 - 1
nano-USD, about $9,007,199.25, exact in a Redis Lua double), which must stay above every limit so a
saturated budget denies."""
MAX_LIMIT_TOKENS: Final = 10**15
"""A budget's `limit_tokens`."""
MAX_LIMIT_CALLS: Final = 10**15
"""A budget's `limit_calls`."""
MAX_ALERTS: Final = 20
"""Alert thresholds one budget may list (a hundred thousand took `otel-puppy check` five seconds)."""
MAX_DECODE_PROCESSES: Final = 16
"""`OTEL_PUPPY_DECODE_PROCESSES`: each is an interpreter of about 80 MB (`server/decoder.py`)."""

_NUMBER: Final = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:[eE]([+-]?[0-9]+))?")
_MAX_EXPONENT: Final = 9999
"""A written exponent past +-9999 is read as +-9999: the value stays zero, too large, or too small to
matter, and `Decimal` never sees an exponent it would take long (or fail) to handle."""
_FINEST: Final = Decimal("1e-30")
"""Amounts are kept to 30 decimal places at most (a nano-dollar is 1e-9): `1e-999999999` becomes 0."""
_CONTEXT: Final = Context(prec=MAX_NUMBER_TEXT + 40)
"""Wide enough that every in-range value with at most 30 decimal places is exact."""


@dataclass(frozen=True, slots=True)
class CallLimits:
    """The bounds a span's numbers are held to (the settings' `max_call_tokens`, `max_call_cost_usd`)."""

    max_tokens: int = MAX_CALL_TOKENS
    max_cost_usd: Decimal = MAX_CALL_COST_USD


DEFAULT_LIMITS: Final = CallLimits()


class InvalidNumber(PuppyError, ValueError):
    """A value that should be a number and cannot be used; `reason` is the part after the field's name."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name} {reason}")


class NotANumber(InvalidNumber):
    """Not a number at all (a word, a boolean, NaN, text too long to be one), or not a whole number."""


class OutOfBounds(InvalidNumber):
    """A number (or a name's length) outside its documented bound: the request or span is refused.

    `below` says which side: under the minimum (a negative amount), else over the maximum.
    """

    def __init__(self, name: str, reason: str, *, below: bool = False) -> None:
        super().__init__(name, reason)
        self.below = below


def read_decimal(value: object, *, name: str, maximum: Decimal | int, minimum: Decimal | int = 0) -> Decimal:
    """`value` (an int, float, `Decimal` or decimal text) as a `Decimal` in [`minimum`, `maximum`].

    Text is checked before it is converted (at most `MAX_NUMBER_TEXT` characters; an exponent past
    +-9999 read as +-9999) and every range check compares before converting, so no value costs more
    than microseconds. The result has at most 30 decimal places.

    Raises:
        NotANumber: not a number (booleans, NaN, words, over-long text included).
        OutOfBounds: a number outside the range (infinities included).
    """
    number: Decimal
    if type(value) is str and len(value) <= _PLAIN_LENGTH and _PLAIN.fullmatch(value):
        # The usual text (`"0.002"`): digits only, no sign, exponent or spaces; past `_from_text`'s
        # guards and the rounding, as it has at most 15 decimals. Out of range takes the path below.
        number = Decimal(value)
        if minimum <= number <= maximum:
            return number if number else _ZERO  # `0.00` is 0, as below
    if isinstance(value, bool):
        raise NotANumber(name, "is not a number")
    if isinstance(value, int):
        # Compared with int bounds: an int against a `Decimal` bound is converted first, which takes
        # seconds for a 10^6-digit int. For a whole number, v <= M exactly when v <= floor(M).
        if not math.ceil(minimum) <= value <= math.floor(maximum):
            reason = f"is out of range: {shown(value)} (allowed: {minimum} to {maximum})"
            raise OutOfBounds(name, reason, below=value < minimum)
        return Decimal(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise NotANumber(name, "is not a number")
        if not minimum <= value <= maximum:
            reason = f"is out of range: {value!r} (allowed: {minimum} to {maximum})"
            raise OutOfBounds(name, reason, below=value < minimum)
        number = Decimal(repr(value))  # the shortest text that reads back as this float: 0.1, not 0.1000...0555
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        number = _from_text(value, name)
    else:
        raise NotANumber(name, "is not a number")
    if number.is_nan():
        raise NotANumber(name, "is not a number")
    # `Decimal` compares by exponent first: `1E+999999999 > 100000` is as cheap as `2 > 1`.
    if number.is_infinite() or not minimum <= number <= maximum:
        reason = f"is out of range: {shown(value)} (allowed: {minimum} to {maximum})"
        raise OutOfBounds(name, reason, below=number < minimum)
    if number.as_tuple().exponent < -30:  # type: ignore[operator]  # finite: the exponent is an int
        try:
            number = number.quantize(_FINEST, context=_CONTEXT)
        except InvalidOperation:  # more digits than the context holds: only possible from a `Decimal` input
            raise NotANumber(name, "has too many digits") from None
    if not number and (number.is_signed() or number.as_tuple().exponent != 0):
        number = Decimal(0)  # `1e-999999999` and `-0.0` are 0, not 0E-30 or -0.0
    return number


def read_count(value: object, *, name: str, maximum: int) -> int:
    """`value` as a whole number in [0, `maximum`] (a token count): an int, an integral float or text.

    Raises:
        NotANumber: not a number, or not a whole number (`1.5`).
        OutOfBounds: negative, or over `maximum` (infinities included).
    """
    if type(value) is int and 0 <= value <= maximum:
        return value  # the usual case, on every span: no conversion at all
    number = read_decimal(value, name=name, maximum=maximum)
    if number != number.to_integral_value():
        raise NotANumber(name, "is not a whole number")
    return int(number)


def check_name(value: object, *, name: str, optional: bool = True) -> None:
    """A name field: a string of at most `MAX_NAME_LENGTH` characters (or `None` when `optional`).

    Raises:
        OutOfBounds: longer than `MAX_NAME_LENGTH`.
        TypeError: not a string.
    """
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > MAX_NAME_LENGTH:
        raise OutOfBounds(name, f"is {len(value)} characters long (allowed: at most {MAX_NAME_LENGTH})")


_PLAIN: Final = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,15})?")
_PLAIN_LENGTH: Final = 31
_ZERO: Final = Decimal(0)


def _from_text(value: str, name: str) -> Decimal:
    text = value.strip()
    if len(text) > MAX_NUMBER_TEXT:
        raise NotANumber(name, f"is not a number of at most {MAX_NUMBER_TEXT} characters")
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise NotANumber(name, "is not a number")
    mantissa, exponent = match.groups()
    if exponent is None:
        return Decimal(mantissa)
    return Decimal(f"{mantissa}e{max(-_MAX_EXPONENT, min(int(exponent), _MAX_EXPONENT))}")


def shown(value: object) -> str:
    """A value fit to quote in a message, whoever wrote it: never more than a few dozen characters, and
    escaped (`ascii()`, quoted) unless it is printable ASCII, so that no control character, and no empty
    text, hides in the message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"
    text = value if isinstance(value, str) else str(value)
    plain = text != "" and text.isascii() and text.isprintable()
    if len(text) <= 40:
        return text if plain else ascii(text)
    return f"{text[:20] if plain else ascii(text[:20])}...({len(text)} characters)"
