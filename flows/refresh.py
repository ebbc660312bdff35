"""``refresh_corpus``: lease, ingest, compact, validate, publish, notify, record; safe to run any time.

A rerun after a crash at any step publishes once: the ingest diffs against whatever ``CURRENT``
names, so a crash before the publish leaves an orphan draft (``gc_store`` removes it) and the rerun
ingests again; a crash after it finds nothing new. A retry of a publish whose answer was lost
finds ``CURRENT`` already moved to its version and succeeds.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from prefect import flow, task

from flows.common.inputs import resolve_inputs
from flows.common.retry import IO_RETRIES
from flows.common.summary import RefreshSummary, document_counts, failure_counts, freshness_lag_s, newest_source_change
from flows.tasks.artifacts import record_refresh_artifacts
from flows.tasks.deletions import guard_ingest_deletions
from flows.tasks.ingest import run_ingest_job
from flows.tasks.notify import notify_servers
from flows.tasks.store import compact_version, count_shards, holding_lease, publish_version, read_current
from flows.tasks.validate import validate_version
from model.contracts.clock import utcnow

if TYPE_CHECKING:
    from beam_jobs.ingest import IngestResult

LOG = logging.getLogger(__name__)


@flow(name="refresh-corpus", description="Ingest the sources, validate the new index version, publish it, notify servers.")
def refresh_corpus(
    sources: str | None = None,
    store: str | None = None,
    runner: str = "local",
    pipeline_args: list[str] | None = None,
    servers: list[str] | None = None,
    compact_threshold: int = 8,
    probe_queries: int = 16,
    recall_target: float = 0.95,
    lease_ttl_s: float = 600.0,
    poll_interval_s: float = 30.0,
    embedder_path: str | None = None,
    tokenizer_path: str | None = None,
    max_delete_share: float | None = None,
) -> dict:
    """Refresh a store from its sources.

    Args:
        sources: sources YAML file (default ``RETROFRESH_SOURCES``).
        store: the index store (default ``RETROFRESH_STORE``).
        runner: "local" (Beam in this process), "multiprocess", "dask" (a Dask cluster named by
            ``--dask_client_address=tcp://HOST:PORT`` in pipeline_args), or "dataflow" (submit and poll).
        pipeline_args: extra Beam flags (Dataflow: --project, --region, --temp_location, ...).
        servers: server URLs to tell about the new version (default ``RETROFRESH_SERVERS``).
        compact_threshold: compact the new version when it lists more shards than this.
        probe_queries: chunks the validation probes the index with.
        recall_target: recall@2 against exact search the published version's nprobe must give
            (validation tunes it; see model.store.tuning).
        lease_ttl_s: how long the lease outlives a crashed holder (it is renewed while alive).
        poll_interval_s: seconds between Dataflow job state polls.
        embedder_path, tokenizer_path: the encoder and tokenizer (default: the bundled ones).
        max_delete_share: the largest share of a source's documents this refresh may delete; a
            source over it keeps its documents and is reported in ``failed_sources`` while the
            rest publishes (default: the sources file's ``max_delete_share``, 0.5).

    Returns:
        The :class:`flows.common.summary.RefreshSummary` as a dict.
    """
    started, clock = utcnow(), time.monotonic()
    inputs = resolve_inputs(store, sources, servers, need_sources=True)
    with holding_lease(inputs.store, "refresh-corpus", lease_ttl_s) as lease:
        parent = read_current(inputs.store)
        ingest = run_ingest_job(
            inputs.sources, inputs.store, runner=runner, pipeline_args=pipeline_args, lease=lease,
            poll_interval_s=poll_interval_s, embedder_path=embedder_path, tokenizer_path=tokenizer_path,
        )
        ingest, failed_sources = guard_ingest_deletions(
            inputs.store, ingest, max_share=deletion_limit(inputs.sources, max_delete_share), configured=source_names(inputs.sources),
        )
        published, compacted_from, validation, notified = publish_ingest(
            inputs, ingest, parent, lease, compact_threshold=compact_threshold, probe_queries=probe_queries,
            embedder_path=embedder_path, recall_target=recall_target,
        )
        seconds = time.monotonic() - clock
        summary = summarize_refresh(inputs.store, ingest, parent, published, compacted_from, validation, notified, started, seconds)
        summary.failed_sources = failed_sources
        record_refresh_artifacts(summary)
        return summary.to_dict()


def deletion_limit(sources: str, override: float | None) -> float:
    """The run's max_delete_share: the override, else the sources file's."""
    from beam_jobs.sources import load_sources

    return override if override is not None else load_sources(sources).max_delete_share


def source_names(sources: str) -> list[str]:
    from beam_jobs.sources import load_sources

    return load_sources(sources).names


def publish_ingest(
    inputs, ingest: IngestResult, parent: str | None, lease, *, compact_threshold: int, probe_queries: int,
    embedder_path: str | None, recall_target: float = 0.95,
) -> tuple[tuple[str, str] | None, str | None, dict | None, list]:
    """What follows an ingest that wrote a draft: compact if needed, validate (and tune), publish, notify.

    Call from inside a flow holding the lease; shared by the full and the targeted refresh.

    Returns:
        (published (version, published_at) or None, the draft it was compacted from or None, the
        validation summary, one ReloadOutcome per server); all empty when the ingest wrote nothing.
    """
    if ingest.version is None:
        return None, None, None, []
    draft = ingest.version
    too_many = count_shards(inputs.store, draft) > compact_threshold
    candidate = compact_version(inputs.store, draft) if too_many else draft
    validation = validate_version(
        inputs.store, candidate, parent=parent, chunks_added=ingest.chunks_added,
        chunks_removed=ingest.chunks_removed, probe_queries=probe_queries, embedder_path=embedder_path,
        recall_target=recall_target,
    )
    candidate = validation["publish"]  # the candidate, or its copy with the tuned nprobe
    published = (candidate, publish_version(inputs.store, candidate, parent, lease))
    return published, (draft if too_many else None), validation, notify_servers(inputs.servers, inputs.token)


@task(name="summarize-refresh", **IO_RETRIES)
def summarize_refresh(
    store_uri: str,
    ingest: IngestResult,
    parent: str | None,
    published: tuple[str, str] | None,
    compacted_from: str | None,
    validation: dict | None,
    notified: list,
    started: datetime,
    seconds: float,
) -> RefreshSummary:
    """Put the refresh's numbers together, with the freshness lag of what was published."""
    from model.store import open_store

    summary = RefreshSummary(
        version=published[0] if published else parent,
        parent=parent,
        published=published is not None,
        documents=document_counts(ingest.metrics),
        chunks_added=ingest.chunks_added if published else 0,
        chunks_removed=ingest.chunks_removed if published else 0,
        seconds=round(seconds, 3),
        store=store_uri,
        started_at=started.isoformat(),
        job_id=ingest.job_id,
        dataflow_url=ingest.dataflow_url,
        validation=validation or {},
        notified=[n.to_dict() for n in notified],
        failures=failure_counts(ingest.metrics),
    )
    if published:
        version, published_at = published
        summary.published_at = published_at
        summary.compacted_from = compacted_from
        summary.nprobe = (validation or {}).get("nprobe")
        summary.recall_at_k = (validation or {}).get("recall_at_k")
        newest, basis = newest_source_change(open_store(store_uri), version, parent)
        if newest is not None:
            summary.newest_source_change = f"{newest.isoformat()} ({basis})"
            summary.freshness_lag_s = freshness_lag_s(datetime.fromisoformat(published_at), newest)
    return summary
