"""`otel-puppy demo`, `fleet`, `check`, `replay` and `export`: commands that need no running service."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from otel_puppy.bounds import MAX_NAME_LENGTH
from otel_puppy.cli.errors import print_error, print_policy_errors
from otel_puppy.exceptions import PolicyErrors, StoreError

__all__ = ("register",)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo`, `fleet`, `check` and `replay` to the command line."""
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

    check = commands.add_parser(
        "check",
        help="validate policy files",
        description="Validate policy files: every error as file:line:column, exit 1. No policy file at the path "
        "is an error too (nothing would be enforced), unless --allow-no-policies.",
    )
    check.add_argument("path", nargs="?", type=Path, default=None, help="directory or file (default: settings)")
    check.add_argument(
        "--allow-no-policies",
        action="store_true",
        help="no policy file at the path is intended (also OTEL_PUPPY_ALLOW_NO_POLICIES=true)",
    )
    check.set_defaults(handler=_check)

    replay = commands.add_parser("replay", help="what would the policies have decided over recorded spans?")
    replay.add_argument("file", type=Path, help="OTLP JSON lines, as the Collector's file exporter writes (.gz ok)")
    replay.add_argument("--policies", type=Path, default=None, help="directory or file (default: settings)")
    replay.add_argument(
        "--json", action="store_true", help="print JSON (money as exact decimal strings) instead of tables"
    )
    replay.add_argument(
        "--summary", action="store_true", help="one row per agent and model with its totals, not one per call"
    )
    replay.add_argument(
        "--estimates",
        choices=("actual", "learned"),
        default="actual",
        help="each decision's estimate: the call's actual cost (default), or none, so decisions reserve what "
        "was learned from the calls before (as for agents that give no estimate)",
    )
    replay.set_defaults(handler=_replay)

    export = commands.add_parser("export", help="export the cost ledger (FOCUS 1.2 for FinOps tools)")
    formats = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    focus = formats.add_parser(
        "focus",
        help="FOCUS 1.2 CSV: one row per hour, provider, model, service, agent, team, environment and token type",
        description="The cost ledger of a period as FOCUS 1.2 CSV, read from the store (OTEL_PUPPY_STORE, else "
        "the service's default file) or, with --url, from a running service (GET /v1/export/focus, `read` role).",
    )
    focus.add_argument(
        "--from", dest="start", default=None, help="YYYY-MM, YYYY-MM-DD or an ISO 8601 time (UTC); default: last month"
    )
    focus.add_argument(
        "--to", dest="end", default=None, help="the period's end, exclusive (default: a month after --from)"
    )
    focus.add_argument("--out", type=Path, default=None, help="write to this file (default: standard output)")
    focus.add_argument("--store", default=None, help="the store to read (default OTEL_PUPPY_STORE, else the service's)")
    focus.add_argument("--url", default=None, help="read from this running service instead of a store")
    focus.add_argument(
        "--billing-account",
        type=_billing_account,
        default=None,
        help=f"BillingAccountId and Name, at most {MAX_NAME_LENGTH} characters (default: the provider's id and name)",
    )
    focus.set_defaults(handler=_export_focus)


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
        print_policy_errors(exc)
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
        print_policy_errors(exc)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from otel_puppy.policies import load_policies
    from otel_puppy.policies.presence import CLI_ALLOW_HINT, missing_policies
    from otel_puppy.settings import PuppySettings

    path: Path = args.path if args.path is not None else PuppySettings.load().policies
    console = Console(highlight=False, soft_wrap=True)
    missing = missing_policies(path)
    if missing is not None:
        # Settings are read only now: a path given on the command line needs none otherwise.
        if not (args.allow_no_policies or PuppySettings.load().allow_no_policies):
            print_error(f"{missing}; {CLI_ALLOW_HINT}")
            return 1
        console.print(f"[green]ok[/green] (allowed): {missing}")
        return 0
    try:
        policies = load_policies(path)
    except PolicyErrors as exc:
        print_policy_errors(exc)
        return 1
    files = ", ".join(str(p) for p in policies.sources) or "no policy files"
    console.print(f"[green]ok[/green]: {path} ({files})")
    for line in policies.summary():
        console.print(f"  {line}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from prometheus_client.registry import CollectorRegistry

    from otel_puppy.cli.render import command_console
    from otel_puppy.clock import ManualClock
    from otel_puppy.engine import PolicyEngine
    from otel_puppy.policies import load_policies
    from otel_puppy.replay import read_spans, render, replay, report_json
    from otel_puppy.server.otlp import OtlpDecodeError
    from otel_puppy.settings import PuppySettings
    from otel_puppy.store.memory import MemoryStore

    settings = PuppySettings.load()
    try:
        policies = load_policies(args.policies if args.policies is not None else settings.policies)
    except PolicyErrors as exc:
        print_policy_errors(exc)
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
        report = replay(read_spans(args.file), engine_factory, estimates=args.estimates)
    except (OSError, OtlpDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report_json(report, summary=args.summary), indent=2, ensure_ascii=False))
    else:
        # Off a terminal, tables as wide as their content: no money figure is ever cut to fit.
        render(report, command_console(), summary=args.summary)
    return 0


def _export_focus(args: argparse.Namespace) -> int:
    import time

    from otel_puppy.cli.serve import SERVICE_STORE
    from otel_puppy.focus import write_focus_csv
    from otel_puppy.ledger import parse_period, read_rows
    from otel_puppy.settings import PuppySettings
    from otel_puppy.store import open_store

    if args.url is not None:
        return _export_focus_remote(args)
    try:
        start, end = parse_period(args.start, args.end, time.time())
    except ValueError as exc:
        print_error(str(exc))
        return 2
    settings = PuppySettings.load()
    url = args.store or (settings.store if settings.store != "memory://" else SERVICE_STORE)
    if url == "memory://":
        print_error("the memory store lives in its process: export from the service (--url) or a SQLite/Redis store")
        return 2
    try:
        store = open_store(url)
    except StoreError as exc:
        print_error(str(exc))
        return 1
    try:
        rows = read_rows(store, start, end)  # read a day at a time while written
        if args.out is None:
            write_focus_csv(rows, sys.stdout, billing_account=args.billing_account)
            return 0
        with args.out.open("w", encoding="ascii", newline="") as out:
            written = write_focus_csv(rows, out, billing_account=args.billing_account)
    except StoreError as exc:
        print_error(f"cannot read the ledger: {exc}")
        return 1
    finally:
        store.close()
    print(f"wrote {written} FOCUS rows to {args.out}", file=sys.stderr)
    return 0


def _export_focus_remote(args: argparse.Namespace) -> int:
    import httpx

    from otel_puppy.cli.errors import ServiceError
    from otel_puppy.settings import PuppySettings

    token = PuppySettings.load().api_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    given = {"from": args.start, "to": args.end, "billing_account": args.billing_account}
    params = {name: value for name, value in given.items() if value}
    url = args.url.rstrip("/")
    try:
        response = httpx.get(f"{url}/v1/export/focus", params=params, headers=headers, timeout=300)
    except httpx.HTTPError as exc:
        raise ServiceError(f"cannot reach otel-puppy at {url} ({exc}); is `otel-puppy serve` running there?") from None
    if response.status_code != 200:
        raise ServiceError(f"GET {url}/v1/export/focus answered {response.status_code}: {response.text[:300]}")
    if args.out is None:
        sys.stdout.write(response.text)
    else:
        args.out.write_text(response.text, encoding="ascii")
        print(f"wrote {response.text.count(chr(10)) - 1} FOCUS rows to {args.out}", file=sys.stderr)
    return 0


def _billing_account(text: str) -> str:
    """A billing account name, bounded like every name (and as `GET /v1/export/focus` bounds it)."""
    if not 0 < len(text) <= MAX_NAME_LENGTH:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_NAME_LENGTH} characters, not {len(text)}")
    return text
