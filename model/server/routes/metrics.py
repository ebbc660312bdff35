"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response

from model.server.deps import ServerDep
from model.server.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(server: ServerDep) -> Response:
    """Requests, latencies, the version served, swaps, swap failures and index age (Prometheus text format)."""
    return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)
