"""Policies: the YAML grammar users edit, and its loader."""

from otel_puppy.policies.base import PriceEntry
from otel_puppy.policies.loader import load_policies, parse_policy_text
from otel_puppy.policies.models import PolicySet

__all__ = ("PolicySet", "PriceEntry", "load_policies", "parse_policy_text")
