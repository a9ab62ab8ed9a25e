"""Attribute names we read, grouped by the convention that defines them.

Current OpenTelemetry GenAI conventions first, then their legacy spellings, then logfire,
OpenInference, OpenLLMetry (Traceloop), OpenLIT and the Vercel AI SDK (`ai.*`). Each tuple is tried in
order; the first present wins. `tests/corpus/` holds real spans in each spelling read here.
"""

from __future__ import annotations

from typing import Final

# --- identity -------------------------------------------------------------------------------
PROVIDER: Final = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
REQUEST_MODEL: Final = ("gen_ai.request.model", "llm.request.model", "llm.model_name")
RESPONSE_MODEL: Final = ("gen_ai.response.model", "llm.response.model")
OPERATION: Final = ("gen_ai.operation.name", "llm.request.type")
RESPONSE_ID: Final = ("gen_ai.response.id", "ai.response.id")
"""The provider's id of the response (the Vercel AI SDK's too): unique per call, so the spans of two
instrumentations carrying it describe one call. OpenInference has no such attribute (the id is only
inside `output.value`, when that is recorded at all); OpenLLMetry, OpenLIT, logfire, the contrib
instrumentations and the Anthropic SDK write `gen_ai.response.id`."""
INVOCATION_PARAMETERS: Final = "llm.invocation_parameters"
"""OpenInference: the request's parameters as JSON; its `model` names the call when no other key does."""

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
    "ai.usage.inputTokenDetails.cacheReadTokens",  # Vercel AI SDK
    "ai.usage.cachedInputTokens",  # Vercel AI SDK, before inputTokenDetails
)
CACHE_WRITE_TOKENS: Final = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",  # the Anthropic SDK's own spans
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
    "gen_ai.usage.details.cache_write_tokens",
    "ai.usage.inputTokenDetails.cacheWriteTokens",  # Vercel AI SDK
)
REASONING_TOKENS: Final = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
    "gen_ai.usage.details.reasoning_tokens",
    "ai.usage.outputTokenDetails.reasoningTokens",  # Vercel AI SDK
    "ai.usage.reasoningTokens",  # Vercel AI SDK, before outputTokenDetails
)
RAW_USAGE: Final = "gen_ai.usage.raw"
"""logfire: the provider's own usage object as JSON; read for reasoning tokens when no key above has them."""
USAGE_KEYS: Final = INPUT_TOKENS + OUTPUT_TOKENS
INPUT_WITHOUT_CACHE_PROVIDERS: Final = frozenset({"anthropic", "aws"})
"""Providers whose APIs count input without the cache: a span on them whose cache tokens exceed its
input tokens passed that count through, and the cache is added to it."""
INPUT_WITHOUT_CACHE_SCOPES: Final = frozenset({"opentelemetry.instrumentation.bedrock"})
"""Instrumentations that always write the provider's own input count, which leaves the cache out
(OpenLLMetry's Bedrock instrumentation): the cache is added to it whatever the numbers."""
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

CALL_NAMES: Final = PROVIDER + REQUEST_MODEL + RESPONSE_MODEL + (INVOCATION_PARAMETERS,)
"""Keys that name a model call in some convention: a span with an error status carrying one (and
not marked as an agent run, a tool or a workflow) is a failed call, usage or not."""

MARKERS: Final = frozenset(USAGE_KEYS + OPERATION + CALL_NAMES + (OPENINFERENCE_KIND,))
"""A span with none of these keys is not a GenAI span; the span processor drops it at once. (One
exception: a failed span with no attributes at all, which may be a call: `calls._bare_failure`.)"""

SPAN_KEYS: Final = frozenset(
    PROVIDER
    + REQUEST_MODEL
    + RESPONSE_MODEL
    + OPERATION
    + RESPONSE_ID
    + (INVOCATION_PARAMETERS,)
    + INPUT_TOKENS
    + OUTPUT_TOKENS
    + CACHE_READ_TOKENS
    + CACHE_WRITE_TOKENS
    + REASONING_TOKENS
    + (RAW_USAGE,)
    + REPORTED_COST
    + AGENT
    + CONVERSATION
    + USER
    + TEAM
    + ENVIRONMENT
    + (DECISION_ID, DECISION_ACTION, DECISION_MODEL)
    + PROMPT
    + HTTP_STATUS
    + (ERROR_TYPE, LOGFIRE_SPAN_TYPE, OPENINFERENCE_KIND, TRACELOOP_KIND)
)
"""Every span attribute `calls.call_from_parts` reads, besides those under `AGGREGATED_PREFIX` (read for
their presence): the OTLP reader converts these values alone (tests/test_calls.py holds the two together)."""


# --- provider names as the conventions spell them -> genai-prices provider ids --------------
PROVIDER_ALIASES: Final = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "az.ai.inference": "azure",
    "az.ai.openai": "azure",
    "azure": "azure",
    "azure_openai": "azure",
    "azure-openai": "azure",
    "azure openai": "azure",
    "azure.openai": "azure",
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
    "google_genai": "google",
    "google-genai": "google",
    "google.genai": "google",
    "google.generative-ai": "google",
    "google.vertex": "google",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "aws": "aws",
    "amazon-bedrock": "aws",
    "amazon_bedrock": "aws",
    "aws_bedrock": "aws",
    "aws-bedrock": "aws",
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
"""Exact spellings (lowercased). `calls.normalize_provider` also reads `<provider>.<api>` forms
(`openai.chat`, `anthropic.messages`) by their known prefix, and falls back on genai-prices' own
provider matching (`amazon` -> `aws`)."""
