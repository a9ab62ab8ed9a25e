"""Anomaly detectors: a signal per (policy, subject) against its own baseline."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from otel_puppy.policies.base import Duration, Name, PolicyModel, SectionEntry
from otel_puppy.policies.matching import Dimension, Match

__all__ = ("AnomalyPolicy", "Ratio", "Signal", "ZScore")

Signal = Literal["cost_rate", "token_rate", "request_rate", "error_rate", "latency_p95"]


class ZScore(PolicyModel):
    """Fire when the current value is this many standard deviations above the EWMA baseline."""

    zscore: Annotated[float, Field(gt=0, le=1000)]


class Ratio(PolicyModel):
    """Fire when the current value is this many times the EWMA baseline."""

    ratio: Annotated[float, Field(gt=1, le=1_000_000)]


def _threshold_tag(value: object) -> str:
    if isinstance(value, dict):
        return "ratio" if "ratio" in value else "zscore"
    return "ratio" if isinstance(value, Ratio) else "zscore"


Threshold = Annotated[Annotated[ZScore, Tag("zscore")] | Annotated[Ratio, Tag("ratio")], Discriminator(_threshold_tag)]


class AnomalyPolicy(SectionEntry):
    """Watch `signal` per subject (`per`), sampled every `interval`, against a baseline spanning
    `baseline`; after `min_samples` intervals, a value past `threshold` is an anomaly, acted on at most
    once per `cooldown`.

    >>> AnomalyPolicy(name="spend-spike", signal="cost_rate", threshold={"zscore": 4}).describe()
    'anomaly spend-spike: cost_rate zscore > 4 over a 1h baseline, alert'
    """

    name: Name
    signal: Signal
    match: Match | None = None
    per: tuple[Dimension, ...] = ()
    baseline: Duration = 3600.0
    interval: Duration = 60.0
    threshold: Threshold = ZScore(zscore=4)
    min_samples: Annotated[int, Field(ge=1, le=100_000)] = 20
    cooldown: Duration = 300.0
    action: Literal["alert", "warn", "deny", "open_breaker"] = "alert"
    shadow: bool = False
    max_subjects: Annotated[int, Field(ge=1, le=100_000)] = 1_000

    @field_validator("per")
    @classmethod
    def _no_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("each dimension may appear once in per")
        return value

    def identity(self) -> str:
        return self.name

    def describe(self) -> str:
        threshold = (
            f"zscore > {self.threshold.zscore:g}"
            if isinstance(self.threshold, ZScore)
            else f"> {self.threshold.ratio:g}x"
        )
        scope = f" for {self.match.describe()}" if self.match else ""
        per = f" per {'/'.join(self.per)}" if self.per else ""
        baseline = f"{self.baseline / 3600:g}h" if self.baseline >= 3600 else f"{self.baseline / 60:g}m"
        shadow = " (shadow)" if self.shadow else ""
        return (
            f"anomaly {self.name}: {self.signal}{per}{scope} {threshold} over a {baseline} baseline, "
            f"{self.action}{shadow}"
        )
