"""What otel_puppy writes onto the spans it passes on: each model call's cost, each agent run's.

The attributes follow the cost attributes proposed for the GenAI semantic conventions
(semantic-conventions-genai PR #443): `gen_ai.usage.cost.amount` (a double, in
`gen_ai.usage.cost.currency`), `gen_ai.usage.cost.source` (`local`: computed here, not reported
by the provider), and, ours, the price data they came from (`otel_puppy.price.version`), so a cost
can be audited and re-priced. An attribute already on a span is never overwritten: a span that
carries its own `gen_ai.usage.cost.amount` keeps it, and ours goes to `otel_puppy.cost.amount`.

Every span describing a call carries its cost, as each carries the call's tokens: two nested spans
of one call (pydantic-ai's `chat` over the OpenAI SDK's) both do. What counts a call once is an
agent run's `otel_puppy.run.cost.amount`: the sum over the calls *counted* beneath it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Final

from otel_puppy import semconv
from otel_puppy.pricing import Price

__all__ = (
    "COST_AMOUNT",
    "COST_CURRENCY",
    "COST_SOURCE",
    "OUR_COST_AMOUNT",
    "PRICE_VERSION",
    "REJECTED",
    "RUN_CALLS",
    "RUN_COST",
    "UNPRICED_REASON",
    "RunCost",
    "RunCosts",
    "call_attributes",
    "is_run",
    "price_version",
    "run_attributes",
)

COST_AMOUNT: Final = "gen_ai.usage.cost.amount"
COST_CURRENCY: Final = "gen_ai.usage.cost.currency"
COST_SOURCE: Final = "gen_ai.usage.cost.source"
OUR_COST_AMOUNT: Final = "otel_puppy.cost.amount"
"""Our cost, where the span already has a `gen_ai.usage.cost.amount` of its own."""
PRICE_VERSION: Final = "otel_puppy.price.version"
UNPRICED_REASON: Final = "otel_puppy.price.unpriced_reason"
REJECTED: Final = "otel_puppy.rejected"
"""Why a span was not counted (a number out of bounds, unusable ids): it is passed on all the same."""
RUN_COST: Final = "otel_puppy.run.cost.amount"
RUN_CALLS: Final = "otel_puppy.run.calls"

_RUN_OPERATIONS: Final = frozenset({"invoke_agent", "invoke_workflow"})
_RUN_OPENINFERENCE: Final = frozenset({"AGENT"})
_RUN_TRACELOOP: Final = frozenset({"agent", "workflow"})
_GENAI_PRICES: Final = f"genai-prices {version('genai-prices')}"


def price_version(price: Price) -> str:
    """The price data a cost came from: `genai-prices <version>`, or `override` (a `prices:` entry)."""
    return _GENAI_PRICES if price.source == "genai-prices" else price.source


def call_attributes(price: Price, present: Container[str]) -> list[tuple[str, float | str]]:
    """The attributes a model-call span gains for `price`, none of them among `present`."""
    added: list[tuple[str, float | str]]
    if price.nanos is None:
        added = [(UNPRICED_REASON, price.unpriced_reason or "unpriced")]
    else:
        amount = float(price.exact_usd or 0)
        if COST_AMOUNT in present or COST_CURRENCY in present:  # the span's own cost, or its currency
            added = [(OUR_COST_AMOUNT, amount)]
        else:
            added = [(COST_AMOUNT, amount), (COST_CURRENCY, "USD"), (COST_SOURCE, "local")]
        added.append((PRICE_VERSION, price_version(price)))
    return [(key, value) for key, value in added if key not in present]


def is_run(attributes: Mapping[str, object]) -> bool:
    """An agent run (or workflow) span, in any convention: the GenAI conventions' `invoke_agent`,
    OpenInference's `AGENT` span kind, OpenLLMetry's `agent`/`workflow` span kinds. Not logfire's
    pending copy of a span still running; only text values are compared (a list is never a run)."""
    return attributes.get(semconv.LOGFIRE_SPAN_TYPE) != semconv.LOGFIRE_PENDING and (
        _text_in(attributes.get(semconv.OPERATION[0]), _RUN_OPERATIONS)
        or _text_in(attributes.get(semconv.OPENINFERENCE_KIND), _RUN_OPENINFERENCE)
        or _text_in(attributes.get(semconv.TRACELOOP_KIND), _RUN_TRACELOOP)
    )


def _text_in(value: object, names: frozenset[str]) -> bool:
    return isinstance(value, str) and value in names


@dataclass(frozen=True, slots=True)
class RunCost:
    nanos: int
    calls: int


class RunCosts:
    """The cost of the counted calls beneath each agent run span, from what this process saw.

    It keeps, for recent traces, every span's parent (any span: a call's ancestors may be tools
    or chains) and each counted call's cost, bounded: `max_spans` parent links and `max_calls`
    call costs, the oldest traces forgotten first. A run span is summed when it arrives; its
    parent ends after its children, so they are usually here already. Incomplete when a call
    beneath it arrived after it (a Collector's batches out of order, a child ending late), went to
    another replica, or was forgotten (a run longer than the bounds hold).
    """

    def __init__(self, max_spans: int = 200_000, max_calls: int = 100_000, max_depth: int = 64) -> None:
        self.max_spans = max_spans
        self.max_calls = max_calls
        self.max_depth = max_depth
        self._parents: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._calls: OrderedDict[int, dict[int, int]] = OrderedDict()
        """trace id -> {span id: nanos} of the calls counted in it."""
        self._call_count = 0
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()

    def link(self, spans: Iterable[tuple[int, int, int]]) -> None:
        """Remember (trace id, span id, parent span id) of spans, 0 for a root's parent."""
        with self._lock:
            parents = self._parents
            for trace_id, span_id, parent_id in spans:
                if parent_id:
                    parents[(trace_id, span_id)] = parent_id
            while len(parents) > self.max_spans:
                parents.popitem(last=False)

    def count(self, trace_id: int, span_id: int, nanos: int) -> None:
        """A call at this price. A call nested in another call (pydantic-ai's `chat` span over the
        OpenAI SDK's) is summed once, through the outer one."""
        with self._lock:
            calls = self._calls.get(trace_id)
            if calls is None:
                calls = self._calls[trace_id] = {}
            else:
                self._calls.move_to_end(trace_id)
            if span_id not in calls:
                self._call_count += 1
            calls[span_id] = nanos
            while self._call_count > self.max_calls and self._calls:
                _, dropped = self._calls.popitem(last=False)
                self._call_count -= len(dropped)

    def sums(self, runs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], RunCost]:
        """The counted calls beneath each run span, (trace id, span id), summed.

        One walk up from each call of a trace serves every run of that trace asked at once: a batch
        of many run spans costs what one does (at most `max_calls` x `max_depth` steps a trace).
        A call beneath two nested runs (a sub-agent's) counts in both."""
        wanted: dict[int, set[int]] = {}
        for trace_id, span_id in runs:
            wanted.setdefault(trace_id, set()).add(span_id)
        found: dict[tuple[int, int], RunCost] = {}
        with self._lock:
            parents = self._parents
            for trace_id, run_ids in wanted.items():
                nanos = dict.fromkeys(run_ids, 0)
                counts = dict.fromkeys(run_ids, 0)
                calls = self._calls.get(trace_id, {})
                for call_id, cost in calls.items():
                    node = call_id
                    for _ in range(self.max_depth):
                        parent = parents.get((trace_id, node))
                        if parent is None or parent in calls:
                            break  # the trace's root, or nested in a call that is summed instead
                        if parent in nanos:
                            nanos[parent] += cost
                            counts[parent] += 1
                        node = parent
                found.update(((trace_id, run), RunCost(nanos[run], counts[run])) for run in run_ids)
        return found

    def run(self, trace_id: int, span_id: int) -> RunCost:
        """The counted calls beneath the span `span_id` of `trace_id`, summed."""
        return self.sums([(trace_id, span_id)])[(trace_id, span_id)]


def run_attributes(cost: RunCost, present: Container[str]) -> list[tuple[str, float | int]]:
    """The attributes a run span gains for `cost`, none of them among `present`."""
    added: list[tuple[str, float | int]] = [(RUN_COST, cost.nanos / 1e9), (RUN_CALLS, cost.calls)]
    return [(key, value) for key, value in added if key not in present]
