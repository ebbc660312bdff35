"""The ingest job end to end on the sample world: editions 0 and 1, an unchanged rerun, 304s.

One module-scoped sequence of real pipeline runs (FnApiRunner) against one local store: the
tests below each check one property of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from beam_jobs.ingest import EmbedderMismatch, IngestResult, TokenizerMismatch, run_ingest
from beam_jobs.sample.server import SampleSiteServer
from beam_jobs.sample.world import BROKEN_PATH, PRIVATE_PATH, SampleWorld
from beam_jobs.sources import SourcesConfig
from model.contracts.ids import doc_id
from model.store import open_store
from tests.fixtures.site import FAST_FETCH

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Runs:
    world: SampleWorld
    base: str
    store_uri: str
    first: IngestResult  # edition 0 into an empty store
    second: IngestResult  # edition 1 against edition 0
    unchanged: IngestResult  # edition 1 again
    conditional: IngestResult  # edition 1 again, sitemap lastmod not trusted: every page asked with validators
    log0: list  # requests during the first run
    log_conditional: list


def config_for(base: str, **site) -> SourcesConfig:
    source = {"kind": "site", "name": "sample", "start_urls": [base + "/"], "allow_networks": ["127.0.0.0/8"], **site}
    return SourcesConfig.model_validate({"fetch": FAST_FETCH, "sources": [source]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    world = SampleWorld(seed=7, size=1)
    store_uri = str(tmp_path_factory.mktemp("ingest") / "store")
    store = open_store(store_uri)
    with SampleSiteServer(world, 0) as site:
        config = config_for(site.base_url)
        first = run_ingest(config, store_uri)
        log0 = list(site.requests)
        store.publish(first.version, expected_current=None)
        site.set_edition(1)
        second = run_ingest(config, store_uri)
        store.publish(second.version, expected_current=first.version)
        unchanged = run_ingest(config, store_uri)
        site.clear_log()
        conditional = run_ingest(config_for(site.base_url, trust_sitemap_lastmod=False), store_uri)
        log_conditional = list(site.requests)
        return Runs(world, site.base_url, store_uri, first, second, unchanged, conditional, log0, log_conditional)


def ledger(runs: Runs, version: str) -> dict[str, dict]:
    return {row["url"]: row for row in open_store(runs.store_uri).read_ledger(version).to_pylist()}


def live_chunks(runs: Runs, version: str) -> dict[int, dict]:
    with open_store(runs.store_uri).open(version) as view:
        return {row["chunk_id"]: row for batch in view.iter_chunks() for row in batch.to_pylist()}


def document_changes(world: SampleWorld, base: str) -> tuple[set[str], set[str], set[str]]:
    """(new, changed, removed) document URLs from edition 0 to 1, straight from the generator."""
    e0, e1 = world.edition(0), world.edition(1)
    docs0, docs1 = set(e0.document_paths()), set(e1.document_paths())
    changed = {p for p in docs0 & docs1 if e0.pages[p].body != e1.pages[p].body}
    return ({base + p for p in docs1 - docs0}, {base + p for p in changed}, {base + p for p in docs0 - docs1})


def test_edition_0_becomes_a_draft_holding_every_expected_document(runs):
    expected = set(runs.world.edition(0).document_urls(runs.base))
    rows = ledger(runs, runs.first.version)
    assert set(rows) == expected
    assert runs.first.parent is None and runs.first.metrics["new"] == len(expected)
    chunks = live_chunks(runs, runs.first.version)
    assert runs.first.chunks_added == len(chunks) == sum(len(r["chunk_ids"]) for r in rows.values()) > 0
    assert {c["doc_id"] for c in chunks.values()} == {doc_id(u) for u in expected}
    manifest = open_store(runs.store_uri).manifest(runs.first.version)
    assert manifest.tokenizer.name == "retrofresh-bpe-8k" and manifest.stats.documents == len(expected)
    assert manifest.sources == ["sample"] and manifest.watermark is not None


def test_broken_pages_are_counted_and_the_job_completes(runs):
    m = runs.first.metrics
    assert m["failed_http_5xx"] == 1 and m["failed_content_type"] == 1 and m["gone"] == 1  # 500, PDF, dead link
    assert m["robots_blocked"] == 1
    assert [r.path for r in runs.log0].count(BROKEN_PATH) == 2  # retried once


def test_robots_disallowed_page_is_never_requested(runs):
    assert PRIVATE_PATH not in {r.path for r in runs.log0}
    assert "/robots.txt" in {r.path for r in runs.log0}


def test_edition_1_embeds_only_new_and_changed_documents(runs):
    new, changed, removed = document_changes(runs.world, runs.base)
    m = runs.second.metrics
    assert (m["new"], m["changed"], m["deleted"]) == (len(new), len(changed), len(removed))
    assert new and changed and removed
    rows1 = ledger(runs, runs.second.version)
    assert set(rows1) == set(runs.world.edition(1).document_urls(runs.base))
    before, after = live_chunks(runs, runs.first.version), live_chunks(runs, runs.second.version)
    embedded = set(after) - set(before)
    assert len(embedded) == runs.second.chunks_added == sum(len(rows1[u]["chunk_ids"]) for u in new | changed)
    assert {after[c]["doc_id"] for c in embedded} == {doc_id(u) for u in new | changed}


def test_removed_and_changed_documents_become_tombstones(runs):
    new, changed, removed = document_changes(runs.world, runs.base)
    rows0 = ledger(runs, runs.first.version)
    expected = {c for u in changed | removed for c in rows0[u]["chunk_ids"]}
    manifest = open_store(runs.store_uri).manifest(runs.second.version)
    assert set(manifest.tombstones) == expected and runs.second.chunks_removed == len(expected)
    assert set(live_chunks(runs, runs.first.version)) - set(live_chunks(runs, runs.second.version)) == expected


def test_changed_facts_are_readable_in_the_new_chunks(runs):
    changes = runs.world.changed_facts(1)
    assert changes
    after = live_chunks(runs, runs.second.version)
    texts: dict[str, list] = {}
    for chunk in sorted(after.values(), key=lambda c: (c["doc_id"], c["position"])):
        texts.setdefault(chunk["doc_id"], []).append(chunk["text"])
    for change in changes:
        holders = {u for u in change.urls(runs.base) if change.sentence in "".join(texts[doc_id(u)])}
        assert holders == set(change.urls(runs.base)) and len(holders) >= 2, change


def test_a_rerun_over_unchanged_input_embeds_nothing_and_writes_no_draft(runs):
    m = runs.unchanged.metrics
    assert runs.unchanged.version is None and runs.unchanged.parent == runs.second.version
    assert (m["new"], m["changed"], m["deleted"], m["chunks"]) == (0, 0, 0, 0)
    assert m["unchanged"] == len(runs.world.edition(1).document_paths())


def test_conditional_requests_get_304_and_embed_nothing(runs):
    m = runs.conditional.metrics
    documents = runs.world.edition(1).document_paths()
    assert runs.conditional.version is None and m["chunks"] == 0
    assert m["not_modified"] == len(documents) and m["fetched"] == 0
    asked = {r.path: r for r in runs.log_conditional if r.path in documents}
    assert set(asked) == set(documents)
    assert all(r.status == 304 and r.headers.get("If-None-Match") for r in asked.values())


def test_a_different_tokenizer_is_refused_before_anything_is_fetched(runs, tmp_path):
    from model.contracts.tokenizer import train_tokenizer

    other = train_tokenizer(["a tiny corpus of words for a tiny tokenizer"] * 20, vocab_size=300, name="other-bpe")
    path = other.save(tmp_path / "tok")
    with SampleSiteServer(runs.world, 1) as site:
        with pytest.raises(TokenizerMismatch, match="retrofresh-bpe-8k"):
            run_ingest(config_for(site.base_url), runs.store_uri, tokenizer_path=str(path))
        assert site.requests == []


def test_a_different_encoder_is_refused(runs, tmp_path):
    from model.contracts.embedder import default_embedder_path

    renamed = tmp_path / "some-other-encoder"
    renamed.symlink_to(default_embedder_path(), target_is_directory=True)
    with pytest.raises(EmbedderMismatch, match="some-other-encoder"):
        run_ingest(config_for("http://127.0.0.1:9"), runs.store_uri, embedder_path=str(renamed))
