"""Replay: a Collector file-exporter recording read back and decided again, row by row."""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from otel_puppy.calls import LLMCall
from otel_puppy.decision import Action, Decision, DecisionRequest, PolicyHit
from otel_puppy.engine import PolicyEngine
from otel_puppy.money import usd_to_nanos
from otel_puppy.pricing import Price
from otel_puppy.replay import ReplayReport, ReplayRow, read_spans, render, replay
from otel_puppy.server.otlp import OtlpDecodeError
from otel_puppy.testing import FakeClock
from tests.server.test_otlp import HTTP, make_request, otlp_json, span

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
S = 1_000_000_000


def chat(model: str, input_tokens: int, output_tokens: int, agent: str, **extra: object) -> dict[str, object]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        "gen_ai.agent.name": agent,
        **extra,
    }


# Five batches as a Collector would export them: out of order, overlapping, with a retry and a nested span.
BATCHES = [
    make_request(
        # 00:00:10-00:00:40: a long call, still running when the next two are decided
        span(chat("gpt-4.1", 1000, 100, "support"), trace_id=1, span_id=11, start_ns=(T0 + 10) * S, duration_ns=30 * S),
        span(HTTP, trace_id=1, span_id=12, start_ns=(T0 + 11) * S, name="GET"),
    ),
    make_request(
        span(chat("gpt-4.1", 2000, 500, "support"), trace_id=2, span_id=21, start_ns=(T0 + 20) * S, duration_ns=5 * S),
        span(chat("mystery-model", 10, 10, "batch"), trace_id=3, span_id=31, start_ns=(T0 + 5) * S, duration_ns=S),
    ),
    make_request(
        # the same call twice (a Collector retry), and an SDK span nested under it describing it again
        span(chat("gpt-4.1", 3000, 0, "[bold]ops"), trace_id=4, span_id=41, start_ns=(T0 + 50) * S, duration_ns=S),
        span(chat("gpt-4.1", 3000, 0, "[bold]ops"), trace_id=4, span_id=41, start_ns=(T0 + 50) * S, duration_ns=S),
        span(
            chat("gpt-4.1", 3000, 0, "[bold]ops"),
            trace_id=4,
            span_id=42,
            parent_span_id=41,
            start_ns=(T0 + 50) * S + 1000,
            duration_ns=S // 2,
        ),
    ),
    make_request(
        span(chat("gpt-4.1", 500, 50, "support"), trace_id=5, span_id=51, start_ns=(T0 + 60) * S, duration_ns=S),
        span(chat("gpt-4.1", 100, 10, "support"), trace_id=6, span_id=61, start_ns=(T0 + 70) * S, duration_ns=S),
    ),
]


class StubPricer:
    """$1 per million input tokens, $2 per million output tokens; `mystery-model` is unknown."""

    def price(self, call: LLMCall) -> Price:
        if call.model == "mystery-model":
            return Price(nanos=None, unpriced_reason="unknown_model")
        return Price(nanos=call.input_tokens * 1000 + call.output_tokens * 2000)


@dataclass
class StubEngine:
    """A $0.0065 budget with reservations: past half, big calls degrade and small ones warn; `ops` is warned."""

    clock: FakeClock
    limit_nanos: int = 6_500_000
    spent: int = 0
    reserved: list[tuple[str, int]] = field(default_factory=list)
    log: list[tuple[str, float, str]] = field(default_factory=list)
    pricer: StubPricer = field(default_factory=StubPricer)

    def decide(self, request: DecisionRequest, /) -> Decision:
        self.log.append(("decide", self.clock.now(), f"{request.agent}:{request.model}"))
        estimate = usd_to_nanos(request.estimated_cost_usd) if request.estimated_cost_usd is not None else 0
        committed = self.spent + sum(amount for _, amount in self.reserved)
        hits: list[PolicyHit] = []
        if committed + estimate > self.limit_nanos:
            hits.append(PolicyHit("budget", "daily", Action.DENY, "over the daily budget"))
        elif committed + estimate > self.limit_nanos // 2 and estimate >= 500_000:
            hits.append(PolicyHit("budget", "daily", Action.DEGRADE, "past half", model="gpt-4.1-mini"))
            hits.append(PolicyHit("budget", "daily", Action.WARN, "past half", scope="agent=support"))
        elif committed + estimate > self.limit_nanos // 2:
            hits.append(PolicyHit("budget", "daily", Action.WARN, "past half"))
        if request.agent == "[bold]ops":
            hits.append(PolicyHit("budget", "ops-watch", Action.WARN, "ops is watched"))
        action = Action.strictest([h.action for h in hits])
        if action is not Action.DENY and estimate:
            self.reserved.append((f"{request.agent}:{request.model}", estimate))
        return Decision(action, request.provider, request.model, reasons=tuple(hits))

    def observe(self, call: LLMCall) -> None:
        self.log.append(("observe", self.clock.now(), f"{call.agent}:{call.request_model}"))
        cost = self.pricer.price(call).nanos or 0
        key = (f"{call.agent}:{call.request_model}", cost)  # settle the reservation this call made
        if key in self.reserved:
            self.reserved.remove(key)
        self.spent += cost


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def recording(tmp_path: Path) -> Path:
    lines = [json.dumps(otlp_json(batch)) for batch in BATCHES]
    return write_jsonl(tmp_path / "traces.jsonl", [lines[0], "", lines[1], "   ", lines[2], lines[3]])


EXPECTED_ROWS = (
    ReplayRow(T0 + 5.0, "openai", "mystery-model", "batch", "allow", (), None),
    ReplayRow(T0 + 10.0, "openai", "gpt-4.1", "support", "allow", (), Decimal("0.0012")),
    # $0.0012 reserved for the running call + $0.003 > half the budget
    ReplayRow(T0 + 20.0, "openai", "gpt-4.1", "support", "degrade", ("daily",), Decimal("0.003")),
    # $0.0042 spent + $0.003 > $0.0065
    ReplayRow(T0 + 50.0, "openai", "gpt-4.1", "[bold]ops", "deny", ("daily", "ops-watch"), Decimal("0.003")),
    ReplayRow(T0 + 60.0, "openai", "gpt-4.1", "support", "degrade", ("daily",), Decimal("0.0006")),
    ReplayRow(T0 + 70.0, "openai", "gpt-4.1", "support", "warn", ("daily",), Decimal("0.00012")),
)


def test_a_recording_is_replayed_in_time_order(tmp_path: Path) -> None:
    calls = list(read_spans(recording(tmp_path)))
    assert [c.span_id for c in calls] == [11, 21, 31, 41, 41, 42, 51, 61]
    engines: list[StubEngine] = []

    def factory(clock: FakeClock) -> StubEngine:
        engines.append(StubEngine(clock))
        return engines[0]

    report = replay(calls, factory)
    assert report == ReplayReport(
        rows=EXPECTED_ROWS,
        allowed=2,
        warned=1,
        degraded=2,
        denied=1,
        spend_usd=Decimal("0.00492"),
        spend_denied_usd=Decimal("0.003"),
        skipped=2,
        unpriced=1,
    )
    # The clock follows the recording and never runs backwards; a call is observed when it ended,
    # so the long call (10s-40s) is still a reservation when the 20s call is decided.
    assert engines[0].log == [
        ("decide", T0 + 5.0, "batch:mystery-model"),
        ("observe", T0 + 6.0, "batch:mystery-model"),
        ("decide", T0 + 10.0, "support:gpt-4.1"),
        ("decide", T0 + 20.0, "support:gpt-4.1"),
        ("observe", T0 + 25.0, "support:gpt-4.1"),
        ("observe", T0 + 40.0, "support:gpt-4.1"),
        ("decide", T0 + 50.0, "[bold]ops:gpt-4.1"),
        ("decide", T0 + 60.0, "support:gpt-4.1"),
        ("observe", T0 + 61.0, "support:gpt-4.1"),
        ("decide", T0 + 70.0, "support:gpt-4.1"),
        ("observe", T0 + 71.0, "support:gpt-4.1"),
    ]


def test_gzip_a_single_document_and_a_bom_read_the_same(tmp_path: Path) -> None:
    expected = list(read_spans(recording(tmp_path)))
    compressed = tmp_path / "traces.jsonl.gz"
    compressed.write_bytes(gzip.compress(recording(tmp_path).read_bytes()))
    assert list(read_spans(compressed)) == expected

    single = tmp_path / "single.json"
    merged = make_request(*(s for b in BATCHES for s in b.resource_spans[0].scope_spans[0].spans))
    single.write_text("\n\n" + json.dumps(otlp_json(merged), indent=2), encoding="utf-8")
    assert sorted(c.span_id for c in read_spans(single)) == sorted(c.span_id for c in expected)

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + recording(tmp_path).read_bytes())
    assert list(read_spans(bom)) == expected


def test_spans_with_invalid_ids_are_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    request = otlp_json(BATCHES[3])
    request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "0" * 32
    path = write_jsonl(tmp_path / "t.jsonl", [json.dumps(request)])
    assert [c.span_id for c in read_spans(path)] == [61]
    assert f"{path}:1: skipped 1 spans with invalid ids: resourceSpans[0].scopeSpans[0].spans[0]" in caplog.text


def test_a_malformed_line_is_named(tmp_path: Path) -> None:
    good = json.dumps(otlp_json(BATCHES[0]))
    path = write_jsonl(tmp_path / "t.jsonl", [good, "", good, '{"resourceSpans": [{"scopeSpans": [}]}'])
    with pytest.raises(OtlpDecodeError) as info:
        list(read_spans(path))
    assert str(info.value).startswith(f"{path}:4: invalid JSON at column 36: Expecting value")

    bad_id = otlp_json(BATCHES[0])
    bad_id["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["spanId"] = "xyz"
    path = write_jsonl(tmp_path / "t.jsonl", [good, json.dumps(bad_id)])
    with pytest.raises(OtlpDecodeError) as info:
        list(read_spans(path))
    assert str(info.value) == (f"{path}:2: resourceSpans[0].scopeSpans[0].spans[1].spanId: expected 16 hex digits")


def test_a_malformed_first_line_or_document_names_its_line(tmp_path: Path) -> None:
    good = json.dumps(otlp_json(BATCHES[0]))
    path = write_jsonl(tmp_path / "t.jsonl", ["", good[:-5], good])
    with pytest.raises(OtlpDecodeError) as info:
        list(read_spans(path))
    # Line 2 is cut short, so JSON reads on into line 3 and fails there.
    assert str(info.value) == f"{path}: invalid JSON at line 3 column 1: Expecting ',' delimiter"
    path.write_text('{\n  "resourceSpans": [\n    {"scopeSpans": 7}\n  ]\n}\n', encoding="utf-8")
    with pytest.raises(OtlpDecodeError) as info:
        list(read_spans(path))
    assert str(info.value) == f"{path}: resourceSpans[0].scopeSpans: expected an array, got a number"


def test_damaged_and_unsupported_compression(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(recording(tmp_path).read_bytes())[:-20])
    with pytest.raises(OtlpDecodeError, match="damaged gzip data"):
        list(read_spans(path))
    path = tmp_path / "t.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(10))
    with pytest.raises(OtlpDecodeError, match="zstd-compressed"):
        list(read_spans(path))


def test_an_empty_recording(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", ["", ""])
    assert list(read_spans(path)) == []
    report = replay([], StubEngine)
    assert report == ReplayReport((), 0, 0, 0, 0, Decimal(0), Decimal(0))


def test_render_prints_rows_and_totals(tmp_path: Path) -> None:
    report = replay(read_spans(recording(tmp_path)), StubEngine)
    console = Console(file=io.StringIO(), width=160, color_system=None)
    render(report, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "2026-01-01T00:00:50.000Z" in text
    assert "[bold]ops" in text  # span data is printed as written, never as markup
    assert "openai:mystery-model" in text
    assert "unpriced" in text
    assert "daily, ops-watch" in text
    assert "allowed 2, warned 1, degraded 2, denied 1" in text
    assert "spend $0.004920 applied, $0.003000 prevented by denials" in text
    assert "1 calls could not be priced (not in the totals); 2 duplicate or nested spans skipped" in text


def test_replay_with_the_real_engine(tmp_path: Path) -> None:
    from otel_puppy.policies import parse_policy_text
    from otel_puppy.testing import engine_for_tests

    policies = parse_policy_text(
        "budgets:\n  - name: daily\n    limit_usd: 0.006\n    window: day\n    action: deny\n",
        tmp_path / "budgets.yaml",
    )
    calls = [
        span(chat("gpt-4.1", 1000, 100, "support"), trace_id=t, span_id=t, start_ns=(T0 + 10 * t) * S)
        for t in (1, 2, 3)
    ]
    path = write_jsonl(tmp_path / "t.jsonl", [json.dumps(otlp_json(make_request(*calls)))])
    engines: list[PolicyEngine] = []

    def factory(clock: FakeClock) -> PolicyEngine:
        engines.append(engine_for_tests(policies, clock=clock))
        return engines[-1]

    report = replay(read_spans(path), factory)
    try:
        # gpt-4.1 at genai-prices' rates: 1000 input + 100 output tokens cost $0.0028
        assert [(row.action, row.cost_usd) for row in report.rows] == [
            ("allow", Decimal("0.0028")),
            ("allow", Decimal("0.0028")),
            ("deny", Decimal("0.0028")),
        ]
        assert report.rows[2].policies == ("daily",)
        assert (report.spend_usd, report.spend_denied_usd) == (Decimal("0.0056"), Decimal("0.0028"))
        assert engines[0].snapshot().spend("day") == Decimal("0.0056")
    finally:
        engines[0].close()


def _replayed(tmp_path: Path, policies_yaml: str, calls: list[Any]) -> tuple[ReplayReport, PolicyEngine]:
    from otel_puppy.policies import parse_policy_text
    from otel_puppy.testing import engine_for_tests

    policies = parse_policy_text(policies_yaml, tmp_path / "budgets.yaml")
    path = write_jsonl(tmp_path / "t.jsonl", [json.dumps(otlp_json(make_request(*calls)))])
    engines: list[PolicyEngine] = []

    def factory(clock: FakeClock) -> PolicyEngine:
        engines.append(engine_for_tests(policies, clock=clock))
        return engines[-1]

    return replay(read_spans(path), factory), engines[0]


def test_replay_holds_a_conversation_to_its_call_budget(tmp_path: Path) -> None:
    """`limit_calls: 3` per conversation: the fourth and fifth calls of c-1 are denied, c-2's first is not."""
    calls = [
        span(
            chat("gpt-4.1", 1000, 100, "support", **{"gen_ai.conversation.id": conversation}),
            trace_id=i,
            span_id=i,
            start_ns=(T0 + 10 * i) * S,
        )
        for i, conversation in enumerate(["c-1", "c-1", "c-1", "c-1", "c-2", "c-1"], start=1)
    ]
    budget = "budgets:\n  - {name: turns, per: [conversation], limit_calls: 3, window: day, action: deny}\n"
    report, engine = _replayed(tmp_path, budget, calls)
    try:
        assert [row.action for row in report.rows] == ["allow", "allow", "allow", "deny", "allow", "deny"]
        assert {row.policies for row in report.rows} == {("turns",)}  # every call is in one of its instances
        assert (report.allowed, report.denied) == (4, 2)
        # the calls that went ahead, $0.0028 each (1000 input + 100 output tokens of gpt-4.1)
        assert (report.spend_usd, report.spend_denied_usd) == (Decimal("0.0112"), Decimal("0.0056"))
    finally:
        engine.close()


def test_replay_holds_each_run_to_its_own_budget(tmp_path: Path) -> None:
    """`per: [trace]` at $0.006 ($0.0028 a call): run 1's third call is denied; run 2, interleaved, goes on."""
    calls = [
        span(chat("gpt-4.1", 1000, 100, "support"), trace_id=run, span_id=i, start_ns=(T0 + 10 * i) * S)
        for i, run in enumerate([1, 2, 1, 2, 1], start=1)
    ]
    budget = "budgets:\n  - {name: per-run, per: [trace], limit_usd: 0.006, window: day, action: deny}\n"
    report, engine = _replayed(tmp_path, budget, calls)
    try:
        assert [row.action for row in report.rows] == ["allow", "allow", "allow", "allow", "deny"]
        assert report.rows[4].policies == ("per-run",)
    finally:
        engine.close()


def test_replay_with_learned_estimates_reserves_what_the_calls_before_cost(tmp_path: Path) -> None:
    """`--estimates learned`: requests carry no estimate; from the 21st call on, each decision reserves
    the nearest-rank p95 of the calls before it (call i costs $0.002 * i + $0.0008: gpt-4.1, 1000 * i input
    and 100 output tokens)."""
    calls = [
        span(chat("gpt-4.1", 1000 * i, 100, "support"), trace_id=i, span_id=i, start_ns=(T0 + 10 * i) * S)
        for i in range(1, 26)
    ]
    from otel_puppy.policies import parse_policy_text
    from otel_puppy.testing import engine_for_tests

    policies = parse_policy_text("budgets:\n  - {name: daily, limit_usd: 100, window: day}\n", tmp_path / "b.yaml")
    path = write_jsonl(tmp_path / "t.jsonl", [json.dumps(otlp_json(make_request(*calls)))])
    engines: list[PolicyEngine] = []

    def factory(clock: FakeClock) -> PolicyEngine:
        engines.append(engine_for_tests(policies, clock=clock))
        return engines[-1]

    report = replay(read_spans(path), factory, estimates="learned")
    try:

        def cost(i: int) -> Decimal:
            return Decimal(2000 * i + 800).scaleb(-6)

        expected: list[tuple[Decimal | None, str]] = [(None, "none")] * 20  # fewer than 20 calls seen
        expected += [(cost(rank), "learned") for rank in (19, 20, 21, 22, 23)]  # ceil(0.95 * n), n = 20 .. 24
        assert [(row.estimate_usd, row.estimate_source) for row in report.rows] == expected
        assert (report.estimates, report.learned) == ("learned", 5)
        assert report.rows[20].estimate_usd == Decimal("0.038800000")
        console = Console(width=200, record=True, color_system=None)
        render(report, console)
        text = console.export_text()
        assert "$0.038800 learned" in text
        assert "5 of 25 decisions reserved a learned estimate" in text
    finally:
        engines[0].close()
