"""FOCUS export: a month of 1,000,000 calls exported from SQLite, in time and in memory.

The ledger a month of calls leaves on the SQLite store: 744 hours, each with the calls of 1,344 calls'
worth spread over 200 (provider, model, service, agent, team, environment) rows (four token types
with tokens each), written by `Store.apply` as the engine writes it (one entry per row, holding many
calls). `otel-puppy export focus --store ... --out FILE` then runs in a child process, timed, with its
peak RSS; the baseline, in the same run: the same number of CSV rows of the same width written by
`csv.writer` from rows already built (the serializer alone).
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._harness import Result
from otel_puppy.focus import FOCUS_COLUMNS
from otel_puppy.ledger import COUNTS, LedgerEntry, encode_dims
from otel_puppy.store import open_store
from otel_puppy.store.base import SpendRecord

CALLS = 1_000_000
HOURS = 744  # a 31-day month
ROWS_PER_HOUR = 200
MONTH = 1_767_225_600  # 2026-01-01T00:00:00Z
TARGET_S = 10.0
MEMORY_SLACK_MB = 20.0
"""Bounded memory: the month's export peaks within this of one day's (it reads a day at a time)."""
MODELS = (
    ("openai", "gpt-4.1"),
    ("openai", "gpt-4.1-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("google", "gemini-2.5-flash"),
)
PRICES = "9:2000,500,2000,8000,8000,0"


def _fill(url: str) -> int:
    """Write the month's ledger; returns the ledger rows."""
    rng = random.Random(20)
    store = open_store(url)
    per_row = CALLS // (HOURS * ROWS_PER_HOUR)
    extra = CALLS - per_row * HOURS * ROWS_PER_HOUR
    written = 0
    try:
        for hour in range(HOURS):
            records = []
            for i in range(ROWS_PER_HOUR):
                provider, model = MODELS[i % len(MODELS)]
                dims = encode_dims(
                    (provider, model, f"svc-{i % 5}", f"agent-{i}", f"team-{i % 8}", ("prod", "dev")[i % 2], PRICES)
                )
                calls = per_row + (1 if written < extra else 0)
                written += calls - per_row
                tokens = [rng.randint(500, 5000) * calls for _ in range(4)]
                counts = (calls, tokens[0], tokens[0] * 2000, tokens[1], tokens[1] * 500, 0, 0,
                          tokens[2], tokens[2] * 8000, tokens[3], tokens[3] * 8000, 0)  # fmt: skip
                assert len(counts) == len(COUNTS)
                at = MONTH + hour * 3600
                entry = LedgerEntry(at, dims, counts, at + 400 * 86400)
                records.append(SpendRecord(f"h{hour}r{i}", None, (), at + 86400, ledger=entry))
            store.apply(records, MONTH + hour * 3600)
    finally:
        store.close()
    return HOURS * ROWS_PER_HOUR


def _serializer_only(rows: int, path: Path) -> float:
    row = ["0.000000000"] * len(FOCUS_COLUMNS)
    began = time.perf_counter()
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FOCUS_COLUMNS)
        for _ in range(rows):
            writer.writerow(row)
    return time.perf_counter() - began


def run() -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="otel-puppy-bench-focus-") as tmp:
        url = f"sqlite:///{tmp}/state.db"
        ledger_rows = _fill(url)
        out = Path(tmp) / "focus.csv"
        day_peak_mb = _export(url, Path(tmp) / "day.csv", "2026-01-01", "2026-01-02")[1]
        elapsed, peak_mb = _export(url, out, "2026-01", "2026-02")
        focus_rows = sum(1 for _ in out.open()) - 1
        baseline = _serializer_only(focus_rows, Path(tmp) / "plain.csv")
    return [
        Result(
            name="FOCUS export of a month of 1,000,000 calls, SQLite store",
            ours=f"{elapsed:.1f} s, peak RSS {peak_mb:.0f} MB (one day's export: {day_peak_mb:.0f} MB)",
            baseline=f"csv.writer alone {baseline:.1f} s",
            ratio=elapsed / baseline,
            ratio_text=f"{elapsed / baseline:.1f}x the serializer",
            target=f"< {TARGET_S:g} s; peak RSS within {MEMORY_SLACK_MB:g} MB of one day's",
            met=elapsed < TARGET_S and peak_mb <= day_peak_mb + MEMORY_SLACK_MB,
            note=f"{ledger_rows:,} ledger rows (744 hours x 200), {focus_rows:,} FOCUS rows; `otel-puppy export focus` "
            "in a child process (interpreter start included), reading a day of rows at a time",
        )
    ]


def _export(url: str, out: Path, start: str, end: str) -> tuple[float, float]:
    """`otel-puppy export focus` of `[start, end)` in a child process: seconds, and its peak RSS in MB."""
    began = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, url, str(out), start, end],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return time.perf_counter() - began, float(child.stdout.split()[-1]) / 1024


_CHILD = """
import resource, sys
from otel_puppy.cli import main
url, out, start, end = sys.argv[1:5]
code = main(["export", "focus", "--store", url, "--from", start, "--to", end, "--out", out])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""

if __name__ == "__main__":
    for result in run():
        print(result)
