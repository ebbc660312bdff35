"""Parse an index store URI: a directory path, ``file:///path`` or ``gs://bucket/prefix``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from model.store.errors import StoreError

HOW_TO = "use a directory path, file:///absolute/path or gs://bucket/prefix"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# https://cloud.google.com/storage/docs/buckets#naming (the dotted, domain-style form included)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


@dataclass(frozen=True)
class StoreLocation:
    """Where a store lives.

    Attributes:
        scheme: ``"file"`` or ``"gs"``.
        path: the absolute directory (file) or the object prefix inside the bucket without
            leading or trailing slashes (gs; empty for the bucket root).
        bucket: the bucket name (gs only).
    """

    scheme: str
    path: str
    bucket: str | None = None

    def __str__(self) -> str:
        if self.scheme == "gs":
            return f"gs://{self.bucket}/{self.path}" if self.path else f"gs://{self.bucket}"
        return self.path


def parse_store_uri(uri: str | Path) -> StoreLocation:
    """Split a store URI into scheme, bucket and path.

    Args:
        uri: ``/path/to/store``, ``relative/dir``, ``file:///path`` or ``gs://bucket/prefix``.

    Returns:
        The parsed location; local paths are made absolute.

    Raises:
        StoreError: empty URI, unknown scheme, or a malformed bucket name.
    """
    text = str(uri).strip()
    if not text:
        raise StoreError(f"the store URI is empty; {HOW_TO} (or set RETROFRESH_STORE)")
    match = _SCHEME.match(text)
    if match is None:
        return StoreLocation("file", str(Path(text).expanduser().resolve()))
    scheme = match.group(1).lower()
    parts = urlsplit(text)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"{text!r} names a remote host; file URIs must be file:///absolute/path")
        return StoreLocation("file", str(Path(unquote(parts.path)).resolve()))
    if scheme == "gs":
        bucket = parts.netloc
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise StoreError(
                f"{text!r}: {bucket!r} is not a valid bucket name (3-222 characters: lower-case "
                "letters, digits, '-', '_', '.'); write gs://bucket/prefix"
            )
        return StoreLocation("gs", parts.path.strip("/"), bucket)
    raise StoreError(f"unknown store URI scheme {scheme!r} in {text!r}; {HOW_TO}")
