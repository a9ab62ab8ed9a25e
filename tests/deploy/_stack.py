"""A real Prometheus scraping a real `otel-puppy demo`, for the dashboard and alert rule tests.

`start_stack` runs `python -m otel_puppy demo` (the `otel-puppy demo` command) on a free loopback
port with `TEST_POLICIES` (the shipped policies' shapes, scaled so that within a minute budgets alert,
degrade and deny, the self-hosted model's outage opens its breaker and anomalies fire), and Debian's
`prometheus` scraping it every second with `deploy/alert-rules.yml` loaded and evaluated every second.
Both bind 127.0.0.1 only and are stopped by `Stack.close`.

Also the helpers both test modules use to read the dashboards and rule files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ruamel.yaml import YAML

from tests._service import free_port

ROOT: Final = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR: Final = ROOT / "grafana" / "dashboards"
PROVISIONING_DIR: Final = ROOT / "grafana" / "provisioning"
ALERT_RULES: Final = ROOT / "deploy" / "alert-rules.yml"
ALERT_TESTS: Final = ROOT / "deploy" / "alert-rules.test.yml"
JOB: Final = "otel-puppy"
"""The scrape job the alert rules (`up{job="otel-puppy"}`) and deploy/prometheus.yml name."""

# Grafana's own variables, as a dashboard opened on the last few minutes of the demo would set them
# (Grafana's `$__rate_interval` is at least 4 scrape intervals; the scrapes here are 1 s apart).
INTERVALS: Final = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m"}

TEST_POLICIES: Final = """
budgets:
  - name: org-daily
    limit_usd: 20
    window: day
    action: deny
    alerts: [0.02, 0.05, 0.1]
  - name: openai-hourly
    match: {provider: openai}
    limit_usd: 0.5
    window: 1h
    action: {degrade: gpt-4.1-mini}
    alerts: [0.5, 0.75, 0.9]
  - name: per-agent
    per: [agent]
    limit_usd: 0.5
    window: 15m
    action: deny
    reserve: {critical: 0.10}
  - name: tokens-per-user
    per: [user]
    limit_tokens: 200000
    window: month
    action: warn
    shadow: true
anomalies:
  - name: provider-errors
    signal: error_rate
    per: [provider]
    interval: 2s
    baseline: 20s
    min_samples: 3
    threshold: {ratio: 3}
    cooldown: 30s
    action: warn
  - name: spend-spike
    signal: cost_rate
    per: [agent]
    interval: 2s
    baseline: 20s
    min_samples: 5
    threshold: {zscore: 3}
    cooldown: 30s
    action: warn
breakers:
  - name: providers
    per: [provider]
    failure_threshold: 3
    recovery_timeout: 3s
    success_threshold: 1
    half_open_max_calls: 1
    failures: [server_error, timeout, rate_limit, connection]
routing:
  - name: summaries
    match: {agent: summarizer}
    strategy: cheapest
    candidates: [google:gemini-2.5-flash-lite, google:gemini-2.5-flash]
    max_latency_s: 10s
prices:
  - {provider: self-hosted, model: llama-3.1-70b, input_mtok: 0.6, output_mtok: 0.6}
"""
"""acme-kb-7b-instruct (the demo's self-hosted model) stays unpriced: the unpriced alert must fire."""

_SERVICE_URL = re.compile(r"service at (http://127\.0\.0\.1:\d+)")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$", re.DOTALL)


# --- dashboards and rules as data -------------------------------------------------------------------


def yaml_load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def dashboards() -> dict[str, dict[str, Any]]:
    """Every committed dashboard, by file name."""
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows (collapsed rows keep theirs inside)."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


@dataclass(frozen=True, slots=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    """As written in the dashboard, variables and all."""

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}: {self.expr}"


def panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(name, panel["title"], target["refId"], target["expr"])
        for name, dashboard in dashboards().items()
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]


def query_variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in dashboard["templating"]["list"] if v["type"] == "query"]


def label_values_query(variable: dict[str, Any]) -> tuple[str, str]:
    """(series selector, label) of a `label_values(selector, label)` variable."""
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    match = _LABEL_VALUES.match(text)
    assert match is not None, f"variable {variable['name']}: not a label_values() query: {text}"
    return match["selector"], match["label"]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables (`$name`, `${name}`); an unknown one is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        key = f"$__{name[2:]}" if name.startswith("__") else name
        if key in INTERVALS:
            return INTERVALS[key]
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def regex_escape(value: str) -> str:
    """A label value as a PromQL regex inside a double-quoted string (`.` -> `\\\\.`), as Grafana does."""
    return re.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\\\1", value)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: every `otel_puppy_*` name, and `up` (recording rules'
    `budget:otel_puppy_...:5m` names are not metrics otel_puppy exports)."""
    names = set(re.findall(r"(?<![\w:])otel_puppy_[a-z0-9_]+(?![\w:])", expr))  # not in `level:metric:op` names
    names.update(re.findall(r"\b(up)\s*\{", expr))
    return names


def alert_names() -> list[str]:
    return [rule["alert"] for group in yaml_load(ALERT_RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in yaml_load(ALERT_RULES)["groups"] for rule in group["rules"]]


def exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """(names declared, names with samples) in a Prometheus text exposition, by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    declared: set[str] = set()
    sampled: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    for family in text_string_to_metric_families(exposition):
        declared.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        sampled.update(sample.name for sample in family.samples)
    return declared, sampled


# --- the processes ------------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check: Callable[[], bool], timeout: float, *, alive: Callable[[], str | None]) -> None:
    """Poll `check` every 0.25 s until it holds; fail with the processes' logs on timeout or death."""
    deadline = time.monotonic() + timeout
    while True:
        problem = alive()
        if problem is not None:
            raise AssertionError(f"while waiting for {what}: {problem}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if check():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.25)


@dataclass
class Stack:
    """The demo and Prometheus, running; `close()` stops both."""

    directory: Path
    demo: subprocess.Popen[bytes]
    prometheus: subprocess.Popen[bytes] | None = None
    service_url: str = ""
    prometheus_url: str = ""
    started_at: float = field(default_factory=time.monotonic)

    @property
    def metrics_url(self) -> str:
        return f"{self.service_url}/metrics"

    def logs(self) -> str:
        parts = []
        for name in ("demo.out", "demo.err", "prometheus.log"):
            path = self.directory / name
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace")
                parts.append(f"--- {name} (last 3000 characters)\n{text[-3000:]}")
        return "\n".join(parts)

    def problem(self) -> str | None:
        """Why the stack is not running (a process exited), with the logs; None while it runs."""
        for name, process in (("otel-puppy demo", self.demo), ("prometheus", self.prometheus)):
            if process is not None and process.poll() is not None:
                return f"{name} exited with {process.returncode}\n{self.logs()}"
        return None

    def api(self, path: str, **params: str) -> Any:
        """GET a Prometheus HTTP API path; its `data` on success."""
        url = f"{self.prometheus_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url, timeout=10.0)
        answer = json.loads(body)
        assert status == 200, f"GET {url}: {status} {body[:500]!r}"
        assert answer.get("status") == "success", f"GET {url}: {body[:500]!r}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at now: its result (a vector's samples, or one scalar as a sample)."""
        data = self.api("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, selector: str, label: str) -> list[str]:
        values: list[str] = self.api(f"/api/v1/label/{label}/values", **{"match[]": selector})
        return values

    def variable_values(self, dashboard: dict[str, Any]) -> dict[str, str]:
        """Every variable of a dashboard set to "All", as Grafana would expand it against this Prometheus."""
        values = {"datasource": "prometheus"}
        for variable in query_variables(dashboard):
            selector, label = label_values_query(variable)
            found = self.label_values(substitute(selector, values), label)
            if variable.get("allValue"):
                values[variable["name"]] = variable["allValue"]
            elif found:
                values[variable["name"]] = "(" + "|".join(regex_escape(v) for v in found) + ")"
            else:
                values[variable["name"]] = "^$"  # Grafana's "All" of nothing
        return values

    def active_alerts(self) -> dict[str, set[str]]:
        """Alert name -> states (pending, firing) of its active alerts."""
        states: dict[str, set[str]] = {}
        for alert in self.api("/api/v1/alerts")["alerts"]:
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        return states

    def close(self) -> None:
        # The demo first (Ctrl-C stops its fleet processes and flushes), then Prometheus.
        _stop(self.demo, signal.SIGINT, grace=30.0)
        if self.prometheus is not None:
            _stop(self.prometheus, signal.SIGTERM, grace=15.0)


def _stop(process: subprocess.Popen[bytes], first: signal.Signals, grace: float) -> None:
    """Signal the process; past `grace` seconds kill its process group (it leads one: start_new_session)."""
    if process.poll() is None:
        process.send_signal(first)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10.0)
    # Spawned fleet processes left behind (they share the group) go with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def start_stack(directory: Path, prometheus: str, *, rate: float = 8.0, max_duration: float = 300.0) -> Stack:
    """Start the demo and Prometheus; return once Prometheus scrapes the demo. Close it on failure."""
    policies = directory / "policies"
    policies.mkdir()
    (policies / "policies.yaml").write_text(TEST_POLICIES, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_PUPPY_")}
    env.update(
        OTEL_PUPPY_POLICIES=str(policies),
        OTEL_PUPPY_STORE="memory://",
        OTEL_PUPPY_HOST="127.0.0.1",
        COLUMNS="200",  # one line per message: the service's URL is read from it
    )
    command = [sys.executable, "-m", "otel_puppy", "demo", "--port", "0", "--no-live"]
    command += ["--rate", f"{rate:g}", "--duration", f"{max_duration:g}"]
    with (directory / "demo.out").open("wb") as out, (directory / "demo.err").open("wb") as err:
        demo = subprocess.Popen(command, cwd=directory, env=env, stdout=out, stderr=err, start_new_session=True)
    stack = Stack(directory, demo)
    try:
        _start_prometheus(stack, prometheus)
    except BaseException:
        stack.close()
        raise
    return stack


def _start_prometheus(stack: Stack, prometheus: str) -> None:
    directory = stack.directory

    def service_url() -> bool:
        match = _SERVICE_URL.search((directory / "demo.out").read_text(encoding="utf-8", errors="replace"))
        if match:
            stack.service_url = match[1]
        return match is not None

    # Spawning the fleet imports pydantic-ai and logfire afresh: seconds on a busy 2-core machine.
    wait_for("the demo's service URL", service_url, 90.0, alive=stack.problem)
    target = stack.service_url.removeprefix("http://")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    (directory / "prometheus.yml").write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML
    with (directory / "prometheus.log").open("wb") as log:
        stack.prometheus = subprocess.Popen(
            [
                prometheus,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            ],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.prometheus_url = f"http://127.0.0.1:{port}"
    wait_for("Prometheus to be ready", lambda: http_get(f"{stack.prometheus_url}/-/ready")[0] == 200, 60.0,
             alive=stack.problem)  # fmt: skip
    wait_for(
        "Prometheus to scrape the demo",
        lambda: bool(stack.query(f'up{{job="{JOB}"}} == 1')),
        30.0,
        alive=stack.problem,
    )


@dataclass
class Settled:
    """The stack, once every panel had data and the expected alerts were active, or the wait ran out."""

    stack: Stack
    waited_s: float
    """Seconds from the demo's start to the end of the wait."""
    missing: list[str]
    """What was still empty or inactive when the wait ended (nothing: everything had data)."""


def wait_until(stack: Stack, what: str, missing: Callable[[], list[str]], timeout: float) -> list[str]:
    """Poll `missing` every 2 s until it returns nothing or `timeout` passes; returns what is still missing."""
    deadline = time.monotonic() + timeout
    left = missing()
    while left and time.monotonic() < deadline:
        problem = stack.problem()
        if problem is not None:
            raise AssertionError(f"while waiting for {what}: {problem}")
        time.sleep(2.0)
        left = missing()
    return left


def iter_exprs_with_values(stack: Stack) -> Iterator[tuple[PanelQuery, str]]:
    """Every panel query with this stack's "All" values and concrete intervals substituted."""
    for name, dashboard in dashboards().items():
        values = stack.variable_values(dashboard)
        for panel in panels(dashboard):
            for target in panel["targets"]:
                query = PanelQuery(name, panel["title"], target["refId"], target["expr"])
                yield query, substitute(query.expr, values)
