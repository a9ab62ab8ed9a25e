"""`otel-puppy`: the command line.

otel-puppy serve [--host H] [--port P]   OTLP/HTTP receiver, decision API and /metrics (embedded SQLite state)
otel-puppy decide --provider P --model M  ask a running service whether a call may go ahead (exit 3: deny)
otel-puppy status [--json]               a running service's budgets, breakers, anomalies and health
otel-puppy demo [--duration S]           a simulated agent fleet with /metrics, so dashboards have data
otel-puppy check [PATH]                  validate policy files: file:line:column errors, exit 1
otel-puppy replay FILE                   what would the policies have decided over recorded spans?

Every command reads the `OTEL_PUPPY_*` settings (environment or `.env`); options override them.
Exit codes: 0 success, 1 failure (invalid policies, service unreachable), 2 invalid settings or
usage, 3 `decide` was answered `deny`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console
from rich.table import Table

from otel_puppy.bounds import MAX_CALL_COST_USD, InvalidNumber, OutOfBounds, read_decimal
from otel_puppy.exceptions import PolicyErrors, SettingsError, StoreError

if TYPE_CHECKING:
    import httpx
    import uvicorn

    from otel_puppy.decision import Decision
    from otel_puppy.settings import PuppySettings

__all__ = ("DENY_EXIT_CODE", "SERVICE_STORE", "main", "service_settings")

SERVICE_STORE: Final = "sqlite:///otel-puppy.db"
"""The store of `otel-puppy serve` when none is configured: embedded SQLite, in the working directory.

The library's default is `memory://` (an in-process engine lives as long as its application);
a service's state must survive restarts, so it defaults to a file.
"""
DENY_EXIT_CODE: Final = 3
"""`otel-puppy decide` exits with this when the answer is `deny`, so shell scripts can branch on it."""

_CLIENT_TIMEOUT_S: Final = 5.0
_BIND_ALL: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - reached on loopback
_GRACEFUL_SHUTDOWN_S: Final = 10
_ACTION_STYLES: Final = {"allow": "green", "warn": "yellow", "degrade": "yellow", "deny": "red"}
_HEALTH_STYLES: Final = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
_BREAKER_STYLES: Final = {"closed": "green", "half_open": "yellow", "open": "red"}


class _ServiceError(Exception):
    """A running service could not be asked: unreachable, refused the token, or answered an error."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
    except SettingsError as exc:
        _print_error(str(exc))
        return 2
    except _ServiceError as exc:
        _print_error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return result


def _print_error(message: str) -> None:
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {escape(message)}")


def _parser() -> argparse.ArgumentParser:
    from otel_puppy import __version__
    from otel_puppy.decision import Priority

    parser = argparse.ArgumentParser(
        prog="otel-puppy", description="Cost and reliability control for LLM agents, in the OpenTelemetry pipeline."
    )
    parser.add_argument("--version", action="version", version=f"otel-puppy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the service: OTLP/HTTP receiver, decision API and /metrics",
        description="Receive OTLP/HTTP traces on /v1/traces, answer the decision API and serve /metrics. "
        "Stops gracefully on SIGTERM or Ctrl-C.",
    )
    serve.add_argument(
        "--host",
        default=None,
        help="address to bind (default OTEL_PUPPY_HOST or 127.0.0.1); beyond loopback OTEL_PUPPY_API_TOKEN must be set",
    )
    serve.add_argument(
        "--port", type=int, default=None, help="port (default OTEL_PUPPY_PORT or 4319; 0: any free port)"
    )
    serve.add_argument(
        "--store",
        default=None,
        help=f"state store URL (default OTEL_PUPPY_STORE, else {SERVICE_STORE}: an embedded SQLite file in the "
        "working directory; the library's default, memory://, does not survive a restart)",
    )
    serve.add_argument("--policies", type=Path, default=None, help="directory or file (default: settings)")
    serve.set_defaults(handler=_serve)

    decide = commands.add_parser(
        "decide",
        help="ask a running service whether a call may go ahead",
        description=f"Ask the decision API. Exit 0 for allow, warn or degrade, {DENY_EXIT_CODE} for deny.",
    )
    decide.add_argument("--provider", required=True, help="e.g. openai")
    decide.add_argument("--model", required=True, help="e.g. gpt-4.1")
    decide.add_argument("--agent", default=None)
    decide.add_argument("--user", default=None)
    decide.add_argument("--priority", choices=[p.value for p in Priority], default=None, help="default: normal")
    decide.add_argument(
        "--estimated-cost-usd", type=_usd, default=None, metavar="USD", help="reserved on matching budgets, e.g. 0.02"
    )
    _client_options(decide)
    decide.set_defaults(handler=_decide)

    status = commands.add_parser("status", help="budgets, breakers, anomalies and health of a running service")
    _client_options(status)
    status.set_defaults(handler=_status)

    demo = commands.add_parser("demo", help="run a simulated agent fleet and serve /metrics")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=8.0, help="agent runs per second (default 8)")
    demo.add_argument(
        "--port", type=int, default=None, help="port of the service the demo runs (default OTEL_PUPPY_PORT or 4319)"
    )
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--no-live", action="store_true", help="print one summary at the end instead of a live view")
    demo.set_defaults(handler=_demo)

    fleet = commands.add_parser(
        "fleet",
        help="run only the demo's simulated fleet against a running service (the docker compose stack)",
    )
    fleet.add_argument(
        "--url", required=True, help="service (or replica) the fleet asks, e.g. http://otel-puppy-1:4319"
    )
    fleet.add_argument(
        "--traces-url", default=None, help="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces"
    )
    fleet.add_argument("--duration", type=float, default=None, help="seconds to run (default: until stopped)")
    fleet.add_argument("--rate", type=float, default=8.0, help="agent runs per second (default 8)")
    fleet.add_argument("--seed", type=int, default=7)
    fleet.set_defaults(handler=_fleet)

    check = commands.add_parser("check", help="validate policy files")
    check.add_argument("path", nargs="?", type=Path, default=None, help="directory or file (default: settings)")
    check.set_defaults(handler=_check)

    replay = commands.add_parser("replay", help="what would the policies have decided over recorded spans?")
    replay.add_argument("file", type=Path, help="OTLP JSON lines, as the Collector's file exporter writes (.gz ok)")
    replay.add_argument("--policies", type=Path, default=None, help="directory or file (default: settings)")
    replay.set_defaults(handler=_replay)
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help="the service (default: http://OTEL_PUPPY_HOST:OTEL_PUPPY_PORT, loopback if unset)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _usd(text: str) -> Decimal:
    # The API's own bounds, checked here: out of them is a usage error, not a traceback.
    try:
        return read_decimal(text, name="estimated_cost_usd", maximum=MAX_CALL_COST_USD)
    except OutOfBounds as exc:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r} ({exc.reason})") from None
    except InvalidNumber:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None


# --- serve ------------------------------------------------------------------------------------


def service_settings(
    *, host: str | None = None, port: int | None = None, store: str | None = None, policies: Path | None = None
) -> PuppySettings:
    """The settings `otel-puppy serve` runs with: `OTEL_PUPPY_*`, then these overrides, and
    `SERVICE_STORE` unless a store was configured (environment, `.env` or `store=`).

    Raises:
        SettingsError: a setting is invalid, or the host is beyond loopback without `api_token`.
    """
    from otel_puppy.settings import PuppySettings

    overrides = {
        name: value
        for name, value in (("host", host), ("port", port), ("store", store), ("policies", policies))
        if value is not None
    }
    settings = PuppySettings.load(**overrides)
    if "store" not in settings.model_fields_set:
        settings = PuppySettings.load(**overrides, store=SERVICE_STORE)
    return settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from otel_puppy.engine import PolicyEngine
    from otel_puppy.server.app import create_app
    from otel_puppy.server.http import uvicorn_options

    # Settings first: a host beyond loopback without a token is refused before anything binds.
    settings = service_settings(host=args.host, port=args.port, store=args.store, policies=args.policies)
    try:
        engine = PolicyEngine.from_settings(settings)
    except PolicyErrors as exc:
        _print_policy_errors(exc)
        return 1
    except StoreError as exc:
        _print_error(str(exc))
        return 1
    try:
        app = create_app(engine)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            **uvicorn_options(settings),
        )
        server = _announcing_server(config, _announce)
        config.load()  # uvicorn's own imports, before the freeze
        _freeze_startup_objects()
        with _StopOnSignals(server):
            server.run()
    except SystemExit:  # uvicorn exits when it cannot start (the port is taken...); it has logged why
        return 1
    finally:
        engine.close()
    return 0


def _freeze_startup_objects() -> None:
    """Put everything built to start (modules, schemas, the price snapshot, the policies) out of
    the cyclic garbage collector's reach for good: a full collection over it all takes tens of
    milliseconds, during which every request in flight waits. Requests' own garbage is still
    collected as usual."""
    gc.collect()
    gc.freeze()


def _announce(url: str) -> None:
    print(f"otel-puppy serving OTLP/HTTP, the decision API and /metrics on {url}", flush=True)


def _announcing_server(config: uvicorn.Config, announce: Callable[[str], None]) -> uvicorn.Server:
    """uvicorn's server, announcing its URL once it listens (the bound port, when asked for port 0)."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.servers and self.servers[0].sockets:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                announce(f"http://{_url_host(str(host))}:{port}")

    return AnnouncingServer(config)


class _StopOnSignals:
    """SIGTERM and SIGINT stop `server` gracefully, then `serve` closes the engine and exits 0.

    uvicorn handles both while it runs and re-raises the signal once it has shut down, for the
    handler that was there before: that handler is this one, which only asks the server to stop
    (harmless by then), so the process goes on to close the engine instead of dying of the signal.
    Installed before uvicorn starts, it also turns a signal during startup into a clean stop.
    """

    _SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.server.should_exit = True

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self._SIGNALS}

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- decide and status: clients of a running service -----------------------------------------


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The service's base URL and the bearer token, from `--url` and the settings."""
    from otel_puppy.settings import PuppySettings

    settings = PuppySettings.load()
    url: str | None = args.url
    if url is None:
        host = _BIND_ALL.get(settings.host, settings.host)
        url = f"http://{_url_host(host)}:{settings.port}"
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    return url.rstrip("/"), token


def _decide(args: argparse.Namespace) -> int:
    from otel_puppy.client import DecisionClient, DecisionServiceError

    url, token = _target(args)
    fields: dict[str, object] = {"provider": args.provider, "model": args.model}
    for name in ("agent", "user", "priority", "estimated_cost_usd"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    # An agent's client fails open or closed when the service is away, and logs it; a person
    # asking from a shell is told that it is away, once, and gets exit code 1.
    client_logger = logging.getLogger("otel_puppy")
    level = client_logger.level
    client_logger.setLevel(logging.ERROR)
    try:
        with DecisionClient(url, api_token=token, timeout_s=_CLIENT_TIMEOUT_S) as client:
            decision = client.decide(**fields)
            unanswered = client.failures > 0
    except DecisionServiceError as exc:
        hint = "; set OTEL_PUPPY_API_TOKEN to the service's token" if exc.status_code == 401 else ""
        raise _ServiceError(f"{url} refused the request: {exc.message or exc.code}{hint}") from None
    finally:
        client_logger.setLevel(level)
    if unanswered:
        cause = decision.reasons[0].message.partition("; failing")[0] if decision.reasons else "no answer"
        raise _ServiceError(f"cannot get a decision from {url}: {cause}; is `otel-puppy serve` running there?")
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
    else:
        _render_decision(decision, Console(highlight=False))
    return 0 if decision.allowed else DENY_EXIT_CODE


def _render_decision(decision: Decision, console: Console) -> None:
    action = decision.action.value
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("action", f"[{_ACTION_STYLES.get(action, 'white')}]{action}[/]")
    summary.add_row("call", decision.model_ref)
    if decision.decision_id:
        summary.add_row("decision id", decision.decision_id)
    if decision.estimated_cost_usd is not None:
        summary.add_row("reserved", _usd_text(decision.estimated_cost_usd))
    if decision.retry_after_s is not None:
        summary.add_row("retry after", f"{decision.retry_after_s:g} s")
    if decision.resets_at is not None:
        summary.add_row("resets", _when(decision.resets_at))
    console.print(summary)
    hits = [(hit, False) for hit in decision.reasons] + [(hit, True) for hit in decision.shadow]
    if not hits:
        console.print("no policy matched")
        return
    table = Table("policy", "kind", "scope", "action", "message", title="reasons", title_justify="left")
    for hit, shadow in hits:
        style = _ACTION_STYLES.get(hit.action.value, "white")
        name = f"{hit.policy} [dim](shadow)[/]" if shadow or hit.shadow else hit.policy
        table.add_row(name, hit.kind, hit.scope or "-", f"[{style}]{hit.action.value}[/]", hit.message)
    console.print(table)


_STATUS_PATHS: Final = (
    ("budgets", "/v1/budgets"),
    ("breakers", "/v1/breakers"),
    ("anomalies", "/v1/anomalies"),
    ("health", "/v1/health"),
)


def _status(args: argparse.Namespace) -> int:
    import httpx

    url, token = _target(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    state: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=_CLIENT_TIMEOUT_S) as client:
        for name, path in _STATUS_PATHS:
            body = _get(client, url, path)
            state[name] = body if name == "health" else body.get(name, [])
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    console = Console(highlight=False)
    console.print(f"otel-puppy at {url}")
    _render_budgets(state["budgets"], console)
    _render_breakers(state["breakers"], console)
    _render_anomalies(state["anomalies"], console)
    _render_health(state["health"], console)
    return 0


def _get(client: httpx.Client, url: str, path: str) -> dict[str, Any]:
    import httpx

    try:
        response = client.get(path)
    except httpx.HTTPError as exc:
        raise _ServiceError(
            f"cannot reach otel-puppy at {url} ({exc or type(exc).__name__}); is `otel-puppy serve` running there? "
            "(--url or OTEL_PUPPY_HOST/OTEL_PUPPY_PORT say where)"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 401:
        raise _ServiceError(
            f"{url} refused the request: {_message(body, response)}; set OTEL_PUPPY_API_TOKEN to the service's token"
        )
    if response.status_code != 200 or not isinstance(body, dict):
        raise _ServiceError(f"GET {url}{path} answered {response.status_code}: {_message(body, response)}")
    return body


def _message(body: object, response: httpx.Response) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.reason_phrase or "no message"


def _render_budgets(budgets: list[dict[str, Any]], console: Console) -> None:
    if not budgets:
        console.print("budgets: none")
        return
    table = Table(
        "policy", "scope", "window", "spent / limit", "utilization", "reserved", "resets",
        title="budgets", title_justify="left",
    )  # fmt: skip
    for budget in budgets:
        if budget.get("limit_usd") is not None:
            spent = f"{_usd_text(budget.get('spent_usd') or 0)} / {_usd_text(budget['limit_usd'])}"
        elif budget.get("limit_tokens") is not None:
            spent = f"{budget.get('spent_tokens') or 0:,} / {budget['limit_tokens']:,} tokens"
        else:
            spent = "-"
        utilization = budget.get("utilization")
        if utilization is None:
            used = "-"
        else:
            style = "red" if utilization >= 1 else "yellow" if utilization >= 0.9 else "green"
            used = f"[{style}]{utilization:.1%}[/]"
        reserved = budget.get("reserved_usd")
        table.add_row(
            _policy_name(budget),
            budget.get("scope") or "-",
            budget.get("window") or "-",
            spent,
            used,
            _usd_text(reserved) if reserved is not None and Decimal(str(reserved)) else "-",
            _when(budget.get("resets_at")),
        )
    console.print(table)


def _render_breakers(breakers: list[dict[str, Any]], console: Console) -> None:
    if not breakers:
        console.print("breakers: none")
        return
    table = Table("policy", "subject", "state", "failures", "retry at", title="breakers", title_justify="left")
    for breaker in breakers:
        state = str(breaker.get("state", "?"))
        table.add_row(
            _policy_name(breaker),
            str(breaker.get("subject", "")),
            f"[{_BREAKER_STYLES.get(state, 'white')}]{state.replace('_', '-')}[/]",
            str(breaker.get("failures", 0)),
            _when(breaker.get("retry_at")) if state != "closed" else "-",
        )
    console.print(table)


def _render_anomalies(anomalies: list[dict[str, Any]], console: Console) -> None:
    if not anomalies:
        console.print("anomalies: none")
        return
    table = Table(
        "policy", "subject", "signal", "current", "baseline", "deviation", "firing",
        title="anomalies", title_justify="left",
    )  # fmt: skip
    for anomaly in anomalies:
        deviation = anomaly.get("deviation_pct")
        table.add_row(
            _policy_name(anomaly),
            anomaly.get("subject") or "all",
            str(anomaly.get("signal", "")),
            _number(anomaly.get("current")),
            _number(anomaly.get("baseline")),
            f"{deviation:+.0f}%" if isinstance(deviation, int | float) else "-",
            "[red]yes[/]" if anomaly.get("firing") else "no",
        )
    console.print(table)


def _render_health(health: dict[str, Any], console: Console) -> None:
    status = str(health.get("status", "unknown"))
    console.print(f"health: [{_HEALTH_STYLES.get(status, 'white')}]{status}[/]")
    indicators = health.get("indicators") or []
    if indicators:
        table = Table("indicator", "status", "value", "threshold", "message")
        for indicator in indicators:
            state = str(indicator.get("status", ""))
            table.add_row(
                str(indicator.get("name", "")),
                f"[{_HEALTH_STYLES.get(state, 'white')}]{state}[/]",
                _number(indicator.get("value")),
                _number(indicator.get("threshold")),
                str(indicator.get("message", "")),
            )
        console.print(table)
    # Recommendations and trends are shown as the service words them, whatever their shape.
    for title in ("recommendations", "trends"):
        _render_records(title, health.get(title), console)


def _render_records(title: str, value: object, console: Console) -> None:
    records: list[object]
    if isinstance(value, Mapping):
        records = [{"name": key, **item} if isinstance(item, Mapping) else {"name": key, "value": item}
                   for key, item in value.items()]  # fmt: skip
    elif isinstance(value, list):
        records = value
    else:
        return
    if not records:
        return
    if not all(isinstance(record, Mapping) for record in records):
        console.print(f"{title}:")
        for record in records:
            console.print(f"  - {record}")
        return
    columns: list[str] = []
    for record in records:
        assert isinstance(record, Mapping)
        columns += [key for key, item in record.items() if key not in columns and not isinstance(item, list | dict)]
    table = Table(*columns, title=title, title_justify="left")
    for record in records:
        assert isinstance(record, Mapping)
        table.add_row(*(_cell(record.get(column)) for column in columns))
    console.print(table)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _policy_name(record: Mapping[str, Any]) -> str:
    name = str(record.get("policy", ""))
    return f"{name} [dim](shadow)[/]" if record.get("shadow") else name


def _usd_text(value: object) -> str:
    """`$0.0112`, `$100`: exact decimals, as the API sends them."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    text = f"{amount:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"${text}"


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return f"{value:.4g}"


def _when(value: object) -> str:
    """`2026-01-02 00:00 UTC (in 5h 3m)` from ISO 8601 text, a datetime or epoch seconds."""
    moment: datetime
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int((moment - datetime.now(UTC)).total_seconds())
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({_relative(seconds)})"


def _relative(seconds: int) -> str:
    span = abs(seconds)
    days, rest = divmod(span, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d {hours}h"
    elif hours:
        text = f"{hours}h {minutes}m"
    elif minutes:
        text = f"{minutes}m {secs}s"
    else:
        text = f"{secs}s"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


# --- demo, check, replay ----------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from otel_puppy import demo
    from otel_puppy.settings import PuppySettings

    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["port"] = args.port
    settings = PuppySettings.load(**overrides)
    try:
        demo.run(settings, duration=args.duration, rate=args.rate, seed=args.seed, live=not args.no_live)
    except PolicyErrors as exc:
        _print_policy_errors(exc)
        return 1
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from otel_puppy import demo
    from otel_puppy.settings import PuppySettings

    try:
        demo.run_fleet(
            PuppySettings.load(),
            args.url,
            traces_url=args.traces_url,
            duration=args.duration,
            rate=args.rate,
            seed=args.seed,
        )
    except PolicyErrors as exc:
        _print_policy_errors(exc)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from otel_puppy.policies import load_policies
    from otel_puppy.settings import PuppySettings

    path: Path = args.path if args.path is not None else PuppySettings.load().policies
    console = Console(highlight=False, soft_wrap=True)
    try:
        policies = load_policies(path)
    except PolicyErrors as exc:
        _print_policy_errors(exc)
        return 1
    files = ", ".join(str(p) for p in policies.sources) or "no policy files"
    console.print(f"[green]ok[/green]: {path} ({files})")
    for line in policies.summary():
        console.print(f"  {line}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from prometheus_client.registry import CollectorRegistry

    from otel_puppy.clock import ManualClock
    from otel_puppy.engine import PolicyEngine
    from otel_puppy.policies import load_policies
    from otel_puppy.replay import read_spans, render, replay
    from otel_puppy.server.otlp import OtlpDecodeError
    from otel_puppy.settings import PuppySettings
    from otel_puppy.store.memory import MemoryStore

    settings = PuppySettings.load()
    try:
        policies = load_policies(args.policies if args.policies is not None else settings.policies)
    except PolicyErrors as exc:
        _print_policy_errors(exc)
        return 1

    def engine_factory(clock: ManualClock) -> PolicyEngine:
        return PolicyEngine(
            settings,
            policies=policies,
            store=MemoryStore(),
            clock=clock,
            registry=CollectorRegistry(),
            alert_sinks=[],
        )

    try:
        report = replay(read_spans(args.file), engine_factory)
    except (OSError, OtlpDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    render(report, Console(highlight=False))
    return 0


def _print_policy_errors(exc: PolicyErrors) -> None:
    for error in exc.errors:
        print(error, file=sys.stderr)
    print(f"{len(exc.errors)} error(s)", file=sys.stderr)
