"""Policy files under fuzzing: a valid set or precise errors, never a crash, a hang, or the old set lost.

Documents of random structure over the grammar's own keys (wrong types, huge and tiny numbers,
unicode, anchors and aliases) are dumped to YAML and loaded. Each gives a `PolicySet` an engine
can run without one internal error, or `PolicyErrors` whose every error names the file, a line
and column inside it and a field path; a reload with any of them leaves the running set in force
unless the new one is valid. The billion laughs and mutated text are in tests/policies/test_loader.py.
"""

from __future__ import annotations

import io
import time
import typing
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from ruamel.yaml import YAML

from otel_puppy.calls import ErrorClass
from otel_puppy.decision import Action
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import PolicyError, PolicyErrors
from otel_puppy.policies import PolicySet, load_policies, parse_policy_text
from otel_puppy.policies.loader import MAX_FILE_BYTES
from otel_puppy.policies.models import PolicyFile
from otel_puppy.policies.watch import PolicyWatcher
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import FakeClock, engine_for_tests, make_call

FILE = Path("policies/fuzz.yaml")
SLOW_S = 2.0
"""A file of at most a few kilobytes is loaded well within this, whatever it holds."""


def grammar_keys() -> list[str]:
    """Every key the grammar knows, found by following `PolicyFile`'s annotations."""
    keys: set[str] = set()
    pending: list[Any] = [PolicyFile]
    seen: set[Any] = set()
    while pending:
        annotation = pending.pop()
        if annotation in seen:
            continue
        seen.add(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for name, info in annotation.model_fields.items():
                keys.add(info.alias or name)
                pending.append(info.annotation)
        pending.extend(typing.get_args(annotation))
    return sorted(keys)


KEYS = grammar_keys()
VALID_WORDS = [
    "day", "hour", "1h", "24h", "15m", "deny", "warn", "alert", "cost_rate", "error_rate", "provider", "agent",
    "user", "balanced", "cheapest", "openai", "gpt-4.1", "openai:gpt-4.1", "anthropic:claude-sonnet-4-5",
    "30s", "5m", "critical", "bulk", "gpt-4.1*",
]  # fmt: skip
SCALARS = st.one_of(
    st.sampled_from(VALID_WORDS),
    st.sampled_from([0, 1, 2, 5, 20, 100, 0.1, 0.5, 0.9, 1.5, 1000, True, False]),
    st.none(),
    st.integers(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(),  # NaN, infinities, 5e-324, 1.7e308
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
    st.binary(max_size=6),  # `!!binary`: a tag the loader refuses
    st.datetimes(),  # a YAML timestamp
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=5),
    ),
    max_leaves=25,
)
ENTRIES = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=10)
SECTIONS = [*PolicyFile.model_fields, "quotas"]


@st.composite
def documents(draw: st.DrawFn) -> tuple[Any, bool]:
    """A policy document as data, and whether it should be written in flow style."""
    document: dict[Any, Any] = {}
    for section in draw(st.lists(st.sampled_from(SECTIONS), max_size=4, unique=True)):
        entries = draw(st.lists(ENTRIES, max_size=3))
        # The same entry object more than once: the YAML gets an anchor and aliases to it.
        repeat = draw(st.integers(1, 3))
        document[section] = entries * repeat if draw(st.booleans()) else draw(VALUES)
    if draw(st.booleans()):
        document = draw(st.one_of(VALUES, st.just(document)))
    return document, draw(st.booleans())


def dump(document: Any, flow: bool) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = flow
    yaml.allow_unicode = True
    stream = io.StringIO()
    yaml.dump(document, stream)
    return stream.getvalue()


def load(text: str) -> tuple[PolicySet | None, list[PolicyError]]:
    """The set `text` gives, or its errors; anything but `PolicyErrors` fails the test."""
    try:
        return parse_policy_text(text, FILE), []
    except PolicyErrors as exc:
        errors = exc.errors
    assert errors, "PolicyErrors without errors"
    return None, errors


def assert_precise(errors: list[PolicyError], text: str) -> None:
    """Each error names the file, a position inside it (or none, for the whole file), and says something."""
    lines = text.count("\n") + 1
    for error in errors:
        assert error.file == FILE
        assert (error.line is None) == (error.column is None) or error.column is None
        if error.line is not None:
            assert 1 <= error.line <= lines, (error, lines)
            assert error.column is not None
            assert error.column >= 1
            assert str(error).startswith(f"{FILE}:{error.line}:{error.column}: ")
        assert error.message.strip()
        assert len(str(error)) < 1_000, str(error)[:200]
        assert "Decimal(" not in error.message  # what was found is shown as written, not as Python sees it


def sub_nano_limit(policies: PolicySet) -> bool:
    """Budgets whose limit rounds to 0 nano-dollars: see `test_a_budget_below_one_nano_dollar_is_refused`."""
    return any(b.limit_usd is not None and b.limit_usd < Decimal("1e-9") for b in policies.budgets)


def exercise(policies: PolicySet) -> None:
    """Run an engine on `policies`: under pytest any internal error is raised, failing the test."""
    engine = engine_for_tests(policies)
    try:
        clock = engine.clock
        assert isinstance(clock, FakeClock)
        for agent in ("support", "research"):
            engine.decide(provider="openai", model="gpt-4.1", agent=agent, priority="bulk", estimated_cost_usd="0.01")
            engine.observe(make_call(end_s=clock.now(), agent=agent, user="u1"))
            engine.observe(
                make_call(end_s=clock.now(), provider="anthropic", model="claude-sonnet-4-5", error=ErrorClass.TIMEOUT)
            )
            clock.advance(90)
        snapshot = engine.snapshot()
        assert snapshot.spend("day") == Decimal("0.0056")
        list(engine.registry.collect())
    finally:
        engine.close()


@pytest.mark.long
def test_documents_of_any_structure_give_a_valid_set_or_precise_errors() -> None:
    outcomes = {"valid": 0, "invalid": 0}

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(documents())
    def check(drawn: tuple[Any, bool]) -> None:
        text = dump(*drawn)
        started = time.perf_counter()
        policies, errors = load(text)
        assert time.perf_counter() - started < SLOW_S
        if policies is None:
            outcomes["invalid"] += 1
            assert_precise(errors, text)
            return
        outcomes["valid"] += 1
        assert all(len(line) < 1_000 for line in policies.summary())
        if not sub_nano_limit(policies):
            exercise(policies)

    check()
    assert outcomes["valid"] >= 10, outcomes  # the generator reaches valid sets, not only errors
    assert outcomes["invalid"] >= 200, outcomes


# --- one wrong value in a valid file: the error is at that value ------------------------------

ENTRY_FIELDS: dict[str, tuple[str, dict[str, str]]] = {
    "budgets": (
        "name: b0",
        {
            "limit_usd": "10",
            "window": "day",
            "action": "deny",
            "alerts": "[0.5, 0.9]",
            "per": "[agent]",
            "match": "{provider: openai, model: [gpt-4.1*]}",
            "reserve": "{critical: 0.1}",
            "shadow": "false",
            "max_scopes": "100",
        },
    ),
    "breakers": (
        "name: k0",
        {
            "per": "[provider]",
            "failure_threshold": "5",
            "recovery_timeout": "30s",
            "success_threshold": "2",
            "half_open_max_calls": "3",
        },
    ),
    "anomalies": (
        "name: a0",
        {
            "signal": "cost_rate",
            "per": "[provider]",
            "baseline": "1h",
            "interval": "1m",
            "threshold": "{zscore: 4}",
            "min_samples": "20",
            "cooldown": "5m",
            "action": "warn",
        },
    ),
    "routing": (
        "name: r0",
        {
            "strategy": "balanced",
            "weights": "{cost: 0.5, speed: 0.5}",
            "candidates": "[openai:gpt-4.1, openai:gpt-4.1-mini]",
            "max_cost_usd": "0.5",
        },
    ),
    "prices": ("provider: p0", {"model": "m0", "input_mtok": "0.6", "output_mtok": "0.6"}),
}
WRONG = [
    "-1", "0", "1e10", "1e400", "1e-400", "-0.0", "abc", "[1]", "{a: 1}", "{zscore: -1}", "{degrade: ''}",
    ".nan", ".inf", "-.inf", "true", "''", "~", "[]", "{}", "99999999999999999999999999999999", "0x10",
    "2001-12-14", "'é\u202e\u0000'", "!!binary aGk=", "!!python/object/apply:os.system ['true']",
    "!include /etc/passwd", "fortnight", "-5s", "91d", "[deny, warn]", "\"\\ud800\"",
]  # fmt: skip
FIELDS = [(section, field) for section, (_, fields) in ENTRY_FIELDS.items() for field in fields]


def entry_text(section: str, field: str | None = None, value: str | None = None) -> str:
    first, fields = ENTRY_FIELDS[section]
    lines = [f"{section}:", f"  - {first}"]
    lines += [f"    {key}: {value if key == field else text}" for key, text in fields.items()]
    return "\n".join(lines) + "\n"


def test_each_entry_template_is_valid() -> None:
    for section in ENTRY_FIELDS:
        assert len(getattr(parse_policy_text(entry_text(section), FILE), section)) == 1


@settings(max_examples=500, deadline=None, database=None)
@given(st.sampled_from(FIELDS), st.sampled_from(WRONG))
def test_a_wrong_value_is_reported_at_its_line_and_field(where: tuple[str, str], value: str) -> None:
    section, field = where
    text = entry_text(section, field, value)
    policies, errors = load(text)
    if policies is not None:
        return  # some are valid for some fields (`[]` for `per`, `'é'` for a name)
    assert_precise(errors, text)
    line = list(ENTRY_FIELDS[section][1]).index(field) + 3
    for error in errors:
        # at the wrong value and under its field; or, for a value that reads as null, the entry itself;
        # or, for text that is not YAML, its line
        path = f"{section}[0].{field}"
        at_field = error.line == line and (error.path == path or error.path.startswith((f"{path}.", f"{path}[")))
        at_entry = error.line == 2 and error.path == f"{section}[0]"
        syntax = error.line == line and not error.path and error.message.startswith("invalid YAML: ")
        assert at_field or at_entry or syntax, (str(error), value)


def test_tagged_unions_and_mapping_keys_are_reported_at_the_users_path() -> None:
    """pydantic's union tags (`action.simple`) and `[key]` never reach the user."""
    cases = {
        ("budgets", "action", "explode"): [
            "policies/fuzz.yaml:5:13: budgets[0].action: expected one of 'warn' or 'deny', got 'explode'"
        ],
        ("budgets", "action", "{degrade: ''}"): [
            "policies/fuzz.yaml:5:23: budgets[0].action.degrade: expected a non-empty string, got ''"
        ],
        ("budgets", "action", "{a: 1}"): [
            "policies/fuzz.yaml:5:13: budgets[0].action: missing required key 'degrade'",
            "policies/fuzz.yaml:5:14: budgets[0].action.a: unknown key 'a' (allowed keys: degrade)",
        ],
        ("anomalies", "threshold", "{zscore: -1}"): [
            "policies/fuzz.yaml:7:25: anomalies[0].threshold.zscore: expected a number > 0.0, got -1"
        ],
        ("anomalies", "threshold", "1e10"): [
            "policies/fuzz.yaml:7:16: anomalies[0].threshold: expected a mapping, got 1e10"
        ],
        ("budgets", "reserve", "{urgent: 0.1}"): [
            "policies/fuzz.yaml:9:15: budgets[0].reserve.urgent: unknown key 'urgent': "
            "expected one of 'critical', 'high', 'normal', 'low' or 'bulk'"
        ],
        ("budgets", "limit_usd", "1e-999999999"): [
            "policies/fuzz.yaml:3:16: budgets[0].limit_usd: number 1e-999999999 is out of range: "
            "write 0 or a number between 1e-30 and 1e30"
        ],
        ("routing", "max_cost_usd", "1e999999999"): [
            "policies/fuzz.yaml:6:19: routing[0].max_cost_usd: number 1e999999999 is out of range: "
            "write 0 or a number between 1e-30 and 1e30"
        ],
    }
    for (section, field, value), expected in cases.items():
        _, errors = load(entry_text(section, field, value))
        assert [str(error) for error in errors] == expected, (section, field, value)


def test_zero_written_with_a_huge_exponent_is_zero_and_cheap() -> None:
    started = time.perf_counter()
    policies, _ = load("prices:\n  - {provider: p, model: m, input_mtok: 0e-999999999, output_mtok: 0.0}\n")
    assert policies is not None
    assert policies.summary() == ["price p/m: $0/MTok in, $0.0/MTok out"]
    assert time.perf_counter() - started < SLOW_S


def test_a_budget_below_one_nano_dollar_is_refused() -> None:
    text = "budgets:\n  - {name: b, limit_usd: 0.0000000001, window: day, action: deny}\n"
    policies, errors = load(text)
    if policies is not None:
        exercise(policies)  # what happens to a running engine today: every decision is an internal error
    assert [str(error) for error in errors] == [
        "policies/fuzz.yaml:2:26: budgets[0].limit_usd: expected a number >= 0.000000001, got 0.0000000001"
    ]


@pytest.mark.long
def test_the_largest_file_allowed_loads_in_bounded_time(tmp_path: Path) -> None:
    """1 MiB of budgets (the size limit), 15,081 of them: seconds, not a hang."""
    lines = ["budgets:"]
    size = len(lines[0]) + 1
    while True:
        line = f"  - {{name: b{len(lines)}, match: {{agent: a{len(lines)}}}, limit_usd: 10, window: day}}"
        if size + len(line) + 1 > MAX_FILE_BYTES:
            break
        lines.append(line)
        size += len(line) + 1
    text = "\n".join(lines) + "\n"
    (tmp_path / "big.yaml").write_text(text)
    started = time.perf_counter()
    policies = load_policies(tmp_path)
    elapsed = time.perf_counter() - started
    assert len(policies.budgets) == len(lines) - 1
    assert elapsed < 60, f"{elapsed:.1f}s"
    (tmp_path / "big.yaml").write_text(text + "#" * (MAX_FILE_BYTES + 1 - len(text)))  # one byte over
    with pytest.raises(PolicyErrors, match="larger than 1 MiB"):
        load_policies(tmp_path)


# --- the running set is never lost ----------------------------------------------------------------

GOOD = """\
budgets:
  - {name: org-daily, limit_usd: 0.001, window: day, action: deny}
"""


@pytest.fixture
def running(tmp_path: Path) -> Iterator[PolicyEngine]:
    """An engine on a policy directory, with one good file in force and a `z.yaml` that tests write."""
    (tmp_path / "a.yaml").write_text(GOOD)
    settings_ = PuppySettings.load(store="memory://", policies=tmp_path, watch_policies_s=None)
    engine = PolicyEngine.from_settings(settings_, clock=FakeClock())
    yield engine
    engine.close()


def denied(engine: PolicyEngine) -> bool:
    """The good set's budget ($0.001) is spent: the set in force denies."""
    return engine.decide(provider="openai", model="gpt-4.1").action is Action.DENY


@pytest.mark.long
def test_a_reload_with_any_fuzzed_file_keeps_the_running_set_or_takes_a_valid_one(
    running: PolicyEngine, tmp_path: Path
) -> None:
    clock = running.clock
    assert isinstance(clock, FakeClock)
    running.observe(make_call(end_s=clock.now()))  # $0.0028: over the good set's budget
    good = running.policies
    assert denied(running)
    watcher = PolicyWatcher(tmp_path, running.reload)
    results = {"kept": 0, "taken": 0, "refused by the watcher": 0}

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(documents(), st.booleans())
    def check(drawn: tuple[Any, bool], by_watcher: bool) -> None:
        text = dump(*drawn)
        (tmp_path / "z.yaml").write_text(text, encoding="utf-8")
        try:
            if by_watcher:
                watcher._seen = ()  # the next poll sees a change, whatever the file's size and mtime
                took = watcher.check()
            else:
                running.reload()
                took = True
        except PolicyErrors:
            took = False
        if took:
            results["taken"] += 1
            assert running.policies.sources == (tmp_path / "a.yaml", tmp_path / "z.yaml")
            assert running.policies.budgets[0] == good.budgets[0]
        else:
            results["kept"] += 1
            results["refused by the watcher"] += by_watcher
            assert running.policies is good
        assert denied(running)  # either way the good budget stays in force, with its spend
        # back to the good set for the next example
        (tmp_path / "z.yaml").unlink()
        running.use_policies(good)

    check()
    assert results["kept"] >= 50, results
    assert watcher.failures == results["refused by the watcher"]


def test_a_billion_laughs_on_disk_is_refused_and_the_running_set_stays(running: PolicyEngine, tmp_path: Path) -> None:
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{n}: &lol{n} [{', '.join([f'*lol{n - 1}'] * 9)}]" for n in range(1, 10)]
    (tmp_path / "z.yaml").write_text("\n".join(lines) + "\n")
    good = running.policies
    started = time.perf_counter()
    with pytest.raises(PolicyErrors) as info:
        running.reload()
    assert time.perf_counter() - started < SLOW_S
    assert [str(error) for error in info.value.errors] == [
        f"{tmp_path / 'z.yaml'}:5:7: lol4[0]: aliases expand this document by more than 10000 nodes; refusing it"
    ]
    assert running.policies is good
