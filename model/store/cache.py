"""Local, checksum-verified copies of shard files, so indexes can be memory-mapped.

For a local store the shard files are used in place (they are immutable); for GCS they are
downloaded once into ``<cache_dir>/shards/<shard_id>/`` and verified by sha256 before first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from model.store import layout
from model.store.backends import Backend
from model.store.checksums import Verifier
from model.store.errors import ChecksumMismatch, StoreError
from model.store.shards import ShardMeta

LOG = logging.getLogger(__name__)


class ShardCache:
    """Resolves shard files to verified local paths.

    Args:
        root: the cache directory (used for remote stores only).
        verifier: remembers digests of files already checked in this process.
    """

    def __init__(self, root: Path, verifier: Verifier):
        self.root = Path(root)
        self.verifier = verifier

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
            os.replace(tmp, dest)  # concurrent fetchers write identical, verified bytes
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        LOG.info("cached %s (%.1f MB)", what, dest.stat().st_size / 1e6)
        return dest

    def prune(self, keep_shards: set[str]) -> list[Path]:
        """Delete cached shards not in ``keep_shards``; returns the folders removed."""
        removed = []
        base = self.root / "shards"
        if not base.is_dir():
            return removed
        for child in base.iterdir():
            if child.is_dir() and child.name not in keep_shards:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        return removed
