"""`guarded(model, engine)`: a pydantic-ai model that asks otel_puppy before every request.

    agent = Agent(otel_puppy.guarded("openai:gpt-4.1", puppy, agent="support"))

On `deny` the request raises `PolicyDenied` (carrying the decision); on `degrade` it goes to the
cheaper model; either way the decision is recorded on the current span (pydantic-ai's `chat`
span under `logfire.instrument_pydantic_ai()`), and spans started inside carry the decision id,
so the call's span settles the reservation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse, infer_model
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import RunContext

from otel_puppy.decision import Decision, Priority
from otel_puppy.exceptions import PolicyDenied
from otel_puppy.guard import current_trace_id
from otel_puppy.processor import DECISION_CONTEXT_KEY

__all__ = ("Decider", "GuardedModel", "guarded")

logger = logging.getLogger("otel_puppy")

_CHARS_PER_TOKEN = 4
"""A rough prompt-size estimate; the span's real usage settles the reservation anyway."""


class Decider(Protocol):
    """Anything that decides: a `PolicyEngine` in-process or a `DecisionClient` over HTTP.

    A decider that also has `adecide` (the client) is awaited, so a slow or unreachable service
    never blocks the agent's event loop.
    """

    def decide(self, request: Any = None, /, **fields: Any) -> Decision: ...


class GuardedModel(WrapperModel):
    """A pydantic-ai model that asks for a decision before each request and obeys it."""

    def __init__(
        self,
        wrapped: Model | str,
        decider: Decider,
        *,
        agent: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        user: str | None = None,
        team: str | None = None,
        service: str | None = None,
        degrade_to: Mapping[str, Model | str] | None = None,
        output_tokens: int | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.decider = decider
        self.agent = agent
        self.priority = Priority(priority)
        self.user = user
        self.team = team
        self.service = service
        self.output_tokens = output_tokens
        self._degrade_to = {key: infer_model(value) for key, value in (degrade_to or {}).items()}

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        decision, model = await self._decide(messages, model_settings)
        token = otel_context.attach(otel_context.set_value(DECISION_CONTEXT_KEY, decision.decision_id))
        try:
            return await model.request(messages, model_settings, model_request_parameters)
        finally:
            otel_context.detach(token)

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        decision, model = await self._decide(messages, model_settings)
        token = otel_context.attach(otel_context.set_value(DECISION_CONTEXT_KEY, decision.decision_id))
        try:
            async with model.request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as response_stream:
                yield response_stream
        finally:
            otel_context.detach(token)

    async def _decide(
        self, messages: list[ModelMessage], model_settings: ModelSettings | None
    ) -> tuple[Decision, Model]:
        max_tokens = (model_settings or {}).get("max_tokens")
        fields: dict[str, Any] = {
            "provider": _provider(self.wrapped),
            "model": self.wrapped.model_name,
            "agent": self.agent,
            "priority": self.priority,
            "user": self.user,
            "team": self.team,
            "service": self.service,
            "estimated_input_tokens": _estimate_tokens(messages),
            "estimated_output_tokens": max_tokens if isinstance(max_tokens, int) else self.output_tokens,
            "trace_id": current_trace_id(),  # the agent run: what `per: [trace]` budgets count by
        }
        adecide = getattr(self.decider, "adecide", None)
        decision: Decision = await adecide(**fields) if adecide is not None else self.decider.decide(**fields)
        _record(decision)
        if not decision.allowed:
            raise PolicyDenied(decision)
        return decision, self._model_for(decision)

    def _model_for(self, decision: Decision) -> Model:
        if (decision.provider, decision.model) == (_provider(self.wrapped), self.wrapped.model_name):
            return self.wrapped
        for key in (decision.model_ref, decision.model):
            if key in self._degrade_to:
                return self._degrade_to[key]
        # The same client, another model name: keeps the user's provider configuration and keys.
        provider = getattr(self.wrapped, "_provider", None)
        if provider is not None:
            try:
                model: Model = type(self.wrapped)(decision.model, provider=provider)  # type: ignore[call-arg, arg-type]
            except TypeError:
                pass
            else:
                self._degrade_to[decision.model_ref] = model
                return model
        model = infer_model(decision.model_ref)
        self._degrade_to[decision.model_ref] = model
        return model


def guarded(
    model: Model | str,
    decider: Decider,
    *,
    agent: str | None = None,
    priority: Priority | str = Priority.NORMAL,
    **options: Any,
) -> GuardedModel:
    """Wrap a pydantic-ai model so every request is decided by otel_puppy first.

    `decider` is a `PolicyEngine` (in-process) or a `DecisionClient` (another process). Options:
    `user`, `team`, `service`, `degrade_to` (a mapping from `provider:model` to the model to use
    when a policy degrades to it; by default the same model class with the same provider client),
    `output_tokens` (the output estimate when `max_tokens` is not set; by default none is sent, so the
    engine prices the prompt with the output tokens it learned from this agent's calls, `learned.py`).
    """
    return GuardedModel(model, decider, agent=agent, priority=priority, **options)


def _provider(model: Model) -> str:
    from otel_puppy.calls import normalize_provider

    return normalize_provider(model.system)


def _estimate_tokens(messages: list[ModelMessage]) -> int:
    characters = 0
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                content = getattr(part, "content", None)
                if isinstance(content, str):
                    characters += len(content)
        else:
            for response_part in message.parts:
                content = getattr(response_part, "content", None)
                if isinstance(content, str):
                    characters += len(content)
    return max(characters // _CHARS_PER_TOKEN, 1)


def _record(decision: Decision) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, str | float] = {
        "otel_puppy.decision.action": decision.action.value,
        "otel_puppy.decision.model": decision.model_ref,
    }
    if decision.decision_id:
        attributes["otel_puppy.decision_id"] = decision.decision_id
    deciding = [h.policy for h in decision.reasons if h.action is decision.action and h.action.value != "allow"]
    if deciding:
        attributes["otel_puppy.decision.policies"] = ",".join(deciding)
    if decision.retry_after_s is not None:
        attributes["otel_puppy.decision.retry_after_s"] = decision.retry_after_s
    span.set_attributes(attributes)
