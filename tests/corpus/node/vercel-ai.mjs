// The Vercel AI SDK (npm `ai`) with `experimental_telemetry`, over a mocked provider, exporting OTLP/HTTP.
//
//   node vercel-ai.mjs --endpoint http://127.0.0.1:4319/v1/traces --calls calls.json
//
// Every case is a real `generateText` / `streamText` call through `@ai-sdk/openai` or `@ai-sdk/anthropic`,
// whose `fetch` is a mock that answers like the provider's API (no network, no key). The spans the SDK
// emits go through the OpenTelemetry JS SDK and its OTLP/HTTP (JSON) exporter to `--endpoint`, flushed
// after each case. `--calls` receives what really happened, per case: the trace ids the case's spans
// carry and, per model call, the outcome, HTTP status and the usage THE MOCK RETURNED, in genai-prices'
// field names (`input_tokens` counts cached tokens too; `reasoning_tokens` are part of `output_tokens`).
// `tests/corpus/record/vercel_ai.py` turns that into the corpus manifest; `tests/test_corpus_node.py`
// checks otel-puppy's spend against it.

import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { createAnthropic } from '@ai-sdk/anthropic';
import { createOpenAI } from '@ai-sdk/openai';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { generateText, jsonSchema, stepCountIs, streamText, tool } from 'ai';

const { values: options } = parseArgs({
  options: { endpoint: { type: 'string' }, calls: { type: 'string' } },
});
if (!options.endpoint || !options.calls) {
  console.error('usage: node vercel-ai.mjs --endpoint URL/v1/traces --calls FILE');
  process.exit(2);
}

const SERVICE = 'corpus-vercel-ai';
const FUNCTION_ID = 'support-reply'; // `experimental_telemetry.functionId`: how AI SDK users name a call site
const CREATED = 1767225600; // 2026-01-01T00:00:00Z: the mock's `created` timestamps, fixed

// --- the mock provider ---------------------------------------------------------------------------------

/** Usage in genai-prices' names: what the mock returns, rendered in each API's own shape below. */
function usage(input, cacheRead, cacheWrite, output, reasoning) {
  return {
    input_tokens: input,
    cache_read_tokens: cacheRead,
    cache_write_tokens: cacheWrite,
    output_tokens: output,
    reasoning_tokens: reasoning,
  };
}

function responsesUsage(u) {
  return {
    input_tokens: u.input_tokens,
    input_tokens_details: { cached_tokens: u.cache_read_tokens },
    output_tokens: u.output_tokens,
    output_tokens_details: { reasoning_tokens: u.reasoning_tokens },
    total_tokens: u.input_tokens + u.output_tokens,
  };
}

function chatUsage(u) {
  return {
    prompt_tokens: u.input_tokens,
    completion_tokens: u.output_tokens,
    total_tokens: u.input_tokens + u.output_tokens,
    prompt_tokens_details: { cached_tokens: u.cache_read_tokens, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: u.reasoning_tokens,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
}

function anthropicUsage(u) {
  // Anthropic's `input_tokens` are the uncached ones only; cache reads and writes are beside them.
  return {
    input_tokens: u.input_tokens - u.cache_read_tokens - u.cache_write_tokens,
    cache_creation_input_tokens: u.cache_write_tokens,
    cache_read_input_tokens: u.cache_read_tokens,
    cache_creation: { ephemeral_5m_input_tokens: u.cache_write_tokens, ephemeral_1h_input_tokens: 0 },
    output_tokens: u.output_tokens,
    service_tier: 'standard',
  };
}

function responsesOutput(reply) {
  const output = [];
  if (reply.usage.reasoning_tokens > 0) {
    output.push({ id: `rs_${reply.id.slice(5)}`, type: 'reasoning', summary: [] });
  }
  if (reply.toolCall) {
    output.push({
      id: `fc_${reply.id.slice(5)}`,
      type: 'function_call',
      status: 'completed',
      arguments: JSON.stringify(reply.toolCall.arguments),
      call_id: reply.toolCall.callId,
      name: reply.toolCall.name,
    });
  } else {
    output.push({
      id: `msg_${reply.id.slice(5)}`,
      type: 'message',
      status: 'completed',
      role: 'assistant',
      content: [{ type: 'output_text', annotations: [], logprobs: [], text: reply.text }],
    });
  }
  return output;
}

function responsesBody(reply) {
  return {
    id: reply.id,
    object: 'response',
    created_at: CREATED,
    status: 'completed',
    error: null,
    incomplete_details: null,
    model: reply.model,
    output: responsesOutput(reply),
    parallel_tool_calls: true,
    service_tier: 'default',
    store: true,
    temperature: 1.0,
    text: { format: { type: 'text' }, verbosity: 'medium' },
    tool_choice: 'auto',
    top_p: 1.0,
    truncation: 'disabled',
    usage: responsesUsage(reply.usage),
  };
}

function responsesEvents(reply) {
  const itemId = `msg_${reply.id.slice(5)}`;
  const started = { ...responsesBody(reply), status: 'in_progress', output: [], usage: null };
  const item = { id: itemId, type: 'message', status: 'in_progress', role: 'assistant', content: [] };
  const part = { type: 'output_text', annotations: [], logprobs: [], text: '' };
  const events = [
    { type: 'response.created', response: started },
    { type: 'response.in_progress', response: started },
    { type: 'response.output_item.added', output_index: 0, item },
    { type: 'response.content_part.added', item_id: itemId, output_index: 0, content_index: 0, part },
    ...words(reply.text).map((delta) => ({
      type: 'response.output_text.delta',
      item_id: itemId,
      output_index: 0,
      content_index: 0,
      delta,
      logprobs: [],
    })),
    { type: 'response.output_text.done', item_id: itemId, output_index: 0, content_index: 0, text: reply.text },
    {
      type: 'response.content_part.done',
      item_id: itemId,
      output_index: 0,
      content_index: 0,
      part: { ...part, text: reply.text },
    },
    { type: 'response.output_item.done', output_index: 0, item: responsesOutput(reply).at(-1) },
    { type: 'response.completed', response: responsesBody(reply) },
  ];
  return events.map((event, sequence) => sse({ ...event, sequence_number: sequence }, event.type));
}

function chatBody(reply) {
  return {
    id: reply.id,
    object: 'chat.completion',
    created: CREATED,
    model: reply.model,
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: reply.text, refusal: null, annotations: [] },
        logprobs: null,
        finish_reason: 'stop',
      },
    ],
    usage: chatUsage(reply.usage),
    service_tier: 'default',
    system_fingerprint: 'fp_b3f1157249',
  };
}

function chatEvents(reply) {
  const chunk = (choices, extra = {}) => ({
    id: reply.id,
    object: 'chat.completion.chunk',
    created: CREATED,
    model: reply.model,
    service_tier: 'default',
    system_fingerprint: 'fp_b3f1157249',
    choices,
    ...extra,
  });
  return [
    chunk([{ index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }]),
    ...words(reply.text).map((content) =>
      chunk([{ index: 0, delta: { content }, logprobs: null, finish_reason: null }]),
    ),
    chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }]),
    chunk([], { usage: chatUsage(reply.usage) }), // `stream_options.include_usage`, which the SDK sets
  ]
    .map((event) => sse(event))
    .concat('data: [DONE]\n\n');
}

function anthropicBody(reply) {
  return {
    id: reply.id,
    type: 'message',
    role: 'assistant',
    model: reply.model,
    content: [{ type: 'text', text: reply.text }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: anthropicUsage(reply.usage),
  };
}

function anthropicEvents(reply) {
  const opening = { ...anthropicBody(reply), content: [], stop_reason: null };
  opening.usage = { ...opening.usage, output_tokens: 1 };
  const events = [
    { type: 'message_start', message: opening },
    { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } },
    { type: 'ping' },
    ...words(reply.text).map((text) => ({
      type: 'content_block_delta',
      index: 0,
      delta: { type: 'text_delta', text },
    })),
    { type: 'content_block_stop', index: 0 },
    {
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: anthropicUsage(reply.usage), // the API repeats the input counts here, the final output count
    },
    { type: 'message_stop' },
  ];
  return events.map((event) => sse(event, event.type));
}

const ERRORS = {
  openai: {
    500: {
      error: {
        message:
          'The server had an error while processing your request. Sorry about that! You can retry your request, ' +
          'or contact us through our help center if the error persists.',
        type: 'server_error',
        param: null,
        code: null,
      },
    },
    429: {
      error: {
        message:
          'Rate limit reached for gpt-4.1-mini in organization org-corpus on tokens per min (TPM): Limit 200000, ' +
          'Used 199120, Requested 2150. Please try again in 264ms.',
        type: 'tokens',
        param: null,
        code: 'rate_limit_exceeded',
      },
    },
  },
  anthropic: {
    529: { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } },
  },
};

function words(text) {
  return text.match(/\S+\s*/g);
}

function sse(data, event) {
  return `${event ? `event: ${event}\n` : ''}data: ${JSON.stringify(data)}\n\n`;
}

function eventStream(events) {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const event of events) controller.enqueue(encoder.encode(event));
      controller.close();
    },
  });
}

/** What the mock answers next, in order; each reply names the API path it expects. */
const script = [];

async function mockFetch(url, init) {
  const path = new URL(url).pathname;
  const reply = script.shift();
  if (!reply) throw new Error(`the mock provider got an unexpected request to ${path}`);
  if (path !== reply.path) throw new Error(`the mock expected a request to ${reply.path}, got ${path}`);
  const request = JSON.parse(init.body);
  const requestId = `req_${reply.id?.slice(-24) ?? 'corpus'}`;
  if (reply.status !== 200) {
    const headers = { 'content-type': 'application/json', 'x-request-id': requestId };
    if (reply.status === 429) headers['retry-after'] = '5';
    return new Response(JSON.stringify(ERRORS[reply.provider][reply.status]), { status: reply.status, headers });
  }
  const render = {
    '/v1/responses': [responsesBody, responsesEvents],
    '/v1/chat/completions': [chatBody, chatEvents],
    '/v1/messages': [anthropicBody, anthropicEvents],
  }[path];
  if (request.stream) {
    const headers = { 'content-type': 'text/event-stream; charset=utf-8', 'x-request-id': requestId };
    return new Response(eventStream(render[1](reply)), { status: 200, headers });
  }
  const headers = { 'content-type': 'application/json', 'x-request-id': requestId };
  return new Response(JSON.stringify(render[0](reply)), { status: 200, headers });
}

const openai = createOpenAI({ apiKey: 'sk-corpus-not-a-key', fetch: mockFetch });
const anthropic = createAnthropic({ apiKey: 'sk-ant-corpus-not-a-key', fetch: mockFetch });

// --- the cases -----------------------------------------------------------------------------------------

const PROMPT = 'My order A-1042 has not arrived. Where is it?';
const SYSTEM = 'You are the support assistant of an online shop. Answer briefly and politely.';
const ANSWER = 'Your order A-1042 left our warehouse yesterday and should arrive within two days.';

const orderStatus = tool({
  description: 'Look up the delivery status of an order.',
  inputSchema: jsonSchema({
    type: 'object',
    properties: { order_id: { type: 'string' } },
    required: ['order_id'],
    additionalProperties: false,
  }),
  execute: async ({ order_id }) => ({ order_id, status: 'shipped', eta_days: 2 }),
});

const RESPONSES = '/v1/responses';
const CHAT = '/v1/chat/completions';
const MESSAGES = '/v1/messages';

/**
 * Each case: how the SDK is called, and the replies the mock gives, one per model call.
 * `model` on a reply is the model the API answers with (a dated snapshot, as the real APIs answer).
 */
const CASES = [
  {
    case: 'generate_gpt-4.1',
    note: 'generateText, OpenAI Responses API (the default of `openai(model)`)',
    run: () => generateText({ model: openai('gpt-4.1'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [
      {
        provider: 'openai',
        path: RESPONSES,
        status: 200,
        id: 'resp_0b6f2c1d9e8a4b7c5d3e1f20a9b8c7d6e5f4a3b2c1d0e9f8',
        model: 'gpt-4.1-2025-04-14',
        text: ANSWER,
        usage: usage(2150, 1536, 0, 318, 0),
      },
    ],
  },
  {
    case: 'generate_o4-mini_reasoning',
    note: 'generateText, OpenAI Responses API, a reasoning model',
    run: () => generateText({ model: openai('o4-mini'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [
      {
        provider: 'openai',
        path: RESPONSES,
        status: 200,
        id: 'resp_07d41e9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e',
        model: 'o4-mini-2025-04-16',
        text: ANSWER,
        usage: usage(3317, 2304, 0, 1459, 1152),
      },
    ],
  },
  {
    case: 'generate_chat_gpt-4.1-mini',
    note: 'generateText, OpenAI Chat Completions API (`openai.chat(model)`)',
    run: () => generateText({ model: openai.chat('gpt-4.1-mini'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [
      {
        provider: 'openai',
        path: CHAT,
        status: 200,
        id: 'chatcmpl-CoRpUs7kQ2mXw9TzLb4VnHa1YdEe',
        model: 'gpt-4.1-mini-2025-04-14',
        text: ANSWER,
        usage: usage(1873, 1280, 0, 241, 0),
      },
    ],
  },
  {
    case: 'stream_gpt-4o',
    note: 'streamText, OpenAI Responses API',
    stream: true,
    run: () => streamText({ model: openai('gpt-4o'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [
      {
        provider: 'openai',
        path: RESPONSES,
        status: 200,
        id: 'resp_0c2a9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a',
        model: 'gpt-4o-2024-08-06',
        text: ANSWER,
        usage: usage(2689, 2048, 0, 407, 0),
      },
    ],
  },
  {
    case: 'stream_chat_gpt-4.1-nano',
    note: 'streamText, OpenAI Chat Completions API (usage in the last chunk: stream_options.include_usage)',
    stream: true,
    run: () => streamText({ model: openai.chat('gpt-4.1-nano'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [
      {
        provider: 'openai',
        path: CHAT,
        status: 200,
        id: 'chatcmpl-CoRpUs3StReAmQ8wJx2KfMb6NvTg',
        model: 'gpt-4.1-nano-2025-04-14',
        text: ANSWER,
        usage: usage(1411, 1152, 0, 133, 0),
      },
    ],
  },
  {
    case: 'tool_loop_gpt-5-mini',
    note: 'generateText with a tool over two steps: one run span (aggregated usage), two model calls',
    run: () =>
      generateText({
        model: openai('gpt-5-mini'),
        system: SYSTEM,
        prompt: PROMPT,
        tools: { orderStatus },
        stopWhen: stepCountIs(2),
        ...common,
      }),
    replies: [
      {
        provider: 'openai',
        path: RESPONSES,
        status: 200,
        id: 'resp_0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c',
        model: 'gpt-5-mini-2025-08-07',
        toolCall: { callId: 'call_Qm4vTz8LkR2wXp7NbY1cHs5D', name: 'orderStatus', arguments: { order_id: 'A-1042' } },
        usage: usage(1624, 1024, 0, 230, 192),
      },
      {
        provider: 'openai',
        path: RESPONSES,
        status: 200,
        id: 'resp_0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f',
        model: 'gpt-5-mini-2025-08-07',
        text: ANSWER,
        usage: usage(1712, 1536, 0, 321, 192),
      },
    ],
  },
  {
    case: 'generate_claude-sonnet-4-5',
    note: 'generateText, Anthropic Messages API: cache reads and a cache write',
    run: () => generateText({ model: anthropic('claude-sonnet-4-5'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [
      {
        provider: 'anthropic',
        path: MESSAGES,
        status: 200,
        id: 'msg_01CoRpUs9hVxTq4Lm7KwZb2N',
        model: 'claude-sonnet-4-5-20250929',
        text: ANSWER,
        usage: usage(5532, 3072, 2048, 187, 0),
      },
    ],
  },
  {
    case: 'stream_claude-haiku-4-5',
    note: 'streamText, Anthropic Messages API: cache reads and a cache write',
    stream: true,
    run: () => streamText({ model: anthropic('claude-haiku-4-5'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [
      {
        provider: 'anthropic',
        path: MESSAGES,
        status: 200,
        id: 'msg_01CoRpUs5tReAmYp3Jd8GcWq',
        model: 'claude-haiku-4-5-20251001',
        text: ANSWER,
        usage: usage(5216, 4096, 1024, 233, 0),
      },
    ],
  },
  {
    case: 'error_500',
    note: 'HTTP 500 from the OpenAI Responses API, maxRetries: 0',
    run: () => generateText({ model: openai('gpt-4.1'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [{ provider: 'openai', path: RESPONSES, status: 500, model: 'gpt-4.1' }],
  },
  {
    case: 'error_429',
    note: 'HTTP 429 from the OpenAI Responses API, maxRetries: 0',
    run: () => generateText({ model: openai('gpt-4.1-mini'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [{ provider: 'openai', path: RESPONSES, status: 429, model: 'gpt-4.1-mini' }],
  },
  {
    case: 'error_529_claude-sonnet-4-5',
    note: 'HTTP 529 (overloaded) from the Anthropic Messages API, maxRetries: 0',
    run: () => generateText({ model: anthropic('claude-sonnet-4-5'), system: SYSTEM, prompt: PROMPT, ...common }),
    replies: [{ provider: 'anthropic', path: MESSAGES, status: 529, model: 'claude-sonnet-4-5' }],
  },
];

const common = {
  maxRetries: 0,
  experimental_telemetry: { isEnabled: true, functionId: FUNCTION_ID },
};

// --- OpenTelemetry -------------------------------------------------------------------------------------

/** Collects the trace ids of the spans that end while a case runs. */
const traceIds = new Set();
const traceIdCollector = {
  onStart() {},
  onEnd(span) {
    traceIds.add(span.spanContext().traceId);
  },
  forceFlush: async () => {},
  shutdown: async () => {},
};

const provider = new NodeTracerProvider({
  resource: defaultResource().merge(resourceFromAttributes({ 'service.name': SERVICE })),
  spanProcessors: [traceIdCollector, new BatchSpanProcessor(new OTLPTraceExporter({ url: options.endpoint }))],
});
provider.register();

async function runCase(definition) {
  script.push(...definition.replies);
  let failure = null;
  try {
    const result = await definition.run();
    if (definition.stream) {
      await result.consumeStream({ onError: (error) => (failure = error) });
      await result.text.catch((error) => (failure = error));
    }
  } catch (error) {
    failure = error;
  }
  const expectedFailure = definition.replies.some((reply) => reply.status !== 200);
  if (Boolean(failure) !== expectedFailure) {
    throw new Error(`case ${definition.case}: ${failure ? `failed: ${failure.stack}` : 'did not fail'}`);
  }
  if (script.length) throw new Error(`case ${definition.case}: the SDK made fewer calls than scripted`);
}

const results = [];
for (const definition of CASES) {
  traceIds.clear();
  await runCase(definition);
  await provider.forceFlush();
  results.push({
    case: definition.case,
    trace_ids: [...traceIds].sort(),
    calls: definition.replies.map((reply) => ({
      outcome: reply.status === 200 ? 'ok' : 'error',
      http_status: reply.status,
      streamed: Boolean(definition.stream),
      provider: reply.provider,
      model: reply.model,
      response_id: reply.id ?? null,
      usage: reply.usage ?? usage(0, 0, 0, 0, 0),
      shortfall: {},
      note: definition.note,
    })),
  });
}
await provider.shutdown();
writeFileSync(options.calls, `${JSON.stringify({ node: process.version, cases: results }, null, 2)}\n`);
