"""``rollback_index``: point CURRENT back at an older version, then tell the servers.

It takes no lease: a rollback is an emergency and must work while a refresh runs. It is a
compare-and-swap on ``CURRENT`` like every publish, so a refresh in flight then loses its publish
with a PublishConflict instead of silently undoing the rollback.
"""

from __future__ import annotations

import logging

from prefect import flow

from flows.common.inputs import resolve_inputs
from flows.tasks.artifacts import record_summary
from flows.tasks.notify import notify_servers
from flows.tasks.store import rollback_version

LOG = logging.getLogger(__name__)

ROLLBACK_SUMMARY = "rollback-summary"


@flow(name="rollback-index", description="Point CURRENT at an older, kept version (checksums verified first).")
def rollback_index(version: str, store: str | None = None, servers: list[str] | None = None) -> dict:
    """Roll the store back to ``version``.

    Args:
        version: a version id listed by ``retrofresh index versions``.
        store: the index store (default ``RETROFRESH_STORE``).
        servers: servers to notify (default ``RETROFRESH_SERVERS``).

    Returns:
        ``{"version", "previous", "servers"}``.
    """
    inputs = resolve_inputs(store, servers=servers)
    previous = rollback_version(inputs.store, version)  # also repairs a damaged CURRENT
    notified = notify_servers(inputs.servers, inputs.token)
    result = {"version": version, "previous": previous, "servers": [n.to_dict() for n in notified]}
    record_summary(ROLLBACK_SUMMARY, f"Rollback of {inputs.store}", {"version": version, "previous": previous,
                   "servers notified": f"{sum(n.ok for n in notified)} of {len(notified)} ok"})
    return result
