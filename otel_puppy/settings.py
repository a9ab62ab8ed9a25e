"""Settings, from `OTEL_PUPPY_*` environment variables, a `.env` file, or keyword arguments."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from otel_puppy.bounds import MAX_CALL_COST_USD, MAX_CALL_TOKENS, MAX_DECODE_PROCESSES, MAX_SPAN_LATENESS_S, CallLimits
from otel_puppy.exceptions import SettingsError
from otel_puppy.store.base import MAX_SAMPLES, SCHEMES

__all__ = ("DEFAULT_TOKENS_FILE", "PuppySettings", "redact_url", "running_under_pytest")

DEFAULT_TOKENS_FILE = "tokens.yaml"
"""The tokens file's name beside the policies (`PuppySettings.tokens_path`)."""


def running_under_pytest() -> bool:
    """True inside a pytest run: internal errors are then re-raised instead of swallowed."""
    return "PYTEST_VERSION" in os.environ or "pytest" in sys.modules


class PuppySettings(BaseSettings):
    """Everything that varies between deployments.

    >>> PuppySettings(store="memory://", timezone="Europe/Paris").timezone
    'Europe/Paris'
    """

    model_config = SettingsConfigDict(
        env_prefix="OTEL_PUPPY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        # A `ValidationError` would quote every input, passwords in URLs included; `load` says what
        # was wrong with each, without the secrets.
        hide_input_in_errors=True,
    )

    policies: Path = Path("policies")
    """A directory of `*.yaml`/`*.yml` policy files, or one file."""
    allow_no_policies: bool = False
    """True: no policy files at `policies` is intended (nothing enforced; prices and metrics only).
    Otherwise `from_settings()` warns and `otel-puppy check`/`serve` exit 1, naming the path."""
    store: str = "memory://"
    """`memory://`, `sqlite:///path/to/state.db` or `redis://host:port/db`."""
    host: str = "127.0.0.1"
    """Address `otel-puppy serve` binds to."""
    port: int = Field(default=4319, ge=0, le=65535)
    """Port for OTLP/HTTP, the decision API and `/metrics`."""
    api_token: SecretStr | None = None
    """Bearer token required on every endpoint but health checks, with every role; to bind beyond loopback,
    this or a tokens file is required. Clients (`DecisionClient.from_settings`, `decide`, `status`) send it."""
    tokens_file: Path | None = None
    """`serve`: the tokens file (YAML: each token's name, SHA-256, roles, scope; `otel-puppy token create`
    writes it), hot-reloaded. Unset: `tokens.yaml` beside the policies, if there is one when `serve` starts."""
    timezone: str = "UTC"
    """IANA timezone of calendar windows (`day` resets at local midnight)."""

    queue_size: int = Field(default=20_000, ge=1, le=1_000_000)
    """Spans the span processor holds for its worker before it drops (and counts) new ones (at most a
    million: a few KB each, the queue's memory stays bounded)."""
    max_label_values: int = Field(default=200, ge=1, le=10_000)
    """Distinct values a metric label may take before further values are folded into `other` (at most
    10,000: past that a label is an id, and the series would not be bounded)."""
    dedupe_ttl_s: float = Field(default=24 * 3600, gt=0, le=400 * 86400, allow_inf_nan=False)
    """How long a span id is remembered, so a retried span is never counted twice (at most 400 days)."""
    watch_policies_s: float | None = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
    """Poll the policy files this often (at most an hour apart) and reload on change; unset to only
    reload on request."""
    reservation_ttl_s: float = Field(default=300.0, gt=0, le=86400, allow_inf_nan=False)
    """How long a `decide()` reservation waits for the span that settles it before it expires (at most
    a day: a reservation that never expired would hold its budget for good)."""
    learned_estimates: bool = True
    """A decision without an estimate reserves a learned one: a high quantile of what the last calls of
    the same agent, provider and model cost (`learned.py`). False: no estimate, nothing reserved."""
    learned_quantile: float = Field(default=0.95, ge=0.5, le=1.0, allow_inf_nan=False)
    """The quantile learned (nearest rank over the kept samples): 0.95 is the 95th percentile."""
    learned_min_calls: int = Field(default=20, ge=1, le=MAX_SAMPLES)
    """Calls seen (for the agent, else for the provider and model) before an estimate is learned."""
    learned_samples: int = Field(default=100, ge=1, le=MAX_SAMPLES)
    """Calls kept per agent, provider and model: the newest; older ones no longer count."""
    learned_max_age_s: float = Field(default=7 * 86400, gt=0, le=400 * 86400, allow_inf_nan=False)
    """Calls older than this no longer count; a series unwritten for this long is forgotten."""
    learned_refresh_s: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    """How often a learned estimate is read again from the store (other replicas' calls); this
    process's own calls count at once."""
    ledger: bool = True
    """Keep the cost ledger: hourly spend, tokens by type and calls per provider, model, service, agent,
    team and environment, written with the spend (`ledger.py`): what `otel-puppy export focus` and
    `status --by` read."""
    ledger_retention_days: int = Field(default=400, ge=1, le=3660)
    """How long ledger rows are kept (the memory store keeps 35 days at most)."""
    alert_webhook_url: str | None = None
    """POST alert events as JSON here (the only URL otel_puppy fetches)."""
    fail_open: bool = True
    """When otel_puppy itself fails (store down, internal error), allow calls (True) or deny them."""
    raise_internal_errors: bool | None = None
    """Re-raise internal errors instead of counting them; unset means: only under pytest."""
    head_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """`serve`: a connection must send a request's line and headers within this (from connecting, or
    from the end of its previous response), or it is closed: idle and slowloris clients hold nothing."""
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """`serve`: a request body must arrive within this (16 MiB at 0.6 MB/s), else `408` and the
    connection is closed. Nothing else is held while a body arrives but the bytes received."""
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    """`serve`: an idle keep-alive connection is closed after this."""
    max_connections: int = Field(default=1000, ge=1, le=100_000)
    """`serve`: past this many open connections (or requests in progress) new requests get `503`
    (uvicorn's `limit_concurrency`), so file descriptors never run out."""
    decode_processes: int | None = Field(default=None, ge=0, le=MAX_DECODE_PROCESSES)
    """`serve`: processes that decode OTLP bodies and read their spans while the service's own applies
    the batches before them (`server/decoder.py`; each about 80 MB). Unset: one when the service may run
    on two CPUs or more, else none; 0: decoded in the service's own threads. At most 16."""
    ingest_memory_limit_bytes: int = Field(default=1024 * 1024 * 1024, ge=64 * 1024 * 1024, le=1 << 40)
    """`serve`: memory that OTLP bodies being read and decoded may reserve in all (an upper bound
    per body, see `server/memory.py`); over it an export gets `503` with `Retry-After`."""
    max_call_tokens: int = Field(default=MAX_CALL_TOKENS, ge=1, le=MAX_CALL_TOKENS)
    """A span with a token count over this is rejected (OTLP `partial_success`; `spans_total{result="rejected"}`).
    The default, 10x the largest context window, is also the most it can be (see `otel_puppy.bounds`)."""
    max_call_cost_usd: Decimal = Field(default=MAX_CALL_COST_USD, gt=0, le=MAX_CALL_COST_USD, allow_inf_nan=False)
    """A span reporting a cost (`operation.cost`, `gen_ai.usage.cost`) over this is rejected, like tokens."""
    max_span_lateness_s: float = Field(default=MAX_SPAN_LATENESS_S, ge=0, le=30 * 86400, allow_inf_nan=False)
    """A span that ended further than this before (or after) it arrived is charged at its arrival time and
    counted in `otel_puppy_late_spans_total{direction}`: spend is never in the metrics but missing from
    every budget.
    One hour covers the Collector's retries (five minutes by default) and the span processor's own."""

    forward_url: str | None = Field(default=None, max_length=2048)
    """`serve`: pass every span received on to `<url>/v1/traces` (OTLP/HTTP protobuf), each model call
    with its cost written on (`gen_ai.usage.cost.amount`); an `http://` or `https://` URL."""
    forward_headers: SecretStr | None = None
    """Headers for the downstream, as `OTEL_EXPORTER_OTLP_HEADERS` writes them: `key=value,key2=value2`,
    values URL-encoded (`Authorization=Bearer%20abc`). Never logged."""
    forward_compression: Literal["gzip", "none"] = "gzip"
    forward_queue_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=1 << 40)
    """Batches acknowledged upstream and not yet accepted downstream, in bytes as sent; past it
    `POST /v1/traces` answers `503` with `Retry-After` (the Collector retries) and `/readyz` fails."""
    forward_timeout_s: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    """One delivery attempt to the downstream, connecting included."""

    @classmethod
    def load(cls, **overrides: object) -> PuppySettings:
        """Build settings, turning validation errors into one `SettingsError` naming each variable.

        Raises:
            SettingsError: e.g. `OTEL_PUPPY_PORT: Input should be a valid integer (got 'x')`.
        """
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            lines = []
            for error in exc.errors():
                field = ".".join(str(part) for part in error["loc"])
                name = f"OTEL_PUPPY_{field.upper()}" if field else "settings"
                secret = field in {"", "api_token", "forward_headers"}
                got = "" if secret else f" (got {_shown(field, error.get('input'))!r})"
                lines.append(f"{name}: {error['msg']}{got}")
            raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None

    @field_validator("forward_headers")
    @classmethod
    def _bounded_headers(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) > 8192:
            raise ValueError("at most 8192 characters")
        return value

    @field_validator("forward_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  # raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host, e.g. http://collector:4318")
        if parts.query or parts.fragment:
            raise ValueError("expected no query or fragment: /v1/traces is added to the URL's path")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r} (e.g. 'UTC', 'Europe/Paris')") from None
        return value

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value.partition("://")[0] not in SCHEMES or "://" not in value:
            shown = redact_url(value)
            raise ValueError(f"store must be memory://, sqlite:///path or redis://host:port/db, not {shown!r}")
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _http_webhook(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None  # `OTEL_PUPPY_ALERT_WEBHOOK_URL=` (a template left empty): no webhook
        if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc):
            raise ValueError(f"must be an http:// or https:// URL, not {redact_url(value, keep_path=False)!r}")
        return value

    @field_validator("tokens_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # `OTEL_PUPPY_TOKENS_FILE=`

    @field_validator("api_token")
    @classmethod
    def _real_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is set but empty: set a real token, or unset it")
        return value

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> PuppySettings:
        if self.api_token is None and self.tokens_path is None and not _is_loopback(self.host):
            raise ValueError(
                f"binding to {self.host!r} (beyond loopback) needs OTEL_PUPPY_API_TOKEN or a tokens file "
                "(OTEL_PUPPY_TOKENS_FILE) to be set"
            )
        return self

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # `repr(settings)` and `str(settings)` end up in logs and bug reports: no secrets in them.
        for name, value in super().__repr_args__():
            yield name, _shown(name, value) if isinstance(value, str) else value

    @property
    def tokens_path(self) -> Path | None:
        """The tokens file `serve` reads: `tokens_file`, else `tokens.yaml` beside the policies if it is there."""
        if self.tokens_file is not None:
            return self.tokens_file
        beside = Path(self.policies).absolute().parent / DEFAULT_TOKENS_FILE
        return beside if beside.is_file() else None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def call_limits(self) -> CallLimits:
        """The bounds spans are held to."""
        return CallLimits(max_tokens=self.max_call_tokens, max_cost_usd=self.max_call_cost_usd)

    @property
    def reraise(self) -> bool:
        return running_under_pytest() if self.raise_internal_errors is None else self.raise_internal_errors


def redact_url(url: str, *, keep_path: bool = True) -> str:
    """`url` fit to print: the credentials in it hidden, and unless `keep_path`, its path and query
    too (a webhook URL's path is often its secret).

    >>> redact_url("redis://:hunter2@cache:6379/0")
    'redis://***@cache:6379/0'
    >>> redact_url("https://hooks.example.com/services/T0/B0/XyZ?token=1", keep_path=False)
    'https://hooks.example.com/***'
    """
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "***"
    credentials = "***@" if "@" in parts.netloc else ""
    if keep_path:
        rest = parts.path + (f"?{parts.query}" if parts.query else "")
    else:
        rest = "/***" if (parts.path.strip("/") or parts.query or parts.fragment) else parts.path
    return f"{parts.scheme}://{credentials}{host}{rest}" if parts.scheme else "***"


_URLS = {"store": True, "alert_webhook_url": False, "forward_url": True}
"""Settings holding a URL that may carry a secret, and whether its path can be shown."""


def _shown(field: str | None, value: object) -> object:
    if field in _URLS and isinstance(value, str):
        return redact_url(value, keep_path=_URLS[field])
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
