"""The API documentation pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), served without a CDN.

FastAPI's own pages load their scripts and styles from a CDN (and ReDoc its fonts from Google),
so they are blank on a machine without internet access, which is where a service like this often
runs. These pages are FastAPI's, pointed at the copies of the same assets that the installed
`fastapi-offline` package ships, served from `ASSETS_PATH`. Swagger UI's validator badge, which
would send the document to an outside validator, is off.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ("ASSETS_PATH", "DOCS_PATH", "REDOC_PATH", "add_offline_docs", "assets_directory")

DOCS_PATH: Final = "/docs"
REDOC_PATH: Final = "/redoc"
ASSETS_PATH: Final = "/docs/assets"


def assets_directory() -> Path:
    """Where the installed `fastapi-offline` keeps Swagger UI's and ReDoc's files."""
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


def add_offline_docs(app: FastAPI) -> None:
    """Serve `/docs`, `/redoc` and their assets from this machine. `app` must be built with
    `docs_url=None, redoc_url=None`, so FastAPI's CDN pages are not there too."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_directory()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
