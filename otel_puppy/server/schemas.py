"""Request and response models of the JSON API, so its OpenAPI document is precise.

Responses are built by the engine's own `to_dict()` methods (`Decision.to_dict`,
`PolicyHit.to_dict`, `BreakerStatus.to_dict`, ...) and sent as they are: these models describe
that shape exactly (money as decimal strings, times as ISO 8601 or epoch seconds as documented)
and validate it, so a client can read any response with `Model.model_validate(response.json())`
and `Decision.from_dict(response.json())` round-trips.

>>> DecideRequest(provider="openai", model="gpt-4.1", estimated_cost_usd="0.02").to_request().estimated_cost_usd
Decimal('0.02')
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from otel_puppy.bounds import (
    MAX_CALL_COST_USD,
    MAX_CALL_TOKENS,
    MAX_CAPABILITIES,
    MAX_NAME_LENGTH,
    NotANumber,
    OutOfBounds,
    read_decimal,
)
from otel_puppy.decision import Action, DecisionRequest, Priority, Severity

__all__ = (
    "AnomaliesResponse",
    "AnomalyStatusModel",
    "BreakerStatusModel",
    "BreakersResponse",
    "BudgetsResponse",
    "CostsResponse",
    "DecideRequest",
    "DecisionResponse",
    "ErrorResponse",
    "HealthIndicator",
    "HealthResponse",
    "HealthStatus",
    "InvalidPoliciesResponse",
    "LiveResponse",
    "ModelStatModel",
    "ModelsResponse",
    "PoliciesResponse",
    "PolicyErrorModel",
    "PolicyHitModel",
    "ReadyResponse",
    "ReloadResponse",
)

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
"""Worst first is `unhealthy`; the overall status is the worst of the indicators'."""

_USD = "USD as a decimal string (exact), e.g. `0.0028`."


_DECIMAL_STRING: Final = r"^\s*\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
"""A non-negative decimal as a string, which is what `estimated_cost_usd` accepts besides a number."""


def _decimal_strings_only(schema: dict[str, Any]) -> None:
    """Document the string form of a decimal as the pattern it must match, not as any string."""
    for branch in schema.get("anyOf", ()):
        if branch.get("type") == "string":
            branch["pattern"] = _DECIMAL_STRING


def _bounded_usd(value: object) -> object:
    """The estimate read by the one bounded parser, before pydantic converts it: `1e999990` costs microseconds."""
    if value is None:
        return None
    try:
        return read_decimal(value, name="estimated_cost_usd", maximum=MAX_CALL_COST_USD)
    except NotANumber:
        raise PydanticCustomError("decimal_parsing", "Input should be a valid decimal") from None
    except OutOfBounds as exc:  # worded as pydantic words `ge`/`le`, as for every other bounded field
        if exc.below:
            raise PydanticCustomError("greater_than_equal", "Input should be greater than or equal to 0") from None
        limit = {"le": f"{MAX_CALL_COST_USD}"}
        raise PydanticCustomError("less_than_equal", "Input should be less than or equal to {le}", limit) from None


Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]
"""Every name field of the decision API: as long as a span attribute may be, and no longer."""
Tokens = Annotated[int, Field(ge=0, le=MAX_CALL_TOKENS, strict=True)]
"""A token count or estimate: `true` and `"5"` are not token counts (the document says integer)."""
_TOKENS: Final = f"At most {MAX_CALL_TOKENS:,} (`otel_puppy.bounds.MAX_CALL_TOKENS`)."


class DecideRequest(BaseModel):
    """`POST /v1/decide`: may I make this call, and with which model? (the `DecisionRequest` fields)

    Bounded like spans (`otel_puppy.bounds`): names of at most 256 characters, estimates of at most
    $100,000 and 100,000,000 tokens, at most 32 capabilities; anything else is a `422` naming the field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Name = Field(min_length=1, description="Provider of the model to call, e.g. `openai`.")
    model: Name = Field(min_length=1, description="Model to call, e.g. `gpt-4.1`.")
    agent: Name | None = None
    service: Name | None = None
    user: Name | None = None
    team: Name | None = None
    environment: Name | None = None
    conversation: Name | None = None
    operation: Name = "chat"
    priority: Priority = Field(
        default=Priority.NORMAL, description="Budgets can keep their last fraction for the higher priorities."
    )
    estimated_cost_usd: Annotated[Decimal | None, BeforeValidator(_bounded_usd)] = Field(
        default=None,
        ge=0,
        le=MAX_CALL_COST_USD,
        allow_inf_nan=False,
        json_schema_extra=_decimal_strings_only,
        description='Estimated cost in USD (a decimal string such as `"0.02"`, or a number), reserved '
        "against every matching budget until the call's span settles it. At most 100000 "
        "(`otel_puppy.bounds.MAX_CALL_COST_USD`).",
    )
    estimated_input_tokens: Tokens | None = Field(default=None, description=_TOKENS)
    estimated_output_tokens: Tokens | None = Field(default=None, description=_TOKENS)
    capabilities: tuple[Name, ...] = Field(
        default=(),
        max_length=MAX_CAPABILITIES,
        description="Capabilities the call needs (e.g. `tools`); routing only picks models with them. At most 32.",
    )
    context_tokens: int | None = Field(
        default=None,
        ge=0,
        le=MAX_CALL_TOKENS,
        strict=True,
        description="Prompt size; routing only picks models whose context window holds it. " + _TOKENS,
    )
    trace_id: str | None = Field(
        default=None,
        min_length=32,
        max_length=32,
        pattern=r"^[0-9a-fA-F]{32}$",
        description="The agent run (trace) the call belongs to, 32 hex digits as in W3C Trace Context: what "
        "`per: [trace]` budgets count by. Without it, the `traceparent` header's trace id is used, if valid.",
    )
    reserve: bool = Field(
        default=True,
        strict=True,
        description="`false` only asks: the same action and reasons as a reserving decision, but nothing is "
        "held (no reservation of any kind, no breaker probe) and nothing is left to settle (`decision_id` and "
        "`reserved_usd` are null). In-process: `PolicyEngine.decide(..., reserve=False)`.",
    )

    def to_request(self, trace_id: str | None = None) -> DecisionRequest:
        """The request; `trace_id` (from `traceparent`) when the body names none."""
        return DecisionRequest(
            provider=self.provider,
            model=self.model,
            agent=self.agent,
            service=self.service,
            user=self.user,
            team=self.team,
            environment=self.environment,
            conversation=self.conversation,
            operation=self.operation,
            priority=self.priority,
            estimated_cost_usd=self.estimated_cost_usd,
            estimated_input_tokens=self.estimated_input_tokens,
            estimated_output_tokens=self.estimated_output_tokens,
            capabilities=self.capabilities,
            context_tokens=self.context_tokens,
            trace_id=self.trace_id or trace_id,
        )


class PolicyHitModel(BaseModel):
    """One policy's say in a decision, or a budget's state (`PolicyHit.to_dict()`)."""

    kind: str = Field(description="`budget`, `breaker`, `anomaly`, `routing` (or `internal`).")
    policy: str
    action: Action
    message: str
    scope: str = Field(default="", description="The policy's instance, e.g. `agent=support`.")
    severity: Severity = Severity.INFO
    shadow: bool = False
    spent_usd: Decimal | None = Field(default=None, description=_USD)
    limit_usd: Decimal | None = Field(default=None, description=_USD)
    spent_tokens: int | None = None
    limit_tokens: int | None = None
    reserved_usd: Decimal | None = Field(default=None, description=_USD)
    utilization: float | None = Field(default=None, description="Spent plus reserved over the limit; 1 is exhausted.")
    window: str | None = None
    resets_at: datetime | None = Field(
        default=None,
        description="When a calendar window (`hour`, `day`, `week`, `month`) resets. Null for a rolling window "
        "(`15m`, `1h`, ...): it never resets, its spend ages out (see `retry_after_s`).",
    )
    retry_after_s: float | None = Field(
        default=None,
        description="Seconds until the budget has room for this request: on a denying calendar budget, until it "
        "resets; on any rolling budget over its limit, until enough of its spend has aged out. Null when the "
        "request alone is larger than the budget's limit (it never fits; the message says so).",
    )
    model: str | None = Field(default=None, description="For `degrade`: the model to use instead.")
    spent_calls: int | None = Field(
        default=None,
        description="A call budget's (`limit_calls`): model calls made in its window plus calls admitted and not "
        "yet settled by their span.",
    )
    limit_calls: int | None = None


class DecisionResponse(BaseModel):
    """The answer (`Decision.to_dict()`); `Decision.from_dict` reads it back."""

    action: Action
    provider: str = Field(description="The provider to call (changed on `degrade` or by routing).")
    model: str = Field(description="The model to call (changed on `degrade` or by routing).")
    reasons: list[PolicyHitModel] = Field(description="Every enforced policy that matched.")
    shadow: list[PolicyHitModel] = Field(description="What shadow policies would have done.")
    decision_id: str | None = Field(
        default=None, description="Put it on the call's span as `otel_puppy.decision_id` to settle the reservation."
    )
    retry_after_s: float | None = Field(
        default=None,
        description="On a deny: when every denying policy may let it through (the latest of theirs). Null when "
        "a denying budget gives no time: the request alone is larger than its limit, so it never fits.",
    )
    resets_at: datetime | None = Field(
        default=None, description="The earliest reset of a deciding calendar budget; rolling windows never reset."
    )
    estimated_cost_usd: Decimal | None = Field(
        default=None,
        description="The estimate the decision worked with: the request's, or a learned one (see "
        "`estimate_source`); null when there is none. " + _USD,
    )
    estimate_source: Literal["request", "learned", "none"] = Field(
        default="none",
        description="Where `estimated_cost_usd` comes from: `request` (the request's estimate), `learned` (a "
        "high quantile of what the last calls of the same agent, provider and model cost: the request gave no "
        "estimate, or input tokens alone) or `none` (too few calls seen to learn one).",
    )
    reserved_usd: Decimal | None = Field(
        default=None,
        description="What this decision holds on each budget it counts against until the call's span settles "
        "it, formatted as `GET /v1/budgets` shows `reserved_usd`; null when nothing is held (`reserve: false`, "
        "a deny, no estimate, or no budget). " + _USD,
    )
    created_at: datetime


class BudgetsResponse(BaseModel):
    """`GET /v1/budgets`: every known budget instance in its current window."""

    budgets: list[PolicyHitModel]


class BreakerStatusModel(BaseModel):
    """One subject's circuit breaker (`BreakerStatus.to_dict()`)."""

    policy: str
    subject: str = Field(description="`openai`, or `openai:gpt-4.1` for a per-model breaker.")
    provider: str
    model: str | None
    state: Literal["closed", "half_open", "open"]
    failures: int = Field(description="Consecutive failures since the breaker last closed.")
    successes: int = Field(description="Successful probes while half-open.")
    opened_at: float | None = Field(description="Epoch seconds.")
    retry_at: float | None = Field(description="When half-open begins (or began), epoch seconds.")
    transitions: int
    shadow: bool


class BreakersResponse(BaseModel):
    """`GET /v1/breakers`."""

    breakers: list[BreakerStatusModel]


class AnomalyStatusModel(BaseModel):
    """One (policy, subject) detector (`AnomalyStatus.to_dict()`); non-finite numbers are `null`."""

    policy: str
    signal: str
    subject: str
    current: float | None
    baseline: float | None
    deviation_pct: float | None
    score: float | None
    samples: int
    firing: bool
    fired_at: float | None = Field(description="Epoch seconds.")
    action: str
    shadow: bool


class AnomaliesResponse(BaseModel):
    """`GET /v1/anomalies`."""

    anomalies: list[AnomalyStatusModel]


class ModelStatModel(BaseModel):
    """One model over the recent window (`ModelStat.to_dict()`)."""

    provider: str
    model: str
    requests: int
    errors: int
    success_rate: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    tokens_per_request: float
    cost_per_request_usd: Decimal | None = Field(description=_USD)
    cost_per_1k_tokens_usd: Decimal | None = Field(description=_USD)


class ModelsResponse(BaseModel):
    """`GET /v1/models`."""

    models: list[ModelStatModel]


class ReloadResponse(BaseModel):
    """`POST /v1/policies/reload`: the policy set now in force."""

    summary: list[str] = Field(description="One line per policy: what it will do.")
    sources: list[str] = Field(description="The files it was loaded from.")


class PoliciesResponse(BaseModel):
    """`GET /v1/policies`: the policy set in force, and where the service loads it from."""

    path: str = Field(description="The absolute path the service loads policy files from (`OTEL_PUPPY_POLICIES`).")
    count: int = Field(description="Policies in force, every kind together; 0: nothing is enforced.")
    counts: dict[str, int] = Field(
        description="Policies in force by kind: budgets, anomalies, breakers, routing, prices."
    )
    sources: list[str] = Field(description="The files the set was loaded from; empty when there are none.")
    missing: str | None = Field(
        description="Why no policy file is there (the path does not exist, or holds none); null when there is one."
    )
    summary: list[str] = Field(description="One line per policy: what it will do.")


class PolicyErrorModel(BaseModel):
    file: str
    line: int | None
    column: int | None
    path: str = Field(description="The field path inside the file, e.g. `budgets[0].limit_usd`.")
    message: str


class ErrorResponse(BaseModel):
    """Every JSON API error."""

    code: str = Field(description="Machine-readable, e.g. `unauthorized`, `invalid_request`, `not_found`.")
    message: str


class InvalidPoliciesResponse(ErrorResponse):
    """`422` from a reload: every error in the files; the running policy set stays in force."""

    code: Literal["invalid_policies"] = "invalid_policies"
    errors: list[PolicyErrorModel]


class HealthIndicator(BaseModel):
    name: str
    value: float | None = Field(description="The measured value; `null` when it could not be measured.")
    threshold: float = Field(description="Past this value the indicator is no longer healthy.")
    status: HealthStatus
    message: str


class HealthRecommendation(BaseModel):
    kind: str
    message: str
    provider: str | None = None
    model: str | None = None
    alternative: str | None = Field(default=None, description="A model to use instead, as `provider:model`.")


class HealthHour(BaseModel):
    hour: datetime = Field(description="Start of the hour, UTC.")
    value: float


class HealthTrend(BaseModel):
    name: Literal["cost", "errors", "latency"]
    direction: Literal["up", "down", "stable"]
    change_pct: float = Field(description="The last complete hour against the mean of the hours before it.")
    hourly: list[HealthHour]


class HealthResponse(BaseModel):
    """`GET /v1/health`: the worst indicator's status, every indicator, what to do, and where it is heading."""

    status: HealthStatus
    at: datetime
    indicators: list[HealthIndicator]
    recommendations: list[HealthRecommendation]
    trends: list[HealthTrend]


class LiveResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"


class CostsResponse(BaseModel):
    """`GET /v1/costs`: the cost ledger of a period added up per value of `by`."""

    model_config = ConfigDict(extra="allow")

    from_: str = Field(alias="from", description="The period's first instant (UTC, ISO 8601).")
    to: str = Field(description="The instant after the period's last (UTC, ISO 8601).")
    by: list[str] = Field(description="The dimensions the costs are added up by.")
    costs: list[dict[str, Any]] = Field(
        description="Per value of `by` (its dimensions as keys, null where a call had none): `cost_usd` "
        "(exact decimal text) and `calls`, the largest cost first."
    )
    total_usd: str = Field(description="Every row's cost added up: the FOCUS export's BilledCost sum.")
