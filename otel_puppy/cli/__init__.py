"""`otel-puppy`: the command line (`main`); each command lives in a module of this package.

otel-puppy serve [--host H] [--port P]   OTLP/HTTP receiver, decision API and /metrics (embedded SQLite state)
otel-puppy decide --provider P --model M  ask a running service whether a call may go ahead (exit 3: deny);
                                         only asks unless --reserve
otel-puppy status [--json]               a running service's policies, budgets, breakers, anomalies, health
otel-puppy demo [--duration S]           a simulated agent fleet with /metrics, so dashboards have data
otel-puppy check [PATH]                  validate policy files: file:line:column errors (or none there), exit 1
otel-puppy replay FILE                   what would the policies have decided over recorded spans?
otel-puppy token create NAME --role R    add a bearer token (--team T... scopes it); prints its secret once
otel-puppy token list | revoke NAME      the tokens file's tokens (never a secret); remove one

Every command reads the `OTEL_PUPPY_*` settings (environment or `.env`); options override them.
Exit codes: 0 success, 1 failure (invalid policies, service unreachable), 2 invalid settings or
usage, 3 `decide` was answered `deny`.

Modules: `serve` (the service), `remote` (decide, status: clients of a running service),
`offline` (demo, fleet, check, replay), `tokens` (the tokens file), `render` (rich output, shared with
the demo), `errors`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from otel_puppy.cli import offline, remote, serve, tokens
from otel_puppy.cli.errors import ServiceError, print_error
from otel_puppy.cli.remote import DENY_EXIT_CODE
from otel_puppy.cli.serve import SERVICE_STORE, service_settings
from otel_puppy.exceptions import SettingsError

__all__ = ("DENY_EXIT_CODE", "SERVICE_STORE", "main", "service_settings")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (`argv`, default `sys.argv[1:]`); return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
    except SettingsError as exc:
        print_error(str(exc))
        return 2
    except ServiceError as exc:
        print_error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    from otel_puppy import __version__

    parser = argparse.ArgumentParser(
        prog="otel-puppy", description="Cost and reliability control for LLM agents, in the OpenTelemetry pipeline."
    )
    parser.add_argument("--version", action="version", version=f"otel-puppy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.register(commands)
    remote.register(commands)
    offline.register(commands)
    tokens.register(commands)
    return parser
