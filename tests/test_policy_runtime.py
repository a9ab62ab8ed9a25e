"""A new policy kind is one file plus its schema entry: a toy kind, added here the same way.

`ToyPolicy` and `ToyRuntime` are what the kind's file would hold; `ToySet.toys` is its schema entry
(the `PolicySet` section). Nothing in the engine names the kind, yet its runtime observes calls,
has a say in decisions, shows in the snapshot and on /metrics, and its state survives a restart.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client.core import CounterMetricFamily, Metric

from otel_puppy.calls import LLMCall
from otel_puppy.decision import Action, DecisionRequest, PolicyHit
from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import PolicySet
from otel_puppy.policies.base import NamedEntry
from otel_puppy.policies.runtime import PolicyRuntime, RuntimeContext, RuntimeEvent
from otel_puppy.settings import PuppySettings
from otel_puppy.store import open_store
from otel_puppy.testing import FakeClock, make_call

# --- the kind's file ---------------------------------------------------------------------------


class ToyPolicy(NamedEntry):
    """Deny a provider after `max_calls` calls to it."""

    provider: str
    max_calls: int

    @staticmethod
    def runtime(policies: tuple[ToyPolicy, ...], context: RuntimeContext) -> ToyRuntime:
        return ToyRuntime(policies, context)

    def describe(self) -> str:
        return f"toy {self.name}: at most {self.max_calls} calls to {self.provider}"


class ToyRuntime:
    kind: Final = "toys"
    persists: Final = True
    shared: Final = False

    def __init__(self, policies: tuple[ToyPolicy, ...], context: RuntimeContext) -> None:
        self.policies = policies
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe(self, observed: Sequence[tuple[LLMCall, int | None]], now: float) -> None:
        with self._lock:
            for call, _ in observed:
                self.calls[call.provider] = self.calls.get(call.provider, 0) + 1

    def check(self, request: DecisionRequest, now: float) -> Sequence[PolicyHit]:
        return [
            PolicyHit(kind="toy", policy=p.name, action=Action.DENY, message=f"toy {p.name}: too many calls")
            for p in self.policies
            if p.provider == request.provider and self.calls.get(p.provider, 0) >= p.max_calls
        ]

    def release(self, request: DecisionRequest) -> None:
        pass

    def statuses(self, now: float) -> list[tuple[str, int]]:
        return sorted(self.calls.items())

    def collect(self, now: float) -> Iterable[Metric]:
        family = CounterMetricFamily("toy_calls", "Calls the toy kind counted.", labels=("provider",))
        for provider, count in sorted(self.calls.items()):
            family.add_metric((provider,), float(count))
        return [family]

    def export_state(self) -> dict[str, bytes]:
        return {provider: json.dumps(count).encode() for provider, count in self.calls.items()}

    def import_state(self, items: Mapping[str, bytes]) -> None:
        self.calls.update({provider: int(json.loads(blob)) for provider, blob in items.items()})

    def version(self, key: str, blob: bytes) -> int | None:
        return 0

    def with_policies(self, policies: tuple[ToyPolicy, ...]) -> ToyRuntime:
        return self

    def handle(self, event: RuntimeEvent) -> None:
        pass

    def after_fork(self) -> None:
        self._lock = threading.Lock()


# --- its schema entry --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToySet(PolicySet):
    toys: tuple[ToyPolicy, ...] = ()


# --- the test ----------------------------------------------------------------------------------


def _engine(url: str, clock: FakeClock) -> PolicyEngine:
    policies = ToySet(toys=(ToyPolicy(name="two-openai", provider="openai", max_calls=2),))
    settings = PuppySettings.load(store=url, watch_policies_s=None)
    return PolicyEngine(settings, policies=policies, store=open_store(url), clock=clock)


def test_a_toy_kind_is_observed_decides_shows_and_survives_a_restore(tmp_path: Path) -> None:
    runtime: PolicyRuntime = ToyRuntime((), None)  # type: ignore[arg-type]
    assert runtime.kind == "toys"  # the toy runtime is a PolicyRuntime (mypy checks the assignment)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    clock = FakeClock()
    engine = _engine(url, clock)
    try:
        assert engine.decide(provider="openai", model="gpt-4.1").action is Action.ALLOW
        now = clock.now()
        engine.observe_many([make_call(end_s=now), make_call(end_s=now)])
        denied = engine.decide(provider="openai", model="gpt-4.1")
        assert (denied.action, [h.policy for h in denied.reasons]) == (Action.DENY, ["two-openai"])
        assert engine.decide(provider="anthropic", model="claude-sonnet-4").action is Action.ALLOW
        kinds = engine.snapshot().kinds
        assert kinds is not None
        assert kinds["toys"] == (("openai", 2),)
        assert engine.registry.get_sample_value("toy_calls_total", {"provider": "openai"}) == 2.0
    finally:
        engine.close()
    restarted = _engine(url, clock)
    try:
        kinds = restarted.snapshot().kinds
        assert kinds is not None
        assert kinds["toys"] == (("openai", 2),)
        assert restarted.decide(provider="openai", model="gpt-4.1").action is Action.DENY
    finally:
        restarted.close()
