"""OTLP/HTTP decoding: protobuf and JSON agree, errors name the field, hostile spans never raise."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otel_puppy import semconv
from otel_puppy.calls import ErrorClass, LLMCall, extract_call
from otel_puppy.server.otlp import (
    JSON,
    PROTOBUF,
    OtlpDecodeError,
    UnsupportedContentType,
    calls_from_request,
    decode_spans,
    decode_traces,
    encode_response,
    encode_status,
    response_content_type,
)
from otel_puppy.testing import make_span

START_NS = 1_767_225_600_000_000_000
TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
RESOURCE = {"service.name": "support-bot", "deployment.environment.name": "prod"}
CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
    "gen_ai.response.model": "gpt-4.1-2025-04-14",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
    "gen_ai.usage.cache_read.input_tokens": 200,
    "gen_ai.agent.name": "support",
    "user.id": "u-42",
    "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "hello"}]}]',
    "gen_ai.request.stop_sequences": ("END", "STOP"),
    "gen_ai.request.temperature": 0.5,
    "gen_ai.request.stream": False,
}
FAILED = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "anthropic",
    "gen_ai.request.model": "claude-sonnet-4-5",
}
HTTP = {"http.request.method": "GET", "url.full": "https://example.com/"}


# --- building requests with the proto classes, and rendering them as OTLP/JSON ---------------


def any_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, Mapping):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(value)))
    assert isinstance(value, Sequence)
    return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))


def key_values(attributes: Mapping[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def span(
    attributes: Mapping[str, object],
    *,
    trace_id: int = TRACE_ID,
    span_id: int,
    parent_span_id: int = 0,
    start_ns: int = START_NS,
    duration_ns: int = 1_500_000_000,
    error: bool = False,
    name: str = "chat gpt-4.1",
) -> Span:
    events = []
    if error:
        events.append(
            Span.Event(
                time_unix_nano=start_ns + 1,
                name="exception",
                attributes=key_values({"exception.type": "RateLimitError", "exception.message": "failed"}),
            )
        )
    return Span(
        trace_id=trace_id.to_bytes(16, "big"),
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent_span_id.to_bytes(8, "big") if parent_span_id else b"",
        name=name,
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + duration_ns,
        attributes=key_values(attributes),
        events=events,
        status=Status(code=Status.STATUS_CODE_ERROR, message="429 Too Many Requests") if error else None,
    )


def make_request(*spans: Span, resource: Mapping[str, object] = RESOURCE) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=key_values(resource)),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="pydantic-ai", version="1.0"), spans=spans)],
            )
        ]
    )


def otlp_json(message: Any) -> dict[str, Any]:
    """OTLP/JSON as the spec writes it: proto3 JSON, but hex ids and integer enums."""
    data: dict[str, Any] = _hex_ids(json_format.MessageToDict(message, use_integers_for_enums=True))
    return data


def _hex_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: base64.b64decode(v).hex() if k in {"traceId", "spanId", "parentSpanId"} else _hex_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_hex_ids(v) for v in value]
    return value


def sdk_call(attributes: Mapping[str, object], **kwargs: Any) -> LLMCall:
    """The same span through the in-process front door, for parity."""
    duration_ns = kwargs.pop("duration_ns", 1_500_000_000)
    error = kwargs.pop("error", False)
    result = extract_call(
        make_span(
            attributes,
            trace_id=kwargs.pop("trace_id", TRACE_ID),
            start_ns=START_NS,
            duration_s=duration_ns / 1e9,
            error=error,
            exception_type="RateLimitError" if error else None,
            resource=RESOURCE,
            **kwargs,
        )
    )
    assert result is not None
    return result


REQUEST = make_request(
    span(CHAT, span_id=0x1001, parent_span_id=0x1000),
    span(HTTP, span_id=0x1002, name="GET"),
    span(FAILED, span_id=0x1003, error=True, duration_ns=200_000_000),
)


# --- protobuf and JSON ----------------------------------------------------------------------


def test_protobuf_round_trip_reads_the_same_calls_as_the_span_processor() -> None:
    body = REQUEST.SerializeToString()
    request = decode_traces(body, "application/x-protobuf")
    assert request == REQUEST
    calls, rejected, messages = calls_from_request(request)
    assert (rejected, messages) == (0, [])
    assert calls == [
        sdk_call(CHAT, span_id=0x1001, parent_span_id=0x1000),
        sdk_call(FAILED, span_id=0x1003, error=True, duration_ns=200_000_000),
    ]
    chat, failed = calls
    assert (chat.trace_id, chat.span_id, chat.parent_span_id) == (TRACE_ID, 0x1001, 0x1000)
    assert (chat.provider, chat.model, chat.agent, chat.user) == ("openai", "gpt-4.1-2025-04-14", "support", "u-42")
    assert (chat.service, chat.environment) == ("support-bot", "prod")
    assert (chat.input_tokens, chat.output_tokens, chat.cache_read_tokens) == (1000, 100, 200)
    assert (chat.start_ns, chat.end_ns) == (START_NS, START_NS + 1_500_000_000)
    assert chat.prompt_hash is not None
    assert chat.ok
    assert failed.error_class is ErrorClass.RATE_LIMIT
    assert failed.has_usage is False


def test_otlp_json_decodes_to_the_same_request_and_calls() -> None:
    document = otlp_json(REQUEST)
    span0 = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span0["traceId"] == "5b8efff798038103d269b633813fc60c"
    assert span0["startTimeUnixNano"] == str(START_NS)  # int64 as a decimal string
    assert span0["kind"] == 3  # enums as integers
    # What a newer sender may add, which a receiver must ignore:
    document["resourceSpans"][0]["schemaUrl"] = "https://opentelemetry.io/schemas/1.30.0"
    document["resourceSpans"][0]["futureField"] = {"nested": [1, 2, {"x": None}]}
    span0["traceId"] = span0["traceId"].upper()  # ids are case-insensitive hex
    span0["links"] = [{"traceId": "not even hex", "spanId": 7}]
    span0["flags"] = 257
    span0["traceState"] = "vendor=1"
    span0["droppedAttributesCount"] = 2
    failed = document["resourceSpans"][0]["scopeSpans"][0]["spans"][2]
    assert failed["status"] == {"code": 2, "message": "429 Too Many Requests"}
    failed["status"]["deprecatedCode"] = 5
    failed["events"][0]["droppedAttributesCount"] = 1
    span0["attributes"][0]["unknown"] = "ignored"
    body = json.dumps(document).encode()
    request = decode_traces(body, "application/json; charset=utf-8")
    assert request == REQUEST
    assert calls_from_request(request) == calls_from_request(REQUEST)


def test_json_accepts_what_protobufs_own_json_parser_accepts() -> None:
    """Snake_case keys, enum names, numbers for int64s, nulls, a BOM: lenient as a receiver should be."""
    document = {
        "resource_spans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "support-bot"}}]},
                "scope_spans": [
                    {
                        "scope": None,
                        "spans": [
                            {
                                "trace_id": "5B8EFFF798038103D269B633813FC60C",
                                "span_id": "0000000000001001",
                                "parent_span_id": "",
                                "name": "chat",
                                "kind": "SPAN_KIND_CLIENT",
                                "start_time_unix_nano": START_NS,
                                "endTimeUnixNano": f"{START_NS + 10**9}",
                                "attributes": [
                                    {"key": "gen_ai.operation.name", "value": {"string_value": "chat"}},
                                    {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                                    {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4.1"}},
                                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": 1000}},
                                    {"key": "gen_ai.usage.output_tokens", "value": {"int_value": "1e2"}},
                                    {"key": "operation.cost", "value": {"doubleValue": "0.0028"}},
                                    {"key": "raw", "value": {"bytesValue": "3q2-7w"}},  # URL-safe, unpadded
                                    {"key": "empty", "value": {}},
                                    {"key": "nothing", "value": None},
                                ],
                                "events": None,
                                "status": {"code": "STATUS_CODE_OK", "message": None},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    request = decode_traces(b"\xef\xbb\xbf" + json.dumps(document).encode(), "Application/JSON")
    decoded = request.resource_spans[0].scope_spans[0].spans[0]
    assert decoded.kind == Span.SPAN_KIND_CLIENT
    assert decoded.status.code == Status.STATUS_CODE_OK
    assert decoded.parent_span_id == b""
    assert decoded.attributes[6].value.bytes_value == b"\xde\xad\xbe\xef"
    assert decoded.attributes[7].value.WhichOneof("value") is None
    [call] = calls_from_request(request)[0]
    assert call == LLMCall(
        trace_id=TRACE_ID,
        span_id=0x1001,
        parent_span_id=0,
        provider="openai",
        request_model="gpt-4.1",
        response_model=None,
        operation="chat",
        start_ns=START_NS,
        end_ns=START_NS + 10**9,
        input_tokens=1000,
        output_tokens=100,
        has_usage=True,
        service="support-bot",
        reported_cost_usd=0.0028,
    )


def test_empty_requests_are_fine() -> None:
    assert decode_traces(b"", PROTOBUF) == ExportTraceServiceRequest()
    assert decode_traces(b"{}", JSON) == ExportTraceServiceRequest()
    assert decode_traces(b'{"resourceSpans": []}', JSON) == ExportTraceServiceRequest()
    assert calls_from_request(ExportTraceServiceRequest()) == ([], 0, [])


def test_structured_prompts_hash_like_their_json_text() -> None:
    messages = [{"role": "user", "parts": [{"type": "text", "content": "hello"}]}]
    structured = dict(CHAT, **{"gen_ai.input.messages": messages})
    as_text = dict(CHAT, **{"gen_ai.input.messages": json.dumps(messages)})
    [a, b], _, _ = calls_from_request(make_request(span(structured, span_id=1), span(as_text, span_id=2)))
    assert a.prompt_hash is not None
    assert a.prompt_hash == b.prompt_hash


# --- errors ---------------------------------------------------------------------------------

SPAN_PATH = "resourceSpans[0].scopeSpans[0].spans[0]"


def one_span(**fields: object) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [fields]}]}]}).encode()


def one_value(value: object) -> bytes:
    return one_span(attributes=[{"key": "k", "value": value}])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "invalid JSON at column 2: Expecting property name enclosed in double quotes"),
        (b'{\n  "resourceSpans": [\n    {,\n', "invalid JSON at line 3 column 6: Expecting property name"),
        (b"[]", "expected an object, got an array"),
        (b'{"resourceSpans": {}}', "resourceSpans: expected an array, got an object"),
        (b'{"resourceSpans": [7]}', "resourceSpans[0]: expected an object, got a number"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": "x"}]}]}', "resourceSpans[0].scopeSpans[0].spans: expected"),
        (b'{"resourceSpans": [{"resource": {"attributes": [{"key": 1}]}}]}', "resourceSpans[0].resource.attributes"),
        (one_span(traceId="zz" * 16), f"{SPAN_PATH}.traceId: expected 32 hex digits"),
        (one_span(traceId="abc"), f"{SPAN_PATH}.traceId: expected 32 hex digits"),
        (one_span(traceId=12), f"{SPAN_PATH}.traceId: expected a hex string, got a number"),
        (
            one_span(spanId=base64.b64encode(bytes(range(1, 9))).decode()),
            f"{SPAN_PATH}.spanId: expected 16 hex digits (OTLP/JSON ids are hex, not base64)",
        ),
        (one_span(parentSpanId="0102030405060708ab"), f"{SPAN_PATH}.parentSpanId: expected 16 hex digits"),
        (one_span(name=["x"]), f"{SPAN_PATH}.name: expected a string, got an array"),
        (one_span(kind="SPAN_KIND_BOGUS"), f"{SPAN_PATH}.kind: unknown enum value 'SPAN_KIND_BOGUS'"),
        (one_span(kind=2**31), f"{SPAN_PATH}.kind: expected an integer in"),
        (one_span(startTimeUnixNano="soon"), f"{SPAN_PATH}.startTimeUnixNano: expected an integer"),
        (one_span(startTimeUnixNano=-1), f"{SPAN_PATH}.startTimeUnixNano: expected an integer in [0, "),
        (one_span(endTimeUnixNano=str(2**64)), f"{SPAN_PATH}.endTimeUnixNano: expected an integer in [0, "),
        (one_span(endTimeUnixNano=True), f"{SPAN_PATH}.endTimeUnixNano: expected an integer, got a boolean"),
        (one_span(status={"code": "ERROR"}), f"{SPAN_PATH}.status.code: unknown enum value 'ERROR'"),
        (one_span(events=[{"timeUnixNano": 1.5}]), f"{SPAN_PATH}.events[0].timeUnixNano: expected an integer, got 1.5"),
        (one_value({"intValue": "1.5"}), f"{SPAN_PATH}.attributes[0].value.intValue: expected an integer, got '1.5'"),
        (one_value({"intValue": "12x"}), f"{SPAN_PATH}.attributes[0].value.intValue: expected an integer"),
        (one_value({"boolValue": "true"}), f"{SPAN_PATH}.attributes[0].value.boolValue: expected true or false"),
        (one_value({"doubleValue": "fast"}), f"{SPAN_PATH}.attributes[0].value.doubleValue: expected a number"),
        (one_value({"bytesValue": "!!!!"}), f"{SPAN_PATH}.attributes[0].value.bytesValue: expected base64"),
        (
            one_value({"stringValue": "a", "intValue": 1}),
            f"{SPAN_PATH}.attributes[0].value: both stringValue and intValue are set; a value has one kind",
        ),
        (
            one_value({"arrayValue": {"values": [{"stringValue": "ok"}, {"doubleValue": []}]}}),
            f"{SPAN_PATH}.attributes[0].value.arrayValue.values[1].doubleValue: expected a number, got an array",
        ),
        (
            one_value({"kvlistValue": {"values": [{"key": "a", "value": {"intValue": "x"}}]}}),
            f"{SPAN_PATH}.attributes[0].value.kvlistValue.values[0].value.intValue: expected an integer",
        ),
        (
            one_value({"stringValue": "\ud800"}),
            f"{SPAN_PATH}.attributes[0].value.stringValue: string is not valid Unicode (lone surrogate)",
        ),
        (b'{"resourceSpans": NaN}', "invalid JSON: NaN is not JSON"),
        (b"\xff\xfe{}", "body is not UTF-8 (at byte 0)"),
    ],
)
def test_malformed_json_names_the_place(body: bytes, message: str) -> None:
    with pytest.raises(OtlpDecodeError) as info:
        decode_traces(body, JSON)
    assert str(info.value).startswith(message), str(info.value)


def test_the_exact_message_for_a_bad_trace_id() -> None:
    body = json.dumps(
        {"resourceSpans": [{"scopeSpans": [{"spans": []}, {"spans": [{}, {}, {}, {"traceId": "xyz"}]}]}]}
    ).encode()
    with pytest.raises(OtlpDecodeError) as info:
        decode_traces(body, JSON)
    assert str(info.value) == "resourceSpans[0].scopeSpans[1].spans[3].traceId: expected 32 hex digits"


def test_values_nested_too_deep_are_refused() -> None:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(40):
        value = {"arrayValue": {"values": [value]}}
    with pytest.raises(OtlpDecodeError, match="nested more than 32 deep"):
        decode_traces(one_value(value), JSON)
    with pytest.raises(OtlpDecodeError, match="invalid JSON"):
        decode_traces(b"[" * 100_000, JSON)


def test_malformed_protobuf_and_unknown_content_types() -> None:
    with pytest.raises(OtlpDecodeError, match=r"^invalid protobuf"):
        decode_traces(b"\x0a\xff\xff\xff\xff\x0f", "application/x-protobuf")
    with pytest.raises(UnsupportedContentType, match="unsupported content type 'text/plain'"):
        decode_traces(b"{}", "text/plain")
    assert isinstance(UnsupportedContentType("x"), OtlpDecodeError)
    assert isinstance(OtlpDecodeError("x"), ValueError)


# --- rejected spans -------------------------------------------------------------------------


def test_spans_with_invalid_ids_are_rejected_and_explained() -> None:
    good = span(CHAT, span_id=1)
    bad = [
        span(CHAT, span_id=2),
        span(CHAT, span_id=3),
        span(HTTP, span_id=4, name="GET"),
        span(CHAT, span_id=5),
        span(CHAT, span_id=6),
    ]
    bad[0].trace_id = b""
    bad[1].trace_id = bytes(16)
    bad[2].span_id = b"\x01\x02\x03\x04"  # not a call, but its ids are still invalid
    bad[3].span_id = bytes(8)
    bad[4].trace_id = b"\x01" * 17
    request = decode_traces(make_request(good, *bad).SerializeToString(), PROTOBUF)
    calls, rejected, messages = calls_from_request(request)
    assert [c.span_id for c in calls] == [1]
    assert rejected == 5
    where = "resourceSpans[0].scopeSpans[0].spans"
    assert messages == [
        f"{where}[1]: trace id is empty",
        f"{where}[2]: trace id is all zeros",
        f"{where}[3]: span id is 4 bytes, not 8",
        f"{where}[4]: span id is all zeros",
        f"{where}[5]: trace id is 17 bytes, not 16",
    ]
    assert calls_from_request(request, max_messages=2)[1:] == (5, messages[:2])
    decoded = list(decode_spans(request))
    assert [(d.call is not None, d.trace_id, d.span_id) for d in decoded][:3] == [
        (True, TRACE_ID, 1),
        (False, 0, 2),
        (False, 0, 3),
    ]


def test_a_non_genai_span_is_not_a_call_and_not_rejected() -> None:
    assert calls_from_request(make_request(span(HTTP, span_id=9))) == ([], 0, [])


def test_a_failed_span_whose_genai_keys_are_all_empty_is_read_with_its_other_attributes() -> None:
    """The reader converts only the attributes a call is read from; a span with none of them left (a
    GenAI key without a value) is read with all of them, as before: not the attribute-less failure
    `calls._bare_failure` would take from the span's name."""

    def request(*others: KeyValue) -> ExportTraceServiceRequest:
        failed = span({}, span_id=1, error=True, name="chat gpt-4.1")
        failed.attributes.add(key="gen_ai.request.model")  # a key without a value
        failed.attributes.extend(others)
        scope = InstrumentationScope(name="openlit.instrumentation.openai")
        return ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(scope=scope, spans=[failed])])]
        )

    assert calls_from_request(request(KeyValue(key="http.route", value=AnyValue(string_value="/v1/chat")))) == (
        [],
        0,
        [],
    )
    calls, _, _ = calls_from_request(request())  # nothing but the empty key: an attribute-less failure
    assert [(c.provider, c.request_model, c.error_class) for c in calls] == [
        ("openai", "gpt-4.1", ErrorClass.RATE_LIMIT)
    ]


def test_a_root_call_has_parent_zero_and_a_bad_parent_id_is_ignored() -> None:
    root = span(CHAT, span_id=1)
    odd_parent = span(CHAT, span_id=2)
    odd_parent.parent_span_id = b"\x01\x02"
    calls, rejected, _ = calls_from_request(make_request(root, odd_parent))
    assert [c.parent_span_id for c in calls] == [0, 0]
    assert rejected == 0


# --- hostile values -------------------------------------------------------------------------

_READ_KEYS = sorted(
    {
        *semconv.PROVIDER,
        *semconv.REQUEST_MODEL,
        *semconv.RESPONSE_MODEL,
        *semconv.OPERATION,
        *semconv.USAGE_KEYS,
        *semconv.CACHE_READ_TOKENS,
        *semconv.REASONING_TOKENS,
        *semconv.REPORTED_COST,
        *semconv.AGENT,
        *semconv.USER,
        *semconv.PROMPT,
        *semconv.HTTP_STATUS,
        semconv.ERROR_TYPE,
        semconv.DECISION_ID,
        semconv.LOGFIRE_SPAN_TYPE,
        semconv.OPENINFERENCE_KIND,
        semconv.TRACELOOP_KIND,
    }
)


def _deep(depth: int) -> AnyValue:
    """Arrays in kvlists in arrays..., built in place (protobuf's constructors copy, and limit depth)."""
    root = AnyValue()
    value = root
    for i in range(depth):
        value = value.array_value.values.add() if i % 2 else value.kvlist_value.values.add(key="k").value
    value.string_value = "leaf"
    return root


_OUT_OF_RANGE: Final = frozenset({8, 9, 11, 13})
"""The `HOSTILE` values that are numbers outside every bound (-2^63, 2^63-1, inf, 1e300): under a token
or cost key they reject the span (`partial_success`); every other value at most makes it a problem."""
_BOUNDED_KEYS: Final = frozenset(
    (
        *semconv.USAGE_KEYS,
        *semconv.CACHE_READ_TOKENS,
        *semconv.CACHE_WRITE_TOKENS,
        *semconv.REASONING_TOKENS,
        *semconv.REPORTED_COST,
    )
)
HOSTILE: list[AnyValue] = [
    AnyValue(),
    AnyValue(string_value=""),
    AnyValue(string_value="x" * 100_000),
    AnyValue(string_value="\x00\u202e[red]bold"),
    AnyValue(string_value="{not json"),
    AnyValue(string_value='[{"role": 1, "content": {"a": []}}]'),
    AnyValue(bytes_value=b"\xff\xfe\x00"),
    AnyValue(bool_value=True),
    AnyValue(int_value=-(2**63)),
    AnyValue(int_value=2**63 - 1),
    AnyValue(double_value=float("nan")),
    AnyValue(double_value=float("inf")),
    AnyValue(double_value=-0.0),
    AnyValue(double_value=1e300),
    AnyValue(array_value=ArrayValue()),
    AnyValue(array_value=ArrayValue(values=[AnyValue(), AnyValue(int_value=1), AnyValue(string_value="a")])),
    AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="role", value=AnyValue(bytes_value=b"\x00"))])),
    AnyValue(string_value_strindex=7),
    _deep(25),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_READ_KEYS), st.sampled_from(range(len(HOSTILE)))),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_hostile_attribute_values_never_raise(pairs: list[tuple[str, int]], error: bool) -> None:
    hostile = span({"gen_ai.usage.input_tokens": 1}, span_id=7, error=error)
    hostile.attributes.extend(KeyValue(key=key, value=HOSTILE[index]) for key, index in pairs)
    hostile.events.add(name="exception").attributes.extend(
        KeyValue(key=key, value=HOSTILE[index]) for key, index in pairs
    )
    request = decode_traces(make_request(hostile).SerializeToString(), PROTOBUF)
    calls, rejected, messages = calls_from_request(request)
    if rejected:  # only ever for a number out of its bound, under a key that is read as one
        assert any(index in _OUT_OF_RANGE and key in _BOUNDED_KEYS for key, index in pairs)
        assert (calls, rejected, len(messages)) == ([], 1, 1)
        assert "is out of range" in messages[0]
    else:
        assert messages == []
        assert len(calls) <= 1


def test_values_nested_deeper_than_protobuf_decodes_are_survived() -> None:
    request = make_request(span(CHAT, span_id=1))
    deep = request.resource_spans[0].scope_spans[0].spans[0]
    deep.attributes.add(key="gen_ai.input.messages").value.CopyFrom(_deep(400))
    deep.attributes.add(key="gen_ai.request.model").value.CopyFrom(_deep(400))
    [call], rejected, _ = calls_from_request(request)
    assert rejected == 0
    assert call.request_model == "gpt-4.1"  # a kvlist is no model name: the first value stands
    assert call.prompt_hash is not None  # the structured prompt, as JSON text cut at MAX_DEPTH
    with pytest.raises(OtlpDecodeError, match=r"^invalid protobuf"):
        decode_traces(request.SerializeToString(), PROTOBUF)


def test_every_hostile_value_under_every_key_in_one_span() -> None:
    for index, value in enumerate(HOSTILE):
        hostile = span({}, span_id=index + 1)
        hostile.attributes.extend(KeyValue(key=key, value=value) for key in _READ_KEYS)
        resource = make_request(hostile)
        resource.resource_spans[0].resource.attributes.extend(KeyValue(key=key, value=value) for key in _READ_KEYS)
        _calls, rejected, _ = calls_from_request(resource)
        assert rejected == (1 if index in _OUT_OF_RANGE else 0)


# --- replies --------------------------------------------------------------------------------


def test_encode_response_in_both_encodings() -> None:
    assert encode_response(0, "", JSON) == b"{}"
    assert json.loads(encode_response(3, "3 spans had invalid ids", "application/json; charset=utf-8")) == {
        "partialSuccess": {"rejectedSpans": "3", "errorMessage": "3 spans had invalid ids"}
    }
    assert json.loads(encode_response(0, "a warning", JSON)) == {"partialSuccess": {"errorMessage": "a warning"}}
    assert json.loads(encode_response(2, "", JSON)) == {"partialSuccess": {"rejectedSpans": "2"}}

    assert encode_response(0, "", PROTOBUF) == b""
    full = ExportTraceServiceResponse.FromString(encode_response(0, "", PROTOBUF))
    assert not full.HasField("partial_success")
    partial = ExportTraceServiceResponse.FromString(encode_response(3, "bad ids \u00e9", PROTOBUF))
    assert partial.HasField("partial_success")
    assert (partial.partial_success.rejected_spans, partial.partial_success.error_message) == (3, "bad ids \u00e9")
    surrogate = ExportTraceServiceResponse.FromString(encode_response(1, "bad \ud800", PROTOBUF))
    assert surrogate.partial_success.error_message == "bad ?"


def test_encode_status_in_both_encodings() -> None:
    from google.rpc import status_pb2  # type: ignore[import-untyped]

    assert json.loads(encode_status(3, "resourceSpans: expected an array", JSON)) == {
        "code": 3,
        "message": "resourceSpans: expected an array",
    }
    assert encode_status(0, "", JSON) == b"{}"
    for code, message in [(3, "bad data"), (14, "overloaded \u00e9" * 20), (0, "no code"), (-1, ""), (2**31 - 1, "x")]:
        decoded = status_pb2.Status.FromString(encode_status(code, message, PROTOBUF))
        assert (decoded.code, decoded.message) == (code, message)


def test_response_content_type_follows_the_request() -> None:
    assert response_content_type("application/json; charset=utf-8") == JSON
    assert response_content_type("application/x-protobuf") == PROTOBUF
    assert response_content_type("text/plain") == PROTOBUF
