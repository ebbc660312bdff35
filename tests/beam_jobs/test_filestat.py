"""A file read while a writer rewrites it is never taken as its content (beam_jobs/filestat.py)."""

from __future__ import annotations

import os

import pytest

from beam_jobs import filestat
from beam_jobs.crawl import ReadFileDoFn
from beam_jobs.sources import FilesSource
from beam_jobs.types import FAILED, FETCHED
from tests.fixtures.rewrites import writer_between_open_and_close

BODY = b'{"id": 1, "text": "one"}\n{"id": 2, "text": "two"}\n'
PAST = 1_600_000_000  # listed mtimes lie in the past, so a rewrite now always moves mtime


def listed(path) -> tuple[int, float]:
    os.utime(path, (PAST, PAST))
    return os.path.getsize(path), os.path.getmtime(path)


def test_an_unchanged_file_is_read_whole(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(BODY)
    size, mtime = listed(path)
    assert filestat.read_unchanged(str(path), size=size, mtime=mtime, max_bytes=1000) == (BODY, None)
    assert filestat.read_unchanged(str(path), size=None, mtime=None, max_bytes=10)[0] == BODY[:11]  # too large: limit + 1


@pytest.mark.parametrize("partial", [b"", BODY[:30]], ids=["truncated", "half-written"])
def test_a_file_rewritten_with_the_same_bytes_while_read_is_changed_while_read(tmp_path, monkeypatch, partial):
    path = tmp_path / "a.jsonl"
    path.write_bytes(BODY)
    size, mtime = listed(path)
    with writer_between_open_and_close(monkeypatch, path, then=BODY, partial=partial):
        assert filestat.read_unchanged(str(path), size=size, mtime=mtime, max_bytes=1000) == (None, filestat.CHANGED_WHILE_READ)
    assert path.read_bytes() == BODY  # the writer finished: the next run reads it


def test_a_file_changed_since_listed_or_replaced_by_rename_is_changed_while_read(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(BODY)
    size, mtime = listed(path)
    assert filestat.read_unchanged(str(path), size=size + 1, mtime=mtime, max_bytes=1000)[1] == filestat.CHANGED_WHILE_READ
    assert filestat.read_unchanged(str(path), size=size, mtime=mtime + 1, max_bytes=1000)[1] == filestat.CHANGED_WHILE_READ
    before = filestat.stamp(str(path))
    other = tmp_path / "b.tmp"
    other.write_bytes(BODY)
    os.utime(other, (PAST, PAST))
    other.replace(path)  # same bytes, same mtime, another inode
    assert filestat.stamp(str(path)) != before
    assert filestat.read_unchanged(str(path), size=None, mtime=None, max_bytes=1000) == (BODY, None)  # nothing to compare with


def test_a_file_gone_before_it_is_read_is_an_io_error(tmp_path):
    assert filestat.read_unchanged(str(tmp_path / "gone.txt"), size=3, mtime=PAST, max_bytes=10) == (None, filestat.IO_ERROR)


def test_read_files_fails_a_jsonl_file_caught_mid_rewrite_and_keeps_its_source(tmp_path, monkeypatch):
    """The DoFn's view: a FAILED result, and the source marked incomplete (nothing of it deleted)."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(BODY)
    size, mtime = listed(path)
    source = FilesSource(kind="files", name="docs", glob=str(tmp_path / "*.jsonl"))
    with writer_between_open_and_close(monkeypatch, path, then=BODY):
        out = list(ReadFileDoFn().process((source, str(path), size, mtime)))
    results = [o for o in out if hasattr(o, "outcome")]
    assert [(r.outcome, r.reason) for r in results] == [(FAILED, "changed_while_read")]
    assert any(getattr(o, "value", None) == "docs" for o in out)  # TaggedOutput(INCOMPLETE, "docs")
    os.utime(path, (PAST, PAST))
    again = [o for o in ReadFileDoFn().process((source, str(path), size, PAST)) if hasattr(o, "outcome")]
    assert [(r.outcome, r.body) for r in again] == [(FETCHED, BODY)]
