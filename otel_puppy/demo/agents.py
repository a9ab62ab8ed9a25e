"""The fleet's make-up: eight agents on four providers, their tools, and the models they may switch to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from otel_puppy.decision import Priority
from otel_puppy.policies import PolicySet
from otel_puppy.policies.base import Degrade

__all__ = (
    "CONVERSATION_KEY",
    "FLEET",
    "FLEET_SERVICE_NAME",
    "SERVICE_NAME",
    "SPIKE_AGENT",
    "USER_KEY",
    "AgentSpec",
    "Caching",
    "alternatives_for",
)

SERVICE_NAME: Final = "otel-puppy-demo"
"""The service name of the fleet's spans when it runs in the demo's own process (`in_process`)."""


FLEET_SERVICE_NAME: Final = "otel-puppy-demo-fleet"
"""The service name of the fleet processes' spans, exported to the service over OTLP."""


USER_KEY: Final = "otel_puppy.user"


CONVERSATION_KEY: Final = "otel_puppy.conversation"


SPIKE_AGENT: Final = "research"
"""The agent whose prompts balloon during the spend spike."""

Caching = Literal["explicit", "implicit", "none"]
"""How a provider reports prompt caching (see `AgentSpec.caching`)."""


def lookup_order(order_id: str) -> str:
    """Look up an order by id: status, items and shipping."""
    return f"order {order_id}: shipped, 2 items, arriving Thursday"


def search_help_center(query: str) -> str:
    """Search the help center for articles matching a query."""
    return f"3 articles match {query!r}: 'Returns', 'Shipping times', 'Changing an order'"


def route_ticket(queue: str) -> str:
    """Route the current ticket to a queue (billing, support, sales, abuse)."""
    return f"ticket routed to {queue}"


def web_search(query: str) -> str:
    """Search the web and return the top results with snippets."""
    return f"10 results for {query!r}; top: 'A survey of LLM cost controls' (2025)"


def read_page(url: str) -> str:
    """Fetch a web page and return its main text."""
    return f"{url}: 2,400 words on rate limiting, budgets and circuit breakers"


def get_invoice(invoice_id: str) -> str:
    """Get an invoice with its line items."""
    return f"invoice {invoice_id}: $1,240.00, 3 line items, paid"


def lookup_plan(customer_id: str) -> str:
    """Look up a customer's subscription plan and usage."""
    return f"customer {customer_id}: Team plan, 14 seats, renews on the 1st"


def fetch_document(doc_id: str) -> str:
    """Fetch a document from the document store."""
    return f"document {doc_id}: 18 pages, quarterly review"


def run_sql(query: str) -> str:
    """Run a read-only SQL query against the analytics warehouse."""
    return f"{query!r}: 42 rows"


def find_slots(date: str) -> str:
    """Find free meeting slots on a date."""
    return f"free on {date}: 10:00, 14:30, 16:00"


def search_kb(query: str) -> str:
    """Search the internal knowledge base."""
    return f"5 internal pages match {query!r}"


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent of the simulated fleet: its model, share of traffic, tools and how it behaves."""

    name: str
    provider: str
    """As pydantic-ai's models report it in `gen_ai.provider.name` (`openai`, `anthropic`, `google`)."""
    model: str
    weight: float
    """Relative share of the fleet's runs."""
    tools: tuple[Callable[[str], str], ...]
    prompts: tuple[str, ...]
    caching: Caching = "implicit"
    """`explicit`: cache reads and writes are reported (Anthropic); `implicit`: reads only."""
    speed: float = 1.0
    """Latency multiplier: above 1 is slower."""
    outage_status: int = 503
    priority: Priority = Priority.NORMAL
    """What its decisions ask with: budgets keep their last fraction for the higher priorities."""

    @property
    def instructions(self) -> str:
        return f"You are the {self.name} agent of Acme Corp. Be concise; use your tools when they help."


FLEET: Final[tuple[AgentSpec, ...]] = (
    AgentSpec(
        "support",
        "openai",
        "gpt-4.1-mini",
        0.22,
        (lookup_order, search_help_center),
        ("Where is my order?", "How do I return a jacket?", "Can I change my delivery address?"),
        speed=0.6,
        outage_status=429,
        priority=Priority.HIGH,
    ),
    AgentSpec(
        "triage",
        "anthropic",
        "claude-haiku-4-5",
        0.16,
        (route_ticket,),
        ("Customer says they were charged twice.", "Login page shows a 500 error.", "Spam from a partner."),
        caching="explicit",
        speed=0.5,
        priority=Priority.HIGH,
    ),
    AgentSpec(
        "summarizer",
        "google",
        "gemini-2.5-flash",
        0.14,
        (fetch_document,),
        ("Summarize the Q3 review.", "Summarize this incident report.", "TL;DR of the board memo."),
        speed=0.6,
        priority=Priority.LOW,
    ),
    AgentSpec(
        "research",
        "anthropic",
        "claude-sonnet-4-5",
        0.12,
        (web_search, read_page),
        ("Compare vector databases for 10M documents.", "What changed in the EU AI Act this year?"),
        caching="explicit",
        speed=1.4,
        priority=Priority.NORMAL,
    ),
    AgentSpec(
        "billing",
        "openai",
        "gpt-4.1",
        0.10,
        (get_invoice, lookup_plan),
        ("Why did my invoice go up?", "Add 3 seats to our plan.", "Send me last month's invoice."),
        speed=1.0,
        outage_status=429,
        priority=Priority.CRITICAL,
    ),
    AgentSpec(
        "analyst",
        "google",
        "gemini-2.5-pro",
        0.08,
        (run_sql,),
        ("Weekly active users by region?", "Churn by plan over the last quarter?"),
        speed=1.6,
        priority=Priority.NORMAL,
    ),
    AgentSpec(
        "scheduler",
        "openai",
        "gpt-4o",
        0.08,
        (find_slots,),
        ("Find 30 minutes with the design team next week.", "Move my 1:1 to Friday."),
        speed=0.9,
        outage_status=429,
        priority=Priority.NORMAL,
    ),
    AgentSpec(
        "kb-search",
        "self-hosted",
        "acme-kb-7b-instruct",  # served by our own vLLM: genai-prices has no price for it
        0.10,
        (search_kb,),
        ("How do I rotate the staging database password?", "Who owns the billing service?"),
        caching="none",
        speed=0.7,
        outage_status=500,
        priority=Priority.BULK,
    ),
)
"""Eight agents on four providers and eight models, one of them self-hosted and unpriced."""


def alternatives_for(policies: PolicySet, spec: AgentSpec) -> list[tuple[str, str]]:
    """Every model a decision for this agent may switch to: degrade targets and routing candidates.

    Each gets a simulated model, so a degraded or routed request never reaches a real provider.
    """
    found: dict[tuple[str, str], None] = {}
    for budget in policies.budgets:
        if isinstance(budget.action, Degrade):
            found[budget.action.target(spec.provider)] = None
    for routing in policies.routing:
        for candidate in routing.candidates:
            found[candidate.provider_model] = None
    found.pop((spec.provider, spec.model), None)
    return list(found)
