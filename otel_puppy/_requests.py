"""The values of a decision request, checked before any arithmetic or store round trip.

`PolicyEngine.decide()` takes requests from in-process callers and from `POST /v1/decide`. A value
that would make the decision path raise (a NaN estimate, a string token count, a lone surrogate a
store cannot encode), loosen a budget (a negative estimate reserves a negative amount) or take
seconds (`Decimal("1e999990")` turned into nano-USD) is the caller's own bug or an attack: it is
refused with `RequestError` naming the field, before anything is decided or reserved, so it can
never be answered by the fail mode.

`DecisionRequest` itself holds its numbers and names to `otel_puppy.bounds` when it is built (and
`DecisionRequest.from_fields` turns keywords into one, refusing with `RequestError`); this adds what
a decision needs beyond them (text every store can encode, a required name not empty,
priced estimates every store holds exactly) and turns every refusal into one `RequestError`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from otel_puppy.bounds import MAX_CAPABILITIES, MAX_NAME_LENGTH
from otel_puppy.decision import DecisionRequest, Priority
from otel_puppy.exceptions import RequestError
from otel_puppy.money import usd_to_nanos

__all__ = (
    "MAX_AMOUNT",
    "check_request",
    "estimate_nanos",
)

MAX_AMOUNT: Final = 2**53 - 1
"""Largest estimate in nano-USD or tokens (about $9 million): exact in every store, Redis Lua included."""
_MAX_USD_DIGITS: Final = 7
"""`estimated_cost_usd` below 10^7 USD (checked on the exponent, before any conversion)."""

_NAMES: Final = ("provider", "model")
_OPTIONAL_NAMES: Final = ("agent", "service", "user", "team", "environment", "conversation", "operation")
"""May be empty (as good as absent); never over `MAX_NAME_CHARS`."""
_COUNTS: Final = ("estimated_input_tokens", "estimated_output_tokens", "context_tokens")
_PRIORITIES: Final = tuple(p.value for p in Priority)


def check_request(request: DecisionRequest) -> None:
    """Refuse a request whose values a decision cannot use (see the module's docstring).

    Raises:
        RequestError: naming the first field that is wrong.
    """
    for name in _NAMES:
        _check_name(name, getattr(request, name), optional=False)
    for name in _OPTIONAL_NAMES:
        _check_name(name, getattr(request, name), optional=True)
    if not isinstance(request.priority, Priority):
        raise RequestError("priority", f"must be one of {', '.join(_PRIORITIES)}")
    for name in _COUNTS:
        value = getattr(request, name)
        if value is not None and (
            type(value) is not int or not 0 <= value <= MAX_AMOUNT  # bool is not a count
        ):
            raise RequestError(name, f"must be a whole number from 0 to {MAX_AMOUNT}")
    capabilities = request.capabilities
    if not isinstance(capabilities, tuple | list) or len(capabilities) > MAX_CAPABILITIES:
        raise RequestError("capabilities", f"must be a list of at most {MAX_CAPABILITIES} names")
    for capability in capabilities:
        _check_name("capabilities", capability, optional=False)
    # `estimated_cost_usd` is refused by `estimate_nanos` when admission reads it, before any
    # breaker probe is taken or anything is reserved: checking it here too would convert it twice.


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


def _check_name(field: str, value: object, *, optional: bool) -> None:
    if type(value) is str and value.isascii() and 0 < len(value) <= MAX_NAME_LENGTH:
        return  # the usual name: ASCII always encodes (one C call instead of an encode)
    if optional and (value is None or value == ""):
        return
    if not isinstance(value, str) or not value:
        raise RequestError(field, "must be a non-empty string" + (" or null" if optional else ""))
    if len(value) > MAX_NAME_LENGTH:
        raise RequestError(field, f"must be at most {MAX_NAME_LENGTH} characters (got {len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(field, "must be valid Unicode text (no lone surrogates)") from None
