"""Publishing, CURRENT, conflicts, races, crashes and rollback, on a directory and on GCS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from model.store import NoCurrentVersion, PublishConflict, StoreError, open_store

from .conftest import SPEC, next_manifest, publish


def test_empty_store_has_no_current(store):
    assert store.current() is None
    assert store.versions() == []
    with pytest.raises(NoCurrentVersion, match="no CURRENT version yet: publish one first"):
        store.manifest()
    with pytest.raises(NoCurrentVersion):
        store.open()


def test_publish_and_read_back(store, corpus):
    first = publish(store, corpus, range(5))
    assert store.current() == first.manifest.version
    assert store.manifest() == first.manifest
    second = publish(store, corpus, range(5, 8), parent=first.manifest)
    assert store.current() == second.manifest.version
    assert [m.version for m in store.versions()] == [first.manifest.version, second.manifest.version]
    assert second.manifest.stats.chunks == 32 and second.manifest.parent == first.manifest.version
    with store.open() as view:
        assert view.version == second.manifest.version and view.count == 32


def test_version_ids_sort_by_sequence(store, corpus):
    assert store.new_version_id().startswith("v000001-")
    first = publish(store, corpus, range(2))
    nxt = store.new_version_id()
    assert nxt.startswith("v000002-") and nxt != first.manifest.version


def test_write_manifest_is_create_only(store, corpus):
    chunks, vectors = corpus.docs(range(3))
    shard = store.write_shard(chunks, vectors, embedder=SPEC)
    draft = next_manifest(store, None, [shard], documents=3)
    store.write_manifest(draft)
    store.write_manifest(draft)  # the same content again: a harmless retry
    changed = draft.model_copy(update={"sources": ["something else"]})
    with pytest.raises(StoreError, match="already exists .* with other content"):
        store.write_manifest(changed)
    assert store.manifest(draft.version) == draft
    # A draft is not published until someone publishes it, by id.
    assert store.current() is None
    store.publish(draft.version, expected_current=None)
    assert store.current() == draft.version


def test_stale_expected_current_is_a_conflict(store, corpus):
    base = publish(store, corpus, range(3))
    chunks, vectors = corpus.docs(range(10, 12))
    a = next_manifest(store, base.manifest, [store.write_shard(chunks, vectors, embedder=SPEC)])
    chunks, vectors = corpus.docs(range(20, 22))
    b = next_manifest(store, base.manifest, [store.write_shard(chunks, vectors, embedder=SPEC)])
    store.publish(a, expected_current=base.manifest.version)
    with pytest.raises(PublishConflict, match="another writer published first") as info:
        store.publish(b, expected_current=base.manifest.version)
    assert info.value.actual == a.version and info.value.expected == base.manifest.version
    assert store.current() == a.version
    # A manifest built on another parent than the caller expects would drop changes.
    with pytest.raises(PublishConflict, match="was built on"):
        store.publish(b, expected_current=a.version)
    # The loser rebuilds on the winner and publishes: both changes are served.
    rebased = store.rebase(b)
    store.publish(rebased, expected_current=a.version)
    with store.open() as view:
        assert view.count == 12 + 8 + 8


def test_two_writers_race_exactly_one_wins(store, store_uri, corpus, tmp_path):
    base = publish(store, corpus, range(3))
    writers = 6
    drafts = []
    for w in range(writers):
        chunks, vectors = corpus.docs(range(100 + 10 * w, 102 + 10 * w))
        draft = next_manifest(store, base.manifest, [store.write_shard(chunks, vectors, embedder=SPEC)])
        store.write_manifest(draft)
        drafts.append(draft.version)
    # Each writer has its own store object (its own client and lock file handle).
    stores = [open_store(store_uri, cache_dir=tmp_path / f"cache{w}") for w in range(writers)]
    for s, d in zip(stores, drafts):
        s.verify(d)  # warm caches so the writers reach the swap at about the same time
    barrier = threading.Barrier(writers)
    outcome: dict[str, object] = {}

    def write(w: int) -> None:
        barrier.wait()
        try:
            stores[w].publish(drafts[w], expected_current=base.manifest.version)
            outcome[drafts[w]] = "won"
        except PublishConflict as exc:
            outcome[drafts[w]] = exc

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [d for d, result in outcome.items() if result == "won"]
    assert len(outcome) == writers
    assert len(winners) == 1, outcome
    assert store.current() == winners[0]
    for d, result in outcome.items():
        if d != winners[0]:
            assert isinstance(result, PublishConflict) and result.actual == winners[0]


@pytest.mark.integration
def test_gcs_swap_fails_if_the_generation_changed_after_reading(gcs_bucket, corpus, tmp_path):
    """A fixed interleaving: another writer replaces CURRENT after we read it, before we write."""
    uri = f"gs://{gcs_bucket}/store"
    ours, theirs = open_store(uri, cache_dir=tmp_path / "a"), open_store(uri, cache_dir=tmp_path / "b")
    base = publish(ours, corpus, range(2))
    chunks, vectors = corpus.docs(range(10, 12))
    draft = next_manifest(ours, base.manifest, [ours.write_shard(chunks, vectors, embedder=SPEC)])
    original = ours.backend.swap

    def swap_with_a_rival(key, data, *, matches):
        def matches_then_rival_writes(actual):
            agreed = matches(actual)  # CURRENT is still the base version here...
            theirs.backend.swap(key, b"v000099-ffff\n", matches=lambda _: True)  # ...then the rival wins
            return agreed

        return original(key, data, matches=matches_then_rival_writes)

    ours.backend.swap = swap_with_a_rival
    with pytest.raises(PublishConflict) as info:
        ours.publish(draft, expected_current=base.manifest.version)
    assert info.value.actual == "v000099-ffff"
    assert theirs.current() == "v000099-ffff"


CRASH = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from model.store import open_store, IndexPolicy
    from tests.model.store.conftest import Corpus, SPEC, next_manifest
    store = open_store({uri!r}, cache_dir={cache!r}, policy=IndexPolicy(flat_max=400))
    parent = store.manifest()
    chunks, vectors = Corpus().docs(range(50, 60))
    shard = store.write_shard(chunks, vectors, embedder=SPEC)
    draft = next_manifest(store, parent, [shard], tombstones=[int(parent.tombstones[0]) if parent.tombstones else 1])
    store.write_manifest(draft)
    print(draft.version, flush=True)
    os._exit(9)  # dies after writing shards and the manifest, before CURRENT is replaced
    """
)


def test_crash_before_current_leaves_readers_on_old_version(store, store_uri, corpus, tmp_path):
    base = publish(store, corpus, range(5))
    queries = corpus.queries(10)
    with store.open() as view:
        before = [[n.chunk_id for n in hits] for hits in view.search(queries, 3)]
    root = Path(__file__).resolve().parents[3]  # the repository, so the child imports this tree
    script = CRASH.format(root=str(root), uri=store_uri, cache=str(tmp_path / "crash-cache"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert proc.returncode == 9, proc.stderr
    draft = proc.stdout.split()[-1]
    # Readers still see the old version, whole.
    assert store.current() == base.manifest.version
    with store.open() as view:
        assert [[n.chunk_id for n in hits] for hits in view.search(queries, 3)] == before
    # The next run completes what the crashed one left.
    store.publish(draft, expected_current=base.manifest.version)
    with store.open() as view:
        assert view.version == draft and view.count == 20 + 40


def test_rollback(store, corpus):
    first = publish(store, corpus, range(4))
    second = publish(store, corpus, range(4, 6), parent=first.manifest, tombstones=[first.chunks[0].chunk_id])
    store.rollback(first.manifest.version)
    assert store.current() == first.manifest.version
    with store.open() as view:
        assert view.count == 16
        hit = view.search(first.vectors[:1], 1)[0][0]
        assert hit.chunk_id == first.chunks[0].chunk_id  # the tombstone of the newer version is gone
    with pytest.raises(PublishConflict):
        store.rollback(second.manifest.version, expected_current=second.manifest.version)
    store.rollback(second.manifest.version, expected_current=first.manifest.version)
    assert store.current() == second.manifest.version
    with pytest.raises(StoreError, match="does not exist"):
        store.rollback("v000042-abcdef")


@pytest.mark.integration
def test_missing_bucket_is_a_clear_error(gcs_bucket):
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist .*gcloud storage buckets create"):
        open_store("gs://no-such-bucket-here/index")


def test_garbage_in_current_is_a_clear_error(store, corpus):
    publish(store, corpus, range(2))
    store.backend.swap("CURRENT", b"../../etc/passwd\n", matches=lambda _: True)
    with pytest.raises(StoreError, match="not a version id"):
        store.current()


def test_local_swap_reads_and_replaces_under_the_lock(tmp_path, corpus):
    """A fixed interleaving on a directory: a rival holding the lock makes our publish wait, and
    what the rival wrote meanwhile is what our compare sees."""
    import fcntl

    from model.store import IndexPolicy

    store = open_store(tmp_path / "store", cache_dir=tmp_path / "cache", policy=IndexPolicy(flat_max=400))
    base = publish(store, corpus, range(2))
    chunks, vectors = corpus.docs(range(10, 12))
    draft = next_manifest(store, base.manifest, [store.write_shard(chunks, vectors, embedder=SPEC)])
    outcome = []
    with open(tmp_path / "store" / ".CURRENT.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        writer = threading.Thread(target=lambda: outcome.append(_publish_or_conflict(store, draft, base.manifest.version)))
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and outcome == []  # waiting for the lock
        (tmp_path / "store" / "CURRENT").write_text("v000077-eeee\n")  # the rival's write
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    writer.join(timeout=30)
    assert isinstance(outcome[0], PublishConflict) and outcome[0].actual == "v000077-eeee"
    assert store.current() == "v000077-eeee"


def _publish_or_conflict(store, draft, expected):
    try:
        return store.publish(draft, expected_current=expected)
    except PublishConflict as exc:
        return exc
