"""The cache of GCS shards: bounded by bytes, least recently used out first, never a shard in use."""

from __future__ import annotations

import pytest

from model.store import CacheTooSmall, open_store

from .conftest import SPEC, next_manifest

pytestmark = pytest.mark.integration


def cached(cache_dir) -> set[str]:
    base = cache_dir / "shards"
    return {p.name for p in base.iterdir()} if base.is_dir() else set()


@pytest.fixture
def three_versions(gcs_bucket, corpus, tmp_path):
    """Three full rebuilds published in the emulator, each one shard of the same size, sharing nothing."""
    writer = open_store(f"gs://{gcs_bucket}/s", cache_dir=tmp_path / "writer-cache")
    versions = []
    for i in range(3):
        chunks, vectors = corpus.docs(range(10 * i, 10 * i + 10))
        shard = writer.write_shard(chunks, vectors, embedder=SPEC)
        versions.append(writer.publish(next_manifest(writer, None, [shard]), expected_current=writer.current(), check_parent=False))
    return f"gs://{gcs_bucket}/s", versions, [v.shards[0].id for v in versions], max(v.shards[0].bytes for v in versions)


def opened(store, manifest) -> None:
    with store.open(manifest.version) as view:
        assert view.count == 40


def test_least_recently_used_shards_are_evicted_first(three_versions, tmp_path):
    uri, versions, shard, size = three_versions
    cache = tmp_path / "reader-cache"
    reader = open_store(uri, cache_dir=cache, cache_max_bytes=int(size * 2.5))  # room for two shards
    opened(reader, versions[0])
    opened(reader, versions[1])
    assert cached(cache) == {shard[0], shard[1]} and reader.cache.evicted == 0
    opened(reader, versions[2])
    assert cached(cache) == {shard[1], shard[2]}  # 0 was used least recently
    with reader.open(versions[1].version):  # a hit: 1 is now the most recent (and in use)
        opened(reader, versions[0])  # downloads 0 again: 2 goes
    assert cached(cache) == {shard[0], shard[1]} and reader.cache.evicted == 2
    assert reader.cache.cached_bytes <= size * 2.5
    # The order survives a restart (folder mtimes): a new process evicts the same way.
    restarted = open_store(uri, cache_dir=cache, cache_max_bytes=int(size * 2.5))
    opened(restarted, versions[2])
    assert cached(cache) == {shard[0], shard[2]}  # 1 was older than 0's re-download


def test_shards_of_open_versions_are_never_evicted(three_versions, tmp_path):
    uri, versions, shard, size = three_versions
    cache = tmp_path / "reader-cache"
    reader = open_store(uri, cache_dir=cache, cache_max_bytes=int(size * 1.5))  # one shard
    with reader.open(versions[0].version) as served, reader.open(versions[1].version) as loading:
        # Over the limit, but one version is served and the other loaded: both stay.
        assert cached(cache) == {shard[0], shard[1]} and reader.cache.evicted == 0
        assert served.search(corpus_queries(), 1) and loading.search(corpus_queries(), 1)
    opened(reader, versions[2])  # nothing open any more: back under the limit
    assert cached(cache) == {shard[2]} and reader.cache.evicted == 2


def corpus_queries():
    from .conftest import Corpus

    return Corpus().queries(2)


def test_a_cache_smaller_than_one_version_is_a_clear_error(three_versions, tmp_path):
    uri, versions, shard, size = three_versions
    cache = tmp_path / "small-cache"
    reader = open_store(uri, cache_dir=cache, cache_max_bytes=size // 2)
    with pytest.raises(CacheTooSmall, match="RETROFRESH_CACHE_MAX_BYTES.; raise the limit to at least"):
        reader.open(versions[0].version)
    assert cached(cache) == set()  # refused before downloading anything
    assert len(reader.pool) == 0


def test_the_server_refuses_a_version_over_the_cache_limit_and_keeps_serving(gcs_bucket, tmp_path, query_embedder):
    from model.contracts.tokenizer import RetroTokenizer
    from model.server.runtime import LockedEmbedder
    from model.server.swap import Compatibility, IndexHolder
    from model.store.retriever import StoreRetriever
    from tests.fixtures.server import LabelledStore

    tokenizer = RetroTokenizer.load()
    labelled = LabelledStore(f"gs://{gcs_bucket}/served", query_embedder, tokenizer, tmp_path / "writer-cache")
    a = labelled.publish("A")
    a_bytes = sum(s.bytes for s in labelled.store.manifest(a).shards)
    reader = open_store(labelled.uri, cache_dir=tmp_path / "server-cache", cache_max_bytes=int(a_bytes * 1.5))
    embedder = LockedEmbedder(query_embedder)
    holder = IndexHolder(reader, embedder, Compatibility(embedder.spec, tokenizer.sha256, 64), make_retriever=StoreRetriever)
    assert holder.check().version == a
    b = labelled.publish("B")  # lists A's shard and its own: more than the limit
    result = holder.check()
    assert (result.version, result.swapped, result.error.kind) == (a, False, "cache")
    assert "RETROFRESH_CACHE_MAX_BYTES" in result.error.error
    assert holder.check().error == result.error  # not retried (nor re-downloaded) by each periodic check
    assert not (tmp_path / "server-cache" / "shards" / labelled.store.manifest(b).shards[-1].id).exists()
    with holder.pin() as loaded:
        assert loaded.version == a and loaded.retriever.retrieve(["the mayor"], 1)[0]
    holder.close()
