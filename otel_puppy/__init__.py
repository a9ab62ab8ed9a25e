"""otel_puppy: cost and reliability control for LLM agents, inside the OpenTelemetry pipeline.

import logfire, otel_puppy

puppy = otel_puppy.PolicyEngine.from_settings()
logfire.configure(send_to_logfire="if-token-present", additional_span_processors=[puppy.span_processor()])
puppy.start_metrics_server(9464)  # or prometheus_client's default registry: the series are there too
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from otel_puppy.calls import ErrorClass, LLMCall, extract_call
from otel_puppy.client import DecisionClient, DecisionServiceError
from otel_puppy.decision import Action, Decision, DecisionRequest, PolicyHit, Priority, Severity
from otel_puppy.engine import DecisionGuard, Observation, PolicyEngine, Snapshot
from otel_puppy.exceptions import (
    CircuitOpenError,
    InvalidSpanError,
    PolicyDenied,
    PolicyError,
    PolicyErrors,
    PuppyError,
    RegistryInUse,
    SettingsError,
    StoreError,
)
from otel_puppy.forward.exporter import EnrichingSpanExporter
from otel_puppy.metrics_server import MetricsServer
from otel_puppy.policies import PolicySet, load_policies
from otel_puppy.pricing import Price, PriceOverride, Pricer
from otel_puppy.processor import PuppySpanProcessor
from otel_puppy.settings import PuppySettings

if TYPE_CHECKING:
    from otel_puppy.integrations.pydantic_ai import GuardedModel


def guarded(model: Any, decider: Any, **options: Any) -> GuardedModel:
    """A pydantic-ai model that asks `decider` (engine or client) before every request.

    See `otel_puppy.integrations.pydantic_ai.guarded`; imported lazily, pydantic-ai is optional.
    """
    from otel_puppy.integrations.pydantic_ai import guarded as _guarded

    return _guarded(model, decider, **options)


try:
    __version__ = version("otel-puppy")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = (
    "Action",
    "CircuitOpenError",
    "Decision",
    "DecisionClient",
    "DecisionGuard",
    "DecisionRequest",
    "DecisionServiceError",
    "EnrichingSpanExporter",
    "ErrorClass",
    "InvalidSpanError",
    "LLMCall",
    "MetricsServer",
    "Observation",
    "PolicyDenied",
    "PolicyEngine",
    "PolicyError",
    "PolicyErrors",
    "PolicyHit",
    "PolicySet",
    "Price",
    "PriceOverride",
    "Pricer",
    "Priority",
    "PuppyError",
    "PuppySettings",
    "PuppySpanProcessor",
    "RegistryInUse",
    "SettingsError",
    "Severity",
    "Snapshot",
    "StoreError",
    "__version__",
    "extract_call",
    "guarded",
    "load_policies",
)
