"""A decision never fails open because of the request's own values or of poisoned state (issue 12, point 3).

Failing open (`fail_open`) is for a store that does not answer. A hostile or broken value of the
request is refused with `RequestError` (422 over HTTP) and reserves nothing; an unexpected error
decides by the fail mode but never looser than the budgets that can still be read; a budget whose
state cannot be read counts as exhausted and makes the engine not ready (`problems()`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy.bounds import MAX_CALL_COST_USD
from otel_puppy.clock import SystemClock
from otel_puppy.decision import Action
from otel_puppy.engine import PolicyEngine
from otel_puppy.exceptions import RequestError, StoreError
from otel_puppy.policies import parse_policy_text
from otel_puppy.settings import PuppySettings
from otel_puppy.store import Store, open_store
from otel_puppy.store.base import Admission, Admitted, BudgetCheck, CheckState, fullest_states
from otel_puppy.store.memory import MemoryStore

# Rolling windows: nothing resets in the middle of a test, whatever the time of day.
POLICIES = """
budgets:
  - {name: hard, limit_usd: 1, window: 30d, action: deny}
  - {name: soft, per: [agent], limit_usd: 1, window: 30d, action: warn}
"""
ONE_USD = Decimal("1.000000000")


def _engine(store: Store, yaml: str = POLICIES, **settings: Any) -> PolicyEngine:
    return PolicyEngine(
        PuppySettings.load(store="memory://", watch_policies_s=None, **settings),
        policies=parse_policy_text(yaml, Path("policies/test.yaml")),
        store=store,
        clock=SystemClock(),  # Redis expires keys by the real clock: no fixed date
        registry=CollectorRegistry(auto_describe=True),
    )


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def exhausted(store_url: str) -> Iterator[PolicyEngine]:
    """An engine whose deny budget `hard` is exhausted by a $1 reservation."""
    engine = _engine(open_store(store_url))
    first = engine.decide(provider="openai", model="gpt-4.1", agent="a", estimated_cost_usd="1")
    assert first.action is Action.ALLOW
    yield engine
    engine.close()


HOSTILE: list[tuple[str, object]] = [
    ("estimated_cost_usd", Decimal("NaN")),
    ("estimated_cost_usd", Decimal("sNaN")),
    ("estimated_cost_usd", Decimal("Infinity")),
    ("estimated_cost_usd", float("nan")),
    ("estimated_cost_usd", float("-inf")),
    ("estimated_cost_usd", Decimal("-5")),  # a negative reservation would loosen the budget for everyone
    ("estimated_cost_usd", Decimal("1e30")),
    ("estimated_cost_usd", Decimal(2**63).scaleb(-9)),  # int64 nano-USD: SQLite cannot bind it
    ("estimated_cost_usd", Decimal(2**53).scaleb(-9)),  # one past what Redis Lua holds exactly
    ("estimated_cost_usd", "1e999990"),  # would take most of a minute to turn into nano-USD
    ("estimated_cost_usd", "1" * 101),
    ("estimated_cost_usd", "abc"),
    ("estimated_cost_usd", True),
    ("estimated_input_tokens", "five"),
    ("estimated_input_tokens", 1.5),
    ("estimated_input_tokens", -1),
    ("estimated_input_tokens", True),
    ("estimated_input_tokens", 2**63),
    ("estimated_input_tokens", 10**30),
    ("estimated_input_tokens", 2**52),  # a count in range whose price for gpt-4.1 is over $9 million
    ("estimated_output_tokens", 2**53),
    ("context_tokens", 10**40),
    ("context_tokens", -1),
    ("agent", "\ud800"),  # a lone surrogate: neither SQLite nor Redis can encode it
    ("agent", "x" * 257),
    ("agent", 5),
    ("user", ["u1"]),
    ("provider", None),
    ("provider", ""),
    ("model", "m" * 10_000),
    ("operation", "\udfff"),
    ("priority", "urgent"),
    ("capabilities", 5),
    ("capabilities", ("tools",) * 65),
    ("capabilities", ("\ud800",)),
    ("bogus", 1),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(HOSTILE)])
def test_a_hostile_value_is_refused_and_the_exhausted_budget_still_denies(
    exhausted: PolicyEngine, field: str, value: object
) -> None:
    engine = exhausted
    fields: dict[str, Any] = {"provider": "openai", "model": "gpt-4.1", "agent": "b", field: value}
    with pytest.raises(RequestError) as raised:
        engine.decide(**fields)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    assert isinstance(raised.value, ValueError)

    after = engine.decide(provider="openai", model="gpt-4.1", agent="c")
    assert after.action is Action.DENY
    assert [(h.policy, h.action) for h in after.reasons] == [("hard", Action.DENY), ("soft", Action.ALLOW)]
    # the refused request reserved nothing, on any budget
    budgets = [(h.policy, h.scope, h.spent_usd, h.reserved_usd) for h in engine.snapshot().budgets]
    assert budgets == [
        ("hard", "", Decimal(0), ONE_USD),
        ("soft", "agent=a", Decimal(0), ONE_USD),
        ("soft", "agent=c", Decimal(0), Decimal(0)),
    ]
    assert engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "engine.decide"}) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("estimated_cost_usd", Decimal("-0.5")), ("estimated_cost_usd", Decimal("1e30")), ("agent", "\ud800")],
)
def test_a_warn_budget_is_not_switched_off_by_a_hostile_estimate(store_url: str, field: str, value: object) -> None:
    """On a warn budget a huge estimate used to reach the store (int64 overflow on SQLite, a Lua error
    on Redis) and fail open; a negative one reserved a negative amount, loosening every later check."""
    engine = _engine(open_store(store_url), "budgets: [{name: soft, limit_usd: 1, window: 30d, action: warn}]")
    try:
        with pytest.raises(RequestError):
            engine.decide(**cast(dict[str, Any], {"provider": "openai", "model": "gpt-4.1", field: value}))
        over = engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="1.5")
        assert over.action is Action.WARN
        assert over.reasons[0].message == (
            "budget soft: $0.000000000 of $1 this 30d (0%); over, warning only: "
            "this request alone ($1.5) is larger than the budget's limit ($1), so it never fits"
        )
        assert engine.snapshot().budget("soft").reserved_usd == Decimal("1.500000000")
        assert engine.decide(provider="openai", model="gpt-4.1").action is Action.WARN
    finally:
        engine.close()


def test_huge_but_bounded_amounts_are_reserved_exactly(store_url: str) -> None:
    """The largest estimate a request may carry (`bounds.MAX_CALL_COST_USD`) is reserved to the nano-dollar."""
    engine = _engine(open_store(store_url), "budgets: [{name: soft, limit_usd: 1, window: 30d, action: warn}]")
    try:
        top = MAX_CALL_COST_USD - Decimal("1e-9")
        decision = engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd=top)
        assert decision.action is Action.WARN
        assert decision.estimated_cost_usd == top
        assert engine.snapshot().budget("soft").reserved_usd == Decimal("99999.999999999")
        tiny = engine.decide(provider="openai", model="gpt-4.1", estimated_cost_usd="1e-999999999")
        assert tiny.action is Action.WARN
        assert engine.snapshot().budget("soft").reserved_usd == Decimal("99999.999999999")
    finally:
        engine.close()


# --- unexpected errors: the fail mode, never looser than the budgets --------------------------------


class PoisonedStore(MemoryStore):
    """A store whose state for some budgets cannot be parsed: reading them raises, as a store whose
    counter holds garbage does when it converts it."""

    def __init__(self) -> None:
        super().__init__()
        self.poisoned: set[str] = set()
        self.garbage: set[str] = set()

    def admit(self, admission: Admission, now: float) -> Admitted:
        for check in admission.checks:
            if check.scope in self.poisoned:
                raise ValueError("invalid literal for int() with base 10: 'garbage'")
        admitted = super().admit(admission, now)
        if self.garbage.intersection(check.scope for check in admission.checks):
            # a store that hands back what it read without checking it
            states = tuple(s._replace(spent_nanos=-(2**70)) for s in admitted.states)
            return Admitted(admitted.reserved, states)
        return admitted

    def read_budgets(self, checks: Sequence[BudgetCheck], now: float) -> list[CheckState]:
        # a read reserves nothing but meets the same poisoned state
        return list(self.admit(Admission("", tuple(checks), 0, 0, now, None, reserve=False), now).states)

    def read_fullest(self, groups: Sequence[Sequence[BudgetCheck]], now: float) -> list[CheckState]:
        # the scrape's read meets the same poisoned state (the memory store's own fast path would not)
        return fullest_states(groups, self.read_budgets([c for group in groups for c in group], now))


BUDGETS = """
budgets:
  - {name: org, limit_usd: 1, window: 30d, action: deny}
  - {name: team-a, match: {team: a}, limit_usd: 1, window: 30d, action: deny}
  - {name: team-b, match: {team: b}, limit_usd: 1, window: 30d, action: deny}
  - {name: team-b-soft, match: {team: b}, limit_usd: 1, window: 30d, action: warn}
  - {name: team-c, match: {team: c}, limit_usd: 1, window: 30d, action: {degrade: gpt-4.1-mini}}
"""


@pytest.fixture
def poisoned() -> Iterator[tuple[PolicyEngine, PoisonedStore]]:
    store = PoisonedStore()
    engine = _engine(store, BUDGETS, raise_internal_errors=False)
    yield engine, store
    engine.close()


def test_poisoned_state_denies_on_that_budget_only_and_makes_the_engine_not_ready(
    poisoned: tuple[PolicyEngine, PoisonedStore], caplog: pytest.LogCaptureFixture
) -> None:
    engine, store = poisoned
    assert engine.problems() == ()
    store.poisoned.add("budget:team-a|")
    with caplog.at_level(logging.WARNING, logger="otel_puppy"):
        denied = [engine.decide(provider="openai", model="gpt-4.1", team="a") for _ in range(50)]
    for decision in denied:  # it used to fail open: allow, "otel_puppy failed to decide"
        assert decision.action is Action.DENY
        assert decision.decision_id is None  # nothing reserved
    hits = [(h.kind, h.policy, h.action.value, h.message) for h in denied[0].reasons]
    assert hits == [
        ("internal", "otel_puppy", "allow", "otel_puppy failed to decide; failing open"),
        ("budget", "org", "allow", "budget org: $0.000000000 of $1 this 30d (0%)"),
        ("budget", "team-a", "deny", "budget team-a: its state cannot be read; counted as exhausted; denied"),
    ]
    # every other tenant keeps being enforced as before, with reservations
    other = engine.decide(provider="openai", model="gpt-4.1", team="b", estimated_cost_usd="0.25")
    assert (other.action, other.decision_id is not None) == (Action.ALLOW, True)
    assert engine.snapshot().budget("org").reserved_usd == Decimal("0.250000000")
    assert engine.problems() == ("the state of budget team-a cannot be read",)
    # /v1/budgets says so, and answers for every other budget; the scrape leaves that one series out
    budgets = [(h.policy, h.action.value, h.message) for h in engine.snapshot().budgets]
    assert budgets == [
        ("org", "allow", "budget org: $0.250000000 of $1 this 30d (25%)"),
        ("team-a", "deny", "budget team-a: its state cannot be read; counted as exhausted; denied"),
        ("team-b", "allow", "budget team-b: $0.250000000 of $1 this 30d (25%)"),
        ("team-b-soft", "allow", "budget team-b-soft: $0.250000000 of $1 this 30d (25%)"),
        ("team-c", "allow", "budget team-c: $0.000000000 of $1 this 30d (0%)"),
    ]
    ratio = "otel_puppy_budget_utilization_ratio"
    assert engine.registry.get_sample_value(ratio, {"budget": "org", "scope": "", "window": "30d"}) == 0.25
    assert engine.registry.get_sample_value(ratio, {"budget": "team-a", "scope": "", "window": "30d"}) is None
    # 50 failed decisions: one traceback and one unreadable-budget line, not 50 of each
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "otel_puppy internal error in engine.decide",
        "budget team-a: its state cannot be read (ValueError: invalid literal for int() with base 10: 'garbage'); "
        "it counts as exhausted until it can",
    ]
    assert engine.registry.get_sample_value("otel_puppy_internal_errors_total", {"component": "engine.decide"}) == 50
    assert engine.registry.get_sample_value("otel_puppy_decisions_total", {"action": "deny", "policy": "team-a"}) == 50

    store.poisoned.clear()  # repaired: ready again, and decisions as usual
    assert engine.problems() == ()
    assert engine.decide(provider="openai", model="gpt-4.1", team="a").action is Action.ALLOW


def test_a_budget_state_that_is_not_a_count_is_unreadable(poisoned: tuple[PolicyEngine, PoisonedStore]) -> None:
    """A store answering a negative (or float, or text) spend: that budget counts as exhausted."""
    engine, store = poisoned
    store.garbage.add("budget:team-a|")
    store.poisoned.add("budget:team-b|")  # the first error; team-a's garbage is found by the budget reads
    decision = engine.decide(provider="openai", model="gpt-4.1", team="b")
    assert decision.action is Action.DENY
    assert [h.policy for h in decision.reasons if h.action is Action.DENY] == ["team-b"]
    store.poisoned.clear()
    engine._rules.breakers.check = _raise  # type: ignore[method-assign]
    decision = engine.decide(provider="openai", model="gpt-4.1", team="a")
    assert [(h.policy, h.action) for h in decision.reasons if h.kind == "budget"] == [
        ("org", Action.ALLOW),
        ("team-a", Action.DENY),
    ]
    assert engine.problems() == ("the state of budget team-a cannot be read",)


def test_an_unreadable_warn_or_degrade_budget_applies_its_own_action(
    poisoned: tuple[PolicyEngine, PoisonedStore],
) -> None:
    engine, store = poisoned
    store.poisoned.update({"budget:team-b-soft|", "budget:team-c|"})
    warned = engine.decide(provider="openai", model="gpt-4.1", team="b")
    assert warned.action is Action.WARN
    assert [(h.policy, h.action) for h in warned.reasons if h.kind == "budget"] == [
        ("org", Action.ALLOW),
        ("team-b", Action.ALLOW),
        ("team-b-soft", Action.WARN),
    ]
    degraded = engine.decide(provider="openai", model="gpt-4.1", team="c")
    assert (degraded.action, degraded.provider, degraded.model) == (Action.DEGRADE, "openai", "gpt-4.1-mini")


def _raise(*args: object, **kwargs: object) -> list[Any]:
    raise RuntimeError("a bug outside the budgets")


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_bug_elsewhere_never_allows_what_an_exhausted_budget_denies(fail_open: bool) -> None:
    engine = _engine(MemoryStore(), BUDGETS, raise_internal_errors=False, fail_open=fail_open)
    try:
        assert engine.decide(provider="openai", model="gpt-4.1", team="a", estimated_cost_usd="1").allowed
        engine._rules.breakers.check = _raise  # type: ignore[method-assign]
        exhausted = engine.decide(provider="openai", model="gpt-4.1", team="a")
        assert exhausted.action is Action.DENY  # it used to be allowed: "otel_puppy failed to decide"
        budgets = [(h.policy, h.action) for h in exhausted.reasons if h.kind == "budget"]
        assert budgets == [("org", Action.DENY), ("team-a", Action.DENY)]
        assert exhausted.decision_id is None
        # with room in every budget the fail mode decides, as for an outage
        engine.store.release(next(iter(engine.store._reservations)))  # type: ignore[attr-defined]
        room = engine.decide(provider="openai", model="gpt-4.1", team="a")
        assert room.action is (Action.ALLOW if fail_open else Action.DENY)
        assert room.reasons[0].message == f"otel_puppy failed to decide; failing {'open' if fail_open else 'closed'}"
    finally:
        engine.close()


def test_when_no_budget_can_be_evaluated_the_fail_mode_decides(poisoned: tuple[PolicyEngine, PoisonedStore]) -> None:
    engine, _ = poisoned
    engine._rules.book.instances = _raise  # type: ignore[method-assign,assignment]
    decision = engine.decide(provider="openai", model="gpt-4.1", team="a")
    assert decision.action is Action.ALLOW
    assert [h.message for h in decision.reasons] == ["otel_puppy failed to decide; failing open"]


class DownStore(MemoryStore):
    def admit(self, admission: Admission, now: float) -> Admitted:
        raise StoreError("connection refused")


def test_a_store_outage_still_decides_by_the_fail_mode() -> None:
    engine = _engine(DownStore(), BUDGETS)
    try:
        decision = engine.decide(provider="openai", model="gpt-4.1", team="a")
        assert decision.action is Action.ALLOW
        assert [h.message for h in decision.reasons] == ["the state store is unavailable; failing open"]
        assert engine.problems() == ()  # an outage is not a problem of the state: /readyz finds it by a read
    finally:
        engine.close()


def test_in_process_guards_raise_the_request_error(engine: PolicyEngine) -> None:
    with pytest.raises(RequestError, match=r"^estimated_cost_usd: "):
        engine.guard("openai", "gpt-4.1", estimated_cost_usd=Decimal("-1")).__enter__()
    with pytest.raises(RequestError, match=r"^provider: must be a non-empty string$"):
        engine.guard("", "gpt-4.1").__enter__()
    with pytest.raises(RequestError, match=r"^agent: is 300 characters long \(allowed: at most 256\)$"):
        engine.decide(provider="openai", model="gpt-4.1", agent="a" * 300)


def test_a_token_estimate_priced_over_the_bound_is_refused(store_url: str) -> None:
    """100M tokens (in bounds) at the highest price a policy may set is $100M: more than any estimate
    may be (`MAX_CALL_COST_USD`), and past what Redis Lua sums exactly."""
    yaml = POLICIES + "prices: [{provider: self-hosted, model: big, input_mtok: 1000000, output_mtok: 1}]\n"
    engine = _engine(open_store(store_url), yaml)
    try:
        engine.decide(provider="self-hosted", model="big", agent="a", estimated_cost_usd="1")
        with pytest.raises(RequestError) as raised:
            engine.decide(provider="self-hosted", model="big", agent="a", estimated_input_tokens=100_000_000)
        assert str(raised.value) == "estimated_input_tokens: is priced at over 100000 USD for big"
        fine = engine.decide(provider="self-hosted", model="big", agent="b", estimated_output_tokens=100_000_000)
        assert fine.action is Action.DENY  # priced at $100: in bounds, and `hard` is exhausted
        assert engine.snapshot().budget("hard").reserved_usd == ONE_USD
    finally:
        engine.close()
