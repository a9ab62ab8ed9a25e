# corpus-env: openlit
"""OpenLIT (`openlit.init()`) over mocked OpenAI and Anthropic APIs, in its own env: it pins older provider SDKs.

Two recordings, one process each (OpenLIT instruments through the global tracer provider, which can be
set once): `openlit-openai` and `openlit-anthropic`. OpenLIT is initialised as its README says, with
metrics and log events off (without an endpoint they go to the console; the spans are the same either
way) and everything else as it comes.

OpenLIT downloads its price list when it starts; offline, the recorder hands it one of its own
(`pricing_json`, OpenLIT's format: USD per 1,000 tokens) with the models' list prices, except for
`o4-mini` and `claude-haiku-4-5`, which it leaves out on purpose: for a model OpenLIT cannot price it
writes `gen_ai.usage.cost` = 0, and the corpus should show that.

    .venv-corpus/openlit/bin/python -m tests.corpus.record.openlit
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import openlit  # type: ignore[import-not-found]  # only in the corpus env
from opentelemetry import trace

from tests.corpus.record import _anthropic_api, _openai_api
from tests.corpus.record._cases import Recording

PACKAGES = ("openlit", "opentelemetry-sdk")
UNPRICED = "OpenLIT has no price for this model and writes gen_ai.usage.cost = 0 (an int). "
OPENAI_KNOWN = {
    "chat_o4-mini_reasoning": {
        "shortfall": {"reasoning_tokens": 640},
        "note": UNPRICED + "Its chat-completions spans carry no reasoning-token count (its Responses API spans do).",
    }
}
UNCACHED_INPUT = (
    "OpenLIT writes Anthropic's input_tokens as the API reports it, without the cache, to gen_ai.usage.input_tokens, "
    "beside gen_ai.usage.cache_read.input_tokens and gen_ai.usage.cache_creation.input_tokens. "
)
ANTHROPIC_KNOWN: dict[str, dict[str, Any]] = {
    "messages_claude-sonnet-4-5": {"note": UNCACHED_INPUT},
    "messages_claude-haiku-4-5": {"note": UNPRICED + UNCACHED_INPUT},
    "messages_stream_claude-sonnet-4-5": {
        "shortfall": {"input_tokens": 4096 + 768, "cache_read_tokens": 4096, "cache_write_tokens": 768},
        "note": "A stream's cache counts (in message_start) are lost: OpenLIT writes 0 for both cache attributes and "
        "the uncached input_tokens (236) alone.",
    },
}
ANTHROPIC_ERROR = "OpenLIT's span of a failed Anthropic call has no attributes: only its name (chat <model>) and scope"
for case in ("error_500", "error_429", "error_529_overloaded"):
    ANTHROPIC_KNOWN[case] = {"note": ANTHROPIC_ERROR}
PRICES = {
    "chat": {
        "gpt-4.1": {"promptPrice": 0.002, "completionPrice": 0.008, "cacheReadPrice": 0.0005},
        "gpt-4.1-mini": {"promptPrice": 0.0004, "completionPrice": 0.0016, "cacheReadPrice": 0.0001},
        "gpt-5-mini": {"promptPrice": 0.00025, "completionPrice": 0.002, "cacheReadPrice": 0.000025},
        "claude-sonnet-4-5": {
            "promptPrice": 0.003,
            "completionPrice": 0.015,
            "cacheReadPrice": 0.0003,
            "cacheCreationPrice": 0.00375,
        },
    }
}


def main() -> None:
    if len(sys.argv) == 1:
        for provider in ("openai", "anthropic"):
            subprocess.run([sys.executable, "-m", "tests.corpus.record.openlit", provider], check=True)
        return
    provider = sys.argv[1]
    with Recording(f"openlit-{provider}", (*PACKAGES, provider)) as recording, tempfile.TemporaryDirectory() as tmp:
        prices = Path(tmp) / "pricing.json"
        prices.write_text(json.dumps(PRICES))
        trace.set_tracer_provider(recording.provider)
        openlit.init(pricing_json=str(prices), disable_metrics=True, disable_events=True)
        # The SDK versions OpenLIT pins take an httpx client (the dev env's newer ones are typed for httpx2's).
        if provider == "openai":
            api = _openai_api.OpenAIApi(httpx)
            http_client: Any = httpx.Client(transport=api.transport())
            client = openai.OpenAI(api_key="sk-corpus", http_client=http_client, max_retries=0)
            _openai_api.record_cases(recording, client, api, known=OPENAI_KNOWN)
        else:
            anthropic_api = _anthropic_api.AnthropicApi(httpx)
            http_client = httpx.Client(transport=anthropic_api.transport())
            anthropic_client = anthropic.Anthropic(api_key="sk-ant-corpus", http_client=http_client, max_retries=0)
            _anthropic_api.record_cases(recording, anthropic_client, anthropic_api, known=ANTHROPIC_KNOWN)


if __name__ == "__main__":
    main()
