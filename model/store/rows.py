"""A shard's chunk rows on disk: an uncompressed Arrow IPC file, memory-mapped by readers.

Queries read a handful of rows per search, so a serving process should hold only the pages it
touched, not a decompressed copy of every shard. ``chunks.arrow`` is the Arrow IPC file format
(Feather v2) without compression, in record batches of :data:`BATCH_ROWS`: opening it maps the
file and reads the footer; a column is a view into the mapping, and the kernel pages rows in (and
drops them again under memory pressure: they count as file-backed, not anonymous, memory).

Shards written before this layout hold ``chunks.parquet`` (zstd); they stay readable, read whole
into memory, until compaction rewrites them as ``chunks.arrow``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from model.store import layout
from model.store.errors import StoreError

# Rows per record batch. Batches keep each string column's 32-bit offsets far from overflowing
# (a 10M-chunk shard holds gigabytes of text); a row is found by binary search over batch starts.
BATCH_ROWS = 65536


def write(table: pa.Table, path: Path) -> None:
    """Write chunk rows as an uncompressed Arrow IPC file (``chunks.arrow``).

    Args:
        table: rows with :data:`model.store.CHUNKS_SCHEMA`, sorted by chunk id.
        path: the file to create.
    """
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=BATCH_ROWS)


def read(path: Path) -> pa.Table:
    """The chunk rows of one shard file: memory-mapped (``chunks.arrow``) or read (``chunks.parquet``).

    Args:
        path: a verified local copy of the shard's chunk file; its name says the layout.

    Returns:
        The table. For ``chunks.arrow`` every buffer points into the read-only mapping, which lives
        as long as the table (or any array taken from it) does.
    """
    path = Path(path)
    if path.name == layout.CHUNKS_FILE:
        return ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    if path.name == layout.PARQUET_CHUNKS_FILE:
        return pq.read_table(path, memory_map=True)
    raise StoreError(f"{path} is not a chunk file this store knows ({layout.CHUNKS_FILE} or {layout.PARQUET_CHUNKS_FILE})")


def chunks_file(files: dict) -> str:
    """Which chunk file a shard has (``chunks.arrow``, or ``chunks.parquet`` in older shards).

    Args:
        files: ``shard.json``'s ``files`` (file name -> entry), or any mapping keyed by file name.

    Raises:
        StoreError: the shard lists no chunk file, or both.
    """
    names = [name for name in layout.CHUNK_FILES if name in files]
    if len(names) != 1:
        raise StoreError(f"shard.json must list exactly one of {list(layout.CHUNK_FILES)}, it lists {sorted(files)}")
    return names[0]
