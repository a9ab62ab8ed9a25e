# corpus-env: openinference
"""OpenInference's OpenAI instrumentation (`openinference-instrumentation-openai`) over a mocked OpenAI API.

.venv-corpus/openinference/bin/python -m tests.corpus.record.openinference_openai
"""

from __future__ import annotations

import httpx2
import openai
from openinference.instrumentation.openai import OpenAIInstrumentor  # type: ignore[import-not-found]  # only in the corpus env

from tests.corpus.record._cases import Recording
from tests.corpus.record._openai_api import OpenAIApi, record_cases

PACKAGES = (
    "openinference-instrumentation-openai",
    "openinference-instrumentation",
    "openinference-semantic-conventions",
    "openai",
)


def main() -> None:
    with Recording("openinference-openai", PACKAGES) as recording:
        OpenAIInstrumentor().instrument(tracer_provider=recording.provider)
        api = OpenAIApi(httpx2)
        client = openai.OpenAI(api_key="sk-corpus", http_client=httpx2.Client(transport=api.transport()), max_retries=0)
        record_cases(recording, client, api)


if __name__ == "__main__":
    main()
