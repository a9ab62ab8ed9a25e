"""The policy set in force, compiled: its pricer, one runtime per policy kind, routing and admission.

Everything derived from the policy files lives in one immutable `Rules`, replaced whole on reload
(`build_rules` with the previous one carries each runtime's live state over), so a decision never
sees half of an old set and half of a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from otel_puppy.admission import BudgetAdmission
from otel_puppy.learned import LearnedEstimates
from otel_puppy.model_stats import ModelStats
from otel_puppy.policies import PolicySet
from otel_puppy.policies.breaker import BreakerRuntime
from otel_puppy.policies.budget import BudgetBook, BudgetRuntime
from otel_puppy.policies.routing import Router
from otel_puppy.policies.runtime import PolicyRuntime, RuntimeContext, runtime_sections
from otel_puppy.pricing import Pricer
from otel_puppy.windows import Window

__all__ = ("Rules", "build_rules")


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything derived from one policy set; replaced whole on reload."""

    policies: PolicySet
    pricer: Pricer
    runtimes: tuple[PolicyRuntime, ...]
    """One per policy kind, in the order of the `PolicySet`'s sections."""
    budgets: BudgetRuntime
    breakers: BreakerRuntime
    router: Router
    admission: BudgetAdmission

    @property
    def book(self) -> BudgetBook:
        return self.budgets.book


def build_rules(
    policies: PolicySet,
    previous: Rules | None,
    context: RuntimeContext,
    stats: ModelStats,
    *,
    reservation_ttl_s: float,
    total_windows: tuple[Window, ...],
    learned: LearnedEstimates | None = None,
    ledger_retention_s: float | None = None,
) -> Rules:
    """Compile `policies`; with `previous`, every part keeps the live state the new entries still have."""
    if previous is None:
        pricer = Pricer(policies.price_overrides())
        router = Router(policies.routing, stats, pricer)
        kept: dict[str, PolicyRuntime] = {}
    else:
        pricer = previous.pricer.with_overrides(policies.price_overrides())
        router = previous.router.with_policies(policies.routing, pricer=pricer)
        kept = {runtime.kind: runtime for runtime in previous.runtimes}
    runtimes: list[PolicyRuntime] = []
    for section, build in runtime_sections(type(policies)):
        entries = getattr(policies, section)
        before = kept.get(section)
        runtimes.append(before.with_policies(entries) if before is not None else build(entries, context))
    budgets, breakers = _built(runtimes, BudgetRuntime), _built(runtimes, BreakerRuntime)
    admission = BudgetAdmission(
        budgets,
        pricer,
        context.store,
        routed=bool(policies.routing),
        applies=router.applies,
        traced=budgets.book.reads_trace
        or any(r.match is not None and r.match.trace is not None for r in policies.routing),
        reservation_ttl_s=reservation_ttl_s,
        total_windows=total_windows,
        learned=learned,
        ledger_retention_s=ledger_retention_s,
    )
    return Rules(policies, pricer, tuple(runtimes), budgets, breakers, router, admission)


_R = TypeVar("_R")


def _built(runtimes: Sequence[PolicyRuntime], kind: type[_R]) -> _R:
    """The runtime of a built-in kind (admission, routing and `breaker()` use theirs directly)."""
    return next(runtime for runtime in runtimes if isinstance(runtime, kind))
