"""Money printed from nano-dollars: `format_nanos` is `format_usd` of the same amount, to the digit."""

from __future__ import annotations

import pytest

from otel_puppy.money import format_nanos, format_usd, nanos_to_usd
from otel_puppy.store.base import CEILING

AMOUNTS = [
    0,
    1,
    9,
    999_999_999,
    10**9,
    10**9 + 1,
    5_600_000,
    1_234_567_890_123,
    CEILING,
    2**63,
    10**27,
    10**28,
    10**40,
    -1,
]


@pytest.mark.parametrize("nanos", AMOUNTS)
@pytest.mark.parametrize("dollar", [False, True])
def test_format_nanos_is_format_usd_of_the_amount(nanos: int, dollar: bool) -> None:
    assert format_nanos(nanos, dollar=dollar) == format_usd(nanos_to_usd(nanos), dollar=dollar)


def test_format_nanos_prints_every_digit() -> None:
    assert [format_nanos(n) for n in (0, 1, CEILING)] == ["0.000000000", "0.000000001", "9007199.254740991"]
    assert format_nanos(-(10**9) - 1, dollar=True) == "-$1.000000001"
