"""The versioned, sharded index store: immutable FAISS shards, manifests, a CURRENT pointer.

Importable without Beam or Prefect. Entry point: :func:`open_store`.
"""

from model.store.errors import (
    AlreadyExists,
    CacheTooSmall,
    ChecksumMismatch,
    DamagedCurrent,
    IncompatibleIndex,
    NoCurrentVersion,
    PublishConflict,
    StoreError,
)
from model.store.faiss_index import IndexPolicy
from model.store.manifest import Manifest, SearchParams, ShardInfo, Stats, TokenizerInfo
from model.store.schemas import CHUNKS_SCHEMA, LEDGER_SCHEMA
from model.store.store import Store, open_store
from model.store.view import IndexView

__all__ = [
    "open_store",
    "Store",
    "Manifest",
    "ShardInfo",
    "SearchParams",
    "Stats",
    "TokenizerInfo",
    "IndexView",
    "IndexPolicy",
    "CHUNKS_SCHEMA",
    "LEDGER_SCHEMA",
    "StoreError",
    "PublishConflict",
    "ChecksumMismatch",
    "IncompatibleIndex",
    "NoCurrentVersion",
    "DamagedCurrent",
    "AlreadyExists",
    "CacheTooSmall",
]
