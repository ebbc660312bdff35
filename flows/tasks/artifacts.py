"""The artifacts each flow leaves in the Prefect UI, under stable dash-case keys.

Rendering (rows, markdown) is kept apart from the API calls so it can be tested without Prefect.
"""

from __future__ import annotations

import logging

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common.retry import QUICK_RETRIES
from flows.common.summary import OUTCOMES, RefreshSummary
from flows.tasks.notify import lagging_servers

LOG = logging.getLogger(__name__)

REFRESH_DOCUMENTS = "refresh-documents"
REFRESH_SUMMARY = "refresh-summary"
DATAFLOW_JOB = "dataflow-job"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes} min {secs:.0f} s"
    if minutes:
        return f"{minutes} min {secs:.0f} s"
    return f"{secs:.1f} s"


def documents_rows(summary: RefreshSummary) -> list[dict]:
    """One row per document outcome (new, changed, unchanged, deleted, failed, robots-blocked)."""
    return [
        {"outcome": outcome.replace("_", "-"), "documents": summary.documents.get(outcome, 0)}
        for outcome in OUTCOMES
    ]


def summary_markdown(summary: RefreshSummary) -> str:
    """The refresh at a glance: version, parent, chunk churn, duration and freshness lag."""
    if summary.published:
        headline = f"Published **{summary.version}** (parent {summary.parent or 'none'})."
    else:
        headline = f"Nothing changed; `CURRENT` still names **{summary.version or 'no version'}**."
    rows = [
        ("store", summary.store),
        ("version", summary.version),
        ("parent", summary.parent),
        ("chunks added", summary.chunks_added),
        ("chunks removed", summary.chunks_removed),
        ("duration", _duration(summary.seconds)),
        ("published at", summary.published_at),
        ("newest source change", summary.newest_source_change),
        ("freshness lag (publish - newest source change)", _duration(summary.freshness_lag_s)),
    ]
    if summary.compacted_from:
        rows.append(("compacted from draft", summary.compacted_from))
    if summary.nprobe is not None:
        recall = f", recall@{summary.validation.get('recall_k', 2)} {summary.recall_at_k} vs exact" if summary.recall_at_k is not None else ""
        rows.append(("search", f"nprobe {summary.nprobe}{recall}"))
    if summary.job_id:
        rows.append(("Dataflow job", f"[{summary.job_id}]({summary.dataflow_url})" if summary.dataflow_url else summary.job_id))
    lines = [f"# Refresh of {summary.store}", "", headline, "", "| | |", "| --- | --- |"]
    lines += [f"| {name} | {'' if value is None else value} |" for name, value in rows]
    if summary.failed_sources:
        lines += ["", "## Failed sources", ""] + [f"- **{f['source']}**: {f['error']}" for f in summary.failed_sources]
    if summary.failures:
        lines += ["", "## Skipped (kept as they were)", ""]
        lines += [f"- {reason.replace('_', ' ')}: {n}" for reason, n in summary.failures.items()]
    if summary.validation:
        lines += ["", "## Validation", ""]
        lines += [f"- {name}: {value}" for name, value in summary.validation.items()]
    if summary.notified:
        lagging = lagging_servers(summary.notified)
        if lagging:
            lines += ["", f"**{len(lagging)} of {len(summary.notified)} servers did not reload** ({', '.join(lagging)}): "
                      "the version is published; they serve an older one until they next check `CURRENT`."]
        lines += ["", "## Servers notified", "", "| server | ok | status | serving | detail |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {n['url']} | {'yes' if n['ok'] else 'no'} | {n.get('status') or ''} | {n.get('index_version') or ''} | {n.get('detail') or ''} |"
            for n in summary.notified
        ]
    return "\n".join(lines) + "\n"


@task(name="record-refresh-artifacts", **QUICK_RETRIES)
def record_refresh_artifacts(summary: RefreshSummary) -> None:
    """Attach the document-outcome table and the markdown summary to the running flow."""
    create_table_artifact(
        documents_rows(summary),
        key=REFRESH_DOCUMENTS,
        description=f"Document outcomes of the refresh that produced {summary.version}",
    )
    # The Dataflow link was attached when the job was submitted (flows/tasks/ingest.py).
    create_markdown_artifact(summary_markdown(summary), key=REFRESH_SUMMARY, description="Refresh summary")


def facts_markdown(title: str, facts: dict) -> str:
    """A titled two-column table of facts (the maintenance flows' summaries)."""
    lines = [f"# {title}", "", "| | |", "| --- | --- |"]
    lines += [f"| {name} | {'' if value is None else value} |" for name, value in facts.items()]
    return "\n".join(lines) + "\n"


@task(name="record-summary", **QUICK_RETRIES)
def record_summary(key: str, title: str, facts: dict) -> None:
    """Attach a markdown summary under a stable key (compaction-summary, rollback-summary, gc-summary)."""
    create_markdown_artifact(facts_markdown(title, facts), key=key, description=title)
