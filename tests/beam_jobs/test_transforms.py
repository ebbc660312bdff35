"""Each step of the ingest job alone, as a composite PTransform on a small PCollection (FnApiRunner)."""

from __future__ import annotations

from datetime import datetime, timezone

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.crawl import Crawl
from beam_jobs.diff import LEDGER, TO_CHUNK, TOMBSTONES, DiffAgainstLedger
from beam_jobs.embed import ChunkAndEmbed, ChunkEmbeddingHandler
from beam_jobs.extract import Extract
from beam_jobs.options import pipeline_options
from beam_jobs.sources import DocumentLimits, SourcesConfig
from beam_jobs.targets import FetchTargets, resolve_targets
from beam_jobs.types import CHANGED, DELETED, FAILED, FETCHED, GONE, NEW, FetchResult, LedgerRow, Observation, ToChunk
from beam_jobs.write import DraftSpec, ReadLedger, WriteDelta
from model.contracts.chunking import Chunk
from model.contracts.embedder import embedder_spec
from model.contracts.ids import content_hash, doc_id
from model.contracts.tokenizer import RetroTokenizer
from tests.fixtures.numerics import approx

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def local_pipeline() -> beam.Pipeline:
    return beam.Pipeline(options=pipeline_options("local"))  # FnApiRunner, in this process


def sorted_by(key):
    """An assert_that matcher: the elements, ordered by ``key``, satisfy the checks the test gives."""

    def matcher(check):
        def run(actual):
            check(sorted(actual, key=key))

        return run

    return matcher


def row(doc: str, source: str, hash_: str, chunk_ids=()) -> LedgerRow:
    return LedgerRow(doc, f"http://site/{doc}", source, doc, None, None, hash_, None, NOW, NOW, tuple(chunk_ids))


def files_config(tmp_path, **extra) -> SourcesConfig:
    return SourcesConfig.model_validate({"sources": [{"kind": "files", "name": "notes", "glob": str(tmp_path / "*"), **extra}]})


def test_crawl_reads_every_listed_file_and_marks_a_source_with_an_unread_jsonl_incomplete(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha is the first letter.")
    (tmp_path / "b.md").write_text("# Beta\n\nBeta comes second.")
    (tmp_path / "c.jsonl").write_text('{"text": "' + "x" * 200 + '"}\n')
    config = files_config(tmp_path, max_file_bytes=100)
    with local_pipeline() as pipeline:
        ledger = pipeline | beam.Create([], reshuffle=False).with_output_types(LedgerRow)
        fetched = ledger | Crawl(config)
        outcomes = fetched["results"] | beam.Map(lambda r: (r.url.rsplit("/", 1)[-1], r.outcome, r.reason))
        assert_that(outcomes, equal_to([("a.txt", FETCHED, None), ("b.md", FETCHED, None), ("c.jsonl", FAILED, "too_large")]), label="results")
        assert_that(fetched["incomplete"], equal_to(["notes"]), label="incomplete")


def test_fetch_targets_reads_the_named_files_only_and_counts_every_source_incomplete(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha.")
    (tmp_path / "b.txt").write_text("Beta, never named.")
    config = files_config(tmp_path)
    targets = resolve_targets(config, [str(tmp_path / "a.txt"), str(tmp_path / "gone.txt")])
    with local_pipeline() as pipeline:
        ledger = pipeline | beam.Create([], reshuffle=False).with_output_types(LedgerRow)
        fetched = ledger | FetchTargets(config, targets)
        outcomes = fetched["results"] | beam.Map(lambda r: (r.url.rsplit("/", 1)[-1], r.outcome))
        assert_that(outcomes, equal_to([("a.txt", FETCHED), ("gone.txt", GONE)]), label="results")
        assert_that(fetched["incomplete"], equal_to(["notes"]), label="incomplete")


def test_extract_turns_results_into_observations_and_adds_sources_with_bad_records():
    page = FetchResult("http://site/a.html", "site", FETCHED, kind="html", body=b"<html><title>A</title><body><p>Alpha text.</p></body></html>")
    records = FetchResult("/data/r.jsonl", "notes", FETCHED, kind="jsonl", body=b'{"id": "r1", "text": "one record"}\nnot json\n')
    with local_pipeline() as pipeline:
        fetched = {
            "results": pipeline | "Results" >> beam.Create([page, records], reshuffle=False),
            "incomplete": pipeline | "Incomplete" >> beam.Create(["site", "site"], reshuffle=False),
        }
        documents = fetched | Extract(DocumentLimits())

        def check(observations):
            assert [(o.source, o.outcome) for o in observations] == [("notes", FETCHED), ("site", FETCHED)]
            assert observations[1].doc_id == doc_id("http://site/a.html") and "Alpha text." in observations[1].text

        assert_that(documents["observations"], sorted_by(lambda o: o.source)(check), label="observations")
        assert_that(documents["incomplete"], equal_to(["notes", "site"]), label="incomplete")


def test_diff_against_ledger_sorts_documents_into_changes_carried_rows_chunks_and_tombstones():
    ledger_rows = [row("changed", "site", "h1", (1, 2)), row("kept", "site", "h2", (3,)), row("dropped", "notes", "h3", (4, 5))]
    observations = [
        Observation("changed", "http://site/changed", "site", FETCHED, text="new text", content_hash="h9", fetched_at=NOW),
        Observation("fresh", "http://site/fresh", "site", FETCHED, text="fresh text", content_hash="h8", fetched_at=NOW),
    ]
    with local_pipeline() as pipeline:
        parts = {
            "ledger": pipeline | "Ledger" >> beam.Create(ledger_rows, reshuffle=False),
            "observations": pipeline | "Observations" >> beam.Create(observations, reshuffle=False),
            "incomplete": pipeline | "Incomplete" >> beam.Create([], reshuffle=False).with_output_types(str),
        }
        diff = parts | DiffAgainstLedger({"site": "site", "notes": "files"}, ["site", "notes"], NOW)
        assert_that(diff["changes"], equal_to([CHANGED, DELETED, NEW]), label="changes")
        assert_that(diff[LEDGER] | beam.Map(lambda r: r.doc_id), equal_to(["kept"]), label="carried")
        assert_that(diff[TO_CHUNK] | beam.Map(lambda t: (t.observation.doc_id, t.outcome, t.first_seen)),
                    equal_to([("changed", CHANGED, NOW), ("fresh", NEW, NOW)]), label="to_chunk")
        assert_that(diff[TOMBSTONES], equal_to([(1, 2), (4, 5)]), label="tombstones")


def test_chunk_and_embed_gives_each_chunk_a_unit_key_and_each_document_its_chunk_ids():
    tokenizer = RetroTokenizer.load(None)
    text = " ".join(f"Sentence {i} of a document long enough for a few chunks." for i in range(40))
    observation = Observation("d1", "http://site/d1", "site", FETCHED, text=text, content_hash=content_hash(text), fetched_at=NOW)
    handler = ChunkEmbeddingHandler(None, min_batch_size=1, max_batch_size=8, encode_batch_size=8, torch_threads=1)
    dim = embedder_spec(None).dim
    with local_pipeline() as pipeline:
        to_chunk = pipeline | beam.Create([ToChunk(observation, first_seen=NOW, outcome=NEW)], reshuffle=False)
        parts = to_chunk | ChunkAndEmbed(tokenizer.to_json(), tokenizer.name, tokenizer.sha256, handler)
        embedded = parts["embedded"] | beam.Map(lambda pair: (pair[0].chunk_id, pair[0].doc_id, pair[1].shape, float(np.linalg.norm(pair[1]))))

        def check_embedded(actual):
            assert len(actual) > 2 and all(d == "d1" and shape == (dim,) and norm == approx(1.0) for _, d, shape, norm in actual)

        assert_that(embedded, check_embedded, label="embedded")
        # The document's ledger row lists exactly the chunks that were embedded.
        listed = parts["ledger"] | beam.FlatMap(lambda r: [("listed", i) for i in r.chunk_ids])
        keyed = parts["embedded"] | "Ids" >> beam.Map(lambda pair: ("embedded", pair[0].chunk_id))

        def check_ids(actual):
            by_tag = {tag: sorted(i for t, i in actual if t == tag) for tag in ("listed", "embedded")}
            assert by_tag["listed"] == by_tag["embedded"] and len(set(by_tag["listed"])) == len(by_tag["listed"]) > 2

        assert_that((listed, keyed) | beam.Flatten(), check_ids, label="same ids")


@pytest.fixture
def draft_spec(tmp_path):
    from model.store import open_store

    store = open_store(tmp_path / "store")
    return DraftSpec(str(tmp_path / "store"), store.new_version_id(), None, embedder_spec(None), "tok", "0" * 64, ("site",))


def test_write_delta_writes_one_draft_that_read_ledger_reads_back(draft_spec):
    from model.store import open_store

    dim = draft_spec.embedder.dim
    chunks = [Chunk(10 + i, "d1", i, [1, 2, 3], [4], f"text {i}", "http://site/d1") for i in range(3)]
    vectors = np.eye(3, dim, dtype=np.float32)
    rows = [row("d1", "site", "h1", (10, 11, 12)), row("d2", "site", "h2", (7,))]
    with local_pipeline() as pipeline:
        delta = {
            "embedded": pipeline | "Embedded" >> beam.Create(list(zip(chunks, vectors)), reshuffle=False),
            "ledger": pipeline | "Ledger" >> beam.Create(rows, reshuffle=False),
            "tombstones": pipeline | "Tombstones" >> beam.Create([(5, 6)], reshuffle=False),
            "changes": pipeline | "Changes" >> beam.Create([NEW, CHANGED], reshuffle=False),
        }
        written = delta | WriteDelta(draft_spec) | beam.Map(lambda s: (s["version"], s["chunks"], s["tombstones"], s["documents"]))
        assert_that(written, equal_to([(draft_spec.version, 3, 2, 2)]))
    manifest = open_store(draft_spec.store_uri).manifest(draft_spec.version)
    assert (manifest.stats.documents, manifest.tombstones, len(manifest.shards)) == (2, [5, 6], 1)

    with local_pipeline() as pipeline:
        read = pipeline | ReadLedger(draft_spec.store_uri, draft_spec.version) | beam.Map(lambda r: (r.doc_id, r.chunk_ids))
        assert_that(read, equal_to([("d1", (10, 11, 12)), ("d2", (7,))]))


def test_write_delta_writes_nothing_when_nothing_changed_and_names_missing_parts(draft_spec):
    from model.store import StoreError, open_store

    with local_pipeline() as pipeline:
        empty = {name: pipeline | name >> beam.Create([], reshuffle=False) for name in ("embedded", "tombstones", "changes")}
        delta = empty | {"ledger": pipeline | "Ledger" >> beam.Create([row("d1", "site", "h1")], reshuffle=False)}
        assert_that(delta | WriteDelta(draft_spec), equal_to([]))
    with pytest.raises(StoreError):
        open_store(draft_spec.store_uri).manifest(draft_spec.version)
    with pytest.raises(ValueError, match="missing changes, tombstones"):
        with local_pipeline() as pipeline:
            {"embedded": pipeline | beam.Create([]), "ledger": pipeline | "L" >> beam.Create([])} | WriteDelta(draft_spec)
