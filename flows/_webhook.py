"""The push path over HTTP: ``POST /v1/changed`` announces changed URLs (a CMS's or a bucket's webhook).

Served by ``retrofresh watch --listen HOST:PORT``. The caller proves itself with the admin token
(``Authorization: Bearer $RETROFRESH_ADMIN_TOKEN``; without a configured token the endpoint is
closed, 403), checked from the headers before any of the body is read; the body is then capped at
:data:`MAX_BODY_BYTES` (413, by the server's own :class:`model.server.limits.BodySizeLimitMiddleware`),
so a stranger can make the watch read nothing and a caller at most that. URLs that belong to no
configured source, or are longer than :data:`MAX_URL_CHARS`, are refused in the answer and never
reach an event, so a webhook cannot make retrofresh fetch anything the sources file does not name.
"""

from __future__ import annotations

import hmac
import logging
from typing import Callable

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from beam_jobs.sources import SourcesConfig
from beam_jobs.targets import source_of
from model.server.limits import BodySizeLimitMiddleware

LOG = logging.getLogger(__name__)

MAX_URLS_PER_REQUEST = 1000
MAX_URL_CHARS = 2048  # the sitemap protocol's limit on a URL; a longer entry is refused, never stored
# Room for MAX_URLS_PER_REQUEST URLs of MAX_URL_CHARS characters, quoted and comma-separated;
# anything larger is refused before it is read.
MAX_BODY_BYTES = MAX_URLS_PER_REQUEST * (MAX_URL_CHARS + 4) + 1024


class ChangedRequest(BaseModel):
    """What changed: URLs (or file paths) of configured sources."""

    urls: list[str] = Field(min_length=1, max_length=MAX_URLS_PER_REQUEST)


class ChangedAnswer(BaseModel):
    """What was announced, and what was refused and why."""

    accepted: list[str]
    refused: list[tuple[str, str]]
    events: int


def split_known(config: SourcesConfig, urls: list[str]) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """URLs by the source they belong to, and the refused ones with the reason (logged)."""
    by_source: dict[str, list[str]] = {}
    refused = []
    for url in urls:
        if len(url) > MAX_URL_CHARS:
            name, key = None, f"longer than {MAX_URL_CHARS} characters ({len(url)}): not a URL a source lists"
        else:
            name, key = source_of(config, url.strip())
        if name is None:
            LOG.warning("refused %r: %s", url[:200], key)
            refused.append((url, key))
        else:
            by_source.setdefault(name, []).append(key)
    return by_source, refused


def create_webhook_app(config: SourcesConfig, store_uri: str | None, token: str | None,
                       announce: Callable[[str, list[str]], int] | None = None) -> FastAPI:
    """The webhook app.

    Args:
        config: the sources; a URL must belong to one of them.
        store_uri: the store the events are for.
        token: the admin token callers must present; None closes the endpoint.
        announce: ``(source, urls) -> events emitted`` (default: deliver ``retrofresh.source.changed``
            events, see :func:`flows.common.events.deliver_changes`); raising
            :class:`flows.common.events.ChangesNotDelivered` makes the answer a 503.
    """
    from flows.common.events import ChangesNotDelivered, deliver_changes

    def emit(source: str, urls: list[str]) -> int:
        return len(deliver_changes(urls, source=source, origin="webhook", store=store_uri))

    announce = announce or emit
    app = FastAPI(title="retrofresh change webhook")
    # Added last, so it runs first: the token is checked from the headers before the body is read.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(_BearerFirst, token=token, paths=("/v1/changed",))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.post("/v1/changed", status_code=202, response_model=ChangedAnswer)
    def changed(request: ChangedRequest) -> ChangedAnswer:
        by_source, refused = split_known(config, request.urls)
        if not by_source:
            raise HTTPException(422, {"detail": "no URL belongs to a configured source", "refused": refused})
        events = 0
        for source, urls in by_source.items():
            try:
                events += announce(source, urls)
            except ChangesNotDelivered as error:
                # 503: the sender's webhook machinery retries, which a 202 would have stopped.
                LOG.error("webhook: %s", error)
                raise HTTPException(503, f"{error}; try again once the Prefect API is back") from error
        return ChangedAnswer(accepted=[u for urls in by_source.values() for u in urls], refused=refused, events=events)

    return app


class _BearerFirst:
    """ASGI middleware: refuse a request to ``paths`` without the admin token before its body is read.

    FastAPI reads and parses a body before it resolves a route's header dependencies, so a check
    inside the route would let anyone make the watch buffer whatever they send.

    Args:
        app: the ASGI app to wrap.
        token: the bearer token callers must present; None closes the paths (403).
        paths: the paths that need it.
    """

    def __init__(self, app, token: str | None, paths: tuple[str, ...]):
        self.app, self.token, self.paths = app, token, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.paths:
            refusal = self._refusal(dict(scope.get("headers") or []).get(b"authorization"))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, authorization: bytes | None) -> JSONResponse | None:
        if not self.token:
            return JSONResponse({"detail": "the webhook is closed: set RETROFRESH_ADMIN_TOKEN for the watch to accept changes"}, 403)
        if not authorization or not hmac.compare_digest(authorization, f"Bearer {self.token}".encode()):
            return JSONResponse({"detail": "missing or wrong bearer token (Authorization: Bearer $RETROFRESH_ADMIN_TOKEN)"}, 401)
        return None
