"""The same job against a gs:// store (fake-gcs-server on 127.0.0.1), and the Dataflow job it
would submit (``--dry_run=True``: built, never sent)."""

from __future__ import annotations

import json

import pytest

from beam_jobs.ingest import main, run_ingest
from beam_jobs.sources import FilesSource
from model.contracts.ids import doc_id
from model.store import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ingest_into_a_gcs_store_with_files_from_gcs(sample_site, sample_sources, gcs_bucket, tmp_path):
    from google.cloud import storage

    bucket = storage.Client(project="retrofresh-test").bucket(gcs_bucket)
    bucket.blob("docs/notes.txt").upload_from_string("Harbour notes. " + "The tide was high and the boats came in late. " * 8)
    bucket.blob("docs/records.jsonl").upload_from_string('{"id": "r1", "text": "A record about the spring market, its stalls and its bread."}\n')
    site = sample_site(0)
    config = sample_sources(site)
    config = config.model_copy(update={"sources": [*config.sources, FilesSource(kind="files", name="bucket", glob=f"gs://{gcs_bucket}/docs/*")]})
    store_uri = f"gs://{gcs_bucket}/index"
    result = run_ingest(config, store_uri)
    expected = site.edition.document_urls(site.base_url) + [f"gs://{gcs_bucket}/docs/notes.txt", f"gs://{gcs_bucket}/docs/records.jsonl#r1"]
    assert result.version and result.metrics["new"] == len(expected)
    store = open_store(store_uri, cache_dir=tmp_path / "cache")
    rows = store.read_ledger(result.version).to_pylist()
    assert {r["url"] for r in rows} == set(expected)
    assert {r["doc_id"] for r in rows} == {doc_id(u) for u in expected[:-1]} | {doc_id("bucket:r1")}
    store.publish(result.version, expected_current=None)
    with store.open() as view:
        doc_ids = {row["doc_id"] for batch in view.iter_chunks() for row in batch.to_pylist()}
    assert doc_ids == {r["doc_id"] for r in rows} and view.count == result.chunks_added


def test_dataflow_dry_run_builds_the_job_it_would_submit(sample_site, gcs_bucket, tmp_path, capsys):
    site = sample_site(0)
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - kind: site\n    name: sample\n    start_urls: ['{site.base_url}/']\n")
    image = "europe-west1-docker.pkg.dev/retro-project/retrofresh/dataflow:0.1.0"
    argv = [
        "--sources", str(sources), "--store", f"gs://{gcs_bucket}/index",
        "--runner", "DataflowRunner", "--project", "retro-project", "--region", "europe-west1",
        "--temp_location", "gs://retro-scratch/tmp", "--sdk_container_image", image, "--dry_run=True",
    ]  # fmt: skip
    assert main(argv) == 0  # python -m beam_jobs.ingest ...
    result = json.loads(capsys.readouterr().out)
    job = result["dataflow_job"]
    assert result["state"] == "DRY_RUN" and result["version"] is None and site.requests == []
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
