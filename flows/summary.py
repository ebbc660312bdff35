"""The record of one refresh: what the CLI prints with ``--json`` and what the artifacts show."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

# Document outcomes, in the order the UI table lists them; keys of ``RefreshSummary.documents``.
OUTCOMES = ("new", "changed", "unchanged", "deleted", "failed", "robots_blocked")
# The ingest job's metric for each outcome (it says robots_blocked too, but keep the map explicit).
METRIC_FOR_OUTCOME = {outcome: outcome for outcome in OUTCOMES}


def document_counts(metrics: dict[str, int] | None) -> dict[str, int]:
    """Document outcome counts from an ingest job's metrics (missing ones are 0)."""
    metrics = metrics or {}
    return {outcome: int(metrics.get(METRIC_FOR_OUTCOME[outcome], 0) or 0) for outcome in OUTCOMES}


@dataclass
class RefreshSummary:
    """One refresh, end to end.

    ``version`` is what ``CURRENT`` names after the refresh and ``parent`` what it named before;
    they are equal when nothing changed and nothing was published.
    """

    version: str | None
    parent: str | None
    published: bool
    documents: dict[str, int]
    chunks_added: int
    chunks_removed: int
    seconds: float
    store: str = ""
    started_at: str | None = None
    published_at: str | None = None
    newest_source_change: str | None = None
    freshness_lag_s: float | None = None
    compacted_from: str | None = None  # the ingest draft that compaction replaced
    nprobe: int | None = None  # search.nprobe of the published version (tuned by validation)
    recall_at_k: float | None = None  # recall@2 vs exact search at that nprobe
    job_id: str | None = None
    dataflow_url: str | None = None
    validation: dict = field(default_factory=dict)
    notified: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def freshness_lag_s(published_at: datetime | None, newest_change: datetime | None) -> float | None:
    """Seconds from the newest source change to the publish that made it searchable."""
    if published_at is None or newest_change is None:
        return None
    return max(0.0, (published_at - newest_change).total_seconds())
