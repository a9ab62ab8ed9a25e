"""The HTTP surface under fuzzing: no 5xx, and every error is the documented JSON or OTLP status.

`/v1/traces` gets random bytes, mutated protobuf and JSON exports (bytes flipped, cut, spliced;
values replaced by any JSON), in every encoding; the JSON API is fuzzed from its own OpenAPI
document by schemathesis, with and without the bearer token. Everything runs against a real
uvicorn server on loopback; under pytest an internal error is re-raised and answers 500, so a
single one fails the test.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from google.rpc import status_pb2  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otel_puppy.engine import PolicyEngine
from otel_puppy.money import nanos_to_usd
from otel_puppy.policies import parse_policy_text
from otel_puppy.server.app import create_app
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import FakeClock, engine_for_tests
from tests._serving import serve
from tests.server.test_otlp_http import NANOS, json_body, protobuf_body

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
EXAMPLES = 1000
"""Requests per export fuzzing test (about 3 s each over loopback)."""
TOKEN = "fuzz-token-0123456789abcdef"
POLICIES = """
budgets:
  - {name: daily, limit_usd: 5, window: day, action: deny, alerts: [0.5]}
  - {name: per-agent, per: [agent], limit_usd: 1, window: 1h, action: {degrade: gpt-4.1-mini}}
breakers:
  - {name: providers, per: [provider], failure_threshold: 3, recovery_timeout: 30s}
anomalies:
  - {name: spike, signal: request_rate, per: [provider], baseline: 10m, interval: 1m, min_samples: 3,
     threshold: {ratio: 3}, action: warn}
routing:
  - {name: research, match: {agent: research}, strategy: cheapest,
     candidates: [openai:gpt-4.1, openai:gpt-4.1-mini]}
"""


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[PolicyEngine, httpx.Client]]:
    """One engine and server for the module: fuzzing accumulates state, as a long-running service does."""
    engine = engine_for_tests(parse_policy_text(POLICIES, Path("policies.yaml")))
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield engine, client
    engine.close()


def check_otlp_answer(response: httpx.Response, content_type: str) -> None:
    """200 with an `ExportTraceServiceResponse`, or 400 with a `google.rpc.Status`, in the request's encoding."""
    reply_type = JSON if content_type.startswith(JSON) else PROTOBUF
    assert response.status_code in (200, 400), (response.status_code, response.content[:300])
    assert response.headers["content-type"] == reply_type
    if response.status_code == 200:
        if reply_type == JSON:
            body = response.json()
            assert set(body) <= {"partialSuccess"}
            assert set(body.get("partialSuccess", {})) <= {"rejectedSpans", "errorMessage"}
        else:
            ExportTraceServiceResponse.FromString(response.content)
        return
    if reply_type == JSON:
        status = response.json()
        code, message = status["code"], status["message"]
        assert set(status) == {"code", "message"}
    else:
        parsed = status_pb2.Status.FromString(response.content)
        code, message = parsed.code, parsed.message
    assert code == 3  # INVALID_ARGUMENT: the client must not retry
    assert message
    assert "Traceback" not in message


ENCODINGS = {
    "": lambda body: body,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
}


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with a few bytes flipped, ranges cut or repeated, junk spliced in, or cut short."""
    body = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        if not body:
            break
        kind = draw(st.sampled_from(["flip", "cut", "repeat", "splice", "truncate", "varint"]))
        at = draw(st.integers(0, len(body) - 1))
        if kind == "flip":
            body[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del body[at : at + draw(st.integers(1, 64))]
        elif kind == "repeat":
            body[at:at] = body[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 4))
        elif kind == "splice":
            body[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del body[at:]
        else:  # a length or tag replaced by a huge varint
            body[at : at + 1] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    return bytes(body)


VALID_PROTOBUF = protobuf_body(3)
PROTOBUF_BODIES = st.one_of(st.binary(max_size=512), mutated(VALID_PROTOBUF))


def fuzz_exports(client: httpx.Client, bodies: st.SearchStrategy[bytes], content_types: list[str]) -> None:
    """POST each body, in each encoding, under each content type: every answer is a documented one,
    and both outcomes (applied, refused as malformed) are reached."""
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies, st.sampled_from(sorted(ENCODINGS)), st.sampled_from(content_types))
    def check(body: bytes, encoding: str, content_type: str) -> None:
        headers = {"content-type": content_type}
        if encoding:
            headers["content-encoding"] = encoding
        response = client.post("/v1/traces", content=ENCODINGS[encoding](body), headers=headers)
        check_otlp_answer(response, content_type)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    check()
    assert set(seen) == {200, 400}, seen
    assert sum(seen.values()) == EXAMPLES  # every example ran to an answer


@pytest.mark.long
def test_random_and_mutated_protobuf_exports(fuzzed: tuple[PolicyEngine, httpx.Client]) -> None:
    fuzz_exports(fuzzed[1], PROTOBUF_BODIES, [PROTOBUF, "application/protobuf"])


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(["", "0", "-1", "1e400", "NaN", "Infinity", "5B8EFFF798038103D269B633813FC60C", "\ud800"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=12,
)


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    """A valid OTLP/JSON export with some of its values replaced by any JSON value."""
    document: Any = json.loads(json_body())
    for _ in range(draw(st.integers(1, 4))):
        parent: Any = None
        key: Any = None
        node: Any = document
        while isinstance(node, dict | list) and node and draw(st.integers(0, 5)) > 0:
            parent = node
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            node = node[key]
        if parent is None:
            document = draw(JSON_VALUES)
        elif draw(st.booleans()) and isinstance(parent, dict):
            parent[draw(st.sampled_from(["traceId", "spanId", "intValue", "kind", "values", "x"]))] = draw(JSON_VALUES)
        else:
            parent[key] = draw(JSON_VALUES)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


JSON_BODIES = st.one_of(
    mutated_json(),
    mutated(json_body()),
    st.binary(max_size=256),
    st.sampled_from(
        [
            b"[" * 100_000 + b"]" * 100_000,
            b'{"resourceSpans": ' + b"[" * 50_000,
            b'{"resourceSpans": [], "resourceSpans": [{}]}',
            b"\xef\xbb\xbf{}",
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": 1e999999}]}]}]}',
            b'{"resourceSpans": NaN}',
            b'"\\ud800"',
        ]
    ),
)


@pytest.mark.long
def test_random_and_mutated_json_exports(fuzzed: tuple[PolicyEngine, httpx.Client]) -> None:
    fuzz_exports(fuzzed[1], JSON_BODIES, [JSON, "application/json; charset=utf-8"])


def test_after_the_fuzzing_a_valid_export_counts_exactly_once(fuzzed: tuple[PolicyEngine, httpx.Client]) -> None:
    engine, client = fuzzed
    before = engine.snapshot().spend("day")
    body = protobuf_body(2)  # fresh ids
    for _ in range(3):
        response = client.post("/v1/traces", content=body, headers={"content-type": PROTOBUF})
        assert (response.status_code, response.content) == (200, b"")
    assert engine.snapshot().spend("day") - before == nanos_to_usd(2 * NANOS)
    assert engine.metrics.internal_errors() == 0


# --- the JSON API, from its OpenAPI document ---------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI document, as `/openapi.json` serves it (the engine is only needed to build the app)."""
    engine = engine_for_tests(api_token=TOKEN)
    try:
        document: dict[str, Any] = create_app(engine).openapi()
        return document
    finally:
        engine.close()


# A protobuf body is bytes on the wire, as `application/octet-stream` is.
schemathesis.serializer.alias(PROTOBUF, "application/octet-stream")
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service with a token and a policy directory (so `/v1/policies/reload` can succeed), running."""
    policies = tmp_path_factory.mktemp("policies")
    (policies / "policies.yaml").write_text(POLICIES)
    engine = PolicyEngine(
        PuppySettings.load(store="memory://", policies=policies, api_token=TOKEN, watch_policies_s=None),
        policies=parse_policy_text(POLICIES, policies / "policies.yaml"),
        clock=FakeClock(),
    )
    with serve(create_app(engine)) as url:
        yield url
    engine.close()


def check_json_error(response: Any, path: str) -> None:
    """Every JSON API error is `{"code": str, "message": str}` (plus `errors` for invalid policies)."""
    if response.status_code < 400 or path == "/v1/traces":
        return
    body = response.json()
    assert isinstance(body["code"], str)
    assert isinstance(body["message"], str)
    assert body["message"]
    assert set(body) <= {"code", "message", "errors"}


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_json_api_from_its_openapi_document(case: Any, api_url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = case.call(base_url=api_url, headers=headers, timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    # An OTLP body is opaque to the document (protobuf bytes, or JSON checked far deeper than its
    # schema says): a schema-valid body may well be a malformed export, answered 400 as documented.
    # The tests above fuzz `/v1/traces` with that in mind; every other check applies to it.
    # `/v1/decide`'s document and its validation disagree both ways (an integer field takes `true`
    # or `"5"`; `estimated_cost_usd` is "any string" but must be a decimal): see
    # `test_decide_accepts_exactly_what_its_document_says`. The other checks apply to it.
    excluded = {
        "/v1/traces": [schemathesis.checks.positive_data_acceptance],
        "/v1/decide": [schemathesis.checks.negative_data_rejection, schemathesis.checks.positive_data_acceptance],
        # a period's `to` must be after its `from` and its month must exist: more than a pattern says
        "/v1/export/focus": [schemathesis.checks.positive_data_acceptance],
        "/v1/costs": [schemathesis.checks.positive_data_acceptance],
    }.get(case.path, [])
    case.validate_response(response, headers=headers, excluded_checks=excluded)
    check_json_error(response, case.path)

    anonymous = case.call(base_url=api_url, timeout=30)  # without the token
    expected = 200 if case.path in ("/healthz", "/readyz") else 401
    assert anonymous.status_code == expected or (expected == 200 and anonymous.status_code == response.status_code)
    check_json_error(anonymous, case.path)


@pytest.mark.parametrize(
    ("field", "value"), [("context_tokens", True), ("estimated_input_tokens", "5"), ("estimated_cost_usd", "")]
)
def test_decide_accepts_exactly_what_its_document_says(field: str, value: object, api_url: str) -> None:
    """A value the document allows is accepted (200); one it does not is refused (422)."""
    property_schema = openapi_document()["components"]["schemas"]["DecideRequest"]["properties"][field]
    documented = jsonschema_rs.validator_for(property_schema).is_valid(value)
    response = httpx.post(
        f"{api_url}/v1/decide",
        json={"provider": "openai", "model": "gpt-4.1", field: value},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == (200 if documented else 422), (documented, response.text)
