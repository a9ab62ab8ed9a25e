"""`on_end`: our processor against `BatchSpanProcessor.on_end`, on the same spans, same run."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench._harness import Result, best_of, no_thread_switches, percentile
from otel_puppy.testing import engine_for_tests, make_span

SPANS = 20_000

GENAI = {  # attributes of a real pydantic-ai `chat` span, with message bodies
    "gen_ai.operation.name": "chat",
    "gen_ai.agent.name": "support",
    "gen_ai.agent.call.id": "01a20f6a-1b11-70a9-957b-7c235fd3d35f",
    "gen_ai.conversation.id": "01a20f6a-1b11-70a9-957b-7c24bdf9ceb6",
    "logfire.span_type": "span",
    "gen_ai.provider.name": "openai",
    "gen_ai.system": "openai",
    "server.address": "api.openai.com",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"' + "x" * 400 + '"}]}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"type":"text","content":"' + "y" * 200 + '"}]}]',
    "gen_ai.usage.input_tokens": 1500,
    "gen_ai.usage.output_tokens": 230,
    "gen_ai.usage.cache_read.input_tokens": 1024,
    "gen_ai.response.model": "gpt-4.1-2025-04-14",
    "gen_ai.response.id": "chatcmpl-1",
    "operation.cost": 0.002,
    "gen_ai.response.finish_reasons": ("stop",),
}
PLAIN = {  # an HTTP server span
    "http.request.method": "GET",
    "url.path": "/orders/42",
    "url.scheme": "https",
    "http.route": "/orders/{id}",
    "http.response.status_code": 200,
    "server.address": "shop.example",
    "user_agent.original": "curl/8",
    "network.protocol.version": "1.1",
}


class _NullExporter(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _spans(attributes: dict[str, object]) -> list[ReadableSpan]:
    return [make_span(attributes) for _ in range(SPANS)]


def _time_on_end(on_end: object, spans: list[ReadableSpan]) -> tuple[float, list[float]]:
    """Mean ns per span over the loop, and each call's own duration (for percentiles)."""
    clock = time.perf_counter_ns
    samples: list[float] = []
    with no_thread_switches():
        start = clock()
        for span in spans:
            on_end(span)  # type: ignore[operator]
        mean = (clock() - start) / len(spans)
        for span in spans[: len(spans) // 4]:
            t0 = clock()
            on_end(span)  # type: ignore[operator]
            samples.append(clock() - t0)
    return mean, samples


def _measure(attributes: dict[str, object]) -> tuple[float, float, float, float]:
    spans = _spans(attributes)
    ours: list[tuple[float, list[float]]] = []
    theirs: list[tuple[float, list[float]]] = []
    for _ in range(5):
        engine = engine_for_tests(queue_size=10 * SPANS, raise_internal_errors=False)
        processor = engine.span_processor()
        ours.append(_time_on_end(processor.on_end, spans))
        processor.force_flush()
        engine.close()
        batch = BatchSpanProcessor(_NullExporter(), max_queue_size=10 * SPANS, schedule_delay_millis=5000)
        theirs.append(_time_on_end(batch.on_end, spans))
        batch.shutdown()
    best_ours = min(ours, key=lambda item: item[0])
    best_theirs = min(theirs, key=lambda item: item[0])
    return best_ours[0], best_theirs[0], percentile(best_ours[1], 0.99), percentile(best_theirs[1], 0.99)


def run() -> list[Result]:
    results = []
    for label, attributes, target in (("GenAI span", GENAI, 1.5), ("non-GenAI span", PLAIN, 1.2)):
        ours, theirs, ours_p99, theirs_p99 = _measure(attributes)
        ratio = ours / theirs
        results.append(
            Result(
                name=f"on_end, {label}",
                ours=f"{ours:.0f} ns (p99 {ours_p99:.0f} ns)",
                baseline=f"BatchSpanProcessor {theirs:.0f} ns (p99 {theirs_p99:.0f} ns)",
                ratio=ratio,
                ratio_text=f"{ratio:.2f}x",
                target=f"<= {target}x",
                met=ratio <= target,
            )
        )
    return results


if __name__ == "__main__":
    for result in run():
        print(result)
    _ = best_of  # kept for symmetry with other benches
