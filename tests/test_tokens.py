"""The tokens file (`server/tokens.py`), what a scoped token may do (`server/scoping.py`), `otel-puppy token`.

The service-level behaviour (every endpoint x role over HTTP, hot reload in a running `serve`) is in
tests/server/test_auth.py and tests/test_tokens_service.py; these helpers write the files they use.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytest

from otel_puppy.cli.tokens import SECRET_PREFIX, new_secret
from otel_puppy.decision import DecisionRequest, PolicyHit
from otel_puppy.exceptions import PolicyErrors, SettingsError
from otel_puppy.policies import parse_policy_text
from otel_puppy.policies.anomaly import AnomalyStatus
from otel_puppy.server.scoping import OutOfScope, scoped_request, stamp, visible_anomalies, visible_budgets
from otel_puppy.server.tokens import (
    ALL_ROLES,
    API_TOKEN_NAME,
    MAX_FILE_BYTES,
    MAX_TOKEN_NAME_LENGTH,
    MAX_TOKENS,
    Keyring,
    Role,
    Token,
    TokenBook,
    TokenFileErrors,
    TokenScope,
    digest,
    load_token_entries,
    parse_token_entries,
)
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import make_call

# --- helpers shared with the HTTP and service tests -------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A token to write into a tokens file: its secret is known to the test, its hash goes to the file."""

    name: str
    roles: tuple[str, ...]
    scope: Mapping[str, str] | None = None
    expires: str | None = None
    secret: str = ""

    def __post_init__(self) -> None:
        if not self.secret:
            object.__setattr__(self, "secret", new_secret())

    @property
    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def tokens_yaml(specs: Sequence[Spec]) -> str:
    lines = ["tokens:"]
    for spec in specs:
        lines.append(f"  - name: {spec.name}")
        lines.append(f"    sha256: {hashlib.sha256(spec.secret.encode()).hexdigest()}")
        lines.append(f"    roles: [{', '.join(spec.roles)}]")
        if spec.scope:
            lines.append("    scope: {" + ", ".join(f"{k}: {v}" for k, v in spec.scope.items()) + "}")
        if spec.expires:
            lines.append(f"    expires: {spec.expires}")
    if not specs:
        lines = ["tokens: []"]
    return "\n".join(lines) + "\n"


def write_tokens(path: Path, specs: Sequence[Spec]) -> Path:
    """Write the file and make sure its change is seen (a new size or a new mtime, never the same)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(tokens_yaml(specs))
    stat = path.stat()
    if stat.st_mtime_ns <= before:
        os.utime(path, ns=(stat.st_atime_ns, before + 1_000_000))
    return path


SHA = "ab" * 32


def one(text: str) -> str:
    """The single error a tokens file's text gives, as printed."""
    with pytest.raises(TokenFileErrors) as info:
        parse_token_entries(text, Path("tokens.yaml"))
    [error] = info.value.errors
    return str(error)


# --- the file -------------------------------------------------------------------------------------


def test_a_valid_file_gives_its_tokens_with_roles_scope_and_expiry() -> None:
    text = f"""\
# comments are fine
tokens:
  - name: collector-search
    sha256: {SHA.upper()}
    roles: ingest
    scope: {{team: search}}
  - name: grafana.search_1
    sha256: {"cd" * 32}
    roles: [read, decide, read]
    scope: {{team: search, environment: prod}}
    expires: 2026-06-30
  - name: ops
    sha256: {"ef" * 32}
    roles: [admin, read]
    expires: 2026-06-30T18:00:00+02:00
"""
    entries = parse_token_entries(text, Path("tokens.yaml"))
    book = TokenBook.of(entries, api_token="operator-secret")
    assert [(e.name, e.sha256) for e in entries] == [
        ("collector-search", SHA),  # digests are kept in lower case
        ("grafana.search_1", "cd" * 32),
        ("ops", "ef" * 32),
    ]
    collector = book.by_digest[bytes.fromhex(SHA)]
    assert collector == Token("collector-search", frozenset({Role.INGEST}), TokenScope.of({"team": "search"}))
    grafana = book.by_digest[bytes.fromhex("cd" * 32)]
    assert grafana.roles == {Role.READ, Role.DECIDE}
    assert grafana.scope.values == (("team", "search"), ("environment", "prod"))  # in dimension order
    assert grafana.scope.text == "team=search,environment=prod"
    assert grafana.expires_at == 1_782_777_600.0  # 2026-06-30T00:00:00Z
    assert book.by_digest[bytes.fromhex("ef" * 32)].expires_at == 1_782_835_200.0  # 16:00Z
    operator = book.by_digest[digest("operator-secret")]
    assert (operator.name, operator.roles, bool(operator.scope)) == (API_TOKEN_NAME, ALL_ROLES, False)
    assert book.names() == [API_TOKEN_NAME, "collector-search", "grafana.search_1", "ops"]
    assert parse_token_entries("", Path("tokens.yaml")) == ()
    assert parse_token_entries("tokens: []\n", Path("tokens.yaml")) == ()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            f"tokens:\n  - name: a b\n    sha256: {SHA}\n    roles: [read]\n",
            "tokens.yaml:2:11: tokens[0].name: a token's",
        ),
        (
            "tokens:\n  - name: a\n    sha256: xyz\n    roles: [read]\n",
            "tokens.yaml:3:13: tokens[0].sha256: must be 64",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: [reader]\n",
            "tokens.yaml:4:13: tokens[0].roles[0]: Input",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: []\n",
            "tokens.yaml:4:12: tokens[0].roles: Tuple should",
        ),
        (f"tokens:\n  - name: a\n    sha256: {SHA}\n", "tokens.yaml:2:5: tokens[0].roles: Field required"),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: [read]\n    scope: {{provider: openai}}\n",
            "tokens.yaml:5:13: tokens[0].scope.provider: Input should be 'agent', 'service', 'user', 'team', "
            "'environment' or 'conversation'",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: [read]\n    scope: {{team: 'se*'}}\n",
            "tokens.yaml:5:12: tokens[0].scope: a scope value is one exact value",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: [read]\n    scope: {{}}\n",
            "tokens.yaml:5:12: tokens[0].scope: an empty scope is no scope",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: [read]\n    expires: 2026-06-30T18:00:00\n",
            "tokens.yaml:5:14: tokens[0].expires: give the time's UTC offset",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: [read]\n    expires: soon\n",
            "tokens.yaml:5:14: tokens[0].expires: not a date",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: [read]\n    secret: x\n",
            "tokens.yaml:5:5: tokens[0].secret: Extra",
        ),
        (
            f"tokens:\n  - name: a\n    sha256: {SHA}\n    roles: [admin]\n    scope: {{team: x}}\n",
            "tokens.yaml:5:5: tokens[0].scope: an admin token cannot be scoped",
        ),
        (
            f"tokens:\n  - {{name: a, sha256: {SHA}, roles: read}}\n"
            f"  - {{name: a, sha256: {'cd' * 32}, roles: read}}\n",
            "tokens.yaml:3:12: tokens[1].name: the name 'a' is taken by tokens[0]",
        ),
        (
            f"tokens:\n  - {{name: a, sha256: {SHA}, roles: read}}\n  - {{name: b, sha256: {SHA}, roles: read}}\n",
            "tokens.yaml:3:23: tokens[1].sha256: the same secret as tokens[0]",
        ),
        ("tokens: [\n", "tokens.yaml:2:1: invalid YAML"),
        ("- a\n", "tokens.yaml:1:1: a tokens file is a mapping with one key, `tokens:`"),
        ("tokens: 3\n", "tokens.yaml:1:9: tokens: Input should be a valid tuple"),
        ("tokens: []\ntokens: []\n", "tokens.yaml:2:1: tokens: the key 'tokens' is given twice"),
        (
            f"a: &x {{name: a, sha256: {SHA}, roles: read}}\ntokens: [*x]\n",
            "tokens.yaml:1:4: tokens[0]: aliases (*name) are not accepted",  # at the anchored value,
        ),
        ("tokens: " + "[" * 20 + "]" * 20 + "\n", "tokens.yaml:1:"),
    ],
)
def test_every_mistake_is_reported_at_its_file_line_and_column(text: str, error: str) -> None:
    assert one(text).startswith(error), one(text)


def test_every_error_of_a_file_is_reported_at_once_and_no_value_is_echoed() -> None:
    pasted = new_secret()  # the secret itself, pasted where its hash belongs
    text = f"tokens:\n  - name: a\n    sha256: {pasted}\n    roles: [read]\n  - name: '-b'\n    sha256: {SHA}\n"
    with pytest.raises(TokenFileErrors) as info:
        parse_token_entries(text, Path("tokens.yaml"))
    assert [str(e).split(": ")[1] for e in info.value.errors] == [
        "tokens[0].sha256",
        "tokens[1].roles",
        "tokens[1].name",
    ]
    assert isinstance(info.value, PolicyErrors)  # printed like policy errors
    assert pasted not in str(info.value)


def test_bounds_on_tokens_names_values_and_file_size(tmp_path: Path) -> None:
    def entry(index: int, name: str | None = None, team: str = "t") -> str:
        sha = hashlib.sha256(str(index).encode()).hexdigest()
        return f"  - {{name: {name or f'token-{index}'}, sha256: {sha}, roles: [decide], scope: {{team: {team}}}}}\n"

    # the worst of each: as many tokens as allowed, the longest names and scope values
    longest = "n" * MAX_TOKEN_NAME_LENGTH
    body = "tokens:\n" + "".join(entry(i, f"{longest[:-5]}{i:05d}", "v" * 256) for i in range(MAX_TOKENS))
    assert len(parse_token_entries(body, Path("t.yaml"))) == MAX_TOKENS
    more = body + entry(MAX_TOKENS)
    assert one(more).startswith("tokens.yaml:2:3: tokens: Tuple should have at most 1000 items")
    assert one("tokens:\n" + entry(0, "n" * (MAX_TOKEN_NAME_LENGTH + 1))).startswith("tokens.yaml:2:12: tokens[0].name")
    assert "String should have at most 256 characters" in one("tokens:\n" + entry(0, team="v" * 257))

    # the file: at the limit it is read; one byte more and it is refused, unread
    path = tmp_path / "tokens.yaml"
    head = "tokens:\n" + entry(0)
    path.write_text(head + "#" * (MAX_FILE_BYTES - len(head) - 1) + "\n")
    assert path.stat().st_size == MAX_FILE_BYTES
    assert len(load_token_entries(path)) == 1
    path.write_text(head + "#" * (MAX_FILE_BYTES - len(head)) + "\n")
    with pytest.raises(TokenFileErrors, match=r"tokens.yaml: larger than 1048576 bytes"):
        load_token_entries(path)
    path.write_bytes(b"tokens: []\n# \xff\n")
    with pytest.raises(TokenFileErrors, match=r"tokens.yaml:2: not valid UTF-8"):
        load_token_entries(path)
    with pytest.raises(TokenFileErrors, match=r"missing.yaml: cannot read"):
        load_token_entries(tmp_path / "missing.yaml")


def test_a_token_never_shows_its_secret_or_digest() -> None:
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) == len(SECRET_PREFIX) + 43  # 256 random bits, URL-safe base64
    book = TokenBook.of(
        parse_token_entries(tokens_yaml([Spec("ci", ("decide",), {"team": "search"}, secret=secret)]), Path("t")),
        api_token="operator-secret",
    )
    shown = repr(book) + str(book) + repr(list(book.by_digest.values()))
    for hidden in (secret, hashlib.sha256(secret.encode()).hexdigest(), "operator-secret"):
        assert hidden not in shown
    assert repr(book.by_digest[digest(secret)]) == "Token('ci', roles=decide, scope='team=search')"


# --- the keyring: hot reload, the last good tokens -------------------------------------------------


def test_the_keyring_reloads_a_changed_file_and_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.yaml"
    alice, bob = Spec("alice", ("read",)), Spec("bob", ("decide",))
    keyring = Keyring(write_tokens(path, [alice, bob]), api_token="operator-secret")
    assert keyring.enabled
    assert sorted(keyring.book.names()) == [API_TOKEN_NAME, "alice", "bob"]
    assert not keyring.check()  # nothing changed

    write_tokens(path, [alice])  # bob revoked
    assert keyring.check()
    assert digest(bob.secret) not in keyring.book.by_digest
    assert (keyring.reloads, keyring.failures) == (1, 0)

    good = keyring.book
    path.write_text(tokens_yaml([alice]) + "  - name: broken\n")
    with caplog.at_level("ERROR", logger="otel_puppy.audit"):
        assert not keyring.check()
    assert keyring.book is good  # the last good tokens stay in force
    assert keyring.last_error is not None
    assert str(keyring.last_error.errors[0]).startswith(f"{path}:5:5: tokens[1].")
    assert f"{path}:5:5: tokens[1]" in caplog.text
    assert "the last good tokens (2) stay in force" in caplog.text

    path.unlink()  # a missing file: still the last good one, never "no tokens, so open"
    assert not keyring.check()
    assert keyring.book is good
    assert "cannot read" in str(keyring.last_error)

    write_tokens(path, [])  # an empty file: no tokens but the operator's
    assert keyring.check()
    assert keyring.book.names() == [API_TOKEN_NAME]
    assert keyring.last_error is None


def test_a_broken_file_at_start_is_an_error_and_no_file_no_token_is_open(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens: [\n")
    with pytest.raises(TokenFileErrors, match=r"tokens\.yaml:2:1: invalid YAML"):
        Keyring(path)
    assert not Keyring(None).enabled
    assert Keyring(None, api_token="x").enabled
    assert Keyring(None, api_token="x").book.names() == [API_TOKEN_NAME]


def test_the_watcher_thread_picks_a_change_up(tmp_path: Path) -> None:
    path = write_tokens(tmp_path / "tokens.yaml", [Spec("a", ("read",))])
    keyring = Keyring(path, interval_s=0.01).start()
    try:
        write_tokens(path, [])
        for _ in range(500):  # polling for the event, not waiting out time
            if keyring.reloads:
                break
            keyring._stop.wait(0.01)
        assert keyring.book.names() == []
    finally:
        keyring.stop()


def test_the_tokens_file_setting_and_its_place_beside_the_policies(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    assert PuppySettings.load(policies=policies).tokens_path is None
    (tmp_path / "tokens.yaml").write_text("tokens: []\n")
    assert PuppySettings.load(policies=policies).tokens_path == tmp_path / "tokens.yaml"
    assert PuppySettings.load(policies=policies, tokens_file=tmp_path / "x.yaml").tokens_path == tmp_path / "x.yaml"
    elsewhere = policies / "nested"  # its parent, `policies`, holds no tokens.yaml
    assert PuppySettings.load(policies=elsewhere, tokens_file=" ").tokens_path is None  # `OTEL_PUPPY_TOKENS_FILE=`
    # a tokens file is enough to bind beyond loopback
    assert PuppySettings.load(host="0.0.0.0", tokens_file=tmp_path / "x.yaml").host == "0.0.0.0"
    with pytest.raises(SettingsError, match="OTEL_PUPPY_API_TOKEN or a tokens file"):
        PuppySettings.load(host="0.0.0.0", policies=elsewhere)


# --- scopes: stamping spans, filling requests, what a scoped reader sees ---------------------------

SEARCH = TokenScope.of({"team": "search"})
SEARCH_PROD = TokenScope.of({"team": "search", "environment": "prod"})


def test_stamp_sets_the_scope_whatever_the_span_claims() -> None:
    claimed = replace(make_call(end_s=1000.0, agent="a"), team="ads", environment="dev")
    stamped = stamp(claimed, SEARCH_PROD)
    assert (stamped.team, stamped.environment, stamped.agent) == ("search", "prod", "a")
    assert stamped.scope().team == "search"
    assert (stamped.trace_id, stamped.span_id, stamped.input_tokens) == (
        claimed.trace_id,
        claimed.span_id,
        claimed.input_tokens,
    )
    assert stamp(claimed, TokenScope()) is claimed  # unscoped: untouched, not even copied


def test_stamp_puts_the_calls_dedupe_keys_in_the_scopes_namespace() -> None:
    call = make_call(end_s=1000.0)
    assert stamp(call, SEARCH).dedupe_namespace == SEARCH.namespace
    assert call.dedupe_namespace == ""


def test_namespaces_are_short_distinct_per_scope_and_stable() -> None:
    assert TokenScope().namespace == ""
    assert SEARCH.namespace == TokenScope.of({"team": "search"}).namespace
    longest = TokenScope.of(
        dict.fromkeys(("agent", "service", "user", "team", "environment", "conversation"), "v" * 256)
    )
    spaces = {SEARCH.namespace, SEARCH_PROD.namespace, TokenScope.of({"user": "search"}).namespace, longest.namespace}
    assert len(spaces) == 4
    assert {len(namespace) for namespace in spaces} == {17}  # 16 hex digits and ':'


def test_a_scoped_decision_request_is_filled_and_cannot_name_another_team() -> None:
    asked = DecisionRequest(provider="openai", model="gpt-4.1", agent="support")
    filled = scoped_request(asked, SEARCH_PROD)
    assert (filled.team, filled.environment, filled.agent) == ("search", "prod", "support")
    same = DecisionRequest(provider="openai", model="gpt-4.1", team="search", environment="prod")
    assert scoped_request(same, SEARCH_PROD) is same
    with pytest.raises(OutOfScope) as info:
        scoped_request(DecisionRequest(provider="openai", model="gpt-4.1", team="ads"), SEARCH)
    assert str(info.value) == (
        "this token is scoped to team=search: a request cannot name another team (leave team out, or send 'search')"
    )
    assert scoped_request(asked, TokenScope()) is asked


BUDGETS = parse_policy_text(
    """
budgets:
  - {name: org, limit_usd: 100, window: day}
  - {name: search-only, match: {team: search}, limit_usd: 5, window: day}
  - {name: search-or-ads, match: {team: [search, ads]}, limit_usd: 5, window: day}
  - {name: search-glob, match: {team: 'sea*'}, limit_usd: 5, window: day}
  - {name: per-team, per: [team], limit_usd: 1, window: day, max_scopes: 2}
  - {name: per-team-agent, per: [team, agent], limit_usd: 1, window: day}
  - {name: per-agent, per: [agent], limit_usd: 1, window: day}
  - {name: prod-search, match: {environment: prod}, per: [team], limit_usd: 1, window: day}
anomalies:
  - {name: spikes, signal: cost_rate, per: [team]}
  - {name: everything, signal: cost_rate}
""",
    Path("policies.yaml"),
)


def hit(policy: str, scope: str) -> PolicyHit:
    return PolicyHit(kind="budget", policy=policy, action="allow", message="", scope=scope)  # type: ignore[arg-type]


def test_a_scoped_reader_sees_the_budget_instances_that_are_its_alone() -> None:
    hits = [
        hit("org", ""),
        hit("search-only", ""),
        hit("search-or-ads", ""),
        hit("search-glob", ""),
        hit("per-team", "team=search"),
        hit("per-team", "team=ads"),
        hit("per-team", "other"),  # past max_scopes: shared by many teams
        hit("per-team-agent", "team=search,agent=support"),
        hit("per-team-agent", "team=search\\,agent=x,agent=y"),  # team 'search,agent=x' (escaped)
        hit("per-agent", "agent=support"),
        hit("prod-search", "team=search"),
        hit("gone", ""),  # a budget reloaded away
    ]
    shown = [(h.policy, h.scope) for h in visible_budgets(hits, BUDGETS, SEARCH)]
    assert shown == [
        ("search-only", ""),
        ("per-team", "team=search"),
        ("per-team-agent", "team=search,agent=support"),
        ("prod-search", "team=search"),
    ]
    both = [(h.policy, h.scope) for h in visible_budgets(hits, BUDGETS, SEARCH_PROD)]
    assert both == [("prod-search", "team=search")]  # the only one pinned to both team and environment
    assert visible_budgets(hits, BUDGETS, TokenScope()) == hits


def test_a_scoped_reader_sees_the_anomaly_detectors_of_its_scope() -> None:
    def status(policy: str, subject: str) -> AnomalyStatus:
        values: dict[str, Any] = {f.name: None for f in fields(AnomalyStatus)}
        return AnomalyStatus(**{**values, "policy": policy, "subject": subject, "signal": "cost_rate"})

    statuses = [status("spikes", "team=search"), status("spikes", "team=ads"), status("everything", "")]
    assert [s.subject for s in visible_anomalies(statuses, BUDGETS, SEARCH)] == ["team=search"]


# --- the command line ------------------------------------------------------------------------------


def token_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-m", "otel_puppy", "token", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def token_cli_all(cwd: Path, *commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """`token_cli` for each of `commands`, all at once (they must not depend on each other)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: token_cli(cwd, *command), commands))


def test_token_create_prints_the_secret_once_and_writes_its_hash(tmp_path: Path) -> None:
    created = token_cli(tmp_path, "create", "search-agents", "--role", "decide", "--team", "search")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert created.stdout == secret + "\n"  # stdout is the secret alone: `> file` keeps it
    assert secret.startswith(SECRET_PREFIX)
    assert "shown this once" in created.stderr
    assert secret not in created.stderr
    path = tmp_path / "tokens.yaml"  # beside the (default) policies directory
    text = path.read_text()
    assert secret not in text
    [entry] = load_token_entries(path)
    assert (entry.name, entry.roles, entry.scope) == ("search-agents", (Role.DECIDE,), {"team": "search"})
    assert bytes.fromhex(entry.sha256) == digest(secret)

    # comments survive, the name is taken unless --replace, which draws a new secret
    path.write_text("# ours\n" + text)
    again = token_cli(tmp_path, "create", "search-agents", "--role", "read")
    assert again.returncode == 1
    assert "has a token named 'search-agents' already" in again.stderr
    replaced = token_cli(tmp_path, "create", "search-agents", "--role", "read", "--replace", "--expires", "2030-01-01")
    assert replaced.returncode == 0, replaced.stderr
    [entry] = load_token_entries(path)
    assert bytes.fromhex(entry.sha256) == digest(replaced.stdout.strip()) != digest(secret)
    assert (entry.roles, entry.scope, entry.expires_at()) == ((Role.READ,), None, 1_893_456_000.0)
    assert path.read_text().startswith("# ours\n")

    listed = token_cli(tmp_path, "list")
    assert listed.stdout == "search-agents\troles=read\tscope=-\texpires=2030-01-01T00:00:00Z\n"
    assert entry.sha256 not in listed.stdout

    revoked = token_cli(tmp_path, "revoke", "search-agents")
    assert revoked.returncode == 0, revoked.stderr
    assert load_token_entries(path) == ()
    assert token_cli(tmp_path, "revoke", "search-agents").returncode == 1


def test_token_create_refuses_what_the_file_would_refuse_and_never_edits_a_broken_file(tmp_path: Path) -> None:
    refusals = [
        (["create", "ops", "--role", "admin", "--team", "search"], "an admin token cannot be scoped"),
        (["create", "a b", "--role", "read"], "name: a token's name is 1 to 64"),
        (["create", "x", "--role", "read", "--team", "se*"], "scope: a scope value is one exact value"),
        (["create", "x", "--role", "read", "--expires", "2030-01-01T00:00:00"], "expires: give the time's UTC offset"),
    ]
    results = token_cli_all(tmp_path, *(args for args, _ in refusals))
    for (_, message), result in zip(refusals, results, strict=True):
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert message in result.stderr
    path = tmp_path / "tokens.yaml"
    assert not path.exists()
    path.write_text("tokens:\n  - name: x\n")
    broken = token_cli(tmp_path, "create", "y", "--role", "read", "--file", str(path))
    assert (broken.returncode, broken.stdout) == (1, "")
    assert f"{path}:2:5: tokens[0]" in broken.stderr
    assert path.read_text() == "tokens:\n  - name: x\n"


def test_scope_values_are_their_text_even_when_they_look_like_numbers() -> None:
    [entry] = parse_token_entries(f"tokens: [{{name: a, sha256: {SHA}, roles: read, scope: {{team: 0.10}}}}]", "t")
    assert entry.scope == {"team": "0.10"}  # never 0.1: the file is read as text, not as YAML numbers
