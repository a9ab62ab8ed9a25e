"""Indicators: each measured aspect of the system against its threshold, and the worst status.

The store (it answers, and how fast), open breakers, firing anomalies, budget utilization (the
fullest enforced instance) and the error rate over the model statistics' window come from the
engine's snapshot; the share of unpriced calls, dropped spans and internal errors come from
`Metrics.totals()`, counted since the engine started.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from otel_puppy.decision import Action

if TYPE_CHECKING:
    from otel_puppy.engine import Snapshot
    from otel_puppy.metrics import MetricTotals

__all__ = (
    "BUDGET_THRESHOLD",
    "ERROR_RATE_THRESHOLD",
    "STORE_LATENCY_THRESHOLD_S",
    "UNPRICED_THRESHOLD",
    "Indicator",
    "Status",
    "counter_indicators",
    "state_indicators",
    "store_failed",
    "store_read",
    "worst",
)

Status = Literal["healthy", "degraded", "unhealthy"]
"""Worst last; the overall status is the worst of the indicators'."""

STORE_LATENCY_THRESHOLD_S: Final = 0.1
"""Reading the engine's state slower than this is `degraded`."""
ERROR_RATE_THRESHOLD: Final = 0.1
"""A share of failed calls over the model statistics' window above this is `degraded`."""
BUDGET_THRESHOLD: Final = 0.9
"""An enforced budget at or past this utilization is `degraded`; an exhausted `deny` budget is `unhealthy`."""
UNPRICED_THRESHOLD: Final = 0.05
"""A share of calls that could not be priced above this is `degraded` (their spend is unknown)."""

_RANK: Final[dict[Status, int]] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@dataclass(frozen=True, slots=True)
class Indicator:
    """One measured aspect of the system against its threshold."""

    name: str
    value: float | None
    """The measured value; `None` when it could not be measured (the store failed)."""
    threshold: float
    """Past this value the indicator is no longer healthy."""
    status: Status
    message: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "status": self.status,
            "message": self.message,
        }


def worst(indicators: Iterable[Indicator]) -> Status:
    """The worst status among `indicators`; `healthy` when there is none."""
    status: Status = "healthy"
    for indicator in indicators:
        if _RANK[indicator.status] > _RANK[status]:
            status = indicator.status
    return status


def store_read(elapsed_s: float) -> Indicator:
    """The store answered the state read in `elapsed_s` seconds."""
    slow = elapsed_s > STORE_LATENCY_THRESHOLD_S
    message = f"state read in {elapsed_s * 1000:.1f} ms" + (" (slow)" if slow else "")
    return Indicator("store", elapsed_s, STORE_LATENCY_THRESHOLD_S, "degraded" if slow else "healthy", message)


def store_failed(error: Exception) -> Indicator:
    """The store did not answer the state read: nothing read from it can be judged."""
    return Indicator("store", None, STORE_LATENCY_THRESHOLD_S, "unhealthy", f"store failed: {error}")


def state_indicators(snapshot: Snapshot) -> list[Indicator]:
    """Open breakers, firing anomalies, budget utilization and the recent error rate."""
    indicators = []
    enforced = [b for b in snapshot.breakers if not b.shadow]
    open_ = [b for b in enforced if b.state == "open"]
    half_open = [b for b in enforced if b.state == "half_open"]
    if open_ or half_open:
        listed = [f"{b.policy} for {b.subject} is {b.state.replace('_', '-')}" for b in open_ + half_open]
        message = f"calls are refused or probed: {'; '.join(listed)}"
    else:
        message = "no breaker open"
    status: Status = "degraded" if open_ or half_open else "healthy"
    indicators.append(Indicator("open_breakers", float(len(open_)), 0.0, status, message))

    firing = [a for a in snapshot.anomalies if a.firing and not a.shadow]
    if firing:
        listed = [f"{a.policy} ({a.signal}) for {a.subject or 'all'}" for a in firing]
        message = f"firing: {'; '.join(listed)}"
    else:
        message = "no anomaly firing"
    indicators.append(Indicator("anomalies", float(len(firing)), 0.0, "degraded" if firing else "healthy", message))

    budgets = [b for b in snapshot.budgets if not b.shadow and b.utilization is not None]
    if budgets:
        fullest = max(budgets, key=lambda b: b.utilization or 0.0)
        utilization = fullest.utilization or 0.0
        over = [b for b in budgets if (b.utilization or 0.0) >= BUDGET_THRESHOLD]
        # A budget's action is its `on_exceed` only once it is exhausted: these refuse calls now.
        denying = [b for b in over if b.action is Action.DENY]
        status = "unhealthy" if denying else "degraded" if over else "healthy"
        where = f" for {fullest.scope}" if fullest.scope else ""
        message = f"fullest: {fullest.policy}{where} at {utilization:.0%} of its {fullest.window} limit"
        if over:
            message += f"; {len(over)} over {BUDGET_THRESHOLD:.0%}"
        if denying:
            message += f", {len(denying)} denying calls"
        indicators.append(Indicator("budget_utilization", utilization, BUDGET_THRESHOLD, status, message))
    else:
        indicators.append(Indicator("budget_utilization", 0.0, BUDGET_THRESHOLD, "healthy", "no budget in use"))

    requests = sum(m.requests for m in snapshot.models)
    errors = sum(m.errors for m in snapshot.models)
    rate = errors / requests if requests else 0.0
    status = "degraded" if rate > ERROR_RATE_THRESHOLD else "healthy"
    message = f"{errors} of {requests} recent model calls failed ({rate:.1%})" if requests else "no recent model calls"
    indicators.append(Indicator("error_rate", rate, ERROR_RATE_THRESHOLD, status, message))
    return indicators


def counter_indicators(totals: MetricTotals) -> list[Indicator]:
    """The share of unpriced calls, dropped spans and internal errors, since the engine started."""
    requests, unpriced = totals.calls.requests, totals.calls.unpriced
    share = unpriced / requests if requests else 0.0
    status: Status = "degraded" if share > UNPRICED_THRESHOLD else "healthy"
    message = (
        f"{unpriced} of {requests} calls since start could not be priced ({share:.1%}); "
        "add their models under prices: in the policy files"
        if unpriced
        else "every call was priced"
    )
    indicators = [Indicator("unpriced_share", share, UNPRICED_THRESHOLD, status, message)]

    dropped = totals.dropped_spans
    message = (
        f"{dropped} spans dropped since start: the span processor's queue was full (raise queue_size)"
        if dropped
        else "no span dropped"
    )
    # Values are floats, as the JSON has always had them.
    indicators.append(Indicator("dropped_spans", float(dropped), 0.0, "degraded" if dropped else "healthy", message))

    errors = totals.internal_errors
    message = f"{errors} internal errors since start; see the service log" if errors else "no internal error"
    indicators.append(Indicator("internal_errors", float(errors), 0.0, "degraded" if errors else "healthy", message))
    return indicators
