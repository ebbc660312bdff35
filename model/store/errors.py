"""The index store's exceptions: every one says what went wrong and how to fix it."""

from __future__ import annotations

from model.contracts.compat import Incompatible


class StoreError(Exception):
    """Anything the index store refuses or cannot do (bad URI, missing bucket, bad input)."""


class NoCurrentVersion(StoreError):
    """The store has no ``CURRENT`` yet: nothing has been published."""


class DamagedCurrent(StoreError):
    """``CURRENT`` exists but names no version (empty, not UTF-8, or not a version id).

    Nothing can be read through it; rolling back to a listed version is the repair.

    Attributes:
        raw: the bytes ``CURRENT`` holds.
    """

    def __init__(self, message: str, *, raw: bytes):
        super().__init__(message)
        self.raw = raw


class PublishConflict(StoreError):
    """``CURRENT`` changed since the caller read it: another writer published first.

    Attributes:
        expected: the version the caller expected ``CURRENT`` to name.
        actual: the version ``CURRENT`` names now (None if it does not exist).
    """

    def __init__(self, message: str, *, expected: str | None = None, actual: str | None = None):
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class ChecksumMismatch(StoreError):
    """A file's bytes do not match the sha256 recorded for it; the file is never used."""


class IncompatibleIndex(StoreError, Incompatible):
    """A version (or shard) was made by another embedder, dimension or tokenizer than asked for."""


class AlreadyExists(StoreError):
    """A create-only write found a different object already at that path."""


class CacheTooSmall(StoreError):
    """A version's shards alone exceed the shard cache's limit (``RETROFRESH_CACHE_MAX_BYTES``)."""
