"""The Vercel AI SDK from Node, exporting OTLP/HTTP to a real `otel-puppy serve` with budgets.

`tests/corpus/node/vercel-ai.mjs` makes real `generateText` / `streamText` calls through
`@ai-sdk/openai` and `@ai-sdk/anthropic` over a mocked provider `fetch`, with the SDK's own
`experimental_telemetry` spans exported by the OpenTelemetry JS SDK's OTLP/HTTP (JSON) exporter.
It is installed with `npm ci` from its lock into a temporary copy, so this also proves the lock
installs. The script reports what the mock provider returned; every number asserted here comes from
that report and `genai_prices.calc_price`, never from what otel_puppy read back.

The SDK describes one `generateText` as a run span (`ai.generateText`, the usage of all its steps)
with one `ai.generateText.doGenerate` span per model call under it: only the calls count.

Needs node and npm (skipped without them, failed under `CI=true`).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from genai_prices import Usage, calc_price
from prometheus_client.parser import text_string_to_metric_families

from otel_puppy.money import usd_to_nanos
from tests._programs import require_program
from tests._service import service, write_policies
from tests.corpus.record import vercel_ai

pytestmark = [pytest.mark.long, pytest.mark.timeout(900)]

SERVICE = "corpus-vercel-ai"
POLICIES = """\
budgets:
  - name: all
    limit_usd: 1000
    window: day
    action: warn
  - name: per-model
    per: [provider, model]
    limit_usd: 1000
    window: day
    action: warn
  - name: openai
    match: {provider: openai}
    limit_usd: 1000
    window: day
    action: warn
  - name: anthropic
    match: {provider: anthropic}
    limit_usd: 1000
    window: day
    action: warn
"""
ERROR_CLASSES = {500: {"server_error", "other"}, 429: {"rate_limit"}, 529: {"server_error"}}
"""The error class each failed call must be counted under. The SDK records neither the HTTP status nor
the error's class on its span (`exception.type` is `AI_APICallError` for all), only the provider's
message: "Rate limit reached ..." and "Overloaded" name the class; OpenAI's 500 message ("The server
had an error ...") only says "server". Every one of them is a provider failure for the breakers."""
TOKEN_TYPES = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
}


@dataclass(frozen=True)
class Run:
    cases: list[dict[str, Any]]
    """The Node script's report: per case its trace ids and, per call, what the mock returned."""
    spent: dict[tuple[str, str], int]
    """(budget, scope) -> nano-USD spent, from `GET /v1/budgets`."""
    samples: list[tuple[str, dict[str, str], float]]
    """Every sample of `GET /metrics`."""

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [call for case in self.cases for call in case["calls"]]

    def total(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (any agent)."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and labels.items() <= sample_labels.items()
        )


def nanos(call: dict[str, Any]) -> int:
    """What the call costs, priced on the usage the mock provider returned; a failed call costs nothing."""
    if call["outcome"] != "ok":
        return 0
    usage = call["usage"]
    price = calc_price(
        Usage(
            input_tokens=usage["input_tokens"],
            cache_read_tokens=usage["cache_read_tokens"],
            cache_write_tokens=usage["cache_write_tokens"],
            output_tokens=usage["output_tokens"],
            output_reasoning_tokens=usage["reasoning_tokens"],
        ),
        call["model"],
        provider_id=call["provider"],
    )
    return usd_to_nanos(price.total_price)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    require_program("node")
    require_program("npm")
    work = tmp_path_factory.mktemp("vercel-ai")
    node = work / "node"
    node.mkdir()
    for name in ("package.json", "package-lock.json", vercel_ai.SCRIPT):
        shutil.copy(vercel_ai.NODE_DIR / name, node / name)
    vercel_ai.install(node)
    policies = write_policies(work, POLICIES)
    with service(work, "--policies", str(policies)) as running:
        report = vercel_ai.run_script(node, f"{running.url}/v1/traces", work / "calls.json")
        budgets = httpx.get(f"{running.url}/v1/budgets", timeout=5).json()["budgets"]
        metrics = httpx.get(f"{running.url}/metrics", timeout=5).text
    spent = {(b["policy"], b["scope"]): usd_to_nanos(Decimal(b["spent_usd"])) for b in budgets}
    samples = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    ]
    return Run(report["cases"], spent, samples)


def test_the_script_made_every_kind_of_call(run: Run) -> None:
    """The cases the issue asks for are there: two models with cached tokens, reasoning, streams, 500 and 429."""
    calls = run.calls
    assert len({call["model"] for call in calls if call["outcome"] == "ok" and call["usage"]["cache_read_tokens"]}) >= 2
    assert any(call["usage"]["reasoning_tokens"] for call in calls)
    assert any(call["usage"]["cache_write_tokens"] for call in calls)
    assert any(call["streamed"] for call in calls)
    assert {call["http_status"] for call in calls if call["outcome"] == "error"} >= {500, 429}
    assert any(len(case["calls"]) > 1 for case in run.cases)  # one run, several model calls


def labels_of(case: dict[str, Any]) -> set[tuple[str, str]]:
    return {(call["provider"], call["model"]) for call in case["calls"]}


def test_each_case_costs_what_the_mock_returned_to_the_nanodollar(run: Run) -> None:
    """Spend per provider and model, to the nano-dollar; each case has labels of its own, so this is per case."""
    for case in run.cases:
        others = set().union(*(labels_of(other) for other in run.cases if other is not case))
        assert labels_of(case).isdisjoint(others), f"{case['case']} shares a model label with another case"
        for provider, model in labels_of(case):
            scope = f"provider={provider},model={model}"
            expected = sum(
                nanos(call) for call in case["calls"] if (call["provider"], call["model"]) == (provider, model)
            )
            assert run.spent.get(("per-model", scope), 0) == expected, case["case"]
    assert run.spent[("all", "")] == sum(nanos(call) for call in run.calls)


def test_spend_is_booked_to_the_provider_and_model_a_user_matches(run: Run) -> None:
    """No spend under any other label (`openai.responses`, an undated model name, ...)."""
    expected = {
        ("per-model", f"provider={call['provider']},model={call['model']}")
        for call in run.calls
        if call["outcome"] == "ok"
    }
    assert {key for key, value in run.spent.items() if key[0] == "per-model" and value} == expected
    for provider in ("openai", "anthropic"):
        assert run.spent[(provider, "")] == sum(nanos(c) for c in run.calls if c["provider"] == provider)


def test_one_request_per_call_and_one_error_per_failed_call(run: Run) -> None:
    requests = "otel_puppy_llm_requests_total"
    assert run.total(requests) == len(run.calls)  # the run spans (`ai.generateText`) are not calls
    for (provider, model), count in Counter((c["provider"], c["model"]) for c in run.calls).items():
        labels = {"provider": provider, "model": model, "service": SERVICE}
        assert run.total(requests, **labels) == count, (provider, model)
    for call in run.calls:
        if call["outcome"] == "error":
            labels = {"provider": call["provider"], "model": call["model"], "service": SERVICE, "outcome": "error"}
            counted = {
                sample_labels["error_class"]: value
                for name, sample_labels, value in run.samples
                if name == requests and labels.items() <= sample_labels.items()
            }
            assert sum(counted.values()) == 1, call
            assert set(counted) <= ERROR_CLASSES[call["http_status"]], (call["http_status"], counted)
    assert run.total(requests, outcome="error") == sum(c["outcome"] == "error" for c in run.calls)
    assert run.total("otel_puppy_llm_unpriced_requests_total") == 0


def test_tokens_by_type(run: Run) -> None:
    for provider, model in {(c["provider"], c["model"]) for c in run.calls}:
        mine = [c for c in run.calls if (c["provider"], c["model"]) == (provider, model) and c["outcome"] == "ok"]
        for token_type, field in TOKEN_TYPES.items():
            expected = sum(c["usage"][field] - c["shortfall"].get(field, 0) for c in mine)
            labels = {"provider": provider, "model": model, "service": SERVICE, "type": token_type}
            assert run.total("otel_puppy_llm_tokens_total", **labels) == expected, (provider, model, token_type)


def test_the_committed_recording_is_what_this_script_records(run: Run) -> None:
    """The corpus manifest was written from this script at this lock: same cases, same calls."""
    manifest = json.loads((Path(vercel_ai.__file__).parents[1] / "recordings/vercel-ai/manifest.json").read_text())
    assert manifest["packages"] == vercel_ai.package_versions()
    assert [(case["case"], case["calls"]) for case in manifest["cases"]] == [
        (case["case"], case["calls"]) for case in run.cases
    ]
