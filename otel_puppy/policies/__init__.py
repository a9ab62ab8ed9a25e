"""Policy files: the grammar (`models`) and the loader that turns YAML into a `PolicySet`."""

from otel_puppy.policies.loader import load_policies, parse_policy_text
from otel_puppy.policies.models import PolicySet, PriceEntry

__all__ = ("PolicySet", "PriceEntry", "load_policies", "parse_policy_text")
