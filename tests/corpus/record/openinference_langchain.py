# corpus-env: openinference
"""OpenInference's LangChain instrumentation driving `langchain-openai` over a mocked OpenAI API.

Recorded twice: the LangChain instrumentation alone (`openinference-langchain`), and together with
OpenInference's OpenAI instrumentation (`openinference-langchain+openai`), as users who instrument both
run it: two `LLM` spans, LangChain's over the OpenAI SDK's, describe each call.

    .venv-corpus/openinference/bin/python -m tests.corpus.record.openinference_langchain
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
from langchain_openai import ChatOpenAI  # type: ignore[import-not-found]  # only in the corpus env
from openinference.instrumentation.langchain import LangChainInstrumentor  # type: ignore[import-not-found]  # only in the corpus env
from openinference.instrumentation.openai import OpenAIInstrumentor  # type: ignore[import-not-found]  # only in the corpus env

from tests.corpus.record._cases import Recording, expect_failure
from tests.corpus.record._openai_api import RATE_LIMITED, SERVER_ERROR, OpenAIApi, Reply

PACKAGES = (
    "openinference-instrumentation-langchain",
    "openinference-instrumentation",
    "openinference-semantic-conventions",
    "langchain-core",
    "langchain-openai",
    "openai",
)
QUESTION = "Where is my order #4417?"
REQUEST_MODEL = "LangChain's span names only the requested model (llm.model_name) for a stream and the Responses API. "
NO_ID = (
    "OpenInference has no response-id attribute: the id is only inside output.value (the OpenAI span's raw "
    "response; LangChain's llm_output.id and response_metadata.id). "
)
TWO_ROOTS = (
    "Two LLM spans describe this call, LangChain's and the OpenAI SDK's, each the root of its own trace: "
    "OpenInference's LangChain tracer never attaches its span to the context, so the SDK span is not its child. "
)
ALONE = {
    "chat_stream_gpt-4.1-mini": REQUEST_MODEL,
    "responses_gpt-5-mini_reasoning": REQUEST_MODEL,
}
TOGETHER = {
    "chat_gpt-4.1": TWO_ROOTS + NO_ID,
    "chat_o4-mini_reasoning": TWO_ROOTS + NO_ID,
    "chat_stream_gpt-4.1-mini": TWO_ROOTS + NO_ID + "LangChain's holds none for a stream. " + REQUEST_MODEL,
    "responses_gpt-5-mini_reasoning": TWO_ROOTS + NO_ID + REQUEST_MODEL,
    "error_500": TWO_ROOTS + "A failed call has no response id at all.",
    "error_429": TWO_ROOTS + "A failed call has no response id at all.",
}


REQUESTED = {
    "chat_stream_gpt-4.1-mini": {"model": "gpt-4.1-mini"},
    "responses_gpt-5-mini_reasoning": {"model": "gpt-5-mini"},
}
"""The model labels LangChain's span alone carries: the requested model, not the answer's dated one."""


def main() -> None:
    with Recording("openinference-langchain", PACKAGES) as recording:
        LangChainInstrumentor().instrument(tracer_provider=recording.provider)
        record_cases(recording, ALONE, REQUESTED)
    with Recording("openinference-langchain+openai", (*PACKAGES, "openinference-instrumentation-openai")) as recording:
        LangChainInstrumentor().uninstrument()
        LangChainInstrumentor().instrument(tracer_provider=recording.provider)
        OpenAIInstrumentor().instrument(tracer_provider=recording.provider)
        record_cases(recording, TOGETHER)


def record_cases(recording: Recording, notes: dict[str, str], labels: dict[str, dict[str, str]] | None = None) -> None:
    labels = labels or {}
    api = OpenAIApi(httpx2)
    http_client = httpx2.Client(transport=api.transport())

    def chat(model: str, **options: Any) -> ChatOpenAI:
        return ChatOpenAI(model=model, api_key="sk-corpus", http_client=http_client, max_retries=0, **options)

    answer = api.expect(Reply("chatcmpl-CJq5aHk3Rw7nPz2LxVb9TcQm4YsEd", "gpt-4.1-2025-04-14", 2607, 2304, 164))
    chat("gpt-4.1").invoke(QUESTION)
    recording.case("chat_gpt-4.1", [answer.call(note=notes.get("chat_gpt-4.1", ""))])

    answer = api.expect(Reply("chatcmpl-CJq5cWn8Ty1uKd4GmQf6ZrLp0XhBv", "o4-mini-2025-04-16", 4102, 3328, 1075, 832))
    chat("o4-mini", reasoning_effort="medium").invoke(QUESTION)
    recording.case("chat_o4-mini_reasoning", [answer.call(note=notes.get("chat_o4-mini_reasoning", ""))])

    answer = api.expect(Reply("chatcmpl-CJq5eJd2Vm6sNa9PyRk3WbTq7LcFz", "gpt-4.1-mini-2025-04-14", 1733, 1280, 259))
    for _ in chat("gpt-4.1-mini", stream_usage=True).stream(QUESTION):
        pass
    recording.case(
        "chat_stream_gpt-4.1-mini",
        [
            answer.call(
                streamed=True,
                note=notes.get("chat_stream_gpt-4.1-mini", ""),
                span_labels=labels.get("chat_stream_gpt-4.1-mini"),
            )
        ],
    )

    answer = api.expect(
        Reply("resp_68e3b2d5e4a1829b0f8d6c4b2a1e3f5d17c9b8a6f4e2d0c3", "gpt-5-mini-2025-08-07", 3175, 2560, 1622, 1152)
    )
    chat("gpt-5-mini", use_responses_api=True).invoke(QUESTION)
    recording.case(
        "responses_gpt-5-mini_reasoning",
        [
            answer.call(
                note=notes.get("responses_gpt-5-mini_reasoning", ""),
                span_labels=labels.get("responses_gpt-5-mini_reasoning"),
            )
        ],
    )

    api.expect(SERVER_ERROR)
    expect_failure(openai.InternalServerError, chat("gpt-4.1").invoke, input=QUESTION)
    recording.case("error_500", [SERVER_ERROR.call("gpt-4.1", note=notes.get("error_500", ""))])

    api.expect(RATE_LIMITED)
    expect_failure(openai.RateLimitError, chat("gpt-4.1-mini").invoke, input=QUESTION)
    recording.case("error_429", [RATE_LIMITED.call("gpt-4.1-mini", note=notes.get("error_429", ""))])


if __name__ == "__main__":
    main()
