"""Only transient failures are retried: network trouble and overloaded services, not bad input."""

from __future__ import annotations

import pytest

from flows.common.retry import is_transient
from model.client import RetroConnectionError, RetroHTTPError


def chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as cause:
            raise outer from cause
    except Exception as error:
        return error


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (RetroConnectionError("down"), True),
        (RetroHTTPError(503, "busy"), True),
        (RetroHTTPError(429, "slow down"), True),
        (RetroHTTPError(401, "bad token"), False),
        (ValueError("bad input"), False),
        (FileNotFoundError("no such file"), False),
        (chained(RuntimeError("ingest failed"), ConnectionRefusedError("refused")), True),
        (chained(RuntimeError("ingest failed"), KeyError("field")), False),
        (None, False),
    ],
)
def test_is_transient(error, transient):
    assert is_transient(error) is transient


def test_google_api_errors():
    from google.api_core import exceptions as gexc

    assert is_transient(gexc.ServiceUnavailable("503"))
    assert not is_transient(gexc.NotFound("404"))
    assert not is_transient(gexc.PreconditionFailed("412"))
