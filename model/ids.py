"""Ids: documents by canonical URL, chunks by (doc_id, position, content hash), and how index versions order."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit


def canonical_url(url: str) -> str:
    """Lower-case scheme and host, drop the fragment and a default port; keep path and query.

    Args:
        url: an http(s) URL, a local path, or a ``gs://`` URI.

    Returns:
        The canonical form used to derive :func:`doc_id`.
    """
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        host = (parts.hostname or "").lower()
        default_port = {"http": 80, "https": 443}[parts.scheme]
        netloc = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return url


def doc_id(url: str) -> str:
    """A document's id: the first 16 hex digits of sha256 of its canonical URL or path."""
    return hashlib.sha256(canonical_url(url).encode("utf-8")).hexdigest()[:16]


def content_hash(text: str) -> str:
    """sha256 hex digest of a document's normalised extracted text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(doc: str, position: int, doc_content_hash: str) -> int:
    """A 63-bit, non-negative chunk id (FAISS ids are int64).

    The same document text always yields the same ids, so re-ingesting unchanged input changes
    nothing; a changed document gets new ids and its old ones become tombstones.
    """
    digest = hashlib.sha256(f"{doc}\x00{position}\x00{doc_content_hash}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# An index version id is ``v{seq:06d}-{random hex}`` (made by model.store.layout.version_id); the
# client orders versions by it too, so the grammar lives here, in a module that imports neither
# faiss nor pyarrow.
_VERSION = re.compile(r"^v(\d{6,})-([0-9a-f]+)$")


def version_seq(version: str) -> int:
    """The sequence number of an index version id; -1 for ids not made by ``version_id``."""
    match = _VERSION.match(version)
    return int(match.group(1)) if match else -1
