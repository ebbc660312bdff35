"""sha256 of files, with a per-process memo so an unchanged file is hashed once."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from model.store.errors import ChecksumMismatch


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Verifier:
    """Checks files against recorded sha256 digests.

    A digest is remembered per (device, inode, size, mtime): a server that re-opens a version whose
    shards it verified before does not hash gigabytes again, while any rewrite of a file (new
    mtime or inode) is hashed afresh.
    """

    def __init__(self):
        self._memo: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def digest(self, path: Path) -> str:
        stat = os.stat(path)
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)  # survives a rename
        with self._lock:
            known = self._memo.get(key)
        if known is None:
            known = sha256_file(path)
            with self._lock:
                self._memo[key] = known
        return known

    def forget(self, path: Path) -> None:
        """Drop what is remembered of ``path`` as it is now: its next use hashes it again.

        For a file found corrupt without being rewritten (bit rot keeps size and mtime).
        """
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return
        with self._lock:
            self._memo.pop((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns), None)

    def verify(self, path: Path, expected: str, *, what: str) -> None:
        """Raise :class:`ChecksumMismatch` naming ``what`` unless ``path`` hashes to ``expected``.

        Args:
            path: the local file.
            expected: the recorded hex sha256.
            what: how to name the file in the message (e.g. ``shard X file index.faiss``).
        """
        actual = self.digest(path)
        if actual != expected:
            raise ChecksumMismatch(
                f"{what} is corrupt or was modified: sha256 {actual[:16]}... != recorded {expected[:16]}... "
                f"({path}); it is refused. Restore the file, or roll back to a version that does not use it"
            )
