"""IndexHolder and LoadedVersion without HTTP: pinning, retiring, refusing, retrying."""

from __future__ import annotations

import dataclasses

import pytest

from model.server.runtime import LockedEmbedder
from model.server.swap import Compatibility, IndexHolder
from model.store.retriever import StoreRetriever
from tests.fixtures.server import label_of


@pytest.fixture
def holder_for(query_embedder):
    def make(store, **changes) -> IndexHolder:
        embedder = LockedEmbedder(query_embedder)
        compatibility = Compatibility(embedder=embedder.spec, tokenizer_sha256=store.tokenizer.sha256, chunk_tokens=64)
        failures = []
        holder = IndexHolder(
            store.store, embedder, dataclasses.replace(compatibility, **changes), make_retriever=StoreRetriever, on_failure=failures.append
        )
        holder.failures = failures
        return holder

    return make


def test_no_version_means_retrieval_off(labelled_store, holder_for):
    holder = holder_for(labelled_store)
    result = holder.check()
    assert (result.current, result.version, result.swapped, result.error) == (None, None, False, None)
    with holder.pin() as loaded:
        assert loaded is None


def test_a_swapped_out_version_closes_when_its_last_request_ends(labelled_store, holder_for):
    holder = holder_for(labelled_store)
    a = labelled_store.publish("A")
    assert holder.check().swapped
    with holder.pin() as first:
        with holder.pin() as second:
            assert first is second and first.version == a and first.refs == 2
            b = labelled_store.publish("B")
            assert holder.check().version == b
            assert holder.current.version == b
            assert not first.closed  # two requests still hold A
            hits = first.retriever.retrieve(["the mayor"], 1)  # and can still search it
            assert hits[0][0].version == a
        assert not first.closed and first.refs == 1
    assert first.closed and first.refs == 0
    with holder.pin() as now:
        assert now.version == b and not now.closed
    holder.close()
    assert now.closed


def test_a_refused_version_is_retried_only_when_forced(labelled_store, holder_for):
    holder = holder_for(labelled_store)
    a = labelled_store.publish("A")
    holder.check()
    bad = labelled_store.publish("B")
    labelled_store.damage(bad)
    first = holder.check()
    assert (first.version, first.swapped, first.error.kind) == (a, False, "checksum")
    again = holder.check()  # the periodic check does not hash a known-bad version again
    assert again.error == first.error and len(holder.failures) == 1
    forced = holder.check(force=True)
    assert forced.error.kind == "checksum" and len(holder.failures) == 2
    assert holder.current.version == a


@pytest.mark.parametrize(
    "changes, needle",
    [({"tokenizer_sha256": "f" * 64}, "tokenizer sha256"), ({"chunk_tokens": 32}, "64-token chunks, the checkpoint uses 32")],
)
def test_versions_chunked_unlike_the_checkpoint_are_refused(labelled_store, holder_for, changes, needle):
    labelled_store.publish("A")
    holder = holder_for(labelled_store, **changes)
    result = holder.check()
    assert result.version is None and result.error.kind == "incompatible" and needle in result.error.error
    assert holder.last_error == result.error


def test_a_store_that_cannot_be_read_is_reported(holder_for, labelled_store):
    labelled_store.publish("A")
    holder = holder_for(labelled_store)
    holder.check()
    current = labelled_store.store.backend.local_path("CURRENT")
    current.write_text("not a version id\n")
    result = holder.check()
    assert result.error.kind == "store" and "not a version id" in result.error.error
    assert holder.current is not None  # still serving what it had


def test_a_swap_loads_only_the_new_shard(labelled_store, holder_for):
    holder = holder_for(labelled_store)
    a = labelled_store.publish("A")
    holder.check()
    b = labelled_store.publish("B")  # A's shard stays listed (all its chunks tombstoned)
    assert holder.check().swapped
    with holder.pin() as loaded:
        assert loaded.version == b and loaded.view.shared == 1
        hits = loaded.retriever.retrieve(["the mayor"], 2)[0]
        assert len(hits) == 2 and {label_of(h.url) for h in hits} == {"B"}  # A's chunks: hidden by B's filter
    assert labelled_store.store.pool.held_ids() == {s.id for s in labelled_store.store.manifest(b).shards}
    assert labelled_store.store.manifest(b).shards[0] == labelled_store.store.manifest(a).shards[0]


def test_a_shared_shard_damaged_between_swaps_is_refused_and_the_old_version_serves(labelled_store, holder_for):
    holder = holder_for(labelled_store)
    a = labelled_store.publish("A")
    holder.check()
    b = labelled_store.publish("B")
    labelled_store.damage(b, "chunks.arrow", shard=0)  # A's shard, which the served version maps
    result = holder.check()
    assert (result.version, result.swapped, result.error.kind) == (a, False, "checksum")
    assert "chunks.arrow" in result.error.error and holder.last_error == result.error
    with holder.pin() as loaded:
        assert loaded.version == a
        assert len(loaded.retriever.retrieve(["the mayor"], 2)[0]) == 2  # still serving


def test_a_parquet_layout_version_is_served(labelled_store, holder_for):
    from model.store import Manifest

    from tests.model.store.legacy import as_parquet_shard

    a = labelled_store.publish("A")
    store = labelled_store.store
    manifest = store.manifest(a)
    old = as_parquet_shard(store, manifest.shards[0])
    legacy = Manifest.next(None, version=store.new_version_id(), embedder=manifest.embedder, tokenizer=manifest.tokenizer,
                           add_shards=[old], tombstones=[], ledger=None, documents=manifest.stats.documents,
                           watermark=manifest.watermark, sources=manifest.sources)
    store.publish(legacy, expected_current=a, check_parent=False)
    holder = holder_for(labelled_store)
    assert holder.check().version == legacy.version
    with holder.pin() as loaded:
        hits = loaded.retriever.retrieve(["the mayor"], 2)[0]
        assert len(hits) == 2 and hits[0].tokens and hits[0].version == legacy.version
