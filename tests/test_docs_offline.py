"""`/docs` and `/redoc` work without internet access: every asset is served by the service itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pytest

from otel_puppy.policies import PolicySet
from otel_puppy.server.app import create_app
from otel_puppy.server.docs import assets_directory
from otel_puppy.testing import engine_for_tests
from tests._serving import serve

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
}


class _References(HTMLParser):
    """Every URL a page makes the browser load: `src`, `href` and ReDoc's `spec-url` attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    # Swagger UI is told where the OpenAPI document is inside its script: `url: '/openapi.json'`.
    return parser.urls + re.findall(r"\burl: '([^']*)'", html)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    engine = engine_for_tests(PolicySet())
    try:
        with serve(create_app(engine)) as base:
            yield base
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (
            "/docs",
            [
                "/docs/assets/swagger-ui.css",
                "/docs/assets/favicon.png",
                "/docs/assets/swagger-ui-bundle.js",
                "/openapi.json",
            ],
        ),
        ("/redoc", ["/docs/assets/favicon.png", "/openapi.json", "/docs/assets/redoc.standalone.js"]),
    ],
)
def test_docs_pages_load_only_from_the_service(url: str, page: str, expected: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        html = response.text
        # No host anywhere in the page: not in an attribute, not in the script, not protocol-relative.
        assert re.search(r"[a-z][a-z0-9+.-]*://|//[a-z0-9]", html, re.IGNORECASE) is None, html
        found = references(html)
        assert found == expected
        if page == "/docs":
            assert '"validatorUrl": null' in html  # the validator badge would send the document outside
        for reference in found:
            asset = client.get(reference)
            assert asset.status_code == 200, reference
            suffix = reference[reference.rindex(".") :]
            assert asset.headers["content-type"] == CONTENT_TYPES[suffix], reference
            if reference.startswith("/docs/assets/"):
                # The installed package's own file, byte for byte.
                assert asset.content == (assets_directory() / reference.rsplit("/", 1)[1]).read_bytes()


def test_only_the_docs_assets_are_served(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/docs/assets/../../pyproject.toml").status_code == 404
        assert client.get("/docs/assets/%2e%2e/core.py").status_code == 404
        assert client.get("/docs/assets/missing.js").status_code == 404
        # The pages are not operations of the API.
        paths = client.get("/openapi.json").json()["paths"]
        assert not {"/docs", "/redoc"} & paths.keys()
        assert not any(path.startswith("/docs/") for path in paths)
