"""Decisions assembled from hits, and counted: the last step of `PolicyEngine.decide`.

The engine gathers a request's hits (routing, every runtime, budget admission); `Decisions`
turns them into the `Decision` it answers — the strictest enforced action, its reasons, retry
and reset times — counts each under `otel_puppy_decisions_total{action,policy}`, and builds the
fail-mode decision for a store that does not answer or an unexpected error.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Final

from prometheus_client.core import CounterMetricFamily, Metric

from otel_puppy.admission import BudgetAdmission, BudgetHits, Hit, Plan, decide_despite
from otel_puppy.decision import Action, Decision, DecisionRequest, LazyHits, PolicyHit, Severity, allowed_decision
from otel_puppy.money import nanos_to_usd
from otel_puppy.store.base import CheckState

__all__ = ("Decisions", "strictest")

_ALLOWED: Final = (Action.ALLOW.value, "")
_NONE: Final = LazyHits(())


class Decisions:
    """Builds and counts the engine's decisions; `fail_open` is the fail mode."""

    def __init__(self, *, fail_open: bool) -> None:
        self.fail_open = fail_open
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def allowed(  # noqa: PLR0917 - positional: `decide()` calls it for nearly every decision
        self,
        request: DecisionRequest,
        plan: Plan,
        states: Sequence[CheckState],
        estimate: tuple[int, int],
        source: str,
        decision_id: str | None,
        now: float,
        reserved: bool,
    ) -> Decision:
        """The usual decision: only budgets had a say, and each enforced one has room. It builds no
        hit unless one is read. `reserved`: the store holds the estimate for it."""
        with self._lock:
            self._counts[_ALLOWED] = self._counts.get(_ALLOWED, 0) + 1
        estimated = _estimated(request, estimate)
        shadow = plan.shadow
        return allowed_decision(
            request.provider,
            request.model,
            BudgetHits(plan.instances, states, plan.enforced, now) if plan.enforced else _NONE,
            BudgetHits(plan.instances, states, shadow, now, plan.checks, estimate, plan.store) if shadow else _NONE,
            decision_id,
            estimated,
            estimated if reserved else None,
            source,
        )

    def ruled(
        self,
        request: DecisionRequest,
        hits: Sequence[Hit],
        estimate: tuple[int, int],
        source: str,
        decision_id: str | None,
        *,
        reserved: bool = False,
    ) -> Decision:
        """The strictest enforced hit decides; every hit is listed (shadow ones apart). `reserved`:
        the store holds the estimate for it."""
        action = strictest(hits)
        enforced = [h for h in hits if not h.shadow]
        deciding = [h for h in enforced if h.action is action and action is not Action.ALLOW]
        retry_after = _retry_after(deciding) if action is Action.DENY else None
        resets_at = min((h.resets_at for h in deciding if h.resets_at is not None), default=None)
        self._count((action.value, deciding[0].policy if deciding else ""))
        estimated = _estimated(request, estimate)
        return Decision(
            action=action,
            provider=request.provider,
            model=request.model,
            reasons=LazyHits(enforced),
            shadow=LazyHits([h for h in hits if h.shadow]),
            decision_id=decision_id,
            retry_after_s=retry_after,
            resets_at=resets_at,
            estimated_cost_usd=estimated,
            reserved_usd=estimated if reserved else None,
            estimate_source=source,
        )

    def despite(self, admission: BudgetAdmission, request: DecisionRequest, now: float) -> Decision:
        """After an unexpected error: the fail mode, never looser than the budgets
        (`admission.decide_despite`).

        Raises:
            StoreError: the store does not answer (the caller decides by the fail mode alone).
            Exception: any other failure of the budgets' read (likewise).
        """
        decision, key = decide_despite(admission, request, self.failed(request, "otel_puppy failed to decide"), now)
        self._count(key)
        return decision

    def failed(self, request: DecisionRequest, why: str) -> Decision:
        """The fail mode alone, with `why` as its one (internal, critical) reason. Not counted."""
        action = Action.ALLOW if self.fail_open else Action.DENY
        hit = PolicyHit(
            kind="internal",
            policy="otel_puppy",
            action=action,
            message=f"{why}; failing {'open' if self.fail_open else 'closed'}",
            severity=Severity.CRITICAL,
        )
        return Decision(action, request.provider, request.model, reasons=(hit,))

    def _count(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """`otel_puppy_decisions_total`, by action and the policy that decided."""
        with self._lock:
            counts = dict(self._counts)
        family = CounterMetricFamily(
            "otel_puppy_decisions", "Decisions, by action and the policy that decided.", labels=("action", "policy")
        )
        for key, count in counts.items():
            family.add_metric(key, float(count))
        yield family

    def after_fork(self) -> None:
        """In a forked child: the parent's threads may have held the lock."""
        self._lock = threading.Lock()


def strictest(hits: Sequence[Hit]) -> Action:
    """The strictest action of the enforced hits (`allow` when there are none)."""
    return Action.strictest([h.action for h in hits if not h.shadow])


def _retry_after(denying: Sequence[Hit]) -> float | None:
    """When every denying policy may let the request through: the latest of their times. None when
    a denying budget gives none: the request alone is larger than its limit (it never fits), or its
    state cannot be read. Read only for a deny: a rolling budget's time reads its sub-buckets."""
    waits = [(h.kind, h.retry_after_s) for h in denying]
    if any(wait is None and kind == "budget" for kind, wait in waits):
        return None
    return max((wait for _, wait in waits if wait is not None), default=None)


def _estimated(request: DecisionRequest, estimate: tuple[int, int]) -> Decimal | None:
    return nanos_to_usd(estimate[0]) if estimate != (0, 0) else request.estimated_cost_usd
