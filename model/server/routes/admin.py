"""Operator endpoints, behind the bearer token in RETROFRESH_ADMIN_TOKEN."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from model.server.deps import AdminOnly, ServerDep
from model.server.routes.index import swap_error
from model.server.schemas import ErrorBody, IndexVerification, ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def reload(server: ServerDep, _: AdminOnly) -> ReloadResponse:
    """Check CURRENT now and swap in the version it names (retrying one refused before)."""
    if server.watcher is None:
        raise HTTPException(503, "the server is still starting")
    result = await server.watcher.check_now(force=True)
    return ReloadResponse(current=result.current, version=result.version, swapped=result.swapped, error=swap_error(result.error))


@router.post(
    "/reverify",
    response_model=IndexVerification,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def reverify(server: ServerDep, _: AdminOnly) -> IndexVerification:
    """Hash the served version's shard files again now and report what matches (off or not in the background)."""
    if server.reverifier is None:
        raise HTTPException(503, "the server is still starting")
    await server.reverifier.verify_now()
    return server.reverifier.report()
