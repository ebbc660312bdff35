"""Files that do not match their sha256, other embedders, missing shards: refused, clearly."""

from __future__ import annotations

import dataclasses
import os

import pytest

from model.store import ChecksumMismatch, IncompatibleIndex, StoreError, open_store

from .conftest import SPEC, next_manifest, publish


def corrupt(store, key: str) -> None:
    """Flip one byte of a stored object in place (a directory file, or a GCS object rewritten)."""
    data = bytearray(store.backend.read_bytes(key))
    data[len(data) // 2] ^= 0xFF
    local = store.backend.local_path(key)
    if local is not None:
        local.write_bytes(bytes(data))
    else:
        store.backend.bucket.blob(store.backend._name(key)).upload_from_string(bytes(data))


@pytest.mark.parametrize("name", ["index.faiss", "chunks.arrow", "shard.json"])
def test_corrupt_shard_file_is_refused_naming_it(store, store_uri, corpus, tmp_path, name):
    first = publish(store, corpus, range(4))
    second = publish(store, corpus, range(4, 8), parent=first.manifest)
    bad = second.manifest.shards[1].id
    corrupt(store, f"shards/{bad}/{name}")
    fresh = open_store(store_uri, cache_dir=tmp_path / "fresh-cache")  # nothing cached yet
    with pytest.raises(ChecksumMismatch, match=f"shard {bad} file {name}"):
        fresh.open()
    with pytest.raises(ChecksumMismatch, match=bad):
        fresh.verify(second.manifest.version)
    # The older version, which does not use that shard, still opens.
    with fresh.open(first.manifest.version) as view:
        assert view.count == 16
    # Publishing anything that references the shard is refused, CURRENT untouched.
    with pytest.raises(ChecksumMismatch):
        fresh.rollback(second.manifest.version)
    draft = next_manifest(fresh, second.manifest, [])
    with pytest.raises(ChecksumMismatch):
        fresh.publish(draft, expected_current=second.manifest.version)
    assert fresh.current() == second.manifest.version


def rewrite_in_place(path, data: bytes) -> None:
    """Write ``data`` into the file itself (same inode) and put its old mtime back, as ``cp -p`` does."""
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


@pytest.mark.parametrize("name", ["index.faiss", "chunks.arrow"])
def test_a_shard_restored_in_place_is_accepted_at_once(corpus, tmp_path, name):
    # A server's store is one object for its whole life: what it once found corrupt must not stay
    # refused after the file is restored, nor what it once found sound be vouched for after a
    # rewrite, however the file was put back (same inode, same size, same mtime). A local store:
    # a GCS store's files are cached copies, downloaded again when damaged.
    store = open_store(tmp_path / "store", cache_dir=tmp_path / "cache")
    published = publish(store, corpus, range(4))
    path = store.backend.local_path(f"shards/{published.manifest.shards[0].id}/{name}")
    good = path.read_bytes()
    store.verify(published.manifest.version)
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    rewrite_in_place(path, bytes(damaged))
    with pytest.raises(ChecksumMismatch, match=name):
        store.verify(published.manifest.version)
    rewrite_in_place(path, good)
    store.verify(published.manifest.version)
    with store.open() as view:
        assert view.count == 16


@pytest.mark.integration
def test_gcs_cache_copy_is_verified_and_refetched(gcs_bucket, corpus, tmp_path):
    store = open_store(f"gs://{gcs_bucket}/s", cache_dir=tmp_path / "cache")
    first = publish(store, corpus, range(4))
    with store.open() as view:
        want = [n.chunk_id for n in view.search(first.vectors[:1], 3)[0]]
    cached = tmp_path / "cache" / "shards" / first.manifest.shards[0].id / "index.faiss"
    assert cached.is_file()
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")  # a damaged cached copy
    again = open_store(f"gs://{gcs_bucket}/s", cache_dir=tmp_path / "cache")
    with again.open() as view:
        assert [n.chunk_id for n in view.search(first.vectors[:1], 3)[0]] == want


def test_other_embedder_or_dim_is_refused_on_open(store, corpus):
    publish(store, corpus, range(3))
    other_weights = dataclasses.replace(SPEC, sha256="e" * 64)
    other_dim = dataclasses.replace(SPEC, dim=64)
    with pytest.raises(IncompatibleIndex, match="embedded with test-clusters"):
        store.open(embedder=other_weights)
    with pytest.raises(IncompatibleIndex, match="dim 64"):
        store.open(embedder=other_dim)
    with store.open(embedder=SPEC) as view:
        assert view.count == 12


def test_a_version_cannot_mix_embedders(store, corpus):
    chunks, vectors = corpus.docs(range(3))
    other = dataclasses.replace(SPEC, name="other-model")
    shard = store.write_shard(chunks, vectors, embedder=other)
    draft = next_manifest(store, None, [shard])  # claims SPEC made every key
    with pytest.raises(IncompatibleIndex, match=f"shard {shard.id} was embedded with other-model"):
        store.publish(draft, expected_current=None)
    assert store.current() is None


def test_missing_shard_is_a_clear_error(store, corpus):
    first = publish(store, corpus, range(3))
    shard = first.manifest.shards[0].id
    for name in ("shard.json", "index.faiss", "chunks.arrow"):
        store.backend.delete(f"shards/{shard}/{name}")
    with pytest.raises(StoreError, match=f"shard {shard} is missing"):
        store.open()


def test_missing_version_is_a_clear_error(store, corpus):
    publish(store, corpus, range(2))
    with pytest.raises(StoreError, match="version v000009-aaaa does not exist .*retrofresh index versions"):
        store.open("v000009-aaaa")
    with pytest.raises(StoreError, match="version id"):
        store.manifest("../../etc")
