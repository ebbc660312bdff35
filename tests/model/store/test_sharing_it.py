"""Versions open at once share the shards they both list; only new shards are read and verified."""

from __future__ import annotations

import numpy as np
import pytest

from model.store import ChecksumMismatch, layout, open_store
from model.store.checksums import Verifier

from .conftest import SPEC, next_manifest, publish
from .legacy import as_parquet_shard
from .test_integrity_it import corrupt
from tests.fixtures.numerics import assert_close


class CountingVerifier(Verifier):
    """Counts the files it is asked to check (a shared shard must not be among them)."""

    def __init__(self):
        super().__init__()
        self.checked: list[str] = []

    def verify(self, path, expected, *, what):
        self.checked.append(what)
        super().verify(path, expected, what=what)


def ids_of(hits) -> list[list[int]]:
    return [[n.chunk_id for n in h] for h in hits]


def test_a_delta_version_shares_the_shards_already_open(store, corpus):
    first = publish(store, corpus, range(20))
    store.cache.verifier = verifier = CountingVerifier()
    old_shard = first.manifest.shards[0].id
    gone = first.chunks[0]
    second = publish(store, corpus, range(20, 30), parent=first.manifest, tombstones=[gone.chunk_id])
    verifier.checked.clear()  # publishing verifies every file; opening must not
    with store.open(first.manifest.version) as old:
        verifier.checked.clear()
        with store.open(second.manifest.version) as new:
            assert new.shared == 1 and len(store.pool) == 2
            assert old._shards[0].data is new._shards[0].data  # one copy, mapped once
            assert not any(old_shard in what for what in verifier.checked)  # not re-verified
            assert any(second.manifest.shards[1].id in what for what in verifier.checked)  # the delta is
            # The tombstone filter is the version's own: the old version still returns the chunk.
            query = first.vectors[:1]
            assert ids_of(old.search(query, 1)) == [[gone.chunk_id]]
            assert gone.chunk_id not in ids_of(new.search(query, 5))[0]
            assert new.count == 30 * 4 - 1 and old.count == 20 * 4
        # The old version keeps its shard when the new one closes, and searches as before.
        assert len(store.pool) == 1 and ids_of(old.search(query, 1)) == [[gone.chunk_id]]
    assert len(store.pool) == 0  # the last version out releases the shard


def test_a_closed_version_releases_only_what_no_other_uses(store, corpus):
    first = publish(store, corpus, range(10))
    second = publish(store, corpus, range(10, 20), parent=first.manifest)
    old = store.open(first.manifest.version)
    new = store.open(second.manifest.version)
    want = ids_of(new.search(corpus.queries(8), 3))
    old.close()
    old.close()  # idempotent: releases once
    assert len(store.pool) == 2
    assert ids_of(new.search(corpus.queries(8), 3)) == want
    new.close()
    assert len(store.pool) == 0


def replace_damaged(path) -> None:
    """Rewrite a file with one byte flipped as a new file renamed over it (as copy and sync tools do)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(bytes(data))
    tmp.replace(path)


@pytest.mark.parametrize("how", ["replaced", "in place"])
def test_a_shared_shard_damaged_on_disk_is_verified_again(store_uri, tmp_path, corpus, how):
    store = open_store(store_uri, cache_dir=tmp_path / "cache")
    first = publish(store, corpus, range(10))
    second = publish(store, corpus, range(10, 20), parent=first.manifest)
    shared = first.manifest.shards[0].id
    with store.open(first.manifest.version) as old:
        want = ids_of(old.search(corpus.queries(4), 2))
        local = store.backend.local_path(layout.shard_key(shared, layout.INDEX_FILE))
        if local is not None:
            # The store's own file: verified again, refused, and the refused version holds nothing.
            replace_damaged(local) if how == "replaced" else corrupt(store, layout.shard_key(shared, layout.INDEX_FILE))
            with pytest.raises(ChecksumMismatch, match=f"shard {shared} file index.faiss"):
                store.open(second.manifest.version)
            assert len(store.pool) == 1
        else:
            # A remote store's damaged cached copy is fetched again and the new version opens on it.
            cached = layout.cache_shard_dir(tmp_path / "cache", shared) / layout.INDEX_FILE
            replace_damaged(cached) if how == "replaced" else cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
            with store.open(second.manifest.version) as new:
                assert new.shared == 0 and new.count == 80
                assert ids_of(new.search(first.vectors[:4], 1)) == [[c.chunk_id] for c in first.chunks[:4]]
        # The open version keeps serving. A replaced file leaves its mapping as verified; bytes
        # changed in place reach every mapping of the file (why shard files are create-only).
        got = ids_of(old.search(corpus.queries(4), 2))
        assert got == want if how == "replaced" else all(len(hits) == 2 for hits in got)


def test_parquet_layout_shards_open_search_and_compact_into_arrow(store, corpus):
    chunks, vectors = corpus.docs(range(30))
    new_layout = store.write_shard(chunks, vectors, embedder=SPEC)
    old_layout = as_parquet_shard(store, new_layout)
    manifest = store.publish(next_manifest(store, None, [old_layout], search={"nprobe": 4096}), expected_current=None)
    queries = corpus.queries(12)
    with store.open() as view:
        assert view.count == len(chunks)
        got = view.search(queries, 3)
        hit = got[0][0]
        want_row = next(c for c in chunks if c.chunk_id == hit.chunk_id)
        assert (hit.text, hit.tokens, hit.continuation, hit.url) == (want_row.text, want_row.tokens, want_row.continuation, want_row.url)
    compacted = store.compact(manifest.version)
    assert [s.id for s in compacted.shards] != [old_layout.id]  # rewritten even with nothing to drop
    meta = store.backend.read_bytes(layout.shard_key(compacted.shards[0].id, layout.SHARD_META_FILE))
    assert b"chunks.arrow" in meta and b"chunks.parquet" not in meta
    store.publish(compacted, expected_current=manifest.version)
    with store.open() as view:
        assert ids_of(view.search(queries, 3)) == ids_of(got)


def test_arrow_rows_are_memory_mapped_not_read(store, corpus):
    publish(store, corpus, range(30))
    with store.open() as view:
        table = view._shards[0].table
        column = table.column("text").chunk(0)
        # Zero-copy: the column's buffer lies inside the file's mapping, not in freshly allocated memory.
        assert column.buffers()[2].is_cpu and not column.buffers()[2].is_mutable
        assert np.array_equal(view._shards[0].ids, np.sort(view._shards[0].ids))


def test_ivf_shards_of_one_lineage_share_one_coarse_quantizer(tmp_path):
    import faiss

    from model.store import IndexPolicy
    from model.store.faiss_index import centroids, coarse_quantizer
    from model.store.pool import QuantizerPool

    from .conftest import Corpus

    store = open_store(tmp_path / "store", cache_dir=tmp_path / "cache", policy=IndexPolicy(flat_max=400, codec="SQ8", nlist=32))
    corpus = Corpus(clusters=30, seed=4)
    chunks, vectors = corpus.docs(range(600))
    lineage = store.train_lineage(vectors, embedder=SPEC)
    infos = [store.write_shard([chunks[i] for i in part], vectors[part], embedder=SPEC, lineage=lineage)
             for part in np.array_split(np.arange(len(chunks)), 3)]
    store.publish(next_manifest(store, None, infos, search={"nprobe": 4}), expected_current=None)
    queries = corpus.queries(20)
    unshared = open_store(tmp_path / "store", cache_dir=tmp_path / "cache2")
    unshared.pool.quantizers = None  # each shard keeps the quantizer its file holds
    with unshared.open() as reference:
        want = reference.search_scored(queries, 3)
    with store.open() as view:
        held = [s.data for s in view._shards]
        assert all(d.quantizer is held[0].quantizer for d in held)  # one quantizer in memory...
        assert all(int(coarse_quantizer(d.index).this) == int(held[0].quantizer.this) for d in held)  # ...searched through
        got = view.search_scored(queries, 3)
        assert np.array_equal(got[0], want[0])
        assert_close(got[1], want[1], magnitude=1.0)
        with store.open() as second:  # another version of the same shards shares them all
            assert second._shards[0].data.quantizer is held[0].quantizer
    assert len(store.pool.quantizers._held) == 0  # freed with the last shard using it
    assert all(d.index is None and d.quantizer is None for d in held)
    # A shard claiming the lineage but holding other centroids keeps its own.
    pool = QuantizerPool()
    first = faiss.read_index(str(store.backend.local_path(layout.shard_key(infos[0].id, layout.INDEX_FILE))))
    kept, restore = pool.share(lineage, first)
    assert kept is not None
    other = faiss.index_factory(SPEC.dim, "IVF32,SQ8", faiss.METRIC_INNER_PRODUCT)
    other.train(corpus.queries(2000, seed=11))
    assert pool.share(lineage, other) == (None, None) and centroids(coarse_quantizer(other)).shape == (32, SPEC.dim)
    restore()


def test_live_count_counts_a_chunk_held_by_two_shards_once_and_remembers_the_pair(store, corpus, monkeypatch):
    from model.store import pool as pool_module

    first = publish(store, corpus, range(10))  # 40 chunks
    # Documents 5-9 again, unchanged: the same chunk ids, now in two shards; one of them tombstoned,
    # and one chunk only the first shard holds.
    gone = [first.chunks[20].chunk_id, first.chunks[0].chunk_id]
    second = publish(store, corpus, range(5, 15), parent=first.manifest, tombstones=gone)
    calls = []
    real = pool_module.shared_ids
    monkeypatch.setattr(pool_module, "shared_ids", lambda a, b: calls.append((a.id, b.id)) or real(a, b))
    with store.open(second.manifest.version) as view:
        distinct = sum(batch.num_rows for batch in view.iter_chunks())
        assert view.count == distinct == 60 - 1  # docs 0-14 once each, less chunk 0 (chunk 20 lives on in the new shard)
        assert len(calls) == 1
        third = publish(store, corpus, range(15, 17), parent=second.manifest)
        with store.open(third.manifest.version) as newer:
            assert newer.count == 59 + 8
            assert len(calls) == 3  # the new shard against each of the two; the pair already open is remembered
    assert not store.pool._overlaps  # forgotten with the shards
