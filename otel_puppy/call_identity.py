"""Which spans describe the same model call, beyond the span's own ids and its parent.

Two instrumentations often describe one call: logfire over the Anthropic SDK's own spans, the
OpenInference LangChain instrumentation over its OpenAI one, a proxy's spans beside its client's.
When one span is the other's parent the store sees it by the span ids (`SpendRecord.parent_key`).
When they are not (each instrumentation starts a root span of its own, or they are siblings), a
span says which call it is by the `CallKey`s built here, and the store counts the first span of a
call and reports the others as `NESTED`, atomically with the spend (`store._call_index.CallIndex`, and
the Redis store's script):

- **The provider's response id** (`LLMCall.response_id`): providers make it unique per call, so
  spans of two instrumentations carrying it are that call, in any trace, at any time.
- **A call without a response id** is known by what the spans agree on: the same service and
  provider, times that overlap, and, for a success, the same input and output token counts; for a
  failure (a failed call has no response id), the same model. Two spans that both carry a response
  id are one call only by that id.

Neither rule ever joins two spans of one instrumentation (`LLMCall.instrumentation`): an
instrumentation describes a call once. So a server that answers every call with the same id (mock
servers, some self-hosted ones) still has each call counted, and a burst of concurrent failures
traced by one instrumentation is every one of its failures. The risks left: under two
instrumentations, such a server's later call can be taken for an earlier one when its outer span
arrives before its inner one; and two instrumentations tracing *different* concurrent calls of one
service to one provider, with equal token counts (or both failing, for one model), count as one.

A span that succeeded without reporting usage (`weak`) may be recognised as part of a call, but
never hides another span: it is nobody's parent and keeps no key, so the span that reports the
usage is counted even when it arrives second (the request then counts twice, the spend once).
"""

from __future__ import annotations

from functools import lru_cache, partial
from hashlib import blake2b
from typing import Final

from otel_puppy.calls import LLMCall
from otel_puppy.store.base import CEILING, CallKey

__all__ = ("CALL_KEYS_TTL_S", "call_keys", "is_weak")

CALL_KEYS_TTL_S: Final = 3600.0
"""How long a store keeps a call's keys (at most the dedupe window): the spans of one call end within
seconds of each other, and an hour covers any exporter's batching and retries. A span's own key is
kept for the whole dedupe window (a retry may come much later)."""

_key: Final = partial(tuple.__new__, CallKey)
"""`CallKey` from a tuple of all its fields, without the named tuple's Python-level `__new__`."""
_SEPARATOR: Final = "\x1f"
"""Between the parts of a key: names are printable, so no part holds it (`_keys` spells it `\\x1f`
inside its f-strings)."""


def is_weak(call: LLMCall) -> bool:
    """A call that succeeded without reporting usage: part of a call whose spend is unknown here."""
    return call.error_class is None and not call.has_usage


def call_keys(call: LLMCall) -> tuple[CallKey, ...]:
    """The keys by which the store recognises other spans of `call` (see the module's rules); a
    scoped ingest token's spans (`LLMCall.dedupe_namespace`) are never one call with another scope's."""
    keys = _keys(call)
    if call.dedupe_namespace:
        return tuple(key._replace(key=call.dedupe_namespace + key.key) for key in keys)
    return keys


def _keys(call: LLMCall) -> tuple[CallKey, ...]:
    response_id = call.response_id
    instrumentation = call.instrumentation
    source = _source(instrumentation) if instrumentation else ""
    by_id = _key((f"r\x1f{response_id}", 0, CEILING, source, False)) if response_id is not None else None
    failed = call.error_class is not None
    if not source or not (failed or call.has_usage):
        return (by_id,) if by_id is not None else ()
    # The parts joined by `_SEPARATOR` (one f-string, not a tuple joined): "f", service, provider,
    # model for a failure; "u", service, provider, input and output tokens for a success.
    if failed:
        text = f"f\x1f{call.service or ''}\x1f{call.provider}\x1f{call.model}"
    else:
        text = f"u\x1f{call.service or ''}\x1f{call.provider}\x1f{call.input_tokens}\x1f{call.output_tokens}"
    start = call.start_ns
    start = start // 1000 if start > 0 else 0
    end = call.end_ns // 1000
    by_agreement = _key((text, start, end if end > start else start, source, by_id is not None))
    return (by_id, by_agreement) if by_id is not None else (by_agreement,)


@lru_cache(maxsize=1024)
def _source(instrumentation: str) -> str:
    """A short digest of the instrumentation's name: a store keeps it beside every span of a key."""
    return blake2b(instrumentation.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
