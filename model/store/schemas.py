"""Arrow schemas of a shard's chunk rows (``chunks.arrow``) and a version's ledger, and their validation."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.contracts.chunking import Chunk
from model.store.errors import StoreError

CHUNKS_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.int64(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("continuation", pa.list_(pa.int32()), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
    ]
)

_TS = pa.timestamp("us", tz="UTC")
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("title", pa.string()),
        pa.field("etag", pa.string()),
        pa.field("last_modified", pa.string()),  # the HTTP header as received, sent back verbatim
        pa.field("content_hash", pa.string()),
        pa.field("published_at", _TS),
        pa.field("fetched_at", _TS),
        pa.field("first_seen", _TS),
        pa.field("chunk_ids", pa.list_(pa.int64())),
    ]
)
_LEDGER_REQUIRED = ("doc_id", "url", "chunk_ids")


def chunks_to_table(chunks: Sequence[Chunk] | pa.Table) -> pa.Table:
    """Chunks as a table with :data:`CHUNKS_SCHEMA`, validated.

    Args:
        chunks: :class:`model.contracts.chunking.Chunk` objects, or a table with (at least) the schema's
            columns.

    Returns:
        The table, cast to the schema, in the input order.

    Raises:
        StoreError: a missing column, a null, a negative or repeated chunk id.
    """
    if isinstance(chunks, pa.Table):
        missing = [name for name in CHUNKS_SCHEMA.names if name not in chunks.column_names]
        if missing:
            raise StoreError(f"chunks table lacks column(s) {missing}; it needs {CHUNKS_SCHEMA.names}")
        try:
            table = chunks.select(CHUNKS_SCHEMA.names).cast(CHUNKS_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise StoreError(f"chunks table does not fit the chunks schema ({CHUNKS_SCHEMA}): {exc}") from exc
    else:
        chunks = list(chunks)
        bad = next((c for c in chunks if not isinstance(c, Chunk)), None)
        if bad is not None:
            raise StoreError(f"write_shard takes model.contracts.chunking.Chunk objects or a pyarrow Table, got {type(bad).__name__}")
        table = pa.table({name: [getattr(c, name) for c in chunks] for name in CHUNKS_SCHEMA.names}, schema=CHUNKS_SCHEMA)
    for name in CHUNKS_SCHEMA.names:
        if table.column(name).null_count:
            raise StoreError(f"chunks column {name!r} has {table.column(name).null_count} null value(s); every field is required")
    ids = table.column("chunk_id").to_numpy()
    if len(ids) and ids.min() < 0:
        raise StoreError(f"chunk id {int(ids.min())} is negative; chunk ids are 63-bit (model.contracts.ids.chunk_id)")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1][:5].tolist()
        raise StoreError(f"chunk id(s) {dup} occur more than once in one shard; each chunk must appear once")
    return table


def ledger_table(table: pa.Table) -> pa.Table:
    """A ledger cast to :data:`LEDGER_SCHEMA` (absent optional columns become nulls), validated.

    Raises:
        StoreError: a missing required column, a value of the wrong type, or a repeated doc_id.
    """
    if not isinstance(table, pa.Table):
        raise StoreError(f"a ledger is a pyarrow Table with the ledger schema, got {type(table).__name__}")
    missing = [name for name in _LEDGER_REQUIRED if name not in table.column_names]
    if missing:
        raise StoreError(f"ledger lacks required column(s) {missing}; schema: {LEDGER_SCHEMA}")
    unknown = [name for name in table.column_names if name not in LEDGER_SCHEMA.names]
    if unknown:
        raise StoreError(f"ledger has unknown column(s) {unknown}; schema: {LEDGER_SCHEMA}")
    columns = []
    for field in LEDGER_SCHEMA:
        if field.name in table.column_names:
            try:
                columns.append(table.column(field.name).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise StoreError(f"ledger column {field.name!r} cannot be read as {field.type}: {exc}") from exc
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    out = pa.Table.from_arrays(columns, schema=LEDGER_SCHEMA)
    for name in ("doc_id", "url"):
        if out.column(name).null_count:
            raise StoreError(f"ledger column {name!r} has null values; every document needs one")
    if pc.count_distinct(out.column("doc_id")).as_py() != out.num_rows:
        raise StoreError("ledger lists a doc_id more than once; one row per document")
    return out


def empty_ledger() -> pa.Table:
    return LEDGER_SCHEMA.empty_table()
