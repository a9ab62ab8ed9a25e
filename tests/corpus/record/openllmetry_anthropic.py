# corpus-env: openllmetry
"""OpenLLMetry's Anthropic instrumentation (`opentelemetry-instrumentation-anthropic`) over a mocked Messages API.

.venv-corpus/openllmetry/bin/python -m tests.corpus.record.openllmetry_anthropic
"""

from __future__ import annotations

import anthropic
import httpx2
from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor  # type: ignore[import-not-found]  # only in the corpus env

from tests.corpus.record._anthropic_api import AnthropicApi, record_cases
from tests.corpus.record._cases import Recording

PACKAGES = ("opentelemetry-instrumentation-anthropic", "opentelemetry-semantic-conventions-ai", "anthropic")
KNOWN = {
    "messages_stream_claude-sonnet-4-5": {
        "shortfall": {"output_tokens": -1},
        "note": "message_delta's output_tokens is the running total; OpenLLMetry adds message_start's placeholder "
        "output_tokens (1) to it, so its span reports one output token more than the API returned",
    }
}


def main() -> None:
    with Recording("openllmetry-anthropic", PACKAGES) as recording:
        AnthropicInstrumentor().instrument(tracer_provider=recording.provider)
        api = AnthropicApi(httpx2)
        client = anthropic.Anthropic(
            api_key="sk-ant-corpus", http_client=httpx2.Client(transport=api.transport()), max_retries=0
        )
        record_cases(recording, client, api, known=KNOWN)


if __name__ == "__main__":
    main()
