# corpus-env: openai-v2
"""The OpenTelemetry contrib OpenAI instrumentation (`opentelemetry-instrumentation-openai-v2`), in both semconv modes.

    .venv-corpus/openai-v2/bin/python -m tests.corpus.record.openai_v2

Records `openai-v2` (the default, semantic conventions v1.30) and `openai-v2-latest`
(`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`, through `opentelemetry-util-genai`). The
instrumentation reads the variable once per process, so each mode is recorded in a child process. It
covers chat completions and embeddings, not the Responses API: the Responses case is left out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from typing import Any

from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor  # type: ignore[import-not-found]
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from tests.corpus._recording import Manifest, capturing
from tests.corpus.record import _openai_cases as cases
from tests.corpus.record._scripted import Scripted

OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"
MODES = {"openai-v2": None, "openai-v2-latest": "gen_ai_latest_experimental"}
PACKAGES = ("opentelemetry-instrumentation-openai-v2", "opentelemetry-util-genai", "openai")


def shortfall(call: dict[str, Any]) -> tuple[dict[str, int], str]:
    """What both modes drop from their chat spans, found by reading the recordings.

    Only `gen_ai.usage.input_tokens` and `gen_ai.usage.output_tokens` are set from a chat completion
    (`prompt_tokens`, `completion_tokens`); `prompt_tokens_details.cached_tokens` and
    `completion_tokens_details.reasoning_tokens` are not recorded in either mode, streamed or not.
    """
    dropped = {kind: call["usage"][kind] for kind in ("cache_read_tokens", "reasoning_tokens") if call["usage"][kind]}
    if not dropped:
        return {}, ""
    return dropped, "the instrumentation records no cached or reasoning tokens for chat completions"


def record(instrumentation: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": f"corpus-{instrumentation}"}))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    scripted = Scripted()
    client = cases.client(scripted)
    manifest = Manifest(instrumentation, {name: version(name) for name in PACKAGES})
    with capturing(provider) as exporter:
        for case in cases.CASES:
            if case.api != "chat":
                continue
            exporter.clear()
            calls = case.run(client, scripted, f"{instrumentation}/{case.name}")
            provider.force_flush()
            for call in calls:
                call["shortfall"], call["note"] = shortfall(call)
            manifest.add(case.name, exporter.get_finished_spans(), calls)
    scripted.assert_drained()
    print(manifest.write())


def main() -> None:
    if len(sys.argv) > 1:
        record(sys.argv[1])
        return
    for instrumentation, opt_in in MODES.items():
        env = {key: value for key, value in os.environ.items() if key != OPT_IN}
        if opt_in is not None:
            env[OPT_IN] = opt_in
        subprocess.run([sys.executable, "-m", "tests.corpus.record.openai_v2", instrumentation], env=env, check=True)


if __name__ == "__main__":
    main()
