"""README.md's code works verbatim: the first thing a new user pastes must run.

Every fenced block is checked by its language: Python blocks run in order in one fresh interpreter (a
temp working directory holding the README's YAML as `policies/`, a dummy OpenAI key, and OpenAI's HTTP
answered by a local fake), followed by an agent run of ours that shows the metrics move; YAML blocks
go through `otel-puppy check`; shell blocks through `bash -n`. A block that is deliberately a fragment
says so on the line before its fence: `<!-- readme-test: fragment -->`. Any other block with code
that does not run fails here, naming its README line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final

import pytest

README: Final = Path(__file__).resolve().parents[1] / "README.md"
PYTHON: Final = frozenset({"python", "py"})
YAML: Final = frozenset({"yaml", "yml"})
SHELL: Final = frozenset({"bash", "sh", "shell"})
TEXT: Final = frozenset({"", "text"})
"""Blocks that show output or a picture, not code: nothing to run."""
FRAGMENT: Final = "fragment"
_FENCE: Final = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<language>[^\s`]*)")
_MARKER: Final = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<directive>.*?)\s*-->\s*$")
DUMMY_KEY: Final = "sk-readme-test-not-a-real-key"
HANG_GUARD_S: Final = 180.0

COST_LINE: Final = (
    'otel_puppy_llm_cost_usd_total{agent="agent",model="gpt-4.1",provider="openai",'
    'service="unknown_service:python"} 0.0028'
)
"""The fake's usage, 1,000 input tokens at $2/Mtok and 100 output tokens at $8/Mtok, under pydantic-ai's
default agent name and OpenTelemetry's default service name."""

EPILOGUE: Final = """
import pathlib

import prometheus_client

# `agent` and `puppy` are the README's: its guarded agent, run once against the fake OpenAI
result = agent.run_sync("Where is my order?")
assert result.output == "Your order is on its way.", result.output
puppy.span_processor().force_flush()
pathlib.Path("metrics.txt").write_text(prometheus_client.generate_latest().decode())
puppy.close()
"""

RUNNER: Final = """
import json, linecache, sys, traceback

plan = json.loads(open(sys.argv[1], encoding="utf-8").read())
namespace = {"__name__": "__main__"}
shown = []  # what a traceback quotes from "README.md": the blocks at their lines, not a file on sys.path
for line, source in plan["blocks"]:
    shown[len(shown):] = ["\\n"] * (line - 1 - len(shown)) + source.splitlines(keepends=True)
linecache.cache["README.md"] = (len("".join(shown)), None, shown, "README.md")
try:
    for line, source in plan["blocks"]:
        # padded with newlines so a traceback names the README line
        exec(compile("\\n" * (line - 1) + source, "README.md", "exec"), namespace)
    exec(compile(plan["epilogue"], "<test_readme epilogue>", "exec"), namespace)
except BaseException:
    traceback.print_exc()  # quotes through linecache; the default hook reads files from sys.path
    sys.exit(1)
"""


@dataclass(frozen=True, slots=True)
class Block:
    line: int
    """The README line of the block's first line of code (after the fence)."""
    language: str
    text: str
    fragment: bool = False


def code_blocks(markdown: str) -> list[Block]:
    """The fenced blocks of `markdown`, with the `readme-test` directive on the line before each.

    Raises:
        ValueError: an unknown directive, a directive not followed by a fence, or an unclosed fence.
    """
    lines = markdown.splitlines()
    found: list[Block] = []
    directive: tuple[int, str] | None = None
    index = 0
    while index < len(lines):
        text = lines[index]
        marker = _MARKER.match(text)
        opening = _FENCE.match(text)
        if marker is not None:
            if marker["directive"] != FRAGMENT:
                raise ValueError(f"README.md:{index + 1}: unknown readme-test directive {marker['directive']!r}")
            directive = (index + 1, marker["directive"])
        elif opening is not None:
            fence, indent = opening["fence"], len(opening["indent"])
            closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            end = next((i for i in range(index + 1, len(lines)) if closing.match(lines[i])), None)
            if end is None:
                raise ValueError(f"README.md:{index + 1}: the code fence is never closed")
            body = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[index + 1 : end])
            found.append(Block(index + 2, opening["language"].lower(), body + "\n", directive is not None))
            directive = None
            index = end
        elif text.strip() and directive is not None:
            raise ValueError(f"README.md:{directive[0]}: a readme-test directive must be right before a code fence")
        index += 1
    if directive is not None:
        raise ValueError(f"README.md:{directive[0]}: a readme-test directive must be right before a code fence")
    return found


def readme_blocks(languages: frozenset[str]) -> list[Block]:
    return [b for b in code_blocks(README.read_text(encoding="utf-8")) if b.language in languages and not b.fragment]


# --- the fake OpenAI ---------------------------------------------------------------------------

_RESPONSE: Final = {
    "id": "resp_readme",
    "object": "response",
    "created_at": 1_767_225_600,
    "status": "completed",
    "model": "gpt-4.1",
    "output": [
        {
            "type": "message",
            "id": "msg_readme",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Your order is on its way.", "annotations": []}],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 100,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1100,
    },
}


@dataclass
class FakeOpenAI:
    """OpenAI's Responses API on loopback, answering every request with `_RESPONSE`."""

    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(path, Authorization header) of each request received."""


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    received: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(min(int(self.headers.get("content-length") or 0), 1 << 20))
            received.append((self.path, self.headers.get("authorization") or ""))
            found = self.path == "/v1/responses"
            body = json.dumps(_RESPONSE if found else {"error": {"message": f"not faked: {self.path}"}}).encode()
            self.send_response(200 if found else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next look at it: every 0.5 s by default, 0.05 s here
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield FakeOpenAI(f"http://127.0.0.1:{server.server_address[1]}/v1", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def run_python(blocks: list[Block], epilogue: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    plan = cwd / "readme-plan.json"
    plan.write_text(json.dumps({"blocks": [(b.line, b.text) for b in blocks], "epilogue": epilogue}))
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(plan)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: no OTEL_PUPPY_*, LOGFIRE_* or OTEL_* settings, no real keys."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONIOENCODING": "utf-8", **extra}


def policies_from_readme(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for block in readme_blocks(YAML):
        (directory / f"readme-line-{block.line}.yaml").write_text(block.text)
    return directory


# --- the tests ---------------------------------------------------------------------------------


def test_every_block_with_code_is_checked_or_marked_a_fragment() -> None:
    blocks = code_blocks(README.read_text(encoding="utf-8"))
    checked = PYTHON | YAML | SHELL | TEXT
    unchecked = [f"README.md:{b.line}: ```{b.language}" for b in blocks if b.language not in checked and not b.fragment]
    assert unchecked == [], "add a checker to tests/test_readme.py, or mark the block <!-- readme-test: fragment -->"
    assert readme_blocks(PYTHON), "the README shows no Python"


def test_python_blocks_run_verbatim_and_the_metrics_move(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    work = tmp_path / "work"
    policies_from_readme(work / "policies")
    env = clean_env(tmp_path, OPENAI_API_KEY=DUMMY_KEY, OPENAI_BASE_URL=fake_openai.url)
    done = run_python(readme_blocks(PYTHON), EPILOGUE, work, env)
    assert done.returncode == 0, done.stderr[-6000:]
    metrics = (work / "metrics.txt").read_text().splitlines()
    assert COST_LINE in metrics, "\n".join(line for line in metrics if "cost_usd" in line)
    assert fake_openai.requests == [("/v1/responses", f"Bearer {DUMMY_KEY}")]  # one call, the agent run


def test_a_python_block_that_fails_is_reported_at_its_readme_line(tmp_path: Path) -> None:
    blocks = [Block(3, "python", "x = 1\n"), Block(10, "python", "y = x + 1\n\nraise RuntimeError(y)\n")]
    done = run_python(blocks, "", tmp_path, clean_env(tmp_path))
    assert done.returncode == 1
    assert 'File "README.md", line 12, in <module>\n    raise RuntimeError(y)\n' in done.stderr
    assert done.stderr.rstrip().endswith("RuntimeError: 2")


def test_yaml_blocks_pass_otel_puppy_check(tmp_path: Path) -> None:
    blocks = readme_blocks(YAML)
    assert blocks, "the README shows no policy YAML"
    for block in blocks:
        directory = tmp_path / f"line-{block.line}"
        directory.mkdir()
        (directory / "policies.yaml").write_text(block.text)
        done = subprocess.run(
            [sys.executable, "-m", "otel_puppy", "check", str(directory)],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            check=False,
            env=clean_env(tmp_path),
        )
        assert done.returncode == 0, f"README.md:{block.line}:\n{done.stdout}{done.stderr}"


def test_shell_blocks_parse() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    blocks = readme_blocks(SHELL)
    assert blocks, "the README shows no shell commands"
    for block in blocks:
        done = subprocess.run(
            [bash, "-n"], input=block.text, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
        )
        assert done.returncode == 0, f"README.md:{block.line}: {done.stderr}"


def test_bash_n_rejects_a_broken_command() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, "-n"], input="if true; then echo\n", capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )
    assert done.returncode == 2


def test_code_blocks_reads_languages_lines_and_the_fragment_marker() -> None:
    markdown = (
        "# title\n"
        "```python\n"
        "a = 1\n"
        "```\n"
        "\n"
        "<!-- readme-test: fragment -->\n"
        "\n"
        "~~~~Python\n"
        "  ...\n"
        "```\n"
        "~~~~\n"
        "   ```\n"
        "   text in a list\n"
        "   ```\n"
    )
    assert code_blocks(markdown) == [
        Block(3, "python", "a = 1\n"),
        Block(9, "python", "  ...\n```\n", fragment=True),
        Block(13, "", "text in a list\n"),
    ]


@pytest.mark.parametrize(
    ("markdown", "error"),
    [
        ("<!-- readme-test: skip -->\n```python\n```\n", "README.md:1: unknown readme-test directive 'skip'"),
        ("<!-- readme-test: fragment -->\ntext\n```python\n```\n", "README.md:1: a readme-test directive must"),
        ("text\n<!-- readme-test: fragment -->\n", "README.md:2: a readme-test directive must"),
        ("```python\nx = 1\n", "README.md:1: the code fence is never closed"),
    ],
)
def test_code_blocks_refuses_what_it_cannot_read(markdown: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        code_blocks(markdown)
