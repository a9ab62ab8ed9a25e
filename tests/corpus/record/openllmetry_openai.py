# corpus-env: openllmetry
"""OpenLLMetry's OpenAI instrumentation (`opentelemetry-instrumentation-openai`) over a mocked OpenAI API.

.venv-corpus/openllmetry/bin/python -m tests.corpus.record.openllmetry_openai
"""

from __future__ import annotations

import httpx2
import openai
from opentelemetry.instrumentation.openai import OpenAIInstrumentor  # type: ignore[import-not-found]  # only in the corpus env

from tests.corpus.record._cases import Recording
from tests.corpus.record._openai_api import OpenAIApi, record_cases

PACKAGES = ("opentelemetry-instrumentation-openai", "opentelemetry-semantic-conventions-ai", "openai")


def main() -> None:
    with Recording("openllmetry-openai", PACKAGES) as recording:
        OpenAIInstrumentor().instrument(tracer_provider=recording.provider)
        api = OpenAIApi(httpx2)
        client = openai.OpenAI(api_key="sk-corpus", http_client=httpx2.Client(transport=api.transport()), max_retries=0)
        record_cases(recording, client, api)


if __name__ == "__main__":
    main()
