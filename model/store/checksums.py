"""sha256 of files, with a per-process memo so an unchanged file is hashed once."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from model.store.errors import ChecksumMismatch


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_stamp(path: str | Path) -> tuple[int, int, int, int, int] | None:
    """(device, inode, size, mtime, ctime) of a file, None if it is gone: what changes when it is rewritten.

    The ctime matters: a file rewritten in place keeps its inode, and ``cp -p`` or ``touch -r``
    put its old mtime back, but nothing but the kernel sets the ctime, and every write moves it.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Verifier:
    """Checks files against recorded sha256 digests.

    A digest is remembered per :func:`file_stamp` (device, inode, size, mtime, ctime): a server
    that re-opens a version whose shards it verified before does not hash gigabytes again, while
    any rewrite of a file (even in place with its old mtime put back) is hashed afresh. Only a
    digest that matched is remembered: a file refused once is hashed again at its next check, so
    restoring it however it is restored is seen at the next reload, not at the next restart.
    """

    def __init__(self):
        self._memo: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def digest(self, path: Path) -> str:
        """The file's sha256, from the memo while its :func:`file_stamp` is unchanged."""
        key = file_stamp(path)
        if key is None:
            raise FileNotFoundError(path)
        with self._lock:
            known = self._memo.get(key)
        if known is None:
            known = sha256_file(path)
            with self._lock:
                self._memo[key] = known
        return known

    def replace(self, src: Path, dest: Path) -> None:
        """``os.replace`` a file, keeping what is remembered of it: a rename moves its ctime, not its bytes."""
        before = file_stamp(src)
        os.replace(src, dest)
        after = file_stamp(dest)
        with self._lock:
            known = self._memo.pop(before, None)
            if known is not None and after is not None:
                self._memo[after] = known

    def forget(self, path: Path) -> None:
        """Drop what is remembered of ``path`` as it is now: its next use hashes it again.

        For a file found corrupt without being rewritten (bit rot keeps size and mtime).
        """
        key = file_stamp(path)
        if key is None:
            return
        with self._lock:
            self._memo.pop(key, None)

    def verify(self, path: Path, expected: str, *, what: str) -> None:
        """Raise :class:`ChecksumMismatch` naming ``what`` unless ``path`` hashes to ``expected``.

        Args:
            path: the local file.
            expected: the recorded hex sha256.
            what: how to name the file in the message (e.g. ``shard X file index.faiss``).
        """
        actual = self.digest(path)
        if actual != expected:
            self.forget(path)  # refused now, hashed again next time: a restored file is seen at once
            raise ChecksumMismatch(
                f"{what} is corrupt or was modified: sha256 {actual[:16]}... != recorded {expected[:16]}... "
                f"({path}); it is refused. Restore the file, or roll back to a version that does not use it"
            )
