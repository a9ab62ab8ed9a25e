"""otel_puppy: cost and reliability control for LLM agents, inside the OpenTelemetry pipeline.

import logfire, otel_puppy

puppy = otel_puppy.PolicyEngine.from_settings()
logfire.configure(additional_span_processors=[puppy.span_processor()])
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from otel_puppy.calls import ErrorClass, LLMCall, extract_call
from otel_puppy.engine import Observation, PolicyEngine, Snapshot
from otel_puppy.exceptions import InvalidSpanError, PolicyError, PolicyErrors, PuppyError, SettingsError, StoreError
from otel_puppy.policies import PolicySet, load_policies
from otel_puppy.pricing import Price, PriceOverride, Pricer
from otel_puppy.processor import PuppySpanProcessor
from otel_puppy.settings import PuppySettings

try:
    __version__ = version("otel-puppy")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = (
    "ErrorClass",
    "InvalidSpanError",
    "LLMCall",
    "Observation",
    "PolicyEngine",
    "PolicyError",
    "PolicyErrors",
    "PolicySet",
    "Price",
    "PriceOverride",
    "Pricer",
    "PuppyError",
    "PuppySettings",
    "PuppySpanProcessor",
    "SettingsError",
    "Snapshot",
    "StoreError",
    "__version__",
    "extract_call",
    "load_policies",
)
