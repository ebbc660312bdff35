"""Feed and files sources through real pipeline runs: dates from the feed, every file kind, the
glob as the listing (a removed file is deleted, an unreadable record deletes nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beam_jobs.ingest import run_ingest
from beam_jobs.sample.server import SampleSiteServer
from beam_jobs.sample.world import SampleWorld
from beam_jobs.sources import SourcesConfig
from model.store import open_store
from tests.fixtures.site import FAST_FETCH

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROSE = "Plain prose about the harbour, the market and the weather, long enough to be a document. " * 3


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(f"Notes\n\n{PROSE}")
    (folder / "guide.md").write_text(f"# Guide\n\n{PROSE}")
    (folder / "page.html").write_text(f"<html><head><title>Archived page</title></head><body><article><p>{PROSE}</p></article></body></html>")
    records = [
        {"id": "r1", "title": "Record one", "text": f"One. {PROSE}", "published_at": "2023-05-01T00:00:00Z"},
        {"url": "https://example.org/two", "text": f"Two. {PROSE}"},
    ]
    (folder / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (folder / "ignored.pdf").write_bytes(b"%PDF-1.4")


def config(site_base: str, folder: Path) -> SourcesConfig:
    return SourcesConfig.model_validate(
        {
            "fetch": FAST_FETCH,
            "sources": [
                {"kind": "feed", "name": "news", "url": site_base + "/feed.xml", "allow_networks": ["127.0.0.0/8"]},
                {"kind": "files", "name": "archive", "glob": str(folder / "*")},
            ],
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    folder, store_uri = root / "docs", str(root / "store")
    write_corpus(folder)
    store = open_store(store_uri)
    world = SampleWorld(seed=1, size=1)
    with SampleSiteServer(world, 0) as site:
        cfg = config(site.base_url, folder)
        first = run_ingest(cfg, store_uri)
        store.publish(first.version, expected_current=None)
        # A record goes bad and a file disappears: the bad record makes the listing incomplete,
        # so nothing of the source may be deleted this run.
        (folder / "records.jsonl").write_text((folder / "records.jsonl").read_text() + "{broken\n")
        (folder / "guide.md").unlink()
        incomplete = run_ingest(cfg, store_uri)
        # The record is fixed: now the vanished file is deleted.
        lines = (folder / "records.jsonl").read_text().splitlines()[:-1]
        (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
        complete = run_ingest(cfg, store_uri)
        return world, site.base_url, store_uri, folder, first, incomplete, complete


def rows(store_uri: str, version: str) -> dict[str, dict]:
    return {r["url"]: r for r in open_store(store_uri).read_ledger(version).to_pylist()}


def test_feed_entries_and_every_file_kind_become_documents(runs):
    world, base, store_uri, folder, first, _, _ = runs
    ledger = rows(store_uri, first.version)
    news = {base + world.news_path(c): c for c in world.edition(0).news}
    files = {str(folder / n) for n in ("notes.txt", "guide.md", "page.html")} | {f"{folder / 'records.jsonl'}#r1", "https://example.org/two"}
    assert set(ledger) == set(news) | files
    for url, change in news.items():
        assert ledger[url]["source"] == "news" and ledger[url]["published_at"].date() == change.date
    assert ledger[f"{folder / 'records.jsonl'}#r1"]["published_at"].year == 2023
    assert ledger[str(folder / "guide.md")]["title"] == "Guide"
    assert first.metrics["failed_unsupported_file"] == 1  # the PDF


def test_an_unreadable_record_keeps_every_document_of_its_source(runs):
    _, _, store_uri, folder, first, incomplete, _ = runs
    assert incomplete.metrics["failed_bad_record"] == 1 and incomplete.metrics["deleted"] == 0
    assert incomplete.version is None  # nothing new, changed or deleted


def test_a_file_gone_from_a_complete_listing_is_deleted(runs):
    _, _, store_uri, folder, first, _, complete = runs
    assert complete.metrics["deleted"] == 1 and complete.metrics["new"] == 0 and complete.metrics["changed"] == 0
    guide = rows(store_uri, first.version)[str(folder / "guide.md")]
    manifest = open_store(store_uri).manifest(complete.version)
    assert set(manifest.tombstones) == set(guide["chunk_ids"])
    assert str(folder / "guide.md") not in rows(store_uri, complete.version)


def test_multiprocess_runner_gives_the_same_documents_and_counters(tmp_path):
    folder = tmp_path / "docs"
    write_corpus(folder)
    config = SourcesConfig.model_validate({"sources": [{"kind": "files", "name": "archive", "glob": str(folder / "*")}]})
    result = run_ingest(config, str(tmp_path / "store"), runner="multiprocess")
    assert result.metrics["new"] == 5 and result.metrics["failed_unsupported_file"] == 1
    rows = open_store(str(tmp_path / "store")).read_ledger(result.version).to_pylist()
    assert len(rows) == 5 and result.chunks_added == sum(len(r["chunk_ids"]) for r in rows)


def test_an_unlistable_glob_marks_its_source_incomplete():
    from apache_beam.pvalue import TaggedOutput

    from beam_jobs.crawl import ListFilesDoFn
    from beam_jobs.sources import FilesSource
    from beam_jobs.types import INCOMPLETE

    (out,) = list(ListFilesDoFn().process(FilesSource(kind="files", name="lake", glob="nosuchscheme://bucket/*.txt")))
    assert isinstance(out, TaggedOutput) and (out.tag, out.value) == (INCOMPLETE, "lake")
