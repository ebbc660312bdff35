"""The diff rules, one document at a time."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from beam_jobs.diff import classify, pick
from beam_jobs.types import CHANGED, DELETED, FAILED, FETCHED, GONE, NEW, NOT_MODIFIED, ROBOTS_BLOCKED, UNCHANGED, LedgerRow, Observation

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
KINDS = {"site": "site", "feed": "feed", "files": "files"}
OLD = LedgerRow("d1", "http://x/a", "site", "A", '"e1"', "Mon, 01 Jan 2024 00:00:00 GMT", "h1",
                None, datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2023, 1, 1, tzinfo=timezone.utc), (11, 12))  # fmt: skip


def obs(outcome: str, content_hash: str | None = None, source: str = "site", **kw) -> Observation:
    return Observation("d1", "http://x/a", source, outcome, content_hash=content_hash, text="t" if content_hash else None, **kw)


def decide(old, observation, incomplete=()):
    return classify(old, observation, source_kinds=KINDS, incomplete=set(incomplete), now=NOW)


def test_new_document_is_chunked_with_first_seen_now():
    d = decide(None, obs(FETCHED, "h1"))
    assert d.outcome == NEW and d.to_chunk.first_seen == NOW and not d.tombstones


def test_same_hash_is_unchanged_with_refreshed_validators():
    d = decide(OLD, obs(FETCHED, "h1", etag='"e2"', fetched_at=NOW))
    assert d.outcome == UNCHANGED and d.to_chunk is None
    assert d.row.etag == '"e2"' and d.row.fetched_at == NOW and d.row.chunk_ids == (11, 12)


def test_new_hash_is_changed_and_tombstones_the_old_chunks():
    d = decide(OLD, obs(FETCHED, "h2"))
    assert d.outcome == CHANGED and d.tombstones == (11, 12) and d.to_chunk.first_seen == OLD.first_seen


def test_not_modified_keeps_the_row():
    d = decide(OLD, obs(NOT_MODIFIED))
    assert d.outcome == UNCHANGED and d.row.content_hash == "h1" and d.row.etag == '"e1"'


@pytest.mark.parametrize("outcome", [GONE, ROBOTS_BLOCKED])
def test_gone_or_disallowed_is_deleted(outcome):
    d = decide(OLD, obs(outcome))
    assert d.outcome == DELETED and d.tombstones == (11, 12)


def test_a_failure_never_deletes():
    d = decide(OLD, obs(FAILED, reason="timeout"))
    assert d.outcome == UNCHANGED and d.row == OLD


@pytest.mark.parametrize("outcome", [FAILED, GONE, ROBOTS_BLOCKED, NOT_MODIFIED])
def test_non_content_outcomes_of_unknown_documents_record_nothing(outcome):
    assert decide(None, obs(outcome)).outcome is None


@pytest.mark.parametrize(
    "source, incomplete, expected",
    [
        ("site", (), UNCHANGED),  # a page not reached this time is kept
        ("feed", (), UNCHANGED),  # entries fall off feeds; the pages stay
        ("files", (), DELETED),  # the glob is the listing
        ("files", ("files",), UNCHANGED),  # ...unless part of it could not be read
        ("retired", (), DELETED),  # its source is no longer configured
    ],
)
def test_unobserved_documents(source, incomplete, expected):
    old = LedgerRow(**{**OLD.__dict__, "source": source})
    assert decide(old, None, incomplete).outcome == expected


def test_pick_prefers_the_first_configured_source_then_content():
    a = obs(FETCHED, "h", source="feed")
    b = obs(FETCHED, "h", source="site")
    c = obs(FAILED, source="site")
    chosen, dropped = pick([a, c, b], {"site": 0, "feed": 1})
    assert chosen is b and dropped == 2
