"""The deletion guard: a refresh never deletes more than a share of one source's documents.

A source that suddenly lists nothing (an unmounted disk, an emptied bucket, a site that answers
404 everywhere) would otherwise delete every document it had, and publish that. After the ingest
wrote its draft, the guard compares the draft's ledger with the parent's: a configured source
that would lose more than ``max_delete_share`` of its documents fails. Its deletions are taken
back (its documents stay as the parent had them: ledger rows and chunks), a message says how to
override, and every other change, of that source and of the others, is still published. A source
no longer configured is not guarded: removing it from the sources file is the way to say "delete
it all".
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from beam_jobs.ingest import IngestResult

LOG = logging.getLogger(__name__)

DEFAULT_MAX_DELETE_SHARE = 0.5


@dataclass(frozen=True)
class RefusedDeletions:
    """A source whose deletions this refresh refused."""

    source: str
    deleting: int  # documents the ingest would have deleted
    documents: int  # documents the source had in the parent version
    max_share: float

    @property
    def message(self) -> str:
        return (
            f"source {self.source!r} would lose {self.deleting} of its {self.documents} documents "
            f"({self.deleting / self.documents:.0%}, more than max_delete_share {self.max_share:.0%}); "
            f"they were kept as they were and the source's other changes published. If the source really "
            f"lost them, refresh with --max-delete-share 1 (or set max_delete_share: 1 in the sources file)"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "error": self.message}


def guard_deletions(store, draft: str, *, max_share: float, configured: set[str] | frozenset[str]) -> tuple[str | None, list[RefusedDeletions], int, int]:
    """Take back the deletions of every configured source that would lose more than ``max_share``.

    Args:
        store: the :class:`model.store.Store`.
        draft: the ingest's draft version.
        max_share: the largest share (0..1) of a source's documents one refresh may delete.
        configured: the names of the sources configured for this run.

    Returns:
        (the version to go on with: ``draft``, a rebuilt draft without the refused deletions, or
        None when nothing else changed; the refused sources; documents kept; tombstones dropped).
    """
    manifest = store.manifest(draft)
    if manifest.parent is None or manifest.ledger is None:
        return draft, [], 0, 0
    parent = store.manifest(manifest.parent)
    old = store.read_ledger(parent.version)
    new = store.read_ledger(draft)
    still = set(new.column("doc_id").to_pylist())
    sources = old.column("source").to_pylist()
    gone_by_source: dict[str, list[int]] = {}
    totals: dict[str, int] = {}
    for row, (doc, source) in enumerate(zip(old.column("doc_id").to_pylist(), sources)):
        totals[source] = totals.get(source, 0) + 1
        if doc not in still:
            gone_by_source.setdefault(source, []).append(row)
    refused = [
        RefusedDeletions(source, len(rows), totals[source], max_share)
        for source, rows in sorted(gone_by_source.items(), key=lambda item: str(item[0]))
        if source in configured and len(rows) > max_share * totals[source]
    ]
    if not refused:
        return draft, [], 0, 0
    for r in refused:
        LOG.error("refresh of %s: %s", store.uri, r.message)
    kept = old.take(pa.array(sorted(row for r in refused for row in gone_by_source[r.source]), pa.int64()))
    kept_ids = {int(cid) for ids in kept.column("chunk_ids").to_pylist() for cid in (ids or [])}
    tombstones = [t for t in manifest.tombstones[len(parent.tombstones):] if t not in kept_ids]
    dropped = len(manifest.tombstones) - len(parent.tombstones) - len(tombstones)
    parent_shards = {s.id for s in parent.shards}
    added = [s for s in manifest.shards if s.id not in parent_shards]
    if not added and not tombstones:
        return None, refused, kept.num_rows, dropped  # the refused deletions were all there was
    from model.store import Manifest

    version = store.new_version_id()
    ledger = store.write_ledger(version, pa.concat_tables([new, kept.cast(new.schema)]))
    rebuilt = Manifest.next(
        parent, version=version, embedder=manifest.embedder, tokenizer=manifest.tokenizer, add_shards=added,
        tombstones=tombstones, ledger=ledger, documents=new.num_rows + kept.num_rows, watermark=manifest.watermark,
        sources=manifest.sources, search=manifest.search,
    )
    store.write_manifest(rebuilt)
    LOG.info("draft %s rebuilt as %s without the refused deletions (%d documents kept, %d tombstones dropped)",
             draft, version, kept.num_rows, dropped)
    return version, refused, kept.num_rows, dropped


@task(name="guard-deletions", cache_policy=NO_CACHE)
def guard_ingest_deletions(store_uri: str, ingest: IngestResult, *, max_share: float, configured: list[str]) -> tuple[IngestResult, list[dict]]:
    """Prefect task around :func:`guard_deletions`: the ingest result to publish, and the refused sources.

    The result's counts follow the rebuilt draft: documents kept count as unchanged, not
    deleted, and their tombstones are no longer removed chunks.
    """
    from model.store import open_store

    if ingest.version is None:
        return ingest, []
    version, refused, kept, dropped = guard_deletions(open_store(store_uri), ingest.version, max_share=max_share,
                                                      configured=frozenset(configured))
    if not refused:
        return ingest, []
    metrics = dict(ingest.metrics)
    metrics["deleted"] = metrics.get("deleted", 0) - kept
    metrics["unchanged"] = metrics.get("unchanged", 0) + kept
    metrics["tombstones"] = metrics.get("tombstones", 0) - dropped
    metrics["documents"] = metrics.get("documents", 0) + kept
    guarded = replace(ingest, version=version, metrics=metrics, chunks_removed=ingest.chunks_removed - dropped)
    return guarded, [r.to_dict() for r in refused]
