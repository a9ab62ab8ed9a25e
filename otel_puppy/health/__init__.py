"""The system's health as data: indicators, recommendations and hourly trends (`GET /v1/health`).

`assess(engine)` reads what the engine already keeps and judges it:

- **Indicators** (`indicators.py`), each with its value, threshold, status and a message: the
  store (it answers, and how fast), the error rate over the model statistics' window (15
  minutes), budget utilization (the fullest enforced instance), open breakers, firing anomalies,
  the share of calls that could not be priced, dropped spans and internal errors. The overall
  status is the worst indicator's.
- **Recommendations** (`advice.py`) naming what to look at: the provider and model behind a spend
  spike, a faster model for a slow one, a fallback for an open breaker, a budget about to run out
  and when it resets, a `prices:` entry for a model genai-prices does not know.
- **Trends** (`history.py`) of cost, errors and latency per calendar hour (in the engine's
  timezone) over the last `HISTORY_HOURS` hours: up, down or stable.

Everything is read through typed APIs: the engine's `snapshot()`, `Metrics.totals()` for the
counters since start, and the hourly `HealthHistory` the engine owns (`engine.history`), which
assessments and Prometheus scrapes feed. Time comes from `engine.clock`, so tests move a fake
clock instead of sleeping.

>>> health = assess(engine)  # doctest: +SKIP
>>> health.status, [t.direction for t in health.trends]  # doctest: +SKIP
('degraded', ['up', 'stable', 'stable'])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otel_puppy.health.advice import LATENCY_SLOW_S, MAX_PER_KIND, Recommendation
from otel_puppy.health.assessment import Health, assess
from otel_puppy.health.history import (
    HISTORY_HOURS,
    SAMPLE_EVERY_S,
    TREND_DOWN_PCT,
    TREND_UP_PCT,
    HealthHistory,
    HourPoint,
    Trend,
)
from otel_puppy.health.indicators import (
    BUDGET_THRESHOLD,
    ERROR_RATE_THRESHOLD,
    STORE_LATENCY_THRESHOLD_S,
    UNPRICED_THRESHOLD,
    Indicator,
    Status,
)

if TYPE_CHECKING:
    from otel_puppy.engine import PolicyEngine

__all__ = (
    "BUDGET_THRESHOLD",
    "ERROR_RATE_THRESHOLD",
    "HISTORY_HOURS",
    "LATENCY_SLOW_S",
    "MAX_PER_KIND",
    "SAMPLE_EVERY_S",
    "STORE_LATENCY_THRESHOLD_S",
    "TREND_DOWN_PCT",
    "TREND_UP_PCT",
    "UNPRICED_THRESHOLD",
    "Health",
    "HealthHistory",
    "HourPoint",
    "Indicator",
    "Recommendation",
    "Status",
    "Trend",
    "assess",
    "history_of",
)


def history_of(engine: PolicyEngine) -> HealthHistory:
    """The engine's hourly history: `engine.history` (kept for callers of the earlier function)."""
    return engine.history
