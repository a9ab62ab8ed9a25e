# corpus-env: dev
"""The Vercel AI SDK (npm `ai`, `@ai-sdk/openai`, `@ai-sdk/anthropic`) with `experimental_telemetry`, from Node.

    .venv/bin/python -m tests.corpus.record.vercel_ai

The spans come from Node (`tests/corpus/node/vercel-ai.mjs`, installed with `npm ci` from its
lock), exported by the OpenTelemetry JS SDK's OTLP/HTTP JSON exporter to a real `otel-puppy serve
--record` on a free loopback port; this script splits the recorded exports into one OTLP/JSON line
per case (by the trace ids the Node script reports for each case) and writes the manifest from what
the Node script's mock provider returned. `tests/test_corpus_node.py` runs the same script against a
serve with budgets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests._service import environment, service
from tests.corpus._recording import RECORDINGS

__all__ = ("NODE_DIR", "PACKAGES", "install", "package_versions", "record_cases", "run_script", "split_cases")

INSTRUMENTATION = "vercel-ai"
NODE_DIR = Path(__file__).parents[1] / "node"
SCRIPT = "vercel-ai.mjs"
PACKAGES = (
    "ai",
    "@ai-sdk/openai",
    "@ai-sdk/anthropic",
    "@opentelemetry/api",
    "@opentelemetry/sdk-trace-node",
    "@opentelemetry/exporter-trace-otlp-http",
)
"""What the manifest names, at the versions `package-lock.json` pins."""
NPM_TIMEOUT_S = 600
NODE_TIMEOUT_S = 120


def install(directory: Path) -> None:
    """`npm ci` in `directory` (its `package-lock.json`, exactly), unless node_modules already holds that lock."""
    installed = directory / "node_modules" / ".package-lock.json"
    lock = directory / "package-lock.json"
    if installed.exists() and json.loads(installed.read_text())["packages"] == _locked_packages(lock):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the Vercel AI SDK recording needs Node.js and npm")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory,
        check=True,
        timeout=NPM_TIMEOUT_S,
    )


def _locked_packages(lock: Path) -> dict[str, Any]:
    """The lock's installed packages as npm records them in node_modules/.package-lock.json (no root entry)."""
    packages: dict[str, Any] = json.loads(lock.read_text())["packages"]
    return {path: entry for path, entry in packages.items() if path}


def package_versions(directory: Path = NODE_DIR) -> dict[str, str]:
    packages = json.loads((directory / "package-lock.json").read_text())["packages"]
    return {name: packages[f"node_modules/{name}"]["version"] for name in PACKAGES}


def run_script(directory: Path, endpoint: str, calls: Path) -> dict[str, Any]:
    """Run the Node script exporting to `endpoint` (`.../v1/traces`); what it says each case really was."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the Vercel AI SDK recording needs Node.js")
    subprocess.run(
        [node, SCRIPT, "--endpoint", endpoint, "--calls", str(calls)],
        cwd=directory,
        env=environment(),  # without the caller's OTEL_* settings, which the JS SDK reads too
        check=True,
        timeout=NODE_TIMEOUT_S,
    )
    result: dict[str, Any] = json.loads(calls.read_text())
    return result


def split_cases(lines: Iterable[bytes], cases: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The recorded OTLP/JSON exports regrouped into one export per case, by the trace ids of its spans.

    Spans keep their resource and scope; each case's export lists them in the order they arrived.
    """
    owner = {trace_id: case["case"] for case in cases for trace_id in case["trace_ids"]}
    grouped: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for line in lines:
        for resource_spans in json.loads(line)["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                for span in scope_spans["spans"]:
                    case = owner.get(span["traceId"])
                    if case is None:
                        raise ValueError(f"a span of trace {span['traceId']} belongs to no case")
                    key = (_canonical(resource_spans.get("resource")), _canonical(scope_spans.get("scope")))
                    group = grouped.setdefault(case, {}).setdefault(
                        key,
                        {"resource": resource_spans.get("resource"), "scope": scope_spans.get("scope"), "spans": []},
                    )
                    group["spans"].append(span)
    return {case: _export(groups.values()) for case, groups in grouped.items()}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _export(groups: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    by_resource: dict[str, dict[str, Any]] = {}
    for group in groups:
        resource = by_resource.setdefault(
            _canonical(group["resource"]), {"resource": group["resource"], "scopeSpans": []}
        )
        resource["scopeSpans"].append({"scope": group["scope"], "spans": group["spans"]})
    return {"resourceSpans": list(by_resource.values())}


def record_cases(directory: Path, work: Path) -> tuple[dict[str, Any], list[bytes]]:
    """Run the Node script against a recording `otel-puppy serve` in `work`: its report and the recorded lines."""
    recording = work / "recorded.jsonl"
    with service(work, "--store", "memory://", "--allow-no-policies", "--record", str(recording)) as running:
        report = run_script(directory, f"{running.url}/v1/traces", work / "calls.json")
    return report, recording.read_bytes().splitlines()


def main() -> None:
    install(NODE_DIR)
    with tempfile.TemporaryDirectory(prefix="corpus-vercel-ai-") as work:
        report, lines = record_cases(NODE_DIR, Path(work))
    exports = split_cases(lines, report["cases"])
    directory = RECORDINGS / INSTRUMENTATION
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    document: dict[str, Any] = {
        "instrumentation": INSTRUMENTATION,
        "language": "javascript",
        "packages": dict(sorted(package_versions().items())),
        "cases": [],
    }
    for case in report["cases"]:
        name = case["case"]
        line = json.dumps(exports[name], separators=(",", ":"), sort_keys=True) + "\n"
        (directory / f"{name}.jsonl").write_text(line)
        document["cases"].append({"case": name, "file": f"{name}.jsonl", "calls": case["calls"]})
    manifest = directory / "manifest.json"
    manifest.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(manifest)


if __name__ == "__main__":
    main()
