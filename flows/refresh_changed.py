"""``refresh_changed``: a targeted refresh of only the URLs change events named.

The ``refresh-changed`` deployment runs it on every ``retrofresh.source.changed`` event (a Prefect
deployment trigger, :mod:`flows.deployments`). Each run first records its event's URLs in the
store (:mod:`flows.common.pending`), absorbs the URLs of runs still waiting to start (and cancels them:
a burst of events gives one refresh), then waits for the refresh lease, so only one refresh of a
store runs at a time. Holding it, it takes every pending URL, fetches, diffs, embeds and publishes
only those as a delta version, tells the servers, and deletes the entries it handled; it loops
while entries remain (changes that arrived meanwhile). A run that finds nothing pending (an
earlier run took its URLs) ends at once. A crash leaves the entries, so the next run takes them
again; the full crawl (``refresh_corpus``, on its schedule) still catches deletions and anything
no event named.
"""

from __future__ import annotations

import logging
import time

from prefect import flow, get_run_logger, runtime, task

from flows.common.inputs import resolve_inputs
from flows.common.pending import PendingBatch, PendingChanges
from flows.common.retry import IO_RETRIES, QUICK_RETRIES
from flows.refresh import publish_ingest, summarize_refresh
from flows.tasks.artifacts import record_refresh_artifacts
from flows.tasks.ingest import run_ingest_job
from flows.tasks.store import holding_lease, open_store, read_current
from model.contracts.clock import utcnow

LOG = logging.getLogger(__name__)


@flow(name="refresh-changed", description="Fetch, embed and publish only the URLs that change events named.")
def refresh_changed(
    urls: list[str] | None = None,
    sources: str | None = None,
    store: str | None = None,
    servers: list[str] | None = None,
    max_urls: int = 500,
    max_passes: int = 20,
    lease_wait_s: float = 900.0,
    lease_ttl_s: float = 600.0,
    compact_threshold: int = 8,
    probe_queries: int = 16,
    embedder_path: str | None = None,
    tokenizer_path: str | None = None,
) -> dict:
    """Refresh only the named URLs (and any others still pending) of a store.

    Args:
        urls: the changed URLs or files (the event's ``payload.urls``); None: only what is pending.
        sources: sources YAML file (default ``RETROFRESH_SOURCES``); every URL must belong to one
            of its sources, others are refused and never fetched.
        store: the index store (default ``RETROFRESH_STORE``).
        servers: server URLs to tell about a new version (default ``RETROFRESH_SERVERS``).
        max_urls: most URLs one pass fetches; more wait for the next pass.
        max_passes: most passes (versions) one run publishes before it leaves the rest to the next.
        lease_wait_s: how long to wait for a refresh that holds the lease.
        lease_ttl_s, compact_threshold, probe_queries, embedder_path, tokenizer_path: as for
            :func:`flows.refresh.refresh_corpus`.

    Returns:
        ``{"passes": [refresh summary per pass], "recorded": n, "absorbed_runs": n, "refused": [...]}``.
    """
    inputs = resolve_inputs(store, sources, servers, need_sources=True)
    recorded = record_changes(inputs.store, urls or [])
    absorbed = absorb_waiting_runs(inputs.store)
    passes, refused = [], []
    with holding_lease(inputs.store, "refresh-changed", lease_ttl_s, wait_s=lease_wait_s) as lease:
        for _ in range(max_passes):
            batch = take_pending(inputs.store, max_urls)
            if not batch.urls:
                break
            started, clock = utcnow(), time.monotonic()
            parent = read_current(inputs.store)
            ingest = run_ingest_job(inputs.sources, inputs.store, urls=list(batch.urls), max_targets=max_urls,
                                    embedder_path=embedder_path, tokenizer_path=tokenizer_path, lease=lease)
            published, compacted_from, validation, notified = publish_ingest(
                inputs, ingest, parent, lease, compact_threshold=compact_threshold, probe_queries=probe_queries, embedder_path=embedder_path,
            )
            clear_pending(inputs.store, batch, list(ingest.deferred))
            summary = summarize_refresh(inputs.store, ingest, parent, published, compacted_from, validation, notified,
                                        started, time.monotonic() - clock)
            record_refresh_artifacts(summary)
            record_job_steps(ingest.metrics, len(batch.urls))
            refused.extend(ingest.refused)
            fetched = len(batch.urls) - len(ingest.refused) - len(ingest.deferred)  # the rest wait for the next pass
            passes.append(summary.to_dict() | {"urls": fetched, "refused": len(ingest.refused), "deferred": len(ingest.deferred)})
    if not passes:
        get_run_logger().info("nothing pending: an earlier run already published these changes")
    return {"passes": passes, "recorded": recorded, "absorbed_runs": absorbed, "refused": [list(r) for r in refused]}


JOB_STEPS = "refresh-changed-steps"


def record_job_steps(metrics: dict[str, int], urls: int) -> None:
    """A table artifact of where the ingest job's time went (its ``ms_*`` counters), per pass."""
    from prefect.artifacts import create_table_artifact

    rows = [{"step": name.removeprefix("ms_"), "seconds": round(value / 1000, 3)} for name, value in sorted(metrics.items()) if name.startswith("ms_")]
    create_table_artifact(rows, key=JOB_STEPS, description=f"Seconds the targeted ingest of {urls} URLs spent per step (summed over its workers)")


@task(name="record-changes", **IO_RETRIES)
def record_changes(store_uri: str, urls: list[str]) -> int:
    """Write this run's URLs to the store's pending entries before anything else (durable)."""
    origin = f"flow run {runtime.flow_run.id}" if runtime.flow_run.id else "direct call"
    return len(urls) if PendingChanges(open_store(store_uri).backend).add(urls, origin=origin) else 0


@task(name="absorb-waiting-runs", **QUICK_RETRIES)
def absorb_waiting_runs(store_uri: str) -> int:
    """Take over the URLs of this deployment's runs that have not started yet, and cancel them.

    Their URLs are recorded first, so a crash between the two steps loses nothing (at worst a run
    still starts and finds its URLs handled). Outside a deployment run there is nothing to absorb.

    Returns:
        How many runs were cancelled.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    deployment_id, own_id = runtime.deployment.id, runtime.flow_run.id
    if not deployment_id:
        return 0
    pending = PendingChanges(open_store(store_uri).backend)
    cancelled = 0
    with get_client(sync_client=True) as client:
        waiting = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
        )
        for run in waiting:
            if str(run.id) == str(own_id) or (run.parameters.get("store") not in (None, store_uri)):
                continue
            pending.add(run.parameters.get("urls") or [], origin=f"flow run {run.id} (absorbed by {own_id})")
            answer = client.set_flow_run_state(run.id, Cancelled(message=f"coalesced into flow run {own_id}"))
            cancelled += answer.status.value == "ACCEPT"
    if cancelled:
        get_run_logger().info("absorbed %d waiting runs", cancelled)
    return cancelled


@task(name="take-pending", **IO_RETRIES)
def take_pending(store_uri: str, limit: int) -> PendingBatch:
    """The oldest pending entries, up to ``limit`` URLs."""
    return PendingChanges(open_store(store_uri).backend).take(limit)


@task(name="clear-pending", **IO_RETRIES)
def clear_pending(store_uri: str, batch: PendingBatch, deferred: list[str]) -> int:
    """Delete the entries a pass handled; URLs it left over its limit become a new entry first."""
    pending = PendingChanges(open_store(store_uri).backend)
    pending.add(deferred, origin="deferred by a refresh pass over its limit")
    return pending.remove(batch.keys)
