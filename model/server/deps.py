"""FastAPI dependencies: the server state, a JSON body's content type, admission, the pinned index version, the admin token."""

from __future__ import annotations

import email.message
import secrets
from typing import Annotated, AsyncIterator

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model.server.runtime import Runtime
from model.server.state import ServerState
from model.server.swap import LoadedVersion


def get_server(request: Request) -> ServerState:
    return request.app.state.server


ServerDep = Annotated[ServerState, Depends(get_server)]


def get_runtime(server: ServerDep) -> Runtime:
    if server.runtime is None:  # only between process start and the end of start-up
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the model is still loading")
    return server.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_json_body(request: Request) -> None:
    """Refuse a body that does not say it is JSON with a 415 that says what to send.

    FastAPI only parses a body as JSON when ``Content-Type`` says so (a request without one is
    how a web page reaches a loopback server without a CORS preflight), and a body it did not
    parse fails validation with a 422 about "a valid dictionary", which hides the cause.
    """
    sent = request.headers.get("content-type")
    if sent:
        parsed = email.message.Message()
        parsed["content-type"] = sent
        subtype = parsed.get_content_subtype()
        if parsed.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json")):
            return
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"the body must be JSON: send Content-Type: application/json "
        f"({'the request had no Content-Type' if not sent else f'got Content-Type: {sent}'})",
    )


JsonBody = Depends(require_json_body)


async def admit(server: ServerDep) -> AsyncIterator[None]:
    """Count the request against ``max_inflight`` for as long as it runs (503 past the limit)."""
    server.admission.enter()
    try:
        yield
    finally:
        server.admission.leave()


Admitted = Annotated[None, Depends(admit)]


async def pin_version(server: ServerDep, _runtime: RuntimeDep) -> AsyncIterator[LoadedVersion | None]:
    """The index version this request uses from start to end, whatever swaps meanwhile (None: off)."""
    assert server.holder is not None
    with server.holder.pin() as loaded:
        yield loaded


Pinned = Annotated[LoadedVersion | None, Depends(pin_version)]

_bearer = HTTPBearer(auto_error=False, description="RETROFRESH_ADMIN_TOKEN")


def require_admin(
    server: ServerDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Let the request through only with ``Authorization: Bearer <RETROFRESH_ADMIN_TOKEN>``."""
    token = server.settings.admin_token
    if token is None or not token.get_secret_value():
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the admin API is off: start the server with RETROFRESH_ADMIN_TOKEN set")
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"}
        )
    if not secrets.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


AdminOnly = Annotated[None, Depends(require_admin)]
