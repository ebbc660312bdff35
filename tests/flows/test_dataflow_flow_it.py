"""The Dataflow path of a refresh: the dry-run submission through the flow, and following a job.

Dataflow itself cannot run here. The submission is built for real by Beam's DataflowRunner with
``--dry_run=True``; following a submitted job runs against an injected state source (the only
stand-in), with a real store and the Prefect test API.
"""

from __future__ import annotations

import pytest
from prefect import flow

from beam_jobs.ingest import IngestResult
from flows.tasks._dataflow import DataflowJobFailed
from flows.common.lease import RefreshLease
from flows.refresh import refresh_corpus
from flows.tasks.ingest import follow_dataflow
from model.store import open_store
from tests.flows.support import artifacts_of, copy_store, flow_run_id, write_sources

pytestmark = pytest.mark.integration

ARGS = ["--project=retro-project", "--region=europe-west1", "--temp_location=gs://retro-scratch/tmp"]


class ScriptedJob:
    """States replayed in order (the last repeats), and the job's counters."""

    def __init__(self, states, counters):
        self.states, self.counters_ = list(states), counters
        self.polls = 0

    def state(self, job):
        self.polls += 1
        return self.states[min(self.polls, len(self.states)) - 1]

    def counters(self, job, namespace):
        assert namespace == "retrofresh"
        return self.counters_


def launched(version, parent, job_id="2026-11-28_01_02_03-123"):
    return IngestResult(version=version, parent=parent, metrics={}, chunks_added=0, chunks_removed=0, seconds=2.0,
                        job_id=job_id, dataflow_url=None, state="RUNNING")


def test_following_a_job_links_it_renews_the_lease_and_collects_its_draft(prefect_api, refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    first, second = (s.result()["version"] for s in refreshed.states)
    lease = RefreshLease(open_store(store).backend, holder="dataflow refresh", ttl_s=600)
    lease.acquire()
    expiries = []
    lease_renew = lease.renew
    lease.renew = lambda: expiries.append(lease_renew().expires_at)  # observe the real renewals
    source = ScriptedJob(["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_DONE"], {"new": 3, "changed": 6, "chunks": 41, "tombstones": 43})

    @flow
    def follow():
        return follow_dataflow(launched(second, first), store_uri=store, pipeline_args=ARGS, source=source, lease=lease,
                               poll_interval_s=0, timeout_s=60, started=0.0)

    state = follow(return_state=True)
    outcome = state.result()
    assert outcome.version == second and outcome.parent == first  # the draft the job wrote is in the store
    assert outcome.metrics["new"] == 3 and outcome.metrics["deleted"] == 0  # core counters default to 0
    assert (outcome.chunks_added, outcome.chunks_removed) == (41, 43)
    assert outcome.states == ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_DONE"]
    assert outcome.dataflow_url == "https://console.cloud.google.com/dataflow/jobs/europe-west1/2026-11-28_01_02_03-123?project=retro-project"
    assert len(expiries) == 3
    link = artifacts_of(flow_run_id(state))["dataflow-job"]
    assert "https://console.cloud.google.com/dataflow/jobs/europe-west1/2026-11-28_01_02_03-123" in link.data


def test_a_job_that_wrote_nothing_yields_no_version(prefect_api, refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")

    @flow
    def follow():
        return follow_dataflow(launched("v000009-00000000", None), store_uri=store, pipeline_args=ARGS,
                               source=ScriptedJob(["JOB_STATE_DONE"], {"unchanged": 34}), lease=None,
                               poll_interval_s=0, timeout_s=60, started=0.0)

    outcome = follow()
    assert outcome.version is None and outcome.metrics["unchanged"] == 34


def test_a_failed_job_fails_the_run_with_its_id_and_link(prefect_api, refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")

    @flow
    def follow():
        return follow_dataflow(launched("v000009-00000000", None, job_id="job-77"), store_uri=store, pipeline_args=ARGS,
                               source=ScriptedJob(["JOB_STATE_RUNNING", "JOB_STATE_FAILED"], {}), lease=None,
                               poll_interval_s=0, timeout_s=60, started=0.0)

    state = follow(return_state=True)
    assert state.is_failed()
    assert "job-77 ended JOB_STATE_FAILED" in state.message and "console.cloud.google.com" in state.message
    with pytest.raises(DataflowJobFailed):
        state.result()


@pytest.mark.slow
def test_a_dataflow_dry_run_refresh_records_the_job_it_would_submit(prefect_api, gcs_bucket, sample_site, tmp_path):
    site = sample_site(0)
    sources = write_sources(tmp_path / "sources.yaml", site.base_url)
    store = f"gs://{gcs_bucket}/index"
    image = "europe-west1-docker.pkg.dev/retro-project/retrofresh/dataflow:0.1.0"
    state = refresh_corpus(sources=str(sources), store=store, runner="dataflow",
                           pipeline_args=[*ARGS, f"--sdk_container_image={image}", "--dry_run=True"], return_state=True)
    summary = state.result()
    assert summary["published"] is False and summary["version"] is None
    assert open_store(store).current() is None and site.requests == []  # nothing ran, nothing was crawled
    job = artifacts_of(flow_run_id(state))["dataflow-job"].data
    for text in ("retrofresh-ingest-v000001-", "retro-project", "europe-west1", image, "Crawl", "Embed", "WriteDelta"):
        assert text in job
    assert RefreshLease(open_store(store).backend, holder="t").read().released_at is not None
