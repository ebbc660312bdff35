"""Diff this run's observations against the parent ledger: new, changed, unchanged, deleted.

Rules (one document, ``old`` its parent ledger row, ``obs`` this run's observation):

- fetched, no old row: new. Fetched, same content hash: unchanged. Different hash: changed
  (its old chunk ids become tombstones).
- not modified (304, or sitemap lastmod not newer): unchanged, validators refreshed.
- gone (404/410) or now disallowed by robots.txt: deleted.
- failed (timeout, 5xx, too large, ...): unchanged; a failure never deletes anything.
- not observed at all: deleted when its source is no longer configured, or is a files source
  whose listing is complete (the glob is the listing); otherwise unchanged (sites are
  re-requested to detect removals; feeds drop old entries without the pages going away).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Iterable, Iterator

import apache_beam as beam

from beam_jobs.metrics import count
from beam_jobs.types import (
    CHANGED, DELETED, FAILED, FETCHED, GONE, NEW, NOT_MODIFIED, ROBOTS_BLOCKED, UNCHANGED,
    LedgerRow, Observation, ToChunk,
)  # fmt: skip

LOG = logging.getLogger(__name__)

TOMBSTONES = "tombstones"  # tagged output: chunk ids that leave the index
LEDGER = "ledger"  # tagged output: rows carried into the new ledger unchanged in content
TO_CHUNK = "to_chunk"  # tagged output: new and changed documents


@dataclass(frozen=True)
class Decision:
    """What happens to one document in this run."""

    outcome: str | None  # NEW, CHANGED, UNCHANGED, DELETED; None: nothing to record
    row: LedgerRow | None = None  # the document's row in the new ledger, when already known
    to_chunk: ToChunk | None = None
    tombstones: tuple[int, ...] = ()


def pick(observations: Iterable[Observation], source_order: dict[str, int]) -> tuple[Observation | None, int]:
    """The observation that speaks for a document, and how many duplicates were dropped.

    The same URL may come from two sources (a site and its feed) or twice from one .jsonl
    file. The earliest configured source wins; within it, content beats no content; ties
    go to the smallest (url, content hash) so the choice is deterministic.
    """
    ranked = sorted(
        observations,
        key=lambda o: (source_order.get(o.source, len(source_order)), o.outcome != FETCHED, o.url, o.content_hash or ""),
    )
    return (ranked[0] if ranked else None), max(0, len(ranked) - 1)


def classify(
    old: LedgerRow | None,
    obs: Observation | None,
    *,
    source_kinds: dict[str, str],
    incomplete: frozenset[str] | set[str],
    now: datetime,
) -> Decision:
    """Apply the module's rules to one document.

    Args:
        old: its row in the parent ledger, if any.
        obs: what this run observed, if anything.
        source_kinds: configured source name -> kind (site, feed, files).
        incomplete: files sources whose listing failed in part this run.
        now: this run's time (first_seen of new documents).

    Returns:
        The Decision.
    """
    if obs is None:
        if old is None:
            return Decision(None)
        kind = source_kinds.get(old.source)
        if kind is None or (kind == "files" and old.source not in incomplete):
            return Decision(DELETED, tombstones=old.chunk_ids)
        return Decision(UNCHANGED, row=old)
    if obs.outcome == FETCHED:
        if old is None:
            return Decision(NEW, to_chunk=ToChunk(obs, first_seen=now, outcome=NEW))
        if old.content_hash == obs.content_hash:
            return Decision(UNCHANGED, row=_refreshed(old, obs))
        return Decision(CHANGED, to_chunk=ToChunk(obs, first_seen=old.first_seen or now, outcome=CHANGED, old=old), tombstones=old.chunk_ids)
    if old is None:
        return Decision(None)  # a failure, removal or block of something we never had
    if obs.outcome == NOT_MODIFIED:
        return Decision(UNCHANGED, row=_refreshed(old, obs))
    if obs.outcome in (GONE, ROBOTS_BLOCKED):
        return Decision(DELETED, tombstones=old.chunk_ids)
    return Decision(UNCHANGED, row=old)  # FAILED: keep what we had


def _refreshed(old: LedgerRow, obs: Observation) -> LedgerRow:
    """The old row with this run's validators and fetch time (content and chunks unchanged)."""
    return replace(
        old,
        url=obs.url,
        source=obs.source,
        etag=obs.etag or old.etag,
        last_modified=obs.last_modified or old.last_modified,
        fetched_at=obs.fetched_at or old.fetched_at,
        title=obs.title or old.title,
        published_at=old.published_at or obs.published_at,
    )


def by_doc_id(item):
    """A ledger row or an observation, keyed by its document for the join with the ledger."""
    return item.doc_id, item


class DiffDoFn(beam.DoFn):
    """(doc_id, {'old': [LedgerRow], 'new': [Observation]}) -> ledger rows, documents to chunk, tombstones."""

    def __init__(self, source_kinds: dict[str, str], source_order: list[str], now: datetime):
        self.source_kinds = dict(source_kinds)
        self.source_order = {name: i for i, name in enumerate(source_order)}
        self.now = now

    def process(self, element, incomplete: Iterable[str]) -> Iterator:
        _, grouped = element
        olds = list(grouped["old"])
        obs, duplicates = pick(grouped["new"], self.source_order)
        count("duplicates", duplicates)
        if obs is not None and obs.outcome == FAILED and olds:
            count("kept_after_failure")
        decision = classify(olds[0] if olds else None, obs, source_kinds=self.source_kinds, incomplete=frozenset(incomplete), now=self.now)
        if decision.outcome is not None:
            count(decision.outcome)
        if decision.row is not None:
            yield beam.pvalue.TaggedOutput(LEDGER, decision.row)
        if decision.to_chunk is not None:
            yield beam.pvalue.TaggedOutput(TO_CHUNK, decision.to_chunk)
        if decision.tombstones:
            count("tombstones", len(decision.tombstones))
            yield beam.pvalue.TaggedOutput(TOMBSTONES, decision.tombstones)
        if decision.outcome in (NEW, CHANGED, DELETED):
            yield decision.outcome  # main output: the run's changes, so the writer knows if any


class DiffAgainstLedger(beam.PTransform):
    """This run's observations against the parent ledger, one document at a time (:func:`classify`).

    The input is a dict of PCollections: ``ledger`` (the parent's LedgerRows), ``observations``
    and ``incomplete`` (source names, as :class:`beam_jobs.extract.Extract` returns them).

    Args:
        source_kinds: configured source name -> kind.
        source_order: the configured source names, in order (the earliest wins a duplicate).
        now: the run's start (first_seen of new documents).

    Returns:
        ``{"changes": one outcome per new, changed or deleted document, "ledger": rows carried
        over, "to_chunk": ToChunk of new and changed documents, "tombstones": chunk id tuples}``.
    """

    def __init__(self, source_kinds: dict[str, str], source_order: list[str], now: datetime):
        super().__init__()
        self.source_kinds = dict(source_kinds)
        self.source_order = list(source_order)
        self.now = now

    def expand(self, parts: dict):
        diff = (
            {
                "old": parts["ledger"] | "OldByDoc" >> beam.Map(by_doc_id),
                "new": parts["observations"] | "NewByDoc" >> beam.Map(by_doc_id),
            }
            | "JoinLedger" >> beam.CoGroupByKey()
            | "Diff"
            >> beam.ParDo(
                DiffDoFn(self.source_kinds, self.source_order, self.now), incomplete=beam.pvalue.AsList(parts["incomplete"])
            ).with_outputs(LEDGER, TO_CHUNK, TOMBSTONES, main="changes")
        )
        return {"changes": diff.changes, LEDGER: diff[LEDGER], TO_CHUNK: diff[TO_CHUNK], TOMBSTONES: diff[TOMBSTONES]}
