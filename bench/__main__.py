"""`python -m bench [NAME ...]`: run benchmarks, print a table, rewrite BENCHMARKS.md."""

from __future__ import annotations

import argparse
import datetime
import importlib
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench._harness import Result, machine

BENCHES = (
    "on_end",
    "stall",
    "freshness",
    "pricing",
    "decide",
    "auth",
    "service",
    "corpus",
    "forward",
    "memory",
    "scaling",
    "redis",
    "focus",
)
OUTPUT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", choices=[*BENCHES, []], help="benchmarks to run (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    names = args.names or list(BENCHES)
    results: list[Result] = []
    console = Console()
    for name in names:
        console.print(f"running bench_{name} ...")
        results.extend(importlib.import_module(f"bench.bench_{name}").run())
    table = Table("figure", "ours", "baseline (same run)", "ratio", "target", "met")
    for r in results:
        table.add_row(r.name, r.ours, r.baseline, r.ratio_text, r.target, _met(r.met))
    console.print(table)
    if not args.no_write and set(names) == set(BENCHES):
        OUTPUT.write_text(_markdown(results))
        console.print(f"wrote {OUTPUT.name}")
    return 0


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def _markdown(results: list[Result]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m bench` (`make bench`). Every figure is a ratio against a baseline measured in",
        "the same run, because these machines are shared and noisy; absolute numbers are beside it.",
        "",
        f"- Machine: {machine()}",
        f"- Run: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "| figure | ours | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.ours} | {r.baseline} | {r.ratio_text} | {r.target} | {_met(r.met)} |" for r in results]
    notes = [f"- {r.name}: {r.note}" for r in results if r.note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += [
        "",
        "How each figure is measured:",
        "",
        "- `on_end`: 20,000 identical finished spans (a pydantic-ai `chat` span with message bodies, or",
        "  an HTTP server span) go through `on_end` of our processor and of `BatchSpanProcessor` with a",
        "  no-op exporter; mean per span over the loop, best of 5 rounds. Thread switches are held off",
        "  while timing so both processors' worker threads run outside the timed loop: the figure is",
        "  what the application thread pays. p99 is per call over a quarter of the spans.",
        "- stall: 30,000 GenAI spans go through `on_end` in bursts of 100 every 5 ms, once into an engine",
        "  whose store waits 100 ms in every write and once into one whose store does not; each call is",
        "  timed (thread switches held off within a burst, the worker runs between bursts, so it sits in",
        "  the stalled store while later bursts are timed). The queue fills and drops (counted); no call waits.",
        "- freshness: real clock, real worker thread: 500 GenAI spans end 0.5-5 ms apart, and after each",
        "  this thread asks `decide()` every 200 us until the span's per-agent budget shows its spend. The",
        "  yardstick is the floor of any hand-off: `Event.set()` to the waiting thread running, same run.",
        "- pricing: 3,000 calls over six models (OpenAI, Anthropic, Google; half with cache reads) priced",
        "  by `Pricer.price` and by `genai_prices.calc_price`; every result compared for equality first.",
        "- decide(): 50 policies (38 budgets incl. per-agent and per-user, 5 breakers, 5 anomaly detectors,",
        "  2 routing policies); 1,000 distinct requests (5 agents, 200 users, 30 teams) each matching 9",
        "  policies and reserving a $0.002 estimate, 10,000 timed calls after a warm-up pass. The yardstick",
        "  is one `genai_prices.calc_price` call timed in the same run.",
        "- auth: `POST /v1/decide` (3 budgets, `reserve: false`) through the whole ASGI application in-process,",
        "  2,000 requests a round, with auth off and on (a tokens file of 1,000 tokens; an unscoped decide token",
        "  and one scoped to a team, whose values fill the request); mean per request, best of 7 interleaved",
        "  rounds. What the check adds is `on - off`.",
        "- service: `otel-puppy serve` in a subprocess on loopback, with the memory and the SQLite store.",
        "  `/v1/decide` is paced open-loop at 1,000 requests/s for about 5 s over 4 kept-alive connections",
        "  (latency counted from when each request was due), against `GET /healthz` paced the same way.",
        "  The load generator shares the cores it measures, so it is a minimal HTTP/1.1 client (prebuilt",
        "  requests on kept-alive sockets, a few tens of microseconds each) rather than an HTTP library.",
        "  OTLP ingest: pydantic-ai chat spans with message bodies in 100-span gzip batches from 4",
        "  concurrent exporters, each acknowledged only after it is applied, against the parse-only",
        "  ceiling (gunzip, decode, attribute walk, no engine) measured in-process in the same run.",
        "- corpus: each of the instrumentation corpus's recordings (`tests/corpus/recordings`: the spans",
        "  sixteen real instrumentations emitted for real SDK calls) as protobuf gzip bodies, read over until",
        "  3,000 spans: the service's reader (gunzip, decode, `calls_from_request`) against gunzip, decode",
        "  and a walk of every span and attribute, CPU per span of the recording, best of 3; the figure is",
        "  the recording whose reading costs the most times its walk.",
        "- memory: in a fresh child process, 1,000,000 GenAI spans (2,000 alive at a time) go through the",
        "  span processor into an engine on the memory store, with budgets per agent, per user (24h",
        "  rolling) and per conversation over 10,000 distinct values of each; RSS after minus RSS before,",
        "  against the RSS of the same million span ids in a Python `set` (another child). The scrape is",
        "  `generate_latest` on that engine (median of 3), against the same engine before any span; its",
        "  series are bounded when no label has more values than the cardinality guard lets through and",
        "  no series repeats; the serializer yardstick is `generate_latest` over a plain collector handing",
        "  back the same samples. The shared stores, 100,000 of the same spans through an engine on each:",
        "  SQLite's pages of the dedupe tables and their expiry indexes (`dbstat`), Redis's keys",
        "  (`DBSIZE`) and `used_memory` before and after, per span.",
        "- scaling: 1, 2 and 4 `otel-puppy serve` replicas on one real `redis-server` (loopback, no",
        "  persistence), 20,000 spans of OTLP protobuf ingest from 2 exporters per replica; 1 replica on",
        "  Redis against one service on the memory store, more against 1 replica. Not measured (and said",
        "  why) without the Redis store or `redis-server`.",
        "- redis: the same service on a real `redis-server` (loopback, no persistence) against the memory",
        "  store in the same run: `/v1/decide` back to back over 4 connections (3,000 requests after a",
        "  1,000-request warm-up), and 15,000 spans of OTLP protobuf ingest from 4 exporters.",
        "- focus: a month's cost ledger on the SQLite store as 1,000,000 calls leave it (744 hours of 200",
        "  rows, four token types each), written by `Store.apply`; `otel-puppy export focus` of the month in",
        "  a child process, timed with its peak RSS, beside the export of one day (the bound on memory: the",
        "  export reads a day at a time), against `csv.writer` writing as many rows of as many columns.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
