"""The deletion guard on drafts written by hand: which sources it refuses, and what the rebuilt draft holds."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flows.tasks.deletions import guard_deletions
from model.store import IndexPolicy, open_store
from tests.model.store.conftest import FLAT_MAX, SPEC, Corpus, next_manifest


def ledger(rows) -> pa.Table:
    return pa.Table.from_pylist([{"doc_id": d, "url": f"https://example.test/{d}", "source": s, "chunk_ids": ids} for d, s, ids in rows])


@pytest.fixture
def parent(tmp_path):
    """A published version: source a with docs 0-3, source b with docs 10-11 (4 chunks each)."""
    store = open_store(tmp_path / "store", cache_dir=tmp_path / "cache", policy=IndexPolicy(flat_max=FLAT_MAX, codec="Flat"))
    corpus = Corpus()
    chunks, vectors = corpus.docs([0, 1, 2, 3, 10, 11])
    ids = {n: [c.chunk_id for c in corpus.doc(n)[0]] for n in (0, 1, 2, 3, 10, 11)}
    rows = [(f"d{n}", "a" if n < 10 else "b", ids[n]) for n in ids]
    version = store.new_version_id()
    manifest = next_manifest(store, None, [store.write_shard(chunks, vectors, embedder=SPEC)], documents=6, version=version,
                             ledger=store.write_ledger(version, ledger(rows)))
    store.publish(manifest, expected_current=None)
    return store, corpus, manifest, ids, rows


def draft(store, parent_manifest, rows, tombstones, shards=()):
    version = store.new_version_id()
    manifest = next_manifest(store, parent_manifest, list(shards), tombstones, documents=len(rows), version=version,
                             ledger=store.write_ledger(version, ledger(rows)))
    store.write_manifest(manifest)
    return manifest


def test_a_source_losing_more_than_the_share_keeps_its_documents_and_the_rest_goes_on(parent):
    store, corpus, manifest, ids, rows = parent
    new_chunks, new_vectors = corpus.doc(12)
    added = store.write_shard(new_chunks, new_vectors, embedder=SPEC)
    # a loses 3 of 4 (refused), b loses 1 of 2 (50%: allowed) and gains d12.
    kept_rows = [r for r in rows if r[0] in ("d0", "d10")] + [("d12", "b", [c.chunk_id for c in new_chunks])]
    gone = ids[1] + ids[2] + ids[3] + ids[11]
    d = draft(store, manifest, kept_rows, gone, [added])
    version, refused, kept, dropped = guard_deletions(store, d.version, max_share=0.5, configured={"a", "b"})
    assert [(r.source, r.deleting, r.documents) for r in refused] == [("a", 3, 4)]
    assert "--max-delete-share 1" in refused[0].message and (kept, dropped) == (3, 12)
    rebuilt = store.manifest(version)
    assert rebuilt.parent == manifest.version and rebuilt.tombstones == ids[11]
    assert [s.id for s in rebuilt.shards] == [s.id for s in manifest.shards] + [added.id]
    docs = set(store.read_ledger(version).column("doc_id").to_pylist())
    assert docs == {"d0", "d1", "d2", "d3", "d10", "d12"} and rebuilt.stats.documents == 6
    with store.open(version) as view:
        assert view.count == rebuilt.stats.chunks == 6 * 4


def test_nothing_left_to_publish_when_the_refused_deletions_were_all_there_was(parent):
    store, _, manifest, ids, rows = parent
    d = draft(store, manifest, [r for r in rows if r[1] == "b"], ids[0] + ids[1] + ids[2] + ids[3])
    assert guard_deletions(store, d.version, max_share=0.5, configured={"a", "b"})[:2][0] is None
    assert guard_deletions(store, d.version, max_share=1.0, configured={"a", "b"}) == (d.version, [], 0, 0)
    # A source no longer configured is not guarded: dropping it from the sources file deletes it.
    assert guard_deletions(store, d.version, max_share=0.5, configured={"b"}) == (d.version, [], 0, 0)
