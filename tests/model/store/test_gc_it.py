"""Garbage collection keeps the newest K versions and everything CURRENT references."""

from __future__ import annotations

import pytest

from .conftest import SPEC, next_manifest, publish


def test_gc_keeps_newest_and_current(store, corpus):
    first = publish(store, corpus, range(4))
    second = publish(store, corpus, range(4, 8), parent=first.manifest)
    third = store.publish(store.compact(), expected_current=second.manifest.version)  # replaces both shards
    fourth = publish(store, corpus, range(8, 10), parent=third)
    store.rollback(first.manifest.version)  # CURRENT now names the oldest version
    deleted = store.gc(keep=1, min_age_s=0)
    kept = {m.version for m in store.versions()}
    assert kept == {first.manifest.version, fourth.manifest.version}
    assert f"versions/{second.manifest.version}/manifest.json" in deleted
    assert f"versions/{third.version}/manifest.json" in deleted
    old_delta = second.manifest.shards[1].id  # only versions 2 (and the compacted 3 replaced it) used it
    assert {f"shards/{old_delta}/{n}" for n in ("index.faiss", "chunks.arrow", "shard.json")} <= set(deleted)
    for shard in first.manifest.shards + fourth.manifest.shards:  # CURRENT's and the newest's
        assert store.backend.exists(f"shards/{shard.id}/shard.json")
        assert not any(key.startswith(f"shards/{shard.id}/") for key in deleted)
    with store.open() as view:
        assert view.count == 16
    with store.open(fourth.manifest.version) as view:
        assert view.count == 40
    assert store.gc(keep=1, min_age_s=0) == []  # nothing left to collect


def test_gc_spares_young_unreferenced_files(store, corpus):
    publish(store, corpus, range(2))
    chunks, vectors = corpus.docs(range(50, 52))
    orphan = store.write_shard(chunks, vectors, embedder=SPEC)  # an ingest that has not published yet
    assert store.gc(keep=1) == []
    deleted = store.gc(keep=1, min_age_s=0)
    assert sorted(deleted) == sorted(f"shards/{orphan.id}/{n}" for n in ("chunks.arrow", "index.faiss", "shard.json"))


def test_gc_keeps_ledgers_that_kept_versions_reference(store, corpus):
    import pyarrow as pa

    first = publish(store, corpus, range(2))
    ledger = store.write_ledger("v000002-abcd", pa.table({"doc_id": ["a"], "url": ["u"], "chunk_ids": [[1, 2]]}))
    draft = next_manifest(store, first.manifest, [], ledger=ledger, version="v000002-abcd")
    store.publish(draft, expected_current=first.manifest.version)
    compacted = store.publish(store.compact(), expected_current=draft.version)
    assert compacted.ledger == ledger  # the compacted version shares its parent's ledger
    store.gc(keep=1, min_age_s=0)
    assert store.read_ledger(compacted.version).column("doc_id").to_pylist() == ["a"]


def test_gc_needs_keep_of_at_least_one(store):
    with pytest.raises(ValueError, match="keep must be at least 1"):
        store.gc(keep=0)


def test_gc_lists_and_removes_stale_temp_files_a_cut_short_write_left(store, corpus):
    """A crash or a full disk between a write and its rename leaves ``.tmp-*`` files; gc collects the old ones."""
    import os
    import time

    from model.store import layout

    if store.backend.local_path(layout.CURRENT) is None:
        pytest.skip("only a local store writes .tmp-* files")
    first = publish(store, corpus, range(2))
    current_bytes = store.backend.read_bytes(layout.CURRENT)
    root = store.backend.local_path("")
    stale = ["leases/.tmp-crashed", ".tmp-current", f"versions/{first.manifest.version}/.tmp-manifest",
             f"shards/{first.manifest.shards[0].id}/.tmp-index"]  # the last beside a referenced shard
    hour_ago = time.time() - 7200
    for key in stale:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"half a record")
        os.utime(root / key, (hour_ago, hour_ago))
    (root / "leases/.tmp-in-flight").write_bytes(b"being written now")  # young: a write in progress

    listed = store.gc(keep=1, dry_run=True)
    assert sorted(listed) == sorted(stale) and all((root / key).exists() for key in stale)
    assert sorted(store.gc(keep=1)) == sorted(stale)
    assert not any((root / key).exists() for key in stale) and (root / "leases/.tmp-in-flight").exists()
    assert store.backend.read_bytes(layout.CURRENT) == current_bytes
    with store.open() as view:
        assert view.count == len(first.chunks)
