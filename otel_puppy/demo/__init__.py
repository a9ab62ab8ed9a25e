"""`otel-puppy demo`: the service, and a simulated fleet of pydantic-ai agents under real policies driving it.

The demo runs as production does. The service (`create_app` on uvicorn, as `otel-puppy serve`
runs it) serves OTLP/HTTP, the decision API and /metrics on `settings.host:settings.port` from a
thread of the demo's process; the fleet runs in `fleet_processes` spawned processes, each an
application of its own: logfire exports its spans with the standard OTLP/HTTP exporter to the
service, and every model request is decided by the service through a `DecisionClient`. The live
view and the summary read the service's engine. (`in_process=True` runs the fleet in the demo's
own process instead, with the engine's span processor and the engine as the decider.)

Real pydantic-ai `Agent`s, instrumented by real logfire, talk to simulated providers: a
`FunctionModel` that reports a real provider and model (so the spans look exactly like those of
`openai:gpt-4.1` or `anthropic:claude-sonnet-4-5`), returns seeded-random usage with cached
prefixes, calls tools, and fails now and then like providers do (a 3% background of 429/500/503,
plus outages). Every agent's model is wrapped in `otel_puppy.guarded(...)`, as an application would
do it: each request asks for a decision first, a denied run ends with `PolicyDenied` (counted apart
from failures), and a degraded or routed one goes to a simulated model of the cheaper kind, whose
spans name it. Nothing leaves the machine: the fleet talks to the service only.

The scenario is the same for a given seed, on a clock that starts with the demo; `run()`'s keyword
arguments set its timing, and the defaults suit the shipped `policies/`:

- at `outage_at` (20 s) `outage_provider` (the self-hosted model server) fails every call for
  `outage_for` (25 s): its breaker opens, probes fail while the outage lasts and succeed once it is
  over. Milder outages of providers drawn from the seed follow now and then (`outage_every`: mean
  seconds between them).
- at `spike_at` (90 s) the research agent starts pasting whole pages into its prompts (16x the
  context, not in the provider's cache) for `spike_for` (45 s), spending about ten times as much:
  the spend-spike anomaly fires, and the per-agent budget soon stops it.
- at the default rate, budgets cross their alert thresholds and `openai-hourly` degrades gpt-4.1
  and gpt-4o to gpt-4.1-mini within about two minutes.

User and conversation ids reach the `chat` spans as OpenTelemetry baggage: OTel attributes are not
inherited by child spans, and pydantic-ai opens the `chat` spans itself, so each run is wrapped in
`logfire.set_baggage(...)` and logfire (`add_baggage_to_attributes=True`) copies the baggage onto
every span started inside, `chat` spans included, where `extract_call` reads `otel_puppy.user` and
`otel_puppy.conversation`. Decisions get the user from the guarded model of each run.

Modules: `agents` (the fleet's make-up), `scenario` (outages, spike), `fleet` (runs and simulated
providers), `drive` (arrivals in one event loop), `workers` (the fleet processes), `summary` (what it
did), `display` (the live view), `runner` (`run`, `run_fleet`).

>>> summary = run(PuppySettings.load(port=9464), duration=30, rate=8)  # doctest: +SKIP
>>> summary.spend_usd  # doctest: +SKIP
Decimal('0.412345678')
"""

from otel_puppy.demo.agents import FLEET, FLEET_SERVICE_NAME, SPIKE_AGENT, AgentSpec
from otel_puppy.demo.runner import run, run_fleet
from otel_puppy.demo.summary import DemoSummary

__all__ = ("FLEET", "FLEET_SERVICE_NAME", "SPIKE_AGENT", "AgentSpec", "DemoSummary", "run", "run_fleet")
