"""Writing shards: files, index choice by size, lineages, and every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from model.store import AlreadyExists, CHUNKS_SCHEMA, StoreError
from model.store.checksums import sha256_bytes

from .conftest import FLAT_MAX, SPEC


def test_shard_files_and_checksums(store, corpus):
    chunks, vectors = corpus.docs(range(5))
    info = store.write_shard(chunks, vectors, embedder=SPEC)
    assert info.count == 20 and info.factory == "IDMap2,Flat" and info.bytes > 0
    meta_bytes = store.backend.read_bytes(f"shards/{info.id}/shard.json")
    assert sha256_bytes(meta_bytes) == info.sha256
    meta = json.loads(meta_bytes)
    assert set(meta["files"]) == {"index.faiss", "chunks.arrow"}
    for name, entry in meta["files"].items():
        assert sha256_bytes(store.backend.read_bytes(f"shards/{info.id}/{name}")) == entry["sha256"]
    assert meta["dim"] == SPEC.dim and meta["embedder"]["name"] == SPEC.name


def test_written_once_never_changed(store, corpus):
    chunks, vectors = corpus.docs(range(2))
    info = store.write_shard(chunks, vectors, embedder=SPEC)
    key = f"shards/{info.id}/index.faiss"
    before = store.backend.read_bytes(key)
    with pytest.raises(AlreadyExists, match="never overwritten"):
        store.backend.put_bytes(key, b"something else")
    store.backend.put_bytes(key, before)  # the same bytes: an idempotent retry
    assert store.backend.read_bytes(key) == before


def test_index_type_follows_size_and_lineage_is_shared(store, corpus):
    small_chunks, small_vectors = corpus.docs(range(10))
    assert store.write_shard(small_chunks, small_vectors, embedder=SPEC).factory == "IDMap2,Flat"
    big_chunks, big_vectors = corpus.docs(range(100, 100 + FLAT_MAX // 4))
    first = store.write_shard(big_chunks, big_vectors, embedder=SPEC)
    assert first.factory.startswith("IVF") and first.lineage
    assert store.backend.exists(f"trained/{first.lineage}.faiss")
    more_chunks, more_vectors = corpus.docs(range(300, 300 + FLAT_MAX // 4))
    second = store.write_shard(more_chunks, more_vectors, embedder=SPEC, lineage=first.lineage)
    assert second.lineage == first.lineage and second.factory == first.factory
    assert [o.key for o in store.backend.list("trained/")] == [f"trained/{first.lineage}.faiss"]


def test_train_lineage_explicitly(store, corpus):
    _, sample = corpus.docs(range(200))
    lineage = store.train_lineage(sample, embedder=SPEC, lineage="L-main", expected_count=100_000)
    assert lineage == "L-main"
    chunks, vectors = corpus.docs(range(500, 500 + FLAT_MAX // 4))
    info = store.write_shard(chunks, vectors, embedder=SPEC, lineage=lineage)
    assert info.lineage == "L-main" and info.factory == "IVF20,Flat"  # nlist capped at 800 samples // 39


def test_table_input(store, corpus):
    chunks, vectors = corpus.docs(range(3))
    table = pa.table({name: [getattr(c, name) for c in chunks] for name in CHUNKS_SCHEMA.names})
    info = store.write_shard(table.append_column("extra", pa.array([1] * 12)), vectors, embedder=SPEC)
    assert info.count == 12


def _bad(corpus):
    chunks, vectors = corpus.docs(range(3))
    dup = list(chunks)
    dup[1] = dup[0]
    neg = list(chunks)
    neg[0] = neg[0].__class__(**{**neg[0].__dict__, "chunk_id": -5})
    unnormalised = vectors * 3
    nan = vectors.copy()
    nan[2, 0] = np.nan
    no_text = pa.table({n: [getattr(c, n) for c in chunks] for n in CHUNKS_SCHEMA.names if n != "text"})
    return [
        ([], vectors[:0], "no chunks"),
        (chunks, vectors[:5], "5 embeddings for 12 chunks"),
        (chunks, vectors[:, :8], r"shape \(12, 8\)"),
        (chunks, unnormalised, "L2 norm"),
        (chunks, nan, "NaN"),
        (chunks, vectors.astype(np.int32), "dtype"),
        (dup, vectors, "more than once"),
        (neg, vectors, "negative"),
        (no_text, vectors, r"lacks column\(s\) \['text'\]"),
        ([{"chunk_id": 1}], vectors[:1], "Chunk objects"),
        (chunks, vectors.tolist(), "numpy array"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_input_is_refused_and_nothing_is_written(store, corpus, case):
    chunks, vectors, message = _bad(corpus)[case]
    with pytest.raises(StoreError, match=message):
        store.write_shard(chunks, vectors, embedder=SPEC)
    assert store.backend.list("shards/") == []
