"""Blob I/O for a store: a local directory or a GCS bucket prefix, behind one small interface.

Both backends give the same guarantees: create-only writes (a second writer of the same key with
different bytes gets :class:`AlreadyExists`; the same bytes are a no-op, so retries are safe) and a
compare-and-swap of small pointer objects such as ``CURRENT``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from model.contracts.clock import utcnow
from model.store import layout
from model.store.errors import AlreadyExists, StoreError
from model.store.uri import StoreLocation

LOG = logging.getLogger(__name__)


class CasFailed(Exception):
    """A compare-and-swap found another value than expected (``actual``; None: no object)."""

    def __init__(self, actual: bytes | None):
        super().__init__(actual)
        self.actual = actual


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes and last modification time (UTC)."""

    key: str
    size: int
    modified: datetime


class Backend(ABC):
    """Relative-key blob storage. Keys use '/' and never start with '/'."""

    location: StoreLocation

    @property
    def uri(self) -> str:
        return str(self.location)

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively), sorted by key."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Create ``key`` with ``data``; AlreadyExists if it holds other bytes already."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Create ``key`` from a local file (which may be consumed); AlreadyExists as above."""

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> None:
        """Download ``key`` to ``dest``; FileNotFoundError if there is no such object."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``; False if it did not exist."""

    @abstractmethod
    def swap(self, key: str, data: bytes, *, matches: Callable[[bytes | None], bool]) -> None:
        """Replace ``key`` with ``data`` only if ``matches(current bytes or None)`` holds.

        Writing the value the object already holds succeeds (an idempotent retry).

        Raises:
            CasFailed: the object holds something ``matches`` refuses.
        """

    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` when the store is a local directory, else None."""
        return None

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A scratch directory for building files before they are put (removed afterwards)."""
        path = Path(tempfile.mkdtemp(prefix="retrofresh-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


# local directory


class LocalBackend(Backend):
    """A store in a local (or network-mounted POSIX) directory."""

    def __init__(self, location: StoreLocation):
        self.location = location
        self.root = Path(location.path)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {self.root} exists and is not a directory; choose a directory")

    def _path(self, key: str) -> Path:
        return self.root / key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                out.append(ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc)))
        return sorted(out, key=lambda o: o.key)

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        # Inside the store, so put_file can hard-link instead of copying gigabytes.
        parent = self.root / layout.STAGING
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=parent))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _durable_temp(dest.parent, data) as tmp:
            self._link_new(tmp, dest, key)

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # A hard link publishes the complete file atomically and fails if dest exists.
            self._link_new(Path(path), dest, key)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
        with open(path, "rb") as f:  # another file system: copy, then link
            self.put_bytes(key, f.read())

    def _link_new(self, src: Path, dest: Path, key: str) -> None:
        try:
            os.link(src, dest)
        except FileExistsError:
            if _same_bytes(src, dest):
                return
            raise AlreadyExists(f"{key} already exists in {self.uri} with other content; it is never overwritten") from None
        _fsync_dir(dest.parent)

    def get_file(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._path(key), dest)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Remove folders left empty (a shard's or a version's), never the root.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    def swap(self, key: str, data: bytes, *, matches: Callable[[bytes | None], bool]) -> None:
        dest = self._path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        # The lock makes read-compare-replace one step for every local writer; os.replace makes
        # the new value appear whole to readers, who never take the lock.
        with open(self.root / layout.CURRENT_LOCK, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                actual = dest.read_bytes() if dest.exists() else None
                if actual == data:
                    return
                if not matches(actual):
                    raise CasFailed(actual)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with _durable_temp(dest.parent, data) as tmp:
                    os.replace(tmp, dest)
                _fsync_dir(dest.parent)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return _file_md5(a) == _file_md5(b)


def _file_md5(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").digest()


@contextlib.contextmanager
def _durable_temp(directory: Path, data: bytes) -> Iterator[Path]:
    """A temp file in ``directory`` holding ``data``, on disk (fsynced), to link or rename into place.

    Removed on exit if it is still there: a full disk fails the write or the fsync, and no
    half-written file is left behind.
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=layout.TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Google Cloud Storage


class GCSBackend(Backend):
    """A store under ``gs://bucket/prefix``, through google-cloud-storage.

    Set ``STORAGE_EMULATOR_HOST`` to use an emulator (the client then goes anonymous).
    """

    def __init__(self, location: StoreLocation, *, client=None):
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

        self.location = location
        self._gexc = gexc
        try:
            self.client = client if client is not None else storage.Client()
        except DefaultCredentialsError as exc:
            raise StoreError(
                f"no Google Cloud credentials for {location}: run `gcloud auth application-default login`, "
                "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or set "
                "STORAGE_EMULATOR_HOST to use an emulator"
            ) from exc
        self.bucket = self.client.bucket(location.bucket)
        try:
            self.client.get_bucket(location.bucket)
        except gexc.NotFound:
            raise StoreError(
                f"bucket {location.bucket!r} does not exist (store {location}); create it with "
                f"`gcloud storage buckets create gs://{location.bucket}` or fix the URI"
            ) from None
        except gexc.Forbidden:
            # Object-level permissions without storage.buckets.get: the bucket exists; carry on.
            LOG.debug("cannot read metadata of bucket %s; assuming it exists", location.bucket)
        self._prefix = f"{location.path}/" if location.path else ""

    def _name(self, key: str) -> str:
        return self._prefix + key

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.bucket.blob(self._name(key)).download_as_bytes()
        except self._gexc.NotFound:
            raise FileNotFoundError(f"{self.uri}/{key}") from None

    def exists(self, key: str) -> bool:
        return self.bucket.blob(self._name(key)).exists()

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        for blob in self.client.list_blobs(self.bucket, prefix=self._name(prefix)):
            modified = blob.updated or blob.time_created or utcnow()
            out.append(ObjectInfo(blob.name[len(self._prefix) :], int(blob.size or 0), modified))
        return sorted(out, key=lambda o: o.key)

    def put_bytes(self, key: str, data: bytes) -> None:
        blob = self.bucket.blob(self._name(key))
        try:
            blob.upload_from_string(data, if_generation_match=0)
        except self._gexc.PreconditionFailed:
            if self.read_bytes(key) != data:
                raise AlreadyExists(f"{key} already exists in {self.uri} with other content; it is never overwritten") from None

    def put_file(self, key: str, path: Path) -> None:
        blob = self.bucket.blob(self._name(key))
        try:
            blob.upload_from_filename(str(path), if_generation_match=0)
        except self._gexc.PreconditionFailed:
            existing = self.bucket.get_blob(self._name(key))
            local_md5 = base64.b64encode(_file_md5(Path(path))).decode()
            if existing is None or existing.md5_hash != local_md5:
                raise AlreadyExists(f"{key} already exists in {self.uri} with other content; it is never overwritten") from None

    def get_file(self, key: str, dest: Path) -> None:
        try:
            self.bucket.blob(self._name(key)).download_to_filename(str(dest))
        except self._gexc.NotFound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)  # the client leaves an empty file behind
            raise FileNotFoundError(f"{self.uri}/{key}") from None

    def delete(self, key: str) -> bool:
        try:
            self.bucket.blob(self._name(key)).delete()
            return True
        except self._gexc.NotFound:
            return False

    def swap(self, key: str, data: bytes, *, matches: Callable[[bytes | None], bool]) -> None:
        name = self._name(key)
        blob = self.bucket.get_blob(name)
        generation = blob.generation if blob is not None else 0
        try:
            actual = blob.download_as_bytes(if_generation_match=generation) if blob is not None else None
        except (self._gexc.PreconditionFailed, self._gexc.NotFound):
            raise CasFailed(self._read_or_none(key)) from None  # changed between metadata and read
        if actual == data:
            return
        if not matches(actual):
            raise CasFailed(actual)
        try:
            # The generation read above is the precondition: a writer who replaced the object in
            # the meantime makes this upload fail with 412, so two writers can never both win.
            self.bucket.blob(name).upload_from_string(data, if_generation_match=generation)
        except self._gexc.PreconditionFailed:
            actual = self._read_or_none(key)
            if actual != data:  # == data: our own earlier attempt landed and a retry saw 412
                raise CasFailed(actual) from None

    def _read_or_none(self, key: str) -> bytes | None:
        try:
            return self.read_bytes(key)
        except FileNotFoundError:
            return None


def open_backend(location: StoreLocation) -> Backend:
    """The backend for a parsed location."""
    if location.scheme == "gs":
        return GCSBackend(location)
    return LocalBackend(location)
