"""Nothing fails silently at start (issue 14, point 3): no policy file where policies are expected
warns in `from_settings()`, and is an error in `otel-puppy check` and `otel-puppy serve`, each naming
the absolute path looked at, unless told it is intended; `/v1/policies` and `otel-puppy status` say
how many policies are in force and from where.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import httpx
import pytest

from otel_puppy.cli import main
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import SettingsError
from otel_puppy.policies.presence import NoPoliciesWarning
from otel_puppy.settings import PuppySettings
from tests._service import cli, environment, service

HINT = "set OTEL_PUPPY_ALLOW_NO_POLICIES=true if that is intended"
CLI_HINT = "pass --allow-no-policies (or set OTEL_PUPPY_ALLOW_NO_POLICIES=true) if that is intended"
NO_FILES = "has no policy files (*.yaml, *.yml)"
NO_COUNTS = {"budgets": 0, "anomalies": 0, "breakers": 0, "routing": 0, "prices": 0}


@pytest.fixture(autouse=True)
def _no_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run in an empty directory (no `.env`, no `policies/`), with no `OTEL_PUPPY_*` variable."""
    for name in [name for name in os.environ if name.startswith("OTEL_PUPPY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def settings(**values: object) -> PuppySettings:
    return PuppySettings.load(store="memory://", watch_policies_s=None, **values)


def start(**values: object) -> list[str]:
    """The warnings `from_settings` gives, as text (it must not raise: a warning is not an error)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PolicyEngine.from_settings(settings(**values)).close()
    assert all(w.category is NoPoliciesWarning for w in caught), [str(w.message) for w in caught]
    return [str(w.message) for w in caught]


# --- from_settings ------------------------------------------------------------------------------------


def test_from_settings_warns_naming_the_absolute_path_of_a_missing_directory(tmp_path: Path) -> None:
    where = tmp_path.resolve() / "policies"  # the default, relative to the working directory
    assert start() == [f"no policy files: {where} does not exist, so nothing will be enforced; {HINT}"]
    with pytest.warns(NoPoliciesWarning) as warned:  # at the caller's line, so it is found
        PolicyEngine.from_settings(settings()).close()
    assert [Path(w.filename).name for w in warned] == ["test_no_policies.py"]


def test_from_settings_warns_for_a_directory_without_policy_files(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / ".hidden.yaml").write_text("budgets: []\n")  # editor backups are not read
    (folder / "README.md").write_text("budgets: []\n")
    (folder / "old.yaml").mkdir()  # nor directories
    expected = f"no policy files: {tmp_path.resolve() / 'policies'} {NO_FILES}, so nothing will be enforced; {HINT}"
    assert start() == [expected]
    assert start(policies=folder) == [expected.replace(str(tmp_path.resolve()), str(tmp_path))]


def test_from_settings_is_quiet_with_a_policy_file_or_when_told_it_is_intended(tmp_path: Path) -> None:
    assert start(allow_no_policies=True) == []
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "empty.yml").write_text("")  # a file, even an empty one, is a deliberate set
    assert start() == []
    assert start(policies=tmp_path / "policies" / "empty.yml") == []


def test_the_setting_is_a_bool_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PUPPY_ALLOW_NO_POLICIES", "true")
    assert PuppySettings.load().allow_no_policies is True
    monkeypatch.setenv("OTEL_PUPPY_ALLOW_NO_POLICIES", "perhaps" * 10_000)
    with pytest.raises(SettingsError) as refused:
        PuppySettings.load()
    assert str(refused.value).startswith(
        "invalid settings:\n  OTEL_PUPPY_ALLOW_NO_POLICIES: Input should be a valid boolean, unable to interpret input"
    )


# --- otel-puppy check --------------------------------------------------------------------------------


def test_check_fails_naming_the_path_unless_told_it_is_intended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    assert main(["check", str(empty)]) == 1
    assert capsys.readouterr().err == (
        f"error: no policy files: {empty} {NO_FILES}, so nothing will be enforced; {CLI_HINT}\n"
    )
    assert main(["check", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"error: no policy files: {missing} does not exist, so nothing will be enforced; {CLI_HINT}\n"
    )
    assert main(["check"]) == 1  # the setting's default, relative to the working directory
    assert f"no policy files: {tmp_path.resolve() / 'policies'} does not exist" in capsys.readouterr().err

    assert main(["check", str(empty), "--allow-no-policies"]) == 0
    assert (
        capsys.readouterr().out == f"ok (allowed): no policy files: {empty} {NO_FILES}, so nothing will be enforced\n"
    )
    monkeypatch.setenv("OTEL_PUPPY_ALLOW_NO_POLICIES", "1")
    assert main(["check", str(missing)]) == 0
    assert capsys.readouterr().out.startswith(f"ok (allowed): no policy files: {missing} does not exist")


# --- otel-puppy serve and status ---------------------------------------------------------------------


def test_serve_refuses_to_start_without_policies_before_opening_anything(tmp_path: Path) -> None:
    refused = cli(tmp_path, "serve", "--port", "0")
    where = tmp_path.resolve() / "policies"
    assert refused.returncode == 1
    assert (
        refused.stderr == f"error: no policy files: {where} does not exist, so nothing will be enforced; {CLI_HINT}\n"
    )
    assert list(tmp_path.iterdir()) == []  # no database: refused before the store was opened
    (tmp_path / "elsewhere").mkdir()
    refused = cli(tmp_path, "serve", "--port", "0", "--policies", "elsewhere")
    assert refused.returncode == 1
    assert f"no policy files: {tmp_path.resolve() / 'elsewhere'} {NO_FILES}" in refused.stderr


def test_serve_told_it_is_intended_starts_and_status_says_nothing_is_enforced(tmp_path: Path) -> None:
    where = tmp_path.resolve() / "policies"
    missing = f"no policy files: {where} does not exist, so nothing will be enforced"
    for how in (("--allow-no-policies",), ()):
        env = environment(**({} if how else {"allow_no_policies": "true"}))
        with service(tmp_path, *how, "--store", "memory://", env=env) as running:
            assert running.stderr.read_text() == ""  # no warning either: it was intended
            policies = httpx.get(f"{running.url}/v1/policies", timeout=10).json()
            assert policies == {
                "path": str(where),
                "count": 0,
                "counts": NO_COUNTS,
                "sources": [],
                "missing": missing,
                "summary": [],
            }
            status = cli(tmp_path, "status", "--url", running.url)
            assert status.returncode == 0, status.stderr
            assert status.stdout.splitlines()[1] == f"policies: 0 in force: {missing}"
            assert running.stop() == 0
