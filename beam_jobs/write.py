"""The job's ends: read the parent ledger from the store, and write one delta version as a draft.

The writer gathers every (chunk, embedding), ledger row and tombstone of the run on one worker
and calls the index store: one shard, the new ledger, then the manifest (create-only). It never
publishes; the refresh flow validates the draft and publishes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import apache_beam as beam
import numpy as np

from beam_jobs.metrics import count, timed
from beam_jobs.types import LedgerRow
from model.contracts.clock import utcnow
from model.contracts.embedder import EmbedderSpec

LOG = logging.getLogger(__name__)

DELTA_KEY = "delta"  # the one key everything is grouped under for the writer


def ledger_rows_to_table(rows: list[LedgerRow]):
    """Ledger rows as a pyarrow Table with the store's LEDGER_SCHEMA, sorted by doc_id."""
    import pyarrow as pa

    from model.store import LEDGER_SCHEMA

    rows = sorted(rows, key=lambda r: r.doc_id)
    columns = {name: [] for name in LEDGER_SCHEMA.names}
    for row in rows:
        data = row.to_dict()
        for name in LEDGER_SCHEMA.names:
            columns[name].append(data.get(name))
    return pa.table(columns, schema=LEDGER_SCHEMA)


class ReadLedgerDoFn(beam.DoFn):
    """Parent version id -> its ledger rows (as LedgerRow). The store is opened once per worker."""

    def __init__(self, store_uri: str):
        self.store_uri = store_uri
        self._store = None

    def setup(self) -> None:
        from model.store import open_store

        self._store = open_store(self.store_uri)

    def process(self, version: str) -> Iterator[LedgerRow]:
        table = self._store.read_ledger(version)
        count("parent_documents", table.num_rows)
        for row in table.to_pylist():
            yield LedgerRow.from_dict(row)

    def teardown(self) -> None:
        self._store = None


class ReadLedger(beam.PTransform):
    """The parent version's ledger as LedgerRows, spread over the workers (none for an empty store).

    Args:
        store_uri: the index store.
        parent: the version the run is diffed against (``CURRENT`` at launch), or None.

    Example::

        rows = pipeline | "ReadLedger" >> ReadLedger("gs://bucket/index", "v000003-1a2b")
    """

    def __init__(self, store_uri: str, parent: str | None):
        super().__init__()
        self.store_uri = store_uri
        self.parent = parent

    def expand(self, pbegin):
        return (
            pbegin
            | "ParentVersion" >> beam.Create([self.parent] if self.parent else [], reshuffle=False)
            | "ReadRows" >> beam.ParDo(ReadLedgerDoFn(self.store_uri))
            | "Spread" >> beam.Reshuffle()
        )


@dataclass(frozen=True)
class DraftSpec:
    """Everything the writer needs besides the data: where, which version, what made the keys."""

    store_uri: str
    version: str
    parent: str | None
    embedder: EmbedderSpec
    tokenizer_name: str
    tokenizer_sha256: str
    sources: tuple[str, ...]


class WriteDeltaDoFn(beam.DoFn):
    """('delta', {'embedded', 'ledger', 'tombstones', 'changes'}) -> one draft version in the store.

    Writes nothing when no document is new, changed or deleted (validators refreshed by 304s
    are not worth a version). Yields a summary dict of what it wrote.
    """

    def __init__(self, spec: DraftSpec):
        self.spec = spec
        self._store = None

    def setup(self) -> None:
        from model.store import open_store

        self._store = open_store(self.spec.store_uri)

    def teardown(self) -> None:
        self._store = None

    def process(self, element) -> Iterator[dict]:
        with timed("write"):
            written = self._write(element)
        if written is not None:
            yield written

    def _write(self, element) -> dict | None:
        from model.store import Manifest

        _, grouped = element
        rows: list[LedgerRow] = list(grouped["ledger"])
        changes = list(grouped["changes"])
        count("documents", len(rows))
        if not changes:
            count("nothing_changed")
            LOG.info("no document is new, changed or deleted: no draft version written")
            return None
        spec = self.spec
        embedded = sorted(grouped["embedded"], key=lambda pair: pair[0].chunk_id)
        tombstones = sorted({int(t) for ids in grouped["tombstones"] for t in ids})
        store = self._store
        parent = store.manifest(spec.parent) if spec.parent else None
        shards = []
        if embedded:
            chunks = [chunk for chunk, _ in embedded]
            vectors = np.stack([np.asarray(vector, dtype=np.float32) for _, vector in embedded])
            # The parent's lineage lets a large delta reuse its trained quantizer, so the shards
            # of one store compact into one with IVF merge_from instead of a rebuild.
            lineage = parent.lineage if parent is not None else None
            shards.append(store.write_shard(chunks, vectors, embedder=spec.embedder, lineage=lineage))
            count("shard_chunks", len(chunks))
        ledger = store.write_ledger(spec.version, ledger_rows_to_table(rows))
        fetched = [r.fetched_at for r in rows if r.fetched_at is not None]
        manifest = Manifest.next(
            parent,
            version=spec.version,
            embedder=spec.embedder,
            tokenizer={"name": spec.tokenizer_name, "sha256": spec.tokenizer_sha256},
            add_shards=shards,
            tombstones=tombstones,
            ledger=ledger,
            documents=len(rows),
            watermark=max(fetched) if fetched else None,
            sources=list(spec.sources),
        )
        store.write_manifest(manifest)
        count("drafts_written")
        LOG.info("draft %s: %d chunks in %d shard(s), %d tombstones, %d documents", spec.version, len(embedded), len(shards), len(tombstones), len(rows))
        return {"version": spec.version, "chunks": len(embedded), "tombstones": len(tombstones), "documents": len(rows), "at": utcnow().isoformat()}


class WriteDelta(beam.PTransform):
    """The run's delta -> one draft version in the store (nothing when no document changed).

    The input is a dict of PCollections: ``embedded`` (chunk, vector) pairs, ``ledger`` rows of
    every live document, ``tombstones`` (tuples of chunk ids) and ``changes`` (one outcome per new,
    changed or deleted document). They are gathered under one key, so one worker writes the
    shard, the ledger and the manifest. The output holds one summary dict per draft written.

    Example::

        summary = {"embedded": pairs, "ledger": rows, "tombstones": ids, "changes": outcomes} | WriteDelta(spec)
    """

    PARTS = ("embedded", "ledger", "tombstones", "changes")

    def __init__(self, spec: DraftSpec):
        super().__init__()
        self.spec = spec

    def expand(self, parts: dict):
        missing = set(self.PARTS) - set(parts)
        if missing:
            raise ValueError(f"WriteDelta needs the PCollections {', '.join(self.PARTS)}; missing {', '.join(sorted(missing))}")
        keyed = {name: parts[name] | f"Key{name.capitalize()}" >> beam.Map(lambda value: (DELTA_KEY, value)) for name in self.PARTS}
        return keyed | "GatherDelta" >> beam.CoGroupByKey() | "Write" >> beam.ParDo(WriteDeltaDoFn(self.spec))
