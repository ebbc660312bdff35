"""``gc_store``: delete versions beyond the newest K and the files no kept version references.

It takes no lease: the store's collector never deletes what CURRENT references nor any file
younger than ``min_age_s`` (a refresh in flight may be about to reference it).
"""

from __future__ import annotations

import logging

from prefect import flow

from flows.common.inputs import resolve_inputs
from flows.tasks.artifacts import record_summary
from flows.tasks.store import collect_garbage, read_current
from model.store.layout import version_of_manifest_key

LOG = logging.getLogger(__name__)

GC_SUMMARY = "gc-summary"


@flow(name="gc-store", description="Delete old versions and unreferenced shards, ledgers and quantizers.")
def gc_store(keep: int = 10, store: str | None = None, min_age_s: float = 3600.0) -> dict:
    """Collect garbage in a store.

    Args:
        keep: how many of the newest versions to keep (CURRENT always is).
        store: the index store (default ``RETROFRESH_STORE``).
        min_age_s: keep unreferenced files younger than this.

    Returns:
        ``{"current", "kept", "deleted"}`` with the deleted keys.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (got {keep}); CURRENT's version is always kept")
    inputs = resolve_inputs(store)
    current = read_current(inputs.store)
    deleted = collect_garbage(inputs.store, keep, min_age_s)
    versions = sorted({version for key in deleted if (version := version_of_manifest_key(key))})
    record_summary(GC_SUMMARY, f"Garbage collection of {inputs.store}", {
        "CURRENT": current, "versions kept": keep, "files deleted": len(deleted),
        "versions deleted": ", ".join(versions) or "none"})
    return {"current": current, "kept": keep, "deleted": deleted}
