"""Compaction merges shards, drops tombstoned chunks, and answers exactly as before."""

from __future__ import annotations

import numpy as np

from .conftest import FLAT_MAX, SPEC, next_manifest


def answers(store, version, queries, k=8):
    with store.open(version) as view:
        return [[(n.chunk_id, round(n.score, 5)) for n in hits] for hits in view.search(queries, k)]


def build_history(store, corpus):
    """Three flat delta shards and two IVF shards of one lineage, with deletions in between."""
    c0, v0 = corpus.docs(range(0, 120))
    base = store.write_shard(c0, v0, embedder=SPEC)  # 480 chunks: IVF, new lineage
    m = store.publish(next_manifest(store, None, [base], search={"nprobe": 8}), expected_current=None)
    assert m.lineage == base.lineage
    c1, v1 = corpus.docs(range(200, 320))
    big = store.write_shard(c1, v1, embedder=SPEC, lineage=m.lineage)
    m = store.publish(next_manifest(store, m, [big], [c.chunk_id for c in c0[:40]]), expected_current=m.version)
    previous = []
    for start in (400, 420, 440):
        cs, vs = corpus.docs(range(start, start + 10))
        delta = store.write_shard(cs, vs, embedder=SPEC)
        gone = [c.chunk_id for c in c1[(start - 400) : (start - 400) + 6]] + [c.chunk_id for c in previous[:2]]
        m = store.publish(next_manifest(store, m, [delta], gone), expected_current=m.version)
        previous = cs
    return m


def test_compaction_gives_the_same_answers(store, corpus):
    before = build_history(store, corpus)
    assert len(before.shards) == 5 and before.tombstones
    queries = corpus.queries(60)
    want = answers(store, before.version, queries)
    compacted = store.compact()
    assert compacted.parent == before.version and compacted.tombstones == []
    kinds = sorted(s.factory.split(",")[0][:3] for s in compacted.shards)
    assert kinds == ["IDM", "IVF"]  # one merged IVF shard (the lineage), one rebuilt flat shard
    assert compacted.stats.chunks == before.stats.chunks
    assert store.current() == before.version  # unpublished until the caller publishes
    store.publish(compacted, expected_current=before.version)
    assert answers(store, compacted.version, queries) == want
    with store.open() as view:
        assert view.count == before.stats.chunks
        ids = [i for b in view.iter_chunks() for i in b.column("chunk_id").to_pylist()]
    assert not set(ids) & set(before.tombstones)
    # Compacting again has nothing to drop: the same shards are reused, nothing is written.
    shards_before = {o.key for o in store.backend.list("shards/")}
    again = store.compact()
    assert {s.id for s in again.shards} == {s.id for s in compacted.shards}
    assert {o.key for o in store.backend.list("shards/")} == shards_before


def test_flat_shards_past_the_threshold_become_ivf(store, corpus):
    m = None
    all_chunks, all_vectors = [], []
    for start in range(0, 120, 30):  # four flat shards of 120 chunks: 480 >= FLAT_MAX together
        cs, vs = corpus.docs(range(start, start + 30))
        shard = store.write_shard(cs, vs, embedder=SPEC)
        m = store.publish(next_manifest(store, m, [shard], search={"nprobe": 4096}), expected_current=m.version if m else None)
        all_chunks += cs
        all_vectors.append(vs)
    assert all(s.factory == "IDMap2,Flat" for s in m.shards) and m.stats.chunks >= FLAT_MAX
    queries = corpus.queries(30)
    want = answers(store, m.version, queries)
    compacted = store.publish(store.compact(), expected_current=m.version)
    assert len(compacted.shards) == 1 and compacted.shards[0].factory.startswith("IVF")
    assert answers(store, compacted.version, queries) == want  # every list probed: exact


def test_compaction_drops_a_fully_deleted_shard(store, corpus):
    cs, vs = corpus.docs(range(5))
    first = store.publish(next_manifest(store, None, [store.write_shard(cs, vs, embedder=SPEC)]), expected_current=None)
    ds, dv = corpus.docs(range(10, 12))
    second = store.publish(next_manifest(store, first, [store.write_shard(ds, dv, embedder=SPEC)], [c.chunk_id for c in cs]),
                           expected_current=first.version)
    compacted = store.compact()
    assert compacted.stats.chunks == 8 == sum(s.count for s in compacted.shards)
    store.publish(compacted, expected_current=second.version)
    with store.open() as view:
        assert {n.doc_id for n in view.search(np.concatenate([vs, dv]), 3)[0]} <= {c.doc_id for c in ds}
