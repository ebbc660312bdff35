"""Per-document size limits through real pipeline runs: an oversized record or file is a counted
``failed_too_large`` that keeps what the store has of it, and its neighbours are ingested."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beam_jobs.ingest import run_ingest
from beam_jobs.sources import SourcesConfig
from model.store import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROSE = "Plain prose about the harbour, the market and the weather, long enough to be a document. "
LIMITS = {"max_bytes": 20_000, "max_chunks": 20}


def write_records(path: Path, records: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")


def config(folder: Path) -> SourcesConfig:
    return SourcesConfig.model_validate({"documents": LIMITS, "sources": [{"kind": "files", "name": "archive", "glob": str(folder / "*")}]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    folder, store_uri = root / "docs", str(root / "store")
    folder.mkdir()
    write_records(folder / "records.jsonl", [{"id": "grows", "text": f"One. {PROSE}"}, {"id": "steady", "text": f"Two. {PROSE}"}])
    store = open_store(store_uri)
    first = run_ingest(config(folder), store_uri)
    store.publish(first.version, expected_current=None)
    write_records(
        folder / "records.jsonl",
        [
            {"id": "grows", "text": PROSE * 300},  # ~27 kB: over max_bytes
            {"id": "steady", "text": f"Two. {PROSE}"},
            {"id": "dense", "text": "東京の天気 😀 " * 400},  # ~10 kB, but far over 20 chunks
            {"id": "new", "text": f"Three. {PROSE}"},
            {"id": "huge", "text": "x" * 200_000},  # over 6 x max_bytes: refused unparsed
        ],
    )
    (folder / "big.txt").write_text(PROSE * 300)
    second = run_ingest(config(folder), store_uri)
    return store_uri, first, second


def ledger(store_uri: str, version: str) -> dict[str, dict]:
    return {r["url"]: r for r in open_store(store_uri).read_ledger(version).to_pylist()}


def test_oversized_documents_are_counted_and_their_neighbours_ingested(runs):
    store_uri, first, second = runs
    assert second.metrics["failed_too_large"] == 4  # grows, dense, huge (unparsed), big.txt
    assert second.metrics["new"] == 1 and second.metrics["changed"] == 0 and second.metrics["deleted"] == 0
    urls = set(ledger(store_uri, second.version))
    assert any(u.endswith("#new") for u in urls) and not any(u.endswith(("#dense", "#huge", "big.txt")) for u in urls)


def test_the_stored_version_of_a_document_that_grew_too_large_is_kept(runs):
    store_uri, first, second = runs
    before = {u: r for u, r in ledger(store_uri, first.version).items() if u.endswith("#grows")}
    after = {u: r for u, r in ledger(store_uri, second.version).items() if u.endswith("#grows")}
    assert after and [r["chunk_ids"] for r in after.values()] == [r["chunk_ids"] for r in before.values()]
    assert not set(open_store(store_uri).manifest(second.version).tombstones)
