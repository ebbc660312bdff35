"""Shards loaded once per process and shared by every open version that lists them.

Shards are immutable and pinned by the sha256 of their ``shard.json`` (which pins the sha256 of
their other files), so a version that lists a shard an open version already holds gets the same
loaded shard: its index and chunk rows stay mapped once, and its files are neither re-read nor
re-hashed. Opening a version after a refresh therefore costs the delta, not the store. Each
loaded shard counts the open versions that use it and is closed when the last one closes.

A shared shard is not trusted blindly: each reuse compares its files' inode, size, mtime and ctime
with those seen when they were verified (two ``stat`` calls), and a file that changed on disk is
verified again from scratch (re-fetched, for a remote store), never silently reused.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from model.store import faiss_index
from model.store.checksums import file_stamp
from model.store.manifest import ShardInfo
from model.store.shards import ShardMeta

LOG = logging.getLogger(__name__)


@dataclass(eq=False)
class ShardData:
    """One shard's verified, memory-mapped contents; shared by every version listing it.

    Attributes:
        meta: its ``shard.json``.
        sha256: the digest of ``shard.json`` that manifests pin it by.
        index: the FAISS index, memory-mapped read-only.
        table: the chunk rows, sorted by chunk id (memory-mapped for ``chunks.arrow``).
        ids: the table's chunk ids as a sorted int64 array (the one copy a shard keeps in memory).
        files: the verified local paths it was loaded from.
        stamps: each file's :func:`file_stamp` when it was verified.
        refs: open versions using it (changed only by :class:`ShardPool`).
        quantizer: the coarse quantizer its IVF index searches through, shared with the other
            loaded shards of its lineage (:class:`QuantizerPool`); None for flat shards.
        unshare: gives the index its own (emptied) quantizer back before it is dropped.
    """

    meta: ShardMeta
    sha256: str
    index: Any
    table: pa.Table
    ids: np.ndarray
    files: dict[str, Path]
    stamps: dict[str, tuple | None] = field(default_factory=dict)
    refs: int = 0
    closed: bool = False
    quantizer: Any = None
    unshare: Callable[[], None] | None = None

    @property
    def id(self) -> str:
        return self.meta.id

    @property
    def key(self) -> tuple[str, str]:
        return (self.meta.id, self.sha256)

    @property
    def disk_bytes(self) -> int:
        return sum(entry.bytes for entry in self.meta.files.values())

    def changed_files(self) -> list[str]:
        """Names of the files that were rewritten, replaced or removed since they were verified."""
        return [name for name, path in self.files.items() if file_stamp(path) != self.stamps.get(name)]

    def close(self) -> None:
        """Drop the index and the rows; the mappings go when nothing refers to them any more."""
        self.closed = True
        if self.unshare is not None:
            self.unshare()  # the index frees its own quantizer, never the shared one
            self.unshare = None
        self.index = None
        self.table = None
        self.quantizer = None  # after the index: the last shard of its lineage frees it


def shared_ids(a: ShardData, b: ShardData) -> np.ndarray:
    """The chunk ids two shards both hold (sorted): binary search of the smaller's ids in the larger's."""
    small, large = (a.ids, b.ids) if len(a.ids) <= len(b.ids) else (b.ids, a.ids)
    if not len(small) or not len(large):
        return np.empty(0, np.int64)
    rows = np.minimum(np.searchsorted(large, small), len(large) - 1)
    return small[large[rows] == small]


class QuantizerPool:
    """One coarse quantizer in memory per lineage, however many of its IVF shards are loaded.

    Every IVF shard file carries its own copy of its lineage's coarse quantizer (``nlist x dim``
    float32: 6.3 MB at 4,096 lists of 384-d keys, 25 MB at 16,384), read into anonymous memory
    (the inverted lists are mapped from the file; the quantizer is not). A loaded shard whose
    centroids equal those of its lineage's shared quantizer searches through that one and frees its
    own copy's centroids. A shared quantizer lives while some loaded shard uses it (weak references).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._held: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def share(self, lineage: str | None, index) -> tuple[Any, Callable[[], None] | None]:
        """Point a freshly read IVF index at its lineage's shared quantizer.

        Args:
            lineage: the shard's lineage (None: nothing to share with).
            index: the shard's IVF index.

        Returns:
            (the shared quantizer, to keep alive with the shard, and the function that undoes the
            sharing before the index is dropped); (None, None) when the index keeps its own
            (no lineage, a quantizer that is not flat, or centroids that differ from the lineage's).
        """
        own = faiss_index.coarse_quantizer(index)
        centroids = faiss_index.centroids(own)
        if lineage is None or centroids is None:
            return None, None
        key = (lineage, centroids.shape, int(own.metric_type))
        with self._lock:
            shared = self._held.get(key)
            if shared is None:
                shared = self._held[key] = faiss_index.copy_quantizer(own)
            elif not np.array_equal(faiss_index.centroids(shared), centroids):
                LOG.warning("lineage %s: a shard's coarse centroids differ from the lineage's; it keeps its own", lineage)
                return None, None
            return shared, faiss_index.share_quantizer(index, shared)


class ShardPool:
    """The loaded shards of one :class:`model.store.Store`, keyed by (shard id, shard.json sha256)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._shards: dict[tuple[str, str], ShardData] = {}
        self.quantizers = QuantizerPool()
        self._overlaps: dict[frozenset, np.ndarray] = {}  # chunk ids two loaded shards both hold

    def overlap(self, a: ShardData, b: ShardData) -> np.ndarray:
        """The chunk ids two loaded shards both hold, computed once while both stay loaded."""
        key = frozenset((a, b))
        with self._lock:
            known = self._overlaps.get(key)
        if known is None:
            known = shared_ids(a, b)
            with self._lock:
                if not a.closed and not b.closed:
                    self._overlaps[key] = known
        return known

    def acquire(self, info: ShardInfo, load: Callable[[], ShardData]) -> tuple[ShardData, bool]:
        """The loaded shard for a manifest entry, loading it only if no open version holds it.

        Args:
            info: the manifest's entry (its ``sha256`` pins ``shard.json``).
            load: reads, verifies and maps the shard (called without the pool's lock).

        Returns:
            (the shard, with one more reference; True if it was shared rather than loaded).

        Raises:
            Whatever ``load`` raises (ChecksumMismatch, StoreError): nothing is referenced then.
        """
        key = (info.id, info.sha256)
        with self._lock:
            held = self._shards.get(key)
            changed = held.changed_files() if held is not None else []
            if held is not None and not changed:
                held.refs += 1
                return held, True
        if changed:
            LOG.warning("shard %s: %s changed on disk since it was verified; verifying it again", info.id, ", ".join(changed))
        fresh = load()
        with self._lock:
            held = self._shards.get(key)
            if held is not None and held is not fresh and not held.changed_files():
                held.refs += 1  # another open loaded it meanwhile: share theirs
                fresh.close()
                return held, True
            fresh.refs = 1
            # A stale entry stays open for the versions that hold it and closes with the last of them.
            self._shards[key] = fresh
            return fresh, False

    def release(self, shard: ShardData) -> None:
        """One version no longer uses ``shard``; the last one out closes it."""
        with self._lock:
            shard.refs -= 1
            last = shard.refs <= 0
            if last and self._shards.get(shard.key) is shard:
                del self._shards[shard.key]
        if last:
            with self._lock:
                for key in [key for key in self._overlaps if shard in key]:
                    del self._overlaps[key]
            shard.close()
            LOG.debug("released shard %s", shard.id)

    def held_ids(self) -> set[str]:
        """Ids of the shards some open version uses now (the cache must not evict them)."""
        with self._lock:
            return {shard_id for shard_id, _ in self._shards}

    def __len__(self) -> int:
        with self._lock:
            return len(self._shards)
