# corpus-env: dev
"""The Anthropic SDK's own OpenTelemetry tracing, alone and under logfire's `instrument_anthropic`.

    .venv/bin/python -m tests.corpus.record.anthropic_native

The SDK (anthropic >= 2.x, `anthropic/_tracing.py`) starts one `CLIENT` span per API call on the
registered tracer provider unless the client is given `open_telemetry=False` (or
`ANTHROPIC_OPEN_TELEMETRY=false`): it is on by default. Two recordings:

- `anthropic-native`: the SDK's spans alone, on a plain SDK `TracerProvider` registered globally.
- `anthropic-native+logfire`: `logfire.configure()` registers logfire's provider and
  `logfire.instrument_anthropic(client, suppress_other_instrumentation=False)` adds its span, with the
  SDK's own inside it: two spans, parent and child, describe each call. With logfire's default
  (`suppress_other_instrumentation=True`) logfire's provider drops the SDK's span, and a user gets what
  the `logfire-anthropic` recording holds.

Each runs in a child process: the global tracer provider can be set once per process.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.corpus._recording import Manifest
from tests.corpus.record import _anthropic_cases as cases
from tests.corpus.record._scripted import Scripted

ALONE = "anthropic-native"
WITH_LOGFIRE = "anthropic-native+logfire"


def note(instrumentation: str, call: dict[str, Any]) -> str:
    """What a reader of this call's spans should know, found by reading the recording."""
    if instrumentation == ALONE:
        return ""
    if call["streamed"]:
        return (
            "three spans: logfire's 'Message with ...' (no usage; ends when the stream opens), its child "
            "anthropic.messages.create (the SDK's, usage and response id, ends with the stream) and logfire's "
            "'streaming response ...' log span, a root (usage and the same response id)"
        )
    return (
        "two spans: logfire's 'Message with ...' and its child anthropic.messages.create (the SDK's), "
        "the child ending first; both carry the usage (and the response id when the call succeeded)"
    )


def record(instrumentation: str) -> None:
    exporter = InMemorySpanExporter()
    packages = ["anthropic"]
    scripted = Scripted()
    if instrumentation == ALONE:
        provider = TracerProvider(resource=Resource.create({"service.name": f"corpus-{instrumentation}"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        client = cases.client(scripted)
        flush = provider.force_flush
    else:
        import logfire

        logfire.configure(
            send_to_logfire=False,
            console=False,
            metrics=False,
            service_name=f"corpus-{instrumentation}",
            additional_span_processors=[SimpleSpanProcessor(exporter)],
        )
        client = cases.client(scripted)
        logfire.instrument_anthropic(client, suppress_other_instrumentation=False)
        packages.append("logfire")
        flush = logfire.force_flush
    manifest = Manifest(instrumentation, {name: version(name) for name in packages})
    for case in cases.CASES:
        exporter.clear()
        calls = case.run(client, scripted, f"{instrumentation}/{case.name}")
        flush()
        for call in calls:
            call["note"] = note(instrumentation, call)
        manifest.add(case.name, exporter.get_finished_spans(), calls)
    scripted.assert_drained()
    print(manifest.write())


def main() -> None:
    if len(sys.argv) > 1:
        record(sys.argv[1])
        return
    for instrumentation in (ALONE, WITH_LOGFIRE):
        subprocess.run([sys.executable, "-m", "tests.corpus.record.anthropic_native", instrumentation], check=True)


if __name__ == "__main__":
    main()
