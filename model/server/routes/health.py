"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from model.server.deps import ServerDep
from model.server.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and its event loop answers (it does no model work)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(server: ServerDep):
    """Ready once a version is loaded, or once the model is loaded and the store has no version yet."""
    readiness = readiness_of(server)
    return JSONResponse(readiness.model_dump(mode="json"), status_code=200 if readiness.ready else 503)


def readiness_of(server) -> Readiness:
    """Whether the server takes traffic, and why not.

    Args:
        server: the app's :class:`model.server.state.ServerState`.

    Returns:
        The readiness body.
    """
    holder = server.holder
    if server.runtime is None or holder is None:
        return Readiness(ready=False, retrieval=False, reason="loading the model")
    loaded = holder.current
    if loaded is not None:
        return Readiness(ready=True, retrieval=True, index_version=loaded.version)
    if not holder.checked_once.is_set():
        return Readiness(ready=False, retrieval=False, reason="loading the index version named by CURRENT")
    result = holder.last_result
    if result is not None and result.current is None and result.error is None:
        return Readiness(ready=True, retrieval=False, reason="the store has no published version yet: retrieval is off")
    error = holder.last_error
    why = f"{error.kind}: {error.error}" if error is not None else "no index version loaded"
    return Readiness(ready=False, retrieval=False, reason=f"cannot serve the version CURRENT names ({why})")
