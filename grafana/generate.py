"""Generate otel_puppy's Grafana dashboards: `python grafana/generate.py` writes `grafana/dashboards/*.json`.

The JSON files are committed (Grafana provisions them as they are); this module is where they are
edited. `python grafana/generate.py --check` exits 1 when a committed file differs from what the
code generates, and `tests/deploy/test_dashboards.py` asserts the same, then runs every panel's
query against a real Prometheus scraping `otel-puppy demo`.

Every object is built with `grafana-foundation-sdk`, Grafana's own builders generated from its schemas
(pinned in pyproject.toml to the release generated for the Grafana in docker-compose.yml), so a field
or an option value Grafana's schema does not have cannot be written: mypy rejects it. Only what the
schema itself leaves open is plain data: transformation options, override property values and the
Prometheus variable query.

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
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, Self, TypedDict, TypeVar, Unpack

from grafana_foundation_sdk.builders import bargauge as sdk_bargauge
from grafana_foundation_sdk.builders import common as sdk_common
from grafana_foundation_sdk.builders import dashboard as sdk
from grafana_foundation_sdk.builders import gauge as sdk_gauge
from grafana_foundation_sdk.builders import prometheus as sdk_prometheus
from grafana_foundation_sdk.builders import stat as sdk_stat
from grafana_foundation_sdk.builders import statetimeline as sdk_statetimeline
from grafana_foundation_sdk.builders import table as sdk_table
from grafana_foundation_sdk.builders import timeseries as sdk_timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

from otel_puppy.health import BUDGET_THRESHOLD, ERROR_RATE_THRESHOLD, LATENCY_SLOW_S, UNPRICED_THRESHOLD

__all__ = ("DASHBOARDS", "DASHBOARDS_DIR", "dashboards", "main", "render")

DASHBOARDS_DIR: Final = Path(__file__).resolve().parent / "dashboards"
DATASOURCE_UID: Final = "prometheus"
"""The provisioned Prometheus (grafana/provisioning/datasources/prometheus.yaml): the variable's default."""
TAG: Final = "otel_puppy"

CALENDAR_WINDOWS: Final = "hour|day|week|month"
"""Budget windows that reset to 0 at a boundary (`rate()` reads the reset like a counter's); the
others are rolling, whose spend also ages out (`deriv()` reads their net growth)."""

# Label matchers for the call metrics (requests, tokens, cost, duration, unpriced).
CALLS: Final = 'service=~"$service", provider=~"$provider", model=~"$model", agent=~"$agent"'
MODELS: Final = 'provider=~"$provider", model=~"$model"'
"""For series labelled by provider and model only (redundant calls)."""

GREEN, YELLOW, ORANGE, RED, BLUE, PURPLE = "green", "yellow", "orange", "red", "blue", "purple"


def datasource() -> model.DataSourceRef:
    """Every panel and query reads the `datasource` variable (a fresh model each: builders keep references)."""
    return model.DataSourceRef(type_val="prometheus", uid="${datasource}")


# --- queries --------------------------------------------------------------------------------------


def sum_by(labels: str, expr: str) -> str:
    return f"sum by ({labels}) ({expr})"


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


def ratio_quantile(q: float) -> str:
    """The `q` quantile of settled cost over reserved estimate, by estimate source."""
    return f"histogram_quantile({q}, sum by (source, le) ({rate('otel_puppy_reservation_settled_ratio_bucket', '')}))"


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

    def target(self, ref_id: str) -> sdk_prometheus.Dataquery:
        target = (
            sdk_prometheus.Dataquery()
            .datasource(datasource())
            .editor_mode(QueryEditorMode.CODE)
            .expr(self.expr)
            .legend_format(self.legend or "__auto")
            .ref_id(ref_id)
        )
        target = target.instant() if self.instant else target.range()
        return target.format(PromQueryFormat.TABLE) if self.table else target


# --- panels ---------------------------------------------------------------------------------------

Steps = tuple[tuple[float | None, str], ...]
"""Threshold steps, (value, colour) from the lowest (value None: minus infinity) up."""


def steps(*pairs: tuple[float | None, str]) -> Steps:
    return pairs


Override = sdk.DashboardFieldConfigSourceOverrides
NO_THRESHOLDS: Final[Steps] = ((None, GREEN),)
BLUE_BASE: Final[Steps] = ((None, BLUE),)


def override(matcher: str, option: str, properties: Sequence[tuple[str, object]]) -> Override:
    """Field overrides: matcher id (`byName`, `byRegexp`) and option, then (property id, value) pairs."""
    return (
        sdk.DashboardFieldConfigSourceOverrides()
        .matcher(model.MatcherConfig(id_val=matcher, options=option))
        .properties([model.DynamicConfigValue(id_val=key, value=value) for key, value in properties])
    )


def fixed(name: str) -> model.FieldColor:
    return model.FieldColor(mode=model.FieldColorModeId.FIXED, fixed_color=name)


def color(series: str, name: str) -> Override:
    return override("byName", series, [("color", fixed(name))])


class PanelBuilder(Protocol):
    """What every panel builder of the SDK offers (each panel type is a class of its own)."""

    def build(self) -> model.Panel: ...
    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: model.DataSourceRef) -> Self: ...
    def with_target(self, target: Builder[Dataquery]) -> Self: ...
    def height(self, h: int) -> Self: ...
    def span(self, w: int) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def decimals(self, decimals: float) -> Self: ...
    def min(self, min_val: float) -> Self: ...
    def max(self, max_val: float) -> Self: ...
    def thresholds(self, thresholds: Builder[model.ThresholdsConfig]) -> Self: ...
    def color_scheme(self, color: Builder[model.FieldColor]) -> Self: ...
    def overrides(self, overrides: list[Builder[model.DashboardFieldConfigSourceOverrides]]) -> Self: ...


P = TypeVar("P", bound=PanelBuilder)


class Layout(TypedDict, total=False):
    """What a dashboard may set on any panel: `width`/`height` in grid units (24 across)."""

    width: int
    height: int
    decimals: int
    min: float
    max: float
    overrides: Sequence[Override]


def panel(
    builder: P,
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    thresholds: Steps,
    color_mode: model.FieldColorModeId,
    layout: Layout,
) -> P:
    """The settings every panel has, on `builder` (a panel type's own builder, for its options)."""
    built = (
        builder.title(title)
        .description(description)
        .datasource(datasource())
        .span(layout.get("width", 12))
        .height(layout.get("height", 8))
        .unit(unit)
        .color_scheme(sdk.FieldColor().mode(color_mode))
        .thresholds(
            sdk.ThresholdsConfig()
            .mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=value, color=name) for value, name in thresholds])
        )
        .overrides(list(layout.get("overrides", ())))
    )
    for i, query in enumerate(queries):
        built = built.with_target(query.target(chr(ord("A") + i)))
    if "decimals" in layout:
        built = built.decimals(layout["decimals"])
    if "min" in layout:
        built = built.min(layout["min"])
    if "max" in layout:
        built = built.max(layout["max"])
    return built


def legend(*, table: bool = False) -> sdk_common.VizLegendOptions:
    if table:
        return (
            sdk_common.VizLegendOptions()
            .calcs(["lastNotNull", "max"])
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
        )
    return (
        sdk_common.VizLegendOptions()
        .calcs([])
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def last_value() -> sdk_common.ReduceDataOptions:
    """Single values show the last non-null value of each series."""
    return sdk_common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    stacked: bool = False,
    bars: bool = False,
    thresholds: Steps = NO_THRESHOLDS,
    threshold_lines: bool = False,
    legend_table: bool = False,
    **layout: Unpack[Layout],
) -> sdk_timeseries.Panel:
    return (
        panel(
            sdk_timeseries.Panel(),
            title,
            description,
            queries,
            unit,
            thresholds=thresholds,
            color_mode=model.FieldColorModeId.PALETTE_CLASSIC,
            layout=layout,
        )
        .axis_placement(common.AxisPlacement.AUTO)
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .fill_opacity(60 if bars else (30 if stacked else 10))
        .gradient_mode(common.GraphGradientMode.NONE)
        .line_interpolation(common.LineInterpolation.LINEAR)
        .line_width(1)
        .point_size(4)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            sdk_common.StackingConfig()
            .group("A")
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
        )
        .thresholds_style(
            sdk_common.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED if threshold_lines else common.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(legend(table=legend_table))
        .tooltip(sdk_common.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
    )


def stat(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    thresholds: Steps = BLUE_BASE,
    graph: bool = True,
    **layout: Unpack[Layout],
) -> sdk_stat.Panel:
    layout.setdefault("width", 4)
    layout.setdefault("height", 4)
    return (
        panel(
            sdk_stat.Panel(),
            title,
            description,
            queries,
            unit,
            thresholds=thresholds,
            color_mode=model.FieldColorModeId.THRESHOLDS,
            layout=layout,
        )
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA if graph else common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .reduce_options(last_value())
        .show_percent_change(False)
        .text_mode(common.BigValueTextMode.AUTO)
        .wide_layout(True)
    )


def gauge(
    title: str, description: str, queries: Sequence[Query], unit: str, thresholds: Steps, **layout: Unpack[Layout]
) -> sdk_gauge.Panel:
    layout.setdefault("width", 4)
    layout.setdefault("height", 4)
    return (
        panel(
            sdk_gauge.Panel(),
            title,
            description,
            queries,
            unit,
            thresholds=thresholds,
            color_mode=model.FieldColorModeId.THRESHOLDS,
            layout=layout,
        )
        .reduce_options(last_value())
        .show_threshold_labels(False)
        .show_threshold_markers(True)
    )


def bars(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    thresholds: Steps | None = None,
    **layout: Unpack[Layout],
) -> sdk_bargauge.Panel:
    """A horizontal bar gauge: one bar per series, as a ranking (queries are instant, sorted)."""
    return (
        panel(
            sdk_bargauge.Panel(),
            title,
            description,
            queries,
            unit,
            thresholds=thresholds or BLUE_BASE,
            color_mode=model.FieldColorModeId.THRESHOLDS if thresholds else model.FieldColorModeId.CONTINUOUS_BL_PU,
            layout=layout,
        )
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .max_viz_height(300)
        .min_viz_height(16)
        .min_viz_width(8)
        .name_placement(common.BarGaugeNamePlacement.AUTO)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(last_value())
        .show_unfilled(True)
        .sizing(common.BarGaugeSizing.AUTO)
        .value_mode(common.BarGaugeValueMode.COLOR)
    )


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its header, its unit, and the instant query (one value per label set) that fills it."""

    name: str
    unit: str
    expr: str


def table(title: str, description: str, columns: Sequence[Column], **layout: Unpack[Layout]) -> sdk_table.Panel:
    """Instant queries merged into one table, one value column each (labels are the other columns), sorted
    by the first, largest first."""
    # Grafana names the value column of a single query `Value`, of several `Value #A`, `Value #B`...
    if len(columns) == 1:
        renames = {"Value": columns[0].name}
    else:
        renames = {f"Value #{chr(ord('A') + i)}": column.name for i, column in enumerate(columns)}
    layout["overrides"] = [override("byName", column.name, [("unit", column.unit)]) for column in columns]
    return (
        panel(
            sdk_table.Panel(),
            title,
            description,
            [Query(column.expr, instant=True, table=True) for column in columns],
            "short",
            thresholds=NO_THRESHOLDS,
            color_mode=model.FieldColorModeId.PALETTE_CLASSIC,
            layout=layout,
        )
        .align(common.FieldTextAlignment.AUTO)
        .cell_options(common.TableAutoCellOptions())
        .filterable(False)
        .inspect(False)
        .cell_height(common.TableCellHeight.SM)
        .footer(sdk_common.TableFooterOptions().count_rows(False).reducer(["sum"]).show(False))
        .show_header(True)
        .sort_by([sdk_common.TableSortByFieldState().desc(True).display_name(columns[0].name)])
        .transformations(
            [
                model.DataTransformerConfig(id_val="merge", options={}),
                model.DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {"Time": True},
                        "indexByName": {},
                        "renameByName": renames,
                    },
                ),
            ]
        )
    )


def state_timeline(
    title: str, description: str, queries: Sequence[Query], **layout: Unpack[Layout]
) -> sdk_statetimeline.Panel:
    states = {"0": ("closed", GREEN), "1": ("half-open", YELLOW), "2": ("open", RED)}
    return (
        panel(
            sdk_statetimeline.Panel(),
            title,
            description,
            queries,
            "none",
            thresholds=steps((None, GREEN), (1, YELLOW), (2, RED)),
            color_mode=model.FieldColorModeId.THRESHOLDS,
            layout=layout,
        )
        .mappings(
            [
                model.ValueMap(
                    options={
                        value: model.ValueMappingResult(text=text, color=name, index=i)
                        for i, (value, (text, name)) in enumerate(states.items())
                    }
                )
            ]
        )
        .fill_opacity(80)
        .hide_from(sdk_common.HideSeriesConfig().legend(False).tooltip(False).viz(False))
        .line_width(0)
        .align_value(common.TimelineValueAlignment.LEFT)
        .legend(
            sdk_common.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .merge_values(True)
        .row_height(0.8)
        .show_value(common.VisibilityMode.AUTO)
        .tooltip(sdk_common.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE).sort(common.SortOrder.NONE))
    )


# --- dashboards -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: Sequence[Builder[model.Panel]]


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    label: str
    query: str
    """`label_values(metric{matchers}, label)`."""
    all_value: str | None = ".*"
    """What "All" stands for; `None`: Grafana joins every value into one regex."""

    def build(self) -> sdk.QueryVariable:
        variable = (
            sdk.QueryVariable(self.name)
            .label(self.label)
            .datasource(datasource())
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .hide(model.VariableHide.DONT_HIDE)
            .include_all(True)
            .multi(True)
            .options([])
            # As Grafana's Prometheus variable editor saves it (its schema leaves `query` open).
            .query({"qryType": 1, "query": self.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .regex("")
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )
        return variable if self.all_value is None else variable.all_value(self.all_value)


def datasource_variable() -> sdk.DatasourceVariable:
    return (
        sdk.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(model.VariableOption(selected=False, text="Prometheus", value=DATASOURCE_UID))
        .hide(model.VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
        .regex("")
    )


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

    def build(self) -> model.Dashboard:
        """The SDK lays panels out left to right, a new line once 24 units are filled, each row below the
        last: it does not wrap a panel wider than what is left of a line, so a row's widths add up to 24 per
        line (tests/deploy/test_dashboards.py checks that no panel crosses the edge or overlaps another)."""
        dashboard = (
            sdk.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags([TAG])
            .editable()
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .time(self.time_from, "now")
            .timezone("browser")
            .refresh("30s")
            .version(1)
            .annotation(
                sdk.AnnotationQuery()
                .built_in(1)
                .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                .enable(True)
                .hide(True)
                .icon_color("rgba(0, 211, 255, 1)")
                .name("Annotations & Alerts")
                .type("dashboard")
            )
            .link(
                sdk.DashboardLink("otel_puppy")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .icon("external link")
                .include_vars(True)
                .keep_time(True)
                .target_blank(False)
                .tooltip("")
                .url("")
            )
            .with_variable(datasource_variable())
        )
        for variable in self.variables:
            dashboard = dashboard.with_variable(variable.build())
        for row in self.rows:
            dashboard = dashboard.with_row(sdk.Row(row.title).collapsed(False))
            for member in row.panels:
                dashboard = dashboard.with_panel(member)
        built = dashboard.build()
        for panel_id, item in enumerate(built.panels or [], start=1):  # rows and panels, top to bottom
            item.id_val = panel_id
        return built


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
            table(
                "Cost by team and agent this month",
                "Chargeback: the cost ledger since the start of the calendar month (UTC), by team and agent (empty: "
                "the calls named none), up to a minute old. These are the figures `otel-puppy status --by team,agent` "
                "prints and a FOCUS export of the month (`otel-puppy export focus`) adds up to.",
                [
                    Column(
                        "this month",
                        "currencyUSD",
                        "max by (team, agent) (otel_puppy_cost_this_month_usd)",
                    )
                ],
                width=24,
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
                    "Spent plus reserved over the limit, per budget instance: dollars, tokens, or for a `limit_calls` "
                    "budget calls made plus calls admitted and not yet settled (`per` budgets: one per scope; per "
                    "user, conversation or run only the fullest, as scope `max`). At 100% the budget's action applies.",
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
                            [
                                ("custom.lineStyle", common.LineStyle(fill="dash", dash=[10, 10])),
                                ("custom.fillOpacity", 0),
                            ],
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
            "Reservation quality",
            [
                timeseries(
                    "Reservations by outcome",
                    "What became of reservations, per second, by where their estimate came from: `request` (the "
                    "agent's own), `learned` (what such calls usually cost: the agent gave none, or input tokens "
                    "alone) or `none` (a call budget's, holding one call). Settled by the call's span, expired unused "
                    "after OTEL_PUPPY_RESERVATION_TTL_S, or released (denied after all). Many expired: calls that "
                    "never report their spans hold budget room in vain.",
                    [
                        Query(
                            sum_by("source, outcome", rate("otel_puppy_reservations_total", "")),
                            "{{source}} {{outcome}}",
                        )
                    ],
                    "reqps",
                    stacked=True,
                ),
                timeseries(
                    "Settled cost over estimate",
                    "What calls cost over the estimate reserved for them (median and p95, by source): 1 is an "
                    "exact estimate; above 1 a call cost more than was held, which is what concurrent callers can "
                    "overshoot a budget by; well below 1 estimates hold room nobody uses. Recorded as "
                    "source:otel_puppy_reservation_settled_ratio:p95_1h for alerting.",
                    [
                        Query(ratio_quantile(0.5), "{{source}} p50"),
                        Query(ratio_quantile(0.95), "{{source}} p95"),
                    ],
                    "suffix:x",
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
                            sum_by(
                                "policy, severity",
                                increase(
                                    "otel_puppy_alerts_total", 'kind="budget", policy=~"$budget"', "$__rate_interval"
                                ),
                            ),
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
                            sum_by(
                                "policy, action",
                                rate("otel_puppy_decisions_total", 'action!="allow", policy=~"$budget"'),
                            ),
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
                        override("byRegexp", f".* {to}$", [("color", fixed(value))])
                        for to, value in (("open", RED), ("half_open", YELLOW), ("closed", GREEN))
                    ],
                ),
                table(
                    "Transitions since start",
                    "Every breaker state change since each replica started.",
                    [
                        Column(
                            "Transitions",
                            "short",
                            f"sum by (policy, provider, model, to) (otel_puppy_breaker_transitions_total{{{breaker}}})",
                        ),
                    ],
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
                            sum_by(
                                "provider, error_class",
                                rate("otel_puppy_llm_requests_total", CALLS + ', outcome="error"'),
                            ),
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
                            sum_by(
                                "policy, severity",
                                increase("otel_puppy_alerts_total", 'kind="breaker"', "$__rate_interval"),
                            ),
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
                        Column(
                            "Fired",
                            "short",
                            f"sum by (policy, signal, action) (otel_puppy_anomalies_total{{{policy}}})",
                        ),
                    ],
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
                            sum_by("policy, action", rate("otel_puppy_decisions_total", 'action!="allow", ' + policy)),
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
                        Column(
                            "Decisions",
                            "short",
                            'sum by (action, policy) (otel_puppy_decisions_total{action!="allow"})',
                        ),
                    ],
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
                        Column("Alerts", "short", "sum by (kind, policy, severity) (otel_puppy_alerts_total)"),
                    ],
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
                        Column(
                            "Spend",
                            "currencyUSD",
                            f"sum by (provider, model) ({increase('otel_puppy_llm_cost_usd_total')})",
                        ),
                        Column(
                            "Calls", "short", f"sum by (provider, model) ({increase('otel_puppy_llm_requests_total')})"
                        ),
                        Column("USD per 1K tokens", "currencyUSD", cost_per_1k_tokens("provider, model")),
                        Column("p95 latency", "s", quantile(0.95, "provider, model", interval="$__range")),
                        Column("Error rate", "percentunit", error_ratio("provider, model", interval="$__range")),
                    ],
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
                            "sort_desc("
                            + sum_by(
                                "provider, model",
                                increase("otel_puppy_llm_tokens_total", CALLS + ', type="cache_read"'),
                            )
                            + " / "
                            + sum_by(
                                "provider, model", increase("otel_puppy_llm_tokens_total", CALLS + ', type="input"')
                            )
                            + ")",
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
                            sum_by(
                                "provider, model, type",
                                rate("otel_puppy_llm_tokens_total", CALLS + ', type=~"cache_read|cache_write"'),
                            ),
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
                        Column(
                            "Calls",
                            "short",
                            f"sum by (provider, model, reason) ({increase('otel_puppy_llm_unpriced_requests_total')})",
                        ),
                    ],
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


def dashboards() -> list[tuple[str, model.Dashboard]]:
    """(file name, dashboard) for every dashboard."""
    built = [make() for make in DASHBOARDS]
    return [(dashboard.file, dashboard.build()) for dashboard in built]


def render(dashboard: model.Dashboard) -> str:
    """The committed form: sorted keys, two-space indents, a final newline."""
    return JSONEncoder(indent=2, sort_keys=True, ensure_ascii=False).encode(dashboard) + "\n"


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
