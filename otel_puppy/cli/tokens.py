"""`otel-puppy token create|list|revoke`: the tokens file, edited in place (its comments kept).

`create` draws a random secret (256 bits, `puppy_` then 43 URL-safe characters), writes its SHA-256
with the token's name, roles, scope and expiry, and prints the secret once on stdout, alone, so
`otel-puppy token create collector --role ingest > collector.secret` keeps it in a file; what to do
with it goes to stderr. The file is replaced atomically (a running service polling it never reads half
of it) and checked before and after: a file that does not load is never edited.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from otel_puppy.cli.errors import print_error, print_policy_errors

__all__ = ("SECRET_PREFIX", "new_secret", "register")

SECRET_PREFIX: Final = "puppy_"  # noqa: S105 - a prefix, not a secret
"""Every secret `token create` draws starts with this, so secret scanners and people can tell one."""
_HEADER: Final = (
    "# otel_puppy bearer tokens: each one's name, the SHA-256 of its secret (never the secret), roles and scope.\n"
    "# Written by `otel-puppy token create`; `otel-puppy serve` reloads this file when it changes.\n"
)


def new_secret() -> str:
    """A fresh secret: 256 random bits."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `token` (`create`, `list`, `revoke`) to the command line."""
    from otel_puppy.server.tokens import SCOPE_DIMENSIONS, Role

    token = commands.add_parser(
        "token",
        help="create, list or revoke the service's bearer tokens (the tokens file)",
        description="Edit the tokens file: OTEL_PUPPY_TOKENS_FILE, else tokens.yaml beside the policies. "
        "A running `otel-puppy serve` picks the change up within a second.",
    )
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="add a token; print its secret once",
        description="Add a token with a new random secret, printed once on stdout (alone: redirect it to a file). "
        "Roles: ingest (POST /v1/traces), decide (POST /v1/decide), read (GET /v1/*, /metrics), "
        "admin (POST /v1/policies/reload). A scope binds the token to one team (or environment, agent...): "
        "its spans are stamped with it, its decisions and reads stay in it.",
    )
    create.add_argument("name", help="letters, digits, '.', '_', '-' (at most 64): what logs call the token")
    create.add_argument(
        "--role",
        dest="roles",
        action="append",
        required=True,
        choices=[role.value for role in Role],
        help="a role of the token (repeat for several)",
    )
    for dimension in SCOPE_DIMENSIONS:
        create.add_argument(
            f"--{dimension}", default=None, metavar="VALUE", help=f"scope the token to this {dimension}"
        )
    create.add_argument(
        "--expires", default=None, metavar="WHEN", help="a date (2026-06-30, at 00:00 UTC) or a time with its offset"
    )
    create.add_argument("--replace", action="store_true", help="replace the token of that name (a new secret)")
    _file_option(create)
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="the tokens: names, roles, scopes, expiry (never a secret)")
    _file_option(listing)
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser("revoke", help="remove a token; a running service refuses it within a second")
    revoke.add_argument("name")
    _file_option(revoke)
    revoke.set_defaults(handler=_revoke)


def _file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help="the tokens file (default OTEL_PUPPY_TOKENS_FILE, else tokens.yaml beside the policies)",
    )


def _tokens_file(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    from otel_puppy.settings import DEFAULT_TOKENS_FILE, PuppySettings

    settings = PuppySettings.load()
    if settings.tokens_file is not None:
        return settings.tokens_file
    return Path(settings.policies).absolute().parent / DEFAULT_TOKENS_FILE


def _create(args: argparse.Namespace) -> int:
    import hashlib

    from pydantic import ValidationError

    from otel_puppy.server.tokens import MAX_TOKENS, SCOPE_DIMENSIONS, TokenEntry

    path = _tokens_file(args)
    secret = new_secret()
    fields: dict[str, Any] = {"name": args.name, "sha256": hashlib.sha256(secret.encode()).hexdigest()}
    fields["roles"] = list(dict.fromkeys(args.roles))
    scope = {d: getattr(args, d) for d in SCOPE_DIMENSIONS if getattr(args, d) is not None}
    if scope:
        fields["scope"] = scope
    if args.expires is not None:
        fields["expires"] = args.expires
    try:
        entry = TokenEntry.model_validate(fields)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"])
            print_error(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
        return 2
    if entry.scope and "admin" in entry.roles:
        print_error("an admin token cannot be scoped: reloading policies changes them for every team")
        return 2
    document = _read(path)
    if document is None:
        return 1
    tokens = document["tokens"]
    taken = [index for index, item in enumerate(tokens) if item.get("name") == entry.name]
    if taken and not args.replace:
        print_error(f"{path} has a token named {entry.name!r} already (--replace gives it a new secret)")
        return 1
    for index in reversed(taken):
        del tokens[index]
    if len(tokens) >= MAX_TOKENS:
        print_error(f"{path} has {len(tokens)} tokens, the most a tokens file takes ({MAX_TOKENS})")
        return 1
    written: dict[str, Any] = {"name": entry.name, "sha256": entry.sha256, "roles": [r.value for r in entry.roles]}
    if entry.scope:
        written["scope"] = dict(entry.scope)
    if args.expires is not None:
        written["expires"] = args.expires.strip()
    tokens.append(_flow(written))
    if not _write(path, document):
        return 1
    print(secret, flush=True)
    scope_text = f", scope {','.join(f'{d}={v}' for d, v in scope.items())}" if scope else ""
    print(
        f"{'replaced' if taken else 'added'} token {entry.name!r} (roles {','.join(written['roles'])}{scope_text}) "
        f"in {path}. Its secret is above, shown this once: only its SHA-256 is kept. Clients send it as "
        "'Authorization: Bearer <secret>' (OTEL_PUPPY_API_TOKEN for `otel-puppy decide`/`status`).",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from otel_puppy.exceptions import PolicyErrors
    from otel_puppy.server.tokens import load_token_entries

    path = _tokens_file(args)
    try:
        entries = load_token_entries(path)
    except PolicyErrors as exc:
        print_policy_errors(exc)
        return 1
    for entry in entries:
        scope = ",".join(f"{d}={v}" for d, v in (entry.scope or {}).items()) or "-"
        expires = entry.expires.isoformat().replace("+00:00", "Z") if entry.expires is not None else "-"
        print(f"{entry.name}\troles={','.join(entry.roles)}\tscope={scope}\texpires={expires}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    path = _tokens_file(args)
    document = _read(path, create=False)
    if document is None:
        return 1
    tokens = document["tokens"]
    taken = [index for index, item in enumerate(tokens) if item.get("name") == args.name]
    if not taken:
        print_error(f"{path} has no token named {args.name!r}")
        return 1
    for index in reversed(taken):
        del tokens[index]
    if not _write(path, document):
        return 1
    print(f"revoked token {args.name!r} in {path}; a running service refuses it within a second", file=sys.stderr)
    return 0


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: the file's comments and layout are kept
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


def _read(path: Path, *, create: bool = True) -> Any:
    """The file as a round-trip document with a `tokens` list, or None (said why). A missing file is
    an empty one when `create`."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    from otel_puppy.exceptions import PolicyErrors
    from otel_puppy.server.tokens import load_token_entries

    if not path.exists():
        if not create:
            print_error(f"there is no tokens file at {path}")
            return None
        document = _yaml().load(_HEADER + "tokens: []\n")
        document["tokens"] = CommentedSeq()
        return document
    try:
        load_token_entries(path)  # never edit a file that does not load
    except PolicyErrors as exc:
        print_policy_errors(exc)
        return None
    document = _yaml().load(path.read_text(encoding="utf-8-sig"))
    if document is None:
        document = CommentedMap()
    if document.get("tokens") is None:
        document["tokens"] = CommentedSeq()
    return document


def _flow(entry: dict[str, Any]) -> Any:
    """`roles` and `scope` written inline, as people write them: `roles: [read]`, `scope: {team: x}`."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    mapping = CommentedMap()
    for key, value in entry.items():
        if isinstance(value, list):
            value = CommentedSeq(value)  # noqa: PLW2901 - the same value, in its YAML form
            value.fa.set_flow_style()
        elif isinstance(value, dict):
            value = CommentedMap(value)  # noqa: PLW2901
            value.fa.set_flow_style()
        mapping[key] = value
    return mapping


def _write(path: Path, document: Any) -> bool:
    """Replace the file atomically with `document`, if what is written loads; False (said why) if not."""
    from otel_puppy.exceptions import PolicyErrors
    from otel_puppy.server.tokens import parse_token_entries

    if isinstance(document.get("tokens"), list) and not document["tokens"]:
        document["tokens"].fa.set_flow_style()  # `tokens: []`, not `tokens:` (null)
    else:
        document["tokens"].fa.set_block_style()
    buffer = io.StringIO()
    _yaml().dump(document, buffer)
    text = buffer.getvalue()
    text += "" if text.endswith("\n") else "\n"
    try:
        parse_token_entries(text, path)
    except PolicyErrors as exc:  # our own bug: never leave a file the service cannot read
        print_policy_errors(exc)
        return False
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        print_error(f"cannot write {path}: {exc.strerror or exc}")
        return False
    return True
