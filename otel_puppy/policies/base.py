"""Building blocks of the policy grammar: the base model, section entries, shared field types, prices."""

from __future__ import annotations

import re
from abc import abstractmethod
from decimal import Decimal
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
)

from otel_puppy.bounds import MAX_NAME_LENGTH
from otel_puppy.money import format_usd
from otel_puppy.pricing import PriceOverride

__all__ = (
    "MAX_PRICE_DECIMAL_PLACES",
    "MAX_PRICE_MTOK",
    "Degrade",
    "Duration",
    "LimitAction",
    "Name",
    "NamedEntry",
    "PolicyModel",
    "PriceEntry",
    "SectionEntry",
)

MAX_PRICE_MTOK: Final = Decimal(1_000_000)
"""Highest accepted price, USD per million tokens ($1 a token): anything above is a typo, and
unbounded exponents (`1e999999999`) would break money arithmetic at run time."""
MAX_PRICE_DECIMAL_PLACES: Final = 12
"""Finer than a pico-dollar per million tokens is below what a nano-dollar total can show; the bound
also keeps `1e-999999999` from printing a billion digits."""

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH)]
"""A non-empty string of at most `bounds.MAX_NAME_LENGTH` characters, surrounding whitespace removed."""
_NOT_IN_POLICY_NAMES = re.compile(r"[|\x00-\x1f\x7f]")


def _policy_name(name: str) -> str:
    # `|` separates a policy's name from its scope in stored keys (`budget:NAME|agent=a`) and in
    # breaker state: a name holding one could address another policy's state.
    found = _NOT_IN_POLICY_NAMES.search(name)
    if found is not None:
        raise ValueError(f"a policy name may not contain {found.group()!r}")
    return name


PolicyName = Annotated[Name, AfterValidator(_policy_name)]
"""A `Name` without `|` or control characters: policy names are parts of stored keys and labels."""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(value: object) -> object:
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match:
            raise ValueError(f"expected a duration like 500ms, 30s, 5m, 1h or 7d, got {value!r}")
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=90 * 86400)]
"""A positive duration: `30s`, `5m`, `1h`, `7d` (or a number of seconds), at most 90 days."""
UsdPerMTok = Annotated[
    Decimal,
    Field(ge=0, le=MAX_PRICE_MTOK, decimal_places=MAX_PRICE_DECIMAL_PLACES, allow_inf_nan=False),
]
"""A finite, non-negative price in USD per million tokens."""


class Degrade(BaseModel):
    """`action: {degrade: gpt-4.1-mini}`: use this cheaper model instead (`provider:model` or a bare model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    degrade: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]

    def target(self, provider: str) -> tuple[str, str]:
        """(provider, model) to use; a bare model keeps the request's provider."""
        head, sep, tail = self.degrade.partition(":")
        return (head, tail) if sep else (provider, self.degrade)


def _action_tag(value: object) -> str:
    return "degrade" if isinstance(value, dict | Degrade) else "simple"


SimpleAction = Literal["warn", "deny"]
LimitAction = Annotated[
    Annotated[SimpleAction, Tag("simple")] | Annotated[Degrade, Tag("degrade")],
    Discriminator(_action_tag),
]
"""What a budget does when over: `warn`, `deny`, or `{degrade: model}`."""


class PolicyModel(BaseModel):
    """Base of every model a policy file is validated into: unknown keys are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SectionEntry(PolicyModel):
    """One item of a top-level section (a price, later a budget, a breaker...)."""

    @abstractmethod
    def identity(self) -> str:
        """What two entries of the same section must not share, across all files.

        Compared case-insensitively; shown to users in duplicate-entry errors.
        """

    @abstractmethod
    def describe(self) -> str:
        """One human line saying what this entry will do, for `PolicySet.summary()`."""


class NamedEntry(SectionEntry):
    """An entry users refer to by name (budgets, anomalies, breakers, routing): names are unique."""

    name: PolicyName

    def identity(self) -> str:
        """The name: two policies of one kind may not share it."""
        return self.name


def _usd(amount: Decimal) -> str:
    # Fixed point so `1e1` reads as 10; bounded by the validators above, so never a huge string.
    return f"{format_usd(amount, dollar=True)}/MTok"


class PriceEntry(SectionEntry):
    """A price for one model, for models genai-prices does not know or to correct it.

    >>> entry = PriceEntry(provider="self-hosted", model="llama-3.1-70b",
    ...                    input_mtok=Decimal("0.6"), output_mtok=Decimal("0.6"))
    >>> entry.describe()
    'price self-hosted/llama-3.1-70b: $0.6/MTok in, $0.6/MTok out'
    """

    provider: Name
    """Provider as spans name it (`gen_ai.provider.name`); matched case-insensitively."""
    model: Name
    """Model as spans name it (`gen_ai.request.model`); matched case-insensitively."""
    input_mtok: UsdPerMTok
    """USD per million input tokens."""
    output_mtok: UsdPerMTok
    """USD per million output tokens."""
    cache_read_mtok: UsdPerMTok | None = None
    """USD per million tokens read from the prompt cache; `None` when the model has no cache price."""
    cache_write_mtok: UsdPerMTok | None = None
    """USD per million tokens written to the prompt cache."""

    def identity(self) -> str:
        """`provider/model`: one price per model."""
        return f"{self.provider}/{self.model}"

    def describe(self) -> str:
        """`price provider/model: $in/MTok in, $out/MTok out[, cache prices]`."""
        parts = [f"{_usd(self.input_mtok)} in", f"{_usd(self.output_mtok)} out"]
        if self.cache_read_mtok is not None:
            parts.append(f"{_usd(self.cache_read_mtok)} cache read")
        if self.cache_write_mtok is not None:
            parts.append(f"{_usd(self.cache_write_mtok)} cache write")
        return f"price {self.identity()}: {', '.join(parts)}"

    def to_override(self) -> PriceOverride:
        """The `Pricer`'s form of this price."""
        return PriceOverride(
            provider=self.provider,
            model=self.model,
            input_mtok=self.input_mtok,
            output_mtok=self.output_mtok,
            cache_read_mtok=self.cache_read_mtok,
            cache_write_mtok=self.cache_write_mtok,
        )
