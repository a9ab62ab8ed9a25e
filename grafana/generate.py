"""Generate otel_puppy's Grafana dashboards: `python grafana/generate.py` writes `grafana/dashboards/*.json`.

The JSON files are committed (Grafana provisions them as they are); this module is where they are
edited. `python grafana/generate.py --check` exits 1 when a committed file differs from what the
code generates, and `tests/deploy/test_dashboards.py` asserts the same, then runs every panel's
query against a real Prometheus scraping `otel-puppy demo`.

Conventions every panel follows:

- One data source, the `datasource` variable (default: the provisioned Prometheus, uid `prometheus`).
- Counters are summed over replicas (each replica counts the calls it applied); gauges read from the
  shared store (budgets, breakers, total spend) are `max`ed over replicas, never summed.
- `$service`, `$provider`, `$model`, `$agent` filter every series that carries those labels (their
  "All" is `.*`); `$__rate_interval` for rates, `$__range` for totals over the dashboard's range.
- Thresholds come from `otel_puppy.health`, so a dashboard turns red where `GET /v1/health` says
  degraded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from otel_puppy.health import BUDGET_THRESHOLD, ERROR_RATE_THRESHOLD, LATENCY_SLOW_S, UNPRICED_THRESHOLD

__all__ = ("DASHBOARDS", "DASHBOARDS_DIR", "dashboards", "main", "render")

JSON = dict[str, Any]

DASHBOARDS_DIR: Final = Path(__file__).resolve().parent / "dashboards"
DATASOURCE: Final[JSON] = {"type": "prometheus", "uid": "${datasource}"}
TAG: Final = "otel_puppy"
SCHEMA_VERSION: Final = 39
"""Grafana 10.4 / 11: newer Grafanas migrate it on load."""

CALENDAR_WINDOWS: Final = "hour|day|week|month"
"""Budget windows that reset to 0 at a boundary (`rate()` reads the reset like a counter's); the
others are rolling, whose spend also ages out (`deriv()` reads their net growth)."""

# Label matchers for the call metrics (requests, tokens, cost, duration, unpriced).
CALLS: Final = 'service=~"$service", provider=~"$provider", model=~"$model", agent=~"$agent"'
MODELS: Final = 'provider=~"$provider", model=~"$model"'
"""For series labelled by provider and model only (redundant calls)."""

GREEN, YELLOW, ORANGE, RED, BLUE, PURPLE = "green", "yellow", "orange", "red", "blue", "purple"


# --- queries --------------------------------------------------------------------------------------


def selector(metric: str, *matchers: str) -> str:
    """`metric{a, b}`, or the bare name without matchers."""
    joined = ", ".join(m for m in matchers if m)
    return f"{metric}{{{joined}}}" if joined else metric


def rate(metric: str, matchers: str = CALLS, interval: str = "$__rate_interval") -> str:
    return f"rate({selector(metric, matchers)}[{interval}])"


def increase(metric: str, matchers: str = CALLS, interval: str = "$__range") -> str:
    return f"increase({selector(metric, matchers)}[{interval}])"


BUDGET: Final = 'budget=~"$budget"'


def budget_gauge(metric: str, matchers: str = BUDGET) -> str:
    """A budget gauge over replicas: every replica reads the same store, so take one (max)."""
    return f"max by (budget, scope, window) ({selector(metric, matchers)})"


def budget_spend_rate(matchers: str = BUDGET, interval: str = "$__rate_interval") -> str:
    """USD/s spent against each budget instance: `rate()` over calendar windows (their reset to 0 reads
    like a counter reset), the net growth (`deriv()`) of rolling ones, whose old spend ages out."""
    calendar = selector("otel_puppy_budget_spend_usd", matchers, f'window=~"{CALENDAR_WINDOWS}"')
    rolling = selector("otel_puppy_budget_spend_usd", matchers, f'window!~"{CALENDAR_WINDOWS}"')
    return (
        f"max by (budget, scope, window) (rate({calendar}[{interval}]) or clamp_min(deriv({rolling}[{interval}]), 0))"
    )


def burn_rate(matchers: str = BUDGET) -> str:
    """Spend rate over the rate that spends the limit in exactly one window (1: on pace for the limit)."""
    limit = budget_gauge("otel_puppy_budget_limit_usd", matchers)
    length = budget_gauge("otel_puppy_budget_window_seconds", matchers)
    return f"{budget_spend_rate(matchers)} / on (budget, scope, window) ({limit} / {length})"


def quantile(q: float, by: str = "", matchers: str = CALLS, interval: str = "$__rate_interval") -> str:
    labels = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({labels}) "
        f"({rate('otel_puppy_llm_request_duration_seconds_bucket', matchers, interval)}))"
    )


def error_ratio(by: str = "", interval: str = "$__rate_interval") -> str:
    """Failed calls over all calls; 0 (not missing) where nothing failed."""
    grouping = f" by ({by})" if by else ""
    errors = rate("otel_puppy_llm_requests_total", CALLS + ', outcome="error"', interval)
    calls = rate("otel_puppy_llm_requests_total", CALLS, interval)
    return f"(sum{grouping} ({errors}) or sum{grouping} ({calls}) * 0) / sum{grouping} ({calls})"


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    """`format: table` (one column per label, one `Value #<refId>` column per query)."""

    def target(self, ref_id: str) -> JSON:
        target: JSON = {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": self.expr,
            "instant": self.instant,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "refId": ref_id,
        }
        if self.table:
            target["format"] = "table"
        return target


# --- panels ---------------------------------------------------------------------------------------


def steps(*pairs: tuple[float | None, str]) -> JSON:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in pairs]}


def override(matcher: str, option: str, properties: Sequence[tuple[str, Any]]) -> JSON:
    return {
        "matcher": {"id": matcher, "options": option},
        "properties": [{"id": key, "value": value} for key, value in properties],
    }


def color(series: str, name: str) -> JSON:
    return override("byName", series, [("color", {"fixedColor": name, "mode": "fixed"})])


@dataclass(slots=True)
class Panel:
    """One panel: `kind` is Grafana's panel type; `width`/`height` in grid units (24 across)."""

    kind: str
    title: str
    description: str
    queries: Sequence[Query]
    unit: str
    width: int = 12
    height: int = 8
    thresholds: JSON = field(default_factory=lambda: steps((None, GREEN)))
    color_mode: str = "palette-classic"
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    mappings: list[JSON] = field(default_factory=list)
    overrides: list[JSON] = field(default_factory=list)
    custom: JSON = field(default_factory=dict)
    options: JSON = field(default_factory=dict)
    transformations: list[JSON] = field(default_factory=list)

    def build(self, panel_id: int, x: int, y: int) -> JSON:
        defaults: JSON = {
            "color": {"mode": self.color_mode},
            "mappings": self.mappings,
            "thresholds": self.thresholds,
            "unit": self.unit,
        }
        if self.custom:
            defaults["custom"] = self.custom
        for key, value in (("decimals", self.decimals), ("min", self.min), ("max", self.max)):
            if value is not None:
                defaults[key] = value
        return {
            "datasource": DATASOURCE,
            "description": self.description,
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "id": panel_id,
            "options": self.options,
            "targets": [query.target(chr(ord("A") + i)) for i, query in enumerate(self.queries)],
            "title": self.title,
            "transformations": self.transformations,
            "type": self.kind,
        }


_LEGEND: Final[JSON] = {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True}
_TOOLTIP: Final[JSON] = {"mode": "multi", "sort": "desc"}
_REDUCE_LAST: Final[JSON] = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    stacked: bool = False,
    bars: bool = False,
    thresholds: JSON | None = None,
    threshold_lines: bool = False,
    legend_table: bool = False,
    **layout: Any,
) -> Panel:
    custom: JSON = {
        "axisPlacement": "auto",
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else (30 if stacked else 10),
        "gradientMode": "none",
        "lineInterpolation": "linear",
        "lineWidth": 1,
        "pointSize": 4,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
        "thresholdsStyle": {"mode": "dashed" if threshold_lines else "off"},
    }
    legend = dict(_LEGEND)
    if legend_table:
        legend.update(calcs=["lastNotNull", "max"], displayMode="table", placement="right")
    return Panel(
        "timeseries",
        title,
        description,
        queries,
        unit,
        thresholds=thresholds or steps((None, GREEN)),
        custom=custom,
        options={"legend": legend, "tooltip": _TOOLTIP},
        **layout,
    )


def stat(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    thresholds: JSON | None = None,
    graph: bool = True,
    **layout: Any,
) -> Panel:
    layout.setdefault("width", 4)
    layout.setdefault("height", 4)
    return Panel(
        "stat",
        title,
        description,
        queries,
        unit,
        thresholds=thresholds or steps((None, BLUE)),
        color_mode="thresholds",
        options={
            "colorMode": "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": _REDUCE_LAST,
            "showPercentChange": False,
            "textMode": "auto",
            "wideLayout": True,
        },
        **layout,
    )


def gauge(title: str, description: str, queries: Sequence[Query], unit: str, thresholds: JSON, **layout: Any) -> Panel:
    layout.setdefault("width", 4)
    layout.setdefault("height", 4)
    return Panel(
        "gauge",
        title,
        description,
        queries,
        unit,
        thresholds=thresholds,
        color_mode="thresholds",
        options={"reduceOptions": _REDUCE_LAST, "showThresholdLabels": False, "showThresholdMarkers": True},
        **layout,
    )


def bars(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    thresholds: JSON | None = None,
    **layout: Any,
) -> Panel:
    """A horizontal bar gauge: one bar per series, as a ranking (queries are instant, sorted)."""
    return Panel(
        "bargauge",
        title,
        description,
        queries,
        unit,
        thresholds=thresholds or steps((None, BLUE)),
        color_mode="thresholds" if thresholds else "continuous-BlPu",
        options={
            "displayMode": "gradient",
            "maxVizHeight": 300,
            "minVizHeight": 16,
            "minVizWidth": 8,
            "namePlacement": "auto",
            "orientation": "horizontal",
            "reduceOptions": _REDUCE_LAST,
            "showUnfilled": True,
            "sizing": "auto",
            "valueMode": "color",
        },
        **layout,
    )


def table(
    title: str,
    description: str,
    queries: Sequence[Query],
    columns: Sequence[tuple[str, str]],
    *,
    sort_by: str,
    hidden: Sequence[str] = (),
    **layout: Any,
) -> Panel:
    """Instant queries merged into one table: `columns` names each query's value column and its unit."""
    # Grafana names the value column of a single query `Value`, of several `Value #A`, `Value #B`...
    if len(columns) == 1:
        renames = {"Value": columns[0][0]}
    else:
        renames = {f"Value #{chr(ord('A') + i)}": name for i, (name, _unit) in enumerate(columns)}
    return Panel(
        "table",
        title,
        description,
        queries,
        "short",
        overrides=[override("byName", name, [("unit", unit)]) for name, unit in columns],
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": False, "inspect": False},
        options={
            "cellHeight": "sm",
            "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
            "showHeader": True,
            "sortBy": [{"desc": True, "displayName": sort_by}],
        },
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, **dict.fromkeys(hidden, True)},
                    "indexByName": {},
                    "renameByName": renames,
                },
            },
        ],
        **layout,
    )


def state_timeline(title: str, description: str, queries: Sequence[Query], **layout: Any) -> Panel:
    return Panel(
        "state-timeline",
        title,
        description,
        queries,
        "none",
        thresholds=steps((None, GREEN), (1, YELLOW), (2, RED)),
        color_mode="thresholds",
        mappings=[
            {
                "options": {
                    "0": {"color": GREEN, "index": 0, "text": "closed"},
                    "1": {"color": YELLOW, "index": 1, "text": "half-open"},
                    "2": {"color": RED, "index": 2, "text": "open"},
                },
                "type": "value",
            }
        ],
        custom={"fillOpacity": 80, "hideFrom": {"legend": False, "tooltip": False, "viz": False}, "lineWidth": 0},
        options={
            "alignValue": "left",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "mergeValues": True,
            "rowHeight": 0.8,
            "showValue": "auto",
            "tooltip": {"mode": "single", "sort": "none"},
        },
        **layout,
    )


# --- dashboards -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: Sequence[Panel]


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    label: str
    query: str
    """`label_values(metric{matchers}, label)`."""
    all_value: str | None = ".*"
    """What "All" stands for; `None`: Grafana joins every value into one regex."""

    def build(self) -> JSON:
        built: JSON = {
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "datasource": DATASOURCE,
            "definition": self.query,
            "hide": 0,
            "includeAll": True,
            "label": self.label,
            "multi": True,
            "name": self.name,
            "options": [],
            "query": {"qryType": 1, "query": self.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2,
            "regex": "",
            "skipUrlSync": False,
            "sort": 1,
            "type": "query",
        }
        if self.all_value is not None:
            built["allValue"] = self.all_value
        return built


DATASOURCE_VARIABLE: Final[JSON] = {
    "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
    "hide": 0,
    "includeAll": False,
    "label": "Data source",
    "multi": False,
    "name": "datasource",
    "options": [],
    "query": "prometheus",
    "refresh": 1,
    "regex": "",
    "skipUrlSync": False,
    "type": "datasource",
}

SERVICE = Variable("service", "Service", "label_values(otel_puppy_llm_requests_total, service)")
PROVIDER = Variable(
    "provider", "Provider", 'label_values(otel_puppy_llm_requests_total{service=~"$service"}, provider)'
)
MODEL = Variable(
    "model", "Model", 'label_values(otel_puppy_llm_requests_total{service=~"$service", provider=~"$provider"}, model)'
)
AGENT = Variable("agent", "Agent", 'label_values(otel_puppy_llm_requests_total{service=~"$service"}, agent)')
CALL_VARIABLES: Final = (SERVICE, PROVIDER, MODEL, AGENT)


@dataclass(frozen=True, slots=True)
class Dashboard:
    file: str
    uid: str
    title: str
    description: str
    rows: Sequence[Row]
    variables: Sequence[Variable] = CALL_VARIABLES
    time_from: str = "now-3h"

    def build(self) -> JSON:
        panels: list[JSON] = []
        next_id, y = 1, 0
        for row in self.rows:
            panels.append(
                {
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "id": next_id,
                    "panels": [],
                    "title": row.title,
                    "type": "row",
                }
            )
            next_id, y = next_id + 1, y + 1
            x, line_height = 0, 0
            for panel in row.panels:
                if x + panel.width > 24:
                    x, y, line_height = 0, y + line_height, 0
                panels.append(panel.build(next_id, x, y))
                next_id += 1
                x += panel.width
                line_height = max(line_height, panel.height)
            y += line_height
        return {
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "links": [
                {
                    "asDropdown": True,
                    "icon": "external link",
                    "includeVars": True,
                    "keepTime": True,
                    "tags": [TAG],
                    "targetBlank": False,
                    "title": "otel_puppy",
                    "tooltip": "",
                    "type": "dashboards",
                    "url": "",
                }
            ],
            "panels": panels,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "tags": [TAG],
            "templating": {"list": [DATASOURCE_VARIABLE, *(v.build() for v in self.variables)]},
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
            "weekStart": "",
        }


# --- shared pieces --------------------------------------------------------------------------------

UTILIZATION_STEPS: Final = steps((None, GREEN), (0.75, YELLOW), (BUDGET_THRESHOLD, ORANGE), (1.0, RED))
ERROR_STEPS: Final = steps((None, GREEN), (ERROR_RATE_THRESHOLD / 2, YELLOW), (ERROR_RATE_THRESHOLD, RED))
LATENCY_STEPS: Final = steps((None, GREEN), (LATENCY_SLOW_S / 2, YELLOW), (LATENCY_SLOW_S, RED))
BURN_STEPS: Final = steps((None, GREEN), (1.0, YELLOW), (6.0, ORANGE), (14.4, RED))
"""Burn rate 1 spends the limit in exactly one window; 6 and 14.4 are the slow and fast burn alerts."""
EXHAUSTION_STEPS: Final = steps((None, RED), (3600, ORANGE), (6 * 3600, YELLOW), (24 * 3600, GREEN))
ZERO_IS_GOOD: Final = steps((None, GREEN), (1, RED))
ACTION_COLORS: Final = (("allow", GREEN), ("warn", YELLOW), ("degrade", ORANGE), ("deny", RED))
SEVERITY_COLORS: Final = (("info", BLUE), ("warning", YELLOW), ("critical", ORANGE), ("emergency", RED))

SPEND_RATE = f"sum({rate('otel_puppy_llm_cost_usd_total')}) * 3600"
TIME_TO_EXHAUSTION = (
    f"clamp_min({budget_gauge('otel_puppy_budget_limit_usd')} - {budget_gauge('otel_puppy_budget_spend_usd')}"
    f" - {budget_gauge('otel_puppy_budget_reserved_usd')}, 0)"
    f" / on (budget, scope, window) ({budget_spend_rate(interval='15m')} > 0)"
)
BUDGET_LEGEND: Final = "{{budget}} {{scope}} ({{window}})"
PROVIDER_MODEL: Final = "{{provider}}:{{model}}"


def top(by: str, metric: str = "otel_puppy_llm_cost_usd_total", matchers: str = CALLS, k: int = 10) -> str:
    return f"topk({k}, sum by ({by}) ({increase(metric, matchers)}))"


def cost_per_1k_tokens(by: str, interval: str = "$__range") -> str:
    tokens = increase("otel_puppy_llm_tokens_total", CALLS + ', type=~"input|output"', interval)
    return (
        f"sum by ({by}) ({increase('otel_puppy_llm_cost_usd_total', CALLS, interval)})"
        f" / (sum by ({by}) ({tokens}) / 1000)"
    )


# --- the five dashboards --------------------------------------------------------------------------


def overview() -> Dashboard:
    spend = Row(
        "Spend",
        [
            stat(
                "Spend rate",
                "Spend per hour at the pace of the last few minutes (the selected services, providers, models "
                "and agents).",
                [Query(SPEND_RATE, "USD per hour")],
                "currencyUSD",
                decimals=2,
            ),
            stat(
                "This hour",
                "Spend in the current calendar hour (every service), from otel_puppy's own windows: exact, and "
                "unaffected by restarts.",
                [Query('max(otel_puppy_spend_usd{window="hour"})', "this hour")],
                "currencyUSD",
                decimals=2,
            ),
            stat(
                "Today",
                "Spend in the current calendar day (OTEL_PUPPY_TIMEZONE), every service.",
                [Query('max(otel_puppy_spend_usd{window="day"})', "today")],
                "currencyUSD",
                decimals=2,
            ),
            stat(
                "Last 24 hours",
                "Spend over the trailing 24 hours, every service.",
                [Query('max(otel_puppy_spend_usd{window="24h"})', "last 24 h")],
                "currencyUSD",
                decimals=2,
            ),
            stat(
                "Fastest budget burn",
                "The highest burn rate of any budget: 1 spends its limit in exactly one window; 6 and 14.4 are "
                "where the slow and fast burn-rate alerts fire.",
                [Query(f"max({burn_rate('')})", "burn rate")],
                "suffix:x",
                thresholds=BURN_STEPS,
                decimals=1,
            ),
            gauge(
                "Fullest budget",
                "Utilization (spent plus reserved over the limit) of the fullest budget instance. At 100% its "
                "action (warn, degrade or deny) applies.",
                [Query("max(max by (budget, scope, window) (otel_puppy_budget_utilization_ratio))", "utilization")],
                "percentunit",
                UTILIZATION_STEPS,
                min=0,
                max=1,
            ),
            timeseries(
                "Spend rate by provider",
                "USD per hour, stacked by provider.",
                [Query(f"sum by (provider) ({rate('otel_puppy_llm_cost_usd_total')}) * 3600", "{{provider}}")],
                "currencyUSD",
                stacked=True,
            ),
            timeseries(
                "Budget utilization",
                "Every budget instance; the dashed lines are the alert levels.",
                [Query(budget_gauge("otel_puppy_budget_utilization_ratio", ""), BUDGET_LEGEND)],
                "percentunit",
                thresholds=UTILIZATION_STEPS,
                threshold_lines=True,
                min=0,
            ),
        ],
    )
    traffic = Row(
        "Requests, errors, latency, tokens",
        [
            timeseries(
                "Requests by outcome",
                "Model calls per second.",
                [Query(f"sum by (outcome) ({rate('otel_puppy_llm_requests_total')})", "{{outcome}}")],
                "reqps",
                stacked=True,
                overrides=[color("ok", GREEN), color("error", RED)],
                width=8,
            ),
            timeseries(
                "Error rate",
                "Failed calls over all calls, overall and by provider. otel_puppy's health turns degraded at "
                f"{ERROR_RATE_THRESHOLD:.0%}.",
                [Query(error_ratio(), "all"), Query(error_ratio("provider"), "{{provider}}")],
                "percentunit",
                thresholds=ERROR_STEPS,
                threshold_lines=True,
                min=0,
                width=8,
            ),
            timeseries(
                "Latency",
                "Model call duration percentiles over every selected call.",
                [
                    Query(quantile(0.5), "p50"),
                    Query(quantile(0.95), "p95"),
                    Query(quantile(0.99), "p99"),
                ],
                "s",
                thresholds=LATENCY_STEPS,
                width=8,
            ),
            timeseries(
                "Tokens by type",
                "Tokens per second. Input includes cache reads and writes.",
                [Query(f"sum by (type) ({rate('otel_puppy_llm_tokens_total')})", "{{type}}")],
                "short",
                width=12,
            ),
            stat(
                "Error rate",
                "Failed calls over all calls in the dashboard's range.",
                [Query(error_ratio(interval="$__range"), "error rate")],
                "percentunit",
                thresholds=ERROR_STEPS,
                decimals=1,
                width=6,
                height=8,
            ),
            stat(
                "Requests",
                "Model calls in the dashboard's range.",
                [Query(f"sum({increase('otel_puppy_llm_requests_total')})", "requests")],
                "short",
                decimals=0,
                width=6,
                height=8,
            ),
        ],
    )
    ranking = Row(
        "Top spenders",
        [
            bars(
                "Top models by cost",
                "Spend in the dashboard's range, by provider and model.",
                [Query(f"sort_desc({top('provider, model')})", PROVIDER_MODEL, instant=True)],
                "currencyUSD",
            ),
            bars(
                "Top agents by cost",
                "Spend in the dashboard's range, by agent.",
                [Query(f"sort_desc({top('agent')})", "{{agent}}", instant=True)],
                "currencyUSD",
            ),
        ],
    )
    health = Row(
        "Health",
        [
            stat(
                "Replicas up",
                "otel_puppy targets Prometheus scrapes successfully, of all it scrapes.",
                [Query('sum(up{job=~"$job"})', "up"), Query('count(up{job=~"$job"})', "scraped")],
                "short",
                thresholds=steps((None, RED), (1, GREEN)),
                graph=False,
            ),
            stat(
                "Dropped spans",
                "Spans the span processor had to drop (queue full) in the dashboard's range: their spend is "
                "missing. Raise OTEL_PUPPY_QUEUE_SIZE or add replicas.",
                [
                    Query(
                        "sum(" + increase("otel_puppy_spans_total", 'result="dropped"') + ") or vector(0)",
                        "dropped",
                    )
                ],
                "short",
                thresholds=ZERO_IS_GOOD,
                graph=False,
            ),
            stat(
                "Internal errors",
                "Errors otel_puppy survived (counted, logged, never raised into the application) in the range.",
                [Query(f"sum({increase('otel_puppy_internal_errors_total', '')}) or vector(0)", "errors")],
                "short",
                thresholds=ZERO_IS_GOOD,
                graph=False,
            ),
            stat(
                "Unpriced calls",
                "Share of calls genai-prices and policies/prices.yaml could not price: their spend is not in any "
                f"budget. Health turns degraded at {UNPRICED_THRESHOLD:.0%}; add a `prices:` entry.",
                [
                    Query(
                        f"(sum({increase('otel_puppy_llm_unpriced_requests_total')}) or vector(0))"
                        f" / sum({increase('otel_puppy_llm_requests_total')})",
                        "unpriced",
                    )
                ],
                "percentunit",
                thresholds=steps((None, GREEN), (UNPRICED_THRESHOLD, RED)),
                decimals=1,
                graph=False,
            ),
            stat(
                "Open breakers",
                "Breakers open now: calls to their provider (or model) are denied until they recover.",
                [Query("count(max by (policy, provider, model) (otel_puppy_breaker_state) == 2) or vector(0)", "open")],
                "short",
                thresholds=ZERO_IS_GOOD,
                graph=False,
            ),
            stat(
                "Anomalies",
                "Anomalies fired in the dashboard's range.",
                [Query(f"sum({increase('otel_puppy_anomalies_total', '')}) or vector(0)", "anomalies")],
                "short",
                thresholds=steps((None, GREEN), (1, ORANGE)),
                graph=False,
            ),
            timeseries(
                "Spans by result",
                "What became of the spans handed to otel_puppy: applied (a model call), ignored (not a call), "
                "nested (a second instrumentation of the same call), duplicate (a retry), invalid, rejected, "
                "dropped.",
                [Query(f"sum by (result) ({rate('otel_puppy_spans_total', '')})", "{{result}}")],
                "short",
                overrides=[color("dropped", RED), color("rejected", ORANGE), color("applied", GREEN)],
                width=24,
                height=7,
            ),
        ],
    )
    return Dashboard(
        "overview.json",
        "otel-puppy-overview",
        "otel_puppy / Overview",
        "What are we spending, how fast, is anything failing, and who spends most?",
        [spend, traffic, ranking, health],
        variables=(
            *CALL_VARIABLES,
            Variable("job", "Job", "label_values(otel_puppy_spend_usd, job)", all_value=None),
        ),
    )


def budgets() -> Dashboard:
    legend = BUDGET_LEGEND
    rows = [
        Row(
            "Where each budget stands",
            [
                bars(
                    "Utilization",
                    "Spent plus reserved over the limit, per budget instance (`per` budgets: one per scope; per user "
                    "or conversation only the fullest, as scope `max`). At 100% the budget's action applies.",
                    [Query(f"sort_desc({budget_gauge('otel_puppy_budget_utilization_ratio')})", legend, instant=True)],
                    "percentunit",
                    thresholds=UTILIZATION_STEPS,
                    min=0,
                    max=1,
                    height=10,
                ),
                bars(
                    "Time to exhaustion",
                    "At the spend pace of the last 15 minutes, when the rest of the limit (less what is reserved) is "
                    "gone. Budgets not spending are not listed. A calendar window may reset first.",
                    [Query(f"sort({TIME_TO_EXHAUSTION})", legend, instant=True)],
                    "s",
                    thresholds=EXHAUSTION_STEPS,
                    min=0,
                    max=24 * 3600,
                    height=10,
                ),
            ],
        ),
        Row(
            "Spend against limits",
            [
                timeseries(
                    "Spend vs limit",
                    "Spend in each budget's current window (solid) and its limit (dashed). Calendar windows "
                    "reset at their boundary; rolling windows age out.",
                    [
                        Query(budget_gauge("otel_puppy_budget_spend_usd"), f"{legend} spent"),
                        Query(budget_gauge("otel_puppy_budget_limit_usd"), f"{legend} limit"),
                    ],
                    "currencyUSD",
                    overrides=[
                        override(
                            "byRegexp",
                            ".* limit$",
                            [("custom.lineStyle", {"dash": [10, 10], "fill": "dash"}), ("custom.fillOpacity", 0)],
                        )
                    ],
                    legend_table=True,
                    width=24,
                    height=10,
                ),
                timeseries(
                    "Burn rate",
                    "How fast each budget is spent against its limit: 1 spends the limit in exactly one window. "
                    "The alerts fire above 14.4 (fast, over 1 h and 5 min) and 6 (slow, over 6 h and 30 min).",
                    [Query(burn_rate(), legend)],
                    "suffix:x",
                    thresholds=BURN_STEPS,
                    threshold_lines=True,
                    min=0,
                ),
                timeseries(
                    "Reserved",
                    "Estimates reserved by decisions whose calls have not reported their spend yet. A reservation "
                    "settles when its span arrives, or expires after OTEL_PUPPY_RESERVATION_TTL_S.",
                    [Query(budget_gauge("otel_puppy_budget_reserved_usd"), legend)],
                    "currencyUSD",
                    min=0,
                ),
            ],
        ),
        Row(
            "Budget alerts and decisions",
            [
                timeseries(
                    "Budget alerts",
                    "Alert events as budgets cross their `alerts` levels (info, warning, critical) and 100% "
                    "(emergency).",
                    [
                        Query(
                            "sum by (policy, severity) "
                            + "("
                            + increase(
                                "otel_puppy_alerts_total", 'kind="budget", policy=~"$budget"', "$__rate_interval"
                            )
                            + ")",
                            "{{policy}} {{severity}}",
                        )
                    ],
                    "short",
                    bars=True,
                ),
                timeseries(
                    "Decisions by budget",
                    "Decisions a budget decided (warn, degrade or deny), per second.",
                    [
                        Query(
                            "sum by (policy, action) "
                            + "("
                            + rate("otel_puppy_decisions_total", 'action!="allow", policy=~"$budget"')
                            + ")",
                            "{{policy}} {{action}}",
                        )
                    ],
                    "reqps",
                    stacked=True,
                ),
            ],
        ),
    ]
    return Dashboard(
        "budgets.json",
        "otel-puppy-budgets",
        "otel_puppy / Budgets",
        "Which budgets are filling up, how fast, and when will they run out?",
        rows,
        variables=(Variable("budget", "Budget", "label_values(otel_puppy_budget_utilization_ratio, budget)"),),
    )


def providers() -> Dashboard:
    breaker = 'provider=~"$provider"'
    rows = [
        Row(
            "Circuit breakers",
            [
                state_timeline(
                    "Breaker state",
                    "Closed: calls flow. Open: calls are denied (with retry_after) after too many failures in a "
                    "row. Half-open: a few probe calls test whether the provider recovered.",
                    [
                        Query(
                            f"max by (policy, provider, model) (otel_puppy_breaker_state{{{breaker}}})",
                            "{{provider}} {{model}}",
                        )
                    ],
                    width=16,
                    height=8,
                ),
                stat(
                    "Open now",
                    "Breakers open now.",
                    [
                        Query(
                            f"count(max by (policy, provider, model) (otel_puppy_breaker_state{{{breaker}}}) == 2)"
                            " or vector(0)",
                            "open",
                        )
                    ],
                    "short",
                    thresholds=ZERO_IS_GOOD,
                    graph=False,
                    height=8,
                ),
                stat(
                    "Half-open now",
                    "Breakers probing their provider now.",
                    [
                        Query(
                            f"count(max by (policy, provider, model) (otel_puppy_breaker_state{{{breaker}}}) == 1)"
                            " or vector(0)",
                            "half-open",
                        )
                    ],
                    "short",
                    thresholds=steps((None, GREEN), (1, YELLOW)),
                    graph=False,
                    height=8,
                ),
                timeseries(
                    "Transitions",
                    "Breaker state changes, by the state entered.",
                    [
                        Query(
                            "sum by (provider, model, to) "
                            f"({increase('otel_puppy_breaker_transitions_total', breaker, '$__rate_interval')})",
                            "{{provider}} {{model}} → {{to}}",
                        )
                    ],
                    "short",
                    bars=True,
                    overrides=[
                        override("byRegexp", f".* {to}$", [("color", {"fixedColor": value, "mode": "fixed"})])
                        for to, value in (("open", RED), ("half_open", YELLOW), ("closed", GREEN))
                    ],
                ),
                table(
                    "Transitions since start",
                    "Every breaker state change since each replica started.",
                    [
                        Query(
                            f"sum by (policy, provider, model, to) (otel_puppy_breaker_transitions_total{{{breaker}}})",
                            instant=True,
                            table=True,
                        )
                    ],
                    [("Transitions", "short")],
                    sort_by="Transitions",
                ),
            ],
        ),
        Row(
            "Provider calls",
            [
                timeseries(
                    "Failures by error class",
                    "Failed calls per second by provider and error class. Server errors, timeouts, rate limits and "
                    "connection errors count against breakers; client errors (400, 401) do not.",
                    [
                        Query(
                            "sum by (provider, error_class) "
                            + "("
                            + rate("otel_puppy_llm_requests_total", CALLS + ', outcome="error"')
                            + ")",
                            "{{provider}} {{error_class}}",
                        )
                    ],
                    "reqps",
                    stacked=True,
                ),
                timeseries(
                    "Error rate by provider",
                    "Failed calls over all calls.",
                    [Query(error_ratio("provider"), "{{provider}}")],
                    "percentunit",
                    thresholds=ERROR_STEPS,
                    threshold_lines=True,
                    min=0,
                ),
                timeseries(
                    "Requests by provider",
                    "Model calls per second.",
                    [Query(f"sum by (provider) ({rate('otel_puppy_llm_requests_total')})", "{{provider}}")],
                    "reqps",
                    stacked=True,
                ),
                timeseries(
                    "p95 latency by provider",
                    "95th percentile call duration.",
                    [Query(quantile(0.95, "provider"), "{{provider}}")],
                    "s",
                    thresholds=LATENCY_STEPS,
                ),
                timeseries(
                    "Breaker alerts",
                    "Alert events as breakers open (critical), half-open and close (info).",
                    [
                        Query(
                            "sum by (policy, severity) "
                            + "("
                            + increase("otel_puppy_alerts_total", 'kind="breaker"', "$__rate_interval")
                            + ")",
                            "{{policy}} {{severity}}",
                        )
                    ],
                    "short",
                    bars=True,
                    overrides=[color(name, value) for name, value in SEVERITY_COLORS],
                    width=24,
                    height=6,
                ),
            ],
        ),
    ]
    return Dashboard(
        "providers.json",
        "otel-puppy-providers",
        "otel_puppy / Providers and breakers",
        "Which providers are failing, how, and which breakers are keeping calls away from them?",
        rows,
    )


def decisions() -> Dashboard:
    policy = 'policy=~"$policy"'
    rows = [
        Row(
            "Anomalies",
            [
                timeseries(
                    "Anomaly score",
                    "The last closed interval of each detector against its own baseline: a z-score for `zscore` "
                    "thresholds, current over baseline for `ratio` ones. A detector fires past its policy's "
                    "threshold (after `min_samples` intervals).",
                    [
                        Query(
                            f"max by (policy, signal, subject) (otel_puppy_anomaly_score{{{policy}}})",
                            "{{policy}} {{subject}}",
                        )
                    ],
                    "short",
                    legend_table=True,
                    width=24,
                ),
                timeseries(
                    "Anomalies fired",
                    "Anomalies fired (at most one per detector per cooldown), by policy and action.",
                    [
                        Query(
                            "sum by (policy, signal, action) "
                            f"({increase('otel_puppy_anomalies_total', policy, '$__rate_interval')})",
                            "{{policy}} {{signal}} → {{action}}",
                        )
                    ],
                    "short",
                    bars=True,
                ),
                table(
                    "Anomalies since start",
                    "Anomalies fired since each replica started.",
                    [
                        Query(
                            f"sum by (policy, signal, action) (otel_puppy_anomalies_total{{{policy}}})",
                            instant=True,
                            table=True,
                        )
                    ],
                    [("Fired", "short")],
                    sort_by="Fired",
                ),
            ],
        ),
        Row(
            "Decisions",
            [
                timeseries(
                    "Decisions by action",
                    "Answers to `decide()` per second: allow, warn, degrade (a cheaper model), deny.",
                    [Query(f"sum by (action) ({rate('otel_puppy_decisions_total', '')})", "{{action}}")],
                    "reqps",
                    stacked=True,
                    overrides=[color(name, value) for name, value in ACTION_COLORS],
                ),
                timeseries(
                    "Decisions by policy",
                    "Decisions that were not a plain allow, by the policy that decided.",
                    [
                        Query(
                            "sum by (policy, action) "
                            + "("
                            + rate("otel_puppy_decisions_total", 'action!="allow", ' + policy)
                            + ")",
                            "{{policy}} {{action}}",
                        )
                    ],
                    "reqps",
                    stacked=True,
                ),
                stat(
                    "Denied",
                    "Share of decisions denied in the dashboard's range.",
                    [
                        Query(
                            "(sum(" + increase("otel_puppy_decisions_total", 'action="deny"') + ") or vector(0))"
                            f" / sum({increase('otel_puppy_decisions_total', '')})",
                            "denied",
                        )
                    ],
                    "percentunit",
                    thresholds=steps((None, GREEN), (0.01, YELLOW), (0.1, RED)),
                    decimals=1,
                    width=6,
                ),
                stat(
                    "Degraded",
                    "Share of decisions sent to a cheaper model in the dashboard's range.",
                    [
                        Query(
                            "(sum(" + increase("otel_puppy_decisions_total", 'action="degrade"') + ") or vector(0))"
                            f" / sum({increase('otel_puppy_decisions_total', '')})",
                            "degraded",
                        )
                    ],
                    "percentunit",
                    thresholds=steps((None, GREEN), (0.1, YELLOW), (0.5, ORANGE)),
                    decimals=1,
                    width=6,
                ),
                table(
                    "Decisions since start",
                    "Decisions by action and the policy that decided, since each replica started.",
                    [
                        Query(
                            'sum by (action, policy) (otel_puppy_decisions_total{action!="allow"})',
                            instant=True,
                            table=True,
                        )
                    ],
                    [("Decisions", "short")],
                    sort_by="Decisions",
                    width=12,
                    height=8,
                ),
            ],
        ),
        Row(
            "Alerts",
            [
                timeseries(
                    "Alerts by kind and severity",
                    "otel_puppy's alert events (also logged to `otel_puppy.alerts` and, with "
                    "OTEL_PUPPY_ALERT_WEBHOOK_URL, posted).",
                    [
                        Query(
                            f"sum by (kind, severity) ({increase('otel_puppy_alerts_total', '', '$__rate_interval')})",
                            "{{kind}} {{severity}}",
                        )
                    ],
                    "short",
                    bars=True,
                ),
                table(
                    "Alerts since start",
                    "Alert events by kind, policy and severity since each replica started.",
                    [
                        Query(
                            "sum by (kind, policy, severity) (otel_puppy_alerts_total)",
                            instant=True,
                            table=True,
                        )
                    ],
                    [("Alerts", "short")],
                    sort_by="Alerts",
                ),
            ],
        ),
    ]
    return Dashboard(
        "decisions.json",
        "otel-puppy-decisions",
        "otel_puppy / Anomalies and decisions",
        "What looks unusual, what did otel_puppy decide because of it, and which alerts went out?",
        rows,
        variables=(
            Variable(
                "policy",
                "Policy",
                'label_values({__name__=~"otel_puppy_decisions_total|otel_puppy_anomaly_score|otel_puppy_alerts_total"}'
                ", policy)",
            ),
        ),
    )


def models() -> Dashboard:
    rows = [
        Row(
            "Ranking",
            [
                table(
                    "Models",
                    "Every model in the dashboard's range: spend, calls, cost per 1K tokens (input, cache included, "
                    "plus output), p95 latency and error rate.",
                    [
                        Query(
                            f"sum by (provider, model) ({increase('otel_puppy_llm_cost_usd_total')})",
                            instant=True,
                            table=True,
                        ),
                        Query(
                            f"sum by (provider, model) ({increase('otel_puppy_llm_requests_total')})",
                            instant=True,
                            table=True,
                        ),
                        Query(cost_per_1k_tokens("provider, model"), instant=True, table=True),
                        Query(quantile(0.95, "provider, model", interval="$__range"), instant=True, table=True),
                        Query(error_ratio("provider, model", interval="$__range"), instant=True, table=True),
                    ],
                    [
                        ("Spend", "currencyUSD"),
                        ("Calls", "short"),
                        ("USD per 1K tokens", "currencyUSD"),
                        ("p95 latency", "s"),
                        ("Error rate", "percentunit"),
                    ],
                    sort_by="Spend",
                    width=24,
                    height=9,
                ),
                bars(
                    "Cost per 1K tokens",
                    "Spend over tokens (input, cache included, plus output) in the dashboard's range.",
                    [Query(f"sort_desc({cost_per_1k_tokens('provider, model')})", PROVIDER_MODEL, instant=True)],
                    "currencyUSD",
                    decimals=4,
                ),
                timeseries(
                    "Spend rate by model",
                    "USD per hour.",
                    [
                        Query(
                            f"sum by (provider, model) ({rate('otel_puppy_llm_cost_usd_total')}) * 3600",
                            PROVIDER_MODEL,
                        )
                    ],
                    "currencyUSD",
                    stacked=True,
                ),
            ],
        ),
        Row(
            "Caching and waste",
            [
                bars(
                    "Prompt cache hit share",
                    "Share of input tokens read from the provider's prompt cache, which bills them at a fraction "
                    "of the input price: the higher, the more caching saves.",
                    [
                        Query(
                            "sort_desc(sum by (provider, model) "
                            + "("
                            + increase("otel_puppy_llm_tokens_total", CALLS + ', type="cache_read"')
                            + ")"
                            " / sum by (provider, model) "
                            + "("
                            + increase("otel_puppy_llm_tokens_total", CALLS + ', type="input"')
                            + "))",
                            PROVIDER_MODEL,
                            instant=True,
                        )
                    ],
                    "percentunit",
                    min=0,
                    max=1,
                ),
                bars(
                    "Prompt cache savings",
                    "What cache reads saved in the dashboard's range: their cost as plain input tokens, less "
                    "what they cost at the cache-read price.",
                    [
                        Query(
                            "sort_desc(sum by (provider, model) ("
                            + increase("otel_puppy_llm_cache_savings_usd_total")
                            + "))",
                            PROVIDER_MODEL,
                            instant=True,
                        )
                    ],
                    "currencyUSD",
                ),
                timeseries(
                    "Cached tokens",
                    "Cache reads and writes per second, by model.",
                    [
                        Query(
                            "sum by (provider, model, type) "
                            + "("
                            + rate("otel_puppy_llm_tokens_total", CALLS + ', type=~"cache_read|cache_write"')
                            + ")",
                            "{{provider}}:{{model}} {{type}}",
                        )
                    ],
                    "short",
                ),
                bars(
                    "Redundant-call spend",
                    "Spend on calls repeating a prompt the same model answered shortly before: what a response "
                    "cache would save, in the dashboard's range.",
                    [
                        Query(
                            "sort_desc(sum by (provider, model) ("
                            + increase("otel_puppy_redundant_cost_usd_total", MODELS)
                            + "))",
                            PROVIDER_MODEL,
                            instant=True,
                        )
                    ],
                    "currencyUSD",
                ),
                timeseries(
                    "Redundant share of spend",
                    "Redundant-call spend over all spend, by provider.",
                    [
                        Query(
                            f"sum by (provider) ({rate('otel_puppy_redundant_cost_usd_total', MODELS)})"
                            f" / sum by (provider) ({rate('otel_puppy_llm_cost_usd_total')})",
                            "{{provider}}",
                        )
                    ],
                    "percentunit",
                    min=0,
                ),
            ],
        ),
        Row(
            "Quality",
            [
                timeseries(
                    "p95 latency by model",
                    "95th percentile call duration.",
                    [Query(quantile(0.95, "provider, model"), PROVIDER_MODEL)],
                    "s",
                    thresholds=LATENCY_STEPS,
                ),
                timeseries(
                    "Error rate by model",
                    "Failed calls over all calls.",
                    [Query(error_ratio("provider, model"), PROVIDER_MODEL)],
                    "percentunit",
                    thresholds=ERROR_STEPS,
                    min=0,
                ),
                table(
                    "Unpriced calls",
                    "Calls that could not be priced, by reason: `unknown_model` needs a `prices:` entry in "
                    "policies/. Their spend is in no budget.",
                    [
                        Query(
                            f"sum by (provider, model, reason) ({increase('otel_puppy_llm_unpriced_requests_total')})",
                            instant=True,
                            table=True,
                        )
                    ],
                    [("Calls", "short")],
                    sort_by="Calls",
                    width=24,
                    height=6,
                ),
            ],
        ),
    ]
    return Dashboard(
        "models.json",
        "otel-puppy-models",
        "otel_puppy / Models",
        "Which models give the most for the money, how much does caching save, and what is spent twice?",
        rows,
    )


DASHBOARDS: Final = (overview, budgets, providers, decisions, models)


def dashboards() -> list[tuple[str, JSON]]:
    """(file name, dashboard JSON) for every dashboard."""
    built = [make() for make in DASHBOARDS]
    return [(dashboard.file, dashboard.build()) for dashboard in built]


def render(dashboard: JSON) -> str:
    """The committed form: sorted keys, two-space indents, a final newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard is out of date")
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR, help="where to write (default grafana/dashboards)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    stale = []
    for name, dashboard in dashboards():
        path: Path = args.out / name
        text = render(dashboard)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{path} is out of date: run python grafana/generate.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
