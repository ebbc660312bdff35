"""Ledgers: written once with a checksum, read back with the ledger schema, bad ones refused."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from model.store import LEDGER_SCHEMA, ChecksumMismatch, StoreError

from .conftest import next_manifest, publish


def ledger(n: int = 3) -> pa.Table:
    t = datetime(2024, 3, 1, tzinfo=timezone.utc)
    return pa.table(
        {
            "doc_id": [f"d{i}" for i in range(n)],
            "url": [f"https://x.test/{i}" for i in range(n)],
            "source": ["site"] * n,
            "content_hash": ["h"] * n,
            "fetched_at": [t] * n,
            "chunk_ids": [[i, i + 100] for i in range(n)],
        }
    )


def test_round_trip_and_missing_columns_become_nulls(store, corpus):
    first = publish(store, corpus, range(2))
    version = store.new_version_id()
    key = store.write_ledger(version, ledger())
    assert key == f"ledgers/{version}.parquet"
    # Before the manifest exists (the ingest writes the ledger first) it is found by version.
    table = store.read_ledger(version)
    assert table.schema == LEDGER_SCHEMA and table.num_rows == 3
    assert table.column("etag").null_count == 3
    assert table.column("chunk_ids").to_pylist()[1] == [1, 101]
    store.publish(next_manifest(store, first.manifest, [], ledger=key, version=version), expected_current=first.manifest.version)
    assert store.read_ledger(version).equals(table)


def test_version_without_ledger_reads_empty(store, corpus):
    first = publish(store, corpus, range(2))
    empty = store.read_ledger(first.manifest.version)
    assert empty.num_rows == 0 and empty.schema == LEDGER_SCHEMA
    assert store.read_ledger("v000123-ffff").num_rows == 0


@pytest.mark.parametrize(
    "table, message",
    [
        (ledger().drop(["url"]), r"lacks required column\(s\) \['url'\]"),
        (ledger().append_column("colour", pa.array(["r", "g", "b"])), "unknown column"),
        (pa.concat_tables([ledger(2), ledger(2)]), "more than once"),
        (ledger().set_column(4, "fetched_at", pa.array(["yesterday"] * 3)), "fetched_at"),
    ],
)
def test_bad_ledgers_are_refused(store, table, message):
    with pytest.raises(StoreError, match=message):
        store.write_ledger("v000001-aaaa", table)
    assert store.backend.list("ledgers/") == []


def test_corrupt_ledger_is_refused(store, corpus):
    key = store.write_ledger("v000001-aaaa", ledger())
    data = bytearray(store.backend.read_bytes(key))
    data[-20] ^= 0xFF
    local = store.backend.local_path(key)
    if local is not None:
        local.write_bytes(bytes(data))
    else:
        store.backend.bucket.blob(store.backend._name(key)).upload_from_string(bytes(data))
    with pytest.raises(ChecksumMismatch, match="ledger ledgers/v000001-aaaa.parquet"):
        store.read_ledger("v000001-aaaa")
