"""Bearer tokens by role and scope: the tokens file, read with `file:line:column` errors, and hot-reloaded.

The file (YAML) names each token and holds the SHA-256 of its secret, never the secret:

    tokens:
      - name: collector-search          # what logs, errors and audit lines call the token
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        roles: [ingest]                 # ingest | decide | read | admin, one or more
        scope: {team: search}           # optional: agent, service, user, team, environment, conversation
      - name: grafana-search
        sha256: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
        roles: [read]
        scope: {team: search}
        expires: 2026-06-30             # optional: a date (00:00 UTC) or a time with its UTC offset

`otel-puppy token create NAME --role ... [--team ...]` draws a 256-bit secret, prints it once and adds its
line. A request's token is found by the SHA-256 of what it presents, then confirmed by one constant-time
comparison of equal lengths, whatever the number of tokens: no slow password hash on the request path,
as the secrets are random, not chosen by people. `OTEL_PUPPY_API_TOKEN` is one more token, with every role.

A `Keyring` holds the tokens in force (`book`, replaced whole, so the gate reads it without a lock) and
polls the file like the policies (`policies.watch`): an edit takes effect within `TOKENS_POLL_S`; a broken,
missing or unreadable file is logged with every error at `file:line:column` and the last good tokens stay.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from otel_puppy.bounds import MAX_NAME_LENGTH
from otel_puppy.exceptions import PolicyError, PolicyErrors
from otel_puppy.policies.watch import FileWatcher, fingerprint

__all__ = (
    "ALL_ROLES",
    "API_TOKEN_NAME",
    "MAX_FILE_BYTES",
    "MAX_TOKENS",
    "MAX_TOKEN_NAME_LENGTH",
    "SCOPE_DIMENSIONS",
    "TOKENS_POLL_S",
    "Keyring",
    "Role",
    "Token",
    "TokenBook",
    "TokenEntry",
    "TokenFileErrors",
    "TokenScope",
    "digest",
    "load_token_entries",
    "parse_token_entries",
)

logger = logging.getLogger("otel_puppy.audit")

MAX_TOKENS: Final = 1000
"""Tokens in one file: one per client kind and team is tens; a thousand is a large organisation."""
MAX_TOKEN_NAME_LENGTH: Final = 64
MAX_FILE_BYTES: Final = 1024 * 1024
"""Largest tokens file read (a thousand fully scoped tokens take about half of it)."""
TOKENS_POLL_S: Final = 1.0
"""How often the tokens file is polled: a token removed from it stops working within this (and the
time to read the file). Always polled, even with `watch_policies_s` unset: revoking a token must not
wait for a restart or for someone to ask."""
_MAX_DEPTH: Final = 8
"""Deepest nesting read (the grammar needs 4)."""
API_TOKEN_NAME: Final = "OTEL_PUPPY_API_TOKEN"  # noqa: S105 - a name, not a secret
"""The name the single `api_token` goes by in logs and errors."""


class Role(StrEnum):
    """What a token may do. An endpoint needs one role; a token carries one or more."""

    INGEST = "ingest"
    """`POST /v1/traces`."""
    DECIDE = "decide"
    """`POST /v1/decide` (the decision carries all an agent needs to act on it)."""
    READ = "read"
    """`GET /v1/*`, `/metrics`."""
    ADMIN = "admin"
    """`POST /v1/policies/reload`: what changes the service's state for everyone."""


ALL_ROLES: Final = frozenset(Role)

ScopeDimension = Literal["agent", "service", "user", "team", "environment", "conversation"]
"""The dimensions a token can be scoped to: who calls, and where from. Not `provider`, `model` or
`operation`, which say what is called: stamping them onto spans would price calls as another model."""
SCOPE_DIMENSIONS: Final[tuple[ScopeDimension, ...]] = get_args(ScopeDimension)

_NAME: Final = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_TOKEN_NAME_LENGTH - 1}}}")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_GLOB_OR_CONTROL: Final = re.compile(r"[*?\[\]\x00-\x1f\x7f]")


def digest(secret: str | bytes) -> bytes:
    """The SHA-256 of a presented secret, as the tokens file keeps it (in hex)."""
    return hashlib.sha256(secret.encode("utf-8") if isinstance(secret, str) else secret).digest()


def _scope_value(value: str) -> str:
    if _GLOB_OR_CONTROL.search(value):
        raise ValueError("a scope value is one exact value: no glob characters (*?[]) and no control characters")
    return value


ScopeValue = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH)]


class TokenEntry(BaseModel):
    """One token of the file, as written (`name`, `sha256`, `roles`, optional `scope` and `expires`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str
    """What logs, errors and audit lines call the token: letters, digits, `.`, `_`, `-`, at most 64."""
    sha256: str
    """The SHA-256 of the secret in hex (64 digits), never the secret."""
    roles: Annotated[tuple[Role, ...], Field(min_length=1, max_length=len(Role))]
    scope: dict[ScopeDimension, ScopeValue] | None = None
    expires: AwareDatetime | None = None
    """From this moment on the token is refused (`401`, reason `expired`)."""

    @field_validator("name", mode="before")
    @classmethod
    def _plain_name(cls, value: object) -> object:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise ValueError(
                f"a token's name is 1 to {MAX_TOKEN_NAME_LENGTH} letters, digits, '.', '_' or '-', "
                "starting with a letter or a digit"
            )
        return value

    @field_validator("sha256", mode="before")
    @classmethod
    def _hex_digest(cls, value: object) -> object:
        # never echoed: someone may have pasted the secret itself here
        if not isinstance(value, str) or not _HEX64.fullmatch(value.strip().lower()):
            raise ValueError("must be 64 hex digits: the SHA-256 of the secret, never the secret itself")
        return value.strip().lower()

    @field_validator("roles", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("roles")
    @classmethod
    def _distinct(cls, value: tuple[Role, ...]) -> tuple[Role, ...]:
        return tuple(dict.fromkeys(value))

    @field_validator("scope")
    @classmethod
    def _exact_values(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if not value:
                raise ValueError("an empty scope is no scope: leave the key out")
            for item in value.values():
                _scope_value(item)
        return value

    @field_validator("expires", mode="before")
    @classmethod
    def _date_or_time_with_offset(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        try:
            if _DATE.fullmatch(text):
                return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("not a date (2026-06-30) nor a time with its offset (2026-06-30T18:00:00Z)") from None
        if moment.utcoffset() is None:
            raise ValueError("give the time's UTC offset, e.g. 2026-06-30T18:00:00Z, or a date alone (00:00 UTC)")
        return moment

    def expires_at(self) -> float | None:
        """Epoch seconds, or None: never expires."""
        return self.expires.timestamp() if self.expires is not None else None


class _TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    tokens: Annotated[tuple[TokenEntry, ...], Field(max_length=MAX_TOKENS)] = ()


@dataclass(frozen=True, slots=True)
class TokenScope:
    """The dimension values a token is bound to, in `SCOPE_DIMENSIONS` order; empty: not scoped.

    `namespace` keeps dedupe keys apart per scope (see `server.scoping.stamp`)."""

    values: tuple[tuple[ScopeDimension, str], ...] = ()
    text: str = field(init=False, default="")
    """`team=search,environment=prod`, for messages."""
    namespace: str = field(init=False, default="")
    """A short digest of the scope, ending in `:` (empty when not scoped): prefixed to dedupe keys."""

    def __post_init__(self) -> None:
        if self.values:
            text = ",".join(f"{dimension}={value}" for dimension, value in self.values)
            digest_hex = hashlib.blake2b(("\0".join(f"{d}\0{v}" for d, v in self.values)).encode(), digest_size=8)
            object.__setattr__(self, "text", text)
            object.__setattr__(self, "namespace", f"{digest_hex.hexdigest()}:")

    @classmethod
    def of(cls, values: Mapping[ScopeDimension, str] | None) -> TokenScope:
        given = values or {}
        return cls(tuple((d, given[d]) for d in SCOPE_DIMENSIONS if d in given))

    def __bool__(self) -> bool:
        return bool(self.values)

    def get(self, dimension: str) -> str | None:
        for name, value in self.values:
            if name == dimension:
                return value
        return None


_UNSCOPED: Final = TokenScope()


@dataclass(frozen=True, slots=True)
class Token:
    """Who a request is: a token's name, roles, scope and expiry. Never its secret nor its digest, so
    nothing that prints a `Token` (a log line, an error, a repr) can leak either."""

    name: str
    roles: frozenset[Role]
    scope: TokenScope = _UNSCOPED
    expires_at: float | None = None

    def __repr__(self) -> str:
        scope = f", scope={self.scope.text!r}" if self.scope else ""
        return f"Token({self.name!r}, roles={','.join(sorted(self.roles))}{scope})"

    @property
    def roles_text(self) -> str:
        return ",".join(role.value for role in Role if role in self.roles) or "none"

    @classmethod
    def of(cls, entry: TokenEntry) -> Token:
        return cls(entry.name, frozenset(entry.roles), TokenScope.of(entry.scope), entry.expires_at())


@dataclass(frozen=True, slots=True)
class TokenBook:
    """The tokens in force, by the SHA-256 of their secret; replaced whole, never changed."""

    by_digest: Mapping[bytes, Token]
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.by_digest)

    def names(self) -> list[str]:
        return sorted(token.name for token in self.by_digest.values())

    @classmethod
    def of(
        cls, entries: Iterable[TokenEntry], *, api_token: str | None = None, source: Path | None = None
    ) -> TokenBook:
        tokens = {bytes.fromhex(entry.sha256): Token.of(entry) for entry in entries}
        if api_token is not None:
            # the operator's token: every role, no scope (a file line with the same secret is shadowed)
            tokens[digest(api_token.strip())] = Token(API_TOKEN_NAME, ALL_ROLES)
        return cls(tokens, source)


class TokenFileErrors(PolicyErrors):
    """Every error of a tokens file, each a `PolicyError` at `file:line:column` with its field path.

    A `PolicyErrors`, so whatever prints policy errors prints these too. Values are never quoted: the
    file's `sha256` values may be secrets pasted in the wrong place."""


class Keyring(FileWatcher):
    """The tokens in force (`book`) and the file they come from, polled every `interval_s` once `start`ed.

    Without a file, the book holds the `api_token` alone (or nothing: then `enabled` is False and the
    service is open, as on loopback without a token). A file that is broken, missing or unreadable
    when polled keeps the last good book; `last_error` says why until the next good load.

    Raises:
        TokenFileErrors: at construction, the file cannot be used (the service must not start).
    """

    def __init__(self, path: Path | None, *, api_token: str | None = None, interval_s: float = TOKENS_POLL_S) -> None:
        super().__init__(path, self._put_in_force, interval_s, refused=TokenFileErrors, name="otel-puppy-token-watch")
        self._api_token = api_token
        self.book: TokenBook = self._load()

    @property
    def enabled(self) -> bool:
        """Whether requests need a token at all: a tokens file, or `api_token`, is configured."""
        return self.path is not None or self._api_token is not None

    def _load(self) -> TokenBook:
        if self.path is None:
            return TokenBook.of((), api_token=self._api_token)
        return TokenBook.of(load_token_entries(self.path), api_token=self._api_token, source=self.path)

    def _put_in_force(self) -> None:
        self.book = self._load()

    def reload(self) -> TokenBook:
        """Read the file again and put its tokens in force.

        Raises:
            TokenFileErrors: the file cannot be used; the tokens in force stay.
        """
        self._seen = fingerprint(self.path) if self.path is not None else ()
        self._put_in_force()
        return self.book

    def refused(self, error: PolicyErrors) -> None:
        errors = "\n  ".join(str(each) for each in error.errors)
        logger.error(
            "the tokens file %s cannot be used; the last good tokens (%d) stay in force:\n  %s",
            self.path,
            len(self.book),
            errors,
        )

    def reloaded(self) -> None:
        names = ", ".join(self.book.names())
        logger.info("tokens file %s changed; %d tokens in force: %s", self.path, len(self.book), names)


# --- reading the file ---------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


def load_token_entries(path: Path | str) -> tuple[TokenEntry, ...]:
    """Read and validate a tokens file.

    Raises:
        TokenFileErrors: every problem, each at `file:line:column` (a file that cannot be read: its path).
    """
    file = Path(path)
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)  # never more, whatever the file's size
    except OSError as exc:
        raise TokenFileErrors([PolicyError(file, None, None, f"cannot read: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        message = f"larger than {MAX_FILE_BYTES} bytes, the limit for a tokens file"
        raise TokenFileErrors([PolicyError(file, None, None, message)])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TokenFileErrors([PolicyError(file, line, None, "not valid UTF-8; a tokens file is UTF-8 text")]) from None
    return parse_token_entries(text, file)


def parse_token_entries(text: str, file: Path | str) -> tuple[TokenEntry, ...]:
    """Validate a tokens file's content; `file` only names it in errors.

    Raises:
        TokenFileErrors: every problem found, in file order.
    """
    reader = _Reader(Path(file))
    try:
        node = _compose(text)
    except RecursionError:
        raise reader.fail((), f"nested too deeply (the limit is {_MAX_DEPTH} levels)") from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark is not None else None
        raise reader.fail((), f"invalid YAML: {exc.problem or exc.context or 'cannot parse'}", at=where) from None
    except YAMLError as exc:
        raise reader.fail((), f"invalid YAML: {type(exc).__name__}") from None
    data = reader.convert(node, (), 0) if node is not None else None
    if reader.errors:
        raise TokenFileErrors(reader.errors)
    if data is None:
        return ()  # an empty file: no tokens (every request but the probes is then refused)
    if not isinstance(data, dict):
        raise reader.fail((), "a tokens file is a mapping with one key, `tokens:`, a list of tokens")
    try:
        parsed = _TokensFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        locs = [tuple(error["loc"]) for error in errors]
        for loc, error in zip(locs, errors, strict=True):
            if any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
                continue  # `roles` is too short because `roles[0]` was refused: only the cause is news
            # a dict key pydantic refused (`scope.provider`) is shown at the key
            refused_key = loc[-1:] == ("[key]",)
            target = loc[:-1] if refused_key else loc
            message = str(error["msg"]).removeprefix("Value error, ")
            reader.error(target, message, key=refused_key or error["type"] == "extra_forbidden")
        raise TokenFileErrors(sorted(reader.errors, key=_position)) from None
    _check_entries(reader, parsed.tokens)
    if reader.errors:
        raise TokenFileErrors(sorted(reader.errors, key=_position))
    return parsed.tokens


def _compose(text: str) -> Node | None:
    yaml = YAML(typ="safe")
    yaml.max_depth = _MAX_DEPTH + 2
    node: Node | None = yaml.compose(text)  # nodes only: no tag ever constructs an object
    return node


def _check_entries(reader: _Reader, entries: tuple[TokenEntry, ...]) -> None:
    """What one entry's model cannot see: names and secrets used twice, and scoped admin tokens."""
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    for index, entry in enumerate(entries):
        at: Loc = ("tokens", index)
        first = names.setdefault(entry.name, index)
        if first != index:
            reader.error((*at, "name"), f"the name {entry.name!r} is taken by tokens[{first}]")
        first = digests.setdefault(entry.sha256, index)
        if first != index:
            reader.error((*at, "sha256"), f"the same secret as tokens[{first}]: every token needs its own")
        if entry.scope and Role.ADMIN in entry.roles:
            reader.error(
                (*at, "scope"),
                "an admin token cannot be scoped: reloading policies changes them for every team",
                key=True,
            )


@dataclass
class _Reader:
    """YAML nodes to plain data (every scalar as its text, or None), with where each part was written."""

    file: Path
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    errors: list[PolicyError] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)

    def convert(self, node: Node, loc: Loc, depth: int) -> Any:
        self.values[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if depth > _MAX_DEPTH:
            self.error(loc, f"nested too deeply (the limit is {_MAX_DEPTH} levels)")
            return None
        if id(node) in self._seen:
            self.error(loc, "aliases (*name) are not accepted in a tokens file: write each value out")
            return None
        self._seen.add(id(node))
        if isinstance(node, MappingNode):
            data: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    self.error(loc, "every key must be a plain name")
                    continue
                key = str(key_node.value)
                self.keys[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if key in data:
                    self.error((*loc, key), f"the key {key!r} is given twice", key=True)
                    continue
                data[key] = self.convert(value_node, (*loc, key), depth + 1)
            return data
        if isinstance(node, SequenceNode):
            return [self.convert(item, (*loc, index), depth + 1) for index, item in enumerate(node.value)]
        if isinstance(node, ScalarNode):
            return None if node.tag == "tag:yaml.org,2002:null" else str(node.value)
        self.error(loc, "not a value a tokens file takes")
        return None

    def mark(self, loc: Loc, *, key: bool = False) -> tuple[int, int] | None:
        if key and loc in self.keys:
            return self.keys[loc]
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.values:
                return self.values[loc[:end]]
        return None

    def error(self, loc: Loc, message: str, *, key: bool = False, at: tuple[int, int] | None = None) -> None:
        line, column = at or self.mark(loc, key=key) or (None, None)
        self.errors.append(PolicyError(self.file, line, column, message, _path(loc)))

    def fail(self, loc: Loc, message: str, *, at: tuple[int, int] | None = None) -> TokenFileErrors:
        self.error(loc, message, at=at)
        return TokenFileErrors(self.errors)


def _path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _position(error: PolicyError) -> tuple[int, int]:
    return (error.line or 0, error.column or 0)
