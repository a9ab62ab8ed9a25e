"""Security: the token guards everything, secrets and prompts never leak, policy files cannot reach out.

Covered elsewhere and not repeated here: every route answers 401 without the token
(tests/server/test_app.py::test_every_endpoint_but_the_probes_needs_the_token), the real service
refuses `--host 0.0.0.0` without a token (tests/test_service.py), body size limits and the gzip
bomb (tests/server/test_otlp_http.py, tests/server/test_app.py), policy links leaving their
directory (tests/policies/test_loader.py::test_links_are_followed_only_inside_the_directory).
"""

from __future__ import annotations

import ast
import hmac
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_puppy.alerts import AlertEvent, WebhookSink
from otel_puppy.decision import Severity
from otel_puppy.exceptions import SettingsError
from otel_puppy.server.app import create_app
from otel_puppy.server.decoder import default_processes
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import engine_for_tests
from tests._service import cli, cli_all, environment, export, free_port, service, write_policies
from tests._serving import serve

TOKEN = "s3cret-token-of-a-decent-length"
PROMPT = "PROMPT-TEXT-7f3a9c: tell me the launch codes"
COMPLETION = "COMPLETION-TEXT-51be02: the codes are 0000"
JSON = "application/json"


# --- the bearer token -----------------------------------------------------------------------------


def test_every_token_check_is_one_constant_time_comparison_of_equal_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    engine = engine_for_tests(api_token=TOKEN)
    presented = {  # the whole Authorization header: every Bearer one is compared exactly once
        f"Bearer {TOKEN}": 200,
        f"bearer   {TOKEN}": 200,  # the scheme is case-insensitive; spaces are not part of a token
        f"Bearer {TOKEN[:-1]}": 401,  # one character short: timed like any other wrong token
        f"Bearer {TOKEN}x": 401,
        "Bearer " + "x" * 10_000: 401,
        "Bearer": 401,
        f"Bearer é{TOKEN}": 401,
    }
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=10) as client:
        for path in ("/v1/budgets", "/metrics", "/v1/nothing-here"):
            for header, status in presented.items():
                compared.clear()
                response = client.get(path, headers={"Authorization": header.encode()})  # type: ignore[arg-type]  # raw bytes, as sent
                expected = 404 if path == "/v1/nothing-here" and status == 200 else status
                assert response.status_code == expected, (path, header[:20])
                assert compared == [(32, 32)], (path, header[:20])
            compared.clear()
            assert client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
            assert compared == []  # not a bearer token: refused before any comparison
        # the probes never compare anything: they need no token
        compared.clear()
        assert client.get("/healthz").status_code == 200
        assert compared == []
    engine.close()


LOOPBACK = ["127.0.0.1", "127.9.9.9", "::1", "localhost"]
BEYOND = ["0.0.0.0", "::", "", "10.1.2.3", "192.168.0.7", "fe80::1", "example.com", " 127.0.0.1", "127.0.0.1.nip.io"]


@pytest.mark.parametrize("host", LOOPBACK + BEYOND)
def test_binding_beyond_loopback_needs_a_real_token(host: str) -> None:
    assert PuppySettings.load(host=host, api_token=TOKEN).host == host
    for token in (None, "", "   ", "\t\n"):
        if host in LOOPBACK and token is None:
            assert PuppySettings.load(host=host).host == host
            continue
        with pytest.raises(SettingsError, match="OTEL_PUPPY_API_TOKEN") as info:
            PuppySettings.load(host=host, api_token=token)
        assert TOKEN not in str(info.value)


def test_serve_refuses_an_empty_token_beyond_loopback_before_opening_anything(tmp_path: Path) -> None:
    env = environment(api_token="   ")
    result = cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid settings:")
    assert "OTEL_PUPPY_API_TOKEN: Value error, is set but empty: set a real token, or unset it" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no database, nothing bound


# --- secrets are never printed ------------------------------------------------------------------------

STORE_PASSWORD = "hunter2-store-password"
WEBHOOK_SECRET = "T000/B000/XXXXwebhookSECRET"


def test_settings_repr_and_errors_never_show_a_secret() -> None:
    settings = PuppySettings.load(
        store=f"redis://:{STORE_PASSWORD}@cache:6379/0",
        alert_webhook_url=f"https://hooks.example.com/services/{WEBHOOK_SECRET}?token=abc",
        api_token=TOKEN,
    )
    for text in (repr(settings), str(settings)):
        assert STORE_PASSWORD not in text
        assert WEBHOOK_SECRET not in text
        assert TOKEN not in text
    assert "store='redis://***@cache:6379/0'" in repr(settings)
    assert "alert_webhook_url='https://hooks.example.com/***'" in repr(settings)
    # the values themselves are intact for the code that uses them
    assert settings.store == f"redis://:{STORE_PASSWORD}@cache:6379/0"
    assert PuppySettings.load(alert_webhook_url=" ").alert_webhook_url is None  # an empty template: no webhook

    wrong: list[dict[str, Any]] = [
        {"store": f"postgres://admin:{STORE_PASSWORD}@db/x"},
        {"alert_webhook_url": f"ftp://hooks.example.com/{WEBHOOK_SECRET}"},
        {"alert_webhook_url": WEBHOOK_SECRET},
        {"api_token": TOKEN, "port": "not-a-port"},
    ]
    for overrides in wrong:
        with pytest.raises(SettingsError) as info:
            PuppySettings.load(**overrides)
        for secret in (STORE_PASSWORD, WEBHOOK_SECRET, TOKEN):
            assert secret not in str(info.value), str(info.value)
    # pydantic's own error (building the settings directly) does not quote inputs either
    with pytest.raises(ValueError, match="store must be") as direct:
        PuppySettings(store=f"postgres://admin:{STORE_PASSWORD}@db/x")
    assert STORE_PASSWORD not in str(direct.value)
    with pytest.raises(ValueError, match="alert webhook must be an http") as sink:
        WebhookSink(f"ftp://hooks.example.com/{WEBHOOK_SECRET}")
    assert WEBHOOK_SECRET not in str(sink.value)


def test_the_command_line_never_prints_a_secret(tmp_path: Path) -> None:
    env = environment(store=f"postgres://admin:{STORE_PASSWORD}@db/x", api_token=TOKEN)
    commands = (["serve", "--port", str(free_port())], ["status"], ["decide", "--provider", "p", "--model", "m"])
    for command, result in zip(commands, cli_all(tmp_path, *commands, env=env), strict=True):
        assert result.returncode == 2, (command, result.stderr)
        assert "OTEL_PUPPY_STORE" in result.stderr
        for secret in (STORE_PASSWORD, TOKEN):
            assert secret not in result.stdout + result.stderr


# --- a local HTTP listener: the webhook, and a trap nothing may reach ----------------------------------


@dataclass
class Listener:
    url: str
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(method, path, body) of every request received."""


@contextmanager
def listening(status: int = 204, location: str | None = None) -> Iterator[Listener]:
    """An HTTP server on loopback answering every request with `status` (and `Location`)."""
    listener = Listener("")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            listener.requests.append((self.command, self.path, self.rfile.read(length)))
            self.send_response(status)
            if location is not None:
                self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next look at it: every 0.5 s by default, 0.05 s here
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    listener.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_webhook_never_follows_a_redirect() -> None:
    event = AlertEvent("budget", "b", "", Severity.INFO, "crossed 50%", at=0.0)
    with listening() as trap, listening(status=307, location=f"{trap.url}/elsewhere") as hook:
        sink = WebhookSink(f"{hook.url}/hooks/{WEBHOOK_SECRET}")
        try:
            sink.send(event)
            sink.flush()
        finally:
            sink.close()
        assert [(method, path) for method, path, _ in hook.requests] == [("POST", f"/hooks/{WEBHOOK_SECRET}")]
        assert trap.requests == []
        assert (sink.failed, sink.dropped) == (1, 0)


# --- prompts, completions, and what a policy file can reach: one real service, audited -----------------

AUDITED = """\
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
EVENTS = {"open", "socket.connect", "urllib.Request", "sqlite3.connect", "os.rename", "os.remove", "os.mkdir",
          "os.symlink", "os.link", "os.chmod", "os.truncate", "shutil.rmtree", "subprocess.Popen", "os.system",
          "os.exec", "os.posix_spawn", "os.fork"}
def hook(event, args):
    if event in EVENTS:
        plain = tuple(a if isinstance(a, (str, bytes, int, float, tuple, type(None))) else repr(a) for a in args)
        os.write(log, (event + "\\t" + repr(plain) + "\\n").encode("utf-8", "backslashreplace"))
sys.addaudithook(hook)
import logging
logging.basicConfig(level=logging.DEBUG)  # every log record of every level, to stderr
from otel_puppy.cli import main
sys.exit(main(sys.argv[2:]))
"""
"""Runs `otel-puppy` recording each file it opens, connection it makes and URL it fetches (Python's
audit hooks, PEP 578), and logging at DEBUG."""


def audit_events(path: Path) -> list[tuple[str, tuple[Any, ...]]]:
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        event, _, args = line.partition("\t")
        events.append((event, ast.literal_eval(args)))
    return events


def writes(flags: int, mode: object) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))


def prompt_spans(trap: str) -> list[Any]:
    """Calls carrying prompt and completion text everywhere instrumentations put it, one of them failed."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    messages = json.dumps([{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}])
    text: dict[str, Any] = {
        "gen_ai.input.messages": messages,
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"content": COMPLETION}]}]),
        "gen_ai.prompt": PROMPT,
        "gen_ai.completion": COMPLETION,
        "gen_ai.prompt.0.content": PROMPT,
        "gen_ai.completion.0.content": COMPLETION,
        "llm.input_messages": messages,
        "input.value": PROMPT,
        "output.value": COMPLETION,
        "gen_ai.system_instructions": PROMPT,
        "url.full": f"{trap}/from-a-span",  # a URL in a span is data, never fetched
    }
    call: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4.1",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 100,
        "gen_ai.agent.name": "support",
    }
    for index in range(3):
        with tracer.start_as_current_span("chat gpt-4.1", kind=SpanKind.CLIENT, attributes={**call, **text}) as span:
            span.add_event("gen_ai.user.message", {"content": PROMPT})
            span.add_event("gen_ai.choice", {"message": COMPLETION})
            if index == 2:  # a failure whose message quotes the prompt, as content filters do
                span.set_status(Status(StatusCode.ERROR, f"content policy: {PROMPT}"))
                span.add_event("exception", {"exception.type": "BadRequestError", "exception.message": PROMPT})
                span.set_attribute("gen_ai.usage.input_tokens", PROMPT)  # unusable usage: counted as invalid
    provider.shutdown()
    return list(exporter.get_finished_spans())


def hostile_policies(policies: Path, trap: str, secret: Path) -> None:
    """Policy files that name URLs and paths everywhere a string goes, include or link outside, run code."""
    (policies / "budgets.yaml").write_text(
        f"""\
budgets:
  - {{name: "{trap}/budget", limit_usd: 0.004, window: day, alerts: [0.5], action: {{degrade: "{trap}/model"}}}}
  - {{name: "../../{secret.name}", match: {{model: "file://{secret}"}}, limit_usd: 1, window: day}}
prices:
  - {{provider: "{trap}/price", model: "../../../{secret}", input_mtok: 1, output_mtok: 1}}
"""
    )


def test_an_audited_service_leaks_no_prompt_and_reaches_nothing_a_policy_names(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("never to be read by otel-puppy\n")
    audit = tmp_path / "audit.log"
    (tmp_path / "audited.py").write_text(AUDITED)
    workdir = tmp_path / "service"
    workdir.mkdir()
    with listening() as trap, listening() as hook:
        policies = write_policies(workdir, "")
        hostile_policies(policies, trap.url, secret)
        env = environment(
            api_token=TOKEN,
            alert_webhook_url=f"{hook.url}/hooks/{WEBHOOK_SECRET}",
            store="sqlite:///state.db",
            watch_policies_s="0.2",
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        launcher = (sys.executable, str(tmp_path / "audited.py"), str(audit))
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with service(workdir, "--policies", str(policies), env=env, command=launcher) as running:
            spans = prompt_spans(trap.url)
            assert export(running.url, spans, headers=auth) is SpanExportResult.SUCCESS
            with httpx.Client(base_url=running.url, headers=auth, timeout=10) as client:
                # the degrade target is a URL: it is only ever a model name
                decision = client.post("/v1/decide", json={"provider": "openai", "model": "gpt-4.1"}).json()
                assert decision["action"] == "degrade"  # to provider "http", model "//127.0.0.1:.../model"
                assert f"{decision['provider']}:{decision['model']}" == f"{trap.url}/model"
                # a malformed export quoting the prompt: the client hears what was wrong, the log does not
                bad = client.post(
                    "/v1/traces",
                    content=json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": PROMPT}]}]}]}),
                    headers={"content-type": "application/json"},
                )
                assert bad.status_code == 400
                # files that include, link outside, or run code: refused, the running set stays
                (policies / "include.yaml").write_text(f"budgets: !include {secret}\n")
                (policies / "code.yaml").write_text(
                    f"prices: !!python/object/apply:os.system ['cat {secret} > {tmp_path}/pwned']\n"
                )
                (policies / "link.yaml").symlink_to(secret)
                reload = client.post("/v1/policies/reload", content=json.dumps({"path": str(secret)}))
                assert reload.status_code == 422
                assert [(e["file"], e["message"]) for e in reload.json()["errors"]] == [
                    (str(policies / "code.yaml"), "unsupported YAML tag '!!python/object/apply:os.system'"),
                    (str(policies / "include.yaml"), "unsupported YAML tag '!include'"),
                    (str(policies / "link.yaml"), f"links outside {policies}; refusing to follow it"),
                ]
                assert client.post("/v1/decide", json={"provider": "openai", "model": "gpt-4.1"}).json()["action"] == (
                    "degrade"
                )
                answers = [client.get(path).text for path in ("/v1/budgets", "/v1/models", "/v1/health", "/metrics")]
            assert running.stop() == 0
        output = running.output()
    # the budget's alert went to the webhook, and only there
    # (two calls of $0.0028 were priced, the third's usage is unusable: 140% of $0.004, past 50% and 100%)
    assert [(method, path) for method, path, _ in hook.requests] == [("POST", f"/hooks/{WEBHOOK_SECRET}")] * 2
    alerts = [json.loads(body) for _, _, body in hook.requests]
    assert [(a["policy"], a["threshold"]) for a in alerts] == [(f"{trap.url}/budget", 0.5), (f"{trap.url}/budget", 1.0)]
    assert trap.requests == []
    assert not (tmp_path / "pwned").exists()

    # no prompt or completion text in the log (DEBUG and up), the answers, the labels, or the database
    database = b"".join(p.read_bytes() for p in workdir.glob("state.db*"))
    for text in (PROMPT, COMPLETION):
        assert text not in output
        assert not any(text in answer for answer in answers)
        assert text.encode() not in database
    # the log was on and saw it all: the alerts (INFO) and the refused reload (ERROR), every file named
    assert f"INFO:otel_puppy.alerts:budget alert [info] budget {trap.url}/budget crossed 50%" in output
    assert "ERROR:otel_puppy:policy reload failed; keeping the last good policy set:" in output
    for secret_text in (TOKEN, WEBHOOK_SECRET):
        assert secret_text not in output

    events = audit_events(audit)
    roots = [Path(sys.prefix), Path(sys.base_prefix), Path(__file__).parents[2] / "otel_puppy", Path("/proc")]
    roots += [Path(p) for p in ("/usr/share/zoneinfo", "/usr/lib/python3/dist-packages", "/etc/localtime")]
    opened: list[tuple[Path, bool]] = []
    for event, args in events:
        if event == "open" and isinstance(args[0], str):
            path = Path(args[0]) if Path(args[0]).is_absolute() else workdir / args[0]
            opened.append((path, writes(args[2], args[1])))
    # nothing outside the working and policy directories is written; nothing there but the database
    written = {path for path, write in opened if write}
    assert {p.name for p in written} <= {"state.db"}, written
    # reads: Python, its packages and the time zones; the policy files; never the secret
    assert secret not in {path.resolve() for path, _ in opened}
    outside = {
        path
        for path, _ in opened
        if not any(path.resolve().is_relative_to(root.resolve()) for root in [*roots, workdir])
    }
    assert outside == set(), outside
    # connections: none (the webhook's POST is the one URL fetched, to the webhook's address)
    urls = [args[0] for event, args in events if event == "urllib.Request"]
    assert urls == [f"{hook.url}/hooks/{WEBHOOK_SECRET}"] * 2
    hook_port = int(hook.url.rsplit(":", 1)[1])
    connects = [args[1] for event, args in events if event == "socket.connect"]
    assert connects == [("127.0.0.1", hook_port)] * 2
    # the one process started is the decoding process (`server/decoder.py`): this interpreter on otel_puppy's
    # code (on two CPUs or more, as here; none on one)
    started = [args for event, args in events if event == "subprocess.Popen"]
    boot = "from otel_puppy.server.decoder import _serve_worker; _serve_worker("
    decoder = (sys.executable, True, (None, None))
    assert [(args[0], boot in args[1], args[2:]) for args in started] == [decoder] * default_processes()
    others = [
        (event, args)
        for event, args in events
        if event not in ("open", "socket.connect", "urllib.Request", "subprocess.Popen")
    ]
    assert {event for event, _ in others} == {"sqlite3.connect"}  # no rename, remove, chmod, other process...
    assert {(workdir / args[0]).resolve() for _, args in others} == {(workdir / "state.db").resolve()}
    assert sqlite3.connect(workdir / "state.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)


NESTED = b'{"provider": ' + b"[" * 400_000 + b"]" * 400_000 + b', "model": "m"}'
"""800 kB of JSON nested 400,000 deep: under the JSON API's 1 MiB limit, far over any parser's recursion."""


def test_deeply_nested_exports_are_refused_without_a_5xx(tmp_path: Path) -> None:
    policies = write_policies(tmp_path, "")
    with service(tmp_path, "--policies", str(policies), "--store", "memory://") as running:
        otlp = httpx.post(f"{running.url}/v1/traces", content=NESTED, headers={"content-type": JSON}, timeout=10)
        assert (otlp.status_code, otlp.json()["code"]) == (400, 3)
        assert otlp.json()["message"].startswith("invalid JSON: maximum recursion depth exceeded")
        assert httpx.get(f"{running.url}/healthz", timeout=10).status_code == 200  # still serving
        assert running.stop() == 0
    assert "Traceback" not in running.output()


def test_a_megabyte_of_headers_is_refused_before_the_app(tmp_path: Path) -> None:
    """Headers are read before the token is checked: their size must be bounded (h11 stops at 16 KiB)."""
    policies = write_policies(tmp_path, "")
    with service(tmp_path, "--policies", str(policies), "--store", "memory://") as running:
        try:
            status = httpx.get(f"{running.url}/healthz", headers={"X-Filler": "x" * 1_000_000}, timeout=10).status_code
        except httpx.TransportError:
            status = None  # the connection was dropped: refused too
        assert httpx.get(f"{running.url}/healthz", timeout=10).status_code == 200
        assert running.stop() == 0
    assert status is None or 400 <= status < 500, status


def test_a_deeply_nested_decision_request_is_a_4xx(tmp_path: Path) -> None:
    engine = engine_for_tests(raise_internal_errors=False)
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=10) as client:
        try:
            response = client.post("/v1/decide", content=NESTED, headers={"content-type": JSON})
            status, body = response.status_code, response.json()
        except httpx.TransportError:  # the server gave up on the connection after its 500
            status, body = 500, {}
        assert status in (400, 422), body
        assert set(body) == {"code", "message"}
    engine.close()
