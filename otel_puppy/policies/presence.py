"""Whether policy files are where policies are expected: nothing fails silently at start.

An engine without policy files enforces nothing. That can be intended (prices and metrics only),
but far more often it is a service started from another directory, or a typo in
`OTEL_PUPPY_POLICIES`. So `PolicyEngine.from_settings()` warns (`NoPoliciesWarning`), and
`otel-puppy check` and `otel-puppy serve` refuse to go on, each naming the absolute path it
looked at, unless told it is intended (`OTEL_PUPPY_ALLOW_NO_POLICIES=true`, `--allow-no-policies`).

>>> missing_policies(Path("/nowhere/policies"))
'no policy files: /nowhere/policies does not exist, so nothing will be enforced'
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ("ALLOW_HINT", "CLI_ALLOW_HINT", "NoPoliciesWarning", "missing_policies")

ALLOW_HINT: Final = "set OTEL_PUPPY_ALLOW_NO_POLICIES=true if that is intended"
CLI_ALLOW_HINT: Final = "pass --allow-no-policies (or set OTEL_PUPPY_ALLOW_NO_POLICIES=true) if that is intended"

_SUFFIXES: Final = (".yaml", ".yml")
"""What the loader reads in a directory (`load_policies`): `*.yaml` and `*.yml`, hidden files apart."""


class NoPoliciesWarning(UserWarning):
    """`PolicyEngine.from_settings()` found no policy files where the settings point: nothing will be
    enforced. Silence it with `OTEL_PUPPY_ALLOW_NO_POLICIES=true` when that is intended."""


def missing_policies(path: Path) -> str | None:
    """Why no policies would be loaded from `path`: a sentence naming its absolute path; `None`
    when there is a policy file to load (it may still be invalid: the loader says so).

    `path` is a policy file (any name), or a directory holding at least one `*.yaml`/`*.yml` that is
    not hidden and not a directory, as `load_policies` reads it.
    """
    where = path.absolute()
    if not path.exists():
        why = "does not exist"
    elif not path.is_dir():
        return None
    else:
        try:
            found = _has_policy_file(path)
        except OSError:  # unreadable: the loader reports it, as an error naming the directory
            return None
        if found:
            return None
        why = f"has no policy files ({', '.join(f'*{suffix}' for suffix in _SUFFIXES)})"
    return f"no policy files: {where} {why}, so nothing will be enforced"


def _has_policy_file(directory: Path) -> bool:
    # No more entries than the loader lists anyway (it sorts them all), stopping at the first file.
    for entry in directory.iterdir():
        if entry.suffix in _SUFFIXES and not entry.name.startswith(".") and not entry.is_dir():
            return True
    return False
