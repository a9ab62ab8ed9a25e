"""OTLP/HTTP trace payloads: decode a request body, read model calls out of it, encode the reply.

The OTLP specification (opentelemetry-proto `docs/specification.md`, "OTLP/HTTP") allows two
encodings on the same port, chosen by `Content-Type`:

- `application/x-protobuf`: the binary `ExportTraceServiceRequest`.
- `application/json`: the proto3 JSON mapping with OTLP's deviations: `traceId`/`spanId` are
  case-insensitive hex (not base64), enums are integers, unknown fields are ignored, keys are
  lowerCamelCase, and 64-bit integers are decimal strings (numbers are accepted too).

`google.protobuf.json_format` would read the ids as base64, so JSON goes through a small walker
of our own that builds the protobuf message directly. It reads only what `calls_from_request`
needs (resource and scope, ids, name, kind, times, attributes, events, status) and skips the
rest (links, trace state, flags, dropped counts, schema URLs) unvalidated, like unknown fields.
As a receiver it is lenient where protobuf's own JSON parser is: snake_case keys and enum names
are accepted too. Anything malformed raises `OtlpDecodeError` naming the field path.

Replies follow the spec: success is an `ExportTraceServiceResponse` (with `partial_success`
when spans were rejected), failure a `google.rpc.Status`, each in the request's encoding.

>>> request = decode_traces(body, "application/json; charset=utf-8")  # doctest: +SKIP
>>> calls, rejected, messages = calls_from_request(request)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otel_puppy import semconv
from otel_puppy._logging import RateLimitedLog
from otel_puppy.bounds import DEFAULT_LIMITS, MAX_NUMBER_TEXT, CallLimits
from otel_puppy.calls import LLMCall, call_from_parts
from otel_puppy.exceptions import PuppyError

__all__ = (
    "JSON",
    "PROTOBUF",
    "DecodedSpan",
    "OtlpDecodeError",
    "UnsupportedContentType",
    "calls_from_request",
    "decode_spans",
    "decode_traces",
    "encode_response",
    "encode_status",
    "response_content_type",
)

logger = logging.getLogger("otel_puppy")
_LOG: Final = RateLimitedLog(logger)
"""A hostile span can fail its reading at will: one line per minute, with the count of repeats."""

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
_PROTOBUF_TYPES: Final = frozenset({PROTOBUF, "application/protobuf"})

MAX_DEPTH: Final = 32
"""Arrays and kvlists nested deeper than this are refused (JSON) or dropped (attribute walk)."""
MAX_MESSAGES: Final = 10
"""`calls_from_request` explains at most this many rejected spans; the count covers them all."""


class OtlpDecodeError(PuppyError, ValueError):
    """The body is not a valid OTLP trace export: answer `400 Bad Request`; the client must not retry.

    The message says what is wrong and where:
    `resourceSpans[0].scopeSpans[1].spans[3].traceId: expected 32 hex digits`.
    """


class UnsupportedContentType(OtlpDecodeError):
    """Neither `application/x-protobuf` nor `application/json`: answer `415 Unsupported Media Type`."""


# --- content types --------------------------------------------------------------------------


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def response_content_type(content_type: str) -> str:
    """The `Content-Type` to answer a request with: the spec wants the request's own encoding."""
    return JSON if _media_type(content_type) == JSON else PROTOBUF


# --- decoding -------------------------------------------------------------------------------


def decode_traces(body: bytes | bytearray, content_type: str) -> ExportTraceServiceRequest:
    """Decode an OTLP/HTTP trace export body (already un-gzipped) by its `Content-Type`.

    Parameters such as `charset` are ignored: OTLP/JSON is UTF-8 (a leading BOM is tolerated).

    Raises:
        UnsupportedContentType: neither protobuf nor JSON.
        OtlpDecodeError: the body does not decode; the message names the field path.
    """
    media_type = _media_type(content_type)
    if media_type in _PROTOBUF_TYPES:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpDecodeError(f"invalid protobuf: {exc}") from None
        return request
    if media_type == JSON:
        return _decode_json(body)
    raise UnsupportedContentType(f"unsupported content type {content_type[:80]!r}: send {PROTOBUF} or {JSON}")


def _decode_json(body: bytes | bytearray) -> ExportTraceServiceRequest:
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OtlpDecodeError(f"body is not UTF-8 (at byte {exc.start})") from None
    try:
        document = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if "\n" in text.strip() else f"column {exc.colno}"
        raise OtlpDecodeError(f"invalid JSON at {where}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise OtlpDecodeError(f"invalid JSON: {exc}") from None
    request = ExportTraceServiceRequest()
    try:
        _request(document, request)
    except _Invalid as exc:
        raise OtlpDecodeError(str(exc)) from None
    return request


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; OTLP/JSON writes it as the string {name!r}")


class _Invalid(Exception):
    """Raised deep in the walker; each level on the way out adds its field or index."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def at(self, segment: str) -> _Invalid:
        self.path.append(segment)
        return self

    def __str__(self) -> str:
        where = ""
        for segment in reversed(self.path):
            where += segment if segment.startswith("[") or not where else f".{segment}"
        return f"{where}: {self.message}" if where else self.message


def _fields(*snake_names: str) -> dict[str, str]:
    """JSON keys of a message -> the lowerCamelCase field name (the snake_case original is accepted too)."""
    keys: dict[str, str] = {}
    for snake in snake_names:
        head, *rest = snake.split("_")
        camel = head + "".join(part.title() for part in rest)
        keys[snake] = keys[camel] = camel
    return keys


_REQUEST_FIELDS: Final = _fields("resource_spans")
_RESOURCE_SPANS_FIELDS: Final = _fields("resource", "scope_spans")
_RESOURCE_FIELDS: Final = _fields("attributes")
_SCOPE_SPANS_FIELDS: Final = _fields("scope", "spans")
_SCOPE_FIELDS: Final = _fields("name", "version", "attributes")
_SPAN_FIELDS: Final = _fields(
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "attributes",
    "events",
    "status",
)
_EVENT_FIELDS: Final = _fields("time_unix_nano", "name", "attributes")
_STATUS_FIELDS: Final = _fields("message", "code")
_KEY_VALUE_FIELDS: Final = _fields("key", "value")
_ANY_VALUE_FIELDS: Final = _fields(
    "string_value", "bool_value", "int_value", "double_value", "array_value", "kvlist_value", "bytes_value"
)
_VALUES_FIELDS: Final = _fields("values")
_SPAN_KINDS: Final[Mapping[str, int]] = dict(Span.SpanKind.items())
_STATUS_CODES: Final[Mapping[str, int]] = dict(Status.StatusCode.items())

_INT64: Final = (-(2**63), 2**63 - 1)
_UINT64: Final = (0, 2**64 - 1)
_INT32: Final = (-(2**31), 2**31 - 1)
_INTEGER_TEXT: Final = re.compile(r"-?[0-9]{1,20}")
_INTEGER_TEXT_ANY: Final = re.compile(r"[+-]?[0-9]+(?:[eE]\+?[0-9]+)?")
_NUMBER_TEXT: Final = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,6})?")
_FLOAT_WORDS: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _request(document: object, request: ExportTraceServiceRequest) -> None:
    for key, value in _object(document).items():
        if _REQUEST_FIELDS.get(key) is not None and value is not None:
            try:
                _repeated(value, request.resource_spans.add, _resource_spans)
            except _Invalid as exc:
                raise exc.at("resourceSpans") from None


def _resource_spans(obj: object, target: Any) -> None:
    for key, value in _object(obj).items():
        field = _RESOURCE_SPANS_FIELDS.get(key)
        if field is None or value is None:
            continue
        try:
            if field == "resource":
                resource = target.resource
                resource.SetInParent()
                for rkey, rvalue in _object(value).items():
                    if _RESOURCE_FIELDS.get(rkey) is not None and rvalue is not None:
                        _attributes_into(rvalue, resource.attributes, "attributes")
            else:
                _repeated(value, target.scope_spans.add, _scope_spans)
        except _Invalid as exc:
            raise exc.at(field) from None


def _scope_spans(obj: object, target: Any) -> None:
    for key, value in _object(obj).items():
        field = _SCOPE_SPANS_FIELDS.get(key)
        if field is None or value is None:
            continue
        try:
            if field == "scope":
                _scope(value, target.scope)
            else:
                _repeated(value, target.spans.add, _span)
        except _Invalid as exc:
            raise exc.at(field) from None


def _scope(obj: object, scope: Any) -> None:
    scope.SetInParent()
    for key, value in _object(obj).items():
        field = _SCOPE_FIELDS.get(key)
        if field is None or value is None:
            continue
        try:
            if field == "name":
                scope.name = _string(value)
            elif field == "version":
                scope.version = _string(value)
            else:
                _key_values(value, scope.attributes, 0)
        except _Invalid as exc:
            raise exc.at(field) from None


def _span(obj: object, span: Span) -> None:
    for key, value in _object(obj).items():
        field = _SPAN_FIELDS.get(key)
        if field is None or value is None:
            continue
        try:
            if field == "traceId":
                span.trace_id = _hex_id(value, 16)
            elif field == "spanId":
                span.span_id = _hex_id(value, 8)
            elif field == "parentSpanId":
                span.parent_span_id = _hex_id(value, 8)
            elif field == "name":
                span.name = _string(value)
            elif field == "kind":
                span.kind = _enum(value, _SPAN_KINDS)  # type: ignore[assignment]
            elif field == "startTimeUnixNano":
                span.start_time_unix_nano = _integer(value, _UINT64)
            elif field == "endTimeUnixNano":
                span.end_time_unix_nano = _integer(value, _UINT64)
            elif field == "attributes":
                _key_values(value, span.attributes, 0)
            elif field == "events":
                _repeated(value, span.events.add, _event)
            else:
                _status(value, span.status)
        except _Invalid as exc:
            raise exc.at(field) from None


def _event(obj: object, event: Any) -> None:
    for key, value in _object(obj).items():
        field = _EVENT_FIELDS.get(key)
        if field is None or value is None:
            continue
        try:
            if field == "timeUnixNano":
                event.time_unix_nano = _integer(value, _UINT64)
            elif field == "name":
                event.name = _string(value)
            else:
                _key_values(value, event.attributes, 0)
        except _Invalid as exc:
            raise exc.at(field) from None


def _status(obj: object, status: Status) -> None:
    status.SetInParent()
    for key, value in _object(obj).items():
        field = _STATUS_FIELDS.get(key)
        if field is None or value is None:
            continue
        try:
            if field == "message":
                status.message = _string(value)
            else:
                status.code = _enum(value, _STATUS_CODES)  # type: ignore[assignment]
        except _Invalid as exc:
            raise exc.at(field) from None


def _attributes_into(value: object, container: Any, field: str) -> None:
    try:
        _key_values(value, container, 0)
    except _Invalid as exc:
        raise exc.at(field) from None


def _key_values(value: object, container: Any, depth: int) -> None:
    for index, item in enumerate(_list(value)):
        try:
            pairs = _object(item)
            kv: KeyValue = container.add()
            for key, inner in pairs.items():
                field = _KEY_VALUE_FIELDS.get(key)
                if field is None or inner is None:
                    continue
                try:
                    if field == "key":
                        kv.key = _string(inner)
                    else:
                        _any_value(inner, kv.value, depth)
                except _Invalid as exc:
                    raise exc.at(field) from None
        except _Invalid as exc:
            raise exc.at(f"[{index}]") from None


def _any_value(obj: object, target: AnyValue, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Invalid(f"values nested more than {MAX_DEPTH} deep")
    kind: str | None = None
    for key, value in _object(obj).items():
        field = _ANY_VALUE_FIELDS.get(key)
        if field is None or value is None:
            continue
        if kind is not None:
            raise _Invalid(f"both {kind} and {field} are set; a value has one kind")
        kind = field
        try:
            if field == "stringValue":
                target.string_value = _string(value)
            elif field == "intValue":
                _int_value(value, target)
            elif field == "boolValue":
                target.bool_value = _bool(value)
            elif field == "doubleValue":
                target.double_value = _double(value)
            elif field == "bytesValue":
                target.bytes_value = _base64(value)
            elif field == "arrayValue":
                array = target.array_value
                array.SetInParent()
                _values(value, array, depth)
            else:
                kvlist = target.kvlist_value
                kvlist.SetInParent()
                for vkey, items in _object(value).items():
                    if _VALUES_FIELDS.get(vkey) is not None and items is not None:
                        try:
                            _key_values(items, kvlist.values, depth + 1)
                        except _Invalid as exc:
                            raise exc.at("values") from None
        except _Invalid as exc:
            raise exc.at(field) from None


def _values(obj: object, array: ArrayValue, depth: int) -> None:
    for key, items in _object(obj).items():
        if _VALUES_FIELDS.get(key) is None or items is None:
            continue
        for index, item in enumerate(_list(items)):
            try:
                _any_value(item, array.values.add(), depth + 1)
            except _Invalid as exc:
                raise exc.at(f"[{index}]").at("values") from None


def _repeated(value: object, add: Callable[[], Any], parse: Callable[[object, Any], None]) -> None:
    for index, item in enumerate(_list(value)):
        try:
            parse(item, add())
        except _Invalid as exc:
            raise exc.at(f"[{index}]") from None


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"expected an object, got {_kind(value)}")
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"expected an array, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_kind(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON can escape a lone surrogate ("\ud800"); protobuf strings must be valid UTF-8.
            raise _Invalid("string is not valid Unicode (lone surrogate)") from None
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_kind(value)}")
    return value


def _hex_id(value: object, size: int) -> bytes:
    if not isinstance(value, str):
        raise _Invalid(f"expected a hex string, got {_kind(value)}")
    if not value:
        return b""  # an absent id (a root span's parent); an empty trace or span id is rejected later
    if len(value) == 2 * size:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) == size:
            return raw
    base64_length = 4 * math.ceil(size / 3)
    hint = " (OTLP/JSON ids are hex, not base64)" if len(value) == base64_length else ""
    raise _Invalid(f"expected {2 * size} hex digits{hint}")


def _integer(value: object, bounds: tuple[int, int]) -> int:
    number: int
    if isinstance(value, bool):
        raise _Invalid("expected an integer, got a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise _Invalid(f"expected an integer, got {value!r}")
        number = int(value)
    elif isinstance(value, str):
        if len(value) > MAX_NUMBER_TEXT:
            raise _Invalid(f"expected an integer of at most {MAX_NUMBER_TEXT} characters")
        if _INTEGER_TEXT.fullmatch(value):
            number = int(value)
        elif _NUMBER_TEXT.fullmatch(value):
            try:
                exact = Decimal(value)
            except InvalidOperation:
                raise _Invalid("expected an integer") from None
            if exact != exact.to_integral_value():
                raise _Invalid(f"expected an integer, got {value[:32]!r}")
            if not bounds[0] <= exact <= bounds[1]:
                raise _Invalid(f"expected an integer in [{bounds[0]}, {bounds[1]}]")
            number = int(exact)
        else:
            raise _Invalid("expected an integer (a number or a decimal string)")
    else:
        raise _Invalid(f"expected an integer, got {_kind(value)}")
    if not bounds[0] <= number <= bounds[1]:
        raise _Invalid(f"expected an integer in [{bounds[0]}, {bounds[1]}]")
    return number


def _int_value(value: object, target: AnyValue) -> None:
    """An attribute's `intValue`. One outside int64 cannot be held by the message; it is kept as its
    text (at most `MAX_NUMBER_TEXT` characters), so the span's reader refuses that one span through
    `partial_success`, by its bounds, instead of the decoder failing the whole batch with a 400."""
    try:
        target.int_value = _integer(value, _INT64)
    except _Invalid:
        text = _integer_text(value)
        if text is None:
            raise
        target.string_value = text


def _integer_text(value: object) -> str | None:
    """A whole number's text when `value` is one (however large), else `None`; never converts it.

    Text longer than `MAX_NUMBER_TEXT` becomes `1e9999` (or `-1e9999`): as far out of range, and short.
    """
    text: str | None
    if isinstance(value, str):
        text = value.strip()
        if not _INTEGER_TEXT_ANY.fullmatch(text):
            return None
        negative = text.startswith("-")
    elif isinstance(value, int) and not isinstance(value, bool):
        text, negative = None, value < 0  # a JSON number past int64 (never formatted: it may be huge)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        text, negative = repr(value), value < 0
    else:
        return None
    if text is None or len(text) > MAX_NUMBER_TEXT:
        return "-1e9999" if negative else "1e9999"
    return text


def _double(value: object) -> float:
    if isinstance(value, bool):
        raise _Invalid("expected a number, got a boolean")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise _Invalid("number out of range") from None
    if isinstance(value, str):
        word = _FLOAT_WORDS.get(value)
        if word is not None:
            return word
        if len(value) <= MAX_NUMBER_TEXT and _NUMBER_TEXT.fullmatch(value):
            return float(value)
        raise _Invalid('expected a number (or "NaN", "Infinity", "-Infinity")')
    raise _Invalid(f"expected a number, got {_kind(value)}")


def _enum(value: object, names: Mapping[str, int]) -> int:
    if isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value):
        number = names.get(value)
        if number is None:
            raise _Invalid(f"unknown enum value {value[:64]!r}; expected an integer or one of {', '.join(names)}")
        return number
    return _integer(value, _INT32)


def _base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise _Invalid(f"expected a base64 string, got {_kind(value)}")
    # The proto3 JSON mapping accepts standard or URL-safe base64, with or without padding.
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid("expected base64") from None


# --- reading calls --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodedSpan:
    """A span that matters: a model call (`call`), or a rejected span and why (`problem`)."""

    call: LLMCall | None
    trace_id: int
    span_id: int
    problem: str | None = None


_SCALARS: Final = frozenset({"string_value", "bool_value", "int_value", "double_value", "bytes_value"})
_STRUCTURED_KEYS: Final = frozenset(semconv.PROMPT)
"""Keys whose kvlist (or nested array) values are kept as JSON text: structured prompt messages."""
_SPAN_KEYS: Final = semconv.SPAN_KEYS
_AGGREGATED_PREFIX: Final = semconv.AGGREGATED_PREFIX
_STATUS_ERROR: Final = Status.STATUS_CODE_ERROR
_ZERO_TRACE: Final = bytes(16)
_ZERO_SPAN: Final = bytes(8)


def decode_spans(request: ExportTraceServiceRequest, limits: CallLimits = DEFAULT_LIMITS) -> Iterator[DecodedSpan]:
    """Every model call in the request, and every span rejected, in request order.

    A span is rejected for its ids, or for a number outside `limits` (`LLMCall.rejected`). Spans
    that are not model calls (no GenAI attribute, agent runs, tools, pending spans) yield nothing.
    Never raises on attribute values: a span that cannot be read is rejected, and logged.
    """
    for call, trace_id, span_id, problem in _read_spans(request, limits):
        yield DecodedSpan(call, trace_id, span_id, problem)


_Read = tuple[LLMCall | None, int, int, str | None]
"""A `DecodedSpan`'s fields, as `_read_spans` yields them: a batch builds none of the dataclasses."""


def _read_spans(request: ExportTraceServiceRequest, limits: CallLimits) -> Iterator[_Read]:
    """`decode_spans`, each span as a tuple of its fields."""
    markers = semconv.MARKERS
    for r_index, resource_spans in enumerate(request.resource_spans):
        resource: dict[str, object] | None = None  # converted once, for the resource's first call
        memo: dict[tuple[object, ...], Any] = {}  # its calls' labels (`call_from_parts`)
        for s_index, scope_spans in enumerate(resource_spans.scope_spans):
            instrumentation = scope_spans.scope.name
            for index, span in enumerate(scope_spans.spans):
                trace_id, span_id = span.trace_id, span.span_id
                problem = _id_problem(trace_id, span_id)
                if problem is not None:
                    where = f"resourceSpans[{r_index}].scopeSpans[{s_index}].spans[{index}]"
                    yield None, _id(trace_id, 16), _id(span_id, 8), f"{where}: {problem}"
                    continue
                # One pass over the attributes: whether any is a GenAI one (most spans in a mixed stream
                # carry none), and the values of those a call is read from. A failed span with no
                # attribute at all may still be a call (`calls._bare_failure`).
                attributes = span.attributes
                read, marked = _call_attributes(attributes, markers)
                if not marked and (attributes or span.status.code != _STATUS_ERROR):
                    continue
                if not read and attributes:
                    read = _attributes(attributes)  # none it reads: `call_from_parts` sees them all, as ever
                if resource is None:
                    resource = _attributes(resource_spans.resource.attributes)
                decoded = _decode_call(span, resource, limits, instrumentation, read, memo=memo)
                if decoded is not None:
                    if decoded[3] is not None:
                        where = f"resourceSpans[{r_index}].scopeSpans[{s_index}].spans[{index}]"
                        decoded = None, decoded[1], decoded[2], f"{where}: {decoded[3]}"
                    yield decoded


def calls_from_request(
    request: ExportTraceServiceRequest,
    max_messages: int = MAX_MESSAGES,
    limits: CallLimits = DEFAULT_LIMITS,
    rejected_spans: dict[tuple[int, int], str] | None = None,
) -> tuple[list[LLMCall], int, list[str]]:
    """The model calls in a request, how many spans were rejected, and why (at most `max_messages`).

    Rejected spans (trace id not 16 non-zero bytes, span id not 8 non-zero bytes, a token count or
    reported cost outside `limits`) belong in the response's `partial_success`; the other spans of
    the batch are calls as usual. Non-GenAI spans are simply not calls and are not rejected. With
    `rejected_spans`, each rejected span's (trace id, span id) and reason are put in it, all of them.
    """
    calls: list[LLMCall] = []
    rejected = 0
    messages: list[str] = []
    for call, trace_id, span_id, problem in _read_spans(request, limits):
        if call is not None:
            calls.append(call)
        else:
            rejected += 1
            if len(messages) < max_messages and problem:
                messages.append(problem)
            if rejected_spans is not None:
                rejected_spans[(trace_id, span_id)] = problem or "rejected"
    return calls, rejected, messages


def _id_problem(trace_id: bytes, span_id: bytes) -> str | None:
    if len(trace_id) != 16:
        return "trace id is empty" if not trace_id else f"trace id is {len(trace_id)} bytes, not 16"
    if trace_id == _ZERO_TRACE:
        return "trace id is all zeros"
    if len(span_id) != 8:
        return "span id is empty" if not span_id else f"span id is {len(span_id)} bytes, not 8"
    if span_id == _ZERO_SPAN:
        return "span id is all zeros"
    return None


def _id(raw: bytes, size: int) -> int:
    return int.from_bytes(raw, "big") if len(raw) == size else 0


def _decode_call(
    span: Span,
    resource: Mapping[str, object],
    limits: CallLimits,
    instrumentation: str = "",
    attributes: Mapping[str, object] | None = None,
    *,
    memo: dict[tuple[object, ...], Any] | None = None,
) -> _Read | None:
    """`span` as a call; `attributes`, when given, are its attributes as `_call_attributes` read them;
    `memo` is `call_from_parts`'s, for the spans of `resource`."""
    try:
        status = span.status
        error = status.code == _STATUS_ERROR
        call = call_from_parts(  # by position (see its parameters)
            attributes if attributes is not None else _attributes(span.attributes),
            resource,
            int.from_bytes(span.trace_id, "big"),
            int.from_bytes(span.span_id, "big"),
            _id(span.parent_span_id, 8),
            span.start_time_unix_nano,
            span.end_time_unix_nano,
            error,
            # The status message, the exception events and the name are read for a failure only.
            (status.message or None) if error else None,
            [_attributes(event.attributes) for event in span.events if event.name == semconv.EXCEPTION_EVENT]
            if error
            else (),
            limits,
            instrumentation or None,
            span.name if error else None,
            memo,
        )
    except Exception:
        # A bug reading one hostile span must not lose the batch: reject it, say so, log it.
        _LOG.error("otlp:span", "otel_puppy could not read an OTLP span", exc_info=True)
        return None, _id(span.trace_id, 16), _id(span.span_id, 8), "span could not be read"
    if call is None:
        return None
    if call.rejected is not None:
        return None, call.trace_id, call.span_id, call.rejected
    return call, call.trace_id, call.span_id, None


def _attributes(key_values: Iterable[KeyValue]) -> dict[str, object]:
    """OTLP attributes as the SDK would hold them: primitives, tuples of primitives, bytes.

    Empty values are skipped. A kvlist (or an array holding arrays or kvlists) is kept as JSON
    text only under the prompt keys, where structured messages are normal; elsewhere it is
    skipped, as no SDK attribute can hold one.
    """
    out: dict[str, object] = {}
    scalars = _SCALARS
    for kv in key_values:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind in scalars:
            out[kv.key] = getattr(value, kind)
        elif kind == "array_value":
            items = _array(value.array_value)
            if items is not None:
                out[kv.key] = items
            elif kv.key in _STRUCTURED_KEYS:
                out[kv.key] = _json_text(value)
        elif kind == "kvlist_value" and kv.key in _STRUCTURED_KEYS:
            out[kv.key] = _json_text(value)
    return out


def _call_attributes(key_values: Iterable[KeyValue], markers: frozenset[str]) -> tuple[dict[str, object], bool]:
    """`_attributes` of the keys `call_from_parts` reads (`semconv.SPAN_KEYS`, and those under
    `AGGREGATED_PREFIX`); and whether any key, empty or not, is one of `markers`. The values of the
    others (message bodies, finish reasons, server addresses) are never converted."""
    out: dict[str, object] = {}
    marked = False
    wanted, prefix, scalars = _SPAN_KEYS, _AGGREGATED_PREFIX, _SCALARS
    for kv in key_values:
        key = kv.key
        if key not in wanted and not key.startswith(prefix):
            continue
        if not marked and key in markers:
            marked = True
        value = kv.value
        kind = value.WhichOneof("value")
        if kind in scalars:
            out[key] = getattr(value, kind)
        elif kind == "array_value":
            items = _array(value.array_value)
            if items is not None:
                out[key] = items
            elif key in _STRUCTURED_KEYS:
                out[key] = _json_text(value)
        elif kind == "kvlist_value" and key in _STRUCTURED_KEYS:
            out[key] = _json_text(value)
    return out, marked


def _array(array: ArrayValue) -> tuple[object, ...] | None:
    """A tuple of primitives, or `None` when the array holds arrays or kvlists."""
    items: list[object] = []
    for item in array.values:
        kind = item.WhichOneof("value")
        if kind in _SCALARS:
            items.append(getattr(item, kind))
        elif kind is None or kind == "string_value_strindex":
            items.append(None)
        else:
            return None
    return tuple(items)


def _json_text(value: AnyValue) -> str:
    return json.dumps(_plain(value, 0), ensure_ascii=False, separators=(",", ":"))


def _plain(value: AnyValue, depth: int) -> object:
    if depth > MAX_DEPTH:
        return None
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(item, depth + 1) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value, depth + 1) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind in _SCALARS:
        return getattr(value, kind)
    return None


# --- replies --------------------------------------------------------------------------------


def encode_response(rejected: int, message: str, content_type: str) -> bytes:
    """An `ExportTraceServiceResponse` in the request's encoding (send it with `200 OK`).

    `partial_success` is set when spans were rejected, or when there is a `message` for the
    client (the spec allows warnings with `rejected_spans` 0); otherwise the body is empty
    (`{}` in JSON), which the spec calls full success.
    """
    message = _clean(message)
    if _media_type(content_type) == JSON:
        partial: dict[str, str] = {}
        if rejected:
            partial["rejectedSpans"] = str(rejected)  # int64: a decimal string in proto3 JSON
        if message:
            partial["errorMessage"] = message
        return json.dumps({"partialSuccess": partial} if partial else {}, separators=(",", ":")).encode()
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    data: bytes = response.SerializeToString()
    return data


def encode_status(code: int, message: str, content_type: str) -> bytes:
    """A `google.rpc.Status` in the request's encoding, the body of every OTLP `4xx`/`5xx` reply.

    `code` is a gRPC status code (3 INVALID_ARGUMENT for bad data, 14 UNAVAILABLE when
    overloaded); the spec says clients may log it but must act on the HTTP status.
    """
    message = _clean(message)
    if _media_type(content_type) == JSON:
        status: dict[str, object] = {}
        if code:
            status["code"] = code
        if message:
            status["message"] = message
        return json.dumps(status, separators=(",", ":")).encode()
    # Two fields, written by hand so the service needs no googleapis-common-protos:
    # `int32 code = 1` (varint) and `string message = 2` (length-delimited).
    out = bytearray()
    if code:
        out += b"\x08" + _varint(code & 0xFFFF_FFFF_FFFF_FFFF)  # negative int32s take ten bytes
    if message:
        text = message.encode("utf-8")
        out += b"\x12" + _varint(len(text)) + text
    return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _clean(message: str) -> str:
    """Messages may quote client data; protobuf strings must be valid UTF-8."""
    return message if message.isascii() else message.encode("utf-8", "replace").decode("utf-8")
