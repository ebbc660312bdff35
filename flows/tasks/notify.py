"""Tell running RETRO servers that a new index version is published (``POST /admin/reload``).

Servers also poll ``CURRENT`` on their own, so a server that cannot be reached is reported, not
fatal: the refresh has already published and will not be undone because one replica was down.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from prefect import get_run_logger, task

from flows.common.retry import QUICK_RETRIES, transient_retries

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadOutcome:
    """What one server answered to a reload request.

    ``ok`` means the server now serves what ``CURRENT`` names; a server that answered but refused
    the version (checksum, incompatible embedder, ...) is not ok and ``detail`` says why.
    """

    url: str
    ok: bool
    status: int | None = None
    detail: str = ""
    index_version: str | None = None
    swapped: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def request_reload(server: str, *, token: str | None, timeout_s: float = 30.0) -> ReloadOutcome:
    """POST /admin/reload to one server through :class:`model.client.RetroClient`.

    Args:
        server: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        token: the bearer token the server expects (``RETROFRESH_ADMIN_TOKEN``), or None.
        timeout_s: seconds to wait for the answer; a reload loads and warms a version.

    Returns:
        The outcome. A 4xx answer (bad token, ...) is returned as not ok: retrying cannot help.

    Raises:
        RetroConnectionError, RetroTimeout: the server could not be reached (the task retries).
        RetroHTTPError: the server answered 5xx (the task retries).
    """
    from model.client import RetroClient, RetroHTTPError

    with RetroClient(server, timeout=timeout_s, retries=0, admin_token=token) as client:
        try:
            answer = client.reload()
        except RetroHTTPError as error:
            if error.status_code >= 500:
                raise
            return ReloadOutcome(server, False, error.status_code, error.message)
    if answer.error is not None:
        detail = f"refused {answer.error.version}: {answer.error.kind}: {answer.error.error}"
        return ReloadOutcome(server, False, 200, detail, answer.version, answer.swapped)
    detail = "swapped in" if answer.swapped else "already serving it"
    return ReloadOutcome(server, answer.version == answer.current, 200, detail, answer.version, answer.swapped)


@task(name="notify-server", **QUICK_RETRIES)
def notify_server(server: str, token: str | None, timeout_s: float = 30.0) -> ReloadOutcome:
    """Ask one server to reload the published version (retries while it cannot be reached)."""
    outcome = request_reload(server, token=token, timeout_s=timeout_s)
    log = get_run_logger()
    if outcome.ok:
        log.info("%s reloaded (serving %s)", server, outcome.index_version)
    else:
        log.warning("%s refused the reload: %s %s", server, outcome.status, outcome.detail)
    return outcome


def notify_servers(
    servers: list[str], token: str | None, timeout_s: float = 30.0, retry_delays_s: tuple[float, ...] = (1, 5)
) -> list[ReloadOutcome]:
    """Notify every server concurrently; one unreachable server does not fail the others.

    Call from inside a flow.

    Args:
        servers: base URLs of the servers.
        token: bearer token for ``/admin/reload``.
        timeout_s: per request.
        retry_delays_s: waits between attempts at an unreachable server (one retry per entry; the
            policy's other terms as :data:`flows.common.retry.QUICK_RETRIES`).

    Returns:
        One outcome per server, in order; a server that stayed unreachable after the retries is an
        outcome with ``ok=False`` and the error as detail.
    """
    task = notify_server.with_options(**transient_retries(*retry_delays_s))
    futures = [task.submit(server, token, timeout_s) for server in servers]
    outcomes = []
    for server, future in zip(servers, futures):
        result = future.result(raise_on_failure=False)
        if isinstance(result, ReloadOutcome):
            outcomes.append(result)
        else:
            get_run_logger().warning("could not notify %s: %r", server, result)
            outcomes.append(ReloadOutcome(server, False, None, repr(result)))
    lagging = [o.url for o in outcomes if not o.ok]
    if lagging:
        # The version stays published: a lagging replica serves its older version until its own
        # check of CURRENT (every reload_interval_s) or the next notification succeeds.
        get_run_logger().warning(
            "%d of %d servers did not reload and may serve an older version until they next check CURRENT: %s",
            len(lagging), len(outcomes), ", ".join(lagging),
        )
    return outcomes


def lagging_servers(notified: list[dict]) -> list[str]:
    """URLs of the servers whose notification did not end with them serving the published version."""
    return [n["url"] for n in notified if not n["ok"]]
