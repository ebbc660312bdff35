"""Shards in the layout written before ``chunks.arrow``: chunk rows in a zstd ``chunks.parquet``."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from model.store import ShardInfo, layout, rows, shards
from model.store.checksums import sha256_file
from model.store.shards import FileEntry


def as_parquet_shard(store, info: ShardInfo) -> ShardInfo:
    """A copy of a written shard under a new id, its rows in ``chunks.parquet`` as older writers left them."""
    meta = shards.read_meta(store.backend, info)
    files = store.cache.shard_files(store.backend, meta)
    with store.backend.staging_dir() as directory:
        table = rows.read(files[layout.CHUNKS_FILE])
        pq.write_table(table, directory / layout.PARQUET_CHUNKS_FILE, compression="zstd", row_group_size=65536)
        shutil.copyfile(files[layout.INDEX_FILE], directory / layout.INDEX_FILE)
        entries = {
            name: FileEntry(sha256=sha256_file(directory / name), bytes=(directory / name).stat().st_size)
            for name in (layout.INDEX_FILE, layout.PARQUET_CHUNKS_FILE)
        }
        old = meta.model_copy(update={"id": layout.new_shard_id(), "files": entries})
        data = old.model_dump_json(indent=1).encode("utf-8")
        return shards.put(store.backend, directory, old, data)
