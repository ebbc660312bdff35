"""Document ledgers: written once as parquet with their sha256 beside them, verified on read."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from model.store import layout
from model.store.backends import Backend
from model.store.checksums import Verifier, sha256_file
from model.store.errors import ChecksumMismatch, StoreError
from model.store.schemas import ledger_table

LOG = logging.getLogger(__name__)


def write(backend: Backend, version: str, table: pa.Table) -> str:
    """Validate and write a version's ledger (create-only), then its sha256.

    Args:
        backend: the store.
        version: the version the ledger belongs to.
        table: one row per live document (``LEDGER_SCHEMA``; optional columns may be absent).

    Returns:
        The ledger's key relative to the store.
    """
    table = ledger_table(table)
    key = layout.ledger_key(version)
    with backend.staging_dir() as directory:
        path = directory / "ledger.parquet"
        pq.write_table(table, path, compression="zstd")
        digest = sha256_file(path)
        backend.put_file(key, path)
    backend.put_bytes(layout.checksum_key(key), digest.encode("ascii"))
    LOG.info("wrote ledger %s (%d documents)", key, table.num_rows)
    return key


def verified_path(backend: Backend, key: str, verifier: Verifier, scratch: Path) -> Path:
    """A local copy of the ledger at ``key`` (the file itself for a local store), checked.

    Raises:
        StoreError: the ledger is missing.
        ChecksumMismatch: its bytes differ from the sha256 beside it, or that is missing.
    """
    path = backend.local_path(key)
    if path is None:
        path = scratch / "ledger.parquet"
        try:
            backend.get_file(key, path)
        except FileNotFoundError:
            raise StoreError(f"ledger {key} is missing from {backend.uri}") from None
    elif not path.is_file():
        raise StoreError(f"ledger {key} is missing from {backend.uri}")
    try:
        expected = backend.read_bytes(layout.checksum_key(key)).decode("ascii").strip()
    except FileNotFoundError:
        raise ChecksumMismatch(f"ledger {key} has no {layout.checksum_key(key)}; it was not written by write_ledger") from None
    verifier.verify(path, expected, what=f"ledger {key}")
    return path


def read(backend: Backend, key: str, verifier: Verifier, scratch: Path) -> pa.Table:
    """The verified ledger at ``key``, cast to ``LEDGER_SCHEMA``."""
    return ledger_table(pq.read_table(verified_path(backend, key, verifier, scratch)))
