"""The API's documentation pages (``/docs``, ``/redoc``), served with their scripts and styles from this server.

FastAPI's own pages load swagger-ui and ReDoc from a public CDN, so on a machine without internet
they stay blank. Here they follow FastAPI's documented custom-docs pattern ("Custom Docs UI Static
Assets"): the same HTML, from ``get_swagger_ui_html`` / ``get_redoc_html``, pointing at files that
a ``StaticFiles`` mount serves from the PyPI package fastapi-offline (MIT; it ships swagger-ui's
and ReDoc's dist files and a favicon). Only that package's ``static`` folder is used.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"  # where the mount serves swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png


def assets_dir() -> Path:
    """The folder of swagger-ui's and ReDoc's dist files inside the installed fastapi-offline."""
    try:
        import fastapi_offline
    except ImportError as exc:  # an environment installed before it became a dependency
        raise ImportError("the server's /docs assets come from the package fastapi-offline, which is missing: "
                          "run `pip install -e .` (or `pip install fastapi-offline`) in this environment") from exc
    return Path(fastapi_offline.__file__).parent / "static"


router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")  # behind a proxy that mounts the app under a prefix


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over this server's OpenAPI schema."""
    root, app = _root(request), request.app
    return get_swagger_ui_html(
        openapi_url=root + app.openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=root + app.swagger_ui_oauth2_redirect_url,
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc over the same schema (without Google's web fonts, which would be fetched from the internet)."""
    root, app = _root(request), request.app
    return get_redoc_html(openapi_url=root + app.openapi_url, title=f"{app.title} - ReDoc", redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False)


def install(app: FastAPI) -> None:
    """Add the pages and the assets' mount to an app built with ``docs_url=None, redoc_url=None``."""
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
