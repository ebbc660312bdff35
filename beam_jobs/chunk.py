"""Chunking: new and changed documents into RETRO chunks with the model's tokenizer."""

from __future__ import annotations

import logging
from typing import Iterator

import apache_beam as beam

from beam_jobs.metrics import count, count_failure
from beam_jobs.types import LedgerRow, ToChunk
from model.contracts.chunking import chunk_document

LOG = logging.getLogger(__name__)

LEDGER = "ledger"  # tagged output: the ledger row of each chunked document (with its chunk ids)
KEPT = "kept"  # tagged output: the parent rows of changed documents that could not be chunked


def ledger_row(item: ToChunk, chunk_ids: tuple[int, ...]) -> LedgerRow:
    """The new ledger row of a new or changed document."""
    obs = item.observation
    return LedgerRow(
        doc_id=obs.doc_id,
        url=obs.url,
        source=obs.source,
        title=obs.title,
        etag=obs.etag,
        last_modified=obs.last_modified,
        content_hash=obs.content_hash or "",
        published_at=obs.published_at,
        fetched_at=obs.fetched_at,
        first_seen=item.first_seen,
        chunk_ids=chunk_ids,
    )


def tombstone_key(ids) -> str:
    """A document's chunk ids as one join key (its tombstones and its kept parent row meet on it)."""
    return ",".join(str(int(i)) for i in ids)


def keyed_tombstones(ids) -> tuple[str, tuple]:
    return tombstone_key(ids), tuple(ids)


def keyed_kept(row: LedgerRow) -> tuple[str, bool]:
    return tombstone_key(row.chunk_ids), True


def keep_tombstones(item) -> list:
    """(key, {"tombstones": [...], "kept": [...]}) -> the tombstones, none when the document was kept."""
    _, grouped = item
    return [] if list(grouped["kept"]) else list(grouped["tombstones"])


class DropKeptTombstones(beam.PTransform):
    """The diff's tombstones less those of changed documents kept (quarantined by the chunker).

    Input: ``{"tombstones": chunk id tuples (one per document), "kept": parent LedgerRows}``.
    """

    def expand(self, parts: dict):
        return (
            {
                "tombstones": parts["tombstones"] | "KeyTombstones" >> beam.Map(keyed_tombstones),
                "kept": parts["kept"] | "KeyKept" >> beam.Map(keyed_kept),
            }
            | "JoinKept" >> beam.CoGroupByKey()
            | "NotKept" >> beam.FlatMap(keep_tombstones)
        )


class ChunkDoFn(beam.DoFn):
    """ToChunk -> Chunks (main output) and the document's LedgerRow (tagged ``ledger``).

    A document the chunker fails on is quarantined: counted ``failed_chunk_error``, left out
    (new), or kept as its parent row (changed; tagged ``kept``, its tombstones taken back by
    :class:`DropKeptTombstones`), so the rest of the run still publishes.

    Args:
        tokenizer_json: the tokenizer's ``tokenizer.json`` text. The tokenizer travels inside
            the pipeline, so Dataflow workers use exactly the bytes whose sha256 the manifest
            records, whatever files their image holds.
        tokenizer_name: its recorded name.
        tokenizer_sha256: the sha256 the manifest will record; checked on load.
    """

    def __init__(self, tokenizer_json: str, tokenizer_name: str, tokenizer_sha256: str):
        self.tokenizer_json = tokenizer_json
        self.tokenizer_name = tokenizer_name
        self.tokenizer_sha256 = tokenizer_sha256
        self._tokenizer = None

    def setup(self) -> None:
        from model.contracts.tokenizer import RetroTokenizer

        self._tokenizer = RetroTokenizer.from_json(self.tokenizer_json, self.tokenizer_name)
        if self._tokenizer.sha256 != self.tokenizer_sha256:  # the manifest must name what chunked
            raise RuntimeError(f"tokenizer sha256 {self._tokenizer.sha256} != planned {self.tokenizer_sha256}")

    def process(self, item: ToChunk) -> Iterator:
        obs = item.observation
        try:
            tokens = self._tokenizer.encode(obs.text or "")
            chunks = chunk_document(tokens, doc_id=obs.doc_id, url=obs.url, content_hash=obs.content_hash or "", tokenizer=self._tokenizer)
        except Exception:  # one document the chunker cannot take must not fail every source's refresh
            LOG.exception("%s could not be chunked: quarantined, it stays as the parent version has it", obs.url)
            count_failure("chunk_error")
            count(item.outcome, -1)
            if item.old is not None:  # changed: keep the old row; its tombstones are taken back
                count("unchanged")
                count("tombstones", -len(item.old.chunk_ids))
                yield beam.pvalue.TaggedOutput(KEPT, item.old)
            return
        count("chunks", len(chunks))
        yield beam.pvalue.TaggedOutput(LEDGER, ledger_row(item, tuple(c.chunk_id for c in chunks)))
        yield from chunks
