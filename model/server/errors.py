"""Exception handlers: every error body is JSON with a ``detail`` that says what was wrong."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from model.server.limits import LimitExceeded

LOG = logging.getLogger(__name__)


async def limit_exceeded(request: Request, exc: LimitExceeded) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status_code == 503 else None
    return JSONResponse(
        {"detail": str(exc), "limit": exc.limit, "maximum": exc.maximum}, status_code=exc.status_code, headers=headers
    )


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    # A body that is not JSON at all is a 400; JSON of the wrong shape is a 422.
    status_code = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    return JSONResponse(
        {"detail": "; ".join(_describe(e) for e in errors) or "invalid request", "errors": _jsonable(errors)},
        status_code=status_code,
    )


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    LOG.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(LimitExceeded, limit_exceeded)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, unexpected)


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    message = error.get("msg", "invalid")
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', message)})"
    if error.get("type") == "missing":
        return f"{where}: field required"
    return f"{where}: {message}"


def _jsonable(errors: list[dict]) -> list[dict]:
    # pydantic puts the offending exception object in ctx; keep the error JSON-serialisable.
    out = []
    for error in errors:
        item = {k: v for k, v in error.items() if k in ("type", "loc", "msg")}
        out.append(item)
    return out
