"""`otel-puppy decide` and `otel-puppy status`: clients of a running service, over its JSON API.

`decide` only asks unless `--reserve`; output off a terminal is never cut (`render.command_console`).
"""

from __future__ import annotations

import argparse
import json
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from otel_puppy.bounds import MAX_CALL_COST_USD, InvalidNumber, OutOfBounds, read_decimal
from otel_puppy.cli.errors import ServiceError
from otel_puppy.cli.render import (
    command_console,
    render_anomalies,
    render_breakers,
    render_budgets,
    render_costs,
    render_decision,
    render_health,
    render_policies,
)
from otel_puppy.cli.serve import url_host

if TYPE_CHECKING:
    import httpx

__all__ = ("DENY_EXIT_CODE", "register")

DENY_EXIT_CODE: Final = 3
"""`otel-puppy decide` exits with this when the answer is `deny`, so shell scripts can branch on it."""


_CLIENT_TIMEOUT_S: Final = 5.0


_BIND_ALL: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - reached on loopback


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `decide` and `status` to the command line."""
    from otel_puppy.decision import Priority

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
        "--estimated-cost-usd", type=_usd, default=None, metavar="USD", help="the call's estimated cost, e.g. 0.02"
    )
    decide.add_argument(
        "--reserve",
        action="store_true",
        help="hold the estimate on every matching budget until the call's span settles it (or it expires); "
        "without it the service is only asked and nothing is held",
    )
    _client_options(decide)
    decide.set_defaults(handler=_decide)

    status = commands.add_parser(
        "status",
        help="policies, budgets, breakers, anomalies and health of a running service",
        description="The state of a running service. On a terminal, tables; to a pipe or a file, the same tables "
        "as wide as their content (no figure cut); --json for the API's JSON (money as exact decimal strings).",
    )
    _client_options(status)
    status.add_argument(
        "--by",
        default=None,
        help="instead: this month's cost and calls per value of these dimensions, from the cost ledger (comma-"
        "separated: team, agent, service, environment, provider, model), the figures a FOCUS export adds up to",
    )
    status.add_argument(
        "--from", dest="start", default=None, help="with --by: the period's start (default: this month)"
    )
    status.add_argument("--to", dest="end", default=None, help="with --by: the period's end (exclusive)")
    status.set_defaults(handler=_status)


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


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The service's base URL and the bearer token, from `--url` and the settings."""
    from otel_puppy.settings import PuppySettings

    settings = PuppySettings.load()
    url: str | None = args.url
    if url is None:
        host = _BIND_ALL.get(settings.host, settings.host)
        url = f"http://{url_host(host)}:{settings.port}"
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
            decision = client.decide(reserve=args.reserve, **fields)
            unanswered = client.failures > 0
    except DecisionServiceError as exc:
        hint = "; set OTEL_PUPPY_API_TOKEN to a token of the service" if exc.status_code == 401 else ""
        raise ServiceError(f"{url} refused the request: {exc.message or exc.code}{hint}") from None
    finally:
        client_logger.setLevel(level)
    if unanswered:
        cause = decision.reasons[0].message.partition("; failing")[0] if decision.reasons else "no answer"
        raise ServiceError(f"cannot get a decision from {url}: {cause}; is `otel-puppy serve` running there?")
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
    else:
        render_decision(decision, command_console())
    return 0 if decision.allowed else DENY_EXIT_CODE


_STATUS_PATHS: Final = (
    ("policies", "/v1/policies"),
    ("budgets", "/v1/budgets"),
    ("breakers", "/v1/breakers"),
    ("anomalies", "/v1/anomalies"),
    ("health", "/v1/health"),
)


def _status(args: argparse.Namespace) -> int:
    import httpx

    url, token = _target(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if args.by is not None:
        return _costs(args, url, headers)
    state: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=_CLIENT_TIMEOUT_S) as client:
        for name, path in _STATUS_PATHS:
            # a service older than `/v1/policies` still has the rest to show; a scoped token is refused
            # the sections that are not split by scope, and shown the rest
            body = _get(client, url, path, missing_ok=name == "policies", forbidden_ok=name in _UNSCOPED_ONLY)
            state[name] = body if name in ("health", "policies") else (body or {}).get(name, [])
    if args.json:
        # the API's own JSON: money as its exact decimal strings, never cut
        print(json.dumps(state, indent=2))
        return 0
    console = command_console()
    console.print(f"otel-puppy at {url}")
    if _refused(state["policies"]) is not None:
        console.print(f"policies: not shown to this token: {_refused(state['policies'])}")
    else:
        render_policies(state["policies"], console)
    render_budgets(state["budgets"], console)
    render_breakers(state["breakers"], console)
    render_anomalies(state["anomalies"], console)
    if _refused(state["health"]) is not None:
        console.print(f"health: not shown to this token: {_refused(state['health'])}")
    else:
        render_health(state["health"], console)
    return 0


def _costs(args: argparse.Namespace, url: str, headers: dict[str, str]) -> int:
    import httpx

    params = {"by": args.by, **({"from": args.start} if args.start else {}), **({"to": args.end} if args.end else {})}
    with httpx.Client(base_url=url, headers=headers, timeout=_CLIENT_TIMEOUT_S) as client:
        body = _get(client, url, "/v1/costs?" + urlencode(params)) or {}
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    render_costs(body, command_console())
    return 0


_UNSCOPED_ONLY: Final = frozenset({"policies", "health"})
"""Sections a scoped token gets `403` from (not split by scope): `status` shows the others."""


def _refused(section: object) -> str | None:
    """The refusal's message when the service would not show a section to this token."""
    if isinstance(section, dict) and set(section) == {"forbidden"}:
        return str(section["forbidden"])
    return None


def _get(
    client: httpx.Client, url: str, path: str, *, missing_ok: bool = False, forbidden_ok: bool = False
) -> dict[str, Any] | None:
    import httpx

    try:
        response = client.get(path)
    except httpx.HTTPError as exc:
        raise ServiceError(
            f"cannot reach otel-puppy at {url} ({exc or type(exc).__name__}); is `otel-puppy serve` running there? "
            "(--url or OTEL_PUPPY_HOST/OTEL_PUPPY_PORT say where)"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 401:
        raise ServiceError(
            f"{url} refused the request: {_message(body, response)}; set OTEL_PUPPY_API_TOKEN to a token of the service"
        )
    if missing_ok and response.status_code == 404:
        return None
    if forbidden_ok and response.status_code == 403:
        return {"forbidden": _message(body, response)}
    if response.status_code == 403:
        raise ServiceError(f"{url} refused GET {path}: {_message(body, response)}")
    if response.status_code != 200 or not isinstance(body, dict):
        raise ServiceError(f"GET {url}{path} answered {response.status_code}: {_message(body, response)}")
    return body


def _message(body: object, response: httpx.Response) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.reason_phrase or "no message"
