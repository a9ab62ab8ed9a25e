"""One exception hierarchy, rooted at `PuppyError`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otel_puppy.decision import Decision

__all__ = (
    "CircuitOpenError",
    "InvalidSpanError",
    "PolicyDenied",
    "PolicyError",
    "PolicyErrors",
    "PuppyError",
    "RegistryInUse",
    "RequestError",
    "SettingsError",
    "StoreCorruptError",
    "StoreError",
)


class PuppyError(Exception):
    """Base class of every error otel_puppy raises on purpose."""


class PolicyError(PuppyError):
    """A policy file is wrong at a precise place.

    `str(error)` reads like a compiler message: `policies/budgets.yaml:12:5: budgets[0].limit_usd: ...`.
    """

    def __init__(self, file: Path | str, line: int | None, column: int | None, message: str, path: str = "") -> None:
        self.file = Path(file)
        self.line = line
        self.column = column
        self.path = path
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f"{self.path}: " if self.path else ""
        return f"{where}: {field}{self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.file, self.line, self.column, self.message, self.path))


class PolicyErrors(PuppyError):
    """Every error found while loading a policy set, so users fix them in one pass."""

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class StoreError(PuppyError):
    """The state store could not do what was asked (unreachable, read-only, corrupt)."""


class StoreCorruptError(StoreError):
    """The store's file is damaged (or is not a state file): retrying will not help.

    Raised when a SQLite store finds corruption, at start (`PRAGMA quick_check`) or at run time
    (`SQLITE_CORRUPT`, `SQLITE_NOTADB`, "database disk image is malformed"). The message names the
    file and what to do: restore it from a backup, or move it aside to start with empty state.
    Answer it as a permanent failure (never one a client should retry) and as not ready.
    """

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.path))


class RequestError(PuppyError, ValueError):
    """A decision request carries a value otel_puppy refuses: nothing was decided or reserved.

    The caller's own bug (or an attack), so it is raised, never answered by the fail mode; the HTTP
    API answers `422` with the message. `field` names the request field, e.g. `estimated_cost_usd`.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.message))


class RegistryInUse(PuppyError):
    """A live `PolicyEngine` already exports its metrics on this Prometheus registry.

    Two engines on one registry would write every series twice. Give the second engine its own
    (`registry=prometheus_client.CollectorRegistry()`), or `close()` the first: that unregisters it.
    `registry` describes the registry (the default one is named `prometheus_client.REGISTRY`).
    """

    def __init__(self, registry: str) -> None:
        self.registry = registry
        super().__init__(
            f"{registry} already exports the metrics of a live otel_puppy PolicyEngine: pass this engine "
            "its own registry (registry=prometheus_client.CollectorRegistry()) or close() the first engine"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.registry,))


class InvalidSpanError(PuppyError):
    """A span looks like a model call but its attributes cannot be used."""


class SettingsError(PuppyError):
    """Settings are invalid; the message names each `OTEL_PUPPY_*` variable that is wrong."""


class CircuitOpenError(PuppyError):
    """A circuit breaker is open (or half-open with no probe left): the call was not made."""

    def __init__(self, breaker: str, subject: str, retry_after_s: float) -> None:
        self.breaker = breaker
        self.subject = subject
        self.retry_after_s = retry_after_s
        super().__init__(f"circuit {breaker} is open for {subject}; retry in {retry_after_s:.1f}s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.breaker, self.subject, self.retry_after_s))


class PolicyDenied(PuppyError):
    """A decision said `deny`; the call was not made. `decision` says why and when to retry."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        reasons = "; ".join(hit.message for hit in decision.reasons if hit.action.value == "deny")
        super().__init__(f"denied: {reasons or 'by policy'}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.decision,))
