# corpus-env: dev
"""logfire's `instrument_openai` over a mocked OpenAI API: chat completions, a stream, the Responses API, failures.

    .venv/bin/python -m tests.corpus.record.logfire_openai

Spans are taken as an exporter in `additional_span_processors` gets them (pending spans included), with
the resource's `service.name` `corpus-logfire-openai`.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import logfire
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.corpus._recording import Manifest
from tests.corpus.record import _openai_cases as cases
from tests.corpus.record._scripted import Scripted

INSTRUMENTATION = "logfire-openai"
PACKAGES = ("logfire", "openai")


def note(call: dict[str, Any]) -> str:
    """What a reader of this call's spans should know, found by reading the recording."""
    notes = []
    if call["usage"]["reasoning_tokens"]:
        notes.append(
            "reasoning tokens only inside gen_ai.usage.raw (completion_tokens_details.reasoning_tokens, or "
            "output_tokens_details.reasoning_tokens for the Responses API), no attribute of their own"
        )
    if call["streamed"]:
        notes.append(
            "two root spans: 'Chat Completion with ...' (no usage, no response id; ends when the stream opens) "
            "and the 'streaming response ...' log span (usage, response id)"
        )
    return "; ".join(notes)


def main() -> None:
    exporter = InMemorySpanExporter()
    logfire.configure(
        send_to_logfire=False,
        console=False,
        metrics=False,
        service_name=f"corpus-{INSTRUMENTATION}",
        additional_span_processors=[SimpleSpanProcessor(exporter)],
    )
    scripted = Scripted()
    client = cases.client(scripted)
    logfire.instrument_openai(client)
    manifest = Manifest(INSTRUMENTATION, {name: version(name) for name in PACKAGES})
    for case in cases.CASES:
        exporter.clear()
        calls = case.run(client, scripted, f"{INSTRUMENTATION}/{case.name}")
        logfire.force_flush()
        for call in calls:
            call["note"] = note(call)
        manifest.add(case.name, exporter.get_finished_spans(), calls)
    scripted.assert_drained()
    print(manifest.write())


if __name__ == "__main__":
    main()
