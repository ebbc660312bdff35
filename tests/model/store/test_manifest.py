"""Manifest.next: shards and tombstones accumulate, stats and compatibility are checked."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from model.contracts.embedder import EmbedderSpec
from model.store import IncompatibleIndex, Manifest, ShardInfo, StoreError

from .conftest import SPEC, TOKENIZER


def shard(name: str, count: int = 10) -> ShardInfo:
    return ShardInfo(id=name, sha256="a" * 64, count=count, factory="IDMap2,Flat", bytes=100)


def make(parent, shards, tombstones=(), *, version="v000001-aa", **kw):
    return Manifest.next(
        parent,
        version=version,
        embedder=kw.pop("embedder", SPEC),
        tokenizer=kw.pop("tokenizer", TOKENIZER),
        add_shards=shards,
        tombstones=tombstones,
        ledger=None,
        documents=kw.pop("documents", 3),
        watermark=kw.pop("watermark", None),
        sources=kw.pop("sources", ["site"]),
        **kw,
    )


def test_next_accumulates_shards_tombstones_and_stats():
    first = make(None, [shard("s1", 10)])
    second = make(first, [shard("s2", 5)], [1, 2, 2, 3], version="v000002-bb", documents=4)
    assert [s.id for s in second.shards] == ["s1", "s2"]
    assert second.parent == first.version
    assert second.tombstones == [1, 2, 3]  # de-duplicated, in order
    assert second.stats.chunks == 15 - 3 and second.stats.documents == 4 and second.stats.bytes == 200
    assert [s.since for s in second.shards] == [0, 3]  # no earlier tombstone applies to the new shard
    assert second.shard_tombstones(second.shards[0]) == [1, 2, 3]
    assert second.shard_tombstones(second.shards[1]) == []


def test_watermark_keeps_newest_and_sources_merge():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    first = make(None, [shard("s1")], watermark=t0, sources=["a"])
    older = make(first, [], watermark=t0 - timedelta(days=1), sources=["b"], version="v000002-bb")
    assert older.watermark == t0
    assert older.sources == ["a", "b"]
    naive = make(None, [], watermark=datetime(2024, 5, 1))
    assert naive.watermark.tzinfo is not None


def test_other_embedder_on_top_of_shards_is_refused():
    first = make(None, [shard("s1")])
    other = EmbedderSpec(name="other", dim=SPEC.dim, sha256="f" * 64)
    with pytest.raises(IncompatibleIndex, match="parent=None"):
        make(first, [shard("s2")], embedder=other, version="v000002-bb")
    with pytest.raises(IncompatibleIndex, match="tokenizer"):
        make(first, [], tokenizer={"name": "x", "sha256": "2" * 64}, version="v000002-bb")
    # A full rebuild (no parent) with another embedder is fine.
    assert make(None, [shard("s2")], embedder=other).embedder == other


def test_same_shard_twice_is_refused():
    first = make(None, [shard("s1")])
    with pytest.raises(StoreError, match="listed twice"):
        make(first, [shard("s1")], version="v000002-bb")


def test_json_round_trip_and_dict_access():
    m = make(None, [shard("s1")], [5])
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert back.tokenizer["sha256"] == TOKENIZER["sha256"] and back.tokenizer.name == TOKENIZER["name"]
    assert back.embedder == SPEC
    assert back.stats["chunks"] == 9


def test_bad_manifest_json_is_a_store_error():
    with pytest.raises(StoreError, match="not a valid manifest"):
        Manifest.from_json(b'{"version": 3}', where="versions/x/manifest.json")
    newer = make(None, []).model_dump(mode="json") | {"format_version": 99}
    with pytest.raises(StoreError, match="upgrade retrofresh"):
        Manifest.from_json(json.dumps(newer))
