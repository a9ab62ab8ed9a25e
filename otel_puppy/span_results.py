"""What became of a batch of spans, counted: `otel_puppy_spans_total{result}` and late spans.

`applied` (priced and added), `invalid` (applied, with usage problems), `duplicate` (already
applied), `nested` (a child of an applied call); `rejected` is counted before the store is asked.
Late spans (`otel_puppy_late_spans_total{direction}`) ended outside the lateness bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from otel_puppy.admission import late
from otel_puppy.calls import LLMCall
from otel_puppy.metrics import Metrics
from otel_puppy.pricing import Price
from otel_puppy.snapshot import Observation
from otel_puppy.store import ApplyResult

__all__ = ("count_results",)

_DUPLICATE: Final = ApplyResult.DUPLICATE
_NESTED: Final = ApplyResult.NESTED


def count_results(
    metrics: Metrics,
    observations: Sequence[Observation],
    applied: Sequence[tuple[LLMCall, Price]],
    now: float,
    lateness_s: float,
) -> None:
    """Count one batch's results; `applied` are the observations the store applied."""
    invalid = sum(1 for call, _ in applied if call.problems)
    late_calls = [call.end_ns / 1e9 < now for call, _ in applied if late(call, now, lateness_s)]
    if late_calls:
        past = sum(late_calls)
        for direction, count in (("past", past), ("future", len(late_calls) - past)):
            if count:
                metrics.record_late(direction, count)
    duplicate = nested = 0
    for observation in observations:  # one walk for both (most results are `applied`)
        outcome = observation.result
        if outcome is _DUPLICATE:
            duplicate += 1
        elif outcome is _NESTED:
            nested += 1
    for result, count in (
        ("applied", len(applied) - invalid),
        ("invalid", invalid),
        ("duplicate", duplicate),
        ("nested", nested),
    ):
        if count:
            metrics.record_spans(result, count)
