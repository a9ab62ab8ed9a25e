"""The policy-file grammar as pydantic models, and `PolicySet`, what loading the files produces.

Each top-level section of a policy file is a field of `PolicyFile` holding a tuple of one
`SectionEntry` model, plus a field of the same name on `PolicySet`. The loader knows sections only
through `PolicyFile.model_fields`, so a new section is its entry model (in its own file) and those
two fields; nothing in the loader changes.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from otel_puppy.pricing import PriceOverride

__all__ = (
    "MAX_PRICE_DECIMAL_PLACES",
    "MAX_PRICE_MTOK",
    "PolicyFile",
    "PolicyModel",
    "PolicySet",
    "PriceEntry",
    "SectionEntry",
)

MAX_PRICE_MTOK: Final = Decimal(1_000_000)
"""Highest accepted price, USD per million tokens ($1 a token): anything above is a typo, and
unbounded exponents (`1e999999999`) would break money arithmetic at run time."""
MAX_PRICE_DECIMAL_PLACES: Final = 12
"""Finer than a pico-dollar per million tokens is below what a nano-dollar total can show; the bound
also keeps `1e-999999999` from printing a billion digits."""

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A non-empty string, surrounding whitespace removed."""
UsdPerMTok = Annotated[
    Decimal,
    Field(ge=0, le=MAX_PRICE_MTOK, decimal_places=MAX_PRICE_DECIMAL_PLACES, allow_inf_nan=False),
]
"""A finite, non-negative price in USD per million tokens."""


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


def _usd(amount: Decimal) -> str:
    # `:f` so `1e1` reads as 10; bounded by the validators above, so never a huge string.
    return f"${amount:f}/MTok"


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


class PolicyFile(PolicyModel):
    """The content of one policy file. Every field is a section: a tuple of one `SectionEntry` kind."""

    prices: tuple[PriceEntry, ...] = ()
    """Prices that override or extend genai-prices."""

    @field_validator("*", mode="before")
    @classmethod
    def _null_section_is_empty(cls, value: object) -> object:
        # `prices:` with every entry commented out parses as null; it means "no entries".
        return () if value is None else value


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every policy in force, merged from all policy files; replaced whole on reload.

    `PolicySet()` is the valid empty set: no policies, genai-prices prices only.
    """

    prices: tuple[PriceEntry, ...] = ()
    sources: tuple[Path, ...] = ()
    """The files this set was loaded from, in load order."""

    def price_overrides(self) -> tuple[PriceOverride, ...]:
        """The `prices:` entries in the form `Pricer` takes."""
        return tuple(entry.to_override() for entry in self.prices)

    def summary(self) -> list[str]:
        """What this set will do, one line per entry, section by section.

        >>> PolicySet().summary()
        []
        """
        entries: list[SectionEntry] = []
        for section in PolicyFile.model_fields:
            entries.extend(getattr(self, section))
        return [entry.describe() for entry in entries]
