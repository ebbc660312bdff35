"""Shard files: stage them locally, put them in the store create-only, read and check ``shard.json``.

A shard is three files under ``shards/<id>/``: ``index.faiss``, ``chunks.arrow`` (sorted by chunk
id; see :mod:`model.store.rows`; older shards have ``chunks.parquet``) and ``shard.json``, which
records the sha256 of the other two. A manifest records the
sha256 of ``shard.json``, so one digest pins the whole shard. ``shard.json`` is put last: a shard
without it was never finished and nothing references it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from model.contracts.clock import utcnow
from model.contracts.embedder import EmbedderSpec
from model.store import faiss_index, layout, rows
from model.store.backends import Backend
from model.store.checksums import sha256_bytes, sha256_file
from model.store.errors import ChecksumMismatch, IncompatibleIndex, StoreError
from model.store.manifest import ShardInfo

LOG = logging.getLogger(__name__)


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    bytes: int


class ShardMeta(BaseModel):
    """The contents of ``shard.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = 1
    id: str
    count: int
    dim: int
    factory: str
    lineage: str | None = None
    metric: str = "inner_product"
    embedder: EmbedderSpec
    created_at: datetime
    files: dict[str, FileEntry]

    @property
    def chunks_file(self) -> str:
        """The name of the shard's chunk rows: ``chunks.arrow``, or ``chunks.parquet`` (older shards)."""
        return rows.chunks_file(self.files)


def sort_by_chunk_id(table: pa.Table, vectors: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Order rows by chunk id, so a chunk's row is found by binary search."""
    ids = table.column("chunk_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    if np.all(order[1:] > order[:-1]):  # already sorted
        return table, vectors
    return table.take(pa.array(order)), vectors[order]


def stage(
    directory: Path,
    *,
    shard_id: str,
    table: pa.Table,
    index,
    embedder: EmbedderSpec,
    lineage: str | None,
) -> tuple[ShardMeta, bytes]:
    """Write a shard's files into a local directory.

    Args:
        directory: an empty scratch directory.
        shard_id: the new shard's id.
        table: the chunks, sorted by chunk id (:data:`model.store.CHUNKS_SCHEMA`).
        index: the built FAISS index holding exactly those chunk ids.
        embedder: what made the keys.
        lineage: the lineage of the shard's quantizer (IVF) or the one it was written for.

    Returns:
        The shard's metadata and the exact bytes of its ``shard.json``.
    """
    if index.ntotal != table.num_rows:
        raise StoreError(f"index holds {index.ntotal} vectors for {table.num_rows} chunks")
    rows.write(table, directory / layout.CHUNKS_FILE)
    faiss_index.write(index, directory / layout.INDEX_FILE)
    files = {
        name: FileEntry(sha256=sha256_file(directory / name), bytes=(directory / name).stat().st_size)
        for name in layout.SHARD_DATA_FILES
    }
    meta = ShardMeta(
        id=shard_id,
        count=table.num_rows,
        dim=index.d,
        factory=faiss_index.factory_of(index),
        lineage=lineage,
        embedder=embedder,
        created_at=utcnow(),
        files=files,
    )
    data = meta.model_dump_json(indent=1).encode("utf-8")
    (directory / layout.SHARD_META_FILE).write_bytes(data)
    return meta, data


def put(backend: Backend, directory: Path, meta: ShardMeta, meta_bytes: bytes) -> ShardInfo:
    """Put a staged shard into the store (data files first, ``shard.json`` last), create-only.

    Returns:
        The manifest entry for the shard.
    """
    for name in meta.files:
        backend.put_file(layout.shard_key(meta.id, name), directory / name)
    backend.put_bytes(layout.shard_key(meta.id, layout.SHARD_META_FILE), meta_bytes)
    total = sum(f.bytes for f in meta.files.values()) + len(meta_bytes)
    LOG.info("wrote shard %s: %d chunks, %s, %.1f MB", meta.id, meta.count, meta.factory, total / 1e6)
    return ShardInfo(
        id=meta.id,
        sha256=sha256_bytes(meta_bytes),
        count=meta.count,
        factory=meta.factory,
        lineage=meta.lineage,
        bytes=total,
    )


def read_meta(backend: Backend, shard: ShardInfo, *, embedder: EmbedderSpec | None = None) -> ShardMeta:
    """Read a shard's ``shard.json``, check it against the manifest entry (and an embedder).

    Raises:
        StoreError: the shard does not exist (e.g. garbage-collected).
        ChecksumMismatch: ``shard.json`` differs from what the manifest recorded.
        IncompatibleIndex: the shard was made by another embedder than ``embedder``.
    """
    key = layout.shard_key(shard.id, layout.SHARD_META_FILE)
    try:
        data = backend.read_bytes(key)
    except FileNotFoundError:
        raise StoreError(
            f"shard {shard.id} is missing from {backend.uri} (no {key}); it was never finished or was "
            "garbage-collected: publish or roll back to a version whose shards exist"
        ) from None
    if sha256_bytes(data) != shard.sha256:
        raise ChecksumMismatch(
            f"shard {shard.id} file {layout.SHARD_META_FILE} is corrupt or was modified: its sha256 differs from "
            "the manifest's; it is refused. Restore the file, or roll back to a version that does not use it"
        )
    meta = ShardMeta.model_validate_json(data)
    if layout.INDEX_FILE not in meta.files:
        raise StoreError(f"shard {shard.id}: shard.json lists no {layout.INDEX_FILE}")
    meta.chunks_file  # exactly one chunk file, or StoreError
    if meta.count != shard.count or meta.id != shard.id:
        raise ChecksumMismatch(f"shard {shard.id}: shard.json says id {meta.id}, {meta.count} chunks; the manifest {shard.count}")
    if embedder is not None and (meta.embedder != embedder or meta.dim != embedder.dim):
        raise IncompatibleIndex(
            f"shard {shard.id} was embedded with {meta.embedder.name} (dim {meta.dim}, sha256 "
            f"{meta.embedder.sha256[:12]}), but the version's embedder is {embedder.name} (dim {embedder.dim}, "
            f"sha256 {embedder.sha256[:12]}); a version must not mix embedders"
        )
    return meta
