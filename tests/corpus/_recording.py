"""What every corpus recorder shares: spans to OTLP/JSON lines, and the manifest of what the mock provider returned.

Imported by the recording scripts (`tests/corpus/record/*.py`), which may run in their own
environment (`tests/corpus/envs/`): it needs only opentelemetry-sdk, the OTLP exporter's common
encoders and protobuf, never otel_puppy. The lines are the OTLP/JSON encoding (hex trace and span
ids, integer enums) that the Collector's `file` exporter writes, `otel-puppy serve --record` writes,
and `otel-puppy replay` and `POST /v1/traces` (as `application/json`) read.

A recording directory `tests/corpus/recordings/<instrumentation>/` holds one `<case>.jsonl` per
case and `manifest.json`:

    {"instrumentation": "...", "language": "python", "packages": {"name": "version", ...},
     "cases": [{"case": "...", "file": "<case>.jsonl", "calls": [
        {"outcome": "ok" | "error", "http_status": 200, "streamed": false,
         "provider": "openai",            # the label a user writes in `match: {provider: ...}`
         "model": "gpt-4.1",              # the model a user writes in `match:`; priced as this
         "response_id": "chatcmpl-..." | null,
         "usage": {"input_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
                   "output_tokens": 0, "reasoning_tokens": 0},   # what the MOCK PROVIDER returned
         "shortfall": {"cache_read_tokens": 1024} | {},  # tokens this instrumentation drops from its spans
         "note": "..."}]}]}

`usage` uses genai-prices' field names, and `input_tokens` counts every input token, cached ones
included (genai-prices' convention); `reasoning_tokens` are part of `output_tokens`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

RECORDINGS = Path(__file__).parent / "recordings"
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def otlp_json_line(spans: Sequence[ReadableSpan]) -> bytes:
    """`spans` as one OTLP/JSON line (newline included), grouped by resource and scope."""
    document = _hex_ids(json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True))
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _hex_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: base64.b64decode(v).hex() if k in _ID_KEYS else _hex_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hex_ids(v) for v in value]
    return value


@contextmanager
def capturing(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    """Every span `provider` ends inside the block, kept in memory (`.get_finished_spans()`)."""
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    provider.force_flush()


class Manifest:
    """Collects the cases of one instrumentation's recording and writes them with `manifest.json`."""

    def __init__(self, instrumentation: str, packages: dict[str, str], *, language: str = "python") -> None:
        self.directory = RECORDINGS / instrumentation
        self.document: dict[str, Any] = {
            "instrumentation": instrumentation,
            "language": language,
            "packages": dict(sorted(packages.items())),
            "cases": [],
        }

    def add(self, case: str, spans: Sequence[ReadableSpan], calls: list[dict[str, Any]]) -> None:
        """One case: its spans as one OTLP/JSON line in `<case>.jsonl`, and what each call really was."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{case}.jsonl").write_bytes(otlp_json_line(spans))
        self.document["cases"].append({"case": case, "file": f"{case}.jsonl", "calls": calls})

    def write(self) -> Path:
        path = self.directory / "manifest.json"
        path.write_text(json.dumps(self.document, indent=2, sort_keys=True) + "\n")
        return path
