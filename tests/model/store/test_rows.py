"""Chunk rows read by position from a memory-mapped, multi-batch ``chunks.arrow``."""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pytest

from model.store import CHUNKS_SCHEMA, rows

N = 4000
BATCH = 1000  # rows per record batch: the file has four


@pytest.fixture
def mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(rows, "BATCH_ROWS", BATCH)
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    table = pa.table(
        {
            "chunk_id": ids,
            "doc_id": [f"doc-{i // 8}" for i in range(N)],
            "position": (np.arange(N) % 8).astype(np.int32),
            "tokens": [[i, i + 1] for i in range(N)],
            "continuation": [[i + 2] for i in range(N)],
            "text": [f"chunk {i} " + "x" * 500 for i in range(N)],
            "url": [f"https://example.test/{i // 8}" for i in range(N)],
        },
        schema=CHUNKS_SCHEMA,
    )
    rows.write(table, tmp_path / "chunks.arrow")
    read = rows.read(tmp_path / "chunks.arrow")
    assert read.column("text").num_chunks == N // BATCH
    return table, read


_POOLS = []  # a pool must outlive every buffer it allocated: never freed


@contextlib.contextmanager
def counting_pool():
    """Make a fresh proxy the default Arrow pool, so its ``max_memory`` is this block's peak."""
    before = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(before)
    _POOLS.append(pool)
    pa.set_memory_pool(pool)
    try:
        yield pool
    finally:
        pa.set_memory_pool(before)


def test_take_returns_the_rows_asked_for_in_order(mapped):
    table, read = mapped
    positions = [3999, 0, 1500, 1500, 999, 1000, 2001]  # across batches, unordered, repeated
    assert rows.take(read, positions).to_pylist() == table.take(pa.array(positions)).to_pylist()
    assert rows.take(read, np.array(positions[:2]), columns=["doc_id"]).to_pylist() == [{"doc_id": "doc-499"}, {"doc_id": "doc-0"}]
    assert rows.take(read, []).num_rows == 0


@pytest.mark.parametrize("position", [-1, N])
def test_take_outside_the_table_is_an_error(mapped, position):
    with pytest.raises(IndexError, match="outside a table of 4000 rows"):
        rows.take(mapped[1], [0, position])


def test_take_copies_only_the_rows_not_the_columns(mapped):
    # Table.take concatenates each string column's batches first (2 MB of text here for 2 rows);
    # the served view must touch and copy only what it returns.
    _, read = mapped
    with counting_pool() as pool:
        got = rows.take(read, [10, 3500])
    assert got.column("chunk_id").to_pylist() == [73, 24503]
    assert pool.max_memory() < 64 * 1024, f"taking 2 rows allocated {pool.max_memory()} bytes"
