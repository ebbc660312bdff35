"""``compact_index``: merge the current version's shards into one new version and publish it."""

from __future__ import annotations

import logging

from prefect import flow

from flows.common.inputs import resolve_inputs
from flows.tasks.artifacts import record_summary
from flows.tasks.notify import notify_servers
from flows.tasks.store import compact_version, count_shards, holding_lease, publish_version, read_current
from flows.tasks.validate import validate_version

LOG = logging.getLogger(__name__)

COMPACTION_SUMMARY = "compaction-summary"


@flow(name="compact-index", description="Merge CURRENT's shards (dropping deleted chunks) into a new version and publish it.")
def compact_index(
    store: str | None = None,
    min_shards: int = 2,
    servers: list[str] | None = None,
    probe_queries: int = 16,
    lease_ttl_s: float = 600.0,
    embedder_path: str | None = None,
    publish: bool = True,
) -> dict:
    """Compact the current version when it has at least ``min_shards`` shards.

    Takes the refresh lease, so it never competes with a refresh for ``CURRENT``. This is the one
    compaction that publishes: ``retrofresh index compact`` runs it too.

    Args:
        store: the index store (default ``RETROFRESH_STORE``).
        min_shards: compact only from this many shards on.
        servers: servers to notify (default ``RETROFRESH_SERVERS``).
        probe_queries: chunks the validation probes with.
        lease_ttl_s: lease lifetime without renewal.
        embedder_path: encoder of the store's keys (default: the bundled one).
        publish: publish the validated version (else it stays a draft, named by ``version``).

    Returns:
        ``{"version", "parent", "compacted", "published", "shards_before", "shards_after"}``, and
        ``live_chunks``, ``servers_ok`` when it compacted.
    """
    inputs = resolve_inputs(store, servers=servers)
    with holding_lease(inputs.store, "compact-index", lease_ttl_s) as lease:
        current = read_current(inputs.store)
        shards = count_shards(inputs.store, current) if current else 0
        result = {"version": current, "parent": current, "compacted": False, "published": False, "shards_before": shards,
                  "shards_after": shards}
        if current and shards >= min_shards:
            candidate = compact_version(inputs.store, current)
            validation = validate_version(inputs.store, candidate, parent=current, chunks_added=0, chunks_removed=0,
                                          probe_queries=probe_queries, embedder_path=embedder_path)
            candidate = validation["publish"]  # its copy with the tuned nprobe, if that changed
            if publish:
                publish_version(inputs.store, candidate, current, lease)
            notified = notify_servers(inputs.servers, inputs.token) if publish else []
            result |= {"version": candidate, "compacted": True, "published": publish, "shards_after": count_shards(inputs.store, candidate),
                       "live_chunks": validation["live_chunks"], "servers_ok": sum(n.ok for n in notified)}
        record_summary(COMPACTION_SUMMARY, f"Compaction of {inputs.store}", result)
        return result
