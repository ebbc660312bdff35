"""The one module that knows where things live inside a store (and inside the local cache).

Keys are relative, '/'-separated paths; backends map them onto a directory or a bucket prefix.

    CURRENT                            the published version id (one line)
    versions/<version>/manifest.json   a version; immutable once written
    shards/<shard_id>/index.faiss      FAISS index; ids are chunk ids
    shards/<shard_id>/chunks.arrow     the chunks, sorted by chunk_id (Arrow IPC, uncompressed;
                                       older shards: chunks.parquet)
    shards/<shard_id>/shard.json       count, dim, factory, sha256 of each file
    ledgers/<version>.parquet          one row per live document (+ .sha256 beside it)
    trained/<lineage>.faiss            trained, empty IVF index shared by a lineage of shards
    leases/<name>.json                 who holds a lease, until when
    pending/<entry>.json               changed URLs a targeted refresh has yet to publish
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from model.contracts.clock import utcnow
from model.contracts.ids import version_seq  # noqa: F401 - the version grammar lives in model.contracts.ids (the client orders versions too)
from model.store.errors import StoreError

CURRENT = "CURRENT"
CURRENT_LOCK = ".CURRENT.lock"  # local stores only: serialises compare-and-swap of CURRENT
STAGING = ".staging"  # local stores only: files are built here, then hard-linked into place
TEMP_PREFIX = ".tmp-"  # local stores only: a file being written beside its key, renamed or linked into place

VERSIONS = "versions/"
SHARDS = "shards/"
LEDGERS = "ledgers/"
TRAINED = "trained/"
LEASES = "leases/"
PENDING = "pending/"

MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.arrow"  # what the shard writer writes (model.store.rows)
PARQUET_CHUNKS_FILE = "chunks.parquet"  # shards written before chunks.arrow: read, never written
CHUNK_FILES = (CHUNKS_FILE, PARQUET_CHUNKS_FILE)
SHARD_META_FILE = "shard.json"
SHARD_DATA_FILES = (INDEX_FILE, CHUNKS_FILE)  # what the writer puts and shard.json records a sha256 for

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(value: str, what: str) -> str:
    """Refuse an id that could escape its folder (slashes, '..', empty).

    Args:
        value: a version, shard or lineage id.
        what: what it is, for the message.

    Returns:
        The id, unchanged.
    """
    if not isinstance(value, str) or not _ID.match(value):
        raise StoreError(f"{what} id {value!r} is not valid: use letters, digits, '.', '_', '-' (at most 128)")
    return value


# versions


def version_id(seq: int) -> str:
    """``v{seq:06d}-{8 random hex}``: sorts by seq, unique even when two writers pick one seq."""
    return f"v{seq:06d}-{secrets.token_hex(4)}"


def manifest_key(version: str) -> str:
    return f"{VERSIONS}{check_id(version, 'version')}/{MANIFEST_FILE}"


def version_of_manifest_key(key: str) -> str | None:
    """The version a ``versions/<version>/manifest.json`` key belongs to, else None."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == VERSIONS and parts[2] == MANIFEST_FILE:
        return parts[1]
    return None


# shards


def new_shard_id() -> str:
    """A fresh shard id: UTC time (readable order) plus 12 random hex digits."""
    return f"{utcnow():%Y%m%dT%H%M%S}-{secrets.token_hex(6)}"


def shard_prefix(shard_id: str) -> str:
    return f"{SHARDS}{check_id(shard_id, 'shard')}/"


def shard_key(shard_id: str, name: str) -> str:
    return shard_prefix(shard_id) + name


def shard_of_key(key: str) -> str | None:
    """The shard id of a ``shards/<id>/<file>`` key, else None."""
    parts = key.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] + "/" == SHARDS else None


def is_temporary(key: str) -> bool:
    """A local store's half-written file (``<dir>/.tmp-*``): never a key anything references."""
    return key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)


# ledgers, trained quantizers, leases


def ledger_key(version: str) -> str:
    return f"{LEDGERS}{check_id(version, 'version')}.parquet"


def checksum_key(key: str) -> str:
    """Where the sha256 of a file with no other record of it (a ledger) is kept."""
    return key + ".sha256"


def new_lineage_id() -> str:
    return f"L{utcnow():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def trained_key(lineage: str) -> str:
    return f"{TRAINED}{check_id(lineage, 'lineage')}.faiss"


def lineage_of_key(key: str) -> str | None:
    if key.startswith(TRAINED) and key.endswith(".faiss"):
        return key[len(TRAINED) : -len(".faiss")]
    return None


def lease_key(name: str) -> str:
    return f"{LEASES}{check_id(name, 'lease')}.json"


def new_pending_key() -> str:
    """A fresh, time-ordered key for one batch of changed URLs (oldest sorts first)."""
    return f"{PENDING}{utcnow():%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}.json"


# the local cache of remote shards


def cache_shard_dir(cache_root: Path, shard_id: str) -> Path:
    return Path(cache_root) / "shards" / check_id(shard_id, "shard")


def cache_trained_path(cache_root: Path, lineage: str) -> Path:
    return Path(cache_root) / "trained" / f"{check_id(lineage, 'lineage')}.faiss"
