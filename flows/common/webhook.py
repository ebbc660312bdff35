"""The push path over HTTP: ``POST /v1/changed`` announces changed URLs (a CMS's or a bucket's webhook).

Served by ``retrofresh watch --listen HOST:PORT``. The caller proves itself with the admin token
(``Authorization: Bearer $RETROFRESH_ADMIN_TOKEN``; without a configured token the endpoint is
closed, 403). URLs that belong to no configured source are refused in the answer and never reach
an event, so a webhook cannot make retrofresh fetch anything the sources file does not name.
"""

from __future__ import annotations

import hmac
import logging
from typing import Callable

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from beam_jobs.sources import SourcesConfig
from beam_jobs.targets import source_of

LOG = logging.getLogger(__name__)

MAX_URLS_PER_REQUEST = 1000


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
        name, key = source_of(config, url.strip())
        if name is None:
            LOG.warning("refused %r: %s", url, key)
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
        announce: ``(source, urls) -> events emitted`` (default: emit ``retrofresh.source.changed``).
    """
    from flows.common.events import emit_changes

    def emit(source: str, urls: list[str]) -> int:
        return len(emit_changes(urls, source=source, origin="webhook", store=store_uri))

    announce = announce or emit
    app = FastAPI(title="retrofresh change webhook")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.post("/v1/changed", status_code=202, response_model=ChangedAnswer)
    def changed(request: ChangedRequest, authorization: str | None = Header(None)) -> ChangedAnswer:
        if not token:
            raise HTTPException(403, "the webhook is closed: set RETROFRESH_ADMIN_TOKEN for the watch to accept changes")
        if not authorization or not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer $RETROFRESH_ADMIN_TOKEN)")
        by_source, refused = split_known(config, request.urls)
        if not by_source:
            raise HTTPException(422, {"detail": "no URL belongs to a configured source", "refused": refused})
        events = sum(announce(source, urls) for source, urls in by_source.items())
        return ChangedAnswer(accepted=[u for urls in by_source.values() for u in urls], refused=refused, events=events)

    return app
