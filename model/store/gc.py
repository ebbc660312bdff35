"""Garbage collection: delete versions beyond the newest K and files no kept version references.

Never deleted: the version ``CURRENT`` names and everything it references, and any unreferenced
file younger than ``min_age_s`` (an ingest may have written its shards but not yet its manifest).
Half-written ``.tmp-*`` files a crash or a full disk left anywhere in a local store are collected
once they are that old, like unreferenced files.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Protocol

from model.contracts.clock import utcnow
from model.store import layout
from model.store.errors import StoreError
from model.store.manifest import Manifest

LOG = logging.getLogger(__name__)


class Versions(Protocol):
    """What garbage collection uses of a :class:`model.store.Store`: its public surface only (the
    store calls :func:`collect`, so this module names no ``Store`` and sits below it)."""

    uri: str
    backend: Any

    def current(self) -> str | None: ...

    def versions(self) -> list[Manifest]: ...

    def manifest(self, version: str | None = None) -> Manifest: ...


def collect(store: Versions, *, keep: int, min_age_s: float = 3600.0, dry_run: bool = False) -> list[str]:
    """Delete old versions, unreferenced shards, ledgers and quantizers, staging and ``.tmp-*`` leftovers.

    Args:
        store: the store.
        keep: how many of the newest versions (by sequence number) to keep, at least 1.
        min_age_s: unreferenced files modified more recently than this are kept.
        dry_run: only list what would be deleted.

    Returns:
        The deleted keys (or those that would be), relative to the store, in deletion order.

    Raises:
        ValueError: keep < 1.
        StoreError: CURRENT changed while collecting (run it again).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (got {keep}); CURRENT's version is always kept")
    current = store.current()
    manifests = store.versions()
    kept = manifests[-keep:]
    if current is not None and current not in {m.version for m in kept}:
        kept.append(store.manifest(current))
    kept_versions = {m.version for m in kept}
    shard_ids = {s.id for m in kept for s in m.shards}
    lineages = {s.lineage for m in kept for s in m.shards if s.lineage}
    ledgers = {m.ledger for m in kept if m.ledger}
    ledgers |= {layout.checksum_key(key) for key in ledgers}
    cutoff = utcnow() - timedelta(seconds=min_age_s)

    doomed: list[str] = []
    for m in manifests:
        if m.version not in kept_versions:
            doomed.append(layout.manifest_key(m.version))
    for obj in store.backend.list(layout.SHARDS):
        shard = layout.shard_of_key(obj.key)
        if shard not in shard_ids and obj.modified < cutoff:
            doomed.append(obj.key)
    for obj in store.backend.list(layout.LEDGERS):
        if obj.key not in ledgers and obj.modified < cutoff:
            doomed.append(obj.key)
    for obj in store.backend.list(layout.TRAINED):
        if layout.lineage_of_key(obj.key) not in lineages and obj.modified < cutoff:
            doomed.append(obj.key)
    for obj in store.backend.list(layout.STAGING + "/"):
        if obj.modified < cutoff:
            doomed.append(obj.key)
    for obj in store.backend.list(""):  # leases/, versions/, the root: wherever a write was cut short
        if layout.is_temporary(obj.key) and obj.modified < cutoff:
            doomed.append(obj.key)
    doomed = list(dict.fromkeys(doomed))  # a shard's .tmp-* file is listed twice

    if dry_run:
        return doomed
    # A rollback or publish racing this collection could point CURRENT at a doomed version.
    if store.current() != current:
        raise StoreError(f"CURRENT of {store.uri} changed while collecting garbage; nothing was deleted, run gc again")
    deleted = [key for key in doomed if store.backend.delete(key)]
    LOG.info("gc of %s kept %d versions, deleted %d files", store.uri, len(kept_versions), len(deleted))
    return deleted
