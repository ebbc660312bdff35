"""Reading one listed file whole and unchanged: a stat before and after the read.

A writer that truncates a file and writes it again, caught by a read in between, leaves the reader
an empty or partial file; for a ``.jsonl`` file that reads as "all its documents were deleted". So
a read counts only when the file is still as listed just before it (size, mtime), is the same just
after it (size, mtime, and for a local file inode and nanosecond mtime), and the bytes read are as
many as its size. Otherwise the file is ``changed_while_read``: a failure, so the run keeps the
documents it had (a failure never deletes, and an unread ``.jsonl`` file keeps its whole source)
and the next run reads it again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

LOG = logging.getLogger(__name__)

CHANGED_WHILE_READ = "changed_while_read"  # the failure reason (counter failed_changed_while_read)
IO_ERROR = "io_error"


@dataclass(frozen=True)
class Stamp:
    """What says a file changed: size and mtime, plus inode and nanosecond mtime where local."""

    size: int
    mtime: float | None
    inode: int | None = None
    mtime_ns: int | None = None

    def as_listed(self, size: int | None, mtime: float | None) -> bool:
        """Is the file still what the listing saw (fields the listing did not give are not compared)?"""
        return (size is None or size == self.size) and (mtime is None or self.mtime is None or mtime == self.mtime)


def stamp(path: str) -> Stamp:
    """The file's stamp now: ``os.stat`` for a local path, Beam's metadata (gs://, ...) otherwise.

    Raises:
        OSError, BeamIOError: the file cannot be stat'ed (gone, no permission).
    """
    if FileSystems.get_scheme(path) in (None, "file"):
        st = os.stat(path.removeprefix("file://"))
        return Stamp(st.st_size, st.st_mtime, st.st_ino, st.st_mtime_ns)
    # FileSystems has no single-file stat: a match on the exact path gives its metadata.
    found = [m for m in FileSystems.match([path])[0].metadata_list if m.path == path]
    if not found:
        raise FileNotFoundError(f"{path}: no such file")
    return Stamp(found[0].size_in_bytes, found[0].last_updated_in_seconds)


def read_bytes(path: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of the file (one more than allowed shows it is too large)."""
    with FileSystems.open(path) as f:
        return f.read(limit)


def read_unchanged(path: str, *, size: int | None, mtime: float | None, max_bytes: int) -> tuple[bytes | None, str | None]:
    """Read a listed file, or say why its bytes cannot be trusted this run.

    Args:
        path: the file (local or any Beam filesystem).
        size, mtime: what the listing said (None: not known).
        max_bytes: the most bytes to keep; up to ``max_bytes + 1`` are read, so a caller sees a
            larger file.

    Returns:
        ``(body, None)``, or ``(None, reason)``: ``changed_while_read`` (the file changed between
        the listing and the end of the read, or fewer bytes came than it holds) or ``io_error``.
    """
    try:
        before = stamp(path)
        body = read_bytes(path, max_bytes + 1)
        after = stamp(path)
    except Exception as exc:  # any I/O error: a failure, which keeps the documents
        LOG.error("cannot read %s: %s", path, exc)
        return None, IO_ERROR
    whole = len(body) == after.size or (len(body) > max_bytes and after.size > max_bytes)
    if not before.as_listed(size, mtime) or before != after or not whole:
        LOG.warning("%s changed while read (listed %s bytes, then %s, then %s; read %d), skipped this run: "
                    "its documents stay as they were", path, size, before.size, after.size, len(body))
        return None, CHANGED_WHILE_READ
    return body, None
