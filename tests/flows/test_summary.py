"""What a refresh says about what it skipped: failures by reason and failed sources, in the summary and the artifact."""

from __future__ import annotations

from flows.common.summary import RefreshSummary, failure_counts
from flows.tasks.artifacts import summary_markdown


def test_failures_by_reason_come_from_the_failed_metrics():
    metrics = {"failed": 3, "failed_changed_while_read": 1, "failed_timeout": 2, "failed_io_error": 0, "deleted": 4}
    assert failure_counts(metrics) == {"changed_while_read": 1, "timeout": 2}
    assert failure_counts(None) == {}


def test_the_summary_artifact_lists_failed_sources_and_skipped_documents():
    summary = RefreshSummary(
        version="v2", parent="v1", published=True, documents={"new": 1}, chunks_added=4, chunks_removed=0, seconds=1.0,
        failures={"changed_while_read": 1},
        failed_sources=[{"source": "notes", "error": "source 'notes' would lose 2 of its 2 documents ..."}],
    )
    text = summary_markdown(summary)
    assert "## Failed sources" in text and "**notes**: source 'notes' would lose 2 of its 2 documents" in text
    assert "## Skipped (kept as they were)" in text and "- changed while read: 1" in text
    assert "Failed sources" not in summary_markdown(RefreshSummary("v2", "v1", True, {}, 0, 0, 1.0))
