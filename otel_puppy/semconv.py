"""Attribute names we read, grouped by the convention that defines them.

Current OpenTelemetry GenAI conventions first, then their legacy spellings, then logfire,
OpenInference and OpenLLMetry (Traceloop). Each tuple is tried in order; the first present wins.
"""

from __future__ import annotations

from typing import Final

# --- identity -------------------------------------------------------------------------------
PROVIDER: Final = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
REQUEST_MODEL: Final = ("gen_ai.request.model", "llm.request.model", "llm.model_name")
RESPONSE_MODEL: Final = ("gen_ai.response.model", "llm.response.model")
OPERATION: Final = ("gen_ai.operation.name", "llm.request.type")

# --- usage on one call ----------------------------------------------------------------------
INPUT_TOKENS: Final = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
OUTPUT_TOKENS: Final = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
)
CACHE_READ_TOKENS: Final = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
    "gen_ai.usage.details.cache_read_tokens",
)
CACHE_WRITE_TOKENS: Final = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
    "gen_ai.usage.details.cache_write_tokens",
)
REASONING_TOKENS: Final = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
    "gen_ai.usage.details.reasoning_tokens",
)
USAGE_KEYS: Final = INPUT_TOKENS + OUTPUT_TOKENS
REPORTED_COST: Final = ("operation.cost", "gen_ai.usage.cost", "llm.cost.total")

# --- who and where --------------------------------------------------------------------------
AGENT: Final = ("otel_puppy.agent", "gen_ai.agent.name", "agent_name", "agent.name")
CONVERSATION: Final = ("otel_puppy.conversation", "gen_ai.conversation.id", "session.id")
USER: Final = ("otel_puppy.user", "user.id", "enduser.id", "gen_ai.user.id")
TEAM: Final = ("otel_puppy.team",)
ENVIRONMENT: Final = ("otel_puppy.environment",)
DECISION_ID: Final = "otel_puppy.decision_id"
DECISION_ACTION: Final = "otel_puppy.decision.action"
"""Set by `guarded()` on the span of a guarded request; `deny` means no model was called."""
DECISION_MODEL: Final = "otel_puppy.decision.model"
"""`provider:model` the decision sent the request to (a degrade or a route may change both)."""
RESOURCE_SERVICE: Final = "service.name"
RESOURCE_ENVIRONMENT: Final = ("deployment.environment.name", "deployment.environment", "otel_puppy.environment")
RESOURCE_TEAM: Final = ("otel_puppy.team",)

# --- prompts (hashed for the redundant-call advisor; the text itself is never kept) -----------
PROMPT: Final = (
    "gen_ai.input.messages",
    "gen_ai.prompt",
    "llm.input_messages",
    "input.value",
    "gen_ai.prompt.0.content",
)

# --- errors ---------------------------------------------------------------------------------
HTTP_STATUS: Final = ("http.response.status_code", "http.status_code")
ERROR_TYPE: Final = "error.type"
EXCEPTION_EVENT: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"

# --- what marks a span as not a call --------------------------------------------------------
LOGFIRE_SPAN_TYPE: Final = "logfire.span_type"
LOGFIRE_PENDING: Final = "pending_span"
AGGREGATED_PREFIX: Final = "gen_ai.aggregated_usage."
OPENINFERENCE_KIND: Final = "openinference.span.kind"
TRACELOOP_KIND: Final = "traceloop.span.kind"
CALL_OPERATIONS: Final = frozenset(
    {"chat", "text_completion", "completion", "generate_content", "embeddings", "embedding", "responses"}
)
NOT_CALL_OPERATIONS: Final = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow", "retrieval"})
OPENINFERENCE_CALL_KINDS: Final = frozenset({"LLM", "EMBEDDING"})

MARKERS: Final = frozenset(
    USAGE_KEYS + OPERATION + ("gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model", "llm.model_name")
)
"""A span with none of these keys is not a GenAI span; the span processor drops it at once."""

# --- provider names as the conventions spell them -> genai-prices provider ids --------------
PROVIDER_ALIASES: Final = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "az.ai.inference": "azure",
    "az.ai.openai": "azure",
    "azure": "azure",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "gemini": "google",
    "vertex_ai": "google",
    "vertexai": "google",
    "google": "google",
    "google-gla": "google",
    "google-vertex": "google",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "aws": "aws",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "mistral": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "grok": "x-ai",
    "groq": "groq",
    "deepseek": "deepseek",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "together": "together",
    "together_ai": "together",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
    "moonshotai": "moonshotai",
}
