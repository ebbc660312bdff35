"""One document the chunker cannot take is quarantined: kept as it was, counted, and the rest publishes."""

from __future__ import annotations

import pytest

import beam_jobs.chunk
from beam_jobs.ingest import run_ingest
from beam_jobs.sources import SourcesConfig
from flows.tasks.validate import validate
from model.store import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROSE = "Plain prose about the harbour, the market and the weather, long enough to be a document. " * 3


def test_a_document_that_cannot_be_chunked_is_kept_as_it_was_and_the_other_changes_publish(tmp_path, monkeypatch):
    folder, store_uri = tmp_path / "docs", str(tmp_path / "store")
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.txt").write_text(f"{name} first\n\n{PROSE}")
    config = SourcesConfig.model_validate({"sources": [{"kind": "files", "name": "docs", "glob": str(folder / "*.txt")}]})
    store = open_store(store_uri)
    first = run_ingest(config, store_uri)
    store.publish(first.version, expected_current=None)
    before = {row["url"]: row for row in store.read_ledger(first.version).to_pylist()}

    (folder / "a.txt").write_text(f"a second\n\n{PROSE}")  # changed, and the chunker will fail on it
    (folder / "b.txt").write_text(f"b second\n\n{PROSE}")  # changed
    (folder / "d.txt").write_text(f"d first\n\n{PROSE}")  # new, and the chunker will fail on it
    real = beam_jobs.chunk.chunk_document
    bad = {str(folder / "a.txt"), str(folder / "d.txt")}

    def chunk_or_fail(tokens, *, url, **kwargs):
        if url in bad:
            raise RuntimeError(f"the chunker cannot take {url}")
        return real(tokens, url=url, **kwargs)

    monkeypatch.setattr(beam_jobs.chunk, "chunk_document", chunk_or_fail)
    second = run_ingest(config, store_uri)
    assert second.version is not None
    m = second.metrics
    assert (m["failed_chunk_error"], m["changed"], m["new"], m["unchanged"]) == (2, 1, 0, 2)
    assert second.chunks_removed == len(before[str(folder / "b.txt")]["chunk_ids"])
    report = validate(store, second.version, parent=first.version, chunks_added=second.chunks_added,
                      chunks_removed=second.chunks_removed, probe_queries=0, recall_target=None)
    store.publish(report.publish, expected_current=first.version)
    after = {row["url"]: row for row in store.read_ledger(report.publish).to_pylist()}
    assert set(after) == {str(folder / f"{n}.txt") for n in "abc"}
    a = str(folder / "a.txt")
    assert (after[a]["content_hash"], after[a]["chunk_ids"]) == (before[a]["content_hash"], before[a]["chunk_ids"])
    assert after[str(folder / "b.txt")]["content_hash"] != before[str(folder / "b.txt")]["content_hash"]
    with store.open() as view:
        live = {cid for batch in view.iter_chunks() for cid in batch.column("chunk_id").to_pylist()}
    assert set(before[a]["chunk_ids"]) <= live  # a's old chunks are still served
    assert live == {cid for row in after.values() for cid in row["chunk_ids"]}
