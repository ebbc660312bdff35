"""Which failures are worth retrying: network hiccups and overloaded services, never bad input."""

from __future__ import annotations

import logging
from typing import Any

LOG = logging.getLogger(__name__)

# HTTP statuses that mean "try again later" rather than "your request is wrong".
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _transient_types() -> tuple[type[BaseException], ...]:
    """Exception classes of the libraries we talk through, imported only if installed."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import httpx

        types.append(httpx.TransportError)
    except ImportError:  # pragma: no cover - httpx is a dependency
        pass
    try:
        import requests

        types += [requests.ConnectionError, requests.Timeout]
    except ImportError:  # pragma: no cover
        pass
    try:
        from model.client import RetroConnectionError, RetroTimeout

        types += [RetroConnectionError, RetroTimeout]
    except ImportError:  # pragma: no cover
        pass
    try:
        from google.api_core import exceptions as gexc

        types += [
            gexc.ServiceUnavailable,
            gexc.TooManyRequests,
            gexc.InternalServerError,
            gexc.BadGateway,
            gexc.GatewayTimeout,
            gexc.DeadlineExceeded,
        ]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def is_transient(exc: BaseException | None) -> bool:
    """True when ``exc`` (or anything in its cause chain) is a transient I/O failure.

    Args:
        exc: the exception a task raised.

    Returns:
        Whether retrying the same call later could succeed.
    """
    transient = _transient_types()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, transient):
            return True
        # httpx/requests errors carry a response; RetroHTTPError carries the status itself.
        status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int) and status in TRANSIENT_HTTP_STATUS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task only when its error was transient."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as error:  # noqa: BLE001 - the result itself may be unreadable
            exc = error
    transient = is_transient(exc if isinstance(exc, BaseException) else None)
    if not transient:
        LOG.info("not retrying %s: %r is not a transient failure", getattr(task, "name", task), exc)
    return transient


def transient_retries(*delays_s: float) -> dict[str, Any]:
    """Prefect task options: retry once per delay (seconds before each try), transient failures only.

    Results are never cached: a task reads or writes the store, whose state is the truth.
    """
    from prefect.cache_policies import NO_CACHE

    return {"retries": len(delays_s), "retry_delay_seconds": list(delays_s) or 0, "retry_condition_fn": retry_if_transient, "cache_policy": NO_CACHE}


# The retry policy of every task that retries; only I/O tasks do (docs/ARCHITECTURE.md, Retries). A task names one of these.
IO_RETRIES = transient_retries(2, 10)  # store, Prefect API and model I/O: a hiccup passes in seconds
QUICK_RETRIES = transient_retries(1, 5)  # artifacts, notifications, run lookups: cheap calls, retried soon
JOB_RETRIES = transient_retries(30)  # a whole ingest job: one more try, after the service had time to recover
