"""The ingest step of a refresh: run the Beam job here, or submit it to Dataflow and follow it."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.tasks._dataflow import JobStateSource, RestJobStateSource, job_location, wait_for_job
from flows.common.lease import RefreshLease
from flows.common.retry import JOB_RETRIES
from flows.tasks.artifacts import DATAFLOW_JOB

if TYPE_CHECKING:  # the Beam job loads only when a task runs
    from beam_jobs.ingest import IngestResult

LOG = logging.getLogger(__name__)

RUNNERS = ("local", "multiprocess", "dask", "dataflow")
NAMESPACE = "retrofresh"  # the ingest job's counter namespace (beam_jobs.metrics.NAMESPACE)


@task(name="run-ingest", **JOB_RETRIES)
def run_ingest_job(
    sources: str,
    store_uri: str,
    *,
    runner: str = "local",
    pipeline_args: list[str] | None = None,
    embedder_path: str | None = None,
    tokenizer_path: str | None = None,
    lease: RefreshLease | None = None,
    poll_interval_s: float = 30.0,
    timeout_s: float = 6 * 3600.0,
    state_source: JobStateSource | None = None,
    urls: list[str] | None = None,
    max_targets: int | None = None,
) -> IngestResult:
    """Run the Beam ingest job against CURRENT and return what it wrote (a draft, or nothing).

    Locally the job runs in this process (FnApiRunner). On Dataflow it is submitted with
    ``wait=False``; its console link becomes a link artifact at once, and the task polls the job's
    state until it is done, renewing the lease on every poll (a lost lease stops the wait).

    Args:
        sources: sources file (YAML).
        store_uri: the store.
        runner: "local", "multiprocess", "dask" (the workers of the scheduler named by
            ``--dask_client_address`` in pipeline_args; waited for here) or "dataflow".
        pipeline_args: extra Beam flags (Dataflow needs --project, --region, --temp_location).
        embedder_path, tokenizer_path: as for :func:`beam_jobs.ingest.run_ingest`.
        lease: renewed on each Dataflow poll (the flow's heartbeat renews it too).
        poll_interval_s, timeout_s: Dataflow polling.
        state_source: where Dataflow job states come from (default: the Dataflow REST API).
        urls, max_targets: a targeted run (only these URLs; see :func:`beam_jobs.ingest.run_ingest`).

    Returns:
        The :class:`beam_jobs.ingest.IngestResult`; ``version`` is None when nothing changed.
    """
    from beam_jobs.ingest import run_ingest

    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    started = time.monotonic()
    common = dict(pipeline_args=pipeline_args, runner=runner, embedder_path=embedder_path, tokenizer_path=tokenizer_path,
                  urls=urls, max_targets=max_targets)
    if runner != "dataflow":
        return run_ingest(sources, store_uri, wait=True, **common)

    launched = run_ingest(sources, store_uri, wait=False, **common)
    if launched.state == "DRY_RUN":
        return record_dry_run(launched)
    return follow_dataflow(launched, store_uri=store_uri, pipeline_args=pipeline_args, source=state_source or RestJobStateSource(),
                           lease=lease, poll_interval_s=poll_interval_s, timeout_s=timeout_s, started=started)


def record_dry_run(launched: IngestResult) -> IngestResult:
    """A ``--dry_run=True`` submission: show the job Dataflow would have received; nothing ran."""
    job = launched.dataflow_job or {}
    steps = ", ".join(job.get("steps", []))
    markdown = (
        f"# Dataflow dry run\n\nJob **{job.get('name')}** in project `{job.get('project')}`, region `{job.get('region')}` "
        f"was built but not submitted.\n\n- temp location: `{job.get('temp_location')}`\n"
        f"- SDK container image: `{job.get('sdk_container_image')}`\n- steps: {steps}\n\n"
        f"```json\n{json.dumps(job, indent=1, default=str)[:20000]}\n```\n"
    )
    from beam_jobs.ingest import IngestResult

    create_markdown_artifact(markdown, key=DATAFLOW_JOB, description="The Dataflow job a dry run would submit")
    get_run_logger().info("Dataflow dry run: built job %s, submitted nothing", job.get("name"))
    return IngestResult(None, launched.parent, dict(launched.metrics), 0, 0, launched.seconds, state="DRY_RUN", dataflow_job=job)


def follow_dataflow(
    launched: IngestResult,
    *,
    store_uri: str,
    pipeline_args: list[str] | None,
    source: JobStateSource,
    lease: RefreshLease | None,
    poll_interval_s: float,
    timeout_s: float,
    started: float,
) -> IngestResult:
    """Follow a submitted job: link artifact at once, poll until done (renewing the lease), collect.

    Args:
        launched: what ``run_ingest(..., wait=False)`` returned (it carries the job id).
        store_uri: the store the job writes its draft to.
        pipeline_args: the submission's flags (``--project``, ``--region``).
        source: job states and counters.
        lease: renewed on every poll.
        poll_interval_s, timeout_s: polling.
        started: ``time.monotonic()`` when the ingest step began.

    Raises:
        DataflowJobFailed: the job failed, was cancelled or drained.
        DataflowTimeout: still running after ``timeout_s``.
    """
    if not launched.job_id:
        raise RuntimeError(f"the Dataflow submission returned no job id (state {launched.state})")
    job = job_location(pipeline_args, launched.job_id)
    get_run_logger().info("submitted Dataflow job %s: %s", job.job_id, job.console_url)
    create_link_artifact(job.console_url, link_text=f"Dataflow job {job.job_id}", key=DATAFLOW_JOB)
    report = wait_for_job(job, source, poll_interval_s=poll_interval_s, timeout_s=timeout_s,
                          on_poll=(lambda _state: lease.renew()) if lease is not None else None)
    counters = source.counters(job, NAMESPACE)
    return finish_dataflow(store_uri, launched, counters, report.states, job.console_url, time.monotonic() - started)


def finish_dataflow(
    store_uri: str, launched: IngestResult, counters: dict[str, int], states: list[str], url: str, seconds: float
) -> IngestResult:
    """The outcome of a finished Dataflow ingest: its counters, and whether it wrote its draft.

    The job writes the draft version it was launched with only when something changed; the
    store says whether it did.
    """
    from beam_jobs.ingest import IngestResult
    from beam_jobs.metrics import CORE_COUNTERS
    from model.store import StoreError, open_store

    metrics = {name: 0 for name in CORE_COUNTERS} | counters
    written = False
    if launched.version is not None:
        try:
            open_store(store_uri).manifest(launched.version)
            written = True
        except StoreError:
            written = False
    return IngestResult(
        version=launched.version if written else None,
        parent=launched.parent,
        metrics=metrics,
        chunks_added=metrics.get("chunks", 0),
        chunks_removed=metrics.get("tombstones", 0),
        seconds=seconds,
        job_id=launched.job_id,
        dataflow_url=launched.dataflow_url or url,
        state=states[-1] if states else launched.state,
        states=list(states),
    )
