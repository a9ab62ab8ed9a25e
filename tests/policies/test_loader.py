"""Policy files: YAML in, `PolicySet` or `PolicyErrors` with exact positions out."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from otel_puppy.exceptions import PolicyError, PolicyErrors
from otel_puppy.policies import PolicySet, PriceEntry, load_policies, parse_policy_text
from otel_puppy.policies.loader import MAX_FILE_BYTES
from otel_puppy.policies.models import PolicyFile
from otel_puppy.pricing import PriceOverride

FILE = Path("policies/prices.yaml")

LLAMA = PriceEntry(
    provider="self-hosted",
    model="llama-3.1-70b",
    input_mtok=Decimal("0.6"),
    output_mtok=Decimal("0.6"),
)

SECTIONS = "budgets, anomalies, breakers, routing, prices"


def error_lines(text: str) -> list[str]:
    """The errors `text` gives, as users read them."""
    with pytest.raises(PolicyErrors) as info:
        parse_policy_text(text, FILE)
    return [str(error) for error in info.value.errors]


def load_errors(path: Path) -> list[str]:
    with pytest.raises(PolicyErrors) as info:
        load_policies(path)
    return [str(error) for error in info.value.errors]


# --- valid files -------------------------------------------------------------------------------


def test_prices_are_exact_decimals_in_flow_and_block_style() -> None:
    text = """\
# prices for models genai-prices does not know
prices:
  - {provider: self-hosted, model: llama-3.1-70b, input_mtok: 0.6, output_mtok: 0.6}
  - provider: '  acme  '
    model: m-1
    input_mtok: 0.1
    output_mtok: 3
    cache_read_mtok: 0.30
    cache_write_mtok: 1_000.000000000001
"""
    policies = parse_policy_text(text, FILE)

    assert policies.sources == (FILE,)
    assert policies.prices[0] == LLAMA
    acme = policies.prices[1]
    assert acme.provider == "acme"
    assert acme.model == "m-1"
    # Exact text, not via float: str() shows the digits as written.
    assert [str(acme.input_mtok), str(acme.output_mtok)] == ["0.1", "3"]
    assert str(acme.cache_read_mtok) == "0.30"
    assert acme.cache_write_mtok == Decimal("1000.000000000001")
    assert (LLAMA.cache_read_mtok, LLAMA.cache_write_mtok) == (None, None)


def test_price_overrides_and_summary() -> None:
    text = """\
prices:
  - {provider: self-hosted, model: llama-3.1-70b, input_mtok: 0.6, output_mtok: 0.6}
  - {provider: acme, model: m-1, input_mtok: 1e1, output_mtok: 2, cache_read_mtok: 0.25, cache_write_mtok: 3.75}
"""
    policies = parse_policy_text(text, FILE)

    assert policies.price_overrides() == (
        PriceOverride("self-hosted", "llama-3.1-70b", Decimal("0.6"), Decimal("0.6")),
        PriceOverride("acme", "m-1", Decimal("10"), Decimal("2"), Decimal("0.25"), Decimal("3.75")),
    )
    assert policies.summary() == [
        "price self-hosted/llama-3.1-70b: $0.6/MTok in, $0.6/MTok out",
        "price acme/m-1: $10/MTok in, $2/MTok out, $0.25/MTok cache read, $3.75/MTok cache write",
    ]


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# only a comment\n# and another\n", "prices:\n", "prices: []\n", "prices:\n# - {}\n", "~\n"],
)
def test_empty_files_contribute_nothing(text: str) -> None:
    assert parse_policy_text(text, FILE) == PolicySet(prices=(), sources=(FILE,))


def test_the_empty_set() -> None:
    empty = PolicySet()
    assert (empty.prices, empty.sources) == ((), ())
    assert empty.price_overrides() == ()
    assert empty.summary() == []


def test_quoted_numbers_are_read_as_written() -> None:
    text = "prices:\n  - {provider: a, model: b, input_mtok: '0.6', output_mtok: \"2.50\"}\n"
    entry = parse_policy_text(text, FILE).prices[0]
    assert (str(entry.input_mtok), str(entry.output_mtok)) == ("0.6", "2.50")


def test_a_few_aliases_are_fine() -> None:
    text = "prices:\n  - {provider: a, model: b, input_mtok: &same 0.15, output_mtok: *same}\n"
    entry = parse_policy_text(text, FILE).prices[0]
    assert (entry.input_mtok, entry.output_mtok) == (Decimal("0.15"), Decimal("0.15"))


def test_every_section_has_a_policy_set_field() -> None:
    # Adding a section to `PolicyFile` without its `PolicySet` field would fail every load.
    set_fields = {f.name for f in dataclasses.fields(PolicySet)}
    assert set(PolicyFile.model_fields) <= set_fields
    assert set_fields - set(PolicyFile.model_fields) == {"sources"}


def test_price_entry_validates_when_built_in_code() -> None:
    with pytest.raises(ValidationError):
        PriceEntry(provider="a", model="b", input_mtok=Decimal(-1), output_mtok=Decimal(1))
    with pytest.raises(ValidationError):
        PriceEntry.model_validate({"provider": "a", "model": "b", "input_mtok": 1, "output_mtok": 1, "x": 1})
    with pytest.raises(ValidationError, match="frozen"):
        LLAMA.model = "other"


# --- errors, one class at a time ---------------------------------------------------------------

ENTRY_KEYS = "provider, model, input_mtok, output_mtok, cache_read_mtok, cache_write_mtok"

ERROR_CASES = [
    pytest.param(
        "prices:\n  - {provider: a, model: b, input_mtoks: 1, output_mtok: 2}\n",
        [
            "policies/prices.yaml:2:29: prices[0].input_mtoks: unknown key 'input_mtoks'; "
            f"did you mean 'input_mtok'? (allowed keys: {ENTRY_KEYS})"
        ],
        id="unknown-key-with-suggestion",
    ),
    pytest.param(
        "prices:\n  - provider: a\n    model: b\n    input_mtok: 1\n    output_mtok: 2\n    colour: red\n",
        [f"policies/prices.yaml:6:5: prices[0].colour: unknown key 'colour' (allowed keys: {ENTRY_KEYS})"],
        id="unknown-key-without-suggestion",
    ),
    pytest.param(
        "price:\n  - {provider: a}\n",
        [
            "policies/prices.yaml:1:1: price: unknown section 'price'; did you mean 'prices'? (known sections: "
            + SECTIONS
            + ")"
        ],
        id="unknown-section",
    ),
    pytest.param(
        "prices:\n  - {provider: a, model: b, input_mtok: abc, output_mtok: 2}\n",
        ["policies/prices.yaml:2:41: prices[0].input_mtok: expected a number, got 'abc'"],
        id="not-a-number",
    ),
    pytest.param(
        "prices:\n  - {provider: a, model: b, input_mtok: -0.5, output_mtok: 2}\n",
        ["policies/prices.yaml:2:41: prices[0].input_mtok: expected a number >= 0, got -0.5"],
        id="negative-price",
    ),
    pytest.param(
        "prices:\n  - {provider: a, model: b, input_mtok: .inf, output_mtok: .nan}\n",
        [
            "policies/prices.yaml:2:41: prices[0].input_mtok: expected a finite number, got .inf",
            "policies/prices.yaml:2:60: prices[0].output_mtok: expected a finite number, got .nan",
        ],
        id="not-finite",
    ),
    pytest.param(
        "prices:\n  - {provider: a, model: b, input_mtok: 2e6, output_mtok: 0.0000000000001}\n",
        [
            "policies/prices.yaml:2:41: prices[0].input_mtok: expected a number <= 1000000, got 2e6",
            "policies/prices.yaml:2:59: prices[0].output_mtok: expected at most 12 decimal places, got 0.0000000000001",
        ],
        id="absurd-price",
    ),
    pytest.param(
        "prices:\n  - provider: a\n    model: b\n    input_mtok: 1\n",
        ["policies/prices.yaml:2:5: prices[0]: missing required key 'output_mtok'"],
        id="missing-field",
    ),
    pytest.param(
        "prices:\n  - {provider: 4, model: '  ', input_mtok: true, output_mtok: }\n",
        [
            "policies/prices.yaml:2:16: prices[0].provider: expected a string, got 4",
            "policies/prices.yaml:2:26: prices[0].model: expected a non-empty string, got '  '",
            "policies/prices.yaml:2:44: prices[0].input_mtok: expected a number, got true",
            "policies/prices.yaml:2:62: prices[0].output_mtok: expected a number, got an empty value",
        ],
        id="wrong-types",
    ),
    pytest.param(
        "prices:\n  provider: a\n  model: b\n",
        ["policies/prices.yaml:2:3: prices: expected a list, got a mapping"],
        id="section-not-a-list",
    ),
    pytest.param(
        "prices:\n  - openai/gpt-5\n",
        [f"policies/prices.yaml:2:5: prices[0]: expected a mapping with keys {ENTRY_KEYS}, got 'openai/gpt-5'"],
        id="entry-not-a-mapping",
    ),
    pytest.param(
        "- prices\n",
        ["policies/prices.yaml:1:1: expected a mapping of sections (" + SECTIONS + "), got a list"],
        id="document-not-a-mapping",
    ),
    pytest.param(
        "prices:\n  - {provider: a, model: b\n",
        [
            "policies/prices.yaml:3:1: invalid YAML: expected ',' or '}', but got '<stream end>' "
            "(while parsing a flow mapping started at line 2, column 5)"
        ],
        id="yaml-syntax",
    ),
    pytest.param(
        "prices:\n\t- {}\n",
        [
            "policies/prices.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token "
            "(while scanning for the next token)"
        ],
        id="yaml-tab",
    ),
    pytest.param(
        "prices: []\n---\nprices: []\n",
        [
            "policies/prices.yaml:2:1: invalid YAML: expected a single document in the stream, "
            "but found another document"
        ],
        id="yaml-two-documents",
    ),
    pytest.param(
        "prices: \x07\n",
        ["policies/prices.yaml:1:9: invalid YAML: special characters are not allowed (U+0007)"],
        id="yaml-control-character",
    ),
    pytest.param(
        "prices:\n  - provider: a\n    model: b\n    provider: c\n    input_mtok: 1\n    output_mtok: 1\n",
        ["policies/prices.yaml:4:5: prices[0].provider: duplicate key 'provider' (first at line 2, column 5)"],
        id="duplicate-yaml-key",
    ),
    pytest.param(
        "prices:\n"
        "  - {provider: OpenAI, model: my-ft, input_mtok: 1, output_mtok: 1}\n"
        "  - {provider: openai, model: MY-FT, input_mtok: 2, output_mtok: 2}\n",
        [
            "policies/prices.yaml:3:5: prices[1]: duplicate prices entry 'openai/MY-FT'; "
            "first defined at policies/prices.yaml:2:5 (prices[0])"
        ],
        id="duplicate-entry-ignoring-case",
    ),
    pytest.param(
        "prices: !!python/object/apply:os.system ['echo pwned']\n",
        ["policies/prices.yaml:1:9: prices: unsupported YAML tag '!!python/object/apply:os.system'"],
        id="python-tag",
    ),
    pytest.param(
        "prices:\n  - {provider: !secret x, model: b, input_mtok: 1, output_mtok: 1}\n",
        ["policies/prices.yaml:2:16: prices[0].provider: unsupported YAML tag '!secret'"],
        id="custom-tag",
    ),
    pytest.param(
        "prices:\n  - &base {provider: a, model: b, input_mtok: 1, output_mtok: 1}\n  - <<: *base\n    model: c\n",
        ["policies/prices.yaml:3:5: prices[1]: YAML merge keys ('<<') are not supported; write the keys out"],
        id="merge-key",
    ),
    pytest.param(
        "prices:\n  - {1: a, provider: a, model: b, input_mtok: 1, output_mtok: 1}\n",
        ["policies/prices.yaml:2:6: prices[0]: expected a string key, got 1"],
        id="non-string-key",
    ),
    pytest.param(
        "prices: *nowhere\n",
        ["policies/prices.yaml:1:9: invalid YAML: found undefined alias 'nowhere'"],
        id="undefined-alias",
    ),
    pytest.param(
        "prices: &loop [*loop]\n",
        ["policies/prices.yaml:1:9: prices[0]: an alias refers to a node that contains it"],
        id="recursive-alias",
    ),
    pytest.param(
        "prices: " + "[" * 40 + "]" * 40 + "\n",
        ["policies/prices.yaml:1:40: nested too deeply (the limit is 32 levels)"],
        id="too-deep",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_errors_say_where_and_what(text: str, expected: list[str]) -> None:
    assert error_lines(text) == expected


def test_error_fields() -> None:
    with pytest.raises(PolicyErrors) as info:
        parse_policy_text("prices:\n  - {provider: a, model: b, input_mtok: x, output_mtok: 1}\n", FILE)
    [error] = info.value.errors
    assert (error.file, error.line, error.column) == (FILE, 2, 41)
    assert (error.path, error.message) == ("prices[0].input_mtok", "expected a number, got 'x'")


def test_every_error_in_a_file_is_reported_in_position_order() -> None:
    text = """\
prices:
  - {provider: a, model: b, input_mtok: x, output_mtok: 1, model: c}
  - {provider: a, model: b, input_mtok: 1}
quotas: []
"""
    assert error_lines(text) == [
        "policies/prices.yaml:2:41: prices[0].input_mtok: expected a number, got 'x'",
        "policies/prices.yaml:2:60: prices[0].model: duplicate key 'model' (first at line 2, column 19)",
        "policies/prices.yaml:3:5: prices[1]: missing required key 'output_mtok'",
        "policies/prices.yaml:4:1: quotas: unknown section 'quotas' (known sections: " + SECTIONS + ")",
    ]


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        aliases = ", ".join([f"*lol{level - 1}"] * 9)
        lines.append(f"lol{level}: &lol{level} [{aliases}]")
    started = time.perf_counter()

    errors = error_lines("\n".join(lines) + "\n")

    assert time.perf_counter() - started < 2
    assert errors == [
        "policies/prices.yaml:5:7: lol4[0]: aliases expand this document by more than 10000 nodes; refusing it"
    ]


# --- files and directories ---------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_directory_files_merge_in_name_order(tmp_path: Path) -> None:
    second = write(
        tmp_path / "b-extra.yml", "prices:\n  - {provider: acme, model: m-1, input_mtok: 1, output_mtok: 2}\n"
    )
    first = write(
        tmp_path / "a-self-hosted.yaml",
        "prices:\n  - {provider: self-hosted, model: llama-3.1-70b, input_mtok: 0.6, output_mtok: 0.6}\n",
    )
    empty = write(tmp_path / "c-empty.yaml", "# nothing yet\n")
    write(tmp_path / "notes.txt", "prices: not yaml we read")
    write(tmp_path / ".#a-self-hosted.yaml", "editor lock file: ignored")
    (tmp_path / "nested.yaml").mkdir()
    write(tmp_path / "nested.yaml" / "deeper.yaml", "prices: broken: [")

    policies = load_policies(tmp_path)

    assert policies.sources == (first, second, empty)
    assert policies.prices == (
        LLAMA,
        PriceEntry(provider="acme", model="m-1", input_mtok=Decimal(1), output_mtok=Decimal(2)),
    )


def test_a_single_file(tmp_path: Path) -> None:
    file = write(
        tmp_path / "prices.yaml",
        "prices:\n  - {provider: self-hosted, model: llama-3.1-70b, input_mtok: 0.6, output_mtok: 0.6}\n",
    )
    assert load_policies(file) == PolicySet(prices=(LLAMA,), sources=(file,))
    assert load_policies(str(file)) == PolicySet(prices=(LLAMA,), sources=(file,))


def test_empty_directory_and_empty_file(tmp_path: Path) -> None:
    assert load_policies(tmp_path) == PolicySet()
    empty = write(tmp_path / "empty.yaml", "")
    assert load_policies(empty) == PolicySet(sources=(empty,))


def test_missing_path(tmp_path: Path) -> None:
    assert load_errors(tmp_path / "nope") == [f"{tmp_path / 'nope'}: no such file or directory"]


def test_duplicate_price_across_files_names_the_first(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", "prices:\n  - {provider: acme, model: m-1, input_mtok: 1, output_mtok: 1}\n")
    second = write(
        tmp_path / "b.yaml",
        "# override\nprices:\n  - provider: acme\n    model: m-2\n    input_mtok: 1\n    output_mtok: 1\n"
        "  - provider: Acme\n    model: m-1\n    input_mtok: 2\n    output_mtok: 2\n",
    )
    assert load_errors(tmp_path) == [
        f"{second}:7:5: prices[1]: duplicate prices entry 'Acme/m-1'; first defined at {first}:2:5 (prices[0])"
    ]


def test_all_errors_of_two_broken_files_at_once(tmp_path: Path) -> None:
    first = write(
        tmp_path / "a.yaml",
        "prices:\n  - {provider: a, model: b, input_mtok: -1, output_mtok: 1}\n"
        "  - {provider: a, model: c, input_mtok: 1, outptu_mtok: 1}\n",
    )
    second = write(tmp_path / "b.yaml", "prices:\n  - {provider: a, model: b\nquotas: []\n")
    third = write(tmp_path / "c.yaml", "price: []\n")

    assert load_errors(tmp_path) == [
        f"{first}:2:41: prices[0].input_mtok: expected a number >= 0, got -1",
        f"{first}:3:44: prices[1].outptu_mtok: unknown key 'outptu_mtok'; did you mean 'output_mtok'? "
        f"(allowed keys: {ENTRY_KEYS})",
        f"{second}:3:7: invalid YAML: expected ',' or '}}', but got ':' "
        "(while parsing a flow mapping started at line 2, column 5)",
        f"{third}:1:1: price: unknown section 'price'; did you mean 'prices'? (known sections: " + SECTIONS + ")",
    ]


def test_file_size_cap(tmp_path: Path) -> None:
    # Filled with a comment: a name longer than 256 characters is refused on its own.
    head = "# "
    tail = "\nprices:\n  - {provider: a, input_mtok: 1, output_mtok: 1, model: m}\n"
    at_cap = write(tmp_path / "at-cap.yaml", head + "m" * (MAX_FILE_BYTES - len(head) - len(tail)) + tail)
    assert at_cap.stat().st_size == MAX_FILE_BYTES
    assert load_policies(at_cap).prices[0].model == "m"

    over = write(tmp_path / "over.yaml", "#" * MAX_FILE_BYTES + "\n")
    assert load_errors(over) == [f"{over}: larger than 1 MiB (1048576 bytes), the limit for a policy file"]


def test_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yaml"
    file.write_bytes("prices:\n  - {provider: café, model: m}\n".encode("latin-1"))
    assert load_errors(file) == [f"{file}:2:19: not valid UTF-8 (byte 0xe9); policy files must be UTF-8 text"]


def test_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    file = tmp_path / "bom.yaml"
    file.write_bytes(b"\xef\xbb\xbfprices: []\n")
    assert load_policies(file) == PolicySet(sources=(file,))


def test_links_are_followed_only_inside_the_directory(tmp_path: Path) -> None:
    outside = write(tmp_path / "secret.yaml", "prices: []\n")
    policies = tmp_path / "policies"
    (policies / "..data").mkdir(parents=True)  # how Kubernetes mounts a ConfigMap
    target = write(policies / "..data" / "prices.yaml", "prices: []\n")
    (policies / "prices.yaml").symlink_to(target)
    (policies / "stolen.yaml").symlink_to(outside)
    (policies / "dangling.yaml").symlink_to(policies / "gone.yaml")

    assert load_errors(policies) == [
        f"{policies / 'dangling.yaml'}: not a regular file (a broken link?)",
        f"{policies / 'stolen.yaml'}: links outside {policies}; refusing to follow it",
    ]
    (policies / "stolen.yaml").unlink()
    (policies / "dangling.yaml").unlink()
    assert load_policies(policies) == PolicySet(sources=(policies / "prices.yaml",))


def test_policy_errors_carry_policy_error_instances(tmp_path: Path) -> None:
    with pytest.raises(PolicyErrors) as info:
        load_policies(tmp_path / "missing.yaml")
    assert all(isinstance(error, PolicyError) for error in info.value.errors)
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: no such file or directory"


# --- robustness --------------------------------------------------------------------------------

VALID = "prices:\n  - {provider: a, model: &m b, input_mtok: 0.6, output_mtok: 1e3}\n  - provider: c\n    model: *m\n"
PIECES = st.sampled_from([*"[]{}:,-&*!|>'\"#%@?~.\n\t 0123456789eE_", "<<", "!!", "---", "\x00", "é", "\ud800"])


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 3), PIECES), max_size=5), st.text())
def test_any_text_gives_a_policy_set_or_policy_errors(edits: list[tuple[int, int, str]], junk: str) -> None:
    mutated = VALID
    for position, cut, piece in edits:
        mutated = mutated[:position] + piece + mutated[position + cut :]
    for text in (mutated, junk):
        for error in errors_or_none(text):
            assert error.file == FILE
            assert error.line is None or error.line >= 1
            assert error.column is None or error.column >= 1


def errors_or_none(text: str) -> list[PolicyError]:
    """The errors of `text`, `[]` if it is valid; anything but `PolicyErrors` fails the test."""
    try:
        parse_policy_text(text, FILE)
    except PolicyErrors as exc:
        if not exc.errors:
            raise AssertionError("PolicyErrors without errors") from exc
        return exc.errors
    return []


def test_numbers_past_their_bounds_are_errors_at_their_place_and_cost_nothing() -> None:
    text = (
        "budgets:\n"
        "  - {name: a, limit_tokens: " + "9" * 4000 + ", window: day, action: deny}\n"
        "  - {name: b, limit_usd: 9000001, window: day, action: deny}\n"
        "routing:\n"
        "  - name: r\n"
        "    max_cost_usd: 100001\n"
        "    min_context: 100000001\n"
        "    candidates: [{model: 'openai:gpt-4.1', context_window: 100000001}]\n"
    )
    lines = [line for line in error_lines(text) if "candidates:" not in line]
    assert lines[0].startswith("policies/prices.yaml:2:29: budgets[0].limit_tokens: expected a number <= 10000")
    assert len(lines[0]) < 300  # the 4,000 digits are not quoted back
    assert lines[1:] == [
        "policies/prices.yaml:3:26: budgets[1].limit_usd: expected a number <= 9000000, got 9000001",
        "policies/prices.yaml:6:19: routing[0].max_cost_usd: expected a number <= 100000, got 100001",
        "policies/prices.yaml:7:18: routing[0].min_context: expected a number <= 100000000, got 100000001",
        "policies/prices.yaml:8:60: routing[0].candidates[0].context_window: expected a number <= 100000000, "
        "got 100000001",
    ]


def test_a_budget_lists_at_most_twenty_alert_thresholds() -> None:
    thresholds = ", ".join(f"0.{n:02d}" for n in range(1, 22))
    text = f"budgets:\n  - {{name: a, limit_usd: 1, window: day, action: deny, alerts: [{thresholds}]}}\n"
    assert error_lines(text) == [
        "policies/prices.yaml:2:64: budgets[0].alerts: Tuple should have at most 20 items after validation, "
        "not 21, got a list"
    ]
    twenty = ", ".join(f"0.{n:02d}" for n in range(1, 21))
    policies = parse_policy_text(f"budgets:\n  - {{name: a, limit_usd: 1, window: day, alerts: [{twenty}]}}\n", FILE)
    assert len(policies.budgets[0].alerts) == 20
