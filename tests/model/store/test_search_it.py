"""Searching a version: exact merge across shards, tombstones, excluded documents, bad queries."""

from __future__ import annotations

import numpy as np
import pytest

from model.store import StoreError

from .conftest import FLAT_MAX, SPEC, exact_top_k, next_manifest, publish
from tests.fixtures.numerics import assert_close


def two_kinds_of_shard(store, corpus):
    """A version with a flat shard (40 docs) and an IVF shard (150 docs), probing every list."""
    flat_chunks, flat_vectors = corpus.docs(range(40))
    ivf_chunks, ivf_vectors = corpus.docs(range(100, 250))
    flat = store.write_shard(flat_chunks, flat_vectors, embedder=SPEC)
    ivf = store.write_shard(ivf_chunks, ivf_vectors, embedder=SPEC)
    assert flat.factory == "IDMap2,Flat" and ivf.factory.startswith("IVF") and len(ivf_chunks) >= FLAT_MAX
    manifest = store.publish(next_manifest(store, None, [flat, ivf], search={"nprobe": 4096}), expected_current=None)
    return manifest, flat_chunks + ivf_chunks, np.concatenate([flat_vectors, ivf_vectors])


def test_top_k_across_shards_equals_exact_search(store, corpus):
    manifest, chunks, vectors = two_kinds_of_shard(store, corpus)
    queries = corpus.queries(40)
    want = exact_top_k(vectors, [c.chunk_id for c in chunks], queries, 5)
    with store.open() as view:
        got = view.search(queries, 5)
    assert [[n.chunk_id for n in hits] for hits in got] == want
    exact = queries @ vectors.T
    for q, hits in enumerate(got):
        scores = [n.score for n in hits]
        assert scores == sorted(scores, reverse=True)
        assert_close(scores, np.sort(exact[q])[::-1][:5], magnitude=1.0)  # FAISS's kernels against numpy's


def test_neighbours_carry_their_chunk(store, corpus):
    manifest, chunks, vectors = two_kinds_of_shard(store, corpus)
    by_id = {c.chunk_id: c for c in chunks}
    with store.open() as view:
        hits = view.search(vectors[[3, 200]], 1)
    for hits_q, row in zip(hits, [3, 200]):
        n, c = hits_q[0], chunks[row]
        assert n.chunk_id == c.chunk_id  # a key's nearest chunk is itself
        assert (n.doc_id, n.url, n.text, n.tokens, n.continuation, n.position) == (
            c.doc_id, c.url, c.text, c.tokens, c.continuation, c.position)
        assert n.version == manifest.version and n.retrieved_tokens == c.tokens + c.continuation
        assert by_id[n.chunk_id] == c


@pytest.mark.parametrize("flat_filter", ["after", "selector"])
def test_tombstoned_chunks_are_never_returned(store, corpus, monkeypatch, flat_filter):
    if flat_filter == "selector":  # many deletions in a flat shard: filtered inside FAISS too
        monkeypatch.setattr("model.store.view.POST_FILTER_MAX", 0)
    manifest, chunks, vectors = two_kinds_of_shard(store, corpus)
    # Delete document 5 (flat shard) and document 120 (IVF shard): 8 chunks.
    gone = [c.chunk_id for c in chunks if c.url.endswith(("/doc/5", "/doc/120"))]
    second = store.publish(next_manifest(store, manifest, [], gone), expected_current=manifest.version)
    rows = [i for i, c in enumerate(chunks) if c.chunk_id in set(gone)]
    with store.open() as view:
        assert view.count == len(chunks) - 8 and second.stats.chunks == len(chunks) - 8
        results = view.search(vectors[rows], 10)
        live = [i for i in range(len(chunks)) if i not in rows]
        want = exact_top_k(vectors[live], [chunks[i].chunk_id for i in live], vectors[rows], 10)
    for hits, expected in zip(results, want):
        assert len(hits) == 10  # still k results: filtering happens inside FAISS
        assert not {n.chunk_id for n in hits} & set(gone)
        assert [n.chunk_id for n in hits] == expected


def test_excluded_documents_are_skipped(store, corpus):
    manifest, chunks, vectors = two_kinds_of_shard(store, corpus)
    rows = [0, 1, 170, 400]
    exclude = [chunks[r].doc_id for r in rows[:-1]] + [None]
    with store.open() as view:
        results = view.search(vectors[rows], 6, exclude_doc_ids=exclude)
        unknown = view.search(vectors[rows[:1]], 6, exclude_doc_ids=["no-such-document"])
    # A document no shard holds excludes nothing.
    assert [n.chunk_id for n in unknown[0]] == exact_top_k(vectors, [c.chunk_id for c in chunks], vectors[rows[:1]], 6)[0]
    for hits, r, doc in zip(results, rows, exclude):
        assert len(hits) == 6
        if doc is None:
            assert hits[0].chunk_id == chunks[r].chunk_id
        else:
            assert doc not in {n.doc_id for n in hits}
            keep = [i for i, c in enumerate(chunks) if c.doc_id != doc]
            want = exact_top_k(vectors[keep], [chunks[i].chunk_id for i in keep], vectors[[r]], 6)[0]
            assert [n.chunk_id for n in hits] == want


def test_document_changed_back_returns_its_chunks(store, corpus):
    """A -> B -> A: the third edition repeats the first's chunk ids; they must be live again."""
    doc_a, vec_a = corpus.doc(7, edition="a")
    doc_b, vec_b = corpus.doc(7, edition="b")
    other, vec_o = corpus.docs(range(20, 25))
    v1 = store.publish(next_manifest(store, None, [store.write_shard(doc_a + other, np.concatenate([vec_a, vec_o]), embedder=SPEC)]),
                       expected_current=None)
    v2 = store.publish(next_manifest(store, v1, [store.write_shard(doc_b, vec_b, embedder=SPEC)], [c.chunk_id for c in doc_a]),
                       expected_current=v1.version)
    v3 = store.publish(next_manifest(store, v2, [store.write_shard(doc_a, vec_a, embedder=SPEC)], [c.chunk_id for c in doc_b]),
                       expected_current=v2.version)
    with store.open(v2.version) as view:
        assert {n.chunk_id for n in view.search(vec_a, 1)[0]}.isdisjoint(c.chunk_id for c in doc_a)
    with store.open(v3.version) as view:
        assert view.count == 4 + 20 == v3.stats.chunks
        hits = view.search(vec_a, 4)
        assert [h[0].chunk_id for h in hits] == [c.chunk_id for c in doc_a]
        assert all(len({n.chunk_id for n in h}) == len(h) for h in hits)  # no duplicates
        assert not {n.chunk_id for h in view.search(vec_b, 4) for n in h} & {c.chunk_id for c in doc_b}
        ids = np.concatenate([b.column("chunk_id").to_numpy() for b in view.iter_chunks()])
        assert len(ids) == len(set(ids)) == 24


def test_a_deleted_document_restored_with_the_same_content_is_live_again(store, corpus):
    """A -> gone -> A: the restoring shard's copies are live, the first shard's stay hidden."""
    doc, vec = corpus.doc(7)
    other, vec_o = corpus.docs(range(20, 23))
    ids = np.array([c.chunk_id for c in doc])
    v1 = publish(store, corpus, [7, 20, 21, 22]).manifest
    v2 = store.publish(next_manifest(store, v1, [], ids.tolist()), expected_current=v1.version)
    v3 = store.publish(next_manifest(store, v2, [store.write_shard(doc, vec, embedder=SPEC)]), expected_current=v2.version)
    with store.open(v2.version) as view:
        assert not view.is_live(ids).any() and view.count == 12
    with store.open(v3.version) as view:
        assert view.count == 16 == v3.stats.chunks
        assert view.is_live(ids).all()
        assert not view.is_live(ids, np.zeros(len(ids), int)).any()  # the first shard's copies
        assert view.is_live(ids, np.ones(len(ids), int)).all()  # the restoring shard's
        found, _, shards = view.search_scored(vec, 1)
        assert found[:, 0].tolist() == ids.tolist() and view.is_live(found[:, 0], shards[:, 0]).all()
        assert not view.is_live(np.array([12345]), None).any()
    # Compaction keeps the restored chunks (and drops the hidden copies); rollback and forward agree.
    compacted = store.publish(store.compact(v3.version), expected_current=v3.version)
    with store.open(compacted.version) as view:
        assert view.count == 16 and view.is_live(ids).all() and not compacted.tombstones
        assert view.search(vec, 1)[0][0].chunk_id == ids[0]
    store.rollback(v2.version)
    with store.open() as view:
        assert view.version == v2.version and not view.is_live(ids).any()
    store.rollback(compacted.version)
    with store.open() as view:
        assert view.is_live(ids).all()


def test_iter_chunks_yields_live_chunks_once(store, corpus):
    manifest, chunks, vectors = two_kinds_of_shard(store, corpus)
    gone = {chunks[0].chunk_id, chunks[500].chunk_id}
    store.publish(next_manifest(store, manifest, [], sorted(gone)), expected_current=manifest.version)
    with store.open() as view:
        batches = list(view.iter_chunks(batch_size=64))
    assert all(b.num_rows <= 64 for b in batches)
    ids = [i for b in batches for i in b.column("chunk_id").to_pylist()]
    assert sorted(ids) == sorted(c.chunk_id for c in chunks if c.chunk_id not in gone)
    assert batches[0].schema.names == ["chunk_id", "doc_id", "position", "tokens", "continuation", "text", "url"]


def test_retrieval_off_paths(store, corpus):
    empty = store.publish(next_manifest(store, None, []), expected_current=None)
    with store.open() as view:
        assert view.count == 0
        assert view.search(corpus.queries(3), 4) == [[], [], []]
    first = publish(store, corpus, range(3), parent=empty)
    with store.open() as view:
        assert view.search(corpus.queries(2), 0) == [[], []]
        assert view.search(np.empty((0, SPEC.dim), np.float32), 3) == []
        assert len(view.search(corpus.queries(1), 50)[0]) == 12  # fewer than k live chunks
    assert first.manifest.stats.chunks == 12


@pytest.mark.parametrize(
    "queries, k, exclude, message",
    [
        (np.zeros((2, 7), np.float32), 2, None, r"shape \(2, 7\)"),
        (np.zeros(32, np.float32), 2, None, "shape"),
        (np.full((1, 32), np.nan, np.float32), 2, None, "NaN"),
        (np.zeros((1, 32), np.int64), 2, None, "dtype"),
        (np.ones((2, 32), np.float32), -1, None, "k must be"),
        (np.ones((2, 32), np.float32), 2, ["a"], "one per query"),
    ],
)
def test_bad_queries_are_refused(store, corpus, queries, k, exclude, message):
    publish(store, corpus, range(2))
    with store.open() as view:
        with pytest.raises(ValueError, match=message):
            view.search(queries, k, exclude_doc_ids=exclude)
        assert len(view.search(corpus.queries(1), 2)[0]) == 2  # still usable


def test_closed_view_refuses_search(store, corpus):
    publish(store, corpus, range(2))
    view = store.open()
    view.close()
    view.close()
    with pytest.raises(StoreError, match="closed"):
        view.search(corpus.queries(1), 1)


def test_nprobe_comes_from_the_manifest(store, corpus):
    chunks, vectors = corpus.docs(range(200))
    shard = store.write_shard(chunks, vectors, embedder=SPEC)
    narrow = store.publish(next_manifest(store, None, [shard], search={"nprobe": 1}), expected_current=None)
    wide = store.publish(next_manifest(store, narrow, [], search={"nprobe": 4096}), expected_current=narrow.version)
    queries = corpus.queries(100, seed=5)
    want = exact_top_k(vectors, [c.chunk_id for c in chunks], queries, 10)

    def recall(version):
        with store.open(version) as view:
            got = view.search(queries, 10)
        return np.mean([len({n.chunk_id for n in g} & set(w)) / 10 for g, w in zip(got, want)])

    assert recall(wide.version) == 1.0
    assert recall(narrow.version) < 1.0


def test_default_sq8_codec_recall_and_compaction(store_uri, tmp_path, corpus):
    """The default policy: IVF lists hold 8-bit codes. Recall stays high; compaction keeps answers."""
    from model.store import IndexPolicy, open_store

    store = open_store(store_uri, cache_dir=tmp_path / "sq8", policy=IndexPolicy(flat_max=FLAT_MAX))
    a_chunks, a_vectors = corpus.docs(range(0, 150))
    b_chunks, b_vectors = corpus.docs(range(200, 350))
    a = store.write_shard(a_chunks, a_vectors, embedder=SPEC)
    b = store.write_shard(b_chunks, b_vectors, embedder=SPEC, lineage=a.lineage)
    assert a.factory.endswith(",SQ8") and b.factory == a.factory
    first = store.publish(next_manifest(store, None, [a, b], [a_chunks[0].chunk_id]), expected_current=None)
    chunks, vectors = a_chunks[1:] + b_chunks, np.concatenate([a_vectors[1:], b_vectors])
    queries = corpus.queries(100, seed=3)
    want = exact_top_k(vectors, [c.chunk_id for c in chunks], queries, 2)
    with store.open() as view:
        got = [[n.chunk_id for n in hits] for hits in view.search(queries, 2)]
    found = np.mean([len(set(g) & set(w)) / 2 for g, w in zip(got, want)])
    assert found >= 0.9
    compacted = store.publish(store.compact(), expected_current=first.version)
    assert len(compacted.shards) == 1 and compacted.shards[0].factory == a.factory
    with store.open() as view:
        assert [[n.chunk_id for n in hits] for hits in view.search(queries, 2)] == got
