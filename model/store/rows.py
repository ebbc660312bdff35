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
from typing import Sequence

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


def take(table: pa.Table, rows: Sequence[int], columns: Sequence[str] | None = None) -> pa.Table:
    """Rows of a shard's table by position, in the order given, copying only those rows.

    ``Table.take`` first concatenates each column's record batches into one array (Arrow does so
    for string and list columns): for a memory-mapped ``chunks.arrow`` that pages in and copies
    whole columns (~75 MB of text for a 250,000-chunk shard, 1.5 s cold) to return two rows, and
    the allocator keeps the copy's memory as anonymous RSS. Zero-copy one-row slices, concatenated,
    touch only the rows asked for.

    Args:
        table: the rows (e.g. :attr:`model.store.pool.ShardData.table`).
        rows: positions, each in ``[0, table.num_rows)``; repeats allowed.
        columns: only these columns (default: all).

    Returns:
        A table of ``len(rows)`` rows, one chunk per column.

    Raises:
        IndexError: a position outside the table.
    """
    if columns is not None:
        table = table.select(list(columns))
    positions = [int(row) for row in rows]
    if not positions:
        return table.slice(0, 0)
    if min(positions) < 0 or max(positions) >= table.num_rows:
        raise IndexError(f"rows {min(positions)}..{max(positions)} are outside a table of {table.num_rows} rows")
    return pa.concat_tables([table.slice(row, 1) for row in positions]).combine_chunks()


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
