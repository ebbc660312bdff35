"""Compaction: merge a version's shards into as few as possible, dropping tombstoned chunks.

IVF shards of one lineage share a trained quantizer, so they are merged with ``merge_from``
(their codes move as they are: the merged shard gives the same answers). Flat shards are rebuilt
into one flat shard; if together they reach ``policy.flat_max`` they join the largest IVF
lineage (or train a new one). A group of one shard with nothing to drop is reused as it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import faiss
import numpy as np
import pyarrow as pa

from model.contracts.clock import utcnow
from model.store import faiss_index, layout, rows, shards
from model.store.manifest import Manifest, ShardInfo, Stats


class Writer(Protocol):
    """What compaction uses of a :class:`model.store.Store`: its public surface only.

    The store calls :func:`compact` (``Store.compact``), so this module names no ``Store``: it
    sits below it, with no import circle between them.
    """

    backend: Any
    cache: Any
    policy: faiss_index.IndexPolicy

    def new_version_id(self) -> str: ...

    def train_lineage(self, sample: np.ndarray, *, embedder: Any) -> str: ...

    def trained_index(self, lineage: str) -> faiss.Index | None: ...

    def put_shard(self, table: pa.Table, index: faiss.Index, *, embedder: Any, lineage: str | None) -> ShardInfo: ...

LOG = logging.getLogger(__name__)


@dataclass
class _Group:
    """Live chunks headed for one output shard."""

    lineage: str | None
    infos: list[ShardInfo] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    index: object = None  # IVF: the merge target
    vectors: list[np.ndarray] = field(default_factory=list)  # flat: live vectors
    dropped: int = 0  # tombstoned or duplicate chunks left out
    rewrite: bool = False  # write a new shard even if the group is one unchanged shard (e.g. an old layout)

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables)


def compact(store: Writer, manifest: Manifest) -> Manifest:
    """Merge a version's shards and drop tombstoned chunks.

    Args:
        store: the store holding the version (new shards are written there).
        manifest: the version to compact.

    Returns:
        A new, unwritten manifest with parent ``manifest.version``, no tombstones, and the same
        live chunks. Publish it with ``store.publish(m, expected_current=manifest.version)``.
    """
    start = time.perf_counter()
    tombstones = np.asarray(manifest.tombstones, dtype=np.int64)
    seen = np.empty(0, np.int64)
    ivf_groups: dict[str | None, _Group] = {}
    flat = _Group(lineage=None)
    for info in manifest.shards:
        meta = shards.read_meta(store.backend, info, embedder=manifest.embedder)
        files = store.cache.shard_files(store.backend, meta)
        table = rows.read(files[meta.chunks_file])
        ids = table.column("chunk_id").to_numpy()
        live = ~np.isin(ids, tombstones[info.since :]) & ~np.isin(ids, seen)
        seen = np.union1d(seen, ids[live])
        index = faiss_index.read_writable(files[layout.INDEX_FILE])
        if faiss_index.is_flat(meta.factory):
            group = flat
            vectors, vector_ids = faiss_index.flat_vectors(index)
            order = np.argsort(vector_ids)
            group.vectors.append(vectors[order[np.searchsorted(vector_ids, ids[live], sorter=order)]])
        else:
            group = ivf_groups.setdefault(meta.lineage, _Group(lineage=meta.lineage))
            ivf = faiss.extract_index_ivf(index)
            faiss_index.drop_direct_map(index)  # merge_from refuses direct maps (older shards have one)
            if not live.all():
                ivf.remove_ids(faiss.IDSelectorBatch(ids[~live]))  # one scan of the lists, hashed lookups
            if group.index is None:
                group.index = index
            else:
                faiss.extract_index_ivf(group.index).merge_from(ivf, 0)
        group.rewrite |= meta.chunks_file != layout.CHUNKS_FILE  # an older layout is rewritten as chunks.arrow
        group.infos.append(info)
        group.tables.append(table.filter(pa.array(live)))
        group.dropped += int((~live).sum())

    if flat.rows >= store.policy.flat_max:
        _fold_flat_into_ivf(store, manifest, flat, ivf_groups)
        flat = _Group(lineage=None)

    out: list[ShardInfo] = []
    for group in [*ivf_groups.values(), flat]:
        if not group.infos or group.rows == 0:
            continue
        if len(group.infos) == 1 and group.dropped == 0 and not group.rewrite:
            out.append(group.infos[0].model_copy(update={"since": 0}))  # nothing to change: reuse
            continue
        table = pa.concat_tables(group.tables)
        order = np.argsort(table.column("chunk_id").to_numpy(), kind="stable")
        table = table.take(pa.array(order))
        if group.index is not None:
            index = group.index
        else:
            vectors = np.concatenate(group.vectors)[order]
            index = faiss_index.build_flat(vectors, table.column("chunk_id").to_numpy())
        out.append(store.put_shard(table, index, embedder=manifest.embedder, lineage=group.lineage))

    chunks = sum(s.count for s in out)
    result = Manifest(
        version=store.new_version_id(),
        parent=manifest.version,
        created_at=utcnow(),
        shards=out,
        tombstones=[],
        embedder=manifest.embedder,
        tokenizer=manifest.tokenizer,
        chunk_tokens=manifest.chunk_tokens,
        continuation_tokens=manifest.continuation_tokens,
        metric=manifest.metric,
        search=manifest.search,
        stats=Stats(documents=manifest.stats.documents, chunks=chunks, bytes=sum(s.bytes for s in out)),
        watermark=manifest.watermark,
        sources=manifest.sources,
        ledger=manifest.ledger,
    )
    LOG.info(
        "compacted %s: %d shards -> %d, %d live chunks, %d tombstones dropped, in %.1fs",
        manifest.version, len(manifest.shards), len(out), chunks, len(manifest.tombstones), time.perf_counter() - start,
    )
    return result


def _fold_flat_into_ivf(store: Writer, manifest: Manifest, flat: _Group, ivf_groups: dict[str | None, _Group]) -> None:
    """Flat shards grown past the flat threshold become IVF: added to the largest lineage, or a new one."""
    vectors = np.concatenate(flat.vectors)
    ids = np.concatenate([t.column("chunk_id").to_numpy() for t in flat.tables])
    if ivf_groups:
        target = max(ivf_groups.values(), key=lambda g: g.rows)
        target.index.add_with_ids(vectors, ids)
    else:
        lineage = store.train_lineage(vectors, embedder=manifest.embedder)
        target = ivf_groups.setdefault(lineage, _Group(lineage=lineage))
        target.index = faiss_index.build_ivf(store.trained_index(lineage), vectors, ids)
    target.infos.extend(flat.infos)
    target.tables.extend(flat.tables)
    target.dropped += flat.dropped
    target.rewrite = True

