"""The JSON API fuzzed from its OpenAPI document by schemathesis, with tokens of every role: each
operation answers its role as documented, every other token `403` (documented, the JSON error naming
the role), no token `401`, and nothing answers 5xx. tests/reliability/test_api_fuzz.py fuzzes the
same document with the all-roles token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from prometheus_client.registry import CollectorRegistry

from otel_puppy.engine import PolicyEngine
from otel_puppy.policies import parse_policy_text
from otel_puppy.server.app import ROUTE_ROLES, create_app
from otel_puppy.server.scoping import SCOPED_READ_FORBIDDEN
from otel_puppy.server.tokens import Keyring
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import FakeClock, engine_for_tests
from tests._serving import serve
from tests.test_tokens import Spec, write_tokens

POLICIES = """
budgets:
  - {name: daily, limit_usd: 5, window: day, action: deny}
  - {name: per-team, per: [team], limit_usd: 1, window: 1h, action: deny}
"""
SPECS = (
    Spec("ingest", ("ingest",)),
    Spec("decide", ("decide",)),
    Spec("read", ("read",)),
    Spec("admin", ("admin",)),
    Spec("search", ("read", "decide", "ingest"), {"team": "search"}),
)
PROTOBUF = "application/x-protobuf"


def openapi_document() -> dict[str, Any]:
    """The document of a service with tokens (roles and 403s are documented whatever the tokens are)."""
    engine = engine_for_tests()
    try:
        document: dict[str, Any] = create_app(engine, keyring=Keyring(None, api_token="x")).openapi()
        return document
    finally:
        engine.close()


# A protobuf body is bytes on the wire, as `application/octet-stream` is.
schemathesis.serializer.alias(PROTOBUF, "application/octet-stream")
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service with a tokens file and a policy directory (so `/v1/policies/reload` can succeed), running."""
    directory = tmp_path_factory.mktemp("auth-fuzz")
    policies = directory / "policies"
    policies.mkdir()
    (policies / "policies.yaml").write_text(POLICIES)
    tokens = write_tokens(directory / "tokens.yaml", SPECS)
    engine = PolicyEngine(
        PuppySettings.load(store="memory://", policies=policies, watch_policies_s=None, tokens_file=tokens),
        policies=parse_policy_text(POLICIES, policies / "policies.yaml"),
        clock=FakeClock(),
        registry=CollectorRegistry(auto_describe=True),
    )
    with serve(create_app(engine)) as url:
        yield url
    engine.close()


def allowed(spec: Spec, method: str, path: str) -> bool | None:
    """Whether `spec` may call the operation; None for the probes and documents (not role-bound)."""
    role = ROUTE_ROLES.get((method.upper(), path))
    if role is None:
        return None
    return role.value in spec.roles and not (spec.scope and path in SCOPED_READ_FORBIDDEN)


@schema.parametrize()
@settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_each_role_as_documented(case: Any, api: str) -> None:
    # As in test_api_fuzz: an OTLP body is opaque to the document, and `/v1/decide`'s validation and
    # document disagree on some values on purpose; every other check applies.
    # And the header this test replaces is not the case's own: the check of how a case without it is
    # answered does not apply (the anonymous call below is that check).
    excluded = [
        schemathesis.checks.missing_required_header,
        *{
            "/v1/traces": [schemathesis.checks.positive_data_acceptance],
            "/v1/decide": [schemathesis.checks.negative_data_rejection, schemathesis.checks.positive_data_acceptance],
            # a period's `to` must be after its `from` and its month must exist: more than a pattern says
            "/v1/export/focus": [schemathesis.checks.positive_data_acceptance],
            "/v1/costs": [schemathesis.checks.positive_data_acceptance],
        }.get(case.path, []),
    ]
    # a generated `Authorization` (any spelling) would stand beside ours: the tokens tested are ours alone
    generated = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    for spec in SPECS:
        case.headers = {**generated, **spec.header}
        response = case.call(base_url=api, timeout=30)
        assert response.status_code < 500, (case.method, case.path, spec.name, response.text[:300])
        case.validate_response(response, headers=spec.header, excluded_checks=excluded)
        may = allowed(spec, case.method, case.path)
        if may is False:
            assert response.status_code == 403, (case.method, case.path, spec.name, response.status_code)
            if case.path != "/v1/traces":
                body = response.json()
                assert body["code"] in ("missing_role", "out_of_scope")
                assert "role" in body["message"] or "scope" in body["message"]
        elif may and response.status_code == 403:  # only a scoped token asking about another team
            assert spec.scope, (case.path, spec.name, response.text)
            assert response.json()["code"] == "out_of_scope", (case.path, spec.name, response.text)
    case.headers = generated
    anonymous = case.call(base_url=api, timeout=30)
    expected = 200 if case.path in ("/healthz", "/readyz") else 401
    assert anonymous.status_code == expected or (expected == 200 and anonymous.status_code == response.status_code)
    case.validate_response(anonymous, excluded_checks=excluded)
