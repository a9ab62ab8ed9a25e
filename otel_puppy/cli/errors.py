"""How the command line reports failure: one line on stderr, and the exit code `main` maps it to."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from otel_puppy.exceptions import PolicyErrors

__all__ = ("ServiceError", "print_error", "print_policy_errors")


class ServiceError(Exception):
    """A running service could not be asked: unreachable, refused the token, or answered an error."""


def print_error(message: str) -> None:
    """`error: message` in red on stderr (markup in `message` is shown as text)."""
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {escape(message)}")


def print_policy_errors(exc: PolicyErrors) -> None:
    """Every error as `file:line:column: ...` on stderr, then the count."""
    for error in exc.errors:
        print(error, file=sys.stderr)
    print(f"{len(exc.errors)} error(s)", file=sys.stderr)
