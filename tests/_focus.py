"""The FinOps Foundation's FOCUS validator (`focus-validator`), run on an export as FinOps teams run it.

It needs Python >= 3.12 (these machines have one under pyenv), so it gets an env of its own,
`.venv-focus`, made exactly `tests/focus/focus-validator.txt` (hashes) by uv, and made again only when
that lock changes. Facts about it (shared/notes/focus-validator.md): it opens its currency list
relative to the working directory, so it runs from its own site-packages; it exits 0 even when rules
fail, so its per-rule lines are read; FOCUS 1.2's InvoiceId rule is an either/or whose failing branch
it reports even when the OR rule passes.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ("Validation", "validate")

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "tests" / "focus" / "focus-validator.txt"
VENV = ROOT / ".venv-focus"
CRITERIA = (
    "PUBLIC_PRICE_LIST_SUPPORTED,UNIT_PRICING_SUPPORTED,USAGE_MEASUREMENT_SUPPORTED,TAGGING_SUPPORTED,"
    "NEGOTIATED_PRICING_SUPPORTED,ACCOUNT_NAMING_SUPPORTED"
)
"""The applicability criteria that describe token billing at list prices (`ALL` trips two rules of the
validator's own file whose conditions are wrong for data without commitment discounts or capacity
reservations: see the note)."""
_RULE = re.compile(r"^\S+\s+([A-Za-z]+-[A-Z]-\d{3}-[A-Z]):\s+(PASS|FAIL|SKIPPED)\b")
_TOTAL = re.compile(r"^Total:\s*(\d+)\s*\|\s*Pass:\s*(\d+)\s*\|\s*Fail:\s*(\d+)\s*\|\s*Skipped:\s*(\d+)")
_EITHER_OR = {"InvoiceId-C-003-C": ("InvoiceId-C-004-C", "InvoiceId-C-005-C")}


@dataclass(frozen=True)
class Validation:
    rules: dict[str, str]
    """Rule id -> PASS, FAIL or SKIPPED, as the validator printed them."""
    total: tuple[int, int, int, int]
    """Its `Total:` line: rules, passed, failed, skipped."""
    output: str

    @property
    def failures(self) -> list[str]:
        """Failed rules, less the failing branch of an either/or rule that passed."""
        tolerated = set()
        for either, branches in _EITHER_OR.items():
            if self.rules.get(either) == "PASS":
                failed = [b for b in branches if self.rules.get(b) == "FAIL"]
                if len(failed) < len(branches):
                    tolerated.update(failed)
        return sorted(rule for rule, result in self.rules.items() if result == "FAIL" and rule not in tolerated)


def _python312() -> str:
    """A Python >= 3.12: $FOCUS_PYTHON, python3.12/3.13 on PATH, or pyenv's; skip (fail under CI=true) without."""
    candidates = [os.environ.get("FOCUS_PYTHON", ""), "python3.13", "python3.12"]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3")), reverse=True)
    for candidate in filter(None, candidates):
        try:
            found = subprocess.run(
                [candidate, "-c", "import sys; print(sys.executable) if sys.version_info >= (3, 12) else exit(1)"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if found.returncode == 0:
            return found.stdout.strip()
    message = "focus-validator needs Python >= 3.12 and none was found (pyenv install 3.12, or set FOCUS_PYTHON)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


def _venv() -> Path:
    """`.venv-focus`, made from the lock unless it already is."""
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    stamp = VENV / ".lock-sha256"
    if stamp.exists() and stamp.read_text() == digest and (VENV / "bin" / "focus-validator").exists():
        return VENV
    uv = ROOT / ".venv" / "bin" / "uv"
    subprocess.run([str(uv), "venv", "--quiet", "--clear", "--python", _python312(), str(VENV)], check=True)
    subprocess.run(
        [str(uv), "pip", "sync", "--quiet", "--require-hashes", "--python", str(VENV / "bin" / "python"), str(LOCK)],
        check=True,
    )
    stamp.write_text(digest)
    return VENV


def validate(data: Path) -> Validation:
    """Run focus-validator (FOCUS 1.2) on a CSV file and read its per-rule results."""
    venv = _venv()
    site = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    run = subprocess.run(
        [
            str(venv / "bin" / "focus-validator"),
            "--data-file",
            str(data.resolve()),
            "--validate-version",
            "1.2",
            "--block-download",
            "--output-type",
            "console",
            "--applicability-criteria",
            CRITERIA,
        ],
        cwd=site,  # it opens focus_validator/rules/currency_codes.csv relative to here
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=600,
        check=False,
    )
    output = run.stdout + run.stderr
    rules: dict[str, str] = {}
    total = None
    for line in run.stdout.splitlines():
        if line.startswith("---"):  # the failures section repeats rule ids
            break
        if match := _TOTAL.match(line):
            total = tuple(int(group) for group in match.groups())
        elif match := _RULE.match(line):
            rules[match.group(1)] = match.group(2)
    assert run.returncode == 0, output[-3000:]
    assert total is not None, output[-3000:]
    assert total[0] == len(rules), output[-3000:]  # every rule's line read
    assert total[2] == list(rules.values()).count("FAIL"), output[-3000:]
    return Validation(rules, total, output)  # type: ignore[arg-type]
