"""Publish ``(url, text)`` documents as a new version of a store, on top of CURRENT, without crawling.

A document already live with the same text keeps its chunks (chunk ids are deterministic); a
changed one gets new chunks and its old ones become tombstones, as a refresh would do; ``remove``
takes documents out. This is how an evaluation, a benchmark or a test lays down a stale and a
fresh version from files, and how ``retrofresh train --input`` indexes its files (``model.training.corpus``).
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np

from model.contracts.chunking import chunk_document
from model.contracts.clock import utcnow
from model.contracts.ids import content_hash, doc_id
from model.store.manifest import Manifest

LOG = logging.getLogger(__name__)


def live_chunks(store, version: str) -> dict[int, str]:
    """chunk id -> doc id of every live chunk of a version."""
    out: dict[int, str] = {}
    manifest = store.manifest(version)
    with store.open(version, embedder=manifest.embedder) as view:
        for batch in view.iter_chunks():
            rows = batch.select(["chunk_id", "doc_id"]).to_pydict()
            out.update(zip(rows["chunk_id"], rows["doc_id"]))
    return out


def publish_documents(
    store,
    documents: Sequence[tuple[str, str]],
    tokenizer,
    embedder,
    *,
    remove: Iterable[str] = (),
    source: str = "files",
    progress: bool = False,
) -> str:
    """Publish a version holding CURRENT's documents plus/replaced by ``documents``, minus ``remove``.

    Args:
        store: a :class:`model.store.Store` (empty, or with a CURRENT version).
        documents: ``(url, text)`` pairs to add or replace (by URL).
        tokenizer: cuts the chunks (the store's tokenizer).
        embedder: makes the keys (the store's embedder).
        remove: URLs of documents to take out.
        source: recorded in the manifest's sources.
        progress: show the embedding progress bar.

    Returns:
        The published version id (CURRENT's own when nothing changed).

    Raises:
        ValueError: a URL listed twice.
    """
    parent_version = store.current()
    parent = store.manifest(parent_version) if parent_version else None
    live = live_chunks(store, parent_version) if parent else {}
    chunks, seen = [], set()
    for url, text in documents:
        did = doc_id(url)
        if did in seen:
            raise ValueError(f"document {url} appears twice")
        seen.add(did)
        chunks.extend(chunk_document(tokenizer.encode(text), doc_id=did, url=url, content_hash=content_hash(text), tokenizer=tokenizer))
    gone_docs = seen | {doc_id(u) for u in remove}
    new_ids = {c.chunk_id for c in chunks}
    tombstones = sorted(cid for cid, did in live.items() if did in gone_docs and cid not in new_ids)
    added = [c for c in chunks if c.chunk_id not in live]
    if not added and not tombstones and parent is not None:
        return parent.version
    shards = []
    if added:
        vectors = np.asarray(embedder.encode([c.text for c in added], progress=progress), dtype=np.float32)
        shards.append(store.write_shard(added, vectors, embedder=embedder.spec))
    live_docs = (set(live.values()) - {doc_id(u) for u in remove}) | seen
    manifest = Manifest.next(
        parent, version=store.new_version_id(), embedder=embedder.spec, tokenizer={"name": tokenizer.name, "sha256": tokenizer.sha256},
        add_shards=shards, tombstones=tombstones, ledger=None, documents=len(live_docs), watermark=utcnow(), sources=[source],
    )
    store.publish(manifest, expected_current=parent_version)
    LOG.info("published %s: %d chunks added, %d tombstoned, %d documents", manifest.version, len(added), len(tombstones), len(live_docs))
    return manifest.version
