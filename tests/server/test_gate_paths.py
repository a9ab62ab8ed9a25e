"""The auth gate and the routes it shortcuts, served under a root path (uvicorn's `--root-path`, a proxy's
prefix): roles are those of the route the router reaches, and `/v1/decide` is answered only where it is
routed, with the handlers an application registers by status code as on every route."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from otel_puppy.engine import PolicyEngine
from otel_puppy.server import auth
from otel_puppy.server.app import create_app
from otel_puppy.server.tokens import Keyring
from otel_puppy.testing import engine_for_tests
from tests._serving import serve
from tests.test_tokens import Spec, write_tokens

DECISION = {"provider": "openai", "model": "gpt-4.1", "agent": "research", "reserve": False}


@pytest.fixture
def engine() -> Iterator[PolicyEngine]:
    engine = engine_for_tests()
    yield engine
    engine.close()


def _asgi_post(app: FastAPI, path: str, *, root_path: str = "", **kwargs: Any) -> httpx.Response:
    """One request through the ASGI app as a server gives it (`root_path` as uvicorn's `--root-path`:
    the scope's `path` then starts with it, as uvicorn >= 0.26 and Starlette >= 0.35 have it)."""

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(post())


def test_a_status_code_exception_handler_answers_decide_as_it_answers_every_route(engine: PolicyEngine) -> None:
    """An application embedding otel_puppy may register a handler by status code
    (`app.add_exception_handler(400, ...)`), which Starlette's exception middleware looks up first for
    an `HTTPException`: `/v1/decide`, served by the gate, answers its 400 (a body that is not UTF-8) with
    it too."""

    async def on_400(request: Request, exc: Exception) -> Response:
        return JSONResponse({"custom": "bad request"}, 400)

    app = create_app(engine)
    app.add_exception_handler(400, on_400)
    latin1 = '{"provider": "été"}'.encode("latin-1")
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/v1/decide", content=latin1, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (400, {"custom": "bad request"})


def test_decide_is_not_served_at_a_path_the_router_does_not_route_to_it(engine: PolicyEngine) -> None:
    """Served under `--root-path /v1` the routes are at `/v1` + their path (the router strips the
    root path from the scope's `path` before matching). A client's `POST /decide` arrives as path
    `/v1/decide`, root path `/v1`: there is no `/decide` route, so the answer is 404, not a decision
    made (and reserved) at a URL outside the route table."""
    app = create_app(engine)
    response = _asgi_post(app, "/v1/decide", root_path="/v1", json=DECISION)
    assert response.status_code == 404, response.text


INGEST = Spec("collector", ("ingest",))
DECIDE = Spec("agents", ("decide",))


@pytest.fixture
def keyring(tmp_path: Path) -> Iterator[Keyring]:
    auth._AUDIT_LOG.reset()
    keyring = Keyring(write_tokens(tmp_path / "tokens.yaml", (INGEST, DECIDE)))
    keyring.start()
    yield keyring
    keyring.stop()


def test_behind_a_root_path_an_ingest_token_may_not_decide(engine: PolicyEngine, keyring: Keyring) -> None:
    """Under `--root-path /api` the scope's `path` is `/api/v1/decide`; the router strips the root path
    and serves `/v1/decide`. The gate finds the role by that same route path: an ingest-only token is
    refused there as anywhere (it once passed as on a path that needs any token, and could reserve)."""
    app = create_app(engine, keyring=keyring)
    refused = _asgi_post(app, "/v1/decide", json=DECISION, headers=INGEST.header)
    assert refused.status_code == 403  # without a root path: refused, as it should be
    behind_proxy = _asgi_post(app, "/api/v1/decide", root_path="/api", json=DECISION, headers=INGEST.header)
    assert behind_proxy.status_code == 403, behind_proxy.text


def test_behind_a_root_path_an_ingest_token_may_not_reload_policies(engine: PolicyEngine, keyring: Keyring) -> None:
    """The same for the admin endpoint `POST /v1/policies/reload` under a root path (which, let through,
    would also have gone unaudited: the gate audits the requests it finds needing `admin`)."""
    app = create_app(engine, keyring=keyring)
    assert _asgi_post(app, "/v1/policies/reload", headers=INGEST.header).status_code == 403
    behind_proxy = _asgi_post(app, "/api/v1/policies/reload", root_path="/api", headers=INGEST.header)
    assert behind_proxy.status_code == 403, behind_proxy.text
