"""Local, checksum-verified copies of shard files, so indexes can be memory-mapped.

For a local store the shard files are used in place (they are immutable); for GCS they are
downloaded once into ``<cache_dir>/shards/<shard_id>/`` and verified by sha256 before first use.

The cache of remote shards is bounded by ``max_bytes`` (``RETROFRESH_CACHE_MAX_BYTES``): after
each download the least recently used shards are deleted until it fits, never one that an open
version uses (``pinned``) or that a version being loaded lists (:meth:`ShardCache.loading`). A
version whose shards alone exceed the limit is refused before anything is downloaded
(:class:`CacheTooSmall`): evicting its own shards to make room for each other would only thrash.
Use order survives restarts as each shard folder's mtime.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from model.store import layout
from model.store.backends import Backend
from model.store.checksums import Verifier
from model.store.errors import CacheTooSmall, ChecksumMismatch, StoreError
from model.store.manifest import Manifest
from model.store.shards import ShardMeta

LOG = logging.getLogger(__name__)


class ShardCache:
    """Resolves shard files to verified local paths.

    Args:
        root: the cache directory (used for remote stores only).
        verifier: remembers digests of files already checked in this process.
        max_bytes: the most bytes of cached shards to keep (None: no limit).
        pinned: the ids of shards open versions use now (never evicted).
    """

    def __init__(self, root: Path, verifier: Verifier, *, max_bytes: int | None = None,
                 pinned: Callable[[], set[str]] = set):
        if max_bytes is not None and max_bytes < 1:
            raise StoreError(f"the shard cache limit must be a positive number of bytes, got {max_bytes}")
        self.root = Path(root)
        self.verifier = verifier
        self.max_bytes = max_bytes
        self.pinned = pinned
        self._lock = threading.Lock()
        self._loading: Counter[str] = Counter()  # shard id -> versions being loaded that list it
        self._sizes: dict[str, int] | None = None  # shard id -> bytes on disk, scanned on first use
        self._used: dict[str, int] = {}  # shard id -> last use (ns), the LRU order
        self.evicted = 0  # shards deleted to stay under max_bytes, since start

    @contextlib.contextmanager
    def loading(self, manifest: Manifest) -> Iterator[None]:
        """Pin a version's shards while it is loaded or verified; refuse it if it cannot fit.

        Raises:
            CacheTooSmall: ``max_bytes`` is smaller than the version's shards together.
        """
        need = sum(s.bytes for s in manifest.shards)
        if self.max_bytes is not None and need > self.max_bytes:
            raise CacheTooSmall(
                f"version {manifest.version} needs {need / 1e6:.1f} MB of shards, more than the shard cache may hold "
                f"({self.max_bytes / 1e6:.1f} MB, RETROFRESH_CACHE_MAX_BYTES); raise the limit to at least {need} bytes "
                "(twice that to swap without evicting the served version's shards), or compact the version"
            )
        ids = [s.id for s in manifest.shards]
        with self._lock:
            self._loading.update(ids)
        try:
            yield
        finally:
            with self._lock:
                self._loading.subtract(ids)
                self._loading += Counter()  # drop ids no version is loading any more

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(self._scan().values())

    def shard_files(self, backend: Backend, meta: ShardMeta) -> dict[str, Path]:
        """Local paths of a shard's data files, each verified against ``shard.json``.

        Args:
            backend: the store the shard lives in.
            meta: the shard's (already verified) ``shard.json``.

        Returns:
            ``{file name: local path}`` for ``index.faiss`` and the chunk file (``chunks.arrow``, or
            ``chunks.parquet`` in older shards).

        Raises:
            ChecksumMismatch: a file's bytes differ from its recorded sha256 (the message names
                the shard and the file).
            StoreError: a file is missing from the store.
        """
        out = {}
        for name, entry in meta.files.items():
            key = layout.shard_key(meta.id, name)
            what = f"shard {meta.id} file {name}"
            local = backend.local_path(key)
            if local is not None:
                if not local.is_file():
                    raise StoreError(f"{what} is missing from {backend.uri}; restore it or roll back to another version")
                self.verifier.verify(local, entry.sha256, what=what)
            else:
                local = self._fetch(backend, key, layout.cache_shard_dir(self.root, meta.id) / name, entry.sha256, what)
            out[name] = local
        return out

    def _fetch(self, backend: Backend, key: str, dest: Path, sha256: str, what: str) -> Path:
        if dest.is_file():
            try:
                self.verifier.verify(dest, sha256, what=f"cached copy of {what}")
                self._touch(dest.parent)
                return dest
            except ChecksumMismatch:
                LOG.warning("cached copy of %s is corrupt; downloading it again", what)
                dest.unlink(missing_ok=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
        os.close(fd)
        try:
            try:
                backend.get_file(key, Path(tmp))
            except FileNotFoundError:
                raise StoreError(f"{what} is missing from {backend.uri}; restore it or roll back to another version") from None
            self.verifier.verify(Path(tmp), sha256, what=f"{what} in {backend.uri}")
            self.verifier.replace(Path(tmp), dest)  # concurrent fetchers write identical, verified bytes
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        LOG.info("cached %s (%.1f MB)", what, dest.stat().st_size / 1e6)
        self._touch(dest.parent)
        self._evict()
        return dest

    # least recently used, by bytes

    def _scan(self) -> dict[str, int]:
        """Sizes of the cached shard folders (read from disk once; kept up to date after)."""
        if self._sizes is None:
            self._sizes = {}
            base = self.root / "shards"
            for child in base.iterdir() if base.is_dir() else []:
                if child.is_dir():
                    self._sizes[child.name] = _folder_bytes(child)
                    self._used.setdefault(child.name, child.stat().st_mtime_ns)
        return self._sizes

    def _touch(self, folder: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(folder)  # the order survives a restart
        with self._lock:
            sizes = self._scan()
            sizes[folder.name] = _folder_bytes(folder)
            self._used[folder.name] = max(self._used.values(), default=0) + 1 if self._used else 1

    def _evict(self) -> None:
        if self.max_bytes is None:
            return
        keep = set(self.pinned())
        with self._lock:
            keep |= set(self._loading)
            sizes = self._scan()
            total = sum(sizes.values())
            for shard_id in sorted(sizes, key=lambda s: self._used.get(s, 0)):
                if total <= self.max_bytes:
                    return
                if shard_id in keep:
                    continue
                shutil.rmtree(layout.cache_shard_dir(self.root, shard_id), ignore_errors=True)
                total -= sizes.pop(shard_id)
                self._used.pop(shard_id, None)
                self.evicted += 1
                LOG.info("evicted shard %s from the cache (least recently used; %.1f MB cached)", shard_id, total / 1e6)
        if total > self.max_bytes:
            LOG.warning(
                "the shard cache holds %.1f MB, over its %.1f MB limit: every cached shard belongs to a version being "
                "served or loaded; the rest is evicted once the old version is released", total / 1e6, self.max_bytes / 1e6,
            )


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and not f.name.startswith(".download-"))
