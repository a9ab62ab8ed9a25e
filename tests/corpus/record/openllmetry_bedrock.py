# corpus-env: openllmetry
"""OpenLLMetry's Bedrock instrumentation (`opentelemetry-instrumentation-bedrock`): boto3 against a local Bedrock.

boto3's `bedrock-runtime` client goes over real HTTP to a mock on 127.0.0.1 (`_bedrock_api`), with
dummy credentials and retries off: `InvokeModel` with an Anthropic body, `Converse` and
`ConverseStream`, and a 500 and a 429 (`ThrottlingException`).

    .venv-corpus/openllmetry/bin/python -m tests.corpus.record.openllmetry_bedrock
"""

from __future__ import annotations

import json
from typing import Any

import boto3  # type: ignore[import-not-found]  # only in the corpus env
import botocore.config  # type: ignore[import-not-found]  # only in the corpus env
import botocore.exceptions  # type: ignore[import-not-found]  # only in the corpus env
from opentelemetry.instrumentation.bedrock import BedrockInstrumentor  # type: ignore[import-not-found]  # only in the corpus env

from tests.corpus.record import _bedrock_api as api
from tests.corpus.record._cases import Recording, expect_failure

PACKAGES = ("opentelemetry-instrumentation-bedrock", "opentelemetry-semantic-conventions-ai", "boto3", "botocore")
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
NOVA = "amazon.nova-pro-v1:0"
QUESTION: list[Any] = [{"role": "user", "content": [{"text": "Where is my order #4417?"}]}]
UNCACHED_INPUT = (
    "Bedrock reports input without the cache; OpenLLMetry writes it to gen_ai.usage.input_tokens as it is, "
    "beside gen_ai.usage.cache_read.input_tokens and gen_ai.usage.cache_creation.input_tokens. "
)
STRIPPED_MODEL = "OpenLLMetry strips the region and vendor prefixes from the model id in gen_ai.request.model. "


def stripped(model: str) -> dict[str, str]:
    """The model label OpenLLMetry's spans carry for the model id `model`: no region, no vendor."""
    return {"model": model.rsplit(".", 1)[-1]}


def main() -> None:
    with Recording("openllmetry-bedrock", PACKAGES) as recording, api.BedrockApi() as mock:
        BedrockInstrumentor().instrument(tracer_provider=recording.provider)
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=mock.url,
            aws_access_key_id="AKIACORPUSEXAMPLE",
            aws_secret_access_key="corpus-secret",  # a dummy: the mock checks no signature
            config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )

        answer = mock.expect(
            api.Reply(
                "3f2a9c61-8d47-4e0b-a5c2-71e9b0d4f318",
                "claude-sonnet-4-5-20250929",
                518,
                3072,
                1536,
                402,
                message_id="msg_bdrk_01JtQ8fV3xWcN7mKp2RaYz5D",
            )
        )
        body = {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Where is my order #4417?"}],
        }
        client.invoke_model(modelId=SONNET, body=json.dumps(body))["body"].read()
        note = f"InvokeModel with an Anthropic body on {SONNET}; the answer's body names its model. {UNCACHED_INPUT}"
        recording.case("invoke_model_claude-sonnet-4-5", [answer.call(note=note)])

        answer = mock.expect(api.Reply("a81c0f4e-6b2d-4c9a-8e35-d07f1b2c9a64", NOVA, 2811, 1024, 0, 287))
        client.converse(modelId=NOVA, messages=QUESTION, inferenceConfig={"maxTokens": 1024})
        note = "Converse answers carry no response id (only x-amzn-RequestId). " + UNCACHED_INPUT + STRIPPED_MODEL
        recording.case("converse_nova-pro", [answer.call(note=note, span_labels=stripped(NOVA))])

        answer = mock.expect(api.Reply("5d9e2b70-1f83-4a6c-b4d9-8c2e7f0a1b56", HAIKU, 342, 2560, 1024, 198))
        stream = client.converse_stream(modelId=HAIKU, messages=QUESTION, inferenceConfig={"maxTokens": 1024})
        for _ in stream["stream"]:
            pass
        note = "ConverseStream: usage arrives in the closing metadata event. " + UNCACHED_INPUT + STRIPPED_MODEL
        recording.case(
            "converse_stream_claude-haiku-4-5", [answer.call(streamed=True, note=note, span_labels=stripped(HAIKU))]
        )

        mock.expect(api.SERVER_ERROR)
        expect_failure(botocore.exceptions.ClientError, client.converse, modelId=SONNET, messages=QUESTION)
        recording.case(
            "error_500",
            [
                api.SERVER_ERROR.call(
                    SONNET, note="InternalServerException. " + STRIPPED_MODEL, span_labels=stripped(SONNET)
                )
            ],
        )

        mock.expect(api.RATE_LIMITED)
        expect_failure(botocore.exceptions.ClientError, client.converse, modelId=HAIKU, messages=QUESTION)
        recording.case(
            "error_429",
            [api.RATE_LIMITED.call(HAIKU, note="ThrottlingException. " + STRIPPED_MODEL, span_labels=stripped(HAIKU))],
        )


if __name__ == "__main__":
    main()
