"""Build the RETRO server's FastAPI app (``create_app``); ``retrofresh serve`` runs it on uvicorn."""

from __future__ import annotations

from fastapi import FastAPI

from model.contracts.settings import Settings
from model.server import errors
from model.server.limits import BodySizeLimitMiddleware
from model.server.metrics import MetricsMiddleware
from model.server.routes import admin, docs, generate, health, index, metrics, retrieve, score
from model.server.state import ServerState, lifespan


def create_app(settings: Settings) -> FastAPI:
    """The app for one server process.

    Start-up (run by uvicorn) loads the checkpoint and the embedder, opens the store and starts
    the watcher that loads, verifies, warms and swaps in the version ``CURRENT`` names.

    Args:
        settings: checkpoint, store, cache directory, limits, admin token, reload interval.

    Returns:
        The FastAPI app (OpenAPI docs at ``/docs`` and ``/redoc``, their assets served by the app itself).
    """
    app = FastAPI(
        title="retrofresh",
        summary="A RETRO model served over a retrieval database that is replaced under live traffic.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their assets from a CDN: routes/docs.py serves them from here
        redoc_url=None,
    )
    app.state.server = ServerState.create(settings)
    for module in (health, index, retrieve, generate, score, admin, metrics):
        app.include_router(module.router)
    docs.install(app)
    errors.install(app)
    # Added last = outermost: the body limit runs before anything parses the body, and metrics
    # see every answer, the 413s included.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics_of=lambda scope: scope["app"].state.server.metrics)
    return app
