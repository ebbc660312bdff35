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


def test_every_retrying_task_retries_only_transient_failures_by_one_policy():
    import importlib
    import pkgutil

    import flows
    from flows.common.retry import IO_RETRIES, JOB_RETRIES, QUICK_RETRIES, retry_if_transient
    from prefect import Task

    policies = [(p["retries"], p["retry_delay_seconds"]) for p in (IO_RETRIES, QUICK_RETRIES, JOB_RETRIES)]
    tasks = {}
    for info in pkgutil.walk_packages(flows.__path__, "flows."):
        module = importlib.import_module(info.name)
        tasks |= {f"{info.name}.{name}": value for name, value in vars(module).items() if isinstance(value, Task)}
    retrying = {name: t for name, t in tasks.items() if t.retries}
    assert len(retrying) >= 9, sorted(tasks)
    for name, t in retrying.items():
        assert t.retry_condition_fn is retry_if_transient, name
        delays = t.retry_delay_seconds if isinstance(t.retry_delay_seconds, list) else [t.retry_delay_seconds]
        assert (t.retries, delays) in policies, name
