"""The record of one refresh: what the CLI prints with ``--json`` and what the artifacts show, and
when the sources it published last changed (the freshness lag).

A refresh that fails is recorded too (:class:`RefreshFailure`): the error, the step that raised it
and ``published: false``, so a script reading ``--json`` always gets one object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from types import TracebackType

from model.contracts.clock import as_utc

# Document outcomes, in the order the UI table lists them; keys of ``RefreshSummary.documents``.
OUTCOMES = ("new", "changed", "unchanged", "deleted", "failed", "robots_blocked")
# The ingest job's metric for each outcome (it says robots_blocked too, but keep the map explicit).
METRIC_FOR_OUTCOME = {outcome: outcome for outcome in OUTCOMES}


def failure_counts(metrics: dict[str, int] | None) -> dict[str, int]:
    """Failed documents (or files) by reason, from the ``failed_<reason>`` metrics; each was kept as it was."""
    return {name.removeprefix("failed_"): int(n) for name, n in sorted((metrics or {}).items())
            if name.startswith("failed_") and n}


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
    # Failed documents by reason (changed_while_read, too_large, timeout, ...): skipped this run,
    # each kept as the parent version had it, while everything else publishes.
    failures: dict[str, int] = field(default_factory=dict)
    # Sources that failed as a whole ({"source", "error", ...}; the deletion guard): kept as they were.
    failed_sources: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def freshness_lag_s(published_at: datetime | None, newest_change: datetime | None) -> float | None:
    """Seconds from the newest source change to the publish that made it searchable."""
    if published_at is None or newest_change is None:
        return None
    return max(0.0, (published_at - newest_change).total_seconds())


# When did the sources last change? A document's change time is what its source says
# (``published_at``: sitemap lastmod, feed date, page metadata; else the ``Last-Modified`` header);
# only when no changed document carries either does it fall back to when it was fetched, and the
# answer says which basis it used.


def changed_rows(new_ledger: list[dict], old_ledger: list[dict]) -> list[dict]:
    """Rows of the new ledger whose document is new or whose content hash changed."""
    old = {row["doc_id"]: row.get("content_hash") for row in old_ledger}
    return [row for row in new_ledger if row["doc_id"] not in old or old[row["doc_id"]] != row.get("content_hash")]


def newest_change(rows: list[dict]) -> tuple[datetime | None, str]:
    """The newest source change among ledger rows, and its basis.

    Returns:
        (time or None when there are no rows, "published" | "fetched" | "none").
    """
    from beam_jobs.fetch import parse_http_date  # the fetcher's reading of the header; imported late: the CLI imports this module

    stated = [t for row in rows if (t := as_utc(row.get("published_at")) or parse_http_date(row.get("last_modified")))]
    if stated:
        return max(stated), "published"
    fetched = [t for row in rows if (t := as_utc(row.get("fetched_at")))]
    if fetched:
        return max(fetched), "fetched"
    return None, "none"


def newest_source_change(store, version: str, parent: str | None) -> tuple[datetime | None, str]:
    """The newest change among documents that ``version`` added or changed relative to ``parent``.

    Args:
        store: the :class:`model.store.Store`.
        version: the new version.
        parent: the version it replaces (None: every document is new).

    Returns:
        As :func:`newest_change`.
    """
    columns = ["doc_id", "content_hash", "published_at", "last_modified", "fetched_at"]
    new = store.read_ledger(version).select(columns).to_pylist()
    old = store.read_ledger(parent).select(["doc_id", "content_hash"]).to_pylist() if parent else []
    return newest_change(changed_rows(new, old))


@dataclass
class RefreshFailure:
    """A refresh that did not finish; nothing it did was published.

    ``error`` is ``{"type", "message", "step"}``: the exception's class and message, and the
    Prefect task that raised it (or, outside tasks, the function the flow body called; None when
    the flow never ran, for example when its Prefect API did not start).
    """

    error: dict
    published: bool = False
    store: str | None = None
    flow_run_id: str | None = None

    @classmethod
    def from_error(cls, error: BaseException, *, store: str | None = None, flow_run_id: str | None = None) -> "RefreshFailure":
        message = str(error) or repr(error)
        step = failed_step(error.__traceback__)
        return cls({"type": type(error).__name__, "message": message, "step": step}, store=store, flow_run_id=flow_run_id)

    def to_dict(self) -> dict:
        return asdict(self)


def failed_step(traceback: TracebackType | None) -> str | None:
    """The step of a flow that raised: the innermost Prefect task on the traceback, else the
    function the flow body called, else None.

    Read from the frames themselves (a task's frame runs its ``fn``), so it needs no round trip
    to the Prefect API, which records task states asynchronously.
    """
    from prefect import Flow, Task

    task_name, called_by_flow, in_flow = None, None, False
    while traceback is not None:
        code = traceback.tb_frame.f_code
        named = traceback.tb_frame.f_globals.get(code.co_name)
        if isinstance(named, Task) and getattr(named.fn, "__code__", None) is code:
            task_name = named.name
        elif isinstance(named, Flow) and getattr(named.fn, "__code__", None) is code:
            in_flow, called_by_flow = True, None
        elif in_flow and called_by_flow is None and traceback.tb_frame.f_globals.get("__name__", "").startswith("flows."):
            called_by_flow = code.co_name
        traceback = traceback.tb_next
    return task_name or called_by_flow
