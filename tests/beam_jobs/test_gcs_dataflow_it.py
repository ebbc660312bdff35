"""The same job against a gs:// store (fake-gcs-server on 127.0.0.1), and the Dataflow job it
would submit (``--dry_run=True``: built, never sent)."""

from __future__ import annotations

import pytest

from beam_jobs.ingest import run_ingest
from model.ids import doc_id
from model.store import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ingest_into_a_gcs_store(sample_site, sample_sources, gcs_bucket, tmp_path):
    site = sample_site(0)
    store_uri = f"gs://{gcs_bucket}/index"
    result = run_ingest(sample_sources(site), store_uri)
    expected = site.edition.document_urls(site.base_url)
    assert result.version and result.metrics["new"] == len(expected)
    store = open_store(store_uri, cache_dir=tmp_path / "cache")
    assert {r["url"] for r in store.read_ledger(result.version).to_pylist()} == set(expected)
    store.publish(result.version, expected_current=None)
    with store.open() as view:
        doc_ids = {row["doc_id"] for batch in view.iter_chunks() for row in batch.to_pylist()}
    assert doc_ids == {doc_id(u) for u in expected} and view.count == result.chunks_added


def test_dataflow_dry_run_builds_the_job_it_would_submit(sample_sources, sample_site, gcs_bucket):
    site = sample_site(0)
    image = "europe-west1-docker.pkg.dev/retro-project/retrofresh/dataflow:0.1.0"
    result = run_ingest(
        sample_sources(site),
        f"gs://{gcs_bucket}/index",
        runner="dataflow",
        pipeline_args=[
            "--project=retro-project",
            "--region=europe-west1",
            "--temp_location=gs://retro-scratch/tmp",
            f"--sdk_container_image={image}",
            "--dry_run=True",
        ],
    )
    job = result.dataflow_job
    assert result.state == "DRY_RUN" and result.version is None and site.requests == []
    assert job["name"].startswith("retrofresh-ingest-v000001-")
    assert (job["project"], job["region"], job["temp_location"]) == ("retro-project", "europe-west1", "gs://retro-scratch/tmp")
    assert job["sdk_container_image"] == image and job["container_images"] == [image]
    for step in ("ReadLedger", "Crawl", "ReadFiles", "Extract", "JoinLedger", "Diff", "Chunk", "Embed", "GatherDelta", "WriteDelta"):
        assert step in job["steps"], job["steps"]
    assert job["environment"]["tempStoragePrefix"].endswith("retro-scratch/tmp")


def test_dataflow_refuses_a_local_store(sample_sources, sample_site, tmp_path):
    with pytest.raises(ValueError, match="must be on gs://"):
        run_ingest(sample_sources(sample_site(0)), str(tmp_path / "store"), runner="dataflow",
                   pipeline_args=["--project=p-123", "--region=r", "--temp_location=gs://b-1/t", "--dry_run=True"])  # fmt: skip
